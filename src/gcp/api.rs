//! The common kernel checkpointer API of XtreemGCP: one interface through which
//! the grid checkpointing layer drives every kernel checkpointer of the node, each
//! behind a translation backend ([`super::native`] for the built-in checkpointer,
//! [`super::criu`] for CRIU; the container backend plugs in the same way).
//!
//! A *unit* is the part of a grid job on this node: one application of the
//! registry (started by `krgcr-run --job`), with its cgroup and namespaces. A
//! backend writes a unit's image into a directory it is given (inside a version
//! of the job, see [`super::meta`]) and rebuilds a unit from such a directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::app::LaunchError;
use crate::applock::LockError;
use crate::cgroup::CgroupError;
use crate::ckpt::CkptError;
use crate::fsutil::{CheckedError, PathError};
use crate::registry::{AppRecord, Registry, RegistryError};

/// What a backend can do beyond the basics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Multi-threaded processes.
    Threads,
    /// SysV IPC objects of the unit's IPC namespace, saved with it.
    SysvIpc,
    /// Unix sockets.
    UnixSockets,
    /// Established TCP connections.
    Tcp,
    /// Incremental (dirty-page) checkpoints.
    Incremental,
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Feature::Threads => "threads",
            Feature::SysvIpc => "sysv-ipc",
            Feature::UnixSockets => "unix-sockets",
            Feature::Tcp => "tcp",
            Feature::Incremental => "incremental",
        })
    }
}

/// Whether a backend works on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The backend's version, or why it cannot be used here.
    pub version: std::result::Result<String, String>,
    pub features: Vec<Feature>,
}

/// Options of a unit checkpoint.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Kill the unit once its image is written.
    pub kill: bool,
    /// Bound of every wait for the kernel.
    pub timeout: Duration,
    /// Wait for another operation on the unit instead of failing.
    pub wait: bool,
    /// Set to abort (the unit runs on, nothing is written).
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What a unit checkpoint wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitImage {
    pub backend: String,
    pub backend_version: String,
    pub processes: usize,
    pub bytes: u64,
    /// Kernel release and XSAVE features the image needs (0 when unknown).
    pub kernel: String,
    pub xfeatures: u64,
    pub stopped: Duration,
}

/// Options of a unit restart.
#[derive(Debug, Clone, Default)]
pub struct RestartOptions {
    /// Leave the rebuilt unit frozen.
    pub frozen: bool,
    /// cgroup parent of the new group.
    pub cgroup_parent: String,
    /// The job the unit belongs to (recorded in the registry).
    pub job: Option<String>,
    /// The command the unit was started with (its name in the registry).
    pub command: Vec<String>,
    /// The unit's callback program.
    pub callback: Option<PathBuf>,
    /// Where the unit's inherited stdio goes (/dev/null when not given).
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// Where a container unit reports its job's end (else where it did).
    pub notify: Option<String>,
}

/// Outcome of a unit restart in the calling process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarted {
    /// The unit runs again as this application id, under a background supervisor.
    Started(u64),
    /// This process is that supervisor (or a child of the restore) and has
    /// finished: it must exit at once with this status.
    ChildExit(i32),
}

/// Errors of the grid checkpointing layer; each names the job, unit or file.
#[derive(Debug, thiserror::Error)]
pub enum GcpError {
    #[error("unknown checkpointer '{0}' (known: native, criu, container)")]
    UnknownBackend(String),
    #[error("checkpointer {backend} is not available on this node: {why}")]
    Unavailable { backend: String, why: String },
    #[error("unit {unit}: {source}")]
    Unit {
        unit: u64,
        #[source]
        source: Box<GcpError>,
    },
    #[error(transparent)]
    Ckpt(#[from] CkptError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Checked(#[from] CheckedError),
    #[error("criu {op} failed: {message} (log: {})", log.display())]
    Criu {
        op: &'static str,
        message: String,
        log: PathBuf,
    },
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {}: {reason}", path.display())]
    BadImage { path: PathBuf, reason: String },
    #[error("invalid job id '{job}': {reason}")]
    BadJob { job: String, reason: &'static str },
    #[error("job {0} has no running unit on this node")]
    NoUnits(String),
    #[error("job {job}: unit {unit} is not part of it or not running")]
    NoSuchUnit { job: String, unit: u64 },
    #[error("job {job} has no checkpoint version {version}")]
    NoVersion { job: String, version: u64 },
    #[error("job {job} has no checkpoint in {}", dir.display())]
    NoCheckpoints { job: String, dir: PathBuf },
    #[error("job {job} version {version}: corrupt meta.json: {reason}")]
    BadMeta {
        job: String,
        version: u64,
        reason: String,
    },
    #[error("{source}; no version was written; units stopped before the failure run again: {}{}",
        restarted.iter().map(|(o, n)| format!("unit {o} as application {n}")).collect::<Vec<_>>().join(", "),
        if lost.is_empty() { String::new() } else {
            format!("; could not restart {}", lost.iter().map(|u| format!("unit {u}")).collect::<Vec<_>>().join(", "))
        })]
    RolledBack {
        source: Box<GcpError>,
        restarted: Vec<(u64, u64)>,
        lost: Vec<u64>,
    },
    #[error("unit {unit}: {message}")]
    Callback { unit: u64, message: String },
    #[error("job {job} {what}")]
    Phase { job: String, what: &'static str },
    #[error("interrupted by a signal; every unit runs on and no version was written")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, GcpError>;

/// The common kernel checkpointer API: what every translation backend implements.
pub trait Checkpointer {
    /// The backend's name as recorded in the registry and the metadata.
    fn name(&self) -> &'static str;

    /// Whether it works on this machine, its version and features.
    fn probe(&self) -> Probe;

    /// Fails with [`GcpError::Unavailable`] unless the backend works here.
    fn require(&self) -> Result<String> {
        self.probe().version.map_err(|why| GcpError::Unavailable {
            backend: self.name().to_string(),
            why,
        })
    }

    /// Freezes every task of the unit (the cgroup freezer).
    fn freeze(&self, unit: &AppRecord, timeout: Duration) -> Result<()> {
        Ok(unit.cgroup.freeze(timeout)?)
    }

    /// Thaws the unit.
    fn thaw(&self, unit: &AppRecord, timeout: Duration) -> Result<()> {
        Ok(unit.cgroup.thaw(timeout)?)
    }

    /// Kills every process of the unit, also when it is frozen.
    fn kill(&self, unit: &AppRecord, timeout: Duration) -> Result<()> {
        // A task frozen by the v1 freezer dies only once thawed: the signal
        // first, so that nothing runs on between the thaw and the kill.
        unit.cgroup.signal_all(Signal::SIGKILL)?;
        let _ = unit.cgroup.thaw(timeout);
        Ok(unit.cgroup.kill(timeout)?)
    }

    /// Writes the unit's image into `dir` (created by the caller, empty). The
    /// unit runs on (a frozen unit stays frozen) unless `opts.kill`. On failure
    /// the unit runs on untouched; the caller removes `dir`.
    fn checkpoint(
        &self,
        state: &Path,
        unit: &AppRecord,
        dir: &Path,
        opts: &DumpOptions,
    ) -> Result<UnitImage>;

    /// Checks the image in `dir` as far as possible without restarting it.
    fn verify(&self, dir: &Path) -> Result<()>;

    /// Rebuilds the unit of `dir` as a new application of `registry`, under a
    /// background supervisor; returns once it runs.
    fn restart(&self, registry: &Registry, dir: &Path, opts: &RestartOptions) -> Result<Restarted>;

    /// Removes an image.
    fn delete(&self, dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PathError::new("remove", dir, e).into()),
        }
    }
}
