//! The volume under test and its oracle: the pristine images, built once, what they must
//! serve, and opening them.

use std::collections::BTreeMap;
use std::sync::Arc;

use snapvol_engine::check::CheckReport;
use snapvol_engine::units::Geometry;
use snapvol_engine::vlun::{MemVlun, Vlun};
use snapvol_engine::{Error, Layout, Vluns, Volume, VolumeOptions};

use crate::overlay::Overlay;
use crate::{CHUNK, CHUNKS, JOURNAL_SIZE, SIZE};

/// The byte of data version `tag` at volume offset `pos`: depends on both, so a misplaced or
/// stale chunk is caught.
fn byte_at(tag: u64, pos: u64) -> u8 {
    let mut x = (tag << 40) ^ (pos >> 3);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)).to_le_bytes()[(pos & 7) as usize]
}

/// The pristine images of a closed volume and what it must read.
pub(crate) struct Images {
    pub(crate) source: Arc<Vec<u8>>,
    pub(crate) target: Arc<Vec<u8>>,
    pub(crate) journal: Arc<Vec<u8>>,
    live: Vec<u8>,
    /// Snapshot name → its image.
    pub(crate) snapshots: BTreeMap<String, Vec<u8>>,
}

impl Images {
    pub(crate) fn overlays(&self) -> (Overlay, Overlay, Overlay) {
        (
            Overlay::new(&self.source),
            Overlay::new(&self.target),
            Overlay::new(&self.journal),
        )
    }
}

pub(crate) fn options() -> VolumeOptions {
    VolumeOptions {
        cache_size: 1 << 20,
        compact_after_records: 4096,
        background_destage: false,
    }
}

/// A live volume with an oracle.
struct Model<'a> {
    vol: &'a Volume,
    live: Vec<u8>,
    snapshots: BTreeMap<String, Vec<u8>>,
}

impl Model<'_> {
    fn write_chunks(&mut self, tag: u64, chunks: std::ops::Range<u64>) {
        let (start, end) = (chunks.start * CHUNK, chunks.end * CHUNK);
        let data: Vec<u8> = (start..end).map(|p| byte_at(tag, p)).collect();
        self.vol.write(start, &data).expect("write");
        self.live[start as usize..end as usize].copy_from_slice(&data);
    }

    fn snapshot(&mut self, name: &str) {
        self.vol.snapshot_create(name).expect("snapshot create");
        self.snapshots.insert(name.to_owned(), self.live.clone());
    }

    fn delete(&mut self, name: &str) {
        self.vol.snapshot_delete(name).expect("snapshot delete");
        self.snapshots.remove(name);
    }
}

/// Builds a small volume whose metadata log holds SnapshotCreate, SnapshotDelete and Preserve
/// records (and was compacted on the way), closes it, and returns the images.
pub(crate) fn build() -> Images {
    let source = Arc::new(MemVlun::new(SIZE));
    let target = Arc::new(MemVlun::new(0));
    let journal = Arc::new(MemVlun::new(0));
    let vluns = Vluns {
        source: Box::new(Arc::clone(&source)),
        target: Box::new(Arc::clone(&target)),
        journal: Box::new(Arc::clone(&journal)),
    };
    let layout = Layout {
        geometry: Geometry::new(SIZE, CHUNK as u32).expect("geometry"),
        target_cap: None,
        journal_size: JOURNAL_SIZE,
        write_mode: Default::default(),
    };
    let vol = Volume::create_on("vol", vluns, layout, options()).expect("create");
    let mut m = Model {
        vol: &vol,
        live: vec![0u8; SIZE as usize],
        snapshots: BTreeMap::new(),
    };
    m.write_chunks(1, 0..CHUNKS);
    m.snapshot("a");
    m.write_chunks(2, 0..8);
    vol.destage_all().expect("destage");
    m.snapshot("b");
    m.snapshot("c");
    m.write_chunks(3, 4..16);
    vol.destage_all().expect("destage");
    m.delete("b");
    m.snapshot("d");
    m.write_chunks(4, 0..4);
    m.write_chunks(4, 30..40);
    vol.destage_all().expect("destage");
    m.snapshot("e");
    m.write_chunks(5, 2..3);
    m.write_chunks(5, 50..52);
    vol.destage_all().expect("destage");
    m.delete("c");
    // The deletion above compacted the log; what follows lands in new blocks after it.
    m.snapshot("f");
    m.write_chunks(6, 60..64);
    m.write_chunks(6, 1..2);
    vol.destage_all().expect("destage");
    m.delete("d");
    m.write_chunks(7, 20..21);
    vol.destage_all().expect("destage");
    // The deletion of g compacts the log again (with 4 KiB chunks every commit takes a new
    // pair of slots); the deletion of h comes after, so the chain holds a SnapshotDelete.
    m.snapshot("g");
    m.delete("g");
    m.snapshot("h");
    m.delete("h");
    let (live, snapshots) = (m.live, m.snapshots);
    vol.close().expect("close");
    Images {
        source: Arc::new(source.contents()),
        target: Arc::new(target.contents()),
        journal: Arc::new(journal.contents()),
        live,
        snapshots,
    }
}

/// Reads everything the volume serves and compares it with the oracle.
pub(crate) fn serves(vol: &Volume, img: &Images) -> Result<(), String> {
    let mut buf = vec![0u8; SIZE as usize];
    vol.read(0, &mut buf)
        .map_err(|e| format!("read live: {e}"))?;
    if buf != img.live {
        return Err("the live volume differs".into());
    }
    let snaps = vol.snapshots();
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    let want: Vec<&str> = img.snapshots.keys().map(String::as_str).collect();
    if names != want {
        return Err(format!("snapshots {names:?}, expected {want:?}"));
    }
    for s in &snaps {
        vol.read_snapshot(s.seq, 0, &mut buf)
            .map_err(|e| format!("read snapshot {}: {e}", s.name))?;
        if buf != img.snapshots[&s.name] {
            return Err(format!("snapshot {} differs", s.name));
        }
    }
    Ok(())
}

pub(crate) fn open(
    s: impl Vlun + 'static,
    t: impl Vlun + 'static,
    j: impl Vlun + 'static,
) -> Result<Volume, Error> {
    let vluns = Vluns {
        source: Box::new(s),
        target: Box::new(t),
        journal: Box::new(j),
    };
    Volume::open_on("vol", vluns, options())
}

pub(crate) fn describe(r: &CheckReport) -> String {
    r.problems
        .iter()
        .map(|p| format!("{}: {}", p.location, p.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Opens the volume and expects `Error::Corrupt`; returns its location and detail.
pub(crate) fn open_corrupt(
    what: &str,
    s: impl Vlun + 'static,
    t: impl Vlun + 'static,
    j: impl Vlun + 'static,
) -> (String, String) {
    match open(s, t, j) {
        Err(Error::Corrupt { location, detail }) => (location, detail),
        Err(e) => panic!("{what}: open failed otherwise: {e}"),
        Ok(v) => {
            v.kill();
            panic!("{what}: open accepted it");
        }
    }
}
