//! The internal library of xos: every applet is a thin layer over these modules.
//!
//! The library never prints and never exits; every fallible call returns a typed
//! error that names the object it failed on (path, pid, group, application id).

pub mod app;
pub mod applock;
pub mod cgroup;
pub mod ckpt;
pub mod container;
pub mod fsutil;
pub mod gcp;
pub mod jsdl;
pub mod net;
pub mod ns;
pub mod process;
pub mod registry;
pub mod store;
mod sys;
pub mod sysvipc;
pub mod vo;
