//! cgroup v2 file names and parsing (`Documentation/admin-guide/cgroup-v2.rst`).

use std::path::Path;

use super::CpuMax;

pub const MEMORY_MAX: &str = "memory.max";
pub const CPU_WEIGHT: &str = "cpu.weight";
pub const CPU_MAX: &str = "cpu.max";

/// Value of `key` in a flat keyed file (`cgroup.events`, `cpu.stat`).
pub fn keyed(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// `cpu.max` is "QUOTA PERIOD" with QUOTA "max" when unlimited.
pub fn parse_cpu_max(s: &str) -> Option<Option<CpuMax>> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: u64 = it.next()?.parse().ok()?;
    if quota == "max" {
        return Some(None);
    }
    Some(Some(CpuMax {
        quota_us: quota.parse().ok()?,
        period_us: period,
    }))
}

/// Enables `wanted` controllers (those the parent offers) for the children of `dir`.
/// Failure is not fatal here: a limit that needs a missing controller reports it.
pub fn enable_controllers(dir: &Path, wanted: &[&str]) {
    let Ok(avail) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in avail.split_whitespace().filter(|c| wanted.contains(c)) {
        if enabled.split_whitespace().any(|e| e == c) {
            continue;
        }
        let file = dir.join("cgroup.subtree_control");
        if let Err(e) = crate::fsutil::write_control(&file, &format!("+{c}")) {
            log::warn!("cannot enable the {c} controller: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_files() {
        assert_eq!(keyed("populated 1\nfrozen 0\n", "frozen"), Some(0));
        assert_eq!(
            keyed("usage_usec 123\nuser_usec 100\n", "usage_usec"),
            Some(123)
        );
        assert_eq!(keyed("populated 1\n", "frozen"), None);
        assert_eq!(parse_cpu_max("max 100000\n"), Some(None));
        assert_eq!(
            parse_cpu_max("50000 100000\n"),
            Some(Some(CpuMax {
                quota_us: 50000,
                period_us: 100000
            }))
        );
        assert_eq!(parse_cpu_max("junk"), None);
    }
}
