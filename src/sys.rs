//! The few calls that need `unsafe`, each wrapped once.

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::ForkResult;

/// fork(2).
pub(crate) fn fork() -> nix::Result<ForkResult> {
    // SAFETY: xos applets are single-threaded when they fork, and the child only
    // runs xos code (no locks held by other threads can be left taken).
    unsafe { nix::unistd::fork() }
}

/// fork(2) straight into the cgroup v2 directory `cgroup` (clone3(2) with
/// CLONE_INTO_CGROUP): unlike a move by pid afterwards, it waits for no RCU
/// grace period.
pub(crate) fn fork_into_cgroup(cgroup: std::os::fd::BorrowedFd<'_>) -> nix::Result<ForkResult> {
    use std::os::fd::AsRawFd;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    // struct clone_args (linux/sched.h), version 2: flags, pidfd, child_tid,
    // parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
    // cgroup.
    let mut args = [0u64; 11];
    args[0] = CLONE_INTO_CGROUP;
    args[4] = libc::SIGCHLD as u64;
    args[10] = cgroup.as_raw_fd() as u64;
    // SAFETY: as fork (no CLONE_VM, no new stack: the child runs on a copy of
    // the caller's memory and returns here). Callers are single-threaded, and
    // the child runs xos code only, which needs none of the bookkeeping glibc's
    // fork adds: no atfork handler, no pthread mutex kind that records the
    // cached thread id (raise asks the kernel for it), no robust mutex.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args.as_ptr(),
            std::mem::size_of_val(&args),
        )
    };
    match r {
        -1 => Err(nix::errno::Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: nix::unistd::Pid::from_raw(pid as i32),
        }),
    }
}

/// Restores the default disposition of `sig`. A caller that inherited SIGCHLD as
/// ignored would otherwise have its children reaped by the kernel, losing their
/// exit status.
pub(crate) fn default_disposition(sig: Signal) -> nix::Result<()> {
    // SAFETY: installing SIG_DFL registers no Rust code as a handler.
    unsafe { signal::signal(sig, SigHandler::SigDfl) }.map(drop)
}

/// Discards a pending `sig` (setting it ignored drops it, see signal(7)) and
/// restores its default disposition.
pub(crate) fn discard_pending(sig: Signal) -> nix::Result<()> {
    // SAFETY: SIG_IGN and SIG_DFL register no Rust code as a handler.
    unsafe { signal::signal(sig, SigHandler::SigIgn) }?;
    default_disposition(sig)
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

/// Signals the caller of this process had ignored, bit N-1 for signal N. Recorded
/// by a constructor, before the Rust runtime sets SIGPIPE to ignored, because a
/// command xos starts must get its caller's dispositions, as from a shell.
static CALLER_IGNORED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[used]
#[link_section = ".init_array"]
static RECORD_CALLER_IGNORED: extern "C" fn() = record_caller_ignored;

extern "C" fn record_caller_ignored() {
    let mut bits = 0u64;
    for sig in 1..=64 {
        // SAFETY: a zeroed sigaction is a valid value to be overwritten, and a
        // query (null new action) only writes `old`.
        let ignored = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            bits |= 1 << (sig - 1);
        }
    }
    CALLER_IGNORED.store(bits, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the caller of this process had signal `sig` ignored.
pub(crate) fn caller_ignored(sig: i32) -> bool {
    (1..=64).contains(&sig)
        && CALLER_IGNORED.load(std::sync::atomic::Ordering::Relaxed) & (1 << (sig - 1)) != 0
}

/// Gives signal `sig` the disposition (ignored or default) the caller of this
/// process gave it.
pub(crate) fn caller_disposition(sig: i32) -> nix::Result<()> {
    let handler = if caller_ignored(sig) {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: SIG_IGN and SIG_DFL register no code; the zeroed rest (empty mask,
    // no flags) is a valid sigaction.
    let r = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        libc::sigaction(sig, &act, std::ptr::null_mut())
    };
    if r < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Ends a child forked by the library for one task (entering a namespace,
/// executing a tool) without returning into the caller's code: _exit(2) runs no
/// atexit handler and flushes none of the stdio buffers copied from the parent.
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}
