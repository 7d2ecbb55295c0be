//! inotify(7): every watch as fdinfo shows it (`inotify wd: ino: sdev: mask:
//! … f_handle:`), the watched inode found again with open_by_handle_at(2) on
//! a mount of its filesystem; restored with the same watch descriptors
//! (INOTIFY_IOC_SETNEXTWD before each inotify_add_watch(2)). Events queued but
//! not read yet cannot be read without taking them from the application: such
//! an inotify instance is refused ([`queued`]), never restored without them.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::FdInfo;

/// Bytes of events queued and not read yet in descriptor `fd` of process
/// `host` (FIONREAD on a copy of it); 0 when it cannot be asked.
pub fn queued(host: i32, fd: i32) -> usize {
    crate::ckpt::sys::fd_of(host, fd)
        .and_then(|copy| crate::ckpt::sys::fionread(&copy))
        .unwrap_or(0)
}

/// (wd, mask, path) of every watch; Err says which one cannot be saved.
pub fn dump(info: &FdInfo) -> Result<Vec<(i32, u32, PathBuf)>, String> {
    let mut out = Vec::new();
    for l in info.all("inotify ") {
        let field = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let hex = |k: &str| field(k).and_then(|v| u64::from_str_radix(&v, 16).ok());
        let (Some(wd), Some(mask), Some(sdev), Some(bytes), Some(htype), Some(handle)) = (
            field("wd:").and_then(|v| v.parse::<i32>().ok()),
            hex("mask:"),
            hex("sdev:"),
            field("fhandle-bytes:").and_then(|v| u32::from_str_radix(&v, 16).ok()),
            field("fhandle-type:").and_then(|v| i32::from_str_radix(&v, 16).ok()),
            field("f_handle:"),
        ) else {
            return Err("an inotify watch fdinfo does not describe".into());
        };
        let handle: Vec<u8> = (0..handle.len() / 2)
            .filter_map(|i| u8::from_str_radix(&handle[i * 2..i * 2 + 2], 16).ok())
            .take(bytes as usize)
            .collect();
        // The kernel's dev_t: 12 bits of major above 20 bits of minor.
        let dev = ((sdev >> 20) as u32, (sdev & 0xfffff) as u32);
        let path = resolve(dev, htype, &handle)
            .ok_or_else(|| format!("inotify watch {wd}: its file or directory is gone"))?;
        out.push((wd, mask as u32, path));
    }
    Ok(out)
}

/// The path of the inode `handle` names on the filesystem of device `dev`.
fn resolve(dev: (u32, u32), htype: i32, handle: &[u8]) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", dev.0, dev.1);
    // A mount of the filesystem's root first (bind mounts of a part may not
    // reach the inode).
    let mut points: Vec<(bool, String)> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&want.as_str())).then(|| (f[3] != "/", f[4].to_string()))
        })
        .collect();
    points.sort();
    for (_, point) in points {
        let Ok(m) = nix::fcntl::open(
            point.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        ) else {
            continue;
        };
        if let Ok(fd) = crate::ckpt::sys::open_by_handle(&m, htype, handle) {
            use std::os::fd::AsRawFd;
            let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
            if !p.to_string_lossy().ends_with(" (deleted)") {
                return Some(p);
            }
        }
    }
    None
}

/// An inotify instance with `watches` under their saved descriptors.
pub fn restore(nonblock: bool, watches: &[(i32, u32, PathBuf)]) -> Result<OwnedFd, String> {
    let fd = super::check_fd(crate::ckpt::sys::inotify_init(nonblock))
        .map_err(|e| format!("inotify_init: {e}"))?;
    let mut sorted: Vec<&(i32, u32, PathBuf)> = watches.iter().collect();
    sorted.sort_by_key(|w| w.0);
    for (wd, mask, path) in sorted {
        let got = crate::ckpt::sys::inotify_watch(&fd, *wd, path, *mask)
            .map_err(|e| format!("watch {} again: {e}", path.display()))?;
        if got != *wd {
            return Err(format!(
                "watch {} came back as {got}, not {wd}",
                path.display()
            ));
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_on_tmp_is_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let fd = restore(false, &[(5, 0x100, dir.path().to_path_buf())]).unwrap();
        use std::os::fd::AsRawFd;
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        let w = dump(&FdInfo { text: &info }).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].0, w[0].1 & 0xfff), (5, 0x100));
        assert_eq!(w[0].2, dir.path().canonicalize().unwrap());
    }
}
