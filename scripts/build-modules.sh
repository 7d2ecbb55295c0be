#!/usr/bin/env bash
# Builds the shared objects pam_xos.so and libnss_xos.so.2.
#
# .cargo/config.toml makes every target artefact static (crt-static), and rustc
# silently drops the cdylib crate type under crt-static, so the modules are built
# in a cargo invocation of their own: an explicitly set RUSTFLAGS (even empty)
# replaces the config's target rustflags. They go to their own target directory,
# TARGET/modules, so the two builds do not invalidate each other.
#
# Result (install names):
#   $TARGET/modules/x86_64-unknown-linux-gnu/release/pam_xos.so
#   $TARGET/modules/x86_64-unknown-linux-gnu/release/libnss_xos.so.2
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}/modules"
RUSTFLAGS="" cargo build --release --quiet -p pam_xos -p nss_xos --target-dir "$target"
out="$target/x86_64-unknown-linux-gnu/release"
for f in libpam_xos.so libnss_xos.so; do
    [ -f "$out/$f" ] || { echo "build-modules.sh: $out/$f was not built" >&2; exit 1; }
done
cp -f "$out/libpam_xos.so" "$out/pam_xos.so"
cp -f "$out/libnss_xos.so" "$out/libnss_xos.so.2"
echo "$out"
