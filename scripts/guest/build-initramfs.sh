#!/usr/bin/env bash
# Build an L2 guest initramfs (cpio newc): busybox-static, the Ember guest
# init (guests/linux/init), run scripts, helpers, and optional kernel
# modules with their dependencies, loaded in order by init.
#
# Cached by input hash under $EMBER_CACHE/images/ unless -o is given; prints
# the output path on stdout. See --help for options.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
. "$EMBER_ROOT/scripts/lib/image.sh"
. "$EMBER_ROOT/scripts/lib/guest-image.sh"

GUEST_EXTRA_USAGE="  --compress none|gzip  initramfs compression (default: none; the
                        microVM kernel has gzip support, Debian's has more)"
compress=none
extra_opts() {
    case "$1" in
    --compress) compress="$2"; GUEST_SHIFT=2 ;;
    *) return 1 ;;
    esac
}

ember_need_pkgs busybox-static cpio kmod gzip file gcc libc6-dev
guest_parse extra_opts "$@"

mapfile -t inputs < <(guest_inputs)
key="$(ember_hash "$0" "compress=$compress" "${inputs[@]}")"
ext=cpio
[ "$compress" = gzip ] && ext=cpio.gz
cached="$EMBER_CACHE/images/initramfs-$key.$ext"

if [ ! -f "$cached" ]; then
    mkdir -p "$EMBER_CACHE/images"
    tree="$(mktemp -d)"
    trap 'rm -rf "$tree"' EXIT
    guest_stage "$tree"
    img_pack_cpio "$tree" "$cached" "$compress"
    ember_log "built $cached ($(du -h "$cached" | cut -f1))"
fi
if [ -n "$GUEST_OUT" ]; then
    cp "$cached" "$GUEST_OUT.tmp.$$"
    mv "$GUEST_OUT.tmp.$$" "$GUEST_OUT"
    echo "$GUEST_OUT"
else
    echo "$cached"
fi
