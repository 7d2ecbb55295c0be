//! xos-amsd: the Account Mapping Service daemon (D2.1.4, D2.1.7 §2) and its admin
//! commands (`xos-amsd leases`, `release`, `ban`, …), which talk to a running daemon.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use xos::vo::config::{self, Config};
use xos::vo::proto::{self, Request, Response};
use xos::vo::server::{self, Service};

use crate::common;

/// Environment variable naming the daemon's socket (for clients and tests).
pub const SOCKET_ENV: &str = "XOS_AMSD_SOCKET";

/// Map VO users to local accounts for pam_xos.so and libnss_xos.so.2.
///
/// Without a subcommand, xos-amsd serves requests on its Unix socket: it validates
/// XOS-certs against the CA directory, leases pool accounts (kept in the state
/// directory in the gridmapdir hard-link scheme, so a restart loses nothing and
/// several nodes may share it), enforces the VO and node policy, answers NSS queries,
/// and creates and removes the per-job cgroups of PAM sessions. Beside the socket it
/// keeps the NSS cache files `passwd` and `group`, which libnss_xos.so.2 reads
/// without a round trip while this daemon lives. It detaches unless
/// --foreground is given (for init systems; see scripts/xos-amsd.service).
/// SIGHUP re-reads the configuration file, as `xos-amsd reload` does; a file
/// with an error is not applied and the daemon runs on with the old one.
/// With a subcommand it is the admin client of a running daemon (as root).
#[derive(Debug, Parser)]
#[command(name = "xos-amsd", version = common::version(), after_help = AFTER)]
struct Args {
    /// Configuration file (`Key value` lines); built-in defaults if it does not exist
    #[arg(short, long, value_name = "FILE", env = "XOS_AMSD_CONFIG", default_value = config::DEFAULT_PATH, global = true)]
    config: PathBuf,

    /// The daemon's socket (overrides the file's Socket)
    #[arg(short, long, value_name = "PATH", env = SOCKET_ENV, global = true)]
    socket: Option<PathBuf>,

    /// The state directory with the leases (overrides the file's StateDir)
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Stay in the foreground (for systemd and other init systems)
    #[arg(short, long)]
    foreground: bool,

    #[command(subcommand)]
    admin: Option<Admin>,
}

#[derive(Debug, Subcommand)]
enum Admin {
    /// List the leased pool accounts
    Leases {
        /// Print JSON: an array of objects with name, uid, vo, global_id, subject,
        /// last_used and expires (seconds since the epoch)
        #[arg(long)]
        json: bool,
    },
    /// Show the lease of a user (name, uid, global id or subject)
    Show { user: String },
    /// Release the lease of a user, freeing the account
    Release { user: String },
    /// Ban a user (subject or global id): no new mapping, no account
    Ban { who: String },
    /// Lift a ban made with `ban`
    Unban { who: String },
    /// List the bans (configured and added)
    Bans,
    /// Re-read the configuration file
    Reload,
    /// Check that the daemon answers
    Ping,
    /// Validate a certificate file and map its holder; print the account
    Map { cert: PathBuf },
}

const AFTER: &str = "\
Configuration keys (default file /etc/xos/nss_pam/pam_xos.conf):
  Socket PATH, StateDir DIR, CACertPath DIR, UseCgroups yes|no,
  Subsystems cpuacct,memory[,disk], CgroupParent NAME, MemoryLimit SIZE, CpuWeight N,
  PidsMax N, disk.max_usage_in_block N, disk.max_usage_in_inode N,
  Pool VO FIRST-LAST, GroupPool VO FIRST-LAST, StaticMap VO GLOBALID USER,
  UserName PATTERN (%g %v %u), GroupName PATTERN (%v %n), Home PATTERN, Shell PATH,
  LeaseIdle SECONDS, AllowVO LIST, AllowRole LIST, BanUser WHO, MaxLeasesPerVO N

Examples:
  xos-amsd --foreground
  xos-amsd leases
  xos-amsd leases --json
  xos-amsd ban /O=testbed0/CN=mallory

leases --json prints an array with one object per leased account: name, uid, vo,
global_id, subject, last_used and expires (seconds since the epoch).

Exit status: 0 on success, 1 on error or refusal.";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    match a.admin {
        Some(cmd) => {
            // The same socket as the daemon's: the option, else the file's.
            let socket = match a.socket {
                Some(s) => s,
                None => match Config::load(&a.config, false) {
                    Ok(c) => c.socket,
                    Err(e) => return common::fail("xos-amsd", e),
                },
            };
            match admin(&socket, cmd) {
                Ok(code) => code,
                Err(e) => common::fail("xos-amsd", e),
            }
        }
        None => match daemon(&a.config, a.socket, a.state_dir, a.foreground) {
            Ok(()) => 0,
            Err(e) => common::fail("xos-amsd", e),
        },
    }
}

fn daemon(
    path: &Path,
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    foreground: bool,
) -> anyhow::Result<()> {
    // Only the default file may be missing: a file named on purpose must exist.
    let mut cfg = Config::load(path, path != Path::new(config::DEFAULT_PATH))?;
    let from_file = cfg.path.is_some();
    if let Some(s) = socket {
        cfg.socket = s;
    }
    if let Some(d) = state_dir {
        cfg.state_dir = d;
    }
    let listener = server::bind(&cfg.socket)?;
    let sweep = server::sweep_interval(cfg.lease_idle);
    log::info!(
        "listening on {} (configuration: {})",
        cfg.socket.display(),
        if from_file {
            path.display().to_string()
        } else {
            "built-in defaults".into()
        }
    );
    let reload_path = from_file.then(|| path.to_path_buf());
    let svc = Service::new(cfg, reload_path)?;
    if !foreground {
        detach()?;
    }
    server::serve(Arc::new(svc), listener, sweep);
    Ok(())
}

/// The classic double-step detach: the parent exits once the socket is bound, the
/// child starts a new session with stdin/stdout/stderr on /dev/null.
fn detach() -> anyhow::Result<()> {
    use nix::unistd::{fork, setsid, ForkResult};
    // SAFETY: no thread has been started yet; the child continues as the daemon.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: both descriptors are open; dup2 only replaces fd 0, 1 or 2.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

fn call(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    Ok(proto::call(socket, Duration::from_secs(30), req)?)
}

fn admin(socket: &Path, cmd: Admin) -> anyhow::Result<i32> {
    let req = match &cmd {
        Admin::Leases { .. } => Request::ListLeases,
        Admin::Show { user } => Request::ShowLease(user.clone()),
        Admin::Release { user } => Request::Release(user.clone()),
        Admin::Ban { who } => Request::Ban(who.clone()),
        Admin::Unban { who } => Request::Unban(who.clone()),
        Admin::Bans => Request::ListBans,
        Admin::Reload => Request::Reload,
        Admin::Ping => Request::Ping,
        Admin::Map { cert } => Request::Map {
            cert_pem: xos::fsutil::read_string(cert)?,
        },
    };
    match call(socket, &req)? {
        Response::Leases(l) if matches!(cmd, Admin::Leases { json: true }) => {
            println!("{}", serde_json::to_string_pretty(&l)?);
        }
        Response::Leases(l) => {
            let rows: Vec<Vec<String>> = l
                .iter()
                .map(|x| {
                    vec![
                        x.uid.to_string(),
                        x.vo.clone(),
                        x.name.clone(),
                        common::fmt_time(x.expires),
                        x.subject.clone(),
                    ]
                })
                .collect();
            let header = ["UID", "VO", "NAME", "EXPIRES", "SUBJECT"];
            for line in common::table(&header, &rows, &[0]) {
                println!("{line}");
            }
        }
        Response::Lease(Some(x)) => {
            println!("name: {}", x.name);
            println!("uid: {}", x.uid);
            println!("vo: {}", x.vo);
            println!("global id: {}", x.global_id);
            println!("subject: {}", x.subject);
            println!("last used: {}", common::fmt_time(x.last_used));
            println!("expires: {}", common::fmt_time(x.expires));
        }
        Response::Lease(None) => {
            eprintln!("xos-amsd: no lease matches");
            return Ok(1);
        }
        Response::Bans(b) => b.iter().for_each(|x| println!("{x}")),
        Response::Mapped(acct) => {
            let p = &acct.passwd;
            println!(
                "{}:x:{}:{}:{}:{}:{}",
                p.name, p.uid, p.gid, p.gecos, p.dir, p.shell
            );
            let gids: Vec<String> = acct.gids.iter().map(u32::to_string).collect();
            println!("groups: {}", gids.join(","));
        }
        Response::Ok | Response::Pong => {
            if matches!(cmd, Admin::Ping) {
                println!("xos-amsd is running");
            }
        }
        Response::Refused(why) => {
            eprintln!("xos-amsd: refused: {why}");
            return Ok(1);
        }
        Response::Error(e) => {
            eprintln!("xos-amsd: {e}");
            return Ok(1);
        }
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
    Ok(0)
}
