#!/usr/bin/env bash
# Build the initramfs of the nested, emulated test host (L1): busybox, the
# L1 modules (irqbypass, kvm, kvm-amd, tun, virtio-pci, virtio-blk; ext4 is
# built into Debian's cloud kernel), iproute2's `ip` with its libraries, the
# ember binary with its libraries, L2 kernels/images, the scenario scripts
# and scripts/nested/l1-init as /init.
#
# Usage: build-l1-image.sh -o OUT [options]
#   --kernel-dir DIR       L1 kernel from fetch-debian-kernel.sh (default: fetch it)
#   --ember PATH           ember binary (default: target/release/ember if it
#                          exists; "none" to leave it out) -> /usr/local/bin/ember
#   --scenario FILE[:NAME] a scenario script, run in the order given
#                          (NAME defaults to the file name without .sh)
#   --l2 FILE[:NAME]       an L2 kernel or image -> /ember/l2/NAME
#   --file SRC:DST         any file -> DST
#   --bin SRC[:DST]        a program plus the libraries ldd lists
#                          (default DST: /usr/local/bin/<name>)
#   --modules "A B"        extra L1 modules (with dependencies)
#   --compress none|gzip   (default none: TCG decompresses slowly)
# Prints OUT on stdout.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
. "$EMBER_ROOT/scripts/lib/image.sh"

L1_MODULES="irqbypass kvm kvm_amd tun virtio_pci virtio_blk ext4"

out=""
kdir=""
ember="default"
compress=none
extra_modules=""
scenarios=()
l2=()
files=()
bins=()
while [ $# -gt 0 ]; do
    case "$1" in
    -o | --output) out="$2"; shift 2 ;;
    --kernel-dir) kdir="$2"; shift 2 ;;
    --ember) ember="$2"; shift 2 ;;
    --scenario) scenarios+=("$2"); shift 2 ;;
    --l2) l2+=("$2"); shift 2 ;;
    --file) files+=("$2"); shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    --modules) extra_modules="$2"; shift 2 ;;
    --compress) compress="$2"; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) ember_die "unknown option: $1 (see --help)" ;;
    esac
done
[ -n "$out" ] || ember_die "-o OUT is required"

ember_need_pkgs busybox-static cpio kmod iproute2 file gzip
[ -n "$kdir" ] || kdir="$("$EMBER_ROOT/scripts/guest/fetch-debian-kernel.sh")"
kver="$(cat "$kdir/KVER")"

if [ "$ember" = default ]; then
    ember="$EMBER_ROOT/target/release/ember"
    if [ ! -x "$ember" ]; then
        ember_log "no $ember: the L1 image has no ember binary"
        ember=none
    fi
fi

tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT

img_stage_dirs "$tree"
img_stage_busybox "$tree"
install -m 0755 "$EMBER_ROOT/scripts/nested/l1-init" "$tree/init"
# shellcheck disable=SC2086 # module names are words
img_stage_modules "$tree" "$kdir/modules" "$kver" $L1_MODULES $extra_modules
img_stage_binary "$tree" "$(command -v ip)" /sbin/ip

if [ "$ember" != none ]; then
    [ -x "$ember" ] || ember_die "ember binary not found: $ember"
    img_stage_binary "$tree" "$ember" /usr/local/bin/ember
fi
for b in ${bins[@]+"${bins[@]}"}; do
    src="${b%%:*}"
    dst="/usr/local/bin/$(basename "$src")"
    [ "$b" != "$src" ] && dst="${b#*:}"
    [ -x "$src" ] || ember_die "no such program: $src"
    img_stage_binary "$tree" "$src" "$dst"
done

mkdir -p "$tree/ember/l2" "$tree/ember/scenarios"
for f in ${l2[@]+"${l2[@]}"}; do
    src="${f%%:*}"
    name="$(basename "$src")"
    [ "$f" != "$src" ] && name="${f#*:}"
    [ -f "$src" ] || ember_die "no such L2 file: $src"
    # Hard link when possible (same file system): these can be large.
    ln "$src" "$tree/ember/l2/$name" 2>/dev/null || cp "$src" "$tree/ember/l2/$name"
done
for f in ${files[@]+"${files[@]}"}; do
    img_stage_file "$tree" "${f%%:*}" "${f#*:}"
done
: >"$tree/ember/scenarios/ORDER"
for s in ${scenarios[@]+"${scenarios[@]}"}; do
    src="${s%%:*}"
    name="$(basename "$src" .sh)"
    [ "$s" != "$src" ] && name="${s#*:}"
    [ -f "$src" ] || ember_die "no such scenario script: $src"
    case "$name" in *[!A-Za-z0-9._-]*) ember_die "bad scenario name: $name" ;; esac
    grep -qxF "$name" "$tree/ember/scenarios/ORDER" && ember_die "duplicate scenario: $name"
    install -m 0755 "$src" "$tree/ember/scenarios/$name"
    echo "$name" >>"$tree/ember/scenarios/ORDER"
done

mkdir -p "$(dirname "$out")"
img_pack_cpio "$tree" "$out" "$compress"
ember_log "built $out ($(du -h "$out" | cut -f1), $(wc -l <"$tree/ember/scenarios/ORDER") scenarios)"
echo "$out"
