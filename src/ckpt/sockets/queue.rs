//! Receive queues: read without consuming them (SO_PEEK_OFF at 0, then
//! MSG_PEEK until nothing is left, the offset moving on by itself), and put
//! back at restart by sending every piece again from the other end.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::SockaddrStorage;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use super::{sys, Addr};
use crate::ckpt::image::FdKind;

/// One message (or piece of a stream) waiting to be read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    pub len: u64,
    /// Descriptors sent with it (SCM_RIGHTS), not yet received: open flags
    /// and what each is.
    #[serde(default)]
    pub fds: Vec<(u32, FdKind)>,
    /// The sender of a datagram to an unconnected socket.
    #[serde(default)]
    pub from: Option<Addr>,
}

/// Most descriptors one message carries (SCM_MAX_FD).
const MAX_FDS: usize = 253;

/// The unread data of `fd`: the bytes, the pieces, and the descriptors in
/// flight as (piece, place, copy in this process).
pub type Peeked = (Vec<u8>, Vec<Chunk>, InFlightFds);

/// Descriptors in flight as (piece, place, copy in this process).
pub type InFlightFds = Vec<(usize, usize, OwnedFd)>;

/// Reads the receive queue of `fd` without consuming it. `senders`: keep the
/// address of each datagram's sender.
pub fn peek(fd: BorrowedFd, senders: bool) -> Result<Peeked, String> {
    let old = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    sys::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(|e| format!("cannot read its queue (SO_PEEK_OFF): {e}"))?;
    let result = peek_all(fd, senders);
    let _ = sys::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    result
}

fn peek_all(fd: BorrowedFd, senders: bool) -> Result<Peeked, String> {
    let mut data = Vec::new();
    let mut chunks = Vec::new();
    let mut in_flight = Vec::new();
    // A datagram must fit whole; a stream is read in pieces of this size.
    let mut buf = vec![0u8; 4 << 20];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = match recvmsg::<SockaddrStorage>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(nix::Error::EAGAIN) => break,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(format!("cannot read its queue: {e}")),
        };
        if r.flags.contains(MsgFlags::MSG_TRUNC) || r.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err("a queued message too large to save".into());
        }
        let n = r.bytes;
        let mut fds = Vec::new();
        for c in r
            .cmsgs()
            .map_err(|e| format!("cannot read its queue: {e}"))?
        {
            if let ControlMessageOwned::ScmRights(list) = c {
                for f in list {
                    // Installed in this process by the peek: ours to close.
                    fds.push(crate::ckpt::sys::owned_fd(f));
                }
            }
        }
        let from = if senders {
            r.address.as_ref().and_then(Addr::from_storage)
        } else {
            None
        };
        if n == 0 && fds.is_empty() {
            // End of a stream (or an empty datagram, which is not kept).
            break;
        }
        // A stream glues pieces sent apart; the descriptors belong to the
        // last one, where a peek cannot tell it starts (it reports them for
        // any prefix). They come back on the last byte: a reader gets them
        // with the end of the message, as it would have.
        let split = if !fds.is_empty() && n > 1 && !senders {
            n - 1
        } else {
            0
        };
        if split > 0 {
            chunks.push(Chunk {
                len: split as u64,
                fds: Vec::new(),
                from: None,
            });
        }
        let n = n - split;
        let idx = chunks.len();
        chunks.push(Chunk {
            len: n as u64,
            fds: fds.iter().map(|_| (0, FdKind::Dup { of: -1 })).collect(),
            from,
        });
        for (slot, f) in fds.into_iter().enumerate() {
            in_flight.push((idx, slot, f));
        }
        data.extend_from_slice(&buf[..split + n]);
    }
    Ok((data, chunks, in_flight))
}

/// Sends the saved pieces from `sender` (to `to`, or where it is connected),
/// with the descriptors each carried, already opened by `fds_of`.
pub fn refill(
    sender: BorrowedFd,
    to: Option<&SockaddrStorage>,
    chunks: &[Chunk],
    data: &[u8],
    fds_of: &mut dyn FnMut(&Chunk) -> Result<Vec<OwnedFd>, String>,
) -> Result<(), String> {
    let total = chunks.iter().map(|c| c.len).sum::<u64>();
    if total as usize > data.len() {
        return Err("its saved queue is shorter than recorded".into());
    }
    // The data sat in the receiver's queue charged to the sender: room for all
    // of it now (the saved sizes come back with the options).
    let room = (total as i32).saturating_mul(2).saturating_add(1 << 16);
    if sys::get_int(sender, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0) < room {
        let _ = sys::set_int(sender, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, room);
    }
    let mut off = 0usize;
    for c in chunks {
        let bytes = &data[off..off + c.len as usize];
        off += c.len as usize;
        let fds = fds_of(c)?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut sent = 0;
        loop {
            let iov = [IoSlice::new(&bytes[sent..])];
            let cm = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if sent == 0 && !raw.is_empty() {
                &cm
            } else {
                &[]
            };
            let n = sendmsg(sender.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, to)
                .map_err(|e| match e {
                    nix::Error::EAGAIN => "its saved queue does not fit into the new socket (net.unix.max_dgram_qlen or buffer sizes lower than at the checkpoint?)".to_string(),
                    e => format!("cannot refill its queue: {e}"),
                })?;
            sent += n;
            if sent >= bytes.len() {
                break;
            }
        }
        drop(fds);
    }
    Ok(())
}

/// The first `n` bytes of a stream's receive queue, without consuming them.
pub fn peek_bytes(fd: BorrowedFd, n: usize) -> Result<Vec<u8>, String> {
    let old = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    sys::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(|e| format!("cannot read its queue (SO_PEEK_OFF): {e}"))?;
    let mut out = vec![0u8; n];
    let mut got = 0;
    let result = loop {
        if got == n {
            break Ok(());
        }
        match nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut out[got..],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => break Err(format!("its queue ended after {got} of {n} bytes")),
            Ok(k) => got += k,
            Err(nix::Error::EINTR) => {}
            Err(e) => break Err(format!("cannot read its queue: {e}")),
        }
    };
    let _ = sys::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    result.map(|()| out)
}
