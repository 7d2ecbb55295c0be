//! Checkpoint: the state of every process of an application, read through
//! /proc (proc(5): maps, pagemap, map_files, fd, fdinfo, status, stat, auxv) and
//! ptrace(2) (registers, XSAVE area, signal mask; brk and signal handlers by
//! injected brk(2) and rt_sigaction(2) calls).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::image::{self, Backing, Blob, Caps, Fd, FdKind, Mm, PipeImg, Proc, Thread, Vma};
use super::ptrace::Tracee;
use super::writer::{Output, PageWriter};
use super::{files, procstate, sigframe, sys, sysvshm, thread, timer, CkptError};

type Result<T> = std::result::Result<T, CkptError>;

const PAGE: u64 = 4096;
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;
const NR_RESTART_SYSCALL: u64 = 219;
/// Ids of unlinked files, apart from those of shared memory (inode numbers).
const GHOST_IDS: u64 = 1 << 62;
/// Default largest unlinked file saved with an image.
pub const DEFAULT_GHOST_LIMIT: u64 = 10 << 20;
/// Copy buffer: small enough to stay in cache and to cost few page faults.
const CHUNK: usize = 1 << 20;
/// From this much anonymous memory on, a process's pages are written by a
/// second thread while the next are read (below, the hand-over costs more).
const THREADED_WRITE_KB: u64 = 32 << 10;

/// Registers fixed up so that a system call interrupted by the stop is entered
/// again when the task resumes. `live` keeps the kernel's own restart block
/// (restart_syscall); an image re-enters the original call, as a new task has no
/// restart block.
pub fn restart_fixup(r: &libc::user_regs_struct, live: bool) -> libc::user_regs_struct {
    let mut r = *r;
    if (r.orig_rax as i64) < 0 {
        return r;
    }
    match r.rax as i64 {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => {
            r.rax = if live { NR_RESTART_SYSCALL } else { r.orig_rax };
            r.rip -= 2;
        }
        _ => {}
    }
    r.orig_rax = u64::MAX;
    r
}

fn proc_err(pid: i32, what: &'static str) -> impl Fn(std::io::Error) -> CkptError {
    move |e| CkptError::Proc {
        pid,
        what,
        source: e,
    }
}

fn read_proc(host: i32, label: i32, file: &str) -> Result<String> {
    fs::read_to_string(format!("/proc/{host}/{file}")).map_err(proc_err(label, "read /proc"))
}

/// The kB of a `Key:\tN kB` line of /proc/PID/status (0 when absent).
pub(super) fn status_kb(status: &str, key: &str) -> u64 {
    status_field(status, key)
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Values of a `Key:\tv1\tv2…` line of /proc/PID/status.
pub(super) fn status_field<'a>(status: &'a str, key: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|r| r.split_whitespace().collect())
        .unwrap_or_default()
}

fn hex_mask(status: &str, key: &str) -> u64 {
    status_field(status, key)
        .first()
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

/// Resource limits as (resource, soft, hard) from /proc/PID/limits, whose rows
/// follow the RLIMIT_* numbering. Read there rather than with prlimit(2),
/// which needs CAP_SYS_RESOURCE for another user's process.
fn parse_limits(text: &str) -> Option<Vec<(u32, u64, u64)>> {
    let value = |v: &str| match v {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    let mut out = Vec::new();
    for (res, line) in text.lines().skip(1).enumerate() {
        let mut cols = line.get(26..)?.split_whitespace();
        out.push((res as u32, value(cols.next()?)?, value(cols.next()?)?));
    }
    (out.len() >= 16).then_some(out)
}

/// The innermost (application namespace) value of an `NSpid:`-style line.
pub fn ns_value(status: &str, key: &str) -> i32 {
    status_field(status, key)
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

pub fn parse_maps(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(6, ' ');
            let range = it.next()?;
            let perms = it.next()?.to_string();
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let inode = it.next()?.parse().ok()?;
            let path = it.next().unwrap_or("").trim_start().to_string();
            let (s, e) = range.split_once('-')?;
            Some(MapLine {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms,
                offset,
                inode,
                path,
            })
        })
        .collect()
}

fn prot_of(perms: &str) -> u32 {
    let b = perms.as_bytes();
    let mut p = 0;
    if b[0] == b'r' {
        p |= libc::PROT_READ as u32;
    }
    if b[1] == b'w' {
        p |= libc::PROT_WRITE as u32;
    }
    if b[2] == b'x' {
        p |= libc::PROT_EXEC as u32;
    }
    p
}

/// A data file being written with its running checksum (the bookkeeping of
/// the page writer's, each write's error returned at once).
struct BlobWriter {
    out: Output,
    name: String,
    id: u64,
}

impl BlobWriter {
    fn create(dir: &Path, name: String, id: u64) -> Result<BlobWriter> {
        let path = dir.join(&name);
        let file = File::create(&path).map_err(|e| CkptError::Image {
            path: path.clone(),
            source: e,
        })?;
        let mut out = Output::default();
        out.open(file);
        Ok(BlobWriter { out, name, id })
    }

    fn image_err(&self, dir: &Path) -> impl FnOnce(std::io::Error) -> CkptError {
        let path = dir.join(&self.name);
        move |source| CkptError::Image { path, source }
    }

    fn write(&mut self, dir: &Path, b: &[u8]) -> Result<()> {
        self.out.write(b);
        match self.out.take_error() {
            Some(e) => Err(self.image_err(dir)(e)),
            None => Ok(()),
        }
    }

    /// The data is synced later, once the application runs again.
    fn finish(mut self, dir: &Path) -> Result<Blob> {
        let (len, crc, _) = self.out.close().map_err(self.image_err(dir))?;
        Ok(Blob {
            id: self.id,
            file: self.name,
            len,
            crc,
        })
    }
}

/// A code mapping: path, inode, file offset, length.
type RestorerKey = (String, u64, u64, u64);

/// Everything shared between the processes of one checkpoint.
pub struct Dumper<'a> {
    pub dir: &'a Path,
    /// host pid of the application's init, whose stdio counts as "inherited".
    pub root_host: i32,
    /// host pid -> pid in the application's namespace.
    pub ns_pids: HashMap<i32, i32>,
    pub shared: BTreeMap<u64, Blob>,
    pub pipes: BTreeMap<u64, PipeImg>,
    /// Named pipes by inode.
    pub fifos: BTreeMap<u64, image::FifoImg>,
    buf: Vec<u8>,
    /// The writer thread of large processes' pages, kept from one to the next.
    writer: Option<PageWriter>,
    /// rt_sigreturn offsets found per code mapping (path, inode, offset, size).
    restorers: HashMap<RestorerKey, Option<usize>>,
    /// The offsets an earlier checkpoint of the application found, checked
    /// before use (see [`Dumper::remember_restorers`]).
    known_restorers: HashMap<RestorerKey, usize>,
    /// Unlinked files saved so far, by (device, inode).
    pub ghosts: BTreeMap<(u64, u64), image::Ghost>,
    /// Largest unlinked file saved with the image.
    pub ghost_limit: u64,
    /// (host pid, fd, link) of every open file saved so far that another
    /// process may share.
    open_files: Vec<(i32, i32, String)>,
    /// Set by a signal to the checkpointer: stop at the next safe point.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Sockets saved so far.
    pub sockets: crate::ckpt::sockets::Dumper,
    /// Memory figures (times, pages) gathered so far.
    pub stats: image::Stats,
    /// A process has SysV shared memory attached (see `sysvshm`).
    pub sysv_shm: bool,
}

/// How calls are injected into the processes being saved.
#[derive(Debug, Clone, Copy)]
struct Safety {
    gadget: u64,
    /// A `syscall` with no safety frame.
    plain: u64,
    /// rt_sigreturn sequence for the safety frame; None: no frame can be armed.
    restorer: Option<u64>,
}

/// brk, signal actions and interval timers of a process.
type ProcessFacts = (u64, Vec<(i32, u64, u64, u64, u64)>, Vec<[i64; 4]>);

/// A stopped thread made ready for injected calls: every signal blocked, the
/// safety frame armed when possible; what [`disarm`] puts back.
struct Armed {
    low: u64,
    saved: Vec<u8>,
    scratch: u64,
}

/// Readies `t` for injected calls (see [`Armed`]).
fn arm(
    t: &mut Tracee,
    regs0: &libc::user_regs_struct,
    mask0: u64,
    xstate: &[u8],
    safety: Safety,
) -> Result<Armed> {
    let image_regs = restart_fixup(regs0, false);
    let frame = safety.restorer.and_then(|restorer| {
        sigframe::build(&sigframe::State {
            regs: &image_regs,
            sigmask: mask0,
            xstate,
            restorer,
        })
    });
    // The `ret` gadget is only safe with its frame.
    t.gadget = match &frame {
        Some(_) => safety.gadget,
        None => safety.plain,
    };
    // Without a frame: scratch space below the red zone, put back afterwards.
    let (low, len, scratch) = match &frame {
        Some(fr) => (fr.low, fr.bytes.len(), fr.scratch),
        None => {
            let s = (regs0.rsp - 1024) & !15;
            (s, 256, s)
        }
    };
    let mut saved = vec![0u8; len];
    t.read_mem(low, &mut saved)?;
    if let Some(fr) = &frame {
        t.write_mem(fr.low, &fr.bytes)?;
        t.safe_rsp = Some(fr.slot);
    }
    let armed = Armed {
        low,
        saved,
        scratch,
    };
    if let Err(e) = t.set_sigmask(!0) {
        let _ = disarm(t, regs0, mask0, armed);
        return Err(e);
    }
    Ok(armed)
}

/// Puts the thread back exactly as it was before [`arm`].
fn disarm(t: &mut Tracee, regs0: &libc::user_regs_struct, mask0: u64, a: Armed) -> Result<()> {
    let live = restart_fixup(regs0, true);
    let put_back = t
        .set_regs(live)
        .and_then(|()| t.set_sigmask(mask0))
        .and_then(|()| t.write_mem(a.low, &a.saved));
    t.safe_rsp = None;
    put_back
}

/// Runs `f` with calls injected into the stopped thread `t` (see [`arm`])
/// and puts the thread back exactly as it was, whatever `f` returned.
fn with_injection<R>(
    t: &mut Tracee,
    regs0: &libc::user_regs_struct,
    mask0: u64,
    xstate: &[u8],
    safety: Safety,
    f: impl FnOnce(&Tracee, u64) -> Result<R>,
) -> Result<R> {
    let armed = arm(t, regs0, mask0, xstate, safety)?;
    let result = f(t, armed.scratch);
    fault_point("injection");
    let put_back = disarm(t, regs0, mask0, armed);
    let r = result?;
    put_back?;
    Ok(r)
}

/// Fault injection for the tests: with `XOS_CKPT_FAULT=NAME`, the checkpointer
/// kills itself with SIGKILL at the point NAME, as an administrator or the OOM
/// killer could.
fn fault_point(name: &str) {
    if std::env::var("XOS_CKPT_FAULT").is_ok_and(|v| v == name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// brk, signal handlers and interval timers, asked inside the process.
fn process_queries(
    t: &Tracee,
    regs0: &libc::user_regs_struct,
    scratch: u64,
    status: &str,
) -> Result<ProcessFacts> {
    let brk = t.syscall_ok(regs0, "brk", libc::SYS_brk, [0; 6])?;
    // Signals with a handler (SigCgt) or ignored (SigIgn) are not at default.
    let caught = hex_mask(status, "SigCgt");
    let ignored = hex_mask(status, "SigIgn");
    let mut acts = Vec::new();
    for sig in 1..=64i32 {
        let bit = 1u64 << (sig - 1);
        if (caught | ignored) & bit == 0 || sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        t.syscall_ok(
            regs0,
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig as u64, 0, scratch, 8, 0, 0],
        )?;
        let mut b = [0u8; 32];
        t.read_mem(scratch, &mut b)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        acts.push((sig, w(0), w(1), w(2), w(3)));
    }
    let mut timers = Vec::new();
    for which in 0..3u64 {
        t.syscall_ok(
            regs0,
            "getitimer",
            libc::SYS_getitimer,
            [which, scratch, 0, 0, 0, 0],
        )?;
        let mut b = [0u8; 32];
        t.read_mem(scratch, &mut b)?;
        let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        timers.push([w(0), w(1), w(2), w(3)]);
    }
    Ok((brk, acts, timers))
}

impl<'a> Dumper<'a> {
    pub fn new(dir: &'a Path, root_host: i32, ns_pids: HashMap<i32, i32>) -> Dumper<'a> {
        Dumper {
            dir,
            root_host,
            ns_pids,
            shared: BTreeMap::new(),
            pipes: BTreeMap::new(),
            fifos: BTreeMap::new(),
            buf: vec![0u8; CHUNK],
            writer: None,
            restorers: HashMap::new(),
            known_restorers: HashMap::new(),
            open_files: Vec::new(),
            ghosts: BTreeMap::new(),
            ghost_limit: DEFAULT_GHOST_LIMIT,
            cancel: None,
            sockets: crate::ckpt::sockets::Dumper::new(root_host, Default::default()),
            stats: image::Stats::default(),
            sysv_shm: false,
        }
    }

    /// Saves one stopped process whose threads (leader first) are `threads`.
    /// Every thread's registers, mask and stack are put back as they were
    /// (with an interrupted call set to restart) before this returns; a
    /// checkpointer killed meanwhile leaves that to the safety frame.
    pub fn dump(
        &mut self,
        threads: &mut [Tracee],
        host: i32,
        stopped: Option<i32>,
    ) -> Result<Proc> {
        let pid = threads[0].label;
        log::debug!("process {pid}: dump begins");
        let status = read_proc(host, pid, "status")?;
        // A filter cannot be read back without CAP_SYS_ADMIN tricks and would
        // be lost silently; strict mode cannot even be entered again.
        let seccomp = status_field(&status, "Seccomp").first().copied();
        if seccomp.is_some_and(|m| m != "0") {
            return Err(CkptError::Unsupported {
                pid,
                what: "a seccomp filter".into(),
            });
        }
        let maps = parse_maps(&read_proc(host, pid, "maps")?);
        let mut seen = Vec::new();
        // The mask of the application's init is the default one (that of its
        // cpuset): only a thread with a narrower mask was pinned.
        let default_cpus = super::affinity::get(nix::unistd::Pid::from_raw(self.root_host));
        for t in threads.iter() {
            let (regs, xstate, mut th) = thread::read(t, host, t.label)?;
            if th.cpus == default_cpus {
                th.cpus = None;
            }
            seen.push((regs, xstate, th));
        }
        let host_tids: HashMap<i32, i32> =
            threads.iter().map(|t| (t.pid.as_raw(), t.label)).collect();
        let mut timers = timer::parse(
            &fs::read_to_string(format!("/proc/{host}/timers")).unwrap_or_default(),
            &host_tids,
        );
        log::debug!("process {pid}: threads read");
        let safety = self.safety(&threads[0], &maps)?;
        log::debug!("process {pid}: safety frame found");
        // The leader first, with the process's own queries; then the other
        // threads, each call in all of them at once.
        super::affinity::follow(threads[0].pid);
        let (regs0, xstate, th) = &mut seen[0];
        let leader_facts = with_injection(
            &mut threads[0],
            regs0,
            th.sigmask,
            xstate,
            safety,
            |t, scratch| {
                thread::query_together(&mut [(t, &*regs0, scratch, &mut *th)])?;
                timer::query(t, regs0, scratch, &mut timers)?;
                let facts = process_queries(t, regs0, scratch, &status)?;
                let settings = procstate::query(t, regs0, scratch, host, &status)?;
                Ok((facts, settings))
            },
        )?;
        if self.cancelled() {
            return Err(CkptError::Cancelled);
        }
        let mut armed = Vec::new();
        let mut queried = Ok(());
        for (t, (regs0, xstate, th)) in threads.iter_mut().zip(seen.iter()).skip(1) {
            match arm(t, regs0, th.sigmask, xstate, safety) {
                Ok(a) => armed.push(a),
                Err(e) => {
                    queried = Err(e);
                    break;
                }
            }
        }
        if queried.is_ok() {
            let mut batch: Vec<thread::Query> = threads
                .iter()
                .zip(seen.iter_mut())
                .skip(1)
                .zip(&armed)
                .map(|((t, (regs0, _, th)), a)| (t, &*regs0, a.scratch, th))
                .collect();
            queried = thread::query_together(&mut batch);
            fault_point("injection-threads");
        }
        for ((t, (regs0, _, th)), a) in threads.iter_mut().zip(seen.iter()).skip(1).zip(armed) {
            let put_back = disarm(t, regs0, th.sigmask, a);
            if queried.is_ok() {
                queried = put_back;
            }
        }
        queried?;
        if self.cancelled() {
            return Err(CkptError::Cancelled);
        }
        let ((brk, sigactions, itimers), settings) = leader_facts;
        let shared_pending = thread::queued(&threads[0], true)?;
        for (t, (_, _, th)) in threads.iter().zip(seen.iter_mut()) {
            th.pending = thread::queued(t, false)?;
        }
        let threads_img: Vec<Thread> = seen
            .into_iter()
            .map(|(regs0, xstate, mut th)| {
                th.regs = sys::regs_to_words(&restart_fixup(&regs0, false)).to_vec();
                th.xstate = image::to_hex(&xstate);
                th
            })
            .collect();

        let stat = read_proc(host, pid, "stat")?;
        let close = stat.rfind(')').unwrap_or(0);
        let f: Vec<u64> = stat[close + 2..]
            .split(' ')
            .map(|v| v.trim().parse().unwrap_or(0))
            .collect();
        // f[0] is field 3 of stat(5); field N is f[N - 3].
        let field = |n: usize| f.get(n - 3).copied().unwrap_or(0);
        let mm = Mm {
            start_code: field(26),
            end_code: field(27),
            start_stack: field(28),
            start_data: field(45),
            end_data: field(46),
            start_brk: field(47),
            brk,
            arg_start: field(48),
            arg_end: field(49),
            env_start: field(50),
            env_end: field(51),
        };
        let auxv_raw =
            fs::read(format!("/proc/{host}/auxv")).map_err(proc_err(pid, "read auxv"))?;
        let auxv = auxv_raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();

        let ppid_host: i32 = status_field(&status, "PPid")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ppid = if ppid_host == self.root_host {
            1
        } else {
            self.ns_pids.get(&ppid_host).copied().unwrap_or(0)
        };
        let ids = |key: &str| -> [u32; 4] {
            let v: Vec<u32> = status_field(&status, key)
                .iter()
                .filter_map(|x| x.parse().ok())
                .collect();
            [
                v.first().copied().unwrap_or(0),
                v.get(1).copied().unwrap_or(0),
                v.get(2).copied().unwrap_or(0),
                v.get(3).copied().unwrap_or(0),
            ]
        };
        let rlimits = parse_limits(&read_proc(host, pid, "limits")?).ok_or_else(|| {
            CkptError::Unsupported {
                pid,
                what: "an unreadable /proc/PID/limits".into(),
            }
        })?;
        let personality =
            u64::from_str_radix(read_proc(host, pid, "personality")?.trim(), 16).unwrap_or(0);
        let link = |what: &str| fs::read_link(format!("/proc/{host}/{what}")).unwrap_or_default();
        let root = link("root");
        if root != Path::new("/") {
            return Err(CkptError::Unsupported {
                pid,
                what: format!("a changed root directory ({})", root.display()),
            });
        }

        log::debug!("process {pid}: threads and settings read");
        let vmas = self.dump_memory(&threads[0], host, &maps, status_kb(&status, "RssAnon"))?;
        log::debug!("process {pid}: memory saved");
        let fds = self.dump_fds(host, pid)?;
        log::debug!("process {pid}: descriptors saved");
        let pages = vmas.1;
        let cwd = link("cwd");
        let cwd_deleted = procstate::deleted_target(&cwd, &format!("/proc/{host}/cwd"));
        let exe = link("exe");
        let exe_ghost = match procstate::deleted_target(&exe, &format!("/proc/{host}/exe")) {
            Some(_) => {
                let what = format!("its deleted executable {}", exe.display());
                let src = format!("/proc/{host}/exe");
                Some(self.ghost(&src, &exe.to_string_lossy(), pid, &what)?)
            }
            None => None,
        };
        Ok(Proc {
            pid,
            sem_undo: Vec::new(),
            ppid,
            pgid: ns_value(&status, "NSpgid"),
            sid: ns_value(&status, "NSsid"),
            comm: read_proc(host, pid, "comm")?.trim_end().to_string(),
            exe,
            cwd_deleted: cwd_deleted.is_some(),
            cwd: cwd_deleted.unwrap_or(cwd),
            umask: status_field(&status, "Umask")
                .first()
                .and_then(|v| u32::from_str_radix(v, 8).ok())
                .unwrap_or(0o022),
            uids: ids("Uid"),
            gids: ids("Gid"),
            groups: status_field(&status, "Groups")
                .iter()
                .filter_map(|x| x.parse().ok())
                .collect(),
            no_new_privs: status_field(&status, "NoNewPrivs").first() == Some(&"1"),
            caps: Caps {
                inheritable: hex_mask(&status, "CapInh"),
                permitted: hex_mask(&status, "CapPrm"),
                effective: hex_mask(&status, "CapEff"),
                bounding: hex_mask(&status, "CapBnd"),
                ambient: hex_mask(&status, "CapAmb"),
            },
            personality,
            rlimits,
            threads: threads_img,
            shared_pending,
            stopped,
            sigactions,
            itimers,
            timers,
            mm,
            auxv,
            vmas: vmas.0,
            fds,
            pages,
            settings,
            exe_ghost,
        })
    }

    /// An ended child not reaped yet: its ids and wait status (stat(5) field 52).
    pub fn zombie(&self, host: i32) -> Result<image::Zombie> {
        let status = read_proc(host, host, "status")?;
        let pid = ns_value(&status, "NSpid");
        let stat = read_proc(host, pid, "stat")?;
        let f: Vec<i64> = stat[stat.rfind(')').unwrap_or(0) + 2..]
            .split(' ')
            .map(|v| v.trim().parse().unwrap_or(0))
            .collect();
        let ppid_host = f.get(1).copied().unwrap_or(0) as i32;
        Ok(image::Zombie {
            pid,
            ppid: self.ns_pids.get(&ppid_host).copied().unwrap_or(1),
            pgid: ns_value(&status, "NSpgid"),
            sid: ns_value(&status, "NSsid"),
            status: f.get(52 - 3).copied().unwrap_or(0) as i32,
        })
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The `syscall; …; ret` gadget of the process's vDSO and an rt_sigreturn
    /// sequence in its code, when both exist (see [`sigframe`]); else a plain
    /// `syscall` and no safety frame.
    fn safety(&mut self, t: &Tracee, maps: &[MapLine]) -> Result<Safety> {
        let vdso = maps
            .iter()
            .find(|m| m.path == "[vdso]")
            .ok_or(CkptError::NoSyscallInsn { pid: t.label })?;
        let mut code = vec![0u8; (vdso.end - vdso.start) as usize];
        t.read_mem(vdso.start, &mut code)?;
        let plain = code
            .windows(2)
            .position(|w| w == [0x0f, 0x05])
            .ok_or(CkptError::NoSyscallInsn { pid: t.label })?;
        let plain = vdso.start + plain as u64;
        let unsafe_way = Safety {
            gadget: plain,
            plain,
            restorer: None,
        };
        let Some(ret) = sigframe::find_ret_gadget(&code) else {
            return Ok(unsafe_way);
        };
        // The C library first: that is where the signal restorer lives.
        let mut code_maps: Vec<&MapLine> = maps
            .iter()
            .filter(|m| m.perms.starts_with("r-x") && m.path.starts_with('/'))
            .collect();
        code_maps.sort_by_key(|m| !m.path.contains("/libc"));
        for m in code_maps {
            let key = (m.path.clone(), m.inode, m.offset, m.end - m.start);
            let known = || {
                let o = *self.known_restorers.get(&key)?;
                let mut b = [0u8; 9];
                t.read_mem(m.start + o as u64, &mut b).ok()?;
                (sigframe::find_sigreturn(&b) == Some(0)).then_some(o)
            };
            let off = match self.restorers.get(&key) {
                Some(o) => *o,
                None => {
                    let o = known().or_else(|| {
                        let mut code = vec![0u8; (m.end - m.start) as usize];
                        t.read_mem(m.start, &mut code)
                            .ok()
                            .and_then(|()| sigframe::find_sigreturn(&code))
                    });
                    self.restorers.insert(key, o);
                    o
                }
            };
            if let Some(o) = off {
                return Ok(Safety {
                    gadget: vdso.start + ret as u64,
                    plain,
                    restorer: Some(m.start + o as u64),
                });
            }
        }
        log::debug!(
            "process {}: no rt_sigreturn sequence found, no safety frame",
            t.label
        );
        Ok(unsafe_way)
    }

    /// Uses and keeps up to date the rt_sigreturn offsets found in the code
    /// mappings (the C library's signal restorer) in `file`: finding one
    /// means reading and searching the whole C library (about 1 ms), and the
    /// next checkpoint of the same application finds the same ones. An offset
    /// from the file is used only if the bytes there are still the sequence.
    pub fn remember_restorers(&mut self, file: &Path) {
        let text = fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            let mut f = line.splitn(5, ' ');
            let mut num = || f.next().and_then(|v| v.parse::<u64>().ok());
            let (Some(o), Some(inode), Some(off), Some(len)) = (num(), num(), num(), num()) else {
                continue;
            };
            if let Some(path) = f.next() {
                self.known_restorers
                    .insert((path.to_string(), inode, off, len), o as usize);
            }
        }
    }

    /// Writes the offsets found (see [`Dumper::remember_restorers`]) when
    /// they are new.
    pub fn save_restorers(&self, file: &Path) {
        let found: HashMap<&RestorerKey, usize> = self
            .restorers
            .iter()
            .filter_map(|(k, o)| o.map(|o| (k, o)))
            .collect();
        if found
            .iter()
            .all(|(k, o)| self.known_restorers.get(*k) == Some(o))
        {
            return;
        }
        let text: String = found
            .iter()
            .map(|((path, inode, off, len), o)| format!("{o} {inode} {off} {len} {path}\n"))
            .collect();
        let _ = crate::fsutil::write_atomic(file, text.as_bytes(), 0o600);
    }

    /// The mappings of the process and its pages file; `anon_kb`, its
    /// anonymous memory, says whether writing beside the reading pays.
    fn dump_memory(
        &mut self,
        t: &Tracee,
        host: i32,
        maps: &[MapLine],
        anon_kb: u64,
    ) -> Result<(Vec<Vma>, Blob)> {
        let pid = t.label;
        let name = format!("pages-{pid}.img");
        let path = self.dir.join(&name);
        let image_err = |source| CkptError::Image {
            path: path.clone(),
            source,
        };
        let file = File::create(&path).map_err(image_err)?;
        let mut writer = if anon_kb < THREADED_WRITE_KB {
            PageWriter::inline(CHUNK)
        } else {
            match self.writer.take() {
                Some(w) => w,
                None => {
                    PageWriter::threaded(CHUNK, super::affinity::stay_here()).map_err(image_err)?
                }
            }
        };
        writer.open(file).map_err(image_err)?;
        let saved = self.save_memory(t, host, maps, &mut writer);
        let closed = writer.close().map_err(image_err);
        if writer.is_threaded() {
            self.writer = Some(writer);
        }
        let vmas = saved?;
        let (len, crc, spent) = closed?;
        self.stats.memwrite_time += spent;
        let blob = Blob {
            id: pid as u64,
            file: name,
            len,
            crc,
        };
        Ok((vmas, blob))
    }

    /// The mappings of the process, the content of its private ones given to
    /// `writer`.
    fn save_memory(
        &mut self,
        t: &Tracee,
        host: i32,
        maps: &[MapLine],
        writer: &mut PageWriter,
    ) -> Result<Vec<Vma>> {
        let pid = t.label;
        let pagemap =
            File::open(format!("/proc/{host}/pagemap")).map_err(proc_err(pid, "open pagemap"))?;
        let mut advice = procstate::advice_of(&read_proc(host, pid, "smaps")?);
        let mut vmas = Vec::new();
        for m in maps {
            let shared = m.perms.as_bytes()[3] == b's';
            let deleted = m.path.ends_with(" (deleted)");
            let map_file = format!("/proc/{host}/map_files/{:x}-{:x}", m.start, m.end);
            let span = (m.start, m.end, m.offset);
            let sysv = sysvshm::attachment(pid, &m.path, m.inode, span, &map_file)?;
            let backing = match m.path.as_str() {
                _ if sysv.is_some() => {
                    self.sysv_shm = true;
                    Backing::SysvShm {
                        shmid: sysv.unwrap_or_default(),
                        readonly: m.perms.as_bytes()[1] != b'w',
                    }
                }
                "[vsyscall]" => continue,
                "[vdso]" | "[vvar]" | "[vvar_vclock]" => Backing::Special {
                    name: m.path.clone(),
                },
                p if shared && p.starts_with("/dev/zero") && deleted => Backing::SharedAnon {
                    id: m.inode,
                    offset: m.offset,
                },
                p if !shared && (p.is_empty() || p.starts_with('[') || (m.inode == 0)) => {
                    Backing::Anon
                }
                p if p.starts_with('/') && !deleted && m.inode != 0 => Backing::File {
                    path: PathBuf::from(p),
                    offset: m.offset,
                    shared,
                },
                p if p.starts_with('/') && deleted && m.inode != 0 && !p.starts_with("/SYSV") => {
                    let src = format!("/proc/{host}/map_files/{:x}-{:x}", m.start, m.end);
                    let what = format!("the mapping at {:#x} ({p})", m.start);
                    Backing::Ghost {
                        id: self.ghost(&src, p, pid, &what)?,
                        offset: m.offset,
                        shared,
                    }
                }
                p => {
                    return Err(CkptError::Unsupported {
                        pid,
                        what: format!(
                            "the mapping at {:#x} ({})",
                            m.start,
                            if p.is_empty() { "shared anonymous" } else { p }
                        ),
                    })
                }
            };
            let mut runs = Vec::new();
            match &backing {
                Backing::Anon
                | Backing::File { shared: false, .. }
                | Backing::Ghost { shared: false, .. } => {
                    let file_backed = !matches!(backing, Backing::Anon);
                    runs = populated_runs(&pagemap, m.start, m.end, file_backed)
                        .map_err(proc_err(pid, "read pagemap"))?;
                    self.stats.pages_scanned += (m.end - m.start) / PAGE;
                    self.stats.pages_written += runs.iter().map(|r| r.1).sum::<u64>();
                    for &(addr, n) in &runs {
                        self.copy_out(t, writer, addr, n * PAGE)?;
                    }
                }
                Backing::SharedAnon { id, .. } if !self.shared.contains_key(id) => {
                    let blob = self.dump_shared(host, pid, m, *id)?;
                    self.shared.insert(*id, blob);
                }
                _ => {}
            }
            let advice = match backing {
                Backing::Special { .. } => Vec::new(),
                _ => advice.remove(&m.start).unwrap_or_default(),
            };
            vmas.push(Vma {
                start: m.start,
                end: m.end,
                prot: prot_of(&m.perms),
                backing,
                runs,
                advice,
            });
        }
        Ok(vmas)
    }

    fn copy_out(
        &mut self,
        t: &Tracee,
        writer: &mut PageWriter,
        mut addr: u64,
        mut len: u64,
    ) -> Result<()> {
        while len > 0 {
            if self.cancelled() {
                return Err(CkptError::Cancelled);
            }
            let room = writer
                .room(len as usize)
                .map_err(|source| CkptError::Image {
                    path: self.dir.to_path_buf(),
                    source,
                })?;
            let n = room.len();
            let began = std::time::Instant::now();
            let read = t.read_mem(addr, room);
            writer.filled(n, if read.is_ok() { n } else { 0 });
            read?;
            self.stats.memdump_time += began.elapsed().as_micros() as u64;
            addr += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// The populated ranges of a shared anonymous object, read through
    /// /proc/PID/map_files with SEEK_DATA/SEEK_HOLE (pages never touched are holes).
    fn dump_shared(&mut self, host: i32, pid: i32, m: &MapLine, id: u64) -> Result<Blob> {
        let path = format!("/proc/{host}/map_files/{:x}-{:x}", m.start, m.end);
        let f = File::open(&path).map_err(proc_err(pid, "open a shared mapping"))?;
        self.dump_sparse(&f, pid, id)
    }

    /// An unlinked file (see [`files::ghost`]) opened through `src`, saved once
    /// per inode; returns its id.
    fn ghost(&mut self, src: &str, link: &str, pid: i32, what: &str) -> Result<u64> {
        let f = File::open(src).map_err(proc_err(pid, "open a deleted file"))?;
        let md = f.metadata().map_err(proc_err(pid, "stat a deleted file"))?;
        let key = (md.dev(), md.ino());
        if let Some(g) = self.ghosts.get(&key) {
            return Ok(g.id);
        }
        if md.len() > self.ghost_limit {
            return Err(CkptError::Unsupported {
                pid,
                what: format!(
                    "{what}: a deleted file of {:.1} MiB, more than the limit of {:.1} MiB (--ghost-limit)",
                    md.len() as f64 / 1048576.0,
                    self.ghost_limit as f64 / 1048576.0
                ),
            });
        }
        let mut g =
            files::ghost::describe(&f, link).map_err(proc_err(pid, "stat a deleted file"))?;
        g.id = GHOST_IDS + self.ghosts.len() as u64;
        let blob = self.dump_sparse(&f, pid, g.id)?;
        self.shared.insert(g.id, blob);
        let id = g.id;
        self.ghosts.insert(key, g);
        Ok(id)
    }

    /// Size, then (offset, length, bytes) of every data extent of `f`.
    fn dump_sparse(&mut self, f: &File, pid: i32, id: u64) -> Result<Blob> {
        let size = f
            .metadata()
            .map_err(proc_err(pid, "stat a shared object"))?
            .len();
        let mut out = BlobWriter::create(self.dir, format!("shm-{id}.img"), id)?;
        out.write(self.dir, &size.to_le_bytes())?;
        let mut off = 0u64;
        while off < size {
            let data = match nix::unistd::lseek(f, off as i64, nix::unistd::Whence::SeekData) {
                Ok(d) => d as u64,
                Err(nix::Error::ENXIO) => break,
                Err(e) => {
                    return Err(CkptError::Ptrace {
                        pid,
                        what: "seek in a shared mapping",
                        source: e,
                    })
                }
            };
            let hole = nix::unistd::lseek(f, data as i64, nix::unistd::Whence::SeekHole)
                .map(|h| h as u64)
                .unwrap_or(size)
                .min(size);
            out.write(self.dir, &data.to_le_bytes())?;
            out.write(self.dir, &(hole - data).to_le_bytes())?;
            let mut pos = data;
            while pos < hole {
                let n = ((hole - pos) as usize).min(self.buf.len());
                f.read_exact_at(&mut self.buf[..n], pos)
                    .map_err(proc_err(pid, "read a shared object"))?;
                let dir = self.dir;
                out.write(dir, &self.buf[..n])?;
                pos += n as u64;
            }
            off = hole;
        }
        out.finish(self.dir)
    }

    fn dump_fds(&mut self, host: i32, pid: i32) -> Result<Vec<Fd>> {
        let dir = format!("/proc/{host}/fd");
        let mut numbers = Vec::new();
        for ent in fs::read_dir(&dir).map_err(proc_err(pid, "list fds"))? {
            let ent = ent.map_err(proc_err(pid, "list fds"))?;
            if let Ok(fd) = ent.file_name().to_string_lossy().parse::<i32>() {
                numbers.push(fd);
            }
        }
        numbers.sort_unstable();
        let mut fds: Vec<Fd> = Vec::new();
        // (fd, link) of this process, to find dup(2)ed descriptors.
        let mut seen: Vec<(i32, String)> = Vec::new();
        for fd in numbers {
            let path = PathBuf::from(format!("{dir}/{fd}"));
            let target = fs::read_link(&path).unwrap_or_default();
            let target_s = target.to_string_lossy().into_owned();
            let text = fs::read_to_string(format!("/proc/{host}/fdinfo/{fd}")).unwrap_or_default();
            let info = files::FdInfo { text: &text };
            let flags = info.flags();
            let pos: u64 = info.get("pos:").and_then(|v| v.parse().ok()).unwrap_or(0);
            let md = fs::metadata(&path).ok();
            let unsupported = |why: &str| CkptError::Unsupported {
                pid,
                what: format!("fd {fd} ({target_s}){why}"),
            };
            let locks = files::lock::dump(&info).map_err(|w| unsupported(&format!(": {w}")))?;
            // The very open file of one of the init's standard descriptors
            // (the same one when several are, as stdin, stdout and stderr on
            // one terminal or /dev/null).
            let std = (0..3)
                .filter(|k| sys::same_file(host, fd, self.root_host, *k))
                .min_by_key(|k| (*k != fd, *k));
            if let Some(k) = std {
                // A file given by krgcr-run is reopened at its offset like any
                // other; a terminal or a pipe is the restarter's.
                let kind = match &md {
                    Some(m) if m.is_file() && !target_s.ends_with(" (deleted)") => FdKind::Path {
                        path: target.clone(),
                        pos,
                        size: m.len(),
                        ftype: m.mode() & libc::S_IFMT,
                        inherited: Some(k),
                    },
                    _ => FdKind::Inherited { std: k },
                };
                fds.push(Fd {
                    fd,
                    flags,
                    kind,
                    locks,
                    owner: None,
                });
                continue;
            }
            let is_pipe = target_s.starts_with("pipe:[");
            let is_socket = target_s.starts_with("socket:[");
            if !is_pipe {
                if let Some((of, _)) = seen
                    .iter()
                    .find(|(f, t)| *t == target_s && sys::same_file(host, *f, host, fd))
                {
                    fds.push(Fd {
                        fd,
                        flags,
                        kind: FdKind::Dup { of: *of },
                        locks,
                        owner: None,
                    });
                    continue;
                }
                seen.push((fd, target_s.clone()));
            }
            // One open file in two processes (inherited across fork(2), passed
            // over a socket): made once at restart, with one offset, flags and
            // flock. Pipes are shared by their id; FIFOs and pidfds are opened
            // by each holder; sockets are left to their own kind.
            let is_fifo = md.as_ref().is_some_and(|m| m.file_type().is_fifo());
            let own_kind = is_pipe
                || is_fifo
                || target_s == "anon_inode:[pidfd]"
                || target_s.starts_with("socket:[");
            if !own_kind {
                if let Some((other, other_fd, _)) = self.open_files.iter().find(|(h, f, t)| {
                    *h != host && *t == target_s && sys::same_file(*h, *f, host, fd)
                }) {
                    fds.push(Fd {
                        fd,
                        flags,
                        kind: FdKind::SharedWith {
                            pid: self.ns_pids.get(other).copied().unwrap_or(0),
                            fd: *other_fd,
                        },
                        locks,
                        owner: None,
                    });
                    continue;
                }
                self.open_files.push((host, fd, target_s.clone()));
            }
            let kind = if is_socket {
                let id = self
                    .dump_socket(host, fd, pid)
                    .map_err(|w| unsupported(&format!(": {w}")))?;
                FdKind::Socket { id }
            } else if let Some(id) = target_s
                .strip_prefix("pipe:[")
                .and_then(|r| r.strip_suffix(']'))
            {
                let id: u64 = id.parse().map_err(|_| unsupported(""))?;
                if !self.pipes.contains_key(&id) {
                    let p = self.dump_pipe(&path, pid, id, "pipe")?;
                    self.pipes.insert(id, p);
                }
                FdKind::Pipe {
                    id,
                    write: flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32,
                }
            } else if target_s == "anon_inode:[pidfd]" {
                // Each holder opens its own at restart (the process may not
                // exist yet when the init makes shared objects).
                let p = files::pidfd::dump(&info, &self.ns_pids)
                    .map_err(|w| unsupported(&format!(": {w}")))?;
                FdKind::PidFd { pid: p }
            } else if let Some(anon) = target_s.strip_prefix("anon_inode:") {
                let bad = || unsupported(": unreadable fdinfo");
                match anon {
                    "[eventfd]" => {
                        let (count, semaphore) = files::eventfd::dump(&info).ok_or_else(bad)?;
                        FdKind::EventFd { count, semaphore }
                    }
                    "[signalfd]" => FdKind::SignalFd {
                        mask: files::signalfd::dump(&info).ok_or_else(bad)?,
                    },
                    "[timerfd]" => FdKind::TimerFd(files::timerfd::dump(&info).ok_or_else(bad)?),
                    "[eventpoll]" => FdKind::Epoll {
                        targets: files::epoll::dump(&info).ok_or_else(bad)?,
                    },
                    "inotify" => match files::inotify::queued(host, fd) {
                        0 => FdKind::Inotify {
                            watches: files::inotify::dump(&info)
                                .map_err(|w| unsupported(&format!(": {w}")))?,
                        },
                        n => {
                            return Err(unsupported(&format!(
                                ": {n} bytes of events not read yet (reading them would take them from the application)"
                            )))
                        }
                    },
                    other => {
                        return Err(unsupported(&format!(": {}", files::refused::anon(other))))
                    }
                }
            } else if target_s.starts_with('/')
                && !target_s.ends_with(" (deleted)")
                && md.as_ref().is_some_and(|m| m.file_type().is_fifo())
            {
                let id = md.as_ref().map_or(0, |m| m.ino());
                if !self.fifos.contains_key(&id) {
                    let pipe = self.dump_pipe(&path, pid, id, "fifo")?;
                    self.fifos.insert(
                        id,
                        image::FifoImg {
                            path: target.clone(),
                            pipe,
                        },
                    );
                }
                FdKind::Fifo { path: target, id }
            } else if target_s.ends_with(" (deleted)") && md.as_ref().is_some_and(|m| m.is_file()) {
                let what = format!("fd {fd} ({target_s})");
                FdKind::Ghost {
                    id: self.ghost(&path.to_string_lossy(), &target_s, pid, &what)?,
                    pos,
                }
            } else if target_s.starts_with('/') && !target_s.ends_with(" (deleted)") {
                let md = md.ok_or_else(|| unsupported(""))?;
                let ft = md.file_type();
                use std::os::unix::fs::FileTypeExt;
                if !(ft.is_file() || ft.is_dir() || ft.is_char_device()) {
                    return Err(unsupported(""));
                }
                let refused = if ft.is_char_device() {
                    files::refused::device(&target, md.rdev())
                } else {
                    files::refused::proc_mem(&target, pid)
                };
                if let Some(why) = refused {
                    return Err(unsupported(&format!(": {why}")));
                }
                FdKind::Path {
                    path: target,
                    pos,
                    size: md.len(),
                    ftype: md.mode() & libc::S_IFMT,
                    inherited: None,
                }
            } else {
                return Err(unsupported(""));
            };
            fds.push(Fd {
                fd,
                flags,
                kind,
                locks,
                owner: None,
            });
        }
        self.dump_in_flight(pid)?;
        files::owner::dump(host, &mut fds).map_err(|what| CkptError::Unsupported { pid, what })?;
        // Every epoll target must be a descriptor of the process.
        for f in &fds {
            if let FdKind::Epoll { targets } = &f.kind {
                if let Some((t, ..)) = targets
                    .iter()
                    .find(|(t, ..)| !fds.iter().any(|g| g.fd == *t))
                {
                    return Err(CkptError::Unsupported {
                        pid,
                        what: format!("fd {} (epoll) watching fd {t}, closed since", f.fd),
                    });
                }
            }
        }
        Ok(fds)
    }

    /// Saves the socket behind descriptor `fd` of process `host`; returns its id.
    fn dump_socket(&mut self, host: i32, fd: i32, pid: i32) -> std::result::Result<u64, String> {
        let sock = crate::ckpt::sockets::take_fd(host, fd)
            .map_err(|e| format!("cannot take a copy of it: {e}"))?;
        let cwd = fs::read_link(format!("/proc/{host}/cwd")).unwrap_or_default();
        self.save_socket(sock, &cwd, pid)
    }

    fn save_socket(
        &mut self,
        sock: std::os::fd::OwnedFd,
        cwd: &Path,
        _pid: i32,
    ) -> std::result::Result<u64, String> {
        self.sockets.dump(sock, cwd)
    }

    /// The sockets saved, their data written into the image.
    pub fn finish_sockets(&mut self) -> std::result::Result<crate::ckpt::sockets::Images, String> {
        let dir = self.dir;
        let mut write = |name: &str, b: &[u8]| -> std::result::Result<Blob, String> {
            let mut w = BlobWriter::create(dir, name.to_string(), 0).map_err(|e| e.to_string())?;
            w.write(dir, b).map_err(|e| e.to_string())?;
            w.finish(dir).map_err(|e| e.to_string())
        };
        self.sockets.finish(&mut write)
    }

    /// Says what each descriptor in flight in a saved socket's queue is (a
    /// socket, a pipe, a file by path), saving what it refers to.
    fn dump_in_flight(&mut self, pid: i32) -> Result<()> {
        use std::os::fd::AsRawFd;
        while let Some(p) = self.sockets.pending.pop() {
            let raw = p.fd.as_raw_fd();
            let link = fs::read_link(format!("/proc/self/fd/{raw}"))
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let unsupported = |why: String| CkptError::Unsupported {
                pid,
                what: format!("a descriptor in flight ({link}){why}"),
            };
            let text = fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).unwrap_or_default();
            let flags = files::FdInfo { text: &text }.flags() & !(libc::O_CLOEXEC as u32);
            let path = PathBuf::from(format!("/proc/self/fd/{raw}"));
            let kind = if link.starts_with("socket:[") {
                let sock =
                    p.fd.try_clone()
                        .map_err(|e| unsupported(format!(": {e}")))?;
                let id = self
                    .save_socket(sock, Path::new("/"), pid)
                    .map_err(|w| unsupported(format!(": {w}")))?;
                FdKind::Socket { id }
            } else if let Some(id) = link
                .strip_prefix("pipe:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse::<u64>().ok())
            {
                if !self.pipes.contains_key(&id) {
                    let img = self.dump_pipe(&path, pid, id, "pipe")?;
                    self.pipes.insert(id, img);
                }
                FdKind::Pipe {
                    id,
                    write: flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32,
                }
            } else if link.starts_with('/') && !link.ends_with(" (deleted)") {
                let md = fs::metadata(&path).map_err(|e| unsupported(format!(": {e}")))?;
                if !(md.is_file() || md.is_dir()) {
                    return Err(unsupported(String::new()));
                }
                FdKind::Path {
                    path: PathBuf::from(&link),
                    pos: nix::unistd::lseek(&p.fd, 0, nix::unistd::Whence::SeekCur).unwrap_or(0)
                        as u64,
                    size: md.len(),
                    ftype: md.mode() & libc::S_IFMT,
                    inherited: None,
                }
            } else {
                return Err(unsupported(String::new()));
            };
            self.sockets.set_in_flight(&p, flags, kind);
        }
        Ok(())
    }

    /// Copies the unread bytes of a pipe without consuming them (tee(2)).
    fn dump_pipe(&mut self, fd_path: &Path, pid: i32, id: u64, kind: &str) -> Result<PipeImg> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let src = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fd_path)
            .map_err(proc_err(pid, "open a pipe"))?;
        let cap = nix::fcntl::fcntl(&src, nix::fcntl::FcntlArg::F_GETPIPE_SZ).map_err(|e| {
            CkptError::Ptrace {
                pid,
                what: "read a pipe's size",
                source: e,
            }
        })? as usize;
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| CkptError::Ptrace {
                    pid,
                    what: "create a pipe",
                    source: e,
                })?;
        let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(cap as i32));
        let mut out = BlobWriter::create(self.dir, format!("{kind}-{id}.img"), id)?;
        let n = match sys::tee(src.as_raw_fd(), w.as_raw_fd(), cap) {
            Ok(n) => n,
            Err(nix::Error::EAGAIN) => 0,
            Err(e) => {
                return Err(CkptError::Ptrace {
                    pid,
                    what: "copy a pipe",
                    source: e,
                })
            }
        };
        let mut data = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match nix::unistd::read(&r, &mut data[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) => {
                    return Err(CkptError::Ptrace {
                        pid,
                        what: "copy a pipe",
                        source: e,
                    })
                }
            }
        }
        out.write(self.dir, &data[..got])?;
        Ok(PipeImg {
            id,
            capacity: cap as u64,
            data: out.finish(self.dir)?,
        })
    }
}

/// Runs of pages of `start..end` that were ever populated (present or swapped);
/// for a private file mapping only the pages that became anonymous (written).
fn populated_runs(
    pagemap: &File,
    start: u64,
    end: u64,
    file_backed: bool,
) -> std::io::Result<Vec<(u64, u64)>> {
    let n = ((end - start) / PAGE) as usize;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; 8 * n.min(1 << 16)];
    let mut i = 0usize;
    while i < n {
        let k = (n - i).min(buf.len() / 8);
        pagemap.read_exact_at(&mut buf[..k * 8], (start / PAGE + i as u64) * 8)?;
        for j in 0..k {
            let e = u64::from_le_bytes(buf[j * 8..j * 8 + 8].try_into().unwrap());
            let present = e & (1 << 63) != 0;
            let swapped = e & (1 << 62) != 0;
            let file_page = e & (1 << 61) != 0;
            let keep = (present || swapped) && !(file_backed && file_page && !swapped);
            if keep {
                let addr = start + (i + j) as u64 * PAGE;
                match runs.last_mut() {
                    Some((a, c)) if *a + *c * PAGE == addr => *c += 1,
                    _ => runs.push((addr, 1)),
                }
            }
        }
        i += k;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let m = parse_maps(
            "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
             7f00-8f00 r-xp 00001000 fd:01 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6\n\
             7ff0-7ff1 rw-s 00000000 00:01 99 /dev/zero (deleted)\n\
             a000-b000 rw-p 00000000 00:00 0 \n",
        );
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "[heap]");
        assert_eq!((m[1].offset, m[1].inode), (0x1000, 1234));
        assert_eq!(m[2].path, "/dev/zero (deleted)");
        assert_eq!(m[3].path, "");
        assert_eq!(prot_of("r-xp"), (libc::PROT_READ | libc::PROT_EXEC) as u32);
    }

    #[test]
    fn fixup_reenters_interrupted_calls() {
        let mut r: libc::user_regs_struct = sys::words_to_regs(&[0; sys::REGS_WORDS]);
        r.orig_rax = 0; // read
        r.rax = ERESTARTSYS as u64;
        r.rip = 0x1002;
        let f = restart_fixup(&r, false);
        assert_eq!((f.rax, f.rip), (0, 0x1000));
        r.orig_rax = 35; // nanosleep
        r.rax = ERESTART_RESTARTBLOCK as u64;
        assert_eq!(restart_fixup(&r, true).rax, NR_RESTART_SYSCALL);
        assert_eq!(restart_fixup(&r, false).rax, 35);
        r.orig_rax = u64::MAX; // not in a system call
        r.rax = 7;
        assert_eq!(restart_fixup(&r, false).rip, 0x1002);
    }

    #[test]
    fn proc_limits_match_getrlimit() {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        let limits = super::parse_limits(&text).unwrap();
        for (res, soft, hard) in limits {
            let (s, h) = super::sys::get_rlimit(0, res).unwrap();
            assert_eq!((soft, hard), (s, h), "resource {res}");
        }
    }
}
