#!/usr/bin/env bash
# Benchmarks of xos. Each mode prints its figures next to a raw baseline measured
# in the same run, on the same directory; nothing here asserts a speed.
#
#   scripts/bench.sh ipc [DIR]   ipccheckpoint/ipcrestart of a fully touched shared
#                                memory segment (XOS_BENCH_SIZE MiB, default 1024)
#                                against writing and reading as many bytes in DIR
#
#   scripts/bench.sh ckpt [DIR]  checkpoint -c and restart of an application with
#                                XOS_BENCH_SIZE MiB (default 1024) of touched memory
#                                against writing and reading as many bytes in DIR
#                                (median of XOS_BENCH_ROUNDS rounds, default 5), and
#                                the latency for a small process
#
#   scripts/bench.sh net         checkpoint -c --kill and restart of an application in
#                                --net private holding XOS_BENCH_CONNS (default 1000)
#                                established TCP connections (both ends inside, a
#                                little unread data on each) against the same
#                                application without sockets; prints the cost per
#                                connection (median of XOS_BENCH_ROUNDS, default 5)
#
#   scripts/bench.sh nss         getpwnam of a mapped VO user through libnss_xos.so.2
#                                against getpwnam of a local user through nss_files,
#                                and PAM session open + close through pam_xos.so
#                                (with per-job cgroups), per operation
#
# The release binary is built first (XOS_BIN overrides it). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/bench.sh ipc [DIR] | ckpt [DIR] | net | nss" >&2
    exit 2
}

release_bin() {
    if [ -n "${XOS_BIN:-}" ]; then
        echo "$XOS_BIN"
        return
    fi
    cargo build --release --quiet >&2
    echo "${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release/xos"
}

# CRIU 4.x as the baseline of the small-process latency (the same ways as
# scripts/test.sh finds it); empty when there is none.
criu_bin() {
    if [ -n "${XOS_CRIU:-}" ]; then
        echo "$XOS_CRIU"
    elif command -v criu >/dev/null && criu --version | grep -q '^Version: [4-9]'; then
        command -v criu
    elif [ -x ../shared/peers/criu/install.sh ]; then
        ../shared/peers/criu/install.sh 2>/dev/null || true
    fi
}

bench_ipc() {
    local bin dir own_dir=""
    bin=$(release_bin)
    if [ -n "${1:-}" ]; then
        dir=$1
        mkdir -p "$dir"
    else
        dir=$(mktemp -d "${TMPDIR:-/var/tmp}/xos-bench.XXXXXX")
        own_dir=$dir
    fi
    # shellcheck disable=SC2064
    trap "rm -f '$dir/raw.bin' '$dir/shm.ipc'; [ -z '$own_dir' ] || rmdir '$own_dir'" EXIT
    # A private IPC namespace: the segment never exists on the machine itself.
    unshare --ipc python3 - "$bin" "$dir" "${XOS_BENCH_SIZE:-1024}" <<'EOF'
import ctypes, mmap, os, subprocess, sys, time

xos, d, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = mib << 20
chunk = 4 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
raw, img = os.path.join(d, "raw.bin"), os.path.join(d, "shm.ipc")
KEY, IPC_CREAT, IPC_RMID = 0x5eed, 0o1000, 0

def gbps(seconds):
    return size / seconds / 1e9

def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t

def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)

def run(*args):
    r = subprocess.run([xos, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: xos {' '.join(args)}: {r.stderr.strip()}")

# The segment, every page touched with a pattern that differs per page.
shmid = libc.shmget(KEY, size, IPC_CREAT | 0o600)
addr = libc.shmat(shmid, None, 0)
page = bytearray(4096)
pattern = bytearray()
for i in range(256):
    page[0:8] = i.to_bytes(8, "little")
    page[8:16] = (i * 2654435761).to_bytes(8, "little")
    pattern += page
block = bytes(pattern) * (chunk // len(pattern))
for off in range(0, size, chunk):
    ctypes.memmove(addr + off, block, min(chunk, size - off))
libc.shmdt(ctypes.c_void_p(addr))

def unlink(path):
    if os.path.exists(path):
        os.unlink(path)

def raw_write():
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    for _ in range(0, size, chunk):
        os.write(fd, block)
    os.fsync(fd)
    os.close(fd)

def raw_read_stream():
    buf = bytearray(chunk)
    with open(raw, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass

def raw_read_memory():
    # Into fresh anonymous memory, as a restore must end with the bytes in new pages.
    m = mmap.mmap(-1, size)
    with open(raw, "rb", buffering=0) as f:
        view = memoryview(m)
        got = 0
        while got < size:
            got += f.readinto(view[got:got + chunk])
        view.release()
    m.close()

def save():
    run("ipccheckpoint", "-M", "--key", hex(KEY), img)

def restore():
    run("ipcrestart", "-M", img)

def remove():
    libc.shmctl(libc.shmget(KEY, 0, 0), IPC_RMID, None)

# Each measurement is repeated and the best run kept: on a virtual machine the
# first touch of memory and the disk vary a lot from one run to the next.
rounds = int(os.environ.get("XOS_BENCH_ROUNDS", "3"))
best = {}
def keep(name, f):
    t = timed(f)
    best[name] = min(best.get(name, t), t)

# Both writers start from a removed file: the memory freed just before is what
# their page cache reuses (on a virtual machine, memory left free for a while goes
# back to the host and is slow to touch again).
for _ in range(rounds):
    unlink(raw)
    keep("raw_w", raw_write)
    unlink(img)
    keep("save", save)
    remove()
    keep("raw_m", raw_read_memory)
    keep("rest", restore)
    drop_cache(raw)
    keep("raw_mc", raw_read_memory)
    drop_cache(raw)
    keep("raw_sc", raw_read_stream)
    remove()
    drop_cache(img)
    keep("rest_c", restore)
    keep("raw_s", raw_read_stream)

# The restored segment holds the pattern (spot checks of whole pages).
addr = libc.shmat(libc.shmget(KEY, 0, 0), None, 0o10000)
for off in range(0, size, size // 64):
    if ctypes.string_at(addr + off, 4096) != bytes(pattern[off % len(pattern):][:4096]):
        sys.exit(f"bench: restored content differs at offset {off}")
libc.shmdt(ctypes.c_void_p(addr))
remove()

print(f"ipc: {mib} MiB segment, every page touched; directory {d}; best of {rounds} rounds")
print(f"  {'operation':<46} {'GB/s':>6} {'time':>7}")
def line(name, t, *versus):
    extra = ", ".join(f"{b / t:.2f} x {what}" for what, b in versus)
    print(f"  {name:<46} {gbps(t):6.2f} {t:6.3f}s  {extra}")
line("raw write + fsync", best["raw_w"])
line("ipccheckpoint -M (save)", best["save"], ("raw write", best["raw_w"]))
line("raw read, page cache, into a reused buffer", best["raw_s"])
line("raw read, page cache, into new memory", best["raw_m"])
line("ipcrestart (restore), image in page cache", best["rest"],
     ("raw read into new memory", best["raw_m"]), ("into a reused buffer", best["raw_s"]))
line("raw read, from disk, into a reused buffer", best["raw_sc"])
line("raw read, from disk, into new memory", best["raw_mc"])
line("ipcrestart (restore), image from disk", best["rest_c"],
     ("raw read into new memory", best["raw_mc"]), ("into a reused buffer", best["raw_sc"]))
print("  A restore reads the image twice (a checksum pass before it creates anything,")
print("  then the copy) and ends with the bytes in newly allocated shared memory.")
EOF
}

bench_ckpt() {
    local bin dir
    bin=$(release_bin)
    dir=${1:-$(mktemp -d "${TMPDIR:-/var/tmp}/xos-bench.XXXXXX")}
    mkdir -p "$dir"
    # MiB of touched memory spread over THREADS threads (default 1).
    cat > "$dir/mem.c" <<'CEOF'
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static size_t share;
static unsigned char *p;
static pthread_barrier_t b;
static void *touch(void *arg) {
    unsigned char *q = p + (size_t)arg * share;
    for (size_t i = 0; i < share; i++) q[i] = (unsigned char)(i * 2654435761u >> 13);
    pthread_barrier_wait(&b);
    for (;;) usleep(10000);
}
int main(int argc, char **argv) {
    size_t n = strtoul(argv[1], 0, 10) << 20;
    long threads = argc > 3 ? atol(argv[3]) : 1;
    share = n / threads;
    p = malloc(n);
    pthread_barrier_init(&b, 0, threads + 1);
    pthread_t t;
    for (long k = 0; k < threads; k++) pthread_create(&t, 0, touch, (void *)k);
    pthread_barrier_wait(&b);
    FILE *f = fopen(argv[2], "w"); fputs("ready\n", f); fclose(f);
    for (;;) usleep(10000);
}
CEOF
    # The raw baseline of a restart: read a file into freshly mapped memory.
    cat > "$dir/readnew.c" <<'CEOF'
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) return 1;
    char *p = mmap(0, st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (off_t done = 0; done < st.st_size;) {
        ssize_t n = pread(fd, p + done, st.st_size - done, done);
        if (n <= 0) return 1;
        done += n;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
CEOF
    cc -O2 -pthread -o "$dir/mem" "$dir/mem.c"
    cc -O2 -o "$dir/readnew" "$dir/readnew.c"
    python3 - "$bin" "$dir" "${XOS_BENCH_SIZE:-1024}" "$(criu_bin)" <<'PYEOF'
import os, subprocess, sys, time
xos, d, mib, criu = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
state = os.path.join(d, "state")
env = dict(os.environ, XOS_STATE_DIR=state, XOS_CGROUP_PARENT=f"xos-bench-{os.getpid()}")

def run(*args):
    t = time.perf_counter()
    r = subprocess.run([xos, *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(args)}: {r.stderr.strip()}")
    return time.perf_counter() - t, r.stdout

def start(size, threads=1):
    ready = os.path.join(d, f"ready-{size}-{threads}")
    if os.path.exists(ready):
        os.unlink(ready)
    _, out = run("krgcr-run", "--detach", "--print-id", "--stdout", "/dev/null", "--stderr", "/dev/null",
                 os.path.join(d, "mem"), str(size), ready, str(threads))
    while not os.path.exists(ready):
        time.sleep(0.01)
    return out.strip()

def drop_cache(path):
    """Writes back and evicts a file from the page cache: the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)

def drop_version(app, v):
    vd = os.path.join(state, "images", app, v)
    for f in os.listdir(vd):
        drop_cache(os.path.join(vd, f))

def read_into_new_memory(path):
    # What a restart must do with the bytes: put them into freshly mapped pages.
    r = subprocess.run([os.path.join(d, "readnew"), path], capture_output=True, text=True, check=True)
    return float(r.stdout)

def raw(nbytes):
    path, buf = os.path.join(d, "raw.bin"), os.urandom(1 << 20) * 8
    t = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            left -= f.write(buf[: min(left, len(buf))])
        f.flush()
        os.fsync(f.fileno())
    w = time.perf_counter() - t
    t = time.perf_counter()
    b = bytearray(8 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(b):
            pass
    reused = time.perf_counter() - t
    fresh = read_into_new_memory(path)
    drop_cache(path)
    cold = read_into_new_memory(path)
    os.unlink(path)
    return w, reused, fresh, cold

def settle():
    # The images of earlier rounds are written back first: past the kernel's
    # dirty limit, every write would wait for the disk, and a checkpoint would
    # be timed at the disk's speed for its predecessors' bytes.
    os.sync()

def forget(app):
    # Versions already restarted from are deleted: gigabytes per round.
    for v in os.listdir(os.path.join(state, "images", app)):
        if v.isdigit():
            run("checkpoint", "--delete", app, v)

def median(v):
    return sorted(v)[len(v) // 2]

# "application A: version V written to DIR (N processes, S MiB, stopped T ms)"
def version_of(out):
    return out.split("version ")[1].split(" ")[0]

def stopped_ms(out):
    # With --stats: "freezing time: X ms" and "frozen time: Y ms", to the
    # microsecond; else the whole milliseconds of the first line.
    parts = [float(l.split(": ")[1].split(" ")[0]) for l in out.splitlines()
             if l.startswith(("freezing time: ", "frozen time: "))]
    if len(parts) == 2:
        return sum(parts)
    return float(out.split("stopped ")[1].split(" ")[0])

ROUNDS = int(os.environ.get("XOS_BENCH_ROUNDS", "5"))
try:
    nbytes = mib << 20
    # Under a hypervisor that backs guest memory on first touch, whichever step
    # first uses never-touched memory pays for it: touch (and free) some first.
    # Each round puts about 4 x the size in new page cache and memory.
    avail = int(next(l for l in open("/proc/meminfo") if l.startswith("MemAvailable")).split()[1]) << 10
    warm = bytearray(min(4 * ROUNDS * nbytes, avail // 2))
    del warm
    figures = {k: [] for k in ("w", "reused", "fresh", "cold", "stopped", "ck", "rs", "rs_cold")}
    app = start(mib)
    for _ in range(ROUNDS):
        w, reused, fresh, cold = raw(nbytes)
        settle()
        t_ck, out = run("checkpoint", "-c", "--kill", app)
        stopped = stopped_ms(out) / 1000
        v = version_of(out)
        t_rs, _ = run("restart", "--detach", "--stdout", "/dev/null", "--stderr", "/dev/null", app, v)
        _, out = run("checkpoint", "-c", "--kill", app)
        v = version_of(out)
        drop_version(app, v)
        t_cold, _ = run("restart", "--detach", "--stdout", "/dev/null", "--stderr", "/dev/null", app, v)
        forget(app)
        for k, x in zip(figures, (w, reused, fresh, cold, stopped, t_ck, t_rs, t_cold)):
            figures[k].append(x)
    m = {k: median(v) for k, v in figures.items()}
    gb = lambda t: nbytes / t / 1e9
    line = lambda what, t, extra="": print(f"  {what:<44} {gb(t):6.2f} GB/s  {t:6.3f}s  {extra}")
    print(f"ckpt: application with {mib} MiB of touched memory; directory {d}; median of {ROUNDS} rounds")
    line("raw write + fsync", m["w"])
    line("checkpoint -c (freeze to thaw)", m["stopped"],
         f"{m['w'] / m['stopped']:.2f} x raw write (whole command with sync {m['ck']:.3f}s)")
    line("raw read, page cache, reused 8 MiB buffer", m["reused"])
    line("raw read, page cache, into new memory", m["fresh"])
    line("restart, image in page cache", m["rs"],
         f"{m['fresh'] / m['rs']:.2f} x read into new memory, {m['reused'] / m['rs']:.2f} x reused buffer")
    line("raw read, cold cache, into new memory", m["cold"])
    line("restart, image not cached", m["rs_cold"], f"{m['cold'] / m['rs_cold']:.2f} x cold raw read")
    run("checkpoint", "-c", "--kill", app)
    # The same with 8 threads: the per-thread work must not show. The images
    # written above are flushed first, as their writeback would be measured too.
    os.sync()
    time.sleep(2)
    app = start(mib, 8)
    cks, rss = [], []
    for _ in range(ROUNDS):
        settle()
        _, out = run("checkpoint", "-c", "--kill", app)
        cks.append(stopped_ms(out) / 1000)
        t, _ = run("restart", "--detach", "--stdout", "/dev/null", "--stderr", "/dev/null", app,
                   version_of(out))
        rss.append(t)
        forget(app)
    line("checkpoint -c, 8 threads (freeze to thaw)", median(cks),
         f"{m['stopped'] / median(cks):.2f} x the single-threaded checkpoint")
    line("restart, 8 threads, image in page cache", median(rss),
         f"{m['rs'] / median(rss):.2f} x the single-threaded restart")
    run("checkpoint", "-c", "--kill", app)

    # Latency on a quiet machine: the writeback and freeing of the large images
    # above would otherwise be measured too.
    os.sync()
    time.sleep(2)
    # "checkpoint" is the application's stop of a plain checkpoint -c (freeze
    # to thaw); "with --kill" until it is gone, as a migration needs before
    # the restart, which is timed as a whole command.
    def small_case(threads):
        app = start(4, threads)
        cks, kills, rss, spawn = [], [], [], []
        for i in range(10):
            _, out = run("checkpoint", "-c", "--stats", app)
            cks.append(stopped_ms(out))
            _, out = run("checkpoint", "-c", "--kill", "--stats", app)
            kills.append(stopped_ms(out))
            t, _ = run("restart", "--detach", "--stdout", "/dev/null", "--stderr", "/dev/null", app,
                       version_of(out))
            rss.append(t * 1000)
            t, _ = run("--list")
            spawn.append(t * 1000)
        run("checkpoint", "-c", "--kill", app)
        return median(cks), median(kills), median(rss), median(spawn)
    ck, kill, rs, spawn = small_case(1)
    print(f"small process (4 MiB), median of 10: checkpoint {ck:.1f} ms (target 10 ms), "
          f"with --kill {kill:.1f} ms, restart {rs:.1f} ms (target 30 ms); starting and ending any xos command from here takes {spawn:.1f} ms")
    ck, kill, rs, _ = small_case(8)
    print(f"small process with 8 threads, median of 10: checkpoint {ck:.1f} ms (target 10 ms), "
          f"with --kill {kill:.1f} ms, restart {rs:.1f} ms (target 20 ms)")
    if criu:
        # The same program under CRIU, whole commands timed on both sides:
        # criu dump (which kills) and criu restore -d, against checkpoint -c
        # --kill and restart --detach.
        ready = os.path.join(d, "ready-criu")
        p = subprocess.Popen([os.path.join(d, "mem"), "4", ready, "8"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        while not os.path.exists(ready):
            time.sleep(0.01)
        pid, cd, cr, xd, xr = p.pid, [], [], [], []
        app = start(4, 8)
        try:
            for i in range(10):
                images = os.path.join(d, f"criu-{i}")
                os.mkdir(images)
                t = time.perf_counter()
                subprocess.run([criu, "dump", "-t", str(pid), "-D", images], check=True,
                               capture_output=True)
                cd.append((time.perf_counter() - t) * 1000)
                if i == 0:
                    p.wait()
                while os.path.exists(f"/proc/{pid}"):
                    time.sleep(0.001)
                t = time.perf_counter()
                subprocess.run([criu, "restore", "-d", "-D", images], check=True,
                               capture_output=True)
                cr.append((time.perf_counter() - t) * 1000)
                subprocess.run(["rm", "-rf", images])
                t, out = run("checkpoint", "-c", "--kill", app)
                xd.append(t * 1000)
                t, _ = run("restart", "--detach", "--stdout", "/dev/null", "--stderr",
                           "/dev/null", app, version_of(out))
                xr.append(t * 1000)
        except subprocess.CalledProcessError as e:
            print(f"  (CRIU baseline skipped: {' '.join(e.cmd[:2])}: {e.stderr.decode().strip()[-200:]})")
        finally:
            subprocess.run(["kill", "-9", str(pid)], stderr=subprocess.DEVNULL)
            run("checkpoint", "-c", "--kill", app)
        if cd and len(cd) == len(xd):
            print(f"  same program, whole commands, median of {len(cd)}: checkpoint -c --kill "
                  f"{median(xd):.1f} ms against criu dump {median(cd):.1f} ms; restart "
                  f"{median(xr):.1f} ms against criu restore -d {median(cr):.1f} ms")
finally:
    subprocess.run(["rm", "-rf", state])
    # The applications are gone; their (empty) cgroup parent goes too.
    subprocess.run(["sh", "-c", f"rmdir /sys/fs/cgroup/*/{env['XOS_CGROUP_PARENT']} 2>/dev/null"])
PYEOF
    [ -n "${1:-}" ] || rm -rf "$dir"
}

# Globals, so that the EXIT trap still sees them after bench_nss returns.
NSS_PID=""
NSS_DIR=""
NSS_PARENT=""

cleanup_nss() {
    [ -z "$NSS_PID" ] || kill "$NSS_PID" 2>/dev/null || true
    [ -z "$NSS_DIR" ] || rm -rf "$NSS_DIR"
    local h
    if [ -n "$NSS_PARENT" ]; then
        for h in /sys/fs/cgroup/*/"$NSS_PARENT"; do
            [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
        done
    fi
    true
}

bench_nss() {
    local bin mods dir parent
    bin=$(release_bin)
    mods=$(scripts/build-modules.sh)
    # Not under /tmp: PAM sessions may get a private /tmp.
    dir=$(mktemp -d /run/xos-bench.XXXXXX)
    parent="xos-bench-$$"
    NSS_DIR=$dir
    NSS_PARENT=$parent
    trap cleanup_nss EXIT
    "$bin" xos-cert ca --dir "$dir/ca" --vo benchvo >/dev/null
    "$bin" xos-cert issue --ca "$dir/ca" --out "$dir/user" --cn bench --id 62a57c32-9c7f-4da2 \
        --vo benchvo --group users --groups cms >/dev/null
    cat >"$dir/pam_xos.conf" <<CONF
CACertPath $dir/ca
StateDir $dir/state
Pool benchvo 79000-79009
GroupPool benchvo 79100-79109
UseCgroups yes
Subsystems cpuacct,memory
CgroupParent $parent
CONF
    "$bin" xos-amsd --foreground --config "$dir/pam_xos.conf" --socket "$dir/amsd.sock" \
        </dev/null >"$dir/amsd.log" 2>&1 &
    NSS_PID=$!
    for _ in $(seq 50); do
        "$bin" xos-amsd --socket "$dir/amsd.sock" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$bin" xos-amsd --socket "$dir/amsd.sock" map "$dir/user.pem" >/dev/null
    mkdir "$dir/pam.d"
    printf 'session required %s/pam_xos.so socket=%s/amsd.sock\n' "$mods" "$dir" >"$dir/pam.d/xos-bench"
    printf 'passwd: files xos\ngroup: files xos\n' >"$dir/nsswitch.conf"
    cat >"$dir/bench.py" <<'PY'
import ctypes, time

libc = ctypes.CDLL("libc.so.6")
libc.getpwnam.restype = ctypes.c_void_p
vo_user, local_user = b"/CN=62a57c32-9c7f-4da2@benchvo", b"root"
N = 20000

def per_call(name):
    assert libc.getpwnam(name), name
    t = time.perf_counter()
    for _ in range(N):
        libc.getpwnam(name)
    return (time.perf_counter() - t) / N

# The last local user costs nss_files a whole pass over /etc/passwd, as does the
# miss that precedes every xos lookup in "passwd: files xos".
last_user = open("/etc/passwd").read().splitlines()[-1].split(":")[0].encode()
files = per_call(local_user)
xos = per_call(vo_user)
files = min(files, per_call(local_user))
files_last = per_call(last_user)

pam = ctypes.CDLL("libpam.so.0")
class Conv(ctypes.Structure):
    _fields_ = [("conv", ctypes.c_void_p), ("appdata", ctypes.c_void_p)]
conv = Conv(None, None)
h = ctypes.c_void_p()
assert pam.pam_start(b"xos-bench", vo_user, ctypes.byref(conv), ctypes.byref(h)) == 0
M = 200
t = time.perf_counter()
for _ in range(M):
    r = pam.pam_open_session(h, 0)
    assert r == 0, f"pam_open_session: {r}"
    r = pam.pam_close_session(h, 0)
    assert r == 0, f"pam_close_session: {r}"
sess = (time.perf_counter() - t) / M
pam.pam_end(h, 0)

print(f"nss: {N} getpwnam calls each, same run, through glibc")
print(f"  local user, nss_files                {files * 1e6:8.1f} us  (first line of /etc/passwd)")
print(f"  local user, nss_files                {files_last * 1e6:8.1f} us  (last line: {last_user.decode()})")
print(f"  VO user, libnss_xos                  {xos * 1e6:8.1f} us  ({xos / files:.1f}x nss_files; target <= 2x; includes the miss in files, as nsswitch.conf says \"files xos\")")
print(f"pam: {M} sessions through pam_xos.so, per-job cgroups (cpuacct,memory)")
print(f"  pam_open_session + pam_close_session {sess * 1e3:8.2f} ms  (target <= 5 ms)")
PY
    XOS_AMSD_SOCKET="$dir/amsd.sock" LD_LIBRARY_PATH="$mods" XOS_JOB_ID=bench \
        unshare --mount sh -c "mount --bind '$dir/nsswitch.conf' /etc/nsswitch.conf &&
            mount --bind '$dir/pam.d' /etc/pam.d && exec python3 '$dir/bench.py'"
}

bench_net() {
    local bin dir conns rounds
    bin=$(release_bin)
    dir=$(mktemp -d)
    conns=${XOS_BENCH_CONNS:-1000}
    rounds=${XOS_BENCH_ROUNDS:-5}
    cat >"$dir/conns.py" <<'PY'
import resource, socket, sys, time
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (4 * n + 64, 4 * n + 64))
keep = []
if n:
    l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(128)
    for i in range(n):
        c = socket.create_connection(l.getsockname()); s, _ = l.accept()
        c.sendall(b"ping %d" % i); s.sendall(b"pong")
        keep += [c, s]
open(sys.argv[2], "w").write("ready")
while True:
    time.sleep(60)
PY
    XOS_STATE_DIR="$dir/state" XOS_BENCH_BIN="$bin" python3 - "$dir" "$conns" "$rounds" <<'PY'
import os, statistics, subprocess, sys, time
d, conns, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bin = os.environ["XOS_BENCH_BIN"]
def run(*a):
    return subprocess.run([bin, *a], check=True, capture_output=True, text=True).stdout
def cycle(n):
    ready = f"{d}/ready"
    if os.path.exists(ready): os.unlink(ready)
    app = run("krgcr-run", "--net", "private", "--detach", "--print-id", "--stdout", "/dev/null",
              "--stderr", "/dev/null", "python3", f"{d}/conns.py", str(n), ready).strip()
    while not os.path.exists(ready): time.sleep(0.01)
    t = time.perf_counter(); run("checkpoint", "-c", "--kill", app); ck = time.perf_counter() - t
    while app in run("checkpoint", "--list").split(): time.sleep(0.01)
    t = time.perf_counter(); run("restart", "--detach", "--stdout", "/dev/null", "--stderr", "/dev/null", app, "1"); rs = time.perf_counter() - t
    pid = [l.split()[2] for l in run("checkpoint", "--list").splitlines()[1:] if l.split()[0] == app]
    for p in pid: os.kill(int(p), 9)
    return ck, rs
res = {}
for n in (0, conns):
    xs = [cycle(n) for _ in range(rounds)]
    res[n] = (statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs))
(b_ck, b_rs), (s_ck, s_rs) = res[0], res[conns]
print(f"net: application in --net private, median of {rounds}")
print(f"  checkpoint -c --kill   no sockets {b_ck*1e3:8.1f} ms   {conns} TCP connections {s_ck*1e3:8.1f} ms   per connection {(s_ck-b_ck)/conns*1e6:7.1f} us")
print(f"  restart                no sockets {b_rs*1e3:8.1f} ms   {conns} TCP connections {s_rs*1e3:8.1f} ms   per connection {(s_rs-b_rs)/conns*1e6:7.1f} us")
print("  target: well under 1000 us per connection")
PY
    rm -rf "$dir"
}

case "${1:-}" in
    net)
        bench_net
        ;;
    ipc)
        shift
        bench_ipc "$@"
        ;;
    ckpt)
        shift
        bench_ckpt "$@"
        ;;
    nss)
        bench_nss
        ;;
    *)
        usage
        ;;
esac
