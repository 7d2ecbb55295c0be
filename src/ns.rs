//! Linux namespaces of applications (namespaces(7), setns(2), unshare(2)).

use std::fs::File;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use crate::process::{self, ProcError};

/// Identity (inode numbers) of the namespaces an application lives in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub pid: Option<u64>,
    pub ipc: Option<u64>,
    pub mnt: Option<u64>,
}

impl Namespaces {
    /// Reads the namespaces of process `pid`.
    pub fn of(pid: i32) -> Result<Namespaces, ProcError> {
        Ok(Namespaces {
            pid: Some(process::ns_inode(pid, "pid")?),
            ipc: Some(process::ns_inode(pid, "ipc")?),
            mnt: Some(process::ns_inode(pid, "mnt")?),
        })
    }
}

/// Errors entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("cannot open the {kind} namespace of process {pid}: {source}")]
    Open {
        pid: i32,
        kind: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter the {kind} namespace of process {pid}: {source}")]
    Enter {
        pid: i32,
        kind: &'static str,
        #[source]
        source: nix::Error,
    },
}

fn flag(kind: &'static str) -> CloneFlags {
    match kind {
        "ipc" => CloneFlags::CLONE_NEWIPC,
        "mnt" => CloneFlags::CLONE_NEWNS,
        "pid" => CloneFlags::CLONE_NEWPID,
        "uts" => CloneFlags::CLONE_NEWUTS,
        "net" => CloneFlags::CLONE_NEWNET,
        _ => CloneFlags::empty(),
    }
}

/// Moves the calling thread into namespace `kind` of process `pid`.
pub fn enter(pid: i32, kind: &'static str) -> Result<(), NsError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
    let f = File::open(&path).map_err(|source| NsError::Open { pid, kind, source })?;
    nix::sched::setns(f, flag(kind)).map_err(|source| NsError::Enter { pid, kind, source })
}
