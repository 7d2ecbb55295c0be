//! Socket options, saved as the bytes getsockopt gives and set back only where
//! they differ from a new socket's (setting a buffer size, for one, turns the
//! kernel's automatic sizing off).

use std::os::fd::BorrowedFd;

use super::sys;
use crate::ckpt::image::{from_hex, to_hex};

const SO_RCVTIMEO_OLD: i32 = 20;
const SO_SNDTIMEO_OLD: i32 = 21;

const COMMON: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_PASSCRED),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, SO_RCVTIMEO_OLD),
    (libc::SOL_SOCKET, SO_SNDTIMEO_OLD),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
];

const INET: &[(i32, i32)] = &[
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
];

const INET6: &[(i32, i32)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
];

const TCP: &[(i32, i32)] = &[
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION),
];

/// Options that must be in place before bind(2).
const EARLY: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
];

/// Every option that applies to a socket of this kind, with its value.
pub fn save(fd: BorrowedFd, family: i32, stype: i32, protocol: i32) -> Vec<(i32, i32, String)> {
    let mut list: Vec<(i32, i32)> = COMMON.to_vec();
    match family {
        libc::AF_INET => list.extend_from_slice(INET),
        libc::AF_INET6 => list.extend_from_slice(INET6),
        _ => {}
    }
    if family != libc::AF_UNIX && stype == libc::SOCK_STREAM && protocol != libc::IPPROTO_MPTCP {
        list.extend_from_slice(TCP);
    }
    list.into_iter()
        .filter_map(|(level, opt)| {
            let v = sys::getsockopt(fd, level, opt, 64).ok()?;
            Some((level, opt, to_hex(&v)))
        })
        .collect()
}

fn set_one(fd: BorrowedFd, level: i32, opt: i32, val: &[u8]) -> nix::Result<()> {
    if sys::getsockopt(fd, level, opt, 64).is_ok_and(|now| now == val) {
        return Ok(());
    }
    let buf = |force: i32| {
        // The kernel reports twice what was asked for.
        let v = i32::from_ne_bytes(val.get(..4).ok_or(nix::Error::EINVAL)?.try_into().unwrap());
        sys::set_int(fd, level, force, v / 2)
    };
    match (level, opt) {
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => buf(libc::SO_SNDBUFFORCE),
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => buf(libc::SO_RCVBUFFORCE),
        _ => sys::setsockopt(fd, level, opt, val),
    }
}

fn restore_filtered(
    fd: BorrowedFd,
    saved: &[(i32, i32, String)],
    keep: impl Fn(i32, i32) -> bool,
) -> Result<(), String> {
    for (level, opt, hex) in saved {
        if !keep(*level, *opt) {
            continue;
        }
        let val = from_hex(hex).ok_or("a damaged option value")?;
        set_one(fd, *level, *opt, &val).map_err(|e| format!("option {level}/{opt}: {e}"))?;
    }
    Ok(())
}

/// Sets the options that bind(2) looks at.
pub fn restore_early(fd: BorrowedFd, saved: &[(i32, i32, String)]) -> Result<(), String> {
    restore_filtered(fd, saved, |l, o| EARLY.contains(&(l, o)))
}

/// Sets every saved option that differs from the socket's (IPV6_V6ONLY, which
/// cannot change once bound, was set early).
pub fn restore(fd: BorrowedFd, saved: &[(i32, i32, String)]) -> Result<(), String> {
    restore_filtered(fd, saved, |l, o| {
        (l, o) != (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
    })
}
