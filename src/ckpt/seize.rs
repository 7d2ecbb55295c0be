//! Stopping every task of an application under ptrace(2) without the freezer.
//!
//! Tasks are seized and interrupted (PTRACE_SEIZE + PTRACE_INTERRUPT) while the
//! application runs, and the cgroup is listed again until no task is new: a
//! stopped task cannot fork or clone, so the loop ends. Nothing is changed in a
//! task by this, so a checkpointer killed here leaves the application as it
//! was. A task in a job-control stop is seized like the others (the kernel
//! reports its stop signal); in a frozen cgroup such a task would never answer
//! PTRACE_SEIZE, so a frozen application is thawed first and those tasks are
//! seized once it runs. A parent blocked in vfork(2) only stops once its child
//! has called execve(2): the child is let go until then.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::dump::ns_value;
use super::ptrace::{Stop, Tracee};
use super::CkptError;
use crate::cgroup::Group;

type Result<T> = std::result::Result<T, CkptError>;

/// Every process of an application, stopped, and its zombies.
pub struct Seizure {
    pub procs: Vec<Seized>,
    /// Host pids of children that have ended but were not reaped yet by their
    /// parent (exited tasks leave the cgroup; their parents still list them).
    pub zombies: Vec<i32>,
}

/// One process, all of its threads stopped under ptrace.
pub struct Seized {
    /// Host pid.
    pub host: i32,
    /// pid in the application's namespace.
    pub ns: i32,
    /// The leader first.
    pub threads: Vec<Tracee>,
    /// The stop signal when the process is in a job-control stop.
    pub stopped: Option<i32>,
}

impl Seized {
    /// Lets every thread go (a job-control stop resumes as it was).
    pub fn detach(&self) {
        for t in &self.threads {
            let _ = t.detach();
        }
    }

    /// Kills the process while it is stopped (see [`reap_all`]).
    pub fn kill(&self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.host), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Collects the end of every task this process traces, those seized as they
/// were exiting included (a thread group leader is only reaped after all its
/// threads), giving up after `timeout`.
pub fn reap_all(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match super::sys::wait_task(Pid::from_raw(-1), true) {
            Ok(super::sys::Waited::StillAlive) => {
                if Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

struct Task {
    tgid: i32,
    tracee: Tracee,
    stop: Option<Stop>,
}

fn ns_tid(host_tgid: i32, tid: i32) -> i32 {
    let status =
        fs::read_to_string(format!("/proc/{host_tgid}/task/{tid}/status")).unwrap_or_default();
    ns_value(&status, "NSpid")
}

fn threads_of(tgid: i32) -> Vec<i32> {
    crate::fsutil::numbered_entries(std::path::Path::new(&format!("/proc/{tgid}/task")))
}

fn wchan(tid: i32) -> String {
    fs::read_to_string(format!("/proc/{tid}/wchan")).unwrap_or_default()
}

/// Children of every thread of `tgid`; with `shared_mm`, only those sharing its
/// memory (a vfork child before its execve).
fn children_of(tgid: i32, shared_mm: bool) -> Vec<i32> {
    let mut out = Vec::new();
    for tid in threads_of(tgid) {
        let kids =
            fs::read_to_string(format!("/proc/{tgid}/task/{tid}/children")).unwrap_or_default();
        for c in kids
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            if !shared_mm || super::sys::same_mm(tgid, c) {
                out.push(c);
            }
        }
    }
    out
}

/// Seizes and stops every task of `group` except the application's init
/// (`root`). On error everything seized is let go again; a frozen group is
/// frozen again.
pub fn seize_all(
    group: &Group,
    root: i32,
    timeout: Duration,
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<Seizure> {
    let deadline = Instant::now() + timeout;
    let frozen = group.freezer_state()? == crate::cgroup::FreezerState::Frozen;
    let mut tasks: BTreeMap<i32, Task> = BTreeMap::new();
    let result = (|| {
        if frozen {
            // Seize what can be seized while nothing runs; tasks in a
            // job-control stop wait until the group is thawed.
            for tgid in group.pids()?.into_iter().filter(|p| *p != root) {
                for tid in threads_of(tgid) {
                    if wchan(tid).trim() != "do_signal_stop" {
                        seize_one(&mut tasks, tgid, tid)?;
                    }
                }
            }
            group.thaw(timeout)?;
        }
        // Released vfork children: not seized again until their parent stops.
        let mut released: BTreeMap<i32, i32> = BTreeMap::new();
        loop {
            let mut new = 0;
            for tgid in group.pids()?.into_iter().filter(|p| *p != root) {
                if released.contains_key(&tgid) {
                    continue;
                }
                for tid in threads_of(tgid) {
                    if !tasks.contains_key(&tid) && seize_one(&mut tasks, tgid, tid)? {
                        new += 1;
                    }
                }
            }
            let pending: Vec<i32> = tasks
                .iter()
                .filter(|(_, t)| t.stop.is_none())
                .map(|(tid, _)| *tid)
                .collect();
            for tid in pending {
                loop {
                    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        return Err(CkptError::Cancelled);
                    }
                    let slice = (Instant::now() + Duration::from_millis(100)).min(deadline);
                    // A released vfork child is no longer waited for.
                    let Some(t) = tasks.get(&tid) else { break };
                    match t.tracee.wait_stop_until(Some(slice)) {
                        Ok(stop) => {
                            tasks.get_mut(&tid).expect("listed").stop = Some(stop);
                            break;
                        }
                        Err(CkptError::TraceeDied { .. }) => {
                            tasks.remove(&tid);
                            break;
                        }
                        Err(CkptError::Timeout { .. }) if Instant::now() < deadline => {
                            // A vfork parent waits for its child: let the child
                            // run to its execve.
                            let tgid = t.tgid;
                            for child in children_of(tgid, true) {
                                let kids: Vec<i32> = tasks
                                    .iter()
                                    .filter(|(_, k)| k.tgid == child)
                                    .map(|(k, _)| *k)
                                    .collect();
                                for k in kids {
                                    if let Some(k) = tasks.remove(&k) {
                                        let _ = k.tracee.detach();
                                    }
                                }
                                released.insert(child, tgid);
                            }
                        }
                        Err(CkptError::Timeout { pid, .. }) => {
                            let why = match wchan(tid).trim() {
                                "" | "0" => String::new(),
                                w => format!(" (waiting in {w})"),
                            };
                            return Err(CkptError::Timeout {
                                pid,
                                what: format!("stop under ptrace{why}"),
                            });
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            // A released child may be seized again once its parent has stopped.
            let before = released.len();
            released.retain(|_, parent| {
                !tasks
                    .values()
                    .any(|t| t.tgid == *parent && t.stop.is_some())
            });
            if new == 0 && released.len() == before && released.is_empty() {
                return Ok(());
            }
            if new == 0 && released.len() == before {
                std::thread::sleep(Duration::from_millis(1));
            }
            if Instant::now() >= deadline {
                let (child, _) = released.iter().next().expect("not empty");
                return Err(CkptError::Timeout {
                    pid: ns_tid(*child, *child),
                    what: "execve after vfork".into(),
                });
            }
        }
    })();
    if let Err(e) = result {
        for t in tasks.values() {
            let _ = t.tracee.detach();
        }
        if frozen {
            let _ = group.freeze(timeout);
        }
        return Err(e);
    }
    // Group the threads by process, leader first.
    let mut procs: BTreeMap<i32, Seized> = BTreeMap::new();
    for (tid, t) in tasks {
        let p = procs.entry(t.tgid).or_insert_with(|| Seized {
            host: t.tgid,
            ns: ns_tid(t.tgid, t.tgid),
            threads: Vec::new(),
            stopped: None,
        });
        if let Some(Stop::Group(sig)) = t.stop {
            p.stopped = Some(sig);
        }
        // Stopped now: its memory is the one it will keep (it may have been
        // inside execve(2) when it was seized).
        let mut tracee = t.tracee;
        if let Err(e) = tracee.reopen_mem() {
            for p in procs.values() {
                p.detach();
            }
            let _ = tracee.detach();
            return Err(e);
        }
        if tid == t.tgid {
            p.threads.insert(0, tracee);
        } else {
            p.threads.push(tracee);
        }
    }
    let procs: Vec<Seized> = procs.into_values().collect();
    if let Some(p) = procs.iter().find(|p| p.threads[0].pid.as_raw() != p.host) {
        let pid = p.ns;
        for p in &procs {
            p.detach();
        }
        return Err(CkptError::Unsupported {
            pid,
            what: "a process whose main thread has exited".into(),
        });
    }
    let hosts: Vec<i32> = procs.iter().map(|p| p.host).collect();
    let mut zombies = Vec::new();
    for p in &procs {
        for c in children_of(p.host, false) {
            if !hosts.contains(&c) && !zombies.contains(&c) && state(c) == 'Z' {
                zombies.push(c);
            }
        }
    }
    zombies.sort_unstable();
    Ok(Seizure { procs, zombies })
}

fn state(pid: i32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .unwrap_or('?')
}

/// Seizes one task; false when it is gone already.
fn seize_one(tasks: &mut BTreeMap<i32, Task>, tgid: i32, tid: i32) -> Result<bool> {
    let label = ns_tid(tgid, tid);
    match Tracee::seize(Pid::from_raw(tid), label, false) {
        Ok(tracee) => {
            tasks.insert(
                tid,
                Task {
                    tgid,
                    tracee,
                    stop: None,
                },
            );
            Ok(true)
        }
        Err(CkptError::Ptrace {
            source: nix::Error::ESRCH,
            ..
        }) => Ok(false),
        // Ended between PTRACE_SEIZE and opening its memory.
        Err(CkptError::Proc { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
            Ok(false)
        }
        // EPERM: traced by someone else, or exiting (then it is gone too).
        Err(CkptError::Ptrace {
            pid,
            source: nix::Error::EPERM,
            ..
        }) => {
            let status =
                fs::read_to_string(format!("/proc/{tgid}/task/{tid}/status")).unwrap_or_default();
            let tracer = status
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
                .unwrap_or(0);
            let state = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .map(str::trim)
                .unwrap_or("");
            if status.is_empty() || state.starts_with('Z') || state.starts_with('X') {
                return Ok(false);
            }
            if tracer == 0 {
                return Err(CkptError::Ptrace {
                    pid,
                    what: "seize",
                    source: nix::Error::EPERM,
                });
            }
            Err(CkptError::Unsupported {
                pid,
                what: format!(
                    "a task traced by another program (pid {tracer}: a debugger or another checkpoint)"
                ),
            })
        }
        Err(e) => Err(e),
    }
}
