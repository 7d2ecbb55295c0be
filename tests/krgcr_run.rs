//! krgcr-run and checkpoint --freeze/--unfreeze/--list with the real binary on the
//! real kernel. Each test has its own state directory and cgroup parent.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{proc_state, read, show, wait_until, Env};
use xos::cgroup::FreezerState;

const T: Duration = Duration::from_secs(10);

#[test]
fn namespaces_pids_ipc_and_exit_status() {
    let env = Env::new();
    let out_file = env.state.path().join("inside");
    // The test's own private IPC namespace plays "the host": it holds a queue
    // that the application must not see.
    let script = format!(
        "ipcmk -Q >/dev/null && test $(ipcs -q | grep -c '^0x') = 1 && \
         readlink /proc/self/ns/pid /proc/self/ns/ipc && \
         exec {} sh -c 'echo pid=$$; readlink /proc/self/ns/pid /proc/self/ns/ipc; \
                        echo queues=$(ipcs -q | grep -c ^0x); cut -d\" \" -f1,4 /proc/$$/stat; exit 7' > {}",
        env.bin.path().join("krgcr-run").display(),
        out_file.display()
    );
    let o = Command::new("unshare")
        .args(["--ipc", "sh", "-c", &script])
        .env("XOS_STATE_DIR", env.state.path())
        .env("XOS_CGROUP_PARENT", &env.parent)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(7),
        "exit status of CMD is returned: {}",
        show(&o)
    );
    let outer: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let inner = std::fs::read_to_string(&out_file).unwrap();
    let inner: Vec<&str> = inner.lines().collect();
    assert_eq!(inner[0], "pid=2", "{inner:?}");
    assert_ne!(inner[1], outer[0], "PID namespace differs");
    assert_ne!(inner[2], outer[1], "IPC namespace differs");
    assert_eq!(inner[3], "queues=0", "ipcs shows nothing of the host");
    // /proc is the application's own: its pid and its parent (our init) are small.
    assert_eq!(inner[4], "2 1");
    // Nothing is left behind.
    assert!(env.registry().list().unwrap().is_empty());
    let layout = xos::cgroup::Layout::detect().unwrap();
    let g = layout.group(&env.parent).unwrap();
    assert!(g.paths().iter().all(|p| std::fs::read_dir(p)
        .map(|d| d.flatten().all(|e| !e.path().is_dir()))
        .unwrap_or(true)));
}

#[test]
fn stdio_and_cwd_are_inherited() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let err = std::fs::File::create(dir.path().join("error.log")).unwrap();
    let o = env
        .cmd("krgcr-run")
        .args(["sh", "-c", "read x; echo \"got $x\"; echo oops >&2; pwd"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"hello\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("got hello"), "{out}");
    assert!(
        out.contains(&dir.path().canonicalize().unwrap().display().to_string()),
        "{out}"
    );
    assert_eq!(read(dir.path().join("error.log")), "oops");
}

#[test]
fn a_daemonizing_program_keeps_the_application_alive() {
    let env = Env::new();
    let done = env.state.path().join("done");
    // The first process forks a child that starts a session and lives on, then exits.
    let script = format!(
        "(setsid sh -c 'sleep 1; echo finished > {}' &) ; exit 0",
        done.display()
    );
    let start = Instant::now();
    let o = env
        .cmd("krgcr-run")
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "returned before the daemon ended"
    );
    assert_eq!(read(&done), "finished");
}

#[test]
fn detached_daemon_is_listed_frozen_and_thawed() {
    let env = Env::new();
    let counter = env.state.path().join("counter");
    let script = format!(
        "(setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > {}; sleep 0.01; done' &); exit 0",
        counter.display()
    );
    let id = env.detach(&["--memory", "256M", "--pids", "64", "sh", "-c", &script]);
    let rec = env.registry().load(id).unwrap();
    // The first process has exited; the daemon keeps the application running.
    assert!(wait_until(T, || rec
        .cgroup
        .pids()
        .map(|p| p.len() >= 2)
        .unwrap_or(false)));
    assert!(wait_until(T, || read(&counter).parse::<u64>().unwrap_or(0) > 3));
    let lim = rec.cgroup.limits().unwrap();
    assert_eq!((lim.memory_max, lim.pids_max), (Some(256 << 20), Some(64)));
    let list = env.cmd("checkpoint").arg("--list").output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{id} ")) && l.contains("running")),
        "{text}"
    );

    // Freeze by application id.
    let o = env
        .cmd("checkpoint")
        .args(["--freeze", &id.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(rec.cgroup.freezer_state().unwrap(), FreezerState::Frozen);
    let pids = rec.cgroup.pids().unwrap();
    for p in &pids {
        let st = proc_state(*p);
        assert!(st == 'D' || st == 'S', "pid {p} in state {st}");
    }
    let a = read(&counter);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&counter), a, "the application ran while frozen");
    let list = env.cmd("checkpoint").arg("--list").output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("frozen"));

    // Unfreeze by the pid of a process inside the application.
    let inside = *pids.last().unwrap();
    let o = env
        .cmd("checkpoint")
        .args(["--unfreeze", &inside.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(rec.cgroup.freezer_state().unwrap(), FreezerState::Thawed);
    assert!(
        wait_until(T, || read(&counter) != a),
        "the application did not resume"
    );

    // Killing the application's init ends it; the supervisor cleans up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rec.root_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(T, || env.registry().load(id).is_err()),
        "record not removed"
    );
    assert!(
        wait_until(T, || rec.cgroup.paths().iter().all(|p| !p.exists())),
        "cgroup not removed"
    );
}

#[test]
fn sigterm_is_passed_on_and_cleanup_follows() {
    let env = Env::new();
    let mut child = env
        .cmd("krgcr-run")
        .args(["--print-id", "sleep", "1000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 32];
    let n = child.stdout.as_mut().unwrap().read(&mut first).unwrap();
    let id: u64 = String::from_utf8_lossy(&first[..n]).trim().parse().unwrap();
    let rec = env.registry().load(id).unwrap();
    assert!(wait_until(T, || rec
        .cgroup
        .pids()
        .map(|p| p.len() == 2)
        .unwrap_or(false)));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 15), "{st:?}");
    assert!(env.registry().load(id).is_err());
    assert!(rec.cgroup.paths().iter().all(|p| !p.exists()));
}

#[test]
fn failures_are_reported_and_leave_nothing() {
    let env = Env::new();
    let o = env
        .cmd("krgcr-run")
        .arg("/nonexistent/program")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/program") && err.lines().count() == 1,
        "{err}"
    );

    let o = env
        .cmd("krgcr-run")
        .args(["--memory", "lots", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));

    let o = env
        .cmd("krgcr-run")
        .args(["--cpu-weight", "0", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cpu weight"),
        "{}",
        show(&o)
    );

    let o = env
        .cmd("krgcr-run")
        .args(["--detach", "--stdout", "/nonexistent/dir/log", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/dir/log"));

    assert!(env.registry().list().unwrap().is_empty());
    let layout = xos::cgroup::Layout::detect().unwrap();
    for p in layout.group(&env.parent).unwrap().paths() {
        let left = std::fs::read_dir(&p)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        assert_eq!(left, 0, "groups left under {}", p.display());
    }

    let o = env
        .cmd("checkpoint")
        .args(["--freeze", "999"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("999"));
}

#[test]
fn corrupt_record_is_reported_by_list() {
    let env = Env::new();
    let id = env.detach(&["sleep", "1000"]);
    let rec = env.registry().load(id).unwrap();
    let mut bad = rec.clone();
    bad.id = id + 100;
    env.registry().save(&bad).unwrap();
    let p = env.state.path().join(format!("apps/{}.rec", id + 100));
    let mut data = std::fs::read(&p).unwrap();
    let n = data.len();
    data.truncate(n - 10);
    std::fs::write(&p, data).unwrap();
    let o = env.cmd("checkpoint").arg("--list").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .lines()
        .any(|l| l.starts_with(&format!("{id} "))));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}.rec", id + 100)) && err.contains("truncated"),
        "{err}"
    );
    rec.cgroup.kill(T).unwrap();
    assert!(wait_until(T, || env.registry().load(id).is_err()));
}

/// Sets a directory's modification time one hour back (an old leftover).
fn age(path: &std::path::Path) {
    let t = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("age {}: {e}", path.display()));
}

#[test]
fn two_state_directories_never_share_a_cgroup() {
    let a = Env::new();
    let b = a.sibling();
    let ia = a.detach(&["sleep", "1000"]);
    let ib = b.detach(&["sleep", "1000"]);
    assert_eq!((ia, ib), (1, 1), "ids are counted per state directory");
    let ra = a.registry().load(ia).unwrap();
    let rb = b.registry().load(ib).unwrap();
    assert_ne!(ra.cgroup.name(), rb.cgroup.name());
    let pids_b = rb.cgroup.pids().unwrap();
    assert!(!pids_b.is_empty());
    for p in ra.cgroup.pids().unwrap() {
        assert!(!pids_b.contains(&p), "pid {p} is in both groups");
    }

    // Freezing one leaves the other running.
    let o = a
        .cmd("checkpoint")
        .args(["--freeze", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(ra.cgroup.freezer_state().unwrap(), FreezerState::Frozen);
    assert_eq!(rb.cgroup.freezer_state().unwrap(), FreezerState::Thawed);
    for p in &pids_b {
        assert_ne!(
            proc_state(*p),
            'D',
            "pid {p} of the other state dir is frozen"
        );
    }
    let o = a
        .cmd("checkpoint")
        .args(["--unfreeze", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));

    // Checkpointing and killing one leaves the other untouched.
    let o = a
        .cmd("checkpoint")
        .args(["-c", "--kill", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(wait_until(T, || !ra.alive()));
    assert!(rb.alive(), "the other application was killed");
    assert_eq!(rb.cgroup.pids().unwrap(), pids_b);
    let img = xos::ckpt::load_image(a.state.path(), 1, 1).unwrap().1;
    assert_eq!(img.processes.len(), 1, "only its own sleep is saved");
    rb.cgroup.kill(T).unwrap();
}

#[test]
fn a_group_with_tasks_is_refused_and_leftovers_are_pruned() {
    let a = Env::new();
    let b = a.sibling();
    let layout = xos::cgroup::Layout::detect().unwrap();
    let ta = a.registry().token().unwrap();
    let tb = b.registry().token().unwrap();
    assert_ne!(ta, tb);

    // Something else already runs in the group application 1 would get.
    let squatter = layout.group(&format!("{}/app-1-{ta}", a.parent)).unwrap();
    squatter.create().unwrap();
    let mut sleeper = Command::new("sleep").arg("1000").spawn().unwrap();
    squatter.attach(sleeper.id() as i32).unwrap();
    let o = a.cmd("krgcr-run").args(["true"]).output().unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().count() == 1
            && err.contains(&format!("app-1-{ta}"))
            && err.contains("already holds"),
        "{err}"
    );
    assert!(squatter.exists(), "the refused group is not removed");

    // Leftovers: an old empty group of this state dir, one of the other state
    // dir, a fresh one (a launch in progress), and a record of an application
    // that is gone with its group.
    let old = layout.group(&format!("{}/app-77-{ta}", a.parent)).unwrap();
    let other = layout.group(&format!("{}/app-78-{tb}", a.parent)).unwrap();
    let fresh = layout.group(&format!("{}/app-79-{ta}", a.parent)).unwrap();
    let dead = layout.group(&format!("{}/app-80-{ta}", a.parent)).unwrap();
    for g in [&old, &other, &fresh, &dead] {
        g.create().unwrap();
    }
    for g in [&old, &other, &dead] {
        for p in g.paths() {
            age(&p);
        }
    }
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id() as i32;
    let starttime = xos::process::stat(gone_pid).unwrap().starttime;
    gone.wait().unwrap();
    let rec = xos::registry::AppRecord {
        id: 80,
        root_pid: gone_pid,
        root_starttime: starttime,
        supervisor_pid: None,
        cgroup: dead.clone(),
        namespaces: Default::default(),
        owner_uid: 0,
        owner_gid: 0,
        command: vec!["gone".into()],
        cwd: "/".into(),
        started: 0,
        checkpointer: "native".into(),
        limits: Default::default(),
        job: None,
        callback: None,
        net: Default::default(),
    };
    a.registry().save(&rec).unwrap();
    let o = a.cmd("checkpoint").arg("--prune").output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("application 80"), "{out}");
    assert!(!old.exists() && !dead.exists(), "{out}");
    assert!(
        other.exists(),
        "another state directory's group was removed"
    );
    assert!(fresh.exists(), "a group that may be starting was removed");
    assert!(
        squatter.exists(),
        "the old squatter group is not ours to remove yet"
    );
    assert!(a.registry().list().unwrap().is_empty());

    // The next start removes an old empty leftover too, and then runs.
    for p in squatter.paths() {
        age(&p);
    }
    let o = a.cmd("krgcr-run").args(["true"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        !squatter.exists(),
        "the empty leftover was not removed at start"
    );
}
