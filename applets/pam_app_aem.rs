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

fn run(acct: &Account, sess: &Session, job_id: &str, cmd: &[OsString]) -> i32 {
    let p = &acct.passwd;
    let mut c = std::process::Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .env_clear()
        .env("HOME", &p.dir)
        .env("USER", &p.name)
        .env("LOGNAME", &p.name)
        .env("SHELL", &p.shell)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("XOS_JOB_ID", job_id);
    if let Some(t) = std::env::var_os("TERM") {
        c.env("TERM", t);
    }
    if std::path::Path::new(&p.dir).is_dir() {
        c.current_dir(&p.dir);
    } else {
        c.current_dir("/");
    }
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
