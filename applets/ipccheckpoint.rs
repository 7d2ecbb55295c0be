//! ipccheckpoint: save SysV IPC objects to files (D2.2.11 §2.2–2.5).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgGroup, CommandFactory, Parser};
use xos::registry::{self, Registry};
use xos::sysvipc::{self, Kind, Selector};

use crate::common;

const NAME: &str = "ipccheckpoint";

/// Save a SysV message queue, semaphore array or shared memory segment to a file.
///
/// The object keeps running unchanged: messages are copied, not received
/// (msgrcv MSG_COPY), semaphore values are read at once (semctl GETALL), and only
/// the pages of a segment that were ever touched are read, without faulting in the
/// others. ipcrestart(1) recreates the object with the same key, identifier, owner,
/// mode and content. Save the objects of an application while it is frozen
/// (checkpoint --freeze), so that they do not change while they are read.
///
/// With --all, every object of the IPC namespace is saved into a directory, one file
/// per object plus a manifest holding the namespace limits (msgmax, msgmnb, msgmni,
/// sem, shmmax, shmall, shmmni, shm_rmid_forced).
///
/// By default the objects are those of the caller's IPC namespace; --app and --pid
/// enter the IPC namespace of an application started by krgcr-run, or of any
/// process, first.
///
/// Files and directories are written under a temporary name beside the target,
/// synced, then renamed: an interrupted save leaves no partial file.
#[derive(Debug, Parser)]
#[command(name = "ipccheckpoint", version = common::version(), after_help = AFTER, after_long_help = AFTER_LONG)]
#[command(override_usage = USAGE)]
#[command(group(ArgGroup::new("kind").args(["msg", "sem", "shm"])))]
#[command(group(ArgGroup::new("what").required(true).args(["msg", "sem", "shm", "all"])))]
struct Args {
    /// Save a message queue
    #[arg(short = 'm', long = "msg")]
    msg: bool,

    /// Save a semaphore array
    #[arg(short = 's', long = "sem")]
    sem: bool,

    /// Save a shared memory segment
    #[arg(short = 'M', long = "shm")]
    shm: bool,

    /// Select the object by its key (0x1234 as ipcs shows it, or decimal) instead of its ID
    #[arg(short = 'k', long, value_name = "KEY", value_parser = sysvipc::parse_key, requires = "kind")]
    key: Option<i32>,

    /// Save every object of the IPC namespace, and its limits, into DIR (which must not exist or be empty)
    #[arg(short = 'a', long, value_name = "DIR", conflicts_with_all = ["kind", "key"])]
    all: Option<PathBuf>,

    #[command(flatten)]
    ns: NsTarget,

    /// Print what was saved
    #[arg(short, long)]
    verbose: bool,

    /// The identifier of the object (not with --key), then the file to write
    #[arg(value_name = "ID FILE", num_args = 0..=2)]
    args: Vec<OsString>,
}

const USAGE: &str = "ipccheckpoint [OPTIONS] (-m|-s|-M) ID FILE
       ipccheckpoint [OPTIONS] (-m|-s|-M) --key KEY FILE
       ipccheckpoint [OPTIONS] --all DIR";

const AFTER: &str = "\
Examples:
  ipccheckpoint -m 0 dest/msq.dat
  ipccheckpoint -M --key 0x1234 dest/shm.dat
  ipccheckpoint --app 6 --all dest/ipc";

const AFTER_LONG: &str = "\
Examples:
  ipccheckpoint -m 0 dest/msq.dat         message queue 0
  ipccheckpoint -s 32768 dest/sem.dat     semaphore array 32768
  ipccheckpoint -M --key 0x1234 shm.dat   the segment of key 0x1234
  ipccheckpoint --app 6 --all dest/ipc    all that application 6 has
  ipcrestart --info dest/msq.dat          what a file holds

Exit status: 0 on success, 1 on failure (one line on stderr names the object or the file), 2 for a usage error.

File format (version 1; integers are little-endian):
  offset  size  field
       0     8  magic \\x89 X O S I P C \\n
       8     4  format version (1)
      12     4  kind: 1 queue, 2 semaphore array, 3 segment
      16     8  M, length of the metadata
      24     8  P, offset of the payload: 64+M rounded up
                to 8 (to 4096 for a segment)
      32     8  L, length of the payload
      40     4  CRC-32 of bytes 0..40 and of the metadata
      44    20  zero
      64     M  metadata (JSON): key, id, uid, gid, cuid,
                cgid, mode, saved; queue: qbytes, messages
                [{mtype, len}]; array: values; segment: size,
                extents [[offset, length]], locked,
                marked_for_removal; pids and times (kept
                for information, not restored)
    64+M        zero padding up to P
       P     L  payload: the texts of the messages one after
                the other; nothing for an array; the bytes of
                each extent of a segment, in order
     P+L     4  CRC-32 of bytes 0..P+L
   P+L+4     4  zero
   P+L+8     8  end magic XOSIPC-E

The file is exactly P+L+16 bytes long. The pages of a segment outside its extents were never touched and are not stored. A truncated file is recognised by its size, an altered one by its checksums; ipcrestart checks both before it creates anything.

A directory written by --all holds one such file per object, named KIND-ID.ipc (msg-0.ipc, sem-32768.ipc, shm-1.ipc), and a file named manifest: a line \"xos-ipcns 1 CRC32 LENGTH\" followed by JSON with the time of the save, the namespace limits and the list of objects (kind, id, key, file).";

pub fn command() -> clap::Command {
    Args::command()
}

fn usage_error(msg: &str) -> ! {
    Args::command()
        .error(ErrorKind::WrongNumberOfValues, msg)
        .exit()
}

/// The --app/--pid/--state-dir options both IPC applets share.
#[derive(Debug, clap::Args)]
pub struct NsTarget {
    /// Work in the IPC namespace of application APP (an id printed by krgcr-run, or the pid of one of its processes)
    #[arg(long, value_name = "APP", conflicts_with = "pid")]
    pub app: Option<String>,

    /// Work in the IPC namespace of process PID
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,

    /// State directory holding the registry (for --app)
    #[arg(long, value_name = "DIR", env = registry::STATE_ENV, default_value = registry::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

impl NsTarget {
    /// Enters the IPC namespace chosen by --app or --pid, if any.
    pub fn enter(&self) -> anyhow::Result<()> {
        let pid = match (&self.app, self.pid) {
            (Some(spec), _) => {
                let rec = Registry::open_existing(&self.state_dir)?.resolve(spec)?;
                if !rec.alive() {
                    anyhow::bail!(
                        "application {} is not running (its root process {} is gone)",
                        rec.id,
                        rec.root_pid
                    );
                }
                rec.root_pid
            }
            (None, Some(pid)) => pid,
            (None, None) => return Ok(()),
        };
        xos::ns::enter(pid, "ipc")?;
        Ok(())
    }
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    if let Err(e) = a.ns.enter() {
        return common::fail(NAME, e);
    }
    if let Some(dir) = &a.all {
        if !a.args.is_empty() {
            usage_error("--all takes a directory and no other argument");
        }
        return match sysvipc::save_all(dir) {
            Ok(m) => {
                if a.verbose {
                    println!(
                        "saved {} objects and the namespace limits to {}",
                        m.objects.len(),
                        dir.display()
                    );
                }
                0
            }
            Err(e) => common::fail(NAME, e),
        };
    }
    let kind = if a.msg {
        Kind::Msg
    } else if a.sem {
        Kind::Sem
    } else {
        Kind::Shm
    };
    let (sel, file) = match (a.key, &a.args[..]) {
        (Some(key), [file]) => (Selector::Key(key), PathBuf::from(file)),
        (Some(_), _) => usage_error("with --key, give only the FILE to write"),
        (None, [id, file]) => match id.to_str().and_then(|s| s.parse::<i32>().ok()) {
            Some(id) if id >= 0 => (Selector::Id(id), PathBuf::from(file)),
            _ => usage_error(&format!(
                "'{}' is not an IPC identifier (a number, as ipcs shows it)",
                id.to_string_lossy()
            )),
        },
        (None, _) => {
            usage_error("give the ID of the object and the FILE to write (or --key KEY FILE)")
        }
    };
    match sysvipc::save(kind, sel, &file) {
        Ok(s) => {
            if a.verbose {
                let key = match s.key {
                    0 => "IPC_PRIVATE".to_string(),
                    k => sysvipc::fmt_key(k),
                };
                println!(
                    "saved {} {} (key {key}) to {}: {} bytes of content, {} bytes written",
                    s.kind,
                    s.id,
                    s.path.display(),
                    s.payload_len,
                    s.file_len
                );
            }
            0
        }
        Err(e) => common::fail(NAME, e),
    }
}
