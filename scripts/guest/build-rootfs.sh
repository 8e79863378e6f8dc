#!/usr/bin/env bash
# Build an L2 guest ext4 root file system image with `mke2fs -d` (no root,
# no loop mount): the same content as build-initramfs.sh (busybox, the
# Ember guest init as /init, run scripts, helpers, optional modules).
# Boot it with `root=/dev/vda rw init=/init` (a kernel whose virtio-mmio and
# virtio-blk drivers are built in, or an initramfs that loads them first).
#
# Cached by input hash under $EMBER_CACHE/images/ unless -o is given; prints
# the output path on stdout. See --help for options.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
. "$EMBER_ROOT/scripts/lib/image.sh"
. "$EMBER_ROOT/scripts/lib/guest-image.sh"

GUEST_EXTRA_USAGE="  --size SIZE           image size, e.g. 64M (default: content + 50% + 32M)
  --label LABEL         file system label (default: ember-root)"
size=""
label=ember-root
extra_opts() {
    case "$1" in
    --size) size="$2"; GUEST_SHIFT=2 ;;
    --label) label="$2"; GUEST_SHIFT=2 ;;
    *) return 1 ;;
    esac
}

ember_need_pkgs busybox-static e2fsprogs kmod file gcc libc6-dev
guest_parse extra_opts "$@"

mapfile -t inputs < <(guest_inputs)
key="$(ember_hash "$0" "size=$size" "label=$label" "e2fsprogs=$(ember_pkg_version e2fsprogs)" "${inputs[@]}")"
cached="$EMBER_CACHE/images/rootfs-$key.ext4"

if [ ! -f "$cached" ]; then
    mkdir -p "$EMBER_CACHE/images"
    tree="$(mktemp -d)"
    trap 'rm -rf "$tree"' EXIT
    guest_stage "$tree"
    img_pack_ext4 "$tree" "$cached" "$size" "$label"
    ember_log "built $cached ($(du -h --apparent-size "$cached" | cut -f1))"
fi
if [ -n "$GUEST_OUT" ]; then
    # A root file system is written to by the guest: hand out a copy.
    cp --sparse=always "$cached" "$GUEST_OUT.tmp.$$"
    mv "$GUEST_OUT.tmp.$$" "$GUEST_OUT"
    echo "$GUEST_OUT"
else
    echo "$cached"
fi
