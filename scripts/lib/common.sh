# shellcheck shell=bash
# Shared helpers for Ember's guest and nested-host scripts.
#
# Source this file; it defines functions only (plus a few variables) and
# does not change shell options of the caller.
#
#   EMBER_CACHE   cache root (default: ~/.cache/ember)
#   EMBER_ROOT    repository root (derived from this file's location)

EMBER_ROOT="${EMBER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
EMBER_CACHE="${EMBER_CACHE:-${HOME:-/root}/.cache/ember}"
export EMBER_ROOT EMBER_CACHE

# Log to stderr with the script's name, so stdout can carry a result path.
ember_log() {
    printf '[%s] %s\n' "$(basename "${0}")" "$*" >&2
}

ember_die() {
    ember_log "error: $*"
    exit 1
}

# Run a command as root: directly if we are root, via sudo otherwise.
ember_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        ember_die "need root to run: $*"
    fi
}

# Install Debian packages that are not yet installed. Quick (no apt call)
# when all are present; runs `apt-get update` once before the first install.
ember_need_pkgs() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null; then
            missing+=("$p")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    ember_log "installing Debian packages: ${missing[*]}"
    if [ -z "${EMBER_APT_UPDATED:-}" ]; then
        ember_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        EMBER_APT_UPDATED=1
        export EMBER_APT_UPDATED
    fi
    ember_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Make sure `apt-get download`/`apt-cache` know about packages (fresh
# machines have empty lists).
ember_apt_lists_ready() {
    if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
        if [ -z "${EMBER_APT_UPDATED:-}" ]; then
            ember_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            EMBER_APT_UPDATED=1
            export EMBER_APT_UPDATED
        fi
    fi
}

# Print a short hash of the given strings and files. Arguments that name an
# existing regular file contribute the file's content; others contribute
# themselves as strings. Order matters.
ember_hash() {
    local a
    {
        for a in "$@"; do
            if [ -f "$a" ]; then
                printf 'file:%s\n' "$(basename "$a")"
                sha256sum <"$a"
            else
                printf 'str:%s\n' "$a"
            fi
        done
    } | sha256sum | cut -c1-16
}

# Hold an exclusive lock on a file under the cache while running a command.
# Usage: ember_with_lock NAME cmd args...
ember_with_lock() {
    local name="$1"
    shift
    mkdir -p "$EMBER_CACHE/locks"
    (
        flock -x 9
        "$@"
    ) 9>"$EMBER_CACHE/locks/$name.lock"
}

# Installed version of a Debian package (empty if not installed).
ember_pkg_version() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true
}
