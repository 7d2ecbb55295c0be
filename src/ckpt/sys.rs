//! Raw kernel calls of the checkpointer that nix does not wrap, each in one place:
//! ptrace(2) register sets and signal masks, rt_sigaction(2) with the kernel's own
//! structure, prctl(PR_SET_MM_MAP), and the register block as plain words.

use nix::unistd::Pid;

/// `NT_X86_XSTATE`: the XSAVE area (FPU, SSE, AVX, …).
const NT_X86_XSTATE: libc::c_int = 0x202;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;

/// Number of 64-bit words of `user_regs_struct` on x86-64.
pub const REGS_WORDS: usize = 27;

/// The general registers as words, in `user_regs_struct` order.
pub fn regs_to_words(r: &libc::user_regs_struct) -> [u64; REGS_WORDS] {
    const _: () = assert!(std::mem::size_of::<libc::user_regs_struct>() == REGS_WORDS * 8);
    // SAFETY: user_regs_struct is repr(C) of exactly 27 u64 fields (checked above).
    unsafe { std::mem::transmute_copy(r) }
}

/// Inverse of [`regs_to_words`].
pub fn words_to_regs(w: &[u64; REGS_WORDS]) -> libc::user_regs_struct {
    // SAFETY: as above; every bit pattern is a valid user_regs_struct.
    unsafe { std::mem::transmute_copy(w) }
}

fn check(r: libc::c_long) -> nix::Result<libc::c_long> {
    if r == -1 {
        Err(nix::Error::last())
    } else {
        Ok(r)
    }
}

/// Reads the XSAVE area of a stopped tracee.
pub fn get_xstate(pid: Pid) -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes `buf`, which outlives the call; the kernel shrinks
    // iov_len to the bytes written.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            pid.as_raw(),
            NT_X86_XSTATE as usize,
            &mut iov,
        )
    })?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Loads an XSAVE area into a stopped tracee.
pub fn set_xstate(pid: Pid, data: &[u8]) -> nix::Result<()> {
    let mut buf = data.to_vec();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes `buf`, valid for the call.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            pid.as_raw(),
            NT_X86_XSTATE as usize,
            &mut iov,
        )
    })
    .map(drop)
}

/// The blocked-signal mask of a stopped tracee.
pub fn get_sigmask(pid: Pid) -> nix::Result<u64> {
    let mut mask = 0u64;
    // SAFETY: the kernel writes 8 bytes (the size passed) into `mask`.
    check(unsafe {
        libc::ptrace(
            PTRACE_GETSIGMASK,
            pid.as_raw(),
            8usize,
            &mut mask as *mut u64,
        )
    })?;
    Ok(mask)
}

/// Sets the blocked-signal mask of a stopped tracee.
pub fn set_sigmask(pid: Pid, mask: u64) -> nix::Result<()> {
    // SAFETY: the kernel reads 8 bytes from `mask`.
    check(unsafe { libc::ptrace(PTRACE_SETSIGMASK, pid.as_raw(), 8usize, &mask as *const u64) })
        .map(drop)
}

/// The kernel's `struct sigaction` on x86-64.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// rt_sigaction(2) on the calling process with the kernel structure, so that the
/// saved handler, flags, restorer and mask are installed exactly.
pub fn set_sigaction(sig: i32, act: &KSigaction) -> nix::Result<()> {
    // SAFETY: `act` points to a valid kernel sigaction; no old action is requested.
    check(unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act as *const KSigaction,
            std::ptr::null::<KSigaction>(),
            8usize,
        )
    })
    .map(drop)
}

/// pause(2), through the raw syscall: the restored task waits here to be seized.
pub fn pause() {
    // SAFETY: pause takes no argument and only returns on a signal.
    unsafe { libc::syscall(libc::SYS_pause) };
}

/// One resource limit of process `pid`: (soft, hard).
pub fn get_rlimit(pid: i32, resource: u32) -> nix::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: no new limit is passed; the kernel writes the old one into `old`.
    let r = unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut old) };
    if r != 0 {
        return Err(nix::Error::last());
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// Sets one resource limit of the calling process.
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> nix::Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `new` is a valid rlimit64; no old value is requested.
    let r = unsafe { libc::prlimit64(0, resource as _, &new, std::ptr::null_mut()) };
    if r != 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// tee(2): duplicates up to `len` bytes of pipe `fd_in` into pipe `fd_out` without
/// consuming them.
pub fn tee(fd_in: i32, fd_out: i32, len: usize) -> nix::Result<usize> {
    // SAFETY: plain syscall on two descriptors owned by the caller.
    let r = unsafe { libc::tee(fd_in, fd_out, len, libc::SPLICE_F_NONBLOCK) };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(r as usize)
    }
}

/// personality(2) of the calling process.
pub fn set_personality(p: u64) -> nix::Result<()> {
    // SAFETY: personality takes a plain integer.
    let r = unsafe { libc::personality(p as libc::c_ulong) };
    if r == -1 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// XCR0 of this CPU: the XSAVE features the kernel enabled (0 without XSAVE).
pub fn cpu_xfeatures() -> u64 {
    use std::arch::x86_64::__cpuid;
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    if !osxsave {
        return 0;
    }
    // SAFETY: OSXSAVE is set, so xgetbv(0) is allowed.
    unsafe { xgetbv0() }
}

#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

/// memfd_create(2) without close-on-exec, for shared memory rebuilt at restart.
pub fn memfd(name: &std::ffi::CStr) -> nix::Result<std::os::fd::OwnedFd> {
    nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::empty())
}

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Default)]
struct RseqConfig {
    pointer: u64,
    size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

/// The restartable-sequences area a tracee registered: (address, size, signature),
/// or None.
pub fn get_rseq(pid: Pid) -> nix::Result<Option<(u64, u32, u32)>> {
    const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
    let mut c = RseqConfig::default();
    // SAFETY: the kernel writes at most the size passed into `c`.
    check(unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            pid.as_raw(),
            std::mem::size_of::<RseqConfig>(),
            &mut c as *mut RseqConfig,
        )
    })?;
    Ok((c.pointer != 0).then_some((c.pointer, c.size, c.signature)))
}

/// setitimer(2) on the calling process; `v` is (interval sec, usec, value sec, usec).
pub fn set_itimer(which: i32, v: [i64; 4]) -> nix::Result<()> {
    let t = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: v[0],
            tv_usec: v[1],
        },
        it_value: libc::timeval {
            tv_sec: v[2],
            tv_usec: v[3],
        },
    };
    // SAFETY: `t` is a valid itimerval; the old value is not requested.
    let r = unsafe { libc::setitimer(which as _, &t, std::ptr::null_mut()) };
    if r != 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// `PTRACE_PEEKSIGINFO`: the queued signals of a stopped tracee, each as the
/// kernel's 128-byte siginfo; `shared` reads the process-wide queue, else the
/// thread's own.
pub fn peek_siginfo(pid: Pid, shared: bool) -> nix::Result<Vec<[u8; 128]>> {
    const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
    #[repr(C)]
    struct Args {
        off: u64,
        flags: u32,
        nr: i32,
    }
    let mut out = Vec::new();
    let mut buf = vec![[0u8; 128]; 32];
    loop {
        let args = Args {
            off: out.len() as u64,
            flags: shared as u32,
            nr: buf.len() as i32,
        };
        // SAFETY: the kernel writes at most `nr` siginfos of 128 bytes into `buf`.
        let n = check(unsafe {
            libc::ptrace(
                PTRACE_PEEKSIGINFO,
                pid.as_raw(),
                &args as *const Args,
                buf.as_mut_ptr(),
            )
        })? as usize;
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return Ok(out);
        }
    }
}

/// get_robust_list(2) of thread `tid`: (head, length).
pub fn get_robust_list(tid: Pid) -> nix::Result<(u64, u64)> {
    let mut head = 0u64;
    let mut len = 0usize;
    // SAFETY: the kernel writes one pointer and one size_t into the two locals.
    check(unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid.as_raw(),
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    })?;
    Ok((head, len as u64))
}

/// sched_setscheduler(2) of thread `tid` with a static priority.
pub fn set_scheduler(tid: i32, policy: i32, rt_priority: i32) -> nix::Result<()> {
    let p = libc::sched_param {
        sched_priority: rt_priority,
    };
    // SAFETY: `p` is a valid sched_param for the call.
    check(unsafe { libc::sched_setscheduler(tid, policy, &p) } as libc::c_long).map(drop)
}

/// setpriority(PRIO_PROCESS, tid, nice): the nice value of one thread.
pub fn set_nice(tid: i32, nice: i32) -> nix::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } as libc::c_long)
        .map(drop)
}

/// Whether processes `a` and `b` share one address space (kcmp(2) KCMP_VM).
pub fn same_mm(a: i32, b: i32) -> bool {
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: kcmp takes plain integers.
    unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) == 0 }
}

/// Takes ownership of a descriptor a raw call just returned.
pub fn owned_fd(fd: libc::c_int) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass a fresh descriptor that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// eventfd(2).
pub fn eventfd(init: u32, flags: libc::c_int) -> libc::c_int {
    // SAFETY: plain integers.
    unsafe { libc::eventfd(init, flags) }
}

/// signalfd(2) reading the signals of `mask` (bit N-1 = signal N).
pub fn signalfd(mask: u64) -> libc::c_int {
    // SAFETY: the kernel reads 8 bytes (the size passed) of `mask`.
    unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            8usize,
            libc::SFD_CLOEXEC,
        ) as libc::c_int
    }
}

/// timerfd_create(2) on `clock`.
pub fn timerfd_create(clock: i32) -> libc::c_int {
    // SAFETY: plain integers.
    unsafe { libc::timerfd_create(clock, libc::TFD_CLOEXEC) }
}

/// timerfd_settime(2), relative: `value` left, then every `interval` (sec, nsec).
pub fn timerfd_settime(
    fd: &std::os::fd::OwnedFd,
    value: (i64, i64),
    interval: (i64, i64),
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: interval.0,
            tv_nsec: interval.1,
        },
        it_value: libc::timespec {
            tv_sec: value.0,
            tv_nsec: value.1,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not requested.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    check(r as libc::c_long).map(drop)
}

/// TFD_IOC_SET_TICKS: expirations not read yet.
pub fn timerfd_set_ticks(fd: &std::os::fd::OwnedFd, ticks: u64) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
    // SAFETY: the kernel reads one u64 from `ticks`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) };
    check(r as libc::c_long).map(drop)
}

/// epoll_create1(EPOLL_CLOEXEC).
pub fn epoll_create() -> libc::c_int {
    // SAFETY: plain integer.
    unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }
}

/// epoll_ctl(EPOLL_CTL_ADD) of `fd` with `events` and `data`.
pub fn epoll_add(ep: i32, fd: i32, events: u32, data: u64) -> nix::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    check(r as libc::c_long).map(drop)
}

/// flock(2).
pub fn flock(fd: std::os::fd::BorrowedFd, op: libc::c_int) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integers on a borrowed descriptor.
    let r = unsafe { libc::flock(fd.as_raw_fd(), op) };
    check(r as libc::c_long).map(drop)
}

/// prctl(2) with one argument, in the calling process.
pub fn prctl(op: i32, arg: u64) -> nix::Result<()> {
    // SAFETY: the options used take plain integers, no pointer.
    let r = unsafe { libc::prctl(op, arg as libc::c_ulong, 0, 0, 0) };
    check(r as libc::c_long).map(drop)
}

/// pidfd_open(2), PIDFD_NONBLOCK with `nonblock`.
pub fn pidfd_open(pid: i32, nonblock: bool) -> nix::Result<std::os::fd::OwnedFd> {
    let flags = if nonblock { libc::O_NONBLOCK } else { 0 };
    // SAFETY: plain integers.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    Ok(owned_fd(check(r)? as libc::c_int))
}

/// pidfd_open(2) of `pid` then pidfd_getfd(2) of its descriptor `fd`: a copy of
/// that open file for the caller.
pub fn fd_of(pid: i32, fd: i32) -> nix::Result<std::os::fd::OwnedFd> {
    pidfd_getfd(&pidfd_open(pid, false)?, fd)
}

/// pidfd_getfd(2): a copy of descriptor `fd` of the process of `pidfd`.
pub fn pidfd_getfd(pidfd: &std::os::fd::OwnedFd, fd: i32) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integers; `pidfd` is open for the call.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    Ok(owned_fd(check(r)? as libc::c_int))
}

/// ioctl(FIONREAD): bytes ready to be read from `fd`.
pub fn fionread(fd: &std::os::fd::OwnedFd) -> nix::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    check(r as libc::c_long).map(|_| n.max(0) as usize)
}

/// fcntl(F_SETLEASE).
pub fn set_lease(fd: std::os::fd::BorrowedFd, how: libc::c_int) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integers on a borrowed descriptor.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, how) };
    check(r as libc::c_long).map(drop)
}

/// struct f_owner_ex (fcntl.h).
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}
const F_SETOWN_EX: libc::c_int = 15;
const F_GETOWN_EX: libc::c_int = 16;
const F_SETSIG: libc::c_int = 10;
const F_GETSIG: libc::c_int = 11;

/// fcntl(F_GETOWN_EX): (type, pid) of the owner of `fd`'s open file.
pub fn get_owner(fd: &std::os::fd::OwnedFd) -> nix::Result<(i32, i32)> {
    use std::os::fd::AsRawFd;
    let mut o = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX writes one f_owner_ex into `o`.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut o) };
    check(r as libc::c_long).map(|_| (o.kind, o.pid))
}

/// fcntl(F_SETOWN_EX) in the calling process.
pub fn set_owner(fd: std::os::fd::BorrowedFd, kind: i32, pid: i32) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let o = FOwnerEx { kind, pid };
    // SAFETY: F_SETOWN_EX reads one f_owner_ex from `o`.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &o) };
    check(r as libc::c_long).map(drop)
}

/// fcntl(F_GETSIG) / fcntl(F_SETSIG) with `set` (None: get).
pub fn fd_signal(fd: std::os::fd::BorrowedFd, set: Option<i32>) -> nix::Result<i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integers on a borrowed descriptor.
    let r = unsafe {
        match set {
            Some(sig) => libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig),
            None => libc::fcntl(fd.as_raw_fd(), F_GETSIG),
        }
    };
    check(r as libc::c_long).map(|r| r as i32)
}

/// shmctl(IPC_RMID).
pub fn shm_rmid(id: i32) -> nix::Result<()> {
    // SAFETY: IPC_RMID reads no buffer.
    let r = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    check(r as libc::c_long).map(drop)
}

/// An all-zero `struct flock`.
pub fn zeroed_flock() -> libc::flock {
    // SAFETY: struct flock is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// kcmp(2) KCMP_FILE: whether descriptor `fa` of `a` and `fb` of `b` are one
/// open file description.
pub fn same_file(a: i32, fa: i32, b: i32, fb: i32) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes plain integers.
    unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILE, fa, fb) == 0 }
}

/// What waitpid(2) reported, decoded without nix's `Signal`, which has no
/// real-time signals (a tracee stopping with SIGRTMIN must not be an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    StillAlive,
    Ended,
    /// A ptrace stop: the signal and the event (status >> 16).
    Stopped {
        sig: i32,
        event: i32,
    },
    Other,
}

/// waitpid(2) on one task with `__WALL` (and `WNOHANG` when `nohang`).
pub fn wait_task(pid: Pid, nohang: bool) -> nix::Result<Waited> {
    let mut status = 0;
    let mut flags = libc::__WALL;
    if nohang {
        flags |= libc::WNOHANG;
    }
    loop {
        // SAFETY: the kernel writes the status into the local.
        let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, flags) };
        if r < 0 {
            let e = nix::Error::last();
            if e == nix::Error::EINTR {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(Waited::StillAlive);
        }
        return Ok(if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            Waited::Ended
        } else if libc::WIFSTOPPED(status) {
            Waited::Stopped {
                sig: libc::WSTOPSIG(status),
                event: status >> 16,
            }
        } else {
            Waited::Other
        });
    }
}

/// Resumes a tracee with `req` (PTRACE_CONT, PTRACE_SYSCALL…) delivering
/// signal `sig` (0 for none), any signal number.
pub fn resume(req: libc::c_uint, pid: Pid, sig: i32) -> nix::Result<()> {
    // SAFETY: plain integers; no memory is passed.
    check(unsafe { libc::ptrace(req, pid.as_raw(), 0usize, sig as usize) }).map(drop)
}

/// open_by_handle_at(2) with O_PATH: the inode a file handle names, on the
/// filesystem of `mount`.
pub fn open_by_handle(
    mount: &std::os::fd::OwnedFd,
    htype: i32,
    handle: &[u8],
) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // struct file_handle: handle_bytes, handle_type, then the bytes.
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&htype.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: `buf` is a complete struct file_handle for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            buf.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    check(r).map(|fd| owned_fd(fd as libc::c_int))
}

/// inotify_init1(2).
pub fn inotify_init(nonblock: bool) -> libc::c_int {
    let mut flags = libc::IN_CLOEXEC;
    if nonblock {
        flags |= libc::IN_NONBLOCK;
    }
    // SAFETY: plain integers.
    unsafe { libc::inotify_init1(flags) }
}

/// inotify_add_watch(2) with watch descriptor `wd` asked for first
/// (INOTIFY_IOC_SETNEXTWD); returns the descriptor given.
pub fn inotify_watch(
    fd: &std::os::fd::OwnedFd,
    wd: i32,
    path: &std::path::Path,
    mask: u32,
) -> nix::Result<i32> {
    use std::os::fd::AsRawFd;
    const INOTIFY_IOC_SETNEXTWD: libc::c_ulong = 0x4004_4900;
    // SAFETY: the ioctl takes the descriptor number as a plain integer.
    check(
        unsafe { libc::ioctl(fd.as_raw_fd(), INOTIFY_IOC_SETNEXTWD, wd as libc::c_long) }
            as libc::c_long,
    )?;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::Error::EINVAL)?;
    // SAFETY: `c` is a valid C string for the call.
    check(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } as libc::c_long)
        .map(|w| w as i32)
}
