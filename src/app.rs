//! Starting checkpointable applications: the engine of `krgcr-run`.
//!
//! An application gets its own job cgroup, PID namespace, IPC namespace and mount
//! namespace (with a fresh `/proc`, so tools inside see its own pids). Its pid 1 is a
//! small init of ours that starts the command as pid 2, reaps orphans, forwards
//! termination signals and ends when the last process of the application ends, so a
//! program that daemonizes keeps running. Outside, a supervisor (the calling process)
//! waits for that init, then removes the cgroup and the registry record.
//!
//! Interfaces: unshare(2), pid_namespaces(7), mount(2), cgroups(7), sigwait(3).

use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::cgroup::{CgroupError, Group, Layout, Limits, DEFAULT_CONTROLLERS};
use crate::ns::Namespaces;
use crate::process;
use crate::registry::{self, AppRecord, Registry, RegistryError};
use crate::sys;

/// Default cgroup parent of applications and jobs.
pub const DEFAULT_CGROUP_PARENT: &str = "xos";
/// Environment variable overriding the cgroup parent.
pub const CGROUP_PARENT_ENV: &str = "XOS_CGROUP_PARENT";

/// The built-in checkpointer's name.
pub const NATIVE: &str = "native";
/// CRIU's name as a checkpointer.
pub const CRIU: &str = "criu";

/// How long cleanup waits for a group to empty.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to start and how.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The command and its arguments (looked up in `PATH`).
    pub argv: Vec<OsString>,
    pub limits: Limits,
    /// Parent of the application's cgroup (`xos` by default).
    pub cgroup_parent: String,
    /// v1 controllers the group uses.
    pub controllers: Vec<String>,
    /// Files to connect to the application's stdin, stdout and stderr instead of
    /// inheriting the caller's.
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// Start the application in a session of its own (detached from the terminal).
    pub new_session: bool,
    /// Detached: streams without a file above are /dev/null (stdin) and the
    /// application's logs (`STATE/logs/ID.out`, `ID.err`, appended, so that a log
    /// goes on across checkpoint and restart). They are the init's, not files
    /// given: a restored process gets them only where it had its caller's stream.
    pub logs: bool,
    /// Called while the application is being set up, for a progress display.
    pub while_starting: Option<Ticker>,
    /// Reuse this application id instead of allocating one (restart).
    pub app_id: Option<u64>,
    /// Rebuild the processes of this image (directory, image) instead of running
    /// `argv`, which then only names the application.
    pub restore: Option<(PathBuf, crate::ckpt::image::Image)>,
    /// With `restore`: leave the rebuilt processes frozen (cgroup freezer) until
    /// `checkpoint --unfreeze`.
    pub stay_frozen: bool,
    /// With `restore`: reopen files that changed since the checkpoint.
    pub allow_changed_files: bool,
    /// With `restore`: reset the application's TCP connections.
    pub tcp_close: bool,
    /// With `restore`: the standard streams the user sent elsewhere (restart
    /// --stdin/--stdout/--stderr); files the application had as those are then
    /// replaced by the init's, others are reopened where they were.
    pub redirected: [bool; 3],
    /// Descriptors of the caller that no process of the application, nor a
    /// background supervisor, may keep (the application lock).
    pub close_fds: Vec<RawFd>,
    /// SysV IPC objects (a directory of `ipccheckpoint --all`) to restore in the
    /// application's IPC namespace before any of its processes exists.
    pub ipc_restore: Option<PathBuf>,
    /// Grid job the application is a unit of.
    pub job: Option<String>,
    /// Program called at the application's checkpoints and restarts.
    pub callback: Option<PathBuf>,
    /// Kernel checkpointer the application is started for (`native`, `criu`).
    pub checkpointer: String,
    /// A job unit of `xos-loader` (a container, or a native unit): what its
    /// init sets up, how it starts the job and reports its end.
    pub unit: Option<crate::container::UnitSetup>,
    /// The application's network (`krgcr-run --net`).
    pub net: crate::net::NetMode,
}

impl LaunchSpec {
    pub fn new(argv: Vec<OsString>) -> LaunchSpec {
        LaunchSpec {
            argv,
            limits: Limits::default(),
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_string(),
            controllers: DEFAULT_CONTROLLERS.iter().map(|s| s.to_string()).collect(),
            stdin: None,
            stdout: None,
            stderr: None,
            new_session: false,
            logs: false,
            while_starting: None,
            app_id: None,
            restore: None,
            stay_frozen: false,
            close_fds: Vec::new(),
            allow_changed_files: false,
            tcp_close: false,
            redirected: [false; 3],
            ipc_restore: None,
            job: None,
            callback: None,
            checkpointer: NATIVE.to_string(),
            unit: None,
            net: crate::net::NetMode::Host,
        }
    }
}

/// Called in the supervisor about every 50 ms while the application is being set
/// up (for restart: while its processes are rebuilt) with the application's group
/// and `false`, then once with `true` when that is over, whether it worked or not.
#[derive(Clone)]
pub struct Ticker(pub std::sync::Arc<TickFn>);

/// The function of a [`Ticker`].
pub type TickFn = dyn Fn(&Group, bool) + Send + Sync;

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticker")
    }
}

/// Why an application could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command given")]
    NoCommand,
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot open {} for the application's {stream}: {source}", path.display())]
    Open {
        stream: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot execute '{program}': {}", nix::Error::from_raw(*errno).desc())]
    Exec { program: String, errno: i32 },
    #[error("application setup failed: {0}")]
    Setup(String),
    #[error(
        "cgroup {group} already holds {count} process(es) of something else; refusing to share it"
    )]
    GroupBusy { group: String, count: usize },
    #[error(
        "application {id}: the supervisor of its ended run (pid {pid}) has not cleaned up \
         within {}s",
        CLEANUP_TIMEOUT.as_secs()
    )]
    EndingRun { id: u64, pid: i32 },
    #[error("the detached supervisor failed: {0}")]
    Detached(String),
}

impl LaunchError {
    /// The exit status a shell would give: 127 for a command not found, 126 for one
    /// that cannot be executed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Exec { errno, .. } if *errno == libc::ENOENT => 127,
            LaunchError::Exec { .. } => 126,
            LaunchError::Detached(m) if m.starts_with("cannot execute") => 127,
            _ => 1,
        }
    }
}

type Result<T> = std::result::Result<T, LaunchError>;

fn sys_err(what: &'static str) -> impl FnOnce(nix::Error) -> LaunchError {
    move |source| LaunchError::Sys { what, source }
}

/// Outcome of [`launch`] in the process that receives it.
#[derive(Debug)]
pub enum Launch {
    /// The application runs; this process supervises it.
    Running(Box<Running>),
    /// This process is a child made by the launch (the application's init, or a
    /// command that failed to execute): it must exit at once with this status.
    ChildExit(i32),
}

/// Outcome of [`launch_detached`].
#[derive(Debug)]
pub enum Detached {
    /// The application runs under a background supervisor; here is its id.
    Started(u64),
    /// This process is the background supervisor or one of its children, and has
    /// finished: it must exit at once with this status.
    ChildExit(i32),
}

/// A started application, supervised by the calling process.
#[derive(Debug)]
pub struct Running {
    record: AppRecord,
    registry: Registry,
    init: Pid,
    old_mask: SigSet,
    /// A job unit of `xos-loader` (its id; whether it is a container): its
    /// end is reported by the supervisor.
    unit: Option<(u32, bool)>,
}

/// Signals the supervisor and the init handle synchronously.
fn handled_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        // The watchdog of a job unit's wall-clock and CPU time limits.
        Signal::SIGALRM,
        // A job unit joining a container.
        Signal::SIGIO,
    ] {
        s.add(sig);
    }
    s
}

/// Signals passed on to the application. SIGINT and SIGQUIT are not: the terminal
/// sends them to the application's process group itself.
fn forwarded(sig: Signal) -> bool {
    matches!(
        sig,
        Signal::SIGTERM | Signal::SIGHUP | Signal::SIGUSR1 | Signal::SIGUSR2
    )
}

fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// How a file given for a standard stream is opened.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Read,
    Truncate,
    Append,
}

fn open_stream(stream: &'static str, path: &Path, mode: Mode) -> Result<File> {
    let mut o = OpenOptions::new();
    match mode {
        Mode::Read => o.read(true),
        Mode::Truncate => o.write(true).create(true).truncate(true).mode(0o644),
        Mode::Append => o.append(true).create(true).mode(0o640),
    };
    o.custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| LaunchError::Open {
            stream,
            path: path.to_path_buf(),
            source,
        })
}

fn open_stdio(spec: &LaunchSpec) -> Result<[Option<File>; 3]> {
    let open = |stream, path: &Option<PathBuf>, mode| {
        path.as_deref()
            .map(|p| open_stream(stream, p, mode))
            .transpose()
    };
    // A restarted application goes on writing: never cut a file.
    let out = if spec.restore.is_some() {
        Mode::Append
    } else {
        Mode::Truncate
    };
    Ok([
        open("stdin", &spec.stdin, Mode::Read)?,
        open("stdout", &spec.stdout, out)?,
        open("stderr", &spec.stderr, out)?,
    ])
}

/// Opens /dev/null and the application's logs for the streams `stdio` leaves unset.
fn open_logs(registry: &Registry, id: u64, stdio: &mut [Option<File>; 3]) -> Result<()> {
    if stdio[0].is_none() {
        stdio[0] = Some(open_stream("stdin", Path::new("/dev/null"), Mode::Read)?);
    }
    let paths = registry.log_paths(id);
    if let Some(dir) = paths[0].parent() {
        crate::fsutil::create_dir_all(dir, 0o750).map_err(RegistryError::from)?;
    }
    for ((slot, path), stream) in stdio[1..].iter_mut().zip(&paths).zip(["stdout", "stderr"]) {
        if slot.is_none() {
            *slot = Some(open_stream(stream, path, Mode::Append)?);
        }
    }
    Ok(())
}

/// Starts the application and returns once its command has been executed; the
/// caller then supervises it with [`Running::wait`].
///
/// The caller should be single-threaded. It keeps a PID namespace for its next
/// child (only the application's init), so it should not fork again.
pub fn launch(registry: &Registry, spec: &LaunchSpec) -> Result<Launch> {
    launch_closing(registry, spec, &[])
}

fn launch_closing(
    registry: &Registry,
    spec: &LaunchSpec,
    close_in_child: &[RawFd],
) -> Result<Launch> {
    if spec.argv.is_empty() {
        return Err(LaunchError::NoCommand);
    }
    let mut stdio = open_stdio(spec)?;
    let (id, group) = prepare_group(registry, spec)?;
    if spec.logs {
        if let Err(e) = open_logs(registry, id, &mut stdio) {
            let _ = group.destroy(CLEANUP_TIMEOUT);
            return Err(e);
        }
    }
    let started = start_in_group(registry, spec, id, &group, stdio, close_in_child);
    if started.is_err() {
        let _ = group.destroy(CLEANUP_TIMEOUT);
    }
    started
}

/// Allocates the application id (unless given) and creates its group, after
/// removing what ended applications left.
fn prepare_group(registry: &Registry, spec: &LaunchSpec) -> Result<(u64, Group)> {
    log::debug!("making the application's cgroup");
    let layout = Layout::detect()?;
    let id = match spec.app_id {
        Some(id) => id,
        None => registry.allocate_id()?,
    };
    // Right after `checkpoint -c --kill`, the supervisor of the killed run
    // may still be cleaning up: it would destroy the group made here (the
    // same path) and remove the new record.
    if let Ok(rec) = registry.load(id) {
        if !rec.alive() && !registry.wait_cleanup(&rec, CLEANUP_TIMEOUT) {
            return Err(LaunchError::EndingRun {
                id,
                pid: rec.supervisor_pid.unwrap_or_default(),
            });
        }
    }
    // Leftovers of ended or killed applications of this state directory go first.
    if let Err(e) = prune(registry, &spec.cgroup_parent) {
        log::warn!("cannot remove leftover groups: {e}");
    }
    let group = app_group(registry, &layout, spec, id)?;
    // A group with tasks belongs to something else; never mix two applications.
    let busy = group.pids()?.len();
    if busy > 0 {
        return Err(LaunchError::GroupBusy {
            group: group.name().to_string(),
            count: busy,
        });
    }
    group.create()?;
    Ok((id, group))
}

/// The registry record of an application whose root process is `root`.
fn new_record(spec: &LaunchSpec, id: u64, group: &Group, root: Pid) -> Result<AppRecord> {
    let root_starttime = process::stat(root.as_raw())
        .map_err(|e| LaunchError::Setup(e.to_string()))?
        .starttime;
    Ok(AppRecord {
        id,
        root_pid: root.as_raw(),
        root_starttime,
        supervisor_pid: Some(std::process::id() as i32),
        cgroup: group.clone(),
        namespaces: Namespaces::of(root.as_raw()).unwrap_or_default(),
        owner_uid: nix::unistd::getuid().as_raw(),
        owner_gid: nix::unistd::getgid().as_raw(),
        command: spec
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd: std::env::current_dir().unwrap_or_default(),
        started: registry::now(),
        checkpointer: spec.checkpointer.clone(),
        limits: spec.limits.clone(),
        job: spec.job.clone(),
        callback: spec.callback.clone(),
        net: spec.net.clone(),
    })
}

/// The cgroup of application `id`: `PARENT/app-ID-TOKEN`. Ids are counted per
/// state directory while the cgroup parent is shared by the machine, so the
/// state directory's token keeps two state directories' application 1 apart.
fn app_group(registry: &Registry, layout: &Layout, spec: &LaunchSpec, id: u64) -> Result<Group> {
    let token = registry.token()?;
    let controllers: Vec<&str> = spec.controllers.iter().map(String::as_str).collect();
    Ok(layout.group_with(
        &format!("{}/{}", spec.cgroup_parent, group_leaf(id, &token)),
        &controllers,
    )?)
}

fn group_leaf(id: u64, token: &str) -> String {
    format!("app-{id}-{token}")
}

/// What [`prune`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// Records of applications whose processes are gone.
    pub records: Vec<u64>,
    /// Cgroups (names) of applications that ended or were killed.
    pub groups: Vec<String>,
}

/// A group younger than this may belong to a launch that has not saved its
/// record yet, so prune leaves it alone.
const PRUNE_MIN_AGE: Duration = Duration::from_secs(30);

/// Removes what ended or killed applications of this state directory left:
/// records whose processes are gone, and their empty groups under
/// `cgroup_parent` (only groups carrying this state directory's token, so other
/// state directories are never touched). An application being restarted or
/// checkpointed (its lock held) is skipped.
pub fn prune(registry: &Registry, cgroup_parent: &str) -> Result<Pruned> {
    let mut out = Pruned::default();
    let token = registry.token()?;
    let layout = Layout::detect()?;
    let mut live = std::collections::HashSet::new();
    for rec in registry.list()?.into_iter().flatten() {
        if rec.alive() {
            live.insert(rec.id);
            continue;
        }
        let Ok(_lock) = crate::applock::AppLock::acquire(registry.root(), rec.id, "prune", false)
        else {
            live.insert(rec.id);
            continue;
        };
        // The root process is gone, so is its PID namespace and every process
        // in it: whatever the group still holds is being torn down.
        let had_group = rec.cgroup.paths().iter().any(|p| p.is_dir());
        if let Err(e) = rec.cgroup.destroy(CLEANUP_TIMEOUT) {
            log::warn!("application {}: {e}", rec.id);
            continue;
        }
        if had_group {
            out.groups.push(rec.cgroup.name().to_string());
        }
        registry.remove(rec.id)?;
        out.records.push(rec.id);
    }
    let parent = layout.group(cgroup_parent)?;
    let mut seen = std::collections::BTreeSet::new();
    for dir in parent.paths() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("app-")
                .and_then(|r| r.strip_suffix(&format!("-{token}")))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let young = ent
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < PRUNE_MIN_AGE);
            if live.contains(&id) || young {
                continue;
            }
            seen.insert((id, name));
        }
    }
    for (id, name) in seen {
        let Ok(_lock) = crate::applock::AppLock::acquire(registry.root(), id, "prune", false)
        else {
            continue;
        };
        if registry.load(id).map(|r| r.alive()).unwrap_or(false) {
            continue;
        }
        let group = layout.group(&format!("{cgroup_parent}/{name}"))?;
        // Only empty groups: tasks in a group without a record are not ours to kill.
        if group.pids()?.is_empty() && group.remove().is_ok() {
            out.groups.push(group.name().to_string());
        }
    }
    out.groups.sort();
    out.groups.dedup();
    Ok(out)
}

fn start_in_group(
    registry: &Registry,
    spec: &LaunchSpec,
    id: u64,
    group: &Group,
    stdio: [Option<File>; 3],
    close_in_child: &[RawFd],
) -> Result<Launch> {
    group.set_limits(&spec.limits)?;
    sys::default_disposition(Signal::SIGCHLD).map_err(sys_err("reset SIGCHLD"))?;
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("create a pipe"))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("create a pipe"))?;
    let mut old_mask = SigSet::empty();
    signal::sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&handled_signals()),
        Some(&mut old_mask),
    )
    .map_err(sys_err("block signals"))?;
    let restore = |m: &SigSet| {
        let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(m), None);
    };
    let host_if = crate::net::netns::host_ifname(id, &registry.token()?);
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        restore(&old_mask);
        return Err(sys_err("create a PID namespace")(e));
    }
    // The init starts in the group's v2 directory if it can, and moves
    // itself into the v1 ones: no move by pid (see `Group::attach_self`).
    let v2 = group.v2_fd();
    let (forked, in_v2) = match v2
        .as_ref()
        .map(|fd| sys::fork_into_cgroup(std::os::fd::AsFd::as_fd(fd)))
    {
        Some(Ok(f)) => (Ok(f), true),
        // clone3 or CLONE_INTO_CGROUP unknown to this kernel.
        Some(Err(_)) | None => (sys::fork(), false),
    };
    drop(v2);
    let child = match forked {
        Err(e) => {
            restore(&old_mask);
            return Err(sys_err("fork")(e));
        }
        Ok(ForkResult::Child) => {
            drop(go_w);
            drop(err_r);
            for fd in close_in_child.iter().chain(&spec.close_fds) {
                let _ = nix::unistd::close(*fd);
            }
            let attached = group.attach_self(in_v2).map_err(|e| e.to_string());
            let code = init_main(go_r, err_w, attached, stdio, spec, &old_mask, &host_if);
            return Ok(Launch::ChildExit(code));
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(go_r);
    drop(err_w);
    drop(stdio);
    let fail = |e: LaunchError| {
        let _ = signal::kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        restore(&old_mask);
        Err(e)
    };
    let mut go_w = File::from(go_w);
    if let Err(e) = go_w.write_all(b"g") {
        return fail(LaunchError::Setup(format!(
            "cannot release the application: {e}"
        )));
    }
    // The init reports a setup or exec failure on this pipe; end-of-file with
    // nothing written means the command was executed.
    log::debug!("application {id}: init {child} released");
    let msg = read_init_report(File::from(err_r), group, spec.while_starting.as_ref());
    log::debug!("application {id}: init reported");
    if !msg.is_empty() {
        return fail(decode_child_error(&msg, &spec.argv[0]));
    }
    if spec.stay_frozen && spec.restore.is_some() {
        // The rebuilt processes wait, still stopped by their restorer, which
        // waits for this byte: freezing now leaves nothing to run until thawed.
        if let Err(e) = group.freeze(CLEANUP_TIMEOUT) {
            return fail(e.into());
        }
        if let Err(e) = go_w.write_all(b"f") {
            return fail(LaunchError::Setup(format!(
                "cannot release the application: {e}"
            )));
        }
    }
    drop(go_w);
    let record = match new_record(spec, id, group, child) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if let Err(e) = registry.save(&record) {
        return fail(e.into());
    }
    if let Some(u) = &spec.unit {
        crate::container::unit::started(registry.root(), u.id, id);
    }
    Ok(Launch::Running(Box::new(Running {
        record,
        registry: registry.clone(),
        init: child,
        old_mask,
        unit: spec.unit.as_ref().map(|u| (u.id, u.container)),
    })))
}

/// Reads the init's report until end-of-file, calling `ticker` meanwhile.
fn read_init_report(mut report: File, group: &Group, ticker: Option<&Ticker>) -> String {
    let mut msg = Vec::new();
    let Some(Ticker(tick)) = ticker else {
        let _ = report.read_to_end(&mut msg);
        return String::from_utf8_lossy(&msg).into_owned();
    };
    let nonblocking = nix::fcntl::fcntl(
        &report,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut buf = [0u8; 1024];
    loop {
        match report.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => msg.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && nonblocking.is_ok() => {
                tick(group, false);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    tick(group, true);
    String::from_utf8_lossy(&msg).into_owned()
}

fn decode_child_error(msg: &str, program: &OsString) -> LaunchError {
    match msg
        .strip_prefix("exec ")
        .and_then(|n| n.trim().parse().ok())
    {
        Some(errno) => LaunchError::Exec {
            program: program.to_string_lossy().into_owned(),
            errno,
        },
        None => LaunchError::Setup(msg.trim().to_string()),
    }
}

/// Body of the application's init (pid 1 of the new PID namespace). Returns the
/// exit status of the process: the command's, once the last process has ended.
fn init_main(
    go: OwnedFd,
    err: OwnedFd,
    attached: std::result::Result<(), String>,
    stdio: [Option<File>; 3],
    spec: &LaunchSpec,
    old_mask: &SigSet,
    host_if: &str,
) -> i32 {
    let mut err = Some(File::from(err));
    let mut go = File::from(go);
    let mut byte = [0u8; 1];
    if go.read(&mut byte).unwrap_or(0) != 1 {
        return 1; // The supervisor gave up; it reports why.
    }
    if let Err(m) = attached {
        if let Some(e) = err.as_mut() {
            let _ = e.write_all(m.as_bytes());
        }
        return 1;
    }
    let setup = init_setup(stdio, spec, host_if).and_then(|loader| match &spec.ipc_restore {
        Some(dir) => crate::sysvipc::restore_all(&in_view(&loader, dir))
            .map(|_| loader)
            .map_err(|e| {
                format!(
                    "cannot restore the SysV IPC objects of {}: {e}",
                    dir.display()
                )
            }),
        None => Ok(loader),
    });
    let mut loader = match setup {
        Ok(l) => l,
        Err(m) => {
            if let Some(e) = err.as_mut() {
                let _ = e.write_all(m.as_bytes());
            }
            return 1;
        }
    };
    // Just before the rebuilt processes are let go: with stay_frozen, report
    // success and wait until the supervisor has frozen the group.
    let mut before_detach = || {
        if spec.stay_frozen {
            err.take();
            let _ = go.read(&mut byte);
        }
    };
    log::debug!("init: namespaces and streams set up");
    let restored = spec.restore.as_ref().map(|(dir, img)| {
        let opts = crate::ckpt::restore::RestoreOptions {
            allow_changed_files: spec.allow_changed_files,
            tcp_close: spec.tcp_close,
            redirected: spec.redirected,
        };
        let dir = in_view(&loader, dir);
        crate::ckpt::restore::restore_tree(&dir, img, &opts, &mut before_detach).map(|p| (p, img))
    });
    drop(go);
    let command = match restored {
        Some(result) => match result {
            // The process whose status is the application's: the first command
            // (pid 2), else the oldest child of the init.
            Ok((pids, img)) => {
                let main = img
                    .processes
                    .iter()
                    .filter(|p| p.ppid == 1 && pids.contains(&p.pid))
                    .map(|p| p.pid)
                    .min()
                    .unwrap_or(2);
                Pid::from_raw(main)
            }
            Err(e) => {
                if let Some(f) = err.as_mut() {
                    let _ = write!(f, "{e}");
                }
                return 1;
            }
        },
        None => match err.as_mut().and_then(|f| start_command(spec, old_mask, f)) {
            Some(pid) => pid,
            None => return 127,
        },
    };
    drop(err);
    let _ = nix::sys::prctl::set_name(c"xos-init");
    let set = handled_signals();
    let mut status = None;
    loop {
        let Ok(sig) = set.wait() else { continue };
        if forwarded(sig) {
            // From pid 1, pid -1 reaches every process of the namespace.
            let _ = signal::kill(Pid::from_raw(-1), sig);
            continue;
        }
        if let (Some(l), Signal::SIGALRM | Signal::SIGIO) = (loader.as_mut(), sig) {
            if sig == Signal::SIGALRM {
                l.tick();
            } else {
                l.accept(old_mask);
            }
            continue;
        }
        if sig != Signal::SIGCHLD {
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(ws) => {
                    if let Some(l) = loader.as_mut() {
                        l.reaped(ws);
                    }
                    if ws.pid() == Some(command) {
                        status = Some(ws);
                    }
                }
                Err(nix::Error::EINTR) => {}
                // No child left: the application has ended.
                Err(_) => {
                    if let Some(l) = loader {
                        l.finish(status);
                    }
                    return status.and_then(exit_code).unwrap_or(1);
                }
            }
        }
    }
}

/// Where the init finds a file of the image being restored: a job unit's
/// loader that entered a root filesystem of its own reaches the image through
/// a descriptor.
fn in_view(loader: &Option<crate::container::inside::Loader>, path: &Path) -> PathBuf {
    match loader {
        Some(l) => l.image_path(path),
        None => path.to_path_buf(),
    }
}

/// Forks the command (pid 2) and executes it; None in the child when exec failed
/// (reported on `err`), or in the init when the fork failed.
fn start_command(spec: &LaunchSpec, old_mask: &SigSet, err: &mut File) -> Option<Pid> {
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    match sys::fork() {
        Err(e) => {
            let _ = write!(err, "cannot fork the command: {e}");
            None
        }
        Ok(ForkResult::Child) => {
            // The command starts as its caller's would from a shell: the caller's
            // dispositions (not the runtime's ignored SIGPIPE) and mask.
            process::caller_dispositions();
            let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
            if let Some(u) = &spec.unit {
                if let Err(m) = crate::container::inside::prepare_job(u) {
                    let _ = write!(err, "{m}");
                    return None;
                }
            }
            let e = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
            let _ = write!(err, "exec {}", e as i32);
            None
        }
        Ok(ForkResult::Parent { child }) => Some(child),
    }
}

/// Namespaces, /proc, session and stdio of the init (and the loader of a job
/// unit, which it returns); an error is reported as text.
fn init_setup(
    stdio: [Option<File>; 3],
    spec: &LaunchSpec,
    host_if: &str,
) -> std::result::Result<Option<crate::container::inside::Loader>, String> {
    nix::sched::unshare(CloneFlags::CLONE_NEWIPC)
        .map_err(|e| format!("cannot create an IPC namespace: {e}"))?;
    crate::net::netns::create(&spec.net, host_if)?;
    if spec.checkpointer == CRIU {
        // CRIU would have to dump a mount namespace made of every mount of
        // the host; a unit for it keeps the host's (and the host's /proc).
        let loader = spec
            .unit
            .as_ref()
            .map(|u| crate::container::inside::setup(u, false, None))
            .transpose()?;
        return init_stdio(stdio, spec).map(|()| loader);
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot create a mount namespace: {e}"))?;
    // Mounts made inside stay inside; the host's still propagate in.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make / a slave mount: {e}"))?;
    if let Some(u) = &spec.unit {
        // The unit's loader mounts /proc, in its own root if it has one.
        let image = spec.restore.as_ref().map(|(d, _)| d.as_path());
        let loader = crate::container::inside::setup(u, true, image)?;
        return init_stdio(stdio, spec).map(|()| Some(loader));
    }
    crate::container::inside::mount_proc()?;
    init_stdio(stdio, spec).map(|()| None)
}

/// Session and stdio of the init.
fn init_stdio(stdio: [Option<File>; 3], spec: &LaunchSpec) -> std::result::Result<(), String> {
    // CRIU refuses a tree whose session leader is outside its PID namespace.
    if spec.new_session || spec.checkpointer == CRIU {
        nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
    }
    let [i, o, e] = stdio;
    let redirect = |f: Option<File>, dup: fn(File) -> nix::Result<()>, name: &str| match f {
        Some(f) => dup(f).map_err(|e| format!("cannot redirect {name}: {e}")),
        None => Ok(()),
    };
    redirect(i, nix::unistd::dup2_stdin, "stdin")?;
    redirect(o, nix::unistd::dup2_stdout, "stdout")?;
    redirect(e, nix::unistd::dup2_stderr, "stderr")
}

impl Running {
    /// The application's id.
    pub fn id(&self) -> u64 {
        self.record.id
    }

    /// The registry record of the application.
    pub fn record(&self) -> &AppRecord {
        &self.record
    }

    /// Waits until the application has ended (its last process), passing SIGTERM,
    /// SIGHUP, SIGUSR1 and SIGUSR2 on to it, then removes its cgroup and record.
    /// Returns the command's exit status (128 + signal if it was killed).
    /// A job unit's end is reported (see [`crate::container::unit::ended`]),
    /// and a container's supervisor reports the ends of the units that
    /// joined it as they come.
    pub fn wait(self) -> Result<i32> {
        let unit = self.unit;
        let root = self.registry.root().to_path_buf();
        let mut members = unit.filter(|(_, container)| *container).map(|(id, _)| {
            let root = &root;
            move || crate::container::unit::members_ended(root, id)
        });
        let old_mask = self.old_mask;
        let code = self.wait_ticking(members.as_mut().map(|m| m as &mut dyn FnMut()));
        if let Some((id, _)) = unit {
            // Reported from here, outside the container, where the notify
            // address is reachable.
            crate::container::unit::ended(&root, id, *code.as_ref().unwrap_or(&1));
        }
        // Only now: a SIGTERM pending since the application ended must not
        // end this process before the report is out.
        let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
        code
    }

    /// Like [`Running::wait`], calling `tick` about every second meanwhile.
    fn wait_ticking(self, mut tick: Option<&mut dyn FnMut()>) -> Result<i32> {
        let set = handled_signals();
        if tick.is_some() {
            nix::unistd::alarm::set(1);
        }
        let code = loop {
            let Ok(sig) = set.wait() else { continue };
            if forwarded(sig) {
                let _ = signal::kill(self.init, sig);
                continue;
            }
            if let (Some(t), Signal::SIGALRM) = (tick.as_mut(), sig) {
                t();
                nix::unistd::alarm::set(1);
                continue;
            }
            if sig != Signal::SIGCHLD {
                continue;
            }
            match waitpid(self.init, Some(WaitPidFlag::WNOHANG)) {
                Ok(ws) => {
                    if let Some(c) = exit_code(ws) {
                        break c;
                    }
                }
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(sys_err("wait for the application")(e)),
            }
        };
        if tick.is_some() {
            nix::unistd::alarm::cancel();
            // An alarm that went off after the last wait is pending still:
            // unblocked with its default action, it would kill the
            // supervisor (found as a container whose end was never reported).
            let _ = sys::discard_pending(Signal::SIGALRM);
        }
        // A restart may already have replaced this run (after checkpoint
        // --kill): its record and cgroup (the same path) are not this run's to
        // remove.
        let ours = self
            .registry
            .load(self.record.id)
            .is_ok_and(|r| r.root_pid == self.record.root_pid);
        if !ours {
            return Ok(code);
        }
        let _ = self.registry.save_exit(self.record.id, code);
        let cleaned = self.record.cgroup.destroy(CLEANUP_TIMEOUT);
        self.registry.remove(self.record.id)?;
        cleaned?;
        Ok(code)
    }
}

/// Starts the application under a background supervisor (a child of the caller in
/// a session of its own) and returns its id once the command runs. The caller
/// gets [`Detached::Started`]; the supervisor and its children get
/// [`Detached::ChildExit`] when they are done.
pub fn launch_detached(registry: &Registry, spec: &LaunchSpec) -> Result<Detached> {
    in_background(spec, |spec, keep| launch_closing(registry, spec, keep))
}

/// Forks the background supervisor, in a session of its own, and runs `body`
/// there (with the descriptors it must close in its children); the caller
/// reads the supervisor's report.
fn in_background(
    spec: &LaunchSpec,
    body: impl FnOnce(&LaunchSpec, &[RawFd]) -> Result<Launch>,
) -> Result<Detached> {
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("create a pipe"))?;
    match sys::fork().map_err(sys_err("fork"))? {
        ForkResult::Parent { child } => {
            drop(wr);
            read_report(rd, child)
        }
        ForkResult::Child => {
            drop(rd);
            for fd in &spec.close_fds {
                let _ = nix::unistd::close(*fd);
            }
            // Closed here, once: their numbers may be reused from now on.
            let spec = &LaunchSpec {
                close_fds: Vec::new(),
                ..spec.clone()
            };
            let mut wr = File::from(wr);
            let _ = nix::unistd::setsid();
            match body(spec, &[wr.as_raw_fd()]) {
                Ok(Launch::ChildExit(c)) => {
                    // The launch closed this descriptor in its children already.
                    std::mem::forget(wr);
                    Ok(Detached::ChildExit(c))
                }
                Ok(Launch::Running(running)) => {
                    let _ = writeln!(wr, "ok {}", running.id());
                    drop(wr);
                    detach_stdio();
                    Ok(Detached::ChildExit(running.wait().map(|_| 0).unwrap_or(1)))
                }
                Err(e) => {
                    let _ = write!(wr, "err {e}");
                    Ok(Detached::ChildExit(1))
                }
            }
        }
    }
}

/// How an external restorer (CRIU) rebuilds an application for
/// [`adopt_detached`]: given the application's group (already created) and the
/// signal mask its children must get back, it starts the processes inside the
/// group and returns the root process, a child of the calling process.
pub type ExternalStart<'a> = &'a dyn Fn(&Group, &SigSet) -> std::result::Result<Pid, String>;

/// Like [`launch_detached`], but the processes are made by `start` (an external
/// restorer) instead of being started or rebuilt by xos. The background
/// supervisor creates the group, registers the application once `start`
/// returns, and waits for the root process like krgcr-run.
pub fn adopt_detached(
    registry: &Registry,
    spec: &LaunchSpec,
    start: ExternalStart<'_>,
) -> Result<Detached> {
    in_background(spec, |spec, _| {
        adopt(registry, spec, start).map(|r| Launch::Running(Box::new(r)))
    })
}

fn adopt(registry: &Registry, spec: &LaunchSpec, start: ExternalStart<'_>) -> Result<Running> {
    let (id, group) = prepare_group(registry, spec)?;
    sys::default_disposition(Signal::SIGCHLD).map_err(sys_err("reset SIGCHLD"))?;
    let mut old_mask = SigSet::empty();
    signal::sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&handled_signals()),
        Some(&mut old_mask),
    )
    .map_err(sys_err("block signals"))?;
    let result = start(&group, &old_mask)
        .map_err(LaunchError::Setup)
        .and_then(|root| {
            let record = new_record(spec, id, &group, root)?;
            registry.save(&record)?;
            if let Some(u) = &spec.unit {
                crate::container::unit::started(registry.root(), u.id, id);
            }
            Ok(Running {
                record,
                registry: registry.clone(),
                init: root,
                old_mask,
                unit: spec.unit.as_ref().map(|u| (u.id, u.container)),
            })
        });
    if result.is_err() {
        let _ = group.destroy(CLEANUP_TIMEOUT);
        let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    }
    result
}

/// Reads the background supervisor's report: its application id, or its error.
fn read_report(rd: OwnedFd, child: Pid) -> Result<Detached> {
    let mut report = String::new();
    let _ = File::from(rd).read_to_string(&mut report);
    match report
        .strip_prefix("ok ")
        .and_then(|s| s.trim().parse().ok())
    {
        Some(id) => Ok(Detached::Started(id)),
        None => {
            let _ = waitpid(child, None);
            let m = report.strip_prefix("err ").unwrap_or(&report).trim();
            Err(LaunchError::Detached(if m.is_empty() {
                "it ended without a report".to_string()
            } else {
                m.to_string()
            }))
        }
    }
}

/// Points the supervisor's standard descriptors at /dev/null so that it holds no
/// pipe or terminal of its caller open.
fn detach_stdio() {
    if let Ok(null) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev/null"))
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}
