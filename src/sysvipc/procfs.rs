//! What procfs tells about the IPC namespace of the calling thread (proc(5),
//! sysvipc(7)): the objects in `/proc/sysvipc/{msg,sem,shm}`, the limits in
//! `/proc/sys/kernel/{msgmax,msgmnb,msgmni,sem,shmmax,shmall,shmmni,shm_rmid_forced}`
//! and the one-shot `/proc/sys/kernel/{msg,sem,shm}_next_id` (writable with
//! CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN over the namespace's user namespace;
//! the kernel resets it to -1 when an object is created with it).
//!
//! Every one of these files shows the IPC namespace of the process that opens it,
//! whatever /proc is mounted, so setns(2) into another namespace is enough.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{IpcError, Kind};
use crate::fsutil::{self, PathError};

const SYSCTL: &str = "/proc/sys/kernel";

/// One object as listed in `/proc/sysvipc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub key: i32,
    pub id: i32,
    /// Permission bits and, for segments, SHM_DEST / SHM_LOCKED.
    pub mode: u32,
    /// Bytes queued in a queue, semaphores in an array, bytes of a segment.
    pub size: u64,
}

fn list_path(kind: Kind) -> PathBuf {
    PathBuf::from(format!("/proc/sysvipc/{}", kind.short()))
}

/// Parses the text of `/proc/sysvipc/<kind>` (a header line naming the columns,
/// then one line per object).
pub(crate) fn parse_list(kind: Kind, text: &str) -> Result<Vec<Entry>, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty listing")?
        .split_whitespace()
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let id_name = match kind {
        Kind::Msg => "msqid",
        Kind::Sem => "semid",
        Kind::Shm => "shmid",
    };
    let size_name = match kind {
        Kind::Msg => "cbytes",
        Kind::Sem => "nsems",
        Kind::Shm => "size",
    };
    let (Some(ck), Some(ci), Some(cp), Some(cs)) =
        (col("key"), col(id_name), col("perms"), col(size_name))
    else {
        return Err(format!("unexpected header {header:?}"));
    };
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |c: usize| {
            f.get(c)
                .copied()
                .ok_or_else(|| format!("short line '{line}'"))
        };
        let key: i32 = get(ck)?
            .parse()
            .map_err(|_| format!("bad key in '{line}'"))?;
        let id: i32 = get(ci)?
            .parse()
            .map_err(|_| format!("bad id in '{line}'"))?;
        let mode =
            u32::from_str_radix(get(cp)?, 8).map_err(|_| format!("bad perms in '{line}'"))?;
        let size: u64 = get(cs)?
            .parse()
            .map_err(|_| format!("bad {size_name} in '{line}'"))?;
        out.push(Entry {
            kind,
            key,
            id,
            mode,
            size,
        });
    }
    Ok(out)
}

/// Every object of one kind in the caller's IPC namespace, by increasing id.
pub fn list(kind: Kind) -> Result<Vec<Entry>, IpcError> {
    let path = list_path(kind);
    let text = fsutil::read_string(&path)?;
    let mut v = parse_list(kind, &text).map_err(|reason| IpcError::Procfs { path, reason })?;
    v.sort_by_key(|e| e.id);
    Ok(v)
}

/// Every object of the caller's IPC namespace: queues, then arrays, then segments.
pub fn list_all() -> Result<Vec<Entry>, IpcError> {
    let mut v = Vec::new();
    for k in Kind::ALL {
        v.extend(list(k)?);
    }
    Ok(v)
}

/// Number of low bits of an id that index the object's slot: 15, or 24 when the
/// kernel was booted with `ipcmni_extend`. The rest is a sequence number, so two
/// ids with the same slot can never exist at the same time.
pub(crate) fn index_bits() -> u32 {
    static BITS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *BITS.get_or_init(|| {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if cmdline.split_whitespace().any(|w| w == "ipcmni_extend") {
            24
        } else {
            15
        }
    })
}

/// The slot an id lives in.
pub(crate) fn slot(id: i32) -> i32 {
    id & ((1 << index_bits()) - 1)
}

fn next_id_path(kind: Kind) -> PathBuf {
    Path::new(SYSCTL).join(format!("{}_next_id", kind.short()))
}

/// Asks the kernel to give `id` to the next object of `kind` created in the namespace.
pub(crate) fn set_next_id(kind: Kind, id: i32) -> Result<(), PathError> {
    fsutil::write_control(&next_id_path(kind), &id.to_string())
}

/// The id the next object of `kind` will get (-1: the kernel chooses).
pub(crate) fn next_id(kind: Kind) -> Option<i32> {
    fsutil::read_string(&next_id_path(kind))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The limits of an IPC namespace (sysctl names of /proc/sys/kernel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest message, in bytes.
    pub msgmax: u64,
    /// Default capacity of a new queue, in bytes.
    pub msgmnb: u64,
    /// Most queues.
    pub msgmni: u64,
    /// semmsl (semaphores per array), semmns (semaphores in all), semopm
    /// (operations per semop call), semmni (most arrays).
    pub sem: [u64; 4],
    /// Largest segment, in bytes.
    pub shmmax: u64,
    /// Most shared memory in all, in pages.
    pub shmall: u64,
    /// Most segments.
    pub shmmni: u64,
    /// 1: segments are destroyed as soon as no process is attached and their creator
    /// has exited.
    pub shm_rmid_forced: u64,
}

/// The names of the limit files, in the order `Limits::fields` returns them.
const NAMES: [&str; 8] = [
    "msgmax",
    "msgmnb",
    "msgmni",
    "sem",
    "shmmax",
    "shmall",
    "shmmni",
    "shm_rmid_forced",
];

impl Limits {
    /// Each limit as (file name, text to write).
    fn fields(&self) -> [(&'static str, String); 8] {
        let s = &self.sem;
        let v = [
            self.msgmax.to_string(),
            self.msgmnb.to_string(),
            self.msgmni.to_string(),
            format!("{} {} {} {}", s[0], s[1], s[2], s[3]),
            self.shmmax.to_string(),
            self.shmall.to_string(),
            self.shmmni.to_string(),
            self.shm_rmid_forced.to_string(),
        ];
        let mut i = 0;
        v.map(|text| {
            let r = (NAMES[i], text);
            i += 1;
            r
        })
    }

    /// Builds limits from the text of each file (`read` gives the text for a name).
    pub(crate) fn parse(
        mut read: impl FnMut(&str) -> Result<String, IpcError>,
    ) -> Result<Limits, IpcError> {
        let mut get = |name: &str, n: usize| -> Result<Vec<u64>, IpcError> {
            let text = read(name)?;
            let nums: Option<Vec<u64>> = text.split_whitespace().map(|w| w.parse().ok()).collect();
            nums.filter(|v| v.len() == n)
                .ok_or_else(|| IpcError::Procfs {
                    path: Path::new(SYSCTL).join(name),
                    reason: match n {
                        1 => format!("expected a number, found '{}'", text.trim()),
                        _ => format!("expected {n} numbers, found '{}'", text.trim()),
                    },
                })
        };
        let sem = get("sem", 4)?;
        Ok(Limits {
            msgmax: get("msgmax", 1)?[0],
            msgmnb: get("msgmnb", 1)?[0],
            msgmni: get("msgmni", 1)?[0],
            sem: [sem[0], sem[1], sem[2], sem[3]],
            shmmax: get("shmmax", 1)?[0],
            shmall: get("shmall", 1)?[0],
            shmmni: get("shmmni", 1)?[0],
            shm_rmid_forced: get("shm_rmid_forced", 1)?[0],
        })
    }

    /// The limits of the caller's IPC namespace.
    pub fn read() -> Result<Limits, IpcError> {
        Limits::parse(|name| Ok(fsutil::read_string(&Path::new(SYSCTL).join(name))?))
    }

    /// Writes every limit that differs from `current`, `shm_rmid_forced` last.
    /// On failure, writes back what was changed.
    pub(crate) fn apply(&self, current: &Limits) -> Result<(), IpcError> {
        let want = self.fields();
        let have = current.fields();
        let mut done: Vec<usize> = Vec::new();
        for i in 0..want.len() {
            if want[i].1 == have[i].1 {
                continue;
            }
            let path = Path::new(SYSCTL).join(want[i].0);
            if let Err(e) = fsutil::write_control(&path, &want[i].1) {
                for &j in done.iter().rev() {
                    let _ = fsutil::write_control(&Path::new(SYSCTL).join(have[j].0), &have[j].1);
                }
                return Err(e.into());
            }
            done.push(i);
        }
        Ok(())
    }
}

/// Default limits of a new namespace on kernel 6.x, for unit tests.
#[cfg(test)]
pub(crate) fn tests_limits() -> Limits {
    Limits {
        msgmax: 8192,
        msgmnb: 16384,
        msgmni: 32000,
        sem: [32000, 1024000000, 500, 32000],
        shmmax: u64::MAX - (1 << 24) + 1,
        shmall: u64::MAX - (1 << 24) + 1,
        shmmni: 4096,
        shm_rmid_forced: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_of_each_kind() {
        let msg = "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime\n\
                   1220157733          0   644           0          0     0     0     0     0     0     0          0          0 1795313373\n\
                            0      32769   600          10          2     0     0  1000  1000  1000  1000          0          0 1795313373\n";
        let v = parse_list(Kind::Msg, msg).unwrap();
        assert_eq!(
            v,
            vec![
                Entry {
                    kind: Kind::Msg,
                    key: 1220157733,
                    id: 0,
                    mode: 0o644,
                    size: 0
                },
                Entry {
                    kind: Kind::Msg,
                    key: 0,
                    id: 32769,
                    mode: 0o600,
                    size: 10
                },
            ]
        );
        let shm = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                   -559038737          3  1600                 10000 15942     0      1     0     0     0     0          0          0 1795313373                     0                     0\n";
        let v = parse_list(Kind::Shm, shm).unwrap();
        assert_eq!(
            v,
            vec![Entry {
                kind: Kind::Shm,
                key: -559038737,
                id: 3,
                mode: 0o1600,
                size: 10000
            }]
        );
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n";
        assert!(parse_list(Kind::Sem, sem).unwrap().is_empty());
        assert!(parse_list(Kind::Sem, msg).is_err(), "wrong header");
        assert!(parse_list(Kind::Msg, "").is_err());
        assert!(parse_list(Kind::Msg, &format!("{msg}12 x 644\n")).is_err());
    }

    #[test]
    fn limits_parse_and_fields() {
        let files = |name: &str| -> Result<String, IpcError> {
            Ok(match name {
                "msgmax" => "8192\n",
                "msgmnb" => "16384\n",
                "msgmni" => "32000\n",
                "sem" => "32000\t1024000000\t500\t32000\n",
                "shmmax" => "18446744073692774399\n",
                "shmall" => "18446744073692774399\n",
                "shmmni" => "4096\n",
                "shm_rmid_forced" => "0\n",
                _ => unreachable!(),
            }
            .to_string())
        };
        let l = Limits::parse(files).unwrap();
        assert_eq!(l.sem, [32000, 1024000000, 500, 32000]);
        assert_eq!(l.shmmax, 18446744073692774399);
        let f = l.fields();
        assert_eq!(f[3], ("sem", "32000 1024000000 500 32000".to_string()));
        assert_eq!(f[7].0, "shm_rmid_forced");
        let bad = |name: &str| -> Result<String, IpcError> {
            if name == "sem" {
                Ok("1 2 3\n".into())
            } else {
                files(name)
            }
        };
        assert!(Limits::parse(bad)
            .unwrap_err()
            .to_string()
            .contains("expected 4 numbers"));
    }

    #[test]
    fn slots() {
        if index_bits() == 15 {
            assert_eq!(slot(32768 + 5), 5);
            assert_eq!(slot(0), 0);
        }
    }
}
