//! Semaphore arrays (semctl(2) `IPC_STAT`, `GETALL`, `SETALL`).
//!
//! Only the values are saved: pending undo operations (`SEM_UNDO`) belong to the
//! processes and are saved with them, and processes blocked in semop(2) redo their
//! operation after a restart (D2.2.11 §2.3).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::format::Writer;
use super::{
    create_exact, stat_err, stat_obj, sys, Created, IpcError, Kind, Limits, Perm, Result, Saved,
};

/// Largest semaphore value (SEMVMX).
pub const SEMVMX: u16 = 32767;

/// Metadata of a saved semaphore array (it has no payload).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemMeta {
    #[serde(flatten)]
    pub perm: Perm,
    /// The value of every semaphore; their number is the size of the array.
    pub values: Vec<u16>,
    /// Times of the last semop and of the last change (for information).
    pub otime: i64,
    pub ctime: i64,
    /// When it was saved, seconds since the epoch.
    pub saved: u64,
}

impl SemMeta {
    pub(crate) fn validate(&self, payload_len: u64) -> std::result::Result<(), String> {
        if payload_len != 0 {
            return Err(format!(
                "a semaphore array has no payload, found {payload_len} bytes"
            ));
        }
        if self.values.is_empty() {
            return Err("no semaphores".into());
        }
        if let Some((i, v)) = self.values.iter().enumerate().find(|(_, v)| **v > SEMVMX) {
            return Err(format!("semaphore {i} has value {v}, more than {SEMVMX}"));
        }
        Ok(())
    }

    pub(crate) fn check_limits(&self, l: &Limits) -> Option<String> {
        let n = self.values.len() as u64;
        (n > l.sem[0]).then(|| {
            format!(
                "{n} semaphores are more than the namespace allows in one array (semmsl {})",
                l.sem[0]
            )
        })
    }

    pub(crate) fn create(&self) -> Result<Created> {
        let n = i32::try_from(self.values.len()).unwrap_or(i32::MAX);
        create_exact(Kind::Sem, &self.perm, |flags| {
            sys::semget(self.perm.key, n, flags)
        })
    }

    pub(crate) fn fill(&self, c: &Created) -> Result<()> {
        let obj = c.obj();
        sys::sem_setall(c.id(), &self.values).map_err(|source| IpcError::Sys {
            obj,
            op: "set its values",
            source,
        })
    }

    pub(crate) fn finish(&self, c: &Created) -> Result<()> {
        let obj = c.obj();
        let err = |op| move |source| IpcError::Sys { obj, op, source };
        let mut ds = sys::sem_stat(c.id()).map_err(err("read its state"))?;
        self.perm.set_into(&mut ds.sem_perm);
        sys::sem_set(c.id(), &ds).map_err(err("set owner and mode"))
    }
}

/// Saves semaphore array `id` to `path`.
pub(crate) fn save(id: i32, path: &Path) -> Result<Saved> {
    let (obj, ds) = stat_obj(Kind::Sem, id, sys::sem_stat, |d| d.sem_perm.__key)?;
    let mut values = vec![0u16; ds.sem_nsems as usize];
    // GETALL reads every value at once under the array's lock: a consistent copy.
    sys::sem_getall(id, &mut values).map_err(stat_err(obj))?;
    let meta = SemMeta {
        perm: Perm::from_ipc(&ds.sem_perm, id),
        values,
        otime: ds.sem_otime,
        ctime: ds.sem_ctime,
        saved: crate::registry::now(),
    };
    let body = serde_json::to_vec(&meta).expect("metadata always serializes");
    let file_len = Writer::create(path, Kind::Sem, &body, 0)?.finish()?;
    Ok(Saved {
        kind: Kind::Sem,
        id,
        key: meta.perm.key,
        path: path.to_path_buf(),
        file_len,
        payload_len: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_limits() {
        let mut m = SemMeta {
            perm: Perm {
                key: 0,
                id: 1,
                uid: 0,
                gid: 0,
                cuid: 0,
                cgid: 0,
                mode: 0o600,
            },
            values: vec![0, 5, SEMVMX],
            otime: 0,
            ctime: 0,
            saved: 0,
        };
        assert!(m.validate(0).is_ok());
        assert!(m.validate(1).is_err());
        let mut l = crate::sysvipc::procfs::tests_limits();
        assert!(m.check_limits(&l).is_none());
        l.sem[0] = 2;
        assert!(m.check_limits(&l).unwrap().contains("semmsl 2"));
        m.values[0] = SEMVMX + 1;
        assert!(m.validate(0).is_err());
        m.values.clear();
        assert!(m.validate(0).is_err());
    }
}
