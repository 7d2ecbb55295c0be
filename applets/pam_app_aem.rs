//! pam_app_aem: run a command as the VO user of a certificate inside a job session,
//! as the AEM's xpamexecvp() does (D2.1.7 §2.3.2–2.3.3).
//!
//! It makes the same requests to xos-amsd as pam_xos.so does in a PAM stack (auth:
//! map, account: check, session: open/close), without libpam: xos is a static
//! binary, and a static process must not dlopen PAM modules.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use xos::registry::{self, Registry};
use xos::vo::config::{self, Config};
use xos::vo::proto::{self, Account, Request, Response, Session};
use xos::vo::session;

use crate::common;

/// Run CMD as the VO user of the XOS-cert CERT, inside a job session.
///
/// The certificate is validated and mapped to a local account by xos-amsd; the
/// account policy is checked; a session is opened: the job's cgroup
/// (PARENT/aem_jobid_ID with the configured controllers and limits) and, with the
/// `disk` subsystem, a private /tmp limited in blocks and files. CMD then runs as the
/// mapped user (uid, gid, groups, HOME, USER, a clean environment); when it ends,
/// whatever is left in the session is killed, the cgroup removed, and pam_app_aem
/// exits with CMD's status. Must run as root.
#[derive(Debug, Parser)]
#[command(
    name = "pam_app_aem",
    version = common::version(),
    override_usage = "pam_app_aem <path/of/cert> <command> <parameters>",
    after_help = AFTER
)]
struct Args {
    /// The daemon's socket (default: the configuration file's Socket)
    #[arg(short, long, value_name = "PATH", env = "XOS_AMSD_SOCKET")]
    socket: Option<PathBuf>,

    /// The configuration file shared with xos-amsd, read for its Socket
    #[arg(short, long, value_name = "FILE", env = "XOS_AMSD_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,

    /// The job id (the session's cgroup is aem_jobid_ID); default: this process's pid
    #[arg(short, long, value_name = "ID", env = "XOS_JOB_ID")]
    job_id: Option<String>,

    /// Start CMD as a checkpointable unit of the job instead of in a session: a native unit (own cgroup, PID and IPC namespaces) recorded with the job id, which checkpoint --list shows and xcheckpoint ID saves; pam_app_aem returns once CMD runs and prints its application id (as xos-loader submit --cert does)
    #[arg(long, requires = "job_id")]
    unit: bool,

    /// With --unit: the state directory of the registry
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// With --unit: the cgroup under which the unit's group is made
    #[arg(long, value_name = "NAME", env = xos::app::CGROUP_PARENT_ENV, default_value = xos::app::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,

    /// The user's XOS-cert (PEM)
    #[arg(value_name = "CERT")]
    cert: PathBuf,

    /// The command and its parameters
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

const AFTER: &str = "\
Example:

  pam_app_aem /tmp/testbed1_usercert.pem /bin/echo hello

Exit status: CMD's status (128+N if signal N killed it); 125 if the certificate was
refused or the session could not be set up, 126 if CMD cannot be executed, 127 if it
is not found.";

pub fn command() -> clap::Command {
    Args::command()
}

fn call(socket: &std::path::Path, req: &Request) -> Result<Response, String> {
    proto::call(socket, Duration::from_secs(30), req).map_err(|e| e.to_string())
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("pam_app_aem: {msg}");
    125
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    let socket = match a.socket {
        Some(s) => s,
        None => match Config::load(&a.config, false) {
            Ok(c) => c.socket,
            Err(e) => return fail(common::one_line(&e)),
        },
    };
    let pem = match xos::fsutil::read_string(&a.cert) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    // auth: validate and map.
    let acct = match call(&socket, &Request::Map { cert_pem: pem }) {
        Ok(Response::Mapped(acct)) => acct,
        Ok(Response::Refused(why)) => return fail(format!("authentication refused: {why}")),
        Ok(Response::Error(e)) => return fail(format!("authentication failed: {e}")),
        Ok(other) => return fail(format!("unexpected answer {other:?}")),
        Err(e) => return fail(e),
    };
    let user = acct.passwd.name.clone();
    // account: policy.
    match call(&socket, &Request::CheckAccount { user: user.clone() }) {
        Ok(Response::Ok) => {}
        Ok(Response::Refused(why)) => return fail(format!("account refused: {why}")),
        Ok(other) => return fail(format!("account check failed: {other:?}")),
        Err(e) => return fail(e),
    }
    // session: the job's cgroup holds this process, so CMD starts inside it.
    let me = std::process::id() as i32;
    let job_id = a.job_id.unwrap_or_else(|| me.to_string());
    if let Err(e) = session::check_job_id(&job_id) {
        return fail(e);
    }
    if a.unit {
        return start_unit(&a.state_dir, a.cgroup_parent, &acct, &job_id, a.command);
    }
    let sess = match call(
        &socket,
        &Request::OpenSession {
            user: user.clone(),
            job_id: job_id.clone(),
            pid: me,
        },
    ) {
        Ok(Response::Session(s)) => s,
        Ok(Response::Refused(why)) => return fail(format!("session refused: {why}")),
        Ok(Response::Error(e)) => return fail(format!("cannot open the session: {e}")),
        Ok(other) => return fail(format!("unexpected answer {other:?}")),
        Err(e) => return fail(e),
    };
    let code = run(&acct, &sess, &job_id, &a.command);
    let close = Request::CloseSession {
        job_id: job_id.clone(),
        keep_pid: Some(me),
    };
    match call(&socket, &close) {
        Ok(Response::Ok) => {}
        Ok(other) => eprintln!("pam_app_aem: closing the session of job {job_id}: {other:?}"),
        Err(e) => eprintln!("pam_app_aem: closing the session of job {job_id}: {e}"),
    }
    code
}

/// The environment CMD gets: the mapped user's, nothing of the caller's but TERM.
fn job_env(acct: &Account, job_id: &str) -> Vec<(String, String)> {
    let p = &acct.passwd;
    let mut env = vec![
        ("HOME".to_string(), p.dir.clone()),
        ("USER".to_string(), p.name.clone()),
        ("LOGNAME".to_string(), p.name.clone()),
        ("SHELL".to_string(), p.shell.clone()),
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("XOS_JOB_ID".to_string(), job_id.to_string()),
    ];
    if let Ok(t) = std::env::var("TERM") {
        env.push(("TERM".to_string(), t));
    }
    env
}

/// CMD's working directory: the user's home when there is one.
fn job_dir(acct: &Account) -> PathBuf {
    let home = PathBuf::from(&acct.passwd.dir);
    if home.is_dir() {
        home
    } else {
        PathBuf::from("/")
    }
}

/// `--unit`: CMD as a native unit of job `job_id`, run as the mapped account.
fn start_unit(
    state: &std::path::Path,
    cgroup_parent: String,
    acct: &Account,
    job_id: &str,
    command: Vec<OsString>,
) -> i32 {
    use xos::container::unit::{self, SubmitSpec, Submitted};
    let registry = match Registry::open(state) {
        Ok(r) => r,
        Err(e) => return fail(common::one_line(&e)),
    };
    let p = &acct.passwd;
    let spec = SubmitSpec {
        argv: command,
        job: Some(job_id.to_string()),
        checkpointer: xos::app::NATIVE.to_string(),
        creds: Some(xos::container::Creds {
            user: Some(p.name.clone()),
            uid: p.uid,
            gid: p.gid,
            groups: acct.gids.clone(),
            home: Some(PathBuf::from(&p.dir)),
        }),
        env: Some(job_env(acct, job_id).into_iter().collect()),
        cwd: Some(job_dir(acct)),
        cgroup_parent,
        ..SubmitSpec::default()
    };
    match unit::submit(&registry, &spec) {
        Ok(Submitted::Started { app, .. }) => {
            println!("{app}");
            0
        }
        Ok(Submitted::ChildExit(code)) => code,
        Err(e) => fail(common::one_line(&e)),
    }
}

fn run(acct: &Account, sess: &Session, job_id: &str, cmd: &[OsString]) -> i32 {
    let p = &acct.passwd;
    let mut c = std::process::Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .env_clear()
        .envs(job_env(acct, job_id))
        .current_dir(job_dir(acct));
    let (uid, gids) = (p.uid, acct.gids.clone());
    let tmp = (sess.tmp_blocks, sess.tmp_inodes);
    let private_tmp = tmp.0.is_some() || tmp.1.is_some();
    // SAFETY: pam_app_aem is single-threaded, so the child may allocate; it only
    // makes system calls and returns an error or execs.
    unsafe {
        c.pre_exec(move || {
            // std resets SIGPIPE to default; CMD gets what pam_app_aem's caller gave.
            xos::process::caller_dispositions();
            if private_tmp {
                session::private_tmp(tmp.0, tmp.1).map_err(std::io::Error::other)?;
            }
            session::become_user(uid, &gids).map_err(std::io::Error::other)
        });
    }
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("pam_app_aem: {}: {e}", cmd[0].to_string_lossy());
            return match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 125,
            };
        }
    };
    match child.wait() {
        Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
        Err(e) => fail(e),
    }
}
