//! The command line: every command, argument and help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::size::{parse_size, SizeError};

const ABOUT: &str =
    "Snapshot engine for block volumes: instant snapshots that share one preserved copy.";

const LONG_ABOUT: &str = "\
Snapshot engine for block volumes: instant snapshots that share one preserved copy.

A volume's live data (the source VLUN) is a plain raw image, usable without snapvol. When a \
chunk is first overwritten after one or more snapshots were taken, its original data is copied \
once into the snapshot store (the target VLUN) and every snapshot that needs it points at that \
same copy, so writes cost the same however many snapshots exist. Volumes live in a store \
directory (--store, $SNAPVOL_STORE, or ./snapvol-store); a volume is named VOL and a snapshot \
VOL@SNAP.";

const EXAMPLES: &str = "\
Examples:
  snapvol create vm1 --size 10G                 a 10 GiB volume with 64 KiB chunks
  snapvol import vm1 disk.img                   copy a raw image into the live volume
  snapvol snapshot create vm1@monday            take a snapshot (instant)
  snapvol snapshot list vm1                     snapshots with the space each one holds
  snapvol export vm1@monday monday.img          read the snapshot back as a full image
  snapvol export vm1@tue d.rbd --from vm1@mon  only what changed since mon (an rbd diff)
  snapvol info vm1 --json                       machine-readable details
  snapvol --store /srv/volumes list             use another store (or set SNAPVOL_STORE)

Sizes take K, M, G, T suffixes (powers of 1024): 512, 64K, 10G, 1TiB.
Exit codes: 0 success, 1 failure, 2 usage error. Set RUST_LOG=debug for engine logs.";

const CREATE_EXAMPLES: &str = "\
Examples:
  snapvol create vm1 --size 10G
  snapvol create db --size 100G --chunk-size 256K --target-size 20G
  snapvol create vm2 --size 20G --source /dev/vg0/vm2 --target /srv/snap/vm2.svt

The size must be a multiple of the chunk size. Without --target-size the snapshot store grows \
as needed; with it, a write that needs more room fails with ENOSPC and changes nothing.";

const IMPORT_EXAMPLES: &str = "\
Examples:
  snapvol import vm1 debian.raw
  qemu-img convert -O raw disk.qcow2 disk.raw && snapvol import vm1 disk.raw

FILE is written from offset 0 of the live volume and may be smaller than the volume (the rest is \
left as it was) but not larger: that is refused before anything is written. Snapshots keep \
what they held: the overwritten data is preserved once for all of them.";

const EXPORT_EXAMPLES: &str = "\
Examples:
  snapvol export vm1 live.img                   the live volume
  snapvol export vm1@monday monday.img          a snapshot
  snapvol export vm1@monday - | gzip > monday.img.gz

A full image is always exactly the volume's size. A regular output file is written sparse: \
all-zero regions are left as holes.

Incremental (--from VOL@FROM): only the chunks that changed between FROM and VOL@TO (or the \
live volume), as an 'rbd diff v1' stream that `snapvol import-diff` and Ceph's `rbd \
import-diff` apply. What changed is known from metadata, so the cost follows the amount of \
change, not the volume's size.
  snapvol export vm1@tue tue.rbd --from vm1@mon        changes from mon to tue
  snapvol export vm1 now.rbd --from vm1@tue            changes from tue to the live volume
  snapvol export vm1@tue - --from vm1@mon | ssh backup snapvol import-diff vm1 -

The stream names FROM (its from-snapshot) and TO (its to-snapshot, which import-diff creates); \
a stream to the live volume names no to-snapshot, and since the live volume may change while \
it is read, export a snapshot for a consistent copy. Zeroed or trimmed ranges travel as zero \
records without data. FROM must be older than TO and of the same volume.";

const IMPORT_DIFF_EXAMPLES: &str = "\
Examples:
  snapvol import-diff vm1 tue.rbd               apply a stream, then create its to-snapshot
  snapvol export vm1@tue - --from vm1@mon | snapvol --store /backup import-diff vm1 -

Restore a chain: import the full image of the first snapshot, take that snapshot, then apply \
each stream in order:
  snapvol import vm1 mon.img && snapvol snapshot create vm1@mon
  snapvol import-diff vm1 tue.rbd && snapvol import-diff vm1 wed.rbd

Before writing anything, import-diff checks that the volume has the stream's from-snapshot, \
does not have its to-snapshot yet, is the stream's size (volumes are not resized), and has not \
changed since the from-snapshot (the stream would be applied on top of those changes; --force \
applies it anyway). The changes are all or nothing: if the stream is cut short, malformed, or \
the process dies, the live volume is left as the from-snapshot (after a crash, by the next \
open). A stream without a from-snapshot (rbd export-diff without --from-snap) is a whole image \
and is applied without that guarantee. If the process died after the data was durable but \
before the to-snapshot was created, the live volume differs from the from-snapshot: run the \
same import-diff again with --force.";

const SNAPSHOT_EXAMPLES: &str = "\
Examples:
  snapvol snapshot create vm1@monday
  snapvol snapshot list vm1
  snapvol snapshot list vm1 --json
  snapvol snapshot delete vm1@monday
  snapvol snapshot rollback vm1@monday          the live volume becomes monday again

A snapshot is instant and holds every write acknowledged before it was taken. Deleting one frees \
the preserved data only it was using (its EXCLUSIVE bytes); data shared with other snapshots \
stays.";

const ROLLBACK_HELP: &str = "\
The live volume becomes exactly the snapshot's content. Every snapshot, older and newer, stays \
as it was (unlike ZFS, which destroys the newer ones): to keep the current state too, take a \
snapshot first. Only the chunks that differ are rewritten, so the time follows the amount of \
change since the snapshot, not the volume's size. If the process dies part-way, the next open \
finishes the rollback. While snapvol serve holds the volume, a rollback is refused when clients \
are connected to its live export (their view of the disk would change under them) unless \
--force is given.

Examples:
  snapvol snapshot create vm1@before-upgrade
  snapvol snapshot rollback vm1@monday
  snapvol snapshot rollback vm1@monday --force  even with clients connected to nbd://.../vm1";

const DIFF_EXAMPLES: &str = "\
Examples:
  snapvol diff vm1@monday                       what changed since monday (in the live volume)
  snapvol diff vm1@monday vm1@tuesday           what changed between two snapshots
  snapvol diff vm1@monday vm1@tuesday --json    {from, to, chunk_size, changed_bytes, extents}

Computed from snapshot metadata alone, never by reading data: it costs one step per preserved \
chunk, whatever the volume's size, and it cannot be lost the way a dirty bitmap can. Extents \
are whole chunks that some write between the two points touched (trims and zeroing count); \
data written back unchanged counts too. Over NBD the same is the metadata context \
qemu:dirty-bitmap:SNAP of export VOL (changed since SNAP) and of VOL@TO (between SNAP and TO).";

const CHECK_EXAMPLES: &str = "\
Examples:
  snapvol check vm1                             verify vm1 (reads only; changes nothing)
  snapvol check vm1 --data                      also read every preserved chunk and verify it
  snapvol check vm1 --json                      the report as JSON
  snapvol check vm1 --repair                    repair what can be, then re-check

Checks both superblock copies, both copies of every block and every record of the metadata log \
(checksums, sequence numbers, pointers in bounds), that no snapshot has two pointers for one chunk, that no target \
slot is used twice, and the cache journal: a damaged record that records of later appends \
follow held flushed writes and is a problem; a damaged last record (an append a crash cut \
short, or damage after a FLUSH: nothing tells which) is a warning. Each problem is one line, \
LOCATION: DETAIL, with byte offsets in hex. Exit code 0 when all is well (warnings included), \
1 when a problem is found (or remains after --repair). While snapvol serve holds the volume, \
the check runs in the server. --data reads every preserved chunk (all of the snapshot store's \
data) and verifies its checksum; without it, a damaged chunk is still caught when it is read. \
--repair rewrites a damaged superblock copy or metadata block from its good copy and salvages a \
damaged journal: every intact record is replayed and each lost write is listed with its offset \
and length. The source VLUN (the live data) is a plain raw image without checksums: check does \
not read it.";

const SERVE_EXAMPLES: &str = "\
Examples:
  snapvol serve                                 every volume on nbd://127.0.0.1:10809/
  snapvol serve --listen 0.0.0.0:10809 --unix /run/snapvol.sock
  snapvol serve --max-connections 16            at most 16 NBD connections at once
  snapvol serve --metrics 127.0.0.1:9108        Prometheus metrics on
                                                http://127.0.0.1:9108/metrics
  snapvol serve --listen 0.0.0.0:10809 --tls-cert server-cert.pem --tls-key server-key.pem
                                                TLS required; add --tls-ca ca-cert.pem to
                                                require client certificates of that CA
  nbdinfo 'nbds://HOST:10809/vol?tls-certificates=DIR'
                                                a TLS client; DIR holds ca-cert.pem,
                                                client-cert.pem and client-key.pem
  qemu-img info nbd://127.0.0.1:10809/vol       the live volume (read-write)
  qemu-io -f raw -c 'write -P 0xaa 0 1M' nbd://127.0.0.1:10809/vol
  snapvol snapshot create vol@s1                taken by the server, consistent under I/O
  nbdcopy nbd://127.0.0.1:10809/vol@s1 s1.img   a snapshot (read-only)

Exports are named VOL (read-write) and VOL@SNAP (read-only); a snapshot taken while serving \
is exported at once. Besides base:allocation, VOL offers the block-status context \
qemu:dirty-bitmap:SNAP for every snapshot SNAP (the chunks changed since SNAP), and VOL@B one for \
every snapshot older than B (changed between SNAP and B), for incremental backups. On an empty store, serve creates a 10G volume named 'vol' (sparse). While \
it runs, info and snapshot commands go to the server through STORE/control.sock (a Unix socket \
only the server's user can use). SIGTERM or SIGINT stops accepting, finishes the requests in \
flight, destages every volume and exits 0.

NBD itself has no authentication: anyone who can reach the port can read and write every \
volume. Listening on anything but a loopback address without TLS logs a warning. With \
--tls-cert and --tls-key, TLS is required (the NBD spec's NBD_OPT_STARTTLS, as qemu-nbd and \
nbdkit do it), and --tls-ca also requires a client certificate from that CA. SIGHUP reloads the \
certificate, key and CA from the same files: new connections use them, open ones carry on; a \
file that cannot be read or used is logged and the old ones are kept. scripts/tls-certs.sh \
makes a CA and certificates with openssl. Pre-shared keys (--tls-psk) are not offered: rustls \
has no external pre-shared keys.";

/// Parses a size argument for clap.
fn size_arg(s: &str) -> Result<u64, SizeError> {
    parse_size(s)
}

/// snapvol's command line.
#[derive(Debug, Parser)]
#[command(
    name = "snapvol",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Where the volumes are: a directory, or rbd:POOL for a store kept in a Ceph pool
    /// (reachable from every host with the cluster's configuration).
    #[arg(
        long,
        global = true,
        env = "SNAPVOL_STORE",
        value_name = "DIR|rbd:POOL",
        default_value = "./snapvol-store"
    )]
    pub store: PathBuf,

    /// Ceph configuration file for rbd: locations and stores (default: $CEPH_CONF, else
    /// /etc/ceph/ceph.conf).
    #[arg(long, global = true, value_name = "FILE")]
    pub ceph_conf: Option<PathBuf>,

    /// Ceph client id to connect as (client.ID).
    #[arg(long, global = true, value_name = "ID", default_value = "admin")]
    pub ceph_id: String,

    /// Log level: error, warn, info, debug or trace (default: info for serve, warn otherwise;
    /// RUST_LOG, when set, wins).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a volume.
    #[command(after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// List the volumes in the store.
    List(ListArgs),
    /// Show a volume's geometry, space use and snapshots.
    Info(InfoArgs),
    /// Create, list, delete and roll back to snapshots.
    #[command(subcommand, after_help = SNAPSHOT_EXAMPLES)]
    Snapshot(SnapshotCommand),
    /// Write a raw image into the live volume, from offset 0.
    #[command(after_help = IMPORT_EXAMPLES)]
    Import(ImportArgs),
    /// Read the live volume or a snapshot out as a full raw image, or with --from as an
    /// incremental 'rbd diff v1' stream.
    #[command(after_help = EXPORT_EXAMPLES)]
    Export(ExportArgs),
    /// List the extents that changed between a snapshot and a newer point.
    #[command(after_help = DIFF_EXAMPLES)]
    Diff(DiffArgs),
    /// Apply an 'rbd diff v1' stream to the live volume, then create its to-snapshot.
    #[command(after_help = IMPORT_DIFF_EXAMPLES)]
    ImportDiff(ImportDiffArgs),
    /// Verify a volume's metadata and report every problem with its location.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Serve every volume over NBD: VOL read-write, VOL@SNAP read-only.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
}

/// `snapvol serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TCP address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
    pub listen: String,

    /// Also listen on a Unix socket at this path.
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,

    /// Serve at most N NBD connections at once, TCP and Unix together. A connection beyond
    /// them is closed before the NBD greeting (the client reports that the server closed the
    /// connection) and the server logs a warning; connected clients are not affected. Count
    /// every connection clients open: each fio job opens one, nbdcopy up to four.
    #[arg(long, value_name = "N", default_value_t = snapvol_nbd::server::DEFAULT_MAX_CONNECTIONS,
          value_parser = at_least_one)]
    pub max_connections: usize,

    /// Require TLS on every NBD connection, with this server certificate (PEM; the chain,
    /// the server's own certificate first). Its subject alternative names must include the
    /// name or IP address clients connect to. Needs --tls-key. Clients connect with
    /// nbds://HOST:PORT/VOL (libnbd) or tls-creds (qemu); plain nbd:// clients are refused.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1). Keep it readable by the
    /// server's user only.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Also require a client certificate signed by this CA (PEM, one or more certificates):
    /// clients without one, or with one from another CA, fail the TLS handshake.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9108): per
    /// volume, NBD requests, bytes, errors and latency (live and snapshot exports apart),
    /// snapshots, preserved chunks, dirty cache and journal fill, destage batches and their
    /// duration, checksum failures; open connections. Plain HTTP without authentication, and
    /// the names of the volumes show in it: keep it on loopback or a management network.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

impl ServeArgs {
    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<snapvol_nbd::TlsFiles> {
        Some(snapvol_nbd::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_ca.clone(),
        })
    }
}

/// `--write-mode`: one of the names `WriteMode` parses, listed in `--help` and completions.
fn write_mode_arg() -> impl clap::builder::TypedValueParser<Value = snapvol_engine::WriteMode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["atomic", "throughput"])
        .map(|s| s.parse().expect("one of the possible values"))
}

/// Parses a count that must be 1 or more.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `snapvol create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the new volume: letters, digits, '.', '_' and '-'.
    #[arg(value_name = "VOL")]
    pub volume: String,

    /// Volume size, a multiple of the chunk size (e.g. 10G).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub size: u64,

    /// Copy-on-write unit: a power of two from 4K to 1M.
    #[arg(long, value_name = "SIZE", value_parser = size_arg, default_value = "64K")]
    pub chunk_size: u64,

    /// Keep the live data (source VLUN) in this file or block device instead of the store.
    #[arg(long, value_name = "PATH")]
    pub source: Option<PathBuf>,

    /// Keep the snapshot store (target VLUN) in this file or block device instead of the store.
    #[arg(long, value_name = "PATH")]
    pub target: Option<PathBuf>,

    /// Cap the snapshot store at this size (default: a target file grows as needed).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub target_size: Option<u64>,

    /// Keep the persistent cache journal in this file or block device (a faster device
    /// makes FLUSH faster) instead of the store.
    #[arg(long, value_name = "PATH")]
    pub cache: Option<PathBuf>,

    /// Size of the cache journal (at least 4M). Writes waiting to be destaged must fit in it.
    #[arg(long, value_name = "SIZE", value_parser = size_arg, default_value = "512M")]
    pub journal_size: u64,

    /// How writes are made durable. atomic: every write request goes through the cache
    /// journal, so after a crash each one is all-old or all-new. throughput: requests of at
    /// least a chunk skip the journal (their bytes are written once, by the destage) and
    /// become durable at the next FLUSH, FUA write or snapshot; after a crash an unflushed
    /// one may be torn, as on a disk. FLUSH, FUA and snapshots mean the same in both.
    #[arg(long, value_name = "MODE", default_value = "atomic", value_parser = write_mode_arg())]
    pub write_mode: snapvol_engine::WriteMode,
}

/// `snapvol list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON: an array of {name, size, chunk_size, snapshots, in_use, holder, error}.
    #[arg(long)]
    pub json: bool,
}

/// `snapvol info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The volume.
    #[arg(value_name = "VOL")]
    pub volume: String,

    /// Print JSON (sizes in bytes, times in RFC 3339 UTC).
    #[arg(long)]
    pub json: bool,
}

/// `snapvol snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of the live volume (instant).
    Create {
        /// VOL@SNAP: the volume and the new snapshot's name.
        #[arg(value_name = "VOL@SNAP")]
        snapshot: String,
    },
    /// List a volume's snapshots, oldest first.
    List {
        /// The volume.
        #[arg(value_name = "VOL")]
        volume: String,
        /// Print JSON: an array of {name, created, exclusive_bytes, shared_bytes}.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot, freeing the preserved data only it used.
    Delete {
        /// VOL@SNAP: the snapshot to delete.
        #[arg(value_name = "VOL@SNAP")]
        snapshot: String,
    },
    /// Make the live volume a snapshot's content again; every snapshot is kept.
    #[command(after_help = ROLLBACK_HELP)]
    Rollback {
        /// VOL@SNAP: the snapshot to roll back to.
        #[arg(value_name = "VOL@SNAP")]
        snapshot: String,
        /// Roll back even when clients are connected to the live export.
        #[arg(long)]
        force: bool,
    },
}

/// `snapvol diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older point: a snapshot.
    #[arg(value_name = "VOL@FROM")]
    pub from: String,

    /// The newer point: a snapshot of the same volume, or VOL for the live volume (the
    /// default).
    #[arg(value_name = "VOL@TO")]
    pub to: Option<String>,

    /// Print JSON: {from, to, chunk_size, changed_bytes, extents: [{offset, length}]}, in
    /// bytes.
    #[arg(long)]
    pub json: bool,
}

/// `snapvol import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The volume to write into.
    #[arg(value_name = "VOL")]
    pub volume: String,

    /// Raw image (file or block device), at most the volume's size.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Size of the engine's write-back cache in RAM.
    #[arg(long, value_name = "SIZE", value_parser = size_arg, help_heading = "Advanced")]
    pub cache_size: Option<u64>,
}

/// `snapvol export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// VOL for the live volume or VOL@SNAP for a snapshot.
    #[arg(value_name = "VOL[@SNAP]")]
    pub source: String,

    /// Output file or block device; '-' writes to standard output.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Write only what changed since this older snapshot of the same volume, as an 'rbd diff
    /// v1' stream (without the to-snapshot record when the source is the live volume).
    #[arg(long, value_name = "VOL@FROM")]
    pub from: Option<String>,
}

/// `snapvol import-diff`.
#[derive(Debug, Args)]
pub struct ImportDiffArgs {
    /// The volume to apply the stream to.
    #[arg(value_name = "VOL")]
    pub volume: String,

    /// The 'rbd diff v1' stream; '-' reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Apply the stream even though the live volume changed since its from-snapshot (also how
    /// to finish an import whose process died after its data was durable but before its
    /// to-snapshot was created).
    #[arg(long)]
    pub force: bool,
}

/// `snapvol check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The volume to check.
    #[arg(value_name = "VOL")]
    pub volume: String,

    /// Print the report as JSON: {problems: [{location, detail, repairable}], repaired,
    /// not_repaired, summary}.
    #[arg(long)]
    pub json: bool,

    /// Rewrite a damaged superblock copy or metadata block from its good copy and salvage a
    /// damaged journal (listing every write lost), then check again.
    #[arg(long)]
    pub repair: bool,

    /// Also read every preserved chunk and verify its checksum (reads the whole snapshot
    /// store: as slow as reading the target).
    #[arg(long)]
    pub data: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_are_parsed_into_bytes() {
        let cli = Cli::try_parse_from([
            "snapvol",
            "create",
            "v",
            "--size",
            "4M",
            "--chunk-size",
            "4KiB",
            "--target-size",
            "1g",
        ])
        .expect("valid command line");
        match cli.command {
            Command::Create(a) => {
                assert_eq!(a.size, 4 << 20);
                assert_eq!(a.chunk_size, 4 << 10);
                assert_eq!(a.target_size, Some(1 << 30));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_chunk_size_defaults_to_64k() {
        let cli = Cli::try_parse_from(["snapvol", "create", "v", "--size", "1G"])
            .expect("valid command line");
        match cli.command {
            Command::Create(a) => assert_eq!(a.chunk_size, 64 << 10),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn serve_takes_256_connections_unless_told_otherwise_and_never_0() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["snapvol", "serve"].iter().chain(args)).map(|c| match c.command {
                Command::Serve(a) => a.max_connections,
                other => panic!("parsed as {other:?}"),
            })
        };
        assert_eq!(parse(&[]).expect("no flag"), 256);
        assert_eq!(parse(&["--max-connections", "2"]).expect("2"), 2);
        let err = parse(&["--max-connections", "0"]).expect_err("0");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn tls_needs_a_certificate_and_its_key_and_a_client_ca_needs_both() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["snapvol", "serve"].iter().chain(args)).map(|c| match c.command {
                Command::Serve(a) => a.tls_files(),
                other => panic!("parsed as {other:?}"),
            })
        };
        assert_eq!(parse(&[]).expect("no TLS"), None);
        let files = parse(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-ca",
            "ca.pem",
        ])
        .expect("TLS")
        .expect("TLS files");
        assert_eq!(files.client_ca, Some(PathBuf::from("ca.pem")));
        for incomplete in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--tls-ca", "ca.pem"],
        ] {
            let err = parse(incomplete).expect_err("incomplete TLS flags");
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        }
    }

    #[test]
    fn a_junk_size_is_a_usage_error() {
        let err = Cli::try_parse_from(["snapvol", "create", "v", "--size", "ten"])
            .expect_err("junk size");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
