//! Corruption tests: every byte of the metadata is flipped, one at a time, and `check` must
//! name the damaged structure while open must refuse the damage (or, where the format keeps a
//! second copy, serve exactly the right data). Records that are checksummed correctly but
//! say something impossible are crafted too, and `check` must name the record.
//!
//! The images are built once in RAM; each flip runs on copy-on-write overlays of them, so a
//! flip costs only what the check and the open read.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use snapvol_engine::check::{check, CheckReport};
use snapvol_engine::format::{self, MetaBlock, Record, Superblock, BLOCK_SIZE};
use snapvol_engine::journal::{RING_OFFSET, SECTOR};
use snapvol_engine::units::{ChunkIndex, Geometry, SnapshotSeq, TargetSlot};
use snapvol_engine::vlun::{MemVlun, Vlun};
use snapvol_engine::{
    CreateOptions, Error, Layout, Store, Vluns, Volume, VolumeOptions, VolumePaths,
};

const CHUNK: u64 = 4096;
const CHUNKS: u64 = 64;
const SIZE: u64 = CHUNK * CHUNKS;
const JOURNAL_SIZE: u64 = 4 << 20;
const PAGE: usize = 4096;

// ---------------------------------------------------------------------------------------------
// A copy-on-write VLUN over a pristine image.
// ---------------------------------------------------------------------------------------------

/// A VLUN that reads a shared pristine image and keeps its own writes in private pages, so a
/// test can damage and open "a fresh copy" of a multi-MiB image without copying it.
#[derive(Debug)]
struct Overlay {
    base: Arc<Vec<u8>>,
    state: Mutex<OverlayState>,
}

#[derive(Debug)]
struct OverlayState {
    pages: HashMap<u64, Box<[u8]>>,
    len: u64,
}

impl Overlay {
    fn new(base: &Arc<Vec<u8>>) -> Self {
        Self {
            base: Arc::clone(base),
            state: Mutex::new(OverlayState {
                pages: HashMap::new(),
                len: base.len() as u64,
            }),
        }
    }

    fn base_page(&self, page: u64) -> Box<[u8]> {
        let mut p = vec![0u8; PAGE].into_boxed_slice();
        let start = (page as usize * PAGE).min(self.base.len());
        let end = (start + PAGE).min(self.base.len());
        p[..end - start].copy_from_slice(&self.base[start..end]);
        p
    }

    /// XORs the byte at `offset` with `mask`.
    fn flip(&self, offset: u64, mask: u8) {
        let mut b = [0u8];
        self.read_at(&mut b, offset).expect("overlay read");
        b[0] ^= mask;
        self.write_at(&b, offset).expect("overlay write");
    }
}

impl Vlun for Overlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.state.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let page = pos / PAGE as u64;
            let within = (pos % PAGE as u64) as usize;
            let n = (PAGE - within).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match st.pages.get(&page) {
                Some(p) => dst.copy_from_slice(&p[within..within + n]),
                None => {
                    let start = (pos as usize).min(self.base.len());
                    let end = (pos as usize + n).min(self.base.len());
                    dst[..end - start].copy_from_slice(&self.base[start..end]);
                    dst[end - start..].fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let page = pos / PAGE as u64;
            let within = (pos % PAGE as u64) as usize;
            let n = (PAGE - within).min(buf.len() - done);
            let p = match st.pages.entry(page) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(self.base_page(page)),
            };
            p[within..within + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        st.len = st.len.max(offset + buf.len() as u64);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().len)
    }

    fn growable(&self) -> bool {
        true
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.state.lock().len = len;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The volume under test and its oracle.
// ---------------------------------------------------------------------------------------------

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
struct Images {
    source: Arc<Vec<u8>>,
    target: Arc<Vec<u8>>,
    journal: Arc<Vec<u8>>,
    live: Vec<u8>,
    /// Snapshot name → its image.
    snapshots: BTreeMap<String, Vec<u8>>,
}

impl Images {
    fn overlays(&self) -> (Overlay, Overlay, Overlay) {
        (
            Overlay::new(&self.source),
            Overlay::new(&self.target),
            Overlay::new(&self.journal),
        )
    }
}

fn options() -> VolumeOptions {
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
fn build() -> Images {
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

fn block_of(target: &[u8], off: u64) -> [u8; BLOCK_SIZE] {
    let at = off as usize;
    target[at..at + BLOCK_SIZE].try_into().expect("a block")
}

/// The current superblock, as open picks it.
fn current_superblock(target: &[u8]) -> Superblock {
    (0..2u64)
        .filter_map(|g| {
            let off = format::superblock_offset(g);
            Superblock::decode(&block_of(target, off), off).ok()
        })
        .max_by_key(|sb| sb.generation)
        .expect("a valid superblock")
}

/// The offsets of the ditto copies of the metadata chain's blocks, in chain order: walking
/// `meta_head_copy` and `prev_copy`.
fn copies_of(target: &[u8]) -> Vec<u64> {
    let (sb, chain) = layout_of(target);
    let mut copies: Vec<u64> = chain.iter().skip(1).map(|(_, b)| b.prev_copy).collect();
    copies.push(sb.meta_head_copy);
    copies
}

/// The current superblock (as open picks it) and the offsets of the metadata chain's blocks,
/// found by walking `meta_head` and `prev` with the public decoders.
fn layout_of(target: &[u8]) -> (Superblock, Vec<(u64, MetaBlock)>) {
    let block = |off: u64| block_of(target, off);
    let sb = current_superblock(target);
    let mut chain = Vec::new();
    let mut off = sb.meta_head;
    while off != 0 {
        let blk = MetaBlock::decode(&block(off), off, &sb.volume_id).expect("a valid block");
        let prev = blk.prev;
        chain.push((off, blk));
        off = prev;
    }
    chain.reverse();
    (sb, chain)
}

/// Reads everything the volume serves and compares it with the oracle.
fn serves(vol: &Volume, img: &Images) -> Result<(), String> {
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

fn open(
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

fn describe(r: &CheckReport) -> String {
    r.problems
        .iter()
        .map(|p| format!("{}: {}", p.location, p.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Byte flips
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    CurrentSuperblock,
    OtherSuperblock,
    MetaBlock,
    MetaBlockCopy,
    JournalHeader,
}

#[test]
fn the_pristine_volume_checks_clean_and_serves_its_oracle() {
    let img = build();
    let (sb, chain) = layout_of(&img.target);
    let (s, t, j) = img.overlays();
    let r = check(&s, &t, &j, false).expect("check");
    assert!(r.is_clean(), "{}", describe(&r));
    assert_eq!(r.summary.snapshots, img.snapshots.len());
    assert_eq!(r.summary.metadata_blocks, chain.len() as u64);
    assert_eq!(r.summary.superblock_generation, sb.generation);
    assert_eq!(
        r.summary.journal_records, 0,
        "a closed volume's journal is empty"
    );
    assert!(r.summary.preserved_chunks > 0);
    let vol = open(s, t, j).expect("open");
    serves(&vol, &img).expect("the oracle");
    let info = vol.info();
    assert_eq!(info.preserved_chunks, r.summary.preserved_chunks);
    vol.kill();
}

#[test]
fn every_flipped_metadata_byte_is_detected_and_located() {
    let started = Instant::now();
    let img = build();
    let (sb, chain) = layout_of(&img.target);
    let kinds = |pred: fn(&Record) -> bool| {
        chain
            .iter()
            .flat_map(|(_, b)| &b.records)
            .filter(|r| pred(r))
            .count()
    };
    assert!(kinds(|r| matches!(r, Record::SnapshotCreate { .. })) > 0);
    assert!(
        kinds(|r| matches!(r, Record::SnapshotDelete { .. })) > 0,
        "the chain holds no SnapshotDelete: {chain:?}"
    );
    assert!(kinds(|r| matches!(r, Record::Preserve { .. })) > 0);
    assert!(chain.len() >= 2, "the chain has {} blocks", chain.len());

    let current = format::superblock_offset(sb.generation);
    let other = format::superblock_offset(sb.generation + 1);
    // (device: true = journal, first byte, region, location check must name)
    let mut regions: Vec<(bool, u64, Region, String)> = vec![
        (
            false,
            current,
            Region::CurrentSuperblock,
            format!("superblock copy at {current:#x}"),
        ),
        (
            false,
            other,
            Region::OtherSuperblock,
            format!("superblock copy at {other:#x}"),
        ),
        (
            true,
            0,
            Region::JournalHeader,
            "journal header at 0x0".to_owned(),
        ),
    ];
    for ((off, _), copy) in chain.iter().zip(copies_of(&img.target)) {
        regions.push((
            false,
            *off,
            Region::MetaBlock,
            format!("metadata block at {off:#x}"),
        ));
        regions.push((
            false,
            copy,
            Region::MetaBlockCopy,
            format!("metadata block at {copy:#x}"),
        ));
    }

    let mut flips = 0u64;
    let mut opened_ok = BTreeMap::<&str, u64>::new();
    let mut refused = BTreeMap::<&str, u64>::new();
    for (journal_dev, start, region, want) in &regions {
        for i in 0..BLOCK_SIZE as u64 {
            let at = start + i;
            // One bit per flip, walking through the bit positions.
            let mask = 1u8 << (at % 8);
            let (s, t, j) = img.overlays();
            if *journal_dev {
                j.flip(at, mask);
            } else {
                t.flip(at, mask);
            }
            flips += 1;
            let what = format!("{region:?} byte {at:#x} ^ {mask:#04x}");

            let r = check(&s, &t, &j, false).unwrap_or_else(|e| panic!("{what}: check: {e}"));
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.location == *want || p.location.starts_with(&format!("{want} "))),
                "{what}: check did not name {want}:\n{}",
                describe(&r)
            );

            match (open(s, t, j), region) {
                (
                    Ok(vol),
                    Region::OtherSuperblock
                    | Region::CurrentSuperblock
                    | Region::MetaBlock
                    | Region::MetaBlockCopy,
                ) => {
                    serves(&vol, &img).unwrap_or_else(|e| panic!("{what}: opened, but {e}"));
                    vol.kill();
                    *opened_ok.entry(region_name(*region)).or_default() += 1;
                }
                (Ok(vol), _) => {
                    vol.kill();
                    panic!("{what}: the volume opened");
                }
                (Err(Error::Corrupt { location, detail }), _) => {
                    assert_ne!(
                        *region,
                        Region::OtherSuperblock,
                        "{what}: a flip in the non-current copy must not stop open: {location}: {detail}"
                    );
                    if *region != Region::CurrentSuperblock {
                        assert_eq!(location, *want, "{what}: open blamed {location}: {detail}");
                    }
                    *refused.entry(region_name(*region)).or_default() += 1;
                }
                (Err(e), _) => panic!("{what}: open failed with a non-corruption error: {e}"),
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{flips} flipped bytes ({} superblock, {} in {} metadata blocks and their ditto copies, \
         {} journal header), each checked and opened, in {elapsed:.2?}; opened and served the \
         right data: {opened_ok:?}; refused as corrupt: {refused:?}",
        2 * BLOCK_SIZE,
        2 * chain.len() * BLOCK_SIZE,
        chain.len(),
        BLOCK_SIZE
    );
    // Every flip in a metadata block is read around: its ditto copy is whole.
    assert_eq!(
        opened_ok.get("metadata blocks").copied().unwrap_or(0),
        (chain.len() * BLOCK_SIZE) as u64
    );
    assert_eq!(
        opened_ok.get("their ditto copies").copied().unwrap_or(0),
        (chain.len() * BLOCK_SIZE) as u64
    );
    assert!(flips >= 20_000, "only {flips} flips");
}

fn region_name(r: Region) -> &'static str {
    match r {
        Region::CurrentSuperblock => "current superblock copy",
        Region::OtherSuperblock => "other superblock copy",
        Region::MetaBlock => "metadata blocks",
        Region::MetaBlockCopy => "their ditto copies",
        Region::JournalHeader => "journal header",
    }
}

#[test]
fn repair_rewrites_a_damaged_superblock_copy_from_the_good_one() {
    let img = build();
    let (sb, _) = layout_of(&img.target);
    for copy in [0u64, 0x1000] {
        for byte in [0u64, 17, 100, 4095] {
            let (s, t, j) = img.overlays();
            t.flip(copy + byte, 0x80);
            let before = check(&s, &t, &j, false).expect("check");
            assert!(!before.is_clean());
            assert!(
                before.problems.iter().all(|p| p.repairable),
                "{}",
                describe(&before)
            );
            let r = check(&s, &t, &j, true).expect("repair");
            assert!(r.is_clean(), "after repair: {}", describe(&r));
            assert_eq!(r.repaired.len(), 1, "{:?}", r.repaired);
            assert!(
                r.repaired[0].starts_with(&format!("superblock copy at {copy:#x}")),
                "{:?}",
                r.repaired
            );
            assert!(r.not_repaired.is_empty());
            // Both copies are valid again and the volume serves the same data.
            for g in 0..2u64 {
                let off = format::superblock_offset(g);
                let mut b = [0u8; BLOCK_SIZE];
                t.read_at(&mut b, off).expect("read");
                let copy_sb = Superblock::decode(&b, off).expect("a valid copy after repair");
                assert_eq!(copy_sb.volume_id, sb.volume_id);
            }
            let vol = open(s, t, j).expect("open after repair");
            serves(&vol, &img).expect("the oracle after repair");
            vol.kill();
        }
    }
}

/// What broke (issue 10, finding 3): one damaged metadata block made the volume unusable, and
/// `check --repair` could not repair it. Every block now has a ditto copy: open reads around
/// the damage (and, opened for writing, rewrites the bad copy), and `--repair` rewrites it.
#[test]
fn repair_rewrites_a_damaged_metadata_block_from_its_ditto_copy() {
    let img = build();
    let (_, chain) = layout_of(&img.target);
    let copies = copies_of(&img.target);
    let i = chain.len() / 2;
    for (damaged, whole) in [(chain[i].0, copies[i]), (copies[i], chain[i].0)] {
        let (s, t, j) = img.overlays();
        t.flip(damaged + 50, 0x04);
        let r = check(&s, &t, &j, false).expect("check");
        let want = format!("metadata block at {damaged:#x}");
        let p = r
            .problems
            .iter()
            .find(|p| p.location == want)
            .unwrap_or_else(|| panic!("check does not name {want}: {}", describe(&r)));
        assert!(
            p.repairable && p.detail.contains(&format!("{whole:#x} is whole")),
            "{p:?}"
        );
        let r = check(&s, &t, &j, true).expect("repair");
        assert!(r.is_clean(), "{}", describe(&r));
        assert_eq!(
            r.repaired,
            [format!(
                "metadata block at {damaged:#x}: rewritten from its ditto copy"
            )]
        );
        let vol = open(s, t, j).expect("open after the repair");
        serves(&vol, &img).expect("the right data");
        vol.kill();
    }
}

#[test]
fn a_metadata_block_damaged_in_both_copies_is_refused_and_named() {
    let img = build();
    let (_, chain) = layout_of(&img.target);
    let copies = copies_of(&img.target);
    let i = chain.len() / 2;
    let (s, t, j) = img.overlays();
    t.flip(chain[i].0 + 50, 0x04);
    t.flip(copies[i] + 60, 0x04);
    let r = check(&s, &t, &j, true).expect("repair");
    assert!(r.repaired.is_empty(), "{:?}", r.repaired);
    let want = format!("metadata block at {:#x}", chain[i].0);
    assert!(
        r.not_repaired.iter().any(|n| n.starts_with(&want)),
        "{:?}",
        r.not_repaired
    );
    let (location, _) = open_corrupt("both copies damaged", s, t, j);
    assert_eq!(location, want);
}

#[test]
fn superblock_copies_that_disagree_on_geometry_are_reported_and_repaired() {
    let img = build();
    let (sb, _) = layout_of(&img.target);
    let (s, t, j) = img.overlays();
    let mut stale = sb.clone();
    stale.generation = sb.generation - 1;
    stale.volume_size = SIZE * 2;
    let other = format::superblock_offset(stale.generation);
    t.write_at(&stale.encode(), other).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    let p = r
        .problems
        .iter()
        .find(|p| p.location == format!("superblock copy at {other:#x}"))
        .unwrap_or_else(|| panic!("{}", describe(&r)));
    assert!(p.detail.contains("volume size"), "{}", p.detail);
    assert!(p.repairable);
    let r = check(&s, &t, &j, true).expect("repair");
    assert!(r.is_clean(), "{}", describe(&r));
}

// ---------------------------------------------------------------------------------------------
// Records that are checksummed correctly but impossible
// ---------------------------------------------------------------------------------------------

/// Appends a block holding `records` to the chain (in a new slot at the end of the target)
/// and points a new superblock generation at it. Returns the block's offset.
fn append_block(t: &dyn Vlun, records: Vec<Record>) -> u64 {
    let mut raw = vec![0u8; t.len().expect("len") as usize];
    t.read_at(&mut raw, 0).expect("read");
    let (mut sb, _) = layout_of(&raw);
    let off = (t.len().expect("len")).next_multiple_of(CHUNK);
    let copy = off + CHUNK;
    let mut blk = MetaBlock::pack(&records, sb.meta_head_seq + 1).remove(0);
    blk.prev = sb.meta_head;
    blk.prev_copy = sb.meta_head_copy;
    for at in [off, copy] {
        t.write_at(&blk.encode(&sb.volume_id), at).expect("write");
    }
    sb.meta_head = off;
    sb.meta_head_copy = copy;
    sb.meta_head_seq = blk.seq;
    sb.generation += 1;
    t.write_at(&sb.encode(), format::superblock_offset(sb.generation))
        .expect("write");
    off
}

/// A preserved copy: (chunk, lo, hi, slot).
type CopyTuple = (u64, u64, u64, u64);

/// Live copies of the pristine volume (of preserve records some live snapshot reads), and the
/// live snapshot sequence numbers.
fn live_copies(img: &Images) -> (Vec<CopyTuple>, Vec<u64>) {
    let (_, chain) = layout_of(&img.target);
    let mut live = BTreeMap::new();
    let mut copies = Vec::new();
    for (_, b) in &chain {
        for r in &b.records {
            match r {
                Record::SnapshotCreate { seq, .. } => {
                    live.insert(seq.0, ());
                }
                Record::SnapshotDelete { seq } => {
                    live.remove(&seq.0);
                }
                Record::Preserve {
                    chunk,
                    slot,
                    lo,
                    hi,
                    crcs,
                } => {
                    let count = crcs.len() as u32;
                    for k in 0..u64::from(count) {
                        copies.push((chunk.0 + k, lo.0, hi.0, slot.0 + k));
                    }
                }
            }
        }
    }
    let seqs: Vec<u64> = live.keys().copied().collect();
    copies.retain(|&(_, lo, hi, _)| seqs.iter().any(|s| (lo..=hi).contains(s)));
    (copies, seqs)
}

fn chain_slot(img: &Images) -> u64 {
    let (sb, chain) = layout_of(&img.target);
    (chain[0].0 - sb.data_start) / CHUNK
}

#[test]
fn impossible_records_are_reported_with_their_block_and_record_number() {
    let img = build();
    let (copies, seqs) = live_copies(&img);
    let (c0, lo0, hi0, slot0) = copies[0];
    let newest = *seqs.last().expect("a live snapshot");
    let live_name = img.snapshots.keys().next().expect("a snapshot").clone();
    let free_chunk = (0..CHUNKS)
        .find(|c| copies.iter().all(|x| x.0 != *c))
        .expect("a chunk without copies");
    let tlen = img.target.len() as u64;
    let data_start = format::data_start(CHUNK as u32);
    // A slot inside the target that the new block will not take: the block goes after the
    // end, so extend the target by one chunk for it first.
    let spare_slot = (tlen.next_multiple_of(CHUNK) - data_start) / CHUNK;
    let preserve = |chunk: u64, slot: u64, lo: u64, hi: u64| Record::Preserve {
        chunk: ChunkIndex(chunk),
        slot: TargetSlot(slot),
        lo: SnapshotSeq(lo),
        hi: SnapshotSeq(hi),
        crcs: vec![0],
    };
    let slot_taken = format!("slot {slot0} holds");
    let cases: Vec<(&str, Record, &str)> = vec![
        (
            "a snapshot seq that does not increase",
            Record::SnapshotCreate {
                seq: SnapshotSeq(newest),
                created_ms: 0,
                name: "late".into(),
            },
            "not above",
        ),
        (
            "a duplicate live name",
            Record::SnapshotCreate {
                seq: SnapshotSeq(newest + 100),
                created_ms: 0,
                name: live_name,
            },
            "already taken",
        ),
        (
            "a delete of a snapshot that does not exist",
            Record::SnapshotDelete {
                seq: SnapshotSeq(newest + 1000),
            },
            "does not exist",
        ),
        (
            "chunks beyond the volume",
            preserve(CHUNKS, spare_slot, newest, newest),
            "beyond the volume",
        ),
        (
            "slots beyond the target",
            preserve(free_chunk, spare_slot + 1000, newest, newest),
            "beyond the end of the target",
        ),
        (
            "a second pointer for one snapshot and chunk",
            preserve(c0, spare_slot, lo0, hi0),
            "two pointers",
        ),
        (
            "two live copies in one slot",
            preserve(free_chunk, slot0, newest, newest),
            &slot_taken,
        ),
        (
            "a live copy in a slot of the metadata chain",
            preserve(free_chunk, chain_slot(&img), newest, newest),
            "holds blocks of the metadata chain",
        ),
    ];
    for (what, record, expect) in cases {
        let (s, t, j) = img.overlays();
        // The spare slot exists (zeroes), so only what the case is about is wrong.
        t.write_at(&[0u8; CHUNK as usize], data_start + spare_slot * CHUNK)
            .expect("write");
        let off = append_block(&t, vec![record]);
        let r = check(&s, &t, &j, false).expect("check");
        let want = format!("metadata block at {off:#x} record 0");
        assert!(
            r.problems
                .iter()
                .any(|p| p.location == want && p.detail.contains(expect)),
            "{what}: expected {want}: ...{expect}...; got:\n{}",
            describe(&r)
        );
        assert!(r.problems.iter().all(|p| !p.repairable), "{what}");
        let r = check(&s, &t, &j, true).expect("repair");
        assert!(r.repaired.is_empty(), "{what}: {:?}", r.repaired);
        assert!(!r.not_repaired.is_empty(), "{what}");
        // Open reads the log with the same walker: it refuses the volume at the same record.
        let (location, detail) = open_corrupt(what, s, t, j);
        assert_eq!(location, want, "{what}: {detail}");
    }
}

#[test]
fn a_broken_prev_pointer_and_a_bad_meta_head_are_located() {
    let img = build();
    // A block whose prev is not a block position.
    let (s, t, j) = img.overlays();
    let mut raw = vec![0u8; img.target.len()];
    t.read_at(&mut raw, 0).expect("read");
    let (mut sb, _) = layout_of(&raw);
    let off = (img.target.len() as u64).next_multiple_of(CHUNK);
    let mut blk = MetaBlock::pack(&[], sb.meta_head_seq + 1).remove(0);
    blk.prev = sb.meta_head + 1;
    t.write_at(&blk.encode(&sb.volume_id), off).expect("write");
    sb.meta_head = off;
    sb.meta_head_seq = blk.seq;
    sb.generation += 1;
    let sb_off = format::superblock_offset(sb.generation);
    t.write_at(&sb.encode(), sb_off).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("metadata block at {off:#x}")
                && p.detail.contains("prev pointer")),
        "{}",
        describe(&r)
    );
    // A superblock whose meta_head points into the superblocks.
    sb.meta_head = 0x800;
    sb.generation += 1;
    let sb_off = format::superblock_offset(sb.generation);
    t.write_at(&sb.encode(), sb_off).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("superblock copy at {sb_off:#x}")
                && p.detail.contains("meta_head")),
        "{}",
        describe(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// The journal
// ---------------------------------------------------------------------------------------------

/// Encodes a zeroing journal record the way `journal.rs` documents it.
fn zero_record(seq: u64, offset: u64, len: u64, volume_id: &[u8; 16]) -> [u8; 64] {
    zero_record_in_epoch(seq, 0, offset, len, volume_id)
}

/// A zeroing journal record issued in `epoch`.
fn zero_record_in_epoch(
    seq: u64,
    epoch: u64,
    offset: u64,
    len: u64,
    volume_id: &[u8; 16],
) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[0..4].copy_from_slice(b"SVJR");
    h[4] = 2;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&epoch.to_le_bytes());
    h[24..32].copy_from_slice(&offset.to_le_bytes());
    h[32..40].copy_from_slice(&len.to_le_bytes());
    h[48..56].copy_from_slice(&volume_id[..8]);
    let crc = crc32c_of(&h[..56]);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h
}

/// CRC-32C (Castagnoli), bitwise: the test does not lean on the engine's checksum code.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn journal_records_are_counted_a_torn_tail_is_normal_and_a_record_outside_the_volume_is_not() {
    let img = build();
    let (sb, _) = layout_of(&img.target);
    let head = RING_OFFSET + sb.journal_head;
    let seq = sb.journal_head_seq;

    // Two good records, then a torn one: two records, no problem.
    let (s, t, j) = img.overlays();
    j.write_at(&zero_record(seq, 0, CHUNK, &sb.volume_id), head)
        .expect("write");
    j.write_at(
        &zero_record(seq + 1, CHUNK, CHUNK, &sb.volume_id),
        head + SECTOR,
    )
    .expect("write");
    let mut torn = zero_record(seq + 2, 0, CHUNK, &sb.volume_id);
    torn[30] ^= 1;
    j.write_at(&torn, head + 2 * SECTOR).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(r.is_clean(), "{}", describe(&r));
    assert_eq!(r.summary.journal_records, 2);

    // A record that writes past the end of the volume.
    let (s, t, j) = img.overlays();
    j.write_at(&zero_record(seq, SIZE - 512, 4096, &sb.volume_id), head)
        .expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("journal record at {head:#x}")
                && p.detail.contains("beyond the end of the volume")),
        "{}",
        describe(&r)
    );
    // Open refuses it too.
    match open(s, t, j) {
        Err(Error::Corrupt { .. }) => {}
        Err(e) => panic!("open failed otherwise: {e}"),
        Ok(v) => {
            v.kill();
            panic!("open accepted a journal record outside the volume");
        }
    }
}

#[test]
fn a_journal_of_another_volume_is_reported() {
    let a = build();
    let b = build();
    let s = Overlay::new(&a.source);
    let t = Overlay::new(&a.target);
    let j = Overlay::new(&b.journal);
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == "journal header at 0x0" && p.detail.contains("another volume")),
        "{}",
        describe(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// Store::check
// ---------------------------------------------------------------------------------------------

#[test]
fn store_check_reads_without_writing_and_refuses_an_open_volume() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::new(dir.path().join("store"));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        journal_size: JOURNAL_SIZE,
        ..CreateOptions::new(SIZE)
    };
    let vol = store.create("v", &opts, options()).expect("create");
    vol.write(0, &[7u8; 8192]).expect("write");
    vol.snapshot_create("s").expect("snapshot");
    vol.write(0, &[8u8; 4096]).expect("write");

    match store.check("v", false) {
        Err(Error::Locked { volume, .. }) => assert_eq!(volume, "v"),
        other => panic!("check of an open volume: {other:?}"),
    }
    vol.close().expect("close");
    assert!(matches!(
        store.check("nope", false),
        Err(Error::VolumeNotFound(_))
    ));
    assert!(matches!(
        store.check("a/b", false),
        Err(Error::InvalidName { .. })
    ));

    let vdir = dir.path().join("store").join("v");
    let paths = VolumePaths {
        source: vdir.join("source.raw"),
        target: vdir.join("target.svt"),
        journal: vdir.join("journal.svj"),
    };
    let before: Vec<Vec<u8>> = [&paths.source, &paths.target, &paths.journal]
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let r = store.check("v", false).expect("check");
    assert!(r.is_clean(), "{}", describe(&r));
    assert_eq!(r.summary.snapshots, 1);
    let after: Vec<Vec<u8>> = [&paths.source, &paths.target, &paths.journal]
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    assert!(before == after, "a check without repair changed a file");

    // A clean repair changes nothing either.
    let r = store.check("v", true).expect("repair");
    assert!(r.is_clean() && r.repaired.is_empty());
    let again: Vec<Vec<u8>> = [&paths.source, &paths.target, &paths.journal]
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    assert!(before == again, "a repair of a clean volume changed a file");
}

// ---------------------------------------------------------------------------------------------
// Any bytes
// ---------------------------------------------------------------------------------------------

/// splitmix64, so every run crafts the same blocks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Small values most of the time, any value sometimes: what reaches edge cases.
    fn value(&mut self) -> u64 {
        match self.next() % 4 {
            0 => self.next(),
            1 => u64::MAX - self.next() % 4,
            _ => self.next() % 80,
        }
    }
}

#[test]
fn checksummed_blocks_of_random_records_and_random_superblock_fields_never_make_check_panic() {
    let img = build();
    let mut rng = Rng(7);
    let mut problems = 0usize;
    for round in 0..400 {
        let (s, t, j) = img.overlays();
        let mut records = Vec::new();
        for _ in 0..1 + rng.next() % 30 {
            let r = match rng.next() % 3 {
                0 => Record::SnapshotCreate {
                    seq: SnapshotSeq(rng.value().max(1)),
                    created_ms: rng.next(),
                    name: ["a", "d", "e", "f", "zz", "q.1"][(rng.next() % 6) as usize].into(),
                },
                1 => Record::SnapshotDelete {
                    seq: SnapshotSeq(rng.value()),
                },
                _ => {
                    let lo = rng.value().max(1);
                    Record::Preserve {
                        chunk: ChunkIndex(rng.value()),
                        crcs: vec![0; (rng.value() % 70).max(1) as usize],
                        slot: TargetSlot(rng.value()),
                        lo: SnapshotSeq(lo),
                        hi: SnapshotSeq(lo.saturating_add(rng.value() % 8)),
                    }
                }
            };
            records.push(r);
        }
        let off = append_block(&t, records);
        // Now damage fields of the new current superblock that decode does not vouch for.
        // Only the superblock: the new block may hold records no decoder accepts.
        let mut cur = current_superblock(&{
            let mut raw = vec![0u8; t.len().expect("len") as usize];
            t.read_at(&mut raw, 0).expect("read");
            raw
        });
        assert_eq!(cur.meta_head, off);
        match round % 6 {
            0 => cur.journal_head = rng.value(),
            1 => cur.journal_head_seq = rng.value(),
            2 => cur.meta_head_seq = rng.value(),
            3 => cur.meta_head = rng.value(),
            4 => cur.target_cap = rng.value(),
            _ => cur.volume_size = (rng.value() % 1000 + 1) * CHUNK,
        }
        cur.generation += 2;
        t.write_at(&cur.encode(), format::superblock_offset(cur.generation))
            .expect("write");
        let r = check(&s, &t, &j, false).expect("check");
        problems += r.problems.len();
        let _ = check(&s, &t, &j, true).expect("repair");
    }
    assert!(problems > 0);
}

// ---------------------------------------------------------------------------------------------
// Numbers no volume reaches: counters near u64::MAX, pointers past the end of a device
// ---------------------------------------------------------------------------------------------

/// The pristine images in plain in-memory VLUNs, as a caller of `Volume::open_on` holds them.
fn mem_vluns(img: &Images) -> (MemVlun, MemVlun, MemVlun) {
    let mem = |bytes: &[u8]| {
        let v = MemVlun::new(0);
        v.write_at(bytes, 0).expect("write");
        v
    };
    (mem(&img.source), mem(&img.target), mem(&img.journal))
}

/// Writes `sb` into both superblock copies, as generations `sb.generation` and the one after,
/// so an open cannot fall back to an undamaged copy.
fn write_both_superblocks(t: &dyn Vlun, sb: &Superblock) {
    for g in [sb.generation, sb.generation + 1] {
        let mut copy = sb.clone();
        copy.generation = g;
        t.write_at(&copy.encode(), format::superblock_offset(g))
            .expect("write");
    }
}

/// Opens the volume and expects `Error::Corrupt`; returns its location and detail.
fn open_corrupt(
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

/// What broke (issue 9, defect 5): open took the superblock's generation and sequence numbers
/// as they came and counted on from them, so a value near u64::MAX overflowed: a panic in a
/// debug build, a silent wrap in release — the journal's next record number wrapped to one its
/// ring could still hold (`seq + ring_len / SECTOR + 1`), the next metadata block got sequence
/// number 0, the next superblock generation 0, the next snapshot sequence number 0.
#[test]
fn superblock_counters_no_volume_reaches_are_corruption_not_a_wrap() {
    let img = build();
    type Damage = Box<dyn Fn(&MemVlun, &mut Superblock)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("generation", Box::new(|_, sb| sb.generation = u64::MAX - 1)),
        (
            "journal head seq",
            Box::new(|_, sb| sb.journal_head_seq = u64::MAX - 1),
        ),
        (
            "last_snapshot_seq",
            Box::new(|_, sb| sb.last_snapshot_seq = u64::MAX),
        ),
        (
            "meta_head_seq",
            Box::new(|t, sb| {
                // A chain of one block carrying the sequence number, so the chain itself is
                // consistent and only the number is wrong.
                let off = t.len().expect("len").next_multiple_of(CHUNK);
                let blk = MetaBlock::pack(&[], u64::MAX).remove(0);
                t.write_at(&blk.encode(&sb.volume_id), off).expect("write");
                sb.meta_head = off;
                sb.meta_head_seq = u64::MAX;
            }),
        ),
    ];
    for (field, damage) in cases {
        let (s, t, j) = mem_vluns(&img);
        let (mut sb, _) = layout_of(&img.target);
        sb.generation += 2;
        damage(&t, &mut sb);
        write_both_superblocks(&t, &sb);

        let r = check(&s, &t, &j, false).expect("check");
        for copy in [0u64, 0x1000] {
            let want = format!("superblock copy at {copy:#x}");
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.location == want && p.detail.contains(field)),
                "{field}: expected {want}: ...{field}...; got:\n{}",
                describe(&r)
            );
        }
        let (location, detail) = open_corrupt(field, s, t, j);
        assert!(
            location.starts_with("superblock copy at") && detail.contains(field),
            "{field}: {location}: {detail}"
        );
    }
}

/// What broke (issue 9, defect 5): a metadata record's snapshot sequence number was taken as
/// it came; one at u64::MAX became the epoch open restarts at (and the sentinel the read path
/// uses for "the live volume"), so taking the next snapshot overflowed it.
#[test]
fn snapshot_sequence_numbers_no_volume_reaches_are_corruption_with_their_record() {
    let img = build();
    let (copies, seqs) = live_copies(&img);
    let newest = *seqs.last().expect("a live snapshot");
    let free_chunk = (0..CHUNKS)
        .find(|c| copies.iter().all(|x| x.0 != *c))
        .expect("a chunk without copies");
    let data_start = format::data_start(CHUNK as u32);
    let spare_slot = ((img.target.len() as u64).next_multiple_of(CHUNK) - data_start) / CHUNK;
    let cases = [
        (
            "a snapshot created with sequence number u64::MAX",
            Record::SnapshotCreate {
                seq: SnapshotSeq(u64::MAX),
                created_ms: 0,
                name: "last".into(),
            },
        ),
        (
            "a copy shared up to snapshot u64::MAX",
            Record::Preserve {
                chunk: ChunkIndex(free_chunk),
                slot: TargetSlot(spare_slot),
                lo: SnapshotSeq(newest),
                hi: SnapshotSeq(u64::MAX),
                crcs: vec![0],
            },
        ),
        (
            "a deletion of snapshot 2^63",
            Record::SnapshotDelete {
                seq: SnapshotSeq(1 << 63),
            },
        ),
    ];
    for (what, record) in cases {
        let (s, t, j) = mem_vluns(&img);
        // The spare slot exists, so only the sequence number is wrong.
        t.write_at(&[0u8; CHUNK as usize], data_start + spare_slot * CHUNK)
            .expect("write");
        let off = append_block(&t, vec![record]);
        let r = check(&s, &t, &j, false).expect("check");
        let want = format!("metadata block at {off:#x} record 0");
        assert!(
            r.problems
                .iter()
                .any(|p| p.location == want && p.detail.contains("sequence number")),
            "{what}: expected {want}: ...sequence number...; got:\n{}",
            describe(&r)
        );
        let (location, detail) = open_corrupt(what, s, t, j);
        assert_eq!(location, format!("metadata block at {off:#x}"), "{what}");
        assert!(detail.starts_with("record 0:"), "{what}: {detail}");
    }
}

/// What broke (issue 9, defect 5): open read the metadata block a pointer names without asking
/// whether the target holds it, so a pointer near u64::MAX overflowed the offset arithmetic of
/// the read (the in-memory VLUN panicked, in release too) instead of being reported.
#[test]
fn a_chain_pointer_past_the_end_of_the_target_is_corruption_not_a_panic() {
    let img = build();
    // 4 KiB aligned from the data area, so only its distance from the target is wrong.
    let far = u64::MAX - 0xfff;

    // The superblock's meta_head.
    let (s, t, j) = mem_vluns(&img);
    let (mut sb, _) = layout_of(&img.target);
    sb.meta_head = far;
    sb.generation += 1;
    let sb_off = format::superblock_offset(sb.generation);
    t.write_at(&sb.encode(), sb_off).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("superblock copy at {sb_off:#x}")
                && p.detail.contains("meta_head")),
        "{}",
        describe(&r)
    );
    let (location, detail) = open_corrupt("meta_head", s, t, j);
    assert_eq!(location, format!("superblock copy at {sb_off:#x}"));
    assert!(
        detail.contains("meta_head") && detail.contains("beyond the end of the target"),
        "{detail}"
    );

    // A block's prev pointer.
    let (s, t, j) = mem_vluns(&img);
    let (mut sb, _) = layout_of(&img.target);
    let off = (img.target.len() as u64).next_multiple_of(CHUNK);
    let mut blk = MetaBlock::pack(&[], sb.meta_head_seq + 1).remove(0);
    blk.prev = far;
    t.write_at(&blk.encode(&sb.volume_id), off).expect("write");
    sb.meta_head = off;
    sb.meta_head_seq = blk.seq;
    sb.generation += 1;
    t.write_at(&sb.encode(), format::superblock_offset(sb.generation))
        .expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("metadata block at {off:#x}")
                && p.detail.contains("prev pointer")),
        "{}",
        describe(&r)
    );
    let (location, detail) = open_corrupt("prev", s, t, j);
    assert_eq!(location, format!("metadata block at {off:#x}"));
    assert!(
        detail.contains("prev pointer") && detail.contains("beyond the end of the target"),
        "{detail}"
    );
}

/// What broke (issue 9, defect 5): open bounded a preserve record's slots by the target size
/// cap only, and a target without a cap by nothing: a record could name slots past the end of
/// the target (a snapshot then read zeroes no copy ever held, as its data), and its count drove
/// that many index insertions, up to 2^32 per record, whatever the target held.
#[test]
fn a_preserve_record_past_the_end_of_the_target_is_refused_by_open_as_by_check() {
    let img = build();
    let (copies, seqs) = live_copies(&img);
    let newest = *seqs.last().expect("a live snapshot");
    let free_chunk = (0..CHUNKS)
        .find(|c| copies.iter().all(|x| x.0 != *c))
        .expect("a chunk without copies");
    let data_start = format::data_start(CHUNK as u32);
    let past_end = ((img.target.len() as u64).next_multiple_of(CHUNK) - data_start) / CHUNK + 1000;
    let (s, t, j) = mem_vluns(&img);
    let off = append_block(
        &t,
        vec![Record::Preserve {
            chunk: ChunkIndex(free_chunk),
            slot: TargetSlot(past_end),
            lo: SnapshotSeq(newest),
            hi: SnapshotSeq(newest),
            crcs: vec![0],
        }],
    );
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems.iter().any(
            |p| p.location == format!("metadata block at {off:#x} record 0")
                && p.detail.contains("beyond the end of the target")
        ),
        "{}",
        describe(&r)
    );
    // Open and check read the log with one walker, so open names the record as check does.
    let (location, detail) = open_corrupt("slot past the end", s, t, j);
    assert_eq!(location, format!("metadata block at {off:#x} record 0"));
    assert!(detail.contains("beyond the end of the target"), "{detail}");
}

/// What broke (issue 9, defect 5): replay took a sealed journal record's epoch as it came; one
/// at u64::MAX became the epoch open restarts at, and the next snapshot overflowed it. `check`
/// found nothing wrong.
#[test]
fn a_journal_record_from_an_epoch_no_volume_reaches_is_corruption_with_its_location() {
    let img = build();
    let (sb, _) = layout_of(&img.target);
    let head = RING_OFFSET + sb.journal_head;
    let (s, t, j) = mem_vluns(&img);
    j.write_at(
        &zero_record_in_epoch(sb.journal_head_seq, u64::MAX, 0, CHUNK, &sb.volume_id),
        head,
    )
    .expect("write");
    let want = format!("journal record at {head:#x}");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == want && p.detail.contains("epoch")),
        "{}",
        describe(&r)
    );
    let (location, detail) = open_corrupt("epoch u64::MAX", s, t, j);
    assert_eq!(location, want);
    assert!(detail.contains("epoch"), "{detail}");
}
