//! Per-job control groups on cgroup v1, v2 and hybrid hosts.
//!
//! Kernel interface: the cgroup filesystems (`Documentation/admin-guide/cgroup-v1/`,
//! `cgroup-v2.rst`, cgroups(7)). The layout is read from `/proc/self/mountinfo`; every
//! other operation goes through files under the hierarchies' mount points, which are
//! parameters ([`Layout::from_hierarchies`]) so the logic runs on fixture directories too.
//!
//! A [`Group`] is one named cgroup (for example `xos/app-3`) present in every
//! hierarchy the job uses: on v1 one directory per controller hierarchy, on v2 one
//! directory, on hybrid hosts both. Limits go to whichever hierarchy carries the
//! controller; the v1 freezer is preferred over the v2 one when both exist.

mod layout;
mod v1;
mod v2;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, PathError};

pub use layout::{parse_mountinfo, Hierarchy, Layout, LayoutKind, Version};

/// What can go wrong with a cgroup operation; every variant names the group.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {group}: {source}")]
    Io {
        group: String,
        #[source]
        source: PathError,
    },
    #[error("no cgroup hierarchy is mounted (looked in {0})")]
    NoCgroupFs(String),
    #[error("invalid cgroup name '{name}': {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cgroup {group}: the {controller} controller is not available on this host")]
    NoController { group: String, controller: String },
    #[error("cgroup {group}: invalid {what} '{value}': {reason}")]
    InvalidValue {
        group: String,
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cgroup {group}: cannot parse {}: '{content}'", path.display())]
    Parse {
        group: String,
        path: PathBuf,
        content: String,
    },
    #[error("cgroup {group}: {what} did not complete within {}ms", waited.as_millis())]
    Timeout {
        group: String,
        what: &'static str,
        waited: Duration,
    },
    #[error("cgroup {group} still has {count} process(es)")]
    NotEmpty { group: String, count: usize },
    #[error("cgroup {group}: cannot kill pid {pid}: {source}")]
    Kill {
        group: String,
        pid: i32,
        #[source]
        source: nix::Error,
    },
}

type Result<T> = std::result::Result<T, CgroupError>;

/// Resource limits of a job group. `None` leaves a limit as it is when setting and
/// means "unlimited / not set" when reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub memory_max: Option<u64>,
    /// CPU weight 1..=10000 with the v2 meaning (default 100). On v1 it is written
    /// as `cpu.shares = weight * 1024 / 100`, so the defaults of both agree.
    pub cpu_weight: Option<u64>,
    /// CPU bandwidth: `quota_us` of CPU time per `period_us`.
    pub cpu_max: Option<CpuMax>,
    /// Maximum number of tasks (`pids.max`).
    pub pids_max: Option<u64>,
    /// Allowed CPUs, in the kernel's list format (`0-3,6`).
    pub cpuset_cpus: Option<String>,
    /// Allowed memory nodes, in the kernel's list format.
    pub cpuset_mems: Option<String>,
}

/// CPU bandwidth limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuMax {
    /// The default CFS period of the kernel.
    pub const DEFAULT_PERIOD_US: u64 = 100_000;

    /// A limit of `cpus` CPUs (for example 1.5) with the default period.
    pub fn from_cpus(cpus: f64) -> Option<CpuMax> {
        if !(cpus.is_finite() && cpus > 0.0) {
            return None;
        }
        let quota = (cpus * Self::DEFAULT_PERIOD_US as f64).round() as u64;
        Some(CpuMax {
            quota_us: quota.max(1000),
            period_us: Self::DEFAULT_PERIOD_US,
        })
    }
}

/// Resource usage of a job group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time consumed, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory in use, in bytes.
    pub memory_current: Option<u64>,
    /// Highest memory use recorded, in bytes.
    pub memory_peak: Option<u64>,
    /// Number of tasks (threads) in the group and its descendants.
    pub tasks: u64,
}

/// State of a group's freezer as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

impl std::fmt::Display for FreezerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FreezerState::Thawed => "thawed",
            FreezerState::Freezing => "freezing",
            FreezerState::Frozen => "frozen",
        })
    }
}

/// One directory of a group: the group's place in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDir {
    pub version: Version,
    /// Mount point of the hierarchy.
    pub mount: PathBuf,
    /// Controllers of the hierarchy (v1) or the ones it offers (v2).
    pub controllers: Vec<String>,
}

/// A named cgroup present in one or more hierarchies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    name: String,
    dirs: Vec<GroupDir>,
}

/// Controllers a job group uses by default.
pub const DEFAULT_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"];

/// Controllers enabled for children on v2 when available.
const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids", "io"];

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.starts_with('/') {
        return bad("must be relative to the hierarchy root");
    }
    for c in name.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return bad("empty, '.' or '..' component");
        }
        if c.contains('\n') || c.contains('\0') {
            return bad("control character");
        }
    }
    Ok(())
}

impl Group {
    /// The group's name relative to each hierarchy root (e.g. `xos/app-3`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hierarchies this group lives in.
    pub fn dirs(&self) -> &[GroupDir] {
        &self.dirs
    }

    /// The directory of this group in every hierarchy.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.mount.join(&self.name)).collect()
    }

    fn io(&self, e: PathError) -> CgroupError {
        CgroupError::Io {
            group: self.name.clone(),
            source: e,
        }
    }

    fn read(&self, path: &Path) -> Result<String> {
        fsutil::read_string(path).map_err(|e| self.io(e))
    }

    fn write(&self, path: &Path, value: &str) -> Result<()> {
        log::debug!("write {} <- {value}", path.display());
        fsutil::write_control(path, value).map_err(|e| self.io(e))
    }

    fn parse_err(&self, path: &Path, content: &str) -> CgroupError {
        CgroupError::Parse {
            group: self.name.clone(),
            path: path.to_path_buf(),
            content: content.trim().to_string(),
        }
    }

    fn read_u64(&self, path: &Path) -> Result<u64> {
        let s = self.read(path)?;
        s.trim().parse().map_err(|_| self.parse_err(path, &s))
    }

    /// Directory of the v1 hierarchy carrying `controller`, if any.
    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        self.dirs
            .iter()
            .find(|d| d.version == Version::V1 && d.controllers.iter().any(|c| c == controller))
            .map(|d| d.mount.join(&self.name))
    }

    /// Directory in the v2 hierarchy, if the group has one.
    fn v2_dir(&self) -> Option<PathBuf> {
        self.dirs
            .iter()
            .find(|d| d.version == Version::V2)
            .map(|d| d.mount.join(&self.name))
    }

    /// The v2 directory if `controller` is enabled for this group there.
    fn v2_dir_with(&self, controller: &str) -> Option<PathBuf> {
        let dir = self.v2_dir()?;
        let list = fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
        list.split_whitespace()
            .any(|c| c == controller)
            .then_some(dir)
    }

    fn no_controller(&self, controller: &str) -> CgroupError {
        CgroupError::NoController {
            group: self.name.clone(),
            controller: controller.to_string(),
        }
    }

    /// Whether the group's directories all exist.
    pub fn exists(&self) -> bool {
        self.paths().iter().all(|p| p.is_dir())
    }

    /// Creates the group (and missing parents) in every hierarchy. On failure the
    /// directories created by this call are removed again.
    pub fn create(&self) -> Result<()> {
        let mut created: Vec<PathBuf> = Vec::new();
        let result = self.create_inner(&mut created);
        if result.is_err() {
            for p in created.iter().rev() {
                let _ = fs::remove_dir(p);
            }
        }
        result
    }

    fn create_inner(&self, created: &mut Vec<PathBuf>) -> Result<()> {
        for d in &self.dirs {
            let mut path = d.mount.clone();
            for comp in self.name.split('/') {
                if d.version == Version::V2 {
                    v2::enable_controllers(&path, V2_CONTROLLERS);
                }
                let parent = path.clone();
                path.push(comp);
                if path.is_dir() {
                    continue;
                }
                match fs::create_dir(&path) {
                    Ok(()) => created.push(path.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(self.io(PathError::new("create", &path, e))),
                }
                if d.version == Version::V1 && d.controllers.iter().any(|c| c == "cpuset") {
                    // A new v1 cpuset starts with no CPUs and no memory nodes, and
                    // accepts no task until they are set: inherit the parent's.
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let cur = self.read(&path.join(f))?;
                        if cur.trim().is_empty() {
                            let from = self.read(&parent.join(f))?;
                            self.write(&path.join(f), from.trim())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` (with all its threads) into the group.
    pub fn attach(&self, pid: i32) -> Result<()> {
        for p in self.paths() {
            self.write(&p.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process, which must be single-threaded, into the
    /// group without what a move by pid costs: the write lock on every thread
    /// group, which first waits for an RCU grace period (5-20 ms, most of a
    /// small restart). In each v1 hierarchy the caller moves its own thread
    /// through `tasks` with "0", which takes no such lock. v2 has no such way:
    /// `forked_in_v2` says the caller was created there already (clone3
    /// CLONE_INTO_CGROUP, see [`Group::v2_fd`]); if not, it moves by pid.
    pub fn attach_self(&self, forked_in_v2: bool) -> Result<()> {
        for d in &self.dirs {
            let dir = d.mount.join(&self.name);
            match d.version {
                Version::V1 => self.write(&dir.join("tasks"), "0")?,
                Version::V2 if !forked_in_v2 => self.write(&dir.join("cgroup.procs"), "0")?,
                Version::V2 => {}
            }
        }
        Ok(())
    }

    /// The group's v2 directory, opened for clone3(2) CLONE_INTO_CGROUP.
    pub fn v2_fd(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(self.v2_dir()?)
            .ok()?;
        Some(f.into())
    }

    /// Processes in the group and its descendants, sorted.
    pub fn pids(&self) -> Result<Vec<i32>> {
        // Every member is attached in every hierarchy of the group, so one
        // hierarchy (the freezer's, the one that matters for stopping) suffices.
        let mut out = Vec::new();
        if let Some((_, dir)) = self.freezer() {
            self.collect(&dir, "cgroup.procs", &mut out)?;
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn collect(&self, dir: &Path, file: &str, out: &mut Vec<i32>) -> Result<()> {
        let path = dir.join(file);
        let s = match fsutil::read_string(&path) {
            Ok(s) => s,
            // A group removed meanwhile (say by its supervisor) holds no process.
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(self.io(e)),
        };
        for line in s.lines() {
            out.push(
                line.trim()
                    .parse()
                    .map_err(|_| self.parse_err(&path, line))?,
            );
        }
        for sub in subdirs(dir).unwrap_or_default() {
            self.collect(&sub, file, out)?;
        }
        Ok(())
    }

    /// Checks every limit before writing any, so a bad value changes nothing.
    fn validate(&self, l: &Limits) -> Result<()> {
        let invalid = |what, value: String, reason| CgroupError::InvalidValue {
            group: self.name.clone(),
            what,
            value,
            reason,
        };
        if let Some(w) = l.cpu_weight {
            if !(1..=10_000).contains(&w) {
                return Err(invalid("cpu weight", w.to_string(), "must be 1..10000"));
            }
        }
        if let Some(m) = l.cpu_max {
            if m.period_us < 1000 || m.period_us > 1_000_000 || m.quota_us < 1000 {
                return Err(invalid(
                    "cpu max",
                    format!("{} {}", m.quota_us, m.period_us),
                    "period must be 1000..1000000 us and quota at least 1000 us",
                ));
            }
        }
        if l.memory_max == Some(0) {
            return Err(invalid("memory max", "0".into(), "must be positive"));
        }
        if l.pids_max == Some(0) {
            return Err(invalid("pids max", "0".into(), "must be positive"));
        }
        for (what, v) in [
            ("cpuset cpus", &l.cpuset_cpus),
            ("cpuset mems", &l.cpuset_mems),
        ] {
            if let Some(v) = v {
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
                {
                    return Err(invalid(what, v.clone(), "expected a list like 0-3,6"));
                }
            }
        }
        // Every needed controller must be present before anything is written.
        let needs = [
            ("memory", l.memory_max.is_some()),
            ("cpu", l.cpu_weight.is_some() || l.cpu_max.is_some()),
            ("pids", l.pids_max.is_some()),
            ("cpuset", l.cpuset_cpus.is_some() || l.cpuset_mems.is_some()),
        ];
        for (c, needed) in needs {
            if needed && self.v1_dir(c).is_none() && self.v2_dir_with(c).is_none() {
                return Err(self.no_controller(c));
            }
        }
        Ok(())
    }

    /// Applies the limits that are set in `l`; all values are checked first.
    pub fn set_limits(&self, l: &Limits) -> Result<()> {
        self.validate(l)?;
        if let Some(m) = l.memory_max {
            match self.v1_dir("memory") {
                Some(d) => self.write(&d.join(v1::MEMORY_MAX), &m.to_string())?,
                None => self.write(&self.v2_req("memory")?.join(v2::MEMORY_MAX), &m.to_string())?,
            }
        }
        if let Some(w) = l.cpu_weight {
            match self.v1_dir("cpu") {
                Some(d) => self.write(
                    &d.join(v1::CPU_SHARES),
                    &v1::weight_to_shares(w).to_string(),
                )?,
                None => self.write(&self.v2_req("cpu")?.join(v2::CPU_WEIGHT), &w.to_string())?,
            }
        }
        if let Some(m) = l.cpu_max {
            match self.v1_dir("cpu") {
                Some(d) => {
                    self.write(&d.join(v1::CPU_PERIOD), &m.period_us.to_string())?;
                    self.write(&d.join(v1::CPU_QUOTA), &m.quota_us.to_string())?;
                }
                None => self.write(
                    &self.v2_req("cpu")?.join(v2::CPU_MAX),
                    &format!("{} {}", m.quota_us, m.period_us),
                )?,
            }
        }
        if let Some(p) = l.pids_max {
            let d = match self.v1_dir("pids") {
                Some(d) => d,
                None => self.v2_req("pids")?,
            };
            self.write(&d.join("pids.max"), &p.to_string())?;
        }
        for (file, v) in [
            ("cpuset.cpus", &l.cpuset_cpus),
            ("cpuset.mems", &l.cpuset_mems),
        ] {
            if let Some(v) = v {
                let d = match self.v1_dir("cpuset") {
                    Some(d) => d,
                    None => self.v2_req("cpuset")?,
                };
                self.write(&d.join(file), v)?;
            }
        }
        Ok(())
    }

    fn v2_req(&self, controller: &str) -> Result<PathBuf> {
        self.v2_dir_with(controller)
            .ok_or_else(|| self.no_controller(controller))
    }

    /// Reads the limits currently in force; unlimited values read as `None`.
    pub fn limits(&self) -> Result<Limits> {
        let mut l = Limits::default();
        if let Some(d) = self.v1_dir("memory") {
            l.memory_max = v1::limit(self.read_u64(&d.join(v1::MEMORY_MAX))?);
        } else if let Some(d) = self.v2_dir_with("memory") {
            l.memory_max = self.read_max(&d.join(v2::MEMORY_MAX))?;
        }
        if let Some(d) = self.v1_dir("cpu") {
            l.cpu_weight = Some(v1::shares_to_weight(
                self.read_u64(&d.join(v1::CPU_SHARES))?,
            ));
            let qpath = d.join(v1::CPU_QUOTA);
            let q = self.read(&qpath)?;
            let quota: i64 = q.trim().parse().map_err(|_| self.parse_err(&qpath, &q))?;
            if quota > 0 {
                l.cpu_max = Some(CpuMax {
                    quota_us: quota as u64,
                    period_us: self.read_u64(&d.join(v1::CPU_PERIOD))?,
                });
            }
        } else if let Some(d) = self.v2_dir_with("cpu") {
            l.cpu_weight = Some(self.read_u64(&d.join(v2::CPU_WEIGHT))?);
            let path = d.join(v2::CPU_MAX);
            let s = self.read(&path)?;
            l.cpu_max = v2::parse_cpu_max(&s).ok_or_else(|| self.parse_err(&path, &s))?;
        }
        let pids = self.v1_dir("pids").or_else(|| self.v2_dir_with("pids"));
        if let Some(d) = pids {
            l.pids_max = self.read_max(&d.join("pids.max"))?;
        }
        let cpuset = self.v1_dir("cpuset").or_else(|| self.v2_dir_with("cpuset"));
        if let Some(d) = cpuset {
            let nonempty = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
            l.cpuset_cpus = nonempty(self.read(&d.join("cpuset.cpus"))?);
            l.cpuset_mems = nonempty(self.read(&d.join("cpuset.mems"))?);
        }
        Ok(l)
    }

    /// Reads a file holding a number or `max`.
    fn read_max(&self, path: &Path) -> Result<Option<u64>> {
        let s = self.read(path)?;
        match s.trim() {
            "max" => Ok(None),
            v => v.parse().map(Some).map_err(|_| self.parse_err(path, &s)),
        }
    }

    /// Reads CPU time, memory and task counts.
    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage::default();
        if let Some(d) = self.v1_dir("cpuacct") {
            u.cpu_ns = Some(self.read_u64(&d.join("cpuacct.usage"))?);
        } else if let Some(d) = self.v2_dir() {
            let path = d.join("cpu.stat");
            let s = self.read(&path)?;
            let usec = v2::keyed(&s, "usage_usec").ok_or_else(|| self.parse_err(&path, &s))?;
            u.cpu_ns = Some(usec * 1000);
        }
        if let Some(d) = self.v1_dir("memory") {
            u.memory_current = Some(self.read_u64(&d.join("memory.usage_in_bytes"))?);
            u.memory_peak = Some(self.read_u64(&d.join("memory.max_usage_in_bytes"))?);
        } else if let Some(d) = self.v2_dir_with("memory") {
            u.memory_current = Some(self.read_u64(&d.join("memory.current"))?);
            let peak = d.join("memory.peak");
            if peak.exists() {
                u.memory_peak = Some(self.read_u64(&peak)?);
            }
        }
        let mut tasks = Vec::new();
        match self.dirs.first() {
            Some(d) if d.version == Version::V1 => {
                self.collect(&d.mount.join(&self.name), "tasks", &mut tasks)?
            }
            Some(d) => self.collect(&d.mount.join(&self.name), "cgroup.threads", &mut tasks)?,
            None => {}
        }
        u.tasks = tasks.len() as u64;
        Ok(u)
    }

    /// Which freezer the group uses: the v1 freezer hierarchy if present, else v2.
    fn freezer(&self) -> Option<(Version, PathBuf)> {
        self.v1_dir("freezer")
            .map(|d| (Version::V1, d))
            .or_else(|| self.v2_dir().map(|d| (Version::V2, d)))
    }

    /// The freezer state the kernel reports for the group.
    pub fn freezer_state(&self) -> Result<FreezerState> {
        let (v, d) = self
            .freezer()
            .ok_or_else(|| self.no_controller("freezer"))?;
        match v {
            Version::V1 => {
                let path = d.join(v1::FREEZER_STATE);
                let s = self.read(&path)?;
                v1::parse_freezer(&s).ok_or_else(|| self.parse_err(&path, &s))
            }
            Version::V2 => {
                let path = d.join("cgroup.events");
                let s = self.read(&path)?;
                let frozen = v2::keyed(&s, "frozen").ok_or_else(|| self.parse_err(&path, &s))?;
                if frozen == 1 {
                    return Ok(FreezerState::Frozen);
                }
                let want = self.read(&d.join("cgroup.freeze"))?;
                Ok(if want.trim() == "1" {
                    FreezerState::Freezing
                } else {
                    FreezerState::Thawed
                })
            }
        }
    }

    fn request_freeze(&self, frozen: bool) -> Result<()> {
        let (v, d) = self
            .freezer()
            .ok_or_else(|| self.no_controller("freezer"))?;
        match v {
            Version::V1 => self.write(
                &d.join(v1::FREEZER_STATE),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Version::V2 => self.write(&d.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
        }
    }

    /// Freezes every task of the group and waits until the kernel says FROZEN.
    /// On timeout the group is thawed again and an error returned.
    pub fn freeze(&self, timeout: Duration) -> Result<()> {
        self.request_freeze(true)?;
        let r = self.wait_for("freeze", timeout, |g| {
            Ok(g.freezer_state()? == FreezerState::Frozen)
        });
        if r.is_err() {
            let _ = self.thaw(timeout);
        }
        r
    }

    /// Thaws the group and waits until the kernel says THAWED.
    pub fn thaw(&self, timeout: Duration) -> Result<()> {
        self.request_freeze(false)?;
        self.wait_for("thaw", timeout, |g| {
            Ok(g.freezer_state()? == FreezerState::Thawed)
        })
    }

    fn wait_for(
        &self,
        what: &'static str,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            if done(self)? {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(CgroupError::Timeout {
                    group: self.name.clone(),
                    what,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Kills every process of the group (and its descendants) and waits until the
    /// group is empty. Uses v2 `cgroup.kill` where the kernel has it; otherwise the
    /// group is frozen so nothing can fork while the signals go out.
    pub fn kill(&self, timeout: Duration) -> Result<()> {
        let cgkill = self
            .v2_dir()
            .map(|d| d.join("cgroup.kill"))
            .filter(|p| p.exists());
        if let Some(p) = cgkill {
            match fsutil::write_control(&p, "1") {
                Ok(()) => {}
                // Removed meanwhile (its supervisor saw it empty): nothing to kill.
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(self.io(e)),
            }
            // On a hybrid host a task frozen by the v1 freezer (in this group
            // or a sub-group) dies only once thawed; with SIGKILL pending it
            // runs no more user code.
            if let Some(dir) = self.v1_dir("freezer") {
                self.thaw_v1_tree(&dir)?;
            }
        } else {
            let frozen = self.freezer().is_some() && self.freeze(timeout).is_ok();
            let r = self.signal_all(nix::sys::signal::Signal::SIGKILL);
            if frozen {
                self.thaw(timeout)?;
            }
            r?;
        }
        self.wait_for("emptying", timeout, |g| Ok(g.pids()?.is_empty()))
    }

    /// Thaws `dir` and every v1 freezer group below it, top down.
    fn thaw_v1_tree(&self, dir: &Path) -> Result<()> {
        let path = dir.join(v1::FREEZER_STATE);
        match fsutil::read_string(&path) {
            Ok(s) if s.trim() != "THAWED" => self.write(&path, "THAWED")?,
            Ok(_) => {}
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(self.io(e)),
        }
        for sub in subdirs(dir).unwrap_or_default() {
            self.thaw_v1_tree(&sub)?;
        }
        Ok(())
    }

    /// Sends `sig` to every process of the group.
    pub fn signal_all(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        for pid in self.pids()? {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => {
                    return Err(CgroupError::Kill {
                        group: self.name.clone(),
                        pid,
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Removes the group (with any sub-groups a job made) from every hierarchy.
    /// Fails, removing nothing, while a process is still inside.
    pub fn remove(&self) -> Result<()> {
        let n = self.pids()?.len();
        if n > 0 {
            return Err(CgroupError::NotEmpty {
                group: self.name.clone(),
                count: n,
            });
        }
        for p in self.paths() {
            if p.is_dir() {
                self.rmdir_tree(&p)?;
            }
        }
        Ok(())
    }

    fn rmdir_tree(&self, dir: &Path) -> Result<()> {
        for sub in subdirs(dir).map_err(|e| self.io(e))? {
            self.rmdir_tree(&sub)?;
        }
        // A task that has just exited can keep the group busy for a moment.
        let mut tries = 0;
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 400 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(self.io(PathError::new("remove", dir, e))),
            }
        }
    }

    /// Kills what is left and removes the group: the cleanup path.
    pub fn destroy(&self, timeout: Duration) -> Result<()> {
        if !self.paths().iter().any(|p| p.is_dir()) {
            return Ok(());
        }
        self.kill(timeout)?;
        self.remove()
    }

    /// Whether `pid` is in this group (read from `/proc/PID/cgroup`).
    pub fn contains(&self, pid: i32) -> bool {
        self.pids().map(|p| p.contains(&pid)).unwrap_or(false)
    }
}

/// Whether an error says the group's directory no longer exists (ENOENT, or
/// ENODEV while the kernel is removing it).
fn gone(e: &PathError) -> bool {
    e.source.kind() == std::io::ErrorKind::NotFound || e.errno() == Some(libc::ENODEV)
}

/// Sub-directories of a cgroup directory (its child groups).
fn subdirs(dir: &Path) -> std::result::Result<Vec<PathBuf>, PathError> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| PathError::new("list", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| PathError::new("list", dir, e))?;
        if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(ent.path());
        }
    }
    Ok(out)
}
