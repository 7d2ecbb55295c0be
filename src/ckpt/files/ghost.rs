//! Files that are open or mapped but have no name any more: deleted files
//! (`/path (deleted)`) and memfds (`/memfd:NAME (deleted)`, memfd_create(2)).
//! Their content is saved with the image (holes stay holes, SEEK_DATA /
//! SEEK_HOLE), up to a size limit; restart creates one unnamed file per object
//! in the init (under its old name, removed at once; O_TMPFILE in the file's
//! old directory when that name is taken; or a memfd with its name and seals),
//! and every descriptor and mapping is made from it.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::ckpt::image::Ghost;

/// What the checkpoint needs to know of an unlinked file it reads through
/// `file` (opened from /proc/PID/fd/N or /proc/PID/map_files/…), shown as
/// `link` by /proc.
pub fn describe(file: &File, link: &str) -> std::io::Result<Ghost> {
    use std::os::unix::fs::MetadataExt;
    let md = file.metadata()?;
    let path = link.strip_suffix(" (deleted)").unwrap_or(link);
    let memfd = path.strip_prefix("/memfd:").map(str::to_string);
    let seals = if memfd.is_some() {
        nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap_or(0)
    } else {
        0
    };
    Ok(Ghost {
        id: 0,
        path: path.into(),
        memfd,
        mode: md.mode() & 0o7777,
        seals,
    })
}

/// Creates the unnamed file for `g` (empty; the caller fills it, then calls
/// [`seal`]).
pub fn create(g: &Ghost) -> nix::Result<OwnedFd> {
    use nix::sys::stat::Mode;
    if let Some(name) = &g.memfd {
        let name = std::ffi::CString::new(name.as_str()).unwrap_or_default();
        let name = name.as_c_str();
        let mut flags = nix::sys::memfd::MFdFlags::empty();
        if g.seals != 0 {
            flags |= nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING;
        }
        return nix::sys::memfd::memfd_create(name, flags);
    }
    let dir = g.path.parent().unwrap_or(Path::new("/"));
    let mode = Mode::from_bits_truncate(g.mode);
    use nix::fcntl::OFlag;
    // Under its old name, removed at once, so that /proc shows that name with
    // " (deleted)" as before; when that name is taken again, nameless.
    let excl = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    if let Ok(fd) = nix::fcntl::open(&g.path, excl, mode) {
        if std::fs::remove_file(&g.path).is_ok() {
            return Ok(fd);
        }
    }
    match nix::fcntl::open(dir, OFlag::O_TMPFILE | OFlag::O_RDWR, mode) {
        Ok(fd) => Ok(fd),
        // No O_TMPFILE on that filesystem (or the directory is gone): a name
        // that is removed at once.
        Err(_) => {
            let tmp =
                std::env::temp_dir().join(format!(".xos-ghost-{}-{}", std::process::id(), g.id));
            let fd = nix::fcntl::open(&tmp, OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR, mode)?;
            let _ = std::fs::remove_file(&tmp);
            Ok(fd)
        }
    }
}

/// Puts the saved mode and memfd seals on the filled file.
pub fn seal(fd: impl AsFd, g: &Ghost) -> nix::Result<()> {
    nix::sys::stat::fchmod(fd.as_fd(), nix::sys::stat::Mode::from_bits_truncate(g.mode))?;
    if g.seals != 0 {
        nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::from_bits_truncate(g.seals)),
        )?;
    }
    Ok(())
}

/// A read-only open file of the same unnamed inode as `fd`.
pub fn read_only(fd: &OwnedFd) -> nix::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    nix::fcntl::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}
