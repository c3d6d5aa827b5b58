//! A quick write-throughput measurement through [`RbdImage`]'s `Vlun::write_at`, to set
//! beside `fio --ioengine=rbd` on the same image and pattern (scripts/bench-rbd.sh runs both).
//!
//! ```text
//! rbd_bench POOL/IMAGE seq1m|rand4k THREADS SECONDS [aio|sync]
//! ```
//!
//! `THREADS` threads write at once through one image handle (the counterpart of fio's
//! `--iodepth`): `seq1m` hands out successive 1 MiB blocks, wrapping at the image's end;
//! `rand4k` writes 4 KiB-aligned blocks at random. Like fio's rbd engine, it flushes once
//! before measuring, which turns RBD's client cache (if configured on, Ceph's default) from
//! writethrough to writeback, as the engine's regular syncs do; no flush is issued while
//! measuring, as fio issues none; one follows, timed apart. Prints one line of figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapvol_engine::vlun::Vlun;
use snapvol_rbd::{Cluster, ImageSpec, IoMode, RbdImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [location, pattern, threads, seconds, rest @ ..] = &args[..] else {
        return Err("usage: rbd_bench POOL/IMAGE seq1m|rand4k THREADS SECONDS [aio|sync]".into());
    };
    let spec = ImageSpec::parse(location)?;
    let block: u64 = match pattern.as_str() {
        "seq1m" => 1 << 20,
        "rand4k" => 4096,
        other => return Err(format!("unknown pattern {other}").into()),
    };
    let threads: u64 = threads.parse()?;
    let seconds: f64 = seconds.parse()?;
    let mode = match rest.first().map(String::as_str) {
        None | Some("aio") => IoMode::Aio,
        Some("sync") => IoMode::Sync,
        Some(other) => return Err(format!("unknown mode {other}").into()),
    };

    let cluster = Cluster::connect(None, "admin")?;
    let io = cluster.ioctx(spec.pool)?;
    let mut image = RbdImage::open(&io, spec.image, false)?;
    image.set_io_mode(mode);
    image.sync()?;
    let image = Arc::new(image);
    let blocks = image.len()? / block;
    let next_block = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let data: Arc<Vec<u8>> = Arc::new((0..block).map(|i| (i % 251) as u8 + 1).collect());

    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (image, next_block, stop, data) = (
                image.clone(),
                next_block.clone(),
                stop.clone(),
                data.clone(),
            );
            let sequential = block == 1 << 20;
            std::thread::spawn(move || -> std::io::Result<(u64, Vec<Duration>)> {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let b = if sequential {
                        next_block.fetch_add(1, Ordering::Relaxed) % blocks
                    } else {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng % blocks
                    };
                    let t0 = Instant::now();
                    image.write_at(&data, b * data.len() as u64)?;
                    latencies.push(t0.elapsed());
                }
                Ok((latencies.len() as u64, latencies))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut ops = 0;
    let mut latencies = Vec::new();
    for w in workers {
        let (n, l) = w.join().expect("a writer panicked")?;
        ops += n;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let flush = Instant::now();
    image.sync()?;
    let flush = flush.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "rbd_bench {pattern} threads={threads} mode={mode:?}: {:.1} MiB/s, {:.0} IOPS, \
         latency p50 {:.2} ms p99 {:.2} ms, final flush {:.1} ms",
        (ops * block) as f64 / elapsed / f64::from(1 << 20),
        ops as f64 / elapsed,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        flush.as_secs_f64() * 1e3
    );
    Ok(())
}
