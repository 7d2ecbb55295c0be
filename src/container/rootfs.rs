//! Root filesystem templates (`TemplateDir/NAME.tar` or `NAME.tar.gz`, the
//! seed's OpenVZ template cache) unpacked for a container, and the contents
//! of a container's tmpfs mounts saved and restored as tar archives.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::ContainerError;

/// The template file of `name` in `dir`.
pub fn template(dir: &Path, name: &str) -> Result<PathBuf, ContainerError> {
    let missing = || ContainerError::NoTemplate {
        name: name.to_string(),
        dir: dir.to_path_buf(),
    };
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(missing());
    }
    ["tar.gz", "tgz", "tar"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .find(|p| p.is_file())
        .ok_or_else(missing)
}

/// Unpacks a tar archive (gzip-compressed or not) into `dest`, keeping owners
/// and modes.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), ContainerError> {
    let err = |source| ContainerError::Unpack {
        archive: archive.to_path_buf(),
        source,
    };
    let mut f = BufReader::new(File::open(archive).map_err(err)?);
    let mut magic = [0u8; 2];
    let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = BufReader::new(File::open(archive).map_err(err)?);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut a = tar::Archive::new(reader);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(false);
    a.unpack(dest).map_err(err)
}

/// Writes the content of directory `from` into the tar archive `to`.
pub fn pack(from: &Path, to: &Path) -> std::io::Result<()> {
    let f = File::create(to)?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", from)?;
    b.into_inner()?.sync_all()
}

/// A tmpfs mounted inside a container (not one the host has): its mount
/// point as the container sees it and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    pub target: PathBuf,
    pub options: String,
}

/// The tmpfs mounts of the mount namespace of `pid` that the host's does not
/// have (other devices), except the container's own /dev and /proc.
pub fn container_tmpfs(pid: i32) -> std::io::Result<Vec<TmpfsMount>> {
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let ours = std::fs::read_to_string("/proc/self/mountinfo")?;
    let host_devs: std::collections::HashSet<String> = ours
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for line in theirs.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.get(dash + 1) != Some(&"tmpfs") || f.len() < 5 || host_devs.contains(f[2]) {
            continue;
        }
        let target = PathBuf::from(unescape(f[4]));
        if target.starts_with("/dev") || target.starts_with("/proc") || f[3] != "/" {
            continue;
        }
        let options = f
            .get(dash + 3)
            .unwrap_or(&"")
            .split(',')
            .filter(|o| {
                ["size=", "mode=", "nr_inodes=", "uid=", "gid="]
                    .iter()
                    .any(|k| o.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join(",");
        out.push(TmpfsMount { target, options });
    }
    Ok(out)
}

/// Mount points in mountinfo escape space, tab, newline and backslash in octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn pack_then_unpack() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), b"hello").unwrap();
        let a = d.path().join("a.tar");
        pack(&src, &a).unwrap();
        let dst = d.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        unpack(&a, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("sub/f")).unwrap(), b"hello");
        assert!(template(d.path(), "a").is_ok());
        assert!(template(d.path(), "../a").is_err());
    }
}
