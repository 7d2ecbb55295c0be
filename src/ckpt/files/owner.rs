//! The owner of an open file, who is sent SIGIO/SIGURG when it becomes ready
//! (fcntl(2) F_SETOWN_EX), and the signal sent (F_SETSIG). Neither shows in
//! fdinfo: they are read on a copy of the descriptor (pidfd_getfd(2)), and set
//! again by the restored process on its own descriptor.

use std::os::fd::{AsFd, BorrowedFd};

use crate::ckpt::image::{Fd, FdKind, FdOwner};
use crate::ckpt::sys;

/// The id in the application's PID namespace of task (or group leader) `who`,
/// if it is in the namespace of process `host`.
fn ns_id(host: i32, who: i32) -> Option<i32> {
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    if ns(who)? != ns(host)? {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    Some(crate::ckpt::dump::ns_value(&status, "NSpid"))
}

/// Fills in the owner of every descriptor of process `host` that has one.
/// Err says which descriptor's owner cannot be saved (one outside the
/// application) or read.
pub fn dump(host: i32, fds: &mut [Fd]) -> Result<(), String> {
    let pidfd = sys::pidfd_open(host, false)
        .map_err(|e| format!("cannot read the SIGIO owners of its files (pidfd_open: {e})"))?;
    for f in fds.iter_mut() {
        // A copy shares the owner of the file it copies; inherited stdio
        // belongs to the restarter.
        if matches!(f.kind, FdKind::Dup { .. } | FdKind::Inherited { .. }) {
            continue;
        }
        let copy = sys::pidfd_getfd(&pidfd, f.fd).map_err(|e| {
            format!(
                "fd {}: cannot read its SIGIO owner (pidfd_getfd: {e})",
                f.fd
            )
        })?;
        let (kind, who) = sys::get_owner(&copy).unwrap_or((0, 0));
        let sig = sys::fd_signal(copy.as_fd(), None).unwrap_or(0);
        if who == 0 && sig == 0 {
            continue;
        }
        let pid = match who {
            0 => 0,
            w => ns_id(host, w).ok_or_else(|| {
                format!(
                    "fd {}: its SIGIO owner {w} is a process outside the application",
                    f.fd
                )
            })?,
        };
        f.owner = Some(FdOwner { kind, pid, sig });
    }
    Ok(())
}

/// Sets the saved owner and signal on `fd` in the calling (restored) process.
pub fn restore(fd: BorrowedFd, o: &FdOwner) -> Result<(), String> {
    if o.pid != 0 {
        sys::set_owner(fd, o.kind, o.pid).map_err(|e| match e {
            nix::Error::ESRCH => format!(
                "its SIGIO owner {} is not created yet when this process is (F_SETOWN)",
                o.pid
            ),
            e => format!("F_SETOWN_EX: {e}"),
        })?;
    }
    if o.sig != 0 {
        sys::fd_signal(fd, Some(o.sig)).map_err(|e| format!("F_SETSIG: {e}"))?;
    }
    Ok(())
}
