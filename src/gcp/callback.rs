//! Checkpoint callbacks (the seed: "processed during checkpoint and restart;
//! allow applications to optimize checkpointing; used to drain communication
//! channels"): a program given at `krgcr-run --callback` runs inside the unit's
//! namespaces (PID, IPC, UTS, network, mount), as the unit's owner, with
//! `XOS_EVENT=pre-checkpoint|post-checkpoint|post-restart`, `XOS_JOB`,
//! `XOS_VERSION` and `XOS_UNIT`, within a time limit.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Uid};

use crate::registry::AppRecord;

/// The events a callback is called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    PreCheckpoint,
    PostCheckpoint,
    PostRestart,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::PreCheckpoint => "pre-checkpoint",
            Event::PostCheckpoint => "post-checkpoint",
            Event::PostRestart => "post-restart",
        }
    }
}

/// Most of a callback's output kept for its message.
const OUTPUT_LIMIT: usize = 4096;

/// Runs `program` for `event` of `unit`; on failure returns one line: the last
/// line the program wrote (stdout and stderr), or its status.
pub fn run(
    unit: &AppRecord,
    program: &Path,
    event: Event,
    job: &str,
    version: u64,
    timeout: Duration,
) -> std::result::Result<(), String> {
    // Opened before the fork: once in the unit's mount namespace, /proc is its own.
    let mut ns = Vec::new();
    for kind in ["pid", "ipc", "uts", "net", "mnt"] {
        let p = format!("/proc/{}/ns/{kind}", unit.root_pid);
        ns.push(File::open(&p).map_err(|e| format!("cannot open {p}: {e}"))?);
    }
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| "a NUL byte in the callback".to_string());
    let prog = cstr(program.as_os_str().as_bytes())?;
    let env: Vec<CString> = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("XOS_EVENT={}", event.name()),
        format!("XOS_JOB={job}"),
        format!("XOS_VERSION={version}"),
        format!("XOS_UNIT={}", unit.id),
    ]
    .iter()
    .map(|s| cstr(s.as_bytes()))
    .collect::<Result<_, _>>()?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (uid, gid) = (unit.owner_uid, unit.owner_gid);
    let child = match crate::sys::fork().map_err(|e| format!("cannot fork: {e}"))? {
        ForkResult::Child => {
            drop(out_r);
            for f in &ns {
                if nix::sched::setns(f, CloneFlags::empty()).is_err() {
                    crate::sys::exit_child(125);
                }
            }
            // Entering a PID namespace places only the children in it.
            match crate::sys::fork() {
                Ok(ForkResult::Child) => {
                    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                    let _ = nix::unistd::chdir("/");
                    let fd = out_w.as_raw_fd();
                    for to in [1, 2] {
                        let _ = crate::sys::dup2_raw(fd, to);
                    }
                    if let Ok(null) = File::open("/dev/null") {
                        let _ = crate::sys::dup2_raw(null.as_raw_fd(), 0);
                    }
                    if nix::unistd::setgroups(&[Gid::from_raw(gid)]).is_err()
                        || nix::unistd::setgid(Gid::from_raw(gid)).is_err()
                        || nix::unistd::setuid(Uid::from_raw(uid)).is_err()
                    {
                        crate::sys::exit_child(125);
                    }
                    let e =
                        nix::unistd::execve(&prog, std::slice::from_ref(&prog), &env).unwrap_err();
                    let msg = format!("cannot execute {}: {}\n", program.display(), e.desc());
                    let _ = nix::unistd::write(&out_w, msg.as_bytes());
                    crate::sys::exit_child(127);
                }
                Ok(ForkResult::Parent { child }) => {
                    drop(out_w);
                    let code = match waitpid(child, None) {
                        Ok(WaitStatus::Exited(_, c)) => c,
                        Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                        _ => 125,
                    };
                    crate::sys::exit_child(code);
                }
                Err(_) => crate::sys::exit_child(125),
            }
        }
        ForkResult::Parent { child } => child,
    };
    drop(out_w);
    let mut out = File::from(out_r);
    let _ = nix::fcntl::fcntl(
        &out,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let status = loop {
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if text.len() > OUTPUT_LIMIT {
                text.drain(..text.len() - OUTPUT_LIMIT);
            }
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => {}
            Ok(WaitStatus::Exited(_, c)) => break Some(c),
            Ok(_) => break Some(125),
            Err(e) => return Err(format!("cannot wait for the callback: {e}")),
        }
        if start.elapsed() > timeout {
            // The callback dies with its parent (parent-death signal).
            let _ = signal::kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let last = String::from_utf8_lossy(&text)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string());
    let what = format!("{} callback {}", event.name(), program.display());
    match status {
        Some(0) => Ok(()),
        None => Err(format!(
            "{what} did not finish within {} s",
            timeout.as_secs_f64()
        )),
        Some(125) => Err(format!(
            "{what}: cannot enter the namespaces or take the identity of unit {}",
            unit.id
        )),
        Some(c) => Err(match last {
            Some(l) => format!("{what} failed (status {c}): {l}"),
            None => format!("{what} failed with status {c}"),
        }),
    }
}
