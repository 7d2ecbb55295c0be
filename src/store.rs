//! The image store: the checkpoint versions kept under `STATE/images/APP/` (layout
//! in [`crate::ckpt::image`]) as a whole: which applications have images, version
//! numbers that are never handed out twice, and removing versions.
//!
//! `images/APP/last-version` holds the highest number ever given to a version of
//! APP, so that a version deleted (by `checkpoint --delete` or by hand) is never
//! followed by a different version with its number.

use std::path::{Path, PathBuf};

use crate::ckpt::image;
use crate::fsutil::{self, PathError};
use crate::registry::{Registry, RegistryError};

const LAST: &str = "last-version";

/// Errors of the image store; each names the application, version or file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("application {app} has no checkpoint version {version}")]
    NoVersion { app: u64, version: u64 },
    #[error("application {0} has no checkpoint")]
    NoImages(u64),
}

type Result<T> = std::result::Result<T, StoreError>;

/// The number of the next version of `app`: one above every version there is and
/// every one there was (see [`record_version`]).
pub fn next_version(state: &Path, app: u64) -> u64 {
    let last = std::fs::read_to_string(image::app_dir(state, app).join(LAST))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    image::versions(state, app)
        .last()
        .copied()
        .unwrap_or(0)
        .max(last)
        + 1
}

/// Records that `version` of `app` is being made visible, before it is, so that
/// its number stays taken whatever happens to it later.
pub fn record_version(state: &Path, app: u64, version: u64) -> std::result::Result<(), PathError> {
    let dir = image::app_dir(state, app);
    fsutil::create_dir_all(&dir, 0o700)?;
    fsutil::write_atomic(&dir.join(LAST), format!("{version}\n").as_bytes(), 0o644)
}

/// Applications that have at least one complete version, ascending.
pub fn apps(state: &Path) -> Result<Vec<u64>> {
    let dir = state.join("images");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PathError::new("list", &dir, e).into()),
    };
    let mut apps: Vec<u64> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&app| !image::versions(state, app).is_empty())
        .collect();
    apps.sort_unstable();
    Ok(apps)
}

/// Removes one directory as a whole: renamed out of sight first, so that a reader
/// never sees a version half deleted.
fn remove(dir: &Path) -> std::result::Result<(), PathError> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let gone: PathBuf = dir.with_file_name(format!(".{name}.deleted"));
    std::fs::rename(dir, &gone).map_err(|e| PathError::new("rename", dir, e))?;
    std::fs::remove_dir_all(&gone).map_err(|e| PathError::new("remove", &gone, e))
}

/// Deletes version `version` of `app`.
pub fn delete(state: &Path, app: u64, version: u64) -> Result<()> {
    if !image::versions(state, app).contains(&version) {
        return Err(StoreError::NoVersion { app, version });
    }
    remove(&image::version_dir(state, app, version))?;
    Ok(())
}

/// Deletes all but the newest `keep` versions of `app`; returns those deleted.
pub fn keep(state: &Path, app: u64, keep: usize) -> Result<Vec<u64>> {
    let versions = image::versions(state, app);
    if versions.is_empty() {
        return Err(StoreError::NoImages(app));
    }
    let old = versions[..versions.len().saturating_sub(keep)].to_vec();
    for &v in &old {
        remove(&image::version_dir(state, app, v))?;
    }
    Ok(old)
}

/// Deletes the images and logs of every application that is not running (no
/// record, or a record whose root process is gone); returns their ids.
pub fn prune(state: &Path, registry: &Registry) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = apps(state)?;
    let logs = state.join("logs");
    if let Ok(rd) = std::fs::read_dir(&logs) {
        ids.extend(rd.flatten().filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".out")
                .or_else(|| name.strip_suffix(".err"))?
                .parse::<u64>()
                .ok()
        }));
    }
    ids.sort_unstable();
    ids.dedup();
    let mut pruned = Vec::new();
    for id in ids {
        match registry.load(id) {
            Ok(rec) if rec.alive() => continue,
            Ok(_) | Err(RegistryError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = image::app_dir(state, id);
        if dir.exists() {
            remove(&dir)?;
        }
        for log in registry.log_paths(id) {
            match std::fs::remove_file(&log) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PathError::new("remove", &log, e).into()),
            }
        }
        pruned.push(id);
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_version(state: &Path, app: u64) -> u64 {
        let v = next_version(state, app);
        record_version(state, app, v).unwrap();
        std::fs::create_dir_all(image::version_dir(state, app, v)).unwrap();
        v
    }

    #[test]
    fn numbers_are_never_reused() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        assert_eq!((fake_version(s, 4), fake_version(s, 4)), (1, 2));
        delete(s, 4, 2).unwrap();
        assert_eq!(image::versions(s, 4), vec![1]);
        assert_eq!(fake_version(s, 4), 3);
        // Removed by hand, marker and all: still above what is there.
        std::fs::remove_file(image::app_dir(s, 4).join(LAST)).unwrap();
        assert_eq!(fake_version(s, 4), 4);
        assert!(matches!(
            delete(s, 4, 2),
            Err(StoreError::NoVersion { app: 4, version: 2 })
        ));
        assert_eq!(keep(s, 4, 2).unwrap(), vec![1]);
        assert_eq!(image::versions(s, 4), vec![3, 4]);
        assert_eq!(apps(s).unwrap(), vec![4]);
        assert!(matches!(keep(s, 9, 1), Err(StoreError::NoImages(9))));
    }
}
