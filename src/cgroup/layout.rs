//! Which cgroup hierarchies the host has, read from `/proc/self/mountinfo`
//! (proc(5), "mountinfo").

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{validate_name, CgroupError, Group, GroupDir, Result, DEFAULT_CONTROLLERS};
use crate::fsutil;

/// cgroup version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    V1,
    V2,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    pub version: Version,
    pub mount: PathBuf,
    /// v1: the controllers bound to it (`name=…` hierarchies have none);
    /// v2: the controllers listed in its root `cgroup.controllers`.
    pub controllers: Vec<String>,
}

/// How the host arranges its hierarchies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// Only v1 controller hierarchies.
    V1,
    /// One unified v2 hierarchy.
    V2,
    /// v1 controller hierarchies plus a v2 hierarchy (usually with no controllers).
    Hybrid,
}

impl std::fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayoutKind::V1 => "v1",
            LayoutKind::V2 => "v2",
            LayoutKind::Hybrid => "hybrid",
        })
    }
}

/// The set of hierarchies a group can be created in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    hierarchies: Vec<Hierarchy>,
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text into cgroup hierarchies (v2 controllers left empty).
/// The first mount of each hierarchy wins; later bind mounts are ignored.
pub fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < sep + 4 || sep < 5 {
            continue;
        }
        let mount = PathBuf::from(unescape(fields[4]));
        let fstype = fields[sep + 1];
        let opts = fields[sep + 3];
        let h = match fstype {
            "cgroup2" => Hierarchy {
                version: Version::V2,
                mount,
                controllers: Vec::new(),
            },
            "cgroup" => {
                let known = [
                    "cpu",
                    "cpuacct",
                    "cpuset",
                    "memory",
                    "devices",
                    "freezer",
                    "net_cls",
                    "blkio",
                    "perf_event",
                    "net_prio",
                    "hugetlb",
                    "pids",
                    "rdma",
                    "misc",
                ];
                let controllers: Vec<String> = opts
                    .split(',')
                    .filter(|o| known.contains(o))
                    .map(str::to_string)
                    .collect();
                Hierarchy {
                    version: Version::V1,
                    mount,
                    controllers,
                }
            }
            _ => continue,
        };
        let dup = out.iter().any(|o| {
            o.version == h.version && (h.version == Version::V2 || o.controllers == h.controllers)
        });
        // Named v1 hierarchies (name=systemd) carry no controller: a job has no use for them.
        let named_only = h.version == Version::V1 && h.controllers.is_empty();
        if !dup && !named_only {
            out.push(h);
        }
    }
    out
}

impl Layout {
    /// Reads the layout of the calling process's mount namespace.
    pub fn detect() -> Result<Layout> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fsutil::read_string(path).map_err(|e| CgroupError::Io {
            group: String::new(),
            source: e,
        })?;
        let mut hs = parse_mountinfo(&text);
        for h in hs.iter_mut().filter(|h| h.version == Version::V2) {
            h.controllers = read_v2_controllers(&h.mount);
        }
        if hs.is_empty() {
            return Err(CgroupError::NoCgroupFs(path.display().to_string()));
        }
        Ok(Layout { hierarchies: hs })
    }

    /// A layout made of one v2 hierarchy mounted at `mount`.
    pub fn v2(mount: impl Into<PathBuf>) -> Layout {
        let mount = mount.into();
        let controllers = read_v2_controllers(&mount);
        Layout {
            hierarchies: vec![Hierarchy {
                version: Version::V2,
                mount,
                controllers,
            }],
        }
    }

    /// A layout made of the given hierarchies (fixtures, or a chosen subset).
    pub fn from_hierarchies(hierarchies: Vec<Hierarchy>) -> Layout {
        Layout { hierarchies }
    }

    /// The layout keeping only its v1 hierarchies, if it has any.
    pub fn v1_only(&self) -> Option<Layout> {
        let hs: Vec<Hierarchy> = self
            .hierarchies
            .iter()
            .filter(|h| h.version == Version::V1)
            .cloned()
            .collect();
        (!hs.is_empty()).then_some(Layout { hierarchies: hs })
    }

    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    pub fn kind(&self) -> LayoutKind {
        let v1 = self.hierarchies.iter().any(|h| h.version == Version::V1);
        let v2 = self.hierarchies.iter().any(|h| h.version == Version::V2);
        match (v1, v2) {
            (true, true) => LayoutKind::Hybrid,
            (true, false) => LayoutKind::V1,
            _ => LayoutKind::V2,
        }
    }

    /// The group `name` with the default controllers.
    pub fn group(&self, name: &str) -> Result<Group> {
        self.group_with(name, DEFAULT_CONTROLLERS)
    }

    /// The group `name` in the v1 hierarchies carrying any of `controllers` (the
    /// freezer is always added, a job must be freezable) and in the v2 hierarchy.
    pub fn group_with(&self, name: &str, controllers: &[&str]) -> Result<Group> {
        validate_name(name)?;
        let dirs = self
            .hierarchies
            .iter()
            .filter(|h| {
                h.version == Version::V2
                    || h.controllers
                        .iter()
                        .any(|c| c == "freezer" || controllers.contains(&c.as_str()))
            })
            .map(|h| GroupDir {
                version: h.version,
                mount: h.mount.clone(),
                controllers: h.controllers.clone(),
            })
            .collect();
        Ok(Group {
            name: name.to_string(),
            dirs,
        })
    }
}

fn read_v2_controllers(mount: &Path) -> Vec<String> {
    std::fs::read_to_string(mount.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
35 30 0:31 / /sys/fs/cgroup/my\\040dir rw - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_mountinfo() {
        let hs = parse_mountinfo(HYBRID);
        assert_eq!(hs.len(), 4, "systemd's named hierarchy is skipped: {hs:?}");
        assert_eq!(hs[0].version, Version::V2);
        assert_eq!(hs[1].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(hs[3].mount, PathBuf::from("/sys/fs/cgroup/my dir"));
        assert_eq!(Layout::from_hierarchies(hs).kind(), LayoutKind::Hybrid);
    }

    #[test]
    fn pure_layouts() {
        let v2 = "40 30 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                  41 30 0:27 / /mnt/again rw - cgroup2 cgroup2 rw\n";
        let hs = parse_mountinfo(v2);
        assert_eq!(
            hs.len(),
            1,
            "a second mount of the v2 hierarchy is the same one"
        );
        assert_eq!(Layout::from_hierarchies(hs).kind(), LayoutKind::V2);
        let v1 = "33 30 0:29 / /cg/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(
            Layout::from_hierarchies(parse_mountinfo(v1)).kind(),
            LayoutKind::V1
        );
    }

    #[test]
    fn group_selects_hierarchies() {
        let l = Layout::from_hierarchies(parse_mountinfo(HYBRID));
        let g = l.group_with("xos/j1", &["memory"]).unwrap();
        let paths = g.paths();
        assert!(paths.contains(&PathBuf::from("/sys/fs/cgroup/unified/xos/j1")));
        assert!(paths.contains(&PathBuf::from("/sys/fs/cgroup/freezer/xos/j1")));
        assert!(paths.contains(&PathBuf::from("/sys/fs/cgroup/my dir/xos/j1")));
        assert!(!paths
            .iter()
            .any(|p| p.starts_with("/sys/fs/cgroup/cpu,cpuacct")));
        for bad in ["", "/abs", "a/../b", "a//b", "."] {
            assert!(l.group(bad).is_err(), "{bad:?} accepted");
        }
    }
}
