//! xos-loader: run job units in containers and report their end over a socket
//! (D2.1.7 §4–5, the OpenVZ loader).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args as ClapArgs, CommandFactory, Parser, Subcommand};
use xos::app;
use xos::container::{self, unit, Creds, SubmitSpec, Submitted, Tmpfs};
use xos::jsdl::{self, CheckpointerKind, JobDescription};
use xos::registry::{self, Registry};

use crate::common;

const NAME: &str = "xos-loader";

/// Start a job unit inside a container and report its end over a socket.
///
/// `submit` creates a container with a random 32-bit id, its own PID, IPC, mount,
/// UTS (hostname ct-ID), network (lo) and cgroup namespaces, a job cgroup with the
/// job's limits and optionally a root filesystem of its own; the loader inside sets
/// the user, group and limits, spawns the job, and submit prints the container id as
/// soon as the job runs. When the job ends its report (job, container, exit status or
/// signal, rusage, ended) goes to the notify address, retried until the listener
/// takes it; then the container is removed with everything it created. A job
/// description without <Checkpointer> (or --checkpointer native) runs as a native
/// unit, reported the same way.
#[derive(Debug, Parser)]
#[command(name = NAME, version = common::version(), after_help = AFTER)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    /// Check the JSDL file and print what would run, without running it
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,

    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, ClapArgs)]
struct Common {
    /// State directory holding the registry and the containers
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a job unit (from a JSDL file or a command) and print its container id
    #[command(override_usage = "xos-loader submit [OPTIONS] (--jsdl FILE | -- CMD [ARGS]...)")]
    Submit(Box<Submit>),
    /// Receive end reports on ADDR (unix:PATH or tcp:HOST:PORT): one JSON line each
    Listen {
        /// unix:PATH or tcp:HOST:PORT
        #[arg(value_name = "ADDR")]
        addr: String,
        /// Exit after N reports
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// List the job units of this node
    List {
        #[command(flatten)]
        common: Common,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Print the state of a job unit (JSON)
    Status {
        #[command(flatten)]
        common: Common,
        #[arg(value_name = "CTID")]
        id: u32,
    },
    /// Kill every process of a job unit and remove it (nothing is reported)
    Destroy {
        #[command(flatten)]
        common: Common,
        #[arg(value_name = "CTID")]
        id: u32,
    },
}

#[derive(Debug, ClapArgs)]
struct Submit {
    #[command(flatten)]
    common: Common,

    /// cgroup under which the unit's group is created
    #[arg(long, value_name = "NAME", env = app::CGROUP_PARENT_ENV, default_value = app::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,

    /// JSDL job description (JSDL 1.0 with the POSIX application extension)
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    jsdl: Option<PathBuf>,

    /// Grid job the unit belongs to (default: the JSDL JobName)
    #[arg(long, value_name = "JOB")]
    job: Option<String>,

    /// Local user the job runs as (default: the JSDL UserName, else the caller)
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    /// Group the job runs as (default: the JSDL GroupName, else the user's)
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,

    /// Run the job as the local account xos-amsd maps the VO user of this XOS-cert to (as pam_app_aem does)
    #[arg(long, value_name = "CERT", conflicts_with_all = ["user", "group"])]
    cert: Option<PathBuf>,

    /// xos-amsd's socket (default: the one its configuration names)
    #[arg(long, value_name = "PATH", env = "XOS_AMSD_SOCKET")]
    amsd_socket: Option<PathBuf>,

    /// xos-amsd's configuration, for its socket
    #[arg(long, value_name = "FILE", env = "XOS_AMSD_CONFIG", default_value = xos::vo::config::DEFAULT_PATH)]
    amsd_config: PathBuf,

    /// Where the end report goes: unix:PATH or tcp:HOST:PORT
    #[arg(long, value_name = "ADDR")]
    notify: Option<String>,

    /// Root filesystem of the container (a directory)
    #[arg(long, value_name = "DIR", conflicts_with = "template")]
    rootfs: Option<PathBuf>,

    /// Root filesystem from template NAME (TEMPLATE_DIR/NAME.tar.gz or NAME.tar), unpacked for this container
    #[arg(long, value_name = "NAME")]
    template: Option<String>,

    /// Directory of root filesystem templates (default: the TemplateDir key of the grid configuration /etc/xos/gcp.conf ($XOS_GCP_CONFIG), else /var/lib/xos/templates, with /var/lib/vz/template/cache searched too)
    #[arg(long, value_name = "DIR", env = container::TEMPLATE_DIR_ENV)]
    template_dir: Option<PathBuf>,

    /// A tmpfs mounted in the container at DIR (saved with its content by checkpoints), with mount options after a colon, e.g. /scratch:size=16m
    #[arg(long, value_name = "DIR[:OPTIONS]")]
    tmpfs: Vec<String>,

    /// The container's network: private (only lo, the default), veth:ADDR/PREFIX[,NETNS] (and eth0 at ADDR, the other end of a veth pair in the caller's or the named namespace), or host
    #[arg(long, value_name = "MODE", value_parser = parse_net)]
    net: Option<xos::net::NetMode>,

    /// Connect the job's stdin to FILE (instead of the JSDL Input, else /dev/null)
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,

    /// Connect the job's stdout to FILE (instead of the JSDL Output, else STATE/logs/APP.out)
    #[arg(long, value_name = "FILE")]
    stdout: Option<PathBuf>,

    /// Connect the job's stderr to FILE (instead of the JSDL Error, else STATE/logs/APP.err)
    #[arg(long, value_name = "FILE")]
    stderr: Option<PathBuf>,

    /// Kernel checkpointer of a command's unit: container, native or criu (a JSDL file says it with <Checkpointer>)
    #[arg(long, value_name = "NAME", conflicts_with = "jsdl", value_parser = ["container", "openvz", "native", "criu"])]
    checkpointer: Option<String>,

    /// The command and its arguments, after --
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

const AFTER: &str = "\
Subcommands:
  xos-loader submit [--jsdl FILE | -- CMD [ARGS]...] [--job JOB] [--user U] [--group G]
      [--notify unix:PATH|tcp:HOST:PORT] [--rootfs DIR | --template NAME]
      [--tmpfs DIR[:OPTIONS]]... [--checkpointer container|native|criu]
      [--stdin F] [--stdout F] [--stderr F] [--state-dir DIR] [--cgroup-parent NAME]
  xos-loader listen ADDR [--count N]
  xos-loader list [--json] | status CTID | destroy CTID

The end report is one JSON line: job, container (null for a native unit), unit,
exit_status or signal and signal_name, limit (the JSDL limit whose watchdog ended
the job: WallTimeLimit or CPUTimeLimit), rusage (of every process of the unit) and
ended (seconds since the epoch). A report is kept in STATE/containers/CTID until the
listener acknowledges it.

A unit submitted for a job whose container runs on this node joins that container:
its loader forks it (same namespaces, cgroup and root; its own user, limits and
report); the container ends with its last unit.

Checkpoint and restart: xcheckpoint JOB (the container checkpointer) and checkpoint
-c CTID save the whole container: its processes and SysV IPC objects, its tmpfs
mounts with their content, a template root, its id, hostname and limits, the units
that joined it. xrestart JOB VERSION [--notify ADDR] (on this node or another) and
restart APP VERSION bring it back with the same id and hostname; its end is then
reported to the address given at restart, else to the one it had.

Templates are NAME.tar.gz or NAME.tar in --template-dir (XOS_TEMPLATE_DIR), else
in the TemplateDir of the grid configuration /etc/xos/gcp.conf (XOS_GCP_CONFIG),
else in /var/lib/xos/templates and /var/lib/vz/template/cache.

Environment: XOS_STATE_DIR, XOS_CGROUP_PARENT, XOS_TEMPLATE_DIR, XOS_GCP_CONFIG,
XOS_AMSD_SOCKET, XOS_AMSD_CONFIG.

Examples:
  xos-loader --check job.jsdl
  xos-loader listen unix:/run/aem.sock &
  xos-loader submit --jsdl job.jsdl --notify unix:/run/aem.sock
  xos-loader submit --job job-7 --user alice --template debian -- ./solver in.dat
  xos-loader list
  xos-loader status 2946133761
  xos-loader destroy 2946133761

Exit status: 0 on success; 1 if the unit could not be created (nothing of it is
left), with one line on stderr naming what failed.";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    let r = match (a.check, a.cmd) {
        (Some(file), _) => check(&file),
        (None, Some(Cmd::Submit(s))) => return submit(*s),
        (None, Some(Cmd::Listen { addr, count })) => listen(&addr, count),
        (None, Some(Cmd::List { common, json })) => list(&common, json),
        (None, Some(Cmd::Status { common, id })) => open(&common).and_then(|reg| {
            let st = unit::status(&reg, id)?;
            println!("{}", serde_json::to_string_pretty(&st)?);
            Ok(())
        }),
        (None, Some(Cmd::Destroy { common, id })) => {
            open(&common).and_then(|reg| Ok(container::destroy(&reg, id)?))
        }
        (None, None) => {
            eprintln!("{NAME}: no command given (submit, listen, list, status, destroy or --check FILE); see {NAME} --help");
            return 2;
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => common::fail(NAME, e),
    }
}

fn open(c: &Common) -> anyhow::Result<Registry> {
    Ok(Registry::open(&c.state_dir)?)
}

fn creds(user: Option<&str>, group: Option<&str>) -> anyhow::Result<Option<Creds>> {
    Ok(match (user, group) {
        (Some(u), g) => Some(unit::resolve_creds(u, g)?),
        (None, Some(g)) => {
            let uid = nix::unistd::getuid().as_raw();
            let gid = unit::group_id(g)?;
            Some(Creds {
                user: None,
                uid,
                gid,
                groups: vec![gid],
                home: None,
            })
        }
        (None, None) => None,
    })
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let jd = jsdl::parse_file(file)?;
    let c = creds(jd.user.as_deref(), jd.group.as_deref())?;
    print!("{}", describe(&jd, c.as_ref()));
    Ok(())
}

/// What `--check` prints.
fn describe(jd: &JobDescription, c: Option<&Creds>) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<18}{v}\n"));
    line("job:", jd.name.clone().unwrap_or_else(|| "-".into()));
    let kind = jd.checkpointer();
    line(
        "checkpointer:",
        match kind {
            CheckpointerKind::Container => {
                "container (own PID, IPC, mount, UTS, network and cgroup namespaces)".into()
            }
            k => k.backend().to_string(),
        },
    );
    let mut cmd = vec![jd.executable.clone()];
    cmd.extend(jd.arguments.iter().map(|a| shell_word(a)));
    line("command:", cmd.join(" "));
    line(
        "user:",
        match c {
            Some(c) => format!(
                "{} (uid {}, gid {}, groups {})",
                c.user.as_deref().unwrap_or("-"),
                c.uid,
                c.gid,
                c.groups
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => "the caller".into(),
        },
    );
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| jd.resolve(p).display().to_string());
    if let Some(d) = &jd.working_directory {
        line("directory:", d.display().to_string());
    }
    for (k, v) in [
        ("stdin:", &jd.input),
        ("stdout:", &jd.output),
        ("stderr:", &jd.error),
    ] {
        if let Some(p) = path(v) {
            line(k, p);
        }
    }
    for (k, v) in &jd.environment {
        line("environment:", format!("{k}={v}"));
    }
    let cg = jd.limits.cgroup();
    if let Some(m) = cg.memory_max {
        line("cgroup limit:", format!("memory {m} bytes"));
    }
    if let Some(p) = cg.pids_max {
        line("cgroup limit:", format!("pids {p}"));
    }
    for (r, v) in jd.limits.rlimits() {
        line("rlimit:", format!("{:?} {v}", r.resource()));
    }
    if let Some(w) = jd.limits.wall_time {
        line("watchdog:", format!("wall-clock time {w} s"));
    }
    if let Some(t) = jd.limits.cpu_time {
        line("watchdog:", format!("CPU time {t} s (whole unit)"));
    }
    for i in &jd.ignored {
        line("ignored:", format!("extension element {i}"));
    }
    out
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn parse_net(s: &str) -> Result<xos::net::NetMode, String> {
    s.parse().map_err(|e: xos::net::BadNetMode| e.to_string())
}

fn parse_tmpfs(s: &str) -> anyhow::Result<Tmpfs> {
    let (dir, opts) = s.split_once(':').unwrap_or((s, ""));
    let target = PathBuf::from(dir);
    if !target.is_absolute() || target == std::path::Path::new("/") {
        anyhow::bail!("--tmpfs {s}: the mount point must be an absolute path other than /");
    }
    Ok(Tmpfs {
        target,
        options: opts.to_string(),
        archive: None,
    })
}

fn submit_spec(s: &Submit) -> anyhow::Result<SubmitSpec> {
    let mut spec = match &s.jsdl {
        Some(f) => {
            let jd = jsdl::parse_file(f)?;
            let user = s.user.as_deref().or(jd.user.as_deref());
            let group = s.group.as_deref().or(jd.group.as_deref());
            // A certificate's mapping replaces the JSDL's user (below).
            let c = match s.cert {
                Some(_) => None,
                None => creds(user, group)?,
            };
            SubmitSpec::from_jsdl(&jd, c)
        }
        None => {
            if s.command.is_empty() {
                anyhow::bail!("submit: give --jsdl FILE or -- CMD [ARGS]...");
            }
            let kind = match s.checkpointer.as_deref() {
                Some(k) => CheckpointerKind::parse(k).expect("clap checked it"),
                None => CheckpointerKind::Container,
            };
            SubmitSpec {
                argv: s.command.clone(),
                container: kind == CheckpointerKind::Container,
                checkpointer: kind.backend().to_string(),
                creds: creds(s.user.as_deref(), s.group.as_deref())?,
                ..SubmitSpec::default()
            }
        }
    };
    if let Some(cert) = &s.cert {
        let socket = match &s.amsd_socket {
            Some(p) => p.clone(),
            None => xos::vo::config::Config::load(&s.amsd_config, false)?.socket,
        };
        spec.creds = Some(unit::vo_creds(&socket, cert)?);
    }
    if let Some(j) = &s.job {
        spec.job = Some(j.clone());
    }
    if let Some(j) = &spec.job {
        xos::gcp::meta::check_job(j)?;
    }
    if !spec.container
        && (s.rootfs.is_some() || s.template.is_some() || !s.tmpfs.is_empty() || s.net.is_some())
    {
        anyhow::bail!("--rootfs, --template, --tmpfs and --net need a container (<Checkpointer>OpenVZ</Checkpointer> or --checkpointer container)");
    }
    for (slot, given) in [
        (&mut spec.stdin, &s.stdin),
        (&mut spec.stdout, &s.stdout),
        (&mut spec.stderr, &s.stderr),
    ] {
        if given.is_some() {
            slot.clone_from(given);
        }
    }
    spec.notify = s.notify.clone();
    spec.net = s.net.clone();
    spec.rootfs = s
        .rootfs
        .as_ref()
        .map(std::fs::canonicalize)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--rootfs {}: {e}", s.rootfs.as_ref().unwrap().display()))?;
    if let Some(t) = &s.template {
        let conf = xos::gcp::config::GcpConfig::load_named(
            std::env::var_os(xos::gcp::config::CONFIG_ENV)
                .map(PathBuf::from)
                .as_deref(),
        )?;
        spec.template = Some((t.clone(), conf.template_dir(s.template_dir.clone())));
    }
    spec.tmpfs = s
        .tmpfs
        .iter()
        .map(|t| parse_tmpfs(t))
        .collect::<anyhow::Result<_>>()?;
    spec.cgroup_parent = s.cgroup_parent.clone();
    Ok(spec)
}

fn submit(s: Submit) -> i32 {
    let r = submit_spec(&s).and_then(|spec| {
        let reg = open(&s.common)?;
        Ok(container::submit(&reg, &spec)?)
    });
    match r {
        Ok(Submitted::Started { id, .. }) => {
            println!("{id}");
            0
        }
        Ok(Submitted::ChildExit(c)) => c,
        Err(e) => common::fail(NAME, e),
    }
}

fn listen(addr: &str, count: Option<u64>) -> anyhow::Result<()> {
    use std::io::Write;
    let a: container::notify::Address = addr.parse()?;
    let l = a.listen()?;
    let mut n = 0;
    while count.is_none_or(|c| n < c) {
        let r = l.next_report()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        out.flush()?;
        n += 1;
    }
    Ok(())
}

fn list(c: &Common, json: bool) -> anyhow::Result<()> {
    let reg = open(c)?;
    let units = container::list(&reg);
    if json {
        for u in units {
            println!("{}", serde_json::to_string(&u)?);
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = units
        .iter()
        .map(|u| {
            vec![
                u.record.id.to_string(),
                if u.record.container {
                    "container"
                } else {
                    "native"
                }
                .into(),
                u.state.to_string(),
                u.record.job.clone().unwrap_or_else(|| "-".into()),
                u.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                common::printable(&u.record.command.join(" ")),
            ]
        })
        .collect();
    let header = ["CTID", "KIND", "STATE", "JOB", "PID", "COMMAND"];
    for line in common::table(&header, &rows, &[]) {
        println!("{line}");
    }
    Ok(())
}
