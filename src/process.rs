//! Facts about processes read from procfs (proc(5): `/proc/PID/stat`, `/proc/PID/ns`).

use std::path::PathBuf;

use crate::fsutil::{self, PathError};

/// The fields of `/proc/PID/stat` xos uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Start time in clock ticks after boot: with the pid it identifies a process
    /// across pid reuse.
    pub starttime: u64,
}

/// Errors reading process information.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {pid} does not exist")]
    NoProcess { pid: i32 },
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("process {pid}: cannot parse {}", path.display())]
    Parse { pid: i32, path: PathBuf },
}

fn proc_path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

fn not_found(pid: i32, e: PathError) -> ProcError {
    if e.source.kind() == std::io::ErrorKind::NotFound || e.errno() == Some(libc::ESRCH) {
        ProcError::NoProcess { pid }
    } else {
        ProcError::Io(e)
    }
}

/// Parses the text of `/proc/PID/stat`. The command name may hold spaces and
/// parentheses, so the fields after it are found from the last `)`.
pub fn parse_stat(pid: i32, text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(Stat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: i32) -> Result<Stat, ProcError> {
    let path = proc_path(pid, "stat");
    let text = fsutil::read_string(&path).map_err(|e| not_found(pid, e))?;
    parse_stat(pid, &text).ok_or(ProcError::Parse { pid, path })
}

/// Whether the process `pid` that started at `starttime` still exists (and is not a
/// zombie): a recycled pid has another start time.
pub fn alive(pid: i32, starttime: u64) -> bool {
    matches!(stat(pid), Ok(s) if s.starttime == starttime && s.state != 'Z' && s.state != 'X')
}

/// Inode number identifying namespace `kind` (`pid`, `ipc`, `mnt`, …) of `pid`.
pub fn ns_inode(pid: i32, kind: &str) -> Result<u64, ProcError> {
    let path = proc_path(pid, &format!("ns/{kind}"));
    let link = std::fs::read_link(&path)
        .map_err(|e| not_found(pid, PathError::new("read link", &path, e)))?;
    let s = link.to_string_lossy();
    s.rsplit('[')
        .next()
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .ok_or(ProcError::Parse { pid, path })
}

/// Whether the caller of this process had `sig` ignored when it started (before the
/// Rust runtime set SIGPIPE to ignored).
pub fn caller_ignores(sig: nix::sys::signal::Signal) -> bool {
    crate::sys::caller_ignored(sig as i32)
}

/// Gives `sig` back the disposition the caller of this process gave it: ignored,
/// or the default action.
pub fn caller_disposition(sig: nix::sys::signal::Signal) -> nix::Result<()> {
    crate::sys::caller_disposition(sig as i32)
}

/// Gives every signal the disposition the caller of this process gave it (what a
/// shell passes to a command), undoing the runtime's ignored SIGPIPE and any
/// handler; for a child about to execute a command.
pub fn caller_dispositions() {
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // glibc reserves two real-time signals and refuses them: nothing to do.
            let _ = crate::sys::caller_disposition(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let t = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 1000 10";
        let s = parse_stat(42, t).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.session, s.starttime),
            ('S', 1, 42, 42, 12345)
        );
    }

    #[test]
    fn own_process() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(alive(me, s.starttime));
        assert!(!alive(me, s.starttime + 1));
        assert!(ns_inode(me, "pid").unwrap() > 0);
        assert!(matches!(stat(i32::MAX), Err(ProcError::NoProcess { .. })));
    }
}
