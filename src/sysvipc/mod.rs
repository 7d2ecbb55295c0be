//! SysV IPC objects saved to files and restored with the same key, identifier,
//! owner, mode and content (D2.2.11 §2.2–2.5): message queues (every message, read
//! with `MSG_COPY` so the queue is left as it was), semaphore arrays (every value)
//! and shared memory segments (the pages that were ever touched, holes stay holes).
//!
//! It works on the IPC namespace of the calling thread: on one object
//! ([`save`], [`restore`]) or on the whole namespace with its limits
//! ([`save_all`], [`restore_all`]). A restore checks the file and every conflict
//! before it creates anything, asks the kernel for the identifier through
//! `/proc/sys/kernel/*_next_id`, verifies the identifier it got, and removes what it
//! created when anything fails.
//!
//! Kernel interfaces: msgctl(2), msgrcv(2) (`MSG_COPY`), semctl(2), shmctl(2),
//! shmat(2), sysvipc(7), proc(5) (`/proc/sysvipc/*`, `/proc/sys/kernel/*_next_id`,
//! `/proc/PID/map_files`), lseek(2) (`SEEK_DATA`/`SEEK_HOLE`), mincore(2).

pub mod format;
pub mod msg;
pub mod procfs;
pub mod sem;
pub mod shm;
pub(crate) mod sys;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

pub use format::FormatError;
pub use procfs::{list, list_all, Entry, Limits};

use crate::fsutil::{self, CheckedError, PathError};

/// The three kinds of SysV IPC objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Msg,
    Sem,
    Shm,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Msg, Kind::Sem, Kind::Shm];

    /// The short name used in file names and in /proc: `msg`, `sem`, `shm`.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Msg => "msg",
            Kind::Sem => "sem",
            Kind::Shm => "shm",
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Msg => "message queue",
            Kind::Sem => "semaphore array",
            Kind::Shm => "shared memory segment",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an object is chosen: by identifier or by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    Id(i32),
    Key(i32),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Id(id) => write!(f, "id {id}"),
            Selector::Key(k) => write!(f, "key {}", fmt_key(*k)),
        }
    }
}

/// A key as ipcs(1) shows it: `0x0000162e`.
pub fn fmt_key(key: i32) -> String {
    format!("{:#010x}", key as u32)
}

/// Parses a key: `0x1234` (hexadecimal, as ipcs shows keys), or a decimal number
/// (negative allowed, as /proc/sysvipc shows them).
pub fn parse_key(s: &str) -> std::result::Result<i32, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).map(|v| v as i32).ok(),
        None => t.parse::<i32>().ok(),
    };
    r.ok_or_else(|| format!("'{s}' is not a key (use 0x1234 or a decimal number)"))
}

/// An object as errors name it: kind, identifier and key when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obj {
    pub kind: Kind,
    pub id: i32,
    pub key: Option<i32>,
}

impl fmt::Display for Obj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.id)?;
        match self.key {
            Some(0) => write!(f, " (key IPC_PRIVATE)"),
            Some(k) => write!(f, " (key {})", fmt_key(k)),
            None => Ok(()),
        }
    }
}

/// Errors of the SysV IPC module; each names the object or the file.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{}: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{}: holds a {found}, not a {expected}", path.display())]
    WrongKind {
        path: PathBuf,
        found: Kind,
        expected: Kind,
    },
    #[error("{}: {reason}", path.display())]
    Procfs { path: PathBuf, reason: String },
    #[error("no {kind} with {sel} in this IPC namespace")]
    NotFound { kind: Kind, sel: Selector },
    #[error("key 0 (IPC_PRIVATE) does not name one {kind}: select it by id")]
    PrivateKey { kind: Kind },
    #[error("{obj}: {op}: {source}")]
    Sys {
        obj: Obj,
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot restore {obj}: its key is already used by {}", by.map(|id| format!("{} {id}", obj.kind)).unwrap_or_else(|| format!("another {}", obj.kind)))]
    KeyTaken { obj: Obj, by: Option<i32> },
    #[error("cannot restore {obj}: its id is already used by {by}")]
    IdTaken { obj: Obj, by: Obj },
    #[error(
        "cannot restore {obj}: the kernel gave it id {got} (another object took the id first)"
    )]
    IdMismatch { obj: Obj, got: i32 },
    #[error("cannot restore {obj}: cannot ask for its id: {source}")]
    NextId {
        obj: Obj,
        #[source]
        source: PathError,
    },
    #[error("{obj} changed while it was being saved (freeze the processes using it first)")]
    Busy { obj: Obj },
    #[error("{obj}: {what}")]
    Limit { obj: Obj, what: String },
    #[error("{}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error(transparent)]
    Checked(#[from] CheckedError),
    #[error("{}: exists and is not empty", path.display())]
    NotEmpty { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, IpcError>;

/// Identity, owner and permissions of an object, as saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    pub key: i32,
    pub id: i32,
    pub uid: u32,
    pub gid: u32,
    /// Creator.
    pub cuid: u32,
    pub cgid: u32,
    /// Permission bits (0o777).
    pub mode: u32,
}

impl Perm {
    fn from_ipc(p: &libc::ipc_perm, id: i32) -> Perm {
        Perm {
            key: p.__key,
            id,
            uid: p.uid,
            gid: p.gid,
            cuid: p.cuid,
            cgid: p.cgid,
            mode: u32::from(p.mode) & 0o777,
        }
    }

    /// Puts owner and mode into a perm for IPC_SET.
    fn set_into(&self, p: &mut libc::ipc_perm) {
        p.uid = self.uid;
        p.gid = self.gid;
        p.mode = (self.mode & 0o777) as libc::c_ushort;
    }

    pub fn obj(&self, kind: Kind) -> Obj {
        Obj {
            kind,
            id: self.id,
            key: Some(self.key),
        }
    }
}

/// The metadata of a saved object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meta {
    Msg(msg::MsgMeta),
    Sem(sem::SemMeta),
    Shm(shm::ShmMeta),
}

impl Meta {
    pub fn kind(&self) -> Kind {
        match self {
            Meta::Msg(_) => Kind::Msg,
            Meta::Sem(_) => Kind::Sem,
            Meta::Shm(_) => Kind::Shm,
        }
    }

    pub fn perm(&self) -> &Perm {
        match self {
            Meta::Msg(m) => &m.perm,
            Meta::Sem(m) => &m.perm,
            Meta::Shm(m) => &m.perm,
        }
    }

    pub fn obj(&self) -> Obj {
        self.perm().obj(self.kind())
    }

    fn parse(kind: Kind, bytes: &[u8], payload_len: u64) -> std::result::Result<Meta, FormatError> {
        let meta = match kind {
            Kind::Msg => Meta::Msg(serde_json::from_slice(bytes)?),
            Kind::Sem => Meta::Sem(serde_json::from_slice(bytes)?),
            Kind::Shm => Meta::Shm(serde_json::from_slice(bytes)?),
        };
        let r = match &meta {
            Meta::Msg(m) => m.validate(payload_len),
            Meta::Sem(m) => m.validate(payload_len),
            Meta::Shm(m) => m.validate(payload_len),
        };
        r.map_err(FormatError::Inconsistent)?;
        Ok(meta)
    }

    /// Checks the object fits the namespace limits `l`.
    fn check_limits(&self, l: &Limits) -> Result<()> {
        let obj = self.obj();
        let what = match self {
            Meta::Msg(m) => m.check_limits(l),
            Meta::Sem(m) => m.check_limits(l),
            Meta::Shm(m) => m.check_limits(l),
        };
        match what {
            Some(what) => Err(IpcError::Limit { obj, what }),
            None => Ok(()),
        }
    }
}

/// A checkpoint file that was opened and checked from end to end.
pub struct Image {
    reader: format::Reader,
    meta: Meta,
}

impl Image {
    /// Opens `path` and checks its header, metadata and checksum (reading the
    /// whole file once).
    pub fn open(path: &Path) -> Result<Image> {
        let mut reader = format::Reader::open(path)?;
        let meta = Meta::parse(reader.kind(), reader.meta(), reader.payload_len())
            .map_err(|e| reader.format_error(e))?;
        reader.verify()?;
        Ok(Image { reader, meta })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn kind(&self) -> Kind {
        self.meta.kind()
    }

    pub fn path(&self) -> &Path {
        self.reader.path()
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.reader.file_len()
    }

    /// Bytes of content stored (message texts or segment pages).
    pub fn payload_len(&self) -> u64 {
        self.reader.payload_len()
    }

    /// Creates the object and fills it; the result removes it again unless committed.
    fn restore(&mut self) -> Result<Created> {
        let created = match &self.meta {
            Meta::Msg(m) => m.create()?,
            Meta::Sem(m) => m.create()?,
            Meta::Shm(m) => m.create()?,
        };
        let mut payload = self.reader.payload()?;
        match &self.meta {
            Meta::Msg(m) => m.fill(&created, &mut payload)?,
            Meta::Sem(m) => m.fill(&created)?,
            Meta::Shm(m) => m.fill(&created, &mut payload)?,
        }
        payload.finish()?;
        match &self.meta {
            Meta::Msg(m) => m.finish(&created)?,
            Meta::Sem(m) => m.finish(&created)?,
            Meta::Shm(m) => m.finish(&created)?,
        }
        Ok(created)
    }
}

/// An object created by a restore: removed on drop unless committed.
pub(crate) struct Created {
    obj: Obj,
    armed: bool,
}

impl Created {
    pub(crate) fn id(&self) -> i32 {
        self.obj.id
    }

    pub(crate) fn obj(&self) -> Obj {
        self.obj
    }

    fn commit(mut self) -> Restored {
        self.armed = false;
        Restored {
            kind: self.obj.kind,
            id: self.obj.id,
            key: self.obj.key.unwrap_or(0),
        }
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.armed {
            let r = match self.obj.kind {
                Kind::Msg => sys::msg_rmid(self.obj.id),
                Kind::Sem => sys::sem_rmid(self.obj.id),
                Kind::Shm => sys::shm_rmid(self.obj.id),
            };
            if let Err(e) = r {
                log::warn!("cannot remove {} after a failed restore: {e}", self.obj);
            }
        }
    }
}

/// Creates an object with exactly the key, id and creator of `perm`. `get` is
/// msgget/semget/shmget called with the creation flags; the object starts with
/// mode 0600 so that nobody else uses it before it is filled.
pub(crate) fn create_exact(
    kind: Kind,
    perm: &Perm,
    get: impl FnOnce(i32) -> std::result::Result<i32, Errno>,
) -> Result<Created> {
    let obj = perm.obj(kind);
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    procfs::set_next_id(kind, perm.id).map_err(|source| IpcError::NextId { obj, source })?;
    let got = match sys::EffectiveIds::switch(perm.cuid, perm.cgid) {
        Ok(ids) => {
            let r = get(flags);
            drop(ids);
            r
        }
        Err(e) => {
            // Without the right to change ids (not root) the creator is us.
            log::warn!(
                "{obj}: cannot create as uid {} gid {} ({e}); its creator will be the caller",
                perm.cuid,
                perm.cgid
            );
            get(flags)
        }
    };
    if got.is_err() {
        consume_next_id(kind);
    }
    match got {
        Ok(id) if id != perm.id => {
            // The slot was taken after our check: the kernel picked the next free one.
            drop(Created {
                obj: Obj { id, ..obj },
                armed: true,
            });
            Err(IpcError::IdMismatch { obj, got: id })
        }
        Ok(_) => Ok(Created { obj, armed: true }),
        Err(e) => {
            if e == Errno::EEXIST {
                let by = list(kind)
                    .ok()
                    .and_then(|v| v.into_iter().find(|x| x.key == perm.key).map(|x| x.id));
                Err(IpcError::KeyTaken { obj, by })
            } else {
                Err(IpcError::Sys {
                    obj,
                    op: "create",
                    source: e,
                })
            }
        }
    }
}

/// Undoes a `set_next_id` that no object used. The kernel accepts no value that
/// clears it (only creating an object does), so a private object takes it and is
/// removed at once; otherwise the next object anyone creates would get our id.
fn consume_next_id(kind: Kind) {
    if procfs::next_id(kind).is_none_or(|id| id < 0) {
        return;
    }
    let flags = libc::IPC_CREAT | 0o600;
    let r = match kind {
        Kind::Msg => sys::msgget(libc::IPC_PRIVATE, flags),
        Kind::Sem => sys::semget(libc::IPC_PRIVATE, 1, flags),
        Kind::Shm => sys::shmget(libc::IPC_PRIVATE, 1, flags),
    };
    let r = r.and_then(|id| match kind {
        Kind::Msg => sys::msg_rmid(id),
        Kind::Sem => sys::sem_rmid(id),
        Kind::Shm => sys::shm_rmid(id),
    });
    if let Err(e) = r {
        log::warn!(
            "cannot reset {}_next_id of the namespace: {e}",
            kind.short()
        );
    }
}

/// Checks that the namespace has room for the objects `new` beside `existing`:
/// their number (msgmni, semmni, shmmni), semaphores in all (semmns) and shared
/// memory pages in all (shmall). The kernel would refuse them anyway, but only one
/// by one, after others were created.
fn check_room(new: &[&Meta], existing: &[Entry], l: &Limits) -> Result<()> {
    let page = sys::page_size() as u64;
    for kind in Kind::ALL {
        let (max, name) = match kind {
            Kind::Msg => (l.msgmni, "msgmni"),
            Kind::Sem => (l.sem[3], "semmni"),
            Kind::Shm => (l.shmmni, "shmmni"),
        };
        let mut n = existing.iter().filter(|e| e.kind == kind).count() as u64;
        for m in new.iter().filter(|m| m.kind() == kind) {
            n += 1;
            if n > max {
                return Err(IpcError::Limit {
                    obj: m.obj(),
                    what: format!("the namespace has no room for another {kind} ({name} {max})"),
                });
            }
        }
    }
    let sum = |kind: Kind, f: &dyn Fn(u64) -> u64| -> u64 {
        existing
            .iter()
            .filter(|e| e.kind == kind)
            .fold(0u64, |a, e| a.saturating_add(f(e.size)))
    };
    let mut sems = sum(Kind::Sem, &|n| n);
    let mut pages = sum(Kind::Shm, &|b| b.div_ceil(page));
    for m in new {
        match m {
            Meta::Sem(s) => {
                sems = sems.saturating_add(s.values.len() as u64);
                if sems > l.sem[1] {
                    return Err(IpcError::Limit {
                        obj: m.obj(),
                        what: format!(
                            "{sems} semaphores in all are more than the namespace allows (semmns {})",
                            l.sem[1]
                        ),
                    });
                }
            }
            Meta::Shm(s) => {
                pages = pages.saturating_add(s.size.div_ceil(page));
                if pages > l.shmall {
                    return Err(IpcError::Limit {
                        obj: m.obj(),
                        what: format!(
                            "{pages} pages of shared memory in all are more than the namespace allows (shmall {})",
                            l.shmall
                        ),
                    });
                }
            }
            Meta::Msg(_) => {}
        }
    }
    Ok(())
}

/// Fails if the key or the id slot of `obj` is used by one of `existing`.
fn check_free(obj: Obj, existing: &[Entry]) -> Result<()> {
    for e in existing.iter().filter(|e| e.kind == obj.kind) {
        let key = obj.key.unwrap_or(0);
        if key != 0 && e.key == key {
            return Err(IpcError::KeyTaken {
                obj,
                by: Some(e.id),
            });
        }
        if procfs::slot(e.id) == procfs::slot(obj.id) {
            return Err(IpcError::IdTaken {
                obj,
                by: Obj {
                    kind: e.kind,
                    id: e.id,
                    key: Some(e.key),
                },
            });
        }
    }
    Ok(())
}

/// Maps an errno of IPC_STAT on a chosen object: a missing object is `NotFound`.
pub(crate) fn stat_err(obj: Obj) -> impl Fn(Errno) -> IpcError {
    move |e| match e {
        Errno::EINVAL | Errno::EIDRM => IpcError::NotFound {
            kind: obj.kind,
            sel: Selector::Id(obj.id),
        },
        e => IpcError::Sys {
            obj,
            op: "read its state",
            source: e,
        },
    }
}

/// The state of object `id` of `kind`, read with `stat`, and the object named
/// with its key from that state.
pub(crate) fn stat_obj<T>(
    kind: Kind,
    id: i32,
    stat: impl FnOnce(i32) -> nix::Result<T>,
    key: impl FnOnce(&T) -> i32,
) -> Result<(Obj, T)> {
    let obj = Obj {
        kind,
        id,
        key: None,
    };
    let ds = stat(id).map_err(stat_err(obj))?;
    let obj = Obj {
        key: Some(key(&ds)),
        ..obj
    };
    Ok((obj, ds))
}

/// What a save wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub kind: Kind,
    pub id: i32,
    pub key: i32,
    pub path: PathBuf,
    /// Size of the file.
    pub file_len: u64,
    /// Bytes of content (message texts, stored segment pages).
    pub payload_len: u64,
}

/// What a restore created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub kind: Kind,
    pub id: i32,
    pub key: i32,
}

/// Finds an object of the caller's IPC namespace.
pub fn resolve(kind: Kind, sel: Selector) -> Result<Entry> {
    if sel == Selector::Key(0) {
        return Err(IpcError::PrivateKey { kind });
    }
    list(kind)?
        .into_iter()
        .find(|e| match sel {
            Selector::Id(id) => e.id == id,
            Selector::Key(k) => e.key == k,
        })
        .ok_or(IpcError::NotFound { kind, sel })
}

/// Saves one object of the caller's IPC namespace to `path` (written to a
/// temporary name, synced, renamed). The object is not changed.
pub fn save(kind: Kind, sel: Selector, path: &Path) -> Result<Saved> {
    let id = match sel {
        Selector::Id(id) => id,
        Selector::Key(_) => resolve(kind, sel)?.id,
    };
    match kind {
        Kind::Msg => msg::save(id, path),
        Kind::Sem => sem::save(id, path),
        Kind::Shm => shm::save(id, path),
    }
}

/// Restores the object saved in `path` into the caller's IPC namespace, with the
/// same key and id. `expect`, if given, is the kind the file must hold. Nothing is
/// created if the file is damaged, if the key or id is taken, or if the object does
/// not fit the namespace limits; if creating or filling fails, the object is removed.
pub fn restore(path: &Path, expect: Option<Kind>) -> Result<Restored> {
    let mut img = Image::open(path)?;
    if let Some(k) = expect.filter(|k| *k != img.kind()) {
        return Err(IpcError::WrongKind {
            path: path.to_path_buf(),
            found: img.kind(),
            expected: k,
        });
    }
    let existing = list(img.kind())?;
    check_free(img.meta.obj(), &existing)?;
    let limits = Limits::read()?;
    img.meta.check_limits(&limits)?;
    check_room(&[&img.meta], &existing, &limits)?;
    Ok(img.restore()?.commit())
}

// ------------------------------------------------------------------ namespaces

/// Name of the index file of a namespace directory.
pub const MANIFEST: &str = "manifest";
const MANIFEST_MAGIC: &str = "xos-ipcns";
const MANIFEST_VERSION: u32 = 1;

/// The index of a namespace directory: its limits and one file per object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Seconds since the epoch.
    pub saved: u64,
    pub limits: Limits,
    pub objects: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub kind: Kind,
    pub id: i32,
    pub key: i32,
    /// File name inside the directory.
    pub file: String,
}

/// What `restore_all` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRestored {
    pub objects: Vec<Restored>,
    /// Limits that were saved but deliberately not applied, with the reason.
    pub deferred: Vec<String>,
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PathError::new("sync directory", dir, e).into())
}

fn dir_is_empty(dir: &Path) -> Result<Option<bool>> {
    match fs::read_dir(dir) {
        Ok(mut d) => Ok(Some(d.next().is_none())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PathError::new("list", dir, e).into()),
    }
}

/// Saves every object of the caller's IPC namespace, and its limits, into `dir`
/// (which must not exist or be empty). The directory is built under a temporary
/// name beside it and renamed when complete.
pub fn save_all(dir: &Path) -> Result<Manifest> {
    if dir_is_empty(dir)? == Some(false) {
        return Err(IpcError::NotEmpty {
            path: dir.to_path_buf(),
        });
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ipc".into());
    let tmp = parent.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fsutil::create_dir_all(&tmp, 0o700)?;
    let r = (|| {
        let limits = Limits::read()?;
        let mut objects = Vec::new();
        for e in list_all()? {
            let file = format!("{}-{}.ipc", e.kind.short(), e.id);
            match save(e.kind, Selector::Id(e.id), &tmp.join(&file)) {
                Ok(s) => objects.push(ManifestEntry {
                    kind: s.kind,
                    id: s.id,
                    key: s.key,
                    file,
                }),
                // Removed since it was listed: it is not part of the namespace.
                Err(IpcError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        let m = Manifest {
            saved: crate::registry::now(),
            limits,
            objects,
        };
        let body = serde_json::to_vec_pretty(&m).expect("a manifest always serializes");
        fsutil::write_checked(&tmp.join(MANIFEST), MANIFEST_MAGIC, MANIFEST_VERSION, &body)?;
        fs::rename(&tmp, dir).map_err(|e| PathError::new("rename into", dir, e))?;
        sync_dir(parent)?;
        Ok(m)
    })();
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    r
}

/// Reads and checks the manifest of a namespace directory.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let body = fsutil::read_checked(&path, MANIFEST_MAGIC, MANIFEST_VERSION)?;
    let m: Manifest = serde_json::from_slice(&body).map_err(|e| IpcError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    for (i, a) in m.objects.iter().enumerate() {
        let bad = |reason: String| IpcError::Manifest {
            path: path.clone(),
            reason,
        };
        if a.file.contains('/') || a.file.starts_with('.') || a.file.is_empty() {
            return Err(bad(format!("bad file name '{}'", a.file)));
        }
        for b in &m.objects[..i] {
            if a.kind != b.kind {
                continue;
            }
            if procfs::slot(a.id) == procfs::slot(b.id) {
                return Err(bad(format!(
                    "two {}s with id {} and {}",
                    a.kind, b.id, a.id
                )));
            }
            if a.key != 0 && a.key == b.key {
                return Err(bad(format!("two {}s with key {}", a.kind, fmt_key(a.key))));
            }
        }
    }
    Ok(m)
}

/// Opens and checks every object file of a namespace directory against its manifest.
pub fn open_all(dir: &Path) -> Result<(Manifest, Vec<Image>)> {
    let m = read_manifest(dir)?;
    let mut images = Vec::with_capacity(m.objects.len());
    for e in &m.objects {
        let img = Image::open(&dir.join(&e.file))?;
        let p = img.meta.perm();
        if img.kind() != e.kind || p.id != e.id || p.key != e.key {
            return Err(IpcError::Manifest {
                path: dir.join(MANIFEST),
                reason: format!(
                    "{} holds {}, the manifest says {}",
                    e.file,
                    img.meta.obj(),
                    Obj {
                        kind: e.kind,
                        id: e.id,
                        key: Some(e.key)
                    }
                ),
            });
        }
        images.push(img);
    }
    Ok((m, images))
}

/// Restores a directory written by [`save_all`] into the caller's IPC namespace:
/// first the limits, then every object with its key and id. All or nothing: every
/// file is checked and every conflict looked for before anything is created, and a
/// failure removes the objects already created and puts the old limits back.
///
/// `shm_rmid_forced = 1` is not applied when segments are restored: it would
/// destroy them as soon as this process exits, before any process reattaches them.
pub fn restore_all(dir: &Path) -> Result<NamespaceRestored> {
    let (manifest, mut images) = open_all(dir)?;
    let existing = list_all()?;
    for img in &images {
        check_free(img.meta.obj(), &existing)?;
    }
    let current = Limits::read()?;
    let mut target = manifest.limits.clone();
    let mut deferred = Vec::new();
    if target.shm_rmid_forced != current.shm_rmid_forced
        && target.shm_rmid_forced != 0
        && images.iter().any(|i| i.kind() == Kind::Shm)
    {
        deferred.push(format!(
            "shm_rmid_forced={} (it would destroy the restored segments before any process attaches them)",
            target.shm_rmid_forced
        ));
        target.shm_rmid_forced = current.shm_rmid_forced;
    }
    for img in &images {
        img.meta.check_limits(&target)?;
    }
    let metas: Vec<&Meta> = images.iter().map(|i| &i.meta).collect();
    check_room(&metas, &existing, &target)?;
    target.apply(&current)?;
    let mut created = Vec::with_capacity(images.len());
    for img in &mut images {
        match img.restore() {
            Ok(c) => created.push(c),
            Err(e) => {
                drop(created);
                if let Err(e2) = current.apply(&target) {
                    log::warn!("cannot put the IPC limits back: {e2}");
                }
                return Err(e);
            }
        }
    }
    Ok(NamespaceRestored {
        objects: created.into_iter().map(Created::commit).collect(),
        deferred,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(parse_key("0x162e"), Ok(0x162e));
        assert_eq!(parse_key("0xdeadbeef"), Ok(0xdeadbeef_u32 as i32));
        assert_eq!(parse_key("-559038737"), Ok(0xdeadbeef_u32 as i32));
        assert_eq!(parse_key("42"), Ok(42));
        assert!(parse_key("0x1_0000_0000").is_err());
        assert!(parse_key("x").is_err());
        assert_eq!(fmt_key(0xdeadbeef_u32 as i32), "0xdeadbeef");
        assert_eq!(fmt_key(0x162e), "0x0000162e");
    }

    #[test]
    fn messages_name_the_object() {
        let obj = Obj {
            kind: Kind::Msg,
            id: 32768,
            key: Some(0x162e),
        };
        assert_eq!(obj.to_string(), "message queue 32768 (key 0x0000162e)");
        let e = IpcError::KeyTaken { obj, by: Some(5) };
        assert_eq!(
            e.to_string(),
            "cannot restore message queue 32768 (key 0x0000162e): its key is already used by message queue 5"
        );
        let e = IpcError::NotFound {
            kind: Kind::Shm,
            sel: Selector::Key(0x10),
        };
        assert_eq!(
            e.to_string(),
            "no shared memory segment with key 0x00000010 in this IPC namespace"
        );
    }

    fn perm(id: i32) -> Perm {
        Perm {
            id,
            mode: 0o600,
            ..Default::default()
        }
    }

    fn msg(id: i32) -> Meta {
        Meta::Msg(msg::MsgMeta {
            perm: perm(id),
            qbytes: 1,
            ..Default::default()
        })
    }

    fn sem(id: i32, n: usize) -> Meta {
        Meta::Sem(sem::SemMeta {
            perm: perm(id),
            values: vec![0; n],
            ..Default::default()
        })
    }

    fn shm(id: i32, size: u64) -> Meta {
        Meta::Shm(shm::ShmMeta {
            perm: perm(id),
            size,
            ..Default::default()
        })
    }

    #[test]
    fn room_in_the_namespace() {
        let mut l = procfs::tests_limits();
        l.msgmni = 2;
        l.sem = [10, 5, 10, 2];
        l.shmall = 3;
        l.shmmni = 2;
        let page = sys::page_size() as u64;
        let e = |kind, id, size| Entry {
            kind,
            key: 0,
            id,
            mode: 0o600,
            size,
        };
        let existing = [
            e(Kind::Msg, 0, 100),
            e(Kind::Sem, 0, 3),
            e(Kind::Shm, 0, 10),
        ];
        let ok = |new: &[Meta]| check_room(&new.iter().collect::<Vec<_>>(), &existing, &l);
        let what = |r: Result<()>| match r {
            Err(IpcError::Limit { obj, what }) => format!("{}: {what}", obj.id),
            r => panic!("{:?}", r.map_err(|e| e.to_string())),
        };
        assert!(ok(&[msg(1), sem(1, 2), shm(1, 2 * page)]).is_ok());
        assert!(what(ok(&[msg(1), msg(2)]))
            .starts_with("2: the namespace has no room for another message queue (msgmni 2)"));
        assert!(what(ok(&[sem(1, 1), sem(2, 1)])).contains("semmni 2"));
        assert!(what(ok(&[sem(1, 3)]))
            .contains("6 semaphores in all are more than the namespace allows (semmns 5)"));
        assert!(what(ok(&[shm(1, 2 * page + 1)])).contains("(shmall 3)"));
        assert!(what(ok(&[shm(1, 1), shm(2, 1)])).contains("shmmni 2"));
    }

    #[test]
    fn conflicts() {
        let obj = Obj {
            kind: Kind::Sem,
            id: 32768 + 3,
            key: Some(7),
        };
        let e = |kind, key, id| Entry {
            kind,
            key,
            id,
            mode: 0o600,
            size: 1,
        };
        assert!(check_free(obj, &[e(Kind::Msg, 7, 3), e(Kind::Sem, 8, 4)]).is_ok());
        assert!(matches!(
            check_free(obj, &[e(Kind::Sem, 7, 9)]),
            Err(IpcError::KeyTaken { by: Some(9), .. })
        ));
        if procfs::index_bits() == 15 {
            // Same slot, other sequence number: the id cannot be had either.
            assert!(matches!(
                check_free(obj, &[e(Kind::Sem, 0, 3)]),
                Err(IpcError::IdTaken { .. })
            ));
        }
        let private = Obj {
            key: Some(0),
            ..obj
        };
        assert!(check_free(private, &[e(Kind::Sem, 0, 9)]).is_ok());
    }
}
