//! The few calls that need `unsafe`, each wrapped once.

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::ForkResult;

/// fork(2).
pub(crate) fn fork() -> nix::Result<ForkResult> {
    // SAFETY: xos applets are single-threaded when they fork, and the child only
    // runs xos code (no locks held by other threads can be left taken).
    unsafe { nix::unistd::fork() }
}

/// Restores the default disposition of `sig`. A caller that inherited SIGCHLD as
/// ignored would otherwise have its children reaped by the kernel, losing their
/// exit status.
pub(crate) fn default_disposition(sig: Signal) -> nix::Result<()> {
    // SAFETY: installing SIG_DFL registers no Rust code as a handler.
    unsafe { signal::signal(sig, SigHandler::SigDfl) }.map(drop)
}

/// Borrows a raw descriptor number for a call that takes `AsFd`.
pub(crate) fn borrow_fd(fd: std::os::fd::RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only for immediate fcntl calls on descriptors the caller knows to
    // be open; an invalid number just makes that call fail with EBADF.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// dup2(2) on raw numbers, for rearranging descriptors before a task is rebuilt.
pub(crate) fn dup2_raw(from: std::os::fd::RawFd, to: std::os::fd::RawFd) -> nix::Result<()> {
    // SAFETY: dup2 has no memory-safety preconditions.
    let r = unsafe { libc::dup2(from, to) };
    if r < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// A `File` owning descriptor `fd`, which the caller just obtained and owns.
pub(crate) fn file_from_raw(fd: std::os::fd::RawFd) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass a fresh descriptor (from F_DUPFD) that nothing else owns.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// Ends a child forked by the library for one task (entering a namespace,
/// executing a tool) without returning into the caller's code: _exit(2) runs no
/// atexit handler and flushes none of the stdio buffers copied from the parent.
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}
