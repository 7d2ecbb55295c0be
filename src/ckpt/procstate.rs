//! The rest of a process beyond memory, threads and files: its prctl(2)
//! settings (dumpable, child subreaper, THP disabled, timer slack), its
//! securebits, the advice and locks of its mappings (madvise(2), mlock(2), from
//! the `VmFlags:` of /proc/PID/smaps), a deleted working directory and a deleted
//! executable. Each is saved where it is cheapest to read and restored only when
//! it differs from what a new process has, so the usual process costs nothing.

use std::path::{Path, PathBuf};

use super::image::Settings;
use super::ptrace::Tracee;
use super::CkptError;

type Result<T> = std::result::Result<T, CkptError>;

const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_DUMPABLE: i32 = 4;
const PR_GET_SECUREBITS: u64 = 27;
const PR_SET_SECUREBITS: i32 = 28;
const PR_SET_TIMERSLACK: i32 = 29;
const PR_SET_CHILD_SUBREAPER: i32 = 36;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_SET_THP_DISABLE: i32 = 41;
/// securebits(7) SECBIT_KEEP_CAPS and SECBIT_KEEP_CAPS_LOCKED: with either,
/// the restorer leaves the keep-capabilities flag as the saved bits set it.
pub const SECBIT_KEEP_CAPS_ANY: u32 = (1 << 4) | (1 << 5);
use super::image::DEFAULT_TIMERSLACK;

/// The settings of process `host` (pid `label` in errors): the three that only
/// the process can say are asked inside it (three injected calls, `scratch` is
/// memory of its own), the others come from /proc.
pub fn query(
    t: &Tracee,
    regs0: &libc::user_regs_struct,
    scratch: u64,
    host: i32,
    status: &str,
) -> Result<Settings> {
    let prctl =
        |op: u64, arg: u64| t.syscall_ok(regs0, "prctl", libc::SYS_prctl, [op, arg, 0, 0, 0, 0]);
    let dumpable = prctl(PR_GET_DUMPABLE, 0)?;
    let securebits = prctl(PR_GET_SECUREBITS, 0)?;
    prctl(PR_GET_CHILD_SUBREAPER, scratch)?;
    let mut b = [0u8; 4];
    t.read_mem(scratch, &mut b)?;
    let timerslack_ns = std::fs::read_to_string(format!("/proc/{host}/timerslack_ns"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_TIMERSLACK);
    let mlock_future = mlock_future(t, regs0, host, status)?;
    let thp_disable = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .is_some_and(|v| v.trim() == "0");
    Ok(Settings {
        dumpable: dumpable as u32,
        child_subreaper: i32::from_ne_bytes(b) != 0,
        thp_disable,
        timerslack_ns,
        securebits: securebits as u32,
        mlock_future,
    })
}

/// Applies the saved settings in the new process itself, while it still has
/// the restorer's privileges; the dumpable flag is set once more after its
/// credentials (see [`dumpable_after_credentials`]).
pub fn apply(s: &Settings) -> std::result::Result<(), String> {
    let prctl = |what: &str, op: i32, arg: u64| {
        super::sys::prctl(op, arg).map_err(|e| format!("prctl({what}): {e}"))
    };
    if s.child_subreaper {
        prctl("PR_SET_CHILD_SUBREAPER", PR_SET_CHILD_SUBREAPER, 1)?;
    }
    if s.thp_disable {
        prctl("PR_SET_THP_DISABLE", PR_SET_THP_DISABLE, 1)?;
    }
    let slack = std::fs::read_to_string("/proc/self/timerslack_ns")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if slack != Some(s.timerslack_ns) {
        prctl("PR_SET_TIMERSLACK", PR_SET_TIMERSLACK, s.timerslack_ns)?;
    }
    if s.securebits != 0 {
        prctl("PR_SET_SECUREBITS", PR_SET_SECUREBITS, s.securebits as u64)?;
    }
    if s.dumpable == 0 {
        prctl("PR_SET_DUMPABLE", PR_SET_DUMPABLE, 0)?;
    }
    Ok(())
}

/// Gives the rebuilt process its saved dumpable flag, after its credentials
/// (a change of uids resets it to the sysctl fs.suid_dumpable). 2 cannot be
/// set with prctl: the kernel gives it on a change of fsuid while that
/// sysctl is 2; where it is not, the process gets 0, which like 2 keeps its
/// /proc files root's and it unattachable by its user (it dumps no core).
pub fn restore_dumpable(t: &Tracee, base: &libc::user_regs_struct, s: &Settings) -> Result<()> {
    let call = |what: &'static str, nr: i64, a: u64, b: u64| {
        t.syscall_ok(base, what, nr, [a, b, 0, 0, 0, 0])
    };
    let get = || call("get dumpable", libc::SYS_prctl, PR_GET_DUMPABLE, 0);
    if get()? == u64::from(s.dumpable) {
        return Ok(());
    }
    if s.dumpable == 2 && suid_dumpable() == Some(2) {
        // An fsuid changed there and back (root's restore changed no uid).
        let cur = call("setfsuid", libc::SYS_setfsuid, u64::from(u32::MAX), 0)?;
        let other = if cur == 0 { 1 } else { 0 };
        call("setfsuid", libc::SYS_setfsuid, other, 0)?;
        call("setfsuid", libc::SYS_setfsuid, cur, 0)?;
        if get()? == 2 {
            return Ok(());
        }
    }
    let d = match s.dumpable {
        2 => {
            log::warn!(
                "dumpable 2 (fs.suid_dumpable) cannot be given again on this node: set to 0"
            );
            0
        }
        d => u64::from(d),
    };
    call("set dumpable", libc::SYS_prctl, PR_SET_DUMPABLE as u64, d)?;
    Ok(())
}

/// The sysctl fs.suid_dumpable.
fn suid_dumpable() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the process has mlockall(MCL_FUTURE) (and MCL_ONFAULT) in force,
/// as mlockall flags (0: no). Nothing shows it but a new mapping's flags: a
/// probe page is mapped, looked at and unmapped again, only in a process
/// with locked memory (one that called mlockall has some). Shared, so that
/// it merges with no neighbour.
fn mlock_future(
    t: &Tracee,
    regs0: &libc::user_regs_struct,
    host: i32,
    status: &str,
) -> Result<u32> {
    if super::dump::status_kb(status, "VmLck") == 0 {
        return Ok(0);
    }
    let page = 4096;
    let addr = t.syscall_ok(
        regs0,
        "mmap a probe page",
        libc::SYS_mmap,
        [
            0,
            page,
            libc::PROT_NONE as u64,
            (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    let smaps = std::fs::read_to_string(format!("/proc/{host}/smaps"));
    t.syscall_ok(
        regs0,
        "munmap the probe page",
        libc::SYS_munmap,
        [addr, page, 0, 0, 0, 0],
    )?;
    let smaps = smaps.map_err(|e| CkptError::Proc {
        pid: t.label,
        what: "read smaps",
        source: e,
    })?;
    let advice = advice_of(&smaps);
    let has = |n: &str| advice.get(&addr).is_some_and(|a| a.iter().any(|x| x == n));
    Ok(if has("lockonfault") {
        (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u32
    } else if has("locked") {
        libc::MCL_FUTURE as u32
    } else {
        0
    })
}

/// mlockall(MCL_FUTURE) again when it was in force (only future mappings:
/// the current ones have their saved locks already).
pub fn restore_mlock_future(t: &Tracee, base: &libc::user_regs_struct, s: &Settings) -> Result<()> {
    if s.mlock_future != 0 {
        t.syscall_ok(
            base,
            "mlockall(MCL_FUTURE)",
            libc::SYS_mlockall,
            [u64::from(s.mlock_future), 0, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// One kind of mapping advice: its `VmFlags` code in smaps, its name in the
/// image, and how it is given again.
struct Advice {
    code: &'static str,
    name: &'static str,
    how: How,
}

enum How {
    Madvise(u64),
    /// mlock2(2) with these flags.
    Mlock(u64),
    /// A flag of mmap(2) itself (MAP_GROWSDOWN).
    MapFlag,
}

const ADVICE: &[Advice] = &[
    Advice {
        code: "dc",
        name: "dontfork",
        how: How::Madvise(libc::MADV_DONTFORK as u64),
    },
    Advice {
        code: "dd",
        name: "dontdump",
        how: How::Madvise(libc::MADV_DONTDUMP as u64),
    },
    Advice {
        code: "wf",
        name: "wipeonfork",
        how: How::Madvise(libc::MADV_WIPEONFORK as u64),
    },
    Advice {
        code: "hg",
        name: "hugepage",
        how: How::Madvise(libc::MADV_HUGEPAGE as u64),
    },
    Advice {
        code: "nh",
        name: "nohugepage",
        how: How::Madvise(libc::MADV_NOHUGEPAGE as u64),
    },
    Advice {
        code: "mg",
        name: "mergeable",
        how: How::Madvise(libc::MADV_MERGEABLE as u64),
    },
    Advice {
        code: "lo",
        name: "locked",
        how: How::Mlock(0),
    },
    Advice {
        code: "lf",
        name: "lockonfault",
        how: How::Mlock(libc::MLOCK_ONFAULT as u64),
    },
    Advice {
        code: "gd",
        name: "growsdown",
        how: How::MapFlag,
    },
];

/// The advice names of every mapping in /proc/PID/smaps text, by start address
/// (mappings without any are left out).
pub fn advice_of(smaps: &str) -> std::collections::HashMap<u64, Vec<String>> {
    let mut out = std::collections::HashMap::new();
    let mut start = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let names: Vec<String> = flags
                .split_whitespace()
                .filter_map(|c| ADVICE.iter().find(|a| a.code == c))
                .map(|a| a.name.to_string())
                .collect();
            if let (Some(s), false) = (start.take(), names.is_empty()) {
                out.insert(s, names);
            }
            continue;
        }
        // A mapping's header: "start-end perms offset dev inode [path]".
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(_)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                start = Some(a);
            }
        }
    }
    out
}

/// Whether `advice` locks the mapping (mlock, with or without ONFAULT).
pub fn locks(advice: &[String]) -> bool {
    advice.iter().any(|n| n == "locked" || n == "lockonfault")
}

/// Whether `advice` asks for MAP_GROWSDOWN.
pub fn grows_down(advice: &[String]) -> bool {
    advice.iter().any(|n| n == "growsdown")
}

/// Gives the mapping `start..end` of the stopped process `t` its saved advice
/// and locks again (one injected call per kind it has).
pub fn restore_advice(
    t: &Tracee,
    base: &libc::user_regs_struct,
    start: u64,
    end: u64,
    advice: &[String],
) -> Result<()> {
    for name in advice {
        match ADVICE.iter().find(|a| a.name == name).map(|a| &a.how) {
            Some(How::Madvise(m)) => {
                t.syscall_ok(
                    base,
                    "madvise",
                    libc::SYS_madvise,
                    [start, end - start, *m, 0, 0, 0],
                )?;
            }
            Some(How::Mlock(flags)) => {
                t.syscall_ok(
                    base,
                    "mlock",
                    libc::SYS_mlock2,
                    [start, end - start, *flags, 0, 0, 0],
                )?;
            }
            Some(How::MapFlag) | None => {}
        }
    }
    Ok(())
}

/// A working directory or executable that was deleted: the link's text without
/// " (deleted)" when `path` (a /proc/PID/cwd or exe link) names a removed file.
pub fn deleted_target(link: &Path, proc_link: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let s = link.to_str()?.strip_suffix(" (deleted)")?;
    let gone = std::fs::metadata(proc_link).is_ok_and(|m| m.nlink() == 0);
    gone.then(|| PathBuf::from(s))
}

/// Makes the process's working directory a deleted directory named like the
/// saved one: created (next to where it was if its parent still exists, else
/// in the temporary directory), entered, and removed again.
pub fn enter_deleted_dir(saved: &Path) -> std::result::Result<(), String> {
    let parent = saved
        .parent()
        .filter(|p| p.is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let name = saved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cwd".into());
    let mut dir = parent.join(&name);
    let mut n = 0;
    while let Err(e) = std::fs::create_dir(&dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists || n > 100 {
            return Err(format!(
                "cannot re-create its deleted working directory {}: {e}",
                saved.display()
            ));
        }
        n += 1;
        dir = parent.join(format!("{name}.xos-{}-{n}", std::process::id()));
    }
    let r = nix::unistd::chdir(&dir);
    let _ = std::fs::remove_dir(&dir);
    r.map_err(|e| format!("chdir into its deleted working directory: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_from_smaps() {
        let smaps = "\
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                                  [stack]
Size:                  4 kB
VmFlags: rd wr mr mw me gd ac
55d0a000-55d0b000 r--p 00000000 fe:00 123 /usr/bin/x
Size:                  4 kB
VmFlags: rd mr mw me dc lo dd
7f000000-7f001000 rw-p 00000000 00:00 0
VmFlags: rd wr mr mw me ac
";
        let a = advice_of(smaps);
        assert_eq!(a[&0x7ffd1000], vec!["growsdown"]);
        assert_eq!(a[&0x55d0a000], vec!["dontfork", "locked", "dontdump"]);
        assert!(!a.contains_key(&0x7f000000));
        assert!(grows_down(&a[&0x7ffd1000]));
    }
}
