//! The bytes of a whole image sent over the control socket (`snapvol export` of a volume that
//! `snapvol serve` holds; an incremental export's stream travels the same way, through
//! [`FrameWriter`] and [`FrameReader`]): after the answer line, a sequence of frames, each a
//! one-byte tag and a little-endian u64:
//!
//! ```text
//! 'd' len   then len bytes of the image (1 ..= MAX_DATA)
//! 'z' len   len bytes that read as zero (1 ..= u64::MAX), nothing follows
//! 'e' 0     the image is complete
//! 'x' len   then len bytes (1 ..= MAX_ERROR) of a JSON error answer: the export failed here
//! ```
//!
//! Bytes only: no socket, no volume. The reader refuses anything else (an unknown tag, a
//! length out of range) instead of trusting it.

use std::io::{self, Read, Write};

/// Largest data frame (the piece size export moves at a time).
pub const MAX_DATA: u64 = crate::transfer::PIECE as u64;
/// Largest error frame.
pub const MAX_ERROR: u64 = 64 << 10;

/// One frame, as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// This many bytes of data, now in the caller's buffer.
    Data(usize),
    /// This many zero bytes.
    Zero(u64),
    /// The image is complete.
    End,
    /// The export failed; the server's error answer (JSON).
    Error(Vec<u8>),
}

/// Writes a data frame; zero-filled data goes as a zero frame.
pub fn write_data(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if crate::transfer::is_all_zero(data) {
        return write_header(out, b'z', data.len() as u64);
    }
    write_header(out, b'd', data.len() as u64)?;
    out.write_all(data)
}

/// Writes the end frame.
pub fn write_end(out: &mut impl Write) -> io::Result<()> {
    write_header(out, b'e', 0)
}

/// Writes an error frame holding `answer` (cut to [`MAX_ERROR`] bytes).
pub fn write_error(out: &mut impl Write, answer: &[u8]) -> io::Result<()> {
    let answer = &answer[..answer.len().min(MAX_ERROR as usize)];
    write_header(out, b'x', answer.len() as u64)?;
    out.write_all(answer)
}

fn write_header(out: &mut impl Write, tag: u8, len: u64) -> io::Result<()> {
    let mut h = [0u8; 9];
    h[0] = tag;
    h[1..].copy_from_slice(&len.to_le_bytes());
    out.write_all(&h)
}

/// Reads one frame; a data frame's bytes go to the start of `buf` (at least [`MAX_DATA`]
/// long).
pub fn read_frame(input: &mut impl Read, buf: &mut [u8]) -> io::Result<Frame> {
    let mut h = [0u8; 9];
    input.read_exact(&mut h)?;
    let len = u64::from_le_bytes(h[1..].try_into().expect("8 bytes"));
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    match h[0] {
        b'd' if (1..=MAX_DATA).contains(&len) && len <= buf.len() as u64 => {
            let n = len as usize;
            input.read_exact(&mut buf[..n])?;
            Ok(Frame::Data(n))
        }
        b'z' if len > 0 => Ok(Frame::Zero(len)),
        b'e' if len == 0 => Ok(Frame::End),
        b'x' if (1..=MAX_ERROR).contains(&len) => {
            let mut answer = vec![0u8; len as usize];
            input.read_exact(&mut answer)?;
            Ok(Frame::Error(answer))
        }
        b'd' | b'z' | b'e' | b'x' => Err(bad("an image stream frame has an impossible length")),
        _ => Err(bad("not an image stream frame")),
    }
}

/// Bytes sent as frames: what is written goes out in data frames of at most [`MAX_DATA`]
/// bytes (an incremental export's stream through the control socket).
#[derive(Debug)]
pub struct FrameWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    /// Frames into `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(MAX_DATA as usize),
        }
    }

    /// Sends what is buffered, then the end frame.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        write_end(&mut self.out)?;
        self.out.flush()
    }

    /// The output, for an error frame after a failure (what is buffered is dropped).
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == MAX_DATA as usize {
            self.flush()?;
        }
        let n = data.len().min(MAX_DATA as usize - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            write_data(&mut self.out, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// The bytes that frames carry, read back: data and zero frames in order, the end frame as the
/// end of the input. An error frame fails the read; its answer is kept in
/// [`FrameReader::failure`].
#[derive(Debug)]
pub struct FrameReader<R: Read> {
    input: R,
    buf: Vec<u8>,
    /// The unread part of `buf`.
    start: usize,
    end: usize,
    /// Zero bytes still to give from a zero frame.
    zeroes: u64,
    done: bool,
    /// The server's error answer (JSON), once an error frame came.
    pub failure: Option<Vec<u8>>,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `input`.
    pub fn new(input: R) -> Self {
        Self {
            input,
            buf: vec![0u8; MAX_DATA as usize],
            start: 0,
            end: 0,
            zeroes: 0,
            done: false,
            failure: None,
        }
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.start < self.end {
                let n = out.len().min(self.end - self.start);
                out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                return Ok(n);
            }
            if self.zeroes > 0 {
                let n = out
                    .len()
                    .min(usize::try_from(self.zeroes).unwrap_or(usize::MAX));
                out[..n].fill(0);
                self.zeroes -= n as u64;
                return Ok(n);
            }
            if self.done || out.is_empty() {
                return Ok(0);
            }
            match read_frame(&mut self.input, &mut self.buf)? {
                Frame::Data(n) => (self.start, self.end) = (0, n),
                Frame::Zero(n) => self.zeroes = n,
                Frame::End => self.done = true,
                Frame::Error(answer) => {
                    self.failure = Some(answer);
                    return Err(io::Error::other("the server's stream ended with an error"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written_and_zero_data_travels_as_its_length() {
        let mut wire = Vec::new();
        write_data(&mut wire, &[1, 2, 3]).unwrap();
        write_data(&mut wire, &[0; 4096]).unwrap();
        write_error(&mut wire, br#"{"status":"error"}"#).unwrap();
        write_end(&mut wire).unwrap();
        assert_eq!(
            wire.len(),
            9 + 3 + 9 + 9 + 18 + 9,
            "zeros cost a header only"
        );
        let mut input = &wire[..];
        let mut buf = vec![0u8; MAX_DATA as usize];
        assert_eq!(read_frame(&mut input, &mut buf).unwrap(), Frame::Data(3));
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert_eq!(read_frame(&mut input, &mut buf).unwrap(), Frame::Zero(4096));
        assert_eq!(
            read_frame(&mut input, &mut buf).unwrap(),
            Frame::Error(br#"{"status":"error"}"#.to_vec())
        );
        assert_eq!(read_frame(&mut input, &mut buf).unwrap(), Frame::End);
        assert!(
            read_frame(&mut input, &mut buf).is_err(),
            "nothing after the end"
        );
    }

    #[test]
    fn bytes_written_as_frames_read_back_whole_zeroes_included() {
        let mut bytes = vec![9u8; 10];
        bytes.extend_from_slice(&[0; MAX_DATA as usize]);
        bytes.extend_from_slice(&[3; 5]);
        let mut wire = Vec::new();
        let mut w = FrameWriter::new(&mut wire);
        w.write_all(&bytes).unwrap();
        w.flush().unwrap();
        w.write_all(b"tail").unwrap();
        w.finish().unwrap();
        let mut out = Vec::new();
        FrameReader::new(&wire[..]).read_to_end(&mut out).unwrap();
        bytes.extend_from_slice(b"tail");
        assert_eq!(out, bytes);
        // Cut before the end frame: an error, not a short read.
        let mut short = Vec::new();
        let cut = FrameReader::new(&wire[..wire.len() - 9]).read_to_end(&mut short);
        assert!(cut.is_err());
        // An error frame fails the read and keeps the answer.
        let mut wire = Vec::new();
        write_data(&mut wire, &[1, 2]).unwrap();
        write_error(&mut wire, b"{}").unwrap();
        let mut r = FrameReader::new(&wire[..]);
        let mut got = Vec::new();
        assert!(r.read_to_end(&mut got).is_err());
        assert_eq!(r.failure.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn impossible_frames_are_refused_not_trusted() {
        let mut buf = vec![0u8; MAX_DATA as usize];
        let frame = |tag: u8, len: u64| {
            let mut h = vec![tag];
            h.extend_from_slice(&len.to_le_bytes());
            h.resize(h.len() + 16, 7);
            h
        };
        for (tag, len) in [
            (b'd', 0),
            (b'd', MAX_DATA + 1),
            (b'd', u64::MAX),
            (b'z', 0),
            (b'e', 1),
            (b'x', 0),
            (b'x', MAX_ERROR + 1),
            (b'q', 1),
        ] {
            let wire = frame(tag, len);
            let got = read_frame(&mut &wire[..], &mut buf);
            assert!(
                got.as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::InvalidData),
                "{} {len}: {got:?}",
                tag as char
            );
        }
        // Cut short: an error, not a short frame.
        let mut wire = Vec::new();
        write_data(&mut wire, &[5; 100]).unwrap();
        assert!(read_frame(&mut &wire[..50], &mut buf).is_err());
    }
}
