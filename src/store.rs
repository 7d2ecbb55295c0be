//! The image store: the checkpoint versions kept under `STATE/images/APP/` (layout
//! in [`crate::ckpt::image`]) as a whole: which applications have images, version
//! numbers that are never handed out twice, removing versions, and what a version
//! holds.
//!
//! `images/.last-version/APP` holds the highest number ever given to a version of
//! APP, so that a version deleted (by `checkpoint --delete` or by hand) is never
//! followed by a different version with its number. It is kept beside the
//! versions, not among them, so that `images/APP/` holds versions only.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ckpt::image;
use crate::fsutil::{self, PathError};
use crate::registry::{Registry, RegistryError};

/// The counter of `app`'s version numbers.
fn last_path(state: &Path, app: u64) -> PathBuf {
    state
        .join("images")
        .join(".last-version")
        .join(app.to_string())
}

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
    #[error(transparent)]
    Checked(#[from] crate::fsutil::CheckedError),
    #[error("corrupt image description {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// The number of the next version of `app`: one above every version there is and
/// every one there was (see [`record_version`]).
pub fn next_version(state: &Path, app: u64) -> u64 {
    let last = std::fs::read_to_string(last_path(state, app))
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
    let path = last_path(state, app);
    if let Some(dir) = path.parent() {
        fsutil::create_dir_all(dir, 0o700)?;
    }
    fsutil::write_atomic(&path, format!("{version}\n").as_bytes(), 0o644)
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
        let _ = std::fs::remove_file(last_path(state, id));
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

/// One version as `restart --list` shows it.
#[derive(Debug, Serialize)]
pub struct VersionSummary {
    pub app: u64,
    pub version: u64,
    /// Seconds since the epoch.
    pub created: u64,
    /// Bytes of the version's files.
    pub size: u64,
    pub processes: usize,
    pub command: Vec<String>,
}

/// Reads the description of one version of `app`.
fn read_image(state: &Path, app: u64, version: u64) -> Result<(PathBuf, image::Image)> {
    let dir = image::version_dir(state, app, version);
    if !dir.is_dir() {
        return Err(StoreError::NoVersion { app, version });
    }
    let path = dir.join("image.json");
    let body = fsutil::read_checked(&path, image::MAGIC, image::FORMAT)?;
    let img = serde_json::from_slice(&body)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    Ok((dir, img))
}

/// Every version of `app`, ascending; one whose description cannot be read is
/// its error.
pub fn summaries(state: &Path, app: u64) -> Vec<Result<VersionSummary>> {
    image::versions(state, app)
        .into_iter()
        .map(|version| {
            let (dir, img) = read_image(state, app, version)?;
            let size = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            Ok(VersionSummary {
                app,
                version,
                created: img.created,
                size,
                processes: img.processes.len(),
                command: img.command,
            })
        })
        .collect()
}

/// What one version holds, for `restart --info`: read from its description and
/// checked against its data files, without restoring anything.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub app: u64,
    pub version: u64,
    /// Seconds since the epoch.
    pub created: u64,
    pub command: Vec<String>,
    pub cwd: PathBuf,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// The kernel release the image was taken on, and whether it is this one's.
    pub kernel: String,
    pub same_kernel: bool,
    /// XSAVE features the image needs, and whether this CPU has them all.
    pub xfeatures: u64,
    pub cpu_has_xfeatures: bool,
    pub processes: Vec<ProcessInfo>,
    /// Memory of all processes by kind of mapping.
    pub memory: Vec<MemoryInfo>,
    pub data_files: Vec<DataFile>,
    /// Restart would take it: same kernel, features present, every data file intact.
    pub restartable: bool,
    /// How the checkpoint went (null for images older than these figures).
    pub stats: Option<image::Stats>,
}

#[derive(Debug, Serialize)]
pub struct ProcessInfo {
    /// pid, parent, group and session in the application's PID namespace.
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    pub exe: PathBuf,
    /// Real uid and gid.
    pub uid: u32,
    pub gid: u32,
    /// Bytes mapped, and bytes of page contents saved for this process.
    pub mapped: u64,
    pub saved: u64,
    /// Open descriptors, one line each (`3 /path at 120`, `1 inherited 1`, ...).
    pub files: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MemoryInfo {
    /// `private anonymous`, `private file`, `shared file`, `shared anonymous`,
    /// `kernel`, or the lowercase name of another kind of mapping.
    pub kind: String,
    pub mappings: usize,
    pub mapped: u64,
    /// Page contents saved in the image (shared files are kept by reference).
    pub saved: u64,
}

#[derive(Debug, Serialize)]
pub struct DataFile {
    pub file: String,
    pub len: u64,
    /// `ok`, `missing`, `truncated`, `overlong` or `checksum mismatch`.
    pub state: String,
}

const PAGE: u64 = 4096;

/// The variant name and fields of an image enum value, as its description
/// serializes it, so that kinds added to the image format are shown too.
fn variant(value: &impl Serialize) -> (String, serde_json::Value) {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => (name, serde_json::Value::Null),
        Ok(serde_json::Value::Object(m)) if m.len() == 1 => {
            let (name, fields) = m.into_iter().next().expect("one entry");
            (name, fields)
        }
        _ => (String::from("?"), serde_json::Value::Null),
    }
}

fn kind_of(b: &image::Backing) -> String {
    let (name, fields) = variant(b);
    match name.as_str() {
        "Anon" => "private anonymous".into(),
        "File" if fields["shared"] == true => "shared file".into(),
        "File" => "private file".into(),
        "SharedAnon" => "shared anonymous".into(),
        "Special" => "kernel".into(),
        other => other.to_ascii_lowercase(),
    }
}

fn describe_fd(f: &image::Fd) -> String {
    let (name, v) = variant(&f.kind);
    let text = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v[k].to_string())
    };
    match name.as_str() {
        "Path" => format!("{} {} at {}", f.fd, text("path"), v["pos"]),
        "Pipe" if v["write"] == true => format!("{} pipe {} (write)", f.fd, v["id"]),
        "Pipe" => format!("{} pipe {} (read)", f.fd, v["id"]),
        "Inherited" => format!("{} inherited {} from the restarter", f.fd, v["std"]),
        "SharedWith" => format!(
            "{} the open file of fd {} of process {}",
            f.fd, v["fd"], v["pid"]
        ),
        "PidFd" => format!("{} pidfd of process {}", f.fd, v["pid"]),
        other if v.is_null() => format!("{} {}", f.fd, other.to_ascii_lowercase()),
        other => format!("{} {} {v}", f.fd, other.to_ascii_lowercase()),
    }
}

/// Every data file the description records (`file`, `len`, `crc` objects, found
/// wherever they are, so that kinds of data added to the format are checked too).
fn blobs(v: &serde_json::Value, out: &mut Vec<(String, u64, u32)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(file), Some(len), Some(crc)) = (
                m.get("file").and_then(|f| f.as_str()),
                m.get("len").and_then(|l| l.as_u64()),
                m.get("crc").and_then(|c| c.as_u64()),
            ) {
                out.push((file.to_string(), len, crc as u32));
            }
            m.values().for_each(|x| blobs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| blobs(x, out)),
        _ => {}
    }
}

fn check_data(dir: &Path, (file, len, crc): (String, u64, u32)) -> DataFile {
    let state = match std::fs::read(dir.join(&file)) {
        Err(_) => "missing",
        Ok(d) if (d.len() as u64) < len => "truncated",
        Ok(d) if (d.len() as u64) > len => "overlong",
        Ok(d) if crc32fast::hash(&d) != crc => "checksum mismatch",
        Ok(_) => "ok",
    };
    DataFile {
        file,
        len,
        state: state.to_string(),
    }
}

/// Reads version `version` of `app` and checks every data file (length and CRC32).
pub fn inspect(state: &Path, app: u64, version: u64) -> Result<Inspection> {
    let (dir, img) = read_image(state, app, version)?;
    let mut memory: Vec<MemoryInfo> = Vec::new();
    let mut processes = Vec::new();
    for p in &img.processes {
        let (mut mapped, mut saved) = (0, 0);
        for v in &p.vmas {
            let kind = kind_of(&v.backing);
            let size = v.end - v.start;
            let pages: u64 = v.runs.iter().map(|r| r.1).sum::<u64>() * PAGE;
            mapped += size;
            saved += pages;
            match memory.iter_mut().find(|m| m.kind == kind) {
                Some(m) => {
                    m.mappings += 1;
                    m.mapped += size;
                    m.saved += pages;
                }
                None => memory.push(MemoryInfo {
                    kind,
                    mappings: 1,
                    mapped: size,
                    saved: pages,
                }),
            }
        }
        processes.push(ProcessInfo {
            pid: p.pid,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            uid: p.uids[0],
            gid: p.gids[0],
            mapped,
            saved,
            files: p.fds.iter().map(describe_fd).collect(),
        });
    }
    if let Some(m) = memory.iter_mut().find(|m| m.kind == "shared anonymous") {
        m.saved = img.shared.iter().map(|b| b.len).sum();
    }
    let mut found = Vec::new();
    blobs(
        &serde_json::to_value(&img).expect("images serialize"),
        &mut found,
    );
    let data_files: Vec<DataFile> = found.into_iter().map(|b| check_data(&dir, b)).collect();
    let same_kernel = img.kernel == crate::ckpt::kernel_release();
    let cpu_has_xfeatures = img.xfeatures & !crate::ckpt::restore::cpu_xfeatures() == 0;
    let restartable =
        same_kernel && cpu_has_xfeatures && data_files.iter().all(|d| d.state == "ok");
    Ok(Inspection {
        app: img.app,
        version: img.version,
        created: img.created,
        command: img.command,
        cwd: img.cwd,
        owner_uid: img.owner_uid,
        owner_gid: img.owner_gid,
        kernel: img.kernel,
        same_kernel,
        xfeatures: img.xfeatures,
        cpu_has_xfeatures,
        processes,
        memory,
        data_files,
        restartable,
        stats: img.stats,
    })
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
        std::fs::remove_file(last_path(s, 4)).unwrap();
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
