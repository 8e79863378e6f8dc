#!/usr/bin/env bash
# Boot the nested, emulated test host (L1) in QEMU TCG with an image from
# build-l1-image.sh, stream its console, and enforce a hard timeout.
#
# Only one emulated host runs at a time on this machine: the run holds an
# exclusive flock on $EMBER_CACHE/locks/nested-host.lock (the Rust harness
# ember-harness takes the same lock).
#
# Usage: run-l1.sh --image L1.cpio [options]
#   --kernel-dir DIR     L1 kernel (default: fetch-debian-kernel.sh)
#   --console FILE       console log (default: a temporary file); the console
#                        is also streamed to stdout unless --quiet
#   --scratch FILE       scratch disk (virtio-blk, ext4); created if missing
#   --scratch-size SIZE  size when creating it (default 256M)
#   --timeout SECS       hard timeout for the whole run (default 600)
#   --scenario-timeout SECS   per scenario, enforced inside L1 (default 240)
#   --stall SECS         L1 heartbeat silence that counts as a hang (default 60)
#   --retries N          boot again after a hang or an early end (default 1)
#   --mem MIB            L1 memory (default 2048)
#   --smp N              L1 vCPUs (default 2)
#   --quiet              do not stream the console
# A scratch disk that did not exist is created (ext4) and made afresh for a
# retry; an existing one is used as it is.
# Exit status: 0 if L1 finished (@@EMBER-L1-DONE), 124 on a hang, 1 otherwise.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

image=""
kdir=""
console=""
scratch=""
scratch_size=256M
timeout_s=600
scenario_timeout=240
mem=2048
smp=2
quiet=0
stall_s=60
retries=1
while [ $# -gt 0 ]; do
    case "$1" in
    --image) image="$2"; shift 2 ;;
    --kernel-dir) kdir="$2"; shift 2 ;;
    --console) console="$2"; shift 2 ;;
    --scratch) scratch="$2"; shift 2 ;;
    --scratch-size) scratch_size="$2"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --scenario-timeout) scenario_timeout="$2"; shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --smp) smp="$2"; shift 2 ;;
    --quiet) quiet=1; shift ;;
    --stall) stall_s="$2"; shift 2 ;;
    --retries) retries="$2"; shift 2 ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) ember_die "unknown option: $1 (see --help)" ;;
    esac
done
[ -f "$image" ] || ember_die "--image L1.cpio is required (build-l1-image.sh)"

ember_need_pkgs qemu-system-x86 e2fsprogs util-linux coreutils
[ -n "$kdir" ] || kdir="$("$EMBER_ROOT/scripts/guest/fetch-debian-kernel.sh")"
if [ -z "$console" ]; then
    console="$(mktemp --suffix=.ember-l1.log)"
fi
: >"$console"

append="console=ttyS0 panic=-1 rdinit=/init quiet ember.heartbeat=1 ember.scenario_timeout=$scenario_timeout"
drive=()
if [ -n "$scratch" ]; then
    drive=(-drive "file=$scratch,format=raw,if=virtio,cache=writeback")
    append="$append ember.scratch=1"
fi
heartbeat="$console.heartbeat"

# No network card, ever: -nodefaults and no -netdev/-nic. The second serial
# port carries L1's heartbeat (a line every 2 s) to tell a hang early.
# shellcheck disable=SC2054 # commas are part of QEMU's option values
qemu=(qemu-system-x86_64 -accel tcg,thread=multi -smp "$smp" -cpu EPYC,+svm
    -m "$mem" -kernel "$kdir/vmlinuz" -initrd "$image" -append "$append"
    -nographic -no-reboot -nodefaults -serial "file:$console"
    -serial "file:$heartbeat" -monitor none -display none
    ${drive[@]+"${drive[@]}"})

mkdir -p "$EMBER_CACHE/locks"
exec 9>"$EMBER_CACHE/locks/nested-host.lock"
if ! flock -n 9; then
    ember_log "waiting for another nested host to finish (lock $EMBER_CACHE/locks/nested-host.lock)"
    flock 9
fi

# One boot of L1. Sets `outcome` to done, hang, stall or died.
boot_once() {
    : >"$console"
    : >"$heartbeat"
    if [ -n "$scratch" ] && { [ "$fresh_scratch" -eq 1 ] || [ ! -f "$scratch" ]; }; then
        rm -f "$scratch"
        truncate -s "$scratch_size" "$scratch"
        mke2fs -q -F -t ext4 -L ember-scratch -E root_owner=0:0 "$scratch"
    fi
    local tail_pid="" qpid hb_len=0 hb_at now len
    if [ "$quiet" -eq 0 ]; then
        tail -n +1 -F "$console" 2>/dev/null &
        tail_pid=$!
    fi
    start=$(date +%s%N)
    "${qemu[@]}" </dev/null >"$console.qemu" 2>&1 &
    qpid=$!
    hb_at=$SECONDS
    outcome=died
    while kill -0 "$qpid" 2>/dev/null; do
        sleep 0.5
        now=$SECONDS
        len=$(stat -c %s "$heartbeat" 2>/dev/null || echo 0)
        if [ "$len" != "$hb_len" ]; then
            hb_len=$len
            hb_at=$now
        fi
        if [ $((($(date +%s%N) - start) / 1000000000)) -ge "$timeout_s" ]; then
            outcome=hang
            kill -KILL "$qpid" 2>/dev/null || true
            break
        elif [ $((now - hb_at)) -ge "$stall_s" ]; then
            outcome=stall
            kill -KILL "$qpid" 2>/dev/null || true
            break
        fi
    done
    wait "$qpid" 2>/dev/null || true
    elapsed_ms=$((($(date +%s%N) - start) / 1000000))
    sleep 0.3
    if [ -n "$tail_pid" ]; then
        kill "$tail_pid" 2>/dev/null || true
        wait "$tail_pid" 2>/dev/null || true
    fi
    grep -v "TCG doesn't support requested feature" "$console.qemu" | sed 's/^/qemu: /' >&2 || true
    rm -f "$console.qemu"
    if [ "$outcome" = died ] && grep -q '@@EMBER-L1-DONE' "$console"; then
        outcome="done"
    fi
}

fresh_scratch=0
[ -n "$scratch" ] && [ ! -f "$scratch" ] && fresh_scratch=1
attempt=0
while :; do
    attempt=$((attempt + 1))
    ember_log "booting L1 (attempt $attempt, timeout ${timeout_s}s, stall limit ${stall_s}s), console: $console"
    boot_once
    case "$outcome" in
    "done")
        ember_log "L1 finished in ${elapsed_ms} ms wall (retries: $((attempt - 1)))"
        exit 0
        ;;
    hang) why="HANG: no end after ${timeout_s}s; QEMU killed" ;;
    stall) why="HANG: L1 heartbeat silent for ${stall_s}s; QEMU killed" ;;
    *) why="L1 ended without finishing after ${elapsed_ms} ms" ;;
    esac
    ember_log "$why. Console tail:"
    tail -n 30 "$console" | tr -d '\r' >&2
    if [ "$attempt" -gt "$retries" ]; then
        [ "$outcome" = died ] && exit 1
        exit 124
    fi
    cp "$console" "$console.attempt$attempt"
    ember_log "retrying (counted: this run had $attempt failed attempt(s))"
done
