//! pidfds (pidfd_open(2), clone(2) CLONE_PIDFD) of processes of the
//! application: fdinfo gives the process (`Pid:` as the checkpointer sees it),
//! restart opens a pidfd of the same pid in the restored process (which must
//! exist by then: the process itself, an ancestor, a child, or one created
//! before). A pidfd of a process outside the application, or of one that has
//! ended, is refused.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use super::FdInfo;

/// The application pid a pidfd refers to; Err says why it cannot be saved.
pub fn dump(info: &FdInfo, ns_pids: &HashMap<i32, i32>) -> Result<i32, String> {
    let host: i32 = info
        .get("Pid:")
        .and_then(|v| v.parse().ok())
        .ok_or("a pidfd fdinfo does not describe")?;
    if host <= 0 {
        return Err("a pidfd of a process that has ended".into());
    }
    ns_pids
        .get(&host)
        .copied()
        .ok_or_else(|| format!("a pidfd of process {host}, outside the application"))
}

/// A pidfd of `pid` (in the caller's PID namespace) with the saved open flags.
pub fn restore(pid: i32, flags: u32) -> Result<OwnedFd, String> {
    let nonblock = flags & libc::O_NONBLOCK as u32 != 0;
    crate::ckpt::sys::pidfd_open(pid, nonblock).map_err(|e| match e {
        nix::Error::ESRCH => {
            format!("the process {pid} of its pidfd is not created yet when this one is set up")
        }
        e => format!("pidfd_open({pid}): {e}"),
    })
}
