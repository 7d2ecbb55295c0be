#!/usr/bin/env bash
# The xos demo: a computing job is started under krgcr-run, checkpointed and killed,
# restarted from its image, and shown to continue from where it stopped.
#
# On a fresh Debian machine, as root: installs what the build needs (apt-get) and
# builds the release binary if there is none, then works in a temporary state
# directory and cgroup parent that it removes again. Exits non-zero if any step
# does not do what it says. XOS_BIN names another xos binary to use.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
die() { printf '\ndemo.sh: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: krgcr-run uses cgroups, namespaces and ptrace"

bin="${XOS_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release/xos}"
if [ ! -x "$bin" ]; then
    say "Building the release binary (a few minutes, once)"
    pkgs=(gcc make perl pkg-config)
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        run apt-get update -qq
        DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    command -v cargo >/dev/null || die "cargo (Rust 1.85 or newer, e.g. from rustup) is needed to build xos"
    run cargo build --release
fi
[ -x "$bin" ] || die "no binary at $bin"

work=$(mktemp -d /tmp/xos-demo.XXXXXX)
parent="xos-demo-$$"
cleanup() {
    # Whatever is left of the job, then its cgroups and the temporary directory.
    local procs
    for procs in $(find /sys/fs/cgroup -path "*/$parent/*" -name cgroup.procs 2>/dev/null); do
        xargs -r kill -KILL <"$procs" 2>/dev/null || true
    done
    sleep 0.2
    find /sys/fs/cgroup -depth -type d -path "*/$parent*" -exec rmdir {} + 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export XOS_STATE_DIR="$work/state" XOS_CGROUP_PARENT="$parent"
mkdir -p "$work/bin"
"$bin" --install "$work/bin"
export PATH="$work/bin:$PATH"

# The job: step N and the sum 1+...+N, one line every 0.2 s. Both numbers live
# only in the memory of the bash process, so a restart that went back to the
# start, or lost memory, shows.
job='n=0; sum=0; while :; do n=$((n+1)); sum=$((sum+n)); echo "step $n sum $sum"; sleep 0.2; done'
log="$XOS_STATE_DIR/logs"
lines() { wc -l <"$log/$1.out" 2>/dev/null || echo 0; }
wait_lines() { # ID N: wait until the job's log has at least N lines
    local i
    for i in $(seq 100); do
        [ "$(lines "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    die "application $1 wrote fewer than $2 lines in 10 s"
}

say "Starting a small computing job under krgcr-run (state directory $XOS_STATE_DIR)"
echo "cgroup parent $parent (XOS_STATE_DIR and XOS_CGROUP_PARENT are set for every command)"
echo "\$ ID=\$(krgcr-run --detach --print-id bash -c '$job')"
ID=$(krgcr-run --detach --print-id bash -c "$job") || die "krgcr-run failed"
echo "application id: $ID"
wait_lines "$ID" 5

say "It runs in its own cgroup and namespaces, its output in its log"
run checkpoint --list
checkpoint --list | grep -q "^$ID .*running" || die "application $ID is not listed as running"
echo "\$ checkpoint --logs $ID | tail -n 3"
checkpoint --logs "$ID" | tail -n 3

say "Checkpointing it and killing it (as for a migration)"
run checkpoint -c --kill "$ID" || die "checkpoint -c --kill $ID failed"
for i in $(seq 50); do checkpoint --list | grep -q "^$ID " || break; sleep 0.1; done
checkpoint --list | grep -q "^$ID " && die "application $ID still runs after --kill"
stopped=$(lines "$ID")
echo "the job is gone; its last line was: $(tail -n 1 "$log/$ID.out")"
sleep 1
[ "$(lines "$ID")" -eq "$stopped" ] || die "the killed job still writes"

say "The checkpoint versions of application $ID"
run restart --list "$ID"
restart --list "$ID" | grep -q "^1 " || die "version 1 is not listed"

say "Restarting it from version 1"
run restart --detach "$ID" 1 || die "restart $ID 1 failed"
wait_lines "$ID" $((stopped + 5))
run checkpoint --list

say "It continued from where it stopped, not from step 1"
echo "\$ checkpoint --logs $ID | sed -n '$((stopped - 2)),$((stopped + 3))p'"
checkpoint --logs "$ID" | sed -n "$((stopped - 2)),$((stopped + 3))p"
awk '{ n++; if ($1 != "step" || $2 != n || $4 != n * (n + 1) / 2) { print "line " n ": " $0; bad = 1; exit } }
     END { exit bad }' "$log/$ID.out" || die "the log is not one continuous count"
first_after=$(sed -n "$((stopped + 1))p" "$log/$ID.out")
[ "$first_after" = "step $((stopped + 1)) sum $(((stopped + 1) * (stopped + 2) / 2))" ] ||
    die "the first line after the restart is '$first_after'"
echo "steps 1 to $stopped before the checkpoint, $((stopped + 1)) onwards after the restart: one count"

say "Cleaning up"
pid=$(checkpoint --list | awk -v id="$ID" '$1 == id { print $3 }')
[ -n "$pid" ] || die "application $ID is not listed after the restart"
run kill "$pid"
for i in $(seq 50); do checkpoint --list | grep -q "^$ID " || break; sleep 0.1; done
checkpoint --list | grep -q "^$ID " && die "application $ID did not end"
echo
echo "demo.sh: every step did what it says"
