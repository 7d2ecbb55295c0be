//! Helpers of the SysV IPC tests: a forked child in a private IPC namespace, and
//! direct system calls (libc) to create and inspect objects independently of the
//! code under test.
#![allow(dead_code)]

use std::ffi::c_void;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::show;

/// The xos binary under test.
pub fn xos() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xos"))
}

/// Runs `xos APPLET ARGS...` and returns its output.
pub fn run(applet: &str, args: &[&str]) -> Output {
    Command::new(xos())
        .arg(applet)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run xos")
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts failure with status 1 and exactly one line on stderr; returns that line.
pub fn fails(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line of error: {err:?}");
    err
}

/// Runs `body` in a forked child that has its own IPC namespace, so that nothing
/// it creates can outlive it, and fails the calling test with the child's panic
/// message if the body fails.
pub fn in_private_ipc_ns(body: impl FnOnce()) {
    use nix::sys::wait::{waitpid, WaitStatus};
    // Close-on-exec: processes the body starts must not hold the pipe open.
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // SAFETY: the child runs only the test body (it may start threads and
    // processes of its own) and ends with _exit, never returning into the harness.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(rd);
            let report = std::sync::Mutex::new(std::fs::File::from(wr));
            std::panic::set_hook(Box::new(move |info| {
                if let Ok(mut f) = report.lock() {
                    let _ = write!(f, "{info}");
                }
            }));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC)
                    .expect("unshare(CLONE_NEWIPC)");
                body();
            }));
            // SAFETY: _exit ends the child without running the harness's handlers.
            unsafe { libc::_exit(if r.is_ok() { 0 } else { 101 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            let st = waitpid(child, None).unwrap();
            assert_eq!(
                st,
                WaitStatus::Exited(child, 0),
                "the test failed in its IPC namespace:\n{msg}"
            );
        }
    }
}

/// Moves the calling (child) process into a new, empty IPC namespace.
pub fn new_ipc_ns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC).expect("unshare(CLONE_NEWIPC)");
}

fn check(r: libc::c_int, what: &str) -> libc::c_int {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

/// Writes a file of /proc/sys/kernel.
pub fn sysctl(name: &str, value: &str) {
    std::fs::write(format!("/proc/sys/kernel/{name}"), value)
        .unwrap_or_else(|e| panic!("write kernel.{name}={value}: {e}"));
}

/// Reads a file of /proc/sys/kernel.
pub fn read_sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// (key, id) of every object of `kind` ("msg", "sem", "shm") in the namespace.
pub fn listing(kind: &str) -> Vec<(i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/sysvipc/{kind}")).unwrap();
    let mut v: Vec<(i32, i32)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect();
    v.sort();
    v
}

/// Everything in the namespace, for "nothing was created" checks.
pub fn everything() -> [Vec<(i32, i32)>; 3] {
    [listing("msg"), listing("sem"), listing("shm")]
}

/// Runs `f` with the effective uid/gid set to `uid`/`gid` (the creator of the
/// objects `f` makes), then becomes root again. Only in a single-threaded child.
pub fn as_creator<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    use nix::unistd::{setegid, seteuid, Gid, Uid};
    setegid(Gid::from_raw(gid)).unwrap();
    seteuid(Uid::from_raw(uid)).unwrap();
    let r = f();
    seteuid(Uid::from_raw(0)).unwrap();
    setegid(Gid::from_raw(0)).unwrap();
    r
}

// ------------------------------------------------------------------ queues

pub fn msg_create(key: i32, mode: i32) -> i32 {
    // SAFETY: no pointers.
    check(
        unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | mode) },
        "msgget",
    )
}

pub fn msg_stat(id: i32) -> libc::msqid_ds {
    // SAFETY: a zeroed msqid_ds is valid and the kernel fills it.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is writable.
    check(
        unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) },
        "msgctl IPC_STAT",
    );
    ds
}

pub fn msg_set(id: i32, ds: &mut libc::msqid_ds) {
    // SAFETY: IPC_SET reads `ds`.
    check(
        unsafe { libc::msgctl(id, libc::IPC_SET, ds) },
        "msgctl IPC_SET",
    );
}

pub fn msg_rm(id: i32) {
    // SAFETY: no buffer for IPC_RMID.
    check(
        unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) },
        "msgctl IPC_RMID",
    );
}

pub fn msg_send(id: i32, mtype: i64, text: &[u8]) {
    let mut buf = vec![0u8; 8 + text.len()];
    buf[..8].copy_from_slice(&mtype.to_ne_bytes());
    buf[8..].copy_from_slice(text);
    // SAFETY: `buf` is a msgbuf with `text.len()` bytes of text.
    check(
        unsafe {
            libc::msgsnd(
                id,
                buf.as_ptr() as *const c_void,
                text.len(),
                libc::IPC_NOWAIT,
            )
        },
        "msgsnd",
    );
}

fn msg_get(id: i32, arg: i64, flags: i32, cap: usize) -> Option<(i64, Vec<u8>)> {
    let mut buf = vec![0u64; 1 + cap.div_ceil(8)];
    // SAFETY: `buf` holds a long and `cap` bytes of text.
    let n = unsafe { libc::msgrcv(id, buf.as_mut_ptr() as *mut c_void, cap, arg, flags) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENOMSG), "msgrcv: {e}");
        return None;
    }
    // SAFETY: the kernel wrote a long and `n` bytes of text.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, 8 + n as usize) };
    Some((buf[0] as i64, bytes[8..].to_vec()))
}

/// Every message, copied (MSG_COPY) without changing the queue.
pub fn msg_peek_all(id: i32, cap: usize) -> Vec<(i64, Vec<u8>)> {
    (0..)
        .map_while(|i| msg_get(id, i, 0o40000 | libc::IPC_NOWAIT, cap))
        .collect()
}

/// Every message, received (the queue ends empty).
pub fn msg_recv_all(id: i32, cap: usize) -> Vec<(i64, Vec<u8>)> {
    std::iter::from_fn(|| msg_get(id, 0, libc::IPC_NOWAIT, cap)).collect()
}

// ------------------------------------------------------------------ semaphores

pub fn sem_create(key: i32, n: i32, mode: i32) -> i32 {
    // SAFETY: no pointers.
    check(
        unsafe { libc::semget(key, n, libc::IPC_CREAT | libc::IPC_EXCL | mode) },
        "semget",
    )
}

pub fn sem_stat(id: i32) -> libc::semid_ds {
    // SAFETY: a zeroed semid_ds is valid and the kernel fills it.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: union semun `buf` points to `ds`.
    check(
        unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) },
        "semctl IPC_STAT",
    );
    ds
}

pub fn sem_set_owner(id: i32, uid: u32, gid: u32, mode: u16) {
    let mut ds = sem_stat(id);
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    ds.sem_perm.mode = mode;
    // SAFETY: union semun `buf` points to `ds`.
    check(
        unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) },
        "semctl IPC_SET",
    );
}

pub fn sem_setall(id: i32, values: &[u16]) {
    // SAFETY: union semun `array` with one value per semaphore.
    check(
        unsafe { libc::semctl(id, 0, libc::SETALL, values.as_ptr()) },
        "semctl SETALL",
    );
}

pub fn sem_getall(id: i32) -> Vec<u16> {
    let mut v = vec![0u16; sem_stat(id).sem_nsems as usize];
    // SAFETY: union semun `array` with one slot per semaphore.
    check(
        unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) },
        "semctl GETALL",
    );
    v
}

pub fn sem_rm(id: i32) {
    // SAFETY: no argument for IPC_RMID.
    check(
        unsafe { libc::semctl(id, 0, libc::IPC_RMID) },
        "semctl IPC_RMID",
    );
}

// ------------------------------------------------------------------ shared memory

pub const PAGE: usize = 4096;

pub fn shm_create(key: i32, size: usize, mode: i32) -> i32 {
    // SAFETY: no pointers.
    check(
        unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode) },
        "shmget",
    )
}

pub fn shm_stat(id: i32) -> libc::shmid_ds {
    // SAFETY: a zeroed shmid_ds is valid and the kernel fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is writable.
    check(
        unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) },
        "shmctl IPC_STAT",
    );
    ds
}

pub fn shm_set(id: i32, ds: &mut libc::shmid_ds) {
    // SAFETY: IPC_SET reads `ds`.
    check(
        unsafe { libc::shmctl(id, libc::IPC_SET, ds) },
        "shmctl IPC_SET",
    );
}

pub fn shm_lock(id: i32) {
    // SAFETY: no buffer for SHM_LOCK.
    check(
        unsafe { libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) },
        "shmctl SHM_LOCK",
    );
}

pub fn shm_rm(id: i32) {
    // SAFETY: no buffer for IPC_RMID.
    check(
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) },
        "shmctl IPC_RMID",
    );
}

/// An attachment for the tests; detached on drop.
pub struct Shm {
    pub addr: *mut u8,
    pub size: usize,
}

impl Shm {
    pub fn attach(id: i32) -> Shm {
        let size = shm_stat(id).shm_segsz;
        // SAFETY: the kernel picks the address.
        let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        assert_ne!(p as isize, -1, "shmat: {}", std::io::Error::last_os_error());
        Shm {
            addr: p as *mut u8,
            size,
        }
    }

    /// Writes `data` at `off` (touching those pages).
    pub fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.size);
        // SAFETY: inside the attachment.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(off), data.len()) }
    }

    /// Reads `len` bytes at `off` (touching those pages).
    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.size);
        let mut v = vec![0u8; len];
        // SAFETY: inside the attachment.
        unsafe { std::ptr::copy_nonoverlapping(self.addr.add(off), v.as_mut_ptr(), len) }
        v
    }

    /// Which pages are in memory (mincore), without touching any.
    pub fn resident(&self) -> Vec<bool> {
        let pages = self.size.div_ceil(PAGE);
        let mut v = vec![0u8; pages];
        // SAFETY: the attachment is page aligned and `v` has a byte per page.
        check(
            unsafe { libc::mincore(self.addr as *mut c_void, pages * PAGE, v.as_mut_ptr()) },
            "mincore",
        );
        v.into_iter().map(|b| b & 1 == 1).collect()
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: attached in `attach`, detached once.
        unsafe { libc::shmdt(self.addr as *const c_void) };
    }
}

/// The content the tests write into page `i` of a segment.
pub fn page_pattern(i: usize, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
    v[..8.min(len)].copy_from_slice(&(i as u64).to_le_bytes()[..8.min(len)]);
    v
}

/// A writable scratch directory.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
