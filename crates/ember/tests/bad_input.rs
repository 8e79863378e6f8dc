//! Hostile and broken input: each case gets one clear error and a non-zero
//! exit, never a panic or a hang.

mod common;

use common::*;

fn refused(args: &[&str], code: i32, needle: &str) {
    let o = quick(args);
    assert_eq!(o.code, code, "{args:?}: {}", o.stderr);
    assert!(
        o.stderr.contains(needle),
        "{args:?}: expected {needle:?} in {}",
        o.stderr
    );
    assert!(
        !o.stderr.contains("panicked at"),
        "{args:?} panicked: {}",
        o.stderr
    );
    assert_eq!(o.stdout, "", "{args:?} booted a guest");
}

#[test]
fn missing_truncated_and_foreign_kernels() {
    if !have_kvm() {
        return;
    }
    refused(
        &["--kernel", "/nonexistent/vmlinux"],
        1,
        "the kernel file: cannot open \"/nonexistent/vmlinux\"",
    );
    let junk = Scratch::new("junk", b"#!/bin/sh\necho this is not a kernel\n");
    refused(
        &["--kernel", junk.path()],
        1,
        "is neither an ELF vmlinux nor a bzImage",
    );
    let empty = Scratch::new("empty", b"");
    refused(
        &["--kernel", empty.path()],
        1,
        "is neither an ELF vmlinux nor a bzImage",
    );
    let elf = std::fs::read(image("hello.elf")).unwrap();
    let truncated = Scratch::new("trunc.elf", &elf[..elf.len() / 2]);
    refused(
        &["--kernel", truncated.path()],
        1,
        "is not a valid ELF vmlinux",
    );
    let bz = std::fs::read(image("bzhello.bzImage")).unwrap();
    let bz_trunc = Scratch::new("trunc.bz", &bz[..0x300]);
    refused(&["--kernel", bz_trunc.path()], 1, "is not a valid bzImage");
    let mut bad_magic = elf.clone();
    bad_magic[4] = 1; // 32-bit class
    let b = Scratch::new("class.elf", &bad_magic);
    refused(&["--kernel", b.path()], 1, "it is a 32-bit ELF");
}

#[test]
fn initrd_larger_than_guest_memory() {
    if !have_kvm() {
        return;
    }
    let big = Scratch::new("initrd.big", &vec![0u8; 80 << 20]);
    refused(
        &[
            "--kernel",
            &image("hello.elf"),
            "--mem",
            "64",
            "--initrd",
            big.path(),
        ],
        1,
        "does not fit in guest memory",
    );
    refused(
        &[
            "--kernel",
            &image("hello.elf"),
            "--initrd",
            "/nonexistent/initrd",
        ],
        1,
        "the initrd file: cannot open",
    );
}

#[test]
fn memory_sizes() {
    if !have_kvm() {
        return;
    }
    refused(
        &["--kernel", &image("hello.elf"), "--mem", "0"],
        1,
        "mem_size_mib must be at least 1",
    );
    refused(
        &["--kernel", &image("hello.elf"), "--mem", "1"],
        1,
        "too small: at least 2 MiB is needed",
    );
    let host_mib = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<usize>().unwrap() / 1024)
        })
        .unwrap();
    refused(
        &[
            "--kernel",
            &image("hello.elf"),
            "--mem",
            &(host_mib + 1024).to_string(),
        ],
        1,
        "more than this host's",
    );
    refused(
        &["--kernel", &image("hello.elf"), "--mem", "99999999999"],
        1,
        "more than Ember supports",
    );
}

#[test]
fn vcpu_counts() {
    refused(
        &["--kernel", &image("hello.elf"), "--vcpus", "0"],
        1,
        "vcpu_count must be between 1 and 32, got 0",
    );
    refused(
        &["--kernel", &image("hello.elf"), "--vcpus", "33"],
        1,
        "vcpu_count must be between 1 and 32, got 33",
    );
    refused(
        &["--kernel", &image("hello.elf"), "--vcpus", "256"],
        2,
        "invalid value",
    );
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(4096);
    refused(
        &["--kernel", &image("hello.elf"), "--cmdline", &long],
        1,
        "the kernel command line holds at most 2047",
    );
}

#[test]
fn config_files_with_wrong_types_or_unknown_fields() {
    let k = image("hello.elf");
    for (name, json, needle) in [
        (
            "type.json",
            r#"{"boot-source": {"kernel_image_path": 5}}"#.to_string(),
            "invalid type",
        ),
        (
            "unknown.json",
            format!(r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "bogus": 1}}"#),
            "unknown section \"bogus\"",
        ),
        (
            "nested.json",
            format!(r#"{{"boot-source": {{"kernel_image_path": "{k}", "extra": true}}}}"#),
            "unknown field `extra`",
        ),
        (
            "vcpus.json",
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "machine-config": {{"vcpu_count": "two", "mem_size_mib": 128}}}}"#
            ),
            "invalid type",
        ),
        (
            "notjson.json",
            "vcpu_count = 2".to_string(),
            "invalid configuration file",
        ),
        (
            "balloon.json",
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "balloon": {{"amount_mib": 10, "deflate_on_oom": true}}}}"#
            ),
            "\"balloon\" section",
        ),
        (
            "noboot.json",
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#.to_string(),
            "boot-source",
        ),
    ] {
        let f = Scratch::new(name, json.as_bytes());
        refused(&["--no-api", "--config-file", f.path()], 1, needle);
    }
    refused(
        &["--no-api", "--config-file", "/nonexistent.json"],
        1,
        "cannot read the configuration file",
    );
}

#[test]
fn usage_errors() {
    refused(&["--no-api"], 2, "nothing to boot");
    refused(&["--bogus-flag"], 2, "unexpected argument");
    let f = Scratch::new("both.json", b"{}");
    refused(
        &["--no-api", "--config-file", f.path(), "--kernel", "k"],
        1,
        "either --config-file or --kernel",
    );
}
