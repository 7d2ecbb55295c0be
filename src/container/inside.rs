//! The loader inside the container: the container's init (pid 1 of its PID
//! namespace, see [`crate::app`]) sets up the container's namespaces, tmpfs
//! mounts and root filesystem, starts the job with its user, group, limits,
//! environment and working directory, watches its wall-clock and CPU time,
//! and writes how it ended for the supervisor to report.
//!
//! Everything here runs in the init or in the job's child before exec; errors
//! are text, which the init passes to the supervisor.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::notify::Ending;
use super::UnitSetup;

type Result<T> = std::result::Result<T, String>;

/// Device nodes a container with a root filesystem of its own gets (bound
/// from the host's).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The loader's state in the init.
#[derive(Debug)]
pub struct Loader {
    /// Where the job's end is written, and the file when opened ahead.
    status_path: PathBuf,
    status: Option<File>,
    started: Instant,
    wall: Option<u64>,
    cpu: Option<u64>,
    limit: Option<String>,
    /// The image being restored and a descriptor of it, when the init's root
    /// is the container's (the image is outside).
    image: Option<(PathBuf, File)>,
    /// Job units joining the container.
    control: Option<super::members::Control>,
}

/// Sets the container up in the init, which has its own IPC and mount
/// namespaces already (`mounts` false: it keeps the host's mount namespace,
/// and nothing is mounted). `image`: the directory of the image the init
/// restores afterwards.
pub fn setup(u: &UnitSetup, mounts: bool, image: Option<&Path>) -> Result<Loader> {
    let status_path = u.dir.join(super::unit::STATUS);
    // Opened now only when the root changes (it is on the host): a unit for
    // CRIU must hold no file of the state directory, which CRIU would save.
    let status = match (mounts, &u.rootfs) {
        (true, Some(_)) => Some(
            open_status(&status_path)
                .map_err(|e| format!("cannot open {}: {e}", status_path.display()))?,
        ),
        _ => None,
    };

    // Bound on the host, before the root changes.
    let control = u
        .container
        .then(|| super::members::Control::open(&u.dir))
        .transpose()?;
    if u.container {
        // The init is in the job's cgroup already: that becomes the root of
        // the container's cgroup namespace.
        // Its network namespace is made before (crate::net, `NetMode`).
        nix::sched::unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("cannot create the container's namespaces: {e}"))?;
        if let Some(h) = &u.hostname {
            nix::unistd::sethostname(h).map_err(|e| format!("cannot set hostname {h}: {e}"))?;
        }
    }
    let image = match (image, &u.rootfs) {
        (Some(dir), Some(_)) if mounts => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(dir)
                .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
            Some((dir.to_path_buf(), f))
        }
        _ => None,
    };
    if mounts {
        let root = u.rootfs.as_deref().unwrap_or(Path::new("/"));
        for t in &u.tmpfs {
            let at = root.join(t.target.strip_prefix("/").unwrap_or(&t.target));
            std::fs::create_dir_all(&at)
                .map_err(|e| format!("cannot create {}: {e}", at.display()))?;
            mount_tmpfs(&at, &t.options)?;
            if let Some(a) = &t.archive {
                super::rootfs::unpack(a, &at).map_err(|e| e.to_string())?;
            }
        }
        match &u.rootfs {
            Some(r) => enter_root(r)?,
            None => mount_proc()?,
        }
        if u.container && Path::new("/sys").is_dir() {
            // A sysfs of the container's network namespace (its interfaces).
            let _ = nix::mount::umount2("/sys", MntFlags::MNT_DETACH);
            nix::mount::mount(
                Some("sysfs"),
                "/sys",
                Some("sysfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| format!("cannot mount /sys: {e}"))?;
        }
    }
    if u.wall_time.is_some() || u.cpu_time.is_some() {
        nix::unistd::alarm::set(1);
    }
    Ok(Loader {
        status_path,
        status,
        started: Instant::now(),
        wall: u.wall_time,
        cpu: u.cpu_time,
        limit: None,
        image,
        control,
    })
}

fn mount_tmpfs(at: &Path, options: &str) -> Result<()> {
    nix::mount::mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options).filter(|o| !o.is_empty()),
    )
    .map_err(|e| format!("cannot mount a tmpfs on {}: {e}", at.display()))
}

/// Mounts a /proc of the caller's PID namespace on /proc.
pub(crate) fn mount_proc() -> Result<()> {
    nix::mount::mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot mount /proc: {e}"))
}

/// Makes `root` the root of the init's mount namespace (pivot_root(2)), with
/// its own /proc and the few device nodes in /dev.
fn enter_root(root: &Path) -> Result<()> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: nix::Error| format!("root filesystem {}: cannot {what}: {e}", root.display())
    };
    nix::mount::mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind it"))?;
    let dev = root.join("dev");
    if dev.is_dir() {
        mount_tmpfs(&dev, "mode=755,size=64k")?;
        for d in DEVICES {
            let node = dev.join(d);
            File::create(&node).map_err(|e| format!("cannot create {}: {e}", node.display()))?;
            nix::mount::mount(
                Some(&Path::new("/dev").join(d)),
                &node,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(err("bind a device"))?;
        }
    }
    std::fs::create_dir_all(root.join("proc"))
        .map_err(|e| format!("cannot create {}/proc: {e}", root.display()))?;
    nix::unistd::chdir(root).map_err(err("enter it"))?;
    // The old root ends up on top of the new one, and is detached from there.
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root into it"))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(err("detach the old root"))?;
    nix::unistd::chdir("/").map_err(err("enter it"))?;
    mount_proc()
}

/// In the job's child, just before exec: limits, environment, user and group,
/// working directory.
pub fn prepare_job(u: &UnitSetup) -> Result<()> {
    for (r, v) in &u.rlimits {
        nix::sys::resource::setrlimit(r.resource(), *v, *v)
            .map_err(|e| format!("cannot set limit {r:?} to {v}: {e}"))?;
    }
    if let Some(env) = &u.env {
        // A fresh child of a single-threaded init: nothing else reads the
        // environment concurrently.
        for (k, _) in std::env::vars_os() {
            std::env::remove_var(k);
        }
        for (k, v) in env {
            std::env::set_var(k, v);
        }
    }
    if let Some(c) = &u.creds {
        let gids: Vec<nix::unistd::Gid> = c
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids).map_err(|e| format!("cannot set groups: {e}"))?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(c.gid))
            .map_err(|e| format!("cannot set gid {}: {e}", c.gid))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(c.uid))
            .map_err(|e| format!("cannot set uid {}: {e}", c.uid))?;
    }
    if let Some(d) = &u.cwd {
        nix::unistd::chdir(d)
            .map_err(|e| format!("cannot enter working directory {}: {e}", d.display()))?;
    }
    Ok(())
}

impl Loader {
    /// `path` as the init sees it after entering the container's root: a
    /// file of the image is reached through the image's descriptor.
    pub fn image_path(&self, path: &Path) -> PathBuf {
        match &self.image {
            Some((dir, f)) => match path.strip_prefix(dir) {
                Ok(rel) => {
                    use std::os::fd::AsRawFd;
                    // Through pid 1 (this init): the processes being
                    // rebuilt open their page files themselves.
                    PathBuf::from(format!("/proc/1/fd/{}", f.as_raw_fd())).join(rel)
                }
                Err(_) => path.to_path_buf(),
            },
            None => path.to_path_buf(),
        }
    }

    /// Called on SIGALRM: ends the whole container when it is over its
    /// wall-clock or CPU time, and arms the next check.
    pub fn tick(&mut self) {
        let over = if self
            .wall
            .is_some_and(|w| self.started.elapsed().as_secs() >= w)
        {
            Some("WallTimeLimit")
        } else if self.cpu.is_some_and(|c| cpu_seconds() >= c as f64) {
            Some("CPUTimeLimit")
        } else {
            None
        };
        if let Some(limit) = over {
            if self.limit.is_none() {
                self.limit = Some(limit.to_string());
            }
            // From pid 1, pid -1 reaches every process of the namespace.
            let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
        }
        nix::unistd::alarm::set(1);
    }

    /// Starts the job units waiting to join the container (on SIGIO).
    pub fn accept(&mut self, old_mask: &nix::sys::signal::SigSet) {
        if let Some(c) = self.control.as_mut() {
            c.accept(old_mask);
        }
    }

    /// Called for every process the init reaps.
    pub fn reaped(&mut self, ws: WaitStatus) {
        if let Some(c) = self.control.as_mut() {
            c.reaped(ws);
        }
    }

    /// Writes how the job's command ended (`None`: it was not seen ending).
    pub fn finish(mut self, ws: Option<WaitStatus>) {
        let ending = match ws {
            Some(ws) => Ending::from_wait(ws, self.limit.take()),
            None => Ending {
                limit: self.limit.take(),
                ..Ending::default()
            },
        };
        let body = serde_json::to_vec(&ending).expect("serializable");
        let file = match self.status.take() {
            Some(f) => Ok(f),
            None => open_status(&self.status_path),
        };
        if let Ok(mut f) = file {
            let _ = f.write_all(&body);
            let _ = f.sync_all();
        }
    }
}

/// The file of the job's end, created empty.
fn open_status(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// CPU time (seconds) of the container: its reaped processes and the ones
/// still running (from its /proc).
fn cpu_seconds() -> f64 {
    let r = super::notify::Rusage::children();
    let mut secs = (r.utime_us + r.stime_us) as f64 / 1e6;
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // The /proc of a unit for CRIU is the host's: only this PID namespace counts.
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let ours = ns("self");
    for pid in crate::fsutil::numbered_entries::<i32>(Path::new("/proc")) {
        if pid == 1 || ours.is_none() || ns(&pid.to_string()) != ours {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command: state is 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t: u64 = [11, 12]
            .iter()
            .filter_map(|i| f.get(*i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        secs += t as f64 / tick;
    }
    secs
}
