//! The volume and its snapshots as NBD block devices, and the catalogue that finds them by
//! export name (`VOL` read-write, `VOL@SNAP` read-only), with their dirty-bitmap contexts
//! (`bitmaps.rs`), and each volume's request counters and connections (`io_stats.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{parse_volume_or_snapshot, Error, Store, Volume, VolumeOptions};
use snapvol_nbd::proto::{NBD_STATE_HOLE, NBD_STATE_ZERO};
use snapvol_nbd::{BlockDevice, DevError, Export, Exports, Extent, RequestDone};

use super::bitmaps::Bitmaps;
use super::io_stats::{Attached, ExportKind, VolumeIo};

/// Maps an engine error to the errno an NBD client sees.
pub(super) fn dev_err(e: Error) -> DevError {
    match e.errno() {
        libc::ENOSPC => DevError::no_space(e.to_string()),
        libc::EINVAL => DevError::invalid(e.to_string()),
        _ => DevError::io(e.to_string()),
    }
}

/// `base:allocation` of a volume or snapshot: holes where nothing was ever written (or was
/// trimmed), so clients such as `nbdcopy` and `qemu-img convert` skip them.
fn allocation(
    vol: &Volume,
    snap: Option<SnapshotSeq>,
    offset: u64,
    len: u32,
) -> Result<Vec<Extent>, DevError> {
    let runs = vol
        .allocation(snap, offset, u64::from(len))
        .map_err(dev_err)?;
    Ok(runs
        .into_iter()
        .map(|(n, data)| {
            let flags = if data {
                0
            } else {
                NBD_STATE_HOLE | NBD_STATE_ZERO
            };
            Extent::new(n as u32, flags)
        })
        .collect())
}

/// The live volume, read-write.
pub struct LiveDevice {
    vol: Arc<Volume>,
    /// `qemu:dirty-bitmap:SNAP`: changed since SNAP, for every snapshot.
    bitmaps: Bitmaps,
    /// Counted among the volume's live clients, and where its requests are counted.
    io: Attached,
}

impl BlockDevice for LiveDevice {
    fn size(&self) -> u64 {
        self.vol.size()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.vol.read(offset, buf).map_err(dev_err)
    }

    /// The bytes copied once into a shared buffer, as `Volume::write` would copy them.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
        self.write_shared(offset, &Arc::from(data), fua)
    }

    fn write_shared(&self, offset: u64, data: &Arc<[u8]>, fua: bool) -> Result<(), DevError> {
        if fua {
            self.vol.write_fua_shared(offset, data)
        } else {
            self.vol.write_shared(offset, data)
        }
        .map_err(dev_err)
    }

    fn flush(&self) -> Result<(), DevError> {
        self.vol.flush().map_err(dev_err)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        // A trimmed range reads as zeros: the same request as a write of zeros.
        self.write_zeroes(offset, len, fua)
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        if fua {
            self.vol.write_zeroes_fua(offset, len)
        } else {
            self.vol.write_zeroes(offset, len)
        }
        .map_err(dev_err)
    }

    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        allocation(&self.vol, None, offset, len)
    }

    fn meta_contexts(&self) -> Vec<String> {
        self.bitmaps.names()
    }

    fn context_block_status(
        &self,
        context: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<Extent>, DevError> {
        self.bitmaps.status(context, offset, len)
    }

    /// One cache and one journal serve every connection: a FLUSH on any of them covers the
    /// writes of all.
    fn multi_conn_safe(&self) -> bool {
        true
    }

    fn replied(&self, done: &RequestDone) {
        self.io.record(done);
    }
}

/// A snapshot, read-only. Reads fail once the snapshot is deleted (never stale data).
pub struct SnapshotDevice {
    vol: Arc<Volume>,
    seq: SnapshotSeq,
    /// `qemu:dirty-bitmap:SNAP`: changed between SNAP and this snapshot, for every older SNAP.
    bitmaps: Bitmaps,
    io: Attached,
}

impl BlockDevice for SnapshotDevice {
    fn size(&self) -> u64 {
        self.vol.size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.vol
            .read_snapshot(self.seq, offset, buf)
            .map_err(dev_err)
    }

    fn write(&self, _offset: u64, _data: &[u8], _fua: bool) -> Result<(), DevError> {
        Err(DevError::permission("snapshots are read-only"))
    }

    fn flush(&self) -> Result<(), DevError> {
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        allocation(&self.vol, Some(self.seq), offset, len)
    }

    fn meta_contexts(&self) -> Vec<String> {
        self.bitmaps.names()
    }

    fn context_block_status(
        &self,
        context: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<Extent>, DevError> {
        self.bitmaps.status(context, offset, len)
    }

    fn replied(&self, done: &RequestDone) {
        self.io.record(done);
    }
}

/// Every volume of the store, opened once and shared by the NBD server and the control
/// socket. A volume created while serving is opened the first time a client asks for it.
pub struct StoreExports {
    store: Store,
    volumes: RwLock<BTreeMap<String, Arc<Volume>>>,
    /// Per volume, what its clients asked of it, and the devices in existence: one per
    /// connection to one of its exports (see [`StoreExports::live_clients`]).
    io: Mutex<HashMap<String, Arc<VolumeIo>>>,
}

impl StoreExports {
    /// A catalogue over `store`, with the volumes opened so far.
    pub fn new(store: Store, volumes: BTreeMap<String, Arc<Volume>>) -> Self {
        Self {
            store,
            volumes: RwLock::new(volumes),
            io: Mutex::new(HashMap::new()),
        }
    }

    /// How many NBD connections use volume `volume`'s live export (`VOL`) now; snapshot
    /// exports do not count. A connection counts from the moment it chose the export (GO or
    /// EXPORT_NAME) until it has ended and its final flush is done. A handshake's INFO or
    /// meta-context option on `VOL` also counts while the server answers it (the server
    /// looks the export up for it), and not afterwards.
    pub fn live_clients(&self, volume: &str) -> usize {
        self.io
            .lock()
            .get(volume)
            .map_or(0, |io| io.export(ExportKind::Live).attached())
    }

    fn attach(&self, volume: &str, kind: ExportKind) -> Attached {
        let io = self.io.lock().entry(volume.to_owned()).or_default().clone();
        Attached::new(io, kind)
    }

    /// Every volume's request counters so far, by name: those of the volumes served (zero
    /// until a client comes, so that each series exists from the first scrape), and of any
    /// that had clients before.
    pub fn io(&self) -> Vec<(String, Arc<VolumeIo>)> {
        let served: Vec<String> = self.volumes.read().keys().cloned().collect();
        let mut io = self.io.lock();
        for name in served {
            io.entry(name).or_default();
        }
        let mut all: Vec<_> = io.iter().map(|(n, io)| (n.clone(), io.clone())).collect();
        drop(io);
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The open volume `name`, opening it if the store has it and nobody else holds it.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>, Error> {
        if let Some(v) = self.volumes.read().get(name) {
            return Ok(v.clone());
        }
        let mut volumes = self.volumes.write();
        if let Some(v) = volumes.get(name) {
            return Ok(v.clone());
        }
        let started = std::time::Instant::now();
        let v = Arc::new(self.store.open(name, VolumeOptions::default())?);
        // On a shared store this may be a takeover a client's connection started: the
        // catalog has logged the fencing, and `seconds` is the open (journal replay included).
        tracing::info!(
            volume = name,
            seconds = started.elapsed().as_secs_f64(),
            "volume opened for serving"
        );
        volumes.insert(name.to_owned(), v.clone());
        Ok(v)
    }

    /// The volumes being served, by name.
    pub fn volumes(&self) -> Vec<(String, Arc<Volume>)> {
        self.volumes
            .read()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Stops serving `name` (its lock was lost): new connections no longer find it, and those
    /// still open get errors from the volume itself.
    pub fn forget(&self, name: &str) -> Option<Arc<Volume>> {
        self.volumes.write().remove(name)
    }

    /// Whether `name` is open here.
    pub fn holds(&self, name: &str) -> bool {
        self.volumes.read().contains_key(name)
    }

    /// Gives the volumes back (for a clean shutdown).
    pub fn take_volumes(&self) -> BTreeMap<String, Arc<Volume>> {
        std::mem::take(&mut *self.volumes.write())
    }

    /// The export `name`, with the dirty bitmaps of the snapshots alive now.
    fn export(&self, name: &str) -> Result<Export, Error> {
        let (vol_name, snap) = parse_volume_or_snapshot(name)?;
        let vol = self.volume(vol_name)?;
        let snapshots = vol.snapshots();
        Ok(match snap {
            None => Export::new(
                Arc::new(LiveDevice {
                    vol: vol.clone(),
                    bitmaps: Bitmaps::new(vol, name.to_owned(), &snapshots, None),
                    io: self.attach(vol_name, ExportKind::Live),
                }),
                format!("snapvol volume {vol_name}"),
            ),
            Some(s) => {
                let info = snapshots
                    .iter()
                    .find(|i| i.name == s)
                    .ok_or_else(|| Error::SnapshotNotFound(name.to_owned()))?;
                Export::new(
                    Arc::new(SnapshotDevice {
                        vol: vol.clone(),
                        seq: info.seq,
                        bitmaps: Bitmaps::new(vol, name.to_owned(), &snapshots, Some(info.seq)),
                        io: self.attach(vol_name, ExportKind::Snapshot),
                    }),
                    format!("snapvol snapshot {vol_name}@{s} (read-only)"),
                )
            }
        })
    }
}

impl Exports for StoreExports {
    fn lookup(&self, name: &str) -> Option<Export> {
        // The default export (empty name) is the volume when the store has exactly one.
        let name = if name.is_empty() {
            let names = self.store.list().ok()?;
            match names.as_slice() {
                [only] => only.clone(),
                _ => return None,
            }
        } else {
            name.to_owned()
        };
        match self.export(&name) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::info!(export = %name, error = %e, "export not available");
                None
            }
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for name in self.store.list().unwrap_or_default() {
            // A volume that cannot be opened is not an export.
            let Ok(vol) = self.volume(&name) else {
                continue;
            };
            names.push(name.clone());
            names.extend(
                vol.snapshots()
                    .into_iter()
                    .map(|s| format!("{name}@{}", s.name)),
            );
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use snapvol_engine::CreateOptions;
    use snapvol_nbd::proto::NBD_STATE_DIRTY;
    use snapvol_nbd::{Errno, Server};

    use super::*;

    const CHUNK: u64 = 64 << 10;

    /// A store in `dir` with volume `v` of `chunks` 64 KiB chunks, served by a catalogue.
    fn exports(dir: &Path, chunks: u64) -> StoreExports {
        let store = Store::new(dir.join("store"));
        let mut opts = CreateOptions::new(chunks * CHUNK);
        opts.journal_size = 8 << 20;
        let vol = store
            .create("v", &opts, VolumeOptions::default())
            .expect("create v");
        StoreExports::new(store, BTreeMap::from([("v".to_owned(), Arc::new(vol))]))
    }

    fn write_chunks(e: &StoreExports, chunks: &[u64]) {
        let vol = e.volume("v").unwrap();
        for &c in chunks {
            vol.write(c * CHUNK + 100, &[c as u8 + 1; 10]).unwrap();
        }
    }

    /// The dirty chunks of a bitmap over the whole export, asked one request at a time as a
    /// client would, checking that every extent is whole chunks and flags are 0 or 1.
    fn dirty_chunks(dev: &dyn BlockDevice, context: &str) -> Vec<u64> {
        let mut dirty = Vec::new();
        let mut pos = 0;
        while pos < dev.size() {
            let len = (dev.size() - pos).min(u64::from(u32::MAX)) as u32;
            let extents = dev.context_block_status(context, pos, len).unwrap();
            assert!(!extents.is_empty());
            for e in extents {
                assert_eq!(u64::from(e.length) % CHUNK, 0, "{e:?}");
                match e.flags {
                    0 => {}
                    NBD_STATE_DIRTY => {
                        dirty.extend(pos / CHUNK..(pos + u64::from(e.length)) / CHUNK)
                    }
                    f => panic!("flags {f} in {context}"),
                }
                pos += u64::from(e.length);
            }
        }
        dirty
    }

    #[test]
    fn each_export_offers_the_bitmaps_of_older_snapshots_marking_what_changed_since() {
        let dir = tempfile::tempdir().unwrap();
        let e = exports(dir.path(), 16);
        let vol = e.volume("v").unwrap();
        write_chunks(&e, &[0]);
        vol.snapshot_create("s1").unwrap();
        write_chunks(&e, &[2, 5]);
        vol.snapshot_create("s2").unwrap();
        write_chunks(&e, &[7, 2]);

        let live = e.lookup("v").unwrap().device;
        let (b1, b2) = ("qemu:dirty-bitmap:s1", "qemu:dirty-bitmap:s2");
        assert_eq!(live.meta_contexts(), vec![b1, b2]);
        assert_eq!(dirty_chunks(&*live, b1), vec![2, 5, 7]);
        assert_eq!(dirty_chunks(&*live, b2), vec![2, 7]);
        let at_s2 = e.lookup("v@s2").unwrap().device;
        assert_eq!(at_s2.meta_contexts(), vec![b1]);
        assert_eq!(dirty_chunks(&*at_s2, b1), vec![2, 5]);
        assert_eq!(
            at_s2.context_block_status(b2, 0, 4096).unwrap_err().errno,
            Errno::EINVAL
        );
        assert!(e.lookup("v@s1").unwrap().device.meta_contexts().is_empty());

        // An unaligned request: the answer runs to the end of the chunk it ends in.
        assert_eq!(
            live.context_block_status(b1, 2 * CHUNK + 100, 10).unwrap(),
            vec![Extent::new((CHUNK - 100) as u32, NBD_STATE_DIRTY)]
        );
        assert_eq!(
            live.context_block_status(b1, CHUNK, 1).unwrap(),
            vec![Extent::new(CHUNK as u32, 0)]
        );
    }

    #[test]
    fn a_bitmap_whose_snapshot_was_deleted_fails_even_if_the_name_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let e = exports(dir.path(), 16);
        let vol = e.volume("v").unwrap();
        vol.snapshot_create("s1").unwrap();
        vol.snapshot_create("b").unwrap();
        write_chunks(&e, &[3]);
        let b1 = "qemu:dirty-bitmap:s1";
        let live = e.lookup("v").unwrap().device;
        let at_b = e.lookup("v@b").unwrap().device;
        vol.snapshot_delete("s1").unwrap();
        vol.snapshot_create("s1").unwrap();
        for dev in [&live, &at_b] {
            let err = dev.context_block_status(b1, 0, 4096).unwrap_err();
            assert_eq!(err.errno, Errno::EIO, "{err}");
            assert!(err.message.contains("v@s1 was deleted"), "{err}");
        }
        // A new connection sees the new s1, with nothing changed since it.
        let live = e.lookup("v").unwrap().device;
        assert_eq!(dirty_chunks(&*live, b1), Vec::<u64>::new());
        // The export's own snapshot deleted: its bitmaps fail too.
        let at_s1 = e.lookup("v@s1").unwrap().device;
        vol.snapshot_create("s3").unwrap();
        let at_s3 = e.lookup("v@s3").unwrap().device;
        vol.snapshot_delete("s3").unwrap();
        let err = at_s3.context_block_status(b1, 0, 4096).unwrap_err();
        assert_eq!(err.errno, Errno::EIO, "{err}");
        assert!(err.message.contains("own snapshot was deleted"), "{err}");
        assert!(at_s1.meta_contexts().iter().all(|c| c != b1));
    }

    /// Polls `live_clients("v")` until it is `want` (the server notices a disconnect a
    /// moment after the client has gone).
    fn wait_for_count(e: &StoreExports, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.live_clients("v") != want {
            assert!(
                Instant::now() < deadline,
                "live_clients(\"v\") is {}, not {want}",
                e.live_clients("v")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn live_clients_counts_connections_to_the_live_export_until_they_end() {
        let dir = tempfile::tempdir().unwrap();
        let e = Arc::new(exports(dir.path(), 16));
        e.volume("v").unwrap().snapshot_create("s1").unwrap();
        let server = Server::builder(e.clone())
            .tcp("127.0.0.1:0".parse().unwrap())
            .bind()
            .unwrap()
            .spawn()
            .unwrap();
        let uri = |export: &str| format!("nbd://{}/{export}", server.local_addr().unwrap());
        assert_eq!(e.live_clients("v"), 0);

        // Two connections to v and one to v@s1, held open by python3-libnbd.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/hold_connection.py");
        let mut hold = Command::new("/usr/bin/python3")
            .arg(script)
            .args([uri("v"), uri("v"), uri("v@s1")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 with python3-libnbd (apt-get install python3-libnbd)");
        let mut said = BufReader::new(hold.stdout.take().unwrap());
        let mut line = String::new();
        said.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "connected 3", "the client could not connect");
        wait_for_count(&e, 2);

        // nbdinfo's INFO and meta-context lookups of v leave nothing behind, nor does a
        // connection that has ended.
        let info = Command::new("nbdinfo")
            .args(["--list", &uri("")])
            .output()
            .expect("nbdinfo (apt-get install libnbd-bin)");
        assert!(info.status.success(), "{info:?}");
        let info = Command::new("nbdinfo").arg(uri("v")).output().unwrap();
        assert!(info.status.success(), "{info:?}");
        wait_for_count(&e, 2);

        hold.stdin.take().unwrap().write_all(b"close\n").unwrap();
        line.clear();
        said.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "closed");
        assert!(hold.wait().unwrap().success());
        wait_for_count(&e, 0);
        assert_eq!(e.live_clients("other"), 0);
        server.stop().unwrap();
    }
}
