//! Message queues (msgctl(2), msgrcv(2), msgsnd(2)).
//!
//! Saving copies every message with `msgrcv(..., MSG_COPY | IPC_NOWAIT)` (the
//! message index goes in `msgtyp`), which leaves the queue, its times and its pids
//! untouched. Restoring sends the messages again in their order.

use std::path::Path;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::format::{Payload, Writer};
use super::{
    create_exact, stat_err, stat_obj, sys, Created, IpcError, Kind, Limits, Obj, Perm, Result,
    Saved,
};

/// How many times a save starts again when the queue changes under it.
const ATTEMPTS: usize = 5;

/// Metadata of a saved queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgMeta {
    #[serde(flatten)]
    pub perm: Perm,
    /// Capacity of the queue in bytes (msg_qbytes).
    pub qbytes: u64,
    /// The messages, oldest first; their texts are the payload, in this order.
    pub messages: Vec<MsgEntry>,
    /// Last sender and receiver, times of last send, receive and change (for
    /// information; the kernel sets them anew on restore).
    pub lspid: i32,
    pub lrpid: i32,
    pub stime: i64,
    pub rtime: i64,
    pub ctime: i64,
    /// When it was saved, seconds since the epoch.
    pub saved: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgEntry {
    /// The message type (> 0).
    pub mtype: i64,
    /// Length of the text in bytes.
    pub len: u64,
}

impl MsgMeta {
    /// Total bytes of text.
    pub fn bytes(&self) -> u64 {
        self.messages.iter().map(|m| m.len).sum()
    }

    pub(crate) fn validate(&self, payload_len: u64) -> std::result::Result<(), String> {
        if self.bytes() != payload_len {
            return Err(format!(
                "the messages hold {} bytes, the payload {payload_len}",
                self.bytes()
            ));
        }
        if let Some((i, m)) = self.messages.iter().enumerate().find(|(_, m)| m.mtype <= 0) {
            return Err(format!(
                "message {i} has type {} (must be positive)",
                m.mtype
            ));
        }
        Ok(())
    }

    pub(crate) fn check_limits(&self, l: &Limits) -> Option<String> {
        let (i, m) = self
            .messages
            .iter()
            .enumerate()
            .find(|(_, m)| m.len > l.msgmax)?;
        Some(format!(
            "message {i} holds {} bytes, more than the namespace allows (msgmax {})",
            m.len, l.msgmax
        ))
    }

    pub(crate) fn create(&self) -> Result<Created> {
        create_exact(Kind::Msg, &self.perm, |flags| {
            sys::msgget(self.perm.key, flags)
        })
    }

    /// Sends the messages of the payload, in order.
    pub(crate) fn fill(&self, c: &Created, payload: &mut Payload<'_>) -> Result<()> {
        let obj = c.obj();
        let err = |op| move |source| IpcError::Sys { obj, op, source };
        // Room for every message, even if the saved capacity was lowered after
        // they were sent (each message also counts one byte against msg_qbytes).
        let room = self
            .qbytes
            .max(self.bytes())
            .max(self.messages.len() as u64);
        let mut ds = sys::msg_stat(c.id()).map_err(err("read its state"))?;
        if ds.msg_qbytes < room {
            ds.msg_qbytes = room as _;
            sys::msg_set(c.id(), &ds).map_err(err("set its capacity"))?;
        }
        let largest = self.messages.iter().map(|m| m.len).max().unwrap_or(0) as usize;
        let mut text = vec![0u8; largest];
        let mut buf = sys::MsgBuf::new(largest);
        for m in &self.messages {
            let t = &mut text[..m.len as usize];
            payload.read_exact(t)?;
            sys::msg_send(c.id(), m.mtype, t, &mut buf).map_err(err("send a message"))?;
        }
        Ok(())
    }

    /// Sets owner, mode and capacity.
    pub(crate) fn finish(&self, c: &Created) -> Result<()> {
        let obj = c.obj();
        let err = |op| move |source| IpcError::Sys { obj, op, source };
        let mut ds = sys::msg_stat(c.id()).map_err(err("read its state"))?;
        self.perm.set_into(&mut ds.msg_perm);
        ds.msg_qbytes = self.qbytes as _;
        sys::msg_set(c.id(), &ds).map_err(err("set owner, mode and capacity"))
    }
}

fn msgmax() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/msgmax")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192)
}

/// A copy of a queue: its state and its messages (type, text), oldest first.
type QueueCopy = (libc::msqid_ds, Vec<(i64, Vec<u8>)>);

/// One consistent copy of the queue, or None if it changed while being copied.
fn copy_queue(id: i32) -> Result<Option<QueueCopy>> {
    let (obj, before) = stat_obj(Kind::Msg, id, sys::msg_stat, |d| d.msg_perm.__key)?;
    let cbytes = before.__msg_cbytes;
    // MSG_COPY copies at most msgmax bytes; a larger buffer only costs kernel memory.
    let mut buf = sys::MsgBuf::new(cbytes.min(msgmax()).max(1) as usize);
    let mut msgs = Vec::with_capacity(before.msg_qnum as usize);
    loop {
        match sys::msg_copy(id, msgs.len(), &mut buf) {
            Ok((mtype, n)) => msgs.push((mtype, buf.text(n).to_vec())),
            Err(Errno::ENOMSG) => break,
            Err(Errno::E2BIG) if (buf.capacity() as u64) < cbytes => {
                buf = sys::MsgBuf::new(cbytes as usize);
            }
            // A message that grew past what we knew of: the queue changed.
            Err(Errno::E2BIG) => return Ok(None),
            Err(Errno::EINVAL) if sys::msg_stat(id).is_ok() => {
                return Err(IpcError::Limit {
                    obj,
                    what: format!(
                        "message {} is larger than msgmax ({}), which MSG_COPY cannot copy: raise kernel.msgmax to save it",
                        msgs.len(),
                        msgmax()
                    ),
                });
            }
            Err(e) => return Err(stat_err(obj)(e)),
        }
    }
    let after = sys::msg_stat(id).map_err(stat_err(obj))?;
    let total: u64 = msgs.iter().map(|(_, t)| t.len() as u64).sum();
    let same = before.msg_stime == after.msg_stime
        && before.msg_rtime == after.msg_rtime
        && before.msg_ctime == after.msg_ctime
        && after.msg_qnum as usize == msgs.len()
        && after.__msg_cbytes == total
        && before.msg_qnum == after.msg_qnum
        && before.__msg_cbytes == after.__msg_cbytes;
    Ok(same.then_some((after, msgs)))
}

/// Saves queue `id` to `path`.
pub(crate) fn save(id: i32, path: &Path) -> Result<Saved> {
    let mut copy = None;
    for _ in 0..ATTEMPTS {
        copy = copy_queue(id)?;
        if copy.is_some() {
            break;
        }
    }
    let Some((ds, msgs)) = copy else {
        let key = sys::msg_stat(id).ok().map(|d| d.msg_perm.__key);
        return Err(IpcError::Busy {
            obj: Obj {
                kind: Kind::Msg,
                id,
                key,
            },
        });
    };
    let meta = MsgMeta {
        perm: Perm::from_ipc(&ds.msg_perm, id),
        qbytes: ds.msg_qbytes,
        messages: msgs
            .iter()
            .map(|(mtype, t)| MsgEntry {
                mtype: *mtype,
                len: t.len() as u64,
            })
            .collect(),
        lspid: ds.msg_lspid,
        lrpid: ds.msg_lrpid,
        stime: ds.msg_stime,
        rtime: ds.msg_rtime,
        ctime: ds.msg_ctime,
        saved: crate::registry::now(),
    };
    let body = serde_json::to_vec(&meta).expect("metadata always serializes");
    let payload_len = meta.bytes();
    let mut w = Writer::create(path, Kind::Msg, &body, payload_len)?;
    for (_, t) in &msgs {
        w.write(t)?;
    }
    let file_len = w.finish()?;
    Ok(Saved {
        kind: Kind::Msg,
        id,
        key: meta.perm.key,
        path: path.to_path_buf(),
        file_len,
        payload_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(lens: &[u64]) -> MsgMeta {
        MsgMeta {
            perm: Perm {
                key: 1,
                mode: 0o600,
                ..Default::default()
            },
            qbytes: 16384,
            messages: lens.iter().map(|&len| MsgEntry { mtype: 1, len }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_and_limits() {
        let m = meta(&[10, 20]);
        assert!(m.validate(30).is_ok());
        assert!(m.validate(29).is_err());
        let mut bad = m.clone();
        bad.messages[1].mtype = 0;
        assert!(bad.validate(30).unwrap_err().contains("type 0"));
        let mut l = crate::sysvipc::procfs::tests_limits();
        l.msgmax = 20;
        assert!(m.check_limits(&l).is_none());
        l.msgmax = 19;
        assert!(m
            .check_limits(&l)
            .unwrap()
            .contains("message 1 holds 20 bytes"));
        // Flattened perm: the JSON has key and id at the top level.
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["key"], 1);
        assert_eq!(j["messages"][1]["len"], 20);
    }
}
