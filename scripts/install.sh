#!/usr/bin/env bash
# Installs xos: scripts/install.sh [DESTDIR]
#
# The binary and one link per applet in PREFIX/bin, the man pages, pam_xos.so and
# libnss_xos.so.2, the systemd unit of xos-amsd, shell completions and a commented
# default configuration (an existing one is kept). PREFIX is /usr/local unless set;
# DESTDIR (default: none, the running system) is prepended to every path, for
# packaging. Builds the release binary and the modules first if they are missing;
# XOS_BIN and XOS_MODULES name others to install.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."

dest="${1:-}"
prefix="${PREFIX:-/usr/local}"
multiarch=x86_64-linux-gnu
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="${XOS_BIN:-$target/x86_64-unknown-linux-gnu/release/xos}"
modules="${XOS_MODULES:-$target/modules/x86_64-unknown-linux-gnu/release}"

die() { echo "install.sh: $*" >&2; exit 1; }
need() { # Debian packages a build needs
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

if [ ! -x "$bin" ]; then
    command -v cargo >/dev/null || die "no binary at $bin and no cargo to build it"
    need gcc make perl pkg-config
    cargo build --release
fi
if [ ! -f "$modules/pam_xos.so" ] || [ ! -f "$modules/libnss_xos.so.2" ]; then
    command -v cargo >/dev/null || die "no modules in $modules and no cargo to build them"
    need gcc libpam0g-dev
    modules=$(scripts/build-modules.sh)
fi

# Files of root, readable by all: what a package holds.
put() { # MODE SOURCE TARGET
    install -D -m "$1" "$2" "$dest$3"
}

put 755 "$bin" "$prefix/bin/xos"
for applet in $("$bin" --list); do
    ln -sfn xos "$dest$prefix/bin/$applet"
done
for page in man/*.1; do
    put 644 "$page" "$prefix/share/man/man1/$(basename "$page")"
done
for page in man/*.8; do
    put 644 "$page" "$prefix/share/man/man8/$(basename "$page")"
done
put 644 "$modules/pam_xos.so" "/usr/lib/$multiarch/security/pam_xos.so"
put 644 "$modules/libnss_xos.so.2" "/usr/lib/$multiarch/libnss_xos.so.2"

unit="$dest/usr/lib/systemd/system/xos-amsd.service"
install -d "$(dirname "$unit")"
sed "s|/usr/local/bin/|$prefix/bin/|g" scripts/xos-amsd.service >"$unit"
chmod 644 "$unit"

# Completions, one file per command name as each shell looks them up.
for name in xos $("$bin" --list); do
    for file in "share/bash-completion/completions/$name" "share/zsh/vendor-completions/_$name" \
        "share/fish/vendor_completions.d/$name.fish"; do
        case $file in
        *bash*) shell=bash ;;
        *zsh*) shell=zsh ;;
        *) shell=fish ;;
        esac
        install -d "$(dirname "$dest$prefix/$file")"
        "$bin" --completions "$shell" "$name" >"$dest$prefix/$file"
        chmod 644 "$dest$prefix/$file"
    done
done

conf="$dest/etc/xos/nss_pam/pam_xos.conf"
if [ -e "$conf" ]; then
    echo "install.sh: keeping ${conf}"
else
    put 644 scripts/pam_xos.conf /etc/xos/nss_pam/pam_xos.conf
fi

if [ -z "$dest" ]; then
    command -v ldconfig >/dev/null && ldconfig || true
    command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
    cat <<EOF
install.sh: installed in $prefix. Next steps for the VO services:
  /etc/nsswitch.conf: "passwd: files xos" and "group: files xos"
  /etc/pam.d/SERVICE: auth/account/session lines with pam_xos.so (see pam_xos(8))
  systemctl enable --now xos-amsd
EOF
fi
