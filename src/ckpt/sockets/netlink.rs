//! Netlink sockets of the kind glibc opens (NETLINK_ROUTE: interface and
//! address queries, link notifications): made again with the same multicast
//! groups. Other protocols speak to kernel subsystems whose state is not
//! saved, and are refused; so is a route socket with replies not yet read.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::{describe, sys, Addr, SocketImg};

const SIOCINQ: libc::c_ulong = 0x541B;

/// Checks that `fd` can be made again; its groups are its local address.
pub fn dump(fd: &OwnedFd, img: &mut SocketImg) -> Result<Vec<u8>, String> {
    if img.protocol != libc::NETLINK_ROUTE {
        return Err(format!(
            "a netlink socket of protocol {} (only NETLINK_ROUTE is saved)",
            img.protocol
        ));
    }
    if sys::ioctl_int(fd.as_fd(), SIOCINQ).unwrap_or(0) > 0 {
        return Err("a netlink route socket with replies not yet read".into());
    }
    let groups = nix::sys::socket::getsockname::<NetlinkAddr>(fd.as_raw_fd())
        .map(|a| a.groups())
        .unwrap_or(0);
    img.local = Some(Addr::Netlink { groups });
    img.peer = None;
    Ok(Vec::new())
}

/// The socket of `s`, in its groups.
pub fn create(s: &SocketImg) -> Result<OwnedFd, String> {
    let e = |what: &'static str| move |err: nix::Error| format!("{}: {what}: {err}", describe(s));
    let ty = if s.stype == libc::SOCK_DGRAM {
        SockType::Datagram
    } else {
        SockType::Raw
    };
    let fd = socket(
        AddressFamily::Netlink,
        ty,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(e("socket"))?;
    let groups = match s.local {
        Some(Addr::Netlink { groups }) => groups,
        _ => 0,
    };
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(e("bind"))?;
    Ok(fd)
}
