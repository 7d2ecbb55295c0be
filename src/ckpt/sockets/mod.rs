//! Sockets of a checkpointed application: Unix (stream, datagram, seqpacket),
//! TCP and UDP over IPv4 and IPv6. The checkpointer takes a copy of each
//! socket from its stopped owner (pidfd_getfd), reads its state, options and
//! unread data without consuming anything, and restart builds every socket in
//! the application's init before the processes exist, so that each process
//! only picks its descriptors up, as for pipes. One file per family:
//! [`unix`], [`tcp`], [`udp`]; [`queue`] reads and refills receive queues,
//! [`opts`] the socket options, [`diag`] asks the kernel what only it knows
//! about Unix sockets.

pub mod diag;
mod netlink;
mod opts;
mod queue;
mod sys;
mod tcp;
mod udp;
mod unix;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::SockaddrStorage;
use serde::{Deserialize, Serialize};

use crate::ckpt::image::{from_hex, to_hex, Blob, FdKind};

pub use queue::Chunk;

/// A socket address as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Addr {
    /// A path name, as bytes (hex).
    UnixPath(String),
    /// An abstract name without its leading NUL, as bytes (hex).
    UnixAbstract(String),
    Inet(SocketAddr),
    /// A netlink socket's multicast groups (its port id is the kernel's).
    Netlink {
        groups: u32,
    },
}

impl Addr {
    fn from_storage(s: &SockaddrStorage) -> Option<Addr> {
        if let Some(u) = s.as_unix_addr() {
            if let Some(p) = u.path() {
                return Some(Addr::UnixPath(to_hex(p.as_os_str().as_encoded_bytes())));
            }
            return u.as_abstract().map(|a| Addr::UnixAbstract(to_hex(a)));
        }
        if let Some(a) = s.as_sockaddr_in() {
            return Some(Addr::Inet(SocketAddr::V4((*a).into())));
        }
        s.as_sockaddr_in6()
            .map(|a| Addr::Inet(SocketAddr::V6((*a).into())))
    }

    /// From the sun_path bytes the diagnostics give (a leading NUL: abstract).
    fn from_unix_name(name: &[u8]) -> Option<Addr> {
        match name.split_first() {
            None => None,
            Some((0, rest)) => Some(Addr::UnixAbstract(to_hex(rest))),
            // A path name as the kernel keeps it may end in NULs.
            Some(_) => {
                let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                Some(Addr::UnixPath(to_hex(&name[..end])))
            }
        }
    }

    fn to_storage(&self) -> Result<SockaddrStorage, String> {
        use nix::sys::socket::UnixAddr;
        let bad = || format!("a damaged socket address {self:?}");
        Ok(match self {
            Addr::UnixPath(h) => {
                let b = from_hex(h).ok_or_else(bad)?;
                let p = Path::new(OsStr::from_bytes(&b));
                let u = UnixAddr::new(p).map_err(|e| format!("{}: {e}", p.display()))?;
                sys::unix_storage(&u)
            }
            Addr::UnixAbstract(h) => {
                let b = from_hex(h).ok_or_else(bad)?;
                sys::unix_storage(&UnixAddr::new_abstract(&b).map_err(|e| e.to_string())?)
            }
            Addr::Inet(a) => SockaddrStorage::from(*a),
            Addr::Netlink { .. } => return Err(bad()),
        })
    }

    /// A path name, if it is one.
    fn path(&self) -> Option<PathBuf> {
        match self {
            Addr::UnixPath(h) => from_hex(h).map(|b| PathBuf::from(OsStr::from_bytes(&b))),
            _ => None,
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::UnixPath(_) => write!(f, "{}", self.path().unwrap_or_default().display()),
            Addr::UnixAbstract(h) => write!(
                f,
                "@{}",
                String::from_utf8_lossy(&from_hex(h).unwrap_or_default())
            ),
            Addr::Inet(a) => write!(f, "{a}"),
            Addr::Netlink { groups } => write!(f, "groups {groups:#x}"),
        }
    }
}

/// Where a socket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Not connected (bound or not).
    Unconnected,
    Listening {
        backlog: u32,
    },
    Connected,
}

/// One socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketImg {
    /// Its inode number at the checkpoint.
    pub id: u64,
    pub family: i32,
    pub stype: i32,
    pub protocol: i32,
    pub state: State,
    pub local: Option<Addr>,
    pub peer: Option<Addr>,
    /// The other end, when it is a socket of the application.
    #[serde(default)]
    pub peer_id: Option<u64>,
    /// Unix: the path it is bound to was deleted since.
    #[serde(default)]
    pub deleted: bool,
    /// Unix: the working directory of its owner, for a relative path name.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    #[serde(default)]
    pub shutdown: u8,
    /// Unix listener: its sockets whose connection to it was not accepted yet,
    /// in order (the client ends).
    #[serde(default)]
    pub waiting: Vec<u64>,
    /// A Unix stream to a process outside the application, cut at restart
    /// (`--external-unix`): it comes back with its peer gone.
    #[serde(default)]
    pub cut: bool,
    /// (level, option, value as hex) of every option saved.
    #[serde(default)]
    pub opts: Vec<(i32, i32, String)>,
    /// Unread messages or stream pieces, in order; their bytes are `data`.
    #[serde(default)]
    pub queue: Vec<Chunk>,
    /// (offset, length) of its bytes in the image's socket data file.
    #[serde(default)]
    pub data: (u64, u64),
    /// An established TCP connection.
    #[serde(default)]
    pub tcp: Option<tcp::Conn>,
    /// A ping socket: net.ipv4.ping_group_range of its namespace, which
    /// decides who may make one.
    #[serde(default)]
    pub ping_groups: Option<String>,
}

/// Stores a data file of the image: (name, bytes) -> its record.
pub type WriteBlob<'a> = dyn FnMut(&str, &[u8]) -> Result<Blob, String> + 'a;

/// The sockets of an image and the file holding their unread data.
pub type Images = (Vec<SocketImg>, Option<Blob>);

/// How the checkpoint treats sockets.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Save Unix streams to outside processes as cut instead of refusing them.
    pub external_unix: bool,
    /// The application has a network namespace of its own.
    pub private_net: bool,
    pub app: u64,
}

/// A descriptor in flight (SCM_RIGHTS) still to be classified by the caller:
/// socket `sock`, message `chunk`, place `slot`.
pub struct InFlight {
    pub sock: u64,
    pub chunk: usize,
    pub slot: usize,
    pub fd: OwnedFd,
}

/// Sockets saved during one checkpoint.
pub struct Dumper {
    opts: DumpOptions,
    /// Host pid of a process in the application's network namespace.
    ns_pid: i32,
    unix: Option<HashMap<u32, diag::UnixDiag>>,
    images: BTreeMap<u64, SocketImg>,
    /// The unread data of every socket, one after the other.
    data: Vec<u8>,
    /// In-flight descriptors met in queues, for the caller to classify.
    pub pending: Vec<InFlight>,
    /// TCP sockets put in repair mode: taken out again unless the checkpoint
    /// kills the application (then they close without a word to the peer).
    repaired: Vec<OwnedFd>,
    lock: Option<crate::net::lock::Lock>,
}

pub use sys::take_fd;

/// The inode of a socket descriptor.
pub fn inode(fd: RawFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .map(|m| m.ino())
        .unwrap_or(0)
}

impl Dumper {
    pub fn new(ns_pid: i32, opts: DumpOptions) -> Dumper {
        Dumper {
            opts,
            ns_pid,
            unix: None,
            images: BTreeMap::new(),
            data: Vec::new(),
            pending: Vec::new(),
            repaired: Vec::new(),
            lock: None,
        }
    }

    /// Saves socket `fd` (a copy of one of process `pid`'s) unless it already
    /// is; returns its id.
    pub fn dump(&mut self, fd: OwnedFd, cwd: &Path) -> Result<u64, String> {
        let id = inode(fd.as_raw_fd());
        if self.images.contains_key(&id) {
            return Ok(id);
        }
        let domain = sys::get_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
            .map_err(|e| format!("SO_DOMAIN: {e}"))?;
        let stype = sys::get_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE)
            .map_err(|e| format!("SO_TYPE: {e}"))?;
        let protocol =
            sys::get_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or_default();
        let mut img = SocketImg {
            id,
            family: domain,
            stype,
            protocol,
            state: State::Unconnected,
            local: nix::sys::socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
                .ok()
                .and_then(|a| Addr::from_storage(&a)),
            peer: nix::sys::socket::getpeername::<SockaddrStorage>(fd.as_raw_fd())
                .ok()
                .and_then(|a| Addr::from_storage(&a)),
            peer_id: None,
            deleted: false,
            cwd: None,
            shutdown: 0,
            waiting: Vec::new(),
            cut: false,
            opts: opts::save(fd.as_fd(), domain, stype, protocol),
            queue: Vec::new(),
            data: (0, 0),
            tcp: None,
            ping_groups: None,
        };
        let mut fds = Vec::new();
        let bytes = match (domain, stype, protocol) {
            (libc::AF_UNIX, _, _) => {
                if self.unix.is_none() {
                    self.unix = Some(diag::unix_sockets(self.ns_pid)?);
                }
                let table = self.unix.as_ref().unwrap();
                let (b, f) = unix::dump(&fd, &mut img, table, cwd)?;
                fds = f;
                b
            }
            (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM, 0 | libc::IPPROTO_TCP) => {
                tcp::dump(&fd, &mut img, self)?
            }
            (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM, 0 | libc::IPPROTO_UDP) => {
                udp::dump(&fd, &mut img)?
            }
            (
                libc::AF_INET | libc::AF_INET6,
                libc::SOCK_DGRAM,
                libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6,
            ) => udp::dump_ping(&fd, &mut img, self.ns_pid)?,
            (libc::AF_NETLINK, _, _) => netlink::dump(&fd, &mut img)?,
            (libc::AF_INET | libc::AF_INET6, _, libc::IPPROTO_MPTCP) => {
                return Err("an MPTCP socket (not saved)".into())
            }
            (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM, libc::IPPROTO_SCTP)
            | (libc::AF_INET | libc::AF_INET6, libc::SOCK_SEQPACKET, _) => {
                return Err("an SCTP socket (not saved)".into())
            }
            _ => {
                return Err(format!(
                    "a socket of family {} type {} protocol {} (not saved)",
                    family_name(domain),
                    stype,
                    protocol
                ))
            }
        };
        if !bytes.is_empty() {
            img.data = (self.data.len() as u64, bytes.len() as u64);
            self.data.extend_from_slice(&bytes);
        }
        for (chunk, slot, fd) in fds {
            self.pending.push(InFlight {
                sock: id,
                chunk,
                slot,
                fd,
            });
        }
        self.images.insert(id, img);
        Ok(id)
    }

    /// Records what in-flight descriptor `p` is.
    pub fn set_in_flight(&mut self, p: &InFlight, flags: u32, kind: FdKind) {
        if let Some(c) = self
            .images
            .get_mut(&p.sock)
            .and_then(|s| s.queue.get_mut(p.chunk))
        {
            if let Some(s) = c.fds.get_mut(p.slot) {
                *s = (flags, kind);
            }
        }
    }

    /// Checks that every connection ends where it can be rebuilt; returns the
    /// images and their data, stored by `write` as one file. Called once every
    /// process is saved.
    pub fn finish(&mut self, write: &mut WriteBlob) -> Result<Images, String> {
        unix::check_peers(
            &mut self.images,
            self.unix.as_ref(),
            self.opts.external_unix,
        )?;
        let data = if self.data.is_empty() {
            None
        } else {
            Some(write("sockets.img", &std::mem::take(&mut self.data))?)
        };
        Ok((
            std::mem::take(&mut self.images).into_values().collect(),
            data,
        ))
    }

    /// The application is being killed: its TCP sockets stay in repair mode,
    /// so they close without a reset, and the traffic lock stays for the
    /// restart to lift.
    pub fn for_kill(&mut self) {
        self.repaired.clear();
        if let Some(l) = self.lock.take() {
            l.keep();
        }
    }
}

impl Drop for Dumper {
    fn drop(&mut self) {
        for fd in &self.repaired {
            let _ = tcp::leave_repair(fd.as_fd());
        }
    }
}

fn family_name(f: i32) -> String {
    match f {
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        _ => f.to_string(),
    }
}

/// How restart opens a descriptor in flight that is not a socket.
pub type OpenOther<'a> = &'a dyn Fn(&FdKind, u32) -> Result<OwnedFd, String>;

/// Builds every socket of the image in the calling process (the
/// application's init); returns them by id. `app`'s traffic lock in the
/// host's namespace, if the checkpoint left one, is lifted once every
/// connection is back.
pub fn restore_all(
    dir: &Path,
    socks: &[SocketImg],
    blob: Option<&Blob>,
    app: u64,
    host_net: bool,
    tcp_close: bool,
    open_other: OpenOther,
) -> Result<HashMap<u64, OwnedFd>, String> {
    let all = match blob {
        Some(b) => crate::ckpt::restore::read_blob(dir, b).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let read_data = |s: &SocketImg| -> Result<&[u8], String> {
        let (off, len) = (s.data.0 as usize, s.data.1 as usize);
        all.get(off..off + len)
            .ok_or_else(|| format!("{}: its data is missing from the image", describe(s)))
    };
    let mut made: HashMap<u64, OwnedFd> = HashMap::new();
    let by_id: HashMap<u64, &SocketImg> = socks.iter().map(|s| (s.id, s)).collect();
    // The ends first, then what joins them, then the data.
    for s in socks {
        if made.contains_key(&s.id) {
            continue;
        }
        match (s.family, s.stype) {
            (libc::AF_UNIX, _) => unix::create(s, &by_id, &mut made)?,
            (_, libc::SOCK_STREAM) => {
                if let Some(fd) = tcp::create(s)? {
                    made.insert(s.id, fd);
                }
            }
            (libc::AF_NETLINK, _) => {
                made.insert(s.id, netlink::create(s)?);
            }
            _ => {
                made.insert(s.id, udp::create(s)?);
            }
        }
    }
    unix::connect_all(socks, &mut made)?;
    let conns: Vec<&SocketImg> = socks.iter().filter(|s| s.tcp.is_some()).collect();
    for s in &conns {
        let fd = tcp::create_repaired(s, read_data(s)?, tcp_close)?;
        made.insert(s.id, fd);
    }
    for s in socks {
        if s.queue.is_empty() && !s.cut {
            continue;
        }
        let data = read_data(s)?;
        match (s.family, s.stype) {
            (libc::AF_UNIX, _) => unix::refill(s, data, &mut made, open_other)?,
            (_, libc::SOCK_DGRAM) => udp::refill(s, data, &made)?,
            _ => {}
        }
    }
    // Every connection exists: they may talk now (each end finds the other).
    if host_net && !conns.is_empty() {
        crate::net::lock::unlock_app(app);
    }
    for s in &conns {
        tcp::release(made[&s.id].as_fd(), s, read_data(s)?, tcp_close)?;
    }
    for s in socks {
        if let Some(fd) = made.get(&s.id) {
            unix::finish(s, fd.as_fd())?;
            opts::restore(fd.as_fd(), &s.opts)
                .map_err(|e| format!("{}: options: {e}", describe(s)))?;
        }
    }
    Ok(made)
}

/// One line naming a socket in messages.
pub fn describe(s: &SocketImg) -> String {
    let kind = match (s.family, s.stype) {
        (libc::AF_UNIX, libc::SOCK_STREAM) => "unix stream",
        (libc::AF_UNIX, libc::SOCK_DGRAM) => "unix datagram",
        (libc::AF_UNIX, _) => "unix seqpacket",
        (libc::AF_NETLINK, _) => "netlink route",
        (_, libc::SOCK_STREAM) => "tcp",
        _ if s.ping_groups.is_some() => "ping",
        _ => "udp",
    };
    match (&s.local, &s.peer) {
        (Some(l), Some(p)) => format!("{kind} {l} -> {p}"),
        (Some(l), None) => format!("{kind} {l}"),
        (None, Some(p)) => format!("{kind} -> {p}"),
        (None, None) => format!("{kind} socket {}", s.id),
    }
}
