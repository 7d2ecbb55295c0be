//! krgcr-run: start an application so that it can be checkpointed (D2.2.11 §2.1).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use xos::app::{self, Detached, Launch, LaunchSpec};
use xos::cgroup::{CpuMax, Limits};
use xos::registry::{self, Registry};

use crate::common;

/// Start CMD as a checkpointable application.
///
/// The application gets its own job cgroup (under the cgroup parent), its own PID
/// namespace (CMD runs as pid 2 under a small init of xos, pid 1), its own IPC
/// namespace and a private /proc. stdin, stdout, stderr and the working directory are
/// inherited, so `krgcr-run ./myapp 2> error.log` works as with the program alone.
/// By default krgcr-run waits until the application's last process has ended and
/// exits with CMD's status (128+N if a signal N killed it); SIGTERM, SIGHUP, SIGUSR1
/// and SIGUSR2 sent to krgcr-run are passed on to every process of the application.
#[derive(Debug, Parser)]
// A fixed usage line: clap's would list options set through their environment
// variable (XOS_STATE_DIR, ...) as if they were required.
#[command(name = "krgcr-run", version = common::version(), after_help = AFTER)]
#[command(override_usage = "krgcr-run [OPTIONS] CMD [ARGS]...")]
struct Args {
    /// Return as soon as the application runs, leaving it under a background
    /// supervisor; its stdin is /dev/null and its output goes to STATE/logs/ID.out and
    /// ID.err (see checkpoint --logs) unless --stdin, --stdout or --stderr say otherwise
    #[arg(short, long)]
    detach: bool,

    /// Print the application id on stdout, on a line of its own, once it runs
    #[arg(short = 'i', long)]
    print_id: bool,

    /// State directory holding the registry
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// cgroup under which the application's group (NAME/app-ID-TOKEN, TOKEN naming the state directory) is created
    #[arg(long, value_name = "NAME", env = app::CGROUP_PARENT_ENV, default_value = app::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,

    /// Grid job this application is a unit of (xcheckpoint JOB checkpoints every unit of it)
    #[arg(long, value_name = "JOB")]
    job: Option<String>,

    /// Kernel checkpointer the application is started for: native, or criu (then the host's mount namespace is kept, as CRIU needs)
    #[arg(long, value_name = "NAME", default_value = app::NATIVE, value_parser = [app::NATIVE, app::CRIU])]
    checkpointer: String,

    /// Program called inside the application's namespaces, as its owner, at each of its grid checkpoints and restarts (XOS_EVENT=pre-checkpoint, post-checkpoint or post-restart, XOS_JOB, XOS_VERSION, XOS_UNIT); a failing pre-checkpoint call refuses the checkpoint
    #[arg(long, value_name = "PROGRAM", requires = "job")]
    callback: Option<PathBuf>,

    /// Network: host (the caller's, the default), private (a network namespace of its own with only lo, whose TCP and UDP endpoints checkpoint and restart with it), or veth:ADDR/PREFIX[,NETNS] (private, plus eth0 at ADDR, the other end of a veth pair in the caller's or the named namespace at the subnet's first other address)
    #[arg(long, value_name = "MODE", default_value = "host", value_parser = parse_net)]
    net: xos::net::NetMode,

    /// Memory limit, e.g. 512M or 2G
    #[arg(short, long, value_name = "SIZE", value_parser = common::parse_size)]
    memory: Option<u64>,

    /// CPU bandwidth limit in CPUs, e.g. 0.5 or 2
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,

    /// CPU weight relative to other groups, 1..10000 (default of the kernel: 100)
    #[arg(long, value_name = "W")]
    cpu_weight: Option<u64>,

    /// Maximum number of tasks (processes and threads)
    #[arg(long, value_name = "N")]
    pids: Option<u64>,

    /// CPUs the application may run on, e.g. 0-1
    #[arg(long, value_name = "LIST")]
    cpuset_cpus: Option<String>,

    /// Memory nodes the application may use, e.g. 0
    #[arg(long, value_name = "LIST")]
    cpuset_mems: Option<String>,

    /// Connect the application's stdin to FILE
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,

    /// Connect the application's stdout to FILE (created or truncated)
    #[arg(long, value_name = "FILE")]
    stdout: Option<PathBuf>,

    /// Connect the application's stderr to FILE (created or truncated)
    #[arg(long, value_name = "FILE")]
    stderr: Option<PathBuf>,

    /// The command to run and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

const AFTER: &str = "\
Examples:
  krgcr-run ./myapp 2> error.log
  krgcr-run --detach --print-id --stdout app.log ./server
  krgcr-run --memory 1G --cpus 1.5 --pids 100 ./solver input.dat
  krgcr-run --detach --job job-42 --checkpointer criu ./worker
  krgcr-run --detach --net private redis-server --save ''
  ip netns add clients; krgcr-run --detach --net veth:10.77.0.2/24,clients ./server

With --net private or veth the application's TCP and UDP endpoints are saved and
restored with it (and restart gives it the same network). veth puts eth0 at ADDR in
the application, its default route via the other end, which is named xvIDTOKEN and
sits in the caller's namespace (or /run/netns/NETNS) at the subnet's first other
address; the pair is made again at restart, so clients reach the same address.

Exit status: CMD's status; 125 if the application could not be set up, 126 if CMD
cannot be executed, 127 if it is not found. With --detach: 0 once it runs.";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    let cpu_max = match a.cpus {
        Some(n) => match CpuMax::from_cpus(n) {
            Some(m) => Some(m),
            None => {
                eprintln!("krgcr-run: invalid --cpus '{n}': must be a positive number");
                return 125;
            }
        },
        None => None,
    };
    if let Some(job) = &a.job {
        if let Err(e) = xos::gcp::meta::check_job(job) {
            common::fail("krgcr-run", e);
            return 125;
        }
    }
    let mut spec = LaunchSpec::new(a.command);
    spec.job = a.job;
    if let Some(cb) = a.callback {
        // Called from elsewhere later: the path must not depend on this cwd.
        match std::fs::canonicalize(&cb) {
            Ok(p) => spec.callback = Some(p),
            Err(e) => {
                eprintln!("krgcr-run: callback {}: {e}", cb.display());
                return 125;
            }
        }
    }
    if a.net.is_private() && a.checkpointer == app::CRIU {
        eprintln!(
            "krgcr-run: --net {} works with the native checkpointer only",
            a.net
        );
        return 125;
    }
    spec.checkpointer = a.checkpointer;
    spec.net = a.net;
    spec.limits = Limits {
        memory_max: a.memory,
        cpu_weight: a.cpu_weight,
        cpu_max,
        pids_max: a.pids,
        cpuset_cpus: a.cpuset_cpus,
        cpuset_mems: a.cpuset_mems,
    };
    spec.cgroup_parent = a.cgroup_parent;
    spec.stdin = a.stdin;
    spec.stdout = a.stdout;
    spec.stderr = a.stderr;
    spec.new_session = a.detach;
    if a.detach {
        detached_stdio(&mut spec);
    }
    let reg = match Registry::open(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return setup_failed("krgcr-run", e.into()),
    };
    supervise("krgcr-run", &reg, &spec, a.detach, a.print_id)
}

/// Starts the application described by `spec` and, unless `detach`, waits for it:
/// the part krgcr-run and restart share. Returns the exit status.
pub fn supervise(
    applet: &str,
    reg: &Registry,
    spec: &LaunchSpec,
    detach: bool,
    print_id: bool,
) -> i32 {
    supervise_then(applet, reg, spec, detach, print_id, |_| ())
}

/// What a launch gave, as [`supervise_then`] tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The application runs under this id.
    Running(u64),
    /// This process is a child made by the launch, about to exit.
    Child,
    /// The launch failed (the error is printed next).
    Failed,
}

/// Like [`supervise`], calling `started` once the application runs (or the
/// launch failed), before waiting for it.
pub fn supervise_then(
    applet: &str,
    reg: &Registry,
    spec: &LaunchSpec,
    detach: bool,
    print_id: bool,
    started: impl FnOnce(Started),
) -> i32 {
    if detach {
        let r = app::launch_detached(reg, spec);
        started(match &r {
            Ok(Detached::Started(id)) => Started::Running(*id),
            Ok(Detached::ChildExit(_)) => Started::Child,
            Err(_) => Started::Failed,
        });
        return match r {
            Ok(Detached::Started(id)) => {
                if print_id {
                    println!("{id}");
                }
                0
            }
            Ok(Detached::ChildExit(c)) => c,
            Err(e) => setup_failed(applet, e),
        };
    }
    let r = app::launch(reg, spec);
    started(match &r {
        Ok(Launch::Running(running)) => Started::Running(running.id()),
        Ok(Launch::ChildExit(_)) => Started::Child,
        Err(_) => Started::Failed,
    });
    match r {
        Ok(Launch::ChildExit(c)) => c,
        Ok(Launch::Running(running)) => {
            if print_id {
                println!("{}", running.id());
                let _ = std::io::stdout().flush();
            }
            match running.wait() {
                Ok(code) => code,
                Err(e) => {
                    common::fail(applet, e);
                    125
                }
            }
        }
        Err(e) => setup_failed(applet, e),
    }
}

/// A detached application must not hold its caller's terminal or pipes (a
/// `$(krgcr-run --detach ...)` capture would wait for it to end): streams without a
/// file go to /dev/null (stdin) and to the application's logs.
pub fn detached_stdio(spec: &mut LaunchSpec) {
    spec.logs = true;
}

fn setup_failed(applet: &str, e: app::LaunchError) -> i32 {
    let code = match e.exit_code() {
        1 => 125,
        c => c,
    };
    common::fail(applet, e);
    code
}

fn parse_net(s: &str) -> Result<xos::net::NetMode, String> {
    s.parse().map_err(|e: xos::net::BadNetMode| e.to_string())
}
