//! Job units that join the container of their job (seed §4: all the units of
//! one job on one node share one container, which ends with its last unit).
//!
//! The container's loader (its init) listens on `DIR/ctl.sock`, bound before
//! it enters the container's root. A unit that joins sends its start request
//! (JSON) with its three standard streams (SCM_RIGHTS); the loader forks the
//! job (so its parent is inside the container, never a process outside),
//! records it as `members/PID` (its pid in the container, the unit id
//! inside), and, when it reaps it, writes `members/UNIT.ended.json`. The
//! container's supervisor, outside, reports those ends ([`deliver_ended`]).
//!
//! Interfaces: unix(7) SCM_RIGHTS, fcntl(2) O_ASYNC (SIGIO), openat(2).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::stat::Mode;
use nix::sys::wait::WaitStatus;
use nix::unistd::ForkResult;
use serde::{Deserialize, Serialize};

use super::notify::{Ending, Rusage};
use super::{ContainerError, Creds, UnitSetup};
use crate::jsdl::Rlimit;

/// The loader's control socket, in the container's directory.
pub const CONTROL: &str = "ctl.sock";
/// The directory of the joined units' pids and ends, in the container's.
pub const MEMBERS: &str = "members";
const ENDED: &str = ".ended.json";
const REQUEST_MAX: usize = 1 << 20;

/// What a joining unit asks the loader to start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberStart {
    pub unit: u32,
    pub argv: Vec<String>,
    pub creds: Option<Creds>,
    pub rlimits: Vec<(Rlimit, u64)>,
    pub env: Option<BTreeMap<String, String>>,
    pub cwd: Option<PathBuf>,
}

/// How a joined unit ended, as the loader writes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberEnd {
    pub ending: Ending,
    pub rusage: Rusage,
    pub ended: u64,
}

/// Asks the loader of the container whose directory is `dir` to start
/// `req` with these streams; returns the job's pid in the container.
pub fn join(
    dir: &Path,
    req: &MemberStart,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<i32, ContainerError> {
    let ctl = dir.join(CONTROL);
    let io = |e: std::io::Error| {
        ContainerError::Io(crate::fsutil::PathError::new("connect to", &ctl, e))
    };
    let s = UnixStream::connect(&ctl).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let body = serde_json::to_vec(req).expect("serializable");
    let fds = stdio.map(|f| f.as_raw_fd());
    let iov = [std::io::IoSlice::new(&body)];
    nix::sys::socket::sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| io(e.into()))?;
    s.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(io)?;
    match reply
        .trim()
        .strip_prefix("ok ")
        .and_then(|p| p.parse().ok())
    {
        Some(pid) => Ok(pid),
        None => Err(ContainerError::Invalid(format!(
            "container {}: {}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            reply
                .trim()
                .strip_prefix("err ")
                .unwrap_or("the loader did not answer")
        ))),
    }
}

/// The loader's side: the control socket and the joined units.
#[derive(Debug)]
pub struct Control {
    listener: UnixListener,
    members: File,
    /// pid in the container -> unit id.
    pids: HashMap<i32, u32>,
    /// Usage of every process reaped so far (to tell each one's).
    reaped: Rusage,
}

fn text<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Control {
    /// Binds the control socket in `dir` (host path) and reads the joined
    /// units already recorded (a restart).
    pub fn open(dir: &Path) -> Result<Control, String> {
        let mdir = dir.join(MEMBERS);
        std::fs::create_dir_all(&mdir).map_err(text("cannot create the members directory"))?;
        let members = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&mdir)
            .map_err(text("cannot open the members directory"))?;
        let mut pids = HashMap::new();
        for pid in crate::fsutil::numbered_entries::<i32>(&mdir) {
            if let Ok(u) = std::fs::read_to_string(mdir.join(pid.to_string())) {
                if let Ok(u) = u.trim().parse() {
                    pids.insert(pid, u);
                }
            }
        }
        let ctl = dir.join(CONTROL);
        let _ = std::fs::remove_file(&ctl);
        let listener = UnixListener::bind(&ctl).map_err(text("cannot bind the control socket"))?;
        super::sys::signal_on_input(&listener).map_err(text("cannot watch the control socket"))?;
        Ok(Control {
            listener,
            members,
            pids,
            reaped: Rusage::children(),
        })
    }

    /// Starts every unit waiting on the control socket (on SIGIO).
    pub fn accept(&mut self, old_mask: &SigSet) {
        while let Ok((s, _)) = self.listener.accept() {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let reply = match self.start(&s, old_mask) {
                Ok(pid) => format!("ok {pid}\n"),
                Err(m) => format!("err {}\n", m.replace('\n', " ")),
            };
            let _ = (&s).write_all(reply.as_bytes());
        }
    }

    fn start(&mut self, s: &UnixStream, old_mask: &SigSet) -> Result<i32, String> {
        let (req, fds) = receive(s)?;
        let setup = UnitSetup {
            creds: req.creds.clone(),
            rlimits: req.rlimits.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            ..UnitSetup::default()
        };
        let argv: Vec<CString> = req
            .argv
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(text("invalid argument")))
            .collect::<Result<_, _>>()?;
        if argv.is_empty() {
            return Err("no command given".into());
        }
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(text("pipe"))?;
        match crate::sys::fork().map_err(text("fork"))? {
            ForkResult::Child => {
                drop(rd);
                let mut wr = File::from(wr);
                let r = (|| -> Result<(), String> {
                    nix::unistd::setsid().map_err(text("setsid"))?;
                    for (fd, to) in fds.iter().zip(0..) {
                        crate::sys::dup2_raw(fd.as_raw_fd(), to).map_err(text("redirect"))?;
                    }
                    crate::process::caller_dispositions();
                    let _ = nix::sys::signal::sigprocmask(
                        SigmaskHow::SIG_SETMASK,
                        Some(old_mask),
                        None,
                    );
                    super::inside::prepare_job(&setup)?;
                    let e = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
                    Err(format!("cannot execute '{}': {}", req.argv[0], e.desc()))
                })();
                if let Err(m) = r {
                    let _ = wr.write_all(m.as_bytes());
                }
                crate::sys::exit_child(127);
            }
            ForkResult::Parent { child } => {
                drop(wr);
                drop(fds);
                let pid = child.as_raw();
                // Recorded before this (single-threaded) init can reap it.
                self.pids.insert(pid, req.unit);
                self.write(&pid.to_string(), req.unit.to_string().as_bytes());
                let mut msg = String::new();
                let _ = File::from(rd).read_to_string(&mut msg);
                if msg.is_empty() {
                    Ok(pid)
                } else {
                    Err(msg)
                }
            }
        }
    }

    /// Writes `name` in the members directory (a temporary name, renamed).
    fn write(&self, name: &str, body: &[u8]) {
        use nix::fcntl::OFlag;
        let tmp = format!(".{name}.tmp");
        let Ok(fd) = nix::fcntl::openat(
            self.members.as_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) else {
            return;
        };
        let mut f = File::from(fd);
        if f.write_all(body).and_then(|()| f.sync_all()).is_ok() {
            let _ = nix::fcntl::renameat(
                self.members.as_fd(),
                tmp.as_str(),
                self.members.as_fd(),
                name,
            );
        }
    }

    /// Called for every process the loader reaps: a joined unit's end is
    /// written for the supervisor.
    pub fn reaped(&mut self, ws: WaitStatus) {
        let now = Rusage::children();
        let used = now.since(&self.reaped);
        self.reaped = now;
        let Some(pid) = ws.pid().map(|p| p.as_raw()) else {
            return;
        };
        if let Some(unit) = self.pids.remove(&pid) {
            let end = MemberEnd {
                ending: Ending::from_wait(ws, None),
                rusage: used,
                ended: crate::registry::now(),
            };
            let body = serde_json::to_vec(&end).expect("serializable");
            self.write(&format!("{unit}{ENDED}"), &body);
            let _ = nix::unistd::unlinkat(
                self.members.as_fd(),
                pid.to_string().as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Receives a start request and its three descriptors.
fn receive(s: &UnixStream) -> Result<(MemberStart, Vec<OwnedFd>), String> {
    let mut buf = vec![0u8; REQUEST_MAX];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 3]);
    let mut fds = Vec::new();
    let n = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(text("cannot receive the request"))?;
        for c in msg.cmsgs().map_err(text("bad request"))? {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(
                    v.into_iter()
                        .map(crate::sys::file_from_raw)
                        .map(OwnedFd::from),
                );
            }
        }
        msg.bytes
    };
    if fds.len() != 3 {
        return Err("the request must carry stdin, stdout and stderr".into());
    }
    let mut body = buf[..n].to_vec();
    // The rest of a long request (the sender shuts its side down after it).
    Read::take(s, REQUEST_MAX as u64)
        .read_to_end(&mut body)
        .map_err(text("cannot receive the request"))?;
    let req = serde_json::from_slice(&body).map_err(text("bad request"))?;
    Ok((req, fds))
}

/// The ends of joined units written so far in container directory `dir`:
/// (unit id, end).
pub fn ended(dir: &Path) -> Vec<(u32, MemberEnd)> {
    let mdir = dir.join(MEMBERS);
    let Ok(rd) = std::fs::read_dir(&mdir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let unit = name.strip_suffix(ENDED)?.parse().ok()?;
            let end = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((unit, end))
        })
        .collect()
}

/// Forgets the end of joined unit `unit` (reported).
pub fn forget(dir: &Path, unit: u32) {
    let _ = std::fs::remove_file(dir.join(MEMBERS).join(format!("{unit}{ENDED}")));
}

/// The joined units running in container directory `dir`: (pid in the
/// container, unit id).
pub fn running(dir: &Path) -> Vec<(i32, u32)> {
    let mdir = dir.join(MEMBERS);
    crate::fsutil::numbered_entries::<i32>(&mdir)
        .into_iter()
        .filter_map(|pid| {
            let u = std::fs::read_to_string(mdir.join(pid.to_string())).ok()?;
            Some((pid, u.trim().parse().ok()?))
        })
        .collect()
}

/// The pid that process `pid` (of the host) has in its own PID namespace.
pub fn inner_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Records joined unit `unit` as pid `pid` of container directory `dir`
/// (before its loader starts: a restart).
pub fn record(dir: &Path, pid: i32, unit: u32) -> Result<(), crate::fsutil::PathError> {
    let mdir = dir.join(MEMBERS);
    crate::fsutil::create_dir_all(&mdir, 0o700)?;
    crate::fsutil::write_atomic(
        &mdir.join(pid.to_string()),
        unit.to_string().as_bytes(),
        0o600,
    )
}
