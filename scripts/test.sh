#!/usr/bin/env bash
# The one test command of xos (see README): on a Debian 12 machine, as root, it
# installs what the build and the tests need, checks formatting and lints, builds
# the static release binary and runs every test against the real kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the tests use cgroups, namespaces and ptrace: run as root" >&2
    exit 1
fi

# Debian packages: C toolchain and perl for the vendored OpenSSL, util-linux and
# procps for the tests, man-db to render the man pages, libpam0g-dev to link
# pam_xos.so and pamtester to test it, iproute2, nftables, redis-server and
# postgresql for the socket tests, busybox-static for the root filesystem
# templates of the container tests.
pkgs=(gcc make perl pkg-config util-linux procps man-db groff-base python3 xz-utils libpam0g-dev pamtester iproute2 nftables redis-server postgresql busybox-static)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts/test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# CRIU 4.x for the criu backend's tests (Debian 12's 3.17 does not work on 6.x
# kernels): criu on PATH, else the build beside the repository, whose install
# script apt-gets its libraries. The tests find it through XOS_CRIU.
if [ -z "${XOS_CRIU:-}" ]; then
    if command -v criu >/dev/null && criu --version | grep -q '^Version: [4-9]'; then
        XOS_CRIU=$(command -v criu)
    elif [ -x ../shared/peers/criu/install.sh ]; then
        XOS_CRIU=$(../shared/peers/criu/install.sh)
    elif [ -x /work/shared/peers/criu/install.sh ]; then
        XOS_CRIU=$(/work/shared/peers/criu/install.sh)
    else
        echo "scripts/test.sh: CRIU 4.0 or newer is needed (criu on PATH, XOS_CRIU, or ../shared/peers/criu)" >&2
        exit 1
    fi
fi
export XOS_CRIU
"$XOS_CRIU" check >/dev/null 2>&1 || { echo "scripts/test.sh: $XOS_CRIU check fails" >&2; exit 1; }
if ! command -v cargo >/dev/null; then
    echo "scripts/test.sh: cargo (Rust 1.85 or newer) is needed" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The PAM and NSS modules are built without crt-static (scripts/build-modules.sh).
RUSTFLAGS="" cargo clippy --all-targets -p xos-proto -p pam_xos -p nss_xos \
    --target-dir "${CARGO_TARGET_DIR:-$PWD/target}/modules" -- -D warnings
scripts/build-modules.sh >/dev/null
cargo build --release
export XOS_RELEASE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release/xos"
cargo test -p xos-proto
cargo test -- --test-threads=2
