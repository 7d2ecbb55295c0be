//! The grid checkpointing layer (XtreemGCP): jobs made of units on this node,
//! checkpointed and restarted through the common kernel checkpointer API
//! ([`api`]) by one translation backend per kernel checkpointer, with versions
//! and their metadata in a checkpoint directory that may be shared by nodes
//! ([`meta`]). [`job`] holds the job-level operations `xcheckpoint` and
//! `xrestart` call.

pub mod api;
pub mod callback;
pub mod config;
pub mod container;
pub mod criu;
pub mod job;
pub mod meta;
pub mod native;
pub mod schedule;

pub use api::{Checkpointer, GcpError};

/// The backends of this node; `criu` says where CRIU is when not on PATH.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    pub native: native::Native,
    pub criu: criu::Criu,
    pub container: container::Container,
}

impl Backends {
    /// The backend called `name` (as recorded in the registry and metadata).
    pub fn get(&self, name: &str) -> api::Result<&dyn Checkpointer> {
        match name {
            crate::app::NATIVE => Ok(&self.native),
            crate::app::CRIU => Ok(&self.criu),
            container::CONTAINER => Ok(&self.container),
            other => Err(GcpError::UnknownBackend(other.to_string())),
        }
    }
}
