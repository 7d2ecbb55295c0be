//! What every applet shares: error reporting, logging, option parsers, formatting.

use std::fmt::Write;

/// Version line, with the OpenSSL built into the binary.
pub fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            openssl::version::version()
        )
    })
}

/// Logging through env_logger, quiet unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    // Times to the microsecond once someone asks for logs: they are read to
    // see where an operation spends its time.
    let asked = std::env::var_os("RUST_LOG").is_some();
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    if asked {
        b.format_timestamp_micros();
    } else {
        b.format_timestamp(None);
    }
    b.init();
}

/// One line: the error and the causes its message does not already contain.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            let _ = write!(s, ": {t}");
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

/// Prints `applet: error` on stderr and returns exit status 1.
pub fn fail<E: Into<anyhow::Error>>(applet: &str, err: E) -> i32 {
    let err: anyhow::Error = err.into();
    eprintln!("{applet}: {}", one_line(err.as_ref()));
    1
}

/// Makes a write to a closed stdout (`checkpoint --list | head -1`) end the applet
/// as it ends coreutils: killed by SIGPIPE if the caller left that signal at its
/// default, else `APPLET: write error: Broken pipe` and status 1; never a panic.
/// The Rust runtime ignores SIGPIPE, so `println!` panics on EPIPE instead; the
/// signal is not simply restored for the whole process because the daemon and the
/// supervisors write to sockets and pipes whose peer may go away.
pub fn quiet_on_closed_stdout(applet: &'static str) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let epipe = format!("(os error {})", libc::EPIPE);
        let p = info.payload();
        let broken = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .is_some_and(|m| m.starts_with("failed printing to stdout") && m.ends_with(&epipe));
        if !broken {
            return default_hook(info);
        }
        closed_stdout(applet)
    }));
}

/// Ends the applet after a write to a closed stdout, as coreutils ends: by SIGPIPE
/// if the caller left it at its default, else with one line and status 1.
pub fn closed_stdout(applet: &str) -> ! {
    use nix::sys::signal::Signal::SIGPIPE;
    if !xos::process::caller_ignores(SIGPIPE) && xos::process::caller_disposition(SIGPIPE).is_ok() {
        let _ = nix::sys::signal::raise(SIGPIPE);
    }
    eprintln!("{applet}: write error: Broken pipe");
    std::process::exit(1);
}

/// Prints a clap error (or the help/version it carries) and returns its status.
pub fn clap_exit(e: clap::Error) -> ! {
    e.exit()
}

/// An applet's options from its command line; on an error, or for --help and
/// --version, prints what clap says and exits with its status.
pub fn parse_args<A: clap::Parser>(args: Vec<std::ffi::OsString>) -> A {
    A::try_parse_from(args).unwrap_or_else(|e| clap_exit(e))
}

/// The lines of a table whose columns are as wide as their widest cell, separated
/// by two spaces; columns marked in `right` (numbers) are aligned right. The last
/// column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> Vec<String> {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            let w = if last && !right.contains(&i) {
                0
            } else {
                widths[i]
            };
            if right.contains(&i) {
                let _ = write!(s, "{c:>w$}");
            } else {
                let _ = write!(s, "{c:<w$}");
            }
            if !last {
                s.push_str("  ");
            }
        }
        s
    };
    std::iter::once(line(header.to_vec()))
        .chain(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        )
        .collect()
}

/// `text` on one line: newlines, tabs and other control characters escaped
/// (`\n`), so that a listing has one line per entry whatever a command holds.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Parses a size such as `512M`, `2G`, `1048576` or `64k` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(format!("unknown unit in '{s}' (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{s}' must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn fmt_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The figures of a checkpoint (`checkpoint -c --stats`, `restart --info`), one
/// `name: value` line each.
pub fn stats_lines(s: &xos::ckpt::image::Stats) -> Vec<String> {
    let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
    vec![
        format!("freezing time: {}", ms(s.freezing_time)),
        format!("frozen time: {}", ms(s.frozen_time)),
        format!("memory dump time: {}", ms(s.memdump_time)),
        format!("memory write time: {}", ms(s.memwrite_time)),
        format!("pages scanned: {}", s.pages_scanned),
        format!("pages written: {}", s.pages_written),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn printable_is_one_line() {
        assert_eq!(printable("sh -c 'a\nb\tc' é"), "sh -c 'a\\nb\\tc' é");
    }

    #[test]
    fn tables() {
        let rows = vec![
            vec!["7".to_string(), "a-long-name".to_string(), "x".to_string()],
            vec!["12345".to_string(), "b".to_string(), "yy".to_string()],
        ];
        assert_eq!(
            table(&["ID", "NAME", "END"], &rows, &[0]),
            [
                "   ID  NAME         END",
                "    7  a-long-name  x",
                "12345  b            yy"
            ]
        );
    }

    #[test]
    fn times() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_795_395_600), "2026-11-23T01:00:00Z");
        assert_eq!(fmt_time(951_782_400), "2000-02-29T00:00:00Z");
    }
}
