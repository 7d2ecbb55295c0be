//! POSIX timers (timer_create(2)) of a process: listed by /proc/PID/timers
//! (id, signal, sigev_value, notification, clock), their remaining time read by
//! timer_gettime(2) injected into the process; restored with the same ids by
//! timer_create(2) under PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15) and
//! timer_settime(2), injected into the rebuilt process.

use std::collections::HashMap;

use super::image::PosixTimer;
use super::ptrace::Tracee;
use super::CkptError;

type Result<T> = std::result::Result<T, CkptError>;

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;

/// Parses /proc/PID/timers; thread ids are host ids, mapped through `ns_tids`.
pub fn parse(text: &str, ns_tids: &HashMap<i32, i32>) -> Vec<PosixTimer> {
    let mut out = Vec::new();
    let mut cur: Option<PosixTimer> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "ID" => {
                out.extend(cur.take());
                cur = Some(PosixTimer {
                    id: v.parse().unwrap_or(-1),
                    clock: 0,
                    notify: SIGEV_SIGNAL,
                    signo: 0,
                    value: 0,
                    tid: 0,
                    spec: [0; 4],
                });
            }
            "signal" => {
                if let (Some(t), Some((sig, val))) = (cur.as_mut(), v.split_once('/')) {
                    t.signo = sig.parse().unwrap_or(0);
                    t.value = u64::from_str_radix(val.trim_start_matches("0x"), 16).unwrap_or(0);
                }
            }
            "notify" => {
                if let (Some(t), Some((kind, who))) = (cur.as_mut(), v.split_once('/')) {
                    let base = match kind {
                        "none" => SIGEV_NONE,
                        "thread" => SIGEV_THREAD,
                        _ => SIGEV_SIGNAL,
                    };
                    let (scope, id) = who.split_once('.').unwrap_or(("pid", "0"));
                    t.notify = base | if scope == "tid" { SIGEV_THREAD_ID } else { 0 };
                    let host: i32 = id.parse().unwrap_or(0);
                    t.tid = ns_tids.get(&host).copied().unwrap_or(0);
                }
            }
            "ClockID" => {
                if let Some(t) = cur.as_mut() {
                    t.clock = v.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    out.extend(cur);
    out
}

fn read_words(t: &Tracee, at: u64) -> Result<[i64; 4]> {
    let mut b = [0u8; 32];
    t.read_mem(at, &mut b)?;
    let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    Ok([w(0), w(1), w(2), w(3)])
}

/// Fills in the remaining time and interval of each timer (timer_gettime
/// injected into the stopped process).
pub fn query(
    t: &Tracee,
    base: &libc::user_regs_struct,
    scratch: u64,
    timers: &mut [PosixTimer],
) -> Result<()> {
    for tm in timers {
        t.syscall_ok(
            base,
            "timer_gettime",
            libc::SYS_timer_gettime,
            [tm.id as u64, scratch, 0, 0, 0, 0],
        )?;
        tm.spec = read_words(t, scratch)?;
    }
    Ok(())
}

/// Creates every timer again with its id, notification and remaining time.
pub fn restore(
    t: &Tracee,
    base: &libc::user_regs_struct,
    scratch: u64,
    timers: &[PosixTimer],
) -> Result<()> {
    if timers.is_empty() {
        return Ok(());
    }
    let fail = |id: i32, why: String| CkptError::Restore {
        pid: t.label,
        reason: format!("POSIX timer {id}: {why}"),
    };
    t.syscall_ok(
        base,
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    )?;
    let result = (|| {
        for tm in timers {
            // struct sigevent: value, signo, notify, then the thread id (64 bytes).
            let mut ev = vec![0u8; 64];
            ev[..8].copy_from_slice(&tm.value.to_le_bytes());
            ev[8..12].copy_from_slice(&tm.signo.to_le_bytes());
            ev[12..16].copy_from_slice(&tm.notify.to_le_bytes());
            ev[16..20].copy_from_slice(&tm.tid.to_le_bytes());
            t.write_mem(scratch, &ev)?;
            t.write_mem(scratch + 64, &tm.id.to_le_bytes())?;
            t.syscall_ok(
                base,
                "timer_create",
                libc::SYS_timer_create,
                [tm.clock as i64 as u64, scratch, scratch + 64, 0, 0, 0],
            )
            .map_err(|e| fail(tm.id, e.to_string()))?;
            let mut got = [0u8; 4];
            t.read_mem(scratch + 64, &mut got)?;
            if i32::from_le_bytes(got) != tm.id {
                return Err(fail(tm.id, "created with another id".into()));
            }
            let mut spec = tm.spec;
            if spec[2] == 0 && spec[3] == 0 {
                // A periodic timer whose signal is still queued shows no time
                // left: the kernel re-arms it when the signal is taken, which a
                // signal queued again at restart cannot do. Next expiry: one
                // interval from now.
                spec[2] = spec[0];
                spec[3] = spec[1];
            }
            if spec[2] != 0 || spec[3] != 0 {
                let b: Vec<u8> = spec.iter().flat_map(|w| w.to_le_bytes()).collect();
                t.write_mem(scratch + 128, &b)?;
                t.syscall_ok(
                    base,
                    "timer_settime",
                    libc::SYS_timer_settime,
                    [tm.id as u64, 0, scratch + 128, 0, 0, 0],
                )?;
            }
        }
        Ok(())
    })();
    t.syscall(
        base,
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
    )?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers() {
        let text = "ID: 0\nsignal: 10/00000000deadbeef\nnotify: signal/pid.100\nClockID: 1\n\
                    ID: 3\nsignal: 34/0000000000000000\nnotify: signal/tid.102\nClockID: 0\n";
        let map = HashMap::from([(100, 2), (102, 4)]);
        let t = parse(text, &map);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].id, t[0].signo, t[0].value, t[0].clock),
            (0, 10, 0xdeadbeef, 1)
        );
        assert_eq!((t[0].notify, t[0].tid), (SIGEV_SIGNAL, 2));
        assert_eq!(
            (t[1].id, t[1].notify, t[1].tid),
            (3, SIGEV_SIGNAL | SIGEV_THREAD_ID, 4)
        );
    }
}
