//! eventfd(2): the counter and the semaphore mode (fdinfo `eventfd-count`,
//! hex, and `eventfd-semaphore`, Linux 6.5).

use std::os::fd::OwnedFd;

use super::FdInfo;

/// Counter and mode, or None when fdinfo does not show them.
pub fn dump(info: &FdInfo) -> Option<(u64, bool)> {
    let count = u64::from_str_radix(info.get("eventfd-count:")?, 16).ok()?;
    let semaphore = info.get("eventfd-semaphore:") == Some("1");
    Some((count, semaphore))
}

pub fn restore(count: u64, semaphore: bool) -> nix::Result<OwnedFd> {
    let mut flags = libc::EFD_CLOEXEC;
    if semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    // The initial value is an unsigned int: larger counts are written after.
    let fd = super::check_fd(crate::ckpt::sys::eventfd(0, flags))?;
    if count > 0 {
        nix::unistd::write(&fd, &count.to_ne_bytes())?;
    }
    Ok(fd)
}
