//! The translation backend of the built-in checkpointer ([`crate::ckpt`]).
//!
//! The checkpointer writes a version under the state directory
//! (`STATE/images/APP/N`); this backend moves it into the directory the grid
//! layer gives (a rename, or a copy when that is on another filesystem) and
//! restarts from there with [`crate::app::launch_detached`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::api::{
    Checkpointer, DumpOptions, Feature, GcpError, Probe, RestartOptions, Restarted, Result,
    UnitImage,
};
use crate::app::{self, Detached, LaunchSpec};
use crate::cgroup::FreezerState;
use crate::ckpt::{self, image, CheckpointOptions};
use crate::fsutil::{self, PathError};
use crate::registry::{AppRecord, Registry};
use crate::sysvipc;

/// The built-in checkpointer.
#[derive(Debug, Default, Clone)]
pub struct Native;

impl Checkpointer for Native {
    fn name(&self) -> &'static str {
        app::NATIVE
    }

    fn probe(&self) -> Probe {
        Probe {
            version: Ok(env!("CARGO_PKG_VERSION").to_string()),
            features: vec![Feature::Threads, Feature::SysvIpc],
        }
    }

    fn checkpoint(
        &self,
        state: &Path,
        unit: &AppRecord,
        dir: &Path,
        opts: &DumpOptions,
    ) -> Result<UnitImage> {
        // Frozen while it is saved (the native image holds the SysV IPC
        // objects of its namespace too, in `ipc/`).
        let frozen_here = unit.cgroup.freezer_state()? != FreezerState::Frozen;
        if frozen_here {
            unit.cgroup.freeze(opts.timeout)?;
        }
        // Read before a --kill makes its supervisor remove it.
        let loader_unit = crate::container::unit::native_unit_of(state, unit.id);
        // A job unit of xos-loader killed for this reports no end.
        let result = crate::container::unit::checkpoint_kill(state, unit.id, opts.kill, || {
            self.dump(state, unit, dir, opts)
        });
        if frozen_here && unit.alive() {
            let _ = unit.cgroup.thaw(opts.timeout);
        }
        result.and_then(|mut img| {
            if let Some(r) = &loader_unit {
                crate::container::save_record_at(&dir.join(crate::container::UNIT_FILE), r)?;
            }
            img.bytes = super::meta::tree_size(dir);
            Ok(img)
        })
    }

    fn verify(&self, dir: &Path) -> Result<()> {
        let img = ckpt::load_image_at(dir)?;
        ckpt::restore::verify(dir, &img)?;
        let ipc = dir.join(IPC_DIR);
        if ipc.exists() {
            sysvipc::open_all(&ipc).map_err(|e| GcpError::BadImage {
                path: ipc,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    fn restart(&self, registry: &Registry, dir: &Path, opts: &RestartOptions) -> Result<Restarted> {
        self.verify(dir)?;
        let mut spec = restart_spec(dir, opts)?;
        // A job unit of xos-loader: it reports its end again.
        let launched = crate::container::unit::restart_with_unit(
            registry,
            dir,
            opts.notify.clone(),
            |e| bad_unit(dir, e),
            |unit| {
                spec.unit = unit;
                Ok(app::launch_detached(registry, &spec)?)
            },
        );
        Ok(match launched? {
            Detached::Started(id) => Restarted::Started(id),
            Detached::ChildExit(c) => Restarted::ChildExit(c),
        })
    }
}

/// The job unit of the image in `dir` cannot be made again.
pub(super) fn bad_unit(dir: &Path, e: crate::container::ContainerError) -> GcpError {
    GcpError::BadImage {
        path: dir.join(crate::container::UNIT_FILE),
        reason: e.to_string(),
    }
}

/// How the processes (and SysV IPC objects) of the image in `dir` are
/// started again; the container backend adds its container to it.
pub(super) fn restart_spec(dir: &Path, opts: &RestartOptions) -> Result<LaunchSpec> {
    let img = ckpt::load_image_at(dir)?;
    let mut spec = LaunchSpec::new(img.command.iter().map(OsString::from).collect());
    spec.limits = img.limits.clone();
    spec.net = img.net.clone();
    spec.cgroup_parent = opts.cgroup_parent.clone();
    set_stdio(&mut spec, opts);
    spec.ipc_restore = Some(dir.join(IPC_DIR)).filter(|d| d.exists());
    spec.restore = Some((dir.to_path_buf(), img));
    spec.stay_frozen = opts.frozen;
    spec.job = opts.job.clone();
    spec.callback = opts.callback.clone();
    Ok(spec)
}

/// The unit's SysV IPC objects, inside its image directory (written by the
/// native checkpointer; by this backend itself in images before it did).
const IPC_DIR: &str = "ipc";

impl Native {
    /// The processes' image, written by the checkpointer and moved into `dir`.
    fn dump(
        &self,
        state: &Path,
        unit: &AppRecord,
        dir: &Path,
        opts: &DumpOptions,
    ) -> Result<UnitImage> {
        let done = ckpt::checkpoint(
            state,
            unit,
            &CheckpointOptions {
                kill: opts.kill,
                timeout: opts.timeout,
                wait: opts.wait,
                ghost_limit: ckpt::dump::DEFAULT_GHOST_LIMIT,
                external_unix: false,
                cancel: opts.cancel.clone(),
            },
        )?;
        let moved = move_tree(&done.dir, dir);
        // The state directory keeps no copy: the version lives in the job's.
        let _ = std::fs::remove_dir_all(&done.dir);
        let _ = std::fs::remove_dir(image::app_dir(state, unit.id));
        moved?;
        let body = fsutil::read_checked(&dir.join("image.json"), image::MAGIC, image::FORMAT)?;
        let img: image::Image = serde_json::from_slice(&body).map_err(|e| GcpError::BadImage {
            path: dir.join("image.json"),
            reason: e.to_string(),
        })?;
        Ok(UnitImage {
            backend: self.name().to_string(),
            backend_version: env!("CARGO_PKG_VERSION").to_string(),
            processes: done.processes,
            bytes: super::meta::tree_size(dir),
            kernel: img.kernel,
            xfeatures: img.xfeatures,
            stopped: done.stopped,
        })
    }
}

/// A restarted unit runs detached: its inherited stdio goes to the given files,
/// else to /dev/null.
pub(super) fn set_stdio(spec: &mut LaunchSpec, opts: &RestartOptions) {
    let null = PathBuf::from("/dev/null");
    spec.new_session = true;
    spec.stdin = Some(null.clone());
    spec.stdout = Some(opts.stdout.clone().unwrap_or_else(|| null.clone()));
    spec.stderr = Some(opts.stderr.clone().unwrap_or(null));
}

/// Moves directory `from` to `to` (an empty directory or absent): a rename,
/// else (another filesystem) a copy of its files.
fn move_tree(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::EXDEV) => {
            return Err(PathError::new("rename into", to, e).into())
        }
        Err(_) => {}
    }
    fsutil::create_dir_all(to, 0o700)?;
    let rd = std::fs::read_dir(from).map_err(|e| PathError::new("list", from, e))?;
    for ent in rd {
        let src = ent.map_err(|e| PathError::new("list", from, e))?.path();
        let dst = to.join(src.file_name().unwrap_or_default());
        if src.is_dir() {
            move_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| PathError::new("copy to", &dst, e))?;
        }
    }
    Ok(())
}
