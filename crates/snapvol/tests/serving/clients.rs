//! The real NBD clients: qemu-io, qemu-img, nbdinfo, nbdcopy and fio, run with a time limit.

use std::path::Path;
use std::process::{ExitStatus, Output};

use super::server::Env;
use super::tools::{describe, output_within, run_ok, text, tool};
use super::LIMIT;

/// `qemu-io -f raw ARGS URI`; returns stdout and stderr together.
pub fn qemu_io(args: &[&str], uri: &str) -> (ExitStatus, String) {
    let out = output_within(
        tool("qemu-io").args(["-f", "raw"]).args(args).arg(uri),
        LIMIT,
    );
    (
        out.status,
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// qemu-io writes (`(pattern, offset, len)`) followed by a flush, all of which must succeed.
pub fn qemu_io_write(uri: &str, writes: &[(u8, u64, u64)]) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(p, off, len)| format!("write -P {p:#x} {off} {len}"))
        .chain(["flush".to_owned()])
        .collect();
    let mut args = Vec::new();
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    let (status, out) = qemu_io(&args, uri);
    assert!(
        status.success(),
        "qemu-io {cmds:?} on {uri}: {status}\n{out}"
    );
    for (_, off, len) in writes {
        assert!(
            out.contains(&format!("wrote {len}/{len} bytes at offset {off}")),
            "qemu-io {cmds:?} on {uri}:\n{out}"
        );
    }
    assert!(!out.to_lowercase().contains("fail"), "{out}");
}

/// Read-only qemu-io reads verifying that `(pattern, offset, len)` ranges hold their pattern.
pub fn qemu_io_verify(uri: &str, reads: &[(u8, u64, u64)]) {
    let cmds: Vec<String> = reads
        .iter()
        .map(|(p, off, len)| format!("read -P {p:#x} {off} {len}"))
        .collect();
    let mut args = vec!["-r"];
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    let (status, out) = qemu_io(&args, uri);
    assert!(
        status.success(),
        "qemu-io {cmds:?} on {uri}: {status}\n{out}"
    );
    assert!(
        !out.contains("Pattern verification failed"),
        "{uri} does not hold what it must: qemu-io {cmds:?}:\n{out}"
    );
    for (_, off, len) in reads {
        assert!(
            out.contains(&format!("read {len}/{len} bytes at offset {off}")),
            "qemu-io {cmds:?} on {uri}:\n{out}"
        );
    }
}

/// The exit code of `nbdinfo ARGS URI` (`--can`/`--is`: 0 true, 2 false).
pub fn nbdinfo_code(args: &[&str], uri: &str) -> i32 {
    let out = output_within(tool("nbdinfo").args(args).arg(uri), LIMIT);
    out.status.code().unwrap_or(-1)
}

/// `nbdinfo --json URI`: the description of the export.
pub fn nbdinfo_json(uri: &str) -> serde_json::Value {
    let out = run_ok(tool("nbdinfo").arg("--json").arg(uri));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo --json {uri}: {e}: {}", text(&out.stdout)));
    v["exports"][0].clone()
}

/// One row of `nbdinfo --map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRow {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
    pub description: String,
}

/// `nbdinfo --map URI`, checked to cover `[0, size)` without gaps or overlaps.
pub fn nbdinfo_map(uri: &str, size: u64) -> Vec<MapRow> {
    nbdinfo_map_of("base:allocation", uri, size)
}

/// `nbdinfo --map=CONTEXT URI`, checked to cover `[0, size)` without gaps or overlaps.
pub fn nbdinfo_map_of(context: &str, uri: &str, size: u64) -> Vec<MapRow> {
    let out = run_ok(tool("nbdinfo").arg(format!("--map={context}")).arg(uri));
    let stdout = text(&out.stdout);
    let rows: Vec<MapRow> = stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 3, "nbdinfo --map={context} {uri}: bad row {l:?}");
            MapRow {
                offset: f[0].parse().expect("offset"),
                length: f[1].parse().expect("length"),
                flags: f[2].parse().expect("flags"),
                description: f[3..].join(" "),
            }
        })
        .collect();
    let mut next = 0;
    for r in &rows {
        assert_eq!(
            r.offset, next,
            "nbdinfo --map={context} {uri} has a gap:\n{stdout}"
        );
        next += r.length;
    }
    assert_eq!(
        next, size,
        "nbdinfo --map={context} {uri} does not cover the export:\n{stdout}"
    );
    rows
}

/// The map rows that overlap `[offset, offset + len)`.
pub fn map_rows_over(rows: &[MapRow], offset: u64, len: u64) -> Vec<MapRow> {
    rows.iter()
        .filter(|r| r.offset < offset + len && offset < r.offset + r.length)
        .cloned()
        .collect()
}

/// `nbdcopy FROM TO`.
pub fn nbdcopy(from: &str, to: &Path) {
    run_ok(tool("nbdcopy").arg(from).arg(to));
}

/// `qemu-img compare -f raw -F raw A B`: true when identical, false when different.
pub fn qemu_img_compare(a: &str, b: &str) -> bool {
    let out = output_within(
        tool("qemu-img").args(["compare", "-f", "raw", "-F", "raw", a, b]),
        LIMIT,
    );
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare {a} {b} failed: {}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        ),
    }
}

/// fio's JSON report (the nbd engine prints "connected" lines before it).
pub fn fio_json(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let json = stdout
        .find("\n{")
        .map_or(stdout.as_str(), |i| &stdout[i + 1..]);
    let json = if json.starts_with('{') {
        json
    } else {
        stdout.find('{').map_or("", |i| &stdout[i..])
    };
    serde_json::from_str(json).unwrap_or_else(|e| {
        panic!(
            "fio output is not JSON ({e}):\n{stdout}{}",
            text(&out.stderr)
        )
    })
}

/// Runs fio with `args` plus `--output-format=json`; it must succeed, and every job must end
/// without error having written `write_bytes` (unless `None`: fio counts the writes it only
/// pretends to make with `--verify_only`) and read `read_bytes` each.
pub fn fio_ok(
    env: &Env,
    args: &[String],
    write_bytes: Option<u64>,
    read_bytes: u64,
) -> serde_json::Value {
    let mut cmd = tool("fio");
    cmd.current_dir(env.dir())
        .args(args)
        .arg("--output-format=json");
    let what = describe(&cmd);
    let out = output_within(&mut cmd, LIMIT);
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let v = fio_json(&out);
    let jobs = v["jobs"].as_array().expect("fio jobs");
    assert!(!jobs.is_empty(), "{v}");
    for job in jobs {
        assert_eq!(job["error"], 0, "{what}: {job}");
        if let Some(w) = write_bytes {
            assert_eq!(job["write"]["io_bytes"], w, "{what}: {job}");
        }
        assert_eq!(job["read"]["io_bytes"], read_bytes, "{what}: {job}");
    }
    v
}

/// A fio job over the nbd engine: `numjobs` jobs (one connection each), job k writing `size`
/// bytes at random in `[offset + k * 64M, offset + k * 64M + size)`, every block checked with
/// crc32c. The same arguments plus `--verify_only=1` re-read and check what it wrote.
pub fn fio_job(uri: &str, offset: u64, size: u64, numjobs: u32, seed: u64) -> Vec<String> {
    vec![
        "--name=job".into(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bsrange=4k-128k".into(),
        "--iodepth=16".into(),
        format!("--offset={offset}"),
        format!("--size={size}"),
        format!("--numjobs={numjobs}"),
        format!("--offset_increment={}", 64 * super::MIB),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
        // fio would leave verify state files in the working directory.
        "--verify_state_save=0".into(),
        format!("--randseed={seed}"),
    ]
}

/// `args` followed by `extra`.
pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Re-reads and checks with fio what the job `args` wrote: `bytes` of it.
pub fn fio_verify(env: &Env, args: Vec<String>, bytes: u64) {
    fio_ok(env, &with(args, &["--verify_only=1"]), None, bytes);
}

/// Runs qemu-io `commands` and then a flush on `uri`, all of which must succeed.
pub fn qemu_io_ok(uri: &str, commands: &[&str]) {
    let mut args = Vec::new();
    for c in commands.iter().chain(&["flush"]) {
        args.extend(["-c", c]);
    }
    let (status, out) = qemu_io(&args, uri);
    assert!(
        status.success() && !out.to_lowercase().contains("fail"),
        "qemu-io {commands:?} on {uri}: {status}\n{out}"
    );
}
