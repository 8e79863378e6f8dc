#!/usr/bin/env bash
# Build Ember's minimal microVM guest kernel from Debian's linux-source-6.1:
# `make tinyconfig` + guests/linux/microvm.config, then vmlinux and bzImage.
#
# The result is cached under $EMBER_CACHE/kernels/microvm-<srcver>-<hash>/
# (vmlinux, bzImage, config, build.log), keyed by the source package version
# and the config fragment. Prints the result directory on stdout.
#
# Usage: build-microvm-kernel.sh [--config-only] [--cached-only] [--keep-build] [-j N]
#   --config-only  only produce and check the .config (fast), print its path
#   --cached-only  print the result directory if it is cached, else exit 1
#   --keep-build   keep the build tree under $EMBER_CACHE/build afterwards
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

# Bump when the way the kernel is built changes (invalidates the cache).
BUILD_SCHEME=1

config_only=0
cached_only=0
keep_build=0
jobs="$(nproc)"
while [ $# -gt 0 ]; do
    case "$1" in
    --config-only) config_only=1 ;;
    --cached-only) cached_only=1 ;;
    --keep-build) keep_build=1 ;;
    -j) jobs="$2"; shift ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) ember_die "unknown argument: $1" ;;
    esac
    shift
done

if [ "$cached_only" -eq 1 ]; then
    # Without installing anything: is the kernel for the installed source
    # package and the current fragment in the cache?
    srcver="$(ember_pkg_version linux-source-6.1)"
    [ -n "$srcver" ] || exit 1
    key="$(ember_hash "scheme=$BUILD_SCHEME" "src=$srcver" "$EMBER_ROOT/guests/linux/microvm.config")"
    out="$EMBER_CACHE/kernels/microvm-6.1-${srcver}-${key}"
    [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && echo "$out" && exit 0
    exit 1
fi

ember_need_pkgs linux-source-6.1 build-essential bc bison flex libelf-dev \
    libssl-dev xz-utils kmod cpio

fragment="$EMBER_ROOT/guests/linux/microvm.config"
src_tar=/usr/src/linux-source-6.1.tar.xz
[ -f "$fragment" ] || ember_die "missing $fragment"
[ -f "$src_tar" ] || ember_die "missing $src_tar"

srcver="$(ember_pkg_version linux-source-6.1)"
key="$(ember_hash "scheme=$BUILD_SCHEME" "src=$srcver" "$fragment")"
name="microvm-6.1-${srcver}-${key}"
out="$EMBER_CACHE/kernels/$name"
build="$EMBER_CACHE/build/$name"

if [ "$config_only" -eq 0 ] && [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    ember_log "cached: $out"
    echo "$out"
    exit 0
fi

# Check that every `CONFIG_X=y` of the fragment is `=y` in the given .config.
check_config() {
    local cfg="$1" missing=() line
    while IFS= read -r line; do
        case "$line" in
        CONFIG_*=y)
            grep -qx "$line" "$cfg" || missing+=("$line (have: $(grep -E "^(# )?${line%=y}[= ]" "$cfg" || echo unset))")
            ;;
        esac
    done <"$fragment"
    if [ "${#missing[@]}" -gt 0 ]; then
        ember_log "options requested in $fragment but not =y in the final .config:"
        printf '  %s\n' "${missing[@]}" >&2
        return 1
    fi
    ember_log "all $(grep -c '^CONFIG_.*=y$' "$fragment") requested options are =y"
}

do_build() {
    if [ -f "$out/vmlinux" ] && [ "$config_only" -eq 0 ]; then
        return 0 # built by a concurrent run while we waited for the lock
    fi
    mkdir -p "$build"
    local tree="$build/linux"
    if [ ! -f "$build/.extracted" ]; then
        ember_log "extracting $src_tar (about a minute)"
        rm -rf "$tree" "$build/tmp"
        mkdir -p "$build/tmp"
        tar -C "$build/tmp" -xf "$src_tar"
        mv "$build/tmp/linux-source-6.1" "$tree"
        rmdir "$build/tmp"
        touch "$build/.extracted"
    fi

    ember_log "configuring: tinyconfig + $(basename "$fragment")"
    make -C "$tree" -s tinyconfig >"$build/config.log" 2>&1
    (cd "$tree" && ./scripts/kconfig/merge_config.sh -m .config "$fragment") \
        >>"$build/config.log" 2>&1
    make -C "$tree" olddefconfig >>"$build/config.log" 2>&1
    check_config "$tree/.config"

    if [ "$config_only" -eq 1 ]; then
        echo "$tree/.config"
        return 0
    fi

    ember_log "building vmlinux and bzImage with -j$jobs (about 8+ minutes on 2 cores); log: $build/build.log"
    local t0=$SECONDS
    if ! make -C "$tree" -j"$jobs" vmlinux bzImage >"$build/build.log" 2>&1; then
        tail -n 40 "$build/build.log" >&2
        ember_die "kernel build failed (log: $build/build.log)"
    fi
    ember_log "kernel built in $((SECONDS - t0)) s"

    local tmp="$out.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    cp "$tree/vmlinux" "$tmp/vmlinux"
    cp "$tree/arch/x86/boot/bzImage" "$tmp/bzImage"
    cp "$tree/.config" "$tmp/config"
    cp "$fragment" "$tmp/microvm.config"
    cp "$build/build.log" "$tmp/build.log"
    printf 'source=linux-source-6.1 %s\nfragment_sha256=%s\nbuild_seconds=%s\n' \
        "$srcver" "$(sha256sum <"$fragment" | cut -d' ' -f1)" "$((SECONDS - t0))" >"$tmp/INFO"
    rm -rf "$out"
    mv "$tmp" "$out"
    if [ "$keep_build" -eq 0 ]; then
        rm -rf "$build"
    fi
}

ember_with_lock "kernel-$name" do_build
if [ "$config_only" -eq 0 ]; then
    ember_log "done: $out"
    echo "$out"
fi
