//! xcheckpoint: grid-level checkpoint of a job's units on this node (XtreemGCP,
//! D2.1.7 §3.3), through the common kernel checkpointer API.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use xos::gcp::criu::{Criu, CRIU_ENV};
use xos::gcp::job::{self, JobCheckpoint, JobCheckpointed};
use xos::gcp::{meta, Backends, Checkpointer};
use xos::registry::{self, Registry};

use crate::common;

/// Checkpoint every unit of grid job JOB on this node into its next version.
///
/// The units are the applications started with `krgcr-run --job JOB`; each is
/// written by the kernel checkpointer it was started for (native or criu) into
/// CHECKPOINT_DIR/JOB/VERSION/unit-APP/, with a checksummed meta.json (job,
/// version, time, node, and per unit its backend, process count, size, kernel).
/// By default the checkpoint is coordinated: every unit is frozen before the
/// first is written and none is thawed before the last is written. A version is
/// complete or absent: if one unit fails, nothing of the version stays and every
/// unit runs on.
#[derive(Debug, Parser)]
#[command(name = "xcheckpoint", version = common::version(), after_help = AFTER)]
struct Args {
    /// Write each unit on its own, without a common freeze (fault tolerance only)
    #[arg(long)]
    uncoordinated: bool,

    /// Stop the units once the version is written (for migration)
    #[arg(long)]
    kill: bool,

    /// Only this unit (application id); may be repeated
    #[arg(long, value_name = "APP")]
    unit: Vec<u64>,

    /// Two-phase checkpoint for a job manager that coordinates several nodes: prepare freezes the units, commit writes the version (and thaws them), abort thaws them
    #[arg(long, value_name = "PHASE", value_parser = ["prepare", "commit", "abort"], conflicts_with_all = ["uncoordinated"])]
    phase: Option<String>,

    /// How long to wait for the kernel (freezing, every task stopping), in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,

    /// If another operation on a unit is in progress, wait for it instead of failing
    #[arg(long)]
    wait: bool,

    /// Print whether each kernel checkpointer works on this node, and exit
    #[arg(long)]
    backends: bool,

    /// State directory holding the registry
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Directory of the jobs' checkpoint versions (may be a shared filesystem)
    #[arg(long, value_name = "DIR", env = meta::CHECKPOINT_DIR_ENV, default_value = meta::DEFAULT_CHECKPOINT_DIR)]
    checkpoint_dir: PathBuf,

    /// The criu binary (default: criu on PATH)
    #[arg(long, value_name = "PATH", env = CRIU_ENV)]
    criu: Option<PathBuf>,

    /// Job id
    #[arg(value_name = "JOB", required_unless_present = "backends")]
    job: Option<String>,
}

const AFTER: &str = "\
Examples:
  xcheckpoint job-42                 # next version of every unit of job-42
  xcheckpoint --kill job-42          # ... then stop the units (migration)
  xcheckpoint --unit 6 job-42        # one unit
  xcheckpoint --uncoordinated job-42
  xcheckpoint --phase prepare job-42 # then --phase commit job-42, or --phase abort job-42
  xcheckpoint --backends

SIGINT, SIGTERM and SIGHUP abort cleanly: every unit runs on and no version is
written. See xrestart(1) to list, restart and delete versions.";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    let backends = Backends {
        criu: Criu { binary: a.criu },
        ..Backends::default()
    };
    if a.backends {
        let list: [&dyn Checkpointer; 2] = [&backends.native, &backends.criu];
        for b in list {
            let p = b.probe();
            let features: Vec<String> = p.features.iter().map(|f| f.to_string()).collect();
            match p.version {
                Ok(v) => println!("{:<7} {v} ({})", b.name(), features.join(", ")),
                Err(why) => println!("{:<7} not available: {why}", b.name()),
            }
        }
        return 0;
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        eprintln!(
            "xcheckpoint: invalid --timeout '{}': must be a positive number of seconds",
            a.timeout
        );
        return 2;
    }
    let job = a.job.unwrap_or_default();
    let reg = match Registry::open(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return common::fail("xcheckpoint", e),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&cancel)) {
            return common::fail("xcheckpoint", anyhow::anyhow!("cannot catch signals: {e}"));
        }
    }
    let timeout = Duration::from_secs_f64(a.timeout);
    let fail = |e: xos::gcp::GcpError| {
        common::fail(
            "xcheckpoint",
            anyhow::anyhow!("job {job}: {}", common::one_line(&e)),
        )
    };
    match a.phase.as_deref() {
        Some("prepare") => {
            return match job::prepare(&backends, &reg, &a.checkpoint_dir, &job, &a.unit, timeout) {
                Ok(units) => {
                    println!("job {job}: prepared ({} units frozen)", units.len());
                    0
                }
                Err(e) => fail(e),
            }
        }
        Some("abort") => {
            return match job::abort(&backends, &reg, &a.checkpoint_dir, &job, timeout) {
                Ok(units) => {
                    println!("job {job}: aborted ({} units thawed)", units.len());
                    0
                }
                Err(e) => fail(e),
            }
        }
        _ => {}
    }
    let opts = JobCheckpoint {
        coordinated: !a.uncoordinated,
        kill: a.kill,
        units: a.unit,
        timeout,
        wait: a.wait,
        cancel: Some(cancel),
        commit: a.phase.as_deref() == Some("commit"),
    };
    match job::checkpoint(&backends, &reg, &a.checkpoint_dir, &job, &opts) {
        Ok(JobCheckpointed::ChildExit(c)) => c,
        Ok(JobCheckpointed::Written(m)) => {
            println!(
                "job {job}: version {} written to {} ({} units, {} processes, {:.1} MiB, {})",
                m.version,
                meta::version_dir(&a.checkpoint_dir, &job, m.version).display(),
                m.units.len(),
                m.units.iter().map(|u| u.processes).sum::<usize>(),
                m.bytes() as f64 / (1u64 << 20) as f64,
                if m.coordinated {
                    "coordinated"
                } else {
                    "uncoordinated"
                }
            );
            0
        }
        Err(e) => fail(e),
    }
}
