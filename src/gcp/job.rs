//! Job-level checkpoint and restart: every unit of a job on this node, through
//! its backend, into one version of the job.
//!
//! Coordinated: every unit is frozen before the first is written and none is
//! thawed before the last is written, so the version is one consistent cut of the
//! job on this node. Uncoordinated: each unit is written on its own. Either way a
//! version is complete or absent: if one unit fails, the version's directory is
//! removed and every unit runs on.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::api::{DumpOptions, GcpError, RestartOptions, Restarted, Result};
use super::meta::{self, JobMeta, UnitMeta};
use super::{callback, Backends};
use crate::cgroup::FreezerState;
use crate::fsutil::{self, PathError};
use crate::registry::{self, AppRecord, Registry};
use std::collections::HashMap;

/// Options of a job checkpoint.
#[derive(Debug, Clone)]
pub struct JobCheckpoint {
    pub coordinated: bool,
    /// Stop the units once the version is written (migration).
    pub kill: bool,
    /// Only these units (application ids); all of the job when empty.
    pub units: Vec<u64>,
    pub timeout: Duration,
    pub wait: bool,
    pub cancel: Option<Arc<AtomicBool>>,
    /// The second phase of a two-phase checkpoint: [`prepare`] must have run.
    pub commit: bool,
    /// Write the version even when a pre-checkpoint callback fails.
    pub force: bool,
    /// Time limit of each callback.
    pub callback_timeout: Duration,
}

/// Time limit of a post-restart callback.
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the pre-checkpoint callbacks of `all` for `version`; returns each
/// unit's result. A failure ends it (unless `force`).
fn pre_callbacks(
    all: &[AppRecord],
    job: &str,
    version: u64,
    force: bool,
    timeout: Duration,
) -> Result<HashMap<u64, Vec<(String, String)>>> {
    let mut results = HashMap::new();
    for u in all {
        let Some(prog) = &u.callback else { continue };
        let ev = callback::Event::PreCheckpoint;
        let r = callback::run(u, prog, ev, job, version, timeout);
        if let Err(m) = &r {
            if !force {
                return Err(GcpError::Callback {
                    unit: u.id,
                    message: m.clone(),
                });
            }
        }
        let r = r.map(|()| "ok".to_string()).unwrap_or_else(|m| m);
        results.insert(u.id, vec![(ev.name().to_string(), r)]);
    }
    Ok(results)
}

/// Runs a callback whose failure cannot undo what is done: it is logged.
fn late_callback(u: &AppRecord, ev: callback::Event, job: &str, version: u64, timeout: Duration) {
    if let Some(prog) = &u.callback {
        if let Err(m) = callback::run(u, prog, ev, job, version, timeout) {
            log::warn!("unit {}: {m}", u.id);
        }
    }
}

/// The running units of `job` in this state directory, sorted by id.
pub fn units(reg: &Registry, job: &str) -> Result<Vec<AppRecord>> {
    Ok(reg
        .list()?
        .into_iter()
        .flatten()
        .filter(|r| r.job.as_deref() == Some(job) && r.alive())
        .collect())
}

/// One writer per job at a time (`JOB/.lock`, flock(2), dropped by the kernel
/// when its holder dies).
fn lock_job(root: &Path, job: &str) -> Result<Flock<std::fs::File>> {
    let dir = meta::job_dir(root, job);
    fsutil::create_dir_all(&dir, 0o755)?;
    let path = dir.join(".lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| PathError::new("open", &path, e))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| PathError::new("lock", &path, std::io::Error::from(e)).into())
}

fn unit_err(unit: u64) -> impl FnOnce(GcpError) -> GcpError {
    move |e| match e {
        GcpError::Unit { .. } => e,
        e => GcpError::Unit {
            unit,
            source: Box::new(e),
        },
    }
}

/// Writes the next version of `job` (every unit of it on this node, or the
/// chosen ones) into `root`. Returns its metadata.
pub fn checkpoint(
    backends: &Backends,
    reg: &Registry,
    root: &Path,
    job: &str,
    opts: &JobCheckpoint,
) -> Result<JobCheckpointed> {
    meta::check_job(job)?;
    // A job unknown here leaves nothing behind (not even its lock file).
    if units(reg, job)?.is_empty() && !prepared_path(root, job).exists() {
        return Err(GcpError::NoUnits(job.to_string()));
    }
    let _lock = lock_job(root, job)?;
    // After `prepare`, the prepared units are the ones written, and those it
    // froze are thawed again at the end, whatever happens.
    let prepared = read_prepared(root, job)?;
    if opts.commit && prepared.is_none() {
        return Err(GcpError::Phase {
            job: job.to_string(),
            what: "is not prepared",
        });
    }
    let chosen = match (&prepared, opts.units.is_empty()) {
        (Some(p), true) => p.units.clone(),
        _ => opts.units.clone(),
    };
    let all = select_units(backends, reg, job, &chosen);
    if prepared.is_some() {
        remove_prepared(root, job)?;
    }
    let all = match all {
        Ok(a) => a,
        Err(e) => {
            if let Some(p) = &prepared {
                thaw_ids(backends, reg, &p.frozen, opts.timeout);
            }
            return Err(e);
        }
    };
    let version = meta::versions(root, job).last().copied().unwrap_or(0) + 1;
    // Before any freeze: a callback may need the unit running (to drain a
    // channel). After `prepare` they have run already.
    let cb_results = if prepared.is_some() {
        HashMap::new()
    } else {
        pre_callbacks(&all, job, version, opts.force, opts.callback_timeout)?
    };
    // Under the job lock, a temporary version is a leftover of a killed writer.
    for ent in std::fs::read_dir(meta::job_dir(root, job))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = ent.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.ends_with(".tmp") {
            let _ = std::fs::remove_dir_all(ent.path());
        }
    }
    let tmp = meta::tmp_dir(root, job, version);
    fsutil::create_dir_all(&tmp, 0o755)?;
    // Units frozen here (and only those) are thawed again; units stopped by
    // their backend (--kill) are restarted from their image if the version fails.
    let mut frozen_by_us: Vec<&AppRecord> = all
        .iter()
        .filter(|u| prepared.as_ref().is_some_and(|p| p.frozen.contains(&u.id)))
        .collect();
    let mut killed: Vec<&AppRecord> = Vec::new();
    let result = write_units(
        backends,
        reg,
        &all,
        &tmp,
        job,
        version,
        opts,
        &mut frozen_by_us,
        &mut killed,
    )
    .and_then(|mut m| {
        for u in &mut m.units {
            u.callbacks = cb_results.get(&u.app).cloned().unwrap_or_default();
        }
        meta::write(&tmp, &m)?;
        meta::sync_tree(&tmp)?;
        let dir = meta::version_dir(root, job, version);
        std::fs::rename(&tmp, &dir).map_err(|e| PathError::new("rename into", &dir, e))?;
        Ok(m)
    });
    for u in frozen_by_us.iter().rev() {
        if u.alive() {
            if let Ok(b) = backends.get(&u.checkpointer) {
                let _ = b.thaw(u, opts.timeout);
            }
        }
    }
    let err = match result {
        Ok(m) => {
            if !opts.kill {
                for u in &all {
                    late_callback(
                        u,
                        callback::Event::PostCheckpoint,
                        job,
                        version,
                        opts.callback_timeout,
                    );
                }
            }
            return Ok(JobCheckpointed::Written(m));
        }
        Err(e) => e,
    };
    let mut back = Vec::new();
    for u in &killed {
        let r = backends.get(&u.checkpointer).and_then(|b| {
            b.restart(
                reg,
                &tmp.join(format!("unit-{}", u.id)),
                &RestartOptions {
                    frozen: false,
                    cgroup_parent: parent_of(u),
                    job: Some(job.to_string()),
                    command: u.command.clone(),
                    callback: u.callback.clone(),
                    stdout: None,
                    stderr: None,
                    notify: None,
                },
            )
        });
        match r {
            Ok(Restarted::Started(id)) => back.push((u.id, id)),
            Ok(Restarted::ChildExit(c)) => return Ok(JobCheckpointed::ChildExit(c)),
            Err(e) => log::error!("unit {}: cannot restart it again: {e}", u.id),
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if killed.is_empty() {
        Err(err)
    } else {
        let lost = killed
            .iter()
            .map(|u| u.id)
            .filter(|id| !back.iter().any(|(old, _)| old == id))
            .collect();
        Err(GcpError::RolledBack {
            source: Box::new(err),
            restarted: back,
            lost,
        })
    }
}

/// The running units of `job` to work on: `chosen` (which must all be units of
/// the job) or all of them; each backend must work here.
fn select_units(
    backends: &Backends,
    reg: &Registry,
    job: &str,
    chosen: &[u64],
) -> Result<Vec<AppRecord>> {
    let mut all = units(reg, job)?;
    if !chosen.is_empty() {
        for u in chosen {
            if !all.iter().any(|r| r.id == *u) {
                return Err(GcpError::NoSuchUnit {
                    job: job.to_string(),
                    unit: *u,
                });
            }
        }
        all.retain(|r| chosen.contains(&r.id));
    }
    if all.is_empty() {
        return Err(GcpError::NoUnits(job.to_string()));
    }
    for u in &all {
        backends
            .get(&u.checkpointer)
            .and_then(|b| b.require())
            .map_err(unit_err(u.id))?;
    }
    Ok(all)
}

/// What the first phase of a two-phase checkpoint left for the second:
/// `JOB/.prepared`, a checked file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Prepared {
    /// The units to write.
    units: Vec<u64>,
    /// Those frozen by `prepare` (the others were frozen already).
    frozen: Vec<u64>,
}

const PREPARED_MAGIC: &str = "xos-gcp-prepared";

fn prepared_path(root: &Path, job: &str) -> PathBuf {
    meta::job_dir(root, job).join(".prepared")
}

fn read_prepared(root: &Path, job: &str) -> Result<Option<Prepared>> {
    let path = prepared_path(root, job);
    if !path.exists() {
        return Ok(None);
    }
    let body = fsutil::read_checked(&path, PREPARED_MAGIC, 1)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| GcpError::BadImage {
            path,
            reason: e.to_string(),
        })
}

fn remove_prepared(root: &Path, job: &str) -> Result<()> {
    let path = prepared_path(root, job);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PathError::new("remove", &path, e).into()),
    }
}

fn thaw_ids(backends: &Backends, reg: &Registry, ids: &[u64], timeout: Duration) -> Vec<u64> {
    let mut thawed = Vec::new();
    for id in ids {
        let Ok(u) = reg.load(*id) else { continue };
        if let Ok(b) = backends.get(&u.checkpointer) {
            if u.alive() && b.thaw(&u, timeout).is_ok() {
                thawed.push(*id);
            }
        }
    }
    thawed
}

/// First phase of a two-phase checkpoint, for a job manager that coordinates
/// several nodes: freezes every unit (or the chosen ones) and records them;
/// [`checkpoint`] then writes them (commit), or [`abort`] thaws them. Returns
/// the prepared units. If a unit cannot be frozen, the others are thawed again.
pub fn prepare(
    backends: &Backends,
    reg: &Registry,
    root: &Path,
    job: &str,
    opts: &JobCheckpoint,
) -> Result<Vec<u64>> {
    let timeout = opts.timeout;
    meta::check_job(job)?;
    if units(reg, job)?.is_empty() {
        return Err(GcpError::NoUnits(job.to_string()));
    }
    let _lock = lock_job(root, job)?;
    if read_prepared(root, job)?.is_some() {
        return Err(GcpError::Phase {
            job: job.to_string(),
            what: "is already prepared (commit or abort first)",
        });
    }
    let all = select_units(backends, reg, job, &opts.units)?;
    let version = meta::versions(root, job).last().copied().unwrap_or(0) + 1;
    pre_callbacks(&all, job, version, opts.force, opts.callback_timeout)?;
    let mut frozen: Vec<&AppRecord> = Vec::new();
    for u in &all {
        if let Err(e) = freeze(backends, u, timeout, &mut frozen) {
            for f in frozen.iter().rev() {
                if let Ok(b) = backends.get(&f.checkpointer) {
                    let _ = b.thaw(f, timeout);
                }
            }
            return Err(e);
        }
    }
    let p = Prepared {
        units: all.iter().map(|u| u.id).collect(),
        frozen: frozen.iter().map(|u| u.id).collect(),
    };
    let body = serde_json::to_vec(&p).expect("always serializes");
    if let Err(e) = fsutil::write_checked(&prepared_path(root, job), PREPARED_MAGIC, 1, &body) {
        thaw_ids(backends, reg, &p.frozen, timeout);
        return Err(e.into());
    }
    Ok(p.units)
}

/// Second phase, abort: thaws what [`prepare`] froze. Returns the thawed units.
pub fn abort(
    backends: &Backends,
    reg: &Registry,
    root: &Path,
    job: &str,
    timeout: Duration,
) -> Result<Vec<u64>> {
    meta::check_job(job)?;
    let _lock = lock_job(root, job)?;
    let Some(p) = read_prepared(root, job)? else {
        return Err(GcpError::Phase {
            job: job.to_string(),
            what: "is not prepared",
        });
    };
    let thawed = thaw_ids(backends, reg, &p.frozen, timeout);
    remove_prepared(root, job)?;
    Ok(thawed)
}

/// The cgroup parent a unit's group was made under.
fn parent_of(u: &AppRecord) -> String {
    u.cgroup
        .name()
        .rsplit_once('/')
        .map(|(p, _)| p.to_string())
        .unwrap_or_else(|| crate::app::DEFAULT_CGROUP_PARENT.to_string())
}

/// Outcome of [`checkpoint`] in the calling process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCheckpointed {
    /// The version is written.
    Written(JobMeta),
    /// This process is a supervisor made when a stopped unit was restarted
    /// after a failure, and has finished: it must exit with this status.
    ChildExit(i32),
}

#[allow(clippy::too_many_arguments)]
fn write_units<'a>(
    backends: &Backends,
    reg: &Registry,
    all: &'a [AppRecord],
    tmp: &Path,
    job: &str,
    version: u64,
    opts: &JobCheckpoint,
    frozen_by_us: &mut Vec<&'a AppRecord>,
    killed: &mut Vec<&'a AppRecord>,
) -> Result<JobMeta> {
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    };
    // With --kill each backend stops its unit while it is still stopped for
    // the dump, so that it does not run one instruction past its image.
    if opts.coordinated {
        for u in all {
            freeze(backends, u, opts.timeout, frozen_by_us)?;
            if cancelled() {
                return Err(GcpError::Cancelled);
            }
        }
    }
    let mut units = Vec::new();
    for u in all {
        if cancelled() {
            return Err(GcpError::Cancelled);
        }
        let b = backends.get(&u.checkpointer).map_err(unit_err(u.id))?;
        let name = format!("unit-{}", u.id);
        let dir = tmp.join(&name);
        fsutil::create_dir_all(&dir, 0o755)?;
        let img = b
            .checkpoint(
                reg.root(),
                u,
                &dir,
                &DumpOptions {
                    kill: opts.kill,
                    timeout: opts.timeout,
                    wait: opts.wait,
                    cancel: opts.cancel.clone(),
                },
            )
            .map_err(unit_err(u.id))?;
        if opts.kill {
            killed.push(u);
        }
        units.push(UnitMeta {
            app: u.id,
            dir: name,
            backend: img.backend,
            backend_version: img.backend_version,
            command: u.command.clone(),
            processes: img.processes,
            bytes: img.bytes,
            kernel: img.kernel,
            xfeatures: img.xfeatures,
            stopped_ms: img.stopped.as_millis() as u64,
            callback: u.callback.clone(),
            callbacks: Vec::new(),
        });
    }
    Ok(JobMeta {
        job: job.to_string(),
        version,
        created: registry::now(),
        node: meta::node_name(),
        coordinated: opts.coordinated,
        units,
        restarts: Vec::new(),
        killed: opts.kill,
    })
}

fn freeze<'a>(
    backends: &Backends,
    u: &'a AppRecord,
    timeout: Duration,
    frozen_by_us: &mut Vec<&'a AppRecord>,
) -> Result<()> {
    if u.cgroup.freezer_state()? == FreezerState::Frozen {
        return Ok(());
    }
    let b = backends.get(&u.checkpointer).map_err(unit_err(u.id))?;
    b.freeze(u, timeout).map_err(unit_err(u.id))?;
    frozen_by_us.push(u);
    Ok(())
}

/// Options of a job restart.
#[derive(Debug, Clone, Default)]
pub struct JobRestart {
    pub frozen: bool,
    pub cgroup_parent: String,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// Where container units report their job's end (else where they did).
    pub notify: Option<String>,
}

/// Outcome of [`restart`] in the calling process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRestarted {
    /// Every unit runs: (unit's id in the version, its new application id,
    /// backend).
    Started(Vec<(u64, u64, String)>),
    /// This process is a supervisor made by a unit's restart and has
    /// finished: it must exit at once with this status.
    ChildExit(i32),
}

/// Restarts every unit of `job` version `version` on this node. Everything is
/// checked first (metadata, every unit's image, every backend): on any problem
/// nothing is started. If a unit fails to start, the units already started are
/// killed again.
pub fn restart(
    backends: &Backends,
    reg: &Registry,
    root: &Path,
    job: &str,
    version: u64,
    opts: &JobRestart,
) -> Result<JobRestarted> {
    meta::check_job(job)?;
    let mut m = meta::read(root, job, version)?;
    let vdir = meta::version_dir(root, job, version);
    for u in &m.units {
        let b = backends.get(&u.backend).map_err(unit_err(u.app))?;
        b.require().map_err(unit_err(u.app))?;
        b.verify(&vdir.join(&u.dir)).map_err(unit_err(u.app))?;
    }
    let mut started = Vec::new();
    for u in &m.units {
        let b = backends.get(&u.backend).map_err(unit_err(u.app))?;
        let r = b.restart(
            reg,
            &vdir.join(&u.dir),
            &RestartOptions {
                frozen: opts.frozen,
                cgroup_parent: opts.cgroup_parent.clone(),
                job: Some(job.to_string()),
                command: u.command.clone(),
                callback: u.callback.clone(),
                stdout: opts.stdout.clone(),
                stderr: opts.stderr.clone(),
                notify: opts.notify.clone(),
            },
        );
        match r {
            Ok(Restarted::Started(id)) => started.push((u.app, id, u.backend.clone())),
            Ok(Restarted::ChildExit(c)) => return Ok(JobRestarted::ChildExit(c)),
            Err(e) => {
                for (_, id, _) in &started {
                    if let Ok(rec) = reg.load(*id) {
                        let _ = rec.cgroup.kill(Duration::from_secs(10));
                    }
                }
                return Err(unit_err(u.app)(e));
            }
        }
    }
    for (_, id, _) in &started {
        if let Ok(rec) = reg.load(*id) {
            late_callback(
                &rec,
                callback::Event::PostRestart,
                job,
                version,
                DEFAULT_CALLBACK_TIMEOUT,
            );
        }
    }
    // The metadata says where the version was restarted, and a restart of a
    // version whose units were not stopped on purpose is a failure of the node
    // that ran them (best effort: a read-only checkpoint directory does not
    // undo a restart that worked).
    let now = registry::now();
    if !m.killed {
        let failed = m.restarts.last().map_or(&m.node, |(n, _)| n).clone();
        let since = meta::versions(root, job)
            .into_iter()
            .filter_map(|v| meta::read(root, job, v).ok())
            .map(|v| v.created)
            .min()
            .unwrap_or(m.created)
            .min(m.created);
        let f = meta::Failure {
            time: now,
            node: failed,
            version,
            restarted_on: meta::node_name(),
        };
        if let Err(e) = meta::record_failure(root, job, since, &f) {
            log::warn!("job {job} version {version}: cannot record the failure: {e}");
        }
    }
    m.restarts.push((meta::node_name(), now));
    if let Err(e) = meta::write(&vdir, &m) {
        log::warn!("job {job} version {version}: cannot record the restart: {e}");
    }
    Ok(JobRestarted::Started(started))
}

/// Removes version `version` of `job`.
pub fn delete(backends: &Backends, root: &Path, job: &str, version: u64) -> Result<()> {
    meta::check_job(job)?;
    let _lock = lock_job(root, job)?;
    let dir = meta::version_dir(root, job, version);
    if !dir.is_dir() {
        return Err(GcpError::NoVersion {
            job: job.to_string(),
            version,
        });
    }
    // Hidden first, so a half-deleted version is never listed.
    let gone = meta::job_dir(root, job).join(format!(".{version}.tmp"));
    std::fs::rename(&dir, &gone).map_err(|e| PathError::new("rename into", &gone, e))?;
    if let Ok(m) = meta::read_at(&gone, job, version) {
        for u in &m.units {
            if let Ok(b) = backends.get(&u.backend) {
                let _ = b.delete(&gone.join(&u.dir));
            }
        }
    }
    std::fs::remove_dir_all(&gone).map_err(|e| PathError::new("remove", &gone, e))?;
    Ok(())
}

/// Keeps the `keep` newest versions of `job`, removes the others; returns the
/// removed versions.
pub fn keep(backends: &Backends, root: &Path, job: &str, keep: usize) -> Result<Vec<u64>> {
    let v = meta::versions(root, job);
    let old: Vec<u64> = v.iter().rev().skip(keep).rev().copied().collect();
    for n in &old {
        delete(backends, root, job, *n)?;
    }
    Ok(old)
}
