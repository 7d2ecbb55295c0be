//! The lease store: which grid user holds which pool account, kept on disk in the
//! gridmapdir scheme of LCMAPS/Argus so that several daemons (one per node) can share
//! it over a network filesystem.
//!
//! `STATE/gridmapdir/` holds one empty file per pool account (`u5000`) and per pool
//! group (`g6000`). A user leases an account by hard-linking the account's file to a
//! file named after the user (`=` + percent-encoded `VO:GLOBALID`); link(2) is atomic
//! and fails with EEXIST when the user's name exists, and a link count of exactly 2
//! on the account file after the link proves no one else took it at the same moment
//! (two racers both see 3, both undo and retry). A group is leased the same way
//! (`#` + `VO:GROUP`). The user file's mtime is the lease's last use; an expired lease
//! is released by unlinking the user file, which frees the account. What NSS shows
//! about a lease (name, groups, subject) is in `STATE/meta/u5000`, a checked record
//! written after the lease is won and trusted only while its key matches the link.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::config::VoPool;
use crate::fsutil::{self, PathError};

const META_MAGIC: &str = "xos-lease";
const META_VERSION: u32 = 1;

/// What is recorded about a leased account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseMeta {
    /// The link name's key (`VO:GLOBALID`).
    pub key: String,
    pub uid: u32,
    pub name: String,
    pub vo: String,
    pub global_id: String,
    pub subject: String,
    pub role: String,
    /// Primary gid first.
    pub gids: Vec<u32>,
}

/// What is recorded about a leased group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub key: String,
    pub gid: u32,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease store: {0}")]
    Io(#[from] PathError),
    #[error("lease store: {0}")]
    Record(#[from] fsutil::CheckedError),
    #[error("VO {vo}: every pool account ({first}-{last}) is leased")]
    PoolExhausted { vo: String, first: u32, last: u32 },
    #[error("VO {vo}: {count} accounts are leased, the maximum per VO is {max}")]
    MaxLeases {
        vo: String,
        count: usize,
        max: usize,
    },
    #[error("VO {vo}: lease of {key} kept losing races; try again")]
    Contended { vo: String, key: String },
}

/// Percent-encodes a key into a file name (RFC 3986 unreserved characters stay).
pub fn encode_key(key: &str) -> String {
    let mut s = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.@".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Decodes [`encode_key`].
pub fn decode_key(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A lease as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub meta: LeaseMeta,
    /// Seconds since the epoch of the last use.
    pub last_used: u64,
}

/// The lease directory of one daemon (shared with others through the filesystem).
pub struct LeaseStore {
    dir: PathBuf,
    meta: PathBuf,
    tmp_seq: AtomicU64,
    host: String,
}

fn io<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> PathError + 'a {
    move |e| PathError::new(op, p, e)
}

impl LeaseStore {
    /// Opens (creating) the store under `state_dir` and makes sure a pool file
    /// exists for every account and group of `pools`.
    pub fn open(state_dir: &Path, pools: &[VoPool]) -> Result<LeaseStore, LeaseError> {
        let dir = state_dir.join("gridmapdir");
        let meta = state_dir.join("meta");
        fsutil::create_dir_all(&dir, 0o755)?;
        fsutil::create_dir_all(&meta, 0o755)?;
        for p in pools {
            for uid in p.uids.iter() {
                touch_new(&dir.join(format!("u{uid}")))?;
            }
            for gid in p.gids.iter() {
                touch_new(&dir.join(format!("g{gid}")))?;
            }
        }
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(LeaseStore {
            dir,
            meta,
            tmp_seq: AtomicU64::new(0),
            host,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (mtime of gridmapdir, mtime of meta) in nanoseconds: changes whenever any
    /// daemon sharing the store leases, releases or records something.
    pub fn generation(&self) -> (i128, i128) {
        let m = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128)
                .unwrap_or(0)
        };
        (m(&self.dir), m(&self.meta))
    }

    fn user_link(&self, key: &str) -> PathBuf {
        self.dir.join(format!("={}", encode_key(key)))
    }

    fn group_link(&self, key: &str) -> PathBuf {
        self.dir.join(format!("#{}", encode_key(key)))
    }

    /// Inode of a pool file -> its id, for ids in `range` (`u` or `g` files).
    fn id_of_inode(&self, prefix: char, ino: u64) -> Result<Option<u32>, LeaseError> {
        for ent in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let ent = ent.map_err(io("list", &self.dir))?;
            if ent.ino() != ino {
                continue;
            }
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_prefix(prefix).and_then(|n| n.parse().ok()) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// The id currently linked to `link`, if any.
    fn linked_id(&self, prefix: char, link: &Path) -> Result<Option<u32>, LeaseError> {
        match fs::metadata(link) {
            Ok(m) => self.id_of_inode(prefix, m.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PathError::new("stat", link, e).into()),
        }
    }

    /// Leases (or finds the existing lease of) an id of `ids` for `key`. `max`
    /// bounds the leases of this range (0: none beyond the range).
    fn lease(
        &self,
        prefix: char,
        link: &Path,
        ids: super::config::IdRange,
        vo: &str,
        key: &str,
        max: usize,
    ) -> Result<(u32, bool), LeaseError> {
        for _attempt in 0..20 {
            if let Some(id) = self.linked_id(prefix, link)? {
                return Ok((id, false));
            }
            let mut free = Vec::new();
            let mut count = 0;
            for id in ids.iter() {
                let p = self.dir.join(format!("{prefix}{id}"));
                let md = fs::metadata(&p).map_err(io("stat", &p))?;
                if md.nlink() == 1 {
                    free.push(p);
                } else {
                    count += 1;
                }
            }
            if max > 0 && count >= max {
                return Err(LeaseError::MaxLeases {
                    vo: vo.into(),
                    count,
                    max,
                });
            }
            if free.is_empty() {
                return Err(LeaseError::PoolExhausted {
                    vo: vo.into(),
                    first: ids.first,
                    last: ids.last,
                });
            }
            // Start at a point that differs between racers so they rarely collide.
            let start = (std::process::id() as usize
                + self.tmp_seq.fetch_add(1, Ordering::Relaxed) as usize)
                % free.len();
            let mut lost_key = false;
            for p in free[start..].iter().chain(free[..start].iter()) {
                match fs::hard_link(p, link) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        // Someone leased for this very key meanwhile: use theirs.
                        lost_key = true;
                        break;
                    }
                    Err(e) => return Err(PathError::new("link", link, e).into()),
                }
                let n = fs::metadata(p).map_err(io("stat", p))?.nlink();
                if n == 2 {
                    let id = p.file_name().unwrap().to_string_lossy()[1..]
                        .parse()
                        .unwrap_or(0);
                    return Ok((id, true));
                }
                // Another key linked the same account at the same moment: undo.
                fs::remove_file(link).map_err(io("unlink", link))?;
            }
            if !lost_key {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Err(LeaseError::Contended {
            vo: vo.into(),
            key: key.into(),
        })
    }

    /// Leases an account of `pool` for `key` (`VO:GLOBALID`): (uid, newly leased).
    pub fn lease_user(
        &self,
        pool: &VoPool,
        key: &str,
        max: usize,
    ) -> Result<(u32, bool), LeaseError> {
        let link = self.user_link(key);
        let r = self.lease('u', &link, pool.uids, &pool.vo, key, max)?;
        self.touch(key)?;
        Ok(r)
    }

    /// Leases a gid of `pool` for the VO group `key` (`VO:GROUP`); groups are kept.
    pub fn lease_group(&self, pool: &VoPool, key: &str) -> Result<(u32, bool), LeaseError> {
        let link = self.group_link(key);
        self.lease('g', &link, pool.gids, &pool.vo, key, 0)
    }

    /// Marks the lease of `key` as used now.
    pub fn touch(&self, key: &str) -> Result<(), LeaseError> {
        let link = self.user_link(key);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&link)
            .map_err(io("open", &link))?;
        f.set_modified(SystemTime::now())
            .map_err(io("set time of", &link))?;
        Ok(())
    }

    /// Releases the lease of `key` (no-op if there is none).
    pub fn release(&self, key: &str) -> Result<bool, LeaseError> {
        let link = self.user_link(key);
        match fs::remove_file(&link) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PathError::new("unlink", &link, e).into()),
        }
    }

    fn write_record(&self, name: &str, body: &[u8]) -> Result<(), LeaseError> {
        let path = self.meta.join(name);
        // The temporary name is unique across the nodes sharing the store.
        let tmp = self.meta.join(format!(
            ".{name}.{}.{}.{}",
            self.host,
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let data = fsutil::encode_checked(META_MAGIC, META_VERSION, body);
        fs::write(&tmp, &data).map_err(io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            PathError::new("rename into", &path, e)
        })?;
        Ok(())
    }

    pub fn write_user(&self, m: &LeaseMeta) -> Result<(), LeaseError> {
        self.write_record(
            &format!("u{}", m.uid),
            &serde_json::to_vec(m).expect("serializable"),
        )
    }

    pub fn write_group(&self, m: &GroupMeta) -> Result<(), LeaseError> {
        self.write_record(
            &format!("g{}", m.gid),
            &serde_json::to_vec(m).expect("serializable"),
        )
    }

    fn read_record<T: for<'a> Deserialize<'a>>(&self, name: &str) -> Option<T> {
        let p = self.meta.join(name);
        let body = fsutil::read_checked(&p, META_MAGIC, META_VERSION).ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Every live lease and leased group, read from the directory: (users, groups).
    pub fn scan(&self) -> Result<(Vec<Found>, Vec<GroupMeta>), LeaseError> {
        let mut links: HashMap<u64, (char, String, i64)> = HashMap::new();
        let mut pools: Vec<(char, u32, u64)> = Vec::new();
        for ent in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let ent = ent.map_err(io("list", &self.dir))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let mut chars = name.chars();
            match chars.next() {
                Some(c @ ('=' | '#')) => {
                    if let Some(key) = decode_key(chars.as_str()) {
                        let mtime = ent.metadata().map(|m| m.mtime()).unwrap_or(0);
                        links.insert(ent.ino(), (c, key, mtime));
                    }
                }
                Some(c @ ('u' | 'g')) => {
                    if let Ok(id) = chars.as_str().parse() {
                        pools.push((c, id, ent.ino()));
                    }
                }
                _ => {}
            }
        }
        let mut users = Vec::new();
        let mut groups = Vec::new();
        for (c, id, ino) in pools {
            let Some((lc, key, mtime)) = links.get(&ino) else {
                continue;
            };
            match (c, lc) {
                ('u', '=') => {
                    if let Some(m) = self.read_record::<LeaseMeta>(&format!("u{id}")) {
                        if &m.key == key && m.uid == id {
                            users.push(Found {
                                meta: m,
                                last_used: (*mtime).max(0) as u64,
                            });
                        }
                    }
                }
                ('g', '#') => {
                    if let Some(m) = self.read_record::<GroupMeta>(&format!("g{id}")) {
                        if &m.key == key && m.gid == id {
                            groups.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        users.sort_by_key(|f| f.meta.uid);
        groups.sort_by_key(|g| g.gid);
        Ok((users, groups))
    }

    /// Keys of user leases whose last use is older than `idle` seconds.
    pub fn expired(&self, idle: u64) -> Result<Vec<(String, u32)>, LeaseError> {
        let t = now();
        let (users, _) = self.scan()?;
        Ok(users
            .into_iter()
            .filter(|f| f.last_used + idle <= t)
            .map(|f| (f.meta.key, f.meta.uid))
            .collect())
    }
}

/// Creates an empty file unless it exists.
fn touch_new(p: &Path) -> Result<(), PathError> {
    match fs::OpenOptions::new().write(true).create_new(true).open(p) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(PathError::new("create", p, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::IdRange;
    use super::*;

    fn pool() -> VoPool {
        VoPool {
            vo: "vo".into(),
            uids: IdRange {
                first: 5000,
                last: 5002,
            },
            gids: IdRange {
                first: 6000,
                last: 6001,
            },
        }
    }

    #[test]
    fn keys_encode() {
        let k = "vo:/CN=a b%";
        let e = encode_key(k);
        assert!(!e.contains('/'));
        assert_eq!(decode_key(&e).as_deref(), Some(k));
    }

    #[test]
    fn lease_same_user_same_account_and_exhaustion() {
        let d = tempfile::tempdir().unwrap();
        let s = LeaseStore::open(d.path(), &[pool()]).unwrap();
        let (a, new) = s.lease_user(&pool(), "vo:a", 0).unwrap();
        assert!(new);
        assert_eq!(s.lease_user(&pool(), "vo:a", 0).unwrap(), (a, false));
        let (b, _) = s.lease_user(&pool(), "vo:b", 0).unwrap();
        assert_ne!(a, b);
        assert!(matches!(
            s.lease_user(&pool(), "vo:c", 2),
            Err(LeaseError::MaxLeases { count: 2, .. })
        ));
        s.lease_user(&pool(), "vo:c", 0).unwrap();
        assert!(matches!(
            s.lease_user(&pool(), "vo:d", 0),
            Err(LeaseError::PoolExhausted { .. })
        ));
        assert!(s.release("vo:b").unwrap());
        let (d2, new) = s.lease_user(&pool(), "vo:d", 0).unwrap();
        assert!(new);
        assert_eq!(d2, b, "the released account is recycled");
        // A second store on the same directory sees the same leases.
        let s2 = LeaseStore::open(d.path(), &[pool()]).unwrap();
        assert_eq!(s2.lease_user(&pool(), "vo:a", 0).unwrap(), (a, false));
        let (g, _) = s.lease_group(&pool(), "vo:grp").unwrap();
        assert_eq!(s2.lease_group(&pool(), "vo:grp").unwrap(), (g, false));
    }

    #[test]
    fn scan_trusts_only_matching_records() {
        let d = tempfile::tempdir().unwrap();
        let s = LeaseStore::open(d.path(), &[pool()]).unwrap();
        let (uid, _) = s.lease_user(&pool(), "vo:a", 0).unwrap();
        let mut m = LeaseMeta {
            key: "vo:a".into(),
            uid,
            name: "a".into(),
            vo: "vo".into(),
            global_id: "a".into(),
            subject: "/CN=a".into(),
            role: "member".into(),
            gids: vec![6000],
        };
        s.write_user(&m).unwrap();
        assert_eq!(s.scan().unwrap().0.len(), 1);
        m.key = "vo:other".into();
        s.write_user(&m).unwrap();
        assert!(s.scan().unwrap().0.is_empty(), "stale record ignored");
        s.release("vo:a").unwrap();
        assert!(s.expired(0).unwrap().is_empty());
    }
}
