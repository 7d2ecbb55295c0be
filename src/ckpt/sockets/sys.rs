//! Raw socket calls the socket checkpointer needs and nix does not wrap:
//! getsockopt/setsockopt with the kernel's own byte layouts (TCP repair, any
//! option saved as bytes), the queue-size ioctls, and pidfd_getfd(2) to take a
//! copy of a stopped process's socket.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

fn check(r: libc::c_int) -> nix::Result<libc::c_int> {
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(r)
    }
}

/// getsockopt(2) into a buffer of `max` bytes; returns the bytes the kernel wrote.
pub fn getsockopt(fd: BorrowedFd, level: i32, opt: i32, max: usize) -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf` and updates `len`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    buf.truncate(len as usize);
    Ok(buf)
}

/// setsockopt(2) with `val` as the option's bytes.
pub fn setsockopt(fd: BorrowedFd, level: i32, opt: i32, val: &[u8]) -> nix::Result<()> {
    // SAFETY: the kernel reads `val.len()` bytes of `val`.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub fn get_int(fd: BorrowedFd, level: i32, opt: i32) -> nix::Result<i32> {
    let b = getsockopt(fd, level, opt, 4)?;
    Ok(i32::from_ne_bytes(
        b.get(..4).ok_or(nix::Error::EINVAL)?.try_into().unwrap(),
    ))
}

pub fn set_int(fd: BorrowedFd, level: i32, opt: i32, v: i32) -> nix::Result<()> {
    setsockopt(fd, level, opt, &v.to_ne_bytes())
}

/// An ioctl(2) that reports one int (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
pub fn ioctl_int(fd: BorrowedFd, req: libc::c_ulong) -> nix::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int to the pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) })?;
    Ok(v)
}

/// A copy, in this process, of descriptor `fd` of process `pid`
/// (pidfd_getfd(2); needs ptrace rights over it, which the checkpointer has).
pub fn take_fd(pid: i32, fd: RawFd) -> nix::Result<OwnedFd> {
    // SAFETY: plain integers; the result is a new descriptor or -1.
    let pidfd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int)?;
    let pidfd = crate::ckpt::sys::owned_fd(pidfd);
    // SAFETY: as above.
    let r = check(
        unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) } as libc::c_int,
    )?;
    Ok(crate::ckpt::sys::owned_fd(r))
}

/// A Unix address as the storage type every call here takes.
pub fn unix_storage(u: &nix::sys::socket::UnixAddr) -> nix::sys::socket::SockaddrStorage {
    use nix::sys::socket::SockaddrLike;
    // SAFETY: `u` is a valid sockaddr_un of `u.len()` bytes for the call.
    unsafe { nix::sys::socket::SockaddrStorage::from_raw(u.as_ptr().cast(), Some(u.len())) }
        .expect("a Unix address fits the storage")
}

/// connect(2) to AF_UNSPEC: dissolves a connection (a TCP one with a reset).
pub fn disconnect(fd: BorrowedFd) -> nix::Result<()> {
    let sa = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: `sa` is a valid sockaddr of the size passed.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    })
    .map(drop)
}
