//! Helpers of the integration tests: the real binary, private state directories
//! and cgroup parents that are removed again even when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xos::cgroup::Layout;

/// The xos binary under test.
pub fn xos() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xos"))
}

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A private world for one test: a state directory, a cgroup parent, and a
/// directory of applet symlinks. Dropping it kills whatever is left in the cgroup
/// parent and removes it.
pub struct Env {
    pub state: tempfile::TempDir,
    pub bin: tempfile::TempDir,
    pub parent: String,
}

impl Env {
    pub fn new() -> Env {
        let bin = tempfile::tempdir().unwrap();
        let out = Command::new(xos())
            .arg("--install")
            .arg(bin.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "xos --install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Env {
            state: tempfile::tempdir().unwrap(),
            bin,
            parent: unique("xos-test"),
        }
    }

    /// A second state directory on the same machine with the same cgroup parent:
    /// another xos instance, or another simulated node.
    pub fn sibling(&self) -> Env {
        let mut e = Env::new();
        e.parent = self.parent.clone();
        e
    }

    /// A command for `applet` (through its symlink) with this env's state and parent.
    pub fn cmd(&self, applet: &str) -> Command {
        let mut c = Command::new(self.bin.path().join(applet));
        c.env("XOS_STATE_DIR", self.state.path())
            .env("XOS_CGROUP_PARENT", &self.parent)
            .env_remove("RUST_LOG");
        c
    }

    pub fn registry(&self) -> xos::registry::Registry {
        xos::registry::Registry::open(self.state.path()).unwrap()
    }

    /// Starts a detached application and returns its id.
    pub fn detach(&self, args: &[&str]) -> u64 {
        let out = self
            .cmd("krgcr-run")
            // The application must not hold this test's pipes open.
            .args([
                "--detach",
                "--print-id",
                "--stdout",
                "/dev/null",
                "--stderr",
                "/dev/null",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "krgcr-run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("an application id")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // A supervisor may be removing its application's group at the same time:
        // try again until the parent is gone.
        if let Ok(layout) = Layout::detect() {
            if let Ok(g) = layout.group(&self.parent) {
                for _ in 0..20 {
                    if g.destroy(Duration::from_secs(10)).is_ok()
                        && !g.paths().iter().any(|p| p.exists())
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Output as text, with the status, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `f` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Reads a file as trimmed text ("" if it cannot be read).
pub fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The state letter of /proc/PID/stat.
pub fn proc_state(pid: i32) -> char {
    xos::process::stat(pid).map(|s| s.state).unwrap_or('?')
}

/// Bind-mounts `src` over `target` (inside [`in_private_mount_ns`]).
pub fn bind_over(src: &Path, target: &str) {
    nix::mount::mount(
        Some(src),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("bind {} over {target}: {e}", src.display()));
}

/// Runs `body` in a forked child, in a mount namespace of its own, and fails the
/// test if the child panics or fails. Mounts made by `body` vanish with the child.
pub fn in_private_mount_ns(body: impl FnOnce()) {
    use nix::sys::wait::{waitpid, WaitStatus};
    // SAFETY: the child only runs the test body and exits without returning.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                    .expect("unshare(CLONE_NEWNS)");
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("make / private");
                body();
            }));
            std::process::exit(if r.is_ok() { 0 } else { 101 });
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = waitpid(child, None).unwrap();
            assert_eq!(
                st,
                WaitStatus::Exited(child, 0),
                "the test body failed in the child (see its output above)"
            );
        }
    }
}
