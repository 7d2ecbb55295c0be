//! libnss_xos.so.2: glibc NSS module (nss(5), nsswitch.conf(5)) for the passwd and
//! group databases of xos-amsd. Man page: libnss_xos(8).
//!
//! getpwnam, getpwuid, getgrnam and getgrgid are first answered from the daemon's
//! cache files `passwd` and `group` beside its socket (root's, replaced
//! atomically, at most about a second behind a store shared with other nodes, and
//! trusted only while the daemon that wrote them is alive);
//! anything else, and every miss, is one request over the daemon's Unix socket (`$XOS_AMSD_SOCKET`
//! through secure_getenv(3), else the `Socket` of `$XOS_AMSD_CONFIG` or
//! /etc/xos/nss_pam/pam_xos.conf, else /run/xos/amsd.sock) with a short timeout; when the
//! daemon is not there the answer is NSS_STATUS_UNAVAIL, so `files` entries still
//! work. Every entry point catches panics (a panic must not unwind into the host
//! program), starts no thread, and refuses to recurse into itself (a per-thread
//! guard, as SSSD's client does). The only state beyond a call is the list being
//! enumerated between set*ent and end*ent, and the cache files as last read
//! (checked with one stat(2) per lookup, like SSSD's memory cache).

// The entry points are called by glibc, which guarantees valid pointers (nss(5));
// marking them `unsafe fn` would not change what the callers may do.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::Cell;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_long};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libc::{gid_t, group, passwd, size_t, uid_t};
use xos_proto::{Group, Passwd, Request, Response};

#[allow(non_camel_case_types)]
type nss_status = c_int;
const NSS_STATUS_TRYAGAIN: nss_status = -2;
const NSS_STATUS_UNAVAIL: nss_status = -1;
const NSS_STATUS_NOTFOUND: nss_status = 0;
const NSS_STATUS_SUCCESS: nss_status = 1;

const TIMEOUT: Duration = Duration::from_millis(1000);

extern "C" {
    // glibc: getenv(3) that returns NULL in set-uid/set-gid programs.
    fn secure_getenv(name: *const c_char) -> *mut c_char;
}

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

fn env(name: &CStr) -> Option<PathBuf> {
    // SAFETY: the name is a NUL-terminated literal; the result is copied at once.
    let p = unsafe { secure_getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: secure_getenv returned a valid C string.
    let s = unsafe { CStr::from_ptr(p) };
    Some(PathBuf::from(s.to_string_lossy().into_owned()))
}

/// `$XOS_AMSD_SOCKET`, else the `Socket` of the configuration file
/// (`$XOS_AMSD_CONFIG` or the default), read once per process: NSS lookups are
/// frequent and the file changes only with a daemon restart.
fn socket() -> PathBuf {
    static CONFIGURED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    env(c"XOS_AMSD_SOCKET").unwrap_or_else(|| {
        CONFIGURED
            .get_or_init(|| {
                let config = env(c"XOS_AMSD_CONFIG")
                    .unwrap_or_else(|| PathBuf::from(xos_proto::DEFAULT_CONFIG));
                xos_proto::configured_socket(&config)
            })
            .clone()
    })
}

// Lives on the stack for one call; boxing the response would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Answer {
    Found(Response),
    Unavailable,
}

/// One request, guarded against recursion.
fn ask(req: &Request) -> Answer {
    if BUSY.with(|b| b.replace(true)) {
        return Answer::Unavailable;
    }
    let r = xos_proto::call(&socket(), TIMEOUT, req);
    BUSY.with(|b| b.set(false));
    match r {
        Ok(Response::Error(_)) | Err(_) => Answer::Unavailable,
        Ok(r) => Answer::Found(r),
    }
}

/// Runs an entry point, turning a panic into NSS_STATUS_UNAVAIL.
fn guard(errnop: *mut c_int, f: impl FnOnce() -> (nss_status, c_int)) -> nss_status {
    let (st, err) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or((NSS_STATUS_UNAVAIL, libc::EAGAIN));
    if !errnop.is_null() {
        // SAFETY: glibc passes a valid errno pointer.
        unsafe { *errnop = err };
    }
    st
}

/// Copies strings and pointer arrays into the caller's buffer.
struct Buf {
    ptr: *mut c_char,
    len: usize,
    off: usize,
}

impl Buf {
    fn str(&mut self, s: &str) -> Option<*mut c_char> {
        let bytes = s.as_bytes();
        if bytes.contains(&0) || self.off + bytes.len() + 1 > self.len {
            return None;
        }
        // SAFETY: the range [off, off+len+1) lies inside the caller's buffer.
        unsafe {
            let dst = self.ptr.add(self.off);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, bytes.len());
            *dst.add(bytes.len()) = 0;
            self.off += bytes.len() + 1;
            Some(dst)
        }
    }

    /// A NULL-terminated array of `n` pointers, aligned.
    fn ptrs(&mut self, n: usize) -> Option<*mut *mut c_char> {
        let align = std::mem::align_of::<*mut c_char>();
        let base = self.ptr as usize;
        let start = (base + self.off).next_multiple_of(align) - base;
        let size = (n + 1) * std::mem::size_of::<*mut c_char>();
        if start + size > self.len {
            return None;
        }
        self.off = start + size;
        // SAFETY: in bounds (checked above) and aligned.
        Some(unsafe { self.ptr.add(start) as *mut *mut c_char })
    }
}

fn fill_passwd(p: &Passwd, out: *mut passwd, buf: *mut c_char, len: size_t) -> (nss_status, c_int) {
    let mut b = Buf {
        ptr: buf,
        len,
        off: 0,
    };
    let r = (|| {
        let name = b.str(&p.name)?;
        let pw = b.str("x")?;
        let gecos = b.str(&p.gecos)?;
        let dir = b.str(&p.dir)?;
        let shell = b.str(&p.shell)?;
        // SAFETY: glibc passes a valid passwd to fill.
        unsafe {
            (*out).pw_name = name;
            (*out).pw_passwd = pw;
            (*out).pw_uid = p.uid;
            (*out).pw_gid = p.gid;
            (*out).pw_gecos = gecos;
            (*out).pw_dir = dir;
            (*out).pw_shell = shell;
        }
        Some(())
    })();
    match r {
        Some(()) => (NSS_STATUS_SUCCESS, 0),
        None => (NSS_STATUS_TRYAGAIN, libc::ERANGE),
    }
}

fn fill_group(g: &Group, out: *mut group, buf: *mut c_char, len: size_t) -> (nss_status, c_int) {
    let mut b = Buf {
        ptr: buf,
        len,
        off: 0,
    };
    let r = (|| {
        let mem = b.ptrs(g.members.len())?;
        let name = b.str(&g.name)?;
        let pw = b.str("x")?;
        for (i, m) in g.members.iter().enumerate() {
            let s = b.str(m)?;
            // SAFETY: `mem` has room for members.len() + 1 pointers.
            unsafe { *mem.add(i) = s };
        }
        // SAFETY: as above; glibc passes a valid group to fill.
        unsafe {
            *mem.add(g.members.len()) = std::ptr::null_mut();
            (*out).gr_name = name;
            (*out).gr_passwd = pw;
            (*out).gr_gid = g.gid;
            (*out).gr_mem = mem;
        }
        Some(())
    })();
    match r {
        Some(()) => (NSS_STATUS_SUCCESS, 0),
        None => (NSS_STATUS_TRYAGAIN, libc::ERANGE),
    }
}

fn c_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: glibc passes NUL-terminated strings.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// A cache file as last read: reused while stat(2) shows the same file (the
/// daemon replaces it by rename) and its writer was alive within a second.
struct CacheFile {
    name: &'static str,
    path: PathBuf,
    id: (u64, u64, i64, i64, u64),
    text: String,
    checked: Instant,
}

static CACHE: Mutex<Vec<CacheFile>> = Mutex::new(Vec::new());
const LIVENESS_TTL: Duration = Duration::from_secs(1);

/// Whether the daemon named in the first line ("# xos-amsd PID") is alive.
fn writer_alive(text: &str) -> bool {
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# xos-amsd "))
        .and_then(|p| p.parse::<libc::pid_t>().ok())
    else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // A killed daemon not yet reaped by its parent still "exists", as a zombie.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// The text of a cache file, if the daemon that wrote it lives.
fn read_live(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    writer_alive(&text).then_some(text)
}

/// Looks `key` up in field `field` of the daemon's cache file `name` (beside the
/// socket, see xos-amsd(1)); None when the file is missing, not root's, writable by
/// others, written by a daemon that is gone, or has no such line; then the
/// daemon is asked. One stat(2) per lookup while the file is unchanged.
fn cached(name: &'static str, field: usize, key: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = socket().parent()?.join(name);
    let md = std::fs::metadata(&path).ok()?;
    if md.uid() != 0 || md.mode() & 0o022 != 0 || md.len() > 16 << 20 {
        return None;
    }
    let id = (md.dev(), md.ino(), md.mtime(), md.mtime_nsec(), md.len());
    let find = |text: &str| {
        // Compare one field per line; the caller parses the matching line.
        text.lines()
            .skip(1)
            .find(|l| l.split(':').nth(field) == Some(key))
            .map(str::to_string)
    };
    // Never wait for the lock: a fork while another thread held it would
    // leave it held forever in the child. Busy means read the file directly.
    let Ok(mut cache) = CACHE.try_lock() else {
        return read_live(&path).and_then(|text| find(&text));
    };
    let i = match cache.iter().position(|c| c.name == name) {
        Some(i) if cache[i].id == id && cache[i].path == path => i,
        found => {
            let entry = CacheFile {
                name,
                text: read_live(&path)?,
                path,
                id,
                checked: Instant::now(),
            };
            match found {
                Some(i) => {
                    cache[i] = entry;
                    i
                }
                None => {
                    cache.push(entry);
                    cache.len() - 1
                }
            }
        }
    };
    let c = &mut cache[i];
    if c.checked.elapsed() > LIVENESS_TTL {
        if !writer_alive(&c.text) {
            return None;
        }
        c.checked = Instant::now();
    }
    find(&c.text)
}

fn cached_passwd(field: usize, key: &str) -> Option<Passwd> {
    Passwd::from_line(&cached("passwd", field, key)?)
}

fn cached_group(field: usize, key: &str) -> Option<Group> {
    Group::from_line(&cached("group", field, key)?)
}

fn pw_answer(req: Request, out: *mut passwd, buf: *mut c_char, len: size_t) -> (nss_status, c_int) {
    let hit = match &req {
        Request::GetPwNam(n) => cached_passwd(0, n),
        Request::GetPwUid(u) => cached_passwd(2, &u.to_string()),
        _ => None,
    };
    if let Some(p) = hit {
        return fill_passwd(&p, out, buf, len);
    }
    match ask(&req) {
        Answer::Found(Response::Passwd(Some(p))) => fill_passwd(&p, out, buf, len),
        Answer::Found(_) => (NSS_STATUS_NOTFOUND, libc::ENOENT),
        Answer::Unavailable => (NSS_STATUS_UNAVAIL, libc::ENOENT),
    }
}

fn gr_answer(req: Request, out: *mut group, buf: *mut c_char, len: size_t) -> (nss_status, c_int) {
    let hit = match &req {
        Request::GetGrNam(n) => cached_group(0, n),
        Request::GetGrGid(g) => cached_group(2, &g.to_string()),
        _ => None,
    };
    if let Some(g) = hit {
        return fill_group(&g, out, buf, len);
    }
    match ask(&req) {
        Answer::Found(Response::Group(Some(g))) => fill_group(&g, out, buf, len),
        Answer::Found(_) => (NSS_STATUS_NOTFOUND, libc::ENOENT),
        Answer::Unavailable => (NSS_STATUS_UNAVAIL, libc::ENOENT),
    }
}

#[no_mangle]
pub extern "C" fn _nss_xos_getpwnam_r(
    name: *const c_char,
    out: *mut passwd,
    buf: *mut c_char,
    len: size_t,
    errnop: *mut c_int,
) -> nss_status {
    guard(errnop, || match c_str(name) {
        Some(n) => pw_answer(Request::GetPwNam(n), out, buf, len),
        None => (NSS_STATUS_NOTFOUND, libc::ENOENT),
    })
}

#[no_mangle]
pub extern "C" fn _nss_xos_getpwuid_r(
    uid: uid_t,
    out: *mut passwd,
    buf: *mut c_char,
    len: size_t,
    errnop: *mut c_int,
) -> nss_status {
    guard(errnop, || pw_answer(Request::GetPwUid(uid), out, buf, len))
}

#[no_mangle]
pub extern "C" fn _nss_xos_getgrnam_r(
    name: *const c_char,
    out: *mut group,
    buf: *mut c_char,
    len: size_t,
    errnop: *mut c_int,
) -> nss_status {
    guard(errnop, || match c_str(name) {
        Some(n) => gr_answer(Request::GetGrNam(n), out, buf, len),
        None => (NSS_STATUS_NOTFOUND, libc::ENOENT),
    })
}

#[no_mangle]
pub extern "C" fn _nss_xos_getgrgid_r(
    gid: gid_t,
    out: *mut group,
    buf: *mut c_char,
    len: size_t,
    errnop: *mut c_int,
) -> nss_status {
    guard(errnop, || gr_answer(Request::GetGrGid(gid), out, buf, len))
}

/// Enumeration state: the list fetched by set*ent and the next index.
static PW_LIST: Mutex<Option<(Vec<Passwd>, usize)>> = Mutex::new(None);
static GR_LIST: Mutex<Option<(Vec<Group>, usize)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[no_mangle]
pub extern "C" fn _nss_xos_setpwent(_stayopen: c_int) -> nss_status {
    guard(std::ptr::null_mut(), || match ask(&Request::ListPasswd) {
        Answer::Found(Response::Passwds(l)) => {
            *lock(&PW_LIST) = Some((l, 0));
            (NSS_STATUS_SUCCESS, 0)
        }
        _ => {
            *lock(&PW_LIST) = None;
            (NSS_STATUS_UNAVAIL, 0)
        }
    })
}

#[no_mangle]
pub extern "C" fn _nss_xos_endpwent() -> nss_status {
    guard(std::ptr::null_mut(), || {
        *lock(&PW_LIST) = None;
        (NSS_STATUS_SUCCESS, 0)
    })
}

#[no_mangle]
pub extern "C" fn _nss_xos_getpwent_r(
    out: *mut passwd,
    buf: *mut c_char,
    len: size_t,
    errnop: *mut c_int,
) -> nss_status {
    guard(errnop, || {
        let mut l = lock(&PW_LIST);
        let Some((list, next)) = l.as_mut() else {
            return (NSS_STATUS_UNAVAIL, libc::ENOENT);
        };
        let Some(p) = list.get(*next) else {
            return (NSS_STATUS_NOTFOUND, libc::ENOENT);
        };
        let r = fill_passwd(p, out, buf, len);
        if r.0 == NSS_STATUS_SUCCESS {
            *next += 1;
        }
        r
    })
}

#[no_mangle]
pub extern "C" fn _nss_xos_setgrent(_stayopen: c_int) -> nss_status {
    guard(std::ptr::null_mut(), || match ask(&Request::ListGroups) {
        Answer::Found(Response::Groups(l)) => {
            *lock(&GR_LIST) = Some((l, 0));
            (NSS_STATUS_SUCCESS, 0)
        }
        _ => {
            *lock(&GR_LIST) = None;
            (NSS_STATUS_UNAVAIL, 0)
        }
    })
}

#[no_mangle]
pub extern "C" fn _nss_xos_endgrent() -> nss_status {
    guard(std::ptr::null_mut(), || {
        *lock(&GR_LIST) = None;
        (NSS_STATUS_SUCCESS, 0)
    })
}

#[no_mangle]
pub extern "C" fn _nss_xos_getgrent_r(
    out: *mut group,
    buf: *mut c_char,
    len: size_t,
    errnop: *mut c_int,
) -> nss_status {
    guard(errnop, || {
        let mut l = lock(&GR_LIST);
        let Some((list, next)) = l.as_mut() else {
            return (NSS_STATUS_UNAVAIL, libc::ENOENT);
        };
        let Some(g) = list.get(*next) else {
            return (NSS_STATUS_NOTFOUND, libc::ENOENT);
        };
        let r = fill_group(g, out, buf, len);
        if r.0 == NSS_STATUS_SUCCESS {
            *next += 1;
        }
        r
    })
}

/// Adds the user's VO groups (other than `skip`) to glibc's growing array.
#[no_mangle]
pub extern "C" fn _nss_xos_initgroups_dyn(
    user: *const c_char,
    skip: gid_t,
    start: *mut c_long,
    size: *mut c_long,
    groupsp: *mut *mut gid_t,
    limit: c_long,
    errnop: *mut c_int,
) -> nss_status {
    guard(errnop, || {
        let Some(name) = c_str(user) else {
            return (NSS_STATUS_NOTFOUND, libc::ENOENT);
        };
        let gids = match ask(&Request::GroupsOf(name)) {
            Answer::Found(Response::Gids(g)) if !g.is_empty() => g,
            Answer::Found(_) => return (NSS_STATUS_NOTFOUND, libc::ENOENT),
            Answer::Unavailable => return (NSS_STATUS_UNAVAIL, libc::ENOENT),
        };
        // SAFETY: glibc passes valid pointers to its counters and a malloc'ed array
        // of *size entries, which may be grown with realloc.
        unsafe {
            for g in gids.into_iter().filter(|&g| g != skip) {
                let cur = std::slice::from_raw_parts(*groupsp, *start as usize);
                if cur.contains(&g) {
                    continue;
                }
                if *start == *size {
                    if limit > 0 && *size >= limit {
                        break;
                    }
                    let mut n = (*size).max(1) * 2;
                    if limit > 0 {
                        n = n.min(limit);
                    }
                    let p = libc::realloc(
                        *groupsp as *mut libc::c_void,
                        n as usize * std::mem::size_of::<gid_t>(),
                    ) as *mut gid_t;
                    if p.is_null() {
                        return (NSS_STATUS_TRYAGAIN, libc::ENOMEM);
                    }
                    *groupsp = p;
                    *size = n;
                }
                *(*groupsp).add(*start as usize) = g;
                *start += 1;
            }
        }
        (NSS_STATUS_SUCCESS, 0)
    })
}
