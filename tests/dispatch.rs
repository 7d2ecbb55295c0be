//! The multi-call dispatcher: symlinks, first argument, unknown names, --install.

mod common;

use std::os::unix::fs::symlink;
use std::process::Command;

use common::{show, xos};

const ALL: &[&str] = &[
    "xos-amsd",
    "pam_app_aem",
    "krgcr-run",
    "checkpoint",
    "restart",
    "ipccheckpoint",
    "ipcrestart",
    "xcheckpoint",
    "xrestart",
    "xos-loader",
];

#[test]
fn list_names_every_applet() {
    let o = Command::new(xos()).arg("--list").output().unwrap();
    assert!(o.status.success());
    let listed: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for a in ALL {
        assert!(
            listed.iter().any(|l| l == a),
            "{a} missing from --list: {listed:?}"
        );
    }
}

#[test]
fn applet_by_symlink_and_by_first_argument() {
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join("checkpoint");
    symlink(xos(), &link).unwrap();
    let by_link = Command::new(&link).arg("--help").output().unwrap();
    assert!(by_link.status.success(), "{}", show(&by_link));
    assert!(String::from_utf8_lossy(&by_link.stdout).contains("Usage: checkpoint"));
    let by_arg = Command::new(xos())
        .args(["checkpoint", "--help"])
        .output()
        .unwrap();
    assert!(by_arg.status.success(), "{}", show(&by_arg));
    assert_eq!(by_link.stdout, by_arg.stdout);
    // Every applet has --help.
    for a in ALL {
        let o = Command::new(xos()).args([a, "--help"]).output().unwrap();
        assert!(o.status.success(), "{a} --help: {}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("Usage: {a}")),
            "{a}"
        );
    }
}

#[test]
fn unknown_applet_is_one_line_and_status_2() {
    let o = Command::new(xos()).arg("frobnicate").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unknown applet 'frobnicate'") && err.contains("krgcr-run"),
        "{err}"
    );

    // A link whose name is no applet (the basename must match exactly).
    let d = tempfile::tempdir().unwrap();
    for name in ["frobnicate", "my-checkpoint", "checkpoint.old"] {
        let link = d.path().join(name);
        symlink(xos(), &link).unwrap();
        let o = Command::new(&link).arg("--help").output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{name}: {}", show(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("unknown applet '{name}'")));
    }
}

#[test]
fn an_applet_without_its_command_says_so_in_one_line() {
    let args = ["xos-loader"];
    let o = Command::new(xos()).args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no command given") && err.lines().count() == 1,
        "{args:?}: {err}"
    );
}

#[test]
fn install_creates_links_and_refuses_foreign_files() {
    let d = tempfile::tempdir().unwrap();
    let run = |force: bool| {
        let mut c = Command::new(xos());
        c.arg("--install").arg(d.path());
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let o = run(false);
    assert!(o.status.success(), "{}", show(&o));
    let exe = std::fs::canonicalize(xos()).unwrap();
    for a in ALL.iter().chain(&["xos"]) {
        let l = d.path().join(a);
        assert!(std::fs::symlink_metadata(&l)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::canonicalize(&l).unwrap(), exe);
    }
    // Again: links to this binary are fine.
    assert!(run(false).status.success());

    // A foreign file is refused, and nothing else is touched.
    let e = tempfile::tempdir().unwrap();
    std::fs::write(e.path().join("restart"), "#!/bin/sh\n").unwrap();
    let o = Command::new(xos())
        .arg("--install")
        .arg(e.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("restart"));
    assert_eq!(
        std::fs::read_dir(e.path()).unwrap().count(),
        1,
        "links were created despite the refusal"
    );
    assert_eq!(
        std::fs::read_to_string(e.path().join("restart")).unwrap(),
        "#!/bin/sh\n"
    );

    let o = Command::new(xos())
        .arg("--install")
        .arg(e.path())
        .arg("--force")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        std::fs::canonicalize(e.path().join("restart")).unwrap(),
        exe
    );

    // Into the binary's own directory: the binary itself stays as it is. A hard
    // link, not a copy: a copy's descriptor, inherited by a command another test
    // spawns meanwhile, would make executing it fail with ETXTBSY.
    let f = tempfile::tempdir_in(xos().parent().unwrap()).unwrap();
    let own = f.path().join("xos");
    std::fs::hard_link(xos(), &own).unwrap();
    let o = Command::new(&own)
        .arg("--install")
        .arg(f.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(std::fs::symlink_metadata(&own).unwrap().is_file());
    assert_eq!(
        std::fs::read_link(f.path().join("checkpoint")).unwrap(),
        std::fs::canonicalize(&own).unwrap()
    );

    let o = Command::new(xos())
        .args(["--install", "/nonexistent/dir"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn version_names_openssl() {
    let o = Command::new(xos()).arg("--version").output().unwrap();
    assert!(o.status.success());
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(v.starts_with("xos ") && v.contains("OpenSSL"), "{v}");
}
