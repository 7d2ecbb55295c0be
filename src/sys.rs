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
