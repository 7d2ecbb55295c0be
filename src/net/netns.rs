//! Creating the application's network namespace. Called in the application's
//! init, which moves itself into the new namespace (its children are born in
//! it). Links and addresses are set with `ip` from iproute2 (present on every
//! Debian system), run in the namespace concerned: a command spawned from a
//! thread that entered a namespace is born in it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;

use super::{NetMode, Veth};

/// Runs `ip -batch -` with `script` in the network namespace `ns`; with
/// `force`, errors of single commands are ignored.
fn ip_batch(ns: Option<&File>, script: &str, force: bool) -> Result<(), String> {
    let args: &[&str] = if force {
        &["-force", "-batch", "-"]
    } else {
        &["-batch", "-"]
    };
    match super::run_script(ns, "ip", args, script) {
        Err(e) if !force || e.starts_with("cannot") => Err(e),
        _ => Ok(()),
    }
}

/// The name of the outer end of an application's veth pair (at most 15
/// bytes, as every interface name): unique per state directory and id.
pub fn host_ifname(app: u64, token: &str) -> String {
    let mut s = format!("xv{app}{token}");
    s.truncate(15);
    s
}

/// The namespace file the outer end of a veth pair goes to.
fn peer_ns_path(v: &Veth) -> PathBuf {
    match &v.peer_netns {
        Some(n) => PathBuf::from("/run/netns").join(n),
        None => PathBuf::from("/proc/self/ns/net"),
    }
}

/// Moves the calling process into a new network namespace as `mode` says
/// (nothing for `Host`). `host_if` names the outer end of a veth pair.
pub fn create(mode: &NetMode, host_if: &str) -> Result<(), String> {
    let peer_ns =
        match mode {
            NetMode::Host => return Ok(()),
            NetMode::Private => None,
            NetMode::Veth(v) => {
                let p = peer_ns_path(v);
                Some(File::open(&p).map_err(|e| {
                    format!("cannot open the network namespace {}: {e}", p.display())
                })?)
            }
        };
    // A pair left by an earlier run of this application (its namespace is
    // still being torn down) would hold the name.
    if let Some(ns) = &peer_ns {
        ip_batch(Some(ns), &format!("link del {host_if}\n"), true)?;
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let mut inner = String::from("link set lo up\n");
    if let (NetMode::Veth(v), Some(ns)) = (mode, &peer_ns) {
        inner.push_str(&format!(
            "link add eth0 type veth peer name {host_if} netns /proc/self/fd/{}\n\
             addr add {}/{} dev eth0\n\
             link set eth0 up\n\
             route add default via {}\n",
            ns.as_raw_fd(),
            v.addr,
            v.prefix,
            v.peer_addr()
        ));
    }
    clear_cloexec(peer_ns.as_ref())?;
    ip_batch(None, &inner, false).map_err(|e| format!("cannot set up the network: {e}"))?;
    if let (NetMode::Veth(v), Some(ns)) = (mode, &peer_ns) {
        let outer = format!(
            "addr add {}/{} dev {host_if}\nlink set {host_if} up\n",
            v.peer_addr(),
            v.prefix
        );
        ip_batch(Some(ns), &outer, false)
            .map_err(|e| format!("cannot set up the outer end {host_if}: {e}"))?;
    }
    Ok(())
}

/// `ip` opens the namespace by the descriptor's /proc path: it must survive exec.
fn clear_cloexec(f: Option<&File>) -> Result<(), String> {
    if let Some(f) = f {
        nix::fcntl::fcntl(
            f,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map_err(|e| format!("fcntl: {e}"))?;
    }
    Ok(())
}
