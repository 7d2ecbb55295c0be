//! The configuration of the grid checkpointing service, read by `xcheckpoint`
//! and `xrestart`: `/etc/xos/gcp.conf` (`--config`, `$XOS_GCP_CONFIG`), one
//! `Key value` per line, `#` starts a comment, keys are case-insensitive.
//!
//! - `CheckpointDir DIR`: the directory of the jobs' versions (may be shared);
//! - `Criu PATH`: the criu binary, when it is not on PATH;
//! - `TemplateDir DIR`: root filesystem templates of containers (xos-loader
//!   `--template`; the seed's /var/lib/vz/template/cache).
//!
//! The command line and the environment come first; a missing file at the
//! default path gives the defaults.

use std::path::{Path, PathBuf};

use super::criu::{Criu, CRIU_ENV};
use super::meta::DEFAULT_CHECKPOINT_DIR;
use crate::vo::config::{entries, read_config_text, ConfigError};

/// The configuration file read when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/xos/gcp.conf";

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "XOS_GCP_CONFIG";

/// The keys of the file; `None`: not set there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcpConfig {
    /// Where it was read from (None: built-in defaults).
    pub path: Option<PathBuf>,
    pub checkpoint_dir: Option<PathBuf>,
    pub criu: Option<PathBuf>,
    pub template_dir: Option<PathBuf>,
}

impl GcpConfig {
    /// Reads `path`; a missing file gives the defaults unless `must_exist`.
    pub fn load(path: &Path, must_exist: bool) -> Result<GcpConfig, ConfigError> {
        match read_config_text(path, must_exist)? {
            Some(text) => GcpConfig::parse(&text, path),
            None => Ok(GcpConfig::default()),
        }
    }

    /// Parses the text of a configuration file read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<GcpConfig, ConfigError> {
        let mut c = GcpConfig {
            path: Some(path.to_path_buf()),
            ..GcpConfig::default()
        };
        for (n, key, value) in entries(text) {
            let err = |msg: String| ConfigError::Line {
                path: path.to_path_buf(),
                line: n,
                msg,
            };
            if value.is_empty() {
                return Err(err(format!("{key}: no value")));
            }
            match key.to_ascii_lowercase().as_str() {
                "checkpointdir" => c.checkpoint_dir = Some(PathBuf::from(value)),
                "criu" => c.criu = Some(PathBuf::from(value)),
                "templatedir" => c.template_dir = Some(PathBuf::from(value)),
                _ => return Err(err(format!("unknown key '{key}'"))),
            }
        }
        Ok(c)
    }

    /// The file named by `--config` or `$XOS_GCP_CONFIG` (which must exist),
    /// else the default one (which may be missing).
    pub fn load_named(named: Option<&Path>) -> Result<GcpConfig, ConfigError> {
        match named {
            Some(p) => GcpConfig::load(p, true),
            None => GcpConfig::load(Path::new(DEFAULT_CONFIG), false),
        }
    }

    /// The checkpoint directory: `arg` (command line or environment), else the
    /// `CheckpointDir` key, else the default.
    pub fn checkpoint_dir(&self, arg: Option<PathBuf>) -> PathBuf {
        arg.or_else(|| self.checkpoint_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CHECKPOINT_DIR))
    }

    /// The directory of container templates: `arg` (command line or
    /// environment), else the `TemplateDir` key, else the default.
    pub fn template_dir(&self, arg: Option<PathBuf>) -> PathBuf {
        arg.or_else(|| self.template_dir.clone())
            .unwrap_or_else(|| PathBuf::from(crate::container::DEFAULT_TEMPLATE_DIR))
    }

    /// What xcheckpoint and xrestart work with: the configuration named by
    /// `config` (see [`GcpConfig::load_named`]), then the checkpoint directory
    /// and the backends, the command line's `checkpoint_dir` and `criu` first.
    pub fn resolve(
        config: Option<&Path>,
        checkpoint_dir: Option<PathBuf>,
        criu: Option<PathBuf>,
    ) -> Result<(PathBuf, super::Backends), ConfigError> {
        let cfg = GcpConfig::load_named(config)?;
        let backends = super::Backends {
            criu: cfg.criu(criu),
            ..super::Backends::default()
        };
        Ok((cfg.checkpoint_dir(checkpoint_dir), backends))
    }

    /// The CRIU backend: `arg` (`--criu` or `$XOS_CRIU`), else the `Criu` key,
    /// else criu on PATH.
    pub fn criu(&self, arg: Option<PathBuf>) -> Criu {
        match (arg, &self.criu, &self.path) {
            (Some(b), _, _) => Criu {
                binary: Some(b),
                origin: Some(format!("--criu or ${CRIU_ENV}")),
            },
            (None, Some(b), Some(p)) => Criu {
                binary: Some(b.clone()),
                origin: Some(format!("Criu key of {}", p.display())),
            },
            _ => Criu::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys() {
        let p = Path::new("/etc/xos/gcp.conf");
        let c = GcpConfig::parse(
            "# grid checkpointing\nCheckpointDir /shared/ckpt\ncriu  /opt/criu/sbin/criu # 4.2\nTemplateDir /srv/tpl\n",
            p,
        )
        .unwrap();
        assert_eq!(c.template_dir(None), Path::new("/srv/tpl"));
        assert_eq!(
            GcpConfig::default().template_dir(None),
            Path::new(crate::container::DEFAULT_TEMPLATE_DIR)
        );
        assert_eq!(c.checkpoint_dir.as_deref(), Some(Path::new("/shared/ckpt")));
        assert_eq!(c.criu.as_deref(), Some(Path::new("/opt/criu/sbin/criu")));
        let e = GcpConfig::parse("Criu\n", p).unwrap_err().to_string();
        assert_eq!(e, "/etc/xos/gcp.conf:1: Criu: no value");
        let e = GcpConfig::parse("\nCriuPath /x\n", p)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/etc/xos/gcp.conf:2: unknown key 'CriuPath'");
        assert_eq!(
            GcpConfig::load(Path::new("/nonexistent/gcp.conf"), false).unwrap(),
            GcpConfig::default()
        );
        let criu = c.criu(None);
        assert_eq!(
            criu.origin.as_deref(),
            Some("Criu key of /etc/xos/gcp.conf")
        );
        let why = criu.find().unwrap_err();
        assert_eq!(
            why,
            "criu /opt/criu/sbin/criu (Criu key of /etc/xos/gcp.conf): \
             No such file or directory (os error 2)"
        );
        let why = GcpConfig::parse("Criu /etc/passwd\n", p)
            .unwrap()
            .criu(None)
            .find()
            .unwrap_err();
        assert!(why.ends_with("gcp.conf): not an executable file"), "{why}");
        assert_eq!(
            c.checkpoint_dir(Some("/x".into())),
            PathBuf::from("/x"),
            "the command line comes first"
        );
        assert_eq!(
            GcpConfig::default().checkpoint_dir(None),
            PathBuf::from(DEFAULT_CHECKPOINT_DIR)
        );
    }
}
