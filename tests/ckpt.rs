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
fn a_restart_right_after_checkpoint_kill_keeps_running() {
    // The supervisor of the killed run cleans up (its cgroup, whose path the
    // restart reuses, and its record) on its own time: held stopped here, it
    // would otherwise destroy the restarted application.
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    let sup = env.registry().load(id).unwrap().supervisor_pid.unwrap();
    let sup = nix::unistd::Pid::from_raw(sup);
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let v = checkpoint(&env, id, true);
    let restarting = env
        .cmd("restart")
        .args(["--detach", "--stdout", "/dev/null", "--stderr", "/dev/null"])
        .args([id.to_string(), v.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGCONT).unwrap();
    let o = restarting.wait_with_output().unwrap();
    assert!(o.status.success(), "restart: {}", show(&o));
    let at_restart = numbers(&out).len();
    assert!(
        wait_until(T, || numbers(&out).len() >= at_restart + 10),
        "the restarted application did not run on"
    );
    let rec = env
        .registry()
        .load(id)
        .expect("the restarted run is registered");
    assert!(rec.alive());
    checkpoint_kill(&env, id);
}

#[test]
fn a_detached_application_restarts_in_the_foreground() {
    // Saved in the session and group of its init (krgcr-run --detach), it
    // comes back in the caller's, where a foreground restart puts the init.
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 5));
    let v = checkpoint_kill(&env, id);
    let at_kill = assert_consecutive(&out);
    let fg = env
        .cmd("restart")
        .args([&id.to_string(), &v.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let going = wait_until(T, || numbers(&out).len() as i64 >= at_kill + 10);
    let o = env
        .cmd("checkpoint")
        .args(["-c", "--kill", &id.to_string()])
        .output()
        .unwrap();
    let st = fg.wait_with_output().unwrap();
    assert!(
        going,
        "no progress: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(o.status.success(), "{}", show(&o));
    assert!(assert_consecutive(&out) >= at_kill + 10);
}

/// `cycles` times: lets the program count on, checkpoints and kills it,
/// restarts it; its output must count on without a gap or a repeat.
fn cycles_keep_counting(env: &Env, id: u64, out: &Path, cycles: usize) {
    let mut last = 0;
    for cycle in 0..cycles {
        assert!(
            wait_until(T, || numbers(out).len() as i64 > last + 2),
            "cycle {cycle}: no progress"
        );
        let v = checkpoint_kill(env, id);
        last = assert_consecutive(out);
        restart(env, id, v);
    }
    assert!(wait_until(T, || numbers(out).len() as i64 > last + 2));
    assert_consecutive(out);
}

#[test]
fn repeated_cycles_stay_correct() {
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    cycles_keep_counting(&env, id, &out, 20);
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
    let frozen_at = numbers(&out).len();
    assert_eq!(checkpoint(&env, id, false), 2);
    let rec = env.registry().load(id).unwrap();
    assert_eq!(
        rec.cgroup.freezer_state().unwrap(),
        xos::cgroup::FreezerState::Frozen
    );
    // Nothing ran past the image: it is frozen again before it is let go.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(numbers(&out).len(), frozen_at);
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
fn a_full_disk_fails_the_checkpoint_and_harms_nothing() {
    // The images on a 64 MiB tmpfs: 512 MiB of memory do not fit (the pages
    // are written by a second thread for a process this large).
    common::in_private_mount_ns(|| {
        let env = Env::new();
        let images = env.state.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &images,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64m"),
        )
        .unwrap();
        let (id, out) = start(&env, "bigbuf");
        assert!(wait_until(Duration::from_secs(60), || read(&out) == "filled"));
        let o = env
            .cmd("checkpoint")
            .args(["-c", &id.to_string()])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("pages-2.img") && err.contains("No space"),
            "{err}"
        );
        // Nothing of the failed version is left, and the program, which
        // checks its whole buffer, runs on intact.
        let left: Vec<_> = std::fs::read_dir(images.join(id.to_string()))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
        std::fs::write(out.with_extension("go"), "").unwrap();
        assert!(
            wait_until(Duration::from_secs(60), || lines(&out).len() >= 2),
            "no verdict"
        );
        assert_eq!(lines(&out), ["filled", "ok"]);
        let rec = env.registry().load(id).unwrap();
        rec.cgroup.kill(Duration::from_secs(10)).unwrap();
        wait_gone(&env, id);
        nix::mount::umount(&images).unwrap();
    });
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
    checkpoint_is_refused_with(name, &[])
}

/// [`checkpoint_is_refused`] of NAME started with `args` after its output file.
fn checkpoint_is_refused_with(name: &str, args: &[&str]) -> String {
    let env = Env::new();
    let prog = cc(env.state.path(), name);
    let out = env.state.path().join("out");
    let mut all = vec![prog.to_str().unwrap(), out.to_str().unwrap()];
    all.extend_from_slice(args);
    let id = env.detach(&all);
    assert!(
        wait_until(T, || numbers(&out).len() >= 3),
        "{name} {args:?} did not start"
    );
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
        err.contains("process 2") && err.contains("socket:[") && err.contains("packet"),
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
    // One status for one fault, whichever file it is in and however it shows.
    assert_eq!(refused("corrupt"), Some(125));
    // A truncated data file is refused by its length.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    assert_eq!(refused("truncated"), Some(125));
    let image = pages.with_file_name("image.json");
    let description = std::fs::read(&image).unwrap();
    std::fs::remove_file(&pages).unwrap();
    assert_eq!(refused("pages-2.img"), Some(125));
    let mut bad = description.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x01;
    std::fs::write(&image, bad).unwrap();
    assert_eq!(refused("image.json"), Some(125));
    std::fs::write(&image, description).unwrap();
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
    assert_eq!(o.status.code(), Some(125));
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

/// The last "tick" line of the threads program: its six counters.
fn ticks(out: &Path) -> Vec<i64> {
    last_numbers(out, "tick ")
}

/// The numbers of the last line of `out` that starts with `prefix`.
fn last_numbers(out: &Path, prefix: &str) -> Vec<i64> {
    lines(out)
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|l| l.split(' ').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default()
}

/// Cpus_allowed_list of every thread of host process `pid`, by tid in the
/// application's namespace.
fn thread_cpus(pid: i32) -> std::collections::BTreeMap<i32, String> {
    let mut m = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = read(e.unwrap().path().join("status"));
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap()
        };
        let ns_tid = field("NSpid:")
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap();
        m.insert(ns_tid, field("Cpus_allowed_list:"));
    }
    m
}

#[test]
fn pinned_threads_keep_their_cpus_and_the_others_all_of_theirs() {
    let env = Env::new();
    let (id, out) = start(&env, "threads");
    assert!(wait_until(T, || ticks(&out).iter().all(|c| *c > 2)));
    let pid = app_process(&env, id);
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    tids.sort();
    assert!(tids.len() >= 3, "{tids:?}");
    let mine = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let last = (0..nix::sched::CpuSet::count())
        .rfind(|&c| mine.is_set(c).unwrap())
        .unwrap();
    for (tid, cpu) in [(tids[1], 0), (tids[2], last)] {
        let o = Command::new("taskset")
            .args(["-p", "-c", &cpu.to_string(), &tid.to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "taskset: {}", show(&o));
    }
    let before = thread_cpus(pid);
    let v = checkpoint_kill(&env, id);
    restart(&env, id, v);
    // The leader and the other threads were never pinned: they may run on
    // every CPU again, not only where the restart rebuilt them.
    assert_eq!(thread_cpus(app_process(&env, id)), before);
    let at = ticks(&out);
    assert!(wait_until(T, || ticks(&out)
        .iter()
        .zip(&at)
        .all(|(n, b)| n > b)));
}

#[test]
fn threads_continue_with_their_own_state() {
    let env = Env::new();
    let (id, out) = start(&env, "threads");
    assert!(wait_until(T, || ticks(&out).iter().all(|c| *c > 5)));
    let v = checkpoint_kill(&env, id);
    let before = ticks(&out);
    restart(&env, id, v);
    // Every counter (two ping-pong threads, the futex waiter, the sleeper,
    // both POSIX timers) goes on from where it was, none from zero.
    assert!(
        wait_until(T, || {
            let now = ticks(&out);
            now.len() == 6 && now.iter().zip(&before).all(|(n, b)| n > &(b + 2))
        }),
        "no progress after restart: {before:?} -> {:?}",
        ticks(&out)
    );
    // A second cycle, then the program winds up and checks itself.
    let v = checkpoint_kill(&env, id);
    restart(&env, id, v);
    let stop = PathBuf::from(format!("{}.stop", out.display()));
    std::fs::write(&stop, "").unwrap();
    assert!(
        wait_until(T, || lines(&out).iter().any(|l| l.starts_with("altstack"))),
        "the program did not finish: {:?}",
        lines(&out).iter().rev().take(3).collect::<Vec<_>>()
    );
    let tail: Vec<String> = lines(&out).into_iter().rev().take(5).rev().collect();
    assert_eq!(
        tail,
        [
            "sleeper 3 5 sleeper 10",
            "joined",
            "robust EOWNERDEAD",
            "usr2 t4",
            "altstack ok"
        ],
        "the sleeper's policy (SCHED_BATCH), nice value, name and parent-death signal, \
         pthread_join, the robust list, the thread's pending signal and its altstack"
    );
}

#[test]
fn a_stopped_process_comes_back_stopped() {
    let env = Env::new();
    let (id, out) = start(&env, "stopped");
    let child_out = PathBuf::from(format!("{}.child", out.display()));
    assert!(wait_until(T, || read(&out) == "stopped 19"));
    let v = checkpoint_kill(&env, id);
    let n = numbers(&child_out).len();
    restart(&env, id, v);
    // The child is stopped again and its parent sees it so.
    let rec = env.registry().load(id).unwrap();
    let mut child = 0;
    assert!(wait_until(T, || {
        child = rec
            .cgroup
            .pids()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != rec.root_pid)
            .max()
            .unwrap_or(0);
        child > 0 && common::proc_state(child) == 'T'
    }));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(numbers(&child_out).len(), n, "the stopped child ran");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert!(wait_until(T, || lines(&out).last().map(String::as_str)
        == Some("continued")));
    assert!(wait_until(T, || numbers(&child_out).len() > n + 5));
    assert_consecutive(&child_out);
}

/// The busy program's last "alive USR1 BAD" line.
fn alive(out: &Path) -> (i64, i64) {
    lines(out)
        .last()
        .and_then(|l| {
            let v: Vec<i64> = l
                .split(' ')
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2).then(|| (v[0], v[1]))
        })
        .unwrap_or((-1, -1))
}

/// Kills or interrupts `checkpoint -c` at `moments`, each time checking that the
/// application still runs, still catches SIGUSR1 and finds its memory intact,
/// and that no version was written.
fn interrupt_checkpoints(mode: &str, moments: &[u64]) {
    let env = Env::new();
    let prog = cc(env.state.path(), "busy");
    let out = env.state.path().join("out");
    let id = env.detach(&[prog.to_str().unwrap(), out.to_str().unwrap(), "512", mode]);
    assert!(wait_until(Duration::from_secs(60), || alive(&out).0 == 0));
    let host = app_process(&env, id);
    let signals = [
        nix::sys::signal::Signal::SIGKILL,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ];
    let mut usr1 = 0;
    // A checkpoint may end before the signal reaches it: then its version is
    // complete and stays.
    let mut finished = 0;
    // After `what`, the application's handler counts its `usr1`-th SIGUSR1
    // and finds its memory intact.
    let answers = |usr1: i64, what: &str| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(host),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap_or_else(|e| panic!("{what}: the application is gone: {e}"));
        assert!(
            wait_until(T, || alive(&out) == (usr1, 0)),
            "{what}: the application does not answer: {:?}",
            alive(&out)
        );
    };
    for (i, ms) in moments.iter().enumerate() {
        let mut c = env.cmd("checkpoint");
        let child = c
            .args(["-c", &id.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*ms));
        let sig = signals[i % 3];
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        if child.wait_with_output().unwrap().status.success() {
            finished += 1;
        }
        usr1 += 1;
        answers(usr1, &format!("{sig} after {ms} ms"));
    }
    // The same, with the checkpointer killed while calls are injected: into
    // the leader, or into every other thread at once.
    for fault in ["injection", "injection-threads"] {
        let o = env
            .cmd("checkpoint")
            .env("XOS_CKPT_FAULT", fault)
            .args(["-c", &id.to_string()])
            .output()
            .unwrap();
        assert!(!o.status.success());
        usr1 += 1;
        answers(usr1, &format!("killed at {fault}"));
    }
    assert_eq!(
        xos::ckpt::image::versions(env.state.path(), id).len(),
        finished,
        "a version was left by an interrupted checkpoint"
    );
    // The next checkpoint works and removes what the killed ones left.
    checkpoint(&env, id, false);
    let left: Vec<String> = std::fs::read_dir(xos::ckpt::image::app_dir(env.state.path(), id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Versions, and where the signal restorer was found (kept on purpose).
        .filter(|n| n.parse::<u64>().is_err() && n != ".restorers")
        .collect();
    assert!(left.is_empty(), "left in the images directory: {left:?}");
}

#[test]
fn the_next_checkpoint_removes_what_a_killed_one_left() {
    // A killed checkpointer leaves its temporary version, or the temporary
    // file of a cache it was replacing (fsutil::write_atomic).
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 2));
    let dir = xos::ckpt::image::app_dir(env.state.path(), id);
    std::fs::create_dir_all(dir.join(".7.tmp")).unwrap();
    std::fs::write(dir.join(".7.tmp").join("pages-2.img"), "x").unwrap();
    std::fs::write(dir.join("..restorers.tmp.4242"), "x").unwrap();
    checkpoint(&env, id, false);
    for left in [".7.tmp", "..restorers.tmp.4242"] {
        assert!(!dir.join(left).exists(), "{left} is still there");
    }
    checkpoint_kill(&env, id);
}

#[test]
fn a_killed_checkpoint_leaves_a_busy_application_intact() {
    let moments: Vec<u64> = (0..20).map(|i| 5 + i * 40).collect();
    interrupt_checkpoints("busy", &moments);
}

#[test]
fn a_killed_checkpoint_leaves_a_pausing_application_intact() {
    interrupt_checkpoints("pause", &[5, 20, 60, 150, 300, 600]);
}

#[test]
fn one_operation_on_an_application_at_a_time() {
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    let run = |args: &[&str]| {
        let mut c = env.cmd(args[0]);
        c.args(&args[1..])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let app = id.to_string();
    for _ in 0..3 {
        let a = run(&["checkpoint", "-c", &app]);
        let b = run(&["checkpoint", "-c", &app]);
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let ok = [a.status.success(), b.status.success()];
        assert_eq!(
            ok.iter().filter(|x| **x).count(),
            1,
            "{} / {}",
            show(&a),
            show(&b)
        );
        let failed = if ok[0] { &b } else { &a };
        assert!(
            String::from_utf8_lossy(&failed.stderr)
                .contains("a checkpoint is already in progress (pid "),
            "{}",
            show(failed)
        );
    }
    // With --wait, the second one waits its turn instead.
    let a = run(&["checkpoint", "-c", "--wait", &app]);
    let b = run(&["checkpoint", "-c", "--wait", &app]);
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    let v = checkpoint_kill(&env, id);
    // Two restarts and a checkpoint at once: one application comes back.
    let ver = v.to_string();
    let r1 = run(&[
        "restart",
        "--detach",
        "--stdout",
        "/dev/null",
        "--stderr",
        "/dev/null",
        &app,
        &ver,
    ]);
    let r2 = run(&[
        "restart",
        "--detach",
        "--stdout",
        "/dev/null",
        "--stderr",
        "/dev/null",
        &app,
        &ver,
    ]);
    let (r1, r2) = (
        r1.wait_with_output().unwrap(),
        r2.wait_with_output().unwrap(),
    );
    assert_eq!(
        [r1.status.success(), r2.status.success()]
            .iter()
            .filter(|x| **x)
            .count(),
        1,
        "{} / {}",
        show(&r1),
        show(&r2)
    );
    let n = numbers(&out).len();
    assert!(wait_until(T, || numbers(&out).len() > n + 3));
    std::thread::sleep(Duration::from_millis(300));
    assert_consecutive(&out);
    let rec = env.registry().load(id).unwrap();
    let procs: Vec<i32> = rec
        .cgroup
        .pids()
        .unwrap()
        .into_iter()
        .filter(|p| *p != rec.root_pid)
        .collect();
    assert_eq!(procs.len(), 1, "one copy of the application runs");
    // A checkpoint racing a restart: the restart finds the application running,
    // or the checkpoint finds the restart in progress; never two copies.
    let mut v = checkpoint_kill(&env, id).to_string();
    for _ in 0..3 {
        let r = run(&[
            "restart",
            "--detach",
            "--stdout",
            "/dev/null",
            "--stderr",
            "/dev/null",
            &app,
            &v,
        ]);
        let c = run(&["checkpoint", "-c", &app]);
        let (r, c) = (r.wait_with_output().unwrap(), c.wait_with_output().unwrap());
        assert!(
            r.status.success() || c.status.success(),
            "{} / {}",
            show(&r),
            show(&c)
        );
        let n = numbers(&out).len();
        assert!(wait_until(T, || numbers(&out).len() > n + 3), "not running");
        let rec = env.registry().load(id).unwrap();
        let procs = rec.cgroup.pids().unwrap().len();
        assert_eq!(procs, 2, "the init and one copy of the application");
        v = checkpoint_kill(&env, id).to_string();
    }
}

#[test]
fn threaded_tools_give_the_same_output_as_an_uninterrupted_run() {
    let env = Env::new();
    let dir = env.state.path();
    // Input: 48 MiB of compressible but not trivial text.
    let input = dir.join("input");
    let py = format!(
        "import random\nr=random.Random(7)\nw=[''.join(r.choice('abcdefgh') for _ in range(r.randint(2,9))) for _ in range(5000)]\n\
         f=open('{}','w')\nn=0\nwhile n < 48<<20:\n    l=' '.join(r.choice(w) for _ in range(12))+'\\n'\n    f.write(l); n+=len(l)\n",
        input.display()
    );
    assert!(Command::new("python3")
        .args(["-c", &py])
        .status()
        .unwrap()
        .success());
    let script = dir.join("job.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncd {d}\nxz -T2 -6 -c input > input.xz\nsort --parallel=2 -S 8M input > sorted\n\
             python3 -c \"\nimport threading,hashlib\nres={{}}\ndef work(k):\n    h=hashlib.sha256()\n    for i in range(200000):\n        h.update(str(i*k).encode())\n    res[k]=h.hexdigest()\nts=[threading.Thread(target=work,args=(k,)) for k in range(4)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nopen('py.out','w').write(repr(sorted(res.items())))\n\"\necho done > done\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The reference run, uninterrupted.
    assert!(Command::new(&script).status().unwrap().success());
    let reference: Vec<Vec<u8>> = ["input.xz", "sorted", "py.out"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    for f in ["input.xz", "sorted", "py.out", "done"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let id = env.detach(&[script.to_str().unwrap()]);
    // Checkpoint and restart it several times while it works.
    let mut cycles = 0;
    while !dir.join("done").exists() && cycles < 6 {
        std::thread::sleep(Duration::from_millis(400));
        if env.registry().load(id).is_err() {
            break;
        }
        let o = env
            .cmd("checkpoint")
            .args(["-c", "--kill", &id.to_string()])
            .output()
            .unwrap();
        if !o.status.success() {
            // The job ended meanwhile.
            assert!(dir.join("done").exists(), "checkpoint: {}", show(&o));
            break;
        }
        wait_gone(&env, id);
        let v = xos::ckpt::image::versions(dir, id).last().copied().unwrap();
        restart(&env, id, v);
        cycles += 1;
    }
    assert!(
        cycles >= 2,
        "the job ended before it could be checkpointed twice"
    );
    assert!(wait_until(Duration::from_secs(120), || dir
        .join("done")
        .exists()));
    for (f, want) in ["input.xz", "sorted", "py.out"].iter().zip(&reference) {
        assert!(std::fs::read(dir.join(f)).unwrap() == *want, "{f} differs");
    }
}

#[test]
fn a_parent_blocked_in_vfork_is_checkpointed_once_its_child_execs() {
    let env = Env::new();
    let (id, out) = start(&env, "vfork");
    cycles_keep_counting(&env, id, &out, 4);
}

#[test]
fn twenty_cycles_of_a_threaded_program() {
    let env = Env::new();
    let (id, out) = start(&env, "threads");
    let mut before = vec![0; 6];
    for cycle in 0..20 {
        assert!(
            wait_until(T, || {
                let now = ticks(&out);
                now.len() == 6 && now.iter().zip(&before).all(|(n, b)| n > b)
            }),
            "cycle {cycle}: no progress from {before:?}"
        );
        let v = checkpoint_kill(&env, id);
        before = ticks(&out);
        restart(&env, id, v);
    }
    std::fs::write(format!("{}.stop", out.display()), "").unwrap();
    assert!(wait_until(T, || lines(&out).last().map(String::as_str)
        == Some("altstack ok")));
    assert!(lines(&out).iter().any(|l| l == "robust EOWNERDEAD"));
}

#[test]
fn threads_that_come_and_go_do_not_break_a_checkpoint() {
    let env = Env::new();
    let (id, out) = start(&env, "churn");
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    // Checkpoints that leave it running, then one that kills it.
    for v in 1..=5 {
        assert_eq!(checkpoint(&env, id, false), v);
    }
    let v = checkpoint_kill(&env, id);
    let last = assert_consecutive(&out);
    restart(&env, id, v);
    assert!(wait_until(T, || numbers(&out).len() as i64 > last + 3));
    assert_consecutive(&out);
}

#[test]
fn unreaped_children_are_still_there_for_their_parent() {
    let env = Env::new();
    let (id, out) = start(&env, "zombie");
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    let v = checkpoint_kill(&env, id);
    let n = numbers(&out).len() as i64;
    restart(&env, id, v);
    assert!(wait_until(T, || numbers(&out).len() as i64 > n + 3));
    std::fs::write(format!("{}.reap", out.display()), "").unwrap();
    assert!(wait_until(T, || lines(&out).last().map(String::as_str)
        == Some("signal 15")));
    let tail: Vec<String> = lines(&out).into_iter().rev().take(2).rev().collect();
    assert_eq!(tail, ["exit 7", "signal 15"]);
}

/// The last "tick T SEM PLAIN USR1 PIPE" line of the special-files program.
fn special_tick(out: &Path) -> Vec<i64> {
    lines(out)
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("tick "))
        .map(|l| l.split(' ').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default()
}

fn lock_is_free(file: &Path, posix: bool) -> bool {
    let py = if posix {
        "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB, 10, 10)\nexcept OSError:\n    sys.exit(1)\n"
    } else {
        "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n    fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(1)\n"
    };
    Command::new("python3")
        .args(["-c", py])
        .arg(file)
        .status()
        .unwrap()
        .success()
}

#[test]
fn eventfd_signalfd_timerfd_epoll_locks_and_flags_come_back() {
    let env = Env::new();
    let (id, out) = start(&env, "special");
    let flock_file = PathBuf::from(format!("{}.flock", out.display()));
    let posix_file = PathBuf::from(format!("{}.posix", out.display()));
    assert!(wait_until(T, || special_tick(&out)
        .first()
        .is_some_and(|t| *t >= 5)));
    let host = app_process(&env, id);
    // One at a time: two standard signals sent at once are one.
    for n in 1..=2 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(host),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        assert!(wait_until(T, || special_tick(&out).get(3) == Some(&n)));
    }
    assert!(!lock_is_free(&flock_file, false) && !lock_is_free(&posix_file, true));
    let v = checkpoint_kill(&env, id);
    let before = special_tick(&out);
    // A lock taken by someone else meanwhile makes the restart fail cleanly.
    // -o: the lock stays with flock(1) itself, not with its sleep.
    let mut holder = Command::new("flock")
        .args(["-n", "-o"])
        .arg(&flock_file)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let o = env
        .cmd("restart")
        .args(["--detach", &id.to_string(), &v.to_string()])
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another process holds a conflicting lock"),
        "{}",
        show(&o)
    );
    assert!(
        env.registry().load(id).is_err(),
        "a failed restart left the application"
    );
    restart(&env, id, v);
    // Timer ticks go on through epoll; the semaphore keeps counting down from
    // where it was, the plain counter up; the signalfd count and the drained
    // bytes of the non-blocking, edge-triggered pipe go on.
    assert!(
        wait_until(T, || special_tick(&out)[0] > before[0] + 5),
        "no tick after restart: {before:?} -> {:?}",
        special_tick(&out)
    );
    let after = special_tick(&out);
    assert!(
        after[1] < before[1] && after[1] > 800,
        "semaphore {before:?} -> {after:?}"
    );
    assert!(after[2] > before[2], "eventfd {before:?} -> {after:?}");
    assert!(after[4] > before[4], "pipe {before:?} -> {after:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app_process(&env, id)),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    assert!(wait_until(T, || special_tick(&out).get(3) == Some(&3)));
    assert!(
        !lock_is_free(&flock_file, false),
        "the flock was not taken again"
    );
    assert!(
        !lock_is_free(&posix_file, true),
        "the POSIX lock was not taken again"
    );
}

#[test]
fn a_file_changed_since_the_checkpoint_is_refused() {
    let env = Env::new();
    let (id, out) = start(&env, "counter");
    assert!(wait_until(T, || numbers(&out).len() >= 5));
    let v = checkpoint_kill(&env, id);
    // The output file, open for writing, is truncated before the restart.
    std::fs::write(&out, "1\n").unwrap();
    let o = env
        .cmd("restart")
        .args(["--detach", &id.to_string(), &v.to_string()])
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{} changed since the checkpoint", out.display()))
            && err.contains("--allow-changed-files"),
        "{err}"
    );
    assert!(env.registry().load(id).is_err());
    let o = env
        .cmd("restart")
        .args([
            "--detach",
            "--allow-changed-files",
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
    assert!(wait_until(T, || std::fs::metadata(&out)
        .map(|m| m.len())
        .unwrap_or(0)
        > 10));
}

#[test]
fn deleted_files_and_memfds_come_back_with_their_content() {
    let env = Env::new();
    let dir = env.state.path();
    let script = dir.join("ghosts.py");
    std::fs::write(
        &script,
        "import fcntl, mmap, os, sys, tempfile, time\n\
         out = open(sys.argv[1], 'a', buffering=1)\n\
         t = tempfile.TemporaryFile(dir=os.path.dirname(sys.argv[1]))\n\
         t.write(b'ghost ' * 50000); t.flush()\n\
         m = os.memfd_create('xos-test', os.MFD_ALLOW_SEALING)\n\
         os.write(m, b'memfd ' * 2000)\n\
         fcntl.fcntl(m, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)\n\
         mm = mmap.mmap(m, 4096)\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1\n\
         \x20   mm[0:8] = n.to_bytes(8, 'little')\n\
         \x20   t.seek(299994); tail = t.read(6).decode().strip()\n\
         \x20   gone = os.readlink(f'/proc/self/fd/{t.fileno()}').endswith('(deleted)')\n\
         \x20   seen = int.from_bytes(os.pread(m, 8, 0), 'little')\n\
         \x20   seals = fcntl.fcntl(m, fcntl.F_GET_SEALS)\n\
         \x20   out.write(f'{n} {tail} {gone} {seen == n} {os.pread(m, 6, 8).decode()} {seals}\\n')\n\
         \x20   time.sleep(0.01)\n",
    )
    .unwrap();
    let out = dir.join("out");
    let id = env.detach(&["python3", script.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(wait_until(T, || lines(&out).len() >= 5));
    let v = checkpoint_kill(&env, id);
    let n = lines(&out).len();
    restart(&env, id, v);
    assert!(
        wait_until(T, || lines(&out).len() > n + 5),
        "no progress after restart"
    );
    for (i, l) in lines(&out).iter().enumerate() {
        assert_eq!(
            l,
            &format!("{} ghost True True mfd me 2", i + 1),
            "line {} after restart at {n}",
            i + 1
        );
    }
    // Too large for the limit: refused, the application runs on.
    let o = env
        .cmd("checkpoint")
        .args(["-c", "--ghost-limit", "100K", &id.to_string()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("more than the limit of 0.1 MiB (--ghost-limit)"),
        "{}",
        show(&o)
    );
}

#[test]
fn a_fifo_between_two_processes_keeps_its_unread_data() {
    let env = Env::new();
    let dir = env.state.path();
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = dir.join("out");
    // A writer ahead of a slow reader: the FIFO holds lines in flight.
    let script = format!(
        "(i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo $i; done) > {f} &\n\
         while read n; do echo $n >> {o}; sleep 0.005; done < {f}\n",
        f = fifo.display(),
        o = out.display()
    );
    let id = env.detach(&["bash", "-c", &script]);
    assert!(wait_until(T, || numbers(&out).len() >= 20));
    let v = checkpoint_kill(&env, id);
    let last = assert_consecutive(&out);
    restart(&env, id, v);
    assert!(wait_until(T, || numbers(&out).len() as i64 > last + 50));
    assert_consecutive(&out);
}

#[test]
fn inotify_watches_come_back_with_their_descriptors() {
    let env = Env::new();
    let dir = env.state.path();
    let out = dir.join("out");
    std::fs::create_dir(dir.join("out.d")).unwrap();
    std::fs::create_dir(dir.join("out.e")).unwrap();
    let prog = cc(dir, "inotify");
    let id = env.detach(&[prog.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(wait_until(T, || read(&out) == "ready 2"));
    std::fs::write(dir.join("out.d/before"), "").unwrap();
    assert!(wait_until(T, || lines(&out).len() == 2));
    let v = checkpoint_kill(&env, id);
    restart(&env, id, v);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(dir.join("out.d/after"), "").unwrap();
    std::fs::write(dir.join("out.e/ignored"), "").unwrap();
    assert!(wait_until(T, || lines(&out).len() >= 3));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lines(&out),
        ["ready 2", "create before 2", "create after 2"]
    );
}

#[test]
fn files_given_as_stdio_are_reopened_at_their_offsets() {
    let env = Env::new();
    let dir = env.state.path();
    let input = dir.join("input");
    let text: String = (1..=3000).map(|i| format!("{i}\n")).collect();
    std::fs::write(&input, &text).unwrap();
    let out = dir.join("out");
    let o = env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "--stdin"])
        .arg(&input)
        .arg("--stdout")
        .arg(&out)
        .args(["--stderr", "/dev/null", "bash", "-c"])
        .arg("while read l; do echo $l; sleep 0.002; done")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let id: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    for cycle in 0..2 {
        let n = numbers(&out).len();
        assert!(
            wait_until(T, || numbers(&out).len() > n + 50),
            "cycle {cycle}: {n} -> {} lines",
            lines(&out).len()
        );
        let v = checkpoint_kill(&env, id);
        // No --stdin/--stdout: the files are reopened where they were.
        let o = env
            .cmd("restart")
            .args([
                "--detach",
                "--stderr",
                "/dev/null",
                &id.to_string(),
                &v.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
    }
    assert!(wait_until(Duration::from_secs(60), || numbers(&out).len() >= 3000));
    assert_eq!(assert_consecutive(&out), 3000);
}

/// A file of /proc open part-read (its size says 0 bytes, less than the
/// offset) is not a file that changed: it is opened again.
#[test]
fn a_proc_file_open_part_read_is_opened_again() {
    let env = Env::new();
    let out = env.state.path().join("out");
    let script = format!(
        "exec 3</proc/self/status; read -r first <&3; i=0; \
         while true; do i=$((i+1)); echo $i >> {}; sleep 0.01; done",
        out.display()
    );
    let id = env.detach(&["bash", "-c", &script]);
    cycles_keep_counting(&env, id, &out, 2);
}

#[test]
fn a_shell_loop_that_forks_all_the_time_survives_many_cycles() {
    let env = Env::new();
    let out = env.state.path().join("out");
    // A child is forked and executes sleep every few milliseconds: checkpoints
    // meet children before, inside and after execve.
    let script = format!(
        "i=0; while true; do i=$((i+1)); echo $i >> {}; sleep 0.002; done",
        out.display()
    );
    let id = env.detach(&["bash", "-c", &script]);
    cycles_keep_counting(&env, id, &out, 15);
}

/// Starts tests/ckpt_progs/procstate.c in `mode`, which checks its own state
/// every 20 ms; after a checkpoint --kill and restart it must go on finding
/// everything as it was set. Returns the environment and the output file.
fn self_check_survives_restart(mode: &str) -> (Env, PathBuf) {
    program_check_survives_restart("procstate", mode)
}

/// [`self_check_survives_restart`] of program `name` given `mode`.
fn program_check_survives_restart(name: &str, mode: &str) -> (Env, PathBuf) {
    program_check_with(name, mode, || {})
}

/// [`program_check_survives_restart`], calling `between` after the
/// checkpoint and before the restart.
fn program_check_with(name: &str, mode: &str, between: impl FnOnce()) -> (Env, PathBuf) {
    let env = Env::new();
    let prog = cc(env.state.path(), name);
    let out = env.state.path().join("out");
    let id = env.detach(&[prog.to_str().unwrap(), out.to_str().unwrap(), mode]);
    let oks = |out: &Path| lines(out).iter().filter(|l| l.starts_with("ok ")).count();
    let no_bad = |out: &Path| {
        let l = lines(out);
        assert!(!l.iter().any(|l| !l.starts_with("ok ")), "{mode}: {l:?}");
    };
    assert!(wait_until(T, || oks(&out) >= 3 || lines(&out).len() > oks(&out)));
    no_bad(&out);
    let v = checkpoint_kill(&env, id);
    let before = oks(&out);
    between();
    restart(&env, id, v);
    assert!(wait_until(T, || oks(&out) >= before + 5
        || lines(&out).len() > oks(&out)));
    no_bad(&out);
    // Counted on from where it was.
    let last = lines(&out).last().cloned().unwrap_or_default();
    assert_eq!(last, format!("ok {}", oks(&out)), "{mode}");
    (env, out)
}

#[test]
fn madvise_advice_mlock_and_growsdown_come_back() {
    self_check_survives_restart("advice");
}

#[test]
fn prctl_settings_securebits_and_personality_come_back() {
    self_check_survives_restart("prctl");
}

/// A semaphore set and a message queue without any shared memory come back
/// with their values, messages, keys and ids (the application's own IPC
/// namespace is saved whenever it holds anything).
#[test]
fn sysv_semaphores_and_message_queues_come_back() {
    program_check_survives_restart("sysvobj", "");
}

/// The SEM_UNDO lists of two processes, measured by checkpoint --kill, are
/// theirs again after restart: when each ends, the kernel gives back exactly
/// its part.
#[test]
fn sem_undo_lists_come_back_after_checkpoint_kill() {
    let env = Env::new();
    let prog = cc(env.state.path(), "semundo");
    let out = env.state.path().join("out");
    let go = env.state.path().join("go");
    let id = env.detach(&[
        prog.to_str().unwrap(),
        out.to_str().unwrap(),
        go.to_str().unwrap(),
    ]);
    let oks = || lines(&out).iter().filter(|l| l.starts_with("ok ")).count();
    assert!(wait_until(T, || oks() >= 3), "{:?}", lines(&out));
    let v = checkpoint_kill(&env, id);
    let before = oks();
    restart(&env, id, v);
    assert!(wait_until(T, || oks() >= before + 3), "{:?}", lines(&out));
    std::fs::write(&go, "").unwrap();
    assert!(
        wait_until(T, || lines(&out)
            .iter()
            .any(|l| l == "B undone" || l.starts_with("bad"))),
        "{:?}",
        lines(&out)
    );
    let l = lines(&out);
    assert!(l.iter().any(|l| l == "A undone"), "{l:?}");
    assert!(!l.iter().any(|l| l.starts_with("bad")), "{l:?}");
}

/// python3 installs its handlers with SA_ONSTACK and no alternate stack:
/// after restart a signal must reach the handler (it once found the
/// restorer's alternate stack, unmapped, and died of SIGSEGV), and Ctrl-C
/// is still a KeyboardInterrupt.
#[test]
fn python_signal_handlers_work_after_restart() {
    let env = Env::new();
    let out = env.state.path().join("out");
    let py = format!(
        "import signal, time\n\
         got = 0\n\
         def h(*a):\n    global got\n    got += 1\n\
         signal.signal(signal.SIGUSR1, h)\n\
         n = 0\n\
         try:\n    while True:\n        n += 1\n        \
         open('{o}', 'a').write(f'{{n}} {{got}}\\n')\n        time.sleep(0.02)\n\
         except KeyboardInterrupt:\n    open('{o}', 'a').write('interrupted\\n')\n",
        o = out.display()
    );
    let id = env.detach(&["python3", "-c", &py]);
    assert!(
        wait_until(T, || lines(&out).len() >= 3),
        "{:?}",
        lines(&out)
    );
    let v = checkpoint_kill(&env, id);
    restart(&env, id, v);
    // python3 is pid 2 of the application's namespace.
    let is_2 = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t2"))
    };
    let pids = env.registry().load(id).unwrap().cgroup.pids().unwrap();
    let main = pids.into_iter().find(is_2).unwrap();
    let got = |out: &Path| {
        lines(out)
            .last()
            .and_then(|l| l.split(' ').nth(1).map(str::to_string))
            .unwrap_or_default()
    };
    for want in ["1", "2"] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(main),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        assert!(wait_until(T, || got(&out) == want), "{:?}", lines(&out));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(main),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(
        wait_until(T, || lines(&out).last().is_some_and(|l| l == "interrupted")),
        "{:?}",
        lines(&out)
    );
}

#[test]
fn mlockall_future_comes_back() {
    self_check_survives_restart("mlockall");
    self_check_survives_restart("mlockall-onfault");
}

/// Sets the sysctl fs.suid_dumpable (not namespaced) and puts the old value
/// back when dropped.
struct SuidDumpable(String);

const SUID_DUMPABLE: &str = "/proc/sys/fs/suid_dumpable";

impl SuidDumpable {
    fn set(v: &str) -> SuidDumpable {
        let old = std::fs::read_to_string(SUID_DUMPABLE).unwrap();
        std::fs::write(SUID_DUMPABLE, v).unwrap();
        SuidDumpable(old)
    }
}

impl Drop for SuidDumpable {
    fn drop(&mut self) {
        let _ = std::fs::write(SUID_DUMPABLE, self.0.trim());
    }
}

/// Dumpable 2 (a process that changed its fsuid while fs.suid_dumpable was
/// 2) comes back as 2 where the sysctl is 2, and never as 1 (which would
/// let its user attach to it) where it is not.
#[test]
fn dumpable_2_comes_back_as_2_or_0_never_1() {
    let _s = SuidDumpable::set("2");
    self_check_survives_restart("dumpable2");
    let s = SuidDumpable::set("2");
    program_check_with("procstate", "dumpable-not1", move || drop(s));
}

#[test]
fn a_deleted_executable_and_working_directory_stay_deleted() {
    let (env, out) = self_check_survives_restart("deleted");
    // Nothing of the re-created directory is left behind.
    let cwd = out.with_extension("cwd");
    assert!(!cwd.exists());
    assert!(!std::fs::read_dir(env.state.path())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".xos-")));
}

/// (pid, parent, group, session) of every process of application `id`, in its
/// PID namespace, sorted.
fn process_shapes(env: &Env, id: u64) -> Vec<(i32, i32, i32, i32)> {
    let rec = env.registry().load(id).unwrap();
    let pids = rec.cgroup.pids().unwrap();
    let status: Vec<(i32, String)> = pids
        .iter()
        .map(|p| {
            (
                *p,
                std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default(),
            )
        })
        .collect();
    let last = |s: &str, key: &str| -> i32 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    let ns_of = |host: i32| {
        status
            .iter()
            .find(|(p, _)| *p == host)
            .map_or(0, |(_, s)| last(s, "NSpid:"))
    };
    let mut out: Vec<_> = status
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(_, s)| {
            (
                last(s, "NSpid:"),
                ns_of(last(s, "PPid:")),
                last(s, "NSpgid:"),
                last(s, "NSsid:"),
            )
        })
        .collect();
    out.sort_unstable();
    out
}

#[test]
fn every_session_and_process_group_shape_comes_back() {
    let env = Env::new();
    let (id, out) = start(&env, "sessions");
    assert!(wait_until(T, || numbers(&out).len() >= 10));
    let before = process_shapes(&env, id);
    // The shapes the program builds: a group and a session whose leaders ended.
    let pids: Vec<i32> = before.iter().map(|s| s.0).collect();
    assert!(before.iter().any(|s| !pids.contains(&s.2)), "{before:?}");
    assert!(
        before.iter().any(|s| !pids.contains(&s.3) && s.3 > 1),
        "{before:?}"
    );
    let shape = |pid: i32| before.iter().find(|s| s.0 == pid).copied();
    // Adopted by a subreaper (not the init) from a session whose leader ended.
    assert!(
        before
            .iter()
            .any(|s| s.1 > 1 && !pids.contains(&s.3) && shape(s.1).is_some_and(|p| p.3 != s.3)),
        "{before:?}"
    );
    // In the group of a living process made after it, not its ancestor.
    assert!(
        before
            .iter()
            .any(|s| s.2 > s.0 && pids.contains(&s.2) && shape(s.2).is_some_and(|l| l.1 != s.0)),
        "{before:?}"
    );
    let v = checkpoint_kill(&env, id);
    let at_kill = assert_consecutive(&out);
    restart(&env, id, v);
    assert!(wait_until(T, || numbers(&out).len() as i64 >= at_kill + 5));
    assert_consecutive(&out);
    assert_eq!(process_shapes(&env, id), before);
}

/// The last "N EVENTFD TICKS INOTIFY USR1" line of the shared-objects program.
fn shared_counts(out: &Path) -> Vec<i64> {
    last_numbers(out, "")
}

#[test]
fn special_files_shared_between_processes_stay_shared() {
    let env = Env::new();
    let (id, out) = start(&env, "sharedfd");
    let grown = |at: &[i64], by: i64| {
        let now = shared_counts(&out);
        now.len() == 5 && [0, 1, 2, 4].iter().all(|&i| now[i] >= at[i] + by)
    };
    assert!(wait_until(T, || grown(&[0; 5], 5)), "{:?}", lines(&out));
    let v = checkpoint_kill(&env, id);
    let at = shared_counts(&out);
    restart(&env, id, v);
    // The child's writes and signals still reach the parent, the timer ticks.
    assert!(
        wait_until(T, || grown(&at, 10)),
        "{at:?} {:?}",
        shared_counts(&out)
    );
    // The inotify watch is there: a file made now is seen.
    std::fs::write(out.with_extension("d").join("new"), "").unwrap();
    assert!(wait_until(T, || shared_counts(&out)[3] > at[3]));
    // Nothing went back: the counts go on from the saved ones.
    assert!(lines(&out).windows(2).all(|w| w[0]
        .split(' ')
        .zip(w[1].split(' '))
        .all(|(a, b)| { a.parse::<i64>().unwrap() <= b.parse::<i64>().unwrap() })));
}

#[test]
fn leases_and_sigio_owners_come_back() {
    program_check_survives_restart("owners", "");
}

#[test]
fn what_cannot_be_saved_is_refused_in_one_line_each() {
    for (mode, says) in [
        ("io_uring", "an io_uring instance"),
        ("perf", "a perf event"),
        ("userfaultfd", "a userfaultfd"),
        ("pidfd-outside", "outside the application"),
        ("tty", "a terminal other than the application's own"),
        ("proc-mem", "the memory of another process"),
        ("inotify-queued", "events not read yet"),
    ] {
        let err = checkpoint_is_refused_with("refused", &[mode]);
        assert!(
            err.contains("process 2") && err.contains(says),
            "{mode}: {err}"
        );
    }
}

#[test]
fn a_pidfd_of_a_child_still_names_the_child() {
    let env = Env::new();
    let prog = cc(env.state.path(), "pidfd");
    let out = env.state.path().join("out");
    let id = env.detach(&[prog.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(wait_until(T, || lines(&out).len() >= 3));
    let v = checkpoint_kill(&env, id);
    let n = lines(&out).len();
    restart(&env, id, v);
    assert!(wait_until(T, || lines(&out).len() >= n + 3));
    // The pidfd kills and reaps the very child: pid 3 in the application.
    let rec = env.registry().load(id).unwrap();
    let parent = rec.command_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(parent),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    assert!(wait_until(T, || lines(&out)
        .last()
        .is_some_and(|l| l.starts_with("killed"))));
    let l = lines(&out);
    assert!(
        l[..l.len() - 1].iter().all(|l| l.starts_with("ok ")),
        "{l:?}"
    );
    assert_eq!(l.last().unwrap(), "killed 3");
}

#[test]
fn sysv_shared_memory_stays_attached_with_its_ids() {
    let (env, _) = program_check_survives_restart("sysvshm", "");
    // The image holds the IPC namespace it needed.
    let v = xos::ckpt::image::versions(env.state.path(), 1);
    let dir = xos::ckpt::image::version_dir(env.state.path(), 1, v[0]);
    assert!(dir.join("ipc").is_dir());
}

/// Starts `args` detached with its stdout and stderr in `out` and `out.err`.
fn detach_to(env: &Env, out: &Path, args: &[&str]) -> u64 {
    let o = env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "--stdout"])
        .arg(out)
        .arg("--stderr")
        .arg(out.with_extension("err"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "krgcr-run: {}", show(&o));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// Restarts without redirecting anything: files given to krgcr-run are
/// reopened where they were.
fn restart_in_place(env: &Env, id: u64, v: u64) {
    let o = env
        .cmd("restart")
        .args(["--detach", &id.to_string(), &v.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "restart: {}", show(&o));
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

#[test]
fn tail_f_follows_a_file_across_a_restart() {
    let env = Env::new();
    let input = env.state.path().join("in");
    let out = env.state.path().join("out");
    append(&input, "1\n2\n");
    let id = detach_to(
        &env,
        &out,
        &["tail", "-n", "+1", "-f", input.to_str().unwrap()],
    );
    assert!(wait_until(T, || lines(&out) == ["1", "2"]));
    append(&input, "3\n");
    assert!(wait_until(T, || lines(&out).len() == 3));
    let v = checkpoint_kill(&env, id);
    restart_in_place(&env, id, v);
    // Written after the restart: seen through the restored inotify watch.
    append(&input, "4\n5\n");
    assert!(
        wait_until(T, || lines(&out).len() >= 5),
        "{:?}",
        lines(&out)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&out), ["1", "2", "3", "4", "5"]);
}

#[test]
fn python_selectors_over_a_pipe_and_an_eventfd_go_on() {
    let env = Env::new();
    let out = env.state.path().join("out");
    let script = "import os, selectors, time\n\
                  r, w = os.pipe(); os.set_blocking(r, False)\n\
                  e = os.eventfd(0, os.EFD_NONBLOCK)\n\
                  sel = selectors.DefaultSelector()\n\
                  assert type(sel).__name__ == 'EpollSelector'\n\
                  sel.register(r, selectors.EVENT_READ, 'pipe')\n\
                  sel.register(e, selectors.EVENT_READ, 'eventfd')\n\
                  n = {'pipe': 0, 'eventfd': 0}\n\
                  i = 0\n\
                  while True:\n\
                  \x20   i += 1\n\
                  \x20   os.write(w, b'x'); os.eventfd_write(e, 2)\n\
                  \x20   for key, _ in sel.select(1):\n\
                  \x20       if key.data == 'pipe': n['pipe'] += len(os.read(r, 100))\n\
                  \x20       else: n['eventfd'] += os.eventfd_read(e)\n\
                  \x20   print(i, n['pipe'], n['eventfd'], flush=True)\n\
                  \x20   time.sleep(0.02)\n";
    let id = detach_to(&env, &out, &["python3", "-c", script]);
    let last = || last_numbers(&out, "");
    assert!(wait_until(T, || last().first().is_some_and(|i| *i >= 5)));
    let v = checkpoint_kill(&env, id);
    let at = last();
    restart_in_place(&env, id, v);
    assert!(wait_until(T, || last()
        .first()
        .is_some_and(|i| *i >= at[0] + 10)));
    // Every byte and every count arrived, once: the totals are exact.
    let now = last();
    assert_eq!((now[1], now[2]), (now[0], 2 * now[0]), "{at:?} -> {now:?}");
    let text = std::fs::read_to_string(out.with_extension("err")).unwrap_or_default();
    assert!(text.is_empty(), "{text}");
}

/// Whether `flock -n FILE true` gets the lock now.
fn flock_free(file: &Path) -> bool {
    Command::new("flock")
        .arg("-n")
        .arg(file)
        .arg("true")
        .status()
        .unwrap()
        .success()
}

#[test]
fn flock_1_holds_its_lock_across_a_restart() {
    let env = Env::new();
    let lock = env.state.path().join("lock");
    let out = env.state.path().join("out");
    let job = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done";
    let id = detach_to(
        &env,
        &out,
        &["flock", lock.to_str().unwrap(), "sh", "-c", job],
    );
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    assert!(!flock_free(&lock));
    let v = checkpoint_kill(&env, id);
    assert!(flock_free(&lock), "killed, the lock is free");
    let n = assert_consecutive(&out);
    restart_in_place(&env, id, v);
    assert!(wait_until(T, || numbers(&out).len() as i64 >= n + 5));
    assert!(
        !flock_free(&lock),
        "the restarted flock(1) holds its lock again"
    );
    assert_consecutive(&out);
}

#[test]
fn sqlite_in_a_transaction_keeps_its_lock_and_commits_after_restart() {
    let env = Env::new();
    let db = env.state.path().join("db");
    let out = env.state.path().join("out");
    let script = "import sqlite3, os, sys, time\n\
                  db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)\n\
                  db.execute('create table if not exists t(x)')\n\
                  db.execute('begin exclusive')\n\
                  db.execute(\"insert into t values ('from the app')\")\n\
                  n = 0\n\
                  while not os.path.exists(sys.argv[1] + '.go'):\n\
                  \x20   n += 1; print(n, flush=True); time.sleep(0.02)\n\
                  db.execute('commit')\n\
                  print('committed', flush=True)\n\
                  time.sleep(1000)\n";
    let id = detach_to(&env, &out, &["python3", "-c", script, db.to_str().unwrap()]);
    assert!(wait_until(T, || numbers(&out).len() >= 3));
    // Another writer: refused while the transaction holds the database.
    let other = || {
        Command::new("sqlite3")
            .arg(&db)
            .arg("insert into t values ('from another writer');")
            .output()
            .unwrap()
    };
    assert!(!other().status.success());
    let v = checkpoint_kill(&env, id);
    restart_in_place(&env, id, v);
    let n = numbers(&out).len();
    assert!(wait_until(T, || numbers(&out).len() >= n + 3));
    let o = other();
    assert!(!o.status.success(), "the lock was lost: {}", show(&o));
    std::fs::write(db.with_extension("go"), "").unwrap();
    assert!(wait_until(T, || lines(&out).last().map(String::as_str)
        == Some("committed")));
    let rows = Command::new("sqlite3")
        .arg(&db)
        .arg("pragma integrity_check; select x from t;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout), "ok\nfrom the app\n");
    assert!(other().status.success());
}

/// The numbers after `tag ` in the lines of `p`, in order.
fn tagged(p: &Path, tag: &str) -> Vec<i64> {
    lines(p)
        .iter()
        .filter_map(|l| l.strip_prefix(tag)?.strip_prefix(' ')?.parse().ok())
        .collect()
}

#[test]
fn an_open_file_shared_by_two_processes_keeps_one_offset() {
    let env = Env::new();
    let out = env.state.path().join("out");
    let side = env.state.path().join("side");
    // Two processes write, without O_APPEND, into the stdout krgcr-run gave
    // them and into a file the script opened: each open file is one, with one
    // offset, before and after the restart.
    let job = format!(
        "exec 3>{}; (i=0; while :; do i=$((i+1)); echo a $i; echo a $i >&3; sleep 0.01; done) & \
         i=0; while :; do i=$((i+1)); echo b $i; echo b $i >&3; sleep 0.01; done",
        side.display()
    );
    let o = env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "--stdout"])
        .arg(&out)
        .args(["bash", "-c", &job])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let id: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(wait_until(T, || tagged(&out, "a").len() >= 5
        && tagged(&out, "b").len() >= 5));
    let v = checkpoint_kill(&env, id);
    let at = (tagged(&out, "a").len(), tagged(&side, "b").len());
    restart_in_place(&env, id, v);
    assert!(wait_until(T, || tagged(&out, "a").len() >= at.0 + 20
        && tagged(&side, "b").len() >= at.1 + 20));
    for (file, tag) in [(&out, "a"), (&out, "b"), (&side, "a"), (&side, "b")] {
        let n = tagged(file, tag);
        let want: Vec<i64> = (1..=n.len() as i64).collect();
        assert_eq!(n, want, "{tag} in {}: overwritten", file.display());
    }
    assert!(lines(&out)
        .iter()
        .all(|l| l.starts_with("a ") || l.starts_with("b ")));
}

#[test]
fn character_devices_and_every_fd_flag_come_back() {
    program_check_survives_restart("fdflags", "");
}
