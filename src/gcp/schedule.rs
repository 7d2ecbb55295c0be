//! Periodic and adaptive checkpointing of a job (`xcheckpoint --every`).
//!
//! Adaptive: the interval follows Young's first-order optimum √(2·C·M), where C
//! is the cost of one checkpoint (a moving average of this job's last ones) and M
//! the mean time between failures: given with `--mtbf`, else the one observed
//! for this node in the job's failure log ([`super::meta::observed_mtbf`]), kept
//! within `--min`..`--max`. Without a known M the fixed interval is kept.

use std::path::Path;
use std::time::{Duration, Instant};

use super::api::Result;
use super::job::{self, JobCheckpoint, JobCheckpointed};
use super::meta::JobMeta;
use super::{Backends, GcpError};
use crate::registry::Registry;

/// How many of the last checkpoints the cost is averaged over.
const COST_WINDOW: usize = 5;

/// When to checkpoint.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The interval (the first one, and every one unless adaptive).
    pub every: Duration,
    pub adaptive: bool,
    /// Mean time between failures of the node (None: the observed one).
    pub mtbf: Option<Duration>,
    pub min: Duration,
    pub max: Duration,
    /// Keep only the newest N versions.
    pub keep: Option<usize>,
}

/// Young's interval √(2·C·M).
pub fn young(cost: Duration, mtbf: Duration) -> Duration {
    Duration::from_secs_f64((2.0 * cost.as_secs_f64() * mtbf.as_secs_f64()).sqrt())
}

/// The mean of the last [`COST_WINDOW`] costs.
pub fn average(costs: &[Duration]) -> Option<Duration> {
    let last = &costs[costs.len().saturating_sub(COST_WINDOW)..];
    if last.is_empty() {
        return None;
    }
    Some(last.iter().sum::<Duration>() / last.len() as u32)
}

/// A decision on the next interval, with its inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub interval: Duration,
    /// Average cost C, MTBF M and √(2·C·M) when adaptive; None for a fixed interval.
    pub inputs: Option<(Duration, Duration, Duration)>,
    /// M was observed (not given with `--mtbf`).
    pub observed: bool,
}

/// The interval after the checkpoints that cost `costs`; `observed` is the
/// node's observed MTBF, used when none is given.
pub fn next_interval(s: &Schedule, costs: &[Duration], observed: Option<Duration>) -> Decision {
    match (s.adaptive, s.mtbf.or(observed), average(costs)) {
        (true, Some(m), Some(c)) => {
            let y = young(c, m);
            Decision {
                interval: y.clamp(s.min, s.max.max(s.min)),
                inputs: Some((c, m, y)),
                observed: s.mtbf.is_none(),
            }
        }
        _ => Decision {
            interval: s.every,
            inputs: None,
            observed: false,
        },
    }
}

/// What the periodic loop reports.
#[derive(Debug)]
pub enum Event<'a> {
    Written(&'a JobMeta, Duration),
    Failed(&'a GcpError),
    Deleted(u64),
    Next(&'a Decision),
    /// The job has no unit left on this node: the loop ends.
    Ended,
    /// The job ended while it was being checkpointed, which failed so: no
    /// failure of a running job; the loop ends.
    EndedDuring(&'a GcpError),
}

/// How long a failed checkpoint waits for the job's end before it counts.
const END_GRACE: Duration = Duration::from_secs(1);

/// Checkpoints `job` by `sched` until it has no unit left on this node or
/// `opts.cancel` is set. A failed checkpoint is reported and the loop goes on
/// (the units run on, as after any failed checkpoint); one that failed as the
/// job ended does not count. Returns the number of failed checkpoints, or the
/// exit status of a child made by a restart.
pub fn run(
    backends: &Backends,
    reg: &Registry,
    root: &Path,
    job: &str,
    opts: &JobCheckpoint,
    sched: &Schedule,
    report: &mut dyn FnMut(Event),
) -> Result<std::result::Result<u64, i32>> {
    super::meta::check_job(job)?;
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    };
    let mut costs = Vec::new();
    let mut failures = 0;
    let mut first = true;
    loop {
        if job::units(reg, job)?.is_empty() {
            if first {
                return Err(GcpError::NoUnits(job.to_string()));
            }
            report(Event::Ended);
            return Ok(Ok(failures));
        }
        first = false;
        let start = Instant::now();
        match job::checkpoint(backends, reg, root, job, opts) {
            Ok(JobCheckpointed::Written(m)) => {
                let cost = start.elapsed();
                costs.push(cost);
                report(Event::Written(&m, cost));
                if let Some(n) = sched.keep {
                    for v in job::keep(backends, root, job, n)? {
                        report(Event::Deleted(v));
                    }
                }
            }
            Ok(JobCheckpointed::ChildExit(c)) => return Ok(Err(c)),
            Err(GcpError::Cancelled) => return Ok(Ok(failures)),
            Err(e) => {
                // A job ending meanwhile fails its checkpoint (a freezer
                // cannot freeze a PID namespace's init that waits for its
                // frozen children to die): once it has ended, that is moot.
                let gone = Instant::now() + END_GRACE;
                while !job::units(reg, job)?.is_empty() && Instant::now() < gone {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if job::units(reg, job)?.is_empty() {
                    report(Event::EndedDuring(&e));
                    return Ok(Ok(failures));
                }
                failures += 1;
                report(Event::Failed(&e));
            }
        }
        let observed = if sched.adaptive && sched.mtbf.is_none() {
            super::meta::observed_mtbf(root, job, &super::meta::node_name(), crate::registry::now())
        } else {
            None
        };
        let d = next_interval(sched, &costs, observed);
        report(Event::Next(&d));
        let until = Instant::now() + d.interval;
        while Instant::now() < until {
            if cancelled() {
                return Ok(Ok(failures));
            }
            if job::units(reg, job)?.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(adaptive: bool, mtbf: Option<u64>) -> Schedule {
        Schedule {
            every: Duration::from_secs(60),
            adaptive,
            mtbf: mtbf.map(Duration::from_secs),
            min: Duration::from_secs(10),
            max: Duration::from_secs(3600),
            keep: None,
        }
    }

    #[test]
    fn youngs_formula_within_bounds() {
        // C = 2 s, M = 10000 s: √(2·2·10000) = 200 s.
        let s = sched(true, Some(10_000));
        let d = next_interval(&s, &[Duration::from_secs(2)], None);
        assert_eq!(d.interval, Duration::from_secs(200));
        assert_eq!(
            d.inputs,
            Some((
                Duration::from_secs(2),
                Duration::from_secs(10_000),
                Duration::from_secs(200)
            ))
        );
        // The cost is averaged over the last five: (1+1+1+1+16)/5 = 4 s → 282.8 s.
        let costs: Vec<_> = [9, 1, 1, 1, 1, 16].map(Duration::from_secs).to_vec();
        let d = next_interval(&s, &costs, None);
        assert_eq!(d.interval.as_millis(), 282_842);
        // Clamped to min and max.
        let d = next_interval(&sched(true, Some(1)), &[Duration::from_millis(10)], None);
        assert_eq!(d.interval, Duration::from_secs(10));
        let d = next_interval(
            &sched(true, Some(10_000_000)),
            &[Duration::from_secs(10)],
            None,
        );
        assert_eq!(d.interval, Duration::from_secs(3600));
        // No MTBF, not adaptive, or no checkpoint yet: the fixed interval.
        for (s, c) in [
            (sched(true, None), vec![Duration::from_secs(1)]),
            (sched(false, Some(100)), vec![Duration::from_secs(1)]),
            (sched(true, Some(100)), vec![]),
        ] {
            let d = next_interval(&s, &c, None);
            assert_eq!((d.interval, d.inputs), (Duration::from_secs(60), None));
        }
        // Without --mtbf the observed MTBF is used, and said to be.
        let d = next_interval(
            &sched(true, None),
            &[Duration::from_secs(2)],
            Some(Duration::from_secs(10_000)),
        );
        assert_eq!((d.interval, d.observed), (Duration::from_secs(200), true));
        let d = next_interval(&s, &[Duration::from_secs(2)], Some(Duration::from_secs(1)));
        assert_eq!(
            (d.interval, d.observed),
            (Duration::from_secs(200), false),
            "--mtbf first"
        );
    }
}
