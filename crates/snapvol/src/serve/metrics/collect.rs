//! The metrics, gathered at each scrape: the engine's figures of every volume served
//! (`Volume::metrics`), the request counters of `io_stats.rs`, and the NBD server's
//! connections, written by prometheus-client in the Prometheus text format.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use snapvol_engine::stats::HistogramSnapshot;
use snapvol_engine::VolumeMetrics;
use snapvol_nbd::ConnectionStats;

use crate::serve::io_stats::{errno_labels, ExportKind, Op, VolumeIo};
use crate::serve::StoreExports;

/// Every metric of `snapvol serve`, read when scraped.
pub struct Gather {
    pub exports: Arc<StoreExports>,
    pub connections: ConnectionStats,
}

impl fmt::Debug for Gather {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gather").finish_non_exhaustive()
    }
}

/// One family's descriptor and its samples, one per label set.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(L, Sample)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in rows {
        let mut m = m.encode_family(labels)?;
        match sample {
            Sample::Count(v) => m.encode_counter::<NoLabelSet, _, u64>(v, None)?,
            Sample::Value(v) => m.encode_gauge(v)?,
            Sample::Times(h) => {
                m.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count(), &h.bounded(), None)?
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Sample {
    Count(u64),
    Value(u64),
    Times(HistogramSnapshot),
}

type VolumeLabel<'a> = [(&'static str, &'a str); 1];
/// A family of per-volume samples: name, help, type, and a sample per volume.
type VolumeFamily<'a> = (
    &'static str,
    &'static str,
    MetricType,
    Vec<(VolumeLabel<'a>, Sample)>,
);
type ExportLabels<'a> = [(&'static str, &'a str); 2];
type ExportOpLabels<'a> = [(&'static str, &'a str); 3];

impl Gather {
    fn volumes(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let vols: Vec<(String, u64, VolumeMetrics)> = self
            .exports
            .volumes()
            .into_iter()
            .map(|(name, v)| (name, v.size(), v.metrics()))
            .collect();
        let per = |f: &dyn Fn(u64, &VolumeMetrics) -> Sample| -> Vec<(VolumeLabel<'_>, Sample)> {
            vols.iter()
                .map(|(n, size, m)| ([("volume", n.as_str())], f(*size, m)))
                .collect()
        };
        use MetricType::{Counter, Gauge, Histogram};
        use Sample::{Count, Times, Value};
        let families: [VolumeFamily<'_>; 22] = [
            ("snapvol_volume_size_bytes", "Size of the volume.", Gauge, per(&|s, _| Value(s))),
            (
                "snapvol_volume_failed",
                "1 when the volume refuses writes until reopened (an I/O error, or its lock was lost).",
                Gauge,
                per(&|_, m| Value(u64::from(m.failed))),
            ),
            ("snapvol_snapshots", "Live snapshots.", Gauge, per(&|_, m| Value(m.snapshots))),
            (
                "snapvol_snapshots_created",
                "Snapshots taken since the volume was opened.",
                Counter,
                per(&|_, m| Count(m.snapshots_created)),
            ),
            (
                "snapvol_snapshots_deleted",
                "Snapshots deleted since the volume was opened.",
                Counter,
                per(&|_, m| Count(m.snapshots_deleted)),
            ),
            (
                "snapvol_preserved_chunks",
                "Preserved chunk copies in the target VLUN (each shared by every snapshot that needs it).",
                Gauge,
                per(&|_, m| Value(m.preserved_chunks)),
            ),
            (
                "snapvol_preserved_bytes",
                "Bytes of preserved chunk copies in the target VLUN.",
                Gauge,
                per(&|_, m| Value(m.preserved_bytes)),
            ),
            (
                "snapvol_preserved_copies",
                "Chunk originals copied to the target since the volume was opened.",
                Counter,
                per(&|_, m| Count(m.copies_made)),
            ),
            (
                "snapvol_cache_dirty_bytes",
                "Dirty bytes in the RAM write-back cache (requests waiting for the journal included).",
                Gauge,
                per(&|_, m| Value(m.dirty_bytes)),
            ),
            (
                "snapvol_cache_limit_bytes",
                "Bound on the dirty bytes of the RAM cache.",
                Gauge,
                per(&|_, m| Value(m.cache_limit_bytes)),
            ),
            (
                "snapvol_cache_spare_bytes",
                "Chunk buffers the RAM cache keeps for the next writes of less than a chunk.",
                Gauge,
                per(&|_, m| Value(m.cache_spare_bytes)),
            ),
            (
                "snapvol_journal_used_bytes",
                "Bytes of the cache journal's ring holding records not yet destaged.",
                Gauge,
                per(&|_, m| Value(m.journal_used_bytes)),
            ),
            (
                "snapvol_journal_size_bytes",
                "Size of the cache journal's ring.",
                Gauge,
                per(&|_, m| Value(m.journal_size_bytes)),
            ),
            (
                "snapvol_destage_batches",
                "Destage batches completed since the volume was opened.",
                Counter,
                per(&|_, m| Count(m.destage_batches)),
            ),
            (
                "snapvol_destaged_chunks",
                "Chunks destaged to the source since the volume was opened.",
                Counter,
                per(&|_, m| Count(m.destaged_chunks)),
            ),
            (
                "snapvol_destage_overlapped_batches",
                "Destage batches whose preserved copies were written while the batch before them committed.",
                Counter,
                per(&|_, m| Count(m.destage_overlapped)),
            ),
            (
                "snapvol_destage_batch_duration_seconds",
                "How long destage batches took.",
                Histogram,
                per(&|_, m| Times(m.destage_duration)),
            ),
            (
                "snapvol_cache_wait_seconds",
                "How long write requests waited for room in the cache, or were paced to the destage rate (0 when neither): the share of write latency that destaging causes.",
                Histogram,
                per(&|_, m| Times(m.cache_wait)),
            ),
            (
                "snapvol_metadata_compactions",
                "Compactions of the metadata log completed since the volume was opened.",
                Counter,
                per(&|_, m| Count(m.compactions)),
            ),
            (
                "snapvol_metadata_compaction_tail_records",
                "Metadata records committed while a compaction was under way, which it then appended to its fresh log.",
                Counter,
                per(&|_, m| Count(m.compaction_tail_records)),
            ),
            (
                "snapvol_metadata_compaction_duration_seconds",
                "How long compactions of the metadata log took, from capturing the live state to switching to the fresh log; commits and destage batches go on meanwhile.",
                Histogram,
                per(&|_, m| Times(m.compaction_duration)),
            ),
            (
                "snapvol_checksum_failures",
                "Reads of preserved chunks that failed their checksum (answered with EIO) since the volume was opened.",
                Counter,
                per(&|_, m| Count(m.checksum_failures)),
            ),
        ];
        for (name, help, kind, rows) in &families {
            family(enc, name, help, *kind, rows)?;
        }
        Ok(())
    }

    fn requests(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let io: Vec<(String, Arc<VolumeIo>)> = self.exports.io();
        let exports = || {
            io.iter().flat_map(|(n, io)| {
                ExportKind::ALL
                    .into_iter()
                    .map(move |k| (n.as_str(), k, io.export(k)))
            })
        };
        let rows: Vec<(ExportLabels<'_>, Sample)> = exports()
            .map(|(n, k, e)| {
                (
                    [("volume", n), ("export", k.label())],
                    Sample::Value(e.attached() as u64),
                )
            })
            .collect();
        family(
            enc,
            "snapvol_nbd_export_connections",
            "NBD connections using the volume's live export (export=\"live\") or its snapshots.",
            MetricType::Gauge,
            &rows,
        )?;
        let by_op = |ops: &[Op], f: &dyn Fn(&crate::serve::io_stats::ExportIo, Op) -> Sample| {
            exports()
                .flat_map(|(n, k, e)| {
                    ops.iter().map(move |&op| {
                        (
                            [("volume", n), ("export", k.label()), ("op", op.label())],
                            f(e, op),
                        )
                    })
                })
                .collect::<Vec<(ExportOpLabels<'_>, Sample)>>()
        };
        family(
            enc,
            "snapvol_nbd_requests",
            "NBD requests answered, errors included, by operation.",
            MetricType::Counter,
            &by_op(&Op::ALL, &|e, op| Sample::Count(e.requests(op))),
        )?;
        family(
            enc,
            "snapvol_nbd_bytes",
            "Bytes of the NBD requests answered with success: read, written, trimmed, zeroed.",
            MetricType::Counter,
            &by_op(&Op::WITH_BYTES, &|e, op| Sample::Count(e.bytes(op))),
        )?;
        family(
            enc,
            "snapvol_nbd_request_duration_seconds",
            "Time from an NBD request read to its reply written.",
            MetricType::Histogram,
            &by_op(&Op::TIMED, &|e, op| {
                Sample::Times(e.latency(op).map(|h| h.snapshot()).expect("a timed op"))
            }),
        )?;
        let rows: Vec<(ExportOpLabels<'_>, Sample)> = exports()
            .flat_map(|(n, k, e)| {
                errno_labels().zip(e.errors()).map(move |(errno, v)| {
                    (
                        [("volume", n), ("export", k.label()), ("errno", errno)],
                        Sample::Count(v),
                    )
                })
            })
            .collect();
        family(
            enc,
            "snapvol_nbd_errors",
            "NBD requests answered with an error, by the error the client got.",
            MetricType::Counter,
            &rows,
        )
    }
}

impl Collector for Gather {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let none: [(&str, &str); 0] = [];
        family(
            &mut enc,
            "snapvol_nbd_connections",
            "NBD connections open now, in their handshake or in transmission.",
            MetricType::Gauge,
            &[(none, Sample::Value(self.connections.open() as u64))],
        )?;
        family(
            &mut enc,
            "snapvol_nbd_connections_refused",
            "NBD connections closed unserved because --max-connections were open.",
            MetricType::Counter,
            &[(none, Sample::Count(self.connections.refused()))],
        )?;
        self.requests(&mut enc)?;
        self.volumes(&mut enc)
    }
}
