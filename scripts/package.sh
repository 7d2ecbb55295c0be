#!/usr/bin/env bash
# Builds the Debian package xos_VERSION_amd64.deb: scripts/package.sh [OUTDIR]
#
# What scripts/install.sh installs, with PREFIX=/usr: the binary and its applet
# links, man pages, completions, pam_xos.so, libnss_xos.so.2, the xos-amsd unit
# and the commented configuration /etc/xos/nss_pam/pam_xos.conf, a conffile (an
# upgrade keeps the administrator's changes, a purge removes it). VERSION is the
# crate's unless XOS_VERSION is set; OUTDIR defaults to the target directory.
# Prints the path of the package.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."

version="${XOS_VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}"
out="${1:-${CARGO_TARGET_DIR:-$PWD/target}}"
command -v dpkg-deb >/dev/null || { echo "package.sh: dpkg-deb is needed" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
PREFIX=/usr scripts/install.sh "$root" >/dev/null

mkdir -p "$root/DEBIAN"
size=$(du -sk "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: xos
Version: $version
Architecture: amd64
Maintainer: xos developers <root@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.36), libpam0g
Section: admin
Priority: optional
Description: XtreemOS node-level services for stock Linux
 One static multi-call binary: checkpoint and restart of unmodified jobs
 (krgcr-run, checkpoint, restart, ipccheckpoint, ipcrestart), per-job cgroups,
 and the mapping of grid (VO) users to local accounts with the xos-amsd daemon,
 the PAM module pam_xos.so and the NSS module libnss_xos.so.2.
EOF
(cd "$root" && find etc -type f | sed 's|^|/|' | sort) >"$root/DEBIAN/conffiles"
# libnss_xos.so.2 is found by its soname through the linker cache.
echo "activate-noawait ldconfig" >"$root/DEBIAN/triggers"

mkdir -p "$out"
deb="$out/xos_${version}_amd64.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
