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
// A fixed usage: clap's would list --state-dir as required when XOS_STATE_DIR sets it.
#[command(name = "checkpoint", version = common::version(), after_help = AFTER)]
#[command(override_usage = USAGE)]
#[command(group(ArgGroup::new("action").args(["freeze", "unfreeze", "checkpoint", "list", "logs", "delete", "keep", "prune"])))]
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

    /// With --list or -c: print JSON (see below) instead of text
    #[arg(long)]
    json: bool,

    /// With -c: also print how the checkpoint went (freezing and frozen time, memory
    /// dump and write time, pages scanned and written); they are kept in the image
    #[arg(long, requires = "checkpoint", conflicts_with = "quiet")]
    stats: bool,

    /// With -c: print nothing (no progress, no summary line)
    #[arg(short, long, requires = "checkpoint", conflicts_with = "json")]
    quiet: bool,

    /// Print the logs of a detached APP, also once it has ended: its stdout, then its
    /// stderr on stderr
    #[arg(long, requires = "app")]
    logs: bool,

    /// Delete checkpoint version VERSION of APP (its number is never used again)
    #[arg(long, requires_all = ["app", "number"])]
    delete: bool,

    /// Delete all but the newest N checkpoint versions of APP
    #[arg(long, value_name = "N", requires = "app")]
    keep: Option<usize>,

    /// Delete the images and logs of every application that is not running, the records of
    /// applications that are gone and the cgroups that ended or killed applications of this
    /// state directory left behind
    #[arg(long, conflicts_with = "app")]
    prune: bool,

    /// List the applications in the registry with their state
    #[arg(short, long, conflicts_with = "app")]
    list: bool,

    /// cgroup parent the applications' groups are under (for --prune)
    #[arg(long, value_name = "NAME", env = xos::app::CGROUP_PARENT_ENV, default_value = xos::app::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,

    /// How long to wait for the kernel (freezing, thawing, every task stopping), in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,

    /// If another checkpoint, restart, freeze or unfreeze of APP is in progress, wait for it instead of failing
    #[arg(long)]
    wait: bool,

    /// With -c: largest deleted file or memfd whose content is saved with the image (bytes, or K, M, G)
    #[arg(long, value_name = "SIZE", default_value = "10M", value_parser = common::parse_size)]
    ghost_limit: u64,

    /// With -c: a Unix stream socket connected to a process outside the application does not refuse the checkpoint; it comes back cut (the application sees its peer gone)
    #[arg(long)]
    external_unix: bool,

    /// State directory holding the registry
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Application id, or pid of a process of the application
    #[arg(value_name = "APP")]
    app: Option<String>,

    /// With --delete: the version to delete
    #[arg(value_name = "VERSION", requires = "delete")]
    number: Option<u64>,
}

const USAGE: &str = "\
checkpoint [OPTIONS] (--freeze|--unfreeze) APP
       checkpoint [OPTIONS] -c [--kill] [--stats] [--json|--quiet] APP
       checkpoint --list [--json]
       checkpoint --logs APP
       checkpoint --wait APP
       checkpoint (--delete APP VERSION | --keep N APP | --prune)";

const AFTER: &str = "\
Examples:
  checkpoint --freeze 6
  checkpoint -c 6          # write the next version of application 6's image
  checkpoint -c --kill 6   # ... then kill it (for migration)
  checkpoint --unfreeze 6
  checkpoint --list
  checkpoint --delete 6 2  # delete version 2 of application 6
  checkpoint --keep 3 6    # keep only its three newest versions
  checkpoint --prune       # images, logs, records and cgroups of applications that ended
  checkpoint --wait 6      # wait until application 6 ends; exit with its status

Saved for every process of APP: memory (private pages that were ever touched,
shared anonymous memory, file mappings by reference, mm fields, vDSO; each
mapping's advice and locks: MADV_DONTFORK, DONTDUMP, WIPEONFORK, HUGEPAGE,
NOHUGEPAGE, MERGEABLE, mlock and MAP_GROWSDOWN), SysV shared memory attached
again at its address, the SysV IPC objects of APP's own IPC namespace (message
queues, semaphore arrays, segments: saved with the image as ipccheckpoint --all
writes them, and restored by restart before its processes), every thread
(registers, TLS and FPU state, signal mask and queued signals, alternate signal
stack, rseq, robust futex list, clear_child_tid, name, scheduling policy,
priority and nice value, CPU affinity when pinned (CPUs the restarting machine
lacks are dropped), parent-death signal), open files (each fd's flags,
offset and close-on-exec, O_ASYNC, its SIGIO owner and signal: regular files,
directories and character devices by path, pipes and FIFOs with unread bytes,
eventfd, signalfd, timerfd, epoll, inotify, pidfds of the application's
processes, deleted files and memfds with their content up to --ghost-limit;
flock, POSIX and OFD locks and leases; an open file several processes share
stays one, with one offset), inherited stdio, zombies, signal handlers and
process-wide queued signals, interval timers, POSIX timers, a job-control stop,
pid, parent, process group and session (every shape setsid and setpgid build,
also groups and sessions whose leader ended), uids, gids, groups, capability
sets, securebits, rlimits, umask, working directory (also a deleted one),
executable (also a deleted one), personality, no_new_privs and the prctl
settings dumpable, child subreaper, THP disabled and timer slack, and
mlockall(MCL_FUTURE) with MCL_ONFAULT for mappings made later.

Sockets: Unix stream, datagram and seqpacket sockets (pairs, accepted
connections, listeners with their connections not yet accepted, path, deleted and
abstract names, unread data and descriptors in flight, shutdown state, options);
a datagram socket connected to a path outside APP (/dev/log) is connected to it
again at restart; a stream to a process outside APP makes -c fail unless
--external-unix (APP then finds its peer gone). TCP (IPv4 and IPv6): listening
sockets and established or half-closed (FIN-WAIT, CLOSE-WAIT, LAST-ACK,
CLOSING) connections with sequence numbers, windows, options and unread and
unacknowledged data (TCP_REPAIR); their traffic is held with nftables
(the nft program) from before they are read until the restart has rebuilt them:
a private network namespace (krgcr-run --net private or veth) is held whole, in
the host's namespace only APP's connections are, and peers see no reset. A
restart on this node keeps the connections; elsewhere the addresses must follow
(--net veth). UDP: bound and connected sockets and their queued datagrams, with
their senders. Ping sockets with their address, identifier and peer (echo
replies not read yet are lost, as on a network). Netlink route sockets in
their groups. Connections to a TCP listener not yet accepted are not saved.

Still refused, each making -c fail with one line naming the process, the
descriptor or mapping and what it is (APP keeps running, no version is
written): netlink sockets other than NETLINK_ROUTE (and a route socket with
replies not read yet), packet, SCTP, MPTCP and kernel-TLS sockets, TCP
connections still being set up (SYN-SENT, SYN-RECV); seccomp filters; a changed root directory; io_uring
instances; perf events; bpf objects; userfaultfds; fanotify, KVM and other
kernel objects the checkpointer does not know; pidfds of processes outside
the application or of ended ones; /proc/PID/mem, pagemap or environ of another
process; terminals other than the application's own (ptmx, other ttys); GPUs
and other devices with state (tun, fuse, kvm, vhost); an inotify instance with
events not read yet (reading them would take them from the application); a
lease being broken; a deleted file or memfd larger than --ghost-limit; a SysV
shared memory segment only partly mapped; a SIGIO owner outside the
application; an epoll watching a descriptor closed since.

SysV semaphore undo lists (SEM_UNDO) show only when a process ends: -c --kill
ends the processes one at a time and saves each one's list, which restart
gives back; a checkpoint that lets APP run cannot see them, and its restart
makes no adjustment when a process exits. Not saved, as nothing shows it:
mlockall(MCL_FUTURE) in a process that has no locked memory at all (nothing
mapped since). A dumpable value of 2 comes back where fs.suid_dumpable is 2,
elsewhere as 0 (never 1, which would let the process's user attach to it).

-c never leaves APP changed: it is stopped task by task under ptrace, and
killing checkpoint at any moment (kill -9, Ctrl-C) lets every task continue
exactly where it was. (One exception: in a process with locked memory, whether
mlockall(MCL_FUTURE) is in force shows only on a new mapping, so one page
without access is mapped and unmapped again in it; killed just then, that
page stays.) SIGINT, SIGTERM and SIGHUP abort -c cleanly; a temporary
version left by a killed checkpoint is removed by the next one. One operation
(checkpoint, restart, freeze, unfreeze) runs on APP at a time: a second one
fails at once naming the first, or waits with --wait.

Images are written to STATE/images/APP/VERSION/ (see restart(1)); version numbers
are never used twice, also after --delete.

--list shows the pid of the command (not of the application's init); --list --json
prints an array with one object per application: id, state (running, freezing,
frozen or gone), pid (of the command, or null), init_pid, started (seconds since the
epoch), command (array of strings) and cwd. On a terminal, -c shows its progress on stderr (bytes written of the estimated
total, rate, process), unless --quiet or --json. --wait APP alone waits until APP has ended and exits with its
exit status (128+N if signal N ended it), also when it ended before. -c --json prints one object: app,
version, dir, processes, bytes (of memory saved), stopped_ms and stats (an object:
freezing_time, frozen_time, memdump_time, memwrite_time in microseconds,
pages_scanned, pages_written). -c --stats prints the same figures as text after
the summary line; every image keeps them (restart --info shows them).

Exit status: 0 on success, 1 on failure (the application runs on unchanged), 2 for
a usage error.";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    let reg = match Registry::open_existing(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return common::fail("checkpoint", e),
    };
    let acting = a.freeze
        || a.unfreeze
        || a.checkpoint
        || a.list
        || a.logs
        || a.delete
        || a.keep.is_some()
        || a.prune;
    if !acting {
        // --wait alone: wait for APP to end (with an action it waits for APP's lock).
        if a.wait && a.app.is_some() {
            return wait_end(&reg, a.app.as_deref().unwrap_or_default());
        }
        Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "one of --freeze, --unfreeze, -c, --list, --logs, --delete, --keep, --prune \
                 or --wait APP is needed",
            )
            .exit();
    }
    if a.json && !(a.list || a.checkpoint) {
        eprintln!("checkpoint: --json goes with --list or -c");
        return 2;
    }
    if a.list {
        return list(&reg, a.json);
    }
    if a.logs {
        return logs(&reg, a.app.as_deref().unwrap_or_default());
    }
    if a.delete || a.keep.is_some() || a.prune {
        return delete(&a, &reg);
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
    // A container of xos-loader by its id: its application.
    let app_of_container = xos::container::app_of(&a.state_dir, spec).map(|id| id.to_string());
    let spec = app_of_container.as_deref().unwrap_or(spec);
    let rec = match reg.resolve(spec) {
        Ok(r) => r,
        Err(e) => {
            return ended(&a, spec.trim().parse().ok())
                .unwrap_or_else(|| common::fail("checkpoint", e))
        }
    };
    if !rec.alive() {
        return ended(&a, Some(rec.id)).unwrap_or_else(|| {
            eprintln!(
                "checkpoint: application {} is not running (its root process {} is gone)",
                rec.id, rec.root_pid
            );
            1
        });
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
            ghost_limit: a.ghost_limit,
            external_unix: a.external_unix,
            cancel: Some(cancel),
        };
        // On a terminal, the bytes written so far into the version being made.
        let progress = (!a.quiet && !a.json)
            .then(|| {
                let version = xos::store::next_version(&a.state_dir, rec.id);
                let tmp =
                    xos::ckpt::image::app_dir(&a.state_dir, rec.id).join(format!(".{version}.tmp"));
                let pids = rec.cgroup.pids().unwrap_or_default();
                crate::progress::checkpoint(rec.id, tmp, crate::progress::memory_estimate(&pids))
            })
            .flatten();
        let written = if rec.checkpointer == xos::gcp::container::CONTAINER {
            // The whole container: its tmpfs, root and SysV IPC objects too.
            xos::gcp::container::checkpoint_version(&a.state_dir, &rec, &opts)
                .map_err(anyhow::Error::from)
        } else {
            // A job unit of xos-loader killed for this reports no end.
            xos::container::unit::checkpoint_kill(&a.state_dir, rec.id, a.kill, || {
                xos::ckpt::checkpoint(&a.state_dir, &rec, &opts)
            })
            .map_err(anyhow::Error::from)
        };
        drop(progress);
        return match written {
            Ok(_) if a.quiet => 0,
            Ok(c) if a.json => {
                let written = serde_json::json!({
                    "app": rec.id,
                    "version": c.version,
                    "dir": c.dir,
                    "processes": c.processes,
                    "bytes": c.bytes,
                    "stopped_ms": c.stopped.as_millis() as u64,
                    "stats": c.stats,
                });
                println!("{written:#}");
                0
            }
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
                if a.stats {
                    for line in common::stats_lines(&c.stats) {
                        println!("{line}");
                    }
                }
                0
            }
            Err(e) => {
                let msg = common::one_line(e.as_ref());
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

/// One application in `--list --json`.
#[derive(serde::Serialize)]
struct Listed {
    id: u64,
    state: String,
    /// Host pid of the command (None once only the init is left).
    pid: Option<i32>,
    /// Host pid of the application's init.
    init_pid: i32,
    /// Seconds since the epoch.
    started: u64,
    /// The grid job it belongs to (krgcr-run --job).
    job: Option<String>,
    /// native or criu.
    checkpointer: String,
    command: Vec<String>,
    cwd: std::path::PathBuf,
}

fn list(reg: &Registry, json: bool) -> i32 {
    let records = match reg.list() {
        Ok(r) => r,
        Err(e) => return common::fail("checkpoint", e),
    };
    let mut status = 0;
    let mut apps = Vec::new();
    for r in records {
        match r {
            Ok(rec) => apps.push(Listed {
                id: rec.id,
                state: rec.state().to_string(),
                pid: rec.command_pid(),
                init_pid: rec.root_pid,
                started: rec.started,
                job: rec.job.clone(),
                checkpointer: rec.checkpointer.clone(),
                command: rec.command,
                cwd: rec.cwd,
            }),
            Err(e) => {
                status = 1;
                common::fail("checkpoint", e);
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&apps).expect("listings serialize")
        );
        return status;
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                a.state.clone(),
                a.pid.map_or("-".to_string(), |p| p.to_string()),
                common::fmt_time(a.started),
                a.job.clone().unwrap_or_else(|| "-".into()),
                a.checkpointer.clone(),
                common::printable(&a.command.join(" ")),
            ]
        })
        .collect();
    let header = ["ID", "STATE", "PID", "STARTED", "JOB", "CKPT", "COMMAND"];
    for line in common::table(&header, &rows, &[2]) {
        println!("{line}");
    }
    status
}

/// For an application that has ended but left checkpoints: says so and what to do,
/// and returns the exit status.
fn ended(a: &Args, id: Option<u64>) -> Option<i32> {
    let id = id?;
    let versions = xos::ckpt::image::versions(&a.state_dir, id);
    let last = versions.last()?;
    eprintln!(
        "checkpoint: application {id} has ended; restart it from a checkpoint \
         (`restart {id} {last}`, versions: `restart --list {id}`)"
    );
    Some(1)
}

/// `--wait APP` alone: waits until APP has ended and returns its exit status.
fn wait_end(reg: &Registry, spec: &str) -> i32 {
    let id = match app_id(reg, spec) {
        Ok(id) => id,
        Err(code) => return code,
    };
    let unknown = || {
        eprintln!(
            "checkpoint: application {id} has ended, but no exit status was recorded \
             (its supervisor was killed, or it never ran)"
        );
        1
    };
    // The supervisor records the status (a record of the current run drops the
    // last one) before it removes the record, some time after the init died.
    let mut grace = None;
    loop {
        if let Some(code) = reg.exit_status(id) {
            return code;
        }
        match reg.load(id) {
            Ok(rec) if rec.alive() => {}
            Ok(_) => {
                let until = *grace
                    .get_or_insert_with(|| std::time::Instant::now() + Duration::from_secs(15));
                if std::time::Instant::now() > until {
                    return unknown();
                }
            }
            Err(registry::RegistryError::NotFound(_)) => {
                return reg.exit_status(id).unwrap_or_else(unknown);
            }
            Err(e) => return common::fail("checkpoint", e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The id of a running application by id or pid, or of an ended one by id.
fn app_id(reg: &Registry, spec: &str) -> Result<u64, i32> {
    match reg.resolve(spec) {
        Ok(rec) => Ok(rec.id),
        Err(e) => spec
            .trim()
            .parse::<u64>()
            .map_err(|_| common::fail("checkpoint", e)),
    }
}

/// --delete, --keep and --prune.
fn delete(a: &Args, reg: &Registry) -> i32 {
    if a.prune {
        match xos::app::prune(reg, &a.cgroup_parent) {
            Ok(p) => {
                for id in &p.records {
                    println!("removed the record of application {id}");
                }
                for g in &p.groups {
                    println!("removed cgroup {g}");
                }
            }
            Err(e) => return common::fail("checkpoint", e),
        }
        return match xos::store::prune(&a.state_dir, reg) {
            Ok(ids) => {
                for id in ids {
                    println!("application {id}: images and logs deleted");
                }
                0
            }
            Err(e) => common::fail("checkpoint", e),
        };
    }
    let id = match app_id(reg, a.app.as_deref().unwrap_or_default()) {
        Ok(id) => id,
        Err(code) => return code,
    };
    let deleted = match (a.keep, a.number) {
        (Some(n), _) => xos::store::keep(&a.state_dir, id, n),
        (None, Some(v)) => xos::store::delete(&a.state_dir, id, v).map(|()| vec![v]),
        (None, None) => unreachable!("clap requires VERSION with --delete"),
    };
    match deleted {
        Ok(versions) => {
            for v in versions {
                println!("application {id}: version {v} deleted");
            }
            0
        }
        Err(e) => common::fail("checkpoint", e),
    }
}

/// Copies the logs of a detached application (a running one by id or pid, an ended
/// one by id) to stdout and stderr.
fn logs(reg: &Registry, spec: &str) -> i32 {
    let id = match app_id(reg, spec) {
        Ok(id) => id,
        Err(code) => return code,
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
