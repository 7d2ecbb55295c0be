//! Checkpoint versions of grid jobs and their metadata.
//!
//! Layout under the checkpoint directory (`CheckpointDir`, default
//! `/var/lib/xos/checkpoints`, may be a shared filesystem seen by several nodes):
//! `JOB/VERSION/meta.json` (a checked file, see [`crate::fsutil`]) and one
//! `unit-APP/` directory per unit with that unit's image, in the format of its
//! backend. A version is written as `JOB/.VERSION.tmp` and renamed once every
//! unit and `meta.json` are on disk, so a version is complete or absent.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::api::{GcpError, Result};
use crate::fsutil::{self, CheckedError, PathError};

/// Default checkpoint directory.
pub const DEFAULT_CHECKPOINT_DIR: &str = "/var/lib/xos/checkpoints";
/// Environment variable overriding it.
pub const CHECKPOINT_DIR_ENV: &str = "XOS_CHECKPOINT_DIR";

pub const MAGIC: &str = "xos-gcp-meta";
pub const FORMAT: u32 = 1;

/// One version of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMeta {
    pub job: String,
    pub version: u64,
    /// Seconds since the epoch.
    pub created: u64,
    /// Host name of the node that wrote it.
    pub node: String,
    /// One common freeze of every unit (a consistent cut of the job on the node).
    pub coordinated: bool,
    pub units: Vec<UnitMeta>,
    /// Every restart of this version: (node, seconds since the epoch).
    #[serde(default)]
    pub restarts: Vec<(String, u64)>,
    /// The units were stopped once it was written (`--kill`, migration): a
    /// restart of it is no failure.
    #[serde(default)]
    pub killed: bool,
}

/// One unit of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitMeta {
    /// Application id of the unit on the node that wrote it.
    pub app: u64,
    /// Its image directory, relative to the version directory.
    pub dir: String,
    pub backend: String,
    pub backend_version: String,
    pub command: Vec<String>,
    pub processes: usize,
    pub bytes: u64,
    pub kernel: String,
    pub xfeatures: u64,
    /// How long the unit was stopped for its own image, in milliseconds.
    pub stopped_ms: u64,
    /// The unit's callback program, called again after a restart.
    #[serde(default)]
    pub callback: Option<PathBuf>,
    /// (event, "ok" or the failure) of the callbacks run for this version.
    #[serde(default)]
    pub callbacks: Vec<(String, String)>,
}

impl JobMeta {
    /// Sum of the units' image sizes.
    pub fn bytes(&self) -> u64 {
        self.units.iter().map(|u| u.bytes).sum()
    }
}

/// Checks a job id: it names a directory, so no `/`, no leading `.`.
pub fn check_job(job: &str) -> Result<()> {
    let bad = |reason| {
        Err(GcpError::BadJob {
            job: job.to_string(),
            reason,
        })
    };
    if job.is_empty() || job.len() > 200 {
        return bad("must be 1 to 200 characters");
    }
    if job.starts_with('.') || job.contains('/') {
        return bad("must not start with '.' nor contain '/'");
    }
    if job.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters");
    }
    Ok(())
}

pub fn job_dir(root: &Path, job: &str) -> PathBuf {
    root.join(job)
}

pub fn version_dir(root: &Path, job: &str, version: u64) -> PathBuf {
    job_dir(root, job).join(version.to_string())
}

/// The temporary name a version is written under.
pub fn tmp_dir(root: &Path, job: &str, version: u64) -> PathBuf {
    job_dir(root, job).join(format!(".{version}.tmp"))
}

/// Versions of `job` present (complete), ascending.
pub fn versions(root: &Path, job: &str) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(job_dir(root, job))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    v.sort_unstable();
    v
}

/// Reads and checks `meta.json` of a version.
pub fn read(root: &Path, job: &str, version: u64) -> Result<JobMeta> {
    let dir = version_dir(root, job, version);
    if !dir.is_dir() {
        return Err(GcpError::NoVersion {
            job: job.to_string(),
            version,
        });
    }
    read_at(&dir, job, version)
}

/// Reads and checks the `meta.json` in `dir`, which must describe `job` `version`.
pub fn read_at(dir: &Path, job: &str, version: u64) -> Result<JobMeta> {
    let bad = |reason: String| GcpError::BadMeta {
        job: job.to_string(),
        version,
        reason,
    };
    let body =
        fsutil::read_checked(&dir.join("meta.json"), MAGIC, FORMAT).map_err(|e| match e {
            CheckedError::Io(p) if p.source.kind() == std::io::ErrorKind::NotFound => {
                bad("missing".to_string())
            }
            e => bad(e.to_string()),
        })?;
    let meta: JobMeta = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
    if meta.job != job || meta.version != version {
        return Err(bad(format!(
            "it describes job {} version {}",
            meta.job, meta.version
        )));
    }
    for u in &meta.units {
        if u.dir.contains('/') || u.dir.starts_with('.') || u.dir.is_empty() {
            return Err(bad(format!("unit directory '{}'", u.dir)));
        }
    }
    Ok(meta)
}

/// Writes `meta.json` into `dir` (a version being written, or an existing one
/// whose metadata changes): temporary name, sync, rename. Readable by everyone
/// (the job's owner reads it), writable by root only.
pub fn write(dir: &Path, meta: &JobMeta) -> Result<()> {
    let body = serde_json::to_vec_pretty(meta).expect("metadata always serializes");
    fsutil::write_atomic(
        &dir.join("meta.json"),
        &fsutil::encode_checked(MAGIC, FORMAT, &body),
        0o644,
    )?;
    Ok(())
}

/// Syncs every file under `dir` (the units' images) before the version is
/// made visible.
pub fn sync_tree(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| PathError::new("list", dir, e))?;
    for ent in rd {
        let path = ent.map_err(|e| PathError::new("list", dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        }
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| PathError::new("sync", &path, e))?;
    }
    Ok(())
}

/// Size of every file under `dir`.
pub fn tree_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The failure log of a job: `JOB/failures`, a first line `since SECS` (when
/// the job was first observed: its oldest version) and one line
/// `failure SECS FAILED_NODE VERSION RESTARTED_ON` per restart after a failure.
pub fn failures_path(root: &Path, job: &str) -> PathBuf {
    job_dir(root, job).join("failures")
}

/// One failure of a job's node, as recorded by a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// When it was restarted, seconds since the epoch.
    pub time: u64,
    /// The node whose units were lost.
    pub node: String,
    pub version: u64,
    pub restarted_on: String,
}

/// The failure log of `job`: (since, failures); None if there is none.
/// Lines that do not parse are skipped.
pub fn failures(root: &Path, job: &str) -> Option<(u64, Vec<Failure>)> {
    let text = std::fs::read_to_string(failures_path(root, job)).ok()?;
    let mut since = None;
    let mut list = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[..] {
            ["since", t] => since = since.or(t.parse().ok()),
            ["failure", t, node, v, on] => {
                if let (Ok(time), Ok(version)) = (t.parse(), v.parse()) {
                    list.push(Failure {
                        time,
                        node: node.to_string(),
                        version,
                        restarted_on: on.to_string(),
                    })
                }
            }
            _ => {}
        }
    }
    Some((since?, list))
}

/// Appends `f` to the failure log of `job`; a new log starts at `since`.
pub fn record_failure(
    root: &Path,
    job: &str,
    since: u64,
    f: &Failure,
) -> std::result::Result<(), PathError> {
    use std::io::Write;
    let p = failures_path(root, job);
    let mut text = String::new();
    if failures(root, job).is_none() {
        text.push_str(&format!("since {since}\n"));
    }
    let word = |s: &str| {
        if s.is_empty() || s.contains(char::is_whitespace) {
            "?".to_string()
        } else {
            s.to_string()
        }
    };
    text.push_str(&format!(
        "failure {} {} {} {}\n",
        f.time,
        word(&f.node),
        f.version,
        word(&f.restarted_on)
    ));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| PathError::new("append to", &p, e))
}

/// The observed mean time between failures of `node` for `job` at `now`:
/// the time since the log began divided by the failures of that node; None
/// before its first failure.
pub fn observed_mtbf(root: &Path, job: &str, node: &str, now: u64) -> Option<std::time::Duration> {
    let (since, list) = failures(root, job)?;
    let n = list.iter().filter(|f| f.node == node).count() as u64;
    if n == 0 {
        return None;
    }
    Some(std::time::Duration::from_secs(
        now.saturating_sub(since).max(1) / n,
    ))
}

/// This node's name (uname nodename).
pub fn node_name() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(job: &str, version: u64) -> JobMeta {
        JobMeta {
            job: job.into(),
            version,
            created: 1,
            node: "n1".into(),
            coordinated: true,
            units: vec![UnitMeta {
                app: 3,
                dir: "unit-3".into(),
                backend: "native".into(),
                backend_version: "1".into(),
                command: vec!["sleep".into()],
                processes: 1,
                bytes: 10,
                kernel: "k".into(),
                xfeatures: 0,
                stopped_ms: 1,
                callback: None,
                callbacks: vec![],
            }],
            restarts: vec![],
            killed: false,
        }
    }

    #[test]
    fn write_read_and_refuse_corruption() {
        let d = tempfile::tempdir().unwrap();
        let v = version_dir(d.path(), "j", 2);
        std::fs::create_dir_all(&v).unwrap();
        write(&v, &meta("j", 2)).unwrap();
        assert_eq!(read(d.path(), "j", 2).unwrap(), meta("j", 2));
        assert_eq!(versions(d.path(), "j"), vec![2]);
        // meta.json of another version copied in is refused.
        write(&v, &meta("j", 5)).unwrap();
        assert!(read(d.path(), "j", 2).is_err());
        write(&v, &meta("j", 2)).unwrap();
        let p = v.join("meta.json");
        let mut data = std::fs::read(&p).unwrap();
        let n = data.len();
        data[n - 3] ^= 1;
        std::fs::write(&p, data).unwrap();
        let e = read(d.path(), "j", 2).unwrap_err().to_string();
        assert!(e.contains("job j version 2: corrupt meta.json"), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = read(d.path(), "j", 2).unwrap_err().to_string();
        assert!(e.ends_with("missing"), "{e}");
        assert!(matches!(
            read(d.path(), "j", 9),
            Err(GcpError::NoVersion { .. })
        ));
    }

    #[test]
    fn failure_log_and_observed_mtbf() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(job_dir(d.path(), "j")).unwrap();
        assert_eq!(failures(d.path(), "j"), None);
        assert_eq!(observed_mtbf(d.path(), "j", "n1", 1000), None);
        let f = |time, node: &str| Failure {
            time,
            node: node.into(),
            version: 1,
            restarted_on: "n2".into(),
        };
        record_failure(d.path(), "j", 100, &f(400, "n1")).unwrap();
        // The start of a log that exists is kept.
        record_failure(d.path(), "j", 999, &f(500, "n3")).unwrap();
        record_failure(d.path(), "j", 999, &f(600, "n1")).unwrap();
        let (since, list) = failures(d.path(), "j").unwrap();
        assert_eq!((since, list.len()), (100, 3));
        assert_eq!(list[1], f(500, "n3"));
        // n1: two failures in 900 s.
        assert_eq!(
            observed_mtbf(d.path(), "j", "n1", 1000),
            Some(std::time::Duration::from_secs(450))
        );
        assert_eq!(observed_mtbf(d.path(), "j", "n9", 1000), None);
    }

    #[test]
    fn job_ids() {
        assert!(check_job("job-42.a_b").is_ok());
        for bad in ["", ".x", "a/b", "a\nb", &"x".repeat(201)] {
            assert!(check_job(bad).is_err(), "{bad:?}");
        }
    }
}
