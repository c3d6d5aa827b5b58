//! The server driven by real NBD clients: qemu-io, qemu-img, nbdinfo, nbdcopy and fio.
//!
//! A missing client fails the test with the package to install (scripts/test.sh installs
//! them): `qemu-utils` for qemu-io/qemu-img, `libnbd-bin` for nbdinfo/nbdcopy, `fio`.

mod common;

use std::process::Command;

use common::*;
use snapvol_nbd::{BlockDevice, MemDevice};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

#[test]
fn qemu_io_writes_a_pattern_flushes_and_reads_it_back() {
    let (exports, vol, _) = volume_and_snapshot(64 * MIB, vec![0; MIB]);
    let h = serve(exports);
    let out = qemu_io(&["-c", "write -P 0xaa 0 1M", "-c", "flush"], &h.uri("vol"));
    assert!(
        out.contains("wrote 1048576/1048576 bytes at offset 0"),
        "{out}"
    );
    assert!(!out.to_lowercase().contains("fail"), "{out}");
    assert!(
        vol.flush_count() >= 1,
        "qemu-io's flush did not reach the device"
    );
    assert!(vol.contents()[..MIB].iter().all(|&b| b == 0xaa));

    let out = qemu_io(&["-r", "-c", "read -P 0xaa 0 1M"], &h.uri("vol"));
    assert!(
        out.contains("read 1048576/1048576 bytes at offset 0"),
        "{out}"
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // And the check can fail: the rest of the volume is zeroes.
    let out = qemu_io(&["-r", "-c", "read -P 0xaa 1M 1M"], &h.uri("vol"));
    assert!(out.contains("Pattern verification failed"), "{out}");
}

#[test]
fn qemu_io_with_fua_writes_zeroes_and_discards() {
    let (exports, vol, _) = volume_and_snapshot(8 * MIB, vec![0; MIB]);
    let h = serve(exports);
    let out = qemu_io(
        &[
            "-c",
            "write -P 0x11 0 4M",
            "-c",
            "write -f -P 0x22 0 64k",
            "-c",
            "write -z 1M 1M",
            "-c",
            "discard 3M 64k",
            "-c",
            "read -P 0x22 0 64k",
            "-c",
            "read -P 0x00 1M 1M",
            "-c",
            "read -P 0x11 2M 1M",
        ],
        &h.uri("vol"),
    );
    assert!(!out.to_lowercase().contains("fail"), "{out}");
    let data = vol.contents();
    assert!(data[..64 * 1024].iter().all(|&b| b == 0x22));
    assert!(data[MIB..2 * MIB].iter().all(|&b| b == 0));
    assert!(data[2 * MIB..3 * MIB].iter().all(|&b| b == 0x11));
}

#[test]
fn qemu_img_info_and_map_report_the_size_and_allocation() {
    require("qemu-img", "qemu-utils");
    let (exports, vol, _) = volume_and_snapshot(16 * MIB, vec![0; MIB]);
    vol.write(0, &vec![7u8; MIB], false).unwrap();
    let h = serve(exports);
    let out = run_ok(Command::new("qemu-img").args(["info", "--output=json", &h.uri("vol")]));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"], 16 * MIB as u64, "{info}");

    let out =
        run_ok(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &h.uri("vol")]));
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let map = map.as_array().unwrap();
    assert_eq!(map[0]["start"], 0, "{map:?}");
    assert_eq!(map[0]["length"], MIB as u64, "{map:?}");
    assert_eq!(map[0]["data"], true, "{map:?}");
    assert_eq!(map[1]["start"], MIB as u64, "{map:?}");
    assert_eq!(map[1]["data"], false, "{map:?}");
    assert_eq!(map[1]["zero"], true, "{map:?}");
}

#[test]
fn nbdinfo_json_reports_size_description_block_sizes_and_capabilities() {
    require("nbdinfo", "libnbd-bin");
    let (exports, _, _) = volume_and_snapshot(64 * MIB, vec![0; MIB]);
    let h = serve(exports);
    let out = run_ok(Command::new("nbdinfo").args(["--json", &h.uri("vol")]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["protocol"], "newstyle-fixed", "{v}");
    assert_eq!(v["structured"], true, "{v}");
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "vol", "{v}");
    assert_eq!(e["export-size"], 64 * MIB as u64, "{v}");
    assert_eq!(e["description"], "the live volume", "{v}");
    assert_eq!(e["is_read_only"], false, "{v}");
    assert_eq!(e["block_size_minimum"], 1, "{v}");
    assert_eq!(e["block_size_preferred"], 4096, "{v}");
    assert_eq!(e["block_size_maximum"], 32 * MIB as u64, "{v}");
    assert_eq!(e["contexts"], serde_json::json!(["base:allocation"]), "{v}");
    for can in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
        "can_cache",
    ] {
        assert_eq!(e[can], true, "{can} in {v}");
    }
    assert_eq!(e["can_fast_zero"], false, "{v}");
}

/// nbdinfo --can/--is exit with 0 for true and 2 for false.
fn nbdinfo_test(args: &[&str], uri: &str) -> i32 {
    require("nbdinfo", "libnbd-bin");
    let out = Command::new("nbdinfo")
        .args(args)
        .arg(uri)
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

#[test]
fn nbdinfo_can_flush_fua_trim_zero_and_multi_conn_on_a_writable_export() {
    let (exports, _, _) = volume_and_snapshot(4 * MIB, vec![0; MIB]);
    let h = serve(exports);
    let uri = h.uri("vol");
    for can in ["flush", "fua", "trim", "zero", "multi-conn", "cache", "df"] {
        assert_eq!(nbdinfo_test(&["--can", can], &uri), 0, "--can {can}");
    }
    assert_eq!(nbdinfo_test(&["--can", "fast-zero"], &uri), 2);
    assert_eq!(nbdinfo_test(&["--is", "read-only"], &uri), 2);
}

#[test]
fn nbdinfo_is_read_only_on_a_read_only_export_which_offers_no_writes() {
    let (exports, _, _) = volume_and_snapshot(4 * MIB, vec![0; MIB]);
    let h = serve(exports);
    let uri = h.uri("vol@snap");
    assert_eq!(nbdinfo_test(&["--is", "read-only"], &uri), 0);
    for cannot in ["write", "flush", "fua", "trim", "zero"] {
        assert_eq!(nbdinfo_test(&["--can", cannot], &uri), 2, "--can {cannot}");
    }
}

#[test]
fn nbdinfo_can_fast_zero_when_the_device_says_zeroing_is_fast() {
    let exports = std::sync::Arc::new(snapvol_nbd::ExportMap::new());
    exports.insert(
        "fast",
        snapvol_nbd::Export::new(
            std::sync::Arc::new(MemDevice::new(MIB).with_fast_zero(true)),
            "",
        ),
    );
    let h = serve(exports);
    assert_eq!(nbdinfo_test(&["--can", "fast-zero"], &h.uri("fast")), 0);
}

#[test]
fn nbdinfo_map_shows_written_data_and_zero_holes() {
    require("nbdinfo", "libnbd-bin");
    let (exports, vol, _) = volume_and_snapshot(8 * MIB, vec![0; MIB]);
    vol.write(2 * MIB as u64, &vec![1u8; MIB], false).unwrap();
    let h = serve(exports);
    let out = run_ok(Command::new("nbdinfo").args(["--map", &h.uri("vol")]));
    let rows: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let expect = [
        (0, 2 * MIB, "3", "hole,zero"),
        (2 * MIB, MIB, "0", "data"),
        (3 * MIB, 5 * MIB, "3", "hole,zero"),
    ];
    assert_eq!(rows.len(), expect.len(), "{rows:?}");
    for (row, (off, len, ty, desc)) in rows.iter().zip(expect) {
        assert_eq!(
            row,
            &vec![
                off.to_string(),
                len.to_string(),
                ty.to_string(),
                desc.to_string()
            ]
        );
    }
}

#[test]
fn nbdinfo_list_shows_every_export_including_ones_added_while_serving() {
    require("nbdinfo", "libnbd-bin");
    let (exports, _, _) = volume_and_snapshot(MIB, vec![0; MIB]);
    let h = serve(exports.clone());
    exports.insert(
        "late",
        snapvol_nbd::Export::new(std::sync::Arc::new(MemDevice::new(4096)), "added later"),
    );
    let out = run_ok(Command::new("nbdinfo").args(["--list", "--json", &h.uri("")]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["late", "vol", "vol@snap"], "{v}");
}

#[test]
fn nbdcopy_out_of_the_server_equals_the_device_content() {
    require("nbdcopy", "libnbd-bin");
    let snap = pattern(24 * MIB + 4096, 5);
    let (exports, _, ro) = volume_and_snapshot(MIB, snap.clone());
    let h = serve(exports);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    run_ok(Command::new("nbdcopy").arg(h.uri("vol@snap")).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), ro.contents());
    assert_eq!(ro.contents(), snap);
}

#[test]
fn nbdcopy_into_the_server_over_several_connections_lands_every_byte() {
    require("nbdcopy", "libnbd-bin");
    let (exports, vol, _) = volume_and_snapshot(32 * MIB, vec![0; MIB]);
    let h = serve(exports);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.img");
    let data = pattern(32 * MIB, 9);
    std::fs::write(&input, &data).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4", "--flush"])
            .arg(&input)
            .arg(h.uri("vol")),
    );
    assert!(
        vol.contents() == data,
        "the volume differs from what nbdcopy sent"
    );
    assert!(vol.flush_count() >= 1);
}

#[test]
fn a_write_to_a_read_only_export_fails_and_a_read_succeeds() {
    let (exports, _, ro) = volume_and_snapshot(MIB, vec![0x5a; MIB]);
    let h = serve(exports);
    let out = qemu_io(&["-c", "write -P 0xaa 0 4k"], &h.uri("vol@snap"));
    assert!(
        out.contains("Permission denied") || out.contains("Operation not permitted"),
        "{out}"
    );
    assert!(!out.contains("wrote"), "{out}");
    assert!(ro.contents().iter().all(|&b| b == 0x5a));
    let out = qemu_io(&["-r", "-c", "read -P 0x5a 0 1M"], &h.uri("vol@snap"));
    assert!(out.contains("read 1048576/1048576"), "{out}");
    assert!(!out.contains("verification failed"), "{out}");
}

#[test]
fn fio_random_writes_with_crc32c_verify_pass_on_two_connections() {
    require("fio", "fio");
    let (exports, vol, _) = volume_and_snapshot(64 * MIB, vec![0; MIB]);
    let h = serve(exports);
    let out = run_ok(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", h.uri("vol")),
        "--rw=randwrite",
        "--bs=64k",
        "--iodepth=16",
        "--size=32M",
        "--numjobs=2",
        "--offset_increment=32M",
        "--verify=crc32c",
        "--verify_fatal=1",
        // fio would leave verify state files in the working directory.
        "--verify_state_save=0",
        "--output-format=json",
    ]));
    // The nbd engine prints "fio: connected to NBD server" lines before the JSON.
    let text = stdout(&out);
    let json = text.find("\n{").map_or(text.as_str(), |i| &text[i + 1..]);
    let v: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("fio output is not JSON ({e}): {text}"));
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    for job in jobs {
        assert_eq!(job["error"], 0, "{job}");
        assert_eq!(job["write"]["io_bytes"], 32 * MIB as u64, "{job}");
        // The verify phase reads back everything that was written.
        assert_eq!(job["read"]["io_bytes"], 32 * MIB as u64, "{job}");
    }
    assert!(vol.write_count() >= 1024);
}

#[test]
fn qemu_io_and_nbdinfo_work_over_a_unix_socket() {
    require("nbdinfo", "libnbd-bin");
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let (exports, vol, _) = volume_and_snapshot(4 * MIB, vec![0; MIB]);
    let running = snapvol_nbd::Server::builder(exports)
        .unix(&path)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let uri = format!("nbd+unix:///vol?socket={}", path.display());
    let out = qemu_io(&["-c", "write -P 0x33 4k 4k", "-c", "flush"], &uri);
    assert!(
        out.contains("wrote 4096/4096 bytes at offset 4096"),
        "{out}"
    );
    assert!(vol.contents()[4096..8192].iter().all(|&b| b == 0x33));
    let out = run_ok(Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(stdout(&out).trim(), (4 * MIB).to_string());
    running.stop().unwrap();
}
