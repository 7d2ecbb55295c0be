//! ipcrestart: restore SysV IPC objects saved by ipccheckpoint (D2.2.11 §2.2–2.5).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgGroup, CommandFactory, Parser};
use xos::sysvipc::{self, Image, Kind, Meta};

use crate::common;
use crate::ipccheckpoint::NsTarget;

const NAME: &str = "ipcrestart";

/// Restore a SysV IPC object saved by ipccheckpoint, with the same key and identifier.
///
/// The object is recreated in the IPC namespace of the caller (or, with --app or
/// --pid, of an application or process) with the key, identifier, owner, creator
/// and mode it had, and its content: the messages of a queue in their order, the
/// values of a semaphore array, the touched pages of a segment (the others stay
/// untouched). The identifier is requested through /proc/sys/kernel/*_next_id, which
/// needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (root).
///
/// Nothing is created when the file is truncated or corrupt, when the key or the
/// identifier is already used in the namespace, or when the object exceeds the
/// namespace limits; if creating or filling fails midway, the object is removed.
/// With --all, the namespace limits saved in the directory are applied first and
/// every object is restored, all or nothing: a failure removes the objects already
/// created and puts the limits back.
///
/// -m, -s and -M are optional: they check that FILE holds that kind of object.
#[derive(Debug, Parser)]
#[command(name = "ipcrestart", version = common::version(), after_help = AFTER, after_long_help = AFTER_LONG)]
#[command(override_usage = USAGE)]
#[command(group(ArgGroup::new("kind").args(["msg", "sem", "shm"])))]
#[command(group(ArgGroup::new("source").required(true).args(["file", "all"])))]
struct Args {
    /// Check that FILE holds a message queue
    #[arg(short = 'm', long = "msg")]
    msg: bool,

    /// Check that FILE holds a semaphore array
    #[arg(short = 's', long = "sem")]
    sem: bool,

    /// Check that FILE holds a shared memory segment
    #[arg(short = 'M', long = "shm")]
    shm: bool,

    /// Restore every object saved in DIR by ipccheckpoint --all, and the namespace limits
    #[arg(short = 'a', long, value_name = "DIR", conflicts_with = "kind")]
    all: Option<PathBuf>,

    /// Show what FILE (or DIR with --all) holds and check it; restore nothing
    #[arg(short, long)]
    info: bool,

    /// With --info: print JSON: for FILE an object with file, bytes, format, kind
    /// (msg, sem or shm) and meta (the file's metadata, see ipccheckpoint(1)); for
    /// DIR an object with dir, saved, limits and objects (one such object each)
    #[arg(long, requires = "info")]
    json: bool,

    #[command(flatten)]
    ns: NsTarget,

    /// Print what was restored
    #[arg(short, long)]
    verbose: bool,

    /// File written by ipccheckpoint
    #[arg(value_name = "FILE", conflicts_with = "all")]
    file: Option<PathBuf>,
}

const USAGE: &str = "ipcrestart [OPTIONS] [-m|-s|-M] FILE
       ipcrestart [OPTIONS] --all DIR
       ipcrestart --info [--json] FILE
       ipcrestart --info [--json] --all DIR";

const AFTER: &str = "\
Examples:
  ipcrestart -m dest/msq.dat
  ipcrestart --info dest/msq.dat
  ipcrestart --all dest/ipc";

const AFTER_LONG: &str = "\
Examples:
  ipcrestart -m dest/msq.dat        restore the queue saved in msq.dat
  ipcrestart dest/shm.dat           restore whatever the file holds
  ipcrestart --info dest/msq.dat    show the object, check the file
  ipcrestart --all dest/ipc         restore a namespace saved with --all

A segment that had been removed (IPC_RMID) while still attached is restored as a live segment, so that restarted processes can attach it again: remove it once they have. shm_rmid_forced=1 is not applied by --all when segments are restored (it would destroy them as soon as ipcrestart exits); ipcrestart says so on stderr.

Exit status: 0 on success, 1 on failure (one line on stderr names the object or the file), 2 for a usage error. The file format is described in ipccheckpoint(1).";

pub fn command() -> clap::Command {
    Args::command()
}

fn key_text(key: i32) -> String {
    match key {
        0 => "IPC_PRIVATE".into(),
        k => sysvipc::fmt_key(k),
    }
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    let expect = if a.msg {
        Some(Kind::Msg)
    } else if a.sem {
        Some(Kind::Sem)
    } else if a.shm {
        Some(Kind::Shm)
    } else {
        None
    };
    if a.info {
        let r = match (&a.all, &a.file) {
            (Some(dir), _) if a.json => json_dir(dir),
            (None, Some(file)) if a.json => json_file(file, expect),
            (Some(dir), _) => info_dir(dir),
            (None, Some(file)) => info_file(file, expect),
            (None, None) => unreachable!("clap requires FILE or --all"),
        };
        return match r {
            Ok(()) => 0,
            Err(e) => common::fail(NAME, e),
        };
    }
    if let Err(e) = a.ns.enter() {
        return common::fail(NAME, e);
    }
    if let Some(dir) = &a.all {
        return match sysvipc::restore_all(dir) {
            Ok(r) => {
                for d in &r.deferred {
                    eprintln!("{NAME}: warning: not applied: {d}");
                }
                if a.verbose {
                    for o in &r.objects {
                        println!("restored {} {} (key {})", o.kind, o.id, key_text(o.key));
                    }
                }
                0
            }
            Err(e) => common::fail(NAME, e),
        };
    }
    let file = a.file.as_deref().expect("clap requires FILE or --all");
    match sysvipc::restore(file, expect) {
        Ok(o) => {
            if a.verbose {
                println!("restored {} {} (key {})", o.kind, o.id, key_text(o.key));
            }
            0
        }
        Err(e) => common::fail(NAME, e),
    }
}

fn info_file(path: &Path, expect: Option<Kind>) -> anyhow::Result<()> {
    let img = Image::open(path)?;
    if let Some(k) = expect.filter(|k| *k != img.kind()) {
        anyhow::bail!("{}: holds a {}, not a {k}", path.display(), img.kind());
    }
    print_image(&img, true);
    Ok(())
}

/// One saved object as `--info --json` shows it.
fn image_json(img: &Image) -> serde_json::Value {
    let meta = match img.meta() {
        Meta::Msg(m) => serde_json::to_value(m),
        Meta::Sem(m) => serde_json::to_value(m),
        Meta::Shm(m) => serde_json::to_value(m),
    }
    .expect("metadata serializes");
    serde_json::json!({
        "file": img.path(),
        "bytes": img.file_len(),
        "format": sysvipc::format::VERSION,
        "kind": img.kind(),
        "meta": meta,
    })
}

fn json_file(path: &Path, expect: Option<Kind>) -> anyhow::Result<()> {
    let img = Image::open(path)?;
    if let Some(k) = expect.filter(|k| *k != img.kind()) {
        anyhow::bail!("{}: holds a {}, not a {k}", path.display(), img.kind());
    }
    println!("{:#}", image_json(&img));
    Ok(())
}

fn json_dir(dir: &Path) -> anyhow::Result<()> {
    let (m, images) = sysvipc::open_all(dir)?;
    let all = serde_json::json!({
        "dir": dir,
        "saved": m.saved,
        "limits": m.limits,
        "objects": images.iter().map(image_json).collect::<Vec<_>>(),
    });
    println!("{all:#}");
    Ok(())
}

fn print_image(img: &Image, details: bool) {
    let meta = img.meta();
    let p = meta.perm();
    println!(
        "file:      {} ({} bytes, format {}, checksums ok)",
        img.path().display(),
        img.file_len(),
        sysvipc::format::VERSION
    );
    println!(
        "object:    {} {}, key {}",
        meta.kind(),
        p.id,
        key_text(p.key)
    );
    println!(
        "owner:     uid {} gid {}, creator uid {} gid {}, mode {:04o}",
        p.uid, p.gid, p.cuid, p.cgid, p.mode
    );
    match meta {
        Meta::Msg(m) => {
            println!("saved:     {}", common::fmt_time(m.saved));
            println!("capacity:  {} bytes", m.qbytes);
            println!("messages:  {}, {} bytes", m.messages.len(), m.bytes());
            if details {
                for (i, e) in m.messages.iter().enumerate() {
                    println!("  #{i:<6} type {:<10} {} bytes", e.mtype, e.len);
                }
            }
        }
        Meta::Sem(m) => {
            println!("saved:     {}", common::fmt_time(m.saved));
            let values: Vec<String> = m.values.iter().map(|v| v.to_string()).collect();
            println!(
                "values:    {} semaphores: {}",
                m.values.len(),
                values.join(" ")
            );
        }
        Meta::Shm(m) => {
            println!("saved:     {}", common::fmt_time(m.saved));
            println!(
                "size:      {} bytes, {} stored in {} extents",
                m.size,
                m.stored(),
                m.extents.len()
            );
            println!(
                "state:     {} attached at save{}{}",
                m.nattch,
                if m.locked { ", locked" } else { "" },
                if m.marked_for_removal {
                    ", marked for removal"
                } else {
                    ""
                }
            );
        }
    }
}

fn info_dir(dir: &Path) -> anyhow::Result<()> {
    let (m, images) = sysvipc::open_all(dir)?;
    let l = &m.limits;
    println!("directory: {} ({} objects)", dir.display(), images.len());
    println!("saved:     {}", common::fmt_time(m.saved));
    println!(
        "limits:    msgmax {} msgmnb {} msgmni {} sem {} {} {} {}",
        l.msgmax, l.msgmnb, l.msgmni, l.sem[0], l.sem[1], l.sem[2], l.sem[3]
    );
    println!(
        "           shmmax {} shmall {} shmmni {} shm_rmid_forced {}",
        l.shmmax, l.shmall, l.shmmni, l.shm_rmid_forced
    );
    for img in &images {
        println!();
        print_image(img, false);
    }
    Ok(())
}
