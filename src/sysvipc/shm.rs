//! Shared memory segments (shmctl(2), shmat(2)).
//!
//! Only the pages that were ever touched are saved, as a list of extents (offset,
//! length) and their bytes; a restore writes only those extents, so pages never
//! touched stay unallocated. The segment's memory is reached through its shmem file:
//! an attachment's `/proc/self/map_files/START-END` (proc(5); needs
//! CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN) gives a descriptor on which
//! `lseek(SEEK_DATA/SEEK_HOLE)` finds the allocated pages (swapped-out ones
//! included) and pread(2)/pwrite(2) move the bytes without faulting the mapping in.
//! Without that right, the attachment itself is used: mincore(2) tells the resident
//! pages (a page swapped out would be missed) and the bytes are copied through it.
//! Content moves in large chunks; a segment is never held in memory at once.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use nix::errno::Errno;
use nix::unistd::Whence;
use serde::{Deserialize, Serialize};

use super::format::{Payload, Writer, CHUNK};
use super::{
    create_exact, stat_obj, sys, Created, IpcError, Kind, Limits, Obj, Perm, Result, Saved,
};
use crate::fsutil;

/// Mode bit: the segment was removed (IPC_RMID) while still attached.
const SHM_DEST: u32 = 0o1000;
/// Mode bit: the segment is locked in memory (SHM_LOCK).
const SHM_LOCKED: u32 = 0o2000;

/// Metadata of a saved segment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmMeta {
    #[serde(flatten)]
    pub perm: Perm,
    /// Size in bytes.
    pub size: u64,
    /// The stored ranges as [offset, length], sorted, page aligned (the last one may
    /// end at `size`); their bytes are the payload, in this order. The rest of the
    /// segment was never touched.
    pub extents: Vec<[u64; 2]>,
    /// Locked in memory with SHM_LOCK (restored).
    pub locked: bool,
    /// Removed (IPC_RMID) while processes were still attached. It is restored as a
    /// live segment so they can attach it again; remove it once they have.
    pub marked_for_removal: bool,
    /// Creator and last attach/detach pid, attach count, times (for information).
    pub cpid: i32,
    pub lpid: i32,
    pub nattch: u64,
    pub atime: i64,
    pub dtime: i64,
    pub ctime: i64,
    /// When it was saved, seconds since the epoch.
    pub saved: u64,
}

impl ShmMeta {
    /// Bytes stored.
    pub fn stored(&self) -> u64 {
        self.extents.iter().map(|e| e[1]).sum()
    }

    pub(crate) fn validate(&self, payload_len: u64) -> std::result::Result<(), String> {
        if self.size == 0 {
            return Err("segment of size 0".into());
        }
        let mut end = 0u64;
        for &[off, len] in &self.extents {
            let stop = off.checked_add(len).ok_or("extent overflows")?;
            if len == 0 || off < end || stop > self.size {
                return Err(format!(
                    "bad extent [{off}, {len}] (segment of {} bytes)",
                    self.size
                ));
            }
            end = stop;
        }
        if self.stored() != payload_len {
            return Err(format!(
                "the extents hold {} bytes, the payload {payload_len}",
                self.stored()
            ));
        }
        Ok(())
    }

    pub(crate) fn check_limits(&self, l: &Limits) -> Option<String> {
        if self.size > l.shmmax {
            return Some(format!(
                "{} bytes are more than the namespace allows for a segment (shmmax {})",
                self.size, l.shmmax
            ));
        }
        // The kernel destroys a segment nobody has attached when its creator (this
        // process) exits, or at once when this process detaches it.
        (l.shm_rmid_forced != 0).then(|| {
            "the namespace has shm_rmid_forced=1, which would destroy the segment as soon as \
             it is restored (set kernel.shm_rmid_forced=0 until processes have attached it)"
                .to_string()
        })
    }

    pub(crate) fn create(&self) -> Result<Created> {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        create_exact(Kind::Shm, &self.perm, |flags| {
            sys::shmget(self.perm.key, size, flags)
        })
    }

    /// Writes the stored extents into the segment: one thread reads the payload
    /// while the calling thread writes the previous chunk into the segment.
    pub(crate) fn fill(&self, c: &Created, payload: &mut Payload<'_>) -> Result<()> {
        let obj = c.obj();
        let att = sys::Attachment::attach(c.id(), self.size as usize, true).map_err(|source| {
            IpcError::Sys {
                obj,
                op: "attach",
                source,
            }
        })?;
        let mem = Memory::open(att, true);
        pipeline(
            &self.extents,
            |_, buf| payload.read_exact(buf),
            |pieces, data, ()| {
                let mut at = 0;
                for &(off, len) in pieces {
                    mem.write_at(off, &data[at..at + len])
                        .map_err(|source| IpcError::Sys {
                            obj,
                            op: "write its content",
                            source,
                        })?;
                    at += len;
                }
                Ok(())
            },
        )
    }

    /// Sets owner and mode, and locks it if it was locked.
    pub(crate) fn finish(&self, c: &Created) -> Result<()> {
        let obj = c.obj();
        let err = |op| move |source| IpcError::Sys { obj, op, source };
        if self.locked {
            sys::shm_lock(c.id()).map_err(err("lock it in memory"))?;
        }
        let mut ds = sys::shm_stat(c.id()).map_err(err("read its state"))?;
        self.perm.set_into(&mut ds.shm_perm);
        sys::shm_set(c.id(), &ds).map_err(err("set owner and mode"))
    }
}

/// Access to a segment's memory: through its shmem file, or through the attachment.
enum Memory {
    File(File),
    Map(sys::Attachment),
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Memory {
    fn open(att: sys::Attachment, writable: bool) -> Memory {
        let (start, end) = att.range();
        let path = format!("/proc/self/map_files/{start:x}-{end:x}");
        match OpenOptions::new().read(true).write(writable).open(&path) {
            // The descriptor keeps the shmem file: the attachment is dropped (shmdt).
            Ok(file) => Memory::File(file),
            Err(e) => {
                log::debug!("{path}: {e}; going through the attachment");
                Memory::Map(att)
            }
        }
    }

    /// The allocated ranges of the first `size` bytes, as [offset, length].
    fn extents(&self, size: u64) -> std::result::Result<Vec<[u64; 2]>, Errno> {
        let mut out: Vec<[u64; 2]> = Vec::new();
        match self {
            Memory::File(file) => {
                let mut pos = 0i64;
                while (pos as u64) < size {
                    let data = match nix::unistd::lseek(file, pos, Whence::SeekData) {
                        Ok(d) => d,
                        Err(Errno::ENXIO) => break,
                        Err(e) => return Err(e),
                    };
                    let hole = nix::unistd::lseek(file, data, Whence::SeekHole)?;
                    let end = (hole as u64).min(size);
                    if end > data as u64 {
                        out.push([data as u64, end - data as u64]);
                    }
                    pos = hole;
                }
            }
            Memory::Map(att) => {
                let page = sys::page_size() as u64;
                for (i, r) in att.resident()?.iter().enumerate() {
                    if r & 1 == 0 {
                        continue;
                    }
                    let off = i as u64 * page;
                    let len = page.min(size - off);
                    match out.last_mut() {
                        Some(last) if last[0] + last[1] == off => last[1] += len,
                        _ => out.push([off, len]),
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> std::result::Result<(), Errno> {
        match self {
            Memory::File(file) => file.read_exact_at(buf, off).map_err(io_errno),
            Memory::Map(att) => {
                att.copy_out(off as usize, buf);
                Ok(())
            }
        }
    }

    fn write_at(&self, off: u64, data: &[u8]) -> std::result::Result<(), Errno> {
        match self {
            Memory::File(file) => file.write_all_at(data, off).map_err(io_errno),
            Memory::Map(att) => {
                att.copy_in(off as usize, data);
                Ok(())
            }
        }
    }
}

/// `shm_rmid_forced` switched off while a segment that no process has attached is
/// read: with it on, the kernel destroys such a segment when its last attachment
/// goes, which would be ours. Switched back on when dropped.
struct RmidForcedOff;

const RMID_FORCED: &str = "/proc/sys/kernel/shm_rmid_forced";

impl RmidForcedOff {
    fn when_needed(obj: Obj, nattch: u64) -> Result<Option<RmidForcedOff>> {
        if nattch > 0 || fsutil::read_string(Path::new(RMID_FORCED))?.trim() == "0" {
            return Ok(None);
        }
        fsutil::write_control(Path::new(RMID_FORCED), "0").map_err(|e| IpcError::Limit {
            obj,
            what: format!(
                "cannot be saved without being destroyed: no process has it attached and \
                 shm_rmid_forced is 1 ({})",
                e.source
            ),
        })?;
        Ok(Some(RmidForcedOff))
    }
}

impl Drop for RmidForcedOff {
    fn drop(&mut self) {
        // Setting it back destroys only segments the kernel would have destroyed
        // meanwhile (unattached ones whose creator exited).
        if let Err(e) = fsutil::write_control(Path::new(RMID_FORCED), "1") {
            log::warn!("cannot set shm_rmid_forced back to 1: {e}");
        }
    }
}

/// Pieces of the segment (offset, length) whose bytes follow each other in the
/// payload, at most `CHUNK` bytes in all: the unit moved between the two threads.
type Pieces = Vec<(u64, usize)>;

/// Cuts extents into batches of pieces of at most `CHUNK` bytes in all.
fn batches(extents: &[[u64; 2]]) -> impl Iterator<Item = Pieces> + '_ {
    let mut pieces = extents.iter().flat_map(|&[off, len]| {
        (0..len.div_ceil(CHUNK as u64)).map(move |i| {
            let o = off + i * CHUNK as u64;
            (o, (off + len - o).min(CHUNK as u64) as usize)
        })
    });
    let mut pending: Option<(u64, usize)> = None;
    std::iter::from_fn(move || {
        let mut batch = Vec::new();
        let mut total = 0;
        while let Some(p) = pending.take().or_else(|| pieces.next()) {
            if total + p.1 > CHUNK {
                pending = Some(p);
                break;
            }
            total += p.1;
            batch.push(p);
        }
        (!batch.is_empty()).then_some(batch)
    })
}

/// Moves the content of `extents` from `produce` to `consume` in batches, the
/// producer running on a second thread so that reading and writing overlap. The
/// producer fills a buffer for a batch and may return a value (a CRC) computed on
/// its thread; the consumer gets the batch, the bytes and that value.
fn pipeline<T, P, C>(extents: &[[u64; 2]], produce: P, mut consume: C) -> Result<()>
where
    T: Send,
    P: FnMut(&Pieces, &mut [u8]) -> Result<T> + Send,
    C: FnMut(&Pieces, &[u8], T) -> Result<()>,
{
    // Three buffers: one being filled, one being drained, one ready.
    const BUFFERS: usize = 3;
    let (full_tx, full_rx) = sync_channel::<(Pieces, Vec<u8>, usize, T)>(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        empty_tx
            .send(vec![0u8; CHUNK])
            .expect("the receiver is alive");
    }
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<()> {
            let mut produce = produce;
            for batch in batches(extents) {
                // A closed channel means the consumer failed: it reports why.
                let Ok(mut buf) = empty_rx.recv() else {
                    return Ok(());
                };
                let len = batch.iter().map(|p| p.1).sum();
                let extra = produce(&batch, &mut buf[..len])?;
                if full_tx.send((batch, buf, len, extra)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut consumed = Ok(());
        while let Ok((batch, buf, len, extra)) = full_rx.recv() {
            if let Err(e) = consume(&batch, &buf[..len], extra) {
                consumed = Err(e);
                break;
            }
            let _ = empty_tx.send(buf);
        }
        // Unblock a producer waiting on either channel.
        drop(full_rx);
        drop(empty_tx);
        let produced = match producer.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        produced.and(consumed)
    })
}

/// Saves segment `id` to `path`.
pub(crate) fn save(id: i32, path: &Path) -> Result<Saved> {
    let (obj, ds) = stat_obj(Kind::Shm, id, sys::shm_stat, |d| d.shm_perm.__key)?;
    let err = |op| move |source| IpcError::Sys { obj, op, source };
    let size = ds.shm_segsz as u64;
    // Declared before the attachment so that it outlives it.
    let _forced = RmidForcedOff::when_needed(obj, ds.shm_nattch)?;
    let att = sys::Attachment::attach(id, ds.shm_segsz, false).map_err(err("attach"))?;
    let mem = Memory::open(att, false);
    let extents = mem.extents(size).map_err(err("find its touched pages"))?;
    let mode = u32::from(ds.shm_perm.mode);
    let meta = ShmMeta {
        perm: Perm::from_ipc(&ds.shm_perm, id),
        size,
        extents,
        locked: mode & SHM_LOCKED != 0,
        marked_for_removal: mode & SHM_DEST != 0,
        cpid: ds.shm_cpid,
        lpid: ds.shm_lpid,
        nattch: ds.shm_nattch,
        atime: ds.shm_atime,
        dtime: ds.shm_dtime,
        ctime: ds.shm_ctime,
        saved: crate::registry::now(),
    };
    let body = serde_json::to_vec(&meta).expect("metadata always serializes");
    let payload_len = meta.stored();
    let start = std::time::Instant::now();
    let mut w = Writer::create(path, Kind::Shm, &body, payload_len)?;
    // One thread copies the segment out while the calling thread writes the file.
    pipeline(
        &meta.extents,
        |pieces, buf| {
            let mut at = 0;
            for &(off, len) in pieces {
                mem.read_at(off, &mut buf[at..at + len])
                    .map_err(err("read its content"))?;
                at += len;
            }
            // The CRC too is computed here, leaving the writer thread only writing.
            let mut crc = crc32fast::Hasher::new();
            crc.update(buf);
            Ok(crc)
        },
        |_, data, crc| w.write_hashed(data, crc),
    )?;
    let copied = start.elapsed();
    let file_len = w.finish()?;
    log::debug!(
        "{obj}: {payload_len} bytes in {} extents copied in {copied:?}, synced in {:?}",
        meta.extents.len(),
        start.elapsed() - copied
    );
    Ok(Saved {
        kind: Kind::Shm,
        id,
        key: meta.perm.key,
        path: path.to_path_buf(),
        file_len,
        payload_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64, extents: Vec<[u64; 2]>) -> ShmMeta {
        ShmMeta {
            perm: Perm {
                id: 1,
                mode: 0o600,
                ..Default::default()
            },
            size,
            extents,
            ..Default::default()
        }
    }

    #[test]
    fn batches_cover_the_extents_in_order() {
        let c = CHUNK as u64;
        let extents = [[0, 4096], [8192, 2 * c + 100], [4 * c, 4096]];
        let all: Vec<Pieces> = batches(&extents).collect();
        for b in &all {
            assert!(b.iter().map(|p| p.1).sum::<usize>() <= CHUNK);
        }
        let flat: Vec<(u64, usize)> = all.into_iter().flatten().collect();
        let mut expect = vec![
            (0, 4096),
            (8192, CHUNK),
            (8192 + c, CHUNK),
            (8192 + 2 * c, 100),
        ];
        expect.push((4 * c, 4096));
        assert_eq!(flat, expect);
        assert_eq!(batches(&[]).count(), 0);
        // Many small extents share one batch.
        let small: Vec<[u64; 2]> = (0..3000).map(|i| [i * 8192, 4096]).collect();
        let b: Vec<Pieces> = batches(&small).collect();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].len(), 1024);
    }

    #[test]
    fn pipeline_moves_everything_and_reports_errors() {
        let extents = [[0, 10], [CHUNK as u64, CHUNK as u64 + 5]];
        let mut seen = Vec::new();
        pipeline(
            &extents,
            |pieces, buf| {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = (pieces[0].0 as usize + i) as u8;
                }
                Ok(())
            },
            |pieces, data, ()| {
                seen.push((pieces.clone(), data.len()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen.iter().map(|s| s.1).sum::<usize>(), CHUNK + 15);
        let fail = || IpcError::Busy {
            obj: Obj {
                kind: Kind::Shm,
                id: 1,
                key: None,
            },
        };
        let r = pipeline(&extents, |_, _| Err::<(), _>(fail()), |_, _, ()| Ok(()));
        assert!(matches!(r, Err(IpcError::Busy { .. })));
        let r = pipeline(&extents, |_, _| Ok(()), |_, _, ()| Err(fail()));
        assert!(matches!(r, Err(IpcError::Busy { .. })));
    }

    #[test]
    fn extents_are_validated() {
        assert!(meta(10000, vec![[0, 4096], [8192, 1808]])
            .validate(5904)
            .is_ok());
        assert!(meta(10000, vec![[0, 4096], [8192, 1808]])
            .validate(5903)
            .is_err());
        assert!(meta(10000, vec![[8192, 1808], [0, 4096]])
            .validate(5904)
            .is_err());
        assert!(meta(10000, vec![[0, 4096], [4000, 10]])
            .validate(4106)
            .is_err());
        assert!(meta(10000, vec![[8192, 4096]]).validate(4096).is_err());
        assert!(meta(10000, vec![[0, 0]]).validate(0).is_err());
        assert!(meta(0, vec![]).validate(0).is_err());
        assert!(meta(10000, vec![]).validate(0).is_ok());
        let mut l = crate::sysvipc::procfs::tests_limits();
        l.shmmax = 9999;
        assert!(meta(10000, vec![])
            .check_limits(&l)
            .unwrap()
            .contains("shmmax 9999"));
    }
}
