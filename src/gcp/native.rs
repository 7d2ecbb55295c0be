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
use crate::ckpt::{self, image, CheckpointOptions};
use crate::fsutil::{self, PathError};
use crate::registry::{AppRecord, Registry};

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
            features: vec![Feature::Threads],
        }
    }

    fn checkpoint(
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

    fn verify(&self, dir: &Path) -> Result<()> {
        let img = ckpt::load_image_at(dir)?;
        ckpt::restore::verify(dir, &img)?;
        Ok(())
    }

    fn restart(&self, registry: &Registry, dir: &Path, opts: &RestartOptions) -> Result<Restarted> {
        let img = ckpt::load_image_at(dir)?;
        ckpt::restore::verify(dir, &img)?;
        let mut spec = LaunchSpec::new(img.command.iter().map(OsString::from).collect());
        spec.limits = img.limits.clone();
        spec.cgroup_parent = opts.cgroup_parent.clone();
        set_stdio(&mut spec, opts);
        spec.restore = Some((dir.to_path_buf(), img));
        spec.stay_frozen = opts.frozen;
        spec.job = opts.job.clone();
        Ok(match app::launch_detached(registry, &spec)? {
            Detached::Started(id) => Restarted::Started(id),
            Detached::ChildExit(c) => Restarted::ChildExit(c),
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
