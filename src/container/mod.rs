//! Container job units (the role OpenVZ had in XtreemOS, D2.1.7 §4–5): a job
//! unit runs in a container with a random 32-bit id and its own PID, IPC,
//! mount, UTS (hostname `ct-ID`), network and cgroup namespaces, a job cgroup
//! with the JSDL limits and optionally a root filesystem of its own. The loader
//! inside (the container's init, see [`inside`]) sets the job's user, group and
//! limits, spawns it, and when it ends hands its status to the background
//! supervisor, which reports `{job, container, exit status or signal, rusage,
//! ended}` to the notify address ([`notify`]), retrying until the listener
//! takes it, then removes the container.
//!
//! A unit without a container (the native checkpointer) goes the same way
//! without the UTS, network and cgroup namespaces.
//!
//! State: `STATE/containers/ID/unit.json` (the unit), `status.json` (written by
//! the loader when the job ends), `report.json` (kept until delivered), `root/`
//! (a template unpacked for the unit).
//!
//! The container's network namespace is [`crate::net`]'s (`private`: only
//! `lo`; `veth:ADDR/PREFIX`: and an `eth0`).
//!
//! Interfaces: namespaces(7), pivot_root(2), sethostname(2), getrusage(2),
//! setgroups(2).

pub mod inside;
pub mod members;
pub mod notify;
pub mod rootfs;
mod sys;
pub mod unit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, CheckedError, PathError};
use crate::jsdl::{JobLimits, Rlimit};

pub use unit::{destroy, list, status, submit, SubmitSpec, Submitted, UnitStatus};

/// Default directory of root filesystem templates (`NAME.tar`, `NAME.tar.gz`).
pub const DEFAULT_TEMPLATE_DIR: &str = "/var/lib/xos/templates";
/// OpenVZ's template cache (the seed's), also searched when the default
/// directory is used.
pub const OPENVZ_TEMPLATE_DIR: &str = "/var/lib/vz/template/cache";
/// Environment variable overriding it.
pub const TEMPLATE_DIR_ENV: &str = "XOS_TEMPLATE_DIR";

const UNIT_MAGIC: &str = "xos-unit";
/// A unit's record, in its directory (and in the image of a native unit).
pub const UNIT_FILE: &str = "unit.json";
const UNIT_FORMAT: u32 = 1;

/// The user a job runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub user: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<PathBuf>,
}

/// A tmpfs of the container, with its content (a tar archive) at restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    /// Where, as the container sees it.
    pub target: PathBuf,
    /// Mount options (`size=…,mode=…`).
    pub options: String,
    /// Its content, on the host.
    pub archive: Option<PathBuf>,
}

/// What the container's init sets up before the job (or the restored
/// processes) run, and how it starts the job. Part of [`crate::app::LaunchSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSetup {
    /// The unit's id (the container id).
    pub id: u32,
    /// Own UTS, network and cgroup namespaces (a container); else a native unit.
    pub container: bool,
    pub hostname: Option<String>,
    /// Root filesystem (host path), entered with pivot_root.
    pub rootfs: Option<PathBuf>,
    pub tmpfs: Vec<Tmpfs>,
    pub creds: Option<Creds>,
    pub rlimits: Vec<(Rlimit, u64)>,
    /// The job's whole environment, when it must not inherit the caller's.
    pub env: Option<BTreeMap<String, String>>,
    pub cwd: Option<PathBuf>,
    /// Watchdog limits (seconds).
    pub wall_time: Option<u64>,
    pub cpu_time: Option<u64>,
    /// The unit's directory (host path): the loader writes how the job ended
    /// there, and a container's loader takes the job units that join it on
    /// its control socket there ([`members`]).
    pub dir: PathBuf,
}

/// A job unit of this node, as `unit.json` keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    pub id: u32,
    pub container: bool,
    pub job: Option<String>,
    /// The application (registry id) running the unit, once started.
    pub app: Option<u64>,
    pub hostname: Option<String>,
    pub notify: Option<String>,
    pub rootfs: Option<PathBuf>,
    pub template: Option<String>,
    pub creds: Option<Creds>,
    pub limits: JobLimits,
    pub command: Vec<String>,
    pub created: u64,
    /// For a job unit that joined the container of its job: that container.
    #[serde(default)]
    pub member_of: Option<u32>,
}

/// The directory of every unit of state directory `state`.
pub fn units_dir(state: &Path) -> PathBuf {
    state.join("containers")
}

/// The directory of unit `id`.
pub fn unit_dir(state: &Path, id: u32) -> PathBuf {
    units_dir(state).join(id.to_string())
}

/// Writes `unit.json` of a unit.
pub fn save_record(state: &Path, rec: &UnitRecord) -> Result<(), PathError> {
    save_record_at(&unit_dir(state, rec.id).join(UNIT_FILE), rec)
}

/// Writes a `unit.json` at `path`.
pub fn save_record_at(path: &Path, rec: &UnitRecord) -> Result<(), PathError> {
    let body = serde_json::to_vec_pretty(rec).expect("serializable");
    fsutil::write_checked(path, UNIT_MAGIC, UNIT_FORMAT, &body)
}

/// Reads `unit.json` of unit `id`.
pub fn load_record(state: &Path, id: u32) -> Result<UnitRecord, ContainerError> {
    if !unit_dir(state, id).is_dir() {
        return Err(ContainerError::NoSuchUnit(id));
    }
    load_record_at(&unit_dir(state, id).join(UNIT_FILE))
}

/// Reads a `unit.json`.
pub fn load_record_at(path: &Path) -> Result<UnitRecord, ContainerError> {
    let body = fsutil::read_checked(path, UNIT_MAGIC, UNIT_FORMAT)?;
    serde_json::from_slice(&body).map_err(|e| ContainerError::BadRecord {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Every unit id of state directory `state`.
pub fn unit_ids(state: &Path) -> Vec<u32> {
    fsutil::numbered_entries(&units_dir(state))
}

/// The application running container (or job unit) `spec` of state
/// directory `state`, when `spec` is the id of one.
pub fn app_of(state: &Path, spec: &str) -> Option<u64> {
    let id: u32 = spec.trim().parse().ok()?;
    load_record(state, id).ok()?.app
}

/// A random unit id, never 0.
fn random_id() -> std::io::Result<u32> {
    use std::io::Read;
    let mut b = [0u8; 4];
    loop {
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        let id = u32::from_ne_bytes(b);
        if id != 0 {
            return Ok(id);
        }
    }
}

/// Reserves a random id no unit of `state` uses (its directory, created
/// atomically) and returns it.
pub fn reserve_id(state: &Path) -> Result<u32, PathError> {
    let dir = units_dir(state);
    fsutil::create_dir_all(&dir, 0o700)?;
    loop {
        let id = random_id().map_err(|e| PathError::new("read", "/dev/urandom", e))?;
        match reserve(state, id) {
            Ok(()) => return Ok(id),
            Err(e) if e.errno() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// How long a restart waits for the unit of the same id that its image was
/// taken from with --kill on this node to be removed by its supervisor.
const OLD_UNIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reserves id `id` again for a restart: free, or held by the unit this
/// very image was taken from with --kill, whose supervisor is removing it.
pub fn reserve_again(state: &Path, id: u32) -> Result<(), ContainerError> {
    let start = std::time::Instant::now();
    loop {
        match reserve(state, id) {
            Ok(()) => return Ok(()),
            Err(e) if e.errno() != Some(libc::EEXIST) => return Err(e.into()),
            Err(_) => {}
        }
        let leaving = unit_dir(state, id).join(unit::NO_REPORT).exists();
        if !leaving || start.elapsed() > OLD_UNIT_TIMEOUT {
            return Err(ContainerError::InUse(id));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Reserves id `id` (a restart keeps its container's id); fails with EEXIST
/// when a unit of `state` has it.
pub fn reserve(state: &Path, id: u32) -> Result<(), PathError> {
    fsutil::create_dir_all(&units_dir(state), 0o700)?;
    let d = unit_dir(state, id);
    std::fs::create_dir(&d).map_err(|e| PathError::new("create", &d, e))
}

/// Errors of container job units; each names the unit, file or user.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no container or job unit {0} on this node")]
    NoSuchUnit(u32),
    #[error("container {0} is already in use on this node")]
    InUse(u32),
    #[error("{}: corrupt unit record: {reason}", path.display())]
    BadRecord { path: PathBuf, reason: String },
    #[error("user '{0}' is not in /etc/passwd")]
    NoUser(String),
    #[error("group '{0}' is not in /etc/group")]
    NoGroup(String),
    #[error("template '{name}' not found in {}", dir.display())]
    NoTemplate { name: String, dir: PathBuf },
    #[error("cannot unpack {}: {source}", archive.display())]
    Unpack {
        archive: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot save the tmpfs {} of container {id}: {source}", target.display())]
    SaveTmpfs {
        id: u32,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
    #[error(transparent)]
    Launch(#[from] crate::app::LaunchError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Checked(#[from] CheckedError),
}
