//! The native checkpointer: checkpoint and restart of unmodified process trees,
//! threads included, from user space (the role BLCR and the Kerrighed
//! checkpointer had).
//!
//! Checkpoint stops every task of the application under ptrace(2) ([`seize`]),
//! saves each process and its threads ([`dump`], [`thread`], [`timer`]) and lets
//! them go; nothing in a task is changed unless a safety frame ([`sigframe`])
//! would put it back if the checkpointer died. Restart ([`restore`]) rebuilds the
//! tree inside a new PID namespace with the same pids and tids from the
//! application's init.

mod affinity;
pub mod dump;
mod files;
pub mod image;
mod procstate;
mod ptrace;
pub mod restore;
mod seize;
mod semundo;
mod session;
mod sigframe;
pub mod sockets;
mod sys;
mod sysvshm;
mod thread;
mod timer;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::applock::{AppLock, LockError};
use crate::cgroup::{CgroupError, FreezerState};
use crate::fsutil::{self, CheckedError, PathError};
use crate::registry::{self, AppRecord};

/// Errors of the checkpointer; each names the process (pid inside the
/// application), the file or the application.
#[derive(Debug, thiserror::Error)]
pub enum CkptError {
    #[error("process {pid}: cannot {what}: {source}")]
    Ptrace {
        pid: i32,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("process {pid}: {what} failed inside the process: {source}")]
    Remote {
        pid: i32,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("process {pid}: cannot {what}: {source}")]
    Proc {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: cannot access memory at {addr:#x}: {source}")]
    Memory {
        pid: i32,
        addr: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} did not {what} in time (see --timeout)")]
    Timeout { pid: i32, what: String },
    #[error(
        "interrupted by a signal; the application runs on unchanged and no version was written"
    )]
    Cancelled,
    #[error("process {pid} ended during the operation")]
    TraceeDied { pid: i32 },
    #[error("process {pid}: no syscall instruction found in its vDSO")]
    NoSyscallInsn { pid: i32 },
    #[error("process {pid}: cannot checkpoint {what}")]
    Unsupported { pid: i32, what: String },
    #[error("application {0} is not running")]
    NotRunning(u64),
    #[error("application {0} has no process to checkpoint")]
    Empty(u64),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("image {}: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Checked(#[from] CheckedError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("image {}: {reason}", path.display())]
    BadImage { path: PathBuf, reason: String },
    #[error("application {app} has no checkpoint version {version}")]
    NoVersion { app: u64, version: u64 },
    #[error("image of application {app} version {version} needs {what}")]
    Incompatible {
        app: u64,
        version: u64,
        what: String,
    },
    #[error("restore of process {pid} failed: {reason}")]
    Restore { pid: i32, reason: String },
}

type Result<T> = std::result::Result<T, CkptError>;

/// Options of a checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// Kill the application once the image is written (for migration).
    pub kill: bool,
    /// How long to wait for the kernel (the freezer, every task's stop).
    pub timeout: Duration,
    /// Wait for another operation on the application instead of failing.
    pub wait: bool,
    /// Largest deleted file or memfd whose content is saved with the image.
    pub ghost_limit: u64,
    /// Save Unix streams connected to processes outside the application as
    /// cut (the application sees its peer gone after restart) instead of
    /// refusing the checkpoint.
    pub external_unix: bool,
    /// Set (by a signal handler) to abort: the application is let go unchanged
    /// and no version is written.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What a checkpoint produced.
#[derive(Debug, Clone)]
pub struct Checkpointed {
    pub version: u64,
    pub dir: PathBuf,
    pub processes: usize,
    pub bytes: u64,
    /// Time the application was stopped (freeze to resume).
    pub stopped: Duration,
    /// The figures also stored in the image.
    pub stats: image::Stats,
}

/// The kernel release, from uname(2).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes the next version of `rec`'s image under `state`; the application keeps
/// running (or stays frozen if it was), or is killed with `opts.kill`. On failure
/// no version is left and the application runs on untouched.
pub fn checkpoint(state: &Path, rec: &AppRecord, opts: &CheckpointOptions) -> Result<Checkpointed> {
    let _lock = AppLock::acquire(state, rec.id, "checkpoint", opts.wait)?;
    if !rec.alive() {
        return Err(CkptError::NotRunning(rec.id));
    }
    let group = &rec.cgroup;
    let was_frozen = group.freezer_state()? == FreezerState::Frozen;
    let _following = affinity::start();
    let start = std::time::Instant::now();
    let seizure = seize::seize_all(group, rec.root_pid, opts.timeout, opts.cancel.as_ref())?;
    let freezing = start.elapsed();
    log::debug!("application {}: every task stopped in {freezing:?}", rec.id);
    let mut procs = seizure.procs;
    let result = if procs.is_empty() {
        Err(CkptError::Empty(rec.id))
    } else {
        write_image(state, rec, &mut procs, &seizure.zombies, opts)
    };
    if opts.kill && result.is_ok() {
        let mut result = result;
        // Killed while still stopped: the application does not run one more
        // instruction past its image. With SysV objects, one process at a
        // time, which shows their SEM_UNDO lists.
        if let Some(pending) = result.as_mut().ok().filter(|p| p.img.ipc) {
            let order: Vec<(i32, i32)> = procs.iter().map(|p| (p.host, p.ns)).collect();
            let lists = semundo::kill_measuring(procs[0].host, &order, opts.timeout);
            for p in pending.img.processes.iter_mut() {
                p.sem_undo = lists.get(&p.pid).cloned().unwrap_or_default();
            }
        }
        for p in &procs {
            p.kill();
        }
        seize::reap_all(opts.timeout);
        let stopped = start.elapsed();
        group.kill(opts.timeout)?;
        return finish_image(state, result?, freezing, stopped);
    }
    // A frozen application is frozen again while its tasks are still held
    // (the freezer takes stopped and traced tasks as they are): let go, they
    // enter the freezer before running one more instruction past the image.
    log::debug!("application {}: saved at {:?}", rec.id, start.elapsed());
    if was_frozen {
        let _ = group.freeze(opts.timeout);
    }
    for p in &procs {
        p.detach();
    }
    let stopped = start.elapsed();
    log::debug!("application {}: let go at {stopped:?}", rec.id);
    finish_image(state, result?, freezing, stopped)
}

/// In an application's image directory: where the signal restorer of its
/// code mappings was found (see `Dumper::remember_restorers`).
const RESTORERS: &str = ".restorers";

/// An image whose data is written but not yet synced nor visible.
struct Pending {
    tmp: PathBuf,
    img: image::Image,
}

/// Saves every process into a temporary version directory (the part that needs
/// the application stopped).
fn write_image(
    state: &Path,
    rec: &AppRecord,
    procs: &mut [seize::Seized],
    zombies: &[i32],
    opts: &CheckpointOptions,
) -> Result<Pending> {
    let version = crate::store::next_version(state, rec.id);
    let app_dir = image::app_dir(state, rec.id);
    fsutil::create_dir_all(&app_dir, 0o700)?;
    // Under the lock, any temporary version (.N.tmp) or file being replaced
    // (.NAME.tmp.PID, from fsutil::write_atomic) is a leftover of a killed
    // checkpoint.
    for ent in std::fs::read_dir(&app_dir).into_iter().flatten().flatten() {
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && (name.ends_with(".tmp") || name.contains(".tmp.")) {
            let _ = match ent.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(ent.path()),
                _ => std::fs::remove_file(ent.path()),
            };
        }
    }
    let tmp = app_dir.join(format!(".{version}.tmp"));
    fsutil::create_dir_all(&tmp, 0o700)?;
    let ns_pids: HashMap<i32, i32> = procs.iter().map(|p| (p.host, p.ns)).collect();
    let result = (|| {
        let mut d = dump::Dumper::new(&tmp, rec.root_pid, ns_pids);
        let restorers = app_dir.join(RESTORERS);
        d.remember_restorers(&restorers);
        d.cancel = opts.cancel.clone();
        d.ghost_limit = opts.ghost_limit;
        d.sockets = sockets::Dumper::new(
            rec.root_pid,
            sockets::DumpOptions {
                external_unix: opts.external_unix,
                private_net: rec.net.is_private(),
                app: rec.id,
            },
        );
        let mut out = Vec::new();
        for p in procs.iter_mut() {
            out.push(d.dump(&mut p.threads, p.host, p.stopped)?);
        }
        d.save_restorers(&restorers);
        let ipc = sysvshm::save(procs[0].host, &tmp, d.sysv_shm)?;
        let xfeatures = out
            .iter()
            .flat_map(|p| p.threads.iter())
            .map(|t| image::xstate_features(&image::from_hex(&t.xstate).unwrap_or_default()))
            .fold(0, |a, b| a | b);
        let (sockets, socket_data) = d
            .finish_sockets()
            .map_err(|what| CkptError::Unsupported { pid: 1, what })?;
        let img = image::Image {
            app: rec.id,
            version,
            created: registry::now(),
            kernel: kernel_release(),
            xfeatures,
            command: rec.command.clone(),
            cwd: rec.cwd.clone(),
            owner_uid: rec.owner_uid,
            owner_gid: rec.owner_gid,
            limits: rec.limits.clone(),
            processes: out,
            zombies: zombies
                .iter()
                .map(|z| d.zombie(*z))
                .collect::<Result<_>>()?,
            shared: d.shared.values().cloned().collect(),
            ghosts: d.ghosts.values().cloned().collect(),
            pipes: d.pipes.values().cloned().collect(),
            fifos: d.fifos.values().cloned().collect(),
            net: rec.net.clone(),
            sockets,
            socket_data,
            stats: Some(d.stats.clone()),
            ipc,
        };
        if opts.kill {
            d.sockets.for_kill();
        }
        Ok(img)
    })();
    match result {
        Ok(img) => Ok(Pending { tmp, img }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Syncs the data files, writes `image.json` (with the times `freezing`, until
/// every task was stopped, and `stopped`, until they ran again) and makes the
/// version visible.
fn finish_image(
    state: &Path,
    p: Pending,
    freezing: Duration,
    stopped: Duration,
) -> Result<Checkpointed> {
    let Pending { tmp, mut img } = p;
    let mut stats = img.stats.take().unwrap_or_default();
    stats.freezing_time = freezing.as_micros() as u64;
    stats.frozen_time = stopped.saturating_sub(freezing).as_micros() as u64;
    img.stats = Some(stats.clone());
    let result = (|| {
        for ent in std::fs::read_dir(&tmp).map_err(|e| PathError::new("list", &tmp, e))? {
            let path = ent.map_err(|e| PathError::new("list", &tmp, e))?.path();
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| CkptError::Image {
                    path: path.clone(),
                    source: e,
                })?;
        }
        let body = serde_json::to_vec(&img).expect("images always serialize");
        fsutil::write_checked(&tmp.join("image.json"), image::MAGIC, image::FORMAT, &body)?;
        let dir = image::version_dir(state, img.app, img.version);
        crate::store::record_version(state, img.app, img.version)?;
        std::fs::rename(&tmp, &dir).map_err(|e| PathError::new("rename into", &dir, e))?;
        Ok(Checkpointed {
            version: img.version,
            dir,
            processes: img.processes.len(),
            bytes: img.processes.iter().map(|p| p.pages.len).sum::<u64>()
                + img.shared.iter().map(|b| b.len).sum::<u64>(),
            stopped,
            stats,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Reads and checks an image: header, checksum of the description, and that this
/// kernel and CPU can run it. Data files are checked while they are read.
pub fn load_image(state: &Path, app: u64, version: u64) -> Result<(PathBuf, image::Image)> {
    let dir = image::version_dir(state, app, version);
    if !dir.is_dir() {
        return Err(CkptError::NoVersion { app, version });
    }
    let img = load_image_at(&dir)?;
    Ok((dir, img))
}

/// [`load_image`] of an image in any directory (a grid checkpoint version).
pub fn load_image_at(dir: &Path) -> Result<image::Image> {
    let body = fsutil::read_checked(&dir.join("image.json"), image::MAGIC, image::FORMAT)?;
    let img: image::Image = serde_json::from_slice(&body).map_err(|e| CkptError::BadImage {
        path: dir.join("image.json"),
        reason: e.to_string(),
    })?;
    let (app, version) = (img.app, img.version);
    let kernel = kernel_release();
    if img.kernel != kernel {
        return Err(CkptError::Incompatible {
            app,
            version,
            what: format!("kernel {} (this one is {kernel})", img.kernel),
        });
    }
    let here = restore::cpu_xfeatures();
    if img.xfeatures & !here != 0 {
        return Err(CkptError::Incompatible {
            app,
            version,
            what: format!(
                "CPU state features {:#x} (this CPU has {here:#x})",
                img.xfeatures
            ),
        });
    }
    Ok(img)
}
