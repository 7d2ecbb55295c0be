//! Applets whose body is not built yet. Each has its definition (so `--help`, the
//! man page and `xos --list` are right) and says plainly that it does not work yet.

use std::ffi::OsString;

use clap::{Arg, Command};

use crate::common;

fn stub(name: &'static str, about: &'static str, usage: &'static str) -> Command {
    Command::new(name)
        .version(common::version())
        .about(about)
        .override_usage(usage)
        .arg(
            Arg::new("args")
                .value_name("ARGS")
                .num_args(0..)
                .trailing_var_arg(true)
                .allow_hyphen_values(true)
                .help("Arguments (this applet is not built yet)"),
        )
        .after_help("This applet is registered but not built yet in this version of xos.")
}

fn not_built(cmd: Command, args: Vec<OsString>) -> i32 {
    let name = cmd.get_name().to_string();
    if let Err(e) = cmd.try_get_matches_from(args) {
        common::clap_exit(e);
    }
    eprintln!("{name}: not built yet in this version of xos");
    2
}

macro_rules! stubs {
    ($($f:ident, $main:ident, $name:literal, $about:literal, $usage:literal;)*) => {$(
        pub fn $f() -> Command {
            stub($name, $about, $usage)
        }
        pub fn $main(args: Vec<OsString>) -> i32 {
            not_built($f(), args)
        }
    )*};
}

stubs! {
    loader, loader_main, "xos-loader",
        "Start a job unit inside a container and report its end over a socket",
        "xos-loader [OPTIONS] CMD [ARGS]...";
}
