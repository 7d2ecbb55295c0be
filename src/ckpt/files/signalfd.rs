//! signalfd(2): the set of signals it reads (fdinfo `sigmask`, hex).

use std::os::fd::OwnedFd;

use super::FdInfo;

pub fn dump(info: &FdInfo) -> Option<u64> {
    u64::from_str_radix(info.get("sigmask:")?, 16).ok()
}

pub fn restore(mask: u64) -> nix::Result<OwnedFd> {
    super::check_fd(crate::ckpt::sys::signalfd(mask))
}
