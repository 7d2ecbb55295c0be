//! xrestart: grid-level restart of a job's units from a checkpoint version
//! (XtreemGCP, D2.1.7 §3.3); also lists and deletes versions.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgGroup, CommandFactory, Parser};
use xos::gcp::config::{self, GcpConfig};
use xos::gcp::criu::CRIU_ENV;
use xos::gcp::job::{self, JobRestart, JobRestarted};
use xos::gcp::meta;
use xos::registry::{self, Registry};

use crate::common;

/// Restart every unit of grid job JOB from checkpoint version VERSION on this node.
///
/// Each unit is rebuilt by the kernel checkpointer that wrote it, as a new
/// application of this node's registry (with its own cgroup and namespaces, so
/// its old pids are no conflict with the processes of this node), and runs under a
/// background supervisor; xrestart returns once every unit runs and prints one
/// line per unit with its new application id. The version may have been written
/// on another node that shares the checkpoint directory (migration); the
/// restart is recorded in its meta.json. Everything is checked before anything
/// starts: a corrupt meta.json, a missing unit image or a checkpointer that is
/// not available here is refused with one line and nothing started.
#[derive(Debug, Parser)]
#[command(name = "xrestart", version = common::version(), after_help = AFTER)]
#[command(group(ArgGroup::new("mode").args(["list", "delete", "keep"])))]
struct Args {
    /// List the versions of JOB: date, node, units, checkpointers, size, state
    #[arg(short, long)]
    list: bool,

    /// With --list: print JSON (see below) instead of a table
    #[arg(long, requires = "list")]
    json: bool,

    /// Delete version VERSION of JOB
    #[arg(long, requires = "number")]
    delete: bool,

    /// Keep the N newest versions of JOB, delete the others
    #[arg(long, value_name = "N")]
    keep: Option<usize>,

    /// Leave the restarted units frozen (resume them with checkpoint --unfreeze)
    #[arg(long)]
    frozen: bool,

    /// Connect the units' inherited stdout to FILE (default /dev/null)
    #[arg(long, value_name = "FILE")]
    stdout: Option<PathBuf>,

    /// Connect the units' inherited stderr to FILE (default /dev/null)
    #[arg(long, value_name = "FILE")]
    stderr: Option<PathBuf>,

    /// Where container units report their job's end: unix:PATH or tcp:HOST:PORT (default: the address they had)
    #[arg(long, value_name = "ADDR")]
    notify: Option<String>,

    /// State directory holding the registry
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Directory of the jobs' checkpoint versions (may be a shared filesystem) [default: CheckpointDir of the configuration, else /var/lib/xos/checkpoints]
    #[arg(long, value_name = "DIR", env = meta::CHECKPOINT_DIR_ENV)]
    checkpoint_dir: Option<PathBuf>,

    /// Configuration file (keys CheckpointDir, Criu) [default: /etc/xos/gcp.conf, if present]
    #[arg(long, value_name = "FILE", env = config::CONFIG_ENV)]
    config: Option<PathBuf>,

    /// cgroup under which the units' groups are created
    #[arg(long, value_name = "NAME", env = xos::app::CGROUP_PARENT_ENV, default_value = xos::app::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,

    /// The criu binary [default: Criu of the configuration, else criu on PATH]
    #[arg(long, value_name = "PATH", env = CRIU_ENV)]
    criu: Option<PathBuf>,

    /// Job id
    #[arg(value_name = "JOB")]
    job: String,

    /// Checkpoint version (1, 2, ...)
    #[arg(value_name = "VERSION", required_unless_present_any = ["list", "keep"])]
    number: Option<u64>,
}

const AFTER: &str = "\
Examples:
  xrestart job-42 3                # every unit of version 3 of job-42
  xrestart --list job-42
  xrestart --delete job-42 1
  xrestart --keep 2 job-42

--list --json prints an array with one object per version: version, created
(seconds since the epoch), node, coordinated (bool), killed (bool), bytes, units
(array of objects: app, backend, backend_version, command, processes, bytes,
stopped_ms), restarts (array of [node, seconds since the epoch]) and error (null, or
why the version's meta.json could not be read; then the other fields but version are
null).

Exit status: 0 once every unit runs; 1 if anything was refused or failed (then
no unit of the version is left running).";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let mut a: Args = common::parse_args(args);
    let (ck, backends) =
        match GcpConfig::resolve(a.config.as_deref(), a.checkpoint_dir.take(), a.criu.take()) {
            Ok(r) => r,
            Err(e) => return common::fail("xrestart", e),
        };
    let job = a.job.as_str();
    let fail = |e: xos::gcp::GcpError| {
        common::fail(
            "xrestart",
            anyhow::anyhow!("job {job}: {}", common::one_line(&e)),
        )
    };
    if let Err(e) = meta::check_job(job) {
        return common::fail("xrestart", e);
    }
    if a.list {
        return list(&a, &ck);
    }
    if let Some(n) = a.keep {
        return match job::keep(&backends, &ck, job, n) {
            Ok(gone) => {
                for v in gone {
                    println!("job {job}: version {v} deleted");
                }
                0
            }
            Err(e) => fail(e),
        };
    }
    let version = a.number.unwrap_or_default();
    if a.delete {
        return match job::delete(&backends, &ck, job, version) {
            Ok(()) => {
                println!("job {job}: version {version} deleted");
                0
            }
            Err(e) => fail(e),
        };
    }
    let reg = match Registry::open(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return common::fail("xrestart", e),
    };
    let opts = JobRestart {
        frozen: a.frozen,
        cgroup_parent: a.cgroup_parent.clone(),
        stdout: a.stdout.clone(),
        stderr: a.stderr.clone(),
        notify: a.notify.clone(),
    };
    match job::restart(&backends, &reg, &ck, job, version, &opts) {
        Ok(JobRestarted::Started(units)) => {
            for (old, new, backend) in units {
                println!("job {job}: unit {old} ({backend}) restarted as application {new}");
            }
            0
        }
        Ok(JobRestarted::ChildExit(c)) => c,
        Err(e) => fail(e),
    }
}

fn list(a: &Args, ck: &std::path::Path) -> i32 {
    let job = a.job.as_str();
    let versions = meta::versions(ck, job);
    if versions.is_empty() {
        return common::fail(
            "xrestart",
            xos::gcp::GcpError::NoCheckpoints {
                job: job.to_string(),
                dir: ck.to_path_buf(),
            },
        );
    }
    if a.json {
        return list_json(ck, job, versions);
    }
    println!(
        "{:<8} {:<20} {:<16} {:>5} {:<12} {:>10} STATE",
        "VERSION", "DATE", "NODE", "UNITS", "BACKENDS", "SIZE"
    );
    let mut status = 0;
    for v in versions {
        match meta::read(ck, job, v) {
            Ok(m) => {
                let mut backends: Vec<&str> = m.units.iter().map(|u| u.backend.as_str()).collect();
                backends.sort_unstable();
                backends.dedup();
                println!(
                    "{:<8} {:<20} {:<16} {:>5} {:<12} {:>9.1}M {}{}",
                    v,
                    common::fmt_time(m.created),
                    m.node,
                    m.units.len(),
                    backends.join(","),
                    m.bytes() as f64 / (1u64 << 20) as f64,
                    if m.coordinated {
                        "coordinated"
                    } else {
                        "uncoordinated"
                    },
                    match m.restarts.last() {
                        Some((node, _)) => format!(", restarted on {node}"),
                        None => String::new(),
                    }
                );
            }
            Err(e) => {
                status = 1;
                println!("{v:<8} corrupt: {}", common::one_line(&e));
            }
        }
    }
    status
}

/// `--list --json`: one object per version (see AFTER).
fn list_json(ck: &std::path::Path, job: &str, versions: Vec<u64>) -> i32 {
    let mut status = 0;
    let all: Vec<serde_json::Value> = versions
        .into_iter()
        .map(|v| match meta::read(ck, job, v) {
            Ok(m) => serde_json::json!({
                "version": v,
                "created": m.created,
                "node": m.node,
                "coordinated": m.coordinated,
                "killed": m.killed,
                "bytes": m.bytes(),
                "units": m.units.iter().map(|u| serde_json::json!({
                    "app": u.app,
                    "backend": u.backend,
                    "backend_version": u.backend_version,
                    "command": u.command,
                    "processes": u.processes,
                    "bytes": u.bytes,
                    "stopped_ms": u.stopped_ms,
                })).collect::<Vec<_>>(),
                "restarts": m.restarts,
                "error": null,
            }),
            Err(e) => {
                status = 1;
                serde_json::json!({
                    "version": v, "created": null, "node": null, "coordinated": null,
                    "killed": null, "bytes": null, "units": null, "restarts": null,
                    "error": common::one_line(&e),
                })
            }
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&all).expect("listings serialize")
    );
    status
}
