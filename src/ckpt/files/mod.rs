//! Open files of a process, one module per kind with its save and restore
//! side by side. The kind comes from the /proc/PID/fd link, the state from
//! /proc/PID/fdinfo (proc(5)); restore runs inside the rebuilt process itself,
//! before its memory is replaced, so every object is created by its owner.

pub mod anon;
pub mod epoll;
pub mod eventfd;
pub mod ghost;
pub mod inotify;
pub mod lock;
pub mod owner;
pub mod pidfd;
pub mod refused;
pub mod signalfd;
pub mod timerfd;

/// The `key:` lines of one fdinfo file.
pub struct FdInfo<'a> {
    pub text: &'a str,
}

impl<'a> FdInfo<'a> {
    /// The value after `key` (e.g. "eventfd-count:"), trimmed.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    }

    /// The open(2) flags ("flags:", octal), 0 when unreadable.
    pub fn flags(&self) -> u32 {
        self.get("flags:")
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .unwrap_or(0)
    }

    /// Every line starting with `key`, the rest of each.
    pub fn all(&self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.text.lines().filter_map(move |l| l.strip_prefix(key))
    }
}

/// "(sec, nsec)" as fdinfo prints a timespec.
pub fn parse_pair(v: &str) -> Option<(i64, i64)> {
    let v = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// A raw result of a libc call: the descriptor, or the errno.
pub fn check_fd(r: libc::c_int) -> nix::Result<std::os::fd::OwnedFd> {
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(crate::ckpt::sys::owned_fd(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_values() {
        let i = FdInfo {
            text: "pos:\t0\nflags:\t04002\neventfd-count:                5\nit_value: (1, 997170384)\n",
        };
        assert_eq!(i.get("eventfd-count:"), Some("5"));
        assert_eq!(i.get("flags:"), Some("04002"));
        assert_eq!(
            parse_pair(i.get("it_value:").unwrap()),
            Some((1, 997170384))
        );
        assert_eq!(i.get("nothing:"), None);
    }
}
