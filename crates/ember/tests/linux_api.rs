//! Real Linux driven over ember's Firecracker-compatible API, inside the
//! nested emulated KVM host. In L1, a scenario starts `ember --api-sock`,
//! and talks to it only through the socket (with the `uds-http` helper):
//!
//! - configure and boot over the API (`PUT /boot-source`,
//!   `/machine-config`, `/actions InstanceStart`; `GET /` says Running);
//! - pause and resume (`PATCH /vm`): the guest prints a counter with its
//!   uptime every half second; across the pause the counter moves by one
//!   while the guest's clock jumps by the pause, and `GET /` says Paused;
//! - `SendCtrlAltDel` reaches the guest as a Ctrl+Alt+Del key sequence on
//!   the i8042 keyboard; the guest's init shuts down cleanly (power-off)
//!   and ember exits 0;
//! - a `--config-file` boot with the API up (`GET /vm/config` reports it).
//!
//! Both kernels run the pause and Ctrl+Alt+Del scenario.

use std::time::Duration;

use ember_harness::{
    debian_kernel, ember_ready, microvm_kernel, qemu_available, static_c_program, GuestImage,
    NestedHost,
};

/// The guest's counter: "TICK <n> <uptime>" every half second, forever.
const TICKER: &str =
    "i=0; while :; do i=$((i+1)); echo \"TICK $i $(cut -d' ' -f1 /proc/uptime)\"; sleep 0.5; done";

/// Pause length in the scenario, in seconds.
const PAUSE_S: f64 = 4.0;

/// The L1 side: ember behind its socket, driven by uds-http.
fn api_scenario(kernel: &str, initrd: &str) -> String {
    format!(
        r#"api() {{ echo "API $*"; uds-http api.sock "$@"; }}
waitfor() {{ i=0; while ! grep -q "$1" console.log; do i=$((i+1)); [ $i -gt 300 ] && echo "TIMEOUT waiting for $1" && return 1; sleep 0.2; done; }}
ticks() {{ grep -c '^TICK' console.log; }}
# Waits for ember to exit (at most 60 s, then kills it).
reap() {{ (sleep 60; kill -9 $pid 2>/dev/null) & w=$!; wait $pid; rc=$?; kill $w 2>/dev/null; echo "EMBER-EXIT rc=$rc"; }}
"$EMBER" --api-sock api.sock --id nested >console.log 2>&1 &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
api GET /
api PUT /boot-source '{{"kernel_image_path": "'"$EMBER_L2"'/{kernel}", "initrd_path": "'"$EMBER_L2"'/{initrd}", "boot_args": "console=ttyS0 reboot=k panic=1 quiet ember.run=ticker"}}'
api PUT /machine-config '{{"vcpu_count": 2, "mem_size_mib": 256}}'
api PUT /actions '{{"action_type": "InstanceStart"}}'
api GET /
waitfor "^TICK 4 "
api PATCH /vm '{{"state": "Paused"}}'
api GET /
sleep {PAUSE_S}
api PATCH /vm '{{"state": "Resumed"}}'
api GET /
n=$(ticks); i=0; while [ "$(ticks)" -lt $((n + 3)) ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done
api PUT /actions '{{"action_type": "SendCtrlAltDel"}}'
reap
echo "---- console"
cat console.log
"#
    )
}

/// Boots from a config file with the API serving, checks it, then stops.
fn config_file_scenario(kernel: &str, initrd: &str) -> String {
    format!(
        r#"cat >vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$EMBER_L2/{kernel}", "initrd_path": "$EMBER_L2/{initrd}", "boot_args": "console=ttyS0 quiet ember.end=wait"}},
 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}
EOF
"$EMBER" --api-sock api.sock --config-file vm.json >console.log 2>&1 &
pid=$!
i=0; while ! grep -q EMBER-GUEST-INIT-DONE console.log && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
echo "API GET /"; uds-http api.sock GET /
echo "API GET /vm/config"; uds-http api.sock GET /vm/config
echo "API PUT /boot-source"; uds-http api.sock PUT /boot-source '{{"kernel_image_path": "/x"}}'
uds-http api.sock PUT /actions '{{"action_type": "SendCtrlAltDel"}}'
(sleep 60; kill -9 $pid 2>/dev/null) & w=$!; wait $pid; rc=$?; kill $w 2>/dev/null
echo "EMBER-EXIT rc=$rc"
cat console.log
"#
    )
}

/// (counter, uptime) of each TICK line.
fn ticks(text: &str) -> Vec<(u64, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.trim().strip_prefix("TICK ")?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// The HTTP status and body printed after the "API <request>" line.
fn answer<'a>(out: &'a str, request: &str) -> (&'a str, &'a str) {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.starts_with(&format!("API {request}")))
        .skip(1);
    (lines.next().unwrap_or(""), lines.next().unwrap_or(""))
}

fn check_pause_and_cad(name: &str, out: &str) {
    assert_eq!(answer(out, "GET /").0, "HTTP 200", "{name}:\n{out}");
    assert!(
        answer(out, "GET /").1.contains(r#""state":"Not started""#),
        "{name}:\n{out}"
    );
    for req in [
        "PUT /boot-source",
        "PUT /machine-config",
        "PUT /actions {\"action_type\": \"InstanceStart\"}",
    ] {
        assert_eq!(answer(out, req).0, "HTTP 204", "{name}: {req}:\n{out}");
    }
    // After each state change, GET / reports it.
    let gets: Vec<&str> = out
        .lines()
        .zip(out.lines().skip(2))
        .filter(|(req, _)| *req == "API GET /")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(gets.len(), 4, "{name}:\n{out}");
    assert!(gets[1].contains(r#""state":"Running""#), "{name}: {gets:?}");
    assert!(gets[2].contains(r#""state":"Paused""#), "{name}: {gets:?}");
    assert!(gets[3].contains(r#""state":"Running""#), "{name}: {gets:?}");
    assert_eq!(
        answer(out, "PATCH /vm {\"state\": \"Paused\"}").0,
        "HTTP 204",
        "{name}"
    );
    assert_eq!(
        answer(out, "PATCH /vm {\"state\": \"Resumed\"}").0,
        "HTTP 204",
        "{name}"
    );

    // The pause: consecutive ticks whose counter moves by one while the
    // guest's clock jumps by about the pause; other gaps are short.
    let t = ticks(out);
    assert!(t.len() >= 7, "{name}: too few ticks:\n{out}");
    let gaps: Vec<(u64, f64)> = t
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[1].1 - w[0].1))
        .collect();
    assert!(
        gaps.iter().all(|g| g.0 == 1),
        "{name}: the counter skipped: {gaps:?}"
    );
    let long: Vec<f64> = gaps.iter().map(|g| g.1).filter(|&d| d > 2.0).collect();
    assert_eq!(
        long.len(),
        1,
        "{name}: expected exactly one long gap (the pause): {gaps:?}"
    );
    assert!(
        long[0] >= PAUSE_S - 0.5,
        "{name}: the clock gap {:.2} s does not show a {PAUSE_S} s pause",
        long[0]
    );

    // Ctrl+Alt+Del: the guest's init saw it and powered off cleanly.
    assert_eq!(
        answer(out, "PUT /actions {\"action_type\": \"SendCtrlAltDel\"}").0,
        "HTTP 204",
        "{name}"
    );
    assert!(
        out.contains("EMBER-GUEST-CTRL-ALT-DEL"),
        "{name}: the guest never saw Ctrl+Alt+Del:\n{out}"
    );
    assert!(
        out.contains("ember: the guest powered off"),
        "{name}:\n{out}"
    );
    assert!(out.contains("EMBER-EXIT rc=0"), "{name}:\n{out}");
}

#[test]
fn linux_is_driven_over_the_api() {
    if !qemu_available() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (scripts/test installs it)");
        return;
    }
    let ember = ember_ready().expect("an ember binary (cargo build --release -p ember)");
    let helper = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-harness/helpers/uds-http.c");
    let uds_http = static_c_program(&helper, &[]).expect("build uds-http");
    let debian = debian_kernel().expect("Debian cloud kernel");
    let micro = microvm_kernel().expect("microVM kernel");
    let d_initrd = GuestImage::new()
        .modules_from(&debian)
        .command("ticker", TICKER)
        .initramfs()
        .expect("initramfs");
    let m_initrd = GuestImage::new()
        .command("ticker", TICKER)
        .initramfs()
        .expect("initramfs");
    let report = NestedHost::new()
        .ember(&ember)
        .program(&uds_http, Some("/usr/local/bin/uds-http"))
        .l2_file(&debian.vmlinux, "debian-vmlinux")
        .l2_file(&d_initrd, "debian-initrd")
        .l2_file(&micro.vmlinux, "microvm-vmlinux")
        .l2_file(&m_initrd, "microvm-initrd")
        .scenario(
            "microvm-api",
            &api_scenario("microvm-vmlinux", "microvm-initrd"),
        )
        .scenario(
            "debian-api",
            &api_scenario("debian-vmlinux", "debian-initrd"),
        )
        .scenario(
            "config-file-api",
            &config_file_scenario("microvm-vmlinux", "microvm-initrd"),
        )
        .scenario_timeout(Duration::from_secs(180))
        .timeout(Duration::from_secs(600))
        .run()
        .expect("run the nested host");
    eprintln!("{}", report.summary());
    assert!(report.completed, "{}", report.summary());
    for name in ["microvm-api", "debian-api"] {
        check_pause_and_cad(name, &report.scenario(name).unwrap().output);
    }
    let out = &report.scenario("config-file-api").unwrap().output;
    assert!(
        answer(out, "GET /").1.contains(r#""state":"Running""#),
        "{out}"
    );
    assert!(
        answer(out, "GET /vm/config")
            .1
            .contains(r#""mem_size_mib":128"#),
        "{out}"
    );
    let (status, body) = answer(out, "PUT /boot-source");
    assert_eq!(status, "HTTP 400", "{out}");
    assert!(
        body.contains("not supported after starting the microVM"),
        "{out}"
    );
    assert!(
        out.contains("EMBER-GUEST-CTRL-ALT-DEL") && out.contains("EMBER-EXIT rc=0"),
        "{out}"
    );
}
