//! Unix sockets. A mutually connected pair (socketpair, or an accepted
//! connection with its client) comes back as a socketpair; a listener is bound
//! and listens again, and its connections not yet accepted are made again by
//! their clients; datagram sockets are bound and connected by name. Unread data
//! is sent again by the other end, descriptors in flight with it.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, connect, listen, socket, socketpair, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage, UnixAddr,
};

use super::diag::UnixDiag;
use super::queue::{self, Peeked};
use super::{describe, Addr, OpenOther, SocketImg, State};
use crate::ckpt::image::FdKind;

const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

/// The key under which the stand-in other end of a cut stream is kept while
/// its queue is refilled.
fn stand_in(id: u64) -> u64 {
    id | 1 << 63
}

/// Saves what the diagnostics and the queue tell about `fd`.
pub fn dump(
    fd: &OwnedFd,
    img: &mut SocketImg,
    table: &HashMap<u32, UnixDiag>,
    cwd: &Path,
) -> Result<(Vec<u8>, queue::InFlightFds), String> {
    let d = table
        .get(&(img.id as u32))
        .ok_or("a unix socket of another network namespace")?;
    img.state = match d.state {
        TCP_LISTEN => State::Listening { backlog: d.rqlen.1 },
        TCP_ESTABLISHED => State::Connected,
        _ => State::Unconnected,
    };
    img.local = d.name.as_deref().and_then(Addr::from_unix_name);
    img.shutdown = d.shutdown;
    img.peer_id = d.peer.map(u64::from);
    if let Some(p) = img.local.as_ref().and_then(Addr::path) {
        let full = if p.is_relative() {
            img.cwd = Some(cwd.to_path_buf());
            cwd.join(&p)
        } else {
            p
        };
        // The file the name was bound to is gone (or another now has the name).
        img.deleted = match (std::fs::symlink_metadata(&full), d.vfs) {
            (Ok(m), Some((ino, _))) => m.ino() as u32 != ino || !m.file_type().is_socket(),
            (Err(_), _) => true,
            (Ok(_), None) => false,
        };
    }
    if let State::Listening { .. } = img.state {
        // Its waiting connections have no inode yet: their clients are found
        // by the listener's name (see check_peers).
        return Ok((Vec::new(), Vec::new()));
    }
    let (data, chunks, fds): Peeked = queue::peek(fd.as_fd(), img.stype == libc::SOCK_DGRAM)?;
    img.queue = chunks;
    Ok((data, fds))
}

/// Sorts out the other end of every connected Unix socket once all are
/// saved: inside the application, waiting on a listener of it, gone, or
/// outside (a datagram peer is reached again by name; a stream is refused
/// unless `external` says to cut it).
pub fn check_peers(
    images: &mut BTreeMap<u64, SocketImg>,
    table: Option<&HashMap<u32, UnixDiag>>,
    external: bool,
) -> Result<(), String> {
    // A client whose connection waits on a listener: its peer (the
    // listener's half, not accepted yet) has no inode, and nothing shut it.
    let listeners: Vec<(u64, Addr)> = images
        .values()
        .filter(|s| s.family == libc::AF_UNIX && matches!(s.state, State::Listening { .. }))
        .filter_map(|s| Some((s.id, s.local.clone()?)))
        .collect();
    let ids: Vec<u64> = images.keys().copied().collect();
    let mut waiting = Vec::new();
    for id in &ids {
        let s = &images[id];
        if s.family != libc::AF_UNIX || s.peer_id != Some(0) || s.shutdown != 0 {
            continue;
        }
        if let Some((l, _)) = listeners.iter().find(|(_, a)| Some(a) == s.peer.as_ref()) {
            waiting.push(*id);
            let l = *l;
            images.get_mut(&l).unwrap().waiting.push(*id);
        }
    }
    for id in ids {
        let s = &images[&id];
        if s.family != libc::AF_UNIX {
            continue;
        }
        let Some(peer) = s.peer_id else { continue };
        if images.contains_key(&peer) {
            continue;
        }
        let stream = s.stype != libc::SOCK_DGRAM;
        let alive = peer != 0 && table.is_some_and(|t| t.contains_key(&(peer as u32)));
        let s = images.get_mut(&id).unwrap();
        s.peer_id = None;
        if waiting.contains(&id) || !stream {
            // Connected again through its listener, or by the peer's name.
            if !stream && s.peer.is_none() && alive {
                return Err(format!(
                    "{}: connected to a nameless socket outside the application",
                    describe(s)
                ));
            }
            continue;
        }
        if alive && !external {
            return Err(format!(
                "{}: connected to a process outside the application (checkpoint with --external-unix to cut it at restart)",
                describe(s)
            ));
        }
        // Its peer has closed (or is cut): it comes back with a closed peer.
        s.cut = true;
    }
    Ok(())
}

fn sock_type(stype: i32) -> Result<SockType, String> {
    match stype {
        libc::SOCK_STREAM => Ok(SockType::Stream),
        libc::SOCK_DGRAM => Ok(SockType::Datagram),
        libc::SOCK_SEQPACKET => Ok(SockType::SeqPacket),
        t => Err(format!("unix socket of type {t}")),
    }
}

/// Where a path name lands for the restorer.
fn full_path(s: &SocketImg) -> Option<PathBuf> {
    let p = s.local.as_ref()?.path()?;
    Some(match &s.cwd {
        Some(c) if p.is_relative() => c.join(p),
        _ => p,
    })
}

/// Creates `s` (with its other end when they form a pair), bound and
/// listening as it was.
pub fn create(
    s: &SocketImg,
    by_id: &HashMap<u64, &SocketImg>,
    made: &mut HashMap<u64, OwnedFd>,
) -> Result<(), String> {
    let err = |what: &str, e: nix::Error| format!("{}: {what}: {e}", describe(s));
    let ty = sock_type(s.stype)?;
    let mutual = s
        .peer_id
        .and_then(|p| by_id.get(&p))
        .filter(|p| p.peer_id == Some(s.id));
    if let Some(p) = mutual {
        if accepted_from(p, by_id).is_some() {
            // The client end; the other comes from its listener's accept.
            let fd = socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| err("socket", e))?;
            made.insert(s.id, fd);
            return Ok(());
        }
        if accepted_from(s, by_id).is_some() {
            return Ok(()); // Made with its client's connection.
        }
        let (a, b) = socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| err("socketpair", e))?;
        made.insert(s.id, a);
        made.insert(p.id, b);
        // Datagram pairs may both be bound (a connected stream's name is its
        // listener's, which it does not hold).
        if s.stype == libc::SOCK_DGRAM {
            bind_name(s, made[&s.id].as_fd())?;
            bind_name(p, made[&p.id].as_fd())?;
        }
        return Ok(());
    }
    if s.cut {
        let (a, b) = socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| err("socketpair", e))?;
        made.insert(s.id, a);
        made.insert(stand_in(s.id), b);
        return Ok(());
    }
    let fd = socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| err("socket", e))?;
    if s.state != State::Connected || s.stype == libc::SOCK_DGRAM {
        super::opts::restore_early(fd.as_fd(), &s.opts)?;
        bind_name(s, fd.as_fd())?;
    }
    if let State::Listening { backlog } = s.state {
        listen(
            &fd,
            Backlog::new(backlog as i32).unwrap_or(Backlog::MAXCONN),
        )
        .map_err(|e| err("listen", e))?;
    }
    made.insert(s.id, fd);
    Ok(())
}

/// The listener of the application `s` was accepted from: a connected stream
/// bearing a listener's name.
fn accepted_from<'a>(s: &SocketImg, by_id: &HashMap<u64, &'a SocketImg>) -> Option<&'a SocketImg> {
    if s.stype == libc::SOCK_DGRAM || s.state != State::Connected {
        return None;
    }
    let name = s.local.as_ref()?;
    by_id
        .values()
        .find(|l| matches!(l.state, State::Listening { .. }) && l.local.as_ref() == Some(name))
        .copied()
}

/// Binds `s`'s name, taking over a path left by the checkpointed socket (a
/// socket file nobody listens on).
fn bind_name(s: &SocketImg, fd: BorrowedFd) -> Result<(), String> {
    let Some(addr) = &s.local else { return Ok(()) };
    let sa = match full_path(s) {
        Some(p) => {
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_socket()) {
                let probe = socket(
                    AddressFamily::Unix,
                    sock_type(s.stype)?,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(|e| e.to_string())?;
                let ua = UnixAddr::new(&p).map_err(|e| e.to_string())?;
                if connect(probe.as_raw_fd(), &ua).is_ok() && s.stype != libc::SOCK_DGRAM {
                    return Err(format!(
                        "{}: {} is in use by another process",
                        describe(s),
                        p.display()
                    ));
                }
                let _ = std::fs::remove_file(&p);
            }
            super::sys::unix_storage(&UnixAddr::new(&p).map_err(|e| e.to_string())?)
        }
        None => addr.to_storage()?,
    };
    bind(fd.as_raw_fd(), &sa).map_err(|e| format!("{}: bind: {e}", describe(s)))
}

/// Makes the connections that go through a name: clients waiting on a
/// listener, datagram sockets connected to another.
pub fn connect_all(socks: &[SocketImg], made: &mut HashMap<u64, OwnedFd>) -> Result<(), String> {
    let by_id: HashMap<u64, &SocketImg> = socks.iter().map(|s| (s.id, s)).collect();
    // Accepted connections first, as they were before the waiting ones: the
    // client connects to the listener, which accepts at once.
    for s in socks.iter().filter(|s| s.family == libc::AF_UNIX) {
        let (Some(l), Some(client)) = (accepted_from(s, &by_id), s.peer_id) else {
            continue;
        };
        let addr = listener_addr(l)?;
        let c = made
            .get(&client)
            .ok_or_else(|| format!("{}: its client is missing", describe(s)))?;
        connect(c.as_raw_fd(), &addr)
            .map_err(|e| format!("{}: connect its client again: {e}", describe(s)))?;
        let fd = nix::sys::socket::accept4(made[&l.id].as_raw_fd(), SockFlag::SOCK_CLOEXEC)
            .map_err(|e| format!("{}: accept: {e}", describe(s)))?;
        made.insert(s.id, crate::ckpt::sys::owned_fd(fd));
    }
    for l in socks
        .iter()
        .filter(|s| s.family == libc::AF_UNIX && !s.waiting.is_empty())
    {
        let addr = listener_addr(l)?;
        for c in &l.waiting {
            let fd = made
                .get(c)
                .ok_or_else(|| format!("{}: a waiting client is missing", describe(l)))?;
            connect(fd.as_raw_fd(), &addr)
                .map_err(|e| format!("{}: connect a waiting client: {e}", describe(l)))?;
        }
    }
    for s in socks
        .iter()
        .filter(|s| s.family == libc::AF_UNIX && s.stype == libc::SOCK_DGRAM)
    {
        let target = match s.peer_id.and_then(|p| by_id.get(&p)) {
            Some(p) if p.peer_id == Some(s.id) => continue, // a pair
            Some(p) => p.local.clone().map(|a| (a, full_path(p))),
            None => s.peer.clone().map(|a| (a, None)),
        };
        let Some((addr, path)) = target else { continue };
        let sa = match path {
            Some(p) => super::sys::unix_storage(&UnixAddr::new(&p).map_err(|e| e.to_string())?),
            None => addr.to_storage()?,
        };
        connect(made[&s.id].as_raw_fd(), &sa)
            .map_err(|e| format!("{}: cannot connect to {addr} again: {e}", describe(s)))?;
    }
    Ok(())
}

fn listener_addr(l: &SocketImg) -> Result<SockaddrStorage, String> {
    match (&l.local, full_path(l)) {
        (_, Some(p)) => Ok(super::sys::unix_storage(
            &UnixAddr::new(&p).map_err(|e| e.to_string())?,
        )),
        (Some(a), None) => a.to_storage(),
        (None, None) => Err(format!("{}: a listener without a name", describe(l))),
    }
}

/// Puts `s`'s unread data back, sent by its other end (or, for a datagram
/// socket without one, by a socket of the restorer to its name).
pub fn refill(
    s: &SocketImg,
    data: &[u8],
    made: &mut HashMap<u64, OwnedFd>,
    open_other: OpenOther,
) -> Result<(), String> {
    if s.queue.is_empty() {
        made.remove(&stand_in(s.id));
        return Ok(());
    }
    let err = |e: String| format!("{}: {e}", describe(s));
    let mutual = s.peer_id.filter(|p| made.contains_key(p));
    let temp;
    let (sender, to): (BorrowedFd, Option<SockaddrStorage>) =
        if let Some(b) = made.get(&stand_in(s.id)) {
            (b.as_fd(), None)
        } else if let Some(p) = mutual.filter(|_| s.stype != libc::SOCK_DGRAM) {
            (made[&p].as_fd(), None)
        } else if s.stype == libc::SOCK_DGRAM {
            let Some(local) = &s.local else {
                // A nameless datagram socket hears only from its pair.
                let p = mutual.ok_or_else(|| err("unread datagrams from nowhere".into()))?;
                return fill(s, made[&p].as_fd(), None, data, made, open_other).map_err(err);
            };
            temp = socket(
                AddressFamily::Unix,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| err(e.to_string()))?;
            let to = match full_path(s) {
                Some(p) => super::sys::unix_storage(&UnixAddr::new(&p).map_err(|e| e.to_string())?),
                None => local.to_storage()?,
            };
            (temp.as_fd(), Some(to))
        } else {
            return Err(err("unread data but no other end".into()));
        };
    fill(s, sender, to.as_ref(), data, made, open_other).map_err(err)?;
    made.remove(&stand_in(s.id));
    Ok(())
}

fn fill(
    s: &SocketImg,
    sender: BorrowedFd,
    to: Option<&SockaddrStorage>,
    data: &[u8],
    made: &HashMap<u64, OwnedFd>,
    open_other: OpenOther,
) -> Result<(), String> {
    let mut fds_of = |c: &queue::Chunk| -> Result<Vec<OwnedFd>, String> {
        c.fds
            .iter()
            .map(|(flags, kind)| match kind {
                FdKind::Socket { id } => made
                    .get(id)
                    .ok_or_else(|| format!("socket {id} in flight is missing"))?
                    .try_clone()
                    .map_err(|e| e.to_string()),
                k => open_other(k, *flags),
            })
            .collect()
    };
    queue::refill(sender, to, &s.queue, data, &mut fds_of)
}

/// Shutdown state and a deleted name, once all data is in.
pub fn finish(s: &SocketImg, fd: BorrowedFd) -> Result<(), String> {
    if s.family != libc::AF_UNIX {
        return Ok(());
    }
    use nix::sys::socket::{shutdown, Shutdown};
    let how = match s.shutdown & 3 {
        1 => Some(Shutdown::Read),
        2 => Some(Shutdown::Write),
        3 => Some(Shutdown::Both),
        _ => None,
    };
    if let Some(h) = how {
        shutdown(fd.as_raw_fd(), h).map_err(|e| format!("{}: shutdown: {e}", describe(s)))?;
    }
    if s.deleted {
        if let Some(p) = full_path(s) {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}
