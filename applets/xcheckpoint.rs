//! xcheckpoint: grid-level checkpoint of a job's units on this node (XtreemGCP,
//! D2.1.7 §3.3), through the common kernel checkpointer API.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use xos::gcp::config::{self, GcpConfig};
use xos::gcp::criu::CRIU_ENV;
use xos::gcp::job::{self, JobCheckpoint, JobCheckpointed};
use xos::gcp::meta::JobMeta;
use xos::gcp::schedule::{self, Event, Schedule};
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

    /// Checkpoint periodically, every INTERVAL (e.g. 10m, 30s, 500ms), until the job has no unit left on this node
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration, conflicts_with = "phase")]
    every: Option<Duration>,

    /// With --every: set each interval by Young's formula sqrt(2*C*M) from the measured checkpoint cost C (average of the last 5) and the MTBF M of this node (--mtbf, else the one observed from the job's restarts after failures; none yet: the fixed interval)
    #[arg(long, requires = "every")]
    adaptive: bool,

    /// Mean time between failures of this node, for --adaptive (e.g. 6h); overrides the observed one
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    mtbf: Option<Duration>,

    /// Shortest interval --adaptive may choose
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    min: Duration,

    /// Longest interval --adaptive may choose
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1d")]
    max: Duration,

    /// With --every: keep only the N newest versions of the job
    #[arg(long, value_name = "N", requires = "every", value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,

    /// Write the version even if a pre-checkpoint callback fails or times out
    #[arg(long)]
    force: bool,

    /// Time limit of each unit's callback, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    callback_timeout: f64,

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

    /// Directory of the jobs' checkpoint versions (may be a shared filesystem) [default: CheckpointDir of the configuration, else /var/lib/xos/checkpoints]
    #[arg(long, value_name = "DIR", env = meta::CHECKPOINT_DIR_ENV)]
    checkpoint_dir: Option<PathBuf>,

    /// Configuration file (keys CheckpointDir, Criu) [default: /etc/xos/gcp.conf, if present]
    #[arg(long, value_name = "FILE", env = config::CONFIG_ENV)]
    config: Option<PathBuf>,

    /// The criu binary [default: Criu of the configuration, else criu on PATH]
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
  xcheckpoint --every 10m --keep 3 job-42
  xcheckpoint --every 10m --adaptive --mtbf 12h --min 1m --max 2h job-42
  xcheckpoint --backends

SIGINT, SIGTERM and SIGHUP abort cleanly: every unit runs on and no version is
written. With --every, a failed checkpoint is reported and the loop goes on; it
exits 1 if any failed while the job ran on (one that failed as the job ended,
within a second, does not count). See xrestart(1) to list, restart and delete
versions.";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let mut a: Args = common::parse_args(args);
    let (ck, backends) =
        match GcpConfig::resolve(a.config.as_deref(), a.checkpoint_dir.take(), a.criu.take()) {
            Ok(r) => r,
            Err(e) => return common::fail("xcheckpoint", e),
        };
    if a.backends {
        let list: [&dyn Checkpointer; 3] = [&backends.native, &backends.criu, &backends.container];
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
    for (name, v) in [
        ("--timeout", a.timeout),
        ("--callback-timeout", a.callback_timeout),
    ] {
        if !(v.is_finite() && v > 0.0) {
            eprintln!("xcheckpoint: invalid {name} '{v}': must be a positive number of seconds");
            return 2;
        }
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
    let opts = JobCheckpoint {
        coordinated: !a.uncoordinated,
        kill: a.kill,
        units: a.unit,
        timeout,
        wait: a.wait,
        cancel: Some(cancel),
        commit: a.phase.as_deref() == Some("commit"),
        force: a.force,
        callback_timeout: Duration::from_secs_f64(a.callback_timeout),
    };
    match a.phase.as_deref() {
        Some("prepare") => {
            return match job::prepare(&backends, &reg, &ck, &job, &opts) {
                Ok(units) => {
                    println!("job {job}: prepared ({} units frozen)", units.len());
                    0
                }
                Err(e) => fail(e),
            }
        }
        Some("abort") => {
            return match job::abort(&backends, &reg, &ck, &job, timeout) {
                Ok(units) => {
                    println!("job {job}: aborted ({} units thawed)", units.len());
                    0
                }
                Err(e) => fail(e),
            }
        }
        _ => {}
    }
    if let Some(every) = a.every {
        let sched = Schedule {
            every,
            adaptive: a.adaptive,
            mtbf: a.mtbf,
            min: a.min,
            max: a.max,
            keep: a.keep.map(|n| n as usize),
        };
        return periodic(&backends, &reg, &ck, &job, &opts, &sched);
    }
    match job::checkpoint(&backends, &reg, &ck, &job, &opts) {
        Ok(JobCheckpointed::ChildExit(c)) => c,
        Ok(JobCheckpointed::Written(m)) => {
            println!("{}", written(&ck, &m));
            0
        }
        Err(e) => fail(e),
    }
}

fn written(root: &std::path::Path, m: &JobMeta) -> String {
    format!(
        "job {}: version {} written to {} ({} units, {} processes, {:.1} MiB, {})",
        m.job,
        m.version,
        meta::version_dir(root, &m.job, m.version).display(),
        m.units.len(),
        m.units.iter().map(|u| u.processes).sum::<usize>(),
        m.bytes() as f64 / (1u64 << 20) as f64,
        if m.coordinated {
            "coordinated"
        } else {
            "uncoordinated"
        }
    )
}

fn periodic(
    backends: &Backends,
    reg: &Registry,
    root: &std::path::Path,
    job: &str,
    opts: &JobCheckpoint,
    sched: &Schedule,
) -> i32 {
    let ms = |d: Duration| d.as_millis();
    let mut report = |e: Event| {
        match e {
            Event::Written(m, cost) => {
                println!("{} in {} ms", written(root, m), ms(cost));
            }
            Event::Failed(e) => {
                eprintln!("xcheckpoint: job {job}: {}", common::one_line(e));
            }
            Event::Deleted(v) => println!("job {job}: version {v} deleted"),
            Event::Next(d) => match d.inputs {
                Some((c, m, y)) => println!(
                    "job {job}: next checkpoint in {} ms (adaptive: cost {} ms, MTBF {} ms{}, sqrt(2*C*M) = {} ms, within {}..{} ms)",
                    ms(d.interval),
                    ms(c),
                    ms(m),
                    if d.observed { " observed" } else { "" },
                    ms(y),
                    ms(sched.min),
                    ms(sched.max)
                ),
                None if sched.adaptive && sched.mtbf.is_none() => println!(
                    "job {job}: next checkpoint in {} ms (adaptive: no failure of this node recorded and no --mtbf: fixed interval)",
                    ms(d.interval)
                ),
                None => println!("job {job}: next checkpoint in {} ms", ms(d.interval)),
            },
            Event::Ended => println!("job {job}: no unit left on this node, periodic checkpointing ends"),
            Event::EndedDuring(e) => println!(
                "job {job}: ended during a checkpoint, which failed so ({}); periodic checkpointing ends",
                common::one_line(e)
            ),
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
    };
    match schedule::run(backends, reg, root, job, opts, sched, &mut report) {
        Ok(Ok(0)) => 0,
        Ok(Ok(_)) => 1,
        Ok(Err(child)) => child,
        Err(e) => common::fail(
            "xcheckpoint",
            anyhow::anyhow!("job {job}: {}", common::one_line(&e)),
        ),
    }
}

/// Parses a duration: a number with ms, s, m, h or d (seconds without a unit).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 30s, 10m, 6h, 1d)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("unknown unit in '{s}' (use ms, s, m, h or d)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("'{s}' must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("x").is_err());
    }
}
