//! pam_xos.so: PAM service module (pam(3), pam.conf(5)) for VO users; man page
//! pam_xos(8). It asks xos-amsd over its Unix socket:
//!
//! - auth: validate the XOS-cert and map its holder; PAM_USER becomes the local
//!   account. The certificate comes from the PAM environment (`XOS_CERT`, PEM text,
//!   or `XOS_CERT_FILE`, a path) or the module argument `cert=PATH`;
//! - account: the VO and node policy (bans, allowed VOs and roles); PAM_IGNORE for
//!   users that are not mapped VO users, so local accounts pass through;
//! - session: open creates the job's cgroup (`aem_jobid_ID`, ID from `XOS_JOB_ID` in
//!   the PAM or process environment, else the pid) holding the calling process and,
//!   with the `disk` subsystem, gives it a private /tmp; close kills what is left and
//!   removes the cgroup;
//! - setcred: sets the supplementary groups of the account.
//!
//! Arguments: `socket=PATH` (else the `Socket` of the configuration file,
//! `config=PATH` or /etc/xos/nss_pam/pam_xos.conf), `cert=PATH`, `timeout=MS`.
//! Every entry point catches
//! panics (none may unwind into the host), no thread is started, and the only
//! exported symbols are the pam_sm_* functions.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::time::Duration;

use xos_proto::{Request, Response};

mod sys {
    //! The libpam functions used (Linux-PAM's pam_modules.h, pam_ext.h).
    use std::os::raw::{c_char, c_int, c_void};

    #[repr(C)]
    pub struct PamHandle {
        _private: [u8; 0],
    }

    pub const PAM_SUCCESS: c_int = 0;
    pub const PAM_SERVICE_ERR: c_int = 3;
    pub const PAM_SYSTEM_ERR: c_int = 4;
    pub const PAM_PERM_DENIED: c_int = 6;
    pub const PAM_AUTH_ERR: c_int = 7;
    pub const PAM_CRED_ERR: c_int = 17;
    pub const PAM_AUTHINFO_UNAVAIL: c_int = 9;
    pub const PAM_SESSION_ERR: c_int = 14;
    pub const PAM_IGNORE: c_int = 25;
    pub const PAM_USER: c_int = 2;
    pub const PAM_DELETE_CRED: c_int = 0x4;

    #[link(name = "pam")]
    extern "C" {
        pub fn pam_set_item(pamh: *mut PamHandle, item_type: c_int, item: *const c_void) -> c_int;
        pub fn pam_get_item(
            pamh: *const PamHandle,
            item_type: c_int,
            item: *mut *const c_void,
        ) -> c_int;
        pub fn pam_getenv(pamh: *mut PamHandle, name: *const c_char) -> *const c_char;
        pub fn pam_putenv(pamh: *mut PamHandle, name_value: *const c_char) -> c_int;
    }
}

use sys::*;

struct Args {
    socket: PathBuf,
    cert: Option<PathBuf>,
    timeout: Duration,
}

fn args(argc: c_int, argv: *const *const c_char) -> Args {
    let mut a = Args {
        socket: PathBuf::new(),
        cert: None,
        timeout: Duration::from_secs(10),
    };
    let mut config = PathBuf::from(xos_proto::DEFAULT_CONFIG);
    let n = if argv.is_null() {
        0
    } else {
        argc.max(0) as usize
    };
    for i in 0..n {
        // SAFETY: libpam passes argc valid C strings.
        let p = unsafe { *argv.add(i) };
        if p.is_null() {
            continue;
        }
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        if let Some(v) = s.strip_prefix("socket=") {
            a.socket = PathBuf::from(v);
        } else if let Some(v) = s.strip_prefix("config=") {
            config = PathBuf::from(v);
        } else if let Some(v) = s.strip_prefix("cert=") {
            a.cert = Some(PathBuf::from(v));
        } else if let Some(v) = s.strip_prefix("timeout=") {
            if let Ok(ms) = v.parse() {
                a.timeout = Duration::from_millis(ms);
            }
        }
    }
    // Without socket=, the daemon's socket is the configuration file's.
    if a.socket.as_os_str().is_empty() {
        a.socket = xos_proto::configured_socket(&config);
    }
    a
}

fn getenv(pamh: *mut PamHandle, name: &CStr) -> Option<String> {
    // SAFETY: pamh comes from libpam; the returned string is copied at once.
    let p = unsafe { pam_getenv(pamh, name.as_ptr()) };
    if !p.is_null() {
        return Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
    }
    std::env::var(name.to_str().ok()?).ok()
}

fn user(pamh: *mut PamHandle) -> Option<String> {
    let mut item: *const c_void = std::ptr::null();
    // SAFETY: PAM_USER is a C string owned by libpam; copied at once.
    let r = unsafe { pam_get_item(pamh, PAM_USER, &mut item) };
    if r != PAM_SUCCESS || item.is_null() {
        return None;
    }
    Some(
        unsafe { CStr::from_ptr(item as *const c_char) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn call(a: &Args, req: &Request) -> Result<Response, c_int> {
    xos_proto::call(&a.socket, a.timeout, req).map_err(|_| PAM_AUTHINFO_UNAVAIL)
}

/// Runs an entry point; a panic becomes PAM_SYSTEM_ERR instead of unwinding.
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(PAM_SYSTEM_ERR)
}

fn authenticate(pamh: *mut PamHandle, a: &Args) -> c_int {
    let pem = match getenv(pamh, c"XOS_CERT") {
        Some(p) => p,
        None => {
            let Some(path) = getenv(pamh, c"XOS_CERT_FILE")
                .map(PathBuf::from)
                .or_else(|| a.cert.clone())
            else {
                return PAM_CRED_ERR;
            };
            match std::fs::read_to_string(path) {
                Ok(p) => p,
                Err(_) => return PAM_AUTHINFO_UNAVAIL,
            }
        }
    };
    match call(a, &Request::Map { cert_pem: pem }) {
        Ok(Response::Mapped(acct)) => {
            let Ok(name) = CString::new(acct.passwd.name) else {
                return PAM_SERVICE_ERR;
            };
            // SAFETY: libpam copies the string.
            unsafe { pam_set_item(pamh, PAM_USER, name.as_ptr() as *const c_void) }
        }
        Ok(Response::Refused(_)) => PAM_AUTH_ERR,
        Ok(_) => PAM_AUTHINFO_UNAVAIL,
        Err(e) => e,
    }
}

fn is_vo_user(a: &Args, name: &str) -> Result<bool, c_int> {
    match call(a, &Request::GetPwNam(name.to_string()))? {
        Response::Passwd(p) => Ok(p.is_some()),
        _ => Err(PAM_AUTHINFO_UNAVAIL),
    }
}

fn account(pamh: *mut PamHandle, a: &Args) -> c_int {
    let Some(name) = user(pamh) else {
        return PAM_SERVICE_ERR;
    };
    match is_vo_user(a, &name) {
        Ok(true) => {}
        Ok(false) => return PAM_IGNORE,
        Err(e) => return e,
    }
    match call(a, &Request::CheckAccount { user: name }) {
        Ok(Response::Ok) => PAM_SUCCESS,
        Ok(Response::Refused(_)) => PAM_PERM_DENIED,
        Ok(_) => PAM_AUTHINFO_UNAVAIL,
        Err(e) => e,
    }
}

fn job_id(pamh: *mut PamHandle) -> String {
    getenv(pamh, c"XOS_JOB_ID").unwrap_or_else(|| std::process::id().to_string())
}

/// A private /tmp for the calling process: new mount namespace, tmpfs on /tmp.
fn private_tmp(blocks: Option<u64>, inodes: Option<u64>) -> bool {
    let mut opts = String::from("mode=1777");
    if let Some(b) = blocks {
        opts.push_str(&format!(",size={}k", b.max(1)));
    }
    if let Some(i) = inodes {
        opts.push_str(&format!(",nr_inodes={}", i + 1));
    }
    let Ok(opts) = CString::new(opts) else {
        return false;
    };
    // SAFETY: plain system calls with valid NUL-terminated strings.
    unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) == 0
            && libc::mount(
                c"xos-job-tmp".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr() as *const c_void,
            ) == 0
    }
}

fn open_session(pamh: *mut PamHandle, a: &Args) -> c_int {
    let Some(name) = user(pamh) else {
        return PAM_SESSION_ERR;
    };
    match is_vo_user(a, &name) {
        Ok(true) => {}
        Ok(false) => return PAM_IGNORE,
        Err(e) => return e,
    }
    let id = job_id(pamh);
    let req = Request::OpenSession {
        user: name,
        job_id: id.clone(),
        pid: std::process::id() as i32,
    };
    match call(a, &req) {
        Ok(Response::Session(s)) => {
            // close_session finds the job id here even if the caller's environment changes.
            if let Ok(kv) = CString::new(format!("XOS_JOB_ID={id}")) {
                // SAFETY: libpam copies the string.
                unsafe { pam_putenv(pamh, kv.as_ptr()) };
            }
            if (s.tmp_blocks.is_some() || s.tmp_inodes.is_some())
                && !private_tmp(s.tmp_blocks, s.tmp_inodes)
            {
                return PAM_SESSION_ERR;
            }
            PAM_SUCCESS
        }
        Ok(_) => PAM_SESSION_ERR,
        Err(e) => e,
    }
}

fn close_session(pamh: *mut PamHandle, a: &Args) -> c_int {
    let Some(name) = user(pamh) else {
        return PAM_SESSION_ERR;
    };
    match is_vo_user(a, &name) {
        Ok(true) => {}
        Ok(false) => return PAM_IGNORE,
        Err(e) => return e,
    }
    let req = Request::CloseSession {
        job_id: job_id(pamh),
        keep_pid: Some(std::process::id() as i32),
    };
    match call(a, &req) {
        Ok(Response::Ok) => PAM_SUCCESS,
        Ok(_) => PAM_SESSION_ERR,
        Err(e) => e,
    }
}

fn setcred(pamh: *mut PamHandle, a: &Args, flags: c_int) -> c_int {
    if flags & PAM_DELETE_CRED != 0 {
        return PAM_SUCCESS;
    }
    let Some(name) = user(pamh) else {
        return PAM_SERVICE_ERR;
    };
    match call(a, &Request::GroupsOf(name)) {
        Ok(Response::Gids(g)) if g.is_empty() => PAM_IGNORE,
        Ok(Response::Gids(g)) => {
            // SAFETY: a valid array of g.len() gids.
            if unsafe { libc::setgroups(g.len(), g.as_ptr()) } == 0 {
                PAM_SUCCESS
            } else {
                PAM_CRED_ERR
            }
        }
        Ok(_) => PAM_AUTHINFO_UNAVAIL,
        Err(e) => e,
    }
}

#[no_mangle]
pub extern "C" fn pam_sm_authenticate(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(|| authenticate(pamh, &args(argc, argv)))
}

#[no_mangle]
pub extern "C" fn pam_sm_setcred(
    pamh: *mut PamHandle,
    flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(|| setcred(pamh, &args(argc, argv), flags))
}

#[no_mangle]
pub extern "C" fn pam_sm_acct_mgmt(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(|| account(pamh, &args(argc, argv)))
}

#[no_mangle]
pub extern "C" fn pam_sm_open_session(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(|| open_session(pamh, &args(argc, argv)))
}

#[no_mangle]
pub extern "C" fn pam_sm_close_session(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(|| close_session(pamh, &args(argc, argv)))
}
