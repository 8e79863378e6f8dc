//! The scripts of `linux_virtio.rs`: guest scripts (busybox sh, put in
//! the guest images as `/ember/run/lv-*`), the L1 scenario scripts, and
//! the Firecracker-style VM configurations they boot ember with.
//!
//! Guest scripts print `key: value` lines that the tests read; L1 prints
//! its own as `l1-key: value`. `@NAME@` placeholders are filled from the
//! test's constants by [`fill`]. Every L2 kernel command line carries
//! `ember.nonce=<n>`, fresh per run, which the guest scripts put in what
//! they send, so nothing from an earlier run can match.

use ember_harness::GuestImage;
use serde_json::{json, Value};

use super::{BUCKET, GUEST_IP, GUEST_MAC, L1_IP, LINES, PAD, RATE_MIB, REFILL_MS};

/// Shell functions for the guest scripts (`/ember/run/lv-lib`, sourced).
const GUEST_LIB: &str = r#"nonce() { sed -n 's/.*ember\.nonce=\([^ ]*\).*/\1/p' /proc/cmdline; }
# The block device whose virtio serial (GET_ID: the drive_id) is $1.
dev_of() {
    for d in /sys/block/vd*; do
        [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
    done
    echo "no drive with serial $1" >&2
    return 1
}
ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }"#;

const GUEST_ROOT: &str = r#"echo "root-mount: $(awk '$2 == "/" { print $3, $4 }' /proc/mounts)"
echo "root-majmin: $(awk '$5 == "/" { print $3 }' /proc/self/mountinfo | tail -n 1)"
echo "vda-majmin: $(cat /sys/block/vda/dev)"
echo "vda-serial: $(cat /sys/block/vda/serial)"
echo "cmdline: $(cat /proc/cmdline)""#;

const GUEST_DEVICES: &str = r#"for d in /sys/bus/virtio/devices/*; do
    drv=none
    [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    echo "virtio-dev: ${d##*/} type=$(cat "$d/device") driver=$drv parent=$(basename "$(dirname "$(readlink -f "$d")")")"
done
for p in /sys/bus/platform/devices/*; do
    case "${p##*/}" in
    LNRO0005* | virtio-mmio*)
        drv=none
        [ -e "$p/driver" ] && drv=$(basename "$(readlink "$p/driver")")
        echo "mmio-dev: ${p##*/} driver=$drv" ;;
    esac
done
echo "blocks: $(cd /sys/block && echo vd*)""#;

const GUEST_RO: &str = r#". /ember/run/lv-lib
RO=$(dev_of ro) || exit 1
echo "ro-getro: $(blockdev --getro "$RO")"
if err=$(dd if=/dev/zero of="$RO" bs=4096 count=1 oflag=direct 2>&1); then
    echo "ro-dd: write succeeded"
else
    echo "ro-dd: write failed"
fi
echo "$err" | grep '^dd:' | sed 's/^/ro-dd-error: /'
mkdir -p /mnt/ro
if mount -t ext4 -o rw "$RO" /mnt/ro 2>/dev/null; then
    echo "ro-mount: mounted $(awk -v d="$RO" '$1 == d { print $4 }' /proc/mounts)"
    if (echo x >/mnt/ro/new.txt) 2>/dev/null; then echo "ro-create: succeeded"; else echo "ro-create: failed"; fi
else
    echo "ro-mount: refused"
    mount -t ext4 -o ro "$RO" /mnt/ro
fi
echo "ro-read: $(cat /mnt/ro/hello.txt)"
umount /mnt/ro"#;

const GUEST_RNG: &str = r#"echo "rng-current: $(cat /sys/class/misc/hw_random/rng_current)"
head -c 4096 /dev/hwrng >/tmp/rng1
head -c 4096 /dev/hwrng >/tmp/rng2
echo "rng-bytes: $(wc -c </tmp/rng1)"
echo "rng-distinct: $(od -An -v -tu1 /tmp/rng1 | tr -s ' ' '\n' | grep -v '^$' | sort -u | wc -l)"
[ "$(md5sum </tmp/rng1)" != "$(md5sum </tmp/rng2)" ] && echo "rng-reads-differ: yes""#;

/// Both directions over the TAP: the guest to L1's echo server, and L1's
/// client (started before the guest boots, retrying) to the guest's.
const GUEST_NET: &str = r#". /ember/run/lv-lib
N=$(nonce)
ip link set eth0 up && ip addr add @GUEST_IP@/24 dev eth0 || exit 1
echo "net-mac: $(cat /sys/class/net/eth0/address)"
ember-vsock-echo tcp-listen 5003 "l2-echo: " >/tmp/tl.log 2>&1 &
lp=$!
ember-vsock-echo tcp-connect @L1_IP@ 5000 "g2l-$N-@PAD@" @LINES@ >/tmp/tc.log 2>&1
echo "net-connect-rc: $?"
sed 's/^/net-connect: /' /tmp/tc.log
wait $lp
echo "net-listen-rc: $?"
sed 's/^/net-listen: /' /tmp/tl.log"#;

const GUEST_VSOCK: &str = r#". /ember/run/lv-lib
N=$(nonce)
ember-vsock-echo listen 5002 "guest-echo: " >/tmp/vl.log 2>&1 &
lp=$!
ember-vsock-echo connect 2 5001 "g2h-$N-@PAD@" @LINES@ >/tmp/vc.log 2>&1
echo "vsock-connect-rc: $?"
sed 's/^/vsock-connect: /' /tmp/vc.log
wait $lp
echo "vsock-listen-rc: $?"
sed 's/^/vsock-listen: /' /tmp/vl.log"#;

const GUEST_BLKRW: &str = r#". /ember/run/lv-lib
D=$(dev_of data) || exit 1
head -c 4194304 /dev/urandom >/tmp/pattern
echo "blkrw-md5: $(md5sum </tmp/pattern | cut -d' ' -f1)"
dd if=/tmp/pattern of="$D" bs=1M seek=1 oflag=direct 2>/dev/null || echo "blkrw: write failed"
echo "blkrw-readback: $(dd if="$D" bs=1M skip=1 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)""#;

const GUEST_RATE: &str = r#". /ember/run/lv-lib
t() {
    s=$(ms)
    dd if="$1" of=/dev/null bs=256k count=$((@RATE_MIB@ * 4)) iflag=direct 2>/dev/null || echo "rate: read of $1 failed"
    echo $(($(ms) - s))
}
echo "rate-unlimited-ms: $(t "$(dev_of unl)")"
echo "rate-limited-ms: $(t "$(dev_of lim)")""#;

const GUEST_TRIM_WRITE: &str = r#". /ember/run/lv-lib
mkdir -p /mnt/t && mount -t ext4 "$(dev_of trim)" /mnt/t || exit 1
dd if=/dev/zero of=/mnt/t/big bs=1M count=48 conv=fsync 2>/dev/null || exit 1
sync
echo "trim-file-kib: $(du -k /mnt/t/big | cut -f1)"
umount /mnt/t"#;

const GUEST_TRIM: &str = r#". /ember/run/lv-lib
mkdir -p /mnt/t && mount -t ext4 "$(dev_of trim)" /mnt/t || exit 1
rm /mnt/t/big && sync
echo "trim-fstrim: $(fstrim -v /mnt/t)"
umount /mnt/t"#;

const GUEST_DURABLE: &str = r#". /ember/run/lv-lib
N=$(nonce)
for id in wb async unsafe; do
    mkdir -p /mnt/$id && mount -t ext4 "$(dev_of $id)" /mnt/$id || exit 1
    echo "durable-$id-$N" >/mnt/$id/durable.txt
done
sync
echo "LV-DURABLE-SYNCED $N""#;

/// Unbind and bind every driver but the root disk's (each device is reset
/// and set up again from scratch, as on a module reload or a kexec), then
/// use every device once more.
const GUEST_REBIND: &str = r#". /ember/run/lv-lib
N=$(nonce)
for d in /sys/bus/virtio/devices/*; do
    n=${d##*/}
    drv=$(basename "$(readlink "$d/driver")")
    [ "$(cat "$d"/block/*/serial 2>/dev/null)" = rootfs ] && continue
    if echo "$n" >"/sys/bus/virtio/drivers/$drv/unbind" && echo "$n" >"/sys/bus/virtio/drivers/$drv/bind"; then
        echo "rebind: $n $drv"
    else
        echo "rebind: $n $drv FAILED"
    fi
done
ip link set eth0 up && ip addr add @GUEST_IP@/24 dev eth0
ember-vsock-echo tcp-connect @L1_IP@ 5010 "net-again-$N" 100 >/tmp/a.log 2>&1
sed 's/^/again-net: /' /tmp/a.log
ember-vsock-echo connect 2 5011 "vsock-again-$N" 100 >/tmp/b.log 2>&1
sed 's/^/again-vsock: /' /tmp/b.log
echo "again-rng-bytes: $(head -c 4096 /dev/hwrng | wc -c)"
head -c 1048576 /dev/urandom >/tmp/p2
D=$(dev_of data) && dd if=/tmp/p2 of="$D" bs=1M seek=8 oflag=direct 2>/dev/null
echo "again-blk: $(md5sum </tmp/p2 | cut -d' ' -f1) $(dd if="$D" bs=1M skip=8 count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)""#;

/// Shell functions at the top of every L1 scenario.
const L1_LIB: &str = r#"say() { echo "l1-$1: $2"; }
show() { [ -f "$2" ] && sed "s/^/l1-$1: /" "$2"; }
md5() { md5sum <"$1" | cut -d' ' -f1; }
kib() { du -k "$1" | cut -f1; }
tap_up() {
    ip link show tap0 >/dev/null 2>&1 ||
        { ip tuntap add dev tap0 mode tap && ip addr add @L1_IP@/24 dev tap0; } || return 1
    ip link set tap0 up
}
boot_vm() {
    timeout -s KILL 200 "$EMBER" --no-api --config-file "$1" --boot-timer 2>&1
    say "exit-$1" "$?"
}
# The L1 ends of the net and vsock exchanges, in the background.
peers_start() {
    ember-uds-echo serve "$EMBER_WORK/v.sock_5001" "host-echo: " >vs.log 2>&1 &
    P1=$!
    ember-uds-echo connect "$EMBER_WORK/v.sock" 5002 "h2g-$NONCE-@PAD@" @LINES@ >vc.log 2>&1 &
    P2=$!
    ember-uds-echo tcp-serve 5000 "l1-echo: " >ts.log 2>&1 &
    P3=$!
    ember-uds-echo tcp-connect @GUEST_IP@ 5003 "l2g-$NONCE-@PAD@" @LINES@ >tc.log 2>&1 &
    P4=$!
    # For lv-rebind.
    ember-uds-echo tcp-serve 5010 "l1-again: " >/dev/null 2>&1 &
    P5=$!
    ember-uds-echo serve "$EMBER_WORK/v.sock_5011" "host-again: " >/dev/null 2>&1 &
    P6=$!
}
peers_stop() {
    for p in $P1 $P2 $P3 $P4 $P5 $P6; do kill "$p" 2>/dev/null; done
    wait $P2; say vsock-connect-rc $?
    wait $P4; say tcp-connect-rc $?
    wait
    show vsock-serve vs.log; show vsock-connect vc.log; show tcp-serve ts.log; show tcp-connect tc.log
}"#;

fn fill(text: &str) -> String {
    text.replace("@LINES@", &LINES.to_string())
        .replace("@PAD@", PAD)
        .replace("@L1_IP@", L1_IP)
        .replace("@GUEST_IP@", GUEST_IP)
        .replace("@RATE_MIB@", &RATE_MIB.to_string())
}

/// One drive of a VM configuration.
struct Drive {
    id: &'static str,
    path: &'static str,
    root: bool,
    ro: bool,
    skip_flush: bool,
    /// io_engine Async (io_uring) instead of Sync.
    uring: bool,
    limited: bool,
}

const fn drive(id: &'static str, path: &'static str) -> Drive {
    Drive {
        id,
        path,
        root: false,
        ro: false,
        skip_flush: false,
        uring: false,
        limited: false,
    }
}

/// The devices of one L2 boot besides its drives.
#[derive(Clone, Copy)]
struct Extras {
    net: bool,
    vsock: bool,
    rng: bool,
}
const ALL: Extras = Extras {
    net: true,
    vsock: true,
    rng: true,
};
const NONE: Extras = Extras {
    net: false,
    vsock: false,
    rng: false,
};

/// A Firecracker-style VM configuration, as sh here-document text (paths
/// may use `$EMBER_L2` and `$EMBER_WORK`).
fn vm_json(kernel: &str, initrd: Option<&str>, args: &str, drives: &[Drive], x: Extras) -> String {
    // Debian's kernel and its modules want more room than the minimal one.
    let mem = if kernel.starts_with("debian") {
        512
    } else {
        256
    };
    // loglevel=3 rather than quiet: also keeps the kernel's I/O error
    // reports (the read-only drive refusing a write) from splitting the
    // lines the scripts print on the same console.
    let mut boot = json!({
        "kernel_image_path": format!("$EMBER_L2/{kernel}"),
        "boot_args": format!("console=ttyS0 reboot=k panic=1 loglevel=3 {args}"),
    });
    if let Some(i) = initrd {
        boot["initrd_path"] = json!(format!("$EMBER_L2/{i}"));
    }
    let drives: Vec<Value> = drives
        .iter()
        .map(|d| {
            let mut v = json!({
                "drive_id": d.id,
                "path_on_host": d.path,
                "is_root_device": d.root,
                "is_read_only": d.ro,
                "cache_type": if d.skip_flush { "Unsafe" } else { "Writeback" },
                "io_engine": if d.uring { "Async" } else { "Sync" },
            });
            if d.limited {
                v["rate_limiter"] =
                    json!({ "bandwidth": { "size": BUCKET, "refill_time": REFILL_MS } });
            }
            v
        })
        .collect();
    let mut vm = json!({
        "boot-source": boot,
        "machine-config": { "vcpu_count": 2, "mem_size_mib": mem },
        "drives": drives,
    });
    if x.net {
        vm["network-interfaces"] =
            json!([{ "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC }]);
    }
    if x.vsock {
        vm["vsock"] = json!({ "guest_cid": 3, "uds_path": "$EMBER_WORK/v.sock" });
    }
    if x.rng {
        vm["entropy"] = json!({});
    }
    serde_json::to_string_pretty(&vm).expect("JSON")
}

/// sh lines writing `json` to `file`.
fn write_json(file: &str, json: &str) -> String {
    format!("cat >{file} <<EOF\n{json}\nEOF\n")
}

fn scenario(nonce: &str, body: &str) -> String {
    fill(&format!("NONCE={nonce}\n{L1_LIB}\n{body}"))
}

pub(super) fn micro_devices(nonce: &str) -> String {
    let runs = "lv-root,lv-devices,lv-ro,lv-rng,lv-net,lv-vsock,lv-blkrw,lv-rate,lv-rebind";
    let json = vm_json(
        "micro-vmlinux",
        None,
        &format!("init=/init ember.run={runs} ember.nonce={nonce}"),
        &[
            Drive {
                root: true,
                ..drive("rootfs", "$EMBER_L2/micro-rootfs.ext4")
            },
            Drive {
                ro: true,
                ..drive("ro", "$EMBER_WORK/ro.img")
            },
            Drive {
                limited: true,
                ..drive("lim", "$EMBER_WORK/lim.img")
            },
            drive("unl", "$EMBER_WORK/unl.img"),
            // io_uring here; Debian's data drive uses the Sync engine.
            Drive {
                uring: true,
                ..drive("data", "$EMBER_WORK/data.img")
            },
        ],
        ALL,
    );
    scenario(
        nonce,
        &format!("{}{DEVICES_BODY}", write_json("vm.json", &json)),
    )
}

pub(super) fn debian_devices(nonce: &str) -> String {
    let runs = "lv-devices,lv-ro,lv-rng,lv-net,lv-vsock,lv-blkrw,lv-rebind";
    let json = vm_json(
        "debian-vmlinux",
        Some("debian-initrd"),
        &format!("ember.run={runs} ember.nonce={nonce}"),
        &[
            Drive {
                ro: true,
                ..drive("ro", "$EMBER_WORK/ro.img")
            },
            drive("data", "$EMBER_WORK/data.img"),
        ],
        ALL,
    );
    scenario(
        nonce,
        &format!("{}{DEVICES_BODY}", write_json("vm.json", &json)),
    )
}

/// L1's side of the device scenarios (vm.json is written first).
const DEVICES_BODY: &str = r#"tap_up || say tap failed
mkdir -p ro-src && echo "ro-content-$NONCE" >ro-src/hello.txt
mke2fs -q -F -t ext4 -d ro-src ro.img 16M || say ro-mke2fs failed
say ro-md5-before "$(md5 ro.img)"
truncate -s 32M lim.img unl.img data.img
peers_start
boot_vm vm.json
peers_stop
say ro-md5-after "$(md5 ro.img)"
say data-md5 "$(dd if=data.img bs=1M skip=1 count=4 2>/dev/null | md5sum | cut -d' ' -f1)"
"#;

pub(super) fn fstrim(nonce: &str) -> String {
    let vm = |run: &str| {
        vm_json(
            "micro-vmlinux",
            Some("micro-initrd"),
            &format!("ember.run={run} ember.nonce={nonce}"),
            &[drive("trim", "/scratch/trim.img")],
            NONE,
        )
    };
    scenario(
        nonce,
        &format!(
            "{}{}{}",
            write_json("write.json", &vm("lv-trim-write")),
            write_json("trim.json", &vm("lv-trim")),
            r#"truncate -s 128M /scratch/trim.img && mke2fs -q -F -t ext4 /scratch/trim.img || say trim-mke2fs failed
sync; say trim-du-initial "$(kib /scratch/trim.img)"
boot_vm write.json
sync; say trim-du-written "$(kib /scratch/trim.img)"
boot_vm trim.json
sync; say trim-du-trimmed "$(kib /scratch/trim.img)"
rm -f /scratch/trim.img
"#
        ),
    )
}

/// Why killing QEMU proves the flush: ember writes a drive with pwritev
/// into L1's page cache; only fdatasync (what a guest FLUSH makes ember
/// call on a `Writeback` drive) pushes it to L1's disk, which QEMU writes
/// to the real host's file. Killing only ember would leave L1's page cache
/// alive and L1 would write the data back later anyway: that proves
/// nothing. Killing QEMU loses everything L1 did not write, like a power
/// cut of the host. To make sure nothing else writes it early, L1 turns
/// off periodic writeback, stretches the scratch file system's journal
/// commit interval, and the drive images are fully allocated beforehand.
/// Both `Writeback` drives (Sync engine: fdatasync; Async: io_uring's
/// fsync) must keep the file. The `Unsafe` drive (no FLUSH offered, so
/// `sync` syncs nothing in ember) is the control: its file must be lost,
/// else the kill proved nothing.
pub(super) fn durability(nonce: &str) -> String {
    let json = vm_json(
        "micro-vmlinux",
        Some("micro-initrd"),
        &format!("ember.run=lv-durable ember.end=wait ember.nonce={nonce}"),
        &[
            drive("wb", "/scratch/dur-wb.img"),
            Drive {
                uring: true,
                ..drive("async", "/scratch/dur-async.img")
            },
            Drive {
                skip_flush: true,
                ..drive("unsafe", "/scratch/dur-unsafe.img")
            },
        ],
        NONE,
    );
    scenario(
        nonce,
        &format!(
            "{}{}",
            write_json("dur.json", &json),
            r#"echo 0 >/proc/sys/vm/dirty_writeback_centisecs
echo 360000 >/proc/sys/vm/dirty_expire_centisecs
mke2fs -q -F -t ext4 dur.ext4 16M || say dur-mke2fs failed
for id in wb async unsafe; do cat dur.ext4 >/scratch/dur-$id.img || say dur-copy failed; done
sync
mount -o remount,commit=600 /scratch || say dur-remount failed
say dur-allocated-kib "$(kib /scratch/dur-wb.img) $(kib /scratch/dur-async.img) $(kib /scratch/dur-unsafe.img)"
boot_vm dur.json
"#
        ),
    )
}

/// The guest image content shared by all L2 boots.
pub(super) fn guest_image(helper: &std::path::Path) -> GuestImage {
    let scripts = [
        ("lv-lib", GUEST_LIB),
        ("lv-root", GUEST_ROOT),
        ("lv-devices", GUEST_DEVICES),
        ("lv-ro", GUEST_RO),
        ("lv-rng", GUEST_RNG),
        ("lv-net", GUEST_NET),
        ("lv-vsock", GUEST_VSOCK),
        ("lv-blkrw", GUEST_BLKRW),
        ("lv-rate", GUEST_RATE),
        ("lv-trim-write", GUEST_TRIM_WRITE),
        ("lv-trim", GUEST_TRIM),
        ("lv-durable", GUEST_DURABLE),
        ("lv-rebind", GUEST_REBIND),
    ];
    scripts.iter().fold(
        GuestImage::new().file(helper, "/ember/bin/ember-vsock-echo"),
        |img, (name, text)| img.command(name, &fill(text)),
    )
}
