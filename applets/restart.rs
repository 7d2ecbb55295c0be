//! restart: restart an application from a checkpoint version (D2.2.11 §2.1).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use xos::app::{self, LaunchSpec};
use xos::ckpt::{self, image};
use xos::registry::{self, Registry};

use crate::{common, krgcr_run};

/// Restart an application from one of its checkpoint versions.
///
/// The processes are rebuilt in a new PID namespace (with the same pids, parents,
/// process groups and sessions), a new IPC and mount namespace and a new job cgroup,
/// with the saved memory, registers, files, pipes and signal state, and continue
/// where they were. Descriptors that were the application's inherited stdin, stdout
/// or stderr (its terminal, or the files krgcr-run was given) are connected to
/// restart's own. By default restart waits until the application ends and exits with
/// its status, like krgcr-run; --detach returns once it runs.
///
/// An image from another kernel release, one needing CPU state features this CPU
/// lacks, or one with a missing or truncated data file is refused before anything
/// is created. Checksums are checked while the data is read, before any process
/// runs: a corrupt image is refused and everything restart created is removed.
/// Identity and capabilities are restored last, so the rebuilt processes run with
/// their saved uids, groups and capability sets, not restart's.
#[derive(Debug, Parser)]
#[command(name = "restart", version = common::version(), after_help = AFTER)]
struct Args {
    /// List the checkpoint versions of APP with date, size and process count
    #[arg(short, long, conflicts_with_all = ["number", "detach", "frozen", "stdin", "stdout", "stderr"])]
    list: bool,

    /// Return as soon as the application runs again; its inherited output is appended
    /// to its logs (STATE/logs/ID.out, ID.err) unless --stdout or --stderr are given
    #[arg(short, long)]
    detach: bool,

    /// Leave the restarted application frozen (resume it with checkpoint --unfreeze)
    #[arg(long)]
    frozen: bool,

    /// State directory holding the registry and the images
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// cgroup under which the application's group is created
    #[arg(long, value_name = "NAME", env = app::CGROUP_PARENT_ENV, default_value = app::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,

    /// Connect the application's inherited stdin to FILE
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,

    /// Connect the application's inherited stdout to FILE
    #[arg(long, value_name = "FILE")]
    stdout: Option<PathBuf>,

    /// Connect the application's inherited stderr to FILE
    #[arg(long, value_name = "FILE")]
    stderr: Option<PathBuf>,

    /// Application id
    #[arg(value_name = "APP")]
    app: u64,

    /// Checkpoint version to restart from (1, 2, ...)
    #[arg(value_name = "VERSION", required_unless_present = "list")]
    number: Option<u64>,
}

const AFTER: &str = "\
Examples:
  restart 6 1            # restart application 6 from its first checkpoint
  restart --list 6
  restart --detach --stdout out.log 6 2
  restart --detach --frozen 6 2   # rebuilt but frozen until checkpoint --unfreeze 6

Exit status: the application's, as with krgcr-run; with --detach 0 once it runs;
1 (or 125) if the image is missing, corrupt or made on another kernel or CPU.";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    if let Err(e) = Registry::open_existing(&a.state_dir) {
        return common::fail("restart", e);
    }
    if a.list {
        return list(&a);
    }
    let version = a.number.unwrap_or_default();
    let reg = match Registry::open(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return common::fail("restart", e),
    };
    match reg.load(a.app) {
        Ok(rec) if rec.alive() => {
            eprintln!(
                "restart: application {} is running (pid {}); stop it before restarting it",
                a.app, rec.root_pid
            );
            return 1;
        }
        Ok(_) => {
            let _ = reg.remove(a.app);
        }
        Err(_) => {}
    }
    let (dir, img) = match ckpt::load_image(&a.state_dir, a.app, version) {
        Ok(v) => v,
        Err(e) => return common::fail("restart", e),
    };
    if let Err(e) = ckpt::restore::verify(&dir, &img) {
        return common::fail("restart", e);
    }
    let mut spec = LaunchSpec::new(img.command.iter().map(OsString::from).collect());
    spec.limits = img.limits.clone();
    spec.cgroup_parent = a.cgroup_parent;
    spec.stdin = a.stdin;
    spec.stdout = a.stdout;
    spec.stderr = a.stderr;
    spec.new_session = a.detach;
    if a.detach {
        krgcr_run::detached_stdio(&mut spec);
    }
    spec.app_id = Some(a.app);
    spec.restore = Some((dir, img));
    spec.stay_frozen = a.frozen;
    krgcr_run::supervise("restart", &reg, &spec, a.detach, false)
}

fn list(a: &Args) -> i32 {
    let versions = image::versions(&a.state_dir, a.app);
    if versions.is_empty() {
        eprintln!(
            "restart: application {} has no checkpoint in {}",
            a.app,
            a.state_dir.display()
        );
        return 1;
    }
    println!("{:<8} {:<20} {:>10} PROCESSES", "VERSION", "DATE", "SIZE");
    let mut status = 0;
    for v in versions {
        let dir = image::version_dir(&a.state_dir, a.app, v);
        let body =
            match xos::fsutil::read_checked(&dir.join("image.json"), image::MAGIC, image::FORMAT) {
                Ok(b) => b,
                Err(e) => {
                    status = common::fail("restart", e);
                    continue;
                }
            };
        let size: u64 = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        match serde_json::from_slice::<image::Image>(&body) {
            Ok(img) => println!(
                "{:<8} {:<20} {:>9.1}M {}",
                v,
                common::fmt_time(img.created),
                size as f64 / (1u64 << 20) as f64,
                img.processes.len()
            ),
            Err(e) => status = common::fail("restart", anyhow::anyhow!("{}: {e}", dir.display())),
        }
    }
    status
}
