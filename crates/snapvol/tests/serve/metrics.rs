//! `serve --metrics ADDR`: the Prometheus endpoint, scraped before and after traffic that real
//! clients send, and scraped over and over while clients write.

use std::time::{Duration, Instant};

use crate::serving::*;

/// `name{volume="v",export=EXPORT,KEY="VALUE"}`, as the server prints the series.
fn series(name: &str, export: &str, key: &str, value: &str) -> String {
    format!(r#"{name}{{volume="v",export="{export}",{key}="{value}"}}"#)
}

fn op(name: &str, export: &str, op: &str) -> String {
    series(name, export, "op", op)
}

/// How much `series` grew from `before` to `after`; it must not have shrunk.
fn grew(before: &Samples, after: &Samples, series: &str) -> u64 {
    let (b, a) = (before.count(series), after.count(series));
    assert!(a >= b, "{series} went back from {b} to {a}");
    a - b
}

/// Scrapes until `series` is `want` (what the server counts a moment after a client left, or
/// once the destager ran), at most 30 s; returns that scrape.
fn scrape_until(port: u16, series: &str, want: u64) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrape(port);
        if s.by_series.get(series).map(|&v| v as u64) == Some(want) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{series} did not become {want} within 30 s:\n{}",
            s.text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every counter-like series of a scrape (`_total`, and a histogram's `_bucket`, `_count` and
/// `_sum`), which may only grow from one scrape to the next.
fn monotonic(s: &Samples) -> impl Iterator<Item = (&String, &f64)> {
    s.by_series.iter().filter(|(k, _)| {
        let name = k.split('{').next().unwrap_or(k);
        ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
    })
}

/// Every histogram's buckets are cumulative and its `+Inf` bucket is its count.
fn check_histograms(s: &Samples) {
    let mut histograms = 0;
    for (count_series, count) in s.by_series.iter().filter(|(k, _)| k.contains("_count")) {
        let (name, labels) = count_series.split_once('{').unwrap_or((count_series, "}"));
        let base = name.trim_end_matches("_count");
        let labels = labels.trim_end_matches('}');
        let sep = if labels.is_empty() { "" } else { "," };
        let mut last = 0.0;
        let mut buckets = 0;
        for (k, v) in &s.by_series {
            if k.starts_with(&format!("{base}_bucket{{{labels}{sep}le=")) {
                buckets += 1;
                // BTreeMap order is not bucket order: compare against +Inf only.
                last = if k.ends_with(r#"le="+Inf"}"#) {
                    *v
                } else {
                    last
                };
                assert!(v <= count, "{k} = {v} is above {count_series} = {count}");
            }
        }
        assert!(buckets > 1, "no buckets for {count_series}:\n{}", s.text);
        assert_eq!(
            last, *count,
            "{base}{{{labels}}}: +Inf bucket and count differ"
        );
        histograms += 1;
    }
    assert!(histograms > 0);
}

#[test]
fn metrics_move_by_exactly_the_requests_real_clients_sent() {
    let env = Env::new();
    env.create("v", "64M");
    let size = 64 * MIB;
    let port = free_port();
    let server = env.serve_with(&["--metrics", &format!("127.0.0.1:{port}")]);
    // The server's own check that it listens was a connection: gone a moment later.
    let before = scrape_until(port, "snapvol_nbd_connections", 0);
    assert_eq!(
        before.count(r#"snapvol_volume_size_bytes{volume="v"}"#),
        size
    );
    assert_eq!(before.count(r#"snapvol_snapshots{volume="v"}"#), 0);
    assert!(before.count(r#"snapvol_journal_size_bytes{volume="v"}"#) > 0);
    assert_eq!(python_parses(&before.text), before.by_series.len());

    // qemu-io: a 1 MiB write, a 64 KiB write and a flush, then the flush qemu makes as it
    // closes the image. Both writes are below the server's largest request, so qemu sends
    // each as one request.
    let live = server.uri("v");
    qemu_io_write(&live, &[(0x11, 0, MIB), (0x22, 4 * MIB, 64 * KIB)]);
    let after = scrape(port);
    let d = |s: &str| grew(&before, &after, s);
    assert_eq!(
        d(&op("snapvol_nbd_bytes_total", "live", "write")),
        MIB + 64 * KIB
    );
    assert_eq!(d(&op("snapvol_nbd_requests_total", "live", "write")), 2);
    let flushes = d(&op("snapvol_nbd_requests_total", "live", "flush"));
    assert!((1..=2).contains(&flushes), "{flushes} flushes");
    assert_eq!(
        d(&op(
            "snapvol_nbd_request_duration_seconds_count",
            "live",
            "write"
        )),
        2
    );
    assert_eq!(
        d(&op(
            "snapvol_nbd_request_duration_seconds_count",
            "live",
            "flush"
        )),
        flushes
    );
    assert!(
        after.get(&op(
            "snapvol_nbd_request_duration_seconds_sum",
            "live",
            "write"
        )) > 0.0
    );
    // Each write waited for cache room once (no time at all, with an empty cache).
    assert_eq!(d(r#"snapvol_cache_wait_seconds_count{volume="v"}"#), 2);
    // With -f raw, qemu-io reads nothing of its own.
    assert_eq!(d(&op("snapvol_nbd_bytes_total", "live", "read")), 0);
    for errno in ["EPERM", "EIO", "EINVAL", "ENOSPC"] {
        assert_eq!(
            d(&series("snapvol_nbd_errors_total", "live", "errno", errno)),
            0
        );
    }

    // A snapshot, then an overwrite of one 64 KiB chunk it needs: one original preserved once
    // the destager has run.
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);
    qemu_io_write(&live, &[(0x33, 0, 64 * KIB)]);
    scrape_until(port, r#"snapvol_preserved_chunks{volume="v"}"#, 1);
    let destaged = scrape_until(port, r#"snapvol_cache_dirty_bytes{volume="v"}"#, 0);
    let d = |s: &str| grew(&before, &destaged, s);
    assert_eq!(destaged.count(r#"snapvol_snapshots{volume="v"}"#), 1);
    assert_eq!(d(r#"snapvol_snapshots_created_total{volume="v"}"#), 1);
    assert_eq!(d(r#"snapvol_snapshots_deleted_total{volume="v"}"#), 0);
    assert_eq!(d(r#"snapvol_preserved_copies_total{volume="v"}"#), 1);
    assert_eq!(
        destaged.count(r#"snapvol_preserved_bytes{volume="v"}"#),
        64 * KIB
    );
    let batches = d(r#"snapvol_destage_batches_total{volume="v"}"#);
    assert!(batches >= 1);
    assert_eq!(
        d(r#"snapvol_destage_batch_duration_seconds_count{volume="v"}"#),
        batches
    );
    // Overlapped batches are some of those batches (none, in a workload this small).
    assert!(d(r#"snapvol_destage_overlapped_batches_total{volume="v"}"#) <= batches);
    // Nothing dirty: the 17 chunks written before the snapshot and the one after are on the
    // source (chunk 0 once or twice, as the batches fell).
    let chunks = d(r#"snapvol_destaged_chunks_total{volume="v"}"#);
    assert!((17..=18).contains(&chunks), "{chunks} chunks destaged");
    assert!(
        destaged.count(r#"snapvol_journal_used_bytes{volume="v"}"#)
            <= destaged.count(r#"snapvol_journal_size_bytes{volume="v"}"#)
    );

    // nbdcopy of the snapshot without its extent map reads every byte of it, exactly once,
    // from the snapshot export (over up to four connections).
    let copy = env.path("s1.img");
    run_ok(
        tool("nbdcopy")
            .arg("--no-extents")
            .arg(server.uri("v@s1"))
            .arg(&copy),
    );
    let copied = scrape(port);
    let d = |s: &str| grew(&destaged, &copied, s);
    assert_eq!(d(&op("snapvol_nbd_bytes_total", "snapshot", "read")), size);
    let reads = d(&op("snapvol_nbd_requests_total", "snapshot", "read"));
    assert!(reads >= 1);
    assert_eq!(
        d(&op(
            "snapvol_nbd_request_duration_seconds_count",
            "snapshot",
            "read"
        )),
        reads
    );
    assert_eq!(d(&op("snapvol_nbd_bytes_total", "snapshot", "write")), 0);
    assert_eq!(d(&op("snapvol_nbd_bytes_total", "live", "read")), 0);

    // Errors as the client got them, on the export that answered: EPERM for a write to the
    // snapshot, EINVAL for a read past the end of the live volume.
    let mut ro = RawNbd::connect(server.port(), "v@s1").expect("v@s1");
    assert_eq!(ro.write(0, &[1; 512]), 1, "EPERM");
    let held = scrape_until(
        port,
        r#"snapvol_nbd_export_connections{volume="v",export="snapshot"}"#,
        1,
    );
    assert!(held.count("snapvol_nbd_connections") >= 1);
    let mut rw = RawNbd::connect(server.port(), "v").expect("v");
    assert_eq!(rw.read(size - 512, 1024), Err(22), "EINVAL");
    drop((ro, rw));
    let errors = scrape_until(port, "snapvol_nbd_connections", 0);
    let d = |s: &str| grew(&copied, &errors, s);
    assert_eq!(
        d(&series(
            "snapvol_nbd_errors_total",
            "snapshot",
            "errno",
            "EPERM"
        )),
        1
    );
    assert_eq!(
        d(&series(
            "snapvol_nbd_errors_total",
            "live",
            "errno",
            "EINVAL"
        )),
        1
    );
    assert_eq!(
        d(&series(
            "snapvol_nbd_errors_total",
            "live",
            "errno",
            "EPERM"
        )),
        0
    );
    assert_eq!(d(&op("snapvol_nbd_requests_total", "snapshot", "write")), 1);
    assert_eq!(d(&op("snapvol_nbd_bytes_total", "snapshot", "write")), 0);
    assert_eq!(
        errors.count(r#"snapvol_nbd_export_connections{volume="v",export="live"}"#),
        0
    );
    assert_eq!(
        errors.count(r#"snapvol_checksum_failures_total{volume="v"}"#),
        0
    );
    assert_eq!(errors.count(r#"snapvol_volume_failed{volume="v"}"#), 0);
    check_histograms(&errors);
    assert_eq!(python_parses(&errors.text), errors.by_series.len());

    // Only GET (and HEAD) of /metrics.
    let other = http(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(other.status, 404, "{other:?}");
    let other = http(port, "GET /metrics/x HTTP/1.1\r\n\r\n");
    assert_eq!(other.status, 404, "{other:?}");
    let post = http(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(post.status, 405, "{post:?}");
    assert!(post.head.contains("Allow: GET, HEAD"), "{post:?}");
    let head = http(port, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((head.status, head.body.as_str()), (200, ""), "{head:?}");
    assert_eq!(http(port, "hello\r\n\r\n").status, 400);
    server.stop();
}

#[test]
fn counters_never_go_back_across_scrapes_while_clients_write_and_snapshots_are_taken() {
    let env = Env::new();
    env.create("v", "256M");
    let port = free_port();
    let server = env.serve_with(&["--metrics", &format!("127.0.0.1:{port}")]);
    let before = scrape(port);
    // Three fio jobs, each on its own connection, writing 64 MiB in 64 KiB requests.
    let mut fio = Background::spawn(
        tool("fio").args([
            "--name=w",
            "--ioengine=nbd",
            &format!("--uri={}", server.uri("v")),
            "--rw=write",
            "--bs=64k",
            "--iodepth=8",
            "--size=64M",
            "--numjobs=3",
            "--offset_increment=64M",
        ]),
        env.dir(),
        "fio",
    );
    let mut last = before.clone();
    let mut scrapes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while fio.is_running() || scrapes < 20 {
        assert!(Instant::now() < deadline, "fio did not finish within 120 s");
        let now = scrape(port);
        for (series, &value) in monotonic(&last) {
            let new = now
                .by_series
                .get(series)
                .unwrap_or_else(|| panic!("{series} vanished"));
            assert!(*new >= value, "{series} went back from {value} to {new}");
        }
        check_histograms(&now);
        scrapes += 1;
        if scrapes % 5 == 0 {
            env.snapvol_ok(&["snapshot", "create", &format!("v@s{scrapes}")]);
        }
        last = now;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = fio.wait_within(LIMIT);
    assert!(out.status.success(), "fio: {out:?}");
    let done = scrape(port);
    let d = |s: &str| grew(&before, &done, s);
    assert_eq!(
        d(&op("snapvol_nbd_bytes_total", "live", "write")),
        192 * MIB
    );
    assert_eq!(
        d(&op("snapvol_nbd_requests_total", "live", "write")),
        192 * MIB / (64 * KIB)
    );
    eprintln!("{scrapes} scrapes while fio wrote");
    assert_eq!(
        d(r#"snapvol_snapshots_created_total{volume="v"}"#),
        scrapes / 5
    );
    assert_eq!(python_parses(&done.text), done.by_series.len());
    server.stop();
}
