//! The container checkpointer (the role OpenVZ had): a job unit that runs in a
//! container of `xos-loader` ([`crate::container`]) is checkpointed and
//! restarted whole. Its image directory holds:
//!
//! - `container.json`: the unit (container id, hostname, job, notify address,
//!   root filesystem, limits) and its tmpfs mounts;
//! - `tmpfs-N.tar`: the content of each tmpfs mounted inside the container;
//! - `native/`: every process of the container and its SysV IPC objects,
//!   written by the built-in checkpointer ([`super::native`]), including the
//!   job's processes; the container's init (the loader) is made anew at
//!   restart and reports the job's end to the notify address given then.
//!
//! A restart rebuilds the container with the same id and hostname, its
//! namespaces, cgroup limits and tmpfs contents, then its processes, on this
//! node or another (another state directory).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::{
    Checkpointer, DumpOptions, GcpError, Probe, RestartOptions, Restarted, Result, UnitImage,
};
use super::native::Native;
use crate::app::{self, Detached};
use crate::cgroup::FreezerState;
use crate::container::{self, unit, Tmpfs, UnitRecord, UnitSetup};
use crate::fsutil::{self, PathError};
use crate::registry::{AppRecord, Registry};

/// The name units and metadata use for it.
pub const CONTAINER: &str = "container";

const META: &str = "container.json";
const META_MAGIC: &str = "xos-container-image";
const META_FORMAT: u32 = 1;
const NATIVE_DIR: &str = "native";
/// The root filesystem of a container made from a template (its own copy).
const ROOT_ARCHIVE: &str = "root.tar";

/// What `container.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerImage {
    unit: UnitRecord,
    /// The job units that joined it: their pid in the container, and them.
    #[serde(default)]
    members: Vec<(i32, UnitRecord)>,
    /// Tmpfs mounts; `archive` is the name of the tar file in the image.
    tmpfs: Vec<Tmpfs>,
}

/// The container checkpointer.
#[derive(Debug, Default, Clone)]
pub struct Container;

fn bad(path: &Path, reason: impl std::fmt::Display) -> GcpError {
    GcpError::BadImage {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A container this node cannot take (its id in use).
fn unavailable(e: container::ContainerError) -> GcpError {
    GcpError::Unavailable {
        backend: CONTAINER.to_string(),
        why: e.to_string(),
    }
}

/// The container unit of state directory `state` whose application is `app`.
fn unit_of(state: &Path, app: &AppRecord) -> Result<UnitRecord> {
    container::unit_ids(state)
        .into_iter()
        .filter_map(|id| container::load_record(state, id).ok())
        .find(|r| r.app == Some(app.id) && r.container && r.member_of.is_none())
        .ok_or_else(|| GcpError::Unavailable {
            backend: CONTAINER.to_string(),
            why: format!(
                "application {} is not a container of xos-loader in {}",
                app.id,
                state.display()
            ),
        })
}

fn read_meta(dir: &Path) -> Result<ContainerImage> {
    let path = dir.join(META);
    let body = fsutil::read_checked(&path, META_MAGIC, META_FORMAT)?;
    serde_json::from_slice(&body).map_err(|e| bad(&path, e))
}

impl Container {
    /// Writes `container.json` and the tmpfs archives of `unit`'s container
    /// (frozen) into `dir`.
    fn save(&self, state: &Path, rec: &UnitRecord, unit: &AppRecord, dir: &Path) -> Result<()> {
        let mounts = container::rootfs::container_tmpfs(unit.root_pid).map_err(|e| {
            PathError::new("read the mounts of", format!("/proc/{}", unit.root_pid), e)
        })?;
        let mut tmpfs = Vec::new();
        for (n, m) in mounts.into_iter().enumerate() {
            let name = format!("tmpfs-{n}.tar");
            let from = PathBuf::from(format!("/proc/{}/root", unit.root_pid))
                .join(m.target.strip_prefix("/").unwrap_or(&m.target));
            container::rootfs::pack(&from, &dir.join(&name)).map_err(|source| {
                GcpError::BadImage {
                    path: dir.join(&name),
                    reason: container::ContainerError::SaveTmpfs {
                        id: rec.id,
                        target: m.target.clone(),
                        source,
                    }
                    .to_string(),
                }
            })?;
            tmpfs.push(Tmpfs {
                target: m.target,
                options: m.options,
                archive: Some(PathBuf::from(name)),
            });
        }
        if let (Some(_), Some(root)) = (&rec.template, &rec.rootfs) {
            // Read on the host, where none of the container's mounts are.
            let to = dir.join(ROOT_ARCHIVE);
            container::rootfs::pack(root, &to).map_err(|e| bad(&to, e))?;
        }
        let ctdir = container::unit_dir(state, rec.id);
        let members = container::members::running(&ctdir)
            .into_iter()
            .filter_map(|(pid, u)| Some((pid, container::load_record(state, u).ok()?)))
            .collect();
        let body = serde_json::to_vec_pretty(&ContainerImage {
            unit: rec.clone(),
            members,
            tmpfs,
        })
        .expect("serializable");
        fsutil::write_checked(&dir.join(META), META_MAGIC, META_FORMAT, &body)?;
        Ok(())
    }
}

impl Checkpointer for Container {
    fn name(&self) -> &'static str {
        CONTAINER
    }

    fn probe(&self) -> Probe {
        // What the built-in checkpointer can do, it does for containers.
        Native.probe()
    }

    fn checkpoint(
        &self,
        state: &Path,
        unit: &AppRecord,
        dir: &Path,
        opts: &DumpOptions,
    ) -> Result<UnitImage> {
        let rec = unit_of(state, unit)?;
        let mut img = frozen_for_checkpoint(state, unit, opts.timeout, opts.kill, || {
            self.save(state, &rec, unit, dir)?;
            Native.checkpoint(state, unit, &dir.join(NATIVE_DIR), opts)
        })?;
        img.backend = CONTAINER.to_string();
        img.bytes = super::meta::tree_size(dir);
        Ok(img)
    }

    fn verify(&self, dir: &Path) -> Result<()> {
        let meta = read_meta(dir)?;
        for t in &meta.tmpfs {
            let a = dir.join(t.archive.as_deref().unwrap_or(Path::new("")));
            if !a.is_file() {
                return Err(bad(&a, "missing tmpfs archive"));
            }
        }
        Native.verify(&native_dir(dir))
    }

    fn restart(&self, registry: &Registry, dir: &Path, opts: &RestartOptions) -> Result<Restarted> {
        self.verify(dir)?;
        let setup = prepare_restart(registry, dir, opts.notify.clone(), opts.job.clone())?;
        let started = super::native::restart_spec(&native_dir(dir), opts).and_then(|mut spec| {
            with_container(&mut spec, setup);
            Ok(app::launch_detached(registry, &spec)?)
        });
        match started {
            Ok(Detached::Started(app)) => Ok(Restarted::Started(app)),
            Ok(Detached::ChildExit(c)) => Ok(Restarted::ChildExit(c)),
            Err(e) => {
                undo_restart(registry, dir);
                Err(e)
            }
        }
    }
}

/// The processes' image inside a container's image: `native/` (xcheckpoint),
/// or the image itself (`checkpoint -c`).
fn native_dir(dir: &Path) -> PathBuf {
    let n = dir.join(NATIVE_DIR);
    if n.is_dir() {
        n
    } else {
        dir.to_path_buf()
    }
}

/// Whether `dir` holds the image of a whole container.
pub fn is_container_image(dir: &Path) -> bool {
    dir.join(META).is_file()
}

/// Makes a restart of the processes in `spec` one of the container `setup`
/// (from [`prepare_restart`]).
pub fn with_container(spec: &mut app::LaunchSpec, setup: UnitSetup) {
    spec.checkpointer = CONTAINER.to_string();
    if setup.rootfs.is_some() {
        // The files its submitter gave as its streams are outside its
        // root: it gets the restart's (or /dev/null) instead.
        spec.redirected = [true; 3];
    }
    spec.unit = Some(setup);
}

/// Recreates on this node (`registry`'s state directory) the container whose
/// image is `dir`, with its id, and the units that had joined it, reporting
/// to `notify` (else where they did); returns what its loader sets up. The
/// processes are the caller's to restart, with [`with_container`]; if that
/// fails, [`undo_restart`] removes what this made.
pub fn prepare_restart(
    registry: &Registry,
    dir: &Path,
    notify: Option<String>,
    job: Option<String>,
) -> Result<UnitSetup> {
    let meta = read_meta(dir)?;
    let state = registry.root();
    let id = meta.unit.id;
    container::reserve_again(state, id).map_err(unavailable)?;
    let udir = container::unit_dir(state, id);
    let mut rec = UnitRecord {
        app: None,
        notify: notify.clone().or(meta.unit.notify.clone()),
        job: job.or(meta.unit.job.clone()),
        ..meta.unit.clone()
    };
    let root_archive = dir.join(ROOT_ARCHIVE);
    let made = (|| -> Result<()> {
        if root_archive.is_file() {
            let root = udir.join("root");
            fsutil::create_dir_all(&root, 0o755)?;
            container::rootfs::unpack(&root_archive, &root).map_err(|e| bad(&root_archive, e))?;
            rec.rootfs = Some(root);
        }
        container::save_record(state, &rec)?;
        for (pid, m) in &meta.members {
            container::reserve_again(state, m.id).map_err(unavailable)?;
            // Recorded first: undo_restart finds it there.
            container::members::record(&udir, *pid, m.id)?;
            container::save_record(
                state,
                &UnitRecord {
                    app: None,
                    notify: notify.clone().or(m.notify.clone()),
                    ..m.clone()
                },
            )?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        undo_restart(registry, dir);
        return Err(e);
    }
    Ok(UnitSetup {
        id,
        container: true,
        hostname: rec.hostname.clone(),
        rootfs: rec.rootfs.clone(),
        tmpfs: meta
            .tmpfs
            .iter()
            .map(|t| Tmpfs {
                archive: t.archive.as_ref().map(|a| dir.join(a)),
                ..t.clone()
            })
            .collect(),
        wall_time: rec.limits.wall_time,
        cpu_time: rec.limits.cpu_time,
        dir: udir,
        ..UnitSetup::default()
    })
}

/// Removes what [`prepare_restart`] made for the container of image `dir`,
/// unless that container runs.
pub fn undo_restart(registry: &Registry, dir: &Path) {
    let Ok(meta) = read_meta(dir) else {
        return;
    };
    let state = registry.root();
    let udir = container::unit_dir(state, meta.unit.id);
    let running = container::load_record(state, meta.unit.id)
        .ok()
        .and_then(|r| r.app)
        .and_then(|a| registry.load(a).ok())
        .is_some_and(|a| a.alive());
    if running {
        return;
    }
    for (_, u) in container::members::running(&udir) {
        let _ = std::fs::remove_dir_all(container::unit_dir(state, u));
    }
    let _ = std::fs::remove_dir_all(&udir);
}

/// `checkpoint -c` of a container: its processes as a version of its
/// application (the built-in checkpointer), with what the container holds
/// besides (`container.json`, its tmpfs and root; its SysV IPC objects are
/// in the image's `ipc/`) in the same version directory, which `restart`
/// recognises.
pub fn checkpoint_version(
    state: &Path,
    unit: &AppRecord,
    opts: &crate::ckpt::CheckpointOptions,
) -> Result<crate::ckpt::Checkpointed> {
    let rec = unit_of(state, unit)?;
    // Not in the application's image directory, which the checkpoint tidies.
    let tmp = state.join(format!(".container-{}.tmp", unit.id));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = frozen_for_checkpoint(state, unit, opts.timeout, opts.kill, || {
        fsutil::create_dir_all(&tmp, 0o700)?;
        Container.save(state, &rec, unit, &tmp)?;
        let done = crate::ckpt::checkpoint(state, unit, opts)?;
        let rd = std::fs::read_dir(&tmp).map_err(|e| PathError::new("list", &tmp, e))?;
        for ent in rd.flatten() {
            let to = done.dir.join(ent.file_name());
            std::fs::rename(ent.path(), &to).map_err(|e| PathError::new("rename into", &to, e))?;
        }
        Ok(done)
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Runs `work` with the application `unit` frozen, thawed again afterwards
/// unless it was frozen before or is gone; when `kill`, the container's end
/// is not reported (see [`unit::checkpoint_kill`]).
fn frozen_for_checkpoint<T>(
    state: &Path,
    unit: &AppRecord,
    timeout: Duration,
    kill: bool,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let frozen_here = unit.cgroup.freezer_state()? != FreezerState::Frozen;
    if frozen_here {
        unit.cgroup.freeze(timeout)?;
    }
    let result = unit::checkpoint_kill(state, unit.id, kill, work);
    if frozen_here && unit.alive() {
        let _ = unit.cgroup.thaw(timeout);
    }
    result
}
