//! The cgroup library against the real kernel: v1 hierarchies, a v2 hierarchy of
//! the test's own (mounted in a private mount namespace) and the host's hybrid
//! layout. Every test works under a cgroup parent of its own and removes it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{proc_state, unique};
use xos::cgroup::{CgroupError, CpuMax, FreezerState, Group, Layout, LayoutKind, Limits, Version};

const T: Duration = Duration::from_secs(10);

/// Removes the test's cgroup parent whatever happens.
struct Cleanup(Group);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.destroy(T);
    }
}

/// A shell that, once released, writes 8 MiB to a tmpfs file (memory charged to
/// its cgroup) and sleeps.
struct Worker {
    child: Child,
    file: String,
}

impl Worker {
    fn spawn() -> Worker {
        let file = format!("/dev/shm/{}", unique("xos-test-mem"));
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "read go; dd if=/dev/zero of={file} bs=1M count=8 2>/dev/null; echo done; exec sleep 1000"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Worker { child, file }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Lets it work and waits until it has written its file.
    fn release(&mut self) {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(self.child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "done");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The lifecycle every layout must support: create, attach, list, usage, freeze,
/// thaw, kill, remove.
fn lifecycle(layout: &Layout, parent: &str) {
    let g = layout.group(&format!("{parent}/job1")).unwrap();
    g.create().unwrap();
    assert!(g.exists());
    let mut w = Worker::spawn();
    g.attach(w.pid()).unwrap();
    assert_eq!(g.pids().unwrap(), vec![w.pid()]);
    assert!(g.contains(w.pid()));
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", w.pid())).unwrap();
    assert!(cg.contains(&format!("/{parent}/job1")), "{cg}");
    w.release();

    let u = g.usage().unwrap();
    assert!(u.tasks >= 1, "{u:?}");
    assert!(u.cpu_ns.unwrap() > 0, "{u:?}");
    if let Some(cur) = u.memory_current {
        assert!(
            cur >= 8 << 20,
            "8 MiB of tmpfs are charged to the group: {u:?}"
        );
        assert!(u.memory_peak.unwrap_or(u64::MAX) >= cur, "{u:?}");
    }

    // A process inside keeps the group: removal is refused and changes nothing.
    assert!(matches!(
        g.remove(),
        Err(CgroupError::NotEmpty { count: 1, .. })
    ));
    assert!(g.exists());

    g.freeze(T).unwrap();
    assert_eq!(g.freezer_state().unwrap(), FreezerState::Frozen);
    // The parent's freezer state is unaffected on v2 and "frozen by a child" on v1:
    // either way the task itself is stopped.
    let st = proc_state(w.pid());
    assert!(
        st == 'D' || st == 'S' || st == 'T',
        "frozen task state {st}"
    );
    let before = xos::process::stat(w.pid()).unwrap();
    g.thaw(T).unwrap();
    assert_eq!(g.freezer_state().unwrap(), FreezerState::Thawed);
    assert_eq!(
        xos::process::stat(w.pid()).unwrap().starttime,
        before.starttime
    );

    g.kill(T).unwrap();
    let status = w.child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
    assert!(g.pids().unwrap().is_empty());
    g.remove().unwrap();
    assert!(g.paths().iter().all(|p| !p.exists()));
}

#[test]
fn v1_hierarchies() {
    let host = Layout::detect().unwrap();
    let Some(v1) = host.v1_only() else {
        eprintln!("skipped: this host has no cgroup v1 hierarchy");
        return;
    };
    assert_eq!(v1.kind(), LayoutKind::V1);
    let parent = unique("xos-test-v1");
    let _c = Cleanup(v1.group(&parent).unwrap());
    lifecycle(&v1, &parent);
}

#[test]
fn v1_limits() {
    let Some(v1) = Layout::detect().unwrap().v1_only() else {
        eprintln!("skipped: this host has no cgroup v1 hierarchy");
        return;
    };
    let parent = unique("xos-test-v1lim");
    let _c = Cleanup(v1.group(&parent).unwrap());
    let g = v1.group(&format!("{parent}/job")).unwrap();
    g.create().unwrap();
    let limits = Limits {
        memory_max: Some(64 << 20),
        cpu_weight: Some(200),
        cpu_max: Some(CpuMax {
            quota_us: 50_000,
            period_us: 100_000,
        }),
        pids_max: Some(20),
        cpuset_cpus: Some("0".into()),
        cpuset_mems: Some("0".into()),
    };
    g.set_limits(&limits).unwrap();
    assert_eq!(g.limits().unwrap(), limits);
    let dir = |c: &str| {
        v1.hierarchies()
            .iter()
            .find(|h| h.controllers.iter().any(|x| x == c))
            .unwrap()
            .mount
            .join(g.name())
    };
    assert_eq!(
        common::read(dir("memory").join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(common::read(dir("cpu").join("cpu.shares")), "2048");

    // One bad value: nothing is written.
    let bad = Limits {
        memory_max: Some(32 << 20),
        cpu_weight: Some(0),
        ..Limits::default()
    };
    let e = g.set_limits(&bad).unwrap_err().to_string();
    assert!(e.contains("cpu weight") && e.contains(&parent), "{e}");
    assert_eq!(g.limits().unwrap().memory_max, Some(64 << 20));

    // A value the kernel refuses: the error names the group and the file.
    let e = g
        .set_limits(&Limits {
            cpuset_cpus: Some("4095".into()),
            ..Limits::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cpuset.cpus") && e.contains(&format!("{parent}/job")),
        "{e}"
    );

    // The pids limit is enforced by the kernel.
    g.set_limits(&Limits {
        pids_max: Some(3),
        ..Limits::default()
    })
    .unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs; for i in 1 2 3 4 5; do sleep 1 & done; wait",
            dir("pids").display()
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fork"),
        "{}",
        common::show(&out)
    );
    g.kill(T).unwrap();
}

#[test]
fn v2_own_mount() {
    common::in_private_mount_ns(|| {
        let mnt = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("cgroup2"),
            mnt.path(),
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount cgroup2");
        let v2 = Layout::v2(mnt.path());
        assert_eq!(v2.kind(), LayoutKind::V2);
        let parent = unique("xos-test-v2");
        let _c = Cleanup(v2.group(&parent).unwrap());
        lifecycle(&v2, &parent);

        // Limits go to v2 files where the controller is available, and are
        // refused by name where it is not (on hybrid hosts v1 holds them).
        let g = v2.group(&format!("{parent}/lim")).unwrap();
        g.create().unwrap();
        let has = |c: &str| v2.hierarchies()[0].controllers.iter().any(|x| x == c);
        let l = Limits {
            memory_max: Some(64 << 20),
            pids_max: Some(20),
            ..Limits::default()
        };
        if has("memory") && has("pids") {
            g.set_limits(&l).unwrap();
            assert_eq!(
                common::read(mnt.path().join(g.name()).join("memory.max")),
                (64u64 << 20).to_string()
            );
            assert_eq!(g.limits().unwrap().memory_max, Some(64 << 20));
        } else {
            let e = g.set_limits(&l).unwrap_err();
            assert!(matches!(e, CgroupError::NoController { .. }), "{e}");
            assert!(e.to_string().contains("controller is not available"), "{e}");
        }
        g.remove().unwrap();
    });
}

#[test]
fn hybrid_host_uses_both() {
    let host = Layout::detect().unwrap();
    if host.kind() != LayoutKind::Hybrid {
        eprintln!("skipped: this host is not hybrid ({})", host.kind());
        return;
    }
    let parent = unique("xos-test-hy");
    let _c = Cleanup(host.group(&parent).unwrap());
    let g = host.group(&format!("{parent}/job")).unwrap();
    assert!(g.dirs().iter().any(|d| d.version == Version::V1));
    assert!(g.dirs().iter().any(|d| d.version == Version::V2));
    lifecycle(&host, &parent);
}

#[test]
fn killing_a_parent_kills_a_frozen_sub_group() {
    let host = Layout::detect().unwrap();
    let parent = unique("xos-test-kf");
    let top = host.group(&parent).unwrap();
    let _c = Cleanup(top.clone());
    let job = host.group(&format!("{parent}/job")).unwrap();
    job.create().unwrap();
    // Holding none of the test's pipes, so a failure cannot hang the harness.
    let mut child = Command::new("sleep")
        .arg("1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    job.attach(child.id() as i32).unwrap();
    job.freeze(T).unwrap();
    // Within the timeout, not after it: the frozen task must be let die.
    let start = std::time::Instant::now();
    top.kill(Duration::from_secs(5)).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(job.pids().unwrap().is_empty());
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
}
