//! SysV shared memory attached in the processes (`/SYSV%08x (deleted)`
//! mappings). The segments belong to the application's IPC namespace, which
//! is saved whole with the image (`ipc/`, as `ipccheckpoint --all` writes it)
//! when any process has one attached, restored by the init before the
//! processes are rebuilt, and attached again at the same addresses with
//! shmat(2); segments that had been removed (IPC_RMID) while attached are
//! removed again once every process has them.

use std::path::Path;

use super::image::Image;
use super::CkptError;

type Result<T> = std::result::Result<T, CkptError>;

/// The directory of the saved IPC namespace inside a version.
pub const DIR: &str = "ipc";

fn err(pid: i32, what: impl std::fmt::Display) -> CkptError {
    CkptError::Unsupported {
        pid,
        what: what.to_string(),
    }
}

/// The segment id of a mapping, if it is a SysV shared memory attachment that
/// can be attached again: the whole segment, from its start. `path` and
/// `inode` are from /proc/PID/maps, `map_file` opens the mapping.
pub fn attachment(
    pid: i32,
    path: &str,
    inode: u64,
    (start, end, offset): (u64, u64, u64),
    map_file: &str,
) -> Result<Option<i32>> {
    if !path.starts_with("/SYSV") {
        return Ok(None);
    }
    let what = format!("the SysV shared memory segment {inode} attached at {start:#x}");
    let size = std::fs::metadata(map_file)
        .map_err(|e| err(pid, format!("{what}: {e}")))?
        .len();
    let page = 4096;
    if offset != 0 || end - start != size.div_ceil(page) * page {
        return Err(err(pid, format!("{what}: only a part of it is mapped")));
    }
    Ok(Some(inode as i32))
}

/// Saves the IPC namespace of process `host` into `dir/ipc`, from a thread
/// of its own that enters that namespace: always when `attached` (the
/// application maps a segment of it), else only when the namespace is the
/// application's own and holds any object (semaphore sets and message queues
/// would otherwise be lost at restart). Says whether it was saved.
pub fn save(host: i32, dir: &Path, attached: bool) -> Result<bool> {
    if !attached {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/ipc")).ok();
        if ns(&host.to_string()) == ns("self") {
            // The caller's own (the host's): not the application's to save.
            return Ok(false);
        }
    }
    let target = dir.join(DIR);
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::ns::enter(host, "ipc").map_err(|e| err(host, e))?;
            if !attached
                && crate::sysvipc::list_all()
                    .map_err(|e| err(host, format!("its SysV IPC namespace: {e}")))?
                    .is_empty()
            {
                return Ok(false);
            }
            crate::sysvipc::save_all(&target)
                .map(|_| true)
                .map_err(|e| err(host, format!("its SysV IPC namespace: {e}")))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(err(
                host,
                "its SysV IPC namespace: the saving thread failed",
            ))
        })
    })
}

/// In the init, before any process is rebuilt: the saved IPC namespace, if
/// the image has one and the new namespace is still empty.
pub fn restore(dir: &Path, img: &Image) -> Result<()> {
    if !img.ipc {
        return Ok(());
    }
    // Objects restored by the caller (the grid layer restores a unit's own
    // copy of the namespace) are the ones the processes attach.
    if crate::sysvipc::procfs::list_all().is_ok_and(|l| !l.is_empty()) {
        return Ok(());
    }
    crate::sysvipc::restore_all(&dir.join(DIR))
        .map(drop)
        .map_err(|e| CkptError::Restore {
            pid: 1,
            reason: format!("cannot restore the SysV IPC objects of the image: {e}"),
        })
}

/// In the init, once every process has its segments attached: removes those
/// that had been removed while attached.
pub fn remove_marked(dir: &Path, img: &Image) {
    if !img.ipc {
        return;
    }
    let Ok((_, objects)) = crate::sysvipc::open_all(&dir.join(DIR)) else {
        return;
    };
    for o in objects {
        if let crate::sysvipc::Meta::Shm(m) = o.meta() {
            if m.marked_for_removal {
                let _ = super::sys::shm_rmid(m.perm.id);
            }
        }
    }
}
