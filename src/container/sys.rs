//! The calls of the container's loader that need `unsafe`.

use std::os::fd::{AsFd, AsRawFd};

/// Makes input on `fd` raise SIGIO in the calling process (O_ASYNC with this
/// process as owner, fcntl(2) F_SETOWN), and makes it non-blocking.
pub(super) fn signal_on_input(fd: impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = fd.as_fd();
    // SAFETY: F_SETOWN takes an int argument and touches no memory of ours.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETOWN, libc::getpid()) } < 0 {
        return Err(nix::Error::last());
    }
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(
        fd,
        FcntlArg::F_SETFL(flags | OFlag::O_ASYNC | OFlag::O_NONBLOCK),
    )
    .map(drop)
}
