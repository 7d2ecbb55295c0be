//! File helpers shared by every on-disk format of xos.
//!
//! Records are written to a temporary name in the same directory, fsynced, renamed
//! over the final name and the directory is fsynced, so a reader sees either the old
//! or the new content, never a torn one. A "checked" file starts with one header line
//! `MAGIC VERSION CRC32 LEN` followed by the body, so truncation and corruption are
//! detected before anything is parsed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An I/O error with the path and the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PathError {
            op,
            path: path.into(),
            source,
        }
    }

    /// The raw OS error number, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Errors reading a checked file.
#[derive(Debug, thiserror::Error)]
pub enum CheckedError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{}: not a {expected} file (bad header)", path.display())]
    BadMagic { path: PathBuf, expected: String },
    #[error("{}: format version {found} is not supported (this xos reads {supported})", path.display())]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{}: truncated or extended ({found} bytes of body, header says {expected})", path.display())]
    Length {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("{}: checksum mismatch (file is corrupt)", path.display())]
    Checksum { path: PathBuf },
}

/// Reads a whole file, naming it on error.
/// The entries of `dir` whose names are numbers (versions, pids, tids),
/// ascending; none when it cannot be read.
pub fn numbered_entries<T: std::str::FromStr + Ord>(dir: &Path) -> Vec<T> {
    let mut v: Vec<T> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

pub fn read(path: &Path) -> Result<Vec<u8>, PathError> {
    fs::read(path).map_err(|e| PathError::new("read", path, e))
}

/// Reads a whole file as text, naming it on error.
pub fn read_string(path: &Path) -> Result<String, PathError> {
    fs::read_to_string(path).map_err(|e| PathError::new("read", path, e))
}

/// Writes `data` to an existing file (as for cgroup and /proc control files):
/// one write call, no truncation, no temporary file.
pub fn write_control(path: &Path, data: &str) -> Result<(), PathError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| PathError::new("open", path, e))?;
    f.write_all(data.as_bytes())
        .map_err(|e| PathError::new("write", path, e))
}

/// Creates a directory and its parents with the given mode.
pub fn create_dir_all(path: &Path, mode: u32) -> Result<(), PathError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| PathError::new("create directory", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), PathError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PathError::new("sync directory", dir, e))
}

/// Atomically replaces `path` with `data` (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PathError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| PathError::new("create", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| PathError::new("write", &tmp, e))?;
        f.sync_all().map_err(|e| PathError::new("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| PathError::new("rename into", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Encodes a checked file: header line then body.
pub fn encode_checked(magic: &str, version: u32, body: &[u8]) -> Vec<u8> {
    let crc = crc32fast::hash(body);
    let mut out = format!("{magic} {version} {crc:08x} {}\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Decodes a checked file read from `path`, returning the body.
pub fn decode_checked<'a>(
    path: &Path,
    data: &'a [u8],
    magic: &str,
    version: u32,
) -> Result<&'a [u8], CheckedError> {
    let bad = || CheckedError::BadMagic {
        path: path.to_path_buf(),
        expected: magic.to_string(),
    };
    let nl = data.iter().position(|&b| b == b'\n').ok_or_else(bad)?;
    let header = std::str::from_utf8(&data[..nl]).map_err(|_| bad())?;
    let fields: Vec<&str> = header.split(' ').collect();
    if fields.len() != 4 || fields[0] != magic {
        return Err(bad());
    }
    let found: u32 = fields[1].parse().map_err(|_| bad())?;
    if found != version {
        return Err(CheckedError::Version {
            path: path.to_path_buf(),
            found,
            supported: version,
        });
    }
    let crc = u32::from_str_radix(fields[2], 16).map_err(|_| bad())?;
    let len: usize = fields[3].parse().map_err(|_| bad())?;
    let body = &data[nl + 1..];
    if body.len() != len {
        return Err(CheckedError::Length {
            path: path.to_path_buf(),
            found: body.len(),
            expected: len,
        });
    }
    if crc32fast::hash(body) != crc {
        return Err(CheckedError::Checksum {
            path: path.to_path_buf(),
        });
    }
    Ok(body)
}

/// Atomically writes a checked file.
pub fn write_checked(path: &Path, magic: &str, version: u32, body: &[u8]) -> Result<(), PathError> {
    write_atomic(path, &encode_checked(magic, version, body), 0o644)
}

/// Reads and verifies a checked file, returning its body.
pub fn read_checked(path: &Path, magic: &str, version: u32) -> Result<Vec<u8>, CheckedError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| PathError::new("read", path, e))?;
    decode_checked(path, &data, magic, version).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_round_trip_and_corruption() {
        let p = Path::new("x");
        let enc = encode_checked("xos-test", 1, b"{\"a\":1}");
        assert_eq!(
            decode_checked(p, &enc, "xos-test", 1).unwrap(),
            b"{\"a\":1}"
        );
        // Flip one body byte.
        let mut bad = enc.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        assert!(matches!(
            decode_checked(p, &bad, "xos-test", 1),
            Err(CheckedError::Checksum { .. })
        ));
        // Truncate.
        assert!(matches!(
            decode_checked(p, &enc[..enc.len() - 1], "xos-test", 1),
            Err(CheckedError::Length { .. })
        ));
        assert!(matches!(
            decode_checked(p, &enc, "xos-other", 1),
            Err(CheckedError::BadMagic { .. })
        ));
        assert!(matches!(
            decode_checked(p, &enc, "xos-test", 2),
            Err(CheckedError::Version { found: 1, .. })
        ));
        assert!(decode_checked(p, b"", "xos-test", 1).is_err());
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("rec");
        write_atomic(&f, b"one", 0o600).unwrap();
        write_atomic(&f, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
