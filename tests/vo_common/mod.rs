//! Helpers of the VO tests: a test CA and certificates made with the real
//! `xos-cert` applet, and an `xos-amsd` on a private socket, state directory and
//! cgroup parent, all removed again when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use xos::cgroup::Layout;
use xos::vo::proto::{self, Request, Response};

use crate::common::{self, show, unique, wait_until};

pub fn xos_cmd(applet: &str) -> Command {
    let mut c = Command::new(common::xos());
    c.arg(applet).env_remove("RUST_LOG");
    c
}

pub fn run_ok(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", show(&o));
    o
}

/// A VO CA in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub vo: String,
}

impl Pki {
    pub fn new(vo: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            xos_cmd("xos-cert")
                .args(["ca", "--vo", vo, "--dir"])
                .arg(dir.path().join("ca")),
        );
        Pki {
            dir,
            vo: vo.to_string(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Issues a certificate `name.pem` with the given extra arguments of `issue`.
    pub fn issue_with(&self, name: &str, args: &[&str]) -> PathBuf {
        let out = self.dir.path().join(name);
        run_ok(
            xos_cmd("xos-cert")
                .arg("issue")
                .arg("--ca")
                .arg(self.ca())
                .arg("--out")
                .arg(&out)
                .args(["--cn", name])
                .args(args),
        );
        self.dir.path().join(format!("{name}.pem"))
    }

    /// A valid user certificate with global id `id`.
    pub fn user(&self, id: &str) -> PathBuf {
        self.issue_with(
            id,
            &[
                "--id",
                id,
                "--vo",
                &self.vo,
                "--group",
                "users",
                "--groups",
                "cms,atlas",
            ],
        )
    }
}

/// The shared objects built by scripts/build-modules.sh.
pub fn modules_dir() -> PathBuf {
    // The test executable is TARGET/x86_64-unknown-linux-gnu/debug/deps/vo-HASH.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(4).unwrap().to_path_buf();
    let dir = target.join("modules/x86_64-unknown-linux-gnu/release");
    assert!(
        dir.join("libnss_xos.so.2").is_file() && dir.join("pam_xos.so").is_file(),
        "{}: pam_xos.so / libnss_xos.so.2 missing: run scripts/build-modules.sh first",
        dir.display()
    );
    dir
}

/// A running xos-amsd of the test's own.
pub struct Daemon {
    pub child: Option<Child>,
    /// Socket directory: under /run, not /tmp, because jobs get a private /tmp.
    pub run: PathBuf,
    pub state: PathBuf,
    pub conf: PathBuf,
    pub parent: String,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    /// Writes a configuration (the CA, socket and state lines are added) and starts
    /// the daemon.
    pub fn start(pki: &Pki, extra: &str) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let run = PathBuf::from("/run").join(unique("xos-test-vo"));
        std::fs::create_dir_all(&run).unwrap();
        let parent = unique("xos-test-vo");
        let conf = tmp.path().join("pam_xos.conf");
        let state = tmp.path().join("state");
        std::fs::write(
            &conf,
            format!(
                "CACertPath {}\nCgroupParent {parent}\n{extra}\n",
                pki.ca().display()
            ),
        )
        .unwrap();
        let mut d = Daemon {
            child: None,
            run,
            state,
            conf,
            parent,
            _tmp: tmp,
        };
        d.restart();
        d
    }

    /// A second daemon on the same state directory and configuration.
    pub fn sibling(&self) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let run = PathBuf::from("/run").join(unique("xos-test-vo"));
        std::fs::create_dir_all(&run).unwrap();
        let mut d = Daemon {
            child: None,
            run,
            state: self.state.clone(),
            conf: self.conf.clone(),
            parent: self.parent.clone(),
            _tmp: tmp,
        };
        d.restart();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.run.join("amsd.sock")
    }

    /// (Re)starts the daemon and waits until it answers.
    pub fn restart(&mut self) {
        self.kill9();
        let child = xos_cmd("xos-amsd")
            .arg("--foreground")
            .arg("--config")
            .arg(&self.conf)
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(&self.state)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let sock = self.socket();
        assert!(
            wait_until(Duration::from_secs(10), || {
                proto::call(&sock, Duration::from_secs(1), &Request::Ping).is_ok()
            }),
            "xos-amsd did not come up on {}",
            sock.display()
        );
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("daemon running").id() as i32)
    }

    /// kill -9: the daemon gets no chance to save anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn call(&self, req: &Request) -> Response {
        proto::call(&self.socket(), Duration::from_secs(30), req).unwrap()
    }

    /// `xos-amsd SUBCOMMAND ARGS` against this daemon.
    pub fn admin(&self, args: &[&str]) -> Output {
        xos_cmd("xos-amsd")
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    /// Maps a certificate file; the daemon's answer.
    pub fn map(&self, cert: &Path) -> Response {
        let pem = std::fs::read_to_string(cert).unwrap();
        self.call(&Request::Map { cert_pem: pem })
    }

    pub fn map_ok(&self, cert: &Path) -> proto::Account {
        match self.map(cert) {
            Response::Mapped(a) => a,
            r => panic!("{}: {r:?}", cert.display()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.run);
        if let Ok(l) = Layout::detect() {
            let all = [
                "cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "freezer",
            ];
            if let Ok(g) = l.group_with(&self.parent, &all) {
                let _ = g.destroy(Duration::from_secs(10));
            }
        }
    }
}
