//! The checkpoint image: one directory per application and version,
//! `STATE/images/APP/VERSION/`, holding `image.json` (a checked file, see
//! [`crate::fsutil`]) and one `pages-PID.img` per process plus `shm-N.img` and
//! `pipe-N.img` for shared memory and pipe contents, each with its CRC32 and
//! length recorded in `image.json`. A version is written under `.VERSION.tmp` and
//! renamed when complete, so a half-written version is never visible.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const MAGIC: &str = "xos-image";
pub const FORMAT: u32 = 4;

/// A whole application image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub app: u64,
    pub version: u64,
    /// Seconds since the epoch.
    pub created: u64,
    /// `uname -r` of the kernel the image was taken on (the vDSO layout and the
    /// meaning of several fields depend on it).
    pub kernel: String,
    /// XSAVE features (XCR0 bits) the saved FPU states use.
    pub xfeatures: u64,
    pub command: Vec<String>,
    pub cwd: PathBuf,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub limits: crate::cgroup::Limits,
    pub processes: Vec<Proc>,
    /// Children that had ended but were not reaped yet: created again and
    /// ended the same way, for their parent's wait.
    #[serde(default)]
    pub zombies: Vec<Zombie>,
    pub shared: Vec<Blob>,
    /// Unlinked files (deleted files, memfds): their content is the `shared`
    /// blob with the same id.
    #[serde(default)]
    pub ghosts: Vec<Ghost>,
    pub pipes: Vec<PipeImg>,
    /// Named pipes open in the application, with their unread bytes.
    #[serde(default)]
    pub fifos: Vec<FifoImg>,
    /// The application's network (`krgcr-run --net`), created again at restart.
    #[serde(default)]
    pub net: crate::net::NetMode,
    /// Every socket of the application, those in flight included.
    #[serde(default)]
    pub sockets: Vec<crate::ckpt::sockets::SocketImg>,
    /// The unread data of every socket (see `SocketImg::data`).
    #[serde(default)]
    pub socket_data: Option<Blob>,
    /// The application's SysV IPC namespace is saved in `ipc/` (as
    /// `ipccheckpoint --all` writes it): a process had shared memory attached,
    /// or the application's own namespace held any object.
    #[serde(default)]
    pub ipc: bool,
    /// How the checkpoint went (`checkpoint -c --stats`); None in images
    /// written before these were recorded.
    #[serde(default)]
    pub stats: Option<Stats>,
}

/// Figures of one checkpoint, as CRIU's `stats-dump` has them (times in
/// microseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// From the start until every task was stopped.
    pub freezing_time: u64,
    /// From the first task stopped until all ran again (or were killed).
    pub frozen_time: u64,
    /// Reading the processes' memory.
    pub memdump_time: u64,
    /// Writing that memory into the image.
    pub memwrite_time: u64,
    /// Pages of private mappings looked at (pagemap).
    pub pages_scanned: u64,
    /// Pages whose content was written into the image.
    pub pages_written: u64,
}

/// A FIFO (named pipe): its path and, as for a pipe, its unread bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FifoImg {
    pub path: PathBuf,
    pub pipe: PipeImg,
}

/// An open or mapped file without a name (see `files::ghost`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ghost {
    pub id: u64,
    /// Where it was, without " (deleted)"; for a memfd, "/memfd:NAME".
    pub path: PathBuf,
    /// The name of a memfd.
    pub memfd: Option<String>,
    /// Permission bits.
    pub mode: u32,
    /// memfd seals (F_GET_SEALS).
    pub seals: i32,
}

/// A data file of the image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Blob {
    pub id: u64,
    pub file: String,
    pub len: u64,
    pub crc: u32,
}

/// A pipe of the application, with its unread bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipeImg {
    pub id: u64,
    pub capacity: u64,
    pub data: Blob,
}

/// One process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    /// pid, parent, group and session in the application's PID namespace; 0 for a
    /// group or session led from outside it.
    pub pid: i32,
    /// SysV semaphore adjustments (SEM_UNDO) the kernel makes when the
    /// process ends (seen only by a checkpoint --kill, see `semundo`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sem_undo: Vec<SemUndo>,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    pub exe: PathBuf,
    pub cwd: PathBuf,
    pub umask: u32,
    /// real, effective, saved, filesystem.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub no_new_privs: bool,
    pub caps: Caps,
    pub personality: u64,
    /// (resource, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Every thread, the leader (tid == pid) first.
    pub threads: Vec<Thread>,
    /// Signals queued for the whole process, as 128-byte siginfos (hex), in order.
    pub shared_pending: Vec<String>,
    /// The signal that put the process in a job-control stop, if it was stopped.
    pub stopped: Option<i32>,
    /// (signal, handler, flags, restorer, mask) for every signal not at default.
    pub sigactions: Vec<(i32, u64, u64, u64, u64)>,
    /// Interval timers (real, virtual, profiling): interval and value as
    /// (sec, usec, sec, usec).
    pub itimers: Vec<[i64; 4]>,
    /// POSIX timers (timer_create(2)).
    pub timers: Vec<PosixTimer>,
    pub mm: Mm,
    pub auxv: Vec<u64>,
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
    pub pages: Blob,
    /// prctl settings and securebits (see `procstate`).
    #[serde(default)]
    pub settings: Settings,
    /// The working directory had been removed (`cwd` is where it was).
    #[serde(default)]
    pub cwd_deleted: bool,
    /// The executable had been removed: the ghost (deleted file) holding it.
    #[serde(default)]
    pub exe_ghost: Option<u64>,
}

/// The kernel's default timer slack (50 µs), what a process has unless told.
pub const DEFAULT_TIMERSLACK: u64 = 50_000;

/// One adjustment of a process's SysV semaphore undo list: semaphore `num`
/// of array `semid` gets `adj` added when the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemUndo {
    pub semid: i32,
    pub num: u16,
    pub adj: i32,
}

/// Process-wide settings (prctl(2), securebits(7)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// PR_SET_DUMPABLE: 0, 1 or 2 (fs.suid_dumpable's; given again only
    /// where that sysctl is 2, else 0).
    pub dumpable: u32,
    pub child_subreaper: bool,
    /// PR_SET_THP_DISABLE.
    pub thp_disable: bool,
    /// PR_SET_TIMERSLACK, in nanoseconds.
    pub timerslack_ns: u64,
    pub securebits: u32,
    /// mlockall(2) flags in force for future mappings (MCL_FUTURE, with
    /// MCL_ONFAULT), 0 for none.
    #[serde(default)]
    pub mlock_future: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            dumpable: 1,
            child_subreaper: false,
            thp_disable: false,
            timerslack_ns: DEFAULT_TIMERSLACK,
            securebits: 0,
            mlock_future: 0,
        }
    }
}

/// An ended process not yet reaped by its parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Zombie {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Its wait status, as waitpid(2) would give it.
    pub status: i32,
}

/// One thread of a process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Thread {
    /// Thread id in the application's PID namespace.
    pub tid: i32,
    /// General registers in `user_regs_struct` order (with `fs_base`, the TLS),
    /// fixed up so that an interrupted system call is entered again.
    pub regs: Vec<u64>,
    /// The XSAVE area, hex.
    pub xstate: String,
    pub sigmask: u64,
    /// Signals queued for this thread only, as 128-byte siginfos (hex), in order.
    pub pending: Vec<String>,
    /// sigaltstack(2): (sp, flags, size), or None when disabled.
    pub altstack: Option<(u64, u32, u64)>,
    /// Registered rseq area (address, size, signature).
    pub rseq: Option<(u64, u32, u32)>,
    /// set_robust_list(2): (head, length); (0, 0) when none.
    pub robust_list: (u64, u64),
    /// set_tid_address(2): the clear_child_tid word that pthread_join waits on.
    pub clear_tid: u64,
    pub comm: String,
    /// Scheduling policy, real-time priority and nice value.
    pub policy: i32,
    pub rt_priority: i32,
    pub nice: i32,
    /// PR_SET_PDEATHSIG.
    pub pdeathsig: i32,
    /// The CPUs it may run on (sched_setaffinity(2)), when narrower than its
    /// application's default; those a restart's machine lacks are dropped.
    #[serde(default)]
    pub cpus: Option<Vec<usize>>,
}

/// A POSIX timer of a process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    /// sigev_notify (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID…).
    pub notify: i32,
    pub signo: i32,
    /// sigev_value.
    pub value: u64,
    /// Thread for SIGEV_THREAD_ID, in the application's PID namespace.
    pub tid: i32,
    /// it_interval and it_value (remaining) as (sec, nsec, sec, nsec).
    pub spec: [i64; 4],
}

/// Capability sets, as bit masks (bit N = capability N).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

/// The mm fields of the process (prctl PR_SET_MM_MAP).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mm {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

impl Mm {
    /// `struct prctl_mm_map` (linux/prctl.h) in native byte order: these
    /// fields in this order, then the auxv address and size and the descriptor
    /// of the new exe link (u32::MAX to keep it).
    pub fn prctl_mm_map(&self, auxv: u64, auxv_size: u32, exe_fd: u32) -> Vec<u8> {
        let words = [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
            auxv,
        ];
        let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        b.extend_from_slice(&auxv_size.to_ne_bytes());
        b.extend_from_slice(&exe_fd.to_ne_bytes());
        b
    }
}

/// What backs a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backing {
    /// Private anonymous memory (heap, stack, mmap).
    Anon,
    /// A file, privately (changed pages saved) or shared (by reference).
    File {
        path: PathBuf,
        offset: u64,
        shared: bool,
    },
    /// Shared anonymous memory: the `shared` blob with this id, from `offset`.
    SharedAnon { id: u64, offset: u64 },
    /// A file without a name (the ghost with this id), privately (changed pages
    /// saved) or shared.
    Ghost { id: u64, offset: u64, shared: bool },
    /// A SysV shared memory segment (of the saved IPC namespace), attached
    /// whole, read-only or not.
    SysvShm { shmid: i32, readonly: bool },
    /// The kernel's vDSO areas, moved to the saved addresses on restart.
    Special { name: String },
}

/// One mapping.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    pub backing: Backing,
    /// Saved page runs (address, number of pages), in the order of the data file.
    pub runs: Vec<(u64, u64)>,
    /// madvise(2) advice and mlock(2) state (`dontfork`, `locked`, `growsdown`…,
    /// see `procstate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advice: Vec<String>,
}

/// One open file descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    /// open(2) flags as in fdinfo, O_CLOEXEC included.
    pub flags: u32,
    pub kind: FdKind,
    /// Locks held through this descriptor.
    #[serde(default)]
    pub locks: Vec<FileLock>,
    /// F_SETOWN_EX / F_SETSIG of its open file, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<FdOwner>,
}

/// Who gets SIGIO/SIGURG for an open file (fcntl(2) F_SETOWN_EX) and which
/// signal (F_SETSIG; 0 for SIGIO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdOwner {
    /// F_OWNER_TID (0), F_OWNER_PID (1) or F_OWNER_PGRP (2).
    pub kind: i32,
    /// Thread, process or group id in the application's PID namespace; 0 for none.
    pub pid: i32,
    pub sig: i32,
}

/// A file lock (see `files::lock`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileLock {
    pub kind: LockKind,
    pub write: bool,
    pub start: u64,
    /// Last byte, None for "to the end of the file".
    pub end: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Flock,
    Posix,
    Ofd,
    /// A lease (fcntl(2) F_SETLEASE): read or write.
    Lease,
}

/// A timerfd: clock, expirations not read, time left and interval (sec, nsec).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimerFd {
    pub clock: i32,
    pub ticks: u64,
    pub value: (i64, i64),
    pub interval: (i64, i64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FdKind {
    /// A file reopened by path at this offset; its size and file type (S_IFMT
    /// bits) then, checked again at restart.
    Path {
        path: PathBuf,
        pos: u64,
        #[serde(default)]
        size: u64,
        #[serde(default)]
        ftype: u32,
        /// The standard descriptor of the application's init this file was
        /// (krgcr-run --stdin/--stdout/--stderr): `restart --stdout` and the
        /// like send it elsewhere.
        #[serde(default)]
        inherited: Option<i32>,
    },
    /// A FIFO, opened again by its path (its content is the fifo with this id).
    Fifo {
        path: PathBuf,
        id: u64,
    },
    /// A file without a name: the ghost with this id, reopened, at this offset.
    Ghost {
        id: u64,
        pos: u64,
    },
    /// Another number for the open file of an earlier descriptor (dup(2)).
    Dup {
        of: i32,
    },
    /// The open file of descriptor `fd` of process `pid` (saved earlier in the
    /// image), shared with it (inherited across fork(2) or passed over a
    /// socket): a file by path, a deleted file, an eventfd, signalfd, timerfd,
    /// inotify or epoll.
    SharedWith {
        pid: i32,
        fd: i32,
    },
    EventFd {
        count: u64,
        semaphore: bool,
    },
    /// The signals it reads, bit N-1 for signal N.
    SignalFd {
        mask: u64,
    },
    TimerFd(TimerFd),
    /// (target fd, events, data) of every registration.
    Epoll {
        targets: Vec<(i32, u32, u64)>,
    },
    /// (watch descriptor, mask, path) of every watch.
    Inotify {
        watches: Vec<(i32, u32, PathBuf)>,
    },
    /// A socket of the application (the image's socket with this id).
    Socket {
        id: u64,
    },
    /// A pidfd (pidfd_open(2)) of process `pid` of the application.
    PidFd {
        pid: i32,
    },
    /// One end of a pipe of the application.
    Pipe {
        id: u64,
        write: bool,
    },
    /// The standard descriptor `std` of the application's init (terminal or stdio
    /// inherited from krgcr-run): reconnected to the restarter's.
    Inherited {
        std: i32,
    },
}

/// Directory of all versions of an application.
pub fn app_dir(state: &Path, app: u64) -> PathBuf {
    state.join("images").join(app.to_string())
}

/// Directory of one version.
pub fn version_dir(state: &Path, app: u64, version: u64) -> PathBuf {
    app_dir(state, app).join(version.to_string())
}

/// Complete versions of an application, ascending.
pub fn versions(state: &Path, app: u64) -> Vec<u64> {
    crate::fsutil::numbered_entries(&app_dir(state, app))
}

// Without a formatter per byte: an XSAVE area is 2-3 KiB per thread, saved
// while the application is stopped.
pub fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// XCR0 feature bits recorded in the software-reserved bytes of an XSAVE area
/// as PTRACE_GETREGSET gives it (their first word).
pub fn xstate_features(x: &[u8]) -> u64 {
    x.get(464..472)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xfe, 0xff, 0x10];
        assert_eq!(from_hex(&to_hex(&b)).unwrap(), b);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }

    #[test]
    fn prctl_mm_map_layout() {
        let mm = super::Mm {
            brk: 6,
            env_end: 11,
            ..Default::default()
        };
        let b = mm.prctl_mm_map(12, 13, 14);
        // sizeof(struct prctl_mm_map) on x86-64, as PR_SET_MM_MAP_SIZE reports.
        assert_eq!(b.len(), 104);
        let word = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!((word(5), word(10), word(11)), (6, 11, 12));
        assert_eq!(
            &b[96..],
            &[13u32.to_ne_bytes(), 14u32.to_ne_bytes()].concat()[..]
        );
    }
}
