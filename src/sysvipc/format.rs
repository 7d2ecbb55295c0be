//! The file format of one saved SysV IPC object (`ipccheckpoint FILE`).
//!
//! ```text
//! offset  size  field (integers little-endian)
//!      0     8  magic "\x89XOSIPC\n"
//!      8     4  format version (1)
//!     12     4  kind: 1 message queue, 2 semaphore array, 3 shared memory segment
//!     16     8  M = length of the metadata
//!     24     8  P = offset of the payload (64 + M rounded up to 8; to 4096 for shm)
//!     32     8  L = length of the payload
//!     40     4  CRC-32 of bytes 0..40 followed by the metadata
//!     44    20  zero
//!     64     M  metadata: JSON (key, id, owner, mode, and per kind: the message
//!               table, the semaphore values, the segment size and stored extents)
//!  64+M    ...  zero padding up to P
//!      P     L  payload: message texts one after the other / nothing / the bytes
//!               of the stored extents of the segment one after the other
//!    P+L     4  CRC-32 of every byte before it (0..P+L)
//!  P+L+4     4  zero
//!  P+L+8     8  end magic "XOSIPC-E"
//! ```
//!
//! The file is exactly P+L+16 bytes long, so a truncated or extended file is
//! recognised from its size; the header CRC rejects an altered header or metadata
//! without reading the payload, the final CRC any other alteration. Files are
//! written under a temporary name in the target directory, fsynced and renamed.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crc32fast::Hasher;

use super::{IpcError, Kind};
use crate::fsutil::PathError;

/// First bytes of every file.
pub const MAGIC: [u8; 8] = *b"\x89XOSIPC\n";
/// Last bytes of every file.
pub const END_MAGIC: [u8; 8] = *b"XOSIPC-E";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: u64 = 64;
/// Size of the trailer.
pub const TRAILER_LEN: u64 = 16;
/// Largest metadata accepted (a hole map of a huge, finely scattered segment).
const MAX_META: u64 = 1 << 30;
/// Payload I/O is done in chunks of this size.
pub(crate) const CHUNK: usize = 4 << 20;

/// What is wrong with a file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a SysV IPC checkpoint file of xos (bad magic)")]
    BadMagic,
    #[error("format version {found} is not supported (this xos reads version {VERSION})")]
    Version { found: u32 },
    #[error("unknown object kind {0}")]
    BadKind(u32),
    #[error("truncated or extended: {found} bytes, the header says {expected}")]
    Length { found: u64, expected: u64 },
    #[error("header or metadata checksum mismatch (the file is corrupt)")]
    HeaderChecksum,
    #[error("checksum mismatch (the file is corrupt)")]
    Checksum,
    #[error("bad trailer (the file is corrupt)")]
    Trailer,
    #[error("invalid metadata: {0}")]
    Metadata(#[from] serde_json::Error),
    #[error("inconsistent metadata: {0}")]
    Inconsistent(String),
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::Msg => 1,
            Kind::Sem => 2,
            Kind::Shm => 3,
        }
    }

    fn from_code(c: u32) -> Option<Kind> {
        match c {
            1 => Some(Kind::Msg),
            2 => Some(Kind::Sem),
            3 => Some(Kind::Shm),
            _ => None,
        }
    }
}

fn format_err(path: &Path, source: FormatError) -> IpcError {
    IpcError::Format {
        path: path.to_path_buf(),
        source,
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IpcError + 'a {
    move |e| PathError::new(op, path, e).into()
}

fn header_bytes(kind: Kind, meta: &[u8], payload_off: u64, payload_len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize + meta.len());
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&kind.code().to_le_bytes());
    h.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    h.extend_from_slice(&payload_off.to_le_bytes());
    h.extend_from_slice(&payload_len.to_le_bytes());
    let mut crc = Hasher::new();
    crc.update(&h);
    crc.update(meta);
    h.extend_from_slice(&crc.finalize().to_le_bytes());
    h.resize(HEADER_LEN as usize, 0);
    h
}

/// Payload offset for a kind: shm payloads start on a page boundary.
fn payload_offset(kind: Kind, meta_len: u64) -> u64 {
    let align = if kind == Kind::Shm { 4096 } else { 8 };
    (HEADER_LEN + meta_len).div_ceil(align) * align
}

fn sync_dir(dir: &Path) -> Result<(), IpcError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

/// Writes one file: header and metadata at creation, then the payload in as many
/// pieces as the caller likes, then `finish` adds the trailer, syncs and renames.
/// Dropped unfinished, it removes its temporary file.
pub(crate) struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    crc: Hasher,
    remaining: u64,
    done: bool,
}

impl Writer {
    pub(crate) fn create(
        path: &Path,
        kind: Kind,
        meta: &[u8],
        payload_len: u64,
    ) -> Result<Writer, IpcError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| {
                IpcError::from(PathError::new(
                    "write",
                    path,
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                ))
            })?
            .to_string_lossy()
            .into_owned();
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        let mut w = Writer {
            path: path.to_path_buf(),
            tmp,
            file,
            crc: Hasher::new(),
            remaining: payload_len,
            done: false,
        };
        let off = payload_offset(kind, meta.len() as u64);
        let mut head = header_bytes(kind, meta, off, payload_len);
        head.extend_from_slice(meta);
        head.resize(off as usize, 0);
        w.crc.update(&head);
        w.file.write_all(&head).map_err(io("write", &w.tmp))?;
        Ok(w)
    }

    /// Appends payload bytes.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), IpcError> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(data);
        self.write_hashed(data, crc)
    }

    /// Appends payload bytes whose CRC the caller computed (`crc` covers exactly
    /// `data`), so that another thread can do that work.
    pub(crate) fn write_hashed(
        &mut self,
        data: &[u8],
        crc: crc32fast::Hasher,
    ) -> Result<(), IpcError> {
        let n = data.len() as u64;
        if n > self.remaining {
            return Err(format_err(
                &self.path,
                FormatError::Inconsistent("more payload than announced".into()),
            ));
        }
        self.remaining -= n;
        self.crc.combine(&crc);
        self.file.write_all(data).map_err(io("write", &self.tmp))
    }

    /// Writes the trailer, syncs, renames over the final name, syncs the directory.
    /// Returns the size of the file.
    pub(crate) fn finish(mut self) -> Result<u64, IpcError> {
        if self.remaining != 0 {
            return Err(format_err(
                &self.path,
                FormatError::Inconsistent("less payload than announced".into()),
            ));
        }
        let crc = std::mem::take(&mut self.crc).finalize();
        let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
        trailer.extend_from_slice(&crc.to_le_bytes());
        trailer.extend_from_slice(&[0; 4]);
        trailer.extend_from_slice(&END_MAGIC);
        self.file
            .write_all(&trailer)
            .map_err(io("write", &self.tmp))?;
        self.file.sync_all().map_err(io("sync", &self.tmp))?;
        let len = self.file.metadata().map_err(io("stat", &self.tmp))?.len();
        fs::rename(&self.tmp, &self.path).map_err(io("rename into", &self.path))?;
        self.done = true;
        sync_dir(
            self.path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
        Ok(len)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// An opened file whose header, size and metadata checksum were checked.
pub(crate) struct Reader {
    path: PathBuf,
    file: File,
    kind: Kind,
    meta: Vec<u8>,
    payload_off: u64,
    payload_len: u64,
    file_len: u64,
    /// The CRC recorded in the trailer.
    crc: u32,
    /// CRC state after every byte before the payload (computed by `verify`).
    prefix: Option<Hasher>,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Reader {
    /// Opens `path` and checks everything that does not need the payload.
    pub(crate) fn open(path: &Path) -> Result<Reader, IpcError> {
        let bad = |e| format_err(path, e);
        let mut file = File::open(path).map_err(io("open", path))?;
        // The file is read from start to end (twice for a restore): a larger readahead.
        let _ = nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        );
        let file_len = file.metadata().map_err(io("stat", path))?.len();
        let mut head = [0u8; HEADER_LEN as usize];
        let got = read_full(&mut file, &mut head).map_err(io("read", path))?;
        if got < 8 || head[..8] != MAGIC {
            return Err(bad(FormatError::BadMagic));
        }
        if got < head.len() {
            return Err(bad(FormatError::Length {
                found: file_len,
                expected: HEADER_LEN + TRAILER_LEN,
            }));
        }
        let version = le_u32(&head, 8);
        if version != VERSION {
            return Err(bad(FormatError::Version { found: version }));
        }
        let code = le_u32(&head, 12);
        let meta_len = le_u64(&head, 16);
        let payload_off = le_u64(&head, 24);
        let payload_len = le_u64(&head, 32);
        let head_crc = le_u32(&head, 40);
        let sane = meta_len <= MAX_META
            && payload_off >= HEADER_LEN + meta_len
            && payload_off - (HEADER_LEN + meta_len) < 4096
            && payload_off
                .checked_add(payload_len)
                .is_some_and(|e| e < u64::MAX - TRAILER_LEN);
        if !sane {
            return Err(bad(FormatError::HeaderChecksum));
        }
        let expected = payload_off + payload_len + TRAILER_LEN;
        if file_len != expected {
            return Err(bad(FormatError::Length {
                found: file_len,
                expected,
            }));
        }
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact(&mut meta).map_err(io("read", path))?;
        let mut crc = Hasher::new();
        crc.update(&head[..40]);
        crc.update(&meta);
        if crc.finalize() != head_crc {
            return Err(bad(FormatError::HeaderChecksum));
        }
        let kind = Kind::from_code(code).ok_or_else(|| bad(FormatError::BadKind(code)))?;
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.seek(SeekFrom::Start(payload_off + payload_len))
            .and_then(|_| file.read_exact(&mut trailer))
            .map_err(io("read", path))?;
        if trailer[8..] != END_MAGIC || trailer[4..8] != [0; 4] {
            return Err(bad(FormatError::Trailer));
        }
        Ok(Reader {
            path: path.to_path_buf(),
            file,
            kind,
            meta,
            payload_off,
            payload_len,
            file_len,
            crc: le_u32(&trailer, 0),
            prefix: None,
        })
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    pub(crate) fn meta(&self) -> &[u8] {
        &self.meta
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn payload_len(&self) -> u64 {
        self.payload_len
    }

    pub(crate) fn file_len(&self) -> u64 {
        self.file_len
    }

    pub(crate) fn format_error(&self, e: FormatError) -> IpcError {
        format_err(&self.path, e)
    }

    /// Reads the whole file once and checks the final CRC.
    pub(crate) fn verify(&mut self) -> Result<(), IpcError> {
        let path = self.path.clone();
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io("read", &path))?;
        let mut crc = Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        // Hashes the next `left` bytes of the file.
        let mut hash = |file: &mut File, crc: &mut Hasher, mut left: u64| {
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                file.read_exact(&mut buf[..n]).map_err(io("read", &path))?;
                crc.update(&buf[..n]);
                left -= n as u64;
            }
            Ok::<(), IpcError>(())
        };
        hash(&mut self.file, &mut crc, self.payload_off)?;
        self.prefix = Some(crc.clone());
        hash(&mut self.file, &mut crc, self.payload_len)?;
        if crc.finalize() != self.crc {
            self.prefix = None;
            return Err(format_err(&path, FormatError::Checksum));
        }
        Ok(())
    }

    /// The payload, read from its start. Its CRC is checked again as it is read, so
    /// a file changed since `verify` is noticed at `Payload::finish`.
    pub(crate) fn payload(&mut self) -> Result<Payload<'_>, IpcError> {
        let crc = self
            .prefix
            .clone()
            .expect("Reader::verify succeeded before Reader::payload");
        self.file
            .seek(SeekFrom::Start(self.payload_off))
            .map_err(io("read", &self.path))?;
        Ok(Payload {
            left: self.payload_len,
            crc,
            reader: self,
        })
    }
}

/// Sequential reads of the payload.
pub(crate) struct Payload<'a> {
    reader: &'a mut Reader,
    left: u64,
    crc: Hasher,
}

impl Payload<'_> {
    /// Fills `buf` exactly from the payload.
    pub(crate) fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), IpcError> {
        if buf.len() as u64 > self.left {
            return Err(self.reader.format_error(FormatError::Inconsistent(
                "payload shorter than the metadata says".into(),
            )));
        }
        self.reader
            .file
            .read_exact(buf)
            .map_err(io("read", &self.reader.path))?;
        self.left -= buf.len() as u64;
        self.crc.update(buf);
        Ok(())
    }

    /// Checks that the whole payload was read and still has the CRC it had.
    pub(crate) fn finish(self) -> Result<(), IpcError> {
        if self.left != 0 {
            return Err(self.reader.format_error(FormatError::Inconsistent(
                "payload longer than the metadata says".into(),
            )));
        }
        if self.crc.finalize() != self.reader.crc {
            return Err(self.reader.format_error(FormatError::Checksum));
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, kind: Kind, meta: &[u8], payload: &[u8]) -> PathBuf {
        let p = dir.join("obj.ipc");
        let mut w = Writer::create(&p, kind, meta, payload.len() as u64).unwrap();
        for (i, c) in payload.chunks(3).enumerate() {
            if i % 2 == 0 {
                w.write(c).unwrap();
            } else {
                let mut h = Hasher::new();
                h.update(c);
                w.write_hashed(c, h).unwrap();
            }
        }
        w.finish().unwrap();
        p
    }

    fn read_back(p: &Path) -> Result<(Kind, Vec<u8>, Vec<u8>), IpcError> {
        let mut r = Reader::open(p)?;
        r.verify()?;
        let meta = r.meta().to_vec();
        let kind = r.kind();
        let mut buf = vec![0u8; r.payload_len() as usize];
        let mut pl = r.payload()?;
        pl.read_exact(&mut buf)?;
        pl.finish()?;
        Ok((kind, meta, buf))
    }

    fn reason(e: IpcError) -> FormatError {
        match e {
            IpcError::Format { source, .. } => source,
            e => panic!("not a format error: {e}"),
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let d = tempfile::tempdir().unwrap();
        for kind in [Kind::Msg, Kind::Sem, Kind::Shm] {
            let p = write(d.path(), kind, b"{\"a\":1}", b"hello payload");
            let (k, m, pl) = read_back(&p).unwrap();
            assert_eq!(
                (k, &m[..], &pl[..]),
                (kind, &b"{\"a\":1}"[..], &b"hello payload"[..])
            );
            let data = fs::read(&p).unwrap();
            let off = if kind == Kind::Shm { 4096 } else { 72 };
            assert_eq!(data.len() as u64, off + 13 + TRAILER_LEN);
            assert_eq!(&data[off as usize..off as usize + 5], b"hello");
        }
        // Nothing but the file is left in the directory.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn every_kind_of_damage_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), Kind::Msg, b"{\"a\":1}", &[7u8; 1000]);
        let good = fs::read(&p).unwrap();
        let check = |data: &[u8]| {
            fs::write(&p, data).unwrap();
            reason(read_back(&p).unwrap_err())
        };
        let mut b = good.clone();
        b[500] ^= 1;
        assert!(matches!(check(&b), FormatError::Checksum));
        let mut b = good.clone();
        b[66] ^= 1; // metadata
        assert!(matches!(check(&b), FormatError::HeaderChecksum));
        let mut b = good.clone();
        b[13] = 2; // kind
        assert!(matches!(check(&b), FormatError::HeaderChecksum));
        let mut b = good.clone();
        b[8] = 9; // version
        assert!(matches!(check(&b), FormatError::Version { found: 9 }));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(check(&b), FormatError::BadMagic));
        assert!(matches!(
            check(&good[..good.len() - 1]),
            FormatError::Length { .. }
        ));
        assert!(matches!(check(&good[..40]), FormatError::Length { .. }));
        assert!(matches!(check(b""), FormatError::BadMagic));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(check(&b), FormatError::Length { .. }));
        let mut b = good.clone();
        let n = b.len();
        b[n - 1] ^= 1;
        assert!(matches!(check(&b), FormatError::Trailer));
        let mut b = good.clone();
        b[n - 16] ^= 1; // the CRC itself
        assert!(matches!(check(&b), FormatError::Checksum));
        assert!(read_back(&{
            fs::write(&p, &good).unwrap();
            p.clone()
        })
        .is_ok());
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.ipc");
        let mut w = Writer::create(&p, Kind::Shm, b"{}", 10).unwrap();
        w.write(b"abc").unwrap();
        assert!(w.write(&[0; 8]).is_err());
        drop(w);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        let w = Writer::create(&p, Kind::Shm, b"{}", 10).unwrap();
        assert!(w.finish().is_err());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
