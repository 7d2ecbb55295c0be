//! A stopped task under ptrace(2), made to run system calls for the tracer.
//!
//! The syscall instruction used is one inside the task's own vDSO, so no code is
//! written into the task to inject a call: registers are set (`rip` on the
//! instruction, `rax` and the arguments), the task single-steps over it, and
//! `rax` holds the result. With a safety frame armed (see [`super::sigframe`]),
//! the stack pointer of every injected call points at a signal frame of the
//! task's own state, so that a tracer killed at any moment leaves a task that
//! returns, through rt_sigreturn(2), exactly to where it was.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::sys::Waited;
use nix::sys::ptrace::{self, Options};
use nix::unistd::Pid;

use super::sys;
use super::CkptError;

type Result<T> = std::result::Result<T, CkptError>;

/// A seized, stopped task.
pub struct Tracee {
    pub pid: Pid,
    /// pid to name in messages (the application's own view).
    pub label: i32,
    mem: File,
    /// Address of a `syscall` instruction in the task.
    pub gadget: u64,
    /// Stack pointer for injected calls: the slot of an armed safety frame.
    pub safe_rsp: Option<u64>,
    /// Injected calls single-step (one stop each) rather than stop at entry and
    /// exit: for tasks killed with their tracer (PTRACE_O_EXITKILL).
    single_step: bool,
}

/// How a seized task stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The stop PTRACE_INTERRUPT asked for.
    Interrupted,
    /// The task is in a job-control stop (its process was stopped by this signal).
    Group(i32),
}

impl Tracee {
    fn err(&self, what: &'static str) -> impl Fn(nix::Error) -> CkptError + '_ {
        move |e| CkptError::Ptrace {
            pid: self.label,
            what,
            source: e,
        }
    }

    /// Seizes `pid` and stops it (PTRACE_SEIZE + PTRACE_INTERRUPT).
    pub fn seize(pid: Pid, label: i32, exit_kill: bool) -> Result<Tracee> {
        let mut opts = Options::PTRACE_O_TRACESYSGOOD;
        if exit_kill {
            opts |= Options::PTRACE_O_EXITKILL;
        }
        ptrace::seize(pid, opts).map_err(|e| CkptError::Ptrace {
            pid: label,
            what: "seize",
            source: e,
        })?;
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| CkptError::Proc {
                pid: label,
                what: "open memory",
                source: e,
            })?;
        let mut t = Tracee::attached(pid, label, mem);
        t.single_step = exit_kill;
        ptrace::interrupt(pid).map_err(t.err("interrupt"))?;
        Ok(t)
    }

    /// A task already traced by this process (a thread created by an injected
    /// clone), sharing the memory handle `mem` of its process.
    pub fn attached(pid: Pid, label: i32, mem: File) -> Tracee {
        Tracee {
            pid,
            label,
            mem,
            gadget: 0,
            safe_rsp: None,
            // Threads are only attached this way at restart, under EXITKILL.
            single_step: true,
        }
    }

    /// Opens the task's memory again: a handle opened before an execve(2)
    /// still shows the address space the task had then.
    pub fn reopen_mem(&mut self) -> Result<()> {
        self.mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", self.pid))
            .map_err(|e| CkptError::Proc {
                pid: self.label,
                what: "open memory",
                source: e,
            })?;
        Ok(())
    }

    /// A second handle on this task's memory (threads share it).
    pub fn mem_handle(&self) -> Result<File> {
        self.mem.try_clone().map_err(|e| CkptError::Proc {
            pid: self.label,
            what: "open memory",
            source: e,
        })
    }

    /// Also traces the threads this task creates (they start stopped).
    pub fn trace_clones(&self) -> Result<()> {
        ptrace::setoptions(
            self.pid,
            Options::PTRACE_O_TRACESYSGOOD
                | Options::PTRACE_O_EXITKILL
                | Options::PTRACE_O_TRACECLONE,
        )
        .map_err(self.err("set ptrace options"))
    }

    /// Waits for the stop that PTRACE_INTERRUPT asked for. A signal that arrives
    /// first is delivered normally (the task just runs its handler before stopping).
    pub fn wait_stopped(&self) -> Result<Stop> {
        self.wait_stop_until(None)
    }

    /// Like [`wait_stopped`](Self::wait_stopped), giving up at `deadline` with a
    /// timeout error that names the task.
    pub fn wait_stop_until(&self, deadline: Option<Instant>) -> Result<Stop> {
        let mut nap = Duration::from_micros(20);
        loop {
            match sys::wait_task(self.pid, deadline.is_some()).map_err(self.err("wait"))? {
                Waited::Stopped { sig, event } if event == libc::PTRACE_EVENT_STOP => {
                    // The kernel reports the stop signal instead of SIGTRAP
                    // while the task's process is in a job-control stop.
                    return Ok(match sig {
                        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                            Stop::Group(sig)
                        }
                        _ => Stop::Interrupted,
                    });
                }
                Waited::Stopped { sig, event: 0 } => {
                    sys::resume(libc::PTRACE_CONT, self.pid, sig).map_err(self.err("resume"))?;
                }
                Waited::Ended => return Err(CkptError::TraceeDied { pid: self.label }),
                Waited::StillAlive => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(CkptError::Timeout {
                            pid: self.label,
                            what: "stop under ptrace".into(),
                        });
                    }
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(5));
                }
                _ => {}
            }
        }
    }

    pub fn regs(&self) -> Result<libc::user_regs_struct> {
        ptrace::getregs(self.pid).map_err(self.err("read registers"))
    }

    pub fn set_regs(&self, r: libc::user_regs_struct) -> Result<()> {
        ptrace::setregs(self.pid, r).map_err(self.err("write registers"))
    }

    pub fn xstate(&self) -> Result<Vec<u8>> {
        sys::get_xstate(self.pid).map_err(self.err("read the FPU state"))
    }

    pub fn set_xstate(&self, x: &[u8]) -> Result<()> {
        sys::set_xstate(self.pid, x).map_err(self.err("write the FPU state"))
    }

    pub fn sigmask(&self) -> Result<u64> {
        sys::get_sigmask(self.pid).map_err(self.err("read the signal mask"))
    }

    pub fn set_sigmask(&self, m: u64) -> Result<()> {
        sys::set_sigmask(self.pid, m).map_err(self.err("write the signal mask"))
    }

    pub fn rseq(&self) -> Result<Option<(u64, u32, u32)>> {
        sys::get_rseq(self.pid).map_err(self.err("read the rseq registration"))
    }

    pub fn read_mem(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|e| CkptError::Memory {
                pid: self.label,
                addr,
                source: e,
            })
    }

    pub fn write_mem(&self, addr: u64, buf: &[u8]) -> Result<()> {
        self.mem
            .write_all_at(buf, addr)
            .map_err(|e| CkptError::Memory {
                pid: self.label,
                addr,
                source: e,
            })
    }

    /// Finds a `syscall` instruction (0f 05) in the vDSO mapped at `start..end`.
    pub fn find_gadget(&mut self, start: u64, end: u64) -> Result<()> {
        let mut code = vec![0u8; (end - start) as usize];
        self.read_mem(start, &mut code)?;
        let off = code
            .windows(2)
            .position(|w| w == [0x0f, 0x05])
            .ok_or(CkptError::NoSyscallInsn { pid: self.label })?;
        self.gadget = start + off as u64;
        Ok(())
    }

    /// The registers that run system call `nr` with `args` at the gadget,
    /// from registers `base`.
    fn call_regs(
        &self,
        base: &libc::user_regs_struct,
        nr: i64,
        args: [u64; 6],
    ) -> libc::user_regs_struct {
        let mut r = *base;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r.rip = self.gadget;
        if let Some(sp) = self.safe_rsp {
            r.rsp = sp;
        }
        r
    }

    /// Runs system call `nr` with `args` in the task, starting from registers
    /// `base`, and returns its raw result (a negative errno on failure).
    pub fn syscall(&self, base: &libc::user_regs_struct, nr: i64, args: [u64; 6]) -> Result<i64> {
        let began = std::time::Instant::now();
        self.set_regs(self.call_regs(base, nr, args))?;
        if self.single_step {
            self.run_stepping(nr)?;
        } else {
            self.resume_syscall()?;
            self.await_syscall_stop(nr)?;
            self.resume_syscall()?;
            self.await_syscall_stop(nr)?;
        }
        let ret = self.regs()?.rax as i64;
        // A call this slow crossed CPUs: the task was woken on another one.
        if began.elapsed() > Duration::from_micros(40) {
            super::affinity::follow(self.pid);
        }
        log::trace!(
            "process {}: syscall {nr} {:x?} = {ret} in {:?}",
            self.label,
            &args[..3],
            began.elapsed()
        );
        Ok(ret)
    }

    /// One step over the `syscall` instruction: a single stop once the call has
    /// returned. A tracer that dies meanwhile leaves the trap flag set and the
    /// task gets SIGTRAP: only for tasks that die with their tracer anyway.
    fn run_stepping(&self, nr: i64) -> Result<()> {
        ptrace::step(self.pid, None).map_err(self.err("run a system call"))?;
        loop {
            match sys::wait_task(self.pid, false).map_err(self.err("wait"))? {
                Waited::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => return Ok(()),
                Waited::Ended => return Err(CkptError::TraceeDied { pid: self.label }),
                // Signals are blocked while calls are injected; anything else
                // (a stop request, a clone event) is passed over.
                other => {
                    log::debug!(
                        "process {}: unexpected stop {other:?} while running syscall {nr}",
                        self.label
                    );
                    ptrace::step(self.pid, None).map_err(self.err("run a system call"))?;
                }
            }
        }
    }

    /// PTRACE_SYSCALL: on to the next syscall-entry or syscall-exit stop. The
    /// kernel clears that tracing when the tracer dies, so the task just runs on.
    fn resume_syscall(&self) -> Result<()> {
        ptrace::syscall(self.pid, None).map_err(self.err("run a system call"))
    }

    /// Waits for the syscall stop the task was resumed to (entry or exit).
    fn await_syscall_stop(&self, nr: i64) -> Result<()> {
        loop {
            match sys::wait_task(self.pid, false).map_err(self.err("wait"))? {
                // PTRACE_O_TRACESYSGOOD marks syscall stops with bit 7.
                Waited::Stopped { sig, event: 0 } if sig == libc::SIGTRAP | 0x80 => return Ok(()),
                Waited::Ended => return Err(CkptError::TraceeDied { pid: self.label }),
                other => log::debug!(
                    "process {}: unexpected stop {other:?} while running syscall {nr}",
                    self.label
                ),
            }
            self.resume_syscall()?;
        }
    }

    /// Like [`syscall`](Self::syscall) but turns a negative result into an error.
    pub fn syscall_ok(
        &self,
        base: &libc::user_regs_struct,
        what: &'static str,
        nr: i64,
        args: [u64; 6],
    ) -> Result<u64> {
        self.checked(what, self.syscall(base, nr, args)?)
    }

    /// The raw result `r` of an injected call, a negative errno made an error.
    pub fn checked(&self, what: &'static str, r: i64) -> Result<u64> {
        if (-4095..0).contains(&r) {
            return Err(CkptError::Remote {
                pid: self.label,
                what,
                source: nix::Error::from_raw(-r as i32),
            });
        }
        Ok(r as u64)
    }

    /// Lets the task go.
    pub fn detach(&self) -> Result<()> {
        ptrace::detach(self.pid, None).map_err(self.err("detach"))
    }
}

/// One call for [`syscalls_together`]: the task, its base registers, the
/// call's number and arguments.
pub type Call<'a> = (&'a Tracee, &'a libc::user_regs_struct, i64, [u64; 6]);

/// Runs one call in each of several stopped tasks at once: every task is
/// started, then each is waited for, so that their wake-ups (two per call)
/// overlap instead of adding up. Returns the raw results in order. Every
/// task that was started is waited for, even after an error, so that none is
/// left running an injected call.
pub fn syscalls_together(calls: &[Call]) -> Result<Vec<i64>> {
    if calls.len() < 2 || calls.iter().any(|c| c.0.single_step) {
        return calls
            .iter()
            .map(|&(t, base, nr, args)| t.syscall(base, nr, args))
            .collect();
    }
    let began = std::time::Instant::now();
    let mut first_err = None;
    let mut running = vec![false; calls.len()];
    for (i, &(t, base, nr, args)) in calls.iter().enumerate() {
        match t
            .set_regs(t.call_regs(base, nr, args))
            .and_then(|()| t.resume_syscall())
        {
            Ok(()) => running[i] = true,
            Err(e) => {
                first_err.get_or_insert(e);
                break;
            }
        }
    }
    // Entry stops, then exit stops.
    for pass in 0..2 {
        for (i, &(t, _, nr, _)) in calls.iter().enumerate() {
            if !running[i] {
                continue;
            }
            let step = t.await_syscall_stop(nr).and_then(|()| match pass {
                0 => t.resume_syscall(),
                _ => Ok(()),
            });
            if let Err(e) = step {
                running[i] = false;
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let out: Vec<i64> = calls
        .iter()
        .map(|c| c.0.regs().map(|r| r.rax as i64))
        .collect::<Result<_>>()?;
    log::trace!(
        "{} tasks: syscall {} each, together in {:?}",
        calls.len(),
        calls[0].2,
        began.elapsed()
    );
    Ok(out)
}
