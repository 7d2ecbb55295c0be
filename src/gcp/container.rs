//! The container checkpointer's place in the common API (the role OpenVZ had:
//! a job's units in one container, checkpointed and restarted whole). It comes
//! with container job units (`xos-loader`); until then it says so, so that a
//! version written by it elsewhere is refused here with one clear line.

use std::path::Path;

use super::api::{
    Checkpointer, DumpOptions, GcpError, Probe, RestartOptions, Restarted, Result, UnitImage,
};
use crate::registry::{AppRecord, Registry};

/// The name units and metadata use for it.
pub const CONTAINER: &str = "container";

/// The container checkpointer (not built yet).
#[derive(Debug, Default, Clone)]
pub struct Container;

impl Container {
    fn unavailable(&self) -> GcpError {
        GcpError::Unavailable {
            backend: CONTAINER.to_string(),
            why: "container job units are not built yet in this version of xos".to_string(),
        }
    }
}

impl Checkpointer for Container {
    fn name(&self) -> &'static str {
        CONTAINER
    }

    fn probe(&self) -> Probe {
        Probe {
            version: Err("container job units are not built yet in this version of xos".into()),
            features: Vec::new(),
        }
    }

    fn checkpoint(&self, _: &Path, _: &AppRecord, _: &Path, _: &DumpOptions) -> Result<UnitImage> {
        Err(self.unavailable())
    }

    fn verify(&self, _: &Path) -> Result<()> {
        Err(self.unavailable())
    }

    fn restart(&self, _: &Registry, _: &Path, _: &RestartOptions) -> Result<Restarted> {
        Err(self.unavailable())
    }
}
