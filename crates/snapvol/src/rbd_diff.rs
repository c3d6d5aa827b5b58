//! The bytes of an `rbd diff v1` stream, Ceph's incremental format (`rbd export-diff`,
//! `rbd import-diff`, backup tools such as backy), and nothing else: no volume, no socket.
//! `docs/rbd-diff.md` describes the stream snapvol writes; Ceph's `doc/dev/rbd-diff.rst` is
//! the reference.
//!
//! ```text
//! "rbd diff v1\n"                         header, 12 bytes
//! 'f' le32 len, len bytes                 from-snapshot name  (absent: a diff from nothing)
//! 't' le32 len, len bytes                 to-snapshot name    (absent: to the live volume)
//! 's' le64 size                           volume size at the to-point
//! 'w' le64 offset, le64 len, len bytes    data
//! 'z' le64 offset, le64 len               a range that reads as zero
//! 'e'                                     end
//! ```
//!
//! Metadata records (`f`, `t`, `s`) come first, in any order, each at most once; then data
//! records (`w`, `z`) in any order; then `e`. Bytes after `e` are not read (as `rbd
//! import-diff` does not).
//!
//! The [`Reader`] trusts nothing: a `w` record's length is an attacker's number, so its data
//! is handed over in pieces of at most [`MAX_PIECE`] bytes into the caller's buffer, never
//! allocated whole; names are read only when short enough to be a valid name; every range is
//! checked against the declared size before it is handed over. This file uses only `std` and
//! the engine's name rules, so the fuzz target includes it as it is.

use std::fmt;
use std::io::{self, Read, Write};

/// The first bytes of every stream.
pub const HEADER: &[u8; 12] = b"rbd diff v1\n";

/// Largest piece of a `w` record's data that [`Reader::next`] hands over at once.
pub const MAX_PIECE: usize = 4 << 20;

/// Longest name [`Reader`] reads (the engine's limit on snapshot names).
const MAX_NAME: u32 = 128;

/// Size of a data record's header after its tag: offset and length.
const RANGE_LEN: usize = 16;

/// The metadata records of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The snapshot the stream starts from (`f`); `None` for a stream from nothing (a whole
    /// image).
    pub from: Option<String>,
    /// The snapshot the stream leads to (`t`); `None` when it was taken from a live volume.
    pub to: Option<String>,
    /// The volume's size at the to-point (`s`).
    pub size: u64,
}

/// What a stream is made of after its metadata.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'b> {
    /// Data at `offset` (a whole `w` record or a piece of one), in the caller's buffer.
    Data {
        /// Where it goes.
        offset: u64,
        /// The bytes.
        data: &'b [u8],
    },
    /// `[offset, offset + len)` reads as zero (a `z` record).
    Zero {
        /// Start.
        offset: u64,
        /// Length, at least 1.
        len: u64,
    },
}

/// Why a stream was refused. `at` is the offset in the stream of the record (or byte) at
/// fault.
#[derive(Debug)]
#[non_exhaustive]
pub enum DiffError {
    /// Reading the stream failed.
    Io {
        /// Where.
        at: u64,
        /// The cause.
        source: io::Error,
    },
    /// The stream does not start with [`HEADER`].
    BadHeader {
        /// What it starts with instead (at most 12 bytes).
        found: Vec<u8>,
    },
    /// The stream ended in the middle of something.
    Truncated {
        /// Where.
        at: u64,
        /// What was being read.
        what: &'static str,
    },
    /// A tag that is not one of `f t s w z e`.
    UnknownTag {
        /// Where.
        at: u64,
        /// The byte.
        tag: u8,
    },
    /// A metadata record that already came, or one after the first data record.
    MisplacedMetadata {
        /// Where.
        at: u64,
        /// The record's tag.
        tag: u8,
        /// Why it cannot be here.
        why: &'static str,
    },
    /// No `s` record before the first data record or the end.
    NoSize {
        /// Where the data began.
        at: u64,
    },
    /// A from- or to-snapshot name that is not a valid snapshot name.
    BadName {
        /// Where.
        at: u64,
        /// The record's tag.
        tag: u8,
        /// Why.
        reason: String,
    },
    /// A data record that reaches past the declared size.
    PastEnd {
        /// Where.
        at: u64,
        /// The record's tag.
        tag: u8,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The declared size.
        size: u64,
    },
}

impl fmt::Display for DiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffError::Io { at, source } => {
                write!(
                    f,
                    "reading the rbd diff stream at byte {at:#x} failed: {source}"
                )
            }
            DiffError::BadHeader { found } if found.is_empty() => {
                write!(f, "not an rbd diff v1 stream: it is empty")
            }
            DiffError::BadHeader { found } => write!(
                f,
                "not an rbd diff v1 stream: it starts with \"{}\", not \"rbd diff v1\\n\"",
                found.escape_ascii()
            ),
            DiffError::Truncated { at, what } => write!(
                f,
                "the rbd diff stream is cut short at byte {at:#x}: it ended in {what}"
            ),
            DiffError::UnknownTag { at, tag } => write!(
                f,
                "the rbd diff stream has an unknown record tag {tag:#04x} ({:?}) at byte {at:#x}",
                char::from(*tag)
            ),
            DiffError::MisplacedMetadata { at, tag, why } => write!(
                f,
                "the rbd diff stream's '{}' record at byte {at:#x} {why}",
                char::from(*tag)
            ),
            DiffError::NoSize { at } => write!(
                f,
                "the rbd diff stream has no size record ('s') before its data at byte {at:#x}"
            ),
            DiffError::BadName { at, tag, reason } => write!(
                f,
                "the rbd diff stream's {}-snapshot name at byte {at:#x} is not a valid snapshot \
                 name: {reason}",
                if *tag == b'f' { "from" } else { "to" }
            ),
            DiffError::PastEnd {
                at,
                tag,
                offset,
                len,
                size,
            } => write!(
                f,
                "the rbd diff stream's '{}' record at byte {at:#x} covers {offset:#x}+{len:#x}, \
                 past the size it declares ({size:#x} bytes)",
                char::from(*tag)
            ),
        }
    }
}

impl std::error::Error for DiffError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DiffError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Writes a stream: [`Writer::new`] writes the header and metadata, then [`Writer::data`] and
/// [`Writer::zero`] a record each, and [`Writer::end`] the end record.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    size: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the header and the `f`, `t` and `s` records, in that order (`f` and `t` only
    /// when given).
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        out.write_all(HEADER)?;
        for (tag, name) in [(b'f', &header.from), (b't', &header.to)] {
            if let Some(name) = name {
                let len = u32::try_from(name.len())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
                out.write_all(&[tag])?;
                out.write_all(&len.to_le_bytes())?;
                out.write_all(name.as_bytes())?;
            }
        }
        out.write_all(b"s")?;
        out.write_all(&header.size.to_le_bytes())?;
        Ok(Self {
            out,
            size: header.size,
        })
    }

    /// Writes a `w` record of `data` at `offset`.
    pub fn data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.range(b'w', offset, data.len() as u64)?;
        self.out.write_all(data)
    }

    /// Writes a `z` record: `[offset, offset + len)` reads as zero.
    pub fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.range(b'z', offset, len)
    }

    fn range(&mut self, tag: u8, offset: u64, len: u64) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a record at {offset:#x}+{len:#x} is past the size {:#x}",
                    self.size
                ),
            ));
        }
        let mut h = [0u8; 1 + RANGE_LEN];
        h[0] = tag;
        h[1..9].copy_from_slice(&offset.to_le_bytes());
        h[9..].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&h)
    }

    /// Writes the end record and gives the output back (flushed).
    pub fn end(mut self) -> io::Result<W> {
        self.out.write_all(b"e")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a stream: [`Reader::new`] reads the header and the metadata records, then
/// [`Reader::next`] hands over the data records one piece at a time.
#[derive(Debug)]
pub struct Reader<R: Read> {
    input: R,
    header: Header,
    /// Offset in the stream of the next byte to read.
    at: u64,
    /// The tag of the first data record, read while looking for the end of the metadata.
    first_tag: Option<u8>,
    /// What is left of the `w` record being handed over: (offset, bytes left).
    data_left: Option<(u64, u64)>,
    /// Data records read so far.
    records: u64,
    ended: bool,
}

impl<R: Read> Reader<R> {
    /// Reads the header and the metadata records, up to the first data record (or the end).
    pub fn new(mut input: R) -> Result<Self, DiffError> {
        let mut head = [0u8; HEADER.len()];
        let got =
            read_full(&mut input, &mut head).map_err(|source| DiffError::Io { at: 0, source })?;
        if head != *HEADER {
            return Err(
                if got == 0 || !HEADER.starts_with(&head[..got]) || got == head.len() {
                    DiffError::BadHeader {
                        found: head[..got].to_vec(),
                    }
                } else {
                    DiffError::Truncated {
                        at: got as u64,
                        what: "the header",
                    }
                },
            );
        }
        let mut reader = Self {
            input,
            header: Header {
                from: None,
                to: None,
                size: 0,
            },
            at: HEADER.len() as u64,
            first_tag: None,
            data_left: None,
            records: 0,
            ended: false,
        };
        let mut size = None;
        loop {
            let at = reader.at;
            let tag = reader.byte("a record tag (no end record 'e')")?;
            let dup = |tag| DiffError::MisplacedMetadata {
                at,
                tag,
                why: "comes a second time",
            };
            match tag {
                b'f' | b't' => {
                    let name = reader.name(tag)?;
                    let slot = if tag == b'f' {
                        &mut reader.header.from
                    } else {
                        &mut reader.header.to
                    };
                    if slot.replace(name).is_some() {
                        return Err(dup(tag));
                    }
                }
                b's' => {
                    let mut b = [0u8; 8];
                    reader.bytes(&mut b, "the size record")?;
                    if size.replace(u64::from_le_bytes(b)).is_some() {
                        return Err(dup(tag));
                    }
                }
                b'w' | b'z' | b'e' => {
                    reader.header.size = size.ok_or(DiffError::NoSize { at })?;
                    reader.first_tag = Some(tag);
                    reader.at = at;
                    return Ok(reader);
                }
                _ => return Err(DiffError::UnknownTag { at, tag }),
            }
        }
    }

    /// The metadata records.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes of the stream read so far.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// Data records (`w` and `z`) begun so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The next piece of data or zero range, or `None` after the end record. A `w` record's
    /// data is read into `buf` (at most [`MAX_PIECE`] bytes at a time; a longer record comes
    /// in several pieces); `buf` must not be empty. Empty records are skipped.
    pub fn next<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<Event<'b>>, DiffError> {
        assert!(!buf.is_empty(), "Reader::next needs room for data");
        loop {
            if self.ended {
                return Ok(None);
            }
            if let Some((offset, left)) = self.data_left {
                let n = left.min(buf.len().min(MAX_PIECE) as u64);
                let piece = &mut buf[..n as usize];
                self.bytes(piece, "the data of a 'w' record")?;
                self.data_left = (left > n).then_some((offset + n, left - n));
                return Ok(Some(Event::Data {
                    offset,
                    data: piece,
                }));
            }
            let at = self.at;
            let tag = match self.first_tag.take() {
                Some(t) => {
                    self.at += 1;
                    t
                }
                None => self.byte("a record tag (no end record 'e')")?,
            };
            match tag {
                b'w' | b'z' => {
                    let mut h = [0u8; RANGE_LEN];
                    self.bytes(&mut h, "a data record's offset and length")?;
                    let offset = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
                    let len = u64::from_le_bytes(h[8..].try_into().expect("8 bytes"));
                    let size = self.header.size;
                    if offset.checked_add(len).is_none_or(|end| end > size) {
                        return Err(DiffError::PastEnd {
                            at,
                            tag,
                            offset,
                            len,
                            size,
                        });
                    }
                    self.records += 1;
                    if len == 0 {
                        continue;
                    }
                    if tag == b'z' {
                        return Ok(Some(Event::Zero { offset, len }));
                    }
                    self.data_left = Some((offset, len));
                }
                b'e' => self.ended = true,
                b'f' | b't' | b's' => {
                    return Err(DiffError::MisplacedMetadata {
                        at,
                        tag,
                        why: "comes after a data record",
                    })
                }
                _ => return Err(DiffError::UnknownTag { at, tag }),
            }
        }
    }

    /// Reads a name record's length and name, refusing a length no valid name has before
    /// reading (or allocating) any of it.
    fn name(&mut self, tag: u8) -> Result<String, DiffError> {
        let at = self.at - 1;
        let mut len = [0u8; 4];
        self.bytes(&mut len, "a snapshot name's length")?;
        let len = u32::from_le_bytes(len);
        let bad = |reason: String| DiffError::BadName { at, tag, reason };
        if len == 0 || len > MAX_NAME {
            return Err(bad(format!(
                "its length is {len} bytes; names are 1 to {MAX_NAME} bytes"
            )));
        }
        let mut name = vec![0u8; len as usize];
        self.bytes(&mut name, "a snapshot name")?;
        let name = String::from_utf8(name).map_err(|e| {
            bad(format!(
                "{:?} is not UTF-8",
                String::from_utf8_lossy(e.as_bytes())
            ))
        })?;
        snapvol_engine::validate_name(&name).map_err(|e| bad(e.to_string()))?;
        Ok(name)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, DiffError> {
        let mut b = [0u8; 1];
        self.bytes(&mut b, what)?;
        Ok(b[0])
    }

    /// Reads exactly `buf.len()` bytes; running out is [`DiffError::Truncated`].
    fn bytes(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), DiffError> {
        let got = read_full(&mut self.input, buf).map_err(|source| DiffError::Io {
            at: self.at,
            source,
        })?;
        self.at += got as u64;
        if got < buf.len() {
            return Err(DiffError::Truncated { at: self.at, what });
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The fuzz entry point (`fuzz/fuzz_targets/rbd_diff.rs`, and the seed replay below): parses
/// arbitrary bytes with a small buffer; whatever parses must write back and parse again to
/// the same header and events.
#[allow(dead_code)] // Used by the fuzz target and the tests, not by the binary.
pub fn fuzz_parse(data: &[u8]) {
    let Ok((header, events)) = parse_all(data, 4096) else {
        return;
    };
    let mut writer = Writer::new(Vec::new(), &header).expect("writing to memory");
    for e in &events {
        match e {
            Owned::Data(offset, bytes) => writer.data(*offset, bytes),
            Owned::Zero(offset, len) => writer.zero(*offset, *len),
        }
        .expect("a parsed record writes back");
    }
    let again = writer.end().expect("writing to memory");
    let (header2, events2) = parse_all(&again, 4096).expect("written streams parse");
    assert_eq!(header, header2);
    assert_eq!(events, events2);
}

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

#[allow(dead_code)] // Used by `fuzz_parse` and the tests.
fn parse_all(data: &[u8], piece: usize) -> Result<(Header, Vec<Owned>), DiffError> {
    let mut reader = Reader::new(data)?;
    let mut buf = vec![0u8; piece];
    let mut events = Vec::new();
    while let Some(e) = reader.next(&mut buf)? {
        events.push(match e {
            Event::Data { offset, data } => Owned::Data(offset, data.to_vec()),
            Event::Zero { offset, len } => Owned::Zero(offset, len),
        });
    }
    Ok((reader.header().clone(), events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(from: Option<&str>, to: Option<&str>, size: u64) -> Header {
        Header {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            size,
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header(Some("s1"), Some("s2"), 1 << 20)).unwrap();
        w.data(4096, &[7; 10]).unwrap();
        w.zero(65536, 8192).unwrap();
        w.end().unwrap()
    }

    #[test]
    fn the_writer_puts_down_exactly_the_documented_bytes() {
        let mut want = b"rbd diff v1\n".to_vec();
        want.extend_from_slice(b"f\x02\x00\x00\x00s1");
        want.extend_from_slice(b"t\x02\x00\x00\x00s2");
        want.push(b's');
        want.extend_from_slice(&(1u64 << 20).to_le_bytes());
        want.push(b'w');
        want.extend_from_slice(&4096u64.to_le_bytes());
        want.extend_from_slice(&10u64.to_le_bytes());
        want.extend_from_slice(&[7; 10]);
        want.push(b'z');
        want.extend_from_slice(&65536u64.to_le_bytes());
        want.extend_from_slice(&8192u64.to_le_bytes());
        want.push(b'e');
        assert_eq!(sample(), want);
    }

    #[test]
    fn a_stream_reads_back_as_written() {
        let (h, events) = parse_all(&sample(), 4096).unwrap();
        assert_eq!(h, header(Some("s1"), Some("s2"), 1 << 20));
        assert_eq!(
            events,
            vec![Owned::Data(4096, vec![7; 10]), Owned::Zero(65536, 8192)]
        );
    }

    #[test]
    fn metadata_may_come_in_any_order_and_from_and_to_may_be_absent() {
        let mut s = b"rbd diff v1\n".to_vec();
        s.push(b's');
        s.extend_from_slice(&4096u64.to_le_bytes());
        s.extend_from_slice(b"t\x03\x00\x00\x00abc");
        s.push(b'e');
        let (h, events) = parse_all(&s, 16).unwrap();
        assert_eq!(h, header(None, Some("abc"), 4096));
        assert!(events.is_empty());
    }

    #[test]
    fn a_long_w_record_comes_in_pieces_no_larger_than_the_buffer() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut w = Writer::new(Vec::new(), &header(None, None, 1 << 20)).unwrap();
        w.data(100, &data).unwrap();
        let s = w.end().unwrap();
        let mut r = Reader::new(&s[..]).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        let mut offsets = Vec::new();
        while let Some(e) = r.next(&mut buf).unwrap() {
            let Event::Data { offset, data } = e else {
                panic!("{e:?}")
            };
            assert!(data.len() <= 4096);
            offsets.push(offset);
            got.extend_from_slice(data);
        }
        assert_eq!(got, data);
        assert_eq!(offsets, vec![100, 4196, 8292]);
        assert_eq!(r.records(), 1);
        assert_eq!(r.position(), s.len() as u64);
    }

    #[test]
    fn a_huge_declared_length_is_refused_or_read_piecewise_never_allocated() {
        // A 'w' record claiming 2^62 bytes inside a size that allows it: the reader hands
        // over what is there and then reports the cut, with a buffer of the caller's size.
        let mut s = b"rbd diff v1\ns".to_vec();
        s.extend_from_slice(&u64::MAX.to_le_bytes());
        s.push(b'w');
        s.extend_from_slice(&0u64.to_le_bytes());
        s.extend_from_slice(&(1u64 << 62).to_le_bytes());
        s.extend_from_slice(&[1; 100]);
        let mut r = Reader::new(&s[..]).unwrap();
        let mut buf = vec![0u8; 64];
        // The first piece fills the buffer, the second runs out.
        assert!(r.next(&mut buf).unwrap().is_some());
        let err = r.next(&mut buf).unwrap_err();
        assert!(matches!(err, DiffError::Truncated { .. }), "{err}");
    }

    fn refused(stream: &[u8]) -> DiffError {
        parse_all(stream, 64).expect_err("must be refused")
    }

    #[test]
    fn bad_streams_are_refused_with_a_reason() {
        let good = sample();
        // Header.
        let e = refused(b"");
        assert!(e.to_string().contains("empty"), "{e}");
        let e = refused(b"RBD DIFF V1\nxxxx");
        assert!(matches!(e, DiffError::BadHeader { .. }), "{e}");
        let e = refused(b"rbd diff v2\n");
        assert!(matches!(e, DiffError::BadHeader { .. }), "{e}");
        let e = refused(b"rbd di");
        assert!(matches!(e, DiffError::Truncated { at: 6, .. }), "{e}");
        // Cut anywhere: truncated, never a short success.
        for cut in 12..good.len() {
            let e = refused(&good[..cut]);
            assert!(matches!(e, DiffError::Truncated { .. }), "cut {cut}: {e}");
        }
        // Unknown tag in the metadata and among the data.
        let mut s = good[..12].to_vec();
        s.push(b'q');
        let e = refused(&s);
        assert!(
            matches!(e, DiffError::UnknownTag { at: 12, tag: b'q' }),
            "{e}"
        );
        let mut s = good[..good.len() - 1].to_vec();
        s.push(b'W');
        assert!(matches!(refused(&s), DiffError::UnknownTag { .. }));
        // Metadata twice, or after data.
        let mut s = good[..12].to_vec();
        s.extend_from_slice(b"t\x01\x00\x00\x00at\x01\x00\x00\x00b");
        assert!(matches!(refused(&s), DiffError::MisplacedMetadata { .. }));
        let mut s = good[..good.len() - 1].to_vec();
        s.extend_from_slice(b"f\x01\x00\x00\x00a");
        assert!(matches!(refused(&s), DiffError::MisplacedMetadata { .. }));
        // No size.
        assert!(matches!(
            refused(b"rbd diff v1\ne"),
            DiffError::NoSize { at: 12 }
        ));
        // Past the size, and an offset + length that overflows.
        for (offset, len) in [((1 << 20) - 4096, 4097), (u64::MAX, 2), (1, u64::MAX)] {
            let mut s = b"rbd diff v1\ns".to_vec();
            s.extend_from_slice(&(1u64 << 20).to_le_bytes());
            s.push(b'z');
            s.extend_from_slice(&u64::to_le_bytes(offset));
            s.extend_from_slice(&u64::to_le_bytes(len));
            s.push(b'e');
            let e = refused(&s);
            assert!(matches!(e, DiffError::PastEnd { at: 21, .. }), "{e}");
        }
    }

    #[test]
    fn names_that_are_not_snapshot_names_are_refused_before_they_are_read() {
        let name_record = |tag: u8, len: u32, name: &[u8]| {
            let mut s = b"rbd diff v1\n".to_vec();
            s.push(tag);
            s.extend_from_slice(&len.to_le_bytes());
            s.extend_from_slice(name);
            s
        };
        // A length of 4 GiB is refused without reading (or allocating) the name.
        let e = refused(&name_record(b't', u32::MAX, b"x"));
        assert!(e.to_string().contains("length is 4294967295"), "{e}");
        assert!(matches!(
            refused(&name_record(b'f', 0, b"")),
            DiffError::BadName { .. }
        ));
        let e = refused(&name_record(b't', 3, b"a/b"));
        assert!(e.to_string().contains("to-snapshot name"), "{e}");
        assert!(matches!(
            refused(&name_record(b'f', 2, b"\xff\xfe")),
            DiffError::BadName { .. }
        ));
        assert!(matches!(
            refused(&name_record(b'f', 2, b"..")),
            DiffError::BadName { .. }
        ));
    }

    #[test]
    fn the_writer_refuses_a_record_past_the_size() {
        let mut w = Writer::new(Vec::new(), &header(None, None, 4096)).unwrap();
        assert!(w.zero(4095, 2).is_err());
        assert!(w.data(4096, &[1]).is_err());
        assert!(w.zero(0, 4096).is_ok());
    }

    #[test]
    fn empty_records_are_skipped_and_bytes_after_the_end_are_not_read() {
        let mut w = Writer::new(Vec::new(), &header(None, None, 4096)).unwrap();
        w.zero(0, 0).unwrap();
        w.data(4096, &[]).unwrap();
        let mut s = w.end().unwrap();
        s.extend_from_slice(b"trailing");
        let (_, events) = parse_all(&s, 64).unwrap();
        assert!(events.is_empty());
    }

    /// The fuzz seeds (and any finding copied next to them) replayed on every test run.
    #[test]
    fn rbd_diff_fuzz_seeds_replay_without_panicking() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/rbd_diff");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            fuzz_parse(&std::fs::read(&path).expect("seed"));
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
        fuzz_parse(&sample());
    }
}
