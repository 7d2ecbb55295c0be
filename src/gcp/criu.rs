//! The translation backend of CRIU (criu(8), 4.0 or newer).
//!
//! A unit for CRIU is started by `krgcr-run --checkpointer criu`: own cgroup,
//! PID and IPC namespaces (CRIU saves and restores both, SysV IPC objects
//! included) but the host's mount namespace, and a session of its own (CRIU
//! refuses a session leader outside the tree's PID namespace). `criu dump` writes
//! its images into the unit's directory of the job version; `criu restore`
//! rebuilds the tree as a child of a background supervisor of ours
//! (`--restore-sibling`) inside the new application's cgroup. CRIU's log goes to
//! a work directory under the state directory and is copied beside the images;
//! a failure is reported as the first error line of that log.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nix::sys::signal::{self, SigSet, SigmaskHow};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::api::{
    Checkpointer, DumpOptions, Feature, GcpError, Probe, RestartOptions, Restarted, Result,
    UnitImage,
};
use crate::app::{self, Detached, LaunchSpec};
use crate::applock::AppLock;
use crate::cgroup::{Group, Version};
use crate::fsutil::{self, PathError};
use crate::registry::{AppRecord, Registry};

/// Environment variable naming the criu binary.
pub const CRIU_ENV: &str = "XOS_CRIU";

/// Options for every dump and restore: the unit is its own session (shell-job
/// only matters for a terminal), Unix sockets to the outside, established TCP
/// connections and file locks are saved; cgroups are xos's business.
const COMMON: &[&str] = &[
    "--shell-job",
    "--ext-unix-sk",
    "--tcp-established",
    "--file-locks",
    "--manage-cgroups=ignore",
];

/// Shortest `--timeout` given to `criu dump`, in seconds.
const CRIU_MIN_TIMEOUT: u64 = 30;

/// CRIU as a kernel checkpointer.
#[derive(Debug, Default, Clone)]
pub struct Criu {
    /// The criu binary; else `$XOS_CRIU`, else `criu` on PATH.
    pub binary: Option<PathBuf>,
    /// Where `binary` was named (e.g. "Criu key of /etc/xos/gcp.conf"), for
    /// the line that says why it does not work.
    pub origin: Option<String>,
}

impl Criu {
    /// The binary to run, or why there is none.
    pub fn find(&self) -> std::result::Result<PathBuf, String> {
        if let Some(b) = &self.binary {
            let named = match &self.origin {
                Some(o) => format!("criu {} ({o})", b.display()),
                None => format!("criu {}", b.display()),
            };
            return match std::fs::metadata(b) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(b.clone()),
                Ok(_) => Err(format!("{named}: not an executable file")),
                Err(e) => Err(format!("{named}: {e}")),
            };
        }
        if let Some(b) = std::env::var_os(CRIU_ENV).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(b));
        }
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join("criu"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!("no criu on PATH (install CRIU 4.0 or newer, or set {CRIU_ENV})")
            })
    }

    fn binary(&self) -> Result<PathBuf> {
        self.find().map_err(|why| GcpError::Unavailable {
            backend: app::CRIU.to_string(),
            why,
        })
    }
}

/// The CRIU version from `criu --version` ("Version: 4.2").
fn parse_version(out: &str) -> Option<(u32, u32, String)> {
    let v = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?
        .trim();
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor, v.to_string()))
}

/// The line of a CRIU log that says what failed: the first error that is not
/// one of CRIU's harmless complaints nor its closing "FAILED" line.
pub fn log_error(log: &str) -> Option<String> {
    let errors: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            // With -v4 and up a line starts with a timestamp.
            let rest = &l[l.find("Error (")? + "Error (".len()..];
            Some(
                rest.split_once("): ")
                    .map(|(_, m)| m)
                    .unwrap_or(rest)
                    .trim(),
            )
        })
        .collect();
    let noise = |m: &&str| m.contains("RLIMIT_NOFILE") || m.ends_with("FAILED.");
    errors
        .iter()
        .find(|m| !noise(m))
        .or(errors.first())
        .map(|m| m.to_string())
}

fn failure(op: &'static str, log: PathBuf, status: &str) -> GcpError {
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    GcpError::Criu {
        op,
        message: log_error(&text).unwrap_or_else(|| status.to_string()),
        log,
    }
}

/// The directory of the group's freezer, for `--freeze-cgroup`.
fn freezer_dir(group: &Group) -> Option<PathBuf> {
    let dirs = group.dirs();
    dirs.iter()
        .find(|d| d.version == Version::V1 && d.controllers.iter().any(|c| c == "freezer"))
        .or_else(|| dirs.iter().find(|d| d.version == Version::V2))
        .map(|d| d.mount.join(group.name()))
}

/// A fresh work directory (logs, pid file) under the state directory.
fn work_dir(state: &Path, name: &str) -> Result<PathBuf> {
    let w = state.join("criu").join(name);
    let _ = std::fs::remove_dir_all(&w);
    fsutil::create_dir_all(&w, 0o700)?;
    Ok(w)
}

impl Checkpointer for Criu {
    fn name(&self) -> &'static str {
        app::CRIU
    }

    fn probe(&self) -> Probe {
        let features = vec![
            Feature::Threads,
            Feature::SysvIpc,
            Feature::UnixSockets,
            Feature::Tcp,
        ];
        let version = (|| {
            let bin = self.find()?;
            let out = Command::new(&bin)
                .arg("--version")
                .output()
                .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let (major, _, v) = parse_version(&text)
                .ok_or_else(|| format!("{} --version says no version", bin.display()))?;
            if major < 4 {
                return Err(format!(
                    "{} is CRIU {v}; 4.0 or newer is needed on 6.x kernels",
                    bin.display()
                ));
            }
            let check = Command::new(&bin)
                .arg("check")
                .output()
                .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
            if !check.status.success() {
                let all = format!(
                    "{}{}",
                    String::from_utf8_lossy(&check.stdout),
                    String::from_utf8_lossy(&check.stderr)
                );
                let why = log_error(&all)
                    .or_else(|| all.lines().last().map(str::to_string))
                    .unwrap_or_default();
                return Err(format!("criu check failed: {why}"));
            }
            Ok(v)
        })();
        Probe { version, features }
    }

    fn checkpoint(
        &self,
        state: &Path,
        unit: &AppRecord,
        dir: &Path,
        opts: &DumpOptions,
    ) -> Result<UnitImage> {
        let bin = self.binary()?;
        let version = self.require()?;
        let _lock = AppLock::acquire(state, unit.id, "checkpoint", opts.wait)?;
        if opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(GcpError::Cancelled);
        }
        if !unit.alive() {
            return Err(crate::ckpt::CkptError::NotRunning(unit.id).into());
        }
        let work = work_dir(state, &format!("dump-{}", unit.id))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("dump")
            .arg("--tree")
            .arg(unit.root_pid.to_string())
            .arg("--images-dir")
            .arg(dir)
            .arg("--work-dir")
            .arg(&work)
            .args(["--log-file", "dump.log"])
            .args(COMMON)
            // CRIU's alarm covers collecting the whole tree (freeze, seize,
            // wait for every task), which takes far longer than one kernel
            // wait on a loaded machine.
            .arg("--timeout")
            .arg(opts.timeout.as_secs().max(CRIU_MIN_TIMEOUT).to_string());
        // CRIU freezes through the group and puts a frozen one back frozen.
        if let Some(f) = freezer_dir(&unit.cgroup) {
            cmd.arg("--freeze-cgroup").arg(f);
        }
        if !opts.kill {
            cmd.arg("--leave-running");
        }
        let start = Instant::now();
        // A job unit of xos-loader: its record goes into the image (read
        // before a --kill makes its supervisor remove it), and a --kill is
        // not its job's end.
        let loader_unit = crate::container::unit::native_unit_of(state, unit.id);
        let log = work.join("dump.log");
        crate::container::unit::checkpoint_kill(state, unit.id, opts.kill, || {
            let out = cmd.output().map_err(|source| GcpError::Spawn {
                program: bin.clone(),
                source,
            })?;
            if !out.status.success() {
                return Err(failure("dump", log.clone(), &out.status.to_string()));
            }
            Ok(())
        })?;
        let stopped = start.elapsed();
        if let Some(r) = &loader_unit {
            crate::container::save_record_at(&dir.join(crate::container::UNIT_FILE), r)?;
        }
        if opts.kill {
            // CRIU killed the tree; the supervisor removes the group.
            let _ = unit.cgroup.kill(opts.timeout);
        }
        let kept = dir.join("dump.log");
        std::fs::copy(&log, &kept).map_err(|e| PathError::new("copy to", &kept, e))?;
        let processes = std::fs::read_dir(dir)
            .map_err(|e| PathError::new("list", dir, e))?
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("mm-") && n.ends_with(".img")
            })
            .count();
        Ok(UnitImage {
            backend: self.name().to_string(),
            backend_version: version,
            processes,
            bytes: super::meta::tree_size(dir),
            kernel: crate::ckpt::kernel_release(),
            xfeatures: 0,
            stopped,
        })
    }

    fn verify(&self, dir: &Path) -> Result<()> {
        for f in ["inventory.img", "pstree.img"] {
            let p = dir.join(f);
            match std::fs::metadata(&p) {
                Ok(m) if m.len() > 0 => {}
                Ok(_) => {
                    return Err(GcpError::BadImage {
                        path: p,
                        reason: "empty CRIU image file".into(),
                    })
                }
                Err(e) => return Err(PathError::new("read", &p, e).into()),
            }
        }
        Ok(())
    }

    fn restart(&self, registry: &Registry, dir: &Path, opts: &RestartOptions) -> Result<Restarted> {
        let bin = self.binary()?;
        self.require()?;
        self.verify(dir)?;
        let mut spec = LaunchSpec::new(opts.command.iter().map(OsString::from).collect());
        if spec.argv.is_empty() {
            spec.argv.push("criu-unit".into());
        }
        spec.cgroup_parent = opts.cgroup_parent.clone();
        spec.job = opts.job.clone();
        spec.callback = opts.callback.clone();
        spec.checkpointer = app::CRIU.to_string();
        let state = registry.root().to_path_buf();
        let frozen = opts.frozen;
        let start = move |group: &Group, mask: &SigSet| -> std::result::Result<Pid, String> {
            let work = work_dir(&state, &format!("restore-{}", std::process::id()))
                .map_err(|e| e.to_string())?;
            let pidfile = work.join("root.pid");
            let mut args: Vec<OsString> = vec![
                "restore".into(),
                "--images-dir".into(),
                dir.into(),
                "--work-dir".into(),
                work.clone().into(),
                "--log-file".into(),
                "restore.log".into(),
                "--pidfile".into(),
                pidfile.clone().into(),
                "--restore-detached".into(),
                "--restore-sibling".into(),
            ];
            args.extend(COMMON.iter().map(OsString::from));
            if frozen {
                args.push("--leave-stopped".into());
            }
            let status = run_in_group(&bin, &args, group, mask)?;
            let log = work.join("restore.log");
            if status != 0 {
                return Err(failure("restore", log, &format!("exit status {status}")).to_string());
            }
            let root: i32 = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| format!("criu restore wrote no pid to {}", pidfile.display()))?;
            if frozen {
                group
                    .freeze(std::time::Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                let _ = group.signal_all(nix::sys::signal::Signal::SIGCONT);
            }
            Ok(Pid::from_raw(root))
        };
        // A job unit of xos-loader: it reports its end again.
        let adopted = crate::container::unit::restart_with_unit(
            registry,
            dir,
            opts.notify.clone(),
            |e| super::native::bad_unit(dir, e),
            |unit| {
                spec.unit = unit;
                Ok(app::adopt_detached(registry, &spec, &start)?)
            },
        );
        Ok(match adopted? {
            Detached::Started(id) => Restarted::Started(id),
            Detached::ChildExit(c) => Restarted::ChildExit(c),
        })
    }
}

/// Runs `bin ARGS` inside `group` with signal mask `mask` and returns its exit
/// status; the process joins the group before it executes, so everything it
/// creates starts there.
fn run_in_group(
    bin: &Path,
    args: &[OsString],
    group: &Group,
    mask: &SigSet,
) -> std::result::Result<i32, String> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |s: &std::ffi::OsStr| std::ffi::CString::new(s.as_bytes()).unwrap_or_default();
    let prog = cstr(bin.as_os_str());
    let mut argv = vec![prog.clone()];
    argv.extend(args.iter().map(|a| cstr(a)));
    match crate::sys::fork().map_err(|e| format!("cannot fork: {e}"))? {
        ForkResult::Child => {
            let code = match group.attach(std::process::id() as i32) {
                Ok(()) => {
                    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None);
                    let _ = nix::unistd::execv(&prog, &argv);
                    127
                }
                Err(_) => 126,
            };
            crate::sys::exit_child(code);
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 127)) => {
                    return Err(format!("cannot execute {}", bin.display()))
                }
                Ok(WaitStatus::Exited(_, 126)) => {
                    return Err(format!("cannot move criu into cgroup {}", group.name()))
                }
                Ok(WaitStatus::Exited(_, c)) => return Ok(c),
                Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(format!("cannot wait for criu: {e}")),
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_log_errors() {
        assert_eq!(
            parse_version("Version: 4.2\nGitID: v4.2-22\n").map(|v| (v.0, v.1)),
            Some((4, 2))
        );
        assert_eq!(parse_version("Version: 3.17\n").map(|v| v.0), Some(3));
        assert_eq!(parse_version("nothing"), None);
        let log = "(00.001) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
                   (00.002) Warn  (compel/x.c:1): whatever\n\
                   (00.003) Error (criu/sk-inet.c:188): inet: Connected TCP socket, consider using --tcp-established option.\n\
                   (00.004) Error (criu/cr-dump.c:2128): Dumping FAILED.\n";
        assert_eq!(
            log_error(log).as_deref(),
            Some("inet: Connected TCP socket, consider using --tcp-established option.")
        );
        assert_eq!(
            log_error("Error (a.c:1): Dumping FAILED.\n").as_deref(),
            Some("Dumping FAILED.")
        );
        assert_eq!(log_error("all fine\n"), None);
    }
}
