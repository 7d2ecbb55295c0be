//! Open files a checkpoint refuses, each named in one line (the list is in
//! checkpoint(1)): kernel objects whose state cannot be read back or set
//! again from user space, devices whose state lives in the device, and the
//! memory of another process.

use std::path::Path;

/// What an `anon_inode:NAME` file that cannot be saved is, for the error line.
pub fn anon(name: &str) -> String {
    let what = match name {
        "[io_uring]" => "an io_uring instance (its rings and requests in flight)",
        "[perf_event]" => "a perf event",
        "[userfaultfd]" => "a userfaultfd",
        "[fanotify]" => "a fanotify instance",
        "[fscontext]" | "[fsmount]" => "a mount being built (fsopen)",
        "[timerfd]" | "[eventfd]" | "[signalfd]" | "[eventpoll]" | "inotify" => {
            "an object whose state fdinfo does not describe"
        }
        n if n.starts_with("bpf") || n.starts_with("[bpf") => "a bpf object",
        n if n.starts_with("kvm") || n.starts_with("[kvm") => "a KVM object",
        n if n.contains("dmabuf") || n.contains("sync_file") => "a device buffer",
        _ => "a kind of kernel object the checkpointer does not know",
    };
    what.to_string()
}

/// Major numbers of terminals: /dev/ttyN and serial lines, /dev/tty, console
/// and ptmx, pseudo-terminal slaves, USB serial lines.
const TTY_MAJORS: &[u64] = &[4, 5, 136, 137, 138, 139, 140, 141, 142, 143, 188];
/// GPUs (DRM, NVIDIA).
const GPU_MAJORS: &[u64] = &[226, 195];
/// Minors of the misc major (10) that hold state: tun/tap, fuse, kvm,
/// vhost-net, vhost-vsock.
const MISC_WITH_STATE: &[u64] = &[200, 229, 232, 238, 241];

/// Why the character device `path` (device number `rdev`) cannot be reopened
/// by path, or None for a device without state (/dev/null, /dev/zero,
/// /dev/urandom…).
pub fn device(path: &Path, rdev: u64) -> Option<String> {
    let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    let p = path.to_string_lossy();
    let what = if TTY_MAJORS.contains(&major) {
        "a terminal other than the application's own (its state is the terminal's)"
    } else if GPU_MAJORS.contains(&major) || p.starts_with("/dev/nvidia") || p == "/dev/kfd" {
        "a GPU (its state is in the device)"
    } else if major == 10 && MISC_WITH_STATE.contains(&minor) {
        "a device with state (tun, fuse, kvm, vhost)"
    } else {
        return None;
    };
    Some(format!("{what}, device {major}:{minor}"))
}

/// Why `path` (an open file of process `own`, its pid in the application)
/// cannot be reopened: the memory of another process.
pub fn proc_mem(path: &Path, own: i32) -> Option<String> {
    let mut parts = path.strip_prefix("/proc").ok()?.iter();
    let pid: i32 = parts.next()?.to_str()?.parse().ok()?;
    let file = parts.next()?.to_str()?;
    (parts.next().is_none() && pid != own && matches!(file, "mem" | "pagemap" | "environ"))
        .then(|| format!("the memory of another process ({})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_files() {
        assert!(anon("[io_uring]").contains("io_uring"));
        assert!(anon("bpf-map").contains("bpf"));
        assert!(anon("[something]").contains("does not know"));
        let dev = |ma: u32, mi: u32| libc::makedev(ma, mi);
        assert_eq!(device(Path::new("/dev/null"), dev(1, 3)), None);
        assert_eq!(device(Path::new("/dev/urandom"), dev(1, 9)), None);
        assert!(device(Path::new("/dev/pts/3"), dev(136, 3))
            .unwrap()
            .contains("terminal"));
        assert!(device(Path::new("/dev/dri/card0"), dev(226, 0))
            .unwrap()
            .contains("GPU"));
        assert!(device(Path::new("/dev/net/tun"), dev(10, 200)).is_some());
        assert_eq!(proc_mem(Path::new("/proc/7/mem"), 7), None);
        assert!(proc_mem(Path::new("/proc/8/mem"), 7).is_some());
        assert_eq!(proc_mem(Path::new("/proc/8/status"), 7), None);
    }
}
