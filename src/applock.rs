//! One operation on an application at a time: checkpoint, restart, freeze and
//! thaw take an exclusive flock(2) on `STATE/locks/APP.lock`. The kernel drops
//! the lock when its holder dies, so a killed command never leaves it behind;
//! the holder writes its pid and operation into the file so that a second
//! command can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("application {app}: {holder}")]
    Busy { app: u64, holder: String },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held application lock, released when dropped.
#[derive(Debug)]
pub struct AppLock {
    lock: Flock<File>,
}

impl AppLock {
    /// Takes the lock of application `app` for `operation` ("checkpoint",
    /// "restart", …). With `wait`, waits for the holder to finish; else fails
    /// at once naming it.
    pub fn acquire(
        state: &Path,
        app: u64,
        operation: &str,
        wait: bool,
    ) -> Result<AppLock, LockError> {
        let dir = state.join("locks");
        let path = dir.join(format!("{app}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        crate::fsutil::create_dir_all(&dir, 0o700).map_err(|e| LockError::Io {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut nap = Duration::from_millis(5);
        let mut lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, nix::Error::EWOULDBLOCK)) => {
                    if !wait {
                        // The holder writes its name right after locking.
                        let mut who = String::new();
                        for _ in 0..20 {
                            let mut g = &f;
                            let _ = g.rewind();
                            who.clear();
                            let _ = g.read_to_string(&mut who);
                            if who.ends_with('\n') {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        let mut words = who.split_whitespace();
                        let holder = match (words.next(), words.next()) {
                            (Some(pid), Some(op)) => {
                                format!("{} is already in progress (pid {pid})", article(op))
                            }
                            _ => "another operation is in progress".to_string(),
                        };
                        return Err(LockError::Busy { app, holder });
                    }
                    file = f;
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(200));
                }
                Err((_, e)) => return Err(io(std::io::Error::from(e))),
            }
        };
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = writeln!(lock, "{} {operation}", std::process::id());
        Ok(AppLock { lock })
    }

    /// The descriptor of the lock, for children to close.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self.lock)
    }
}

fn article(op: &str) -> String {
    match op.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {op}"),
        _ => format!("a {op}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = AppLock::acquire(dir.path(), 7, "checkpoint", false).unwrap();
        // flock locks belong to the open file: a second open conflicts even in
        // the same process.
        let err = AppLock::acquire(dir.path(), 7, "restart", false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("application 7: a checkpoint is already in progress (pid "),
            "{msg}"
        );
        assert!(AppLock::acquire(dir.path(), 8, "restart", false).is_ok());
        drop(first);
        assert!(AppLock::acquire(dir.path(), 7, "restart", false).is_ok());
    }
}
