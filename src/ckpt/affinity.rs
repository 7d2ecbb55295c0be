//! CPU affinity: keeping the tracer on the CPU of the task it works on, and the
//! CPUs an application's threads may run on, saved and set again.
//!
//! Every call injected into a stopped task is two ptrace stops: the tracer wakes
//! the task, the task wakes the tracer. A stopped task wakes up on the CPU it last
//! ran on; when that is not the tracer's CPU, each of those wake-ups crosses CPUs,
//! and on a virtual machine an idle virtual CPU takes 20-40 µs to wake (measured
//! here: 130 µs per injected call across CPUs, 7-11 µs on one). On the task's own
//! CPU the wake-ups are plain context switches. Only the tracer's own affinity
//! changes; the application's is never touched.

use std::cell::RefCell;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

thread_local! {
    /// The follower of this tracer thread, while a [`Following`] lives.
    static FOLLOWER: RefCell<Option<CpuFollower>> = const { RefCell::new(None) };
}

/// While this lives, [`follow`] moves the calling thread; its affinity comes
/// back when it is dropped.
pub struct Following(());

/// Starts following on the calling thread (a checkpoint or a restart).
pub fn start() -> Following {
    FOLLOWER.with(|f| *f.borrow_mut() = Some(CpuFollower::new()));
    Following(())
}

impl Drop for Following {
    fn drop(&mut self) {
        FOLLOWER.with(|f| f.borrow_mut().take());
    }
}

/// Runs `f` on this thread's follower, if following has started.
fn with_follower<R>(f: impl FnOnce(&mut CpuFollower) -> R) -> Option<R> {
    FOLLOWER.with(|cell| cell.borrow_mut().as_mut().map(f))
}

/// Moves the calling thread to the CPU of `tid`, if following has started.
pub fn follow(tid: Pid) {
    with_follower(|f| f.follow(tid));
}

/// Follows tasks from CPU to CPU; the tracer's own affinity comes back on drop.
struct CpuFollower {
    original: Option<CpuSet>,
    on: Option<usize>,
}

impl CpuFollower {
    fn new() -> CpuFollower {
        CpuFollower {
            original: sched_getaffinity(Pid::from_raw(0)).ok(),
            on: None,
        }
    }

    /// Moves the calling thread to the CPU `tid` last ran on, if the thread may
    /// run there. Best effort: it only saves time.
    fn follow(&mut self, tid: Pid) {
        if let Some(cpu) = last_cpu(tid) {
            self.pin(cpu);
        }
    }

    /// Moves the calling thread to `cpu`, if it may run there.
    fn pin(&mut self, cpu: usize) {
        let allowed = self
            .original
            .as_ref()
            .is_some_and(|s| s.is_set(cpu).unwrap_or(false));
        if self.on == Some(cpu) || !allowed {
            return;
        }
        let mut one = CpuSet::new();
        if one.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &one).is_ok() {
            self.on = Some(cpu);
        }
    }
}

impl Drop for CpuFollower {
    fn drop(&mut self) {
        if let (Some(_), Some(set)) = (self.on, &self.original) {
            let _ = sched_setaffinity(Pid::from_raw(0), set);
        }
    }
}

/// The CPUs in `set`.
fn cpus_of(set: &CpuSet) -> impl Iterator<Item = usize> + '_ {
    (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false))
}

/// The CPUs `tid` may run on.
pub fn get(tid: Pid) -> Option<Vec<usize>> {
    Some(cpus_of(&sched_getaffinity(tid).ok()?).collect())
}

/// Lets `tid` run on `cpus` only.
pub fn set(tid: Pid, cpus: &[usize]) -> nix::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    sched_setaffinity(tid, &set)
}

/// Pins the calling thread (a following one) to the CPU it runs on; returns
/// the other CPUs it may use, for a helper thread that must not take turns
/// with it on that CPU (empty when there are none, or without following).
pub fn stay_here() -> Vec<usize> {
    let Some(here) = last_cpu(nix::unistd::gettid()) else {
        return Vec::new();
    };
    with_follower(|f| {
        f.pin(here);
        f.original
            .as_ref()
            .map(|all| cpus_of(all).filter(|&c| c != here).collect())
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// Runs the stopped `tid` and the calling thread on one CPU, the caller's:
/// for a process being rebuilt, whose threads (created by clone3 inside it,
/// inheriting its mask) then start and stop without waking another CPU. Its
/// own mask is set at the end of the rebuild.
pub fn pin_together(tid: Pid) {
    let Some(here) = last_cpu(nix::unistd::gettid()) else {
        return;
    };
    if set(tid, &[here]).is_ok() {
        with_follower(|f| f.pin(here));
    }
}

/// Field 39 of /proc/TID/stat: the CPU the task last ran on.
pub fn last_cpu(tid: Pid) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3.
    rest.split(' ').nth(39 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_is_read_and_followed() {
        let me = nix::unistd::gettid();
        let cpu = last_cpu(me).expect("own stat has a cpu field");
        let before = sched_getaffinity(Pid::from_raw(0)).unwrap();
        assert!(before.is_set(cpu).unwrap());
        {
            let _following = start();
            follow(me);
            let now = sched_getaffinity(Pid::from_raw(0)).unwrap();
            assert!(now.is_set(cpu).unwrap());
            assert_eq!(cpus_of(&now).count(), 1);
        }
        let after = sched_getaffinity(Pid::from_raw(0)).unwrap();
        assert_eq!(format!("{after:?}"), format!("{before:?}"));
    }
}
