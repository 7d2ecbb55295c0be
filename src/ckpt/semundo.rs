//! SysV semaphore undo lists (SEM_UNDO). Nothing shows a process's list, but
//! the kernel applies it to the semaphores when the process ends: a
//! checkpoint that kills the application (`--kill`) ends its processes one at
//! a time and reads every semaphore of the application's IPC namespace after
//! each, and the change is that process's list. (While every task is stopped
//! under ptrace none waits in semop(2), so no other operation completes in
//! between.) Restart gives each process its list again: the init sets every
//! such semaphore to its saved value plus all the adjustments, and each new
//! process makes the opposite operations with SEM_UNDO (increments first),
//! which leaves the values as saved and the lists as they were.
//!
//! Interfaces: semop(2), semctl(2) GETALL/SETALL, setns(2).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::image::{Image, Proc, SemUndo};
use super::CkptError;

type Result<T> = std::result::Result<T, CkptError>;

fn err(pid: i32, reason: impl std::fmt::Display) -> CkptError {
    CkptError::Restore {
        pid,
        reason: reason.to_string(),
    }
}

/// Every semaphore value of the caller's IPC namespace: array id -> values.
fn values() -> BTreeMap<i32, Vec<u16>> {
    let mut out = BTreeMap::new();
    for e in crate::sysvipc::list(crate::sysvipc::Kind::Sem).unwrap_or_default() {
        let Ok(ds) = crate::sysvipc::sys::sem_stat(e.id) else {
            continue;
        };
        let mut v = vec![0u16; ds.sem_nsems as usize];
        if crate::sysvipc::sys::sem_getall(e.id, &mut v).is_ok() {
            out.insert(e.id, v);
        }
    }
    out
}

/// Whether every task of process `host` has passed exit (its undo list is
/// applied once the last one has): gone, or a zombie.
fn ended(host: i32) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{host}/task")) else {
        return true;
    };
    rd.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .map(|s| {
                let state = s
                    .rsplit_once(')')
                    .map(|(_, r)| r.trim_start())
                    .unwrap_or("");
                state.starts_with('Z') || state.starts_with('X')
            })
            .unwrap_or(true)
    })
}

/// Kills the stopped processes `procs` (host pid, pid in the application)
/// one by one, from a thread in the IPC namespace of `ns_of`, and returns
/// each one's undo list (processes without one are left out). With no
/// semaphore in the namespace, or once a process does not end within
/// `timeout`, it stops and returns the lists seen so far: the caller kills
/// every process afterwards anyway.
pub fn kill_measuring(
    ns_of: i32,
    procs: &[(i32, i32)],
    timeout: Duration,
) -> BTreeMap<i32, Vec<SemUndo>> {
    let kill = |host: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(host),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut out = BTreeMap::new();
            if crate::ns::enter(ns_of, "ipc").is_err() {
                return out;
            }
            let mut before = values();
            if before.is_empty() {
                return out;
            }
            let deadline = Instant::now() + timeout;
            for &(host, pid) in procs {
                kill(host);
                while !ended(host) {
                    if Instant::now() >= deadline {
                        log::warn!("process {pid} did not end: SEM_UNDO lists not measured");
                        return out;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                let after = values();
                let mut list = Vec::new();
                for (id, was) in &before {
                    let Some(now) = after.get(id) else { continue };
                    for (num, (a, b)) in was.iter().zip(now).enumerate() {
                        if a != b {
                            list.push(SemUndo {
                                semid: *id,
                                num: num as u16,
                                adj: i32::from(*b) - i32::from(*a),
                            });
                        }
                    }
                }
                if !list.is_empty() {
                    out.insert(pid, list);
                }
                before = after;
            }
            out
        })
        .join()
        .unwrap_or_default()
    })
}

/// In the init, after the image's IPC objects are restored and before any
/// process exists: every semaphore with adjustments is set to its saved value
/// plus their sum (the processes take them back, see [`give_back`]).
pub fn prepare(dir: &Path, img: &Image) -> Result<()> {
    let mut sums: BTreeMap<(i32, u16), i32> = BTreeMap::new();
    for p in &img.processes {
        for u in &p.sem_undo {
            *sums.entry((u.semid, u.num)).or_default() += u.adj;
        }
    }
    if sums.is_empty() {
        return Ok(());
    }
    let now = values();
    for (id, mut v) in now {
        let mut changed = false;
        for (num, val) in v.iter_mut().enumerate() {
            if let Some(sum) = sums.get(&(id, num as u16)) {
                let want = i32::from(*val) + sum;
                *val = u16::try_from(want).map_err(|_| {
                    err(
                        1,
                        format!(
                            "semaphore {num} of array {id} ({}): its SEM_UNDO adjustments \
                             leave it out of range",
                            dir.display()
                        ),
                    )
                })?;
                changed = true;
            }
        }
        if changed {
            crate::sysvipc::sys::sem_setall(id, &v).map_err(|e| {
                err(
                    1,
                    format!("cannot prepare semaphore array {id} for SEM_UNDO: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// In process `p` being made again: its undo list, by the opposite
/// operations with SEM_UNDO (increments before decrements, so that no value
/// goes below zero).
pub fn give_back(p: &Proc) -> std::result::Result<(), String> {
    let mut by_array: BTreeMap<i32, Vec<(u16, i16)>> = BTreeMap::new();
    for u in &p.sem_undo {
        let op = i16::try_from(-u.adj).map_err(|_| {
            format!(
                "SEM_UNDO adjustment {} of array {} out of range",
                u.adj, u.semid
            )
        })?;
        by_array.entry(u.semid).or_default().push((u.num, op));
    }
    for (id, mut ops) in by_array {
        ops.sort_by_key(|&(_, op)| std::cmp::Reverse(op));
        crate::sysvipc::sys::sem_op_undo(id, &ops).map_err(|e| {
            format!("cannot give back its SEM_UNDO adjustments of semaphore array {id}: {e}")
        })?;
    }
    Ok(())
}
