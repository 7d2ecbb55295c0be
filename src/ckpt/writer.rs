//! Page images written by a second thread while the checkpointer reads on.
//!
//! Reading a process's memory (/proc/PID/mem) and writing it into the image
//! take about as long each; done in turns, the application waits for both.
//! Here the reader fills 1 MiB buffers and hands them over, and a writer
//! thread writes and checksums them, so the two overlap. A few buffers bound
//! the memory held in flight. For a small process, handing buffers to another
//! thread (and waking it) costs more than it saves: an inline writer writes
//! each full buffer itself.

use std::fs::File;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

/// Buffers in flight: one being filled, the others queued or being written.
const BUFFERS: usize = 4;

enum Msg {
    Open(File),
    Data(Vec<u8>),
    Close,
}

/// What the writer says when a file is closed: its length and CRC-32, and the
/// microseconds spent writing it; or the first write error.
pub type Written = std::io::Result<(u64, u32, u64)>;

/// The writer thread and the buffers that go to it and back.
struct Thread {
    to: Option<SyncSender<Msg>>,
    free: Receiver<Vec<u8>>,
    closed: Receiver<Written>,
    handle: Option<JoinHandle<()>>,
}

/// Fills buffers and has them written, by a thread of its own or inline.
pub struct PageWriter {
    thread: Option<Thread>,
    /// Inline: the file being written and its running state.
    inline: Output,
    /// The buffer being filled.
    current: Vec<u8>,
    chunk: usize,
}

impl PageWriter {
    /// A writer that writes each full buffer itself.
    pub fn inline(chunk: usize) -> PageWriter {
        PageWriter {
            thread: None,
            inline: Output::default(),
            current: Vec::with_capacity(chunk),
            chunk,
        }
    }

    /// Starts a writer thread, on `cpus` when not empty (not the reader's).
    pub fn threaded(chunk: usize, cpus: Vec<usize>) -> std::io::Result<PageWriter> {
        let (to, from_reader) = sync_channel::<Msg>(BUFFERS + 2);
        let (give_back, free) = sync_channel::<Vec<u8>>(BUFFERS);
        let (say_closed, closed) = sync_channel::<Written>(1);
        for _ in 1..BUFFERS {
            give_back
                .send(Vec::with_capacity(chunk))
                .expect("the pool has room for every buffer");
        }
        let handle = std::thread::Builder::new()
            .name("page-writer".into())
            .spawn(move || {
                if !cpus.is_empty() {
                    let _ = super::affinity::set(nix::unistd::Pid::from_raw(0), &cpus);
                }
                write_loop(from_reader, give_back, say_closed)
            })?;
        Ok(PageWriter {
            thread: Some(Thread {
                to: Some(to),
                free,
                closed,
                handle: Some(handle),
            }),
            inline: Output::default(),
            current: Vec::with_capacity(chunk),
            chunk,
        })
    }

    /// Whether buffers go to a thread.
    pub fn is_threaded(&self) -> bool {
        self.thread.is_some()
    }

    /// Starts a new image file; the bytes given until [`close`](Self::close)
    /// go into it.
    pub fn open(&mut self, file: File) -> std::io::Result<()> {
        self.current.clear();
        match &self.thread {
            Some(t) => t.send(Msg::Open(file)),
            None => {
                self.inline.open(file);
                Ok(())
            }
        }
    }

    /// Room for the next `len` bytes (at most the chunk size) at the end of the
    /// buffer being filled: the caller reads into it, then calls
    /// [`filled`](Self::filled) with what it read.
    pub fn room(&mut self, len: usize) -> std::io::Result<&mut [u8]> {
        let len = len.min(self.chunk);
        if self.current.len() + len > self.chunk {
            self.flush()?;
        }
        let at = self.current.len();
        self.current.resize(at + len, 0);
        Ok(&mut self.current[at..])
    }

    /// Keeps the first `n` bytes of the room last given; 0 drops it.
    pub fn filled(&mut self, room: usize, n: usize) {
        let keep = self.current.len() - room + n;
        self.current.truncate(keep);
    }

    /// Hands the buffer being filled to the writer and takes a free one, or
    /// writes it inline.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let Some(t) = &self.thread else {
            self.inline.write(&self.current);
            self.current.clear();
            return Ok(());
        };
        let next = t.free.recv().map_err(|_| stopped())?;
        let full = std::mem::replace(&mut self.current, next);
        self.current.clear();
        t.send(Msg::Data(full))
    }

    /// Ends the current file once every byte is written: (length, CRC-32,
    /// microseconds spent writing).
    pub fn close(&mut self) -> Written {
        self.flush()?;
        match &self.thread {
            Some(t) => {
                t.send(Msg::Close)?;
                t.closed.recv().map_err(|_| stopped())?
            }
            None => self.inline.close(),
        }
    }
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the page writer has stopped")
}

impl Thread {
    fn send(&self, m: Msg) -> std::io::Result<()> {
        self.to
            .as_ref()
            .and_then(|to| to.send(m).ok())
            .ok_or_else(stopped)
    }
}

/// A file being written, its length and checksum so far, the time spent, and
/// the first error.
#[derive(Default)]
pub struct Output {
    file: Option<File>,
    crc: crc32fast::Hasher,
    len: u64,
    spent: u64,
    failed: Option<std::io::Error>,
}

impl Output {
    pub fn open(&mut self, file: File) {
        *self = Output {
            file: Some(file),
            ..Output::default()
        };
    }

    pub fn write(&mut self, b: &[u8]) {
        let began = Instant::now();
        if self.failed.is_none() {
            self.crc.update(b);
            self.len += b.len() as u64;
            if let Some(f) = self.file.as_mut() {
                if let Err(e) = f.write_all(b) {
                    self.failed = Some(e);
                }
            }
        }
        self.spent += began.elapsed().as_micros() as u64;
    }

    /// The first write error, taken: writing goes on after it.
    pub fn take_error(&mut self) -> Option<std::io::Error> {
        self.failed.take()
    }

    pub fn close(&mut self) -> Written {
        let done = std::mem::take(self);
        match done.failed {
            Some(e) => Err(e),
            None => Ok((done.len, done.crc.finalize(), done.spent)),
        }
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        // The thread ends when its channel closes.
        self.to.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn write_loop(from: Receiver<Msg>, give_back: SyncSender<Vec<u8>>, closed: SyncSender<Written>) {
    let mut out = Output::default();
    for m in from {
        match m {
            Msg::Open(f) => out.open(f),
            Msg::Data(b) => {
                out.write(&b);
                if give_back.send(b).is_err() {
                    return;
                }
            }
            Msg::Close => {
                if closed.send(out.close()).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_with_their_checksum() {
        let dir = std::env::temp_dir().join(format!("xos-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (round, mut w) in [
            PageWriter::threaded(1000, Vec::new()).unwrap(),
            PageWriter::inline(1000),
        ]
        .into_iter()
        .enumerate()
        {
            let round = round as u8;
            let path = dir.join(format!("f{round}"));
            w.open(File::create(&path).unwrap()).unwrap();
            let mut want = Vec::new();
            for i in 0..37usize {
                let room = w.room(300).unwrap();
                let n = room.len() - (i % 3);
                for (k, b) in room.iter_mut().enumerate().take(n) {
                    *b = (i * 7 + k) as u8 ^ round;
                }
                want.extend_from_slice(&room[..n]);
                let len = room.len();
                w.filled(len, n);
            }
            let (len, crc, _) = w.close().unwrap();
            let got = std::fs::read(&path).unwrap();
            assert_eq!(got, want);
            assert_eq!(len, want.len() as u64);
            assert_eq!(crc, crc32fast::hash(&want));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
