//! The persistent cache journal: the claims' non-volatile cache memory.
//!
//! Writes are acknowledged from the RAM cache. A FLUSH, a FUA write, a snapshot and the
//! destager make them durable by appending them here — one record per write request,
//! sequential, checksummed — and syncing. A snapshot is a record too, appended after the
//! writes it holds in the same append, so taking one costs one sync; the destager copies it
//! into the target's metadata log before the head can pass it. Nothing reaches the source VLUN before it is in the
//! journal, so after a crash replaying the journal (`volume::recover`) redoes every write the
//! source may be missing or hold torn. A record is applied whole or not at all, so a request
//! is all-old or all-new.
//!
//! ```text
//! journal device
//! 0x0000  header (4 KiB): magic "SVJOURNL", version, volume id, ring offset, ring length, CRC
//! 0x1000  ring: records at 512-byte aligned positions, wrapping at the end
//!
//! record
//! off len field
//!   0   4 magic "SVJR"
//!   4   1 kind: 1 write, 2 zero (write-zeroes / trim), 3 wrap (continue at ring offset 0),
//!             4 snapshot
//!   5   3 reserved (0)
//!   8   8 seq: +1 per record over the volume's life; replay demands exactly head_seq, +1, ...
//!  16   8 epoch the write was issued in (snapshot: the snapshot's sequence number)
//!  24   8 volume byte offset (snapshot: creation time, ms since the Unix epoch)
//!  32   8 length in bytes (snapshot: 0)
//!  40   4 data length (= length for a write; snapshot: name length, 1..=255; 0 otherwise)
//!  44   4 index: the record's place in its append (0 = the first record of the append)
//!  48   8 first 8 bytes of the volume id
//!  56   4 CRC-32C of bytes 0..56 and of the data
//!  60   4 reserved (0)
//!  64     data (snapshot: the name, UTF-8), then padding to a multiple of 512 bytes (not covered, never read)
//! ```
//!
//! Records start on 512-byte boundaries, so an append never rewrites a sector that holds an
//! earlier, durable record: a torn append can only lose records of its own. Reserved bytes
//! are written as zero and a header with any other value there is not a record.
//!
//! The index tells which append a record belongs to (its first record is `seq - index`), and
//! that is what tells a torn tail from damage (`scan`): an append starts only after the one
//! before it was synced, so a damaged record followed by an intact record of a *later* append
//! was durable, and acknowledged, before it was damaged.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Device, Error, Result};
use crate::format::{nonzero, reserved_not_zero, BLOCK_SIZE};
use crate::vlun::Vlun;

mod record;
mod scan;

pub use record::{decode_header, Header};
use record::{encode_header, header_crc_ok, record_size};
pub use scan::{scan, Damage, Held, LostRecord, Mode, Scan};

const HEADER_MAGIC: &[u8; 8] = b"SVJOURNL";
const VERSION: u32 = 2;
/// Records are placed at multiples of this.
pub const SECTOR: u64 = 512;
/// Size of a record header.
pub const RECORD_HEADER: usize = 64;
/// Where the ring starts on the journal device.
pub const RING_OFFSET: u64 = BLOCK_SIZE as u64;
/// Default ring size: room for the default 128 MiB cache (a quarter of the ring) and for the
/// largest request journaled whole (half of it).
pub const DEFAULT_JOURNAL_SIZE: u64 = 512 << 20;
/// Smallest ring accepted: room for two of the largest requests the engine takes in one piece.
pub const MIN_JOURNAL_SIZE: u64 = 4 << 20;

/// Records with at least this much data are written from the request's own buffer.
const DIRECT_WRITE: usize = 64 << 10;

/// What one journal record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A write request: `len` bytes at volume `offset`, issued in `epoch`; `data` is `None`
    /// for zeroing (write-zeroes, trim).
    Write {
        /// Epoch the write was issued in.
        epoch: u64,
        /// Volume byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The data; `None` for zeroing.
        data: Option<Arc<[u8]>>,
    },
    /// Snapshot `seq` was taken: it holds every write of an epoch below `seq`.
    Snapshot {
        /// The snapshot's sequence number.
        seq: u64,
        /// Creation time, milliseconds since the Unix epoch.
        created_ms: u64,
        /// Its name.
        name: String,
    },
}

impl Request {
    /// Bytes of payload the record carries.
    fn payload(&self) -> &[u8] {
        match self {
            Request::Write { data, .. } => data.as_deref().unwrap_or(&[]),
            Request::Snapshot { name, .. } => name.as_bytes(),
        }
    }

    /// The epoch the record belongs to: a write's epoch, a snapshot's sequence number.
    pub fn epoch(&self) -> u64 {
        match self {
            Request::Write { epoch, .. } => *epoch,
            Request::Snapshot { seq, .. } => *seq,
        }
    }
}

/// One record as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    /// Record sequence number.
    pub seq: u64,
    /// What it holds.
    pub request: Request,
}

/// The journal device's header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalHeader {
    /// The volume it belongs to.
    pub volume_id: [u8; 16],
    /// Ring length in bytes.
    pub ring_len: u64,
}

impl JournalHeader {
    /// Encodes into a sealed block.
    pub fn encode(&self) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        b[0..8].copy_from_slice(HEADER_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.volume_id);
        b[32..40].copy_from_slice(&RING_OFFSET.to_le_bytes());
        b[40..48].copy_from_slice(&self.ring_len.to_le_bytes());
        let crc = crc32c::crc32c(&b[..BLOCK_SIZE - 4]);
        b[BLOCK_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates.
    pub fn decode(b: &[u8; BLOCK_SIZE]) -> Result<Self> {
        let loc = "journal header at 0x0";
        if &b[0..8] != HEADER_MAGIC {
            return Err(Error::corrupt(loc, "bad magic (not a snapvol journal?)"));
        }
        let crc = u32::from_le_bytes(b[BLOCK_SIZE - 4..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&b[..BLOCK_SIZE - 4]) != crc {
            return Err(Error::corrupt(loc, "checksum mismatch"));
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        let ring_off = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes"));
        let ring_len = u64::from_le_bytes(b[40..48].try_into().expect("8 bytes"));
        if version == 1 {
            return Err(Error::corrupt(
                loc,
                "journal format 1, written by snapvol before 0.2, which this build does not read \
                 (docs/format.md, \"Version log\")",
            ));
        }
        if version != VERSION
            || ring_off != RING_OFFSET
            || ring_len < MIN_JOURNAL_SIZE
            || ring_len % SECTOR != 0
            || RING_OFFSET.checked_add(ring_len).is_none()
        {
            return Err(Error::corrupt(
                loc,
                "unsupported version or impossible ring",
            ));
        }
        if let Some(at) = nonzero(b, 12..16).or_else(|| nonzero(b, 48..BLOCK_SIZE - 4)) {
            return Err(Error::corrupt(loc, reserved_not_zero(at)));
        }
        Ok(Self {
            volume_id: b[16..32].try_into().expect("16 bytes"),
            ring_len,
        })
    }
}

/// Where the live part of the ring starts: persisted in the target's superblock, advanced
/// once the data of the records before it is on the source and synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalHead {
    /// Ring position of the first live record.
    pub pos: u64,
    /// Its sequence number.
    pub seq: u64,
}

/// Where an append left the ring: what moving the head past it frees.
#[derive(Debug, Clone, Copy)]
struct AppendEnd {
    /// The append's generation.
    generation: u64,
    /// The head that frees it and everything before it.
    head: JournalHead,
    /// Bytes of the ring it took (a skipped ring end included).
    bytes: u64,
}

/// The append side of the journal. Callers serialize appends (one lock, off the data path).
#[derive(Debug)]
pub struct Journal {
    dev: Box<dyn Vlun>,
    volume_id: [u8; 16],
    ring_len: u64,
    /// Next append position in the ring.
    tail: u64,
    /// Sequence number of the next record.
    next_seq: u64,
    /// Live bytes between head and tail.
    used: u64,
    head: JournalHead,
    /// The appends since the head, oldest first.
    appends: std::collections::VecDeque<AppendEnd>,
    generation: u64,
    buf: Vec<u8>,
    /// `used`, published for readers that must not wait for an append's sync (monitoring).
    used_gauge: Arc<AtomicU64>,
}

fn jerr(op: &'static str, offset: u64, e: io::Error) -> Error {
    Error::io(op, Device::Journal, offset, e)
}

impl Journal {
    /// Initialises a journal device for a new volume.
    pub fn format(dev: &dyn Vlun, volume_id: [u8; 16], ring_len: u64) -> Result<()> {
        if ring_len < MIN_JOURNAL_SIZE {
            return Err(Error::InvalidArgument(format!(
                "journal size {ring_len} is below the minimum of {MIN_JOURNAL_SIZE} bytes"
            )));
        }
        let ring_len = ring_len / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
        if dev.growable() {
            dev.set_len(RING_OFFSET + ring_len)
                .map_err(|e| jerr("size", 0, e))?;
            // The whole ring's space now, so that no append (a FLUSH) ever finds the file
            // system full.
            dev.reserve_space(0, RING_OFFSET + ring_len).map_err(|e| {
                Error::io_or_full("make room for the journal", Device::Journal, 0, e)
            })?;
        } else {
            let len = dev.len().map_err(|e| jerr("size", 0, e))?;
            if len < RING_OFFSET + ring_len {
                return Err(Error::InvalidArgument(format!(
                    "the journal device holds {len} bytes; it needs {}",
                    RING_OFFSET + ring_len
                )));
            }
        }
        let header = JournalHeader {
            volume_id,
            ring_len,
        }
        .encode();
        dev.write_at(&header, 0)
            .map_err(|e| jerr("write journal header", 0, e))?;
        // A stale record at the ring's start could otherwise look live to the first replay.
        dev.write_at(&[0u8; RECORD_HEADER], RING_OFFSET)
            .map_err(|e| jerr("write", RING_OFFSET, e))?;
        dev.sync().map_err(|e| jerr("sync", 0, e))
    }

    /// Opens a journal device, checks it belongs to `volume_id`, and reads every live record
    /// from `head` onwards (see [`scan()`] for where the journal ends; `closed_cleanly` is the
    /// superblock's flag). Returns the journal positioned after the last of them, the records,
    /// and any damage found: with [`Mode::Replay`], damage that intact records of later
    /// appends follow is refused as corruption (acknowledged writes would be lost); damage in
    /// the last append is returned for the caller to report. With [`Mode::Salvage`] every
    /// intact record is returned and the damage lists the records lost.
    pub fn open(
        dev: Box<dyn Vlun>,
        volume_id: [u8; 16],
        head: JournalHead,
        closed_cleanly: bool,
        mode: Mode,
    ) -> Result<(Journal, Vec<JournalRecord>, Option<Damage>)> {
        let mut hb = [0u8; BLOCK_SIZE];
        dev.read_at(&mut hb, 0)
            .map_err(|e| jerr("read journal header", 0, e))?;
        let header = JournalHeader::decode(&hb)?;
        if header.volume_id != volume_id {
            return Err(Error::corrupt(
                "journal header at 0x0",
                "the journal belongs to another volume",
            ));
        }
        // `format` sized the device to hold the ring. A ring the device cannot hold is not one
        // this engine wrote, and would let a forged record header ask for a buffer as large
        // as its data length (up to 4 GiB) before its checksum is looked at.
        let ring_end = RING_OFFSET + header.ring_len; // `decode` checked it fits
        let dev_len = dev.len().map_err(|e| jerr("size", 0, e))?;
        if dev_len < ring_end {
            return Err(Error::corrupt(
                "journal header at 0x0",
                format!(
                    "the ring ends at {ring_end:#x}, past the end of the journal device \
                     ({dev_len:#x} bytes)"
                ),
            ));
        }
        if head.pos >= header.ring_len || head.pos % SECTOR != 0 {
            return Err(Error::corrupt(
                "superblock",
                format!("journal head {:#x} lies outside the ring", head.pos),
            ));
        }
        let ring_len = header.ring_len;
        let scan = scan(&*dev, &volume_id, ring_len, head, closed_cleanly, mode)?;
        if let Some(d) = scan.damage.as_ref().filter(|d| d.later_appends_follow) {
            if mode == Mode::Replay {
                return Err(Error::corrupt(
                    format!("journal record at {:#x}", RING_OFFSET + d.at.pos),
                    format!(
                        "record {} is damaged and intact records of later appends follow it, so \
                         it held acknowledged writes; opening would lose them silently. \
                         `snapvol check VOL --repair` replays every intact record and lists the \
                         writes lost",
                        d.at.seq
                    ),
                ));
            }
        }
        let (pos, seq, used) = (scan.end.pos, scan.end.seq, scan.used);
        let records = scan.records.into_iter().map(|(_, r)| r).collect();
        // Records of an earlier life of the ring beyond this point must never match a sequence
        // number we hand out later, or a crash right after a short new append would "replay"
        // them. Skip past every sequence number the ring could possibly hold; a head sequence
        // number too close to u64::MAX for that is corrupt (wrapping would reuse numbers).
        let next_seq = seq.checked_add(ring_len / SECTOR + 1).ok_or_else(|| {
            Error::corrupt(
                "superblock",
                format!(
                    "journal head sequence number {} leaves no room for the {} records the \
                     ring can hold",
                    head.seq,
                    ring_len / SECTOR
                ),
            )
        })?;
        let journal = Journal {
            dev,
            volume_id,
            ring_len,
            tail: pos,
            next_seq,
            used,
            head,
            appends: Default::default(),
            generation: 0,
            buf: Vec::new(),
            used_gauge: Arc::new(AtomicU64::new(used)),
        };
        Ok((journal, records, scan.damage))
    }

    /// Ring length.
    pub fn ring_len(&self) -> u64 {
        self.ring_len
    }

    /// Live bytes.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// [`Journal::used`] as of the last append or head move, readable without the journal.
    pub fn used_gauge(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.used_gauge)
    }

    fn publish_used(&self) {
        self.used_gauge.store(self.used, Ordering::Relaxed);
    }

    /// Bytes of the ring an append of `requests` takes from where the tail is: its records and,
    /// when one does not fit before the ring's end, the rest of the ring it skips (where the
    /// wrap record goes). The append fits when this is at most [`Journal::free`].
    pub fn append_cost(&self, requests: &[Request]) -> u64 {
        let mut tail = self.tail;
        let mut cost = 0;
        for r in requests {
            let size = record_size(r.payload().len() as u64);
            if tail + size > self.ring_len {
                cost += self.ring_len - tail;
                tail = 0;
            }
            cost += size;
            tail = (tail + size) % self.ring_len;
        }
        cost
    }

    /// Free bytes.
    pub fn free(&self) -> u64 {
        self.ring_len - self.used
    }

    /// Appends `requests` as records, in order, and syncs. Returns the append's
    /// generation (for [`Journal::head_after`]). The caller makes room first
    /// ([`Journal::append_cost`] at most [`Journal::free`]); an append without room is refused
    /// and writes nothing, so it never overwrites a live record.
    pub fn append(&mut self, requests: &[Request]) -> Result<u64> {
        let needed = self.append_cost(requests);
        if needed > self.free() {
            return Err(Error::JournalFull {
                needed,
                free: self.free(),
            });
        }
        let start_used = self.used;
        let mut segment_start = self.tail;
        self.buf.clear();
        let first_seq = self.next_seq;
        // The record's place in this append, which replay uses to tell appends apart.
        let index = |next_seq: u64| u32::try_from(next_seq - first_seq).unwrap_or(u32::MAX);
        for request in requests {
            let bytes = request.payload();
            let size = record_size(bytes.len() as u64);
            if self.tail + size > self.ring_len {
                // Wrap: a wrap record where we are, then continue at the ring's start.
                let h = encode_header(self.next_seq, None, &self.volume_id, index(self.next_seq));
                self.buf.extend_from_slice(&h);
                self.write_buf(segment_start)?;
                self.used += self.ring_len - self.tail;
                self.tail = 0;
                segment_start = 0;
                self.next_seq += 1;
            }
            let h = encode_header(
                self.next_seq,
                Some(request),
                &self.volume_id,
                index(self.next_seq),
            );
            self.buf.extend_from_slice(&h);
            if bytes.len() >= DIRECT_WRITE {
                // Large data goes straight from the request's buffer: no copy.
                self.write_buf(segment_start)?;
                let off = RING_OFFSET + self.tail + RECORD_HEADER as u64;
                self.dev
                    .write_at(bytes, off)
                    .map_err(|e| jerr("write journal", off, e))?;
                segment_start = self.tail + size;
            } else {
                self.buf.extend_from_slice(bytes);
                let padded = self.buf.len().next_multiple_of(SECTOR as usize);
                self.buf.resize(padded, 0);
            }
            self.tail += size;
            self.used += size;
            self.next_seq += 1;
            if self.tail == self.ring_len {
                // Ended exactly at the ring's end: the next record starts at 0, no wrap record.
                self.write_buf(segment_start)?;
                self.tail = 0;
                segment_start = 0;
            } else if self.buf.len() >= 8 << 20 {
                self.write_buf(segment_start)?;
                segment_start = self.tail;
            }
        }
        self.write_buf(segment_start)?;
        self.dev.sync().map_err(|e| jerr("sync", 0, e))?;
        self.generation += 1;
        self.appends.push_back(AppendEnd {
            generation: self.generation,
            head: self.tail_head(),
            bytes: self.used - start_used,
        });
        debug_assert!(self.used <= self.ring_len);
        self.publish_used();
        Ok(self.generation)
    }

    fn write_buf(&mut self, at: u64) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let off = RING_OFFSET + at;
        self.dev
            .write_at(&self.buf, off)
            .map_err(|e| jerr("write journal", off, e))?;
        self.buf.clear();
        Ok(())
    }

    /// The head that frees every append up to and including generation `upto` (all of whose
    /// data is on the source and synced); `None` if that frees nothing new.
    pub fn head_after(&self, upto: u64) -> Option<JournalHead> {
        self.appends
            .iter()
            .take_while(|a| a.generation <= upto)
            .last()
            .map(|a| a.head)
    }

    /// Moves the head (after it was persisted): the space of every append before it is free
    /// again.
    pub fn advance_head(&mut self, head: JournalHead) {
        while self.appends.front().is_some_and(|a| a.head.seq <= head.seq) {
            self.appends.pop_front();
        }
        self.used = self.appends.iter().map(|a| a.bytes).sum();
        self.head = head;
        self.publish_used();
    }

    /// Forgets every record (after recovery destaged them all and the new head is persisted).
    pub fn reset_to(&mut self, head: JournalHead) {
        debug_assert_eq!(head, self.tail_head());
        self.appends.clear();
        self.used = 0;
        self.head = head;
        self.publish_used();
    }

    /// The head as it stands.
    pub fn head(&self) -> JournalHead {
        self.head
    }

    /// The head that would free everything appended so far.
    pub fn tail_head(&self) -> JournalHead {
        JournalHead {
            pos: self.tail,
            seq: self.next_seq,
        }
    }

    /// Generation of the last append.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Feeds arbitrary bytes to the record decoder, and to replay as a ring of their own (records
/// of every kind, wraps, snapshot names); for the fuzzer. Never panics.
pub fn fuzz_decode(data: &[u8]) {
    let id = [0u8; 16];
    if let Some(h) = decode_header(data, &id) {
        let end = (RECORD_HEADER + h.data_len as usize).min(data.len());
        let _ = header_crc_ok(data, &data[RECORD_HEADER.min(data.len())..end], h.crc);
    }
    // Replay from the first record's own sequence number, so that the fuzzer gets past it.
    let ring_len = (data.len() as u64).next_multiple_of(SECTOR).max(SECTOR);
    let seq = data
        .get(8..16)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let dev = crate::vlun::MemVlun::new(RING_OFFSET + ring_len);
    if dev.write_at(data, RING_OFFSET).is_ok() {
        let head = JournalHead { pos: 0, seq };
        for mode in [Mode::Replay, Mode::Salvage] {
            let _ = scan(&dev, &id, ring_len, head, false, mode);
        }
    }
    let mut b = [0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    let _ = JournalHeader::decode(&b);
}

#[cfg(test)]
mod tests;
