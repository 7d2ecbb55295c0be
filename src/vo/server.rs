//! The Account Mapping Service: request handling ([`Service::handle`]) and the
//! socket loop ([`serve`]) of xos-amsd.
//!
//! Every connection's peer is identified with SO_PEERCRED (socket(7)); NSS reads
//! are open to all, everything else needs uid 0. Frames are bounded by
//! [`proto::MAX_FRAME`]; a malformed request gets an `Error` reply, a frame that
//! is too long closes the connection, and a panic while handling a request is
//! caught and answered with an error, so no request can stop the daemon.
//! The daemon never asks NSS (it is a static binary): local accounts for static
//! rules are read from /etc/passwd and /etc/group directly.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use xos_proto::{self as proto, Account, Group, Lease, Passwd, Request, Response, Session};

use super::cert;
use super::config::{expand, Config, ConfigError};
use super::lease::{GroupMeta, LeaseError, LeaseMeta, LeaseStore};
use super::policy::{self, Subject};
use super::session;
use crate::fsutil::{self, PathError};

/// Most connections served at the same time; more are answered "busy".
pub const MAX_CONNECTIONS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("socket {}: another xos-amsd is already listening", .0.display())]
    Running(PathBuf),
}

/// The NSS view of the lease store, rebuilt when the store's directories change.
struct Index {
    generation: (i128, i128),
    /// Rebuilt too close to a change for the coarse directory mtime to show a
    /// later change: rebuild on next use.
    unsure: bool,
    users: Vec<LeaseMeta>,
    groups: Vec<GroupMeta>,
}

struct State {
    cfg: Config,
    store: LeaseStore,
}

/// The daemon's state; shared by the connection threads.
pub struct Service {
    config_path: Option<PathBuf>,
    state: RwLock<State>,
    index: Mutex<Option<Index>>,
    /// Open sessions: job id -> uid, so their leases do not expire.
    sessions: Mutex<HashMap<String, u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bans_path(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("banned")
}

fn read_bans(cfg: &Config) -> Vec<String> {
    std::fs::read_to_string(bans_path(cfg))
        .map(|s| {
            s.lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

impl Service {
    /// Builds the service from `cfg` (read from `config_path`, for reloads).
    pub fn new(cfg: Config, config_path: Option<PathBuf>) -> Result<Service, ServerError> {
        cert::init();
        fsutil::create_dir_all(&cfg.state_dir, 0o755)?;
        let store = LeaseStore::open(&cfg.state_dir, &cfg.pools)?;
        Ok(Service {
            config_path,
            state: RwLock::new(State { cfg, store }),
            index: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> Config {
        self.read().cfg.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the configuration file and re-opens the store. The socket and the
    /// state directory stay as they are (changing them needs a restart).
    pub fn reload(&self) -> Result<(), ServerError> {
        let Some(p) = &self.config_path else {
            return Ok(());
        };
        let mut cfg = Config::load(p, true)?;
        {
            let cur = self.read();
            cfg.socket = cur.cfg.socket.clone();
            cfg.state_dir = cur.cfg.state_dir.clone();
        }
        let store = LeaseStore::open(&cfg.state_dir, &cfg.pools)?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = State { cfg, store };
        self.invalidate();
        Ok(())
    }

    fn passwd(cfg: &Config, m: &LeaseMeta) -> Passwd {
        let uid = m.uid.to_string();
        Passwd {
            name: m.name.clone(),
            uid: m.uid,
            gid: m.gids.first().copied().unwrap_or(m.uid),
            gecos: m.subject.clone(),
            dir: expand(&cfg.home, &[('u', &uid), ('v', &m.vo)]),
            shell: cfg.shell.clone(),
        }
    }

    /// Runs `f` on an up-to-date index.
    fn with_index<R>(&self, f: impl FnOnce(&Config, &Index) -> R) -> R {
        let st = self.read();
        let mut idx = lock(&self.index);
        let generation = st.store.generation();
        let fresh = matches!(&*idx, Some(i) if i.generation == generation && !i.unsure);
        if !fresh {
            let (users, groups) = st.store.scan().unwrap_or_else(|e| {
                log::warn!("{e}");
                (Vec::new(), Vec::new())
            });
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            let newest = generation.0.max(generation.1);
            let i = Index {
                generation,
                unsure: now_ns - newest < 100_000_000,
                users: users.into_iter().map(|f| f.meta).collect(),
                groups,
            };
            write_cache(&st.cfg, &i);
            *idx = Some(i);
        }
        f(&st.cfg, idx.as_ref().expect("built above"))
    }

    fn group_entry(idx: &Index, g: &GroupMeta) -> Group {
        Group {
            name: g.name.clone(),
            gid: g.gid,
            members: idx
                .users
                .iter()
                .filter(|u| u.gids.contains(&g.gid))
                .map(|u| u.name.clone())
                .collect(),
        }
    }

    /// Answers one request from a peer with `uid`.
    pub fn handle(&self, req: Request, uid: u32) -> Response {
        let root_only = !matches!(
            req,
            Request::Ping
                | Request::GetPwNam(_)
                | Request::GetPwUid(_)
                | Request::GetGrNam(_)
                | Request::GetGrGid(_)
                | Request::ListPasswd
                | Request::ListGroups
                | Request::GroupsOf(_)
        );
        if root_only && uid != 0 {
            return Response::Error(format!("permission denied: uid {uid} is not root"));
        }
        match req {
            Request::Ping => Response::Pong,
            Request::GetPwNam(n) => self.with_index(|c, i| {
                Response::Passwd(
                    i.users
                        .iter()
                        .find(|u| u.name == n)
                        .map(|u| Self::passwd(c, u)),
                )
            }),
            Request::GetPwUid(id) => self.with_index(|c, i| {
                Response::Passwd(
                    i.users
                        .iter()
                        .find(|u| u.uid == id)
                        .map(|u| Self::passwd(c, u)),
                )
            }),
            Request::GetGrNam(n) => self.with_index(|_, i| {
                Response::Group(
                    i.groups
                        .iter()
                        .find(|g| g.name == n)
                        .map(|g| Self::group_entry(i, g)),
                )
            }),
            Request::GetGrGid(id) => self.with_index(|_, i| {
                Response::Group(
                    i.groups
                        .iter()
                        .find(|g| g.gid == id)
                        .map(|g| Self::group_entry(i, g)),
                )
            }),
            Request::ListPasswd => self.with_index(|c, i| {
                Response::Passwds(i.users.iter().map(|u| Self::passwd(c, u)).collect())
            }),
            Request::ListGroups => self.with_index(|_, i| {
                Response::Groups(i.groups.iter().map(|g| Self::group_entry(i, g)).collect())
            }),
            Request::GroupsOf(n) => self.with_index(|_, i| {
                Response::Gids(
                    i.users
                        .iter()
                        .find(|u| u.name == n)
                        .map(|u| u.gids.clone())
                        .unwrap_or_default(),
                )
            }),
            Request::Map { cert_pem } => self.map(&cert_pem),
            Request::CheckAccount { user } => self.check_account(&user),
            Request::OpenSession { user, job_id, pid } => self.open_session(&user, &job_id, pid),
            Request::CloseSession { job_id, keep_pid } => {
                let cfg = self.config();
                lock(&self.sessions).remove(&job_id);
                match session::close_cgroup(&cfg, &job_id, keep_pid) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::ListLeases => self.leases(None),
            Request::ShowLease(x) => match self.leases(Some(&x)) {
                Response::Leases(mut l) => Response::Lease(l.pop()),
                r => r,
            },
            Request::Release(x) => self.release(&x),
            Request::Ban(x) => self.set_ban(&x, true),
            Request::Unban(x) => self.set_ban(&x, false),
            Request::ListBans => {
                let cfg = self.config();
                let mut b = cfg.ban.clone();
                b.extend(read_bans(&cfg));
                Response::Bans(b)
            }
            Request::Reload => match self.reload() {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error(e.to_string()),
            },
        }
    }

    fn map(&self, pem: &str) -> Response {
        let st = self.read();
        let cfg = &st.cfg;
        let v = match cert::verify(&cfg.ca_path, pem.as_bytes(), "presented certificate") {
            Ok(v) => v,
            Err(e) => return Response::Refused(e.to_string()),
        };
        let a = &v.attrs;
        let who = Subject {
            subject: &v.subject,
            global_id: &a.global_id,
            vo: &a.vo,
            role: &a.role,
        };
        if let Err(why) = policy::check(cfg, &read_bans(cfg), who) {
            return Response::Refused(why);
        }
        if let Some(rule) = cfg
            .statics
            .iter()
            .find(|r| r.vo == a.vo && r.global_id == a.global_id)
        {
            return match local_account(
                Path::new("/etc/passwd"),
                Path::new("/etc/group"),
                &rule.user,
            ) {
                Some((passwd, gids)) => Response::Mapped(Account {
                    passwd,
                    gids,
                    vo: a.vo.clone(),
                    global_id: a.global_id.clone(),
                    role: a.role.clone(),
                    kind: "static".into(),
                }),
                None => Response::Error(format!(
                    "StaticMap {} {}: local user {} is not in /etc/passwd",
                    rule.vo, rule.global_id, rule.user
                )),
            };
        }
        let Some(pool) = cfg.pool(&a.vo) else {
            return Response::Refused(format!("VO {} has no account pool on this node", a.vo));
        };
        let mut gids = Vec::new();
        for g in std::iter::once(&a.group).chain(a.groups.iter()) {
            let key = format!("{}:{g}", a.vo);
            match st.store.lease_group(pool, &key) {
                Ok((gid, new)) => {
                    if new {
                        let name = expand(&cfg.group_name, &[('v', &a.vo), ('n', g)]);
                        let m = GroupMeta { key, gid, name };
                        if let Err(e) = st.store.write_group(&m) {
                            return Response::Error(e.to_string());
                        }
                    }
                    if !gids.contains(&gid) {
                        gids.push(gid);
                    }
                }
                Err(e) => return Response::Refused(e.to_string()),
            }
        }
        let key = format!("{}:{}", a.vo, a.global_id);
        let (uid, new) = match st.store.lease_user(pool, &key, cfg.max_leases_per_vo) {
            Ok(r) => r,
            Err(e) => return Response::Refused(e.to_string()),
        };
        let uid_s = uid.to_string();
        let meta = LeaseMeta {
            key,
            uid,
            name: expand(
                &cfg.user_name,
                &[('g', &a.global_id), ('v', &a.vo), ('u', &uid_s)],
            ),
            vo: a.vo.clone(),
            global_id: a.global_id.clone(),
            subject: v.subject.clone(),
            role: a.role.clone(),
            gids,
        };
        let known = self.with_index_locked(&st, |i| i.users.contains(&meta));
        if new || !known {
            if let Err(e) = st.store.write_user(&meta) {
                return Response::Error(e.to_string());
            }
        }
        log::info!(
            "mapped {} ({}) to {} uid {uid}{}",
            v.subject,
            a.global_id,
            meta.name,
            if new { " (new lease)" } else { "" }
        );
        Response::Mapped(Account {
            passwd: Self::passwd(cfg, &meta),
            gids: meta.gids.clone(),
            vo: meta.vo,
            global_id: meta.global_id,
            role: meta.role,
            kind: "pool".into(),
        })
    }

    /// Brings the index and the NSS cache files up to date with the store (which
    /// other daemons may change too).
    pub fn refresh(&self) {
        self.with_index(|_, _| ());
    }

    /// Forgets the index, so the next use rebuilds it and rewrites the cache.
    fn invalidate(&self) {
        *lock(&self.index) = None;
    }

    /// `with_index` for a caller that already holds the state lock.
    fn with_index_locked<R>(&self, st: &State, f: impl FnOnce(&Index) -> R) -> R {
        let mut idx = lock(&self.index);
        let generation = st.store.generation();
        let fresh = matches!(&*idx, Some(i) if i.generation == generation && !i.unsure);
        if !fresh {
            let (users, groups) = st.store.scan().unwrap_or_default();
            *idx = Some(Index {
                generation,
                unsure: true,
                users: users.into_iter().map(|f| f.meta).collect(),
                groups,
            });
        }
        f(idx.as_ref().expect("built above"))
    }

    fn find_user(&self, user: &str) -> Option<LeaseMeta> {
        self.with_index(|_, i| {
            i.users
                .iter()
                .find(|u| u.name == user || u.uid.to_string() == user || u.global_id == user)
                .cloned()
        })
    }

    fn check_account(&self, user: &str) -> Response {
        let Some(m) = self.find_user(user) else {
            return Response::Refused(format!("{user} is not a mapped VO user"));
        };
        let st = self.read();
        let who = Subject {
            subject: &m.subject,
            global_id: &m.global_id,
            vo: &m.vo,
            role: &m.role,
        };
        match policy::check(&st.cfg, &read_bans(&st.cfg), who) {
            Ok(()) => {
                let _ = st.store.touch(&m.key);
                Response::Ok
            }
            Err(why) => Response::Refused(why),
        }
    }

    fn open_session(&self, user: &str, job_id: &str, pid: i32) -> Response {
        let m = self.find_user(user);
        let cfg = self.config();
        let uid = match &m {
            Some(m) => {
                let _ = self.read().store.touch(&m.key);
                m.uid
            }
            // A statically mapped (local) user has no lease to keep alive.
            None => match passwd_by_name(Path::new("/etc/passwd"), user) {
                Some(p) => p.uid,
                None => return Response::Refused(format!("{user} is not a mapped VO user")),
            },
        };
        match session::open_cgroup(&cfg, job_id, pid) {
            Ok(cgroup) => {
                lock(&self.sessions).insert(job_id.to_string(), uid);
                let disk = cfg.private_tmp();
                Response::Session(Session {
                    cgroup,
                    tmp_blocks: cfg.disk_blocks.filter(|_| disk),
                    tmp_inodes: cfg.disk_inodes.filter(|_| disk),
                })
            }
            Err(e) => Response::Error(e.to_string()),
        }
    }

    fn leases(&self, which: Option<&str>) -> Response {
        let st = self.read();
        let idle = st.cfg.lease_idle;
        match st.store.scan() {
            Ok((users, _)) => Response::Leases(
                users
                    .into_iter()
                    .filter(|f| {
                        which.is_none_or(|w| {
                            f.meta.name == w
                                || f.meta.uid.to_string() == w
                                || f.meta.global_id == w
                                || f.meta.subject == w
                        })
                    })
                    .map(|f| Lease {
                        name: f.meta.name,
                        uid: f.meta.uid,
                        vo: f.meta.vo,
                        global_id: f.meta.global_id,
                        subject: f.meta.subject,
                        last_used: f.last_used,
                        expires: f.last_used + idle,
                    })
                    .collect(),
            ),
            Err(e) => Response::Error(e.to_string()),
        }
    }

    fn release(&self, which: &str) -> Response {
        let Response::Leases(l) = self.leases(Some(which)) else {
            return Response::Error(format!("cannot list leases to release {which}"));
        };
        if l.is_empty() {
            return Response::Error(format!("no lease matches {which}"));
        }
        let st = self.read();
        for x in l {
            if let Err(e) = st.store.release(&format!("{}:{}", x.vo, x.global_id)) {
                return Response::Error(e.to_string());
            }
            log::info!("released {} uid {}", x.name, x.uid);
        }
        drop(st);
        self.invalidate();
        self.refresh();
        Response::Ok
    }

    fn set_ban(&self, who: &str, ban: bool) -> Response {
        let cfg = self.config();
        let mut bans = read_bans(&cfg);
        bans.retain(|b| b != who);
        if ban {
            bans.push(who.to_string());
        }
        let mut text = bans.join("\n");
        text.push('\n');
        match fsutil::write_atomic(&bans_path(&cfg), text.as_bytes(), 0o644) {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error(e.to_string()),
        }
    }

    /// Releases leases idle for longer than `LeaseIdle`, unless a session of this
    /// daemon or a process of the account still uses them. Returns how many.
    pub fn expire(&self) -> usize {
        let st = self.read();
        let busy: Vec<u32> = lock(&self.sessions).values().copied().collect();
        let expired = match st.store.expired(st.cfg.lease_idle) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("{e}");
                return 0;
            }
        };
        let mut n = 0;
        let mut released = false;
        for (key, uid) in expired {
            if busy.contains(&uid) || uid_has_processes(uid) {
                continue;
            }
            match st.store.release(&key) {
                Ok(true) => {
                    log::info!("lease of {key} (uid {uid}) expired");
                    n += 1;
                    released = true;
                }
                Ok(false) => {}
                Err(e) => log::warn!("{e}"),
            }
        }
        drop(st);
        if released {
            self.invalidate();
            self.refresh();
        }
        n
    }
}

/// Whether any process runs with real or effective uid `uid` (the owner of /proc/PID).
fn uid_has_processes(uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
            && e.metadata().map(|m| m.uid() == uid).unwrap_or(false)
    })
}

fn passwd_by_name(path: &Path, name: &str) -> Option<Passwd> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(Passwd::from_line)
        .find(|p| p.name == name)
}

/// A local account from passwd/group files (never through NSS).
pub fn local_account(passwd: &Path, group: &Path, name: &str) -> Option<(Passwd, Vec<u32>)> {
    let p = passwd_by_name(passwd, name)?;
    let mut gids = vec![p.gid];
    if let Ok(text) = std::fs::read_to_string(group) {
        for g in text.lines().filter_map(Group::from_line) {
            if g.members.iter().any(|m| m == name) && !gids.contains(&g.gid) {
                gids.push(g.gid);
            }
        }
    }
    Some((p, gids))
}

/// Creates the listening socket: its directory (0755), no live daemon on it, a
/// stale file removed, bound under a tight umask, then opened to everyone (NSS
/// clients run as any user; the peer check guards what needs root).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        fsutil::create_dir_all(dir, 0o755)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ServerError::Running(path.to_path_buf()));
    }
    let _ = std::fs::remove_file(path);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l.map_err(|e| PathError::new("bind", path, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| PathError::new("chmod", path, e))?;
    Ok(l)
}

fn reply(stream: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let body = serde_json::to_vec(r).expect("serializable");
    proto::write_frame(stream, &body)?;
    stream.flush()
}

fn serve_connection(svc: &Service, mut stream: UnixStream) {
    let uid = match super::sys::peer_cred(stream.as_fd()) {
        Ok((uid, _pid)) => uid,
        Err(e) => {
            log::warn!("SO_PEERCRED: {e}");
            return;
        }
    };
    let _ = stream.set_read_timeout(Some(proto::IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(proto::IDLE_TIMEOUT));
    loop {
        let body = match proto::read_frame(&mut stream) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                // Oversized or truncated: the stream cannot be resynchronised.
                log::debug!("uid {uid}: bad frame: {e}");
                let _ = reply(&mut stream, &Response::Error(format!("bad frame: {e}")));
                return;
            }
        };
        let resp = match serde_json::from_slice::<Request>(&body) {
            Ok(req) => {
                let t = Instant::now();
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.handle(req, uid)))
                        .unwrap_or_else(|_| {
                            Response::Error("internal error (see the daemon's log)".into())
                        });
                log::trace!("uid {uid}: answered in {:?}", t.elapsed());
                r
            }
            Err(e) => Response::Error(format!("malformed request: {e}")),
        };
        if reply(&mut stream, &resp).is_err() {
            return;
        }
    }
}

/// Serves connections on `listener` until the process ends; a background thread
/// expires idle leases every `sweep`.
///
/// [`WORKERS`] long-lived threads accept and serve connections (no thread start
/// per NSS lookup). When that many connections are in flight, a new one is served
/// on a thread of its own, so slow or idle clients cannot starve the others; beyond
/// [`MAX_CONNECTIONS`] clients are told "busy".
///
/// SIGHUP reloads the configuration file (as `xos-amsd reload` does): it is
/// blocked in every thread and taken by one that waits for it.
pub fn serve(svc: Arc<Service>, listener: UnixListener, sweep: Duration) {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut hup = SigSet::empty();
    hup.add(Signal::SIGHUP);
    if let Err(e) = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&hup), None) {
        log::warn!("cannot block SIGHUP, it will end the daemon: {e}");
    }
    let s1 = Arc::clone(&svc);
    std::thread::spawn(move || loop {
        if hup.wait().is_ok() {
            match s1.reload() {
                Ok(()) => log::info!("SIGHUP: configuration reloaded"),
                Err(e) => log::warn!("SIGHUP: configuration kept: {e}"),
            }
        }
    });
    let s2 = Arc::clone(&svc);
    std::thread::spawn(move || loop {
        std::thread::sleep(sweep);
        s2.expire();
    });
    let s3 = Arc::clone(&svc);
    std::thread::spawn(move || loop {
        std::thread::sleep(CACHE_REFRESH);
        s3.refresh();
    });
    let listener = Arc::new(listener);
    let busy = Arc::new(AtomicUsize::new(0));
    for i in 1..WORKERS {
        let (svc, listener, busy) = (Arc::clone(&svc), Arc::clone(&listener), Arc::clone(&busy));
        let _ = std::thread::Builder::new()
            .name(format!("amsd-worker-{i}"))
            .spawn(move || worker(&svc, &listener, &busy));
    }
    worker(&svc, &listener, &busy);
}

/// How often the NSS cache files are brought up to date with a shared store.
pub const CACHE_REFRESH: Duration = Duration::from_secs(1);

/// The NSS cache files, beside the socket: `passwd` and `group` in the format of
/// /etc/passwd and /etc/group, owned by root, replaced atomically. libnss_xos
/// answers getpwnam/getpwuid/getgrnam/getgrgid from them without a round trip
/// (the SSSD idea, with a plain file instead of a binary mmap cache) and asks the
/// daemon when they have no answer. Entries whose fields contain `:` or a newline
/// are left out (the daemon still serves them). The first line names the daemon's
/// pid; the module ignores the files once that process is gone, so a stopped
/// daemon means NSS_STATUS_UNAVAIL as without the cache.
pub fn cache_files(cfg: &Config) -> Option<(PathBuf, PathBuf)> {
    let dir = cfg.socket.parent()?;
    Some((dir.join("passwd"), dir.join("group")))
}

fn write_cache(cfg: &Config, idx: &Index) {
    let Some((pw, gr)) = cache_files(cfg) else {
        return;
    };
    let clean = |s: &str| !s.contains([':', '\n']);
    // The module trusts the files only while this process lives.
    let header = format!("# xos-amsd {}\n", std::process::id());
    let mut p = header.clone();
    for u in &idx.users {
        let e = Service::passwd(cfg, u);
        if [&e.name, &e.gecos, &e.dir, &e.shell]
            .iter()
            .all(|f| clean(f))
        {
            p.push_str(&e.to_line());
            p.push('\n');
        }
    }
    let mut g = header;
    for grp in &idx.groups {
        let e = Service::group_entry(idx, grp);
        if clean(&e.name) && e.members.iter().all(|m| clean(m) && !m.contains(',')) {
            g.push_str(&e.to_line());
            g.push('\n');
        }
    }
    for (path, text) in [(pw, p), (gr, g)] {
        if let Err(e) = fsutil::write_atomic(&path, text.as_bytes(), 0o644) {
            log::warn!("NSS cache: {e}");
        }
    }
}

/// Long-lived connection threads.
pub const WORKERS: usize = 8;

fn worker(svc: &Arc<Service>, listener: &UnixListener, busy: &Arc<AtomicUsize>) {
    loop {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let n = busy.fetch_add(1, Ordering::SeqCst) + 1;
        if n > MAX_CONNECTIONS {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = reply(&mut stream, &Response::Error("busy, try again".into()));
            busy.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        if n < WORKERS {
            serve_connection(svc, stream);
            busy.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (svc2, busy2) = (Arc::clone(svc), Arc::clone(busy));
        let (tx, rx) = std::sync::mpsc::channel::<UnixStream>();
        let spawned = std::thread::Builder::new()
            .name("amsd-conn".into())
            .spawn(move || {
                if let Ok(s) = rx.recv() {
                    serve_connection(&svc2, s);
                }
                busy2.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(stream);
            }
            Err(e) => {
                log::warn!("cannot start a connection thread: {e}");
                serve_connection(svc, stream);
                busy.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The time between two expiry sweeps for a lease lifetime of `idle` seconds.
pub fn sweep_interval(idle: u64) -> Duration {
    Duration::from_millis((idle * 1000 / 4).clamp(200, 60_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_accounts_from_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("passwd");
        let g = d.path().join("group");
        std::fs::write(
            &p,
            "root:x:0:0:root:/root:/bin/bash\nbob:x:1001:100:Bob:/home/bob:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(&g, "users:x:100:\ndev:x:2000:alice,bob\nops:x:2001:bobby\n").unwrap();
        let (pw, gids) = local_account(&p, &g, "bob").unwrap();
        assert_eq!((pw.uid, pw.dir.as_str()), (1001, "/home/bob"));
        assert_eq!(gids, vec![100, 2000]);
        assert!(local_account(&p, &g, "nobody").is_none());
    }

    #[test]
    fn reads_need_no_root_but_changes_do() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            state_dir: d.path().to_path_buf(),
            ..Config::default()
        };
        let s = Service::new(cfg, None).unwrap();
        assert_eq!(
            s.handle(Request::GetPwUid(5000), 1000),
            Response::Passwd(None)
        );
        assert!(matches!(
            s.handle(Request::ListLeases, 1000),
            Response::Error(_)
        ));
        assert_eq!(s.handle(Request::ListLeases, 0), Response::Leases(vec![]));
        assert!(matches!(
            s.handle(
                Request::Map {
                    cert_pem: "junk".into()
                },
                0
            ),
            Response::Refused(_)
        ));
    }
}
