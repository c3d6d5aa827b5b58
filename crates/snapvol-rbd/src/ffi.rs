//! The C functions of `librados.so.2` and `librbd.so.1` that this crate calls, looked up at run
//! time.
//!
//! Each prototype is declared by hand from `rados/librados.h` and `rbd/librbd.h` of Ceph 16.2
//! (Pacific), the oldest release this crate supports: every symbol below exists there with this
//! signature, and later releases keep them. Both libraries are loaded once per process and
//! never unloaded (Ceph's libraries start threads and register atexit handlers, which must not
//! outlive their code), so the function pointers are valid for the life of the process.
//!
//! Conventions of both C APIs: handles are opaque pointers; functions answer 0 (or a byte or
//! item count) on success and a negative `errno` on failure.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

use crate::error::Error;

/// `rados_t`: a cluster handle.
pub(crate) type RadosT = *mut c_void;
/// `rados_ioctx_t`: a pool (I/O context) handle.
pub(crate) type RadosIoctxT = *mut c_void;
/// `rados_list_ctx_t`: an object listing in progress.
pub(crate) type RadosListCtxT = *mut c_void;
/// `rbd_image_t`: an open image.
pub(crate) type RbdImageT = *mut c_void;
/// `rbd_completion_t`: one asynchronous image request.
pub(crate) type RbdCompletionT = *mut c_void;
/// `rbd_callback_t`.
pub(crate) type RbdCallbackT = unsafe extern "C" fn(RbdCompletionT, *mut c_void);
/// The callback of `rbd_diff_iterate2`: offset, length, whether the extent exists, argument.
pub(crate) type RbdDiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `rbd_image_spec_t`, an element of what `rbd_list2` fills in.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RbdImageSpec {
    pub id: *mut c_char,
    pub name: *mut c_char,
}

/// `RBD_FEATURE_LAYERING` from `rbd/features.h`.
pub(crate) const RBD_FEATURE_LAYERING: u64 = 1;

/// The library file names (their sonames), as the dynamic loader searches for them.
pub(crate) const LIBRADOS: &str = "librados.so.2";
pub(crate) const LIBRBD: &str = "librbd.so.1";

/// Declares a table of C functions and how to look each one up in a library.
macro_rules! c_functions {
    ($table:ident { $( fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?; )* }) => {
        /// Function pointers into one loaded library.
        #[allow(non_snake_case)]
        pub(crate) struct $table {
            $( pub $name: unsafe extern "C" fn($($ty),*) $(-> $ret)?, )*
        }

        impl $table {
            /// Looks every function up in `lib`.
            ///
            /// # Safety
            /// `lib` must be the library whose header declares these prototypes, and must stay
            /// loaded for as long as the table is used.
            unsafe fn load(lib: &Library, file: &'static str) -> Result<Self, LoadFailure> {
                Ok(Self {
                    $(
                        // SAFETY: the caller vouches that the symbol has this prototype.
                        $name: *unsafe {
                            lib.get::<unsafe extern "C" fn($($ty),*) $(-> $ret)?>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                        }
                        .map_err(|e| LoadFailure::Symbol {
                            library: file,
                            symbol: stringify!($name),
                            reason: e.to_string(),
                        })?,
                    )*
                })
            }
        }

        impl std::fmt::Debug for $table {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($table)).finish_non_exhaustive()
            }
        }
    };
}

c_functions!(Rados {
    fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    fn rados_connect(cluster: RadosT) -> c_int;
    fn rados_shutdown(cluster: RadosT);
    fn rados_get_instance_id(cluster: RadosT) -> u64;
    fn rados_getaddrs(cluster: RadosT, addrs: *mut *mut c_char) -> c_int;
    fn rados_blocklist_add(cluster: RadosT, client_address: *mut c_char, expire_seconds: u32)
        -> c_int;
    fn rados_ioctx_create(cluster: RadosT, pool_name: *const c_char, ioctx: *mut RadosIoctxT)
        -> c_int;
    fn rados_ioctx_destroy(io: RadosIoctxT);
    fn rados_write_full(io: RadosIoctxT, oid: *const c_char, buf: *const c_char, len: usize)
        -> c_int;
    fn rados_read(io: RadosIoctxT, oid: *const c_char, buf: *mut c_char, len: usize, off: u64)
        -> c_int;
    fn rados_stat(io: RadosIoctxT, oid: *const c_char, psize: *mut u64, pmtime: *mut libc::time_t)
        -> c_int;
    fn rados_remove(io: RadosIoctxT, oid: *const c_char) -> c_int;
    fn rados_nobjects_list_open(io: RadosIoctxT, ctx: *mut RadosListCtxT) -> c_int;
    fn rados_nobjects_list_next(
        ctx: RadosListCtxT,
        entry: *mut *const c_char,
        key: *mut *const c_char,
        nspace: *mut *const c_char,
    ) -> c_int;
    fn rados_nobjects_list_close(ctx: RadosListCtxT);
    fn rados_lock_exclusive(
        io: RadosIoctxT,
        oid: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
        desc: *const c_char,
        duration: *mut libc::timeval,
        flags: u8,
    ) -> c_int;
    fn rados_lock_shared(
        io: RadosIoctxT,
        oid: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
        tag: *const c_char,
        desc: *const c_char,
        duration: *mut libc::timeval,
        flags: u8,
    ) -> c_int;
    fn rados_unlock(io: RadosIoctxT, oid: *const c_char, name: *const c_char, cookie: *const c_char)
        -> c_int;
    fn rados_list_lockers(
        io: RadosIoctxT,
        oid: *const c_char,
        name: *const c_char,
        exclusive: *mut c_int,
        tag: *mut c_char,
        tag_len: *mut usize,
        clients: *mut c_char,
        clients_len: *mut usize,
        cookies: *mut c_char,
        cookies_len: *mut usize,
        addrs: *mut c_char,
        addrs_len: *mut usize,
    ) -> isize;
    fn rados_break_lock(
        io: RadosIoctxT,
        oid: *const c_char,
        name: *const c_char,
        client: *const c_char,
        cookie: *const c_char,
    ) -> c_int;
});

c_functions!(Rbd {
    fn rbd_create2(io: RadosIoctxT, name: *const c_char, size: u64, features: u64, order: *mut c_int)
        -> c_int;
    fn rbd_remove(io: RadosIoctxT, name: *const c_char) -> c_int;
    fn rbd_list2(io: RadosIoctxT, images: *mut RbdImageSpec, max_images: *mut usize) -> c_int;
    fn rbd_image_spec_list_cleanup(images: *mut RbdImageSpec, num_images: usize);
    fn rbd_open(io: RadosIoctxT, name: *const c_char, image: *mut RbdImageT, snap: *const c_char)
        -> c_int;
    fn rbd_open_read_only(
        io: RadosIoctxT,
        name: *const c_char,
        image: *mut RbdImageT,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_close(image: RbdImageT) -> c_int;
    fn rbd_get_size(image: RbdImageT, size: *mut u64) -> c_int;
    fn rbd_resize(image: RbdImageT, size: u64) -> c_int;
    fn rbd_read(image: RbdImageT, ofs: u64, len: usize, buf: *mut c_char) -> isize;
    fn rbd_write(image: RbdImageT, ofs: u64, len: usize, buf: *const c_char) -> isize;
    fn rbd_flush(image: RbdImageT) -> c_int;
    fn rbd_discard(image: RbdImageT, ofs: u64, len: u64) -> c_int;
    fn rbd_write_zeroes(image: RbdImageT, ofs: u64, len: usize, zero_flags: c_int, op_flags: c_int)
        -> isize;
    fn rbd_diff_iterate2(
        image: RbdImageT,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: RbdDiffCallback,
        arg: *mut c_void,
    ) -> c_int;
    fn rbd_aio_create_completion(cb_arg: *mut c_void, complete_cb: RbdCallbackT, c: *mut RbdCompletionT)
        -> c_int;
    fn rbd_aio_write(image: RbdImageT, off: u64, len: usize, buf: *const c_char, c: RbdCompletionT)
        -> c_int;
    fn rbd_aio_read(image: RbdImageT, off: u64, len: usize, buf: *mut c_char, c: RbdCompletionT)
        -> c_int;
    fn rbd_aio_wait_for_complete(c: RbdCompletionT) -> c_int;
    fn rbd_aio_get_return_value(c: RbdCompletionT) -> isize;
    fn rbd_aio_release(c: RbdCompletionT);
});

/// Both libraries' functions. The libraries themselves are kept alongside, never dropped.
#[derive(Debug)]
pub(crate) struct Api {
    pub rados: Rados,
    pub rbd: Rbd,
    _libraries: [Library; 2],
}

/// Why loading failed, kept so that every later call reports the same thing.
#[derive(Debug, Clone)]
pub(crate) enum LoadFailure {
    Library {
        library: &'static str,
        reason: String,
    },
    Symbol {
        library: &'static str,
        symbol: &'static str,
        reason: String,
    },
}

impl From<LoadFailure> for Error {
    fn from(f: LoadFailure) -> Self {
        match f {
            LoadFailure::Library { library, reason } => Error::NotInstalled { library, reason },
            LoadFailure::Symbol {
                library,
                symbol,
                reason,
            } => Error::MissingSymbol {
                library,
                symbol,
                reason,
            },
        }
    }
}

static API: OnceLock<Result<Api, LoadFailure>> = OnceLock::new();

/// Ceph's client libraries, loaded on first use; every later call answers the same.
pub(crate) fn api() -> Result<&'static Api, Error> {
    API.get_or_init(|| load(LIBRADOS, LIBRBD))
        .as_ref()
        .map_err(|f| Error::from(f.clone()))
}

/// Loads the two libraries by file name (tests pass names that do not exist).
pub(crate) fn load(rados_file: &'static str, rbd_file: &'static str) -> Result<Api, LoadFailure> {
    let open = |file: &'static str| {
        // SAFETY: loading a library runs its initialisers. Ceph's client libraries only set up
        // static state (option tables, logging) there; they start no threads until a cluster
        // handle is created.
        unsafe { Library::new(file) }.map_err(|e| LoadFailure::Library {
            library: file,
            reason: e.to_string(),
        })
    };
    let rados_lib = open(rados_file)?;
    let rbd_lib = open(rbd_file)?;
    // SAFETY: these are Ceph's librados and librbd (by soname), whose headers declare the
    // prototypes above; the libraries are stored next to the tables and never unloaded.
    let rados = unsafe { Rados::load(&rados_lib, rados_file) }?;
    // SAFETY: as above.
    let rbd = unsafe { Rbd::load(&rbd_lib, rbd_file) }?;
    Ok(Api {
        rados,
        rbd,
        _libraries: [rados_lib, rbd_lib],
    })
}

/// A C call's `int` answer: the value, or the `errno` its negative carries.
pub(crate) fn check(r: c_int) -> Result<c_int, i32> {
    if r < 0 {
        Err(-r)
    } else {
        Ok(r)
    }
}

/// A C call's `ssize_t` answer: a byte or item count, or the `errno` its negative carries.
pub(crate) fn check_size(r: isize) -> Result<usize, i32> {
    usize::try_from(r).map_err(|_| i32::try_from(r.unsigned_abs()).unwrap_or(libc::EIO))
}
