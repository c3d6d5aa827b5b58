//! RBD: images of a pool, and an open image as a VLUN.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void, CStr};
use std::io;
use std::ptr;

use parking_lot::Mutex;
use snapvol_engine::vlun::Vlun;

use crate::error::{Error, Result};
use crate::ffi::{self, check, check_size, RbdCompletionT, RbdImageT};
use crate::rados::{cstring, IoCtx};

/// `log2` of the object size of images made here: 4 MiB objects, RBD's default.
pub const OBJECT_ORDER: u32 = 22;

/// The most one librbd call is given: librbd refuses a single request past `INT_MAX` bytes.
const MAX_REQUEST: usize = 1 << 30;

/// Requests one batch keeps in flight at once: a destage batch's 64 KiB copies (up to 512)
/// go out 64 at a time, well within librbd's own throttle (`objecter_inflight_ops`, 1024).
const MAX_IN_FLIGHT: usize = 64;

/// One librbd request of a batch, on a buffer its caller keeps borrowed for the whole batch.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Read `len` bytes at `offset` into `buf`.
    Read {
        offset: u64,
        buf: *mut u8,
        len: usize,
    },
    /// Write `len` bytes at `offset` from `buf`.
    Write {
        offset: u64,
        buf: *const u8,
        len: usize,
    },
}

/// `[offset, offset + len)` cut into librbd requests: `(offset, start in the buffer, len)`.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    (0..len)
        .step_by(MAX_REQUEST)
        .map(move |from| (offset + from as u64, from, (len - from).min(MAX_REQUEST)))
}

impl IoCtx {
    /// Creates image `name` of `size` bytes in this pool: format 2, 4 MiB objects, and no
    /// feature but layering (so no exclusive-lock: who writes is decided by the caller's
    /// RADOS locks). Fails with `EEXIST` if it exists.
    pub fn create_image(&self, name: &str, size: u64) -> Result<()> {
        let c_name = cstring("image name", name)?;
        let mut order: c_int = OBJECT_ORDER as c_int;
        // SAFETY: a live pool handle, a NUL-terminated name and a valid in/out `order`.
        check(unsafe {
            (self.cluster().api().rbd.rbd_create2)(
                self.handle(),
                c_name.as_ptr(),
                size,
                ffi::RBD_FEATURE_LAYERING,
                &mut order,
            )
        })
        .map_err(|e| Error::ceph("rbd_create2", self.image_target(name), e))?;
        Ok(())
    }

    /// Removes image `name` and its data (`ENOENT` if there is none; `EBUSY` while a client
    /// has it open and watched).
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let c_name = cstring("image name", name)?;
        // SAFETY: a live pool handle and a NUL-terminated name.
        check(unsafe { (self.cluster().api().rbd.rbd_remove)(self.handle(), c_name.as_ptr()) })
            .map_err(|e| Error::ceph("rbd_remove", self.image_target(name), e))?;
        Ok(())
    }

    /// The names of the pool's images, sorted.
    pub fn list_images(&self) -> Result<Vec<String>> {
        let api = self.cluster().api();
        let mut capacity = 64usize;
        loop {
            let mut specs: Vec<ffi::RbdImageSpec> = (0..capacity)
                .map(|_| ffi::RbdImageSpec {
                    id: ptr::null_mut(),
                    name: ptr::null_mut(),
                })
                .collect();
            let mut count = capacity;
            // SAFETY: a live pool handle; `specs` has room for `count` entries.
            match check(unsafe {
                (api.rbd.rbd_list2)(self.handle(), specs.as_mut_ptr(), &mut count)
            }) {
                Ok(_) => {
                    let mut names: Vec<String> = specs[..count]
                        .iter()
                        .map(|s| {
                            // SAFETY: librbd filled `count` entries with NUL-terminated
                            // strings.
                            unsafe { CStr::from_ptr(s.name) }
                                .to_string_lossy()
                                .into_owned()
                        })
                        .collect();
                    // SAFETY: the `count` entries librbd filled, released once.
                    unsafe { (api.rbd.rbd_image_spec_list_cleanup)(specs.as_mut_ptr(), count) };
                    names.sort();
                    return Ok(names);
                }
                // Too small: `count` says how many there are; they may be more by the retry.
                Err(libc::ERANGE) => capacity = count.max(capacity) * 2,
                Err(e) => return Err(Error::ceph("rbd_list2", self.pool(), e)),
            }
        }
    }

    fn image_target(&self, name: &str) -> String {
        format!("{}/{}", self.pool(), name)
    }
}

/// How an [`RbdImage`] hands reads and writes to librbd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// `rbd_aio_read`/`rbd_aio_write`, then wait for the completion.
    #[default]
    Aio,
    /// `rbd_read`/`rbd_write`.
    Sync,
}

/// An open RBD image: a VLUN whose bytes live in a Ceph pool.
///
/// Many threads may read and write through one `RbdImage` at once: librbd's image handle is
/// thread-safe, and each call is one request of its own, so N threads keep N requests in
/// flight (librbd splits each into per-object operations that run in parallel).
///
/// Reads and writes go through librbd's aio interface ([`IoMode::Aio`]): a batch
/// ([`Vlun::read_many`], [`Vlun::write_many`], which the destager uses for a batch's originals,
/// copies and new data) is submitted at once and waited for together, so one thread keeps up to
/// [`MAX_IN_FLIGHT`] requests in flight instead of paying a round trip to the OSD for each.
/// [`IoMode::Sync`] uses the synchronous calls, one after another, instead (for measurements).
///
/// Writes are not durable before [`Vlun::sync`] (`rbd_flush`): with RBD's client cache on
/// (Ceph's default), they may sit in this process's memory until then.
#[derive(Debug)]
pub struct RbdImage {
    handle: RbdImageT,
    io: IoCtx,
    name: String,
    read_only: bool,
    mode: IoMode,
    /// Held while growing the image, so that racing writers past the end grow it once each to
    /// the length they need and never shrink it.
    growth: Mutex<()>,
}

// SAFETY: librbd image handles may be used from several threads at once for I/O, flush,
// resize and size queries; librbd serialises what it must internally. The pool handle it was
// opened through is kept alive by `io`.
unsafe impl Send for RbdImage {}
// SAFETY: as above.
unsafe impl Sync for RbdImage {}

impl Drop for RbdImage {
    fn drop(&mut self) {
        // SAFETY: opened by rbd_open(_read_only), closed once; no request is in flight as
        // every call on `self` waits for its completion. A failing close (it flushes the
        // cache) has no one to report to: callers who care call `sync` first.
        unsafe { (self.api().rbd.rbd_close)(self.handle) };
    }
}

/// One aio completion, released when dropped.
struct Completion<'a> {
    c: RbdCompletionT,
    api: &'a ffi::Api,
}

/// The completion callback: nothing to do, as the submitter waits on the completion itself.
unsafe extern "C" fn ignore_completion(_c: RbdCompletionT, _arg: *mut c_void) {}

impl<'a> Completion<'a> {
    fn new(api: &'a ffi::Api) -> io::Result<Self> {
        let mut c: RbdCompletionT = ptr::null_mut();
        // SAFETY: a valid out-pointer; the callback is a function that does nothing and
        // ignores its arguments.
        check(unsafe {
            (api.rbd.rbd_aio_create_completion)(ptr::null_mut(), ignore_completion, &mut c)
        })
        .map_err(io::Error::from_raw_os_error)?;
        Ok(Self { c, api })
    }

    /// Waits for the request and answers its return value (bytes, or a negative errno).
    fn wait(self) -> isize {
        // SAFETY: a completion that was submitted with a request; waiting is always allowed.
        unsafe { (self.api.rbd.rbd_aio_wait_for_complete)(self.c) };
        // SAFETY: the request is complete, so its return value is set.
        unsafe { (self.api.rbd.rbd_aio_get_return_value)(self.c) }
    }
}

impl Drop for Completion<'_> {
    fn drop(&mut self) {
        // SAFETY: created by rbd_aio_create_completion, released once, and either never
        // submitted or already complete (`wait` consumes the completion before this runs).
        unsafe { (self.api.rbd.rbd_aio_release)(self.c) };
    }
}

/// One allocated (or, `exists == false`, known-zero) extent that `rbd_diff_iterate2` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    offset: u64,
    len: u64,
    exists: bool,
}

/// `rbd_diff_iterate2`'s callback: appends the extent to the `Mutex<Vec<Extent>>` at `arg`.
unsafe extern "C" fn collect_extent(
    offset: u64,
    len: usize,
    exists: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `arg` is the `&Mutex<Vec<Extent>>` that `RbdImage::extents` passed, alive for
    // the whole (synchronous) iteration; the mutex makes callbacks from several librbd
    // threads safe.
    let extents = unsafe { &*(arg as *const Mutex<Vec<Extent>>) };
    extents.lock().push(Extent {
        offset,
        len: len as u64,
        exists: exists != 0,
    });
    0
}

impl RbdImage {
    /// Opens image `name` of the pool (`ENOENT` if there is none). A read-only image refuses
    /// writes with `EROFS`.
    pub fn open(io: &IoCtx, name: &str, read_only: bool) -> Result<Self> {
        let api = io.cluster().api();
        let c_name = cstring("image name", name)?;
        let mut handle: RbdImageT = ptr::null_mut();
        let (op, open) = if read_only {
            ("rbd_open_read_only", api.rbd.rbd_open_read_only)
        } else {
            ("rbd_open", api.rbd.rbd_open)
        };
        // SAFETY: a live pool handle, a NUL-terminated name, a valid out-pointer, and no
        // snapshot (NULL: the image's head).
        check(unsafe { open(io.handle(), c_name.as_ptr(), &mut handle, ptr::null()) })
            .map_err(|e| Error::ceph(op, format!("{}/{name}", io.pool()), e))?;
        Ok(Self {
            handle,
            io: io.clone(),
            name: name.to_owned(),
            read_only,
            mode: IoMode::default(),
            growth: Mutex::new(()),
        })
    }

    /// Chooses how reads and writes reach librbd (for measurements; both are correct).
    pub fn set_io_mode(&mut self, mode: IoMode) {
        self.mode = mode;
    }

    /// The image's name in its pool.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool handle the image was opened through.
    pub fn ioctx(&self) -> &IoCtx {
        &self.io
    }

    fn api(&self) -> &'static ffi::Api {
        self.io.cluster().api()
    }

    fn size(&self) -> io::Result<u64> {
        let mut size = 0u64;
        // SAFETY: an open image and a valid out-pointer.
        check(unsafe { (self.api().rbd.rbd_get_size)(self.handle, &mut size) })
            .map_err(io::Error::from_raw_os_error)?;
        Ok(size)
    }

    /// Runs `ops`, each one librbd request on a buffer the caller keeps borrowed for the whole
    /// call, and answers each one's return value (a byte count for a synchronous request, 0
    /// for a finished aio write, or a negative errno). In [`IoMode::Aio`] up to
    /// [`MAX_IN_FLIGHT`] are in flight at once; every submitted request has completed when
    /// this returns, on error too, so the buffers may be released then. A request librbd
    /// refuses to start ends the batch with its error.
    fn run(&self, ops: &[Op]) -> io::Result<Vec<isize>> {
        let api = self.api();
        let mut results = Vec::with_capacity(ops.len());
        if self.mode == IoMode::Sync {
            for op in ops {
                // SAFETY: an open image; the op's buffer is valid for `len` bytes (writable
                // for a read) while the caller's borrow lasts, which outlives this call.
                results.push(unsafe {
                    match *op {
                        Op::Read { offset, buf, len } => {
                            (api.rbd.rbd_read)(self.handle, offset, len, buf.cast())
                        }
                        Op::Write { offset, buf, len } => {
                            (api.rbd.rbd_write)(self.handle, offset, len, buf.cast())
                        }
                    }
                });
            }
            return Ok(results);
        }
        let mut pending: VecDeque<Completion> = VecDeque::with_capacity(MAX_IN_FLIGHT);
        let mut refused = None;
        for op in ops {
            if pending.len() == MAX_IN_FLIGHT {
                results.push(pending.pop_front().expect("a request in flight").wait());
            }
            let c = match Completion::new(api) {
                Ok(c) => c,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            };
            // SAFETY: an open image; the op's buffer stays valid (and writable for a read)
            // until the completion is waited for below, before this call returns.
            let r = unsafe {
                match *op {
                    Op::Read { offset, buf, len } => {
                        (api.rbd.rbd_aio_read)(self.handle, offset, len, buf.cast(), c.c)
                    }
                    Op::Write { offset, buf, len } => {
                        (api.rbd.rbd_aio_write)(self.handle, offset, len, buf.cast(), c.c)
                    }
                }
            };
            if let Err(e) = check(r) {
                // Never submitted: releasing the completion is safe.
                refused = Some(io::Error::from_raw_os_error(e));
                break;
            }
            pending.push_back(c);
        }
        results.extend(pending.into_iter().map(Completion::wait));
        match refused {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    fn refuse_if_read_only(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        Ok(())
    }

    /// Makes the image at least `end` bytes long.
    fn grow_to(&self, end: u64) -> io::Result<()> {
        if end <= self.size()? {
            return Ok(());
        }
        let _growing = self.growth.lock();
        if end > self.size()? {
            self.resize(end)?;
        }
        Ok(())
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        // SAFETY: an open image.
        check(unsafe { (self.api().rbd.rbd_resize)(self.handle, len) })
            .map_err(io::Error::from_raw_os_error)?;
        Ok(())
    }

    /// The extents `rbd_diff_iterate2` reports for `[offset, offset + len)` of the head since
    /// the image was created, sorted by offset. Without the object map (which needs the
    /// exclusive-lock feature), librbd asks the OSDs about each object of the range.
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let extents: Mutex<Vec<Extent>> = Mutex::new(Vec::new());
        // SAFETY: an open image; no start snapshot (NULL: since creation); the callback only
        // touches `extents`, which lives until this synchronous call returns.
        check(unsafe {
            (self.api().rbd.rbd_diff_iterate2)(
                self.handle,
                ptr::null(),
                offset,
                len,
                1, // include the parent's data, if the image is a clone
                0, // exact extents, not whole objects
                collect_extent,
                &extents as *const Mutex<Vec<Extent>> as *mut c_void,
            )
        })
        .map_err(io::Error::from_raw_os_error)?;
        let mut extents = extents.into_inner();
        extents.sort_by_key(|e| e.offset);
        Ok(extents)
    }

    /// Windows of growing length from `offset` to `end`, for searches that usually end
    /// near where they start.
    fn windows(offset: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
        let mut at = offset;
        let mut len = 64u64 << 20;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let w = (at, len.min(end - at));
            at += w.1;
            len = (len * 2).min(SEARCH_LIMIT);
            Some(w)
        })
    }
}

/// How far past its starting point one `next_data` or `next_hole` looks: `rbd_diff_iterate2`
/// costs about 70 µs per 4 MiB object on a single-OSD cluster (18 ms per GiB, 24 s for an
/// empty TiB), so an unbounded search would make one allocation query of a large sparse
/// volume take seconds. The engine asks about at most 1 GiB at a time.
pub const SEARCH_LIMIT: u64 = 1 << 30;

impl Vlun for RbdImage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_many(&mut [(offset, buf)])
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_many(&[(offset, buf)])
    }

    /// All in flight at once (up to [`MAX_IN_FLIGHT`] requests), each cut at
    /// [`MAX_REQUEST`]. librbd refuses reads that start past the end and shortens those that
    /// cross it; the VLUN contract wants zeroes there, as it does where the image shrank under
    /// a read.
    fn read_many(&self, reqs: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        let size = self.size()?;
        let mut ops = Vec::with_capacity(reqs.len());
        for (offset, buf) in reqs.iter_mut() {
            let within = usize::try_from(size.saturating_sub(*offset)).unwrap_or(usize::MAX);
            let (data, past) = buf.split_at_mut(within.min(buf.len()));
            past.fill(0);
            ops.extend(pieces(*offset, data.len()).map(|(at, from, len)| Op::Read {
                offset: at,
                buf: data[from..].as_mut_ptr(),
                len,
            }));
        }
        for (op, r) in ops.iter().zip(self.run(&ops)?) {
            let Op::Read { buf, len, .. } = *op else {
                unreachable!("only reads")
            };
            let got = check_size(r).map_err(io::Error::from_raw_os_error)?;
            if got < len {
                // SAFETY: `buf` points at `len` writable bytes of a caller's buffer, which
                // no request uses any more (`run` waited for all of them).
                unsafe { std::slice::from_raw_parts_mut(buf.add(got), len - got) }.fill(0);
            }
        }
        Ok(())
    }

    /// All in flight at once (up to [`MAX_IN_FLIGHT`] requests), after growing the image to
    /// the furthest end once.
    fn write_many(&self, reqs: &[(u64, &[u8])]) -> io::Result<()> {
        self.refuse_if_read_only()?;
        let Some(end) = reqs.iter().map(|&(at, b)| at + b.len() as u64).max() else {
            return Ok(());
        };
        self.grow_to(end)?;
        let ops: Vec<Op> = reqs
            .iter()
            .flat_map(|&(offset, buf)| {
                pieces(offset, buf.len()).map(move |(at, from, len)| Op::Write {
                    offset: at,
                    buf: buf[from..].as_ptr(),
                    len,
                })
            })
            .collect();
        for r in self.run(&ops)? {
            // An aio write completes with 0, a synchronous one with its length; both wrote
            // all of it, as the image was grown to hold it.
            check_size(r).map_err(io::Error::from_raw_os_error)?;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        // SAFETY: an open image.
        check(unsafe { (self.api().rbd.rbd_flush)(self.handle) })
            .map_err(io::Error::from_raw_os_error)?;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.size()
    }

    fn growable(&self) -> bool {
        true
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        let _growing = self.growth.lock();
        self.resize(len)
    }

    /// `rbd_write_zeroes`: unlike `rbd_discard`, which skips pieces smaller than
    /// `rbd_discard_granularity_bytes` (64 KiB by default) and so leaves them unchanged, it
    /// guarantees zeroes, and still frees whole objects.
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        let end = (offset + len).min(self.size()?);
        let mut at = offset;
        while at < end {
            let n = usize::try_from(end - at)
                .unwrap_or(MAX_REQUEST)
                .min(MAX_REQUEST);
            // SAFETY: an open image; no flags (zero_flags 0: thin, op_flags 0).
            let r = unsafe { (self.api().rbd.rbd_write_zeroes)(self.handle, at, n, 0, 0) };
            check_size(r).map_err(io::Error::from_raw_os_error)?;
            at += n as u64;
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        let end = (offset + len).min(self.size()?);
        if offset >= end {
            return Ok(());
        }
        // SAFETY: an open image.
        check(unsafe { (self.api().rbd.rbd_discard)(self.handle, offset, end - offset) })
            .map_err(io::Error::from_raw_os_error)?;
        Ok(())
    }

    /// The first allocated byte within [`SEARCH_LIMIT`] of `offset`. If there is none, the
    /// answer is the end of the searched range (all hole, as far as it is known: the contract
    /// allows naming a place that only *may* hold data) or, at the image's end, `None`.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        let size = self.size()?;
        let limit = offset.saturating_add(SEARCH_LIMIT).min(size);
        for (at, len) in Self::windows(offset, limit) {
            let found = self
                .extents(at, len)?
                .into_iter()
                .find(|e| e.exists && e.offset + e.len > offset);
            if let Some(e) = found {
                return Ok(Some(e.offset.max(offset)));
            }
        }
        Ok((limit < size).then_some(limit))
    }

    /// Where the allocated run at `offset` ends (`offset` itself in a hole). A run longer than
    /// [`SEARCH_LIMIT`] is answered with the image's length: everything may be data.
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        let size = self.size()?;
        let limit = offset.saturating_add(SEARCH_LIMIT).min(size);
        let mut hole = offset;
        for (at, len) in Self::windows(offset, limit) {
            for e in self.extents(at, len)?.into_iter().filter(|e| e.exists) {
                if e.offset > hole {
                    return Ok(hole);
                }
                hole = hole.max(e.offset + e.len);
            }
            if hole < at + len {
                return Ok(hole);
            }
        }
        Ok(if hole < limit { hole } else { size.max(offset) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_windows_cover_the_range_once_and_grow() {
        let w: Vec<_> = RbdImage::windows(10, 10 + (64 << 20) + (128 << 20) + 5).collect();
        assert_eq!(
            w,
            [
                (10, 64 << 20),
                (10 + (64 << 20), 128 << 20),
                (10 + (192 << 20), 5)
            ]
        );
        assert_eq!(RbdImage::windows(7, 7).count(), 0);
    }
}
