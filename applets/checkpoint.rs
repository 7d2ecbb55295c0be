//! checkpoint: freeze, unfreeze, list and checkpoint applications (D2.2.11 §2.1).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{ArgGroup, CommandFactory, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use xos::applock::AppLock;
use xos::registry::{self, Registry};

use crate::common;

/// Freeze, unfreeze or checkpoint an application started by krgcr-run.
///
/// APP is an application id (as printed by `krgcr-run --print-id`) or the pid of any
/// process of the application; an id takes precedence over a pid with the same number.
#[derive(Debug, Parser)]
#[command(name = "checkpoint", version = common::version(), after_help = AFTER)]
#[command(group(ArgGroup::new("action").required(true).args(["freeze", "unfreeze", "checkpoint", "list", "prune"])))]
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
    #[arg(short, long)]
    list: bool,

    /// Remove the records of applications that are gone and the cgroups that ended or killed applications of this state directory left behind
    #[arg(long)]
    prune: bool,

    /// cgroup parent the applications' groups are under (for --prune)
    #[arg(long, value_name = "NAME", env = xos::app::CGROUP_PARENT_ENV, default_value = xos::app::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,

    /// How long to wait for the kernel (freezing, thawing, every task stopping), in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,

    /// If another checkpoint, restart, freeze or unfreeze of APP is in progress, wait for it instead of failing
    #[arg(long)]
    wait: bool,

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
  checkpoint --prune       # forget applications that are gone, remove their cgroups

Saved for every process of APP: memory (private pages that were ever touched,
shared anonymous memory, file mappings by reference, mm fields, vDSO), every
thread (registers, TLS and FPU state, signal mask and queued signals, alternate
signal stack, rseq, robust futex list, clear_child_tid, name, scheduling policy,
priority and nice value, parent-death signal), regular files, devices, pipes with
unread bytes and inherited stdio, signal handlers and process-wide queued
signals, interval timers, POSIX timers, a job-control stop, pid, parent, process
group and session, uids, gids, groups, capability sets, rlimits, umask, working
directory, personality and no_new_privs.

A socket, a seccomp filter, a changed root or another resource it cannot save
makes -c fail with one line naming the process and the resource; APP keeps
running and no version is written.

-c never leaves APP changed: it is stopped task by task under ptrace, and
killing checkpoint at any moment (kill -9, Ctrl-C) lets every task continue
exactly where it was. SIGINT, SIGTERM and SIGHUP abort -c cleanly; a temporary
version left by a killed checkpoint is removed by the next one. One operation
(checkpoint, restart, freeze, unfreeze) runs on APP at a time: a second one
fails at once naming the first, or waits with --wait.

Images are written to STATE/images/APP/VERSION/ (see restart(1)).";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    let reg = match Registry::open(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return common::fail("checkpoint", e),
    };
    if a.list {
        return list(&reg);
    }
    if a.prune {
        return match xos::app::prune(&reg, &a.cgroup_parent) {
            Ok(p) => {
                for id in &p.records {
                    println!("removed the record of application {id}");
                }
                for g in &p.groups {
                    println!("removed cgroup {g}");
                }
                0
            }
            Err(e) => common::fail("checkpoint", e),
        };
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
        // SIGINT, SIGTERM and SIGHUP abort the checkpoint cleanly: the
        // application is let go unchanged and no version is written.
        let cancel = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&cancel)) {
                return common::fail("checkpoint", anyhow::anyhow!("cannot catch signals: {e}"));
            }
        }
        let opts = xos::ckpt::CheckpointOptions {
            kill: a.kill,
            timeout,
            wait: a.wait,
            cancel: Some(cancel),
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
            Err(e) => {
                let msg = common::one_line(&e);
                let prefix = format!("application {}: ", rec.id);
                let msg = if msg.starts_with(&prefix) {
                    msg
                } else {
                    format!("{prefix}{msg}")
                };
                common::fail("checkpoint", anyhow::anyhow!("{msg}"))
            }
        };
    }
    let op = if a.freeze { "freeze" } else { "unfreeze" };
    let _lock = match AppLock::acquire(&a.state_dir, rec.id, op, a.wait) {
        Ok(l) => l,
        Err(e) => return common::fail("checkpoint", e),
    };
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
        "{:<6} {:<9} {:>8} {:<20} {:<12} {:<6} COMMAND",
        "ID", "STATE", "PID", "STARTED", "JOB", "CKPT"
    );
    for r in records {
        match r {
            Ok(rec) => println!(
                "{:<6} {:<9} {:>8} {:<20} {:<12} {:<6} {}",
                rec.id,
                rec.state(),
                rec.root_pid,
                common::fmt_time(rec.started),
                rec.job.as_deref().unwrap_or("-"),
                rec.checkpointer,
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
