#!/usr/bin/env bash
# Build the small static guest-side helper programs in guests/linux/helpers/
# (freestanding C, no libc) into $EMBER_CACHE/helpers/<hash>/ and print that
# directory. Cached by the sources' hash.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

ember_need_pkgs gcc libc6-dev

srcdir="$EMBER_ROOT/guests/linux/helpers"
cflags="-Os -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -Wall -Wextra -Werror"
key="$(ember_hash "$cflags" "$(gcc -dumpfullversion)" "$srcdir"/*.c)"
out="$EMBER_CACHE/helpers/$key"
if [ -f "$out/.done" ]; then
    echo "$out"
    exit 0
fi
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
for c in "$srcdir"/*.c; do
    # shellcheck disable=SC2086 # cflags are words
    gcc $cflags -o "$tmp/$(basename "$c" .c)" "$c"
done
touch "$tmp/.done"
rm -rf "$out"
mv "$tmp" "$out"
ember_log "built helpers: $(ls "$out" | tr '\n' ' ')"
echo "$out"
