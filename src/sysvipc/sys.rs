//! Every raw SysV IPC call of the module, each wrapped once: msgget(2), msgctl(2),
//! msgsnd(2)/msgrcv(2) (with `MSG_COPY`), semget(2), semctl(2), shmget(2), shmat(2),
//! shmdt(2), shmctl(2), mincore(2) and the per-thread setresuid(2)/setresgid(2).
//!
//! The wrappers take and return plain Rust values; errors are the raw `Errno`, the
//! callers attach the object they were working on.

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use nix::errno::Errno;

/// Copy a message without removing it (msgrcv(2), Linux ≥ 3.8 with
/// `CONFIG_CHECKPOINT_RESTORE`); `msgtyp` is then the index of the message.
const MSG_COPY: libc::c_int = 0o40000;

fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    Errno::result(ret)
}

// ---------------------------------------------------------------- message queues

pub(crate) fn msgget(key: i32, flags: i32) -> Result<i32, Errno> {
    // SAFETY: msgget takes no pointers.
    check(unsafe { libc::msgget(key, flags) })
}

pub(crate) fn msg_stat(id: i32) -> Result<libc::msqid_ds, Errno> {
    let mut ds = MaybeUninit::<libc::msqid_ds>::zeroed();
    // SAFETY: `ds` is a writable msqid_ds the kernel fills on success; all-zero
    // bytes are a valid msqid_ds (integers only).
    check(unsafe { libc::msgctl(id, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: zero-initialised above and filled by the kernel.
    Ok(unsafe { ds.assume_init() })
}

pub(crate) fn msg_set(id: i32, ds: &libc::msqid_ds) -> Result<(), Errno> {
    let mut copy = *ds;
    // SAFETY: IPC_SET only reads the msqid_ds we pass.
    check(unsafe { libc::msgctl(id, libc::IPC_SET, &mut copy) }).map(drop)
}

pub(crate) fn msg_rmid(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID ignores the buffer argument.
    check(unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// A `struct msgbuf` (a `long` type followed by the text) with room for `cap` bytes
/// of text.
pub(crate) struct MsgBuf {
    // u64 words keep the leading `long` aligned.
    words: Vec<u64>,
    cap: usize,
}

impl MsgBuf {
    pub(crate) fn new(cap: usize) -> MsgBuf {
        MsgBuf {
            words: vec![0; 1 + cap.div_ceil(8)],
            cap,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.words.len() * 8;
        // SAFETY: the Vec owns `n` initialised bytes (u64 words); u8 has no alignment
        // or validity requirements, and the slice borrows `self` mutably.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), n) }
    }

    /// The text part, `len` bytes of it.
    pub(crate) fn text(&mut self, len: usize) -> &[u8] {
        &self.bytes_mut()[8..8 + len]
    }
}

/// Copies message number `index` (0 = oldest) of queue `id` into `buf` without
/// removing it. Returns its type and length; `ENOMSG` past the last message,
/// `E2BIG` if the buffer is too small.
pub(crate) fn msg_copy(id: i32, index: usize, buf: &mut MsgBuf) -> Result<(i64, usize), Errno> {
    let cap = buf.cap;
    let idx = libc::c_long::try_from(index).map_err(|_| Errno::EOVERFLOW)?;
    // SAFETY: the buffer holds a `long` plus `cap` bytes, which is what msgrcv may
    // write for a text size of `cap`; MSG_COPY|IPC_NOWAIT never blocks.
    let n = unsafe {
        libc::msgrcv(
            id,
            buf.words.as_mut_ptr().cast::<c_void>(),
            cap,
            idx,
            MSG_COPY | libc::IPC_NOWAIT,
        )
    };
    let n = Errno::result(n)? as usize;
    Ok((buf.words[0] as i64, n))
}

/// Appends a message to queue `id` without blocking (a full queue gives `EAGAIN`).
pub(crate) fn msg_send(id: i32, mtype: i64, text: &[u8], buf: &mut MsgBuf) -> Result<(), Errno> {
    if text.len() > buf.cap {
        *buf = MsgBuf::new(text.len());
    }
    buf.words[0] = mtype as u64;
    buf.bytes_mut()[8..8 + text.len()].copy_from_slice(text);
    // SAFETY: the buffer starts with the type and holds `text.len()` bytes of text
    // after it; msgsnd only reads it.
    check(unsafe {
        libc::msgsnd(
            id,
            buf.words.as_ptr().cast::<c_void>(),
            text.len(),
            libc::IPC_NOWAIT,
        )
    })
    .map(drop)
}

// ---------------------------------------------------------------- semaphore arrays

pub(crate) fn semget(key: i32, nsems: i32, flags: i32) -> Result<i32, Errno> {
    // SAFETY: semget takes no pointers.
    check(unsafe { libc::semget(key, nsems, flags) })
}

pub(crate) fn sem_stat(id: i32) -> Result<libc::semid_ds, Errno> {
    let mut ds = MaybeUninit::<libc::semid_ds>::zeroed();
    // SAFETY: the fourth argument (union semun) is the `buf` pointer to a writable
    // semid_ds, as semctl(2) IPC_STAT requires; all-zero is a valid semid_ds.
    check(unsafe { libc::semctl(id, 0, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: zero-initialised above and filled by the kernel.
    Ok(unsafe { ds.assume_init() })
}

pub(crate) fn sem_set(id: i32, ds: &libc::semid_ds) -> Result<(), Errno> {
    let mut copy = *ds;
    // SAFETY: union semun `buf` pointing to a semid_ds that IPC_SET only reads.
    check(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut copy as *mut libc::semid_ds) }).map(drop)
}

pub(crate) fn sem_rmid(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID ignores the semun argument.
    check(unsafe { libc::semctl(id, 0, libc::IPC_RMID) }).map(drop)
}

/// GETALL: `values` must have exactly as many entries as the array has semaphores.
pub(crate) fn sem_getall(id: i32, values: &mut [u16]) -> Result<(), Errno> {
    // SAFETY: union semun `array` pointing to `values.len()` writable unsigned
    // shorts; the caller sized it from the array's sem_nsems.
    check(unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) }).map(drop)
}

/// SETALL: `values` must have exactly as many entries as the array has semaphores.
pub(crate) fn sem_setall(id: i32, values: &[u16]) -> Result<(), Errno> {
    // SAFETY: union semun `array` pointing to `values.len()` unsigned shorts that
    // SETALL only reads; the caller created the array with that many semaphores.
    check(unsafe { libc::semctl(id, 0, libc::SETALL, values.as_ptr()) }).map(drop)
}

/// semop(2) of `ops` (semaphore number, operation) on array `id`, each with
/// SEM_UNDO and IPC_NOWAIT: the calling process's adjustments change by the
/// opposite of each operation.
pub(crate) fn sem_op_undo(id: i32, ops: &[(u16, i16)]) -> Result<(), Errno> {
    let mut buf: Vec<libc::sembuf> = ops
        .iter()
        .map(|&(num, op)| libc::sembuf {
            sem_num: num,
            sem_op: op,
            sem_flg: (libc::SEM_UNDO | libc::IPC_NOWAIT) as i16,
        })
        .collect();
    // SAFETY: `buf` holds `buf.len()` sembufs that semop reads.
    check(unsafe { libc::semop(id, buf.as_mut_ptr(), buf.len()) }).map(drop)
}

// ---------------------------------------------------------------- shared memory

pub(crate) fn shmget(key: i32, size: usize, flags: i32) -> Result<i32, Errno> {
    // SAFETY: shmget takes no pointers.
    check(unsafe { libc::shmget(key, size, flags) })
}

pub(crate) fn shm_stat(id: i32) -> Result<libc::shmid_ds, Errno> {
    let mut ds = MaybeUninit::<libc::shmid_ds>::zeroed();
    // SAFETY: `ds` is a writable shmid_ds; all-zero is a valid shmid_ds.
    check(unsafe { libc::shmctl(id, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: zero-initialised above and filled by the kernel.
    Ok(unsafe { ds.assume_init() })
}

pub(crate) fn shm_set(id: i32, ds: &libc::shmid_ds) -> Result<(), Errno> {
    let mut copy = *ds;
    // SAFETY: IPC_SET only reads the shmid_ds we pass.
    check(unsafe { libc::shmctl(id, libc::IPC_SET, &mut copy) }).map(drop)
}

pub(crate) fn shm_lock(id: i32) -> Result<(), Errno> {
    // SAFETY: SHM_LOCK ignores the buffer argument.
    check(unsafe { libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) }).map(drop)
}

pub(crate) fn shm_rmid(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID ignores the buffer argument.
    check(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// The page size of the machine.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// An attachment of a shared memory segment in our address space, detached on drop.
/// Its bytes are only ever copied through raw pointers, never lent out as Rust
/// references: other processes may write the segment at any time.
pub(crate) struct Attachment {
    addr: NonNull<c_void>,
    /// Length of the mapping (the segment size rounded up to pages).
    len: usize,
    size: usize,
    writable: bool,
}

// SAFETY: an Attachment is an address range that stays mapped until it is dropped;
// its bytes are only copied through raw pointers (never lent as references), so
// using it from several threads is no different from other processes using the
// segment at the same time.
unsafe impl Send for Attachment {}
// SAFETY: as for Send: `&Attachment` only allows raw copies in and out.
unsafe impl Sync for Attachment {}

impl Attachment {
    /// Attaches segment `id` of `size` bytes anywhere, read-only unless `writable`.
    pub(crate) fn attach(id: i32, size: usize, writable: bool) -> Result<Attachment, Errno> {
        let flags = if writable { 0 } else { libc::SHM_RDONLY };
        // SAFETY: a null address lets the kernel pick a free range, so no existing
        // mapping of ours is replaced.
        let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if p as isize == -1 {
            return Err(Errno::last());
        }
        let page = page_size();
        Ok(Attachment {
            addr: NonNull::new(p).ok_or(Errno::EFAULT)?,
            len: size.div_ceil(page) * page,
            size,
            writable,
        })
    }

    /// Start and end address of the mapping (as in /proc/PID/maps).
    pub(crate) fn range(&self) -> (usize, usize) {
        let a = self.addr.as_ptr() as usize;
        (a, a + self.len)
    }

    /// One byte per page, bit 0 set where the page is in memory (mincore(2)).
    pub(crate) fn resident(&self) -> Result<Vec<u8>, Errno> {
        let mut vec = vec![0u8; self.len / page_size()];
        // SAFETY: the range is our own mapping, page aligned, and `vec` has one
        // byte per page of it.
        check(unsafe { libc::mincore(self.addr.as_ptr(), self.len, vec.as_mut_ptr()) })?;
        Ok(vec)
    }

    /// Copies `buf.len()` bytes at offset `off` of the segment into `buf`.
    pub(crate) fn copy_out(&self, off: usize, buf: &mut [u8]) {
        assert!(off.checked_add(buf.len()).is_some_and(|e| e <= self.size));
        // SAFETY: the source lies inside our mapping (checked above) and does not
        // overlap `buf`, which is ordinary memory of ours.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.addr.as_ptr().cast::<u8>().add(off),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    /// Copies `data` to offset `off` of the segment (a writable attachment).
    pub(crate) fn copy_in(&self, off: usize, data: &[u8]) {
        assert!(self.writable);
        assert!(off.checked_add(data.len()).is_some_and(|e| e <= self.size));
        // SAFETY: the destination lies inside our writable mapping (checked above)
        // and does not overlap `data`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.addr.as_ptr().cast::<u8>().add(off),
                data.len(),
            )
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // SAFETY: `addr` came from shmat and is detached exactly once; nothing
        // borrows the mapping (see the type's comment).
        unsafe { libc::shmdt(self.addr.as_ptr()) };
    }
}

// ---------------------------------------------------------------- credentials

fn setresuid_thread(euid: u32) -> Result<(), Errno> {
    // SAFETY: the raw system call changes only the calling thread's effective uid
    // (glibc's wrapper would change every thread); -1 leaves real and saved ids.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setresuid,
            -1 as libc::c_long,
            euid as libc::c_long,
            -1 as libc::c_long,
        )
    };
    Errno::result(r).map(drop)
}

fn setresgid_thread(egid: u32) -> Result<(), Errno> {
    // SAFETY: as setresuid_thread, for the effective gid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setresgid,
            -1 as libc::c_long,
            egid as libc::c_long,
            -1 as libc::c_long,
        )
    };
    Errno::result(r).map(drop)
}

/// The calling thread runs with another effective uid and gid until this is dropped.
/// Used to create an object whose creator (cuid, cgid) is not us: the kernel takes
/// them from the creating thread and IPC_SET cannot change them.
pub(crate) struct EffectiveIds {
    uid: u32,
    gid: u32,
}

impl EffectiveIds {
    /// Switches to `uid`/`gid` (a no-op when they are already ours).
    pub(crate) fn switch(uid: u32, gid: u32) -> Result<EffectiveIds, Errno> {
        let old = EffectiveIds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        // The gid first, while the uid still gives the right to change it.
        if gid != old.gid {
            setresgid_thread(gid)?;
        }
        if uid != old.uid {
            if let Err(e) = setresuid_thread(uid) {
                let _ = setresgid_thread(old.gid);
                return Err(e);
            }
        }
        Ok(old)
    }
}

impl Drop for EffectiveIds {
    fn drop(&mut self) {
        // Going back to ids that are still our real and saved ids cannot fail; a
        // thread left with borrowed ids would be a security bug, so check anyway.
        if nix::unistd::geteuid().as_raw() != self.uid {
            setresuid_thread(self.uid).expect("cannot restore the effective uid");
        }
        if nix::unistd::getegid().as_raw() != self.gid {
            setresgid_thread(self.gid).expect("cannot restore the effective gid");
        }
    }
}
