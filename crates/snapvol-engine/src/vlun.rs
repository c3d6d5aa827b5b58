//! The one narrow door to the disk: positional I/O on a VLUN.
//!
//! Every byte the engine reads or writes goes through [`Vlun`]. The file implementation works
//! on regular files and block devices alike; the in-memory one backs tests and benchmarks;
//! fault-injecting wrappers (crash images, I/O errors, corruption) implement the same trait.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use parking_lot::RwLock;
use rustix::fs::{FallocateFlags, FlockOperation, SeekFrom};

/// Positional, synchronous I/O on a virtual LUN.
///
/// Contract shared by every implementation:
/// - `read_at` fills the whole buffer or fails; bytes past the current length read as zero
///   (a sparse or growing file), never as an error.
/// - `write_at` writes the whole buffer or fails; writing past the end of a growable VLUN
///   extends it. A write is *not* durable until a later `sync` returns `Ok`.
/// - `sync` makes every write that returned before it durable. After a failed `sync` the
///   caller must assume nothing about which unsynced writes reached the media.
/// - Implementations are `Send + Sync`; concurrent calls on disjoint ranges are allowed.
#[allow(clippy::len_without_is_empty)] // a VLUN is never "empty" in a useful sense
pub trait Vlun: Send + Sync + std::fmt::Debug {
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes all completed writes durable.
    fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the VLUN can grow past its current length (a regular file can; a block device
    /// cannot).
    fn growable(&self) -> bool;
    /// Sets the length (regular files only).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Tells the VLUN that `[offset, offset + len)` now reads as zero and its space may be
    /// released. The default writes zeroes.
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zeros(self, offset, len)
    }
    /// Bytes of free space the VLUN could still grow by, if it is growable and that is known.
    fn growth_room(&self) -> Option<u64> {
        None
    }
    /// Makes sure that later writes to `[offset, offset + len)` cannot fail for lack of space
    /// (on a file: its blocks are allocated, its length unchanged), or fails with `ENOSPC`,
    /// changing nothing that matters. A VLUN whose space is always there (a block device,
    /// memory) does nothing.
    fn reserve_space(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Gives the space of `[offset, offset + len)` back to whatever holds the VLUN (a hole in
    /// a file, a discard on a device); the range's content is undefined afterwards, and a
    /// later write there may need [`Vlun::reserve_space`] again. Best effort: a VLUN that
    /// cannot release space does nothing.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Where the first byte at or after `offset` that may hold data is (`None`: nothing but
    /// holes from there to the end). A VLUN that cannot tell answers `Ok(Some(offset))`:
    /// everything may be data.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }
    /// Where the hole that follows `offset` starts (the end of the VLUN at the latest). A VLUN
    /// that cannot tell answers its length.
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        let _ = offset;
        self.len()
    }
    /// A hint that `[offset, offset + len)`, written and not yet synced, may go to the media
    /// now: on a file, writeback starts and nothing waits for it, so that a later `sync` has
    /// less left to do and the device works while the caller goes on. Durability does not
    /// change: only [`Vlun::sync`] makes writes durable. The default does nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Reads every `(offset, buffer)` of `reqs` as [`Vlun::read_at`] would, in any order or
    /// all at once: a VLUN whose every request is a network round trip (RBD) keeps them in
    /// flight together. Fails if any read fails; the buffers' contents are then unspecified.
    /// The default reads them one after another.
    fn read_many(&self, reqs: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        reqs.iter_mut()
            .try_for_each(|(offset, buf)| self.read_at(buf, *offset))
    }
    /// Writes every `(offset, bytes)` of `reqs`, whose ranges do not overlap, as
    /// [`Vlun::write_at`] would, in any order or all at once. On failure any subset of them
    /// may have been written, as with writes not yet synced. The default writes them one
    /// after another.
    fn write_many(&self, reqs: &[(u64, &[u8])]) -> io::Result<()> {
        reqs.iter()
            .try_for_each(|&(offset, buf)| self.write_at(buf, offset))
    }
    /// [`Vlun::write_many`] of data that is written once and rarely read again (preserved
    /// copies): a file VLUN writes it past the page cache (`O_DIRECT`) where the buffers and
    /// offsets are aligned to [`DIRECT_ALIGN`], so that cold data neither takes memory from
    /// hot data nor costs the allocation of fresh page-cache pages, and a later `sync` has
    /// only the file's metadata left to write. Durability is as for `write_many`: only a
    /// later [`Vlun::sync`] makes the writes durable. The default is `write_many`.
    fn write_cold(&self, reqs: &[(u64, &[u8])]) -> io::Result<()> {
        self.write_many(reqs)
    }
}

/// The alignment of buffer, offset and length at which [`Vlun::write_cold`] on a file can skip
/// the page cache: a page, a multiple of every logical block size in use.
pub const DIRECT_ALIGN: usize = 4096;

/// A byte buffer whose start is aligned to [`DIRECT_ALIGN`], for [`Vlun::write_cold`]. Its
/// contents are unspecified after [`AlignedBuf::ensure`] grows it.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Makes the buffer at least `len` bytes long (contents unspecified).
    pub fn ensure(&mut self, len: usize) {
        if len > self.len {
            self.raw = vec![0; len + DIRECT_ALIGN];
            self.start = self.raw.as_ptr().align_offset(DIRECT_ALIGN);
            self.len = len;
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Writes `len` zero bytes at `offset`, a MiB at a time.
fn write_zeros<V: Vlun + ?Sized>(v: &V, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut pos = offset;
    while pos < offset + len {
        let n = (offset + len - pos).min(zeros.len() as u64) as usize;
        v.write_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// A VLUN backed by a regular file or a block device.
#[derive(Debug)]
pub struct FileVlun {
    file: File,
    block_device: bool,
    /// The same file opened `O_DIRECT`, for [`Vlun::write_cold`]; `None` where the file
    /// system does not take it (tmpfs) or the VLUN is read-only.
    direct: Option<File>,
}

impl FileVlun {
    /// Opens an existing file or block device for reading and writing.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::with_direct(file, path)
    }

    /// Opens an existing file or block device for reading only: writes fail.
    pub fn open_read_only(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).open(path)?;
        let block_device = file.metadata()?.file_type().is_block_device();
        Ok(Self {
            file,
            block_device,
            direct: None,
        })
    }

    /// A read-write VLUN of `file` (at `path`), with its `O_DIRECT` descriptor where the file
    /// system has one to give.
    fn with_direct(file: File, path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let block_device = file.metadata()?.file_type().is_block_device();
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(Self {
            file,
            block_device,
            direct,
        })
    }

    /// Creates (or opens, for a block device) `path` and gives a regular file the length `len`
    /// (sparse).
    pub fn create(path: &Path, len: u64) -> io::Result<Self> {
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.file_type().is_block_device() {
                return Self::open(path);
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(len)?;
        Self::with_direct(file, path)
    }
}

impl Vlun for FileVlun {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write_cold(&self, reqs: &[(u64, &[u8])]) -> io::Result<()> {
        let aligned = |&(offset, buf): &(u64, &[u8])| {
            offset % DIRECT_ALIGN as u64 == 0
                && buf.len() % DIRECT_ALIGN == 0
                && buf.as_ptr().align_offset(DIRECT_ALIGN) == 0
        };
        match &self.direct {
            Some(direct) if reqs.iter().all(aligned) => {
                for &(offset, buf) in reqs {
                    match direct.write_all_at(buf, offset) {
                        Ok(()) => {}
                        // A file system that opened the file O_DIRECT but refuses this write
                        // that way: the page cache takes it.
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            self.write_at(buf, offset)?
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            _ => self.write_many(reqs),
        }
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        sync_file_range_write(self.file.as_raw_fd(), offset, len)
    }

    fn len(&self) -> io::Result<u64> {
        if self.block_device {
            // A block device's metadata length is 0; its size is where SEEK_END lands.
            use std::io::Seek;
            let mut f = &self.file;
            return f.seek(io::SeekFrom::End(0));
        }
        Ok(self.file.metadata()?.len())
    }

    fn growable(&self) -> bool {
        !self.block_device
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.block_device {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a block device cannot be resized",
            ));
        }
        self.file.set_len(len)
    }

    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.block_device && fallocate_punch(&self.file, offset, len).is_ok() {
            return Ok(());
        }
        // Block devices and file systems without hole punching: write the zeroes.
        write_zeros(self, offset, len)
    }

    fn growth_room(&self) -> Option<u64> {
        if self.block_device {
            return Some(0);
        }
        statvfs_free(&self.file).ok()
    }

    fn reserve_space(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.block_device || len == 0 {
            return Ok(());
        }
        match fallocate(&self.file, FallocateFlags::KEEP_SIZE, offset, len) {
            // A file system that cannot preallocate: writes find out for themselves.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.block_device {
            return blkdiscard(self.file.as_raw_fd(), offset, len);
        }
        match fallocate_punch(&self.file, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(at) => Ok(Some(at)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            // File systems without SEEK_DATA: everything may be data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(offset)),
            Err(e) => Err(e),
        }
    }

    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        match seek(&self.file, SeekFrom::Hole(offset)) {
            Ok(at) => Ok(at),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.len(),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(offset),
            Err(e) => Err(e),
        }
    }
}

// The system calls below answer `io::Error::from(errno)`, which carries the same raw OS
// error as `last_os_error` would: callers tell ENOSPC, EDQUOT, EOPNOTSUPP, ENXIO and EINVAL
// apart by `raw_os_error`.

/// `lseek(2)` with SEEK_DATA or SEEK_HOLE. The file position it moves is never used: all I/O
/// here is positional.
fn seek(file: &File, pos: SeekFrom) -> io::Result<u64> {
    rustix::fs::seek(file, pos).map_err(io::Error::from)
}

fn fallocate_punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
}

fn fallocate(file: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(file, mode, offset, len).map_err(io::Error::from)
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: starts writeback of the range's
/// dirty pages without waiting for it. rustix has no wrapper, so it is a libc call.
#[allow(unsafe_code)]
fn sync_file_range_write(fd: i32, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: plain integers in, no memory shared with the kernel; `fd` is owned by a live
    // `File` for the duration of the call.
    let r = unsafe { libc::sync_file_range(fd, offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `BLKDISCARD` on a block device: tells the device the range is unused. Devices that cannot
/// discard say so, and that is fine. rustix has no safe call for this ioctl (its generic
/// `ioctl` is `unsafe` too), so it stays a libc call.
#[allow(unsafe_code)]
fn blkdiscard(fd: i32, offset: u64, len: u64) -> io::Result<()> {
    /// `_IO(0x12, 119)` from `<linux/fs.h>`.
    const BLKDISCARD: libc::c_ulong = 0x1277;
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 (start, length) from the pointer, which points at a
    // live array of two u64 for the duration of the call; `fd` is owned by a live `File`.
    let r = unsafe { libc::ioctl(fd, BLKDISCARD as _, range.as_ptr()) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

/// Bytes free for an unprivileged user on the file system holding `file`.
fn statvfs_free(file: &File) -> io::Result<u64> {
    let st = rustix::fs::fstatvfs(file).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Takes a non-blocking exclusive `flock(2)` on `file`; `Ok(false)` if another holder has it.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    try_flock(file, FlockOperation::NonBlockingLockExclusive)
}

/// Takes a non-blocking shared `flock(2)` on `file` (readers share it; a writer's exclusive
/// lock excludes it); `Ok(false)` if a writer has it. Works on a file opened read-only.
pub(crate) fn try_lock_shared(file: &File) -> io::Result<bool> {
    try_flock(file, FlockOperation::NonBlockingLockShared)
}

fn try_flock(file: &File, how: FlockOperation) -> io::Result<bool> {
    match rustix::fs::flock(file, how) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// A VLUN in RAM. Every write is immediately "durable"; `sync` does nothing.
#[derive(Debug, Default)]
pub struct MemVlun {
    data: RwLock<Vec<u8>>,
    fixed: Option<u64>,
}

impl MemVlun {
    /// A growable in-memory VLUN of initial length `len`.
    pub fn new(len: u64) -> Self {
        Self {
            data: RwLock::new(vec![0; len as usize]),
            fixed: None,
        }
    }

    /// An in-memory VLUN that cannot grow past `len`, like a block device.
    pub fn fixed(len: u64) -> Self {
        Self {
            data: RwLock::new(vec![0; len as usize]),
            fixed: Some(len),
        }
    }

    /// A growable in-memory VLUN holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            data: RwLock::new(bytes),
            fixed: None,
        }
    }

    /// A copy of the whole content.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

impl Vlun for MemVlun {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read();
        let start = (offset as usize).min(data.len());
        let end = (offset as usize + buf.len()).min(data.len());
        buf[..end - start].copy_from_slice(&data[start..end]);
        buf[end - start..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write();
        let end = offset as usize + buf.len();
        if end > data.len() {
            if self.fixed.is_some() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().len() as u64)
    }

    fn growable(&self) -> bool {
        self.fixed.is_none()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.fixed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "fixed-size VLUN",
            ));
        }
        self.data.write().resize(len as usize, 0);
        Ok(())
    }
}

/// A shared handle is a VLUN too, so tests can keep a VLUN across close and reopen.
impl<T: Vlun + ?Sized> Vlun for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).start_writeback(offset, len)
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn growable(&self) -> bool {
        (**self).growable()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).punch_zero(offset, len)
    }
    fn growth_room(&self) -> Option<u64> {
        (**self).growth_room()
    }
    fn reserve_space(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).reserve_space(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).discard(offset, len)
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        (**self).next_data(offset)
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        (**self).next_hole(offset)
    }
    fn read_many(&self, reqs: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        (**self).read_many(reqs)
    }
    fn write_many(&self, reqs: &[(u64, &[u8])]) -> io::Result<()> {
        (**self).write_many(reqs)
    }
    fn write_cold(&self, reqs: &[(u64, &[u8])]) -> io::Result<()> {
        (**self).write_cold(reqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Preserved copies go through `write_cold`: aligned requests past the page cache (where
    /// the file system takes O_DIRECT), unaligned ones through it. Either way a read, also
    /// one of pages that were cached before the write, returns what was written last, and so
    /// does the file after a sync and a reopen.
    #[test]
    fn cold_writes_read_back_whether_or_not_they_skip_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let v = FileVlun::create(&path, 0).unwrap();
        // Pages of the first range are in the page cache, dirty, before the cold write.
        v.write_at(&[7u8; 3 * DIRECT_ALIGN], 0).unwrap();
        let mut cold = AlignedBuf::default();
        cold.ensure(4 * DIRECT_ALIGN);
        assert_eq!(cold.as_ptr().align_offset(DIRECT_ALIGN), 0, "aligned");
        for (i, b) in cold.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let far = 1 << 20; // past the end: the write extends the file
        v.write_cold(&[
            (DIRECT_ALIGN as u64, &cold[..DIRECT_ALIGN]),
            (far, &cold[..]),
        ])
        .unwrap();
        // Unaligned (offset, length, buffer): through the page cache.
        v.write_cold(&[(far + 5, &cold[1..100])]).unwrap();
        let mut want = vec![7u8; 3 * DIRECT_ALIGN];
        want[DIRECT_ALIGN..2 * DIRECT_ALIGN].copy_from_slice(&cold[..DIRECT_ALIGN]);
        let mut want_far = cold.to_vec();
        want_far[5..104].copy_from_slice(&cold[1..100]);
        let check = |v: &FileVlun, when: &str| {
            let mut got = vec![0u8; 3 * DIRECT_ALIGN];
            v.read_at(&mut got, 0).unwrap();
            assert!(got == want, "the overwritten cached range {when}");
            let mut got = vec![0u8; 4 * DIRECT_ALIGN];
            v.read_at(&mut got, far).unwrap();
            assert!(got == want_far, "the extending range {when}");
            assert_eq!(v.len().unwrap(), far + 4 * DIRECT_ALIGN as u64, "{when}");
        };
        check(&v, "right after the writes");
        v.sync().unwrap();
        drop(v);
        check(&FileVlun::open(&path).unwrap(), "after a reopen");
        eprintln!(
            "O_DIRECT on this file system: {}",
            FileVlun::open(&path).unwrap().direct.is_some()
        );
    }

    fn exercise(v: &dyn Vlun) {
        v.write_at(b"hello", 10).unwrap();
        let mut buf = [1u8; 8];
        v.read_at(&mut buf, 8).unwrap();
        assert_eq!(&buf, b"\0\0hello\0");
        let mut past = [1u8; 4];
        v.read_at(&mut past, 1 << 20).unwrap();
        assert_eq!(past, [0; 4], "reads past the end see zeroes");
        v.sync().unwrap();
    }

    #[test]
    fn file_and_memory_vluns_honour_the_same_contract() {
        exercise(&MemVlun::new(16));
        let dir = tempfile::tempdir().unwrap();
        let f = FileVlun::create(&dir.path().join("v"), 16).unwrap();
        exercise(&f);
        f.punch_zero(10, 5).unwrap();
        let mut buf = [1u8; 5];
        f.read_at(&mut buf, 10).unwrap();
        assert_eq!(buf, [0; 5]);
    }

    /// The file VLUN's system calls go through rustix; their answers, and the raw OS errors
    /// that callers match on, must be what they were with libc.
    #[test]
    fn file_vlun_system_calls_answer_as_the_engine_expects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let f = FileVlun::create(&path, 1 << 20).unwrap();
        f.write_at(&[7; 4096], 0).unwrap();
        assert_eq!(f.next_data(0).unwrap(), Some(0));
        assert!(f.next_hole(0).unwrap() >= 4096);
        // At the end of the file SEEK_DATA fails with ENXIO, which means "no more data".
        assert_eq!(f.next_data(1 << 20).unwrap(), None);
        f.reserve_space(1 << 20, 1 << 16).unwrap();
        assert_eq!(
            f.len().unwrap(),
            1 << 20,
            "KEEP_SIZE leaves the length alone"
        );
        f.discard(0, 4096).unwrap();
        assert!(f.growth_room().is_some_and(|n| n > 0));

        let other = File::open(&path).unwrap();
        assert!(try_lock_exclusive(&f.file).unwrap());
        assert!(
            !try_lock_exclusive(&other).unwrap(),
            "EWOULDBLOCK is a refusal"
        );
        assert!(!try_lock_shared(&other).unwrap());
    }
}
