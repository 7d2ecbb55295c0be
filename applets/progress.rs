//! A progress line on a terminal: redrawn on stderr while a long operation runs,
//! cleared when it ends, never drawn when stderr is not a terminal.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(100);

/// Draws `line(elapsed)` every 100 ms until dropped; the last state is drawn once
/// more, then the line is cleared.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// None when stderr is not a terminal.
    pub fn start(mut line: impl FnMut(Duration) -> String + Send + 'static) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let began = Instant::now();
            let draw = |text: String| {
                let _ = write!(std::io::stderr().lock(), "\r{text}\x1b[K");
            };
            loop {
                let done = stopped.load(Ordering::Relaxed);
                draw(line(began.elapsed()));
                if done {
                    break;
                }
                std::thread::park_timeout(PERIOD);
            }
            draw(String::new());
        });
        Some(Progress {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Bytes of memory a checkpoint of these processes is likely to save: their
/// resident anonymous and shared memory and their swap (file pages are mostly
/// kept by reference).
pub fn memory_estimate(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| {
                    l.starts_with("RssAnon:")
                        || l.starts_with("RssShmem:")
                        || l.starts_with("VmSwap:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
                * 1024
        })
        .sum()
}

/// Bytes in the files of `dir` and the name of the one changed last.
fn written(dir: &Path) -> (u64, Option<String>) {
    let mut total = 0;
    let mut newest: Option<(std::time::SystemTime, String)> = None;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(md) = e.metadata() else { continue };
        total += md.len();
        let t = md.modified().unwrap_or(std::time::UNIX_EPOCH);
        if newest.as_ref().is_none_or(|(n, _)| t >= *n) {
            newest = Some((t, e.file_name().to_string_lossy().into_owned()));
        }
    }
    (total, newest.map(|(_, n)| n))
}

/// The progress line of a checkpoint of application `app` written into the
/// temporary version directory `tmp`, with about `estimate` bytes to save.
pub fn checkpoint(app: u64, tmp: PathBuf, estimate: u64) -> Option<Progress> {
    // Renamed into place at the end: then the last figures stand.
    let mut last = (0, None);
    Progress::start(move |elapsed| {
        let now = written(&tmp);
        if now.0 >= last.0 {
            last = now;
        }
        let (done, file) = last.clone();
        let total = estimate.max(done).max(1);
        // A rate over the first instants says nothing.
        let rate = match elapsed.as_secs_f64() {
            t if t < 0.2 => String::new(),
            t => format!(", {:.0} MiB/s", mib(done) / t),
        };
        let what = match file.as_deref().and_then(|f| f.strip_prefix("pages-")) {
            Some(rest) => format!(", process {}", rest.trim_end_matches(".img")),
            None => String::new(),
        };
        format!(
            "checkpoint: application {app}: {:.1} of ~{:.1} MiB ({}%){rate}{what}",
            mib(done),
            mib(total),
            done * 100 / total
        )
    })
}

/// The progress of a restart of application `app` whose image holds `total` bytes
/// of memory: what its rebuilt processes hold so far. None when stderr is not a
/// terminal.
pub fn restart(app: u64, total: u64) -> Option<xos::app::Ticker> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let began = Instant::now();
    let most = std::sync::atomic::AtomicU64::new(0);
    Some(xos::app::Ticker(Arc::new(move |group, done| {
        let now = memory_estimate(&group.pids().unwrap_or_default());
        let shown = most.fetch_max(now, Ordering::Relaxed).max(now).min(total);
        // Once everything is in memory, the last checks and the release remain.
        let rate = match began.elapsed().as_secs_f64() {
            _ if shown >= total => ", finishing".to_string(),
            t if t < 0.2 => String::new(),
            t => format!(", {:.0} MiB/s", mib(shown) / t),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rrestart: application {app}: {:.1} of {:.1} MiB ({}%){rate}\x1b[K",
            mib(shown),
            mib(total),
            shown * 100 / total.max(1)
        );
        if done {
            let _ = write!(err, "\r\x1b[K");
        }
    })))
}
