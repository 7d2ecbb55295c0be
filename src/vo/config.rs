//! The configuration of xos-amsd and the PAM session: `/etc/xos/nss_pam/pam_xos.conf`,
//! one `Key value` per line, `#` starts a comment, keys are case-insensitive. The
//! seed's keys `UseCgroups` and `Subsystems` keep their meaning. Every key has a
//! default, so the daemon starts without a file. See xos-amsd(1).

use std::path::{Path, PathBuf};

use crate::fsutil::{self, PathError};

/// The configuration file read when none is named.
pub const DEFAULT_PATH: &str = xos_proto::DEFAULT_CONFIG;

/// A uid or gid range, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
    pub fn iter(&self) -> impl Iterator<Item = u32> {
        self.first..=self.last
    }
}

/// The accounts and groups of one VO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoPool {
    pub vo: String,
    pub uids: IdRange,
    pub gids: IdRange,
}

/// A static rule: this grid user is always this local account (from /etc/passwd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRule {
    pub vo: String,
    pub global_id: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (None: built-in defaults).
    pub path: Option<PathBuf>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// The hashed CA directory (`CACertPath`).
    pub ca_path: PathBuf,
    pub use_cgroups: bool,
    pub subsystems: Vec<String>,
    pub cgroup_parent: String,
    pub memory_limit: Option<u64>,
    pub cpu_weight: Option<u64>,
    pub pids_max: Option<u64>,
    /// `disk.max_usage_in_block`: 1 KiB blocks of the job's private /tmp.
    pub disk_blocks: Option<u64>,
    /// `disk.max_usage_in_inode`: files and directories in the job's private /tmp.
    pub disk_inodes: Option<u64>,
    pub pools: Vec<VoPool>,
    pub statics: Vec<StaticRule>,
    /// Pattern of user names: `%g` global id, `%v` VO, `%u` uid.
    pub user_name: String,
    /// Pattern of group names: `%v` VO, `%n` VO group.
    pub group_name: String,
    /// Home directory pattern (`%u` uid, `%v` VO).
    pub home: String,
    pub shell: String,
    /// Seconds a lease lives after its last use.
    pub lease_idle: u64,
    /// Allowed VOs and roles (empty: all).
    pub allow_vo: Vec<String>,
    pub allow_role: Vec<String>,
    /// Banned users: subjects (`/O=../CN=..`) or global ids.
    pub ban: Vec<String>,
    /// Leased accounts per VO at most (0: the pool size).
    pub max_leases_per_vo: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            path: None,
            socket: PathBuf::from(xos_proto::DEFAULT_SOCKET),
            state_dir: PathBuf::from("/var/lib/xos/amsd"),
            ca_path: PathBuf::from("/etc/xos/nss_pam/ca"),
            use_cgroups: false,
            subsystems: Vec::new(),
            cgroup_parent: "xos".into(),
            memory_limit: None,
            cpu_weight: None,
            pids_max: None,
            disk_blocks: None,
            disk_inodes: None,
            pools: Vec::new(),
            statics: Vec::new(),
            user_name: "/CN=%g@%v".into(),
            group_name: "%v.%n".into(),
            home: "/tmp".into(),
            shell: "/bin/sh".into(),
            lease_idle: 7 * 86_400,
            allow_vo: Vec::new(),
            allow_role: Vec::new(),
            ban: Vec::new(),
            max_leases_per_vo: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{}:{line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

/// The `Key value` entries of a configuration text as (line number, key,
/// value), without `#` comments and blank lines; the value is empty when the
/// line has none.
pub fn entries(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return None;
        }
        let (key, value) = line
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .unwrap_or((line, ""));
        Some((i + 1, key, value))
    })
}

/// The text of a configuration file; None for a missing one unless it
/// `must_exist`.
pub fn read_config_text(path: &Path, must_exist: bool) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(None),
        Err(e) => Err(PathError::new("read", path, e).into()),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn parse_range(v: &str) -> Option<IdRange> {
    let (a, b) = v.split_once('-')?;
    let (first, last) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (first <= last && first > 0).then_some(IdRange { first, last })
}

fn list(v: &str) -> Vec<String> {
    v.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "*")
        .map(str::to_string)
        .collect()
}

impl Config {
    /// Reads `path`; a missing file at the default path gives the defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        match read_config_text(path, must_exist)? {
            Some(text) => Config::parse(&text, path),
            None => Ok(Config::default()),
        }
    }

    /// Parses the text of a configuration file read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut c = Config {
            path: Some(path.to_path_buf()),
            ..Config::default()
        };
        // (VO, range, line) of Pool and GroupPool lines, paired at the end.
        let mut gid_pools: Vec<(String, IdRange, usize)> = Vec::new();
        let mut uid_pools: Vec<(String, IdRange, usize)> = Vec::new();
        for (n, key, value) in entries(text) {
            let err = |msg: String| ConfigError::Line {
                path: path.to_path_buf(),
                line: n,
                msg,
            };
            let num = |v: &str| -> Result<u64, ConfigError> {
                v.parse()
                    .map_err(|_| err(format!("{key}: '{v}' is not a number")))
            };
            let size = |v: &str| -> Result<u64, ConfigError> {
                parse_size(v).ok_or_else(|| err(format!("{key}: '{v}' is not a size")))
            };
            match key.to_ascii_lowercase().as_str() {
                "socket" => c.socket = PathBuf::from(value),
                "statedir" => c.state_dir = PathBuf::from(value),
                "cacertpath" | "capath" => c.ca_path = PathBuf::from(value),
                "usecgroups" => {
                    c.use_cgroups = parse_bool(value)
                        .ok_or_else(|| err(format!("UseCgroups: '{value}' is not yes or no")))?
                }
                "subsystems" => c.subsystems = list(value),
                "cgroupparent" => c.cgroup_parent = value.to_string(),
                "memorylimit" | "memory.limit_in_bytes" => c.memory_limit = Some(size(value)?),
                "cpuweight" => c.cpu_weight = Some(num(value)?),
                "pidsmax" | "pids.max" => c.pids_max = Some(num(value)?),
                "disk.max_usage_in_block" => c.disk_blocks = Some(num(value)?),
                "disk.max_usage_in_inode" => c.disk_inodes = Some(num(value)?),
                "pool" | "grouppool" => {
                    let mut it = value.split_whitespace();
                    let (Some(vo), Some(r), None) = (it.next(), it.next(), it.next()) else {
                        return Err(err(format!("{key}: expected '{key} VO FIRST-LAST'")));
                    };
                    let r = parse_range(r)
                        .ok_or_else(|| err(format!("{key}: '{r}' is not a range FIRST-LAST")))?;
                    if key.eq_ignore_ascii_case("pool") {
                        uid_pools.push((vo.to_string(), r, n));
                    } else {
                        gid_pools.push((vo.to_string(), r, n));
                    }
                }
                "staticmap" => {
                    let mut it = value.split_whitespace();
                    let (Some(vo), Some(id), Some(user), None) =
                        (it.next(), it.next(), it.next(), it.next())
                    else {
                        return Err(err(
                            "StaticMap: expected 'StaticMap VO GLOBALID USER'".into()
                        ));
                    };
                    c.statics.push(StaticRule {
                        vo: vo.into(),
                        global_id: id.into(),
                        user: user.into(),
                    });
                }
                "username" => c.user_name = value.to_string(),
                "groupname" => c.group_name = value.to_string(),
                "home" => c.home = value.to_string(),
                "shell" => c.shell = value.to_string(),
                "leaseidle" => c.lease_idle = num(value)?,
                "allowvo" => c.allow_vo = list(value),
                "allowrole" => c.allow_role = list(value),
                "banuser" => c.ban.push(value.to_string()),
                "maxleasespervo" => c.max_leases_per_vo = num(value)? as usize,
                _ => return Err(err(format!("unknown key '{key}'"))),
            }
        }
        let unpaired = |line, msg| ConfigError::Line {
            path: path.to_path_buf(),
            line,
            msg,
        };
        for (vo, _, line) in &gid_pools {
            if !uid_pools.iter().any(|(v, _, _)| v == vo) {
                return Err(unpaired(
                    *line,
                    format!("GroupPool {vo} has no Pool {vo} FIRST-LAST"),
                ));
            }
        }
        for (vo, uids, line) in uid_pools {
            let Some(gids) = gid_pools
                .iter()
                .find(|(v, _, _)| *v == vo)
                .map(|(_, r, _)| *r)
            else {
                return Err(unpaired(
                    line,
                    format!("Pool {vo} has no GroupPool {vo} FIRST-LAST"),
                ));
            };
            c.pools.push(VoPool { vo, uids, gids });
        }
        Ok(c)
    }

    pub fn pool(&self, vo: &str) -> Option<&VoPool> {
        self.pools.iter().find(|p| p.vo == vo)
    }

    /// The cgroup controllers of `Subsystems` (`disk` is the private /tmp instead).
    pub fn controllers(&self) -> Vec<String> {
        self.subsystems
            .iter()
            .filter(|s| !matches!(s.as_str(), "disk" | "ns" | "net"))
            .cloned()
            .collect()
    }

    pub fn private_tmp(&self) -> bool {
        self.subsystems.iter().any(|s| s == "disk")
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// Expands a name pattern.
pub fn expand(pattern: &str, vars: &[(char, &str)]) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(k) => match vars.iter().find(|(v, _)| *v == k) {
                Some((_, val)) => out.push_str(val),
                None => {
                    out.push('%');
                    out.push(k);
                }
            },
            None => out.push('%'),
        }
    }
    out
}

/// Reads an optional file as the defaults would: used by tests and admin tools.
pub fn read_text(path: &Path) -> Result<String, PathError> {
    fsutil::read_string(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seed_keys() {
        let text = "# pam_xos.conf\nUseCgroups yes\nSubsystems cpuacct,memory,disk\n\
                    disk.max_usage_in_inode 4\nPool testbed0 5000-5009\n\
                    GroupPool testbed0 6000-6009\nAllowVO testbed0, other\nBanUser evil\n\
                    MemoryLimit 64M\n";
        let c = Config::parse(text, Path::new("t.conf")).unwrap();
        assert!(c.use_cgroups);
        assert_eq!(c.controllers(), vec!["cpuacct", "memory"]);
        assert!(c.private_tmp());
        assert_eq!(c.disk_inodes, Some(4));
        assert_eq!(c.memory_limit, Some(64 << 20));
        assert_eq!(c.pool("testbed0").unwrap().uids.last, 5009);
        assert_eq!(c.allow_vo, vec!["testbed0", "other"]);
        let e = Config::parse("UseCgroups maybe\n", Path::new("t.conf"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.conf:1: UseCgroups: 'maybe' is not yes or no");
        assert!(Config::parse("Frobnicate 1\n", Path::new("t")).is_err());
        // A pool without its group pool is reported at its own line.
        let e = Config::parse("Shell /bin/sh\nPool a 5-9\n", Path::new("t"));
        assert_eq!(
            e.unwrap_err().to_string(),
            "t:2: Pool a has no GroupPool a FIRST-LAST"
        );
        let e = Config::parse("\nGroupPool b 5-9\n", Path::new("t"));
        assert_eq!(
            e.unwrap_err().to_string(),
            "t:2: GroupPool b has no Pool b FIRST-LAST"
        );
        let d = Config::load(Path::new("/nonexistent/xos.conf"), false).unwrap();
        assert_eq!(d, Config::default());
        assert!(Config::load(Path::new("/nonexistent/xos.conf"), true).is_err());
    }

    #[test]
    fn patterns() {
        assert_eq!(
            expand("/CN=%g@%v", &[('g', "62a5"), ('v', "testbed0")]),
            "/CN=62a5@testbed0"
        );
        assert_eq!(expand("%v.%n %% %x", &[('v', "a"), ('n', "b")]), "a.b % %x");
    }
}
