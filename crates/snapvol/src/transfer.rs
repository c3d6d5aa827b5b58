//! Streaming whole images in and out: piece iteration, zero detection and a sink that writes
//! regular files sparse.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

/// Size of the pieces import and export move at a time (one reused buffer).
pub const PIECE: usize = 4 << 20;

/// The pieces `(offset, length)` covering `[0, total)`, each at most `piece` bytes.
pub fn pieces(total: u64, piece: usize) -> impl Iterator<Item = (u64, usize)> {
    let piece = piece.max(1) as u64;
    let mut offset = 0u64;
    std::iter::from_fn(move || {
        if offset >= total {
            return None;
        }
        let len = piece.min(total - offset);
        let item = (offset, len as usize);
        offset += len;
        Some(item)
    })
}

/// Whether every byte of `buf` is zero.
pub fn is_all_zero(buf: &[u8]) -> bool {
    // OR-ing fixed-size blocks vectorizes well; a byte-wise `all` exits early but does not.
    let mut blocks = buf.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Where an export goes.
#[derive(Debug)]
pub enum Sink<W: Write> {
    /// A regular file, written sparse: all-zero pieces become holes.
    Sparse {
        /// The file, truncated to zero when opened.
        file: File,
        /// The file position (where the next write lands without a seek).
        position: u64,
    },
    /// Anything else (a pipe, standard output, a block device): every byte is written in order.
    Stream(W),
}

impl<W: Write> Sink<W> {
    /// Writes `data` at `offset`. Offsets must increase piece by piece without gaps.
    pub fn write_piece(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Sparse { file, position } => {
                if is_all_zero(data) {
                    return Ok(());
                }
                if *position != offset {
                    file.seek(SeekFrom::Start(offset))?;
                }
                file.write_all(data)?;
                *position = offset + data.len() as u64;
                Ok(())
            }
            Sink::Stream(w) => w.write_all(data),
        }
    }

    /// Finishes an image of `size` bytes: sets a sparse file's length (covering trailing holes)
    /// and makes the data durable where that means something.
    pub fn finish(self, size: u64) -> io::Result<()> {
        match self {
            Sink::Sparse { file, .. } => {
                file.set_len(size)?;
                file.sync_all()
            }
            Sink::Stream(mut w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pieces_cover_the_range_exactly_once() {
        let p: Vec<_> = pieces(10, 4).collect();
        assert_eq!(p, vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(pieces(0, 4).count(), 0);
        assert_eq!(pieces(8, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 4)]);
        let total: usize = pieces(100 << 20, PIECE).map(|(_, n)| n).sum();
        assert_eq!(total, 100 << 20);
    }

    #[test]
    fn zero_detection_sees_a_single_set_byte_anywhere() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&[0; 1000]));
        for len in [1usize, 63, 64, 65, 200] {
            for i in 0..len {
                let mut b = vec![0u8; len];
                b[i] = 0x80;
                assert!(!is_all_zero(&b), "len {len} index {i}");
            }
        }
    }

    #[test]
    fn a_sparse_sink_writes_data_at_its_offsets_and_the_full_length() {
        let mut f = tempfile::tempfile().expect("temp file");
        {
            let file = f.try_clone().expect("clone");
            let mut sink: Sink<io::Sink> = Sink::Sparse { file, position: 0 };
            sink.write_piece(0, &[0; 4]).expect("write");
            sink.write_piece(4, &[1, 2, 3, 4]).expect("write");
            sink.write_piece(8, &[5; 4]).expect("write");
            sink.write_piece(12, &[0; 4]).expect("write");
            sink.finish(20).expect("finish");
        }
        let mut out = Vec::new();
        f.rewind().expect("rewind");
        f.read_to_end(&mut out).expect("read");
        let mut want = vec![0u8; 20];
        want[4..8].copy_from_slice(&[1, 2, 3, 4]);
        want[8..12].copy_from_slice(&[5; 4]);
        assert_eq!(out, want);
    }

    #[test]
    fn a_stream_sink_writes_every_byte_in_order() {
        let mut sink = Sink::Stream(Vec::new());
        sink.write_piece(0, &[0; 3]).expect("write");
        sink.write_piece(3, &[7; 2]).expect("write");
        match sink {
            Sink::Stream(v) => assert_eq!(v, vec![0, 0, 0, 7, 7]),
            Sink::Sparse { .. } => unreachable!(),
        }
    }
}
