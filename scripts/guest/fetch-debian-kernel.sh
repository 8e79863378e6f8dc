#!/usr/bin/env bash
# Fetch Debian's stock cloud kernel (no build) and cache it under
# $EMBER_CACHE/kernels/debian-cloud-<package>-<version>/:
#
#   vmlinuz      the bzImage from the package
#   vmlinux      ELF kernel extracted from vmlinuz (LZ4 payload)
#   config       the kernel's .config
#   System.map
#   modules/lib/modules/<kver>/...   module tree with modules.dep (depmod run)
#   KVER         the kernel release string (uname -r)
#
# This kernel serves both as an L2 guest kernel and as the L1 (nested host)
# kernel. Prints the result directory on stdout.
#
# Usage: fetch-debian-kernel.sh [PACKAGE]
#   PACKAGE defaults to what the linux-image-cloud-amd64 metapackage names.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

ember_need_pkgs lz4 kmod binutils

pkg="${1:-}"
ver=""
# Asking apt-cache takes seconds: remember the answer until the package
# lists change (apt-get update).
lists_stamp="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)"
memo="$EMBER_CACHE/kernels/debian-cloud.resolved"
if [ -z "$pkg" ] && [ -f "$memo" ]; then
    read -r m_stamp m_pkg m_ver <"$memo" || true
    if [ "${m_stamp:-}" = "$lists_stamp" ] && [ -n "${m_ver:-}" ]; then
        pkg="$m_pkg"
        ver="$m_ver"
    fi
fi
if [ -z "$pkg" ]; then
    ember_apt_lists_ready
    deps="$(apt-cache show --no-all-versions linux-image-cloud-amd64 | sed -n 's/^Depends: //p' | head -n1)"
    pkg="$(printf '%s\n' "$deps" | tr ',|' '\n\n' | sed 's/(.*//; s/ //g' |
        grep -E '^linux-image-[0-9].*-cloud-amd64$' | head -n1)"
    [ -n "$pkg" ] || ember_die "cannot find the image package in: $deps"
fi
if [ -z "$ver" ]; then
    ember_apt_lists_ready
    ver="$(apt-cache show --no-all-versions "$pkg" | sed -n 's/^Version: //p' | head -n1)"
    [ -n "$ver" ] || ember_die "no version known for $pkg"
    if [ -z "${1:-}" ]; then
        mkdir -p "$EMBER_CACHE/kernels"
        printf '%s %s %s\n' "$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)" \
            "$pkg" "$ver" >"$memo"
    fi
fi

out="$EMBER_CACHE/kernels/debian-cloud-${pkg#linux-image-}-$ver"
if [ -f "$out/vmlinux" ] && [ -f "$out/KVER" ]; then
    ember_log "cached: $out"
    echo "$out"
    exit 0
fi

# Extract the ELF kernel from a bzImage with an LZ4 (legacy frame) payload.
extract_vmlinux() {
    local bz="$1" dst="$2" off
    for off in $(grep -obUaP '\x02\x21\x4c\x18' "$bz" | cut -d: -f1); do
        # The frame is followed by the rest of the bzImage: lz4 complains
        # about the trailing bytes but has written the whole payload.
        tail -c +"$((off + 1))" "$bz" | lz4 -dc >"$dst" 2>/dev/null || true
        if [ "$(head -c 4 "$dst" | od -An -tx1 | tr -d ' ')" = "7f454c46" ]; then
            ember_log "vmlinux: LZ4 payload at offset $off"
            return 0
        fi
    done
    rm -f "$dst"
    return 1
}

do_fetch() {
    [ -f "$out/vmlinux" ] && return 0
    local tmp="$out.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp/dl" "$tmp/x"
    ember_log "downloading $pkg=$ver"
    (cd "$tmp/dl" && apt-get download -q "$pkg=$ver" >&2)
    dpkg -x "$tmp"/dl/*.deb "$tmp/x"

    local kver bz
    kver="$(ls "$tmp/x/lib/modules")"
    [ "$(printf '%s\n' "$kver" | wc -l)" -eq 1 ] || ember_die "expected one module tree, got: $kver"
    bz="$tmp/x/boot/vmlinuz-$kver"
    [ -f "$bz" ] || ember_die "no $bz in $pkg"

    cp "$bz" "$tmp/vmlinuz"
    cp "$tmp/x/boot/config-$kver" "$tmp/config"
    cp "$tmp/x/boot/System.map-$kver" "$tmp/System.map"
    mkdir -p "$tmp/modules/lib"
    mv "$tmp/x/lib/modules" "$tmp/modules/lib/modules"
    depmod -b "$tmp/modules" "$kver"
    extract_vmlinux "$tmp/vmlinuz" "$tmp/vmlinux" || ember_die "could not extract vmlinux from $bz"
    printf '%s\n' "$kver" >"$tmp/KVER"
    printf 'package=%s\nversion=%s\n' "$pkg" "$ver" >"$tmp/INFO"
    rm -rf "$tmp/dl" "$tmp/x"
    rm -rf "$out"
    mv "$tmp" "$out"
}

ember_with_lock "debian-kernel" do_fetch
ember_log "done: $out ($(cat "$out/KVER"))"
echo "$out"
