//! Sockets through checkpoint and restart, on the real kernel: Unix pairs and
//! listeners, TCP and UDP in the host's and in private network namespaces,
//! redis-server and python3's http.server (Debian packages) with clients in
//! the middle of their exchanges. Programs in tests/socket_progs write what they
//! see to an output file and wait for a go file after the restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{show, wait_until, Env};

const T: Duration = Duration::from_secs(30);

fn prog(name: &str) -> String {
    format!(
        "{}/tests/socket_progs/{name}.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Starts `python3 PROG OUT ARGS…` under krgcr-run with `net`; waits until
/// it has said `ready` `readies` times. Returns the id and the output file.
fn start(env: &Env, net: &str, name: &str, args: &[&str], readies: usize) -> (u64, PathBuf) {
    let out = env.state.path().join(format!("{name}.out"));
    let mut argv = vec!["--net", net, "python3", "-B"];
    let p = prog(name);
    argv.push(&p);
    let o = out.to_str().unwrap();
    argv.push(o);
    argv.extend_from_slice(args);
    let id = env.detach(&argv);
    let ok = wait_until(T, || {
        lines(&out).iter().filter(|l| l.ends_with("ready")).count() >= readies
    });
    assert!(ok, "{name} did not get ready: {:?}", lines(&out));
    (id, out)
}

fn checkpoint_kill(env: &Env, id: u64, extra: &[&str]) {
    let o = env
        .cmd("checkpoint")
        .args(["-c", "--kill"])
        .args(extra)
        .arg(id.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "checkpoint: {}", show(&o));
    assert!(
        wait_until(T, || env.registry().load(id).is_err()),
        "application {id} did not end"
    );
}

fn restart(env: &Env, id: u64) {
    let o = env
        .cmd("restart")
        .args(["--detach", &id.to_string(), "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "restart: {}", show(&o));
}

/// Lets the restarted program go on and waits for its `done`.
fn finish(out: &Path) -> Vec<String> {
    std::fs::write(format!("{}.go", out.display()), "").unwrap();
    let ok = wait_until(T, || lines(out).iter().any(|l| l == "done"));
    assert!(ok, "the program did not finish: {:?}", lines(out));
    lines(out)
}

/// Every line of `want` is among the lines `l` the program said.
fn assert_said(l: &[String], want: &[&str]) {
    for w in want {
        assert!(l.iter().any(|x| x == w), "{w:?} not in {l:?}");
    }
}

/// `checkpoint -c --kill` is refused with one line (returned), leaving the
/// application running.
fn refused(env: &Env, id: u64) -> String {
    let o = env
        .cmd("checkpoint")
        .args(["-c", "--kill", &id.to_string()])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(env.registry().load(id).is_ok(), "the application runs on");
    err
}

fn cycle(env: &Env, id: u64, out: &Path) -> Vec<String> {
    checkpoint_kill(env, id, &[]);
    restart(env, id);
    finish(out)
}

#[test]
fn unix_pairs_with_data_and_descriptors_in_flight() {
    let env = Env::new();
    let (id, out) = start(&env, "host", "pairs", &[], 2);
    let l = cycle(&env, id, &out);
    let has = |s: &str| l.iter().any(|x| x == s);
    assert!(
        has("parent b'child->parent stream' b'dgram1' b'dgram2' b'seq1' b'seq2'"),
        "{l:?}"
    );
    assert!(has("parent b'with-fd' b'through the pipe'"), "{l:?}");
    assert!(
        has("child b'parent->child stream' b'pd1' b'pd2' b'ps1'"),
        "{l:?}"
    );
    assert_eq!(
        l.iter().filter(|x| *x == "child nothing more").count(),
        2,
        "nothing twice: {l:?}"
    );
}

#[test]
fn unix_listeners_with_accepted_and_waiting_clients() {
    let env = Env::new();
    let path = env.state.path().join("server.sock");
    let name = common::unique("xos-test-abstract");
    let (id, out) = start(
        &env,
        "private",
        "listener",
        &[path.to_str().unwrap(), &name],
        1,
    );
    let l = cycle(&env, id, &out);
    for want in [
        "s1 b'from c1' c2 b'to c2'",
        "s3 b'late'",
        "c4 b'new'",
        &format!("peer {}", path.display()),
        "deleted b'x' b'y' True False",
    ] {
        assert!(l.iter().any(|x| x == want), "{want:?} in {l:?}");
    }
}

#[test]
fn tcp_with_a_mebibyte_unread_each_way_in_a_private_namespace() {
    for fam in ["4", "6"] {
        let env = Env::new();
        let (id, out) = start(&env, "private", "tcp", &[fam], 2);
        let l = cycle(&env, id, &out);
        assert_said(&l, &["client True 1", "server True", "server b'bye'"]);
    }
}

#[test]
fn tcp_on_the_hosts_loopback_is_locked_and_unlocked() {
    let env = Env::new();
    let (id, out) = start(&env, "host", "tcp", &["4"], 2);
    checkpoint_kill(&env, id, &[]);
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&tables.stdout).contains(&format!("xos_lock_{id}")),
        "the connection stays locked until the restart"
    );
    restart(&env, id);
    let l = finish(&out);
    assert_said(&l, &["client True 1", "server True"]);
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(&format!("xos_lock_{id}")));
}

#[test]
fn udp_datagrams_queued_come_back_in_order_with_their_senders() {
    for fam in ["4", "6"] {
        let env = Env::new();
        let (id, out) = start(&env, "private", "udp", &[fam], 1);
        let l = cycle(&env, id, &out);
        let order: String = (0..5)
            .flat_map(|i| [format!("'one-{i}'"), format!("'two-{i}'")])
            .collect::<Vec<_>>()
            .join(", ");
        assert!(l.contains(&format!("order [{order}]")), "IPv{fam}: {l:?}");
        assert_said(&l, &["senders True", "nothing more", "after b'after'"]);
    }
}

#[test]
fn a_log_socket_outside_is_reached_again_by_its_path() {
    let env = Env::new();
    let path = env.state.path().join("log.sock");
    let log = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    log.set_read_timeout(Some(T)).unwrap();
    let (id, out) = start(&env, "host", "syslog", &[path.to_str().unwrap()], 1);
    let mut buf = [0u8; 100];
    let n = log.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"<14>before");
    let l = cycle(&env, id, &out);
    let n = log.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"<14>after", "{l:?}");
}

#[test]
fn a_stream_to_outside_is_refused_or_cut_when_asked() {
    let env = Env::new();
    let path = env.state.path().join("outside.sock");
    let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (id, out) = start(&env, "host", "outside", &[path.to_str().unwrap()], 1);
    let (_conn, _) = server.accept().unwrap();
    let err = refused(&env, id);
    assert!(
        err.contains("outside the application") && err.contains("--external-unix"),
        "{err}"
    );
    checkpoint_kill(&env, id, &["--external-unix"]);
    restart(&env, id);
    let l = finish(&out);
    assert!(l.iter().any(|x| x == "read b''"), "the peer is gone: {l:?}");
    assert!(l.iter().any(|x| x == "write 32"), "EPIPE: {l:?}");
}

#[test]
fn redis_server_and_a_pipelining_client_in_a_private_namespace() {
    let env = Env::new();
    let out = env.state.path().join("redis.out");
    let script = format!(
        "redis-server --port 6379 --save '' --appendonly no --logfile '' >/dev/null & exec python3 -B {} {}",
        prog("redis_client"),
        out.display()
    );
    let id = env.detach(&["--net", "private", "sh", "-c", &script]);
    assert!(
        wait_until(T, || lines(&out).iter().any(|l| l == "ready")),
        "{:?}",
        lines(&out)
    );
    let l = cycle(&env, id, &out);
    assert!(l.iter().any(|x| x == "replies True"), "{l:?}");
    assert!(
        l.iter()
            .any(|x| x == r"get b'$5\r\n' b'v1999\r\n' dbsize b':2000\r\n'"),
        "{l:?}"
    );
    // redis-server runs on; the Env's drop ends it with its cgroup.
}

/// A network namespace made for one test (`ip netns add`), removed again.
struct NetNs(String);

impl NetNs {
    fn new() -> NetNs {
        let name = common::unique("xos-t");
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(o.status.success(), "ip netns add: {}", show(&o));
        NetNs(name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn a_download_from_outside_through_veth_survives_checkpoint_kill_and_restart() {
    let env = Env::new();
    let ns = NetNs::new();
    let www = env.state.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let body: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(www.join("big"), &body).unwrap();
    let sum = {
        let o = Command::new("sha256sum")
            .arg(www.join("big"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)[..64].to_string()
    };
    // python3's http.server handler in a threading server (HTTPServer itself
    // would first look its name up in the DNS, unreachable from here).
    let server = "import functools, http.server as h, socketserver, sys; \
        socketserver.ThreadingTCPServer((sys.argv[1], 8000), functools.partial(\
        h.SimpleHTTPRequestHandler, directory=sys.argv[2])).serve_forever()";
    let net = format!("veth:10.231.7.2/24,{}", ns.0);
    let id = env.detach(&[
        "--net",
        &net,
        "python3",
        "-c",
        server,
        "10.231.7.2",
        www.to_str().unwrap(),
    ]);
    let out = env.state.path().join("client.out");
    let mut client = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-B", &prog("slow_get")])
        .args([out.to_str().unwrap(), "10.231.7.2", "8000", "big"])
        .spawn()
        .unwrap();
    assert!(
        wait_until(T, || lines(&out).iter().any(|l| l == "started")),
        "{:?}",
        lines(&out)
    );
    checkpoint_kill(&env, id, &[]);
    restart(&env, id);
    let st = client.wait().unwrap();
    assert!(st.success());
    let l = lines(&out);
    assert!(!l.iter().any(|x| x.starts_with("error")), "{l:?}");
    assert!(
        l.iter().any(|x| *x == format!("got {} {sum}", body.len())),
        "{l:?}"
    );
}

#[test]
fn restart_tcp_close_resets_connections_on_both_sides() {
    use std::io::Read;
    let env = Env::new();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port().to_string();
    let (id, out) = start(&env, "host", "tcp_out", &[&port], 1);
    let (mut conn, _) = server.accept().unwrap();
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    checkpoint_kill(&env, id, &[]);
    let o = env
        .cmd("restart")
        .args(["--detach", "--tcp-close", &id.to_string(), "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "restart: {}", show(&o));
    conn.set_read_timeout(Some(T)).unwrap();
    let e = conn.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    let l = finish(&out);
    assert!(l.iter().any(|x| x == "recv error 104"), "{l:?}");
}

#[test]
fn a_route_netlink_socket_comes_back_and_a_packet_socket_is_refused() {
    let env = Env::new();
    let (id, out) = start(&env, "private", "netlink", &["route"], 1);
    let l = cycle(&env, id, &out);
    assert_said(&l, &["groups 1", "links True"]);

    let env = Env::new(); // its own output file
    let (id, _) = start(&env, "private", "netlink", &["packet"], 1);
    let err = refused(&env, id);
    assert!(err.contains("family packet"), "{err}");
}

#[test]
fn a_ping_socket_keeps_its_address_and_identifier() {
    let env = Env::new();
    let (id, out) = start(&env, "private", "ping", &[], 1);
    let l = cycle(&env, id, &out);
    assert_said(
        &l,
        &["before 0 1 b'xos'", "after 0 2 b'xos'", "same ident True"],
    );
}

/// The directory of the PostgreSQL server programs (Debian's postgresql package).
fn postgres_bin() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|b| b.join("postgres").exists())
        .expect("PostgreSQL server programs (apt-get install postgresql)")
}

#[test]
fn postgresql_with_a_client_in_the_middle_of_a_transaction() {
    let env = Env::new();
    let bin = postgres_bin();
    let dir = env.state.path().join("pg");
    std::fs::create_dir(&dir).unwrap();
    let as_postgres = |cmd: &str| {
        let o = Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd}: {}", show(&o));
    };
    // The state directory is root's; the server's files are the postgres user's.
    std::fs::set_permissions(
        env.state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    Command::new("chown")
        .arg("postgres")
        .arg(&dir)
        .status()
        .unwrap();
    as_postgres(&format!(
        "{}/initdb -D {d}/data -A trust >/dev/null",
        bin.display(),
        d = dir.display()
    ));
    let out = dir.join("psql.out");
    let script = dir.join("tx.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE TABLE t (x int);\nINSERT INTO t SELECT generate_series(1, 1000);\n\
             BEGIN;\nINSERT INTO t VALUES (-1);\n\
             \\! touch {d}/ready; while [ ! -e {d}/go ]; do sleep 0.05; done\n\
             COMMIT;\nSELECT 'rows', count(*), min(x) FROM t;\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let server = format!(
        "{b}/postgres -D {d}/data -k {d} -c listen_addresses=127.0.0.1 >{d}/server.log 2>&1 & \
         until {b}/pg_isready -q -h 127.0.0.1; do sleep 0.1; done; \
         psql -h 127.0.0.1 -U postgres -X -A -t -f {d}/tx.sql >{o} 2>&1",
        b = bin.display(),
        d = dir.display(),
        o = out.display()
    );
    Command::new("chown")
        .arg("postgres")
        .arg(&script)
        .status()
        .unwrap();
    let id = env.detach(&[
        "--net", "private", "su", "postgres", "-s", "/bin/sh", "-c", &server,
    ]);
    assert!(
        wait_until(T, || dir.join("ready").exists()),
        "{}",
        common::read(dir.join("server.log"))
    );
    checkpoint_kill(&env, id, &[]);
    restart(&env, id);
    std::fs::write(dir.join("go"), "").unwrap();
    let done = wait_until(T, || common::read(&out).contains("rows|"));
    let text = common::read(&out);
    assert!(done, "{text}\n{}", common::read(dir.join("server.log")));
    assert!(
        text.contains("COMMIT") && text.contains("rows|1001|-1"),
        "{text}"
    );
}

#[test]
fn a_tcp_connection_half_closed_closes_the_same_way_after_restart() {
    let env = Env::new();
    let (id, out) = start(&env, "private", "tcp_half", &[], 1);
    // CLOSE-WAIT (8) on the server, FIN-WAIT-2 (5) on the client.
    assert_said(&lines(&out), &["states 8 5"]);
    let l = cycle(&env, id, &out);
    assert_said(&l, &["server b'request' b''", "client b'response' b''"]);
}

#[test]
fn an_asyncio_server_and_client_run_on_after_checkpoints_and_a_restart() {
    let env = Env::new();
    let out = env.state.path().join("echo.out");
    let id = env.detach(&[
        "--net",
        "private",
        "python3",
        "-B",
        &prog("asyncio_echo"),
        out.to_str().unwrap(),
    ]);
    let count = || lines(&out).len();
    assert!(wait_until(T, || count() >= 10));
    let root = env.registry().load(id).unwrap().root_pid;
    for _ in 0..2 {
        // Left running: the connection goes on, the traffic lock is gone.
        let o = env
            .cmd("checkpoint")
            .args(["-c", &id.to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        let n = count();
        assert!(
            wait_until(T, || count() > n + 10),
            "stalled after a checkpoint"
        );
        let rules = Command::new("nsenter")
            .args(["-t", &root.to_string(), "-n", "nft", "list", "ruleset"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&rules.stdout).trim().is_empty());
    }
    checkpoint_kill(&env, id, &[]);
    let at_kill = count();
    let o = env
        .cmd("restart")
        .args(["--detach", &id.to_string(), "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        wait_until(T, || count() > at_kill + 10),
        "stalled after restart"
    );
    let got: Vec<usize> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(
        got,
        (0..got.len()).collect::<Vec<_>>(),
        "every answer once, in order"
    );
}

#[test]
fn a_tcp_client_whose_server_closed_reads_the_answer_after_restart() {
    let env = Env::new();
    let (id, out) = start(&env, "private", "tcp_gone", &[], 1);
    assert_said(&lines(&out), &["state 8"]); // CLOSE-WAIT
    let l = cycle(&env, id, &out);
    assert_said(&l, &["client b'answer' b''"]);
}
