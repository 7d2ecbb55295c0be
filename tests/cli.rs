//! The applets as a person meets them at a shell: commands launched as a shell
//! would, listings piped into `head`, mistyped state directories, stray arguments,
//! detached jobs and their logs.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{show, wait_until, Env};
use nix::sys::signal::{self, SigHandler, Signal};

const T: Duration = Duration::from_secs(10);

/// `SigIgn` and `SigBlk` of `grep` run with `prefix` before it (nothing, or
/// krgcr-run) by a caller that ignores `ignore` and blocks SIGUSR2.
fn signals_of_grep(env: &Env, prefix: &[&str], ignore: &'static [Signal]) -> String {
    let mut c = match prefix.first() {
        Some(applet) => {
            let mut c = env.cmd(applet);
            c.args(&prefix[1..]).arg("grep");
            c
        }
        None => Command::new("grep"),
    };
    c.args(["-E", "^Sig(Ign|Blk)", "/proc/self/status"]);
    // SAFETY: only async-signal-safe calls; dispositions set are SIG_IGN.
    unsafe {
        c.pre_exec(move || {
            for &sig in ignore {
                signal::signal(sig, SigHandler::SigIgn).map_err(std::io::Error::from)?;
            }
            let mut set = signal::SigSet::empty();
            set.add(Signal::SIGUSR2);
            set.thread_block().map_err(std::io::Error::from)
        });
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{prefix:?}: {}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn commands_start_with_the_callers_dispositions_and_mask() {
    let env = Env::new();
    for ignore in [&[][..], &[Signal::SIGPIPE, Signal::SIGUSR1]] {
        let plain = signals_of_grep(&env, &[], ignore);
        let under = signals_of_grep(&env, &["krgcr-run"], ignore);
        assert_eq!(plain, under, "ignoring {ignore:?}");
        let field = |name: &str| {
            let v = plain
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim();
            u64::from_str_radix(v, 16).unwrap()
        };
        let bit = |sig: Signal| 1u64 << (sig as i32 - 1);
        assert_eq!(
            field("SigIgn:") & bit(Signal::SIGPIPE) != 0,
            !ignore.is_empty()
        );
        assert_ne!(field("SigBlk:") & bit(Signal::SIGUSR2), 0);
    }
    // With SIGPIPE at its default, `yes` ends quietly when `head` is done.
    let o = env
        .cmd("krgcr-run")
        .args(["sh", "-c", "yes | head -c 10 >/dev/null"])
        .output()
        .unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{}", show(&o));
}

/// Runs `cmd` with its stdout a pipe whose reader has already gone.
fn into_closed_pipe(mut cmd: Command) -> Output {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    cmd.stdout(Stdio::from(w)).stderr(Stdio::piped());
    cmd.output().unwrap()
}

#[test]
fn a_closed_stdout_ends_listings_like_coreutils() {
    let env = Env::new();
    let mut list = env.cmd("checkpoint");
    list.arg("--list");
    let mut xos_list = Command::new(common::xos());
    xos_list.arg("--list");
    for cmd in [list, xos_list] {
        let shown = format!("{cmd:?}");
        // Caller with SIGPIPE at its default: killed by it, nothing said.
        let o = into_closed_pipe(cmd);
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGPIPE),
            "{shown}: {}",
            show(&o)
        );
        assert!(o.stderr.is_empty(), "{shown}: {}", show(&o));
    }
    // Caller ignoring SIGPIPE: one line and status 1, never a panic.
    let mut c = Command::new("sh");
    c.args(["-c", "trap '' PIPE; exec \"$0\" --list"])
        .arg(env.bin.path().join("checkpoint"))
        .env("XOS_STATE_DIR", env.state.path());
    let o = into_closed_pipe(c);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "checkpoint: write error: Broken pipe\n"
    );
}

#[test]
fn a_missing_state_dir_is_reported_not_created() {
    let env = Env::new();
    let missing = env.state.path().join("typo");
    for args in [
        &["checkpoint", "--list"][..],
        &["checkpoint", "--freeze", "1"],
        &["restart", "--list", "1"],
        &["restart", "1", "1"],
    ] {
        let o = env
            .cmd(args[0])
            .args(&args[1..])
            .arg("--state-dir")
            .arg(&missing)
            .output()
            .unwrap();
        // restart's own failures are 125, unlike the application's statuses.
        let want = if args == ["restart", "1", "1"] {
            125
        } else {
            1
        };
        assert_eq!(o.status.code(), Some(want), "{args:?}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{} does not exist", missing.display()))
                && err.lines().count() == 1,
            "{args:?}: {}",
            show(&o)
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}

#[test]
fn usage_does_not_make_environment_set_options_look_required() {
    let env = Env::new();
    for applet in ["krgcr-run", "checkpoint", "restart"] {
        // XOS_STATE_DIR and XOS_CGROUP_PARENT are set by env.cmd.
        let o = env.cmd(applet).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{applet}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("Usage: {applet} [OPTIONS]")),
            "{applet}: {err}"
        );
        assert!(!err.contains("--state-dir <DIR>"), "{applet}: {err}");
    }
}

#[test]
fn extra_arguments_are_refused() {
    let env = Env::new();
    for args in [
        &["checkpoint", "--list", "16"][..],
        &["restart", "--list", "16", "1"],
        &["restart", "--frozen", "--list", "16"],
        &["restart", "--detach", "--list", "16"],
    ] {
        let o = env.cmd(args[0]).args(&args[1..]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("cannot be used with"),
            "{args:?}: {}",
            show(&o)
        );
    }
}

/// The numbers a counting job wrote to its log, after its first line.
fn counted(log: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[test]
fn a_detached_job_detaches_and_logs_across_checkpoint_and_restart() {
    let env = Env::new();
    let job = "readlink /proc/$$/fd/0; echo oops >&2; \
               i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done";
    // In a shell capture, as a user writes it: returns while the job runs on.
    let started = Instant::now();
    let o = Command::new("sh")
        .args([
            "-c",
            "ID=$(krgcr-run --detach --print-id bash -c \"$0\") && echo $ID",
        ])
        .arg(job)
        .env("XOS_STATE_DIR", env.state.path())
        .env("XOS_CGROUP_PARENT", &env.parent)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", env.bin.path().display()),
        )
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(o.status.success(), "{}", show(&o));
    assert!(took < Duration::from_secs(1), "the capture took {took:?}");
    let id: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(env.registry().load(id).unwrap().alive());
    let log = env.state.path().join(format!("logs/{id}.out"));
    assert!(wait_until(T, || counted(&log).len() >= 5));

    let o = env
        .cmd("checkpoint")
        .args(["--logs", &id.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("/dev/null\n1\n2\n3\n"), "{}", show(&o));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "oops\n");

    // Checkpointed, killed and restarted detached: the log goes on, appended.
    let o = env
        .cmd("checkpoint")
        .args(["-c", "--kill", &id.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(wait_until(T, || env.registry().load(id).is_err()));
    let at_kill = counted(&log).len();
    let o = env
        .cmd("restart")
        .args(["--detach", &id.to_string(), "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(wait_until(T, || counted(&log).len() > at_kill + 5));
    let n = counted(&log);
    assert_eq!(n, (1..=n.len() as u64).collect::<Vec<_>>(), "not one count");
    // Still there once the job has ended; an id without logs is said so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(env.registry().load(id).unwrap().root_pid),
        Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(T, || env.registry().load(id).is_err()));
    let o = env
        .cmd("checkpoint")
        .args(["--logs", &id.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success() && o.stdout.len() > 10, "{}", show(&o));
    let o = env
        .cmd("checkpoint")
        .args(["--logs", "999"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("application 999 has no logs"));
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(common::xos())
            .args(["--completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}: {}", show(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        // fish spells an option `-l freeze`.
        for word in ["krgcr-run", "checkpoint", "freeze", "restart", "state-dir"] {
            assert!(text.contains(word), "{shell}: no {word}");
        }
    }
    // bash takes them: every applet and xos complete, applets' options included.
    let script = format!(
        "source <({} --completions bash) && complete -p xos checkpoint restart krgcr-run && \
         COMP_WORDS=(checkpoint --fr) COMP_CWORD=1 && _checkpoint checkpoint --fr checkpoint && \
         echo \"${{COMPREPLY[@]}}\"",
        common::xos().display()
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .trim_end()
            .ends_with("--freeze"),
        "{}",
        show(&o)
    );
    let o = Command::new(common::xos())
        .args(["--completions", "bash", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", show(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(o)))
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn versions_are_listed_deleted_never_reused_and_restarted_under_a_new_id() {
    let env = Env::new();
    // A command with a newline: still one line in the listing.
    let job = "i=0\nwhile :; do i=$((i+1)); echo $i; sleep 0.02; done";
    let id = ok(env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "bash", "-c", job])
        .output()
        .unwrap());
    let id: u64 = id.trim().parse().unwrap();
    let log = env.state.path().join(format!("logs/{id}.out"));
    assert!(wait_until(T, || counted(&log).len() >= 3));
    let ids = id.to_string();
    let cp = |args: &[&str]| env.cmd("checkpoint").args(args).output().unwrap();
    let version_of = |o: Output| -> u64 {
        let text = ok(o);
        text.split("version ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };

    let list = ok(cp(&["--list"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains("bash -c i=0\\nwhile"), "{list}");
    let apps = json(&cp(&["--list", "--json"]));
    let app = &apps[0];
    assert_eq!(app["id"], id);
    assert_eq!(app["state"], "running");
    assert_eq!(app["command"][2], job);
    // The pid shown is the command's, a child of the init.
    let pid = app["pid"].as_i64().unwrap() as i32;
    let st = xos::process::stat(pid).unwrap();
    assert_eq!(Some(st.ppid as i64), app["init_pid"].as_i64());
    assert_eq!(st.comm, "bash");

    let written = json(&cp(&["-c", "--json", &ids]));
    assert_eq!(
        (written["app"].as_u64(), written["version"].as_u64()),
        (Some(id), Some(1))
    );
    assert!(written["bytes"].as_u64().unwrap() > 0 && written["processes"].as_u64() >= Some(1));
    let quiet = cp(&["-c", "--quiet", &ids]);
    assert!(
        quiet.status.success() && quiet.stdout.is_empty(),
        "{}",
        show(&quiet)
    );
    let all = json(
        &env.cmd("restart")
            .args(["--list", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert_eq!(
        (all[1]["app"].as_u64(), all[1]["version"].as_u64()),
        (Some(id), Some(2))
    );
    assert_eq!(all[1]["state"], "running");
    assert!(all[1]["size"].as_u64().unwrap() > 0);

    // Deleted by command or by hand: the number is not used again.
    assert!(ok(cp(&["--delete", &ids, "2"])).contains("version 2 deleted"));
    assert_eq!(version_of(cp(&["-c", &ids])), 3);
    std::fs::remove_dir_all(xos::ckpt::image::version_dir(env.state.path(), id, 3)).unwrap();
    assert_eq!(version_of(cp(&["-c", &ids])), 4);
    let o = cp(&["--delete", &ids, "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no checkpoint version 3"));
    assert!(ok(cp(&["--keep", "1", &ids])).contains("version 1 deleted"));
    assert_eq!(xos::ckpt::image::versions(env.state.path(), id), vec![4]);

    // A second copy next to the running original, under a new id.
    let o = env
        .cmd("restart")
        .args(["--detach", &ids, "4"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--new-id"),
        "{}",
        show(&o)
    );
    let copy = ok(env
        .cmd("restart")
        .args(["--detach", "--new-id", &ids, "4"])
        .output()
        .unwrap());
    let copy: u64 = copy.trim().parse().unwrap();
    assert_ne!(copy, id);
    assert!(env.registry().load(id).unwrap().alive());
    assert!(env.registry().load(copy).unwrap().alive());
    let copy_log = env.state.path().join(format!("logs/{copy}.out"));
    assert!(wait_until(T, || counted(&copy_log).len() >= 3));
    // It goes on from the checkpoint's count, not from 1.
    assert!(counted(&copy_log)[0] > 3, "{:?}", counted(&copy_log));

    // The original ends: --prune deletes its images and logs, not the copy's.
    let rec = env.registry().load(id).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.root_pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(T, || env.registry().load(id).is_err()));
    let all = json(
        &env.cmd("restart")
            .args(["--list", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(all[0]["state"], "ended", "{all}");
    let o = cp(&["-c", &ids]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "application {id} has ended; restart it from a checkpoint (`restart {id} 4`"
        )),
        "{}",
        show(&o)
    );
    assert!(ok(cp(&["--prune"])).contains(&format!("application {id}: images and logs deleted")));
    assert!(!xos::ckpt::image::app_dir(env.state.path(), id).exists());
    assert!(!log.exists() && copy_log.exists());
    let all = json(
        &env.cmd("restart")
            .args(["--list", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(all, serde_json::json!([]));
}

#[test]
fn an_application_with_sysv_ipc_is_restarted_as_the_readme_says() {
    let env = Env::new();
    // The application prints the id of the queue it sees, again and again.
    let job =
        "ipcmk -Q >/dev/null; while :; do ipcs -q | awk '/^0x/ { print $2 }'; sleep 0.05; done";
    let id = ok(env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "sh", "-c", job])
        .output()
        .unwrap());
    let ids = id.trim().to_string();
    let log = env.state.path().join(format!("logs/{ids}.out"));
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert!(wait_until(T, || lines().len() >= 3));
    let queue = lines()[0].clone();
    // The README's sequence, step by step.
    ok(env
        .cmd("checkpoint")
        .args(["-c", "--kill", &ids])
        .output()
        .unwrap());
    assert!(wait_until(T, || env
        .registry()
        .load(ids.parse().unwrap())
        .is_err()));
    ok(env
        .cmd("restart")
        .args(["--detach", &ids, "1"])
        .output()
        .unwrap());
    let before = lines().len();
    assert!(wait_until(T, || lines().len() >= before + 3));
    assert!(lines().iter().all(|l| *l == queue), "{:?}", lines());
    let dir = env.state.path().join(format!("images/{ids}/1/ipc"));
    let saved = json(
        &env.cmd("ipcrestart")
            .args(["--info", "--json", "--all", dir.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(saved["objects"][0]["kind"], "msg", "{saved}");
    assert_eq!(saved["objects"][0]["meta"]["id"].to_string(), queue);
}

#[test]
fn restart_info_shows_a_version_and_checks_its_data() {
    let env = Env::new();
    let job = "exec 3</etc/hostname; i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done";
    let id = ok(env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "bash", "-c", job])
        .output()
        .unwrap());
    let ids = id.trim().to_string();
    let log = env.state.path().join(format!("logs/{ids}.out"));
    assert!(wait_until(T, || counted(&log).len() >= 3));
    ok(env
        .cmd("checkpoint")
        .args(["-c", "--kill", &ids])
        .output()
        .unwrap());
    let info = |json: bool| {
        let mut c = env.cmd("restart");
        c.arg("--info");
        if json {
            c.arg("--json");
        }
        c.args([&ids, "1"]).output().unwrap()
    };
    let text = ok(info(false));
    for part in [
        "application ",
        "bash (",
        "private anonymous",
        "3 /etc/hostname at 0",
        "pages-2.img",
    ] {
        assert!(text.contains(part), "no '{part}' in:\n{text}");
    }
    assert!(
        text.ends_with("restart would take this version\n"),
        "{text}"
    );
    let i = json(&info(true));
    assert_eq!(i["processes"][0]["comm"], "bash");
    assert_eq!(i["restartable"], true);
    assert!(i["data_files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["state"] == "ok"));

    // A flipped byte, a cut file, a lost file: each named, and restart would refuse.
    let pages = xos::ckpt::image::version_dir(env.state.path(), id.trim().parse().unwrap(), 1)
        .join("pages-2.img");
    let good = std::fs::read(&pages).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 1;
    for (data, state) in [
        (Some(bad), "checksum mismatch"),
        (Some(good[..good.len() - 1].to_vec()), "truncated"),
        (None, "missing"),
    ] {
        match data {
            Some(d) => std::fs::write(&pages, d).unwrap(),
            None => std::fs::remove_file(&pages).unwrap(),
        }
        let o = info(true);
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        let i: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let d = i["data_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["file"] == "pages-2.img")
            .unwrap();
        assert_eq!(d["state"], state);
        assert_eq!(i["restartable"], false);
    }
}

#[test]
fn wait_returns_the_exit_status_of_a_detached_application() {
    let env = Env::new();
    let start = |script: &str| -> String {
        let id = ok(env
            .cmd("krgcr-run")
            .args(["--detach", "--print-id", "sh", "-c", script])
            .output()
            .unwrap());
        id.trim().to_string()
    };
    let wait = |id: &str| env.cmd("checkpoint").args(["--wait", id]).output().unwrap();
    let id = start("sleep 0.5; exit 7");
    let began = Instant::now();
    let o = wait(&id);
    assert_eq!(o.status.code(), Some(7), "{}", show(&o));
    assert!(began.elapsed() >= Duration::from_millis(300));
    // Asked again once it has ended: the same status.
    assert_eq!(wait(&id).status.code(), Some(7));
    // Killed by a signal: 128 + the signal, as a shell says.
    let id = start("exec sleep 100");
    let rec = env.registry().load(id.parse().unwrap()).unwrap();
    let pid = rec.command_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert_eq!(wait(&id).status.code(), Some(128 + 9));
    // Nothing to wait for.
    let o = wait("999");
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no exit status"));
    let o = env.cmd("checkpoint").arg("7").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

#[test]
fn checkpoint_and_restart_show_progress_on_a_terminal_only() {
    let env = Env::new();
    let job = "import time\nb = bytearray(64 << 20)\nb[::4096] = b'x' * (len(b) // 4096)\n\
               print('ready', flush=True)\ntime.sleep(1000)";
    let id = ok(env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "python3", "-c", job])
        .output()
        .unwrap());
    let id = id.trim().to_string();
    let log = env.state.path().join(format!("logs/{id}.out"));
    assert!(wait_until(T, || std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")));
    // Under a pseudo-terminal (script): the line is drawn, then cleared.
    let o = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "{} -c {id}",
            env.bin.path().join("checkpoint").display()
        ))
        .arg("/dev/null")
        .env("XOS_STATE_DIR", env.state.path())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        shown.contains(&format!("\rcheckpoint: application {id}: ")) && shown.contains(" MiB ("),
        "{shown:?}"
    );
    assert!(
        shown.contains("\r\x1b[Kapplication "),
        "not cleared before the summary: {shown:?}"
    );
    // Not on a terminal: the summary alone.
    let o = env
        .cmd("checkpoint")
        .args(["-c", "--kill", &id])
        .output()
        .unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&format!("application {id}: version 2")));
    assert!(wait_until(T, || env
        .registry()
        .load(id.parse().unwrap())
        .is_err()));

    // A restart on a terminal: how much of the saved memory is back, then cleared.
    let o = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "{} --detach {id} 2",
            env.bin.path().join("restart").display()
        ))
        .arg("/dev/null")
        .env("XOS_STATE_DIR", env.state.path())
        .env("XOS_CGROUP_PARENT", &env.parent)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        shown.contains(&format!("\rrestart: application {id}: ")),
        "{shown:?}"
    );
    assert!(shown.ends_with("\r\x1b[K"), "not cleared: {shown:?}");
    assert!(env.registry().load(id.parse().unwrap()).unwrap().alive());
    // Not on a terminal: nothing.
    let o = env
        .cmd("checkpoint")
        .args(["-c", "--kill", "--quiet", &id])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(wait_until(T, || env
        .registry()
        .load(id.parse().unwrap())
        .is_err()));
    let o = env
        .cmd("restart")
        .args(["--detach", &id, "3"])
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(),
        "{}",
        show(&o)
    );
}

#[test]
fn a_detached_job_restarted_from_an_older_version_appends_to_its_log() {
    let env = Env::new();
    let job = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done";
    let id = ok(env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "bash", "-c", job])
        .output()
        .unwrap());
    let id = id.trim().to_string();
    let log = env.state.path().join(format!("logs/{id}.out"));
    let lines = || -> Vec<u64> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    assert!(wait_until(T, || lines().len() >= 3));
    ok(env.cmd("checkpoint").args(["-c", &id]).output().unwrap());
    // It goes on writing after the checkpoint, then ends.
    let at = lines().len();
    assert!(wait_until(T, || lines().len() >= at + 10));
    let rec = env.registry().load(id.parse().unwrap()).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.root_pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(T, || env
        .registry()
        .load(id.parse().unwrap())
        .is_err()));
    let before = lines();
    // Restarted from the checkpoint: the log is kept whole and goes on at its end.
    ok(env
        .cmd("restart")
        .args(["--detach", &id, "1"])
        .output()
        .unwrap());
    assert!(wait_until(T, || lines().len() >= before.len() + 5));
    let after = lines();
    assert_eq!(after[..before.len()], before[..]);
    let resumed = &after[before.len()..];
    assert!(resumed[0] < *before.last().unwrap(), "{resumed:?}");
    assert!(resumed.windows(2).all(|w| w[1] == w[0] + 1), "{resumed:?}");
}

#[test]
fn checkpoint_stats_are_printed_kept_and_restart_says_json() {
    let env = Env::new();
    let job = "b=$(head -c 3000000 /dev/zero | tr '\\0' x); i=0; \
               while :; do i=$((i+1)); echo $i; sleep 0.02; done";
    let ids = ok(env
        .cmd("krgcr-run")
        .args(["--detach", "--print-id", "bash", "-c", job])
        .output()
        .unwrap())
    .trim()
    .to_string();
    let id: u64 = ids.parse().unwrap();
    let log = env.state.path().join(format!("logs/{ids}.out"));
    assert!(wait_until(T, || counted(&log).len() >= 3));
    // Text: the summary line, then one line per figure.
    let text = ok(env
        .cmd("checkpoint")
        .args(["-c", "--stats", &ids])
        .output()
        .unwrap());
    for part in [
        "freezing time: ",
        "frozen time: ",
        "memory dump time: ",
        "memory write time: ",
        "pages scanned: ",
        "pages written: ",
    ] {
        assert!(text.contains(part), "no '{part}' in:\n{text}");
    }
    // JSON: the same figures, kept in the image for restart --info.
    let c = json(
        &env.cmd("checkpoint")
            .args(["-c", "--kill", "--json", &ids])
            .output()
            .unwrap(),
    );
    let s = &c["stats"];
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {c}"));
    assert!(n("pages_written") >= 3_000_000 / 4096, "{c}");
    assert!(n("pages_scanned") >= n("pages_written"), "{c}");
    assert!(n("frozen_time") > 0 && n("memdump_time") > 0 && n("memwrite_time") > 0);
    assert!(
        n("freezing_time") + n("frozen_time") <= c["stopped_ms"].as_u64().unwrap() * 1000 + 1000
    );
    let v = c["version"].as_u64().unwrap().to_string();
    let i = json(
        &env.cmd("restart")
            .args(["--info", "--json", &ids, &v])
            .output()
            .unwrap(),
    );
    assert_eq!(&i["stats"], s);
    let text = ok(env
        .cmd("restart")
        .args(["--info", &ids, &v])
        .output()
        .unwrap());
    assert!(text.contains("checkpoint figures:") && text.contains("pages written: "));
    assert!(wait_until(T, || env.registry().load(id).is_err()));

    // A plain restart with --json: one object once it runs.
    let r = json(
        &env.cmd("restart")
            .args(["--detach", "--json", &ids, &v])
            .output()
            .unwrap(),
    );
    assert_eq!(r["app"], id, "{r}");
    assert_eq!(
        (r["from_app"].as_u64(), r["version"].to_string()),
        (Some(id), v.clone())
    );
    assert!(r["processes"].as_u64() >= Some(1), "{r}");
    assert_eq!(r["frozen"], false);
    let rec = env.registry().load(id).unwrap();
    assert!(rec.alive());
    assert_eq!(r["init_pid"], rec.root_pid, "{r}");
    assert!(r["restore_ms"].as_u64().is_some());
    // Restarting it again while it runs: refused, with restart's own status.
    let o = env
        .cmd("restart")
        .args(["--detach", "--json", &ids, &v])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(o.stdout.is_empty());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.root_pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(T, || env.registry().load(id).is_err()));
}
