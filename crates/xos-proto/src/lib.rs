//! The protocol of `xos-amsd` (see xos-amsd(1), pam_xos(8), libnss_xos(8)).
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON, one
//! [`Request`] from the client, one [`Response`] from the daemon. A frame longer than
//! [`MAX_FRAME`] is refused by both sides without reading it. A connection may carry
//! several request/response pairs; the daemon closes it after [`IDLE_TIMEOUT`].
//!
//! This crate is used by the daemon and by the PAM and NSS modules, which are loaded
//! into foreign processes: it has no dependency beyond serde, starts no thread and
//! uses blocking sockets with timeouts.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest frame (request or response) either side accepts, in bytes.
pub const MAX_FRAME: usize = 1 << 20;
/// The daemon's socket when neither configuration nor environment name another.
pub const DEFAULT_SOCKET: &str = "/run/xos/amsd.sock";
/// The configuration file of the daemon and of every client.
pub const DEFAULT_CONFIG: &str = "/etc/xos/nss_pam/pam_xos.conf";

/// The `Socket` a configuration text sets (`Key value` lines, `#` comments, keys
/// in any case; the last one counts), if any.
pub fn socket_of(config: &str) -> Option<PathBuf> {
    config
        .lines()
        .filter_map(|l| {
            let l = l.split('#').next().unwrap_or("").trim();
            let (key, value) = l.split_once(char::is_whitespace)?;
            key.eq_ignore_ascii_case("socket")
                .then(|| PathBuf::from(value.trim()))
        })
        .next_back()
}

/// The daemon's socket as a client finds it: the `Socket` of configuration file
/// `config`, else [`DEFAULT_SOCKET`] (also when the file cannot be read: the
/// daemon then runs on its defaults too).
pub fn configured_socket(config: &Path) -> PathBuf {
    std::fs::read_to_string(config)
        .ok()
        .and_then(|t| socket_of(&t))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}
/// How long the daemon keeps an idle connection open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A passwd entry as NSS returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub dir: String,
    pub shell: String,
}

/// A group entry as NSS returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

impl Passwd {
    /// The entry as a passwd(5) line (no newline), as in the daemon's cache file.
    pub fn to_line(&self) -> String {
        format!(
            "{}:x:{}:{}:{}:{}:{}",
            self.name, self.uid, self.gid, self.gecos, self.dir, self.shell
        )
    }

    /// A passwd(5) line; None unless it has seven fields and numeric ids.
    pub fn from_line(line: &str) -> Option<Passwd> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 {
            return None;
        }
        Some(Passwd {
            name: f[0].into(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            gecos: f[4].into(),
            dir: f[5].into(),
            shell: f[6].into(),
        })
    }
}

impl Group {
    /// The entry as a group(5) line (no newline), as in the daemon's cache file.
    pub fn to_line(&self) -> String {
        format!("{}:x:{}:{}", self.name, self.gid, self.members.join(","))
    }

    /// A group(5) line; None unless it has four fields and a numeric gid.
    pub fn from_line(line: &str) -> Option<Group> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 {
            return None;
        }
        Some(Group {
            name: f[0].into(),
            gid: f[2].parse().ok()?,
            members: f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// The local account a grid user was mapped to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub passwd: Passwd,
    /// Every group id of the account, primary first.
    pub gids: Vec<u32>,
    pub vo: String,
    pub global_id: String,
    pub role: String,
    /// `pool` (a leased account) or `static` (a rule naming a local account).
    pub kind: String,
}

/// What a session got: the job's cgroup and the private /tmp the job must get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The cgroup, relative to the hierarchies' roots (`xos/aem_jobid_123`), if any.
    pub cgroup: Option<String>,
    /// A private /tmp (tmpfs) limited to this many 1 KiB blocks, if the `disk`
    /// subsystem is configured.
    pub tmp_blocks: Option<u64>,
    /// ... and to this many files and directories.
    pub tmp_inodes: Option<u64>,
}

/// One lease of a pool account, as the admin interface shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub name: String,
    pub uid: u32,
    pub vo: String,
    pub global_id: String,
    pub subject: String,
    /// Last use, seconds since the epoch.
    pub last_used: u64,
    /// When it expires unless used again, seconds since the epoch.
    pub expires: u64,
}

/// A request to the daemon. NSS requests are open to every user; the others need
/// the peer to be root (checked with SO_PEERCRED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    GetPwNam(String),
    GetPwUid(u32),
    GetGrNam(String),
    GetGrGid(u32),
    ListPasswd,
    ListGroups,
    /// Supplementary group ids of a user (for initgroups).
    GroupsOf(String),
    /// Validate an XOS-cert (PEM) and map its holder to a local account.
    Map {
        cert_pem: String,
    },
    /// Check the account policy for a mapped user (PAM `account`).
    CheckAccount {
        user: String,
    },
    /// Create the job's session (cgroup) for `pid`, a process of `user`.
    OpenSession {
        user: String,
        job_id: String,
        pid: i32,
    },
    /// End the session: kill what is left in it and remove the cgroup. `keep_pid`
    /// (the caller itself) is moved out first rather than killed.
    CloseSession {
        job_id: String,
        keep_pid: Option<i32>,
    },
    ListLeases,
    ShowLease(String),
    Release(String),
    Ban(String),
    Unban(String),
    ListBans,
    Reload,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Ok,
    Passwd(Option<Passwd>),
    Group(Option<Group>),
    Passwds(Vec<Passwd>),
    Groups(Vec<Group>),
    Gids(Vec<u32>),
    Mapped(Account),
    Session(Session),
    Leases(Vec<Lease>),
    Lease(Option<Lease>),
    Bans(Vec<String>),
    /// Policy or verification said no; the reason is for the log and the user.
    Refused(String),
    /// The request could not be served (malformed, not allowed, internal error).
    Error(String),
}

/// Errors of the client side.
#[derive(Debug)]
pub enum ClientError {
    /// The daemon is not there (no socket, refused, timed out): NSS says UNAVAIL.
    Unavailable { socket: PathBuf, source: io::Error },
    /// The daemon answered something that is not a response.
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unavailable { socket, source } => write!(
                f,
                "xos-amsd is not available on {}: {source}",
                socket.display()
            ),
            ClientError::Protocol(m) => write!(f, "bad answer from xos-amsd: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {MAX_FRAME}", body.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)
}

/// Reads one frame; `Ok(None)` at a clean end of stream before a frame starts.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// A blocking connection to the daemon with a timeout on every operation.
pub struct Client {
    stream: UnixStream,
    socket: PathBuf,
}

impl Client {
    /// Connects to `socket` with `timeout` for connecting, sending and receiving.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Client, ClientError> {
        // std has no connect timeout for Unix sockets; connecting to a local socket
        // does not block unless the backlog is full, and reads/writes are bounded.
        let unavailable = |source| ClientError::Unavailable {
            socket: socket.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(unavailable)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(unavailable)?;
        Ok(Client {
            stream,
            socket: socket.to_path_buf(),
        })
    }

    fn unavailable(&self, source: io::Error) -> ClientError {
        ClientError::Unavailable {
            socket: self.socket.clone(),
            source,
        }
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        write_frame(&mut self.stream, &body).map_err(|e| self.unavailable(e))?;
        match read_frame(&mut self.stream) {
            Ok(Some(b)) => {
                serde_json::from_slice(&b).map_err(|e| ClientError::Protocol(e.to_string()))
            }
            Ok(None) => Err(self.unavailable(io::ErrorKind::UnexpectedEof.into())),
            Err(e) => Err(self.unavailable(e)),
        }
    }
}

/// Connects, sends one request and returns the response.
pub fn call(socket: &Path, timeout: Duration, req: &Request) -> Result<Response, ClientError> {
    Client::connect(socket, timeout)?.call(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_from_configuration() {
        let text = "# Socket /not/this\nsocket   /run/a.sock  # comment\nStateDir /x\nSOCKET /run/b.sock\n";
        assert_eq!(socket_of(text), Some(PathBuf::from("/run/b.sock")));
        assert_eq!(socket_of("#Socket /run/a.sock\nSockets /x\n"), None);
        assert_eq!(
            configured_socket(Path::new("/nonexistent/pam_xos.conf")),
            PathBuf::from(DEFAULT_SOCKET)
        );
        let err = Client::connect(Path::new("/nonexistent/amsd.sock"), Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/amsd.sock"), "{err}");
    }

    #[test]
    fn frames_round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{}").unwrap();
        write_frame(&mut buf, b"[1]").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"{}");
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"[1]");
        assert!(read_frame(&mut r).unwrap().is_none());
        let big = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(read_frame(&mut &big[..]).is_err());
        assert!(
            read_frame(&mut &[0u8, 0, 0, 5, 1][..]).is_err(),
            "truncated"
        );
        assert!(write_frame(&mut Vec::new(), &vec![0; MAX_FRAME + 1]).is_err());
    }

    #[test]
    fn passwd_and_group_lines_round_trip() {
        let p = Passwd {
            name: "/CN=a@vo".into(),
            uid: 7,
            gid: 8,
            gecos: "/O=vo/CN=a".into(),
            dir: "/tmp".into(),
            shell: "/bin/sh".into(),
        };
        assert_eq!(p.to_line(), "/CN=a@vo:x:7:8:/O=vo/CN=a:/tmp:/bin/sh");
        assert_eq!(Passwd::from_line(&p.to_line()), Some(p));
        assert_eq!(Passwd::from_line("a:x:notanumber:8:g:/:/bin/sh"), None);
        let g = Group {
            name: "vo.cms".into(),
            gid: 9,
            members: vec!["a".into(), "b".into()],
        };
        assert_eq!(g.to_line(), "vo.cms:x:9:a,b");
        assert_eq!(Group::from_line(&g.to_line()), Some(g));
        assert_eq!(Group::from_line("g:x:1:").unwrap().members.len(), 0);
        assert_eq!(Group::from_line("g:x:1"), None);
    }

    #[test]
    fn requests_serialize() {
        let r = Request::GetPwUid(5000);
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"GetPwUid":5000}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }
}
