//! ipccheckpoint / ipcrestart and the SysV IPC library on the real kernel. Every
//! test runs in a forked child with a private IPC namespace (nothing it creates can
//! outlive it) and checks the objects with direct system calls.

mod common;
mod ipc_common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::show;
use ipc_common::*;

const KEY: i32 = 0x1234_abcd;

fn peek_cap() -> usize {
    1 << 20
}

/// The messages of the queue tests: several types, sizes from 0 to `max`.
fn messages(max: usize) -> Vec<(i64, Vec<u8>)> {
    [
        (1, 0),
        (2, 1),
        (3, 100),
        (7, 4096),
        (2, 8192),
        (1, max),
        (5, 333),
        (9, max - 1),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(t, n))| (t, (0..n).map(|j| (i * 13 + j * 3) as u8).collect()))
    .collect()
}

#[test]
fn queue_round_trip_keeps_key_id_owner_mode_and_messages() {
    in_private_ipc_ns(|| {
        let max = 65536;
        sysctl("msgmax", &max.to_string());
        sysctl("msgmnb", "1048576");
        // A queue with a creator that is not root, at an id far from the first.
        let id = 3 * 32768 + 17;
        sysctl("msg_next_id", &id.to_string());
        assert_eq!(as_creator(1234, 2345, || msg_create(KEY, 0o640)), id);
        let mut ds = msg_stat(id);
        ds.msg_perm.uid = 4321;
        ds.msg_perm.gid = 5432;
        ds.msg_perm.mode = 0o604;
        ds.msg_qbytes = 300_000;
        msg_set(id, &mut ds);
        let sent = messages(max);
        for (t, text) in &sent {
            msg_send(id, *t, text);
        }
        let before = msg_stat(id);

        let dir = scratch();
        let file = dir.path().join("msq.dat");
        let out = ok(run("ipccheckpoint", &["-m", &id.to_string(), s(&file)]));
        assert_eq!(out, "", "quiet on success");

        // The save changed nothing: same messages, counters, pids and times.
        let after = msg_stat(id);
        assert_eq!(
            (
                after.msg_qnum,
                after.__msg_cbytes,
                after.msg_lspid,
                after.msg_lrpid
            ),
            (
                before.msg_qnum,
                before.__msg_cbytes,
                before.msg_lspid,
                before.msg_lrpid
            )
        );
        assert_eq!(
            (after.msg_stime, after.msg_rtime),
            (before.msg_stime, before.msg_rtime)
        );
        assert_eq!(msg_peek_all(id, peek_cap()), sent);
        // Only the file is in the directory (no temporary name left).
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let info = ok(run("ipcrestart", &["--info", s(&file)]));
        assert!(
            info.contains(&format!("message queue {id}, key 0x1234abcd")),
            "{info}"
        );
        assert!(info.contains("messages:  8,"), "{info}");
        assert!(
            info.contains("creator uid 1234 gid 2345, mode 0604"),
            "{info}"
        );

        msg_rm(id);
        assert!(listing("msg").is_empty());
        assert_eq!(ok(run("ipcrestart", &["-m", s(&file)])), "");

        let r = msg_stat(id);
        let p = &r.msg_perm;
        assert_eq!(p.__key, KEY);
        assert_eq!((p.uid, p.gid, p.cuid, p.cgid), (4321, 5432, 1234, 2345));
        assert_eq!(p.mode & 0o777, 0o604);
        assert_eq!(r.msg_qbytes, 300_000);
        assert_eq!(r.msg_qnum, sent.len() as u64);
        assert_eq!(
            msg_recv_all(id, peek_cap()),
            sent,
            "same messages in the same order"
        );
        assert_eq!(read_sysctl("msg_next_id"), "-1");
    });
}

#[test]
fn queue_by_key_and_private_queue() {
    in_private_ipc_ns(|| {
        let a = msg_create(KEY, 0o600);
        let b = msg_create(libc::IPC_PRIVATE, 0o622);
        msg_send(a, 4, b"by key");
        msg_send(b, 6, b"private");
        let dir = scratch();
        let fa = dir.path().join("a");
        let fb = dir.path().join("b");
        ok(run("ipccheckpoint", &["-m", "--key", "0x1234abcd", s(&fa)]));
        ok(run("ipccheckpoint", &["--msg", &b.to_string(), s(&fb)]));
        // Key 0 names no single object.
        let e = fails(run("ipccheckpoint", &["-m", "--key", "0", s(&fb)]));
        assert!(
            e.starts_with("ipccheckpoint: ") && e.contains("IPC_PRIVATE"),
            "{e}"
        );
        let e = fails(run("ipccheckpoint", &["-m", "--key", "0x77", s(&fb)]));
        assert!(e.contains("no message queue with key 0x00000077"), "{e}");
        msg_rm(a);
        msg_rm(b);
        let out = ok(run("ipcrestart", &["-v", s(&fb)]));
        assert_eq!(
            out.trim(),
            format!("restored message queue {b} (key IPC_PRIVATE)")
        );
        ok(run("ipcrestart", &[s(&fa)]));
        assert_eq!(listing("msg"), vec![(0, b), (KEY, a)]);
        assert_eq!(msg_stat(b).msg_perm.mode & 0o777, 0o622);
        assert_eq!(msg_recv_all(b, 64), vec![(6, b"private".to_vec())]);
        assert_eq!(msg_recv_all(a, 64), vec![(4, b"by key".to_vec())]);
    });
}

#[test]
fn semaphore_values_round_trip() {
    in_private_ipc_ns(|| {
        let id = sem_create(KEY, 5, 0o660);
        let values = [0u16, 1, 2, 32767, 42];
        sem_setall(id, &values);
        sem_set_owner(id, 77, 88, 0o640);
        let dir = scratch();
        let file = dir.path().join("sem.dat");
        ok(run("ipccheckpoint", &["-s", &id.to_string(), s(&file)]));
        assert_eq!(sem_getall(id), values);
        sem_rm(id);
        ok(run("ipcrestart", &["-s", s(&file)]));
        let ds = sem_stat(id);
        assert_eq!(ds.sem_perm.__key, KEY);
        assert_eq!((ds.sem_perm.uid, ds.sem_perm.gid), (77, 88));
        assert_eq!(ds.sem_perm.mode & 0o777, 0o640);
        assert_eq!(ds.sem_nsems, 5);
        assert_eq!(sem_getall(id), values);
    });
}

/// The pages of the 256 MiB segment the sparse test touches: a first MiB, every
/// 97th page, a 3 MiB block in the middle, and the last page.
fn touched_pages(pages: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..256).collect();
    v.extend((256..pages).filter(|p| p % 97 == 0));
    v.extend(25_600..25_600 + 768);
    v.push(pages - 1);
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn sparse_segment_keeps_content_and_untouched_pages() {
    in_private_ipc_ns(|| {
        let size = 256 << 20;
        let pages = size / PAGE;
        let id = shm_create(KEY, size, 0o640);
        let touched = touched_pages(pages);
        // One page is only read: reading allocates it, so it counts as touched.
        let read_only = 200_001 / 4;
        {
            let m = Shm::attach(id);
            for &p in &touched {
                m.write(p * PAGE, &page_pattern(p, PAGE));
            }
            assert_eq!(m.read(read_only * PAGE, 16), vec![0; 16]);
        }
        let mut all_touched = touched.clone();
        all_touched.push(read_only);
        all_touched.sort_unstable();
        let expect: Vec<bool> = {
            let mut v = vec![false; pages];
            for &p in &all_touched {
                v[p] = true;
            }
            v
        };
        assert_eq!(Shm::attach(id).resident(), expect, "the test's own setup");

        let dir = scratch();
        let file = dir.path().join("shm.dat");
        ok(run("ipccheckpoint", &["-M", &id.to_string(), s(&file)]));
        // The save touched nothing more.
        assert_eq!(
            Shm::attach(id).resident(),
            expect,
            "save left untouched pages alone"
        );
        // Only touched pages are stored.
        let stored = (all_touched.len() * PAGE) as u64;
        let len = fs::metadata(&file).unwrap().len();
        assert!(
            len >= stored && len < stored + (1 << 20),
            "file of {len} bytes for {stored}"
        );
        let info = ok(run("ipcrestart", &["--info", s(&file)]));
        assert!(
            info.contains(&format!("size:      {size} bytes, {stored} stored")),
            "{info}"
        );

        shm_rm(id);
        ok(run("ipcrestart", &["-M", s(&file)]));
        let ds = shm_stat(id);
        assert_eq!((ds.shm_perm.__key, ds.shm_segsz), (KEY, size));
        assert_eq!(ds.shm_perm.mode & 0o777, 0o640);
        let m = Shm::attach(id);
        assert_eq!(
            m.resident(),
            expect,
            "untouched pages are still not resident"
        );
        for &p in &touched {
            assert_eq!(m.read(p * PAGE, PAGE), page_pattern(p, PAGE), "page {p}");
        }
        assert_eq!(m.read(read_only * PAGE, PAGE), vec![0; PAGE]);
    });
}

#[test]
fn unprivileged_owner_saves_through_the_attachment() {
    // Without CAP_SYS_ADMIN /proc/self/map_files cannot be opened: the segment is
    // read through the attachment and its touched pages found with mincore.
    in_private_ipc_ns(|| {
        let size = 10 * PAGE + 100;
        let id = shm_create(KEY, size, 0o600);
        let mut ds = shm_stat(id);
        ds.shm_perm.uid = 65534;
        ds.shm_perm.gid = 65534;
        shm_set(id, &mut ds);
        let q = msg_create(KEY, 0o600);
        let mut qd = msg_stat(q);
        qd.msg_perm.uid = 65534;
        msg_set(q, &mut qd);
        msg_send(q, 3, b"nobody's message");
        {
            let m = Shm::attach(id);
            m.write(PAGE, &page_pattern(1, PAGE));
            m.write(10 * PAGE, &page_pattern(10, 100));
        }
        let dir = scratch();
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let file = dir.path().join("shm.dat");
        let qfile = dir.path().join("msq.dat");
        for args in [
            ["-M", &id.to_string(), s(&file)],
            ["-m", &q.to_string(), s(&qfile)],
        ] {
            let o = Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(xos())
                .arg("ipccheckpoint")
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", show(&o));
        }
        shm_rm(id);
        msg_rm(q);
        ok(run("ipcrestart", &[s(&file)]));
        ok(run("ipcrestart", &[s(&qfile)]));
        let m = Shm::attach(id);
        let r = m.resident();
        assert_eq!(r.iter().filter(|&&b| b).count(), 2);
        assert!(r[1] && r[10]);
        assert_eq!(m.read(PAGE, PAGE), page_pattern(1, PAGE));
        assert_eq!(m.read(10 * PAGE, 100), page_pattern(10, 100));
        assert_eq!(shm_stat(id).shm_perm.uid, 65534);
        assert_eq!(msg_recv_all(q, 64), vec![(3, b"nobody's message".to_vec())]);
    });
}

#[test]
fn taken_key_or_id_stops_the_restore_and_creates_nothing() {
    in_private_ipc_ns(|| {
        let id = msg_create(KEY, 0o600);
        msg_send(id, 1, b"x");
        let seg = shm_create(KEY, 3 * PAGE, 0o600);
        let dir = scratch();
        let qf = dir.path().join("q");
        let sf = dir.path().join("s");
        ok(run("ipccheckpoint", &["-m", &id.to_string(), s(&qf)]));
        ok(run("ipccheckpoint", &["-M", &seg.to_string(), s(&sf)]));

        // The object itself is still there.
        let e = fails(run("ipcrestart", &[s(&qf)]));
        assert!(e.contains("key is already used by message queue 0"), "{e}");

        // Another queue has the key.
        msg_rm(id);
        sysctl("msg_next_id", "5");
        let other = msg_create(KEY, 0o600);
        let before = everything();
        let e = fails(run("ipcrestart", &["-m", s(&qf)]));
        assert!(
            e == format!(
                "ipcrestart: cannot restore message queue 0 (key 0x1234abcd): its key is already used by message queue {other}\n"
            ),
            "{e}"
        );
        assert_eq!(everything(), before, "nothing created");
        assert_eq!(read_sysctl("msg_next_id"), "-1");

        // Another queue has the id.
        msg_rm(other);
        sysctl("msg_next_id", "0");
        msg_create(0x42, 0o600);
        let before = everything();
        let e = fails(run("ipcrestart", &["-m", s(&qf)]));
        assert!(
            e.contains("its id is already used by message queue 0 (key 0x00000042)"),
            "{e}"
        );
        assert_eq!(everything(), before, "nothing created");

        // Another queue has the same slot with another sequence number: the id
        // cannot be had either.
        msg_rm(0);
        sysctl("msg_next_id", "32768");
        msg_create(0x43, 0o600);
        let e = fails(run("ipcrestart", &[s(&qf)]));
        assert!(
            e.contains("its id is already used by message queue 32768"),
            "{e}"
        );
        assert_eq!(read_sysctl("msg_next_id"), "-1");

        // Segments: key taken.
        shm_rm(seg);
        let other = shm_create(KEY, PAGE, 0o600);
        let before = everything();
        let e = fails(run("ipcrestart", &[s(&sf)]));
        assert!(
            e.contains("shared memory segment") && e.contains(&format!("segment {other}")),
            "{e}"
        );
        assert_eq!(everything(), before, "nothing created");
        shm_rm(other);
        ok(run("ipcrestart", &[s(&sf)]));
        assert_eq!(listing("shm"), vec![(KEY, seg)]);
    });
}

#[test]
fn damaged_or_wrong_files_are_rejected_before_anything_is_created() {
    in_private_ipc_ns(|| {
        let seg = shm_create(KEY, 64 * PAGE, 0o600);
        {
            let m = Shm::attach(seg);
            for p in [0, 5, 6, 63] {
                m.write(p * PAGE, &page_pattern(p, PAGE));
            }
        }
        let q = msg_create(KEY, 0o600);
        msg_send(q, 1, &[9u8; 1000]);
        let dir = scratch();
        let sf = dir.path().join("shm.dat");
        let qf = dir.path().join("msq.dat");
        ok(run("ipccheckpoint", &["-M", &seg.to_string(), s(&sf)]));
        ok(run("ipccheckpoint", &["-m", &q.to_string(), s(&qf)]));
        shm_rm(seg);
        msg_rm(q);

        let e = fails(run("ipcrestart", &["-s", s(&qf)]));
        assert!(
            e.contains("holds a message queue, not a semaphore array"),
            "{e}"
        );
        let e = fails(run("ipcrestart", &["--info", "-M", s(&qf)]));
        assert!(e.contains("not a shared memory segment"), "{e}");

        let bad = dir.path().join("bad.dat");
        for (src, name, damage, expect) in [
            (&sf, "cut by one byte", Damage::Truncate(1), "truncated"),
            (&sf, "cut in half", Damage::Half, "truncated"),
            (
                &sf,
                "payload byte",
                Damage::Flip(4096 + 3 * 4096 + 17),
                "checksum mismatch",
            ),
            (
                &sf,
                "last payload byte",
                Damage::FlipFromEnd(17),
                "checksum mismatch",
            ),
            (&sf, "metadata byte", Damage::Flip(70), "checksum mismatch"),
            (&sf, "magic", Damage::Flip(1), "bad magic"),
            (&sf, "version", Damage::Flip(8), "version"),
            (&sf, "extended", Damage::Append, "truncated or extended"),
            (
                &qf,
                "message text",
                Damage::FlipFromEnd(100),
                "checksum mismatch",
            ),
            (&qf, "empty", Damage::Empty, "bad magic"),
        ] {
            let mut data = fs::read(src).unwrap();
            match damage {
                Damage::Truncate(n) => data.truncate(data.len() - n),
                Damage::Half => data.truncate(data.len() / 2),
                Damage::Flip(at) => data[at] ^= 0x10,
                Damage::FlipFromEnd(n) => {
                    let at = data.len() - n;
                    data[at] ^= 0x10
                }
                Damage::Append => data.push(0),
                Damage::Empty => data.clear(),
            }
            fs::write(&bad, &data).unwrap();
            for args in [vec![s(&bad)], vec!["--info", s(&bad)]] {
                let e = fails(run("ipcrestart", &args));
                assert!(e.contains(s(&bad)) && e.contains(expect), "{name}: {e}");
            }
            assert_eq!(
                everything(),
                [vec![], vec![], vec![]],
                "{name}: nothing created"
            );
            assert_eq!(read_sysctl("shm_next_id"), "-1");
        }
        // The intact files still restore.
        ok(run("ipcrestart", &[s(&sf)]));
        ok(run("ipcrestart", &[s(&qf)]));
    });
}

enum Damage {
    Truncate(usize),
    Half,
    Flip(usize),
    FlipFromEnd(usize),
    Append,
    Empty,
}

/// Limits that differ from a new namespace's in every field.
const LIMITS: [(&str, &str); 7] = [
    ("msgmax", "32768"),
    ("msgmnb", "65536"),
    ("msgmni", "100"),
    ("sem", "100 1000 50 64"),
    ("shmmax", "1073741824"),
    ("shmall", "1048576"),
    ("shmmni", "50"),
];

/// A namespace with two objects of each kind, one of them IPC_PRIVATE.
fn populate() -> Vec<i32> {
    for (k, v) in LIMITS {
        sysctl(k, v);
    }
    let q1 = msg_create(0x100, 0o600);
    let q2 = msg_create(libc::IPC_PRIVATE, 0o644);
    msg_send(q1, 1, &[1u8; 32768]);
    msg_send(q2, 2, b"two");
    msg_send(q2, 1, b"one");
    sysctl("sem_next_id", "40000");
    let s1 = sem_create(0x200, 3, 0o600);
    let s2 = sem_create(libc::IPC_PRIVATE, 1, 0o666);
    sem_setall(s1, &[3, 2, 1]);
    sem_setall(s2, &[9]);
    let m1 = shm_create(0x300, 8 * PAGE, 0o600);
    let m2 = shm_create(libc::IPC_PRIVATE, 2 * PAGE + 1, 0o604);
    Shm::attach(m1).write(3 * PAGE, &page_pattern(3, PAGE));
    Shm::attach(m2).write(2 * PAGE, &[7]);
    shm_lock(m2);
    vec![q1, q2, s1, s2, m1, m2]
}

fn check_populated(ids: &[i32]) {
    let (q1, q2, s1, s2, m1, m2) = (ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]);
    assert_eq!(listing("msg"), vec![(0, q2), (0x100, q1)]);
    assert_eq!(listing("sem"), vec![(0, s2), (0x200, s1)]);
    assert_eq!(listing("shm"), vec![(0, m2), (0x300, m1)]);
    assert_eq!(msg_peek_all(q1, 1 << 16), vec![(1, vec![1u8; 32768])]);
    assert_eq!(
        msg_peek_all(q2, 64),
        vec![(2, b"two".to_vec()), (1, b"one".to_vec())]
    );
    assert_eq!(msg_stat(q2).msg_perm.mode & 0o777, 0o644);
    assert_eq!(sem_getall(s1), [3, 2, 1]);
    assert_eq!(sem_getall(s2), [9]);
    assert_eq!(sem_stat(s2).sem_perm.mode & 0o777, 0o666);
    let a = Shm::attach(m1);
    assert_eq!(a.resident(), (0..8).map(|p| p == 3).collect::<Vec<_>>());
    assert_eq!(a.read(3 * PAGE, PAGE), page_pattern(3, PAGE));
    let b = Shm::attach(m2);
    assert_eq!(b.resident(), vec![false, false, true]);
    assert_eq!(b.read(2 * PAGE, 1), vec![7]);
    assert_eq!(shm_stat(m2).shm_segsz, 2 * PAGE + 1);
    assert_eq!(shm_stat(m2).shm_perm.mode & 0o2000, 0o2000, "SHM_LOCKED");
    assert_eq!(shm_stat(m1).shm_perm.mode & 0o2000, 0);
    for (k, v) in LIMITS {
        assert_eq!(read_sysctl(k), v, "limit {k}");
    }
}

#[test]
fn whole_namespace_round_trip() {
    let dir = scratch();
    let saved = dir.path().join("ipc");
    in_private_ipc_ns(|| {
        let ids = populate();
        let out = ok(run("ipccheckpoint", &["-v", "--all", s(&saved)]));
        assert!(out.contains("saved 6 objects"), "{out}");
        check_populated(&ids);
        let mut names: Vec<String> = fs::read_dir(&saved)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 7, "{names:?}");
        assert!(
            names.contains(&"manifest".to_string()) && names.contains(&"sem-40000.ipc".to_string())
        );
        // A second save refuses to mix with the first.
        let e = fails(run("ipccheckpoint", &["--all", s(&saved)]));
        assert!(e.contains("exists and is not empty"), "{e}");

        // A new, empty namespace gets everything back, limits included.
        new_ipc_ns();
        assert_eq!(everything(), [vec![], vec![], vec![]]);
        let info = ok(run("ipcrestart", &["--info", "--all", s(&saved)]));
        assert!(
            info.contains("(6 objects)") && info.contains("msgmax 32768"),
            "{info}"
        );
        let out = ok(run("ipcrestart", &["-v", "--all", s(&saved)]));
        assert_eq!(out.lines().count(), 6, "{out}");
        check_populated(&ids);
    });
}

#[test]
fn whole_namespace_restore_is_all_or_nothing() {
    let dir = scratch();
    let saved = dir.path().join("ipc");
    in_private_ipc_ns(|| {
        populate();
        ok(run("ipccheckpoint", &["--all", s(&saved)]));

        // A conflict found before anything is created.
        new_ipc_ns();
        let limits_before: Vec<String> = LIMITS.iter().map(|(k, _)| read_sysctl(k)).collect();
        let other = shm_create(0x300, PAGE, 0o600);
        let e = fails(run("ipcrestart", &["--all", s(&saved)]));
        assert!(
            e.contains("key is already used by shared memory segment"),
            "{e}"
        );
        assert_eq!(everything(), [vec![], vec![], vec![(0x300, other)]]);
        shm_rm(other);

        // Too little room for the segments in the saved limits: found before
        // anything is created (and before the limits are applied).
        let path = saved.join("manifest");
        let good = fs::read(&path).unwrap();
        let body = &good[good.iter().position(|&b| b == b'\n').unwrap() + 1..];
        let mut m: serde_json::Value = serde_json::from_slice(body).unwrap();
        m["limits"]["shmall"] = 1.into();
        let body = serde_json::to_vec(&m).unwrap();
        xos::fsutil::write_checked(&path, "xos-ipcns", 1, &body).unwrap();
        let e = fails(run("ipcrestart", &["--all", s(&saved)]));
        assert!(
            e.contains("shared memory segment") && e.contains("(shmall 1)"),
            "{e}"
        );
        assert_eq!(everything(), [vec![], vec![], vec![]]);
        let limits_after: Vec<String> = LIMITS.iter().map(|(k, _)| read_sysctl(k)).collect();
        assert_eq!(limits_after, limits_before, "limits untouched");
        fs::write(&path, &good).unwrap();

        // A failure after the queues and arrays exist: without CAP_IPC_LOCK and
        // with no locked-memory allowance, locking the saved locked segment fails.
        // Everything created is removed and the limits are put back.
        let o = Command::new("prlimit")
            .args([
                "--memlock=0:0",
                "setpriv",
                "--inh-caps=-ipc_lock",
                "--bounding-set=-ipc_lock",
                "--",
            ])
            .arg(xos())
            .args(["ipcrestart", "--all", s(&saved)])
            .output()
            .unwrap();
        let e = fails(o);
        assert!(
            e.contains("shared memory segment") && e.contains("lock it in memory"),
            "{e}"
        );
        assert_eq!(
            everything(),
            [vec![], vec![], vec![]],
            "created objects removed"
        );
        let limits_after: Vec<String> = LIMITS.iter().map(|(k, _)| read_sysctl(k)).collect();
        assert_eq!(limits_after, limits_before, "limits put back");
        for k in ["msg_next_id", "sem_next_id", "shm_next_id"] {
            assert_eq!(read_sysctl(k), "-1", "{k}");
        }

        // A damaged object file: found before anything is created.
        let f = saved.join("sem-40000.ipc");
        let mut data = fs::read(&f).unwrap();
        let n = data.len();
        data[n - 20] ^= 1;
        fs::write(&f, data).unwrap();
        let e = fails(run("ipcrestart", &["--all", s(&saved)]));
        assert!(e.contains("sem-40000.ipc"), "{e}");
        assert_eq!(everything(), [vec![], vec![], vec![]]);
    });
}

#[test]
fn shm_rmid_forced_neither_destroys_nor_loses_segments() {
    let dir = scratch();
    let saved = dir.path().join("ipc");
    in_private_ipc_ns(|| {
        // This process created the segment and lives on, so with
        // shm_rmid_forced=1 the segment exists until its last detach; the save
        // attaches and detaches it, which must not destroy it.
        let id = shm_create(KEY, 4 * PAGE, 0o600);
        Shm::attach(id).write(PAGE, &page_pattern(1, PAGE));
        sysctl("shm_rmid_forced", "1");
        assert_eq!(listing("shm"), vec![(KEY, id)]);
        let file = dir.path().join("shm.dat");
        ok(run("ipccheckpoint", &["-M", &id.to_string(), s(&file)]));
        ok(run("ipccheckpoint", &["--all", s(&saved)]));
        assert_eq!(
            listing("shm"),
            vec![(KEY, id)],
            "the save destroyed the segment"
        );
        assert_eq!(read_sysctl("shm_rmid_forced"), "1");

        // A restore into a namespace with shm_rmid_forced=1 would lose the
        // segment as soon as ipcrestart exits: refused, nothing created.
        shm_rm(id);
        let e = fails(run("ipcrestart", &[s(&file)]));
        assert!(e.contains("shm_rmid_forced=1"), "{e}");
        assert_eq!(everything(), [vec![], vec![], vec![]]);

        // A namespace restored with --all keeps shm_rmid_forced=0 and says so.
        new_ipc_ns();
        let o = run("ipcrestart", &["--all", s(&saved)]);
        assert!(o.status.success(), "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("ipcrestart: warning: not applied: shm_rmid_forced=1"),
            "{err}"
        );
        assert_eq!(read_sysctl("shm_rmid_forced"), "0");
        let m = Shm::attach(id);
        assert_eq!(m.read(PAGE, PAGE), page_pattern(1, PAGE));
    });
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["ipccheckpoint", "-m"],
        vec!["ipccheckpoint", "-m", "abc", "file"],
        vec!["ipccheckpoint", "-m", "1"],
        vec!["ipccheckpoint", "-m", "--key", "5", "1", "file"],
        vec!["ipccheckpoint", "--all", "d", "-m"],
        vec!["ipccheckpoint", "-m", "-s", "1", "f"],
        vec!["ipccheckpoint", "1", "f"],
        vec!["ipcrestart"],
        vec!["ipcrestart", "-m", "-s", "f"],
        vec!["ipcrestart", "--all", "d", "f"],
    ] {
        let o = run(args[0], &args[1..]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
    }
    in_private_ipc_ns(|| {
        let e = fails(run("ipccheckpoint", &["-s", "5", "/nonexistent/f"]));
        assert_eq!(
            e,
            "ipccheckpoint: no semaphore array with id 5 in this IPC namespace\n"
        );
        let e = fails(run("ipcrestart", &["/nonexistent/f"]));
        assert!(e.contains("/nonexistent/f"), "{e}");
    });
}

/// An application started by krgcr-run, killed and its cgroup parent removed on
/// drop, even when the test fails.
struct App {
    state: tempfile::TempDir,
    parent: String,
    id: u64,
    pid: i32,
}

impl App {
    fn start(script: &str) -> App {
        let state = tempfile::tempdir().unwrap();
        let parent = format!("xos-ipctest-{}", std::process::id());
        let o = Command::new(xos())
            .args(["krgcr-run", "--detach", "--print-id"])
            // The application must not keep our output pipes open.
            .args(["--stdout", "/dev/null", "--stderr", "/dev/null"])
            .arg("--state-dir")
            .arg(state.path())
            .args(["--cgroup-parent", &parent, "sh", "-c", script])
            .output()
            .unwrap();
        let mut app = App {
            state,
            parent,
            id: 0,
            pid: 0,
        };
        assert!(o.status.success(), "krgcr-run: {}", show(&o));
        app.id = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        let reg = xos::registry::Registry::open(app.state.path()).unwrap();
        app.pid = reg.load(app.id).unwrap().root_pid;
        app
    }

    fn state(&self) -> &str {
        s(self.state.path())
    }

    /// Runs a command inside the application's IPC namespace.
    fn nsenter(&self, args: &[&str]) -> String {
        let o = Command::new("nsenter")
            .args(["--ipc", "--target", &self.pid.to_string(), "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "nsenter {args:?}: {}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Ok(layout) = xos::cgroup::Layout::detect() {
            if let Ok(g) = layout.group(&self.parent) {
                let _ = g.destroy(Duration::from_secs(10));
            }
        }
    }
}

#[test]
fn app_and_pid_options_work_in_the_application_namespace() {
    in_private_ipc_ns(|| {
        let dir = scratch();
        let ready = dir.path().join("ready");
        let app = App::start(&format!(
            "ipcmk -Q -p 0600 >/dev/null && ipcmk -S 2 >/dev/null && ipcmk -M 8192 >/dev/null && touch {} && exec sleep 600",
            s(&ready)
        ));
        for _ in 0..500 {
            if ready.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ready.exists(), "the application did not start");
        // The test's own namespace sees none of the application's objects.
        assert_eq!(everything(), [vec![], vec![], vec![]]);

        let app_id = app.id.to_string();
        let file = dir.path().join("msq.dat");
        ok(run(
            "ipccheckpoint",
            &[
                "--app",
                &app_id,
                "--state-dir",
                app.state(),
                "-m",
                "0",
                s(&file),
            ],
        ));
        let info = ok(run("ipcrestart", &["--info", s(&file)]));
        assert!(info.contains("message queue 0, key 0x"), "{info}");
        let all = dir.path().join("all");
        ok(run(
            "ipccheckpoint",
            &["--pid", &app.pid.to_string(), "--all", s(&all)],
        ));
        let info = ok(run("ipcrestart", &["--info", "--all", s(&all)]));
        assert!(info.contains("(3 objects)"), "{info}");

        // Restore into the application after its queue was removed.
        app.nsenter(&["ipcrm", "-q", "0"]);
        let listing = app.nsenter(&["cat", "/proc/sysvipc/msg"]);
        assert_eq!(listing.lines().count(), 1, "queue removed: {listing}");
        ok(run(
            "ipcrestart",
            &["--app", &app_id, "--state-dir", app.state(), "-m", s(&file)],
        ));
        let listing = app.nsenter(&["cat", "/proc/sysvipc/msg"]);
        assert_eq!(listing.lines().count(), 2, "{listing}");
        assert_eq!(
            everything(),
            [vec![], vec![], vec![]],
            "nothing in the test's namespace"
        );

        // An application that does not exist.
        let e = fails(run(
            "ipccheckpoint",
            &[
                "--app",
                "999999",
                "--state-dir",
                app.state(),
                "-m",
                "0",
                s(&file),
            ],
        ));
        assert!(e.contains("999999"), "{e}");
    });
}

#[test]
fn library_api_round_trip() {
    use xos::sysvipc::{self, Kind, Selector};
    in_private_ipc_ns(|| {
        let id = sem_create(KEY, 2, 0o600);
        sem_setall(id, &[4, 5]);
        let dir = scratch();
        let file = dir.path().join("sem");
        let saved = sysvipc::save(Kind::Sem, Selector::Key(KEY), &file).unwrap();
        assert_eq!((saved.kind, saved.id, saved.key), (Kind::Sem, id, KEY));
        let img = sysvipc::Image::open(&file).unwrap();
        assert_eq!(img.kind(), Kind::Sem);
        match img.meta() {
            sysvipc::Meta::Sem(m) => assert_eq!(m.values, vec![4, 5]),
            m => panic!("{m:?}"),
        }
        sem_rm(id);
        let e = sysvipc::restore(&file, Some(Kind::Msg)).unwrap_err();
        assert!(matches!(e, sysvipc::IpcError::WrongKind { .. }), "{e}");
        let r = sysvipc::restore(&file, Some(Kind::Sem)).unwrap();
        assert_eq!((r.kind, r.id, r.key), (Kind::Sem, id, KEY));
        assert_eq!(sem_getall(id), [4, 5]);
        let entries = sysvipc::list_all().unwrap();
        assert_eq!(entries.len(), 1);
        assert!(Path::new(&file).exists());
    });
}
