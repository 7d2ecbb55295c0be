//! What only the kernel's socket diagnostics tell about Unix sockets
//! (NETLINK_SOCK_DIAG, unix_diag): the peer of a connection, the connections
//! waiting on a listener, shutdown state and the file a name is bound to. One
//! dump of every Unix socket of the application's network namespace is read
//! per checkpoint. The messages are a few fixed structures and attributes,
//! read here directly.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// One Unix socket as the diagnostics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub stype: u8,
    /// TCP_* state numbers: 1 connected, 7 unconnected, 10 listening.
    pub state: u8,
    /// Bound name: sun_path bytes (a leading NUL for an abstract name).
    pub name: Option<Vec<u8>>,
    /// (inode, device) of the file a path name is bound to.
    pub vfs: Option<(u32, u32)>,
    pub peer: Option<u32>,
    /// Sockets of connections not yet accepted (listeners).
    pub icons: Vec<u32>,
    /// Listener: (connections waiting, backlog); other: (bytes to read, bytes sent unread).
    pub rqlen: (u32, u32),
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// A netlink diagnostics socket in the network namespace of process `pid`.
fn diag_socket(pid: i32) -> Result<OwnedFd, String> {
    // A socket stays in the namespace it was made in.
    crate::net::in_netns_of(pid, || {
        socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(|e| format!("cannot open a socket diagnostics channel: {e}"))
    })
}

/// Every Unix socket of the network namespace of process `pid`, by inode.
pub fn unix_sockets(pid: i32) -> Result<HashMap<u32, UnixDiag>, String> {
    let fd = diag_socket(pid)?;
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // every inode
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    let err = |e: nix::Error| format!("socket diagnostics: {e}");
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(err)?;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(err)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(&buf, off).unwrap_or(0) as usize;
            let kind = u16_at(&buf, off + 4).unwrap_or(0);
            if len < 16 || off + len > n {
                return Err("socket diagnostics: a truncated message".into());
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = u32_at(&buf, off + 16).unwrap_or(0) as i32;
                    return Err(err(nix::Error::from_raw(-code)));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some((ino, d)) = parse(&buf[off + 16..off + len]) {
                        out.insert(ino, d);
                    }
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// One unix_diag_msg and its attributes.
fn parse(m: &[u8]) -> Option<(u32, UnixDiag)> {
    let mut d = UnixDiag {
        stype: *m.get(1)?,
        state: *m.get(2)?,
        ..Default::default()
    };
    let ino = u32_at(m, 4)?;
    let mut off = 16;
    while off + 4 <= m.len() {
        let len = u16_at(m, off)? as usize;
        let kind = u16_at(m, off + 2)?;
        if len < 4 || off + len > m.len() {
            break;
        }
        let v = &m[off + 4..off + len];
        match kind {
            UNIX_DIAG_NAME => d.name = Some(v.to_vec()),
            UNIX_DIAG_VFS => d.vfs = Some((u32_at(v, 0)?, u32_at(v, 4)?)),
            UNIX_DIAG_PEER => d.peer = u32_at(v, 0),
            UNIX_DIAG_ICONS => d.icons = v.chunks_exact(4).filter_map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN => d.rqlen = (u32_at(v, 0)?, u32_at(v, 4)?),
            UNIX_DIAG_SHUTDOWN => d.shutdown = *v.first()?,
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some((ino, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn ino(fd: &impl AsRawFd) -> u32 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino() as u32
    }

    #[test]
    fn pairs_listeners_and_waiting_connections() {
        let (a, b) = UnixStream::pair().unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let name = format!("\0xos-diag-test-{}", std::process::id());
        let l =
            <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
                &name.as_bytes()[1..],
            )
            .unwrap();
        let listener = UnixListener::bind_addr(&l).unwrap();
        let client = UnixStream::connect_addr(&l).unwrap();
        let all = unix_sockets(std::process::id() as i32).unwrap();
        let (da, db) = (&all[&ino(&a)], &all[&ino(&b)]);
        assert_eq!((da.peer, db.peer), (Some(ino(&b)), Some(ino(&a))));
        assert_eq!((da.state, da.shutdown, db.shutdown), (1, 1, 2));
        let dl = &all[&ino(&listener)];
        assert_eq!(dl.state, 10);
        assert_eq!(dl.name.as_deref(), Some(name.as_bytes()));
        assert_eq!(dl.icons.len(), 1);
        // The listener's half of a waiting connection has no inode yet.
        let dc = &all[&ino(&client)];
        assert_eq!((dc.state, dc.peer, dc.shutdown), (1, Some(0), 0));
    }
}
