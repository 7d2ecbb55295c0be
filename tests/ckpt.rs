//! The native checkpointer on the real kernel: workloads compiled from
//! tests/ckpt_progs/*.c (and bash, python3) are started with krgcr-run,
//! checkpointed, killed and restarted, and must continue exactly where they were.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{read, show, wait_until, Env};

const T: Duration = Duration::from_secs(20);

/// Compiles tests/ckpt_progs/NAME.c into `dir`.
fn cc(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ckpt_progs")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let o = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .expect("cc (gcc) is needed");
    assert!(o.status.success(), "cc {name}: {}", show(&o));
    out
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn numbers(p: &Path) -> Vec<i64> {
    lines(p)
        .iter()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Asserts the file holds 1, 2, 3, … with nothing missing, repeated or reset.
fn assert_consecutive(p: &Path) -> i64 {
    let v = numbers(p);
    let text = std::fs::read_to_string(p).unwrap_or_default();
    assert_eq!(
        v.len(),
        text.lines().count(),
        "a line is not a number: {text}"
    );
    for (i, n) in v.iter().enumerate() {
        assert_eq!(*n, i as i64 + 1, "line {} of {} is {n}", i + 1, p.display());
    }
    *v.last().unwrap_or(&0)
}

/// checkpoint -c [--kill] APP, returning the version written.
fn checkpoint(env: &Env, id: u64, kill: bool) -> u64 {
    let mut c = env.cmd("checkpoint");
    c.arg("-c");
    if kill {
        c.arg("--kill");
    }
    let o = c.arg(id.to_string()).output().unwrap();
    assert!(o.status.success(), "checkpoint -c: {}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    text.split("version ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("a version")
}

fn restart(env: &Env, id: u64, version: u64) {
    let o = env
        .cmd("restart")
        .args([
            "--detach",
            "--stdout",
            "/dev/null",
            "--stderr",
            "/dev/null",
            &id.to_string(),
            &version.to_string(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "restart: {}", show(&o));
}

/// Compiles tests/ckpt_progs/NAME.c and starts it detached with an output file;
/// returns the application id and that file.
fn start(env: &Env, name: &str) -> (u64, PathBuf) {
    let prog = cc(env.state.path(), name);
    let out = env.state.path().join("out");
    let id = env.detach(&[prog.to_str().unwrap(), out.to_str().unwrap()]);
    (id, out)
}

/// checkpoint -c --kill APP, waiting until the application is gone; returns the version.
fn checkpoint_kill(env: &Env, id: u64) -> u64 {
    let v = checkpoint(env, id, true);
    wait_gone(env, id);
    v
}

fn wait_gone(env: &Env, id: u64) {
    assert!(
        wait_until(T, || env.registry().load(id).is_err()),
        "application {id} did not end"
    );
}

#[test]
fn counter_continues_where_it_stopped() {
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 5));
    let v = checkpoint_kill(&env, id);
    let at_kill = assert_consecutive(&out);
    restart(&env, id, v);
    assert!(
        wait_until(T, || numbers(&out).len() as i64 >= at_kill + 10),
        "no progress after restart"
    );
    // Continued from the saved count, at the saved file offset.
    assert!(assert_consecutive(&out) >= at_kill + 10);
    let list = env
        .cmd("restart")
        .args(["--list", &id.to_string()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.starts_with(&format!("{v} "))));
}

#[test]
fn repeated_cycles_stay_correct() {
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    let mut last = 0;
    for cycle in 0..20 {
        assert!(
            wait_until(T, || numbers(&out).len() as i64 > last + 2),
            "cycle {cycle}: no progress"
        );
        let v = checkpoint_kill(&env, id);
        last = assert_consecutive(&out);
        restart(&env, id, v);
    }
    assert!(wait_until(T, || numbers(&out).len() as i64 > last + 2));
    assert_consecutive(&out);
}

#[test]
fn a_checkpoint_leaves_the_application_running() {
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    assert_eq!(checkpoint(&env, id, false), 1);
    let n = numbers(&out).len();
    assert!(
        wait_until(T, || numbers(&out).len() > n + 3),
        "not running after checkpoint"
    );
    // A frozen application stays frozen.
    assert!(env
        .cmd("checkpoint")
        .args(["--freeze", &id.to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(checkpoint(&env, id, false), 2);
    let rec = env.registry().load(id).unwrap();
    assert_eq!(
        rec.cgroup.freezer_state().unwrap(),
        xos::cgroup::FreezerState::Frozen
    );
    assert!(env
        .cmd("checkpoint")
        .args(["--unfreeze", &id.to_string()])
        .status()
        .unwrap()
        .success());
    assert_consecutive(&out);
}

#[test]
fn big_buffer_is_verified_by_the_program_after_restart() {
    let env = Env::new();
    let (id, out) = start(&env, "bigbuf");
    assert!(wait_until(Duration::from_secs(60), || read(&out) == "filled"));
    let v = checkpoint_kill(&env, id);
    restart(&env, id, v);
    std::fs::write(out.with_extension("go"), "").unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || lines(&out).len() >= 2),
        "no verdict"
    );
    assert_eq!(lines(&out), ["filled", "ok"]);
}

#[test]
fn pipe_data_in_flight_arrives_once_in_order() {
    let env = Env::new();
    let (id, out) = start(&env, "pipes");
    // Unread lines pile up in the pipe while the reader waits for the go file.
    std::thread::sleep(Duration::from_millis(500));
    let v = checkpoint_kill(&env, id);
    restart(&env, id, v);
    std::fs::write(out.with_extension("go"), "").unwrap();
    assert!(wait_until(T, || numbers(&out).len() >= 12));
    // A second cycle while the reader is blocked in read(2).
    let v = checkpoint_kill(&env, id);
    let before = assert_consecutive(&out);
    restart(&env, id, v);
    assert!(wait_until(T, || numbers(&out).len() as i64 >= before + 5));
    assert_consecutive(&out);
}

#[test]
fn signal_handlers_and_pending_signals_survive() {
    let env = Env::new();
    let (id, out) = start(&env, "signals");
    assert!(wait_until(T, || read(&out) == "ready"));
    let rec = env.registry().load(id).unwrap();
    let pid = |rec: &xos::registry::AppRecord| {
        *rec.cgroup
            .pids()
            .unwrap()
            .iter()
            .find(|p| **p != rec.root_pid)
            .unwrap()
    };
    let kill = |p: i32, s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), s).unwrap();
    kill(pid(&rec), nix::sys::signal::Signal::SIGUSR2); // blocked: stays pending
    assert!(wait_until(T, || std::fs::read_to_string(format!(
        "/proc/{}/status",
        pid(&rec)
    ))
    .unwrap()
    .contains("SigPnd:\t0000000000000800")
        || std::fs::read_to_string(format!(
            "/proc/{}/status",
            pid(&rec)
        ))
        .unwrap()
        .contains("ShdPnd:\t0000000000000800")));
    let v = checkpoint_kill(&env, id);
    restart(&env, id, v);
    let rec = env.registry().load(id).unwrap();
    kill(pid(&rec), nix::sys::signal::Signal::SIGUSR1);
    assert!(
        wait_until(T, || lines(&out).contains(&"usr1 1".to_string())),
        "{:?}",
        lines(&out)
    );
    std::fs::write(out.with_extension("go"), "").unwrap();
    assert!(wait_until(T, || lines(&out)
        .iter()
        .any(|l| l.starts_with("usr2"))));
    assert!(
        lines(&out).contains(&"usr2 1".to_string()),
        "pending SIGUSR2 lost: {:?}",
        lines(&out)
    );
}

/// (pid, ppid, pgid, sid) of every process as seen inside the application.
fn tree_of(rec: &xos::registry::AppRecord) -> Vec<(i32, i32, i32, i32)> {
    let ns = |host: i32, key: &str| -> i32 {
        let s = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    let mut v: Vec<_> = rec
        .cgroup
        .pids()
        .unwrap()
        .into_iter()
        .filter(|h| *h != rec.root_pid)
        .map(|h| {
            let ppid_host = ns(h, "PPid:");
            let ppid = ns(ppid_host, "NSpid:");
            (ns(h, "NSpid:"), ppid, ns(h, "NSpgid:"), ns(h, "NSsid:"))
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn sessions_groups_parents_and_shared_memory() {
    let env = Env::new();
    let (id, out) = start(&env, "tree");
    let rec = env.registry().load(id).unwrap();
    // init + main + leader + member + daemon + its child
    assert!(wait_until(T, || rec
        .cgroup
        .pids()
        .map(|p| p.len() == 6)
        .unwrap_or(false)));
    assert!(wait_until(T, || numbers(&out).last().copied().unwrap_or(0) > 5));
    let before = tree_of(&rec);
    assert!(
        before.iter().any(|p| p.2 == p.0 && p.3 != p.0),
        "a group leader that is not the session leader: {before:?}"
    );
    let v = checkpoint_kill(&env, id);
    let count = numbers(&out).last().copied().unwrap();
    restart(&env, id, v);
    let rec = env.registry().load(id).unwrap();
    assert!(wait_until(T, || rec
        .cgroup
        .pids()
        .map(|p| p.len() == 6)
        .unwrap_or(false)));
    assert_eq!(tree_of(&rec), before);
    // The daemon's counting is still seen by its child: the page is shared again.
    assert!(
        wait_until(T, || numbers(&out).last().copied().unwrap_or(0)
            > count + 10),
        "shared page not shared"
    );
}

/// Starts tests/ckpt_progs/NAME.c, whose checkpoint must fail: one line on
/// stderr (returned), the application thawed and still counting, no version left.
fn checkpoint_is_refused(name: &str) -> String {
    let env = Env::new();
    let (id, out) = start(&env, name);
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    let o = env
        .cmd("checkpoint")
        .args(["-c", &id.to_string()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    let rec = env.registry().load(id).unwrap();
    assert_eq!(
        rec.cgroup.freezer_state().unwrap(),
        xos::cgroup::FreezerState::Thawed
    );
    let n = numbers(&out).len();
    assert!(
        wait_until(T, || numbers(&out).len() > n + 3),
        "not running after the failed checkpoint"
    );
    let dir = xos::ckpt::image::app_dir(env.state.path(), id);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    err
}

#[test]
fn unsupported_fd_fails_cleanly() {
    let err = checkpoint_is_refused("socket");
    assert!(
        err.contains("process 2") && err.contains("socket:["),
        "{err}"
    );
}

#[test]
fn corrupt_image_is_refused_and_nothing_is_left() {
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    let v = checkpoint_kill(&env, id);
    let pages = xos::ckpt::image::version_dir(env.state.path(), id, v).join("pages-2.img");
    let mut data = std::fs::read(&pages).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&pages, data).unwrap();
    // Refused with `why` on stderr, and no application left registered.
    let refused = |why: &str| {
        let o = env
            .cmd("restart")
            .args(["--detach", &id.to_string(), &v.to_string()])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(why),
            "{}",
            show(&o)
        );
        assert!(env.registry().list().unwrap().is_empty());
        o.status.code()
    };
    assert_ne!(refused("corrupt"), Some(0));
    // A truncated data file is refused by its length.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    assert_eq!(refused("truncated"), Some(1));
    let layout = xos::cgroup::Layout::detect().unwrap();
    for p in layout.group(&env.parent).unwrap().paths() {
        let n = std::fs::read_dir(&p)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        assert_eq!(n, 0, "group left under {}", p.display());
    }
    // Missing version.
    let o = env
        .cmd("restart")
        .args([&id.to_string(), "99"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no checkpoint version 99"));
}

#[test]
fn bash_and_python_continue() {
    let env = Env::new();
    let b = env.state.path().join("bash.out");
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo $i >> {}; sleep 0.02; done",
        b.display()
    );
    let id_b = env.detach(&["bash", "-c", &script]);
    let p = env.state.path().join("py.out");
    let py = format!(
        "import time\nacc = []\nwhile True:\n    acc.append(len(acc) + 1)\n    open({:?}, 'a').write(f'{{len(acc)}} {{sum(acc)}}\\n')\n    time.sleep(0.02)\n",
        p.display().to_string()
    );
    let id_p = env.detach(&["python3", "-c", &py]);
    assert!(wait_until(T, || numbers(&b).len() >= 5 && lines(&p).len() >= 5));
    for (id, _) in [(id_b, &b), (id_p, &p)] {
        let v = checkpoint_kill(&env, id);
        restart(&env, id, v);
    }
    let nb = numbers(&b).len();
    let np = lines(&p).len();
    assert!(wait_until(T, || numbers(&b).len() > nb + 5 && lines(&p).len() > np + 5));
    assert_consecutive(&b);
    for (i, l) in lines(&p).iter().enumerate() {
        let k = i as i64 + 1;
        assert_eq!(l, &format!("{k} {}", k * (k + 1) / 2), "python line {k}");
    }
}

#[test]
fn restart_can_leave_the_application_frozen() {
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    let v = checkpoint_kill(&env, id);
    let at_kill = assert_consecutive(&out);
    let o = env
        .cmd("restart")
        .args([
            "--detach",
            "--frozen",
            "--stdout",
            "/dev/null",
            "--stderr",
            "/dev/null",
            &id.to_string(),
            &v.to_string(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let rec = env.registry().load(id).unwrap();
    assert_eq!(
        rec.cgroup.freezer_state().unwrap(),
        xos::cgroup::FreezerState::Frozen
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(numbers(&out).len() as i64, at_kill, "ran while frozen");
    let o = env
        .cmd("checkpoint")
        .args(["--unfreeze", &id.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        wait_until(T, || numbers(&out).len() as i64 > at_kill + 5),
        "did not resume"
    );
    assert_consecutive(&out);
}

#[test]
fn interval_timers_keep_ticking() {
    let env = Env::new();
    let (id, out) = start(&env, "timer");
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    let v = checkpoint_kill(&env, id);
    let at_kill = numbers(&out).last().copied().unwrap();
    restart(&env, id, v);
    // Only the restored ITIMER_REAL can make it count on.
    assert!(
        wait_until(T, || numbers(&out).last().copied().unwrap_or(0)
            > at_kill + 5),
        "the timer was not restored"
    );
}

/// The identity lines of /proc/PID/status that a restart must reproduce.
fn identity(host: i32) -> Vec<String> {
    let keys = [
        "Uid:",
        "Gid:",
        "Groups:",
        "CapInh:",
        "CapPrm:",
        "CapEff:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
    ];
    std::fs::read_to_string(format!("/proc/{host}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .map(str::to_string)
        .collect()
}

fn app_process(env: &Env, id: u64) -> i32 {
    let rec = env.registry().load(id).unwrap();
    let mut p = Vec::new();
    assert!(wait_until(T, || {
        p = rec.cgroup.pids().unwrap_or_default();
        p.retain(|h| *h != rec.root_pid);
        p.len() == 1
    }));
    p[0]
}

#[test]
fn unprivileged_identity_and_capabilities_are_restored() {
    let env = Env::new();
    let prog = cc(env.state.path(), "counter");
    // The unprivileged program must reach its output file.
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(env.state.path(), mode).unwrap();
    let out = env.state.path().join("out");
    std::fs::write(&out, "").unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let id = env.detach(&[
        "setpriv",
        "--reuid=4242",
        "--regid=4243",
        "--groups=4244,4245",
        "--inh-caps=+net_bind_service,+net_raw",
        "--ambient-caps=+net_bind_service",
        "--bounding-set=-sys_admin,-mknod",
        "--nnp",
        prog.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    let before = identity(app_process(&env, id));
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("Uid:") && l.contains("4242"))
            && before
                .iter()
                .any(|l| l.starts_with("CapAmb:") && !l.ends_with("0000000000000000")),
        "setpriv did not take: {before:?}"
    );
    let v = checkpoint_kill(&env, id);
    let at_kill = assert_consecutive(&out);
    restart(&env, id, v);
    assert_eq!(identity(app_process(&env, id)), before);
    assert!(wait_until(T, || numbers(&out).len() as i64 > at_kill + 3));
    assert_consecutive(&out);
}

#[test]
fn seccomp_filter_fails_cleanly() {
    // An allow-everything filter, as systemd units install (SECCOMP_MODE_FILTER).
    let err = checkpoint_is_refused("seccomp");
    assert!(
        err.contains("process 2") && err.contains("seccomp"),
        "{err}"
    );
}
