//! Submitting, listing, inspecting and destroying job units (the engine of
//! `xos-loader`), and the supervisor's side of a unit's end: the report to the
//! notify address, retried until the listener takes it, then the removal of
//! everything the unit had.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::notify::{Address, Ending, Report, Rusage};
use super::{ContainerError, Creds, Tmpfs, UnitRecord, UnitSetup};
use crate::app::{self, Detached, LaunchSpec};
use crate::fsutil::{self, PathError};
use crate::jsdl::{CheckpointerKind, JobDescription, JobLimits};
use crate::registry::{self, AppState, Registry};

type Result<T> = std::result::Result<T, ContainerError>;

/// How long destroy waits for a unit's processes and supervisor.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two delivery attempts of a report.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// A file in a unit's directory whose presence says that the unit's end is
/// not the job's (checkpointed with --kill, or destroyed): no report is sent.
pub const NO_REPORT: &str = "no-report";
/// The loader's account of the job's end.
pub const STATUS: &str = "status.json";
/// A report not delivered yet.
pub const REPORT: &str = "report.json";

/// What to submit.
#[derive(Debug, Clone, Default)]
pub struct SubmitSpec {
    pub argv: Vec<OsString>,
    pub job: Option<String>,
    /// In a container (else a native or CRIU unit).
    pub container: bool,
    /// Backend name recorded for the unit's application.
    pub checkpointer: String,
    pub creds: Option<Creds>,
    pub limits: JobLimits,
    /// The job's whole environment (None: the caller's).
    pub env: Option<BTreeMap<String, String>>,
    pub cwd: Option<PathBuf>,
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub notify: Option<String>,
    pub rootfs: Option<PathBuf>,
    /// Template name and the directory of templates.
    pub template: Option<(String, PathBuf)>,
    pub tmpfs: Vec<Tmpfs>,
    /// The container's network (private when not given).
    pub net: Option<crate::net::NetMode>,
    pub cgroup_parent: String,
}

impl SubmitSpec {
    /// The unit a JSDL description asks for, run as `creds`.
    pub fn from_jsdl(jd: &JobDescription, creds: Option<Creds>) -> SubmitSpec {
        let kind = jd.checkpointer();
        let mut argv = vec![OsString::from(&jd.executable)];
        argv.extend(jd.arguments.iter().map(OsString::from));
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".to_string(),
        );
        if let Some(c) = &creds {
            if let Some(u) = &c.user {
                env.insert("USER".into(), u.clone());
                env.insert("LOGNAME".into(), u.clone());
            }
            if let Some(h) = &c.home {
                env.insert("HOME".into(), h.display().to_string());
            }
        }
        env.extend(jd.environment.clone());
        let file = |p: &Option<PathBuf>| p.as_ref().map(|p| jd.resolve(p));
        SubmitSpec {
            argv,
            job: jd.name.clone(),
            container: kind == CheckpointerKind::Container,
            checkpointer: kind.backend().to_string(),
            creds,
            limits: jd.limits.clone(),
            env: Some(env),
            cwd: jd.working_directory.clone(),
            stdin: file(&jd.input),
            stdout: file(&jd.output),
            stderr: file(&jd.error),
            cgroup_parent: app::DEFAULT_CGROUP_PARENT.to_string(),
            ..SubmitSpec::default()
        }
    }
}

impl SubmitSpec {
    /// The record of unit `id` made from this.
    fn record(&self, id: u32) -> UnitRecord {
        UnitRecord {
            id,
            container: self.container,
            job: self.job.clone(),
            notify: self.notify.clone(),
            creds: self.creds.clone(),
            limits: self.limits.clone(),
            command: self
                .argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            created: registry::now(),
            ..UnitRecord::default()
        }
    }
}

/// The local account `user` (and group `group`, else the user's), read from
/// /etc/passwd and /etc/group (never through NSS).
pub fn resolve_creds(user: &str, group: Option<&str>) -> Result<Creds> {
    let (pw, mut groups) =
        crate::vo::server::local_account(Path::new("/etc/passwd"), Path::new("/etc/group"), user)
            .ok_or_else(|| ContainerError::NoUser(user.to_string()))?;
    let gid = match group {
        Some(g) => group_id(g)?,
        None => pw.gid,
    };
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    Ok(Creds {
        user: Some(pw.name),
        uid: pw.uid,
        gid,
        groups,
        home: Some(PathBuf::from(pw.dir)),
    })
}

/// The local account xos-amsd (listening on `socket`) maps the VO user of
/// the certificate `cert` to, once its policy accepts that account (the auth
/// and account steps of pam_app_aem; the container is the job's session).
pub fn vo_creds(socket: &Path, cert: &Path) -> Result<Creds> {
    use crate::vo::proto::{self, Request, Response};
    let pem = fsutil::read_string(cert)?;
    let call = |req: &Request| {
        proto::call(socket, Duration::from_secs(30), req)
            .map_err(|e| ContainerError::Invalid(format!("xos-amsd {}: {e}", socket.display())))
    };
    let refused = |step: &str, r: Response| {
        ContainerError::Invalid(match r {
            Response::Refused(why) => format!("{}: {step} refused: {why}", cert.display()),
            Response::Error(e) => format!("{}: {step} failed: {e}", cert.display()),
            other => format!("{}: {step}: unexpected answer {other:?}", cert.display()),
        })
    };
    let acct = match call(&Request::Map { cert_pem: pem })? {
        Response::Mapped(a) => a,
        other => return Err(refused("authentication", other)),
    };
    let p = acct.passwd;
    match call(&Request::CheckAccount {
        user: p.name.clone(),
    })? {
        Response::Ok => {}
        other => return Err(refused("account", other)),
    }
    Ok(Creds {
        user: Some(p.name),
        uid: p.uid,
        gid: p.gid,
        groups: acct.gids,
        home: Some(PathBuf::from(p.dir)),
    })
}

/// The gid of group `name` (or a number).
pub fn group_id(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|t| {
            t.lines()
                .filter_map(crate::vo::proto::Group::from_line)
                .find(|g| g.name == name)
        })
        .map(|g| g.gid)
        .ok_or_else(|| ContainerError::NoGroup(name.to_string()))
}

/// Outcome of [`submit`] in the process that receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The job runs: its unit (container) id and application id.
    Started { id: u32, app: u64 },
    /// This process is the unit's background supervisor (or a child of the
    /// launch) and has finished: it must exit at once with this status.
    ChildExit(i32),
}

/// Creates the unit (a container with a random id when `spec.container`),
/// starts the job in it and returns as soon as it runs. On failure nothing
/// of the unit is left.
pub fn submit(registry: &Registry, spec: &SubmitSpec) -> Result<Submitted> {
    if spec.argv.is_empty() {
        return Err(app::LaunchError::NoCommand.into());
    }
    if spec.net.is_some() && !spec.container {
        return Err(ContainerError::Invalid(
            "a network mode needs a container".into(),
        ));
    }
    if let Some(n) = &spec.notify {
        n.parse::<Address>()?;
    }
    let state = registry.root().to_path_buf();
    if spec.container {
        if let Some((ct, app)) = job_container(registry, spec.job.as_deref()) {
            return join_container(registry, spec, &ct, app);
        }
    }
    let id = super::reserve_id(&state)?;
    let dir = super::unit_dir(&state, id);
    let r = start(registry, spec, id, &dir);
    if !matches!(
        r,
        Ok(Submitted::Started { .. }) | Ok(Submitted::ChildExit(_))
    ) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

fn start(registry: &Registry, spec: &SubmitSpec, id: u32, dir: &Path) -> Result<Submitted> {
    let state = registry.root();
    let mut rootfs = spec.rootfs.clone();
    if let Some((name, tdir)) = &spec.template {
        let archive = super::rootfs::template(tdir, name).or_else(|e| {
            // OpenVZ's template cache, where the default directory has none.
            match tdir == Path::new(super::DEFAULT_TEMPLATE_DIR) {
                true => super::rootfs::template(Path::new(super::OPENVZ_TEMPLATE_DIR), name)
                    .map_err(|_| e),
                false => Err(e),
            }
        })?;
        let root = dir.join("root");
        fsutil::create_dir_all(&root, 0o755)?;
        super::rootfs::unpack(&archive, &root)?;
        rootfs = Some(root);
    }
    if let Some(r) = &rootfs {
        if !r.is_dir() {
            return Err(ContainerError::Invalid(format!(
                "root filesystem {}: not a directory",
                r.display()
            )));
        }
    }
    let rec = UnitRecord {
        hostname: spec.container.then(|| format!("ct-{id}")),
        rootfs: rootfs.clone(),
        template: spec.template.as_ref().map(|t| t.0.clone()),
        ..spec.record(id)
    };
    super::save_record(state, &rec)?;
    let mut ls = LaunchSpec::new(spec.argv.clone());
    ls.limits = spec.limits.cgroup();
    ls.cgroup_parent = spec.cgroup_parent.clone();
    ls.stdin = spec.stdin.clone();
    ls.stdout = spec.stdout.clone();
    ls.stderr = spec.stderr.clone();
    ls.new_session = true;
    ls.logs = true;
    ls.job = spec.job.clone();
    ls.checkpointer = spec.checkpointer.clone();
    if spec.container {
        ls.net = spec.net.clone().unwrap_or(crate::net::NetMode::Private);
    }
    ls.unit = Some(UnitSetup {
        id,
        container: spec.container,
        hostname: rec.hostname.clone(),
        rootfs,
        tmpfs: spec.tmpfs.clone(),
        creds: spec.creds.clone(),
        rlimits: spec.limits.rlimits(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        wall_time: spec.limits.wall_time,
        cpu_time: spec.limits.cpu_time,
        dir: dir.to_path_buf(),
    });
    give_streams(spec)?;
    match app::launch_detached(registry, &ls)? {
        Detached::Started(app) => Ok(Submitted::Started { id, app }),
        Detached::ChildExit(c) => Ok(Submitted::ChildExit(c)),
    }
}

/// Called by the unit's supervisor once the job runs as application `app`,
/// before `submit` returns (and so before the unit can end).
pub fn started(state: &Path, id: u32, app: u64) {
    // The units that joined the container (after a restart) run in it too.
    let members = super::members::running(&super::unit_dir(state, id));
    for unit in std::iter::once(id).chain(members.into_iter().map(|(_, u)| u)) {
        if let Ok(mut rec) = super::load_record(state, unit) {
            rec.app = Some(app);
            if let Err(e) = super::save_record(state, &rec) {
                log::warn!("unit {unit}: {e}");
            }
        }
    }
}

/// The running container of `job` on this node (the first unit's record and
/// its application id), which the job's other units join.
fn job_container(registry: &Registry, job: Option<&str>) -> Option<(UnitRecord, u64)> {
    let job = job?;
    let state = registry.root();
    super::unit_ids(state).into_iter().find_map(|id| {
        let r = super::load_record(state, id).ok()?;
        let dir = super::unit_dir(state, id);
        if !r.container || r.member_of.is_some() || r.job.as_deref() != Some(job) {
            return None;
        }
        if dir.join(NO_REPORT).exists() || !dir.join(super::members::CONTROL).exists() {
            return None;
        }
        let app = r.app?;
        registry.load(app).ok().filter(|a| a.alive())?;
        Some((r, app))
    })
}

/// Starts `spec` as a unit of the container `ct` of its job: the
/// container's loader forks it, so it runs inside, with the container's
/// namespaces, cgroup and root.
fn join_container(
    registry: &Registry,
    spec: &SubmitSpec,
    ct: &UnitRecord,
    app: u64,
) -> Result<Submitted> {
    if spec.rootfs.is_some()
        || spec.template.is_some()
        || !spec.tmpfs.is_empty()
        || spec.net.is_some()
    {
        return Err(ContainerError::Invalid(format!(
            "job {} runs in container {} already: its other units share its root \
             filesystem, tmpfs and network",
            ct.job.as_deref().unwrap_or("-"),
            ct.id
        )));
    }
    // The container's group and watchdog are its first unit's: a limit of
    // the whole unit cannot be honoured for a unit that joins it.
    let l = &spec.limits;
    for (element, set) in [
        ("MemoryLimit", l.memory.is_some()),
        ("ProcessCountLimit", l.process_count.is_some()),
        ("ThreadCountLimit", l.thread_count.is_some()),
        ("WallTimeLimit", l.wall_time.is_some()),
        ("CPUTimeLimit", l.cpu_time.is_some()),
    ] {
        if set {
            return Err(ContainerError::Invalid(format!(
                "job {} runs in container {} already: {element} cannot apply to one more \
                 unit in it (the container's limits are its first unit's)",
                ct.job.as_deref().unwrap_or("-"),
                ct.id
            )));
        }
    }
    let state = registry.root();
    let id = super::reserve_id(state)?;
    let dir = super::unit_dir(state, id);
    let r = (|| -> Result<Submitted> {
        let rec = UnitRecord {
            container: true,
            app: Some(app),
            hostname: ct.hostname.clone(),
            rootfs: ct.rootfs.clone(),
            member_of: Some(ct.id),
            ..spec.record(id)
        };
        super::save_record(state, &rec)?;
        give_streams(spec)?;
        let logs = registry.log_paths(app);
        let open = |p: &Option<PathBuf>, dflt: &Path, read: bool| -> Result<std::fs::File> {
            let p = p.as_deref().unwrap_or(dflt);
            let mut o = std::fs::OpenOptions::new();
            if read {
                o.read(true);
            } else {
                o.append(true).create(true);
            }
            o.open(p).map_err(|e| PathError::new("open", p, e).into())
        };
        let stdio = [
            open(&spec.stdin, Path::new("/dev/null"), true)?,
            open(&spec.stdout, &logs[0], false)?,
            open(&spec.stderr, &logs[1], false)?,
        ];
        let req = super::members::MemberStart {
            unit: id,
            argv: rec.command.clone(),
            creds: spec.creds.clone(),
            rlimits: spec.limits.rlimits(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
        };
        use std::os::fd::AsFd;
        super::members::join(
            &super::unit_dir(state, ct.id),
            &req,
            [stdio[0].as_fd(), stdio[1].as_fd(), stdio[2].as_fd()],
        )?;
        Ok(Submitted::Started { id, app })
    })();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

/// The job's output files belong to the user it runs as.
fn give_streams(spec: &SubmitSpec) -> Result<()> {
    let Some(c) = &spec.creds else {
        return Ok(());
    };
    for p in [&spec.stdout, &spec.stderr].into_iter().flatten() {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| PathError::new("create", p, e))?;
        std::os::unix::fs::fchown(&f, Some(c.uid), Some(c.gid))
            .map_err(|e| PathError::new("chown", p, e))?;
    }
    Ok(())
}

/// Runs `work`, a checkpoint of application `app` of state directory
/// `state` that kills it when `kill`. When `app` runs a job unit (the
/// first of its container), its end is then not the job's: nothing is
/// reported, unless `work` fails.
pub fn checkpoint_kill<T, E>(
    state: &Path,
    app: u64,
    kill: bool,
    work: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let unit = super::unit_ids(state).into_iter().find(|id| {
        super::load_record(state, *id).is_ok_and(|r| r.app == Some(app) && r.member_of.is_none())
    });
    let marker = unit
        .filter(|_| kill)
        .map(|id| super::unit_dir(state, id).join(NO_REPORT));
    if let Some(m) = &marker {
        if let Err(e) = fsutil::write_atomic(m, b"checkpointed\n", 0o600) {
            log::warn!("{e}");
        }
    }
    let r = work();
    if let (Some(m), true) = (&marker, r.is_err()) {
        let _ = std::fs::remove_file(m);
    }
    r
}

/// The job unit without a container that application `app` of `state`
/// runs: the native checkpointer keeps its record in the image
/// ([`super::save_record_at`] `dir/unit.json`), so that a restart reports its
/// end too ([`from_image`]).
pub fn native_unit_of(state: &Path, app: u64) -> Option<UnitRecord> {
    super::unit_ids(state)
        .into_iter()
        .filter_map(|id| super::load_record(state, id).ok())
        .find(|r| r.app == Some(app) && !r.container)
}

/// The job unit without a container whose image is `dir` (when it is one),
/// recreated in `registry`'s state directory with its id, reporting to
/// `notify` (else where it did): what its init sets up. If the restart
/// fails, the caller removes [`super::unit_dir`] of it.
pub fn from_image(
    registry: &Registry,
    dir: &Path,
    notify: Option<String>,
) -> Result<Option<UnitSetup>> {
    let path = dir.join(super::UNIT_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let old = super::load_record_at(&path)?;
    let state = registry.root();
    super::reserve_again(state, old.id)?;
    let rec = UnitRecord {
        app: None,
        notify: notify.or(old.notify.clone()),
        ..old
    };
    if let Err(e) = super::save_record(state, &rec) {
        let _ = std::fs::remove_dir_all(super::unit_dir(state, rec.id));
        return Err(e.into());
    }
    Ok(Some(UnitSetup {
        id: rec.id,
        wall_time: rec.limits.wall_time,
        cpu_time: rec.limits.cpu_time,
        dir: super::unit_dir(state, rec.id),
        ..UnitSetup::default()
    }))
}

/// Restarts with `launch` the processes of image `dir`: when they are a job
/// unit without a container ([`from_image`]), `launch` gets that unit to
/// start with them, which is removed again if `launch` fails. `err` turns
/// this module's errors into the caller's.
pub fn restart_with_unit<T, E>(
    registry: &Registry,
    dir: &Path,
    notify: Option<String>,
    err: impl Fn(ContainerError) -> E,
    launch: impl FnOnce(Option<UnitSetup>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let unit = from_image(registry, dir, notify).map_err(&err)?;
    let id = unit.as_ref().map(|u| u.id);
    let r = launch(unit);
    if let (Err(_), Some(id)) = (&r, id) {
        let _ = std::fs::remove_dir_all(super::unit_dir(registry.root(), id));
    }
    r
}

/// Called by the unit's supervisor once the unit has ended (`code`: its
/// init's exit status): reports the end to the notify address, retrying
/// while the listener is away (the report waits in the unit's directory),
/// then removes the unit. Nothing is reported when the unit was checkpointed
/// with --kill or destroyed.
pub fn ended(state: &Path, id: u32, code: i32) {
    let dir = super::unit_dir(state, id);
    let rec = super::load_record(state, id).ok();
    let report = !dir.join(NO_REPORT).exists();
    report_members(state, id, report, false);
    if !report {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let ending = std::fs::read(dir.join(STATUS))
        .ok()
        .and_then(|b| serde_json::from_slice::<Ending>(&b).ok())
        .unwrap_or_else(|| {
            if code > 128 {
                let sig = nix::sys::signal::Signal::try_from(code - 128).ok();
                Ending {
                    signal: Some(code - 128),
                    signal_name: sig.map(|s| s.as_str().to_string()),
                    ..Ending::default()
                }
            } else {
                Ending {
                    exit_status: Some(code),
                    ..Ending::default()
                }
            }
        });
    let report = Report {
        job: rec.as_ref().and_then(|r| r.job.clone()),
        container: rec.as_ref().filter(|r| r.container).map(|r| r.id),
        unit: id,
        ending,
        rusage: Rusage::children(),
        ended: registry::now(),
    };
    deliver(&dir, rec.and_then(|r| r.notify), &report, false);
}

/// Reports `report` to `notify` (if any), retrying while the listener is
/// away (unless `once`), the report kept in `dir` meanwhile; then removes
/// `dir`. False when it was not delivered (only `once`): `dir` stays.
fn deliver(dir: &Path, notify: Option<String>, report: &Report, once: bool) -> bool {
    if let Some(addr) = notify.and_then(|n| n.parse::<Address>().ok()) {
        let body = serde_json::to_vec(report).expect("serializable");
        let _ = fsutil::write_atomic(&dir.join(REPORT), &body, 0o600);
        let mut pause = Duration::from_millis(100);
        loop {
            match addr.deliver(report) {
                Ok(()) => break,
                Err(e) => log::info!("unit {}: report not delivered yet: {e}", report.unit),
            }
            // Destroyed meanwhile: the report goes with it.
            if !dir.join(REPORT).exists() || dir.join(NO_REPORT).exists() {
                break;
            }
            if once {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    true
}

/// Called by a container's supervisor about every second: reports the ends
/// of the units that joined it (one attempt each; the others wait for the
/// next call).
pub fn members_ended(state: &Path, ct: u32) {
    let ctdir = super::unit_dir(state, ct);
    if !ctdir.join(NO_REPORT).exists() {
        report_members(state, ct, true, true);
    }
}

/// Reports the ends of the units that joined container `ct` and removes them
/// (`report` false: the container was checkpointed with --kill or destroyed,
/// its units go with it unreported; `once`: one delivery attempt).
fn report_members(state: &Path, ct: u32, report: bool, once: bool) {
    let ctdir = super::unit_dir(state, ct);
    for (unit, end) in super::members::ended(&ctdir) {
        let dir = super::unit_dir(state, unit);
        let rec = super::load_record(state, unit).ok();
        if report && !dir.join(NO_REPORT).exists() {
            let r = Report {
                job: rec.as_ref().and_then(|r| r.job.clone()),
                container: Some(ct),
                unit,
                ending: end.ending,
                rusage: end.rusage,
                ended: end.ended,
            };
            if !deliver(&dir, rec.and_then(|r| r.notify), &r, once) {
                continue;
            }
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
        super::members::forget(&ctdir, unit);
    }
    if !report {
        for (_, unit) in super::members::running(&ctdir) {
            let _ = std::fs::remove_dir_all(super::unit_dir(state, unit));
        }
    }
}

/// A unit's state as `list` and `status` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitStatus {
    #[serde(flatten)]
    pub record: UnitRecord,
    /// `starting`, `running`, `frozen`, `ended` (report not delivered yet).
    pub state: String,
    /// Host pid of the container's init.
    pub pid: Option<i32>,
    pub cgroup: Option<String>,
    pub report: Option<Report>,
}

/// The state of unit `id` of `registry`'s state directory.
pub fn status(registry: &Registry, id: u32) -> Result<UnitStatus> {
    let state = registry.root();
    let record = super::load_record(state, id)?;
    let app = record.app.and_then(|a| registry.load(a).ok());
    let report = std::fs::read(super::unit_dir(state, id).join(REPORT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let st = match (&app, record.app) {
        (Some(a), _) => match a.state() {
            AppState::Frozen | AppState::Freezing => "frozen",
            AppState::Running => "running",
            AppState::Gone => "ended",
        },
        (None, None) => "starting",
        (None, Some(_)) => "ended",
    };
    Ok(UnitStatus {
        state: st.to_string(),
        pid: app.as_ref().map(|a| a.root_pid),
        cgroup: app.as_ref().map(|a| a.cgroup.name().to_string()),
        report,
        record,
    })
}

/// Every unit of `registry`'s state directory (those that cannot be read are skipped).
pub fn list(registry: &Registry) -> Vec<UnitStatus> {
    super::unit_ids(registry.root())
        .into_iter()
        .filter_map(|id| status(registry, id).ok())
        .collect()
}

/// Kills every process of unit `id` and removes it, with its report if it was
/// not delivered yet (nothing is reported).
pub fn destroy(registry: &Registry, id: u32) -> Result<()> {
    let state = registry.root();
    let rec = super::load_record(state, id)?;
    let dir = super::unit_dir(state, id);
    fsutil::write_atomic(&dir.join(NO_REPORT), b"destroyed\n", 0o600)?;
    let app = rec.app.and_then(|a| registry.load(a).ok());
    if let (Some(ct), Some(app)) = (rec.member_of, &app) {
        // A unit that joined a container: its processes only (its session).
        let nspid = super::members::running(&super::unit_dir(state, ct))
            .into_iter()
            .find(|(_, u)| *u == id)
            .map(|(p, _)| p);
        for pid in app.cgroup.pids()? {
            if nspid.is_some() && super::members::inner_pid(pid) == nspid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Its container's supervisor removes it once its loader saw it end.
        let start = std::time::Instant::now();
        while dir.exists() && start.elapsed() < TEARDOWN_TIMEOUT {
            std::thread::sleep(Duration::from_millis(20));
        }
    } else if let Some(app) = app {
        app.cgroup.signal_all(nix::sys::signal::Signal::SIGKILL)?;
        let _ = app.cgroup.thaw(TEARDOWN_TIMEOUT);
        app.cgroup.kill(TEARDOWN_TIMEOUT)?;
        // The supervisor removes the record and the group, then the unit.
        let start = std::time::Instant::now();
        while dir.exists() && start.elapsed() < TEARDOWN_TIMEOUT {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PathError::new("remove", &dir, e).into()),
    }
}
