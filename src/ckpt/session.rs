//! Sessions and process groups whose leader is gone. A process can only join a
//! group that exists in its session, and only enters a session by being forked
//! inside it, so such groups and sessions are made again by short-lived helper
//! processes holding the leader's pid: a session helper (forked by the init,
//! setsid(2)) forks the session's members that the init had adopted; a group
//! helper (forked, through an intermediate that exits, by the first member that
//! joins, so that it sits in that member's session) calls setpgid(0, 0). Once
//! every process exists, the init ends the helpers; their groups and sessions
//! live on in their members, as they did after the real leaders ended.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};

use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid};

use super::image::Image;
use super::CkptError;

type Result<T> = std::result::Result<T, CkptError>;

fn rerr(pid: i32, reason: impl std::fmt::Display) -> CkptError {
    CkptError::Restore {
        pid,
        reason: reason.to_string(),
    }
}

/// Sessions and groups of the image whose leader is not one of its processes
/// (nor led from outside the application: 0, or its init: 1).
pub fn dead_leaders(img: &Image) -> (BTreeSet<i32>, BTreeSet<i32>) {
    // A zombie leader still holds its group and session.
    let alive: BTreeSet<i32> = img
        .processes
        .iter()
        .map(|p| p.pid)
        .chain(img.zombies.iter().map(|z| z.pid))
        .collect();
    let dead = |id: i32| id > 1 && !alive.contains(&id);
    let sessions: BTreeSet<i32> = img
        .processes
        .iter()
        .map(|p| p.sid)
        .filter(|s| dead(*s))
        .collect();
    let groups = img
        .processes
        .iter()
        .map(|p| p.pgid)
        .filter(|g| dead(*g) && !sessions.contains(g))
        .collect();
    (sessions, groups)
}

/// Writes `pid - 1` to ns_last_pid, so that the next fork gets `pid`.
pub fn next_pid(pid: i32) -> Result<()> {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
        .map_err(|e| rerr(pid, format!("cannot set ns_last_pid: {e}")))
}

/// In the calling process: makes process group `group` exist in the caller's
/// session (a helper with that pid leads it), for the caller to join. The
/// intermediate takes pid `via`.
pub fn make_group(group: i32, via: i32) -> Result<()> {
    let (rd, wr) = nix::unistd::pipe().map_err(|e| rerr(group, e))?;
    next_pid(via)?;
    match crate::sys::fork().map_err(|e| rerr(group, format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(rd);
            let mut w = std::fs::File::from(wr);
            let forked = next_pid(group)
                .and_then(|()| crate::sys::fork().map_err(|e| rerr(group, format!("fork: {e}"))));
            match forked {
                Ok(ForkResult::Child) => {
                    let ok = nix::unistd::getpid().as_raw() == group
                        && nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_ok();
                    let _ = writeln!(w, "{}", if ok { "R" } else { "E" });
                    drop(w);
                    if !ok {
                        std::process::exit(1);
                    }
                    loop {
                        super::sys::pause();
                    }
                }
                Ok(ForkResult::Parent { .. }) => {}
                Err(e) => {
                    let _ = writeln!(w, "E: {e}");
                }
            }
            std::process::exit(0);
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::io::BufReader::new(std::fs::File::from(rd)).read_line(&mut msg);
            let _ = nix::sys::wait::waitpid(child, None);
            if msg.starts_with('R') {
                Ok(())
            } else {
                Err(rerr(
                    group,
                    format!(
                        "cannot make its process group again{}",
                        msg.trim_end().strip_prefix('E').unwrap_or("")
                    ),
                ))
            }
        }
    }
}

/// In the init, once every process exists: ends the helpers (which are its
/// children by then) and reaps them.
pub fn end_helpers(helpers: impl IntoIterator<Item = i32>) {
    for pid in helpers {
        let pid = Pid::from_raw(pid);
        if nix::sys::signal::kill(pid, Signal::SIGKILL).is_ok() {
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}
