//! Holding an application's TCP traffic still while its connections are read
//! and rebuilt: a packet that arrived between reading one end and the other
//! would be acknowledged by the kernel and then be in neither image. nftables
//! rules (the `nft` program) drop it instead; the peer retransmits once the
//! restored socket is there. A private namespace is locked as a whole; in the
//! host's namespace only the application's connections are.

use std::fs::File;
use std::net::SocketAddr;

const TABLE: &str = "xos_lock";

/// Runs `nft -f -` with `script` in the network namespace `ns`.
fn nft(ns: Option<&File>, script: &str) -> Result<(), String> {
    super::run_script(ns, "nft", &["-f", "-"], script).map_err(|e| {
        if e.starts_with("cannot run") {
            format!("{e} (install nftables to checkpoint TCP connections)")
        } else {
            e
        }
    })
}

/// The table of one lock: per application in the host's namespace, where
/// several may be locked at once.
fn table(app: Option<u64>) -> String {
    match app {
        Some(a) => format!("{TABLE}_{a}"),
        None => TABLE.to_string(),
    }
}

/// Makes table `t` with an input and an output chain of `policy` in the
/// namespace `ns` (the caller's when None).
fn create(ns: Option<File>, t: String, policy: &str) -> Result<Lock, String> {
    nft(
        ns.as_ref(),
        &format!(
            "table inet {t} {{\n\
             chain in {{ type filter hook input priority -400; policy {policy}; }}\n\
             chain out {{ type filter hook output priority -400; policy {policy}; }}\n}}\n"
        ),
    )?;
    Ok(Lock {
        ns,
        table: t,
        held: true,
    })
}

/// Drops every packet in and out of the namespace of process `pid` (its
/// loopback included) until the lock is dropped.
pub fn lock_namespace(pid: i32) -> Result<Lock, String> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("cannot open the network namespace of process {pid}: {e}"))?;
    create(Some(ns), table(None), "drop")
}

/// A lock of application `app`'s connections in the caller's namespace, to
/// which [`Lock::add`] adds each, both ways.
pub fn lock_connections(app: u64) -> Result<Lock, String> {
    create(None, table(Some(app)), "accept")
}

/// A lock in place; released when dropped unless [`Lock::keep`] was called.
#[derive(Debug)]
pub struct Lock {
    ns: Option<File>,
    table: String,
    held: bool,
}

fn matcher(a: &SocketAddr, dir_src: bool) -> String {
    let (fam, side, port) = match (a, dir_src) {
        (SocketAddr::V4(_), true) => ("ip", "saddr", "sport"),
        (SocketAddr::V4(_), false) => ("ip", "daddr", "dport"),
        (SocketAddr::V6(_), true) => ("ip6", "saddr", "sport"),
        (SocketAddr::V6(_), false) => ("ip6", "daddr", "dport"),
    };
    format!("{fam} {side} {} tcp {port} {}", a.ip(), a.port())
}

impl Lock {
    /// Adds the connection `local`-`remote` to a per-connection lock.
    pub fn add(&self, local: &SocketAddr, remote: &SocketAddr) -> Result<(), String> {
        if self.ns.is_some() {
            return Ok(()); // The whole namespace is locked.
        }
        let t = &self.table;
        let mut s = String::new();
        for chain in ["in", "out"] {
            for (a, b) in [(local, remote), (remote, local)] {
                s.push_str(&format!(
                    "add rule inet {t} {chain} {} {} drop\n",
                    matcher(a, true),
                    matcher(b, false)
                ));
            }
        }
        nft(None, &s)
    }

    /// Leaves the rules in place (the connections are restored later, by
    /// another process, which calls [`unlock_app`]).
    pub fn keep(mut self) {
        self.held = false;
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.held {
            let _ = nft(
                self.ns.as_ref(),
                &format!("delete table inet {}\n", self.table),
            );
        }
    }
}

/// Removes the per-connection lock left for application `app` in the caller's
/// namespace, if there is one.
pub fn unlock_app(app: u64) {
    let t = table(Some(app));
    let _ = nft(None, &format!("delete table inet {t}\n"));
}
