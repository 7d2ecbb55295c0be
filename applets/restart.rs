//! restart: restart an application from a checkpoint version (D2.2.11 §2.1).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};
use xos::registry;

use crate::common;

/// Restart an application from one of its checkpoint versions (not built yet).
#[derive(Debug, Parser)]
#[command(name = "restart", version = common::version(), after_help = "Example:\n  restart 6 1")]
struct Args {
    /// List the checkpoint versions of APP
    #[arg(long)]
    list: bool,

    /// State directory holding the registry and the images
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Application id
    #[arg(value_name = "APP")]
    app: String,

    /// Checkpoint version to restart from (1, 2, ...)
    #[arg(value_name = "VERSION", required_unless_present = "list")]
    number: Option<u64>,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    if let Err(e) = Args::command()
        .try_get_matches_from(args)
        .and_then(|m| Args::from_arg_matches(&m))
    {
        common::clap_exit(e);
    }
    eprintln!(
        "restart: restarting from a checkpoint image is not built yet in this version of xos"
    );
    2
}
