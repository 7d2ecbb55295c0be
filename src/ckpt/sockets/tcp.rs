//! TCP. Listening and unconnected sockets are made again by bind and listen.
//! An established connection is read in repair mode (TCP_REPAIR): sequence
//! numbers of both queues, their data, the options negotiated, the window and
//! the timestamp; its traffic is held still first ([`crate::net::lock`]).
//! Restart makes a socket in repair mode, gives it the same sequence numbers,
//! "connects" it without a packet, refills both queues and only then lets it
//! talk; a window probe tells the peer it is back.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    bind, connect, listen, send, socket, AddressFamily, Backlog, MsgFlags, SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use super::{describe, opts, sys, Addr, Dumper, SocketImg, State};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

const STATE_ESTABLISHED: u8 = 1;
const STATE_CLOSE: u8 = 7;
const STATE_LISTEN: u8 = 10;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const CLOSING: u8 = 11;

/// An established connection's state. Its data file holds the receive queue
/// (`inq` bytes) then the send queue (`outq` bytes, the last `unsent` of
/// which had not gone out yet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conn {
    /// Sequence number after the last byte of the send queue.
    pub snd_seq: u32,
    /// Sequence number after the last byte received.
    pub rcv_seq: u32,
    pub inq: u32,
    pub outq: u32,
    pub unsent: u32,
    pub mss: u32,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// TCPI_OPT_* negotiated.
    pub options: u8,
    pub timestamp: u32,
    /// struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
    /// The peer had closed its side (CLOSE-WAIT, LAST-ACK, CLOSING): the
    /// restored socket reads what is left, then end-of-file.
    #[serde(default)]
    pub fin_in: bool,
    /// This side had closed its writing (FIN-WAIT, LAST-ACK, CLOSING): its FIN
    /// goes out again after its data.
    #[serde(default)]
    pub fin_out: bool,
}

fn state_name(s: u8) -> &'static str {
    match s {
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        11 => "CLOSING",
        _ => "an unknown state",
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .map(|x| u32::from_ne_bytes(x.try_into().unwrap()))
        .unwrap_or(0)
}

fn inet(a: &Option<Addr>) -> Option<SocketAddr> {
    match a {
        Some(Addr::Inet(s)) => Some(*s),
        _ => None,
    }
}

/// Saves `fd`'s state; returns the bytes of its queues.
pub fn dump(fd: &OwnedFd, img: &mut SocketImg, d: &mut Dumper) -> Result<Vec<u8>, String> {
    let f = fd.as_fd();
    let info = sys::getsockopt(f, libc::IPPROTO_TCP, libc::TCP_INFO, 104)
        .map_err(|e| format!("TCP_INFO: {e}"))?;
    let state = info.first().copied().unwrap_or(0);
    const TCP_ULP: i32 = 31;
    let ulp = sys::getsockopt(f, libc::IPPROTO_TCP, TCP_ULP, 16).unwrap_or_default();
    let ulp = String::from_utf8_lossy(&ulp)
        .trim_end_matches('\0')
        .to_string();
    if !ulp.is_empty() {
        return Err(format!(
            "a TCP socket with the {ulp} upper-layer protocol (not saved)"
        ));
    }
    match state {
        STATE_LISTEN => {
            img.state = State::Listening {
                backlog: u32_at(&info, 28),
            };
            let waiting = u32_at(&info, 24);
            if waiting > 0 {
                log::warn!(
                    "{}: {waiting} connections not yet accepted are not saved",
                    describe(img)
                );
            }
            return Ok(Vec::new());
        }
        STATE_CLOSE => return Ok(Vec::new()),
        STATE_ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING => {}
        s => return Err(format!("a TCP connection in state {}", state_name(s))),
    }
    // The peer's FIN came in; ours went out (it takes a sequence number).
    let fin_in = matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING);
    let fin_out = matches!(state, FIN_WAIT1 | FIN_WAIT2 | LAST_ACK | CLOSING);
    img.state = State::Connected;
    let (Some(local), Some(peer)) = (inet(&img.local), inet(&img.peer)) else {
        return Err("a TCP connection without addresses".into());
    };
    // Still, before anything is read.
    if d.lock.is_none() {
        d.lock = Some(if d.opts.private_net {
            crate::net::lock::lock_namespace(d.ns_pid)?
        } else {
            crate::net::lock::lock_connections(d.opts.app)?
        });
    }
    if let Some(l) = &d.lock {
        l.add(&local, &peer)?;
    }
    let e = |what: &'static str| move |err: nix::Error| format!("{what}: {err}");
    sys::set_int(f, libc::IPPROTO_TCP, TCP_REPAIR, 1).map_err(e("TCP_REPAIR"))?;
    d.repaired.push(fd.try_clone().map_err(|x| x.to_string())?);
    // A packet that passed the lock just before it went up may still be
    // on its way into the socket (on another CPU): read until two readings
    // agree, so that sequence numbers, queues and window belong together.
    let mut tries = 0;
    let (q, w) = loop {
        let q = read_queues(f, fin_out, true)?;
        let w = sys::getsockopt(f, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20)
            .map_err(e("TCP_REPAIR_WINDOW"))?;
        // The same numbers again mean the same bytes: nothing read them.
        let again = read_queues(f, fin_out, false)?;
        let w2 = sys::getsockopt(f, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20)
            .map_err(e("TCP_REPAIR_WINDOW"))?;
        if again.numbers() == q.numbers() && w2 == w {
            break (q, w);
        }
        tries += 1;
        if tries > 100 {
            return Err("its connection does not hold still (traffic passes the lock)".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let Queues {
        rcv_seq,
        snd_seq,
        inq,
        outq,
        unsent,
        data,
        ..
    } = q;
    let timestamp =
        sys::get_int(f, libc::IPPROTO_TCP, TCP_TIMESTAMP).map_err(e("TCP_TIMESTAMP"))? as u32;
    let wscale = info.get(6).copied().unwrap_or(0);
    img.tcp = Some(Conn {
        snd_seq: snd_seq as u32,
        rcv_seq: rcv_seq as u32,
        inq: inq as u32,
        outq: outq as u32,
        unsent: unsent as u32,
        mss: u32_at(&info, 16),
        snd_wscale: wscale & 0xf,
        rcv_wscale: wscale >> 4,
        options: info.get(5).copied().unwrap_or(0),
        timestamp,
        window: [
            u32_at(&w, 0),
            u32_at(&w, 4),
            u32_at(&w, 8),
            u32_at(&w, 12),
            u32_at(&w, 16),
        ],
        fin_in,
        fin_out,
    });
    Ok(data)
}

/// Both queues of a connection in repair mode: sequence numbers and bytes.
struct Queues {
    rcv_seq: i32,
    snd_seq: i32,
    inq: i32,
    outq: i32,
    unsent: i32,
    /// SIOCOUTQ and SIOCOUTQNSD as the kernel said them (a FIN counted).
    raw: (i32, i32),
    /// The receive queue's bytes, then the send queue's.
    data: Vec<u8>,
}

impl Queues {
    fn numbers(&self) -> [i32; 5] {
        [self.rcv_seq, self.snd_seq, self.inq, self.raw.0, self.raw.1]
    }
}

/// Reads both queues' numbers, and their bytes when `bytes`.
fn read_queues(f: BorrowedFd, fin_out: bool, bytes: bool) -> Result<Queues, String> {
    let e = |what: &'static str| move |err: nix::Error| format!("{what}: {err}");
    let set_queue = |q| sys::set_int(f, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, q);
    set_queue(TCP_RECV_QUEUE).map_err(e("TCP_REPAIR_QUEUE"))?;
    let rcv_seq = sys::get_int(f, libc::IPPROTO_TCP, TCP_QUEUE_SEQ).map_err(e("TCP_QUEUE_SEQ"))?;
    let inq = sys::ioctl_int(f, SIOCINQ).map_err(e("SIOCINQ"))?;
    let mut data = if bytes {
        super::queue::peek_bytes(f, inq as usize)?
    } else {
        Vec::new()
    };
    set_queue(TCP_SEND_QUEUE).map_err(e("TCP_REPAIR_QUEUE"))?;
    let snd_seq = sys::get_int(f, libc::IPPROTO_TCP, TCP_QUEUE_SEQ).map_err(e("TCP_QUEUE_SEQ"))?;
    let outq = sys::ioctl_int(f, SIOCOUTQ).map_err(e("SIOCOUTQ"))?;
    let unsent = sys::ioctl_int(f, SIOCOUTQNSD).map_err(e("SIOCOUTQNSD"))?;
    // The send queue is read whole from its start, whatever the peek offset;
    // a FIN not yet acknowledged counts in SIOCOUTQ but is not data.
    let mut sendq = vec![0u8; if bytes { outq as usize } else { 0 }];
    let mut n = outq.max(0) as usize;
    if bytes && outq > 0 {
        n = nix::sys::socket::recv(f.as_raw_fd(), &mut sendq, MsgFlags::MSG_PEEK)
            .map_err(e("read the send queue"))?;
        if n != outq as usize && !(fin_out && n + 1 == outq as usize) {
            return Err(format!("read {n} of {outq} bytes of its send queue"));
        }
    }
    if bytes {
        data.extend_from_slice(&sendq[..n]);
    }
    let _ = set_queue(TCP_NO_QUEUE);
    Ok(Queues {
        rcv_seq,
        snd_seq,
        inq,
        outq: n as i32,
        unsent: unsent.min(n as i32),
        raw: (outq, unsent),
        data,
    })
}

/// Takes `fd` out of repair mode (a checkpoint that leaves the application
/// running, or failed).
pub fn leave_repair(fd: BorrowedFd) -> nix::Result<()> {
    sys::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, 0)
}

fn new_socket(s: &SocketImg) -> Result<OwnedFd, String> {
    let fam = if s.family == libc::AF_INET6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("{}: socket: {e}", describe(s)))
}

/// A listening or unconnected socket (None for a connection: see
/// [`create_repaired`]).
pub fn create(s: &SocketImg) -> Result<Option<OwnedFd>, String> {
    if s.tcp.is_some() {
        return Ok(None);
    }
    let fd = new_socket(s)?;
    opts::restore_early(fd.as_fd(), &s.opts)?;
    if let Some(a) = inet(&s.local).filter(|a| a.port() != 0) {
        bind(fd.as_raw_fd(), &Addr::Inet(a).to_storage()?)
            .map_err(|e| format!("{}: bind: {e}", describe(s)))?;
    }
    if let State::Listening { backlog } = s.state {
        listen(
            &fd,
            Backlog::new(backlog as i32).unwrap_or(Backlog::MAXCONN),
        )
        .map_err(|e| format!("{}: listen: {e}", describe(s)))?;
    }
    Ok(Some(fd))
}

/// Sends `data` in repair mode, in smaller pieces when the kernel wants them.
fn send_all(fd: BorrowedFd, data: &[u8]) -> nix::Result<()> {
    let mut off = 0;
    let mut piece = data.len().max(1);
    while off < data.len() {
        let end = (off + piece).min(data.len());
        match send(fd.as_raw_fd(), &data[off..end], MsgFlags::MSG_DONTWAIT) {
            Ok(n) => off += n,
            Err(nix::Error::ENOMEM | nix::Error::EAGAIN) if piece > 4096 => piece /= 2,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The connection of `s` again, still in repair mode, both queues refilled.
/// `closing`: it is only made to be reset, maybe where its address is not
/// (restart --tcp-close).
pub fn create_repaired(s: &SocketImg, data: &[u8], closing: bool) -> Result<OwnedFd, String> {
    let c = s.tcp.as_ref().ok_or("not a connection")?;
    let (Some(local), Some(peer)) = (inet(&s.local), inet(&s.peer)) else {
        return Err(format!("{}: no addresses", describe(s)));
    };
    if data.len() < (c.inq + c.outq) as usize {
        return Err(format!("{}: its saved queues are short", describe(s)));
    }
    let fd = new_socket(s)?;
    let f = fd.as_fd();
    let e = |what: &'static str| move |err: nix::Error| format!("{}: {what}: {err}", describe(s));
    let tcp = |opt, v: i32, what| sys::set_int(f, libc::IPPROTO_TCP, opt, v).map_err(e(what));
    if s.family == libc::AF_INET6 {
        opts::restore_early(f, &s.opts)?;
    }
    tcp(TCP_REPAIR, 1, "TCP_REPAIR")?;
    // Each queue starts where its saved bytes begin.
    for (queue, seq) in [
        (TCP_RECV_QUEUE, c.rcv_seq.wrapping_sub(c.inq)),
        (
            TCP_SEND_QUEUE,
            c.snd_seq.wrapping_sub(c.outq + u32::from(c.fin_out)),
        ),
    ] {
        tcp(TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
        tcp(TCP_QUEUE_SEQ, seq as i32, "TCP_QUEUE_SEQ")?;
    }
    if closing {
        let _ = sys::set_int(f, libc::SOL_IP, libc::IP_FREEBIND, 1);
        let _ = sys::set_int(f, libc::SOL_IP, libc::IP_TRANSPARENT, 1);
        let _ = sys::set_int(f, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1);
    }
    bind(fd.as_raw_fd(), &Addr::Inet(local).to_storage()?).map_err(e("bind"))?;
    connect(fd.as_raw_fd(), &Addr::Inet(peer).to_storage()?).map_err(e("connect"))?;
    let mut ropts: Vec<u8> = Vec::new();
    let mut opt = |code: u32, val: u32| {
        ropts.extend_from_slice(&code.to_ne_bytes());
        ropts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(TCPOPT_MSS, c.mss);
    if c.options & TCPI_OPT_WSCALE != 0 {
        opt(
            TCPOPT_WINDOW,
            u32::from(c.snd_wscale) | u32::from(c.rcv_wscale) << 16,
        );
    }
    if c.options & TCPI_OPT_SACK != 0 {
        opt(TCPOPT_SACK_PERM, 0);
    }
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        opt(TCPOPT_TIMESTAMP, 0);
    }
    sys::setsockopt(f, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &ropts)
        .map_err(e("TCP_REPAIR_OPTIONS"))?;
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        tcp(TCP_TIMESTAMP, c.timestamp as i32, "TCP_TIMESTAMP")?;
    }
    // Room for the saved queues (the saved sizes come back with the options).
    let need = ((c.inq.max(c.outq) as i32).saturating_mul(2)).saturating_add(1 << 16);
    let _ = sys::set_int(f, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, need);
    let _ = sys::set_int(f, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, need);
    let (inq, sendq) = data.split_at(c.inq as usize);
    tcp(TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
    send_all(f, inq).map_err(e("refill the receive queue"))?;
    let sent = (c.outq - c.unsent.min(c.outq)) as usize;
    tcp(TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
    send_all(f, &sendq[..sent]).map_err(e("refill the send queue"))?;
    let mut w = Vec::with_capacity(20);
    for v in c.window {
        w.extend_from_slice(&v.to_ne_bytes());
    }
    sys::setsockopt(f, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &w).map_err(e("TCP_REPAIR_WINDOW"))?;
    tcp(TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE")?;
    Ok(fd)
}

/// Lets a rebuilt connection talk, and sends what had not gone out yet; or,
/// `closing`, resets it: the peer gets a reset, the application ECONNRESET.
pub fn release(fd: BorrowedFd, s: &SocketImg, data: &[u8], closing: bool) -> Result<(), String> {
    let Some(c) = &s.tcp else { return Ok(()) };
    use nix::sys::socket::{shutdown, Shutdown};
    let shut =
        |how| shutdown(fd.as_raw_fd(), how).map_err(|e| format!("{}: shutdown: {e}", describe(s)));
    const TCP_REPAIR_OFF_NO_WP: i32 = -1;
    let leave = |how: i32| {
        sys::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, how)
            .map_err(|e| format!("{}: leave repair mode: {e}", describe(s)))
    };
    if closing {
        leave(TCP_REPAIR_OFF_NO_WP)?;
        return sys::disconnect(fd).map_err(|e| format!("{}: reset: {e}", describe(s)));
    }
    // A FIN received: reads end after the data (the new socket never saw it,
    // its sequence number was counted in). Set still in repair mode, and no
    // window probe then: the peer closed its side and may be gone (a closed
    // socket is not saved), and a probe would only fetch a reset.
    if c.fin_in {
        shut(Shutdown::Read)?;
        leave(TCP_REPAIR_OFF_NO_WP)?;
    } else {
        leave(0)?;
    }
    let start = (c.inq + c.outq - c.unsent.min(c.outq)) as usize;
    let unsent = data.get(start..(c.inq + c.outq) as usize).unwrap_or(&[]);
    send_all(fd, unsent).map_err(|e| format!("{}: send its unsent data: {e}", describe(s)))?;
    // A FIN sent: again, after the data.
    if c.fin_out {
        shut(Shutdown::Write)?;
    }
    Ok(())
}
