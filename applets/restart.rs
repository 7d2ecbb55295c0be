//! restart: restart an application from a checkpoint version (D2.2.11 §2.1).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use xos::app::{self, LaunchSpec};
use xos::applock::AppLock;
use xos::ckpt::{self, image};
use xos::registry::{self, Registry};

use crate::{common, krgcr_run};

/// Restart an application from one of its checkpoint versions.
///
/// The processes are rebuilt in a new PID namespace (with the same pids, parents,
/// process groups and sessions), a new IPC and mount namespace and a new job cgroup,
/// with the saved memory, files, pipes and signal state and every thread with its
/// tid, registers and per-thread state, and continue where they were (a process that
/// was stopped comes back stopped). An image of an application whose IPC namespace held
/// SysV objects holds them (ipc/), restored in the new namespace first. Only one restart or checkpoint of APP runs at a
/// time: another one fails at once, or waits with --wait. Descriptors that were the application's inherited stdin, stdout
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
// A fixed usage: clap's would list --state-dir and --cgroup-parent as required when
// their environment variables set them.
#[command(name = "restart", version = common::version(), after_help = AFTER)]
#[command(override_usage = USAGE)]
struct Args {
    /// List the checkpoint versions of APP with date, size and process count; without
    /// APP, those of every application that has any, ended ones included
    #[arg(short, long, conflicts_with_all = ["number", "detach", "frozen", "stdin", "stdout", "stderr", "new_id"])]
    list: bool,

    /// Show what version VERSION of APP holds (processes, memory by kind, open
    /// files, kernel, CPU features) and check its data files; restore nothing
    #[arg(long, requires_all = ["app", "number"], conflicts_with_all = ["list", "detach", "frozen", "stdin", "stdout", "stderr", "new_id"])]
    info: bool,

    /// Print JSON (see below) instead of text: the listing (--list), the inspection
    /// (--info), or one object once the application runs again
    #[arg(long)]
    json: bool,

    /// Start a second copy of the application under a new id (printed on stdout)
    /// instead of taking back its own id; the original may still run
    #[arg(long)]
    new_id: bool,

    /// Return as soon as the application runs again; its inherited output is appended
    /// to its logs (STATE/logs/ID.out, ID.err) unless --stdout or --stderr are given
    #[arg(short, long)]
    detach: bool,

    /// Leave the restarted application frozen (resume it with checkpoint --unfreeze)
    #[arg(long)]
    frozen: bool,

    /// If a checkpoint or restart of APP is in progress, wait for it instead of failing
    #[arg(long)]
    wait: bool,

    /// Network of the restarted application instead of the one it was checkpointed with (see krgcr-run --net); TCP connections need the same addresses
    #[arg(long, value_name = "MODE", value_parser = |s: &str| s.parse::<xos::net::NetMode>().map_err(|e| e.to_string()))]
    net: Option<xos::net::NetMode>,

    /// Reset the application's TCP connections instead of keeping them (a restart where its addresses cannot follow): its peers get a reset, the application ECONNRESET
    #[arg(long)]
    tcp_close: bool,

    /// Reopen files that changed since the checkpoint (another size, shorter than the saved offset) instead of refusing
    #[arg(long)]
    allow_changed_files: bool,

    /// State directory holding the registry and the images
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// cgroup under which the application's group is created
    #[arg(long, value_name = "NAME", env = app::CGROUP_PARENT_ENV, default_value = app::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,

    /// Give the application FILE as its stdin instead of what it had (a file it had is otherwise reopened at its offset)
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,

    /// Send the application's stdout to FILE (appended) instead of where it went (a file is otherwise reopened at its offset)
    #[arg(long, value_name = "FILE")]
    stdout: Option<PathBuf>,

    /// Send the application's stderr to FILE (appended) instead of where it went
    #[arg(long, value_name = "FILE")]
    stderr: Option<PathBuf>,

    /// Application id
    #[arg(value_name = "APP", id = "app", required_unless_present = "list")]
    app_arg: Option<u64>,

    /// APP once --list is handled (only --list may go without it)
    #[arg(skip)]
    app: u64,

    /// Checkpoint version to restart from (1, 2, ...)
    #[arg(value_name = "VERSION", required_unless_present = "list")]
    number: Option<u64>,
}

const USAGE: &str = "\
restart [OPTIONS] [--json] APP VERSION
       restart --list [--json] [APP]
       restart --info [--json] APP VERSION";

const AFTER: &str = "\
Examples:
  restart 6 1            # restart application 6 from its first checkpoint
  restart --list 6
  restart --detach --stdout out.log 6 2
  restart --detach --frozen 6 2   # rebuilt but frozen until checkpoint --unfreeze 6
  restart --list                  # the versions of every application, ended ones too
  restart --info 6 2              # what version 2 holds, its data files checked
  ID=$(restart --detach --new-id 6 2)   # a second copy of application 6

On a terminal, restart shows on stderr how much of the saved memory the rebuilt
processes hold while it works, and clears the line when done.

--info shows the processes of the version (pid, parent, group, session, command,
uid, memory mapped and saved, open descriptors), its memory by kind of mapping, the
kernel and CPU features it needs, and the state of every data file (length and
CRC32 checked); exit status 1 if restart would refuse it. --info --json prints one
object: app, version, created, command, cwd, owner_uid, owner_gid, kernel,
same_kernel, xfeatures, cpu_has_xfeatures, processes (pid, ppid, pgid, sid, comm,
exe, uid, gid, mapped, saved, files), memory (kind, mappings, mapped, saved),
data_files (file, len, state: ok, missing, truncated, overlong or checksum
mismatch), restartable and stats (as checkpoint -c --json gives it, null for older
images).

--list --json prints an array with one object per version: app, version (numbers),
created (seconds since the epoch), size (bytes), processes (number), state
(running, freezing, frozen or ended) and command (array of strings).

restart --json prints one object on stdout once the application runs again (before
waiting for it; alone on stdout with --detach): app (the id it runs under), from_app
and version (what it was restarted from), processes (number), init_pid (host pid of
the application's init), frozen (with --frozen) and restore_ms.

Exit status: the application's, as with krgcr-run; with --detach 0 once it runs;
125 if restart failed and nothing runs: the version or one of its data files is
missing, truncated or corrupt, it was made on another kernel or CPU, the application
is running, or rebuilding a process failed; 2 for a usage error. --list and --info:
0, or 1 on an error (--info: or if restart would refuse the version).";

/// The exit status of a restart that failed with nothing running.
const FAILED: i32 = 125;

fn failed<E: Into<anyhow::Error>>(e: E) -> i32 {
    common::fail("restart", e);
    FAILED
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    if let Err(e) = Registry::open_existing(&a.state_dir) {
        let status = common::fail("restart", e);
        return if a.list || a.info { status } else { FAILED };
    }
    if a.info {
        return info(&a);
    }
    if a.list {
        return match a.app_arg {
            Some(app) => list(&a, app),
            None => list_all(&a),
        };
    }
    let began = std::time::Instant::now();
    log::debug!("restart of application {:?} begins", a.app_arg);
    let mut a = a;
    a.app = a.app_arg.unwrap_or_default();
    let version = a.number.unwrap_or_default();
    let reg = match Registry::open(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    // Held until the application runs and is registered: a second restart or
    // a checkpoint of the same application waits or fails meanwhile.
    let lock = match AppLock::acquire(&a.state_dir, a.app, "restart", a.wait) {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    // A run that has ended is replaced at the launch, once its supervisor is
    // done with it.
    if let Some(rec) = reg.load(a.app).ok().filter(|r| r.alive() && !a.new_id) {
        eprintln!(
            "restart: application {} is running (pid {}); stop it before restarting it, \
             or restart it under a new id with --new-id",
            a.app, rec.root_pid
        );
        return FAILED;
    }
    log::debug!("application {} locked", a.app);
    let (dir, img) = match ckpt::load_image(&a.state_dir, a.app, version) {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    log::debug!("image of application {} loaded", a.app);
    if let Err(e) = ckpt::restore::verify(&dir, &img) {
        return failed(e);
    }
    let mut spec = LaunchSpec::new(img.command.iter().map(OsString::from).collect());
    spec.limits = img.limits.clone();
    spec.net = a.net.clone().unwrap_or_else(|| img.net.clone());
    spec.cgroup_parent = a.cgroup_parent;
    for (stream, file) in [
        ("stdin", &a.stdin),
        ("stdout", &a.stdout),
        ("stderr", &a.stderr),
    ] {
        if let Some(f) = file {
            eprintln!(
                "restart: application {}: its {stream} is now {}",
                a.app,
                f.display()
            );
        }
    }
    // A second copy (--new-id) writes its own output, not into the files of
    // the application it was copied from.
    spec.redirected = [
        a.stdin.is_some(),
        a.stdout.is_some() || a.new_id,
        a.stderr.is_some() || a.new_id,
    ];
    spec.stdin = a.stdin;
    spec.stdout = a.stdout;
    spec.stderr = a.stderr;
    spec.new_session = a.detach;
    if a.detach {
        krgcr_run::detached_stdio(&mut spec);
    }
    spec.app_id = Some(a.app);
    if a.new_id {
        // Printed before the launch, as the caller needs it while a restart that
        // does not detach runs.
        match reg.allocate_id() {
            Ok(id) => {
                spec.app_id = Some(id);
                if !a.json {
                    println!("{id}");
                }
            }
            Err(e) => return failed(e),
        }
    }
    // On a terminal: how much of the saved memory the rebuilt processes hold.
    let saved = img.processes.iter().map(|p| p.pages.len).sum::<u64>()
        + img.shared.iter().map(|b| b.len).sum::<u64>();
    spec.while_starting = crate::progress::restart(spec.app_id.unwrap_or(a.app), saved);
    // The image of a whole container (checkpoint -c of a container): the
    // container comes back around the processes, with the same id.
    let container = xos::gcp::container::is_container_image(&dir).then(|| dir.clone());
    if let Some(d) = &container {
        match xos::gcp::container::prepare_restart(&reg, d, None, None) {
            Ok(setup) => xos::gcp::container::with_container(&mut spec, setup),
            Err(e) => return common::fail("restart", e),
        }
        spec.ipc_restore = Some(d.join("ipc")).filter(|i| i.is_dir());
    }
    let processes = img.processes.len();
    spec.restore = Some((dir, img));
    spec.stay_frozen = a.frozen;
    spec.allow_changed_files = a.allow_changed_files;
    spec.tcp_close = a.tcp_close;
    spec.close_fds = vec![lock.raw_fd()];
    let (json, from_app, frozen, records) = (a.json, a.app, a.frozen, &reg);
    let forked = std::cell::Cell::new(false);
    let code = krgcr_run::supervise_then("restart", &reg, &spec, a.detach, false, |started| {
        forked.set(matches!(started, krgcr_run::Started::Child));
        match started {
            // A forked copy: unlocking here would unlock the caller's lock.
            krgcr_run::Started::Child => std::mem::forget(lock),
            krgcr_run::Started::Running(id) if json => {
                let init_pid = records.load(id).map(|r| r.root_pid).ok();
                let out = serde_json::json!({
                    "app": id,
                    "from_app": from_app,
                    "version": version,
                    "processes": processes,
                    "init_pid": init_pid,
                    "frozen": frozen,
                    "restore_ms": began.elapsed().as_millis() as u64,
                });
                println!("{out:#}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            _ => {}
        }
    });
    if let (Some(d), false) = (&container, forked.get()) {
        // Nothing of the container is left unless it runs.
        xos::gcp::container::undo_restart(&reg, d);
    }
    code
}

/// One version in a listing: the stored summary and the application's state.
#[derive(serde::Serialize)]
struct Version {
    #[serde(flatten)]
    summary: xos::store::VersionSummary,
    /// `running`, `frozen`, ... while the application runs, else `ended`.
    state: String,
}

/// The versions of `app`; an unreadable one is reported and makes `status` 1.
fn versions(a: &Args, reg: &Registry, app: u64, status: &mut i32) -> Vec<Version> {
    let state = match reg.load(app) {
        Ok(rec) if rec.alive() => rec.state().to_string(),
        _ => "ended".to_string(),
    };
    let mut out = Vec::new();
    for summary in xos::store::summaries(&a.state_dir, app) {
        match summary {
            Ok(summary) => out.push(Version {
                summary,
                state: state.clone(),
            }),
            Err(e) => *status = common::fail("restart", e),
        }
    }
    out
}

fn print(a: &Args, versions: &[Version], with_app: bool) {
    if a.json {
        let text = serde_json::to_string_pretty(versions).expect("versions serialize");
        println!("{text}");
        return;
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|Version { summary: v, state }| {
            let mut row = vec![
                v.version.to_string(),
                common::fmt_time(v.created),
                format!("{:.1}M", v.size as f64 / (1u64 << 20) as f64),
                v.processes.to_string(),
            ];
            if with_app {
                row.insert(0, v.app.to_string());
                row.push(state.clone());
                row.push(common::printable(&v.command.join(" ")));
            }
            row
        })
        .collect();
    let lines = if with_app {
        let header = [
            "APP",
            "VERSION",
            "DATE",
            "SIZE",
            "PROCESSES",
            "STATE",
            "COMMAND",
        ];
        common::table(&header, &rows, &[3, 4])
    } else {
        common::table(&["VERSION", "DATE", "SIZE", "PROCESSES"], &rows, &[2, 3])
    };
    for l in lines {
        println!("{l}");
    }
}

fn list(a: &Args, app: u64) -> i32 {
    let reg = match Registry::open_existing(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return common::fail("restart", e),
    };
    let mut status = 0;
    let all = versions(a, &reg, app, &mut status);
    if all.is_empty() && status == 0 {
        eprintln!(
            "restart: application {app} has no checkpoint in {}",
            image::app_dir(&a.state_dir, app).display()
        );
        return 1;
    }
    print(a, &all, false);
    status
}

fn list_all(a: &Args) -> i32 {
    let reg = match Registry::open_existing(&a.state_dir) {
        Ok(r) => r,
        Err(e) => return common::fail("restart", e),
    };
    let apps = match xos::store::apps(&a.state_dir) {
        Ok(apps) => apps,
        Err(e) => return common::fail("restart", e),
    };
    let mut status = 0;
    let all: Vec<Version> = apps
        .into_iter()
        .flat_map(|app| versions(a, &reg, app, &mut status))
        .collect();
    print(a, &all, true);
    status
}

fn mib(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1u64 << 20) as f64)
}

fn info(a: &Args) -> i32 {
    let (app, version) = (a.app_arg.unwrap_or_default(), a.number.unwrap_or_default());
    if let Err(e) = Registry::open_existing(&a.state_dir) {
        return common::fail("restart", e);
    }
    let i = match xos::store::inspect(&a.state_dir, app, version) {
        Ok(i) => i,
        Err(e) => return common::fail("restart", e),
    };
    let status = if i.restartable { 0 } else { 1 };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&i).expect("inspections serialize")
        );
        return status;
    }
    let yes_no = |ok: bool, no: &str| {
        if ok {
            String::new()
        } else {
            format!(" ({no})")
        }
    };
    println!(
        "application {} version {}, taken {}",
        i.app,
        i.version,
        common::fmt_time(i.created)
    );
    println!("command: {}", common::printable(&i.command.join(" ")));
    println!(
        "working directory: {}, owner {}:{}",
        i.cwd.display(),
        i.owner_uid,
        i.owner_gid
    );
    println!(
        "kernel: {}{}",
        i.kernel,
        yes_no(i.same_kernel, "not this kernel")
    );
    println!(
        "CPU state features: {:#x}{}",
        i.xfeatures,
        yes_no(i.cpu_has_xfeatures, "this CPU lacks some")
    );
    println!();
    let rows: Vec<Vec<String>> = i
        .processes
        .iter()
        .map(|p| {
            vec![
                p.pid.to_string(),
                p.ppid.to_string(),
                p.pgid.to_string(),
                p.sid.to_string(),
                p.uid.to_string(),
                mib(p.mapped),
                mib(p.saved),
                format!("{} ({})", common::printable(&p.comm), p.exe.display()),
            ]
        })
        .collect();
    let header = [
        "PID", "PPID", "PGID", "SID", "UID", "MAPPED", "SAVED", "COMMAND",
    ];
    for l in common::table(&header, &rows, &[5, 6]) {
        println!("{l}");
    }
    println!();
    let rows: Vec<Vec<String>> = i
        .memory
        .iter()
        .map(|m| {
            vec![
                m.kind.to_string(),
                m.mappings.to_string(),
                mib(m.mapped),
                mib(m.saved),
            ]
        })
        .collect();
    for l in common::table(
        &["MEMORY", "MAPPINGS", "MAPPED", "SAVED"],
        &rows,
        &[1, 2, 3],
    ) {
        println!("{l}");
    }
    for p in &i.processes {
        println!();
        println!("open files of process {}:", p.pid);
        for f in &p.files {
            println!("  {}", common::printable(f));
        }
    }
    if let Some(s) = &i.stats {
        println!();
        println!("checkpoint figures:");
        for line in common::stats_lines(s) {
            println!("  {line}");
        }
    }
    println!();
    let rows: Vec<Vec<String>> = i
        .data_files
        .iter()
        .map(|d| vec![d.file.clone(), d.len.to_string(), d.state.clone()])
        .collect();
    for l in common::table(&["DATA FILE", "BYTES", "STATE"], &rows, &[1]) {
        println!("{l}");
    }
    println!();
    println!(
        "{}",
        if i.restartable {
            "restart would take this version"
        } else {
            "restart would refuse this version"
        }
    );
    status
}
