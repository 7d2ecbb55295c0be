//! UDP. A socket is bound and connected again; its queued datagrams (which
//! CRIU drops) are sent to it again, each from a socket bound to its sender's
//! address, so that recvfrom still names the sender.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockProtocol, SockType};

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

const PING_GROUP_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// A ping socket (ICMP echo without a raw socket): its addresses and options.
/// Echo replies not yet read are not kept: the application sees them lost,
/// as the network may lose them.
pub fn dump_ping(_fd: &OwnedFd, img: &mut SocketImg, ns_pid: i32) -> Result<Vec<u8>, String> {
    // getpeername does not tell a ping socket's peer; the kernel's table does.
    let table = if img.family == libc::AF_INET6 {
        "icmp6"
    } else {
        "icmp"
    };
    let text = std::fs::read_to_string(format!("/proc/{ns_pid}/net/{table}")).unwrap_or_default();
    img.peer = ping_peer(&text, img.id);
    if img.peer.is_some() {
        img.state = State::Connected;
    }
    let range = crate::net::in_netns_of(ns_pid, || {
        std::fs::read_to_string(PING_GROUP_RANGE).map_err(|e| format!("{PING_GROUP_RANGE}: {e}"))
    })?;
    img.ping_groups = Some(range.trim().to_string());
    Ok(Vec::new())
}

/// The remote address of socket `ino` in /proc/net/icmp or icmp6, if set.
fn ping_peer(table: &str, ino: u64) -> Option<Addr> {
    let line = table.lines().skip(1).find(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(9).and_then(|i| i.parse::<u64>().ok()) == Some(ino)
    })?;
    let rem = line.split_whitespace().nth(2)?;
    let (addr, _) = rem.split_once(':')?;
    // Each 32-bit word is the address's bytes as the kernel holds them.
    let mut bytes = Vec::new();
    for i in (0..addr.len()).step_by(8) {
        bytes.extend_from_slice(
            &u32::from_str_radix(addr.get(i..i + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        );
    }
    let ip: IpAddr = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    (!ip.is_unspecified()).then_some(Addr::Inet(SocketAddr::new(ip, 0)))
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
    let proto = if let Some(range) = &s.ping_groups {
        // Who may ping is a setting of the namespace, saved with the socket.
        let now = std::fs::read_to_string(PING_GROUP_RANGE).unwrap_or_default();
        if now.split_whitespace().ne(range.split_whitespace()) {
            std::fs::write(PING_GROUP_RANGE, range)
                .map_err(|err| format!("{}: {PING_GROUP_RANGE}: {err}", describe(s)))?;
        }
        Some(if s.family == libc::AF_INET6 {
            SockProtocol::IcmpV6
        } else {
            SockProtocol::Icmp
        })
    } else {
        None
    };
    let fd = socket(family(s), SockType::Datagram, SockFlag::SOCK_CLOEXEC, proto)
        .map_err(e("socket"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_peers_from_the_kernels_table() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                 \x20 12: 0100007F:1D90 0100007F:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n\
                 \x20 13: 0100007F:1D91 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0\n";
        assert_eq!(
            ping_peer(t, 4242),
            Some(Addr::Inet("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(ping_peer(t, 4243), None);
        let t6 = "header\n  1: 00000000000000000000000001000000:0001 00000000000000000000000001000000:0000 07 0:0 0:0 0 0 0 77 2 0 0\n";
        assert_eq!(
            ping_peer(t6, 77),
            Some(Addr::Inet("[::1]:0".parse().unwrap()))
        );
    }
}
