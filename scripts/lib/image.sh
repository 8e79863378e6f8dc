# shellcheck shell=bash
# Helpers to stage a root file system tree and pack it as an initramfs
# (cpio newc) or an ext4 image (mke2fs -d), without root and without loop
# mounts. Source after common.sh.

# Copy busybox-static into TREE and create a symlink for each applet. The
# applet links are made once per busybox version in a cached template tree
# (a few hundred forks) and copied from there (one cp).
img_stage_busybox() {
    local tree="$1" bb=/bin/busybox applet ver tpl
    [ -x "$bb" ] || ember_die "busybox not found at $bb (apt-get install busybox-static)"
    file -L "$bb" 2>/dev/null | grep 'statically linked' >/dev/null ||
        ember_die "$bb is not static (install busybox-static, not busybox)"
    ver="$(ember_pkg_version busybox-static)"
    tpl="$EMBER_CACHE/busybox/$(ember_hash "busybox-tree-1" "$ver" "$bb")"
    if [ ! -f "$tpl/.done" ]; then
        rm -rf "$tpl.tmp.$$"
        mkdir -p "$tpl.tmp.$$"/{bin,sbin,usr/bin,usr/sbin}
        cp "$bb" "$tpl.tmp.$$/bin/busybox"
        for applet in $("$bb" --list-full); do
            [ -e "$tpl.tmp.$$/$applet" ] && continue
            mkdir -p "$tpl.tmp.$$/$(dirname "$applet")"
            ln -s /bin/busybox "$tpl.tmp.$$/$applet"
        done
        touch "$tpl.tmp.$$/.done"
        rm -rf "$tpl"
        mv "$tpl.tmp.$$" "$tpl" 2>/dev/null || rm -rf "$tpl.tmp.$$" # lost a race: fine
    fi
    mkdir -p "$tree"
    cp -a "$tpl"/bin "$tpl"/sbin "$tpl"/usr "$tree"/
}

# Create the usual empty directories of a root file system.
img_stage_dirs() {
    local tree="$1"
    mkdir -p "$tree"/{dev,proc,sys,tmp,run,mnt,root,etc,var/tmp}
    chmod 1777 "$tree/tmp" "$tree/var/tmp"
    [ -e "$tree/etc/passwd" ] || printf 'root:x:0:0:root:/root:/bin/sh\n' >"$tree/etc/passwd"
    [ -e "$tree/etc/group" ] || printf 'root:x:0:\n' >"$tree/etc/group"
}

# Copy kernel modules and their dependencies (resolved from modules.dep by
# modprobe) into TREE and append them, in load order, to
# TREE/etc/ember/modules (one .ko path a line, as seen inside the image).
# Usage: img_stage_modules TREE MODROOT KVER NAME...
#   MODROOT contains lib/modules/KVER (modules.dep must exist: depmod -b).
img_stage_modules() {
    local tree="$1" modroot="$2" kver="$3"
    shift 3
    local list="$tree/etc/ember/modules" name line ko rel
    mkdir -p "$tree/etc/ember"
    touch "$list"
    [ -f "$modroot/lib/modules/$kver/modules.dep" ] ||
        ember_die "no modules.dep in $modroot/lib/modules/$kver"
    for name in "$@"; do
        local out
        out="$(modprobe -D -d "$modroot" -S "$kver" "$name" 2>&1)" ||
            ember_die "module $name not found for $kver: $out"
        while IFS= read -r line; do
            case "$line" in
            insmod\ *)
                ko="${line#insmod }"
                ko="${ko%% *}"
                rel="${ko#"$modroot"}"
                rel="/${rel#/}"
                if ! grep -qxF "$rel" "$list"; then
                    mkdir -p "$tree$(dirname "$rel")"
                    cp "$ko" "$tree$rel"
                    printf '%s\n' "$rel" >>"$list"
                fi
                ;;
            builtin\ *) ;;
            *) ember_log "modprobe -D $name: $line" ;;
            esac
        done <<<"$out"
    done
}

# Copy a file (or tree) into the image at DST, replacing what is there.
# Usage: img_stage_file TREE SRC DST
img_stage_file() {
    local tree="$1" src="$2" dst="$3"
    [ -e "$src" ] || ember_die "no such file: $src"
    mkdir -p "$tree$(dirname "$dst")"
    rm -f "$tree$dst"
    cp -a "$src" "$tree$dst"
}

# Copy a dynamically linked program and the shared libraries ldd lists.
# Usage: img_stage_binary TREE SRC DST
img_stage_binary() {
    local tree="$1" src="$2" dst="$3" lib
    mkdir -p "$tree$(dirname "$dst")"
    rm -f "$tree$dst" # may be a busybox applet link: do not write through it
    cp -L "$src" "$tree$dst"
    chmod 0755 "$tree$dst"
    # Busybox applet links of the same name elsewhere in PATH would shadow
    # or be shadowed by the real program: point them at it.
    local d name
    name="$(basename "$dst")"
    for d in bin sbin usr/bin usr/sbin usr/local/bin; do
        if [ -L "$tree/$d/$name" ] && [ "/$d/$name" != "$dst" ]; then
            ln -sf "$dst" "$tree/$d/$name"
        fi
    done
    # Debian's busybox sh runs its own applets before searching PATH
    # (FEATURE_SH_STANDALONE), so `ip` would still be busybox's: define a
    # shell function in the profile that the inits source before scripts.
    if [ -x /bin/busybox ] && /bin/busybox --list | grep -xF "$name" >/dev/null; then
        mkdir -p "$tree/etc/ember"
        printf '%s() { %s "$@"; }\n' "$name" "$dst" >>"$tree/etc/ember/profile"
    fi
    # ldd prints "name => /path (addr)" and "/path (addr)" for the loader;
    # static binaries make it fail ("not a dynamic executable").
    for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' || true); do
        [ -f "$lib" ] || continue
        [ -e "$tree$lib" ] && continue
        mkdir -p "$tree$(dirname "$lib")"
        cp -L "$lib" "$tree$lib"
    done
}

# Emit one cpio newc header + name (no data) for a device node or dir.
# Usage: _newc_entry INO MODE_OCTAL RMAJ RMIN NAME
_newc_entry() {
    local ino="$1" mode=$((8#$2)) rmaj="$3" rmin="$4" name="$5"
    local nsz=$((${#name} + 1)) pad
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$mode" 0 0 1 0 0 0 0 "$rmaj" "$rmin" "$nsz" 0
    printf '%s\0' "$name"
    pad=$(((4 - (110 + nsz) % 4) % 4))
    [ "$pad" -gt 0 ] && head -c "$pad" /dev/zero
    return 0
}

# A cpio newc archive holding /dev/console and /dev/null as device nodes,
# so that the kernel can open the initial console before init runs. Made
# with printf because mknod would need root.
img_dev_nodes_cpio() {
    _newc_entry 900001 040755 0 0 dev
    _newc_entry 900002 020600 5 1 dev/console
    _newc_entry 900003 020666 1 3 dev/null
    _newc_entry 0 0 0 0 'TRAILER!!!'
}

# Pack TREE as a cpio newc initramfs (owner root) into OUT.
# Usage: img_pack_cpio TREE OUT none|gzip
img_pack_cpio() {
    local tree="$1" out="$2" compress="${3:-none}" tmp
    tmp="$out.tmp.$$"
    {
        (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort |
            cpio -o -H newc -R 0:0 --quiet)
        img_dev_nodes_cpio
    } >"$tmp.cpio"
    case "$compress" in
    none) mv "$tmp.cpio" "$tmp" ;;
    gzip) gzip -n -6 <"$tmp.cpio" >"$tmp" && rm -f "$tmp.cpio" ;;
    *) ember_die "unknown compression: $compress" ;;
    esac
    mv "$tmp" "$out"
}

# Pack TREE as an ext4 image of SIZE (e.g. 64M; default: fits the tree with
# room to spare) into OUT, with /dev/console and /dev/null device nodes.
# Usage: img_pack_ext4 TREE OUT [SIZE] [LABEL]
img_pack_ext4() {
    local tree="$1" out="$2" size="${3:-}" label="${4:-ember-root}" tmp kib
    tmp="$out.tmp.$$"
    if [ -z "$size" ]; then
        kib="$(du -sk "$tree" | cut -f1)"
        size="$((kib * 3 / 2 / 1024 + 32))M"
    fi
    rm -f "$tmp"
    truncate -s "$size" "$tmp"
    mke2fs -q -F -t ext4 -L "$label" -E root_owner=0:0 -d "$tree" "$tmp"
    # debugfs's mknod creates the node in its current directory, mode 0.
    printf '%s\n' "cd /dev" "mknod console c 5 1" "sif console mode 020600" \
        "mknod null c 1 3" "sif null mode 020666" |
        debugfs -w -f - "$tmp" >/dev/null 2>&1 ||
        ember_die "debugfs could not create device nodes in $tmp"
    mv "$tmp" "$out"
}
