//! The job session of a mapped user (seed D2.1.7 §2.3): its cgroup
//! `PARENT/aem_jobid_ID` with the configured controllers and limits, and — for the
//! seed's `disk` subsystem, which needed a patched kernel — a private /tmp: a new
//! mount namespace (unshare(2) CLONE_NEWNS) with a tmpfs(5) on /tmp limited in size
//! (`disk.max_usage_in_block`, 1 KiB blocks) and in inodes (`disk.max_usage_in_inode`,
//! files and directories the job may create).

use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

use super::config::Config;
use crate::cgroup::{CgroupError, Layout, Limits};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid job id '{0}': use 1 to 64 of A-Z a-z 0-9 - _ .")]
    JobId(String),
    #[error("job {job}: {source}")]
    Cgroup {
        job: String,
        #[source]
        source: CgroupError,
    },
    #[error("private /tmp: {what}: {source}")]
    Tmp {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("uid {uid}: cannot {what}: {source}")]
    Credentials {
        uid: u32,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

pub fn check_job_id(id: &str) -> Result<(), SessionError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SessionError::JobId(id.to_string()))
    }
}

/// The cgroup of job `id`: `PARENT/aem_jobid_ID`.
pub fn cgroup_name(cfg: &Config, id: &str) -> String {
    format!("{}/aem_jobid_{id}", cfg.cgroup_parent)
}

fn cg(job: &str) -> impl FnOnce(CgroupError) -> SessionError + '_ {
    move |source| SessionError::Cgroup {
        job: job.to_string(),
        source,
    }
}

/// Creates the job's cgroup with the configured limits and moves `pid` into it.
/// Returns its name, or None when `UseCgroups` is off.
pub fn open_cgroup(cfg: &Config, id: &str, pid: i32) -> Result<Option<String>, SessionError> {
    check_job_id(id)?;
    if !cfg.use_cgroups {
        return Ok(None);
    }
    let name = cgroup_name(cfg, id);
    let ctl = cfg.controllers();
    let ctl: Vec<&str> = ctl.iter().map(String::as_str).collect();
    let layout = Layout::detect().map_err(cg(id))?;
    let g = layout.group_with(&name, &ctl).map_err(cg(id))?;
    g.create().map_err(cg(id))?;
    let limits = Limits {
        memory_max: cfg.memory_limit,
        cpu_weight: cfg.cpu_weight,
        pids_max: cfg.pids_max,
        ..Limits::default()
    };
    let r = g.set_limits(&limits).and_then(|_| g.attach(pid));
    if let Err(e) = r {
        let _ = g.remove();
        return Err(cg(id)(e));
    }
    Ok(Some(name))
}

/// Kills what is left of the job and removes its cgroup. `keep_pid` (the process
/// that closes the session) is moved back to the parent group first.
pub fn close_cgroup(cfg: &Config, id: &str, keep_pid: Option<i32>) -> Result<(), SessionError> {
    check_job_id(id)?;
    if !cfg.use_cgroups {
        return Ok(());
    }
    let ctl = cfg.controllers();
    let ctl: Vec<&str> = ctl.iter().map(String::as_str).collect();
    let layout = Layout::detect().map_err(cg(id))?;
    let g = layout
        .group_with(&cgroup_name(cfg, id), &ctl)
        .map_err(cg(id))?;
    if let Some(pid) = keep_pid.filter(|&p| g.contains(p)) {
        let parent = layout
            .group_with(&cfg.cgroup_parent, &ctl)
            .map_err(cg(id))?;
        parent.attach(pid).map_err(cg(id))?;
    }
    g.destroy(Duration::from_secs(10)).map_err(cg(id))
}

/// Gives the calling process a private /tmp (a tmpfs) in a new mount namespace,
/// limited to `blocks` KiB and `inodes` files. Call it in the job's process before
/// it drops its privileges.
pub fn private_tmp(blocks: Option<u64>, inodes: Option<u64>) -> Result<(), SessionError> {
    let e = |what| move |source| SessionError::Tmp { what, source };
    unshare(CloneFlags::CLONE_NEWNS).map_err(e("unshare the mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(e("make / a slave mount"))?;
    let mut opts = String::from("mode=1777");
    if let Some(b) = blocks {
        opts.push_str(&format!(",size={}k", b.max(1)));
    }
    if let Some(i) = inodes {
        // The root directory of the tmpfs takes one inode itself.
        opts.push_str(&format!(",nr_inodes={}", i + 1));
    }
    mount(
        Some("xos-job-tmp"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(e("mount tmpfs on /tmp"))
}

/// Drops the calling process to `uid`, primary `gids[0]` and all of `gids`.
pub fn become_user(uid: u32, gids: &[u32]) -> Result<(), SessionError> {
    let e = |what| move |source| SessionError::Credentials { uid, what, source };
    let groups: Vec<Gid> = gids.iter().map(|&g| Gid::from_raw(g)).collect();
    setgroups(&groups).map_err(e("set groups"))?;
    setgid(Gid::from_raw(gids.first().copied().unwrap_or(uid))).map_err(e("set gid"))?;
    setuid(Uid::from_raw(uid)).map_err(e("set uid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        for ok in ["123", "job-1.a_b"] {
            assert!(check_job_id(ok).is_ok());
        }
        for bad in ["", "..", "a/b", "x y", &"1".repeat(65)] {
            assert!(check_job_id(bad).is_err(), "{bad:?}");
        }
        let c = Config::default();
        assert_eq!(cgroup_name(&c, "123"), "xos/aem_jobid_123");
    }
}
