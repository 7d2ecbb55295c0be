//! UDP. A socket is bound and connected again; its queued datagrams (which
//! CRIU drops) are sent to it again, each from a socket bound to its sender's
//! address, so that recvfrom still names the sender.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType};

use super::{describe, opts, queue, sys, Addr, SocketImg, State};

/// Saves `fd`'s queue; returns its bytes.
pub fn dump(fd: &OwnedFd, img: &mut SocketImg) -> Result<Vec<u8>, String> {
    if img.peer.is_some() {
        img.state = State::Connected;
    }
    let (data, chunks, fds) = queue::peek(fd.as_fd(), true)?;
    if !fds.is_empty() {
        return Err("descriptors in flight on a UDP socket".into());
    }
    img.queue = chunks;
    Ok(data)
}

fn family(s: &SocketImg) -> AddressFamily {
    if s.family == libc::AF_INET6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn inet(a: &Option<Addr>) -> Option<SocketAddr> {
    match a {
        Some(Addr::Inet(s)) => Some(*s),
        _ => None,
    }
}

/// The socket of `s`, bound and connected. Address reuse is on until its
/// options are set back, so that the senders of its queued datagrams can
/// take their addresses for a moment.
pub fn create(s: &SocketImg) -> Result<OwnedFd, String> {
    let e = |what: &'static str| move |err: nix::Error| format!("{}: {what}: {err}", describe(s));
    let fd =
        socket(family(s), SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(e("socket"))?;
    opts::restore_early(fd.as_fd(), &s.opts)?;
    let _ = sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    if let Some(a) = inet(&s.local).filter(|a| a.port() != 0) {
        bind(fd.as_raw_fd(), &Addr::Inet(a).to_storage()?).map_err(e("bind"))?;
    }
    if let Some(p) = inet(&s.peer) {
        connect(fd.as_raw_fd(), &Addr::Inet(p).to_storage()?).map_err(e("connect"))?;
    }
    Ok(fd)
}

/// Sends the saved datagrams to the socket of `s` again.
pub fn refill(
    s: &SocketImg,
    data: &[u8],
    made: &std::collections::HashMap<u64, OwnedFd>,
) -> Result<(), String> {
    if s.queue.is_empty() || !made.contains_key(&s.id) {
        return Ok(());
    }
    let err = |e: String| format!("{}: {e}", describe(s));
    let Some(mut to) = inet(&s.local) else {
        return Err(err("queued datagrams but no address".into()));
    };
    // Bound to every address: deliver through the loopback.
    if to.ip().is_unspecified() {
        to.set_ip(match to {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let to = Addr::Inet(to).to_storage()?;
    let mut off = 0usize;
    for c in &s.queue {
        let len = c.len as usize;
        let bytes = data
            .get(off..off + len)
            .ok_or_else(|| err("its saved queue is short".into()))?;
        off += len;
        let tmp = socket(family(s), SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| err(e.to_string()))?;
        if let Some(from) = inet(&c.from) {
            let f = tmp.as_fd();
            let _ = sys::set_int(f, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
            // The sender may be an address of another machine.
            let _ = sys::set_int(f, libc::SOL_IP, libc::IP_FREEBIND, 1);
            let _ = sys::set_int(f, libc::SOL_IP, libc::IP_TRANSPARENT, 1);
            if let Err(e) = bind(tmp.as_raw_fd(), &Addr::Inet(from).to_storage()?) {
                log::debug!(
                    "{}: a datagram from {from} comes back from another address: {e}",
                    describe(s)
                );
            }
        }
        let one = [queue::Chunk {
            len: c.len,
            fds: Vec::new(),
            from: None,
        }];
        queue::refill(tmp.as_fd(), Some(&to), &one, bytes, &mut |_| Ok(Vec::new())).map_err(err)?;
    }
    Ok(())
}
