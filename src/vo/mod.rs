//! Node-level VO support: XOS-certs ([`cert`]), the configuration of xos-amsd and
//! the PAM session ([`config`]), the pool-account lease store ([`lease`]), policy
//! ([`policy`]) and the daemon's request handling and socket loop ([`server`]).
//!
//! The wire protocol is the `xos-proto` crate, shared with pam_xos.so and
//! libnss_xos.so.2. Man pages: xos-amsd(1), xos-cert(1), pam_app_aem(1),
//! pam_xos(8), libnss_xos(8).

pub mod cert;
pub mod config;
pub mod lease;
pub mod policy;
pub mod server;
pub mod session;
mod sys;

pub use xos_proto as proto;
