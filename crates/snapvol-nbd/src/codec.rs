//! Pieces shared by the frame modules: the "whole frame or incomplete" result, and a
//! bounds-checked big-endian reader that cannot panic.

/// What a frame parser found at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole frame: its value and how many bytes of the buffer it used.
    Frame(T, usize),
    /// The buffer holds only the start of a frame: at least `needed` bytes (counted from the
    /// start of the buffer) are required before the parser can decide.
    Incomplete {
        /// Total bytes needed from the start of the buffer.
        needed: usize,
    },
}

impl<T> Decoded<T> {
    /// The value, if a whole frame was decoded.
    pub fn frame(self) -> Option<T> {
        match self {
            Decoded::Frame(v, _) => Some(v),
            Decoded::Incomplete { .. } => None,
        }
    }
}

/// A reader over a byte slice whose every accessor returns `None` instead of panicking when
/// the slice is too short.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_returns_none_instead_of_reading_past_the_end() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16(), Some(0x0102));
        assert_eq!(c.u16(), None);
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.bytes(usize::MAX), None);
        assert_eq!(c.rest(), &[3]);
        assert_eq!(c.u32(), None);
        assert_eq!(c.u64(), None);
    }

    #[test]
    fn decoded_frame_gives_the_value_only_when_complete() {
        assert_eq!(Decoded::Frame(5, 1).frame(), Some(5));
        assert_eq!(Decoded::<u8>::Incomplete { needed: 3 }.frame(), None);
    }
}
