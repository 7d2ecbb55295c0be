//! VO-level and node-level policy: allowed VOs and roles, banned users. A refusal
//! is a sentence that says why; it reaches the log and the PAM conversation.

use super::config::Config;

/// Who is asking, as far as policy is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub subject: &'a str,
    pub global_id: &'a str,
    pub vo: &'a str,
    pub role: &'a str,
}

/// Checks `who` against the configuration and the bans added at run time.
pub fn check(cfg: &Config, bans: &[String], who: Subject<'_>) -> Result<(), String> {
    if let Some(b) = cfg
        .ban
        .iter()
        .chain(bans.iter())
        .find(|b| *b == who.subject || *b == who.global_id)
    {
        return Err(format!(
            "user {} ({}) is banned ({b})",
            who.global_id, who.subject
        ));
    }
    if !cfg.allow_vo.is_empty() && !cfg.allow_vo.iter().any(|v| v == who.vo) {
        return Err(format!(
            "VO {} is not allowed on this node (allowed: {})",
            who.vo,
            cfg.allow_vo.join(", ")
        ));
    }
    if !cfg.allow_role.is_empty() && !cfg.allow_role.iter().any(|r| r == who.role) {
        return Err(format!(
            "role {} is not allowed on this node (allowed: {})",
            who.role,
            cfg.allow_role.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_why() {
        let cfg = Config {
            allow_vo: vec!["a".into()],
            allow_role: vec!["member".into()],
            ban: vec!["/O=a/CN=evil".into()],
            ..Config::default()
        };
        let who = Subject {
            subject: "/O=a/CN=alice",
            global_id: "g1",
            vo: "a",
            role: "member",
        };
        assert!(check(&cfg, &[], who).is_ok());
        let e = check(&cfg, &["g1".into()], who).unwrap_err();
        assert!(e.contains("banned"), "{e}");
        let e = check(&cfg, &[], Subject { vo: "b", ..who }).unwrap_err();
        assert!(e.contains("VO b is not allowed"), "{e}");
        let e = check(
            &cfg,
            &[],
            Subject {
                role: "admin",
                ..who
            },
        )
        .unwrap_err();
        assert!(e.contains("role admin"), "{e}");
        let e = check(
            &cfg,
            &[],
            Subject {
                subject: "/O=a/CN=evil",
                ..who
            },
        )
        .unwrap_err();
        assert!(e.contains("banned"), "{e}");
    }
}
