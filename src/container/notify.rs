//! End-of-job reports and their delivery over a socket (the seed's "socket
//! notification" from the loader to the AEM): one JSON line per report, which
//! the listener acknowledges with `ok`; a report counts as delivered only once
//! acknowledged, so a sender retries until then.
//!
//! Addresses: `unix:PATH` (a stream socket) or `tcp:HOST:PORT`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Resource usage of a job unit (getrusage(2) of its reaped processes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rusage {
    pub utime_us: u64,
    pub stime_us: u64,
    pub maxrss_kb: u64,
    pub minflt: u64,
    pub majflt: u64,
    pub nvcsw: u64,
    pub nivcsw: u64,
}

impl Rusage {
    /// The usage since `earlier` (the largest resident set is the latest).
    pub fn since(&self, earlier: &Rusage) -> Rusage {
        Rusage {
            utime_us: self.utime_us.saturating_sub(earlier.utime_us),
            stime_us: self.stime_us.saturating_sub(earlier.stime_us),
            maxrss_kb: self.maxrss_kb,
            minflt: self.minflt.saturating_sub(earlier.minflt),
            majflt: self.majflt.saturating_sub(earlier.majflt),
            nvcsw: self.nvcsw.saturating_sub(earlier.nvcsw),
            nivcsw: self.nivcsw.saturating_sub(earlier.nivcsw),
        }
    }

    /// The usage of the calling process's reaped children.
    pub fn children() -> Rusage {
        use nix::sys::resource::{getrusage, UsageWho};
        let Ok(u) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
            return Rusage::default();
        };
        let us = |t: nix::sys::time::TimeVal| (t.tv_sec() as u64) * 1_000_000 + t.tv_usec() as u64;
        Rusage {
            utime_us: us(u.user_time()),
            stime_us: us(u.system_time()),
            maxrss_kb: u.max_rss() as u64,
            minflt: u.minor_page_faults() as u64,
            majflt: u.major_page_faults() as u64,
            nvcsw: u.voluntary_context_switches() as u64,
            nivcsw: u.involuntary_context_switches() as u64,
        }
    }
}

/// How a job unit ended: `exit_status` when its command exited, `signal` (with
/// its name) when a signal killed it; `limit` names the JSDL limit whose
/// watchdog killed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ending {
    pub exit_status: Option<i32>,
    pub signal: Option<i32>,
    pub signal_name: Option<String>,
    pub limit: Option<String>,
}

impl Ending {
    /// From a wait status of the unit's command.
    pub fn from_wait(ws: nix::sys::wait::WaitStatus, limit: Option<String>) -> Ending {
        use nix::sys::wait::WaitStatus;
        match ws {
            WaitStatus::Exited(_, c) => Ending {
                exit_status: Some(c),
                limit,
                ..Ending::default()
            },
            WaitStatus::Signaled(_, s, _) => Ending {
                signal: Some(s as i32),
                signal_name: Some(s.as_str().to_string()),
                limit,
                ..Ending::default()
            },
            _ => Ending {
                limit,
                ..Ending::default()
            },
        }
    }
}

/// What the loader reports when a job unit ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub job: Option<String>,
    /// The container id, for a unit in a container (null for a native unit).
    pub container: Option<u32>,
    /// The unit's id on the node (the container id for a container).
    pub unit: u32,
    #[serde(flatten)]
    pub ending: Ending,
    pub rusage: Rusage,
    /// When it ended (seconds since the epoch).
    pub ended: u64,
}

/// A notification address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

/// Why an address is refused or a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid notification address '{0}' (expected unix:PATH or tcp:HOST:PORT)")]
    BadAddress(String),
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: the listener did not acknowledge the report")]
    NoAck { addr: String },
}

impl std::str::FromStr for Address {
    type Err = NotifyError;
    fn from_str(s: &str) -> Result<Address, NotifyError> {
        let bad = || NotifyError::BadAddress(s.to_string());
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(bad());
            }
            return Ok(Address::Unix(PathBuf::from(p)));
        }
        if let Some(hp) = s.strip_prefix("tcp:") {
            let (host, port) = hp.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            return Ok(Address::Tcp(hp.to_string()));
        }
        Err(bad())
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(hp) => write!(f, "tcp:{hp}"),
        }
    }
}

trait Stream: std::io::Read + Write {}
impl<T: std::io::Read + Write> Stream for T {}

impl Address {
    fn io(&self) -> impl Fn(std::io::Error) -> NotifyError + '_ {
        move |source| NotifyError::Io {
            addr: self.to_string(),
            source,
        }
    }

    fn connect(&self) -> Result<Box<dyn Stream>, NotifyError> {
        let t = Some(ATTEMPT_TIMEOUT);
        Ok(match self {
            Address::Unix(p) => {
                let s = UnixStream::connect(p).map_err(self.io())?;
                s.set_read_timeout(t).map_err(self.io())?;
                s.set_write_timeout(t).map_err(self.io())?;
                Box::new(s)
            }
            Address::Tcp(hp) => {
                let addr = std::net::ToSocketAddrs::to_socket_addrs(hp)
                    .map_err(self.io())?
                    .next()
                    .ok_or_else(|| NotifyError::BadAddress(self.to_string()))?;
                let s = TcpStream::connect_timeout(&addr, ATTEMPT_TIMEOUT).map_err(self.io())?;
                s.set_read_timeout(t).map_err(self.io())?;
                s.set_write_timeout(t).map_err(self.io())?;
                Box::new(s)
            }
        })
    }

    /// Sends one report and waits for its acknowledgement.
    pub fn deliver(&self, report: &Report) -> Result<(), NotifyError> {
        let mut s = self.connect()?;
        let mut line = serde_json::to_vec(report).expect("serializable");
        line.push(b'\n');
        s.write_all(&line).map_err(self.io())?;
        s.flush().map_err(self.io())?;
        let mut ack = String::new();
        BufReader::new(s).read_line(&mut ack).map_err(self.io())?;
        if ack.trim() != "ok" {
            return Err(NotifyError::NoAck {
                addr: self.to_string(),
            });
        }
        Ok(())
    }

    /// Binds a listener (a stale Unix socket file is replaced).
    pub fn listen(&self) -> Result<Listener, NotifyError> {
        Ok(match self {
            Address::Unix(p) => {
                if UnixStream::connect(p).is_err() {
                    let _ = std::fs::remove_file(p);
                }
                Listener::Unix(UnixListener::bind(p).map_err(self.io())?)
            }
            Address::Tcp(hp) => Listener::Tcp(TcpListener::bind(hp).map_err(self.io())?),
        })
    }
}

/// The AEM side: receives reports.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Waits for the next report, acknowledges it and returns it as received
    /// (one JSON object). A connection that sends no valid report is dropped.
    pub fn next_report(&self) -> std::io::Result<Report> {
        loop {
            let mut s: Box<dyn Stream> = match self {
                Listener::Unix(l) => {
                    let (s, _) = l.accept()?;
                    s.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
                    Box::new(s)
                }
                Listener::Tcp(l) => {
                    let (s, _) = l.accept()?;
                    s.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
                    Box::new(s)
                }
            };
            let mut line = String::new();
            let mut r = BufReader::new(&mut s);
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let Ok(report) = serde_json::from_str::<Report>(line.trim()) else {
                log::warn!("a notification that is not a report was dropped");
                continue;
            };
            if s.write_all(b"ok\n").and_then(|()| s.flush()).is_err() {
                // Not acknowledged: the sender will send it again.
                continue;
            }
            return Ok(report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            "unix:/run/a.sock".parse::<Address>().unwrap(),
            Address::Unix("/run/a.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:99".parse::<Address>().unwrap().to_string(),
            "tcp:127.0.0.1:99"
        );
        for bad in ["unix:", "tcp:host", "tcp:h:x", "udp:1", "/x"] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }

    #[test]
    fn report_round_trip_over_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::Unix(dir.path().join("s"));
        let l = addr.listen().unwrap();
        let r = Report {
            job: Some("j".into()),
            container: Some(7),
            unit: 7,
            ending: Ending {
                exit_status: Some(3),
                ..Ending::default()
            },
            ..Report::default()
        };
        let t = std::thread::spawn(move || l.next_report().unwrap());
        addr.deliver(&r).unwrap();
        assert_eq!(t.join().unwrap(), r);
    }
}
