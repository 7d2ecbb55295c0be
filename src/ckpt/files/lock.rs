//! File locks held through a descriptor: flock(2), POSIX record locks
//! (fcntl F_SETLK, owned by the process), open file description locks
//! (F_OFD_SETLK) and leases (F_SETLEASE; one being broken is refused), from
//! the `lock:` lines of fdinfo (proc(5), /proc/locks format). They are taken again by the restored process itself, without
//! waiting: a lock someone else took meanwhile makes the restart fail.

use std::os::fd::BorrowedFd;

use super::FdInfo;
use crate::ckpt::image::{FileLock, LockKind};

/// The locks shown on one descriptor; Err names one that cannot be saved.
pub fn dump(info: &FdInfo) -> Result<Vec<FileLock>, String> {
    let mut out = Vec::new();
    for l in info.all("lock:") {
        // "1: POSIX  ADVISORY  WRITE 9441 fe:00:10010867 5 14"; waiters have "->".
        let mut it = l.split_whitespace().skip(1).peekable();
        if it.peek() == Some(&"->") {
            continue;
        }
        let kind = match it.next() {
            Some("FLOCK") => LockKind::Flock,
            Some("POSIX") => LockKind::Posix,
            Some("OFDLCK") => LockKind::Ofd,
            Some("LEASE") => LockKind::Lease,
            other => return Err(format!("a {} lock", other.unwrap_or("strange"))),
        };
        let state = it.next();
        if kind == LockKind::Lease && state != Some("ACTIVE") {
            return Err("a lease being broken (another process opened the file)".into());
        }
        let write = match it.next() {
            Some("WRITE") => true,
            Some("READ") => false,
            other => return Err(format!("a lock of mode {}", other.unwrap_or("?"))),
        };
        let _pid = it.next();
        let _dev_ino = it.next();
        let start = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or("a lock range")?;
        let end = match it.next() {
            Some("EOF") => None,
            Some(v) => Some(v.parse().map_err(|_| "a lock range")?),
            None => return Err("a lock range".into()),
        };
        out.push(FileLock {
            kind,
            write,
            start,
            end,
        });
    }
    Ok(out)
}

/// Takes `l` again through `fd` in the calling process.
pub fn restore(fd: BorrowedFd, l: &FileLock) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    if l.kind == LockKind::Flock {
        let op = if l.write {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        return crate::ckpt::sys::flock(fd, op | libc::LOCK_NB);
    }
    if l.kind == LockKind::Lease {
        let how = if l.write {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        };
        return crate::ckpt::sys::set_lease(fd, how);
    }
    let mut fl: libc::flock = crate::ckpt::sys::zeroed_flock();
    fl.l_type = if l.write {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = l.start as i64;
    fl.l_len = l.end.map_or(0, |e| (e - l.start + 1) as i64);
    match l.kind {
        LockKind::Posix => fcntl(fd, FcntlArg::F_SETLK(&fl)),
        _ => fcntl(fd, FcntlArg::F_OFD_SETLK(&fl)),
    }
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let i = FdInfo {
            text: "pos:\t0\nlock:\t1: POSIX  ADVISORY  WRITE 9441 fe:00:10010867 5 14\n\
                   lock:\t2: FLOCK  ADVISORY  READ 9441 fe:00:10010884 0 EOF\n\
                   lock:\t3: -> POSIX  ADVISORY  WRITE 9442 fe:00:10010867 0 EOF\n",
        };
        let l = dump(&i).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].kind, l[0].write, l[0].start, l[0].end),
            (LockKind::Posix, true, 5, Some(14))
        );
        assert_eq!(
            (l[1].kind, l[1].write, l[1].end),
            (LockKind::Flock, false, None)
        );
        let lease = FdInfo {
            text: "lock:\t1: LEASE  ACTIVE    READ 1 fe:00:1 0 EOF\n",
        };
        let l = dump(&lease).unwrap();
        assert_eq!((l[0].kind, l[0].write), (LockKind::Lease, false));
        let breaking = FdInfo {
            text: "lock:\t1: LEASE  BREAKING  UNLCK 1 fe:00:1 0 EOF\n",
        };
        assert!(dump(&breaking).unwrap_err().contains("being broken"));
    }
}
