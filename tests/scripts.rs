//! The scripts a newcomer runs: the demo end to end, the install into a DESTDIR,
//! and the Debian package installed, upgraded and purged in a throwaway root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::show;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binary the scripts install: the release build when scripts/test.sh names
/// it, else the test build (then packages are compressed fast: it is large).
fn script(name: &str) -> Command {
    let mut c = Command::new(repo().join("scripts").join(name));
    match std::env::var_os("XOS_RELEASE_BIN") {
        Some(p) => c.env("XOS_BIN", p),
        None => c
            .env("XOS_BIN", common::xos())
            .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip")
            .env("DPKG_DEB_COMPRESSOR_LEVEL", "1"),
    };
    c.env_remove("XOS_STATE_DIR").env_remove("RUST_LOG");
    c
}

fn applets() -> Vec<String> {
    let o = Command::new(common::xos()).arg("--list").output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn demo_runs_end_to_end() {
    let o = script("demo.sh").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", show(&o));
    for step in [
        "$ checkpoint -c --kill",
        "$ restart --list",
        "$ restart --detach",
        "continued from where it stopped",
        "demo.sh: every step did what it says",
    ] {
        assert!(out.contains(step), "no '{step}' in {}", show(&o));
    }
    // Nothing left: not its temporary state directory, not its cgroups.
    let state = out
        .split("(state directory ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("the state directory is named");
    assert!(!Path::new(state).exists(), "{state} is left");
    let parent = out
        .split("cgroup parent ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the cgroup parent is named");
    let layout = xos::cgroup::Layout::detect().unwrap();
    let g = layout.group(parent).unwrap();
    assert!(
        g.paths().iter().all(|p| !p.exists()),
        "cgroup {parent} is left"
    );
}

/// Every file an install must put under `root` with `prefix`.
fn expected_files(prefix: &str) -> Vec<String> {
    let mut files = vec![
        format!("{prefix}/bin/xos"),
        "/usr/lib/x86_64-linux-gnu/security/pam_xos.so".into(),
        "/usr/lib/x86_64-linux-gnu/libnss_xos.so.2".into(),
        "/usr/lib/systemd/system/xos-amsd.service".into(),
        "/etc/xos/nss_pam/pam_xos.conf".into(),
        format!("{prefix}/share/man/man8/pam_xos.8"),
        format!("{prefix}/share/man/man8/libnss_xos.8"),
    ];
    for name in std::iter::once("xos".to_string()).chain(applets()) {
        if name != "xos" {
            files.push(format!("{prefix}/bin/{name}"));
        }
        files.push(format!("{prefix}/share/man/man1/{name}.1"));
        files.push(format!("{prefix}/share/bash-completion/completions/{name}"));
        files.push(format!("{prefix}/share/zsh/vendor-completions/_{name}"));
        files.push(format!(
            "{prefix}/share/fish/vendor_completions.d/{name}.fish"
        ));
    }
    files
}

fn check_installed(root: &Path, prefix: &str) {
    for f in expected_files(prefix) {
        let p = root.join(f.trim_start_matches('/'));
        assert!(p.exists(), "{} is missing", p.display());
    }
    for a in applets() {
        let link = root.join(format!("{}/bin/{a}", prefix.trim_start_matches('/')));
        assert_eq!(std::fs::read_link(&link).unwrap(), PathBuf::from("xos"));
    }
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/xos-amsd.service")).unwrap();
    assert!(
        unit.contains(&format!("ExecStart={prefix}/bin/xos-amsd --foreground")),
        "{unit}"
    );
    let bash = root.join(format!(
        "{}/share/bash-completion/completions/checkpoint",
        prefix.trim_start_matches('/')
    ));
    assert!(std::fs::read_to_string(bash).unwrap().contains("--freeze"));
    // The configuration is all comments (the defaults), and every commented
    // setting is a valid line once uncommented.
    let conf = root.join("etc/xos/nss_pam/pam_xos.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let parsed = xos::vo::config::Config::parse(&text, &conf).unwrap();
    assert_eq!(
        parsed,
        xos::vo::config::Config {
            path: Some(conf.clone()),
            ..Default::default()
        }
    );
    let settings: String = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_alphabetic()))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(settings.lines().count() > 20, "{settings}");
    if let Err(e) = xos::vo::config::Config::parse(&settings, &conf) {
        panic!("uncommented settings: {e}\n{settings}");
    }
}

#[test]
fn install_into_a_destdir() {
    let d = tempfile::tempdir().unwrap();
    let o = script("install.sh").arg(d.path()).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    check_installed(d.path(), "/usr/local");
    // Installed again: an administrator's configuration is kept.
    let conf = d.path().join("etc/xos/nss_pam/pam_xos.conf");
    std::fs::write(&conf, "UseCgroups yes\n").unwrap();
    let o = script("install.sh").arg(d.path()).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "UseCgroups yes\n");
}

fn dpkg(root: &Path, args: &[&str]) -> std::process::Output {
    let o = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-confold"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    assert!(o.status.success(), "dpkg {args:?}: {}", show(&o));
    o
}

#[test]
fn package_installs_upgrades_and_purges_in_a_throwaway_root() {
    let out = tempfile::tempdir().unwrap();
    let build = |version: &str| {
        let o = script("package.sh")
            .arg(out.path())
            .env("XOS_VERSION", version)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        let deb = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        assert_eq!(deb, out.path().join(format!("xos_{version}_amd64.deb")));
        deb
    };
    let first = build("0.1.0");
    let field = |deb: &Path, f: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .arg(f)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field(&first, "Package"), "xos");
    assert_eq!(field(&first, "Architecture"), "amd64");

    let root = tempfile::tempdir().unwrap();
    let admin = root.path().join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    dpkg(root.path(), &["-i", first.to_str().unwrap()]);
    check_installed(root.path(), "/usr");
    let conffiles = std::fs::read_to_string(admin.join("info/xos.conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/xos/nss_pam/pam_xos.conf");

    // Upgrade: the new version's files, the administrator's configuration kept.
    let conf = root.path().join("etc/xos/nss_pam/pam_xos.conf");
    std::fs::write(&conf, "UseCgroups yes\n").unwrap();
    let second = build("0.1.1");
    dpkg(root.path(), &["-i", second.to_str().unwrap()]);
    let status = std::fs::read_to_string(admin.join("status")).unwrap();
    assert!(status.contains("Version: 0.1.1"), "{status}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "UseCgroups yes\n");
    check_installed_but_conf(root.path());

    // Purge: nothing of the package is left, the configuration included.
    dpkg(root.path(), &["--purge", "xos"]);
    let mut left = Vec::new();
    for f in expected_files("/usr") {
        if root.path().join(f.trim_start_matches('/')).exists() {
            left.push(f);
        }
    }
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert!(!root.path().join("etc/xos").exists());
}

/// After an upgrade with a changed configuration: every file but that one's text.
fn check_installed_but_conf(root: &Path) {
    for f in expected_files("/usr") {
        assert!(root.join(f.trim_start_matches('/')).exists(), "{f} missing");
    }
}
