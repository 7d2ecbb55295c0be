//! The network an application lives in (`krgcr-run --net`, recorded in its
//! images so that `restart` gives it the same): the host's, a private network
//! namespace with only `lo`, or a private one joined to another namespace by a
//! veth pair with a fixed address. A private namespace is what lets the
//! checkpointer save and restore the application's TCP and UDP endpoints (and
//! lock its traffic) without touching anyone else's.

pub mod lock;
pub mod netns;

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use nix::sched::CloneFlags;

use serde::{Deserialize, Serialize};

/// Where the application's network namespace comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetMode {
    /// The caller's network namespace (nothing of the network is private).
    #[default]
    Host,
    /// A namespace of its own with `lo` up.
    Private,
    /// A namespace of its own with `lo` and `eth0` at `addr/prefix`, the other
    /// end of the veth pair in the host's namespace or in the named one
    /// (`/run/netns/NAME`, as `ip netns add` makes).
    Veth(Veth),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Veth {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub peer_netns: Option<String>,
}

impl Veth {
    /// The address of the outer end: the first host address of the subnet
    /// that is not the application's (the application's default gateway).
    pub fn peer_addr(&self) -> Ipv4Addr {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        let net = u32::from(self.addr) & mask;
        let first = Ipv4Addr::from(net + 1);
        if first == self.addr {
            Ipv4Addr::from(net + 2)
        } else {
            first
        }
    }
}

/// The one-line reason a `--net` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad network mode {value:?}: {why} (expected host, private or veth:ADDR/PREFIX[,NETNS])")]
pub struct BadNetMode {
    pub value: String,
    pub why: &'static str,
}

impl FromStr for NetMode {
    type Err = BadNetMode;

    fn from_str(s: &str) -> Result<NetMode, BadNetMode> {
        let bad = |why| BadNetMode {
            value: s.to_string(),
            why,
        };
        match s {
            "host" => return Ok(NetMode::Host),
            "private" => return Ok(NetMode::Private),
            _ => {}
        }
        let rest = s.strip_prefix("veth:").ok_or_else(|| bad("unknown mode"))?;
        let (cidr, peer) = match rest.split_once(',') {
            Some((c, p)) => (c, Some(p)),
            None => (rest, None),
        };
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| bad("the address needs a /PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("not a prefix length"))?;
        if !(1..=30).contains(&prefix) {
            return Err(bad("the prefix must leave room for two addresses (1..30)"));
        }
        let peer_netns = match peer {
            None | Some("") => None,
            Some(p) if p.contains('/') || p == "." || p == ".." => {
                return Err(bad("a namespace name, not a path"))
            }
            Some(p) => Some(p.to_string()),
        };
        let v = Veth {
            addr,
            prefix,
            peer_netns,
        };
        if v.peer_addr() == v.addr || {
            let host_bits = u32::from(v.addr) & !(u32::MAX << (32 - u32::from(prefix)));
            host_bits == 0 || host_bits == !(u32::MAX << (32 - u32::from(prefix)))
        } {
            return Err(bad("the network or broadcast address"));
        }
        Ok(NetMode::Veth(v))
    }
}

impl fmt::Display for NetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetMode::Host => write!(f, "host"),
            NetMode::Private => write!(f, "private"),
            NetMode::Veth(v) => {
                write!(f, "veth:{}/{}", v.addr, v.prefix)?;
                match &v.peer_netns {
                    Some(n) => write!(f, ",{n}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl NetMode {
    /// Whether the application has a network namespace of its own.
    pub fn is_private(&self) -> bool {
        !matches!(self, NetMode::Host)
    }
}

/// Runs `f` in a thread that entered the network namespace `ns` (a thread of
/// its own keeps the caller where it is; sockets made and commands spawned
/// there belong to that namespace).
pub fn in_netns<T: Send>(
    ns: &File,
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot enter a network namespace: {e}"))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err("a thread in a network namespace panicked".into()))
    })
}

/// [`in_netns`] in the network namespace of process `pid`.
pub fn in_netns_of<T: Send>(
    pid: i32,
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("cannot open the network namespace of process {pid}: {e}"))?;
    in_netns(&ns, f)
}

/// Runs `program args` with `script` on its stdin, in the network namespace
/// `ns` (the caller's when None); the error is the program's first line of
/// complaint. A command spawned from a thread that entered a namespace is born
/// in it, and a thread of its own keeps the caller where it is.
pub(crate) fn run_script(
    ns: Option<&File>,
    program: &str,
    args: &[&str],
    script: &str,
) -> Result<(), String> {
    let run = || -> Result<(), String> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{program}: {}",
            msg.lines().next().unwrap_or("failed").trim()
        ))
    };
    match ns {
        Some(ns) => in_netns(ns, run),
        None => run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in [
            "host",
            "private",
            "veth:10.9.0.2/24",
            "veth:10.9.0.1/30,client",
        ] {
            assert_eq!(s.parse::<NetMode>().unwrap().to_string(), s);
        }
        for s in [
            "",
            "bridge",
            "veth:10.9.0.2",
            "veth:10.9.0.0/24",
            "veth:10.9.0.255/24",
            "veth:300.1.1.1/24",
            "veth:10.0.0.1/31",
            "veth:10.0.0.1/24,../x",
        ] {
            assert!(s.parse::<NetMode>().is_err(), "{s}");
        }
    }

    #[test]
    fn the_peer_is_the_first_other_address() {
        let v = |s: &str| match s.parse::<NetMode>().unwrap() {
            NetMode::Veth(v) => v.peer_addr().to_string(),
            _ => unreachable!(),
        };
        assert_eq!(v("veth:10.9.0.7/24"), "10.9.0.1");
        assert_eq!(v("veth:10.9.0.1/24"), "10.9.0.2");
        assert_eq!(v("veth:192.168.4.6/30"), "192.168.4.5");
    }
}
