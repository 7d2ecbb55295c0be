//! Restart: rebuilds a saved process tree inside the application's new PID
//! namespace, run by its init (pid 1 there).
//!
//! The init creates every process with its saved pid (writing `ns_last_pid` before
//! each fork; a parent forks its own children, so parent links, sessions and groups
//! come out as saved), and each new process sets up its files, directory, limits,
//! credentials and signal handlers itself, then waits in pause(2). The init then
//! seizes each one and, with system calls injected through ptrace(2), replaces its
//! whole address space by the saved one (mmap(2), mremap(2) of the vDSO,
//! prctl(PR_SET_MM_MAP)), writes the saved pages through /proc/PID/mem, loads the
//! registers and FPU state, queues pending signals and lets it go.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Pid};

use super::dump::parse_maps;
use super::image::{self, Backing, Blob, FdKind, Image, Proc, Zombie};
use super::ptrace::Tracee;
use super::{
    affinity, files, procstate, semundo, session, sockets, sys, sysvshm, thread, timer, CkptError,
};

type Result<T> = std::result::Result<T, CkptError>;

const PAGE: u64 = 4096;
/// Checksum buffer: small enough to stay in cache and to cost few page faults.
const CHUNK: usize = 256 << 10;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const MADV_POPULATE_WRITE: u64 = 23;
/// Runs shorter than this are left to fault page by page.
const POPULATE_MIN_PAGES: u64 = 16;
/// Offsets above the first free descriptor: report pipes, then staged descriptors
/// (kept low, as descriptors cannot exceed RLIMIT_NOFILE).
const READY_OFF: RawFd = 64;
const STAGE_OFF: RawFd = 512;

/// XSAVE features of this CPU.
pub fn cpu_xfeatures() -> u64 {
    sys::cpu_xfeatures()
}

/// The error a child reported for process `pid`: a failure it already names
/// ("restore of process N failed: …", from deeper in the tree) is kept as it
/// is rather than wrapped once per level.
fn reported(pid: i32, msg: &str) -> CkptError {
    let inner = msg.strip_prefix("restore of process ").and_then(|rest| {
        let (n, why) = rest.split_once(" failed: ")?;
        Some((n.parse().ok()?, why))
    });
    match inner {
        Some((n, why)) => rerr(n, why),
        None => rerr(pid, msg),
    }
}

fn rerr(pid: i32, reason: impl std::fmt::Display) -> CkptError {
    CkptError::Restore {
        pid,
        reason: reason.to_string(),
    }
}

/// Descriptors the init prepares for the tree: pipes with their unread data and
/// shared memory objects with their content, all inherited by every new process.
struct Shared {
    pipes: HashMap<u64, (RawFd, RawFd)>,
    shm: HashMap<u64, RawFd>,
    /// FIFO id -> a descriptor opened for reading and writing, so that the
    /// processes' own opens by path do not block.
    fifos: HashMap<u64, RawFd>,
    /// Socket id -> the socket, built in the init.
    sockets: HashMap<u64, RawFd>,
    /// (pid, fd) -> an open file several processes share (see `share_files`),
    /// made by the init.
    common: HashMap<(i32, i32), RawFd>,
    /// (pid, fd) -> a file of /proc several processes shared, about a
    /// process of the application: it cannot be opened before that process
    /// exists, so each holder opens its own (see `own_proc_file`).
    own_opens: HashMap<(i32, i32), image::Fd>,
    /// First descriptor number above everything the image uses.
    base: RawFd,
}

/// Reads a data file of the image, checking its length and checksum.
pub(crate) fn read_blob(dir: &Path, b: &Blob) -> Result<Vec<u8>> {
    let path = dir.join(&b.file);
    let data = std::fs::read(&path).map_err(|e| CkptError::Image {
        path: path.clone(),
        source: e,
    })?;
    if data.len() as u64 != b.len || crc32fast::hash(&data) != b.crc {
        return Err(CkptError::BadImage {
            path,
            reason: "truncated or corrupt data file".into(),
        });
    }
    Ok(data)
}

/// Checks the image before anything is created: every data file is there with
/// its recorded length and the tree is complete. Checksums are checked as the
/// data is used, before any process runs (a corrupt image leaves nothing).
pub fn verify(dir: &Path, img: &Image) -> Result<()> {
    for b in blobs(img) {
        let path = dir.join(&b.file);
        let len = std::fs::metadata(&path)
            .map_err(|e| CkptError::Image {
                path: path.clone(),
                source: e,
            })?
            .len();
        if len != b.len {
            let what = if len < b.len { "truncated" } else { "overlong" };
            return Err(CkptError::BadImage {
                path,
                reason: format!("{what} data file ({len} bytes, {} expected)", b.len),
            });
        }
    }
    let pids: Vec<i32> = img.processes.iter().map(|p| p.pid).collect();
    for z in &img.zombies {
        if z.ppid != 1 && !pids.contains(&z.ppid) {
            return Err(rerr(
                z.pid,
                format!("its parent {} is not in the image", z.ppid),
            ));
        }
    }
    for p in &img.processes {
        if p.ppid != 1 && !pids.contains(&p.ppid) {
            return Err(rerr(
                p.pid,
                format!("its parent {} is not in the image", p.ppid),
            ));
        }
    }
    Ok(())
}

fn blobs(img: &Image) -> impl Iterator<Item = &Blob> {
    img.processes
        .iter()
        .map(|p| &p.pages)
        .chain(img.shared.iter())
        .chain(img.pipes.iter().map(|p| &p.data))
        .chain(img.fifos.iter().map(|f| &f.pipe.data))
        .chain(img.socket_data.iter())
}

fn high_fd(fd: OwnedFd, base: RawFd) -> Result<RawFd> {
    let n = fcntl(&fd, FcntlArg::F_DUPFD(base)).map_err(|e| rerr(1, format!("dup: {e}")))?;
    Ok(n)
}

fn prepare_shared(dir: &Path, img: &Image, opts: &RestoreOptions) -> Result<Shared> {
    let max_fd = img
        .processes
        .iter()
        .flat_map(|p| p.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2);
    let base = (max_fd + 16).max(64);
    let mut s = Shared {
        pipes: HashMap::new(),
        shm: HashMap::new(),
        fifos: HashMap::new(),
        sockets: HashMap::new(),
        common: HashMap::new(),
        own_opens: HashMap::new(),
        base,
    };
    for p in &img.pipes {
        let data = read_blob(dir, &p.data)?;
        let (r, w) = nix::unistd::pipe().map_err(|e| rerr(1, format!("pipe: {e}")))?;
        let _ = fcntl(
            &w,
            FcntlArg::F_SETPIPE_SZ(p.capacity.max(data.len() as u64) as i32),
        );
        File::from(w.try_clone().map_err(|e| rerr(1, e))?)
            .write_all(&data)
            .map_err(|e| rerr(1, format!("refill pipe {}: {e}", p.id)))?;
        s.pipes.insert(p.id, (high_fd(r, base)?, high_fd(w, base)?));
    }
    for f in &img.fifos {
        let data = read_blob(dir, &f.pipe.data)?;
        let what = |e: &dyn std::fmt::Display| rerr(1, format!("FIFO {}: {e}", f.path.display()));
        let fd = nix::fcntl::open(&f.path, OFlag::O_RDWR, nix::sys::stat::Mode::empty())
            .map_err(|e| what(&e))?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| what(&e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return Err(what(&"no longer a FIFO"));
        }
        let _ = fcntl(
            &fd,
            FcntlArg::F_SETPIPE_SZ(f.pipe.capacity.max(data.len() as u64) as i32),
        );
        File::from(fd.try_clone().map_err(|e| what(&e))?)
            .write_all(&data)
            .map_err(|e| what(&e))?;
        s.fifos.insert(f.pipe.id, high_fd(fd, base)?);
    }
    for b in &img.shared {
        let data = read_blob(dir, b)?;
        let ghost = img.ghosts.iter().find(|g| g.id == b.id);
        let fd = match ghost {
            Some(g) => files::ghost::create(g).map_err(|e| {
                rerr(
                    1,
                    format!("cannot create deleted file {}: {e}", g.path.display()),
                )
            })?,
            None => sys::memfd(c"xos-shared").map_err(|e| rerr(1, format!("memfd_create: {e}")))?,
        };
        let f = File::from(fd);
        let size = u64::from_le_bytes(
            data.get(..8)
                .ok_or_else(|| rerr(1, "empty shared memory record"))?
                .try_into()
                .unwrap(),
        );
        f.set_len(size).map_err(|e| rerr(1, e))?;
        let mut pos = 8usize;
        while pos + 16 <= data.len() {
            let off = u64::from_le_bytes(data[pos..pos + 8].try_into().unwrap());
            let len = u64::from_le_bytes(data[pos + 8..pos + 16].try_into().unwrap()) as usize;
            pos += 16;
            let chunk = data
                .get(pos..pos + len)
                .ok_or_else(|| rerr(1, "short shared memory record"))?;
            f.write_all_at(chunk, off).map_err(|e| rerr(1, e))?;
            pos += len;
        }
        if let Some(g) = ghost {
            files::ghost::seal(&f, g).map_err(|e| {
                rerr(
                    1,
                    format!("deleted file {}: mode and seals: {e}", g.path.display()),
                )
            })?;
        }
        let mut fd = OwnedFd::from(f);
        if img.processes.iter().any(|p| p.exe_ghost == Some(b.id)) {
            // An executable has no writer (prctl(PR_SET_MM_MAP) refuses one).
            fd = files::ghost::read_only(&fd)
                .map_err(|e| rerr(1, format!("reopen a deleted executable read-only: {e}")))?;
        }
        s.shm.insert(b.id, high_fd(fd, base)?);
    }
    if !img.sockets.is_empty() {
        let pipes = s.pipes.clone();
        // A descriptor in flight in a socket's queue that is not a socket.
        let open_other = |k: &FdKind, flags: u32| -> std::result::Result<OwnedFd, String> {
            match k {
                FdKind::Pipe { id, write } => {
                    let (r, w) = pipes.get(id).ok_or_else(|| format!("unknown pipe {id}"))?;
                    let end = if *write { *w } else { *r };
                    unsafe_borrow(end)
                        .try_clone_to_owned()
                        .map_err(|e| format!("dup: {e}"))
                }
                FdKind::Path { path, pos, .. } => {
                    let fd = nix::fcntl::open(
                        path,
                        reopen_flags(flags) | OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                    if *pos > 0 {
                        nix::unistd::lseek(&fd, *pos as i64, nix::unistd::Whence::SeekSet)
                            .map_err(|e| format!("seek: {e}"))?;
                    }
                    Ok(fd)
                }
                _ => Err("a descriptor in flight of a kind not saved".into()),
            }
        };
        let made = sockets::restore_all(
            dir,
            &img.sockets,
            img.socket_data.as_ref(),
            img.app,
            !img.net.is_private(),
            opts.tcp_close,
            &open_other,
        )
        .map_err(|e| rerr(1, e))?;
        for (id, fd) in made {
            if id >> 63 == 0 {
                s.sockets.insert(id, high_fd(fd, base)?);
            }
        }
    }
    share_files(img, opts, &mut s)?;
    Ok(s)
}

/// Opens once, in the init, every open file several processes share: the
/// targets of `SharedWith` descriptors, and the files the application's init
/// had as stdio (given to krgcr-run) that restart does not redirect, one per
/// (path, offset, flags). Every holder gets that one open file.
fn share_files(img: &Image, opts: &RestoreOptions, s: &mut Shared) -> Result<()> {
    let mut inherited: HashMap<(&Path, u64, u32), RawFd> = HashMap::new();
    for p in &img.processes {
        for f in &p.fds {
            if let FdKind::Path {
                path,
                pos,
                inherited: Some(k),
                ..
            } = &f.kind
            {
                if opts.redirected[*k as usize % 3] {
                    continue;
                }
                let key = (path.as_path(), *pos, f.flags);
                let fd = match inherited.get(&key) {
                    Some(fd) => *fd,
                    None => {
                        let made = open_path(f, opts.allow_changed_files)
                            .map_err(|why| rerr(p.pid, why))?;
                        let fd = high_fd(made, s.base)?;
                        inherited.insert(key, fd);
                        fd
                    }
                };
                s.common.insert((p.pid, f.fd), fd);
                continue;
            }
            let FdKind::SharedWith { pid, fd } = f.kind else {
                continue;
            };
            if s.common.contains_key(&(pid, fd)) {
                continue;
            }
            let first = img
                .processes
                .iter()
                .find(|q| q.pid == pid)
                .and_then(|q| q.fds.iter().find(|g| g.fd == fd))
                .ok_or_else(|| {
                    rerr(
                        p.pid,
                        format!("fd {}: fd {fd} of process {pid} is not in the image", f.fd),
                    )
                })?;
            if own_proc_file(first) {
                s.own_opens.insert((pid, fd), first.clone());
                continue;
            }
            let made = match &first.kind {
                FdKind::Path { .. } => open_path(first, opts.allow_changed_files),
                FdKind::Ghost { .. } => open_ghost(first, s),
                kind => files::anon::create(kind, first.flags)
                    .unwrap_or_else(|| Err("a kind of file that cannot be shared".into())),
            }
            .map_err(|why| rerr(pid, why))?;
            s.common.insert((pid, fd), high_fd(made, s.base)?);
        }
    }
    Ok(())
}

/// Whether `f` is a file of /proc about a process (`/proc/PID/…`), which
/// the init cannot open before the application's processes exist. Its
/// holders each open their own: one offset each instead of a shared one,
/// which for such files (made anew at each read) changes nothing of note.
fn own_proc_file(f: &image::Fd) -> bool {
    let FdKind::Path { path, .. } = &f.kind else {
        return false;
    };
    let mut c = path.components().skip(1);
    c.next().is_some_and(|d| d.as_os_str() == "proc")
        && c.next()
            .and_then(|d| d.as_os_str().to_str()?.parse::<u32>().ok())
            .is_some()
}

/// Opens the file of `f` (a `FdKind::Path`) again at its offset, with its
/// flags, checking (unless `allow_changed`) that it did not change.
fn open_path(f: &image::Fd, allow_changed: bool) -> std::result::Result<OwnedFd, String> {
    let FdKind::Path {
        path,
        pos,
        size,
        ftype,
        ..
    } = &f.kind
    else {
        return Err(format!("fd {}: not a file by path", f.fd));
    };
    let flags = reopen_flags(f.flags);
    let fd = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())
        .map_err(|err| format!("fd {}: cannot open {}: {err}", f.fd, path.display()))?;
    if !allow_changed {
        check_unchanged(&fd, f, path, *pos, *size, *ftype)?;
    }
    if *pos > 0 {
        nix::unistd::lseek(&fd, *pos as i64, nix::unistd::Whence::SeekSet)
            .map_err(|err| format!("fd {}: seek: {err}", f.fd))?;
    }
    Ok(fd)
}

/// A new open file, with the flags and offset of `f` (a `FdKind::Ghost`), of
/// the deleted file the init made.
fn open_ghost(f: &image::Fd, shared: &Shared) -> std::result::Result<OwnedFd, String> {
    let FdKind::Ghost { id, pos } = &f.kind else {
        return Err(format!("fd {}: not a deleted file", f.fd));
    };
    let src = shared
        .shm
        .get(id)
        .ok_or_else(|| format!("fd {}: unknown deleted file {id}", f.fd))?;
    // Through the /proc magic link, which O_NOFOLLOW would refuse.
    let flags = reopen_flags(f.flags) & !OFlag::O_NOFOLLOW;
    let fd = nix::fcntl::open(
        format!("/proc/self/fd/{src}").as_str(),
        flags,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("fd {}: reopen a deleted file: {e}", f.fd))?;
    if *pos > 0 {
        nix::unistd::lseek(&fd, *pos as i64, nix::unistd::Whence::SeekSet)
            .map_err(|e| format!("fd {}: seek: {e}", f.fd))?;
    }
    Ok(fd)
}

/// Who creates which process. A child of the init that belongs to a session led
/// by another process (a daemon whose parent exited) is forked, through a helper
/// that then exits, by its session leader, so it lands in that session and is
/// reparented to the init as before.
struct Tree<'a> {
    children: BTreeMap<i32, Vec<&'a Proc>>,
    /// session id -> orphans to create from that session's leader.
    orphans: BTreeMap<i32, Vec<&'a Proc>>,
    /// Sessions whose leader is gone -> the init's children in them, created
    /// by a helper holding the leader's pid (see `session`).
    dead_sessions: BTreeMap<i32, Vec<&'a Proc>>,
    /// Process groups whose leader is gone.
    dead_groups: std::collections::BTreeSet<i32>,
    /// Every session whose leader is gone.
    all_dead_sessions: std::collections::BTreeSet<i32>,
    /// pid for the short-lived helpers, above every saved pid.
    helper_pid: i32,
    /// parent -> its ended, unreaped children.
    zombies: BTreeMap<i32, Vec<&'a Zombie>>,
    allow_changed_files: bool,
    redirected: [bool; 3],
}

/// Choices of a restart.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Reopen files that changed since the checkpoint (see `check_unchanged`).
    pub allow_changed_files: bool,
    /// Standard descriptors the restarter was told to send elsewhere: files
    /// that were the application's stdin, stdout or stderr become the init's.
    pub redirected: [bool; 3],
    /// Reset every TCP connection instead of keeping it (its address does
    /// not follow the application here).
    pub tcp_close: bool,
}

/// Rebuilds the tree; called in the application's init. Returns the pids of the
/// restored processes, running.
/// `before_detach` runs once every process is rebuilt, right before they are let go.
pub fn restore_tree(
    dir: &Path,
    img: &Image,
    opts: &RestoreOptions,
    before_detach: &mut dyn FnMut(),
) -> Result<Vec<i32>> {
    // The helper descriptors sit above the image's; every process sets its own
    // saved limits once they are in place.
    if let Ok((_, hard)) = sys::get_rlimit(0, libc::RLIMIT_NOFILE) {
        let _ = sys::set_rlimit(libc::RLIMIT_NOFILE, hard, hard);
    }
    sysvshm::restore(dir, img)?;
    semundo::prepare(dir, img)?;
    let shared = prepare_shared(dir, img, opts)?;
    let pids: Vec<i32> = img.processes.iter().map(|p| p.pid).collect();
    let (dead_sessions, dead_groups) = session::dead_leaders(img);
    let mut tree = Tree {
        children: BTreeMap::new(),
        orphans: BTreeMap::new(),
        dead_sessions: BTreeMap::new(),
        dead_groups,
        all_dead_sessions: dead_sessions,
        zombies: BTreeMap::new(),
        allow_changed_files: opts.allow_changed_files,
        redirected: opts.redirected,
        helper_pid: img
            .processes
            .iter()
            .flat_map(|p| p.threads.iter().map(|t| t.tid).chain([p.pid]))
            .chain(img.zombies.iter().map(|z| z.pid))
            // Helpers take the pids of gone leaders.
            .chain(img.processes.iter().flat_map(|p| [p.sid, p.pgid]))
            .max()
            .unwrap_or(1)
            + 1,
    };
    for p in &img.processes {
        let led_elsewhere = p.ppid == 1 && p.sid > 1 && p.sid != p.pid && pids.contains(&p.sid);
        if led_elsewhere {
            tree.orphans.entry(p.sid).or_default().push(p);
        } else if p.ppid == 1 && tree.all_dead_sessions.contains(&p.sid) {
            tree.dead_sessions.entry(p.sid).or_default().push(p);
        } else {
            tree.children.entry(p.ppid).or_default().push(p);
        }
    }
    for z in &img.zombies {
        // The init reaps its own children at once: nothing to rebuild there.
        if z.ppid != 1 {
            tree.zombies.entry(z.ppid).or_default().push(z);
        }
    }
    let tree = &tree;
    let by_pid: HashMap<i32, &Proc> = img.processes.iter().map(|p| (p.pid, p)).collect();
    let mut created = Vec::new();
    let mut tracees: Vec<Tracee> = Vec::new();
    let result = (|| {
        for p in tree.children.get(&1).cloned().unwrap_or_default() {
            spawn(p, tree, &shared, &mut created)?;
        }
        for (&sid, members) in &tree.dead_sessions {
            spawn_session(sid, members, tree, &shared, &mut created, true)?;
        }
        // Every process is in its session and group: the helpers can go.
        session::end_helpers(
            tree.all_dead_sessions
                .iter()
                .chain(&tree.dead_groups)
                .copied(),
        );
        // The page files are checked while the processes read them (a cold
        // file is read from the disk once, by whichever comes first); nothing
        // runs before this agrees. Started only now: a thread takes a pid of
        // the namespace.
        let pages: Vec<Blob> = img.processes.iter().map(|p| p.pages.clone()).collect();
        let pages_dir = dir.to_path_buf();
        // The checker thread takes a pid of the namespace: one above every
        // saved pid and tid, which the threads created below need.
        std::fs::write(
            "/proc/sys/kernel/ns_last_pid",
            (tree.helper_pid + 1).to_string(),
        )
        .map_err(|e| rerr(1, format!("cannot set ns_last_pid: {e}")))?;
        // The checker runs beside the restorer, not in turns with it on the
        // CPU the restorer keeps for itself and the processes it rebuilds.
        let _following = affinity::start();
        let elsewhere = affinity::stay_here();
        let checker = std::thread::spawn(move || {
            if !elsewhere.is_empty() {
                let _ = affinity::set(Pid::from_raw(0), &elsewhere);
            }
            check_blobs(&pages_dir, &pages)
        });
        let mut leaders = Vec::new();
        for &pid in &created {
            let t = Tracee::seize(Pid::from_raw(pid), pid, true)?;
            t.wait_stopped()?;
            leaders.push(t);
        }
        for t in leaders.iter_mut() {
            let started = std::time::Instant::now();
            let threads = rebuild(t, by_pid[&t.label], dir, &shared)?;
            log::debug!(
                "process {}: rebuilt with {} threads in {:?}",
                t.label,
                threads.len() + 1,
                started.elapsed()
            );
            tracees.extend(threads);
        }
        checker
            .join()
            .unwrap_or_else(|_| Err(rerr(1, "the check of the image failed")))?;
        // A process that was in a job-control stop stops again as soon as it
        // is let go (its parent sees it stopped, as before).
        for t in &leaders {
            if let Some(sig) = by_pid[&t.label].stopped {
                let _ = nix::sys::signal::kill(t.pid, Signal::try_from(sig).ok());
            }
        }
        tracees.extend(leaders);
        sysvshm::remove_marked(dir, img);
        before_detach();
        for t in &tracees {
            t.detach()?;
        }
        Ok(())
    })();
    drop(tracees);
    // A set: several holders may share one descriptor of `common`.
    let open: std::collections::BTreeSet<RawFd> = shared
        .pipes
        .values()
        .flat_map(|(r, w)| [*r, *w])
        .chain(shared.shm.values().copied())
        .chain(shared.fifos.values().copied())
        .chain(shared.common.values().copied())
        .chain(shared.sockets.values().copied())
        .collect();
    for fd in open {
        let _ = nix::unistd::close(fd);
    }
    match result {
        Ok(()) => Ok(created),
        Err(e) => {
            for &pid in &created {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            Err(e)
        }
    }
}

/// Forks `p` with its saved pid (and, from it, its children), waiting until its
/// subtree is ready.
fn spawn(p: &Proc, tree: &Tree, shared: &Shared, created: &mut Vec<i32>) -> Result<()> {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (p.pid - 1).to_string())
        .map_err(|e| rerr(p.pid, format!("cannot set ns_last_pid: {e}")))?;
    let (rd, wr) = nix::unistd::pipe().map_err(|e| rerr(p.pid, e))?;
    match sys_fork().map_err(|e| rerr(p.pid, format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(rd);
            // Out of the range setup_fds closes.
            let ready = fcntl(&wr, FcntlArg::F_DUPFD(shared.base + READY_OFF))
                .map(crate::sys::file_from_raw);
            drop(wr);
            match ready {
                Ok(ready) => task_main(p, tree, shared, ready),
                Err(_) => std::process::exit(1),
            }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            if child.as_raw() != p.pid {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                return Err(rerr(p.pid, format!("the pid is taken (got {child})")));
            }
            // One line; not end-of-file, as the new processes inherit the pipe.
            let mut msg = String::new();
            let _ =
                std::io::BufRead::read_line(&mut std::io::BufReader::new(File::from(rd)), &mut msg);
            let msg = msg.trim_end();
            if let Some(list) = msg.strip_prefix('R') {
                created.extend(list.split(',').filter_map(|s| s.parse::<i32>().ok()));
                Ok(())
            } else {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                Err(reported(
                    p.pid,
                    msg.strip_prefix('E').unwrap_or("it ended during setup"),
                ))
            }
        }
    }
}

/// Creates session `sid`, whose leader is gone, from a helper with its pid
/// that forks `members` (through helpers that exit, so they are the caller's
/// children as before: the init's, or a subreaper's). The helper stays until
/// [`session::end_helpers`] when `stay` (the init's), else it ends at once
/// and the caller reaps it.
fn spawn_session(
    sid: i32,
    members: &[&Proc],
    tree: &Tree,
    shared: &Shared,
    created: &mut Vec<i32>,
    stay: bool,
) -> Result<()> {
    session::next_pid(sid)?;
    let (rd, wr) = nix::unistd::pipe().map_err(|e| rerr(sid, e))?;
    match sys_fork().map_err(|e| rerr(sid, format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(rd);
            let mut w = File::from(wr);
            let mut sub = Vec::new();
            let r = nix::unistd::setsid()
                .map_err(|e| rerr(sid, format!("setsid: {e}")))
                .and_then(|_| {
                    members
                        .iter()
                        .try_for_each(|o| spawn_orphan(o, tree, shared, &mut sub))
                });
            let _ = match r {
                Ok(()) => {
                    let list: Vec<String> = sub.iter().map(|p| p.to_string()).collect();
                    writeln!(w, "R{}", list.join(","))
                }
                Err(e) => writeln!(w, "E{}", e.to_string().replace('\n', " ")),
            };
            drop(w);
            if !stay {
                std::process::exit(0);
            }
            loop {
                sys::pause();
            }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ =
                std::io::BufRead::read_line(&mut std::io::BufReader::new(File::from(rd)), &mut msg);
            if !stay {
                let _ = nix::sys::wait::waitpid(child, None);
                take_sigchld();
            }
            if child.as_raw() != sid {
                return Err(rerr(sid, format!("the pid is taken (got {child})")));
            }
            match msg.trim_end().strip_prefix('R') {
                Some(list) => {
                    created.extend(list.split(',').filter_map(|s| s.parse::<i32>().ok()));
                    Ok(())
                }
                None => Err(reported(
                    sid,
                    msg.trim_end()
                        .strip_prefix('E')
                        .unwrap_or("its session helper ended"),
                )),
            }
        }
    }
}

/// Creates `o` from a helper child of the calling session leader; the helper
/// exits so that `o` is reparented to the init, as it was.
fn spawn_orphan(o: &Proc, tree: &Tree, shared: &Shared, created: &mut Vec<i32>) -> Result<()> {
    std::fs::write(
        "/proc/sys/kernel/ns_last_pid",
        (tree.helper_pid - 1).to_string(),
    )
    .map_err(|e| rerr(o.pid, format!("cannot set ns_last_pid: {e}")))?;
    let (rd, wr) = nix::unistd::pipe().map_err(|e| rerr(o.pid, e))?;
    match sys_fork().map_err(|e| rerr(o.pid, format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(rd);
            let mut sub = Vec::new();
            let mut w = File::from(wr);
            let _ = match spawn(o, tree, shared, &mut sub) {
                Ok(()) => {
                    let list: Vec<String> = sub.iter().map(|p| p.to_string()).collect();
                    writeln!(w, "R{}", list.join(","))
                }
                Err(e) => writeln!(w, "E{}", e.to_string().replace('\n', " ")),
            };
            std::process::exit(0);
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ =
                std::io::BufRead::read_line(&mut std::io::BufReader::new(File::from(rd)), &mut msg);
            let _ = nix::sys::wait::waitpid(child, None);
            match msg.trim_end().strip_prefix('R') {
                Some(list) => {
                    created.extend(list.split(',').filter_map(|s| s.parse::<i32>().ok()));
                    Ok(())
                }
                None => Err(reported(
                    o.pid,
                    msg.trim_end()
                        .strip_prefix('E')
                        .unwrap_or("its helper ended"),
                )),
            }
        }
    }
}

/// Creates the ended child `z` again: forked with its pid, it ends at once the
/// way it ended, and stays a zombie until its parent waits for it. The
/// SIGCHLD this sends (blocked here) is taken back; a saved one is queued again
/// with the parent's other pending signals.
fn spawn_zombie(z: &Zombie) -> Result<()> {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (z.pid - 1).to_string())
        .map_err(|e| rerr(z.pid, format!("cannot set ns_last_pid: {e}")))?;
    match sys_fork().map_err(|e| rerr(z.pid, format!("fork: {e}")))? {
        ForkResult::Child => {
            if z.pgid == z.pid {
                let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            }
            let sig = z.status & 0x7f;
            if sig != 0 {
                // Killed by a signal: die by it (without a core file).
                let _ = sys::set_rlimit(libc::RLIMIT_CORE, 0, 0);
                let _ = sys::set_sigaction(sig, &sys::KSigaction::default());
                if let Ok(s) = Signal::try_from(sig) {
                    let mut set = SigSet::empty();
                    set.add(s);
                    let _ = set.thread_unblock();
                    let _ = nix::sys::signal::raise(s);
                }
            }
            std::process::exit((z.status >> 8) & 0xff)
        }
        ForkResult::Parent { child } => {
            if child.as_raw() != z.pid {
                return Err(rerr(z.pid, format!("the pid is taken (got {child})")));
            }
            nix::sys::wait::waitid(
                nix::sys::wait::Id::Pid(child),
                nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
            )
            .map_err(|e| rerr(z.pid, format!("wait: {e}")))?;
            take_sigchld();
            Ok(())
        }
    }
}

/// Takes back the SIGCHLD (blocked here) that a child made for the restore
/// sent when it ended: the process gets its saved pending signals only.
fn take_sigchld() {
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    if SigSet::thread_get_mask().is_ok_and(|m| m.contains(Signal::SIGCHLD)) {
        let _ = chld.wait();
    }
}

fn sys_fork() -> nix::Result<ForkResult> {
    crate::sys::fork()
}

/// Body of a new process: set up, report to the parent, wait to be rebuilt.
/// A forked restore process never returns into the caller's code.
fn task_main(p: &Proc, tree: &Tree, shared: &Shared, mut ready: File) -> ! {
    let keep = std::os::fd::AsRawFd::as_raw_fd(&ready);
    match task_setup(p, tree, shared, keep) {
        Ok(subtree) => {
            let list: Vec<String> = subtree.iter().map(|p| p.to_string()).collect();
            let _ = ready.write_all(format!("R{}\n", list.join(",")).as_bytes());
            drop(ready);
            loop {
                sys::pause();
            }
        }
        Err(e) => {
            let _ = writeln!(ready, "E{}", e.to_string().replace('\n', " "));
            std::process::exit(1)
        }
    }
}

/// Session, group, children, files, limits, handlers and credentials of a new
/// process; returns the pids of its subtree.
fn task_setup(p: &Proc, tree: &Tree, shared: &Shared, keep_fd: RawFd) -> Result<Vec<i32>> {
    let me = p.pid;
    let e = |what: &str| {
        let what = what.to_string();
        move |err: nix::Error| rerr(me, format!("{what}: {err}"))
    };
    let mut subtree = vec![me];
    let children = tree.children.get(&me).cloned().unwrap_or_default();
    // Children in a session whose leader is gone, neither this process's nor
    // the one it was born in: a subreaper adopted them (a daemon's double
    // fork). Made the same way, from a helper holding the leader's pid.
    let born_sid = nix::unistd::getsid(None).map_or(0, |s| s.as_raw());
    let (adopted, children): (Vec<&Proc>, Vec<&Proc>) = children.into_iter().partition(|c| {
        c.sid != p.sid
            && c.sid != c.pid
            && c.sid != born_sid
            && tree.all_dead_sessions.contains(&c.sid)
    });
    // Children left in the session this process had before its setsid(2)
    // were forked before it.
    let (early, children): (Vec<&Proc>, Vec<&Proc>) = children
        .into_iter()
        .partition(|c| p.sid == p.pid && c.sid != p.pid);
    for c in early {
        spawn(c, tree, shared, &mut subtree)?;
    }
    if p.sid == p.pid {
        nix::unistd::setsid().map_err(e("setsid"))?;
    }
    // The init's session and group (1) are wherever this restart put the init:
    // its own with --detach, the caller's (0 from inside) in the foreground.
    let of_init = |v: i32, now: nix::Result<Pid>| {
        if v == 1 {
            now.map_or(0, |x| x.as_raw())
        } else {
            v
        }
    };
    let want_sid = of_init(p.sid, nix::unistd::getsid(Some(Pid::from_raw(1))));
    let want_pgid = of_init(p.pgid, nix::unistd::getpgid(Some(Pid::from_raw(1))));
    let mut deferred_group = false;
    if p.pgid == p.pid {
        if nix::unistd::getpgrp().as_raw() != p.pid {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(e("setpgid"))?;
        }
    } else if want_pgid > 0 && nix::unistd::getpgrp().as_raw() != want_pgid {
        let join = || nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(want_pgid));
        if join().is_err() {
            if tree.dead_groups.contains(&p.pgid) {
                session::make_group(p.pgid, tree.helper_pid)?;
                join().map_err(e("join its process group"))?;
            } else if p.pgid > 1 {
                // Its leader lives in another branch, not made yet: joined
                // once every process exists (see `rebuild`).
                deferred_group = true;
            }
        }
    }
    // A shape this restorer cannot build (a member adopted by a subreaper
    // from a session whose leader ended…) fails here rather than coming back
    // in another session or group.
    let (sid, pgid) = (
        nix::unistd::getsid(None).map_or(0, |s| s.as_raw()),
        nix::unistd::getpgrp().as_raw(),
    );
    if (p.sid > 0 && sid != want_sid) || (p.pgid > 0 && pgid != want_pgid && !deferred_group) {
        return Err(rerr(
            me,
            format!(
                "cannot rebuild its session {} and group {} (it is in {sid} and {pgid})",
                p.sid, p.pgid
            ),
        ));
    }
    semundo::give_back(p).map_err(|why| rerr(me, why))?;
    // Ended children first: one that led a process group (a pipeline's first
    // command) holds it for the children that join it.
    for z in tree.zombies.get(&me).cloned().unwrap_or_default() {
        spawn_zombie(z)?;
    }
    if !adopted.is_empty() && p.settings.child_subreaper {
        // Set again with the other settings; needed now for the adoption.
        nix::sys::prctl::set_child_subreaper(true).map_err(e("PR_SET_CHILD_SUBREAPER"))?;
    }
    let mut by_session: BTreeMap<i32, Vec<&Proc>> = BTreeMap::new();
    for c in adopted {
        by_session.entry(c.sid).or_default().push(c);
    }
    for (sid, members) in by_session {
        spawn_session(sid, &members, tree, shared, &mut subtree, false)?;
    }
    for c in children {
        spawn(c, tree, shared, &mut subtree)?;
    }
    for o in tree.orphans.get(&me).cloned().unwrap_or_default() {
        spawn_orphan(o, tree, shared, &mut subtree)?;
    }
    setup_fds(
        p,
        shared,
        keep_fd,
        tree.allow_changed_files,
        tree.redirected,
    )?;
    if p.cwd_deleted {
        procstate::enter_deleted_dir(&p.cwd).map_err(|why| rerr(me, why))?;
    } else {
        nix::unistd::chdir(&p.cwd).map_err(e("chdir"))?;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(p.umask));
    let _ = nix::sys::prctl::set_name(&CString::new(p.comm.clone()).unwrap_or_default());
    sys::set_personality(p.personality).map_err(e("personality"))?;
    let mut all = SigSet::all();
    all.remove(Signal::SIGKILL);
    all.remove(Signal::SIGSTOP);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None)
        .map_err(e("block signals"))?;
    // Handlers of the restorer itself (its runtime's SIGSEGV handler) must not
    // survive into the rebuilt process: every signal starts at its default.
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            let _ = sys::set_sigaction(sig, &sys::KSigaction::default());
        }
    }
    for &(sig, handler, flags, restorer, mask) in &p.sigactions {
        sys::set_sigaction(
            sig,
            &sys::KSigaction {
                handler,
                flags,
                restorer,
                mask,
            },
        )
        .map_err(e("rt_sigaction"))?;
    }
    for &(res, soft, hard) in &p.rlimits {
        sys::set_rlimit(res, soft, hard).map_err(e("setrlimit"))?;
    }
    if p.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(e("no_new_privs"))?;
    }
    procstate::apply(&p.settings).map_err(|why| rerr(me, why))?;
    // Last, as a real-time timer runs from here on (its signal stays blocked
    // until the saved mask is loaded).
    for (which, v) in p.itimers.iter().enumerate() {
        let mut v = *v;
        if v[2..] == [0, 0] && v[..2] != [0, 0] {
            // Expired with its signal still pending: the kernel re-arms such a
            // timer only when that signal is taken, and setitimer with a zero
            // value would disarm it. Armed one interval on, as the kernel would.
            v[2] = v[0];
            v[3] = v[1];
        }
        if v.iter().any(|x| *x != 0) {
            sys::set_itimer(which as i32, v).map_err(e("setitimer"))?;
        }
    }
    Ok(subtree)
}

/// Identity and capabilities, injected last: the steps before (PR_SET_MM_MAP
/// with a new exe link, the bounding set) need the restorer's privileges.
fn set_credentials(
    t: &Tracee,
    base: &libc::user_regs_struct,
    p: &Proc,
    scratch: u64,
) -> Result<()> {
    if has_credentials(t.pid.as_raw(), p) {
        // Already the saved ones (an application run by root): nothing to call.
        return Ok(());
    }
    const PR_CAPBSET_DROP: u64 = 24;
    const PR_SET_KEEPCAPS: u64 = 8;
    const PR_CAP_AMBIENT: u64 = 47;
    const PR_CAP_AMBIENT_RAISE: u64 = 2;
    let call = |what: &'static str, nr: i64, a: [u64; 3]| {
        t.syscall_ok(base, what, nr, [a[0], a[1], a[2], 0, 0, 0])
    };
    let prctl = |what: &'static str, a: u64, b: u64| call(what, libc::SYS_prctl, [a, b, 0]);
    let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last_cap.min(63) {
        if p.caps.bounding & (1 << cap) == 0 {
            prctl("drop from the bounding set", PR_CAPBSET_DROP, cap)?;
        }
    }
    let [ruid, euid, suid, fsuid] = p.uids.map(u64::from);
    let [rgid, egid, sgid, fsgid] = p.gids.map(u64::from);
    let root = p.uids == [0; 4];
    // Saved securebits are already set; a KEEP_CAPS among them stays.
    let keep_caps = p.settings.securebits & procstate::SECBIT_KEEP_CAPS_ANY != 0;
    if !root && !keep_caps {
        prctl("keep capabilities", PR_SET_KEEPCAPS, 1)?;
    }
    let groups: Vec<u8> = p.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    let groups_addr = scratch + 4 * PAGE;
    t.write_mem(groups_addr, &groups)?;
    call(
        "setgroups",
        libc::SYS_setgroups,
        [p.groups.len() as u64, groups_addr, 0],
    )?;
    call("setresgid", libc::SYS_setresgid, [rgid, egid, sgid])?;
    call("setfsgid", libc::SYS_setfsgid, [fsgid, 0, 0])?;
    call("setresuid", libc::SYS_setresuid, [ruid, euid, suid])?;
    call("setfsuid", libc::SYS_setfsuid, [fsuid, 0, 0])?;
    if !root && !keep_caps {
        prctl("reset keep capabilities", PR_SET_KEEPCAPS, 0)?;
    }
    // capset: a version-3 header, then two {effective, permitted, inheritable}
    // halves (linux/capability.h).
    let c = &p.caps;
    let mut cap = Vec::with_capacity(32);
    cap.extend_from_slice(&0x2008_0522u32.to_ne_bytes());
    cap.extend_from_slice(&0i32.to_ne_bytes());
    for half in 0..2 {
        for m in [c.effective, c.permitted, c.inheritable] {
            cap.extend_from_slice(&((m >> (32 * half)) as u32).to_ne_bytes());
        }
    }
    let cap_addr = scratch + 5 * PAGE;
    t.write_mem(cap_addr, &cap)?;
    call("capset", libc::SYS_capset, [cap_addr, cap_addr + 8, 0])?;
    for n in 0..64 {
        if c.ambient & (1 << n) != 0 {
            call(
                "raise an ambient capability",
                libc::SYS_prctl,
                [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, n],
            )?;
        }
    }
    Ok(())
}

/// Whether task `tid` has exactly the saved identity and capability sets of `p`.
fn has_credentials(tid: i32, p: &Proc) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return false;
    };
    let field = |key: &str| -> Vec<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mask = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(u64::MAX)
    };
    let mut groups = field("Groups:");
    groups.sort_unstable();
    let mut saved: Vec<u64> = p.groups.iter().map(|g| *g as u64).collect();
    saved.sort_unstable();
    field("Uid:") == p.uids.map(u64::from)
        && field("Gid:") == p.gids.map(u64::from)
        && groups == saved
        && mask("CapInh:") == p.caps.inheritable
        && mask("CapPrm:") == p.caps.permitted
        && mask("CapEff:") == p.caps.effective
        && mask("CapBnd:") == p.caps.bounding
        && mask("CapAmb:") == p.caps.ambient
}

/// Length and checksum of each page file, read in small chunks.
fn check_blobs(dir: &Path, blobs: &[Blob]) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    for b in blobs {
        let path = dir.join(&b.file);
        let io = |e| CkptError::Image {
            path: path.clone(),
            source: e,
        };
        let mut f = File::open(&path).map_err(io)?;
        let mut h = crc32fast::Hasher::new();
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        if len != b.len || h.finalize() != b.crc {
            return Err(CkptError::BadImage {
                path,
                reason: "truncated or corrupt data file".into(),
            });
        }
    }
    Ok(())
}

/// Puts every saved descriptor at its number; keeps only the shared memory
/// objects this process maps (closed later by the restorer).
fn setup_fds(
    p: &Proc,
    shared: &Shared,
    keep: RawFd,
    allow_changed: bool,
    redirected: [bool; 3],
) -> Result<()> {
    let me = p.pid;
    let stage_base = shared.base + STAGE_OFF;
    let mut staged: Vec<(&image::Fd, RawFd)> = Vec::new();
    let fd_err = |f: &image::Fd, what: &str, err: nix::Error| {
        rerr(me, format!("fd {}: {what}: {err}", f.fd))
    };
    for f in &p.fds {
        // Created here and owned until staged; None: borrowed from the init.
        let made: Option<OwnedFd>;
        let src: RawFd = match &f.kind {
            _ if shared.common.contains_key(&(me, f.fd)) => {
                made = None;
                shared.common[&(me, f.fd)]
            }
            FdKind::SharedWith { pid, fd } if shared.own_opens.contains_key(&(*pid, *fd)) => {
                let first = &shared.own_opens[&(*pid, *fd)];
                made = Some(open_path(first, allow_changed).map_err(|why| rerr(me, why))?);
                -1
            }
            FdKind::SharedWith { pid, fd } => {
                made = None;
                *shared.common.get(&(*pid, *fd)).ok_or_else(|| {
                    rerr(
                        me,
                        format!("fd {}: fd {fd} of process {pid} is missing", f.fd),
                    )
                })?
            }
            FdKind::Path {
                inherited: Some(std),
                ..
            } if redirected[*std as usize % 3] => {
                made = None;
                *std
            }
            FdKind::Path { .. } => {
                made = Some(open_path(f, allow_changed).map_err(|why| rerr(me, why))?);
                -1
            }
            FdKind::Fifo { path, .. } => {
                // Does not block: the init holds the FIFO open for both ends.
                let fd =
                    nix::fcntl::open(path, reopen_flags(f.flags), nix::sys::stat::Mode::empty())
                        .map_err(|e| fd_err(f, &format!("open FIFO {}", path.display()), e))?;
                made = Some(fd);
                -1
            }
            FdKind::Ghost { .. } => {
                made = Some(open_ghost(f, shared).map_err(|why| rerr(me, why))?);
                -1
            }
            FdKind::Dup { of } => {
                let (_, n) = staged.iter().find(|(g, _)| g.fd == *of).ok_or_else(|| {
                    rerr(
                        me,
                        format!("fd {}: a copy of fd {of}, which is missing", f.fd),
                    )
                })?;
                made = None;
                *n
            }
            FdKind::PidFd { pid } => {
                made = Some(
                    files::pidfd::restore(*pid, f.flags)
                        .map_err(|why| rerr(me, format!("fd {}: {why}", f.fd)))?,
                );
                -1
            }
            kind @ (FdKind::EventFd { .. }
            | FdKind::SignalFd { .. }
            | FdKind::TimerFd(_)
            | FdKind::Inotify { .. }
            | FdKind::Epoll { .. }) => {
                let fd = files::anon::create(kind, f.flags)
                    .expect("an object without a file")
                    .map_err(|why| rerr(me, format!("fd {}: {why}", f.fd)))?;
                made = Some(fd);
                -1
            }
            FdKind::Pipe { id, write } => {
                let (r, w) = shared
                    .pipes
                    .get(id)
                    .ok_or_else(|| rerr(me, format!("fd {}: unknown pipe {id}", f.fd)))?;
                made = None;
                if *write {
                    *w
                } else {
                    *r
                }
            }
            FdKind::Inherited { std } => {
                made = None;
                *std
            }
            FdKind::Socket { id } => {
                made = None;
                *shared
                    .sockets
                    .get(id)
                    .ok_or_else(|| rerr(me, format!("fd {}: unknown socket {id}", f.fd)))?
            }
        };
        let n = match &made {
            Some(fd) => fcntl(fd, FcntlArg::F_DUPFD(stage_base)),
            None => fcntl(unsafe_borrow(src), FcntlArg::F_DUPFD(stage_base)),
        }
        .map_err(|err| rerr(me, format!("fd {}: dup: {err}", f.fd)))?;
        drop(made);
        staged.push((f, n));
    }
    // Close everything below the shared descriptors and the report pipes of the
    // ancestors (inherited), then move the staged ones in.
    for fd in (0..shared.base).chain(shared.base + READY_OFF..stage_base + 1024) {
        if fd != keep && !staged.iter().any(|(_, n)| *n == fd) {
            let _ = nix::unistd::close(fd);
        }
    }
    for (f, n) in &staged {
        dup2_raw(*n, f.fd).map_err(|err| rerr(me, format!("fd {}: dup2: {err}", f.fd)))?;
        let _ = nix::unistd::close(*n);
        let cloexec = f.flags & libc::O_CLOEXEC as u32 != 0;
        let _ = fcntl(
            unsafe_borrow(f.fd),
            FcntlArg::F_SETFD(if cloexec {
                FdFlag::FD_CLOEXEC
            } else {
                FdFlag::empty()
            }),
        );
        let saved = OFlag::from_bits_truncate(f.flags as i32);
        let by_path = matches!(f.kind, FdKind::Path { .. } | FdKind::Inherited { .. });
        if !by_path || saved.contains(OFlag::O_ASYNC) {
            // Status flags of the open file (a pipe read until EAGAIN must stay
            // non-blocking); files opened by path got them from open(2),
            // except O_ASYNC, which open(2) ignores.
            let keep = saved
                & (OFlag::O_NONBLOCK
                    | OFlag::O_APPEND
                    | OFlag::O_DIRECT
                    | OFlag::O_NOATIME
                    | OFlag::O_ASYNC);
            fcntl(unsafe_borrow(f.fd), FcntlArg::F_SETFL(keep))
                .map_err(|err| rerr(me, format!("fd {}: set its flags: {err}", f.fd)))?;
        }
    }
    // Registrations and locks name descriptors: only now are they in place.
    for f in &p.fds {
        if let Some(o) = &f.owner {
            files::owner::restore(unsafe_borrow(f.fd), o)
                .map_err(|why| rerr(me, format!("fd {}: {why}", f.fd)))?;
        }
        if let FdKind::Epoll { targets } = &f.kind {
            files::epoll::register(f.fd, targets).map_err(|(t, err)| {
                rerr(me, format!("fd {}: register fd {t} in epoll: {err}", f.fd))
            })?;
        }
        for l in &f.locks {
            files::lock::restore(unsafe_borrow(f.fd), l).map_err(|err| {
                let what = match &f.kind {
                    FdKind::Path { path, .. } => path.display().to_string(),
                    _ => "the file".into(),
                };
                let why = if matches!(err, nix::Error::EAGAIN | nix::Error::EACCES) {
                    "another process holds a conflicting lock".to_string()
                } else {
                    err.to_string()
                };
                rerr(
                    me,
                    format!("fd {}: cannot take its lock on {what} again: {why}", f.fd),
                )
            })?;
        }
    }
    let used = shm_used(p);
    for (r, w) in shared.pipes.values() {
        let _ = nix::unistd::close(*r);
        let _ = nix::unistd::close(*w);
    }
    let open: std::collections::BTreeSet<RawFd> = shared
        .fifos
        .values()
        .chain(shared.common.values())
        .chain(shared.sockets.values())
        .copied()
        .collect();
    for fd in open {
        let _ = nix::unistd::close(fd);
    }
    for (id, fd) in &shared.shm {
        if !used.contains(id) {
            let _ = nix::unistd::close(*fd);
        }
    }
    Ok(())
}

/// The shared memory objects and deleted files `p` maps (or runs, for a
/// deleted executable): kept open in it until its memory is rebuilt.
fn shm_used(p: &Proc) -> Vec<u64> {
    let mut used: Vec<u64> = p
        .vmas
        .iter()
        .filter_map(|v| match v.backing {
            Backing::SharedAnon { id, .. } | Backing::Ghost { id, .. } => Some(id),
            _ => None,
        })
        .chain(p.exe_ghost)
        .collect();
    used.sort_unstable();
    used.dedup();
    used
}

/// open(2) flags to open a saved file again: without those that create or
/// truncate, and without O_TMPFILE (a file made that way and linked later is
/// opened by its name; one never linked is a ghost).
fn reopen_flags(saved: u32) -> OFlag {
    const O_TMPFILE_BITS: i32 = 0o20000000 | libc::O_DIRECTORY;
    let mut bits = saved as i32;
    if bits & O_TMPFILE_BITS == O_TMPFILE_BITS {
        bits &= !O_TMPFILE_BITS;
    }
    OFlag::from_bits_truncate(bits)
        & !(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_TRUNC | OFlag::O_NOCTTY)
}

/// Refuses a file that changed since the checkpoint in a way that would make
/// the process read or write the wrong bytes: another file type, shorter than
/// the saved offset, or another size for a file open for writing.
fn check_unchanged(
    fd: &OwnedFd,
    f: &image::Fd,
    path: &Path,
    pos: u64,
    size: u64,
    ftype: u32,
) -> std::result::Result<(), String> {
    let st = nix::sys::stat::fstat(fd)
        .map_err(|e| format!("fd {}: stat {}: {e}", f.fd, path.display()))?;
    let now_type = st.st_mode & libc::S_IFMT;
    let changed = |what: String| {
        format!(
            "{} changed since the checkpoint ({what}); restart with --allow-changed-files to go on anyway",
            path.display()
        )
    };
    if ftype != 0 && now_type != ftype {
        return Err(changed("it is another kind of file".into()));
    }
    if now_type != libc::S_IFREG || pseudo_fs(fd) {
        return Ok(());
    }
    let now = st.st_size as u64;
    if now < pos {
        return Err(changed(format!(
            "{now} bytes, shorter than the saved offset {pos}"
        )));
    }
    let writing = f.flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
    // Appending writers (logs) only ever add at the end: growth is harmless.
    let appending = f.flags & libc::O_APPEND as u32 != 0;
    if writing && now != size && !(appending && now > size) {
        return Err(changed(format!("{now} bytes instead of {size}")));
    }
    Ok(())
}

/// Whether `fd` is a file of a filesystem made up by the kernel (/proc, /sys,
/// cgroups…), whose files say 0 bytes whatever they hold: nothing to compare.
fn pseudo_fs(fd: &OwnedFd) -> bool {
    const PSEUDO: &[libc::c_long] = &[
        libc::PROC_SUPER_MAGIC,
        libc::SYSFS_MAGIC,
        libc::CGROUP_SUPER_MAGIC,
        libc::CGROUP2_SUPER_MAGIC,
        libc::DEBUGFS_MAGIC,
        libc::TRACEFS_MAGIC,
        libc::SECURITYFS_MAGIC,
    ];
    nix::sys::statfs::fstatfs(fd)
        .is_ok_and(|s| PSEUDO.contains(&(s.filesystem_type().0 as libc::c_long)))
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    crate::sys::borrow_fd(fd)
}

fn dup2_raw(from: RawFd, to: RawFd) -> nix::Result<()> {
    crate::sys::dup2_raw(from, to)
}

/// A free address range of `len` bytes outside every mapping of `a` and `b`.
fn free_range(a: &[(u64, u64)], b: &[(u64, u64)], len: u64) -> u64 {
    let mut cand = 0x1000_0000_0000u64;
    loop {
        let clash = a.iter().chain(b).any(|&(s, e)| cand < e && s < cand + len);
        if !clash {
            return cand;
        }
        cand += 0x10_0000_0000;
    }
}

/// Replaces the address space and registers of a seized new process by the
/// saved ones and creates its other threads; returns them, stopped.
fn rebuild(t: &mut Tracee, p: &Proc, dir: &Path, shared: &Shared) -> Result<Vec<Tracee>> {
    let pid = t.label;
    let now = parse_maps(
        &std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| rerr(pid, e))?,
    );
    let vdso = now
        .iter()
        .find(|m| m.path == "[vdso]")
        .ok_or_else(|| rerr(pid, "no vDSO"))?;
    t.find_gadget(vdso.start, vdso.end)?;
    let base = t.regs()?;
    // Its mask as made (its cpuset's), before it is pinned for the rebuild.
    let default_cpus = affinity::get(t.pid);
    if default_cpus.is_some() {
        affinity::pin_together(t.pid);
    }
    // A group whose leader was made after this process (in another branch)
    // exists now.
    if p.pgid > 1
        && nix::unistd::getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() != p.pgid)
    {
        t.syscall_ok(
            &base,
            "join its process group",
            libc::SYS_setpgid,
            [0, p.pgid as u64, 0, 0, 0, 0],
        )?;
    }
    // The kernel writes to a registered rseq area on every return to user space:
    // the restorer's area goes away with its memory, so it is unregistered first.
    const RSEQ_FLAG_UNREGISTER: u64 = 1;
    if let Some((addr, size, sig)) = t.rseq()? {
        t.syscall_ok(
            &base,
            "rseq unregister",
            libc::SYS_rseq,
            [addr, size as u64, RSEQ_FLAG_UNREGISTER, sig as u64, 0, 0],
        )?;
    }
    let saved: Vec<(u64, u64)> = p.vmas.iter().map(|v| (v.start, v.end)).collect();
    let current: Vec<(u64, u64)> = now.iter().map(|m| (m.start, m.end)).collect();
    const SCRATCH_LEN: u64 = 16 * PAGE;
    let scratch = free_range(&saved, &current, SCRATCH_LEN);
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    t.syscall_ok(
        &base,
        "mmap scratch",
        libc::SYS_mmap,
        [scratch, SCRATCH_LEN, rw, anon, u64::MAX, 0],
    )?;
    // Drop everything of the restorer except the vDSO areas.
    for m in &now {
        if m.path.starts_with("[v") {
            continue;
        }
        t.syscall_ok(
            &base,
            "munmap",
            libc::SYS_munmap,
            [m.start, m.end - m.start, 0, 0, 0, 0],
        )?;
    }
    // Move the vDSO areas, keeping their relative offsets, via a free area.
    let specials: Vec<_> = now
        .iter()
        .filter(|m| ["[vdso]", "[vvar]", "[vvar_vclock]"].contains(&m.path.as_str()))
        .collect();
    let lo = specials.iter().map(|m| m.start).min().unwrap_or(0);
    let span = specials.iter().map(|m| m.end).max().unwrap_or(0) - lo;
    let tmp = free_range(
        &saved,
        &[(scratch, scratch + SCRATCH_LEN), (lo, lo + span)],
        span,
    );
    let gadget_off = t.gadget - vdso.start;
    let mut moves = Vec::new();
    for m in &specials {
        let target = p
            .vmas
            .iter()
            .find(|v| {
                v.backing
                    == Backing::Special {
                        name: m.path.clone(),
                    }
            })
            .ok_or_else(|| rerr(pid, format!("the image has no {} area", m.path)))?;
        if target.end - target.start != m.end - m.start {
            return Err(rerr(
                pid,
                format!("{} has another size on this kernel", m.path),
            ));
        }
        moves.push((
            m.path.clone(),
            m.start,
            m.end - m.start,
            tmp + (m.start - lo),
            target.start,
        ));
    }
    let remap = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    for pass in 0..2 {
        for (name, from, len, via, to) in &moves {
            let (src, dst) = if pass == 0 {
                (*from, *via)
            } else {
                (*via, *to)
            };
            if src == dst {
                continue;
            }
            t.syscall_ok(
                &base,
                "mremap the vDSO",
                libc::SYS_mremap,
                [src, *len, *len, remap, dst, 0],
            )?;
            if name == "[vdso]" {
                t.gadget = dst + gadget_off;
            }
        }
    }

    // Map every saved area and fill in its saved pages.
    let pages_path = dir.join(&p.pages.file);
    let mut pos = 0u64;
    let mut pages_fd: Option<u64> = None;
    let mut populate = true;
    let put_str = |t: &Tracee, s: &Path| -> Result<u64> {
        let c = CString::new(s.as_os_str().as_encoded_bytes()).map_err(|e| rerr(pid, e))?;
        t.write_mem(scratch, c.as_bytes_with_nul())?;
        Ok(scratch)
    };
    for v in &p.vmas {
        let len = v.end - v.start;
        let mut prot = v.prot as u64;
        if !v.runs.is_empty() {
            prot |= rw;
        }
        match &v.backing {
            Backing::Special { .. } => continue,
            Backing::Anon => {
                let mut flags = anon;
                if procstate::grows_down(&v.advice)
                    || (v.start <= p.mm.start_stack && p.mm.start_stack < v.end)
                {
                    flags |= libc::MAP_GROWSDOWN as u64;
                }
                t.syscall_ok(
                    &base,
                    "mmap",
                    libc::SYS_mmap,
                    [v.start, len, prot, flags, u64::MAX, 0],
                )?;
            }
            Backing::File {
                path,
                offset,
                shared: is_shared,
            } => {
                let addr = put_str(t, path)?;
                let mode = if *is_shared && v.prot & libc::PROT_WRITE as u32 != 0 {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                let fd = t
                    .syscall_ok(
                        &base,
                        "open a mapped file",
                        libc::SYS_open,
                        [addr, mode as u64, 0, 0, 0, 0],
                    )
                    .map_err(|e| rerr(pid, format!("{}: {e}", path.display())))?;
                let kind = if *is_shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                } as u64;
                let r = t.syscall_ok(
                    &base,
                    "mmap a file",
                    libc::SYS_mmap,
                    [
                        v.start,
                        len,
                        prot,
                        kind | libc::MAP_FIXED as u64,
                        fd,
                        *offset,
                    ],
                );
                t.syscall(&base, libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                r?;
            }
            Backing::Ghost {
                id,
                offset,
                shared: is_shared,
            } => {
                let fd = shared
                    .shm
                    .get(id)
                    .ok_or_else(|| rerr(pid, format!("unknown deleted file {id}")))?;
                let kind = if *is_shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                t.syscall_ok(
                    &base,
                    "mmap a deleted file",
                    libc::SYS_mmap,
                    [
                        v.start,
                        len,
                        prot,
                        (kind | libc::MAP_FIXED) as u64,
                        *fd as u64,
                        *offset,
                    ],
                )?;
            }
            Backing::SysvShm { shmid, readonly } => {
                const SHM_RDONLY: u64 = 0o10000;
                const SHM_EXEC: u64 = 0o100000;
                let mut flags = if *readonly { SHM_RDONLY } else { 0 };
                if v.prot & libc::PROT_EXEC as u32 != 0 {
                    flags |= SHM_EXEC;
                }
                let at = t
                    .syscall_ok(
                        &base,
                        "shmat",
                        libc::SYS_shmat,
                        [*shmid as u64, v.start, flags, 0, 0, 0],
                    )
                    .map_err(|e| rerr(pid, format!("SysV shared memory {shmid}: {e}")))?;
                let mut given = libc::PROT_READ as u64;
                if !*readonly {
                    given |= libc::PROT_WRITE as u64;
                }
                if flags & SHM_EXEC != 0 {
                    given |= libc::PROT_EXEC as u64;
                }
                if at != v.start {
                    return Err(rerr(
                        pid,
                        format!(
                            "SysV shared memory {shmid} attached at {at:#x}, not {:#x}",
                            v.start
                        ),
                    ));
                }
                // mprotect'ed since it was attached: put right below.
                prot = given;
            }
            Backing::SharedAnon { id, offset } => {
                let fd = shared
                    .shm
                    .get(id)
                    .ok_or_else(|| rerr(pid, format!("unknown shared memory {id}")))?;
                let flags = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
                t.syscall_ok(
                    &base,
                    "mmap shared memory",
                    libc::SYS_mmap,
                    [v.start, len, v.prot as u64, flags, *fd as u64, *offset],
                )?;
            }
        }
        if !v.runs.is_empty() && pages_fd.is_none() {
            // The process reads its own pages from the image (one copy, in its
            // own context) rather than the restorer writing them through
            // /proc/PID/mem page by page.
            let addr = put_str(t, &pages_path)?;
            pages_fd = Some(t.syscall_ok(
                &base,
                "open the page file",
                libc::SYS_open,
                [addr, libc::O_RDONLY as u64, 0, 0, 0, 0],
            )?);
        }
        for &(addr, n) in &v.runs {
            let total = n * PAGE;
            if n >= POPULATE_MIN_PAGES && populate {
                // Faulting the pages in one call is cheaper than one fault per
                // page inside pread; kernels before 5.14 say EINVAL.
                populate = t.syscall(
                    &base,
                    libc::SYS_madvise,
                    [addr, total, MADV_POPULATE_WRITE, 0, 0, 0],
                )? == 0;
            }
            let mut done = 0u64;
            while done < total {
                let fd = pages_fd.unwrap_or(u64::MAX);
                let got = t.syscall_ok(
                    &base,
                    "read saved pages",
                    libc::SYS_pread64,
                    [fd, addr + done, total - done, pos, 0, 0],
                )?;
                if got == 0 {
                    return Err(CkptError::BadImage {
                        path: pages_path.clone(),
                        reason: "page file too short".into(),
                    });
                }
                pos += got;
                done += got;
            }
        }
        if prot != v.prot as u64 {
            t.syscall_ok(
                &base,
                "mprotect",
                libc::SYS_mprotect,
                [v.start, len, v.prot as u64, 0, 0, 0],
            )?;
        }
        if !v.advice.is_empty() {
            // mlock(2) fails on a mapping without access (it faults the pages
            // in): a locked one (a thread stack's guard page under
            // mlockall(MCL_FUTURE)) is locked while readable.
            let none = v.prot == libc::PROT_NONE as u32 && procstate::locks(&v.advice);
            let mprotect = |p: i32| {
                t.syscall_ok(
                    &base,
                    "mprotect",
                    libc::SYS_mprotect,
                    [v.start, len, p as u64, 0, 0, 0],
                )
            };
            if none {
                mprotect(libc::PROT_READ)?;
            }
            procstate::restore_advice(t, &base, v.start, v.end, &v.advice)?;
            if none {
                mprotect(libc::PROT_NONE)?;
            }
        }
    }

    if let Some(fd) = pages_fd {
        t.syscall(&base, libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    if pos != p.pages.len {
        return Err(CkptError::BadImage {
            path: pages_path,
            reason: "page file longer than its pages".into(),
        });
    }

    // mm fields, auxv and exe link in one prctl(PR_SET_MM_MAP).
    let exe_ghost = p.exe_ghost.and_then(|id| shared.shm.get(&id));
    let exe_fd = if let Some(fd) = exe_ghost {
        *fd as u32
    } else if p.exe.exists() {
        let addr = put_str(t, &p.exe)?;
        t.syscall_ok(
            &base,
            "open the executable",
            libc::SYS_open,
            [addr, libc::O_RDONLY as u64, 0, 0, 0, 0],
        )? as u32
    } else {
        u32::MAX
    };
    let auxv: Vec<u8> = p.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    let auxv_addr = scratch + 2 * PAGE;
    t.write_mem(auxv_addr, &auxv)?;
    let map_addr = scratch + PAGE;
    let bytes = p.mm.prctl_mm_map(auxv_addr, auxv.len() as u32, exe_fd);
    t.write_mem(map_addr, &bytes)?;
    let r = t.syscall_ok(
        &base,
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [PR_SET_MM, PR_SET_MM_MAP, map_addr, bytes.len() as u64, 0, 0],
    );
    if exe_fd != u32::MAX && exe_ghost.is_none() {
        t.syscall(&base, libc::SYS_close, [exe_fd as u64, 0, 0, 0, 0, 0])?;
    }
    r?;
    for id in shm_used(p) {
        if let Some(fd) = shared.shm.get(&id) {
            t.syscall(&base, libc::SYS_close, [*fd as u64, 0, 0, 0, 0, 0])?;
        }
    }
    log::debug!("process {pid}: memory rebuilt");
    // The other threads, created by the leader while it still has the
    // restorer's privileges (clone3 with set_tid needs them).
    t.trace_clones()?;
    let mut threads = Vec::new();
    for th in p.threads.iter().skip(1) {
        let mut n = thread::create(t, &base, scratch, th.tid, th.clear_tid)?;
        n.gadget = t.gadget;
        threads.push(n);
    }
    for (i, th) in p.threads.iter().enumerate() {
        let tt: &Tracee = if i == 0 { t } else { &threads[i - 1] };
        let own = tt.regs()?;
        // Threads inherit the leader's name, set (truncated) at its setup.
        let has = thread::Inherited {
            comm: &p.comm,
            clear_tid: i > 0,
        };
        thread::restore(tt, &own, scratch, th, &has)?;
        set_credentials(tt, &own, p, scratch)?;
        thread::queue_signals(tt, &own, scratch, p.pid, &th.pending, false)?;
    }
    // Changing uids reset the dumpable flag (every thread's change did):
    // the saved one is set last.
    procstate::restore_dumpable(t, &base, &p.settings)?;
    log::debug!("process {pid}: threads created and set up");
    timer::restore(t, &base, scratch, &p.timers)?;
    thread::queue_signals(t, &base, scratch, p.pid, &p.shared_pending, true)?;
    t.syscall_ok(
        &base,
        "munmap scratch",
        libc::SYS_munmap,
        [scratch, SCRATCH_LEN, 0, 0, 0, 0],
    )?;
    // After the last mapping the restorer makes in it.
    procstate::restore_mlock_future(t, &base, &p.settings)?;
    for (i, th) in p.threads.iter().enumerate() {
        let tt: &Tracee = if i == 0 { t } else { &threads[i - 1] };
        let words: [u64; sys::REGS_WORDS] = th
            .regs
            .as_slice()
            .try_into()
            .map_err(|_| rerr(th.tid, "bad register block"))?;
        tt.set_regs(sys::words_to_regs(&words))?;
        let xs = image::from_hex(&th.xstate).ok_or_else(|| rerr(th.tid, "bad FPU state"))?;
        tt.set_xstate(&xs)?;
        tt.set_sigmask(th.sigmask)?;
        if let Some(default) = &default_cpus {
            // CPUs this machine (or cpuset) lacks are dropped; a thread left
            // with none runs anywhere its cpuset allows.
            let own: Vec<usize> = th
                .cpus
                .iter()
                .flatten()
                .copied()
                .filter(|c| default.contains(c))
                .collect();
            let cpus = if own.is_empty() { default } else { &own };
            affinity::set(tt.pid, cpus)
                .map_err(|e| rerr(th.tid, format!("sched_setaffinity: {e}")))?;
        }
    }
    Ok(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_failure_is_said_once() {
        let e = reported(
            2,
            "restore of process 15 failed: fd 3: cannot open /x: ENOENT",
        );
        assert_eq!(
            e.to_string(),
            "restore of process 15 failed: fd 3: cannot open /x: ENOENT"
        );
        let e = reported(2, "it ended during setup");
        assert_eq!(
            e.to_string(),
            "restore of process 2 failed: it ended during setup"
        );
    }
}
