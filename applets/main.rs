//! The `xos` multi-call binary: picks the applet from the basename of `argv[0]`
//! (a symlink `checkpoint -> xos` runs `checkpoint`) or from the first argument
//! (`xos checkpoint --help`).

mod amsd;
mod checkpoint;
mod common;
mod ipccheckpoint;
mod ipcrestart;
mod krgcr_run;
mod loader;
mod pam_app_aem;
mod progress;
mod restart;
mod xcheckpoint;
mod xos_cert;
mod xrestart;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// One applet: its clap definition (for parsing, `--help` and the man page) and
/// its entry point, which returns the exit status.
pub struct Applet {
    pub name: &'static str,
    pub command: fn() -> Command,
    pub run: fn(Vec<OsString>) -> i32,
}

/// Every applet of xos, in the order `xos --list` shows them.
pub const APPLETS: &[Applet] = &[
    Applet {
        name: "krgcr-run",
        command: krgcr_run::command,
        run: krgcr_run::main,
    },
    Applet {
        name: "checkpoint",
        command: checkpoint::command,
        run: checkpoint::main,
    },
    Applet {
        name: "restart",
        command: restart::command,
        run: restart::main,
    },
    Applet {
        name: "ipccheckpoint",
        command: ipccheckpoint::command,
        run: ipccheckpoint::main,
    },
    Applet {
        name: "ipcrestart",
        command: ipcrestart::command,
        run: ipcrestart::main,
    },
    Applet {
        name: "xcheckpoint",
        command: xcheckpoint::command,
        run: xcheckpoint::main,
    },
    Applet {
        name: "xrestart",
        command: xrestart::command,
        run: xrestart::main,
    },
    Applet {
        name: "xos-amsd",
        command: amsd::command,
        run: amsd::main,
    },
    Applet {
        name: "pam_app_aem",
        command: pam_app_aem::command,
        run: pam_app_aem::main,
    },
    Applet {
        name: "xos-cert",
        command: xos_cert::command,
        run: xos_cert::main,
    },
    Applet {
        name: "xos-loader",
        command: loader::command,
        run: loader::main,
    },
];

fn find(name: &str) -> Option<&'static Applet> {
    APPLETS.iter().find(|a| a.name == name)
}

fn names() -> String {
    APPLETS
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The definition of `xos` itself.
pub fn xos_command() -> Command {
    xos_options()
        .arg(
            Arg::new("applet")
                .value_name("APPLET")
                .help("The applet to run"),
        )
        .arg(
            Arg::new("args")
                .value_name("ARGS")
                .num_args(0..)
                .trailing_var_arg(true)
                .allow_hyphen_values(true)
                .value_parser(clap::value_parser!(OsString))
                .help("Arguments of the applet"),
        )
        .after_help(format!(
            "Applets: {}\n\nEnvironment: RUST_LOG sets what every applet logs on stderr \
             (default warn, e.g. RUST_LOG=debug); the applets' own variables are in their \
             pages.",
            names()
        ))
}

/// The options of `xos` itself, without the applet and its arguments.
fn xos_options() -> Command {
    Command::new("xos")
        .version(common::version())
        .about("XtreemOS node-level services: one binary, many applets")
        .long_about(
            "XtreemOS node-level services for stock Linux: checkpoint and restart of \
             unmodified jobs, per-job cgroup isolation, and the mapping of grid (VO) users \
             to local accounts. Run an applet as `xos APPLET ARGS...` or through a symlink \
             named after it (see --install).",
        )
        .arg(
            Arg::new("list")
                .long("list")
                .action(ArgAction::SetTrue)
                .help("Print the name of every applet"),
        )
        .arg(
            Arg::new("install")
                .long("install")
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Create a symlink to this binary in DIR for xos and every applet"),
        )
        .arg(
            Arg::new("force")
                .long("force")
                .action(ArgAction::SetTrue)
                .requires("install")
                .help("With --install, replace files that are not links to this binary"),
        )
        .arg(
            Arg::new("completions")
                .long("completions")
                .value_name("SHELL")
                .value_parser(clap::value_parser!(clap_complete::Shell))
                .help(
                    "Print the shell completions of xos and every applet (of APPLET only, if \
                     given) for bash, zsh, fish, elvish or powershell",
                ),
        )
}

/// Completions of xos (its applets as subcommands) and of every applet under its
/// own name, or of `only`.
fn completions(shell: clap_complete::Shell, only: Option<&str>) -> i32 {
    if let Some(name) = only.filter(|n| *n != "xos" && find(n).is_none()) {
        return unknown(name);
    }
    let mut script = Vec::new();
    if only.is_none_or(|n| n == "xos") {
        let mut xos = xos_options().subcommands(APPLETS.iter().map(|a| (a.command)()));
        clap_complete::generate(shell, &mut xos, "xos", &mut script);
    }
    for a in APPLETS.iter().filter(|a| only.is_none_or(|n| n == a.name)) {
        clap_complete::generate(shell, &mut (a.command)(), a.name, &mut script);
    }
    print!("{}", String::from_utf8_lossy(&script));
    0
}

fn unknown(name: &str) -> i32 {
    eprintln!("xos: unknown applet '{name}' (known: {})", names());
    2
}

fn xos_main(args: Vec<OsString>) -> i32 {
    // `xos APPLET ARGS...`: everything after the name belongs to the applet,
    // `--help` included, so it is dispatched before xos parses options.
    if let Some(first) = args.get(1).map(|a| a.to_string_lossy().into_owned()) {
        if !first.starts_with('-') {
            let Some(applet) = find(&first) else {
                return unknown(&first);
            };
            return (applet.run)(args[1..].to_vec());
        }
    }
    let m = match xos_command().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => common::clap_exit(e),
    };
    if m.get_flag("list") {
        for a in APPLETS {
            println!("{}", a.name);
        }
        return 0;
    }
    if let Some(&shell) = m.get_one::<clap_complete::Shell>("completions") {
        return completions(shell, m.get_one::<String>("applet").map(String::as_str));
    }
    if let Some(dir) = m.get_one::<PathBuf>("install") {
        return match install(dir, m.get_flag("force")) {
            Ok(()) => 0,
            Err(e) => common::fail("xos", e),
        };
    }
    let Some(name) = m.get_one::<String>("applet") else {
        eprintln!("xos: no applet given (known: {}); see xos --help", names());
        return 2;
    };
    let Some(applet) = find(name) else {
        return unknown(name);
    };
    let mut rest: Vec<OsString> = vec![OsString::from(applet.name)];
    rest.extend(
        m.get_many::<OsString>("args")
            .into_iter()
            .flatten()
            .cloned(),
    );
    (applet.run)(rest)
}

/// Creates DIR/<applet> -> this executable for every applet. Everything is checked
/// before anything is created, so a refusal changes nothing.
fn install(dir: &Path, force: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let exe = std::fs::canonicalize("/proc/self/exe").context("cannot find this executable")?;
    if !dir.is_dir() {
        anyhow::bail!("{}: not a directory", dir.display());
    }
    let mut todo = Vec::new();
    // `xos` too, so that DIR alone gives every name (it may be the binary itself).
    for name in std::iter::once("xos").chain(APPLETS.iter().map(|a| a.name)) {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Err(_) => todo.push((link, false)),
            Ok(md) => {
                let ours = std::fs::canonicalize(&link)
                    .map(|t| t == exe)
                    .unwrap_or(false);
                if ours {
                    continue;
                }
                if md.is_dir() {
                    anyhow::bail!("{}: is a directory", link.display());
                }
                if !force {
                    anyhow::bail!(
                        "{}: exists and is not a link to {} (use --force to replace it)",
                        link.display(),
                        exe.display()
                    );
                }
                todo.push((link, true));
            }
        }
    }
    for (link, replace) in todo {
        if replace {
            // Link under a temporary name, then rename over the old file.
            let tmp = dir.join(format!(
                ".{}.xos-install",
                link.file_name().unwrap().to_string_lossy()
            ));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&exe, &tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            std::fs::rename(&tmp, &link)
                .with_context(|| format!("cannot replace {}", link.display()))?;
        } else {
            std::os::unix::fs::symlink(&exe, &link)
                .with_context(|| format!("cannot create {}", link.display()))?;
        }
    }
    Ok(())
}

fn main() {
    common::init_logging();
    let args: Vec<OsString> = std::env::args_os().collect();
    let base = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match (
        find(&base),
        args.get(1).and_then(|a| find(&a.to_string_lossy())),
    ) {
        (Some(a), _) | (None, Some(a)) => a.name,
        (None, None) => "xos",
    };
    common::quiet_on_closed_stdout(name);
    let code = match find(&base) {
        Some(applet) => (applet.run)(args),
        None if base == "xos" || base.is_empty() => xos_main(args),
        None => unknown(&base),
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(cmd: Command) -> Vec<u8> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out).unwrap();
        out
    }

    /// man/ holds one page per applet generated from the clap definitions; run
    /// `scripts/gen-man.sh` (XOS_UPDATE_MAN=1) after changing an option.
    #[test]
    fn man_pages_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let update = std::env::var_os("XOS_UPDATE_MAN").is_some();
        let mut pages: Vec<(String, Vec<u8>)> = vec![("xos".into(), render(xos_command()))];
        for a in APPLETS {
            pages.push((a.name.to_string(), render((a.command)())));
        }
        let mut stale = Vec::new();
        for (name, page) in pages {
            let path = dir.join(format!("{name}.1"));
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &page).unwrap();
            } else if std::fs::read(&path).ok().as_deref() != Some(&page[..]) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "out of date (run scripts/gen-man.sh): {stale:?}"
        );
    }

    #[test]
    fn definitions_are_valid() {
        xos_command().debug_assert();
        for a in APPLETS {
            let c = (a.command)();
            assert_eq!(c.get_name(), a.name);
            c.debug_assert();
        }
    }
}
