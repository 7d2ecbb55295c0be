//! Threads: the state the kernel keeps per thread, saved and restored side by
//! side. Read through ptrace(2) (registers, XSAVE area, mask, PTRACE_PEEKSIGINFO,
//! PTRACE_GET_RSEQ_CONFIGURATION), get_robust_list(2) and /proc/PID/task/TID;
//! what only the thread itself can ask (PR_GET_TID_ADDRESS, sigaltstack(2),
//! PR_GET_PDEATHSIG) by injected calls. Restore creates each thread with
//! clone3(2) and `set_tid` inside its process, then sets the same state again by
//! calls injected into the new thread.

use std::fs;

use super::image::{self, Thread};
use super::ptrace::{self, Tracee};
use super::{sys, CkptError};

type Result<T> = std::result::Result<T, CkptError>;

const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_PDEATHSIG: u64 = 2;
const PR_SET_NAME: u64 = 15;
const PR_GET_TID_ADDRESS: u64 = 40;
const SS_DISABLE: u32 = 2;
const SS_ONSTACK: u32 = 1;

fn ptrace_err(pid: i32, what: &'static str) -> impl Fn(nix::Error) -> CkptError {
    move |e| CkptError::Ptrace {
        pid,
        what,
        source: e,
    }
}

/// What is read of a stopped thread without running anything in it: its raw
/// registers, its XSAVE area and the rest in a [`Thread`] whose injected
/// fields are still empty.
pub fn read(
    t: &Tracee,
    host_pid: i32,
    ns_tid: i32,
) -> Result<(libc::user_regs_struct, Vec<u8>, Thread)> {
    let host_tid = t.pid.as_raw();
    let regs = t.regs()?;
    let xstate = t.xstate()?;
    let sigmask = t.sigmask()?;
    let robust_list =
        sys::get_robust_list(t.pid).map_err(ptrace_err(ns_tid, "read the robust futex list"))?;
    let dir = format!("/proc/{host_pid}/task/{host_tid}");
    let comm = fs::read_to_string(format!("{dir}/comm"))
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_default();
    let stat = fs::read_to_string(format!("{dir}/stat")).map_err(|e| CkptError::Proc {
        pid: ns_tid,
        what: "read the thread's stat",
        source: e,
    })?;
    // Fields after the command: field N of stat(5) is f[N - 3].
    let f: Vec<i64> = stat[stat.rfind(')').unwrap_or(0) + 2..]
        .split(' ')
        .map(|v| v.trim().parse().unwrap_or(0))
        .collect();
    let field = |n: usize| f.get(n - 3).copied().unwrap_or(0);
    let th = Thread {
        tid: ns_tid,
        regs: Vec::new(),
        xstate: String::new(),
        sigmask,
        pending: Vec::new(),
        altstack: None,
        rseq: t.rseq()?,
        robust_list,
        clear_tid: 0,
        comm,
        policy: field(41) as i32,
        rt_priority: field(40) as i32,
        nice: field(19) as i32,
        pdeathsig: 0,
        cpus: super::affinity::get(t.pid),
    };
    Ok((regs, xstate, th))
}

/// The signals queued for the thread alone, as 128-byte siginfos (hex); with
/// `shared`, those queued for its whole process. Read after the injected calls:
/// a timer that fired meanwhile is re-armed only when its signal is taken, so
/// that signal must be in the image.
pub fn queued(t: &Tracee, shared: bool) -> Result<Vec<String>> {
    Ok(sys::peek_siginfo(t.pid, shared)
        .map_err(ptrace_err(t.label, "read queued signals"))?
        .iter()
        .map(|i| image::to_hex(i))
        .collect())
}

/// One thread to query: the task, its base registers, its scratch space and
/// the image being filled.
pub type Query<'a> = (&'a Tracee, &'a libc::user_regs_struct, u64, &'a mut Thread);

/// The fields only the threads can tell, by calls injected into them: each
/// call runs in every thread at once (see [`ptrace::syscalls_together`]).
pub fn query_together(threads: &mut [Query]) -> Result<()> {
    let word = |t: &Tracee, at: u64| -> Result<u64> {
        let mut b = [0u8; 8];
        t.read_mem(at, &mut b)?;
        Ok(u64::from_le_bytes(b))
    };
    let run = |threads: &[Query],
               what: &'static str,
               nr: i64,
               args: &dyn Fn(u64) -> [u64; 6]|
     -> Result<()> {
        let calls: Vec<ptrace::Call> = threads
            .iter()
            .map(|(t, base, scratch, _)| (*t, *base, nr, args(*scratch)))
            .collect();
        for (r, (t, ..)) in ptrace::syscalls_together(&calls)?.into_iter().zip(threads) {
            t.checked(what, r)?;
        }
        Ok(())
    };
    let prctl = |op: u64| move |scratch: u64| [op, scratch, 0, 0, 0, 0];
    run(
        threads,
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        &prctl(PR_GET_TID_ADDRESS),
    )?;
    for (t, _, scratch, th) in threads.iter_mut() {
        th.clear_tid = word(t, *scratch)?;
    }
    run(
        threads,
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        &prctl(PR_GET_PDEATHSIG),
    )?;
    for (t, _, scratch, th) in threads.iter_mut() {
        th.pdeathsig = word(t, *scratch)? as u32 as i32;
    }
    run(threads, "sigaltstack", libc::SYS_sigaltstack, &|scratch| {
        [0, scratch, 0, 0, 0, 0]
    })?;
    for (t, _, scratch, th) in threads.iter_mut() {
        let sp = word(t, *scratch)?;
        let flags = word(t, *scratch + 8)? as u32;
        let size = word(t, *scratch + 16)?;
        th.altstack = (flags & SS_DISABLE == 0).then_some((sp, flags & !SS_ONSTACK, size));
    }
    Ok(())
}

/// Creates thread `tid` in the process of `leader` with clone3(2) (`set_tid`),
/// injected into the leader, with `clear_tid` as its clear_child_tid (one
/// injected call less than set_tid_address); the new thread is traced from
/// its first instruction and returned stopped.
pub fn create(
    leader: &Tracee,
    base: &libc::user_regs_struct,
    scratch: u64,
    tid: i32,
    clear_tid: u64,
) -> Result<Tracee> {
    let mut flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    if clear_tid != 0 {
        flags |= libc::CLONE_CHILD_CLEARTID as u64;
    }
    // struct clone_args (linux/sched.h), version 2: 11 words; set_tid right after.
    let set_tid = scratch + 128;
    let mut args = [0u64; 11];
    args[0] = flags;
    args[2] = clear_tid;
    args[8] = set_tid;
    args[9] = 1;
    let bytes: Vec<u8> = args.iter().flat_map(|w| w.to_le_bytes()).collect();
    leader.write_mem(scratch, &bytes)?;
    leader.write_mem(set_tid, &tid.to_le_bytes())?;
    let got = leader
        .syscall_ok(
            base,
            "clone3 a thread",
            libc::SYS_clone3,
            [scratch, bytes.len() as u64, 0, 0, 0, 0],
        )
        .map_err(|e| CkptError::Restore {
            pid: leader.label,
            reason: format!("thread {tid}: {e}"),
        })? as i32;
    if got != tid {
        return Err(CkptError::Restore {
            pid: leader.label,
            reason: format!("thread {tid} was created as {got}"),
        });
    }
    let t = Tracee::attached(nix::unistd::Pid::from_raw(tid), tid, leader.mem_handle()?);
    t.wait_stopped()?;
    Ok(t)
}

/// What a thread already has when [`restore`] starts: the name it inherited,
/// and whether its clear_child_tid came with its creation.
pub struct Inherited<'a> {
    pub comm: &'a str,
    pub clear_tid: bool,
}

/// Puts back the per-thread kernel state of `th` by calls injected into the
/// thread `t` itself (the kernel only lets a thread set these for itself);
/// what it `has` already is not set again.
pub fn restore(
    t: &Tracee,
    base: &libc::user_regs_struct,
    scratch: u64,
    th: &Thread,
    has: &Inherited,
) -> Result<()> {
    if !has.clear_tid {
        t.syscall_ok(
            base,
            "set_tid_address",
            libc::SYS_set_tid_address,
            [th.clear_tid, 0, 0, 0, 0, 0],
        )?;
    }
    if th.robust_list.0 != 0 {
        t.syscall_ok(
            base,
            "set_robust_list",
            libc::SYS_set_robust_list,
            [th.robust_list.0, th.robust_list.1, 0, 0, 0, 0],
        )?;
    }
    // The leader, forked from the restorer, has the restorer's alternate
    // signal stack (the Rust runtime sets one), in memory gone by now: with
    // none saved it is disabled, else a handler installed with SA_ONSTACK
    // (every Python program's) faults at the next signal. Threads made with
    // clone3 start without one.
    let altstack = match th.altstack {
        Some(a) => Some(a),
        None if !has.clear_tid => Some((0, SS_DISABLE, 0)),
        None => None,
    };
    if let Some((sp, flags, size)) = altstack {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&sp.to_le_bytes());
        b.extend_from_slice(&(flags as u64).to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        t.write_mem(scratch, &b)?;
        t.syscall_ok(
            base,
            "sigaltstack",
            libc::SYS_sigaltstack,
            [scratch, 0, 0, 0, 0, 0],
        )?;
    }
    if let Some((addr, size, sig)) = th.rseq {
        t.syscall_ok(
            base,
            "rseq",
            libc::SYS_rseq,
            [addr, size as u64, 0, sig as u64, 0, 0],
        )?;
    }
    if th.comm != has.comm {
        let mut name = th.comm.as_bytes().to_vec();
        name.truncate(15);
        name.push(0);
        t.write_mem(scratch, &name)?;
        t.syscall_ok(
            base,
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [PR_SET_NAME, scratch, 0, 0, 0, 0],
        )?;
    }
    if th.pdeathsig != 0 {
        t.syscall_ok(
            base,
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [PR_SET_PDEATHSIG, th.pdeathsig as u64, 0, 0, 0, 0],
        )?;
    }
    // Policy and priority can be set from outside, for any thread.
    let tid = t.pid.as_raw();
    if th.policy != libc::SCHED_OTHER || th.rt_priority != 0 {
        sys::set_scheduler(tid, th.policy, th.rt_priority)
            .map_err(ptrace_err(th.tid, "set the scheduling policy"))?;
    }
    if th.nice != 0 {
        sys::set_nice(tid, th.nice).map_err(ptrace_err(th.tid, "set the nice value"))?;
    }
    Ok(())
}

/// Queues saved signals again, from inside the receiving thread: the kernel
/// refuses a forged siginfo (`si_code >= 0`) sent to another task. `shared`
/// queues for the whole process, from its leader.
pub fn queue_signals(
    t: &Tracee,
    base: &libc::user_regs_struct,
    scratch: u64,
    tgid: i32,
    infos: &[String],
    shared: bool,
) -> Result<()> {
    for hex in infos {
        let info = image::from_hex(hex)
            .filter(|b| b.len() == 128)
            .ok_or_else(|| CkptError::Restore {
                pid: t.label,
                reason: "bad saved siginfo".into(),
            })?;
        let sig = i32::from_le_bytes(info[..4].try_into().unwrap()) as u64;
        t.write_mem(scratch, &info)?;
        if shared {
            t.syscall_ok(
                base,
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                [tgid as u64, sig, scratch, 0, 0, 0],
            )?;
        } else {
            t.syscall_ok(
                base,
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                [tgid as u64, t.label as u64, sig, scratch, 0, 0],
            )?;
        }
    }
    Ok(())
}
