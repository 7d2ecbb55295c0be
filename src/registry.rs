//! The on-disk registry of applications started by xos.
//!
//! Layout under the state directory (default `/var/lib/xos`, or `$XOS_STATE_DIR`):
//! `next-id` (the next application id, under `lock`), `apps/<ID>.rec` (one checked
//! record per running application, see [`crate::fsutil`]), `token` (a random name
//! of this state directory, see [`Registry::token`]). Ids are never reused, so
//! images and logs named after an id cannot be mistaken for a later application's.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::cgroup::{FreezerState, Group, Limits};
use crate::fsutil::{self, CheckedError, PathError};
use crate::ns::Namespaces;
use crate::process;

/// Environment variable that overrides the default state directory.
pub const STATE_ENV: &str = "XOS_STATE_DIR";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xos";

const MAGIC: &str = "xos-app";
const FORMAT: u32 = 1;
/// Hex digits of a state directory's token.
const TOKEN_LEN: usize = 8;

/// The state directory: the option if given, else `$XOS_STATE_DIR`, else the default.
pub fn state_dir(option: Option<&Path>) -> PathBuf {
    match option {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os(STATE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    }
}

/// One application (or job) known to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub id: u64,
    /// Host pid of the application's root process (pid 1 of its PID namespace).
    pub root_pid: i32,
    /// Start time of the root process (clock ticks since boot), against pid reuse.
    pub root_starttime: u64,
    /// Host pid of the supervising `krgcr-run`, if one waits for the application.
    pub supervisor_pid: Option<i32>,
    pub cgroup: Group,
    pub namespaces: Namespaces,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub command: Vec<String>,
    pub cwd: PathBuf,
    /// Start time, seconds since the Unix epoch.
    pub started: u64,
    /// Kernel checkpointer that handles this application (`native`, `criu`).
    pub checkpointer: String,
    pub limits: Limits,
    /// Grid job this application is a unit of (`krgcr-run --job`).
    #[serde(default)]
    pub job: Option<String>,
    /// Program called at its checkpoints and restarts (`krgcr-run --callback`).
    #[serde(default)]
    pub callback: Option<PathBuf>,
    /// Its network (`krgcr-run --net`).
    #[serde(default)]
    pub net: crate::net::NetMode,
}

/// The state of an application, derived from the kernel, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    Running,
    Freezing,
    Frozen,
    /// The root process is gone (the application ended without its supervisor
    /// cleaning up, or the machine rebooted).
    Gone,
}

impl std::fmt::Display for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppState::Running => "running",
            AppState::Freezing => "freezing",
            AppState::Frozen => "frozen",
            AppState::Gone => "gone",
        })
    }
}

impl AppRecord {
    /// Whether the root process still runs.
    pub fn alive(&self) -> bool {
        process::alive(self.root_pid, self.root_starttime)
    }

    /// Host pid of the application's first process below its init: the command
    /// krgcr-run started, or the oldest process restart rebuilt under the init.
    pub fn command_pid(&self) -> Option<i32> {
        let pids = self.cgroup.pids().ok()?;
        pids.into_iter()
            .filter_map(|p| process::stat(p).ok())
            .filter(|s| s.ppid == self.root_pid)
            .min_by_key(|s| (s.starttime, s.pid))
            .map(|s| s.pid)
    }

    /// Current state as the kernel reports it.
    pub fn state(&self) -> AppState {
        if !self.alive() {
            return AppState::Gone;
        }
        match self.cgroup.freezer_state() {
            Ok(FreezerState::Frozen) => AppState::Frozen,
            Ok(FreezerState::Freezing) => AppState::Freezing,
            _ => AppState::Running,
        }
    }
}

/// Errors of the registry; each names the application or the file.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("state directory {} does not exist (see --state-dir and $XOS_STATE_DIR)", .0.display())]
    NoStateDir(PathBuf),
    #[error("application {0} is not in the registry")]
    NotFound(u64),
    #[error("no application has id or process {0}")]
    NoSuchApp(String),
    #[error("'{0}' is not an application id or a pid")]
    BadSpec(String),
    #[error("corrupt application record: {0}")]
    Corrupt(#[from] CheckedError),
    #[error("corrupt application record {}: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

type Result<T> = std::result::Result<T, RegistryError>;

/// Access to the registry in one state directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// Opens (creating if needed) the registry under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Registry> {
        fsutil::create_dir_all(&state_dir.join("apps"), 0o755)?;
        Ok(Registry {
            root: state_dir.to_path_buf(),
        })
    }

    /// Opens the registry under `state_dir`, which must exist: for commands that
    /// only read or change what is there, so that a mistyped directory is reported
    /// instead of created.
    pub fn open_existing(state_dir: &Path) -> Result<Registry> {
        if !state_dir.is_dir() {
            return Err(RegistryError::NoStateDir(state_dir.to_path_buf()));
        }
        Self::open(state_dir)
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The logs of application `id` (`logs/ID.out`, `logs/ID.err`), where a
    /// detached application's output goes.
    pub fn log_paths(&self, id: u64) -> [PathBuf; 2] {
        let dir = self.root.join("logs");
        ["out", "err"].map(|ext| dir.join(format!("{id}.{ext}")))
    }

    fn record_path(&self, id: u64) -> PathBuf {
        self.root.join("apps").join(format!("{id}.rec"))
    }

    fn lock(&self) -> Result<Flock<fs::File>> {
        let lock_path = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| PathError::new("open", &lock_path, e))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| RegistryError::Lock {
            path: lock_path.clone(),
            source: e,
        })
    }

    /// A random token naming this state directory, made on first use and kept in
    /// `token`. Application ids are only unique within one state directory; the
    /// token makes names shared by the whole machine (job cgroups) unique too.
    pub fn token(&self) -> Result<String> {
        let path = self.root.join("token");
        let valid = |s: &str| s.len() == TOKEN_LEN && s.bytes().all(|b| b.is_ascii_hexdigit());
        if let Ok(s) = fs::read_to_string(&path) {
            if valid(s.trim()) {
                return Ok(s.trim().to_string());
            }
        }
        let _lock = self.lock()?;
        match fs::read_to_string(&path) {
            Ok(s) if valid(s.trim()) => return Ok(s.trim().to_string()),
            _ => {}
        }
        let mut raw = [0u8; TOKEN_LEN / 2];
        let urandom = Path::new("/dev/urandom");
        fs::File::open(urandom)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
            .map_err(|e| PathError::new("read", urandom, e))?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        fsutil::write_atomic(&path, format!("{token}\n").as_bytes(), 0o644)?;
        Ok(token)
    }

    /// Hands out a fresh application id; concurrent callers never get the same one.
    pub fn allocate_id(&self) -> Result<u64> {
        let _lock = self.lock()?;
        let next_path = self.root.join("next-id");
        let next: u64 = match fs::read_to_string(&next_path) {
            Ok(s) => s.trim().parse().unwrap_or(1).max(1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(PathError::new("read", &next_path, e).into()),
        };
        // Never hand out an id that still has a record (a lost next-id file).
        let mut id = next;
        while self.record_path(id).exists() {
            id += 1;
        }
        fsutil::write_atomic(&next_path, format!("{}\n", id + 1).as_bytes(), 0o644)?;
        Ok(id)
    }

    /// Writes (or replaces) a record atomically. The exit status of an earlier
    /// run of the same application (before a checkpoint and restart) is dropped.
    pub fn save(&self, rec: &AppRecord) -> Result<()> {
        let body = serde_json::to_vec_pretty(rec).expect("records always serialize");
        fsutil::write_checked(&self.record_path(rec.id), MAGIC, FORMAT, &body)?;
        let _ = fs::remove_file(self.exit_path(rec.id));
        Ok(())
    }

    fn exit_path(&self, id: u64) -> PathBuf {
        self.root.join("apps").join(format!("{id}.exit"))
    }

    /// Records the exit status of application `id` once it has ended, before its
    /// record is removed (`apps/ID.exit`, read by `checkpoint --wait`).
    pub fn save_exit(&self, id: u64, code: i32) -> Result<()> {
        fsutil::write_atomic(&self.exit_path(id), format!("{code}\n").as_bytes(), 0o644)?;
        Ok(())
    }

    /// The exit status recorded for application `id`, if its last run has ended
    /// under its supervisor.
    pub fn exit_status(&self, id: u64) -> Option<i32> {
        fs::read_to_string(self.exit_path(id))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn load_path(path: &Path) -> Result<AppRecord> {
        let body = fsutil::read_checked(path, MAGIC, FORMAT)?;
        serde_json::from_slice(&body).map_err(|source| RegistryError::Decode {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads the record of application `id`.
    pub fn load(&self, id: u64) -> Result<AppRecord> {
        let path = self.record_path(id);
        if !path.exists() {
            return Err(RegistryError::NotFound(id));
        }
        Self::load_path(&path)
    }

    /// Waits, at most `timeout`, until the supervisor of `rec`, a run that has
    /// ended, is done with it: until that supervisor is gone or the record is
    /// removed or replaced. Its cleanup destroys the application's cgroup, whose
    /// path a restart reuses. Returns whether it is done.
    pub fn wait_cleanup(&self, rec: &AppRecord, timeout: std::time::Duration) -> bool {
        let Some(sup) = rec.supervisor_pid else {
            return true;
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let same = self.load(rec.id).is_ok_and(|r| r.root_pid == rec.root_pid);
            let running = process::stat(sup).is_ok_and(|st| st.state != 'Z');
            if !same || !running {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Removes the record of application `id` (no error if it is already gone).
    pub fn remove(&self, id: u64) -> Result<()> {
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PathError::new("remove", &path, e).into()),
        }
    }

    /// Every record, sorted by id; a record that cannot be read is returned as its
    /// error so the caller can report it.
    pub fn list(&self) -> Result<Vec<std::result::Result<AppRecord, RegistryError>>> {
        let dir = self.root.join("apps");
        let mut ids = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| PathError::new("list", &dir, e))? {
            let ent = ent.map_err(|e| PathError::new("list", &dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".rec")
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids
            .into_iter()
            .map(|id| Self::load_path(&self.record_path(id)))
            .collect())
    }

    /// Finds an application by id, or by the host pid of any process inside it.
    /// An id takes precedence over a pid with the same number.
    pub fn resolve(&self, spec: &str) -> Result<AppRecord> {
        let n: u64 = spec
            .trim()
            .parse()
            .map_err(|_| RegistryError::BadSpec(spec.to_string()))?;
        match self.load(n) {
            Ok(r) => return Ok(r),
            Err(RegistryError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let pid = i32::try_from(n).map_err(|_| RegistryError::NoSuchApp(spec.to_string()))?;
        for rec in self.list()?.into_iter().flatten() {
            if rec.root_pid == pid || rec.cgroup.contains(pid) {
                return Ok(rec);
            }
        }
        Err(RegistryError::NoSuchApp(spec.to_string()))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Layout;

    fn record(id: u64) -> AppRecord {
        AppRecord {
            id,
            root_pid: 1,
            root_starttime: 1,
            supervisor_pid: None,
            cgroup: Layout::v2("/nonexistent")
                .group(&format!("t/app-{id}"))
                .unwrap(),
            namespaces: Namespaces::default(),
            owner_uid: 0,
            owner_gid: 0,
            command: vec!["sleep".into(), "1".into()],
            cwd: "/".into(),
            started: now(),
            checkpointer: "native".into(),
            net: Default::default(),
            limits: Limits::default(),
            job: None,
            callback: None,
        }
    }

    #[test]
    fn save_load_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(d.path()).unwrap();
        let a = r.allocate_id().unwrap();
        let b = r.allocate_id().unwrap();
        assert_eq!((a, b), (1, 2));
        r.save(&record(a)).unwrap();
        r.save(&record(b)).unwrap();
        assert_eq!(r.load(a).unwrap(), record(a));
        let all = r.list().unwrap();
        assert_eq!(all.len(), 2);
        r.remove(a).unwrap();
        assert!(matches!(r.load(a), Err(RegistryError::NotFound(1))));
        // Ids are not reused after removal.
        assert_eq!(r.allocate_id().unwrap(), 3);
        assert_eq!(r.resolve("2").unwrap().id, 2);
        assert!(matches!(r.resolve("abc"), Err(RegistryError::BadSpec(_))));
    }

    #[test]
    fn token_is_kept_and_differs_between_state_dirs() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ra = Registry::open(a.path()).unwrap();
        let t = ra.token().unwrap();
        assert_eq!(t.len(), TOKEN_LEN);
        assert_eq!(ra.token().unwrap(), t, "the token is stable");
        assert_eq!(Registry::open(a.path()).unwrap().token().unwrap(), t);
        assert_ne!(Registry::open(b.path()).unwrap().token().unwrap(), t);
        // A damaged token file is replaced, not used.
        fs::write(a.path().join("token"), "x/y\n").unwrap();
        let t2 = ra.token().unwrap();
        assert!(t2.len() == TOKEN_LEN && t2.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn corrupt_record_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(d.path()).unwrap();
        r.save(&record(1)).unwrap();
        r.save(&record(2)).unwrap();
        let p = d.path().join("apps/2.rec");
        let mut data = fs::read(&p).unwrap();
        let n = data.len();
        data[n - 5] ^= 1;
        fs::write(&p, data).unwrap();
        let all = r.list().unwrap();
        assert!(all[0].is_ok());
        let err = all[1].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("apps/2.rec") && err.contains("checksum"),
            "{err}"
        );
        assert!(matches!(r.load(2), Err(RegistryError::Corrupt(_))));
        // A record cut short is reported too, not dropped.
        fs::write(&p, b"xos-app 1 00000000 999\n{").unwrap();
        assert!(r.list().unwrap()[1].is_err());
    }

    #[test]
    fn concurrent_allocation_is_unique() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().to_path_buf();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || {
                    let r = Registry::open(&p).unwrap();
                    (0..25)
                        .map(|_| r.allocate_id().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "an id was handed out twice");
    }
}
