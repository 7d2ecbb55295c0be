//! xos-loader on the real kernel: JSDL jobs in containers with their limits and
//! user, submissions that return at once with random ids, end reports over
//! sockets (also to a listener that comes back late), template root
//! filesystems, and whole-container checkpoint and restart on a second node.

mod common;
mod vo_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{read, show, wait_until, Env};

const T: Duration = Duration::from_secs(20);

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", show(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn loader(env: &Env, args: &[&str]) -> Output {
    env.cmd("xos-loader").args(args).output().unwrap()
}

/// Submits and returns the container id.
fn submit(env: &Env, args: &[&str]) -> u32 {
    let mut a = vec!["submit"];
    a.extend_from_slice(args);
    let out = ok(&loader(env, &a), "submit");
    out.trim().parse().expect("a container id")
}

fn status(env: &Env, id: u32) -> Option<serde_json::Value> {
    let o = loader(env, &["status", &id.to_string()]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

/// Waits until unit `id` is gone from the node.
fn wait_gone(env: &Env, id: u32) {
    assert!(
        wait_until(T, || status(env, id).is_none()),
        "unit {id} still there: {:?}",
        status(env, id)
    );
}

/// The next report of `l`: unit `unit`'s, ended with `exit_status`.
fn expect_end(l: &mut Listener, unit: u32, exit_status: i64) -> serde_json::Value {
    let r = l.next();
    assert_eq!(r["unit"].as_u64(), Some(unit as u64), "{r}");
    assert_eq!(r["exit_status"].as_i64(), Some(exit_status), "{r}");
    r
}

/// The criu binary: `$XOS_CRIU` (scripts/test.sh sets it), else the CRIU
/// build beside the repository.
fn criu() -> PathBuf {
    std::env::var_os("XOS_CRIU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/criu/criu"))
}

/// `xcheckpoint JOB --kill` on `node`, into checkpoint directory `ck`.
fn xcheckpoint_kill(node: &Env, ck: &Path, job: &str) {
    let o = node
        .cmd("xcheckpoint")
        .env("XOS_CHECKPOINT_DIR", ck)
        .env("XOS_CRIU", criu())
        .args([job, "--kill"])
        .output()
        .unwrap();
    ok(&o, "xcheckpoint --kill");
}

/// `xrestart ARGS` on `node`, from checkpoint directory `ck`.
fn xrestart(node: &Env, ck: &Path, args: &[&str]) {
    let o = node
        .cmd("xrestart")
        .env("XOS_CHECKPOINT_DIR", ck)
        .env("XOS_CRIU", criu())
        .args(args)
        .output()
        .unwrap();
    ok(&o, "xrestart");
}

/// `xos-loader listen` on `addr`, for `count` reports.
struct Listener {
    child: Child,
    /// Lines read by a thread, so that a missing report fails the test
    /// after a while instead of hanging it.
    lines: std::sync::mpsc::Receiver<String>,
    /// The state directory, shown when a report does not come.
    state: PathBuf,
}

/// How long a test waits for a report.
const REPORT_WAIT: Duration = Duration::from_secs(60);

impl Listener {
    fn start(env: &Env, addr: &str, count: u32) -> Listener {
        let mut child = env
            .cmd("xos-loader")
            .args(["listen", addr, "--count", &count.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(|l| l.ok()) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        if let Some(p) = addr.strip_prefix("unix:") {
            assert!(wait_until(T, || Path::new(p).exists()), "no socket {p}");
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
        Listener {
            child,
            lines,
            state: env.state.path().to_path_buf(),
        }
    }

    fn next(&mut self) -> serde_json::Value {
        let line = self.lines.recv_timeout(REPORT_WAIT).unwrap_or_else(|e| {
            panic!(
                "no report within {REPORT_WAIT:?}: {e}\n{}",
                state_dump(&self.state)
            )
        });
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The units' files and the processes still running, for a failure message.
fn state_dump(state: &Path) -> String {
    let mut out = String::new();
    let units = state.join("containers");
    for e in walk(&units) {
        out.push_str(&format!("{}\n", e.display()));
        if e.extension().is_some_and(|x| x == "json") {
            out.push_str(&format!("  {}\n", read(&e)));
        }
    }
    let ps = Command::new("ps")
        .args(["-eo", "pid,ppid,pgid,stat,wchan:24,args"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out + &ps
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.clone());
        if p.is_dir() && !p.ends_with("root") {
            out.extend(walk(&p));
        }
    }
    out
}

const JSDL_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
    xmlns:jsdl-posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix"
    xmlns:aem="urn:example:aem">"#;

fn jsdl(dir: &Path, name: &str, posix: &str, extra: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "{JSDL_HEAD}\n<jsdl:JobDescription>\n\
             <jsdl:JobIdentification><jsdl:JobName>{}</jsdl:JobName></jsdl:JobIdentification>\n\
             <jsdl:Application><jsdl-posix:POSIXApplication>{posix}</jsdl-posix:POSIXApplication>\
             </jsdl:Application>\n{extra}\n</jsdl:JobDescription></jsdl:JobDefinition>\n",
            name.trim_end_matches(".jsdl")
        ),
    )
    .unwrap();
    p
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Test 1: a JSDL job with arguments, environment, stdout/stderr files, a
/// working directory, memory and process-count limits and
/// <Checkpointer>OpenVZ</Checkpointer> runs in a container, with those limits,
/// as the mapped user; a fork bomb stops at the process limit.
#[test]
fn jsdl_job_runs_in_a_container_as_the_user_with_its_limits() {
    let env = Env::new();
    let wd = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        wd.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let sock = env.state.path().join("aem.sock");
    let addr = format!("unix:{}", sock.display());
    let script = "id -u; id -g; pwd; echo \"$GREETING\"; hostname; ls /sys/class/net; \
                  echo to-stderr >&2; sleep 1; \
                  (i=0; while [ $i -lt 40 ]; do sleep 3 & i=$((i+1)); done) 2>/dev/null; \
                  echo forked; exit 4";
    let file = jsdl(
        wd.path(),
        "limits-1.jsdl",
        &format!(
            "<jsdl-posix:Executable>/bin/sh</jsdl-posix:Executable>\
             <jsdl-posix:Argument>-c</jsdl-posix:Argument>\
             <jsdl-posix:Argument>{}</jsdl-posix:Argument>\
             <jsdl-posix:Output>out.txt</jsdl-posix:Output>\
             <jsdl-posix:Error>err.txt</jsdl-posix:Error>\
             <jsdl-posix:WorkingDirectory>{}</jsdl-posix:WorkingDirectory>\
             <jsdl-posix:Environment name=\"GREETING\">hello  world</jsdl-posix:Environment>\
             <jsdl-posix:MemoryLimit>67108864</jsdl-posix:MemoryLimit>\
             <jsdl-posix:ProcessCountLimit>8</jsdl-posix:ProcessCountLimit>\
             <jsdl-posix:UserName>nobody</jsdl-posix:UserName>\
             <aem:Priority>high</aem:Priority>",
            xml_escape(script),
            wd.path().display()
        ),
        "<Checkpointer>OpenVZ</Checkpointer>",
    );
    let f = file.to_str().unwrap();
    let check = ok(&loader(&env, &["--check", f]), "--check");
    assert!(check.contains("checkpointer:     container"), "{check}");
    assert!(check.contains("nobody (uid 65534"), "{check}");
    assert!(check.contains("pids 8"), "{check}");
    assert!(check.contains("ignored:"), "{check}");

    let mut l = Listener::start(&env, &addr, 1);
    let id = submit(&env, &["--jsdl", f, "--notify", &addr]);
    // While it runs: its group has the limits.
    let st = status(&env, id).expect("status");
    assert_eq!(st["container"], true);
    assert_eq!(st["job"], "limits-1");
    let app = st["app"].as_u64().unwrap();
    let rec = env.registry().load(app).unwrap();
    let limits = rec.cgroup.limits().unwrap();
    assert_eq!(limits.memory_max, Some(64 << 20));
    assert_eq!(limits.pids_max, Some(8));
    assert_eq!(rec.checkpointer, "container");

    let r = l.next();
    assert_eq!(r["container"], id, "{r}");
    assert_eq!(r["job"], "limits-1");
    assert_eq!(r["exit_status"], 4, "{r}");
    let out = read(wd.path().join("out.txt"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "65534",
            "65534",
            wd.path().to_str().unwrap(),
            "hello  world"
        ],
        "{out}"
    );
    assert_eq!(lines[4], format!("ct-{id}"));
    assert_eq!(lines[5], "lo", "only its own loopback: {out}");
    assert_eq!(lines[6], "forked");
    let err = read(wd.path().join("err.txt"));
    assert!(err.starts_with("to-stderr"), "{err}");
    let md = std::fs::metadata(wd.path().join("out.txt")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), 65534);
    wait_gone(&env, id);
    assert!(!rec.cgroup.exists(), "the container's group is removed");
}

/// Test 1, the fork bomb: it stops at ProcessCountLimit, and the wall-clock
/// watchdog ends the container. (The job's shell forks once, before the bomb
/// can take every pid, then execs.)
#[test]
fn fork_bomb_stops_at_the_limit_and_the_watchdog_ends_it() {
    let env = Env::new();
    let sock = env.state.path().join("aem.sock");
    let addr = format!("unix:{}", sock.display());
    let file = jsdl(
        env.state.path(),
        "bomb.jsdl",
        "<jsdl-posix:Executable>/bin/sh</jsdl-posix:Executable>\
         <jsdl-posix:Argument>-c</jsdl-posix:Argument>\
         <jsdl-posix:Argument>b() { b | b &amp; }; b &amp; exec sleep 30</jsdl-posix:Argument>\
         <jsdl-posix:ProcessCountLimit>20</jsdl-posix:ProcessCountLimit>\
         <jsdl-posix:WallTimeLimit>2</jsdl-posix:WallTimeLimit>",
        "<Checkpointer>container</Checkpointer>",
    );
    let mut l = Listener::start(&env, &addr, 1);
    let id = submit(&env, &["--jsdl", file.to_str().unwrap(), "--notify", &addr]);
    let app = status(&env, id).unwrap()["app"].as_u64().unwrap();
    let rec = env.registry().load(app).unwrap();
    let mut most = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        most = most.max(rec.cgroup.pids().map(|p| p.len()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(most <= 20, "{most} tasks with a limit of 20");
    let r = l.next();
    assert_eq!(r["limit"], "WallTimeLimit", "{r}");
    assert_eq!(r["signal_name"], "SIGKILL", "{r}");
    wait_gone(&env, id);
}

/// Test 1, refusals: one line naming what is wrong, nothing created.
#[test]
fn bad_jsdl_is_refused_with_one_line() {
    let env = Env::new();
    let d = env.state.path();
    let cases = [
        (
            "<jsdl-posix:Argument>x</jsdl-posix:Argument>",
            "",
            "Executable",
        ),
        (
            "<jsdl-posix:Executable>/bin/true</jsdl-posix:Executable>\
             <jsdl-posix:MemoryLimit>-5</jsdl-posix:MemoryLimit>",
            "",
            "MemoryLimit '-5'",
        ),
        (
            "<jsdl-posix:Executable>/bin/true</jsdl-posix:Executable>",
            "<Checkpointer>BLCR</Checkpointer>",
            "unknown Checkpointer 'BLCR'",
        ),
        (
            "<jsdl-posix:Executable>/bin/true</jsdl-posix:Executable>\
             <jsdl-posix:UserName>no-such-user-xos</jsdl-posix:UserName>",
            "",
            "no-such-user-xos",
        ),
    ];
    for (i, (posix, extra, want)) in cases.iter().enumerate() {
        let f = jsdl(d, &format!("bad-{i}.jsdl"), posix, extra);
        for args in [
            vec!["--check", f.to_str().unwrap()],
            vec!["submit", "--jsdl", f.to_str().unwrap()],
        ] {
            let o = loader(&env, &args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{args:?}: {}", show(&o));
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
    }
    let o = loader(&env, &["submit", "--notify", "udp:x", "--", "true"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("udp:x"));
    let units = env.state.path().join("containers");
    assert!(xos::fsutil::numbered_entries::<u32>(&units).is_empty());
}

/// Test 2: submit returns while the job runs, and nothing outside the container
/// is the job's parent; 100 submissions give 100 distinct, non-sequential ids.
#[test]
fn submit_returns_at_once_with_random_ids() {
    let env = Env::new();
    let flag = env.state.path().join("flag");
    let start = std::time::Instant::now();
    let id = submit(
        &env,
        &[
            "--",
            "sh",
            "-c",
            &format!(
                "wait_flag() {{ while [ ! -e {} ]; do sleep 0.05; done; }}; wait_flag & wait_flag",
                flag.display()
            ),
        ],
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    let st = status(&env, id).unwrap();
    assert_eq!(st["state"], "running");
    let init = st["pid"].as_i64().unwrap() as i32;
    let app = env.registry().load(st["app"].as_u64().unwrap()).unwrap();
    let pid_ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let ct_ns = pid_ns(app.command_pid().unwrap());
    for pid in app.cgroup.pids().unwrap() {
        if pid == init {
            continue;
        }
        let ppid = xos::process::stat(pid).unwrap().ppid;
        assert_eq!(pid_ns(pid), ct_ns, "process {pid} of the container");
        assert_eq!(
            pid_ns(ppid),
            ct_ns,
            "the parent of {pid} is inside the container"
        );
    }
    std::fs::write(&flag, "").unwrap();
    wait_gone(&env, id);

    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(submit(&env, &["--", "true"]));
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 100, "distinct ids");
    let steps = ids
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1))
        .count();
    assert!(steps < 3, "ids look sequential: {ids:?}");
    for id in ids {
        wait_gone(&env, id);
    }
}

/// Test 3: listen receives the end report with the exit status (Unix and TCP),
/// and a report made while the listener is down arrives when it comes back.
#[test]
fn reports_reach_the_listener_even_when_it_comes_back_late() {
    let env = Env::new();
    let sock = env.state.path().join("aem.sock");
    let addr = format!("unix:{}", sock.display());
    {
        let mut l = Listener::start(&env, &addr, 2);
        let a = submit(
            &env,
            &[
                "--job", "j-3", "--notify", &addr, "--", "sh", "-c", "exit 7",
            ],
        );
        let r = expect_end(&mut l, a, 7);
        assert_eq!(r["job"], "j-3");
        assert!(r["ended"].as_u64().unwrap() > 1_600_000_000);
        assert!(r["rusage"]["maxrss_kb"].as_u64().unwrap() > 0, "{r}");
        let b = submit(
            &env,
            &["--notify", &addr, "--", "sh", "-c", "kill -TERM $$"],
        );
        let r = l.next();
        assert_eq!(r["container"], b);
        assert_eq!(
            (r["signal"].as_i64(), r["signal_name"].as_str()),
            (Some(15), Some("SIGTERM"))
        );
        wait_gone(&env, a);
        wait_gone(&env, b);
    }
    // The listener is down when the job ends.
    let _ = std::fs::remove_file(&sock);
    let c = submit(&env, &["--notify", &addr, "--", "sh", "-c", "exit 5"]);
    assert!(wait_until(T, || status(&env, c)
        .is_some_and(
            |s| s["state"] == "ended" && s["report"]["exit_status"] == 5
        )));
    std::thread::sleep(Duration::from_millis(500));
    assert!(status(&env, c).is_some(), "kept until delivered");
    let mut l = Listener::start(&env, &addr, 1);
    expect_end(&mut l, c, 5);
    wait_gone(&env, c);

    // TCP on the loopback, a native unit (no container).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = format!("tcp:127.0.0.1:{port}");
    let mut l = Listener::start(&env, &tcp, 1);
    let d = submit(
        &env,
        &[
            "--checkpointer",
            "native",
            "--notify",
            &tcp,
            "--",
            "sh",
            "-c",
            "exit 9",
        ],
    );
    let r = expect_end(&mut l, d, 9);
    assert!(r["container"].is_null(), "{r}");
    wait_gone(&env, d);
}

/// destroy kills the unit and removes it; list shows the units.
#[test]
fn list_and_destroy() {
    let env = Env::new();
    let id = submit(&env, &["--job", "j-d", "--", "sleep", "60"]);
    let out = ok(&loader(&env, &["list"]), "list");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id.to_string()) && l.contains("running") && l.contains("j-d")),
        "{out}"
    );
    let app = status(&env, id).unwrap()["app"].as_u64().unwrap();
    let rec = env.registry().load(app).unwrap();
    ok(&loader(&env, &["destroy", &id.to_string()]), "destroy");
    assert!(status(&env, id).is_none());
    assert!(wait_until(T, || !rec.alive() && !rec.cgroup.exists()));
    let o = loader(&env, &["destroy", &id.to_string()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&id.to_string()));
}

/// A template tarball built from busybox-static.
fn busybox_template(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("busybox-static (scripts/test.sh installs it)");
    let root = dir.join("tree");
    for d in ["bin", "dev", "proc", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for app in ["sh", "ls", "cat", "hostname", "id"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    std::fs::write(root.join("etc/marker"), "from the template\n").unwrap();
    let tdir = dir.join("templates");
    std::fs::create_dir_all(&tdir).unwrap();
    let f = std::fs::File::create(tdir.join("bb.tar.gz")).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.append_dir_all(".", &root).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    tdir
}

/// Test 5: a template root filesystem: the job sees only it.
#[test]
fn template_root_filesystem_is_all_the_job_sees() {
    let env = Env::new();
    let tdir = busybox_template(env.state.path());
    let out = env.state.path().join("out");
    let sock = env.state.path().join("aem.sock");
    let addr = format!("unix:{}", sock.display());
    let mut l = Listener::start(&env, &addr, 1);
    let id = submit(
        &env,
        &[
            "--template",
            "bb",
            "--template-dir",
            tdir.to_str().unwrap(),
            "--stdout",
            out.to_str().unwrap(),
            "--notify",
            &addr,
            "--",
            "/bin/sh",
            "-c",
            "ls /; cat /etc/marker; ls /proc | grep -c '^[0-9]'; echo x > /dev/null && echo dev-ok",
        ],
    );
    let r = l.next();
    assert_eq!(r["exit_status"], 0, "{r}");
    let text = read(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..5], ["bin", "dev", "etc", "proc", "tmp"], "{text}");
    assert_eq!(lines[5], "from the template");
    assert!(
        lines[6].parse::<u32>().unwrap() <= 4,
        "its own /proc: {text}"
    );
    assert_eq!(lines[7], "dev-ok");
    wait_gone(&env, id);
    let o = loader(
        &env,
        &[
            "submit",
            "--template",
            "nope",
            "--template-dir",
            tdir.to_str().unwrap(),
            "--",
            "true",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("template 'nope'"));
    // The grid configuration's TemplateDir is where templates are looked for
    // when the command line does not say.
    let conf = env.state.path().join("gcp.conf");
    std::fs::write(&conf, format!("TemplateDir {}\n", tdir.display())).unwrap();
    let o = env
        .cmd("xos-loader")
        .env("XOS_GCP_CONFIG", &conf)
        .args(["submit", "--template", "nope", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("template 'nope' not found in {}", tdir.display())),
        "{err}"
    );
}

/// The job of test 4: two processes (a counter and a helper), a SysV message
/// queue with a message, files in a tmpfs; with `socket`, the two processes
/// also talk over a Unix socket pair. It ends (status 6) once `stop` exists in
/// the tmpfs, printing what it sees.
fn two_process_job(scratch: &Path, socket: bool) -> String {
    let s = scratch.display();
    let talk = if socket {
        // A Unix socket pair between the shell (reader) and a python child (writer).
        format!(
            "python3 -c 'import socket,os,time\n\
             a,b=socket.socketpair()\n\
             if os.fork()==0:\n\
             \x20 a.close()\n\
             \x20 while not os.path.exists(\"{s}/stop\"): b.send(b\"x\"); time.sleep(0.1)\n\
             \x20 os._exit(0)\n\
             b.close(); n=0\n\
             while not os.path.exists(\"{s}/stop\"): n+=len(a.recv(100)); open(\"{s}/got\",\"w\").write(str(n))\n' & "
        )
    } else {
        "(while :; do sleep 0.1; done) & ".to_string()
    };
    format!(
        "echo kept > {s}/file; q=$(ipcmk -Q | grep -o '[0-9]*$'); \
         {talk} i=0; while [ ! -e {s}/stop ]; do i=$((i+1)); echo $i > {s}/count; sleep 0.1; done; \
         hostname; ipcs -q | grep -c '^0x'; cat {s}/file {s}/count; kill $! 2>/dev/null; exit 6"
    )
}

/// Test 4: a container job with two processes, a SysV message queue and a tmpfs
/// with files is checkpointed with --kill and restarted on a second node (other
/// state directory, shared checkpoint directory, other hostname in its own UTS
/// namespace): same container id and hostname, IPC and tmpfs content back, the
/// job goes on and reports its end to the address given at restart.
fn checkpoint_and_restart_on_another_node(socket: bool) {
    let node1 = Env::new();
    let node2 = node1.sibling();
    let ck = tempfile::tempdir().unwrap();
    let scratch = node1.state.path().join("scratch");
    let out = node1.state.path().join("out");
    let job = if socket { "ct-job-sock" } else { "ct-job" };
    let id = submit(
        &node1,
        &[
            "--job",
            job,
            "--tmpfs",
            &format!("{}:size=1m", scratch.display()),
            "--stdout",
            out.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &two_process_job(&scratch, socket),
        ],
    );
    let init = status(&node1, id).unwrap()["pid"].as_i64().unwrap();
    let inside =
        PathBuf::from(format!("/proc/{init}/root")).join(scratch.strip_prefix("/").unwrap());
    let count = |dir: &Path| read(dir.join("count")).parse::<u64>().unwrap_or(0);
    assert!(wait_until(T, || count(&inside) >= 3), "the job counts");
    assert!(
        !scratch.join("count").exists(),
        "the tmpfs is the container's own"
    );

    xcheckpoint_kill(&node1, ck.path(), job);
    wait_gone(&node1, id);
    let at_checkpoint = read(ck.path().join(job).join("1/unit-1/tmpfs-0.tar")).len();
    assert!(at_checkpoint > 0, "the tmpfs content is in the image");

    // The second node: its own state directory and hostname.
    let sock = node2.state.path().join("aem.sock");
    let addr = format!("unix:{}", sock.display());
    let mut l = Listener::start(&node2, &addr, 1);
    let o = Command::new("unshare")
        .env("XOS_STATE_DIR", node2.state.path())
        .env("XOS_CGROUP_PARENT", &node2.parent)
        .env("XOS_CHECKPOINT_DIR", ck.path())
        .env_remove("RUST_LOG")
        .args(["--uts", "sh", "-c"])
        .arg(format!(
            "hostname node-2 && exec {} {job} 1 --notify {addr}",
            node2.bin.path().join("xrestart").display()
        ))
        .output()
        .unwrap();
    ok(&o, "xrestart on node 2");
    let st = status(&node2, id).expect("the same container id on node 2");
    assert_eq!(st["hostname"], format!("ct-{id}"));
    let init = st["pid"].as_i64().unwrap();
    let inside =
        PathBuf::from(format!("/proc/{init}/root")).join(scratch.strip_prefix("/").unwrap());
    let before = count(&inside);
    assert!(before >= 3, "the tmpfs content is back: {before}");
    assert!(
        wait_until(T, || count(&inside) > before + 2),
        "the job goes on"
    );
    if socket {
        let got = || read(inside.join("got")).parse::<u64>().unwrap_or(0);
        let g = got();
        assert!(
            wait_until(T, || got() > g + 2),
            "data flows on the socket again"
        );
    }
    std::fs::write(inside.join("stop"), "").unwrap();
    let r = l.next();
    assert_eq!(r["container"], id, "{r}");
    assert_eq!(r["job"], job);
    assert_eq!(r["exit_status"], 6, "{r}");
    let text = read(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("ct-{id}"), "{text}");
    assert_eq!(lines[1], "1", "the message queue is back: {text}");
    assert_eq!(lines[2], "kept", "{text}");
    assert!(lines[3].parse::<u64>().unwrap() > before, "{text}");
    wait_gone(&node2, id);
}

#[test]
fn container_checkpoint_and_restart_on_another_node() {
    checkpoint_and_restart_on_another_node(false);
}

#[test]
fn container_with_a_unix_socket_checkpoint_and_restart_on_another_node() {
    checkpoint_and_restart_on_another_node(true);
}

/// The CPU-time watchdog ends a container whose processes together used more
/// than CPUTimeLimit, though none of them reached it alone.
#[test]
fn cpu_time_watchdog_counts_every_process() {
    let env = Env::new();
    let addr = format!("unix:{}", env.state.path().join("aem.sock").display());
    let file = jsdl(
        env.state.path(),
        "cpu.jsdl",
        "<jsdl-posix:Executable>/bin/sh</jsdl-posix:Executable>\
         <jsdl-posix:Argument>-c</jsdl-posix:Argument>\
         <jsdl-posix:Argument>b() { while :; do :; done; }; b &amp; b &amp; b &amp; wait</jsdl-posix:Argument>\
         <jsdl-posix:CPUTimeLimit>3</jsdl-posix:CPUTimeLimit>",
        "<Checkpointer>OpenVZ</Checkpointer>",
    );
    let mut l = Listener::start(&env, &addr, 1);
    let id = submit(&env, &["--jsdl", file.to_str().unwrap(), "--notify", &addr]);
    let r = l.next();
    assert_eq!(r["limit"], "CPUTimeLimit", "{r}");
    let cpu = r["rusage"]["utime_us"].as_u64().unwrap() + r["rusage"]["stime_us"].as_u64().unwrap();
    assert!(cpu >= 3_000_000, "{r}");
    wait_gone(&env, id);
}

/// With an XOS-cert, the job runs as the local account xos-amsd maps its VO
/// user to; a certificate it refuses creates nothing.
#[test]
fn a_certificate_maps_the_job_to_its_vo_account() {
    let env = Env::new();
    let pki = vo_common::Pki::new("ctvo");
    let d = vo_common::Daemon::start(&pki, "Pool ctvo 73800-73801\nGroupPool ctvo 74800-74809\n");
    let cert = pki.user("5b1e0c2a");
    let acct = d.map_ok(&cert);
    let out = env.state.path().join("out");
    let addr = format!("unix:{}", env.state.path().join("aem.sock").display());
    let mut l = Listener::start(&env, &addr, 1);
    let socket = d.socket();
    let id = submit(
        &env,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--amsd-socket",
            socket.to_str().unwrap(),
            "--stdout",
            out.to_str().unwrap(),
            "--notify",
            &addr,
            "--",
            "sh",
            "-c",
            "id -u; id -g",
        ],
    );
    assert_eq!(l.next()["exit_status"], 0);
    assert_eq!(
        read(&out),
        format!("{}\n{}", acct.passwd.uid, acct.passwd.gid)
    );
    wait_gone(&env, id);
    let bad = env.state.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let o = loader(
        &env,
        &[
            "submit",
            "--cert",
            bad.to_str().unwrap(),
            "--amsd-socket",
            socket.to_str().unwrap(),
            "--",
            "true",
        ],
    );
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().count(),
        1,
        "{}",
        show(&o)
    );
    assert!(xos::fsutil::numbered_entries::<u32>(&env.state.path().join("containers")).is_empty());
}

/// A container on a template root filesystem is checkpointed with that root
/// (its own copy) and restarted on another node, which has no such template.
#[test]
fn template_container_moves_with_its_root_filesystem() {
    let node1 = Env::new();
    let node2 = node1.sibling();
    let ck = tempfile::tempdir().unwrap();
    let tdir = busybox_template(node1.state.path());
    let job = "tpl-job";
    let id = submit(
        &node1,
        &[
            "--job",
            job,
            "--template",
            "bb",
            "--template-dir",
            tdir.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done; \
             cat /tmp/count; exit 3",
        ],
    );
    let inside = |env: &Env| {
        let init = status(env, id).unwrap()["pid"].as_i64().unwrap();
        PathBuf::from(format!("/proc/{init}/root/tmp"))
    };
    let count = |dir: &Path| read(dir.join("count")).parse::<u64>().unwrap_or(0);
    let d1 = inside(&node1);
    assert!(wait_until(T, || count(&d1) >= 3), "the job counts");
    xcheckpoint_kill(&node1, ck.path(), job);
    wait_gone(&node1, id);

    let addr = format!("unix:{}", node2.state.path().join("aem.sock").display());
    let out = node2.state.path().join("out");
    let mut l = Listener::start(&node2, &addr, 1);
    xrestart(
        &node2,
        ck.path(),
        &[
            job,
            "1",
            "--notify",
            &addr,
            "--stdout",
            out.to_str().unwrap(),
        ],
    );
    let d2 = inside(&node2);
    let before = count(&d2);
    assert!(before >= 3, "its root came along: {before}");
    assert!(wait_until(T, || count(&d2) > before + 2), "the job goes on");
    std::fs::write(d2.join("stop"), "").unwrap();
    expect_end(&mut l, id, 3);
    assert!(read(&out).parse::<u64>().unwrap() > before + 2);
    wait_gone(&node2, id);
}

/// A shell loop that waits for file `flag`, then prints what it is and exits
/// with `code`.
fn wait_for(flag: &Path, code: i32) -> String {
    format!(
        "while [ ! -e {} ]; do sleep 0.05; done; hostname; echo $PPID; exit {code}",
        flag.display()
    )
}

/// The units of one job on one node share its container: a unit submitted
/// for a job whose container runs is forked by that container's loader (its
/// parent is inside), reports its own end, can be destroyed alone, and the
/// container ends with its last unit.
#[test]
fn units_of_one_job_share_its_container() {
    let env = Env::new();
    let d = env.state.path();
    let addr = format!("unix:{}", d.join("aem.sock").display());
    let mut l = Listener::start(&env, &addr, 2);
    let a = submit(
        &env,
        &[
            "--job",
            "mj",
            "--notify",
            &addr,
            "--",
            "sh",
            "-c",
            &wait_for(&d.join("a"), 1),
        ],
    );
    let out_b = d.join("out-b");
    let b = submit(
        &env,
        &[
            "--job",
            "mj",
            "--notify",
            &addr,
            "--stdout",
            out_b.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &wait_for(&d.join("b"), 2),
        ],
    );
    assert_ne!(a, b);
    let (sa, sb) = (status(&env, a).unwrap(), status(&env, b).unwrap());
    assert_eq!(sb["member_of"], a);
    assert_eq!(sa["app"], sb["app"], "one container");
    let c = submit(
        &env,
        &["--job", "mj", "--notify", &addr, "--", "sleep", "60"],
    );
    ok(
        &loader(&env, &["destroy", &c.to_string()]),
        "destroy a unit",
    );
    // A limit of the whole unit cannot be one joining unit's.
    let f = jsdl(
        d,
        "mj.jsdl",
        "<jsdl-posix:Executable>/bin/true</jsdl-posix:Executable>\
         <jsdl-posix:MemoryLimit>1000000</jsdl-posix:MemoryLimit>",
        "<Checkpointer>OpenVZ</Checkpointer>",
    );
    let o = loader(&env, &["submit", "--jsdl", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("MemoryLimit"),
        "{}",
        show(&o)
    );
    assert!(status(&env, c).is_none());
    assert_eq!(status(&env, a).unwrap()["state"], "running");

    std::fs::write(d.join("b"), "").unwrap();
    let r = l.next();
    assert_eq!(
        (r["container"].as_u64(), r["unit"].as_u64()),
        (Some(a as u64), Some(b as u64))
    );
    assert_eq!(r["exit_status"], 2, "{r}");
    assert_eq!(
        read(&out_b),
        format!("ct-{a}\n1"),
        "in the container, a child of its loader"
    );
    wait_gone(&env, b);
    assert_eq!(status(&env, a).unwrap()["state"], "running");
    std::fs::write(d.join("a"), "").unwrap();
    expect_end(&mut l, a, 1);
    wait_gone(&env, a);
    // A unit of another job gets a container of its own.
    let e = submit(&env, &["--job", "other", "--", "true"]);
    wait_gone(&env, e);
}

/// A container with a joined unit is checkpointed and restarted whole: both
/// units go on on the other node and report there.
#[test]
fn a_joined_unit_moves_with_its_container() {
    let node1 = Env::new();
    let node2 = node1.sibling();
    let ck = tempfile::tempdir().unwrap();
    let d = node1.state.path();
    let a = submit(
        &node1,
        &["--job", "mj2", "--", "sh", "-c", &wait_for(&d.join("a"), 1)],
    );
    let b = submit(
        &node1,
        &["--job", "mj2", "--", "sh", "-c", &wait_for(&d.join("b"), 2)],
    );
    xcheckpoint_kill(&node1, ck.path(), "mj2");
    wait_gone(&node1, a);
    wait_gone(&node1, b);
    let addr = format!("unix:{}", node2.state.path().join("aem.sock").display());
    let mut l = Listener::start(&node2, &addr, 2);
    xrestart(&node2, ck.path(), &["mj2", "1", "--notify", &addr]);
    assert_eq!(status(&node2, b).unwrap()["member_of"], a);
    std::fs::write(d.join("b"), "").unwrap();
    let r = l.next();
    assert_eq!(
        (r["container"].as_u64(), r["unit"].as_u64()),
        (Some(a as u64), Some(b as u64))
    );
    assert_eq!(r["exit_status"], 2, "{r}");
    std::fs::write(d.join("a"), "").unwrap();
    expect_end(&mut l, a, 1);
    wait_gone(&node2, a);
    wait_gone(&node2, b);
}

/// `checkpoint -c CTID` saves the whole container as a version of its
/// application, and `restart APP VERSION` brings the container back (same id,
/// hostname, tmpfs content and message queue) to report its end.
#[test]
fn checkpoint_c_ctid_and_restart_bring_the_container_back() {
    let env = Env::new();
    let d = env.state.path();
    let scratch = d.join("scratch");
    let out = d.join("out");
    let addr = format!("unix:{}", d.join("aem.sock").display());
    let mut l = Listener::start(&env, &addr, 1);
    let script = format!(
        "ipcmk -Q >/dev/null; i=0; while [ ! -e {stop} ]; do i=$((i+1)); echo $i > {s}/count; \
         sleep 0.1; done; hostname; ipcs -q | grep -c '^0x'; cat {s}/count; exit 4",
        stop = d.join("stop").display(),
        s = scratch.display()
    );
    let id = submit(
        &env,
        &[
            "--tmpfs",
            scratch.to_str().unwrap(),
            "--notify",
            &addr,
            "--stdout",
            out.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let st = status(&env, id).unwrap();
    let app = st["app"].as_u64().unwrap().to_string();
    let inside =
        PathBuf::from(format!("/proc/{}/root", st["pid"])).join(scratch.strip_prefix("/").unwrap());
    assert!(wait_until(T, || read(inside.join("count"))
        .parse::<u64>()
        .unwrap_or(0)
        >= 3));
    let o = env
        .cmd("checkpoint")
        .args(["-c", &id.to_string(), "--kill"])
        .output()
        .unwrap();
    let said = ok(&o, "checkpoint -c CTID --kill");
    assert!(
        said.contains(&format!("application {app}: version 1")),
        "{said}"
    );
    wait_gone(&env, id);
    ok(
        &env.cmd("restart")
            .args([&app, "1", "--detach"])
            .output()
            .unwrap(),
        "restart",
    );
    let st = status(&env, id).expect("the same container id");
    let inside =
        PathBuf::from(format!("/proc/{}/root", st["pid"])).join(scratch.strip_prefix("/").unwrap());
    let before = read(inside.join("count")).parse::<u64>().unwrap();
    assert!(wait_until(T, || read(inside.join("count"))
        .parse::<u64>()
        .unwrap_or(0)
        > before));
    std::fs::write(d.join("stop"), "").unwrap();
    expect_end(&mut l, id, 4);
    let text = read(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], [format!("ct-{id}").as_str(), "1"], "{text}");
    wait_gone(&env, id);
}

/// `--net veth:ADDR/PREFIX,NETNS`: the container has eth0 at ADDR, the other
/// end of the pair in a namespace the test makes (nothing touches the host's).
#[test]
fn a_container_with_a_veth_pair() {
    let env = Env::new();
    let ns = common::unique("xos-ct");
    let run = |args: &[&str]| Command::new("ip").args(args).output().unwrap();
    ok(&run(&["netns", "add", &ns]), "ip netns add");
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _del = DelNs(ns.clone());
    let out = env.state.path().join("out");
    let addr = format!("unix:{}", env.state.path().join("aem.sock").display());
    let mut l = Listener::start(&env, &addr, 1);
    submit(
        &env,
        &[
            "--net",
            &format!("veth:10.213.77.2/24,{ns}"),
            "--stdout",
            out.to_str().unwrap(),
            "--notify",
            &addr,
            "--",
            "sh",
            "-c",
            &format!(
                "ls /sys/class/net; ip -4 -o addr show dev eth0; {}",
                wait_for(&env.state.path().join("stop"), 0)
            ),
        ],
    );
    // While it runs, the other end is in the test's namespace.
    let has_peer = || {
        let peer = run(&["-n", &ns, "-4", "-o", "addr"]);
        String::from_utf8_lossy(&peer.stdout).contains("10.213.77.1/24")
    };
    assert!(wait_until(T, has_peer), "no peer address");
    std::fs::write(env.state.path().join("stop"), "").unwrap();
    assert_eq!(l.next()["exit_status"], 0);
    let text = read(&out);
    assert!(text.contains("eth0\nlo\n"), "{text}");
    assert!(text.contains("inet 10.213.77.2/24"), "{text}");
}

/// A unit without a container (native or CRIU) killed by a checkpoint
/// reports nothing (its end is not the job's: a report would wait here for a
/// listener); restarted on another node it reports its end there.
#[test]
fn a_native_unit_killed_by_a_checkpoint_reports_at_its_restart() {
    unit_killed_by_a_checkpoint_reports_at_its_restart("native");
}

#[test]
fn a_criu_unit_killed_by_a_checkpoint_reports_at_its_restart() {
    unit_killed_by_a_checkpoint_reports_at_its_restart("criu");
}

fn unit_killed_by_a_checkpoint_reports_at_its_restart(backend: &str) {
    let env = Env::new();
    let node2 = env.sibling();
    let ck = tempfile::tempdir().unwrap();
    let addr = format!("unix:{}", env.state.path().join("nobody.sock").display());
    let flag = env.state.path().join("flag");
    let a = submit(
        &env,
        &[
            "--checkpointer",
            backend,
            "--job",
            "nj",
            "--notify",
            &addr,
            "--",
            "sh",
            "-c",
            &wait_for(&flag, 5),
        ],
    );
    xcheckpoint_kill(&env, ck.path(), "nj");
    wait_gone(&env, a);
    let addr2 = format!("unix:{}", node2.state.path().join("aem.sock").display());
    let mut l = Listener::start(&node2, &addr2, 1);
    xrestart(&node2, ck.path(), &["nj", "1", "--notify", &addr2]);
    assert_eq!(status(&node2, a).unwrap()["container"], false);
    std::fs::write(&flag, "").unwrap();
    let r = expect_end(&mut l, a, 5);
    assert!(r["container"].is_null(), "{r}");
    wait_gone(&node2, a);

    let b = submit(
        &env,
        &[
            "--checkpointer",
            backend,
            "--notify",
            &addr,
            "--",
            "sleep",
            "60",
        ],
    );
    let app = status(&env, b).unwrap()["app"]
        .as_u64()
        .unwrap()
        .to_string();
    ok(
        &env.cmd("checkpoint")
            .args(["-c", &app, "--kill"])
            .output()
            .unwrap(),
        "checkpoint",
    );
    wait_gone(&env, b);
}
