# shellcheck shell=bash
# Common option parsing and staging of the L2 guest userland, shared by
# scripts/guest/build-initramfs.sh and scripts/guest/build-rootfs.sh.
# Source after common.sh and image.sh.

# Modules loaded by default when a module tree (--kernel-dir) is given:
# Debian's cloud kernel has its virtio drivers and pvpanic-mmio as modules.
GUEST_DEFAULT_MODULES="virtio_mmio virtio_blk virtio_net vmw_vsock_virtio_transport virtio_balloon virtio_rng pvpanic_mmio"

guest_usage() {
    cat <<EOF
Usage: $(basename "$0") [options]
  -o, --output FILE     output file (default: cached under \$EMBER_CACHE/images/;
                        the path is printed on stdout either way)
  --kernel-dir DIR      a kernel directory from fetch-debian-kernel.sh (has
                        modules/ and KVER): include modules from it
  --modules "A B ..."   modules to include with their dependencies, loaded in
                        order by init (default with --kernel-dir:
                        $GUEST_DEFAULT_MODULES)
  --run FILE[:NAME]     add a script as /ember/run/NAME (default NAME: file name
                        without .sh); guests/linux/run/* are always included
  --cmd NAME=COMMAND    add a one-line script /ember/run/NAME
  --file SRC:DST        add a file at DST (absolute path in the image)
  --init FILE           use FILE as /init (default: guests/linux/init)
EOF
    [ -n "${GUEST_EXTRA_USAGE:-}" ] && printf '%s\n' "$GUEST_EXTRA_USAGE"
    return 0
}

# shellcheck disable=SC2034 # GUEST_* are read by the calling scripts
# Parse options into GUEST_* variables. Unknown options are an error,
# except those the caller handles: it passes a function name in $1 that
# returns 0 (and sets GUEST_SHIFT) when it consumed an option.
guest_parse() {
    local extra="$1"
    shift
    GUEST_OUT=""
    GUEST_KDIR=""
    GUEST_MODULES=""
    GUEST_MODULES_SET=0
    GUEST_RUNS=()
    GUEST_CMDS=()
    GUEST_FILES=()
    GUEST_INIT="$EMBER_ROOT/guests/linux/init"
    while [ $# -gt 0 ]; do
        case "$1" in
        -o | --output) GUEST_OUT="$2"; shift 2 ;;
        --kernel-dir) GUEST_KDIR="$2"; shift 2 ;;
        --modules) GUEST_MODULES="$2"; GUEST_MODULES_SET=1; shift 2 ;;
        --run) GUEST_RUNS+=("$2"); shift 2 ;;
        --cmd) GUEST_CMDS+=("$2"); shift 2 ;;
        --file) GUEST_FILES+=("$2"); shift 2 ;;
        --init) GUEST_INIT="$2"; shift 2 ;;
        -h | --help) guest_usage; exit 0 ;;
        *)
            GUEST_SHIFT=0
            if "$extra" "$@"; then
                shift "$GUEST_SHIFT"
            else
                guest_usage >&2
                ember_die "unknown option: $1"
            fi
            ;;
        esac
    done
    if [ -n "$GUEST_KDIR" ] && [ "$GUEST_MODULES_SET" -eq 0 ]; then
        GUEST_MODULES="$GUEST_DEFAULT_MODULES"
    fi
    if [ -n "$GUEST_MODULES" ] && [ -z "$GUEST_KDIR" ]; then
        ember_die "--modules needs --kernel-dir"
    fi
    return 0
}

# Print the list of inputs that determine the image (for ember_hash).
guest_inputs() {
    local r f
    echo "$EMBER_ROOT/scripts/lib/image.sh"
    echo "$EMBER_ROOT/scripts/lib/guest-image.sh"
    echo "$GUEST_INIT"
    for f in "$EMBER_ROOT"/guests/linux/run/* "$EMBER_ROOT"/guests/linux/helpers/*; do
        [ -f "$f" ] && echo "$f"
    done
    echo "busybox=$(ember_pkg_version busybox-static)"
    echo "kdir=$GUEST_KDIR"
    [ -n "$GUEST_KDIR" ] && echo "kver=$(cat "$GUEST_KDIR/KVER")"
    echo "modules=$GUEST_MODULES"
    for r in ${GUEST_RUNS[@]+"${GUEST_RUNS[@]}"}; do
        echo "run=${r#*:}"
        echo "${r%%:*}"
    done
    for r in ${GUEST_CMDS[@]+"${GUEST_CMDS[@]}"}; do echo "cmd=$r"; done
    for r in ${GUEST_FILES[@]+"${GUEST_FILES[@]}"}; do
        echo "file=${r#*:}"
        echo "${r%%:*}"
    done
}

# Stage the guest tree into TREE.
guest_stage() {
    local tree="$1" r src name helpers
    img_stage_dirs "$tree"
    img_stage_busybox "$tree"
    install -m 0755 "$GUEST_INIT" "$tree/init"
    ln -sf /init "$tree/sbin/init.ember"

    helpers="$("$EMBER_ROOT/scripts/guest/build-helpers.sh")"
    mkdir -p "$tree/ember/bin" "$tree/ember/run"
    for src in "$helpers"/*; do
        install -m 0755 "$src" "$tree/ember/bin/$(basename "$src")"
    done

    for src in "$EMBER_ROOT"/guests/linux/run/*; do
        [ -f "$src" ] && install -m 0755 "$src" "$tree/ember/run/$(basename "$src" .sh)"
    done
    for r in ${GUEST_RUNS[@]+"${GUEST_RUNS[@]}"}; do
        src="${r%%:*}"
        name="$(basename "$src" .sh)"
        [ "$r" != "$src" ] && name="${r#*:}"
        [ -f "$src" ] || ember_die "no such script: $src"
        install -m 0755 "$src" "$tree/ember/run/$name"
    done
    for r in ${GUEST_CMDS[@]+"${GUEST_CMDS[@]}"}; do
        name="${r%%=*}"
        printf '#!/bin/sh\n%s\n' "${r#*=}" >"$tree/ember/run/$name"
        chmod 0755 "$tree/ember/run/$name"
    done
    for r in ${GUEST_FILES[@]+"${GUEST_FILES[@]}"}; do
        img_stage_file "$tree" "${r%%:*}" "${r#*:}"
    done

    if [ -n "$GUEST_MODULES" ]; then
        # shellcheck disable=SC2086 # module names are words
        img_stage_modules "$tree" "$GUEST_KDIR/modules" "$(cat "$GUEST_KDIR/KVER")" $GUEST_MODULES
    fi
}
