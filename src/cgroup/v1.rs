//! cgroup v1 file names and value conversions
//! (`Documentation/admin-guide/cgroup-v1/{memory,cpusets,freezer-subsystem}.rst`).

use super::FreezerState;

pub const MEMORY_MAX: &str = "memory.limit_in_bytes";
pub const CPU_SHARES: &str = "cpu.shares";
pub const CPU_QUOTA: &str = "cpu.cfs_quota_us";
pub const CPU_PERIOD: &str = "cpu.cfs_period_us";
pub const FREEZER_STATE: &str = "freezer.state";

/// v1 reports "no memory limit" as PAGE_COUNTER_MAX pages (close to i64::MAX).
pub fn limit(v: u64) -> Option<u64> {
    (v < (1u64 << 62)).then_some(v)
}

/// v2 weight (1..10000, default 100) to v1 shares (2..262144, default 1024).
pub fn weight_to_shares(w: u64) -> u64 {
    (w * 1024 / 100).clamp(2, 262_144)
}

/// v1 shares back to a v2 weight, the inverse of [`weight_to_shares`].
pub fn shares_to_weight(s: u64) -> u64 {
    ((s * 100 + 512) / 1024).clamp(1, 10_000)
}

pub fn parse_freezer(s: &str) -> Option<FreezerState> {
    match s.trim() {
        "THAWED" => Some(FreezerState::Thawed),
        "FREEZING" => Some(FreezerState::Freezing),
        "FROZEN" => Some(FreezerState::Frozen),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_shares_round_trip() {
        assert_eq!(weight_to_shares(100), 1024);
        for w in [1, 50, 100, 250, 1000, 2560] {
            assert_eq!(shares_to_weight(weight_to_shares(w)), w.max(1));
        }
        assert_eq!(weight_to_shares(10_000), 102_400);
        assert_eq!(limit(9_223_372_036_854_771_712), None);
        assert_eq!(limit(1 << 30), Some(1 << 30));
    }
}
