//! VO support with real components: certificates made by `xos-cert`, a real
//! `xos-amsd` on a private socket and state directory, glibc NSS through `getent`
//! and `id` (libnss_xos.so.2 found through LD_LIBRARY_PATH, nsswitch.conf replaced
//! in a private mount namespace), real PAM through `pamtester` (a service file in a
//! private /etc/pam.d), and `pam_app_aem` with real cgroups and a private /tmp.
//! The shared objects come from scripts/build-modules.sh.

mod common;
mod vo_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bind_over, in_private_mount_ns, show, wait_until};
use vo_common::{modules_dir, run_ok, xos_cmd, Daemon, Pki};
use xos::vo::proto::{self, Request, Response};

fn pool(vo: &str, uid: u32, n: u32) -> String {
    format!(
        "Pool {vo} {uid}-{}\nGroupPool {vo} {}-{}\n",
        uid + n - 1,
        uid + 1000,
        uid + 1009
    )
}

fn refused(r: Response) -> String {
    match r {
        Response::Refused(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Flips one character of the global id inside the signed part of a certificate.
fn tamper(pem: &Path, id: &str, out: &Path) {
    let c = openssl::x509::X509::from_pem(&std::fs::read(pem).unwrap()).unwrap();
    let mut der = c.to_der().unwrap();
    let pos = der
        .windows(id.len())
        .position(|w| w == id.as_bytes())
        .expect("global id in the DER");
    der[pos] ^= 0x01;
    let t = openssl::x509::X509::from_der(&der).unwrap();
    std::fs::write(out, t.to_pem().unwrap()).unwrap();
}

#[test]
fn certificates_are_accepted_or_refused_with_the_reason() {
    let pki = Pki::new("testbed0");
    let d = Daemon::start(&pki, &(pool("testbed0", 72000, 5) + "BanUser mallory\n"));
    let ok = pki.user("alice");
    let acct = d.map_ok(&ok);
    assert_eq!(acct.passwd.name, "/CN=alice@testbed0");
    assert!((72000..72005).contains(&acct.passwd.uid));
    assert_eq!(acct.gids.len(), 3, "users, cms, atlas: {acct:?}");
    assert_eq!(acct.passwd.gecos, "/O=testbed0/CN=alice");

    let base = ["--vo", "testbed0", "--group", "users"];
    let with = |name: &str, extra: &[&str]| {
        let mut a: Vec<&str> = vec!["--id", name];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        pki.issue_with(name, &a)
    };
    let expired = with("old", &["--start", "-10", "--days", "1"]);
    assert!(refused(d.map(&expired)).contains("certificate has expired"));
    let future = with("early", &["--start", "2", "--days", "10"]);
    assert!(refused(d.map(&future)).contains("not yet valid"));

    let other = Pki::new("testbed0");
    let stranger = other.user("stranger");
    assert!(refused(d.map(&stranger)).contains("unable to get local issuer certificate"));

    let revoked = pki.user("revoked");
    d.map_ok(&revoked);
    vo_common::run_ok(
        xos_cmd("xos-cert")
            .args(["revoke", "--ca"])
            .arg(pki.ca())
            .arg(&revoked),
    );
    assert!(refused(d.map(&revoked)).contains("certificate revoked"));

    let tampered = pki.dir.path().join("tampered.pem");
    tamper(&ok, "alice", &tampered);
    assert!(refused(d.map(&tampered)).contains("signature failure"));

    let novo = pki.issue_with("novo", &["--id", "novo", "--group", "users"]);
    let why = refused(d.map(&novo));
    assert!(why.contains("missing VO attribute VO name"), "{why}");

    let banned = pki.user("mallory");
    assert!(refused(d.map(&banned)).contains("is banned"));

    // Bans at run time, by subject, through the admin command.
    let o = d.admin(&["ban", "/O=testbed0/CN=alice"]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(refused(d.map(&ok)).contains("is banned"));
    let o = d.admin(&["map"]);
    assert!(!o.status.success());
    let o = d.admin(&["bans"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("/O=testbed0/CN=alice"));
    let o = d.admin(&["unban", "/O=testbed0/CN=alice"]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        d.map_ok(&ok).passwd.uid,
        acct.passwd.uid,
        "same account again"
    );

    // A VO without a pool, and a VO that policy refuses.
    let other_vo = Pki::new("othervo");
    let d2 = Daemon::start(&other_vo, &pool("testbed0", 72100, 2));
    assert!(refused(d2.map(&other_vo.user("bob"))).contains("VO othervo has no account pool"));
    let d3 = Daemon::start(&pki, &(pool("testbed0", 72200, 2) + "AllowVO elsewhere\n"));
    assert!(refused(d3.map(&ok)).contains("VO testbed0 is not allowed"));
    let d4 = Daemon::start(&pki, &(pool("testbed0", 72300, 2) + "AllowRole admin\n"));
    assert!(refused(d4.map(&ok)).contains("role member is not allowed"));

    // The applet verifies as the daemon does.
    let o = xos_cmd("xos-cert")
        .args(["verify", "--ca"])
        .arg(pki.ca())
        .arg(&expired)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expired"));
}

#[test]
fn leases_survive_kill_9_and_are_listed_released_and_limited() {
    let pki = Pki::new("vo1");
    let mut d = Daemon::start(&pki, &(pool("vo1", 72400, 4) + "MaxLeasesPerVO 2\n"));
    let a = d.map_ok(&pki.user("a")).passwd.uid;
    let b = d.map_ok(&pki.user("b")).passwd.uid;
    assert_ne!(a, b);
    assert!(refused(d.map(&pki.user("c"))).contains("the maximum per VO is 2"));
    d.restart(); // kill -9 and start again on the same state directory
    assert_eq!(d.map_ok(&pki.user("a")).passwd.uid, a);
    assert_eq!(
        d.call(&Request::GetPwUid(b)),
        Response::Passwd(Some(proto::Passwd {
            name: "/CN=b@vo1".into(),
            uid: b,
            gid: match d.call(&Request::GetPwUid(b)) {
                Response::Passwd(Some(p)) => p.gid,
                r => panic!("{r:?}"),
            },
            gecos: "/O=vo1/CN=b".into(),
            dir: "/tmp".into(),
            shell: "/bin/sh".into(),
        }))
    );
    let o = d.admin(&["leases"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("/CN=a@vo1") && out.contains("/CN=b@vo1"),
        "{out}"
    );
    let o = d.admin(&["show", "b"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("uid: {b}")));
    let o = d.admin(&["release", "/CN=b@vo1"]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(d.call(&Request::GetPwUid(b)), Response::Passwd(None));
    d.map_ok(&pki.user("c"));
    let o = d.admin(&["show", "nobody-here"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn idle_leases_expire_and_accounts_are_recycled() {
    let pki = Pki::new("vo2");
    let d = Daemon::start(&pki, &(pool("vo2", 72500, 1) + "LeaseIdle 1\n"));
    let a = d.map_ok(&pki.user("a")).passwd.uid;
    let bob = pki.user("bob");
    let why = refused(d.map(&bob));
    assert!(why.contains("every pool account"), "{why}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            d.call(&Request::GetPwUid(a)) == Response::Passwd(None)
        }),
        "the lease did not expire"
    );
    assert_eq!(d.map_ok(&bob).passwd.uid, a, "the account is recycled");
}

#[test]
fn two_daemons_sharing_a_lease_directory_never_share_an_account() {
    let pki = Pki::new("vo3");
    let d1 = Daemon::start(&pki, &pool("vo3", 72600, 6));
    let d2 = d1.sibling();
    let certs: Vec<_> = (0..10).map(|i| pki.user(&format!("u{i}"))).collect();
    let results: Vec<(usize, Response)> = std::thread::scope(|s| {
        let hs: Vec<_> = certs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let d = if i % 2 == 0 { &d1 } else { &d2 };
                s.spawn(move || (i, d.map(c)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut uids = Vec::new();
    for (i, r) in results {
        match r {
            Response::Mapped(a) => uids.push((a.passwd.uid, i)),
            Response::Refused(why) => assert!(why.contains("every pool account"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(uids.len(), 6, "all six accounts leased: {uids:?}");
    let mut only: Vec<u32> = uids.iter().map(|u| u.0).collect();
    only.sort();
    only.dedup();
    assert_eq!(only.len(), 6, "an account was given twice: {uids:?}");
    // Each daemon gives a user the account the other one leased.
    for (uid, i) in uids {
        assert_eq!(d1.map_ok(&certs[i]).passwd.uid, uid);
        assert_eq!(d2.map_ok(&certs[i]).passwd.uid, uid);
    }
}

/// Runs `cmd` with glibc NSS configured as `passwd: files xos` in a private mount
/// namespace; returns (status, stdout).
fn with_nss(d: &Daemon, cmds: &[&[&str]]) -> Vec<(i32, String)> {
    with_nss_env(("XOS_AMSD_SOCKET", d.socket()), cmds)
}

/// [`with_nss`] with `env` telling the module where the daemon is.
fn with_nss_env(env: (&'static str, PathBuf), cmds: &[&[&str]]) -> Vec<(i32, String)> {
    let dir = tempfile::tempdir().unwrap();
    let lib = modules_dir();
    let conf = dir.path().join("nsswitch.conf");
    std::fs::write(
        &conf,
        "passwd: files xos\ngroup: files xos\nshadow: files\nhosts: files\n",
    )
    .unwrap();
    let out = dir.path().join("out.json");
    let cmds: Vec<Vec<String>> = cmds
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    let out2 = out.clone();
    in_private_mount_ns(move || {
        bind_over(&conf, "/etc/nsswitch.conf");
        let mut res = Vec::new();
        for c in &cmds {
            let o = Command::new(&c[0])
                .args(&c[1..])
                .env("LD_LIBRARY_PATH", &lib)
                .env_remove("XOS_AMSD_SOCKET")
                .env(env.0, &env.1)
                .output()
                .unwrap();
            res.push((
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            ));
        }
        std::fs::write(&out2, serde_json::to_vec(&res).unwrap()).unwrap();
    });
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

#[test]
fn glibc_nss_sees_mapped_users_and_groups() {
    let pki = Pki::new("nssvo");
    let mut d = Daemon::start(&pki, &pool("nssvo", 72700, 3));
    let acct = d.map_ok(&pki.user("62a57c32-9c7f-4da2"));
    let name = acct.passwd.name.clone();
    assert_eq!(name, "/CN=62a57c32-9c7f-4da2@nssvo");
    let uid = acct.passwd.uid.to_string();
    let gid = acct.passwd.gid.to_string();
    let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    std::os::unix::fs::chown(file.path(), Some(acct.passwd.uid), Some(acct.passwd.gid)).unwrap();
    let fpath = file.path().to_str().unwrap();
    let r = with_nss(
        &d,
        &[
            &["getent", "passwd", &name],
            &["getent", "passwd", &uid],
            &["getent", "group", &gid],
            &["getent", "group", "nssvo.cms"],
            &["id", &name],
            &["getent", "passwd"],
            &["getent", "group"],
            &["ls", "-ln", fpath],
            &["ls", "-l", fpath],
            &["getent", "passwd", "root"],
            &["getent", "passwd", "/CN=nobody@nssvo"],
        ],
    );
    let line = format!("{name}:x:{uid}:{gid}:/O=nssvo/CN=62a57c32-9c7f-4da2:/tmp:/bin/sh\n");
    assert_eq!(r[0], (0, line.clone()));
    assert_eq!(r[1], (0, line.clone()));
    assert_eq!(r[2], (0, format!("nssvo.users:x:{gid}:{name}\n")));
    assert!(r[3].1.starts_with("nssvo.cms:x:"), "{:?}", r[3]);
    assert!(
        r[4].1
            .contains(&format!("uid={uid}({name}) gid={gid}(nssvo.users)")),
        "{:?}",
        r[4]
    );
    assert!(
        r[4].1.contains("(nssvo.cms)") && r[4].1.contains("(nssvo.atlas)"),
        "{:?}",
        r[4]
    );
    assert!(
        r[5].1.contains("root:x:0:0") && r[5].1.contains(&line),
        "{:?}",
        r[5]
    );
    assert!(r[6].1.contains("nssvo.atlas:x:"), "{:?}", r[6]);
    assert!(r[7].1.contains(&format!(" {uid} {gid} ")), "{:?}", r[7]);
    assert!(
        r[8].1.contains(&format!(" {name} nssvo.users ")),
        "{:?}",
        r[8]
    );
    assert_eq!(r[9].0, 0);
    assert_eq!(r[10].0, 2, "unknown user: not found");

    // Lookups by name and id come from the daemon's cache files: they work while
    // the daemon is stopped (SIGSTOP: alive, but answering nothing).
    let cache = std::fs::read_to_string(d.run.join("passwd")).unwrap();
    assert!(cache.contains(&line), "{cache}");
    let pid = d.pid();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let r = with_nss(
        &d,
        &[&["getent", "passwd", &name], &["getent", "group", &gid]],
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(r[0], (0, line.clone()));
    assert_eq!(r[1].0, 0);
    // A released account disappears at once.
    assert!(d.admin(&["release", &name]).status.success());
    let r = with_nss(
        &d,
        &[&["getent", "passwd", &name], &["getent", "passwd", &uid]],
    );
    assert_eq!((r[0].0, r[1].0), (2, 2), "{r:?}");
    d.map_ok(&pki.user("62a57c32-9c7f-4da2"));

    // With the daemon down, local users still resolve and VO users are not found.
    d.kill9();
    let r = with_nss(
        &d,
        &[&["getent", "passwd", "root"], &["getent", "passwd", &name]],
    );
    assert_eq!(r[0].0, 0);
    assert_eq!(r[1].0, 2);
}

fn cgroup_dirs(parent: &str, job: &str) -> Vec<std::path::PathBuf> {
    ["memory", "cpuacct", "freezer"]
        .iter()
        .map(|h| {
            Path::new("/sys/fs/cgroup")
                .join(h)
                .join(parent)
                .join(format!("aem_jobid_{job}"))
        })
        .collect()
}

const JOB_CONF: &str = "UseCgroups yes\nSubsystems cpuacct,memory,disk\n\
                        MemoryLimit 256M\ndisk.max_usage_in_inode 4\ndisk.max_usage_in_block 1024\n";

#[test]
fn pam_app_aem_runs_the_job_as_the_vo_user_in_its_cgroup() {
    let pki = Pki::new("aemvo");
    let d = Daemon::start(&pki, &(pool("aemvo", 72800, 2) + JOB_CONF));
    let cert = pki.user("62a57c32");
    let aem = |job: &str, script: &str| {
        xos_cmd("pam_app_aem")
            .arg("--socket")
            .arg(d.socket())
            .env("XOS_JOB_ID", job)
            .arg(&cert)
            .args(["/bin/sh", "-c", script])
            .output()
            .unwrap()
    };
    let job = format!("{}", std::process::id());
    let o = aem(
        &job,
        "id -u; id -G; echo $USER; echo $HOME; cat /proc/self/cgroup; \
         cat /sys/fs/cgroup/memory$(grep :memory: /proc/self/cgroup | cut -d: -f3)/memory.limit_in_bytes",
    );
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let acct = d.map_ok(&cert);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], acct.passwd.uid.to_string());
    // `id -G`: the primary group first, then the others (the kernel sorts them).
    let mut got: Vec<u32> = lines[1].split(' ').map(|g| g.parse().unwrap()).collect();
    assert_eq!(got[0], acct.passwd.gid);
    got.sort();
    let mut want = acct.gids.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(lines[2], "/CN=62a57c32@aemvo");
    assert_eq!(lines[3], "/tmp");
    let cg = format!("/{}/aem_jobid_{job}", d.parent);
    assert!(out.contains(&format!(":memory:{cg}\n")), "{out}");
    assert!(out.contains(&format!(":cpuacct:{cg}\n")), "{out}");
    assert!(out.contains(&(256u64 << 20).to_string()), "{out}");
    for p in cgroup_dirs(&d.parent, &job) {
        assert!(!p.exists(), "{} left behind", p.display());
    }

    // The seed's example: a job allowed four files; the fifth is refused.
    let o = aem(
        "123",
        "cd /tmp; for i in 1 2 3 4 5; do echo $i > /tmp/test$i && echo ok $i; done; ls /tmp",
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("ok 4") && !out.contains("ok 5"),
        "{}",
        show(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/tmp/test5"),
        "{}",
        show(&o)
    );

    // CMD's status comes back; what the job leaves running is killed.
    let o = aem("124", "sleep 1000 & exit 7");
    assert_eq!(o.status.code(), Some(7), "{}", show(&o));
    for p in cgroup_dirs(&d.parent, "124") {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    let o = aem("125", "exec /nonexistent/cmd");
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));

    // A refused certificate runs nothing.
    let other = Pki::new("aemvo");
    let o = xos_cmd("pam_app_aem")
        .arg("--socket")
        .arg(d.socket())
        .arg(other.user("x"))
        .args(["/bin/true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("authentication refused"));
}

#[test]
fn pam_app_aem_unit_starts_a_checkpointable_unit_of_the_job() {
    let pki = Pki::new("unitvo");
    let d = Daemon::start(&pki, &pool("unitvo", 73100, 2));
    let cert = pki.user("5c0ffee1");
    let env = common::Env::new();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = shared.path().join("out");
    let o = xos_cmd("pam_app_aem")
        .arg("--socket")
        .arg(d.socket())
        .env("XOS_JOB_ID", "job-unit")
        .env("XOS_STATE_DIR", env.state.path())
        .env("XOS_CGROUP_PARENT", &env.parent)
        .arg("--unit")
        .arg(&cert)
        .args(["/bin/sh", "-c"])
        .arg(format!(
            "id -u > {o}; echo $XOS_JOB_ID >> {o}; exec sleep 1000",
            o = out.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let app: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let rec = env.registry().load(app).unwrap();
    assert_eq!(rec.job.as_deref(), Some("job-unit"));
    assert!(rec.alive());
    let acct = d.map_ok(&cert);
    assert!(wait_until(Duration::from_secs(10), || common::read(&out)
        == format!("{}\njob-unit", acct.passwd.uid)));
    let list = env.cmd("checkpoint").arg("--list").output().unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("job-unit"),
        "{}",
        show(&list)
    );
    // Without a job id there is no unit to record.
    let o = xos_cmd("pam_app_aem")
        .arg("--socket")
        .arg(d.socket())
        .env_remove("XOS_JOB_ID")
        .arg("--unit")
        .arg(&cert)
        .arg("/bin/true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

#[test]
fn pam_xos_through_pamtester() {
    let pki = Pki::new("pamvo");
    let d = Daemon::start(&pki, &(pool("pamvo", 72900, 2) + JOB_CONF));
    let cert = pki.user("carol");
    let mods = modules_dir();
    let pamd = tempfile::tempdir().unwrap();
    let m = mods.join("pam_xos.so");
    let s = d.socket();
    std::fs::write(
        pamd.path().join("xos-test"),
        format!(
            "auth required {m} socket={s} cert={c}\naccount required {m} socket={s}\n\
             session required {m} socket={s}\n",
            m = m.display(),
            s = s.display(),
            c = cert.display()
        ),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let outp = out.path().join("o.json");
    let pamd_path = pamd.path().to_path_buf();
    let outp2 = outp.clone();
    let parent = d.parent.clone();
    in_private_mount_ns(move || {
        bind_over(&pamd_path, "/etc/pam.d");
        let o = Command::new("pamtester")
            .args([
                "-v",
                "xos-test",
                "anyone",
                "authenticate",
                "acct_mgmt",
                "open_session",
                "close_session",
            ])
            .env("XOS_JOB_ID", "4711")
            .output()
            .unwrap();
        let _ = parent;
        std::fs::write(
            &outp2,
            serde_json::to_vec(&(
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ))
            .unwrap(),
        )
        .unwrap();
    });
    let (code, stdout, stderr): (Option<i32>, String, String) =
        serde_json::from_slice(&std::fs::read(&outp).unwrap()).unwrap();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("successfully authenticated"), "{stdout}");
    assert!(
        stdout.contains("session has successfully been closed"),
        "{stdout}"
    );
    for p in cgroup_dirs(&d.parent, "4711") {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    // The certificate may come from the environment instead of the module argument.
    let dave = pki.user("dave");
    std::fs::write(
        pamd.path().join("xos-env"),
        format!("auth required {} socket={}\n", m.display(), s.display()),
    )
    .unwrap();
    let pamd_path = pamd.path().to_path_buf();
    in_private_mount_ns(move || {
        bind_over(&pamd_path, "/etc/pam.d");
        let o = Command::new("pamtester")
            .args(["xos-env", "anyone", "authenticate"])
            .env("XOS_CERT_FILE", &dave)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        let o = Command::new("pamtester")
            .args(["xos-env", "anyone", "authenticate"])
            .env_remove("XOS_CERT_FILE")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "no certificate: {}", show(&o));
    });
    assert!(matches!(
        d.call(&Request::GetPwNam("/CN=dave@pamvo".into())),
        Response::Passwd(Some(_))
    ));
    // A ban makes auth (and account) fail.
    assert!(d.admin(&["ban", "carol"]).status.success());
    let pamd_path = pamd.path().to_path_buf();
    in_private_mount_ns(move || {
        bind_over(&pamd_path, "/etc/pam.d");
        let o = Command::new("pamtester")
            .args(["xos-test", "anyone", "authenticate"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("Authentication failure"));
    });
}

#[test]
fn bad_requests_and_many_concurrent_clients_leave_the_daemon_running() {
    let pki = Pki::new("loadvo");
    let d = Daemon::start(&pki, &pool("loadvo", 73000, 10));
    let sock = d.socket();
    // Malformed JSON in a good frame: an error reply, the connection stays usable.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    proto::write_frame(&mut s, b"{not json").unwrap();
    let r: Response = serde_json::from_slice(&proto::read_frame(&mut s).unwrap().unwrap()).unwrap();
    assert!(
        matches!(r, Response::Error(ref e) if e.contains("malformed")),
        "{r:?}"
    );
    proto::write_frame(&mut s, br#""Ping""#).unwrap();
    let r: Response = serde_json::from_slice(&proto::read_frame(&mut s).unwrap().unwrap()).unwrap();
    assert_eq!(r, Response::Pong);
    // An oversized frame: refused without reading it, connection closed.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let r: Response = serde_json::from_slice(&proto::read_frame(&mut s).unwrap().unwrap()).unwrap();
    assert!(
        matches!(r, Response::Error(ref e) if e.contains("exceeds")),
        "{r:?}"
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // A client that sends half a frame and goes away.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&[0, 0, 0, 50, b'{']).unwrap();
    drop(s);
    // A non-root peer may read NSS data but not map or administer.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::xos())
        .args(["xos-amsd", "--socket"])
        .arg(&sock)
        .arg("leases")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("permission denied"));

    let certs: Vec<_> = (0..5).map(|i| pki.user(&format!("c{i}"))).collect();
    let pems: Vec<String> = certs
        .iter()
        .map(|c| std::fs::read_to_string(c).unwrap())
        .collect();
    let first = d.map_ok(&certs[0]);
    let results: Vec<Result<(), String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                let (sock, pems, first) = (&sock, &pems, &first);
                sc.spawn(move || -> Result<(), String> {
                    let t = Duration::from_secs(30);
                    match i % 4 {
                        0 => match proto::call(
                            sock,
                            t,
                            &Request::Map {
                                cert_pem: pems[i % 5].clone(),
                            },
                        ) {
                            Ok(Response::Mapped(a))
                                if a.passwd.name == format!("/CN=c{}@loadvo", i % 5) =>
                            {
                                Ok(())
                            }
                            r => Err(format!("map {i}: {r:?}")),
                        },
                        1 => match proto::call(
                            sock,
                            t,
                            &Request::GetPwNam(first.passwd.name.clone()),
                        ) {
                            Ok(Response::Passwd(Some(p))) if p.uid == first.passwd.uid => Ok(()),
                            r => Err(format!("getpwnam {i}: {r:?}")),
                        },
                        2 => match proto::call(sock, t, &Request::GetPwUid(first.passwd.uid)) {
                            Ok(Response::Passwd(Some(p))) if p.name == first.passwd.name => Ok(()),
                            r => Err(format!("getpwuid {i}: {r:?}")),
                        },
                        _ => match proto::call(
                            sock,
                            t,
                            &Request::GroupsOf(first.passwd.name.clone()),
                        ) {
                            Ok(Response::Gids(g)) if g == first.gids => Ok(()),
                            r => Err(format!("groups {i}: {r:?}")),
                        },
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let errors: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(d.call(&Request::Ping), Response::Pong);
    let Response::Leases(l) = d.call(&Request::ListLeases) else {
        panic!()
    };
    assert_eq!(l.len(), 5);
}

#[test]
fn static_rules_come_with_a_reload_by_sighup_and_a_bad_file_is_not_applied() {
    let pki = Pki::new("hupvo");
    let d = Daemon::start(&pki, &pool("hupvo", 72800, 3));
    // Alice's VO has no pool here: without a rule she is refused (and gets no lease).
    let alice = pki.issue_with(
        "alice",
        &[
            "--id",
            "a11ce000-0000-0001",
            "--vo",
            "staticvo",
            "--group",
            "users",
        ],
    );
    assert!(
        matches!(d.map(&alice), Response::Refused(ref why) if why.contains("no account pool")),
        "{:?}",
        d.map(&alice)
    );
    let bob = pki.user("b0b00000-0000-0002");
    assert_eq!(d.map_ok(&bob).kind, "pool");
    let pid = d.pid();
    let hup = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();

    // A static rule for alice: local account `nobody`, from /etc/passwd.
    let good = std::fs::read_to_string(&d.conf).unwrap();
    let with_rule = format!("{good}StaticMap staticvo a11ce000-0000-0001 nobody\n");
    std::fs::write(&d.conf, &with_rule).unwrap();
    hup();
    let mut got = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            got = match d.map(&alice) {
                Response::Mapped(a) if a.kind == "static" => Some(a),
                _ => None,
            };
            got.is_some()
        }),
        "the rule was not picked up after SIGHUP: {:?}",
        d.map(&alice)
    );
    let a = got.unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        (a.passwd.name.as_str(), a.passwd.uid),
        ("nobody", nobody.uid.as_raw())
    );
    // A static mapping is not a lease, and bob keeps his.
    let leases = d.admin(&["leases"]);
    assert!(leases.status.success(), "{}", show(&leases));
    let leases = String::from_utf8_lossy(&leases.stdout);
    assert!(
        leases.contains("b0b00000") && !leases.contains("a11ce000"),
        "{leases}"
    );
    assert_eq!(d.map_ok(&bob).kind, "pool");

    // A broken file is refused as a whole: the daemon runs on with the rule.
    std::fs::write(&d.conf, format!("{with_rule}NoSuchKey 1\n")).unwrap();
    hup();
    let o = d.admin(&["reload"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("NoSuchKey")
            || String::from_utf8_lossy(&o.stderr).contains("unknown key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(d.map_ok(&alice).kind, "static");
    // A rule naming a user this node does not have is an error for that user only.
    std::fs::write(
        &d.conf,
        format!("{good}StaticMap staticvo a11ce000-0000-0001 no-such-local-user\n"),
    )
    .unwrap();
    assert!(d.admin(&["reload"]).status.success());
    match d.map(&alice) {
        Response::Error(e) => assert!(e.contains("no-such-local-user"), "{e}"),
        r => panic!("{r:?}"),
    }
    assert_eq!(d.map_ok(&bob).kind, "pool");
}

#[test]
fn a_long_running_process_sees_releases_and_a_dead_daemon() {
    let pki = Pki::new("longvo");
    let d = Daemon::start(&pki, &pool("longvo", 72900, 3));
    let acct = d.map_ok(&pki.user("10n90000-0000-0001"));
    let name = acct.passwd.name.clone();
    // One process, several lookups: its cached copy of the daemon's files must
    // follow a release at once and stop answering once the daemon is gone.
    let script = r#"
import pwd, subprocess, sys, time, os
name, xos, sock, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def has(n):
    try:
        pwd.getpwnam(n)
        return "yes"
    except KeyError:
        return "no"
out = [has(name), has(name)]
subprocess.run([xos, "xos-amsd", "--socket", sock, "release", name], check=True)
out.append(has(name))
os.kill(pid, 9)
time.sleep(1.5)
out.append(has(name))
print(" ".join(out))
"#;
    let xos = env!("CARGO_BIN_EXE_xos");
    let sock = d.socket();
    let pid = d.pid().to_string();
    let r = with_nss(
        &d,
        &[&[
            "python3",
            "-c",
            script,
            &name,
            xos,
            sock.to_str().unwrap(),
            &pid,
        ]],
    );
    assert_eq!(r[0], (0, "yes yes no no\n".to_string()), "{r:?}");
}

#[test]
fn pam_setcred_gives_the_mapped_account_its_vo_groups() {
    let pki = Pki::new("credvo");
    let d = Daemon::start(&pki, &pool("credvo", 73100, 2));
    let cert = pki.user("erin");
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("setcred");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pam_progs/setcred.c");
    let o = Command::new("cc")
        .arg("-o")
        .arg(&prog)
        .arg(&src)
        .arg("-lpam")
        .output()
        .expect("cc (gcc) and libpam0g-dev are needed");
    assert!(o.status.success(), "cc: {}", show(&o));
    let pamd = dir.path().join("pam.d");
    std::fs::create_dir(&pamd).unwrap();
    std::fs::write(
        pamd.join("xos-cred"),
        format!(
            "auth required {} socket={} cert={}\n",
            modules_dir().join("pam_xos.so").display(),
            d.socket().display(),
            cert.display()
        ),
    )
    .unwrap();
    let outp = dir.path().join("out");
    let (pamd2, outp2, prog2) = (pamd.clone(), outp.clone(), prog.clone());
    in_private_mount_ns(move || {
        bind_over(&pamd2, "/etc/pam.d");
        let o = Command::new(&prog2)
            .args(["xos-cred", "anyone"])
            .output()
            .unwrap();
        std::fs::write(&outp2, format!("{:?}\n{}", o.status.code(), show(&o))).unwrap();
    });
    let out = std::fs::read_to_string(&outp).unwrap();
    assert!(out.starts_with("Some(0)"), "{out}");
    let acct = d.map_ok(&cert);
    let line = out
        .lines()
        .find(|l| l.contains(&acct.passwd.name))
        .unwrap_or_else(|| panic!("no line for {}: {out}", acct.passwd.name));
    let mut got: Vec<u32> = line
        .rsplit(&acct.passwd.name)
        .next()
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    got.sort();
    let mut want = acct.gids.clone();
    want.sort();
    assert!(
        want.len() >= 2,
        "the VO user has a group and more: {want:?}"
    );
    assert_eq!(got, want, "{out}");
}

#[test]
fn clients_find_the_daemon_from_the_configuration_file_alone() {
    let pki = Pki::new("sockvo");
    let d = Daemon::start(&pki, &(pool("sockvo", 73000, 2) + JOB_CONF));
    // The daemon is on a socket of the test's own, which only the file names.
    let mut conf = std::fs::read_to_string(&d.conf).unwrap();
    conf += &format!("Socket {}\n", d.socket().display());
    std::fs::write(&d.conf, &conf).unwrap();
    let cert = pki.user("62a57c32-9c7f-4da2-a08d-1093f5e6bee8");
    let client = |applet: &str| {
        let mut c = xos_cmd(applet);
        c.env_remove("XOS_AMSD_SOCKET")
            .env("XOS_AMSD_CONFIG", &d.conf);
        c
    };
    let o = run_ok(client("xos-amsd").arg("ping"));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "xos-amsd is running\n");
    let o = run_ok(
        client("pam_app_aem")
            .env("XOS_JOB_ID", format!("{}", std::process::id()))
            .arg(&cert)
            .args(["/bin/sh", "-c", "echo $USER"]),
    );
    let name = "/CN=62a57c32-9c7f-4da2-a08d-1093f5e6bee8@sockvo";
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), name);
    let r = with_nss_env(
        ("XOS_AMSD_CONFIG", d.conf.clone()),
        &[&["getent", "passwd", name]],
    );
    assert_eq!(r[0].0, 0, "{r:?}");
    assert!(r[0].1.starts_with(name), "{r:?}");

    // pam_xos.so with config= only.
    let pamd = tempfile::tempdir().unwrap();
    std::fs::write(
        pamd.path().join("xos-conf"),
        format!(
            "auth required {} config={} cert={}\n",
            modules_dir().join("pam_xos.so").display(),
            d.conf.display(),
            cert.display()
        ),
    )
    .unwrap();
    let pamd_path = pamd.path().to_path_buf();
    in_private_mount_ns(move || {
        bind_over(&pamd_path, "/etc/pam.d");
        let o = Command::new("pamtester")
            .args(["xos-conf", "anyone", "authenticate"])
            .env_remove("XOS_AMSD_SOCKET")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    });

    // The default names fit their columns: every row lines up with the header.
    let o = run_ok(client("xos-amsd").arg("leases"));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for col in ["NAME", "EXPIRES", "SUBJECT"] {
        let at = lines[0].find(col).unwrap();
        assert!(
            lines[1][..at].ends_with("  ") && !lines[1][at..].starts_with(' '),
            "{col} does not line up:\n{out}"
        );
    }
    assert_eq!(
        &lines[1][lines[0].find("NAME").unwrap()..][..name.len()],
        name
    );
    let o = run_ok(client("xos-amsd").args(["leases", "--json"]));
    let leases: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(leases[0]["name"], name, "{leases}");
    assert_eq!(leases[0]["vo"], "sockvo");
    assert!(leases[0]["expires"].as_u64().unwrap() > leases[0]["last_used"].as_u64().unwrap());

    // Errors name the socket tried, and the real line of a configuration error.
    let o = client("xos-amsd")
        .args(["--socket", "/run/xos-test-nosuch/amsd.sock", "ping"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/run/xos-test-nosuch/amsd.sock"),
        "{}",
        show(&o)
    );
    std::fs::write(&d.conf, format!("{conf}Pool other 1-2\n")).unwrap();
    let line = conf.lines().count() + 1;
    for applet in ["xos-amsd", "pam_app_aem"] {
        let mut c = client(applet);
        if applet == "xos-amsd" {
            c.arg("ping");
        } else {
            c.args([cert.to_str().unwrap(), "/bin/true"]);
        }
        let o = c.output().unwrap();
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!(
                "{}:{line}: Pool other has no GroupPool",
                d.conf.display()
            )),
            "{applet}: {}",
            show(&o)
        );
    }
}
