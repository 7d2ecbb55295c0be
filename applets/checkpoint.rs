//! checkpoint: freeze, unfreeze, list and checkpoint applications (D2.2.11 §2.1).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, CommandFactory, Parser};
use xos::registry::{self, Registry};

use crate::common;

/// Freeze, unfreeze or checkpoint an application started by krgcr-run.
///
/// APP is an application id (as printed by `krgcr-run --print-id`) or the pid of any
/// process of the application; an id takes precedence over a pid with the same number.
#[derive(Debug, Parser)]
#[command(name = "checkpoint", version = common::version(), after_help = AFTER)]
#[command(group(ArgGroup::new("action").required(true).args(["freeze", "unfreeze", "checkpoint", "list", "logs"])))]
struct Args {
    /// Freeze every process of APP (cgroup freezer) and wait until the kernel says FROZEN
    #[arg(long, requires = "app")]
    freeze: bool,

    /// Thaw a frozen APP
    #[arg(long, requires = "app")]
    unfreeze: bool,

    /// Write the next checkpoint version of APP (1, 2, ...); APP keeps running (a frozen APP stays frozen)
    #[arg(short = 'c', long = "checkpoint", requires = "app")]
    checkpoint: bool,

    /// With -c: kill APP once the checkpoint is written (for migration)
    #[arg(long, requires = "checkpoint")]
    kill: bool,

    /// List the applications in the registry with their state
    #[arg(short, long, conflicts_with = "app")]
    list: bool,

    /// Print the logs of a detached APP, also once it has ended: its stdout, then its
    /// stderr on stderr
    #[arg(long, requires = "app")]
    logs: bool,

    /// How long to wait for the kernel to freeze or thaw, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,

    /// State directory holding the registry
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Application id, or pid of a process of the application
    #[arg(value_name = "APP")]
    app: Option<String>,
}

const AFTER: &str = "\
Examples:
  checkpoint --freeze 6
  checkpoint -c 6          # write the next version of application 6's image
  checkpoint -c --kill 6   # ... then kill it (for migration)
  checkpoint --unfreeze 6
  checkpoint --list

Saved for every process of APP (single-threaded ones): memory (private pages that
were ever touched, shared anonymous memory, file mappings by reference, mm fields,
vDSO), registers and FPU state, regular files, devices, pipes with unread bytes and
inherited stdio, signal handlers, mask and pending signals, interval timers, pid,
parent, process group and session, uids, gids, groups, capability sets, rlimits,
umask, working directory, personality, comm and no_new_privs.

A socket, a second thread, a seccomp filter, a changed root or another resource it
cannot save makes -c fail with one line naming the process and the resource; APP
keeps running, thawed, and no version is written.

Images are written to STATE/images/APP/VERSION/ (see restart(1)).";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    let reg = match Registry::open_existing(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return common::fail("checkpoint", e),
    };
    if a.list {
        return list(&reg);
    }
    if a.logs {
        return logs(&reg, a.app.as_deref().unwrap_or_default());
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        eprintln!(
            "checkpoint: invalid --timeout '{}': must be a positive number of seconds",
            a.timeout
        );
        return 2;
    }
    let timeout = Duration::from_secs_f64(a.timeout);
    let spec = a.app.as_deref().unwrap_or_default();
    let rec = match reg.resolve(spec) {
        Ok(r) => r,
        Err(e) => return common::fail("checkpoint", e),
    };
    if !rec.alive() {
        eprintln!(
            "checkpoint: application {} is not running (its root process {} is gone)",
            rec.id, rec.root_pid
        );
        return 1;
    }
    if a.checkpoint {
        let opts = xos::ckpt::CheckpointOptions {
            kill: a.kill,
            timeout,
        };
        return match xos::ckpt::checkpoint(&a.state_dir, &rec, &opts) {
            Ok(c) => {
                println!(
                    "application {}: version {} written to {} ({} processes, {:.1} MiB, stopped {} ms)",
                    rec.id,
                    c.version,
                    c.dir.display(),
                    c.processes,
                    c.bytes as f64 / (1u64 << 20) as f64,
                    c.stopped.as_millis()
                );
                0
            }
            Err(e) => common::fail(
                "checkpoint",
                anyhow::anyhow!("application {}: {}", rec.id, common::one_line(&e)),
            ),
        };
    }
    let r = if a.freeze {
        rec.cgroup.freeze(timeout)
    } else {
        rec.cgroup.thaw(timeout)
    };
    match r {
        Ok(()) => 0,
        Err(e) => common::fail(
            "checkpoint",
            anyhow::anyhow!("application {}: {}", rec.id, common::one_line(&e)),
        ),
    }
}

fn list(reg: &Registry) -> i32 {
    let records = match reg.list() {
        Ok(r) => r,
        Err(e) => return common::fail("checkpoint", e),
    };
    let mut status = 0;
    println!(
        "{:<6} {:<9} {:>8} {:<20} COMMAND",
        "ID", "STATE", "PID", "STARTED"
    );
    for r in records {
        match r {
            Ok(rec) => println!(
                "{:<6} {:<9} {:>8} {:<20} {}",
                rec.id,
                rec.state(),
                rec.root_pid,
                common::fmt_time(rec.started),
                rec.command.join(" ")
            ),
            Err(e) => {
                status = 1;
                common::fail("checkpoint", e);
            }
        }
    }
    status
}

/// Copies the logs of a detached application (a running one by id or pid, an ended
/// one by id) to stdout and stderr.
fn logs(reg: &Registry, spec: &str) -> i32 {
    let id = match reg.resolve(spec) {
        Ok(rec) => rec.id,
        Err(e) => match spec.trim().parse::<u64>() {
            Ok(id) => id,
            Err(_) => return common::fail("checkpoint", e),
        },
    };
    let paths = reg.log_paths(id);
    if !paths.iter().any(|p| p.exists()) {
        eprintln!(
            "checkpoint: application {id} has no logs in {} (only a detached application \
             without --stdout and --stderr has)",
            paths[0].parent().unwrap_or(reg.root()).display()
        );
        return 1;
    }
    for (path, to_stdout) in paths.iter().zip([true, false]) {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return common::fail("checkpoint", anyhow::anyhow!("{}: {e}", path.display()))
            }
        };
        let copied = if to_stdout {
            std::io::copy(&mut f, &mut std::io::stdout().lock())
        } else {
            std::io::copy(&mut f, &mut std::io::stderr().lock())
        };
        match copied {
            Ok(_) => {}
            Err(e) if to_stdout && e.kind() == std::io::ErrorKind::BrokenPipe => {
                common::closed_stdout("checkpoint")
            }
            Err(e) => {
                return common::fail("checkpoint", anyhow::anyhow!("{}: {e}", path.display()))
            }
        }
    }
    0
}
