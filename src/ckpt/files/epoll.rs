//! epoll(7): every registered target as fdinfo shows it (`tfd: events:
//! data:`), registered again with epoll_ctl(2) once every other descriptor of
//! the process is in place.

use std::os::fd::OwnedFd;

use super::FdInfo;

/// (target fd, events with their flags, data) of every registration.
pub fn dump(info: &FdInfo) -> Option<Vec<(i32, u32, u64)>> {
    let mut out = Vec::new();
    for l in info.all("tfd:") {
        let mut it = l.split_whitespace();
        let tfd = it.next()?.parse().ok()?;
        let mut events = None;
        let mut data = None;
        while let Some(k) = it.next() {
            match k {
                "events:" => events = u32::from_str_radix(it.next()?, 16).ok(),
                "data:" => data = u64::from_str_radix(it.next()?, 16).ok(),
                _ => {}
            }
        }
        out.push((tfd, events?, data?));
    }
    Some(out)
}

pub fn create() -> nix::Result<OwnedFd> {
    super::check_fd(crate::ckpt::sys::epoll_create())
}

/// Registers `targets` (descriptors of the calling process) in `ep`.
pub fn register(ep: i32, targets: &[(i32, u32, u64)]) -> Result<(), (i32, nix::Error)> {
    for &(tfd, events, data) in targets {
        crate::ckpt::sys::epoll_add(ep, tfd, events, data).map_err(|e| (tfd, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let i = FdInfo {
            text: "pos:\t0\nflags:\t02000002\ntfd:        3 events:       19 data:                3  pos:0 ino:40e sdev:10\n\
                   tfd:        5 events: 80000019 data:         7fff0000  pos:0 ino:28979 sdev:f\n",
        };
        assert_eq!(
            dump(&i).unwrap(),
            [(3, 0x19, 3), (5, 0x8000_0019, 0x7fff_0000)]
        );
    }
}
