//! xcheckpoint / xrestart on the real kernel: jobs of several units (native and
//! CRIU), coordinated checkpoints, failures that leave no version, migration
//! between two state directories playing two nodes that share a checkpoint
//! directory, and restarts that must be refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{show, wait_until, Env};
use xos::registry::AppRecord;

const T: Duration = Duration::from_secs(20);

/// The criu binary the tests use: `$XOS_CRIU`, else criu on PATH, else the
/// CRIU 4.2 build beside the repository (scripts/test.sh installs its libraries).
fn criu() -> PathBuf {
    if let Some(p) = std::env::var_os("XOS_CRIU").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(p) = std::env::split_paths(&path)
        .map(|d| d.join("criu"))
        .find(|p| p.is_file())
    {
        return p;
    }
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/criu/criu");
    assert!(
        peer.is_file(),
        "no criu found: set XOS_CRIU or run scripts/test.sh, which installs it"
    );
    peer
}

/// A node: a state directory (sharing the cgroup parent with the other nodes
/// of the test) and the shared checkpoint directory.
struct Node<'a> {
    env: Env,
    ckdir: &'a Path,
}

impl Node<'_> {
    fn cmd(&self, applet: &str) -> Command {
        let mut c = self.env.cmd(applet);
        c.env("XOS_CHECKPOINT_DIR", self.ckdir)
            .env("XOS_CRIU", criu());
        c
    }

    fn run(&self, applet: &str, args: &[&str]) -> Output {
        self.cmd(applet).args(args).output().unwrap()
    }

    fn ok(&self, applet: &str, args: &[&str]) -> String {
        let o = self.run(applet, args);
        assert!(o.status.success(), "{applet} {args:?}: {}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts a unit of `job` that appends 1, 2, 3, … to `file`.
    fn counter(&self, job: &str, backend: &str, file: &Path, extra: &str) -> u64 {
        let script = format!(
            "{extra} i=0; while :; do i=$((i+1)); echo $i >> {}; sleep 0.05; done",
            file.display()
        );
        self.env
            .detach(&["--job", job, "--checkpointer", backend, "sh", "-c", &script])
    }

    fn record(&self, id: u64) -> AppRecord {
        self.env.registry().load(id).unwrap()
    }

    fn job_records(&self, job: &str) -> Vec<AppRecord> {
        self.env
            .registry()
            .list()
            .unwrap()
            .into_iter()
            .flatten()
            .filter(|r| r.job.as_deref() == Some(job))
            .collect()
    }
}

/// The oldest child of process `pid` (0 if none).
fn child_of(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .min()
        .unwrap_or(0)
}

/// The pid of host process `pid` in its own PID namespace (NSpid's last).
fn inner_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Processes holding pids for a test, killed when dropped.
struct Holders(Vec<std::process::Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process holding host pid `pid` (made next through ns_last_pid), or None
/// when another process took it first (then it is in use all the same).
fn occupy(pid: i32) -> Option<std::process::Child> {
    for _ in 0..50 {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut c = Command::new("sleep").arg("600").spawn().ok()?;
        if c.id() as i32 == pid {
            return Some(c);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    None
}

fn numbers(p: &Path) -> Vec<u64> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The file holds 1, 2, 3, … (nothing repeated, nothing lost); returns the last.
fn consecutive(p: &Path) -> u64 {
    let v = numbers(p);
    for (i, n) in v.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "line {} of {}", i + 1, p.display());
    }
    v.last().copied().unwrap_or(0)
}

fn grows(p: &Path) -> bool {
    let a = consecutive(p);
    wait_until(T, || consecutive(p) > a + 2)
}

/// The new application ids printed by xrestart.
fn restarted_ids(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.rsplit_once("restarted as application "))
        .map(|(_, id)| id.trim().parse().unwrap())
        .collect()
}

fn one_line_error(o: &Output, want: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", show(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().count() == 1 && err.contains(want),
        "expected one line with '{want}': {err}"
    );
}

#[test]
fn native_job_coordinated_checkpoint_kill_and_migration() {
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let n2 = Node {
        env: n1.env.sibling(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    let (fa, fb, fc) = (
        out.path().join("a"),
        out.path().join("b"),
        out.path().join("c"),
    );
    // Unit a holds a SysV message queue and semaphore array, and counts only
    // while its queue exists: they must be back before its processes run.
    let a = n1.env.detach(&[
        "--job",
        "job-1",
        "sh",
        "-c",
        &format!(
            "ipcmk -Q >/dev/null; ipcmk -S 2 >/dev/null; i=0; \
             while ipcs -q | grep -q '^0x'; do i=$((i+1)); echo $i >> {}; sleep 0.05; done",
            fa.display()
        ),
    ]);
    let b = n1.counter("job-1", "native", &fb, "");
    let c = n1.counter("other", "native", &fc, "");
    assert!(grows(&fa) && grows(&fb));
    let ipc_of = |pid: i32| {
        let o = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "--ipc", "ipcs", "-q", "-s"])
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("0x"))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        v.sort();
        v
    };
    let ipc_before = ipc_of(n1.record(a).root_pid);
    assert_eq!(ipc_before.len(), 2, "{ipc_before:?}");

    let list = n1.ok("checkpoint", &["--list"]);
    assert!(
        list.lines().any(|l| l.starts_with(&format!("{a} "))
            && l.contains(" job-1 ")
            && l.contains("native")),
        "{list}"
    );

    // Version 1: a coordinated checkpoint; the units run on.
    let o = n1.ok("xcheckpoint", &["job-1"]);
    assert!(
        o.contains("job job-1: version 1 written") && o.contains("(2 units, "),
        "{o}"
    );
    assert!(o.contains("coordinated"), "{o}");
    assert!(grows(&fa) && grows(&fb));
    let m = xos::gcp::meta::read(ck.path(), "job-1", 1).unwrap();
    assert!(m.coordinated);
    assert_eq!(
        m.units.iter().map(|u| u.app).collect::<Vec<_>>(),
        vec![a, b]
    );
    assert!(m
        .units
        .iter()
        .all(|u| u.backend == "native" && u.processes >= 1));

    // Version 2, then the units are stopped (migration); the other job runs on.
    let (ra, rb) = (n1.record(a), n1.record(b));
    // The host pids of each unit's init and command, taken by other processes
    // below before node 2 restarts the job.
    let old_pids: Vec<i32> = [&ra, &rb]
        .iter()
        .flat_map(|r| [r.root_pid, child_of(r.root_pid)])
        .collect();
    let o = n1.ok("xcheckpoint", &["--kill", "job-1"]);
    assert!(o.contains("version 2 written"), "{o}");
    assert!(wait_until(T, || !ra.alive() && !rb.alive()));
    let (la, lb) = (consecutive(&fa), consecutive(&fb));
    assert!(n1.record(c).alive() && grows(&fc));
    let holders = Holders(old_pids.iter().filter_map(|p| occupy(*p)).collect());
    assert!(
        old_pids
            .iter()
            .all(|p| Path::new(&format!("/proc/{p}")).exists()),
        "the old pids are in use"
    );

    let l = n1.ok("xrestart", &["--list", "job-1"]);
    assert_eq!(l.lines().count(), 3, "{l}");
    assert!(l.lines().nth(2).unwrap().starts_with("2 "), "{l}");
    let l: serde_json::Value =
        serde_json::from_str(&n1.ok("xrestart", &["--list", "--json", "job-1"])).unwrap();
    assert_eq!(l.as_array().unwrap().len(), 2, "{l}");
    assert_eq!(l[1]["version"], 2);
    assert_eq!(l[1]["units"].as_array().unwrap().len(), 2, "{l}");
    assert_eq!(l[1]["units"][0]["backend"], "native");
    assert!(l[1]["error"].is_null() && l[1]["bytes"].as_u64().unwrap() > 0);

    // Node 2 (its own state directory and, in its own UTS namespace, its own
    // host name) restarts version 2: both counters go on from where they were.
    let xrestart = n2.env.bin.path().join("xrestart");
    let o = Command::new("unshare")
        .env("XOS_STATE_DIR", n2.env.state.path())
        .env("XOS_CGROUP_PARENT", &n2.env.parent)
        .env("XOS_CHECKPOINT_DIR", ck.path())
        .env_remove("RUST_LOG")
        .args(["--uts", "sh", "-c"])
        .arg(format!(
            "hostname node-two && exec {} job-1 2",
            xrestart.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let ids = restarted_ids(&text);
    assert_eq!(ids.len(), 2, "{text}");
    assert!(text.contains(&format!("unit {a} (native)")), "{text}");
    assert!(grows(&fa) && grows(&fb));
    assert!(consecutive(&fa) > la && consecutive(&fb) > lb);
    let recs = n2.job_records("job-1");
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.alive() && r.checkpointer == "native"));
    // Each unit's command has its pid again, inside the unit's namespace,
    // while other processes hold the host pids the job had on node 1.
    for r in &recs {
        assert_eq!(inner_pid(child_of(r.root_pid)), Some(2));
    }
    drop(holders);
    // Same keys and ids, in the restarted unit's own IPC namespace.
    let ra2 = recs.iter().find(|r| r.id == ids[0]).unwrap();
    assert_eq!(ipc_of(ra2.root_pid), ipc_before);
    let m = xos::gcp::meta::read(ck.path(), "job-1", 2).unwrap();
    assert_eq!(m.restarts.last().unwrap().0, "node-two");
    assert!(n2
        .ok("xrestart", &["--list", "job-1"])
        .contains("restarted on node-two"));

    // Node 2 checkpoints the migrated job in turn: version 3.
    let o = n2.ok("xcheckpoint", &["job-1"]);
    assert!(o.contains("version 3 written"), "{o}");

    // Old versions go: --keep, --delete.
    let o = n2.ok("xrestart", &["--keep", "2", "job-1"]);
    assert!(o.contains("version 1 deleted"), "{o}");
    n2.ok("xrestart", &["--delete", "job-1", "2"]);
    assert_eq!(xos::gcp::meta::versions(ck.path(), "job-1"), vec![3]);
    let o = n2.run("xrestart", &["job-1", "2"]);
    one_line_error(&o, "job job-1 has no checkpoint version 2");
}

#[test]
fn a_unit_that_cannot_be_checkpointed_leaves_no_version() {
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    let fa = out.path().join("a");
    n1.counter("job-2", "native", &fa, "");
    // The native checkpointer refuses packet sockets.
    let ready = out.path().join("ready");
    let s = n1.env.detach(&[
        "--job",
        "job-2",
        "python3",
        "-c",
        &format!(
            "import socket, time\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\nopen('{}', 'w').close()\ntime.sleep(1000)",
            ready.display()
        ),
    ]);
    assert!(wait_until(T, || ready.exists()));
    assert!(grows(&fa));
    let o = n1.run("xcheckpoint", &["job-2"]);
    one_line_error(&o, &format!("job job-2: unit {s}: "));
    assert!(String::from_utf8_lossy(&o.stderr).contains("socket"));
    // Nothing of the version stays, every unit is thawed and runs on.
    let left: Vec<_> = std::fs::read_dir(ck.path().join("job-2"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    for r in n1.job_records("job-2") {
        assert!(r.alive());
        assert_eq!(
            r.cgroup.freezer_state().unwrap(),
            xos::cgroup::FreezerState::Thawed
        );
    }
    assert!(grows(&fa));

    // With --kill the counter is stopped as soon as its image is written; when
    // the next unit fails, it is restarted from that image and goes on.
    let first = n1
        .job_records("job-2")
        .into_iter()
        .find(|r| r.id != s)
        .unwrap();
    let o = n1.run("xcheckpoint", &["--kill", "job-2"]);
    one_line_error(&o, &format!("job job-2: unit {s}: "));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("run again: unit {} as application ", first.id)),
        "{err}"
    );
    assert!(!first.alive());
    assert!(grows(&fa));
    let recs = n1.job_records("job-2");
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.alive()));
    assert!(xos::gcp::meta::versions(ck.path(), "job-2").is_empty());

    // Without the refused unit, the same job checkpoints.
    let mut args = vec!["--unit".to_string()];
    args.push(
        n1.job_records("job-2")
            .iter()
            .find(|r| r.id != s)
            .unwrap()
            .id
            .to_string(),
    );
    args.push("job-2".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(n1.ok("xcheckpoint", &args).contains("(1 units"));

    // Unknown jobs and units are refused with one line.
    one_line_error(
        &n1.run("xcheckpoint", &["nope"]),
        "job nope has no running unit",
    );
    assert!(
        !ck.path().join("nope").exists(),
        "an unknown job left a directory"
    );
    one_line_error(
        &n1.run("xcheckpoint", &["--unit", "999", "job-2"]),
        "unit 999 is not part of it",
    );
    one_line_error(&n1.run("xcheckpoint", &["a/b"]), "invalid job id");
}

#[test]
fn refused_restarts_start_nothing() {
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let n2 = Node {
        env: n1.env.sibling(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    n1.counter("job-3", "native", &out.path().join("a"), "");
    n1.counter("job-3", "native", &out.path().join("b"), "");
    n1.ok("xcheckpoint", &["job-3"]);
    n1.ok("xcheckpoint", &["job-3"]);
    n1.ok("xcheckpoint", &["job-3"]);
    let v = |n| xos::gcp::meta::version_dir(ck.path(), "job-3", n);

    // 1: corrupt meta.json.
    let p = v(1).join("meta.json");
    let mut data = std::fs::read(&p).unwrap();
    let n = data.len();
    data[n - 10] ^= 1;
    std::fs::write(&p, data).unwrap();
    one_line_error(&n2.run("xrestart", &["job-3", "1"]), "corrupt meta.json");
    let l = n2.run("xrestart", &["--list", "job-3"]);
    assert!(
        String::from_utf8_lossy(&l.stdout).contains("1        corrupt:"),
        "{}",
        show(&l)
    );

    // 2: the second unit's image is gone (the first one must not start either).
    let m = xos::gcp::meta::read(ck.path(), "job-3", 2).unwrap();
    std::fs::remove_dir_all(v(2).join(&m.units[1].dir)).unwrap();
    one_line_error(
        &n2.run("xrestart", &["job-3", "2"]),
        &format!("unit {}", m.units[1].app),
    );

    // 3: a checkpointer that is not available on the restarting node.
    let mut m = xos::gcp::meta::read(ck.path(), "job-3", 3).unwrap();
    m.units[1].backend = "criu".into();
    xos::gcp::meta::write(&v(3), &m).unwrap();
    let o = n2
        .cmd("xrestart")
        .env("XOS_CRIU", "/nonexistent/criu")
        .args(["job-3", "3"])
        .output()
        .unwrap();
    one_line_error(&o, "checkpointer criu is not available on this node");
    // An image the container checkpointer did not write.
    m.units[1].backend = "container".into();
    xos::gcp::meta::write(&v(3), &m).unwrap();
    one_line_error(&n2.run("xrestart", &["job-3", "3"]), "container.json");

    assert!(
        n2.env.registry().list().unwrap().is_empty(),
        "something started"
    );
}

#[test]
fn criu_and_native_units_with_sysv_ipc_migrate_together() {
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let n2 = Node {
        env: n1.env.sibling(),
        ckdir: ck.path(),
    };
    let o = n1.ok("xcheckpoint", &["--backends"]);
    assert!(o.lines().any(|l| l.starts_with("criu    4.")), "{o}");
    assert!(o.lines().any(|l| l.starts_with("container 0.")), "{o}");
    let out = tempfile::tempdir().unwrap();
    let (fa, fb) = (out.path().join("a"), out.path().join("b"));
    // The CRIU unit holds a SysV message queue.
    let a = n1.counter("job-4", "criu", &fa, "ipcmk -Q >/dev/null;");
    let b = n1.counter("job-4", "native", &fb, "");
    assert!(grows(&fa) && grows(&fb));
    let ra = n1.record(a);
    assert_eq!(ra.checkpointer, "criu");
    let queues = |pid: i32| {
        let o = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "--ipc", "ipcs", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("0x"))
            .count()
    };
    assert_eq!(queues(ra.root_pid), 1);

    let rb = n1.record(b);
    let o = n1.ok("xcheckpoint", &["--kill", "job-4"]);
    assert!(o.contains("(2 units"), "{o}");
    let m = xos::gcp::meta::read(ck.path(), "job-4", 1).unwrap();
    let u = m.units.iter().find(|u| u.app == a).unwrap();
    assert_eq!(u.backend, "criu");
    assert!(u.backend_version.starts_with('4'), "{u:?}");
    let vdir = xos::gcp::meta::version_dir(ck.path(), "job-4", 1).join(&u.dir);
    assert!(vdir.join("inventory.img").is_file() && vdir.join("dump.log").is_file());
    assert!(wait_until(T, || !ra.alive() && !rb.alive()));
    let (la, lb) = (consecutive(&fa), consecutive(&fb));

    let text = n2.ok("xrestart", &["job-4", "1"]);
    let ids = restarted_ids(&text);
    assert_eq!(ids.len(), 2, "{text}");
    assert!(text.contains(&format!("unit {a} (criu)")), "{text}");
    assert!(grows(&fa) && grows(&fb));
    assert!(consecutive(&fa) > la && consecutive(&fb) > lb);
    let recs = n2.job_records("job-4");
    let rc = recs.iter().find(|r| r.checkpointer == "criu").unwrap();
    assert_eq!(queues(rc.root_pid), 1, "the queue came back with the unit");
    // The restored unit is in node 2's group for it, which holds all of it.
    assert!(rc
        .cgroup
        .name()
        .ends_with(&n2.env.registry().token().unwrap()));
    assert!(rc.cgroup.pids().unwrap().contains(&rc.root_pid));
    assert_eq!(
        xos::process::stat(rc.root_pid).unwrap().ppid,
        rc.supervisor_pid.unwrap(),
        "the supervisor waits for the restored unit"
    );

    // And again from node 2, this time uncoordinated.
    let o = n2.ok("xcheckpoint", &["--uncoordinated", "job-4"]);
    assert!(
        o.contains("version 2 written") && o.contains("uncoordinated"),
        "{o}"
    );
    assert!(grows(&fa) && grows(&fb));
}

#[test]
fn a_criu_failure_is_one_line_with_its_log() {
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    // CRIU refuses a process with a UTS namespace of its own below the root.
    let a = n1.env.detach(&[
        "--job",
        "job-5",
        "--checkpointer",
        "criu",
        "unshare",
        "--uts",
        "sleep",
        "1000",
    ]);
    let o = n1.run("xcheckpoint", &["job-5"]);
    one_line_error(&o, &format!("job job-5: unit {a}: criu dump failed: "));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("(log: ") && err.contains("dump.log)"), "{err}");
    assert!(n1.record(a).alive());
    assert_eq!(
        n1.record(a).cgroup.freezer_state().unwrap(),
        xos::cgroup::FreezerState::Thawed
    );
    assert!(xos::gcp::meta::versions(ck.path(), "job-5").is_empty());
}

#[test]
fn two_phase_prepare_abort_and_commit() {
    use xos::cgroup::FreezerState::{Frozen, Thawed};
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    let (fa, fb, fc) = (
        out.path().join("a"),
        out.path().join("b"),
        out.path().join("c"),
    );
    let a = n1.counter("job-6", "native", &fa, "");
    let b = n1.counter("job-6", "native", &fb, "");
    // A unit its owner froze before stays frozen whatever the phases do.
    let c = n1.counter("job-6", "native", &fc, "");
    assert!(grows(&fa) && grows(&fb) && grows(&fc));
    n1.ok("checkpoint", &["--freeze", &c.to_string()]);
    let state = |id| n1.record(id).cgroup.freezer_state().unwrap();

    one_line_error(
        &n1.run("xcheckpoint", &["--phase", "commit", "job-6"]),
        "job job-6 is not prepared",
    );
    let o = n1.ok("xcheckpoint", &["--phase", "prepare", "job-6"]);
    assert!(o.contains("prepared (3 units frozen)"), "{o}");
    assert_eq!((state(a), state(b), state(c)), (Frozen, Frozen, Frozen));
    let at = consecutive(&fa);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(consecutive(&fa), at, "ran while prepared");
    one_line_error(
        &n1.run("xcheckpoint", &["--phase", "prepare", "job-6"]),
        "job job-6 is already prepared",
    );
    let o = n1.ok("xcheckpoint", &["--phase", "abort", "job-6"]);
    assert!(o.contains("aborted (2 units thawed)"), "{o}");
    assert_eq!((state(a), state(b), state(c)), (Thawed, Thawed, Frozen));
    assert!(grows(&fa) && grows(&fb));
    assert!(xos::gcp::meta::versions(ck.path(), "job-6").is_empty());
    one_line_error(
        &n1.run("xcheckpoint", &["--phase", "abort", "job-6"]),
        "job job-6 is not prepared",
    );

    n1.ok("xcheckpoint", &["--phase", "prepare", "job-6"]);
    let o = n1.ok("xcheckpoint", &["--phase", "commit", "job-6"]);
    assert!(
        o.contains("version 1 written") && o.contains("(3 units"),
        "{o}"
    );
    assert_eq!((state(a), state(b), state(c)), (Thawed, Thawed, Frozen));
    assert!(grows(&fa) && grows(&fb));
    assert!(
        xos::gcp::meta::read(ck.path(), "job-6", 1)
            .unwrap()
            .coordinated
    );
}

#[test]
fn xrestart_right_after_a_killing_xcheckpoint_keeps_running() {
    // The killed unit's supervisor, held stopped, cleans up only after the
    // restart has begun: it must neither destroy the new unit's cgroup (the
    // same path) nor remove its record.
    let ck = tempfile::tempdir().unwrap();
    let n = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    let f = out.path().join("a");
    let a = short_job(&n, "job-k", &f, 120);
    assert!(wait_until(T, || consecutive(&f) > 2));
    let sup = nix::unistd::Pid::from_raw(n.record(a).supervisor_pid.unwrap());
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGSTOP).unwrap();
    n.ok("xcheckpoint", &["--kill", "job-k"]);
    let restarting = n
        .cmd("xrestart")
        .args(["job-k", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGCONT).unwrap();
    let o = restarting.wait_with_output().unwrap();
    assert!(o.status.success(), "xrestart: {}", show(&o));
    let id = restarted_ids(&String::from_utf8_lossy(&o.stdout))[0];
    assert!(grows(&f), "the restarted unit did not run on");
    assert!(n.record(id).alive());
    n.ok("xcheckpoint", &["--kill", "job-k"]);
}

#[test]
fn a_checkpoint_failed_by_the_job_s_end_is_no_failure_of_the_loop() {
    // A terminal other than its own makes every checkpoint of the unit fail.
    let ck = tempfile::tempdir().unwrap();
    let n = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    // Ends within the grace after its first (failed) checkpoint: the loop
    // ends with it, successfully.
    n.env
        .detach(&["--job", "job-e", "sh", "-c", "exec 3<>/dev/ptmx; sleep 0.4"]);
    let o = xcheckpoint_bounded(&n, &["--every", "5s", "job-e"]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("job job-e: ended during a checkpoint"),
        "{}",
        show(&o)
    );
    // Runs on after it: that failure counts.
    n.env
        .detach(&["--job", "job-l", "sh", "-c", "exec 3<>/dev/ptmx; sleep 3"]);
    let o = xcheckpoint_bounded(&n, &["--every", "1s", "job-l"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("xcheckpoint: job job-l: "));
}

/// Starts a unit of `job` that counts into `file` for about `secs` seconds, then ends.
fn short_job(n: &Node, job: &str, file: &Path, secs: u32) -> u64 {
    let script = format!(
        "end=$(( $(date +%s) + {secs} )); i=0; while [ $(date +%s) -lt $end ]; do \
         i=$((i+1)); echo $i >> {}; sleep 0.1; done",
        file.display()
    );
    n.env.detach(&["--job", job, "sh", "-c", &script])
}

/// Runs xcheckpoint ARGS of a node under timeout(1), so a loop that does not
/// end fails the test instead of hanging it.
fn xcheckpoint_bounded(n: &Node, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("120")
        .arg(n.env.bin.path().join("xcheckpoint"))
        .args(args)
        .env("XOS_STATE_DIR", n.env.state.path())
        .env("XOS_CGROUP_PARENT", &n.env.parent)
        .env("XOS_CHECKPOINT_DIR", n.ckdir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn periodic_checkpoints_keep_the_newest_versions() {
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    short_job(&n1, "job-7", &out.path().join("a"), 9);
    let o = xcheckpoint_bounded(&n1, &["--every", "2s", "--keep", "2", "job-7"]);
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let written = text.lines().filter(|l| l.contains(" written to ")).count() as u64;
    assert!(written >= 3, "{text}");
    assert!(text.contains("job job-7: version 1 deleted"), "{text}");
    assert!(text.contains("next checkpoint in 2000 ms"), "{text}");
    assert!(
        text.trim_end().ends_with("periodic checkpointing ends"),
        "{text}"
    );
    // Only the two newest remain, each complete.
    assert_eq!(
        xos::gcp::meta::versions(ck.path(), "job-7"),
        vec![written - 1, written]
    );
    for v in [written - 1, written] {
        assert_eq!(
            xos::gcp::meta::read(ck.path(), "job-7", v)
                .unwrap()
                .units
                .len(),
            1
        );
    }
}

#[test]
fn adaptive_intervals_follow_youngs_formula() {
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    short_job(&n1, "job-8", &out.path().join("a"), 6);
    let o = xcheckpoint_bounded(
        &n1,
        &[
            "--every",
            "1s",
            "--adaptive",
            "--mtbf",
            "20s",
            "--min",
            "300ms",
            "--max",
            "900ms",
            "job-8",
        ],
    );
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let mut decisions = 0;
    for l in text.lines().filter(|l| l.contains("(adaptive: ")) {
        // next checkpoint in X ms (adaptive: cost C ms, MTBF M ms, sqrt(2*C*M) = Y ms, within A..B ms)
        let nums: Vec<f64> = l
            .split(|c: char| !(c.is_ascii_digit()))
            .filter(|w| !w.is_empty())
            .filter_map(|w| w.parse().ok())
            .collect();
        // The job id's own digit comes first.
        let [_, x, c, m, _two, y, lo, hi] = nums[..] else {
            panic!("{l}");
        };
        assert_eq!(m, 20_000.0, "{l}");
        // C and Y are printed in whole milliseconds (truncated).
        let (lo_y, hi_y) = ((2.0 * c * m).sqrt(), (2.0 * (c + 1.0) * m).sqrt());
        assert!(y >= lo_y - 1.0 && y <= hi_y, "{l}: want {lo_y}..{hi_y}");
        assert_eq!(x, y.clamp(lo, hi), "{l}");
        decisions += 1;
    }
    assert!(decisions >= 3, "{text}");
}

#[test]
fn callbacks_run_inside_the_unit_and_can_refuse_a_checkpoint() {
    use std::os::unix::fs::PermissionsExt;
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let d = tempfile::tempdir().unwrap();
    let (log, fail, slow) = (
        d.path().join("log"),
        d.path().join("fail"),
        d.path().join("slow"),
    );
    let cb = d.path().join("cb.sh");
    std::fs::write(
        &cb,
        format!(
            "#!/bin/sh\n\
             echo \"$XOS_EVENT $XOS_JOB $XOS_VERSION $XOS_UNIT $(readlink /proc/self/ns/ipc) $(readlink /proc/self/ns/pid) $(id -u)\" >> {log}\n\
             if [ \"$XOS_EVENT\" = pre-checkpoint ]; then\n\
               [ -e {slow} ] && sleep 30\n\
               [ -e {fail} ] && {{ echo 'queue not drained' >&2; exit 3; }}\n\
             fi\n\
             exit 0\n",
            log = log.display(),
            fail = fail.display(),
            slow = slow.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cb, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fa = d.path().join("a");
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo $i >> {}; sleep 0.05; done",
        fa.display()
    );
    let a = n1.env.detach(&[
        "--job",
        "job-9",
        "--callback",
        cb.to_str().unwrap(),
        "sh",
        "-c",
        &script,
    ]);
    assert!(grows(&fa));
    let ns = |pid: i32, kind: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let root = n1.record(a).root_pid;
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };

    n1.ok("xcheckpoint", &["job-9"]);
    let inside = format!("{} {} 0", ns(root, "ipc"), ns(root, "pid"));
    assert_eq!(
        lines(),
        vec![
            format!("pre-checkpoint job-9 1 {a} {inside}"),
            format!("post-checkpoint job-9 1 {a} {inside}"),
        ]
    );
    let m = xos::gcp::meta::read(ck.path(), "job-9", 1).unwrap();
    assert_eq!(
        m.units[0].callbacks,
        vec![("pre-checkpoint".to_string(), "ok".to_string())]
    );

    // A failing pre-checkpoint callback refuses the checkpoint with its message.
    std::fs::write(&fail, "").unwrap();
    let o = n1.run("xcheckpoint", &["job-9"]);
    one_line_error(
        &o,
        &format!(
            "job job-9: unit {a}: pre-checkpoint callback {} failed (status 3): queue not drained",
            cb.display()
        ),
    );
    assert_eq!(xos::gcp::meta::versions(ck.path(), "job-9"), vec![1]);
    assert!(grows(&fa));
    // --force writes it anyway, and records the failure.
    n1.ok("xcheckpoint", &["--force", "job-9"]);
    let m = xos::gcp::meta::read(ck.path(), "job-9", 2).unwrap();
    assert!(
        m.units[0].callbacks[0].1.contains("queue not drained"),
        "{m:?}"
    );
    std::fs::remove_file(&fail).unwrap();

    // One that passes its time limit refuses it too.
    std::fs::write(&slow, "").unwrap();
    let start = std::time::Instant::now();
    let o = n1.run("xcheckpoint", &["--callback-timeout", "1", "job-9"]);
    one_line_error(&o, "did not finish within 1 s");
    assert!(start.elapsed() < Duration::from_secs(10));
    std::fs::remove_file(&slow).unwrap();

    // Migration: after the restart the callback runs in the new unit.
    n1.ok("xcheckpoint", &["--kill", "job-9"]);
    let ids = restarted_ids(&n1.ok("xrestart", &["job-9", "3"]));
    let b = ids[0];
    let root = n1.record(b).root_pid;
    let last = lines().last().cloned().unwrap();
    assert_eq!(
        last,
        format!(
            "post-restart job-9 3 {b} {} {} 0",
            ns(root, "ipc"),
            ns(root, "pid")
        )
    );
    assert!(grows(&fa));
}

#[test]
fn xrestart_frozen_leaves_every_unit_frozen_until_thawed() {
    use xos::cgroup::FreezerState::Frozen;
    let ck = tempfile::tempdir().unwrap();
    let n1 = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    let (fa, fb) = (out.path().join("a"), out.path().join("b"));
    n1.counter("job-10", "native", &fa, "");
    n1.counter("job-10", "criu", &fb, "");
    assert!(grows(&fa) && grows(&fb));
    n1.ok("xcheckpoint", &["--kill", "job-10"]);
    assert!(wait_until(T, || n1.job_records("job-10").is_empty()));
    let ids = restarted_ids(&n1.ok("xrestart", &["--frozen", "job-10", "1"]));
    assert_eq!(ids.len(), 2);
    for id in &ids {
        assert_eq!(n1.record(*id).cgroup.freezer_state().unwrap(), Frozen);
    }
    let (la, lb) = (consecutive(&fa), consecutive(&fb));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        (consecutive(&fa), consecutive(&fb)),
        (la, lb),
        "ran while frozen"
    );
    for id in &ids {
        n1.ok("checkpoint", &["--unfreeze", &id.to_string()]);
    }
    assert!(grows(&fa) && grows(&fb));
}

#[test]
fn the_configuration_names_criu_and_the_checkpoint_directory() {
    let ck = tempfile::tempdir().unwrap();
    let n = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let etc = tempfile::tempdir().unwrap();
    let conf = etc.path().join("gcp.conf");
    let cmd = |applet: &str| {
        let mut c = n.env.cmd(applet);
        c.env_remove("XOS_CRIU")
            .env_remove("XOS_CHECKPOINT_DIR")
            .env("XOS_GCP_CONFIG", &conf);
        c
    };

    // A broken Criu key: --backends says why in one line.
    std::fs::write(&conf, "Criu /nonexistent/criu\n").unwrap();
    let o = cmd("xcheckpoint").arg("--backends").output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let want = format!(
        "criu    not available: criu /nonexistent/criu (Criu key of {}): No such file",
        conf.display()
    );
    assert!(out.lines().any(|l| l.starts_with(&want)), "{out}");

    // A working one, and CheckpointDir: the version goes there.
    std::fs::write(
        &conf,
        format!(
            "# grid checkpointing\nCheckpointDir {}\nCriu {}\n",
            ck.path().display(),
            criu().display()
        ),
    )
    .unwrap();
    let o = cmd("xcheckpoint").arg("--backends").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l.starts_with("criu    4.")), "{out}");
    let file = tempfile::tempdir().unwrap();
    let f = file.path().join("count");
    let a = n.counter("job-c", "criu", &f, "");
    assert!(wait_until(T, || consecutive(&f) > 2));
    let o = cmd("xcheckpoint").arg("job-c").output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(xos::gcp::meta::versions(ck.path(), "job-c"), vec![1]);
    assert!(grows(&f));
    assert!(n.record(a).alive());

    // A line that is not a key: one line naming the file and the line.
    std::fs::write(&conf, "CheckpointDir /x\nCriuPath /y\n").unwrap();
    let o = cmd("xrestart").args(["--list", "job-c"]).output().unwrap();
    one_line_error(&o, &format!("{}:2: unknown key 'CriuPath'", conf.display()));
    // A named file that is missing.
    let o = cmd("xcheckpoint")
        .args(["--config", "/nonexistent/gcp.conf", "job-c"])
        .output()
        .unwrap();
    one_line_error(&o, "/nonexistent/gcp.conf");
}

#[test]
fn restarts_after_failures_give_the_observed_mtbf_to_adaptive() {
    let ck = tempfile::tempdir().unwrap();
    let n = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let out = tempfile::tempdir().unwrap();
    let f = out.path().join("a");
    let a = short_job(&n, "job-f", &f, 10);
    assert!(wait_until(T, || consecutive(&f) > 2));
    n.ok("xcheckpoint", &["job-f"]);
    // The node "fails": the unit dies without a --kill checkpoint.
    n.record(a)
        .cgroup
        .kill(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(wait_until(T, || n
        .env
        .registry()
        .load(a)
        .map_or(true, |r| !r.alive())));
    let o = n.ok("xrestart", &["job-f", "1"]);
    assert_eq!(restarted_ids(&o).len(), 1, "{o}");
    let node = xos::gcp::meta::node_name();
    let v1 = xos::gcp::meta::read(ck.path(), "job-f", 1).unwrap();
    let (since, list) = xos::gcp::meta::failures(ck.path(), "job-f").unwrap();
    assert_eq!(since, v1.created);
    assert_eq!(list.len(), 1);
    assert_eq!((&list[0].node, list[0].version), (&node, 1));
    assert_eq!(list[0].restarted_on, node);
    assert!(grows(&f));

    // A migration (--kill, then restart) is no failure.
    n.ok("xcheckpoint", &["--kill", "job-f"]);
    n.ok("xrestart", &["job-f", "2"]);
    let (_, list) = xos::gcp::meta::failures(ck.path(), "job-f").unwrap();
    assert_eq!(list.len(), 1);

    // --adaptive without --mtbf: M observed, one failure since version 1.
    let o = xcheckpoint_bounded(
        &n,
        &[
            "--every",
            "1s",
            "--adaptive",
            "--min",
            "200ms",
            "--max",
            "800ms",
            "job-f",
        ],
    );
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let mut decisions = 0;
    for l in text.lines().filter(|l| l.contains("(adaptive: ")) {
        assert!(l.contains(" ms observed, "), "{l}");
        let nums: Vec<f64> = l
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .filter_map(|w| w.parse().ok())
            .collect();
        let [x, c, m, _two, y, lo, hi] = nums[..] else {
            panic!("{l}");
        };
        // (now - since) / 1 failure, in whole seconds.
        assert!((1000.0..=60_000.0).contains(&m) && m % 1000.0 == 0.0, "{l}");
        let (lo_y, hi_y) = ((2.0 * c * m).sqrt(), (2.0 * (c + 1.0) * m).sqrt());
        assert!(y >= lo_y - 1.0 && y <= hi_y, "{l}: want {lo_y}..{hi_y}");
        assert_eq!(x, y.clamp(lo, hi), "{l}");
        decisions += 1;
    }
    assert!(decisions >= 2, "{text}");
}

/// The messages of the SysV queue with `key` in the IPC namespace of `pid`,
/// read (and so removed) in order: "TYPE TEXT" each.
fn drain_queue_of(pid: i32, key: &str) -> Vec<String> {
    let o = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-i", "perl", "-e"])
        .arg(format!(
            "use IPC::SysV qw(IPC_NOWAIT); my $q = msgget({key}, 0) // die \"no queue: $!\\n\"; \
             my $b; while (msgrcv($q, $b, 4096, 0, IPC_NOWAIT)) {{ my ($t, $x) = unpack('l! a*', $b); print \"$t $x\\n\" }}"
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_pre_checkpoint_callback_drains_a_queue_and_post_restart_refills_it() {
    use std::os::unix::fs::PermissionsExt;
    use xos::sysvipc::Meta;
    let ck = tempfile::tempdir().unwrap();
    let n = Node {
        env: Env::new(),
        ckdir: ck.path(),
    };
    let d = tempfile::tempdir().unwrap();
    let (drain, ready) = (d.path().join("drained"), d.path().join("ready"));
    let key = "0x4d51";
    // The callback moves the queue's messages into a file before the
    // checkpoint and puts them back after a restart.
    let cb = d.path().join("cb.pl");
    std::fs::write(
        &cb,
        format!(
            "#!/usr/bin/perl\n\
             use IPC::SysV qw(IPC_NOWAIT);\n\
             my $q = msgget({key}, 0) // die \"no queue {key}: $!\\n\";\n\
             if ($ENV{{XOS_EVENT}} eq 'pre-checkpoint') {{\n\
               open(my $f, '>>', '{drain}') or die \"{drain}: $!\\n\";\n\
               my $b;\n\
               while (msgrcv($q, $b, 4096, 0, IPC_NOWAIT)) {{ my ($t, $x) = unpack('l! a*', $b); print $f \"$t $x\\n\" }}\n\
               close($f) or die \"{drain}: $!\\n\";\n\
             }} elsif ($ENV{{XOS_EVENT}} eq 'post-restart') {{\n\
               open(my $f, '<', '{drain}') or exit 0;\n\
               while (<$f>) {{ chomp; my ($t, $x) = split(/ /, $_, 2); msgsnd($q, pack('l! a*', $t, $x), 0) or die \"msgsnd: $!\\n\" }}\n\
               unlink('{drain}');\n\
             }}\n",
            drain = drain.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cb, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The unit: a queue holding three messages of two types, then it waits.
    let unit = format!(
        "use IPC::SysV qw(IPC_CREAT); my $q = msgget({key}, IPC_CREAT | 0600) // die \"msgget: $!\"; \
         for my $m ([1, 'one'], [2, 'two'], [1, 'three']) {{ msgsnd($q, pack('l! a*', @$m), 0) or die \"msgsnd: $!\" }} \
         open(my $r, '>', '{}'); close($r); sleep 1000",
        ready.display()
    );
    let a = n.env.detach(&[
        "--job",
        "job-q",
        "--callback",
        cb.to_str().unwrap(),
        "perl",
        "-e",
        &unit,
    ]);
    assert!(wait_until(T, || ready.exists()));

    n.ok("xcheckpoint", &["--kill", "job-q"]);
    let want = vec!["1 one", "2 two", "1 three"];
    assert_eq!(
        std::fs::read_to_string(&drain)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        want
    );
    // The image holds the queue, empty.
    let m = xos::gcp::meta::read(ck.path(), "job-q", 1).unwrap();
    assert_eq!(
        m.units[0].callbacks,
        vec![("pre-checkpoint".to_string(), "ok".to_string())]
    );
    let ipc = xos::gcp::meta::version_dir(ck.path(), "job-q", 1)
        .join(&m.units[0].dir)
        .join("ipc");
    let (_, images) = xos::sysvipc::open_all(&ipc).unwrap();
    let queues: Vec<usize> = images
        .iter()
        .filter_map(|i| match i.meta() {
            Meta::Msg(q) => Some(q.messages.len()),
            _ => None,
        })
        .collect();
    assert_eq!(queues, vec![0], "one queue, drained");
    assert!(n.env.registry().load(a).map_or(true, |r| !r.alive()));

    // After the restart the post-restart callback has put them back, in order.
    let ids = restarted_ids(&n.ok("xrestart", &["job-q", "1"]));
    let b = n.record(ids[0]);
    assert!(b.alive());
    assert!(!drain.exists());
    assert_eq!(drain_queue_of(b.root_pid, key), want);
}
