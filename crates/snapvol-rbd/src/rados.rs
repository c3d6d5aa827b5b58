//! RADOS: a connection to a cluster, a pool, and the object operations and advisory locks that
//! a store kept in a pool needs.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::ffi::{self, api, check, check_size, RadosIoctxT, RadosT};

/// A connection to a Ceph cluster (`rados_t`). Cheap to clone; the connection is shut down
/// when the last clone, and the last pool, image or lock handle made from it, is dropped.
///
/// One connection serves any number of threads: librados's cluster handle is thread-safe.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<ClusterHandle>,
}

#[derive(Debug)]
struct ClusterHandle {
    handle: RadosT,
    api: &'static ffi::Api,
    /// Who we are, `client.ID`, as asked for.
    id: String,
}

// SAFETY: librados's cluster handle may be used from any thread and by several at once; the
// library locks what it shares internally. The pointer is never exposed.
unsafe impl Send for ClusterHandle {}
// SAFETY: as above.
unsafe impl Sync for ClusterHandle {}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by rados_create and connected; every pool handle
        // holds a clone of the `Cluster`, so none outlives this call.
        unsafe { (self.api.rados.rados_shutdown)(self.handle) }
    }
}

impl Cluster {
    /// Connects as `client.<id>` (such as `admin`), reading the configuration (monitor
    /// addresses, authentication) from `conf` if given, else from the file `$CEPH_CONF` names,
    /// else from Ceph's default search (`/etc/ceph/ceph.conf`, `~/.ceph/config`,
    /// `./ceph.conf`).
    ///
    /// The wait for the monitors is Ceph's `client_mount_timeout` (300 s unless the
    /// configuration says otherwise).
    pub fn connect(conf: Option<&Path>, id: &str) -> Result<Self> {
        let api = api()?;
        let c_id = cstring("client id", id)?;
        let conf: Option<PathBuf> = conf
            .map(Path::to_owned)
            .or_else(|| std::env::var_os("CEPH_CONF").map(PathBuf::from));
        let c_conf = match &conf {
            Some(p) => Some(cstring("configuration path", &p.to_string_lossy())?),
            None => None,
        };
        let target = format!(
            "client.{id} (configuration {})",
            conf.as_deref().map_or_else(
                || "from the default search".into(),
                |p| p.display().to_string()
            )
        );

        let mut handle: RadosT = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; `c_id` is a NUL-terminated string that
        // librados copies.
        check(unsafe { (api.rados.rados_create)(&mut handle, c_id.as_ptr()) })
            .map_err(|e| Error::ceph("rados_create", &target, e))?;
        // From here on the handle is shut down on every path by `ClusterHandle`'s drop.
        let cluster = ClusterHandle {
            handle,
            api,
            id: id.to_owned(),
        };
        let path = c_conf.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: `path` is NULL (default search) or a NUL-terminated path that outlives the
        // call; the handle is not connected yet, as configuration requires.
        check(unsafe { (api.rados.rados_conf_read_file)(handle, path) })
            .map_err(|e| Error::ceph("rados_conf_read_file", &target, e))?;
        // SAFETY: a configured, not yet connected handle.
        check(unsafe { (api.rados.rados_connect)(handle) })
            .map_err(|e| Error::ceph("rados_connect", &target, e))?;
        Ok(Cluster {
            inner: Arc::new(cluster),
        })
    }

    pub(crate) fn api(&self) -> &'static ffi::Api {
        self.inner.api
    }

    /// The client id this connection was made with (`admin` for `client.admin`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// This connection's unique number: lock holders show it as `client.<instance_id>`.
    pub fn instance_id(&self) -> u64 {
        // SAFETY: a connected handle.
        unsafe { (self.api().rados.rados_get_instance_id)(self.inner.handle) }
    }

    /// The name lock listings give this connection: `client.<instance_id>`.
    pub fn client_name(&self) -> String {
        format!("client.{}", self.instance_id())
    }

    /// Whether `other` is a handle on this very connection.
    pub fn is(&self, other: &Cluster) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// This connection's address as the OSDs see it, such as `127.0.0.1:0/3012345678`: what
    /// [`Cluster::blocklist_add`] takes to fence it.
    pub fn instance_addr(&self) -> Result<String> {
        let mut addrs: *mut c_char = ptr::null_mut();
        // SAFETY: a connected handle and a valid out-pointer.
        check(unsafe { (self.api().rados.rados_getaddrs)(self.inner.handle, &mut addrs) })
            .map_err(|e| Error::ceph("rados_getaddrs", self.client_name(), e))?;
        if addrs.is_null() {
            return Err(Error::ceph(
                "rados_getaddrs",
                self.client_name(),
                libc::ENOMEM,
            ));
        }
        // SAFETY: librados answered a NUL-terminated string it allocated with strdup, which
        // is ours to free (with free, as strdup allocates with malloc).
        let s = unsafe { CStr::from_ptr(addrs) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above; freed once, not used afterwards.
        unsafe { libc::free(addrs.cast()) };
        Ok(s)
    }

    /// Fences the client at `client_address` (as [`Cluster::instance_addr`] or a lock
    /// listing gives it): the OSDs refuse everything it sends for `expire_secs` seconds (0:
    /// the cluster's default, `mon_osd_blocklist_default_expire`, an hour). Returns once the
    /// monitors have committed the entry.
    pub fn blocklist_add(&self, client_address: &str, expire_secs: u32) -> Result<()> {
        let c_addr = cstring("client address", client_address)?;
        // SAFETY: a connected handle; the address is NUL-terminated and outlives the call.
        // The prototype says `char *` but librados only parses the string.
        check(unsafe {
            (self.api().rados.rados_blocklist_add)(
                self.inner.handle,
                c_addr.as_ptr().cast_mut(),
                expire_secs,
            )
        })
        .map_err(|e| Error::ceph("rados_blocklist_add", client_address, e))?;
        Ok(())
    }

    /// A handle on pool `pool` for object and image operations.
    pub fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        let c_pool = cstring("pool name", pool)?;
        let mut io: RadosIoctxT = ptr::null_mut();
        // SAFETY: a connected handle, a NUL-terminated pool name and a valid out-pointer.
        check(unsafe {
            (self.api().rados.rados_ioctx_create)(self.inner.handle, c_pool.as_ptr(), &mut io)
        })
        .map_err(|e| Error::ceph("rados_ioctx_create", format!("pool {pool}"), e))?;
        Ok(IoCtx {
            inner: Arc::new(IoCtxHandle {
                handle: io,
                pool: pool.to_owned(),
                cluster: self.clone(),
            }),
        })
    }
}

/// A pool of a cluster (`rados_ioctx_t`): its objects, their locks, and (see
/// [`RbdImage`](crate::RbdImage)) its images. Cheap to clone; keeps its [`Cluster`] connected.
///
/// Object operations here are synchronous and may be called from any number of threads.
#[derive(Debug, Clone)]
pub struct IoCtx {
    inner: Arc<IoCtxHandle>,
}

#[derive(Debug)]
struct IoCtxHandle {
    handle: RadosIoctxT,
    pool: String,
    cluster: Cluster,
}

// SAFETY: librados allows I/O through one pool handle from several threads at once. What is
// not thread-safe is changing the handle's settings (snapshot to read, locator key,
// namespace), which this crate never does after creating it.
unsafe impl Send for IoCtxHandle {}
// SAFETY: as above.
unsafe impl Sync for IoCtxHandle {}

impl Drop for IoCtxHandle {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create; images opened through it hold a clone of
        // the `IoCtx`, so nothing uses it after this call. The cluster outlives it (field).
        unsafe { (self.cluster.api().rados.rados_ioctx_destroy)(self.handle) }
    }
}

/// Size and modification time of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    /// Length in bytes.
    pub size: u64,
    /// When it was last written, to the second.
    pub modified: SystemTime,
}

/// Who holds an advisory lock on an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locker {
    /// The holding connection, `client.<instance_id>`.
    pub client: String,
    /// The cookie it locked with.
    pub cookie: String,
    /// Its address, which [`Cluster::blocklist_add`] takes to fence it.
    pub address: String,
}

/// The state of one advisory lock on an object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockInfo {
    /// Whether the lock is held exclusively (otherwise shared, or not held).
    pub exclusive: bool,
    /// The tag of a shared lock (empty for exclusive ones).
    pub tag: String,
    /// The holders (none if the lock is free).
    pub lockers: Vec<Locker>,
}

/// `LIBRADOS_LOCK_FLAG_RENEW` from `rados/librados.h`: taking a lock we already hold renews
/// its duration instead of failing with `EEXIST`.
const LOCK_FLAG_RENEW: u8 = 1;

impl IoCtx {
    fn api(&self) -> &'static ffi::Api {
        self.inner.cluster.api()
    }

    pub(crate) fn handle(&self) -> RadosIoctxT {
        self.inner.handle
    }

    /// The pool's name.
    pub fn pool(&self) -> &str {
        &self.inner.pool
    }

    /// The connection this pool handle belongs to.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    fn object_target(&self, oid: &str) -> String {
        format!("{}/{}", self.inner.pool, oid)
    }

    /// Replaces the whole content of object `oid` with `data` (creating it), atomically: a
    /// reader sees the old content or the new one. The OSDs refuse writes larger than
    /// `osd_max_write_size` (90 MiB by default).
    pub fn write_full(&self, oid: &str, data: &[u8]) -> Result<()> {
        let c_oid = cstring("object name", oid)?;
        // SAFETY: a live pool handle; `c_oid` and `data` outlive the synchronous call, and
        // `data.len()` bytes are readable at `data`.
        check(unsafe {
            (self.api().rados.rados_write_full)(
                self.handle(),
                c_oid.as_ptr(),
                data.as_ptr().cast(),
                data.len(),
            )
        })
        .map_err(|e| Error::ceph("rados_write_full", self.object_target(oid), e))?;
        Ok(())
    }

    /// The whole content of object `oid` (`ENOENT` if it does not exist).
    pub fn read(&self, oid: &str) -> Result<Vec<u8>> {
        let c_oid = cstring("object name", oid)?;
        // Start with what stat says and read on until a read comes back short, so that an
        // object that grew between the two calls is still read whole.
        let mut chunk = usize::try_from(self.stat(oid)?.size)
            .unwrap_or(usize::MAX)
            .clamp(4096, 1 << 30);
        let mut data = Vec::new();
        loop {
            let at = data.len();
            data.resize(at + chunk, 0);
            // SAFETY: a live pool handle; `chunk` writable bytes start at `data[at]`.
            let n = check(unsafe {
                (self.api().rados.rados_read)(
                    self.handle(),
                    c_oid.as_ptr(),
                    data[at..].as_mut_ptr().cast(),
                    chunk,
                    at as u64,
                )
            })
            .map_err(|e| Error::ceph("rados_read", self.object_target(oid), e))?;
            let n = n as usize; // non-negative after `check`
            data.truncate(at + n);
            if n < chunk {
                return Ok(data);
            }
            chunk = (chunk * 2).min(1 << 30);
        }
    }

    /// Size and modification time of object `oid` (`ENOENT` if it does not exist).
    pub fn stat(&self, oid: &str) -> Result<ObjectStat> {
        let c_oid = cstring("object name", oid)?;
        let mut size = 0u64;
        let mut mtime: libc::time_t = 0;
        // SAFETY: a live pool handle, a NUL-terminated name and two valid out-pointers.
        check(unsafe {
            (self.api().rados.rados_stat)(self.handle(), c_oid.as_ptr(), &mut size, &mut mtime)
        })
        .map_err(|e| Error::ceph("rados_stat", self.object_target(oid), e))?;
        Ok(ObjectStat {
            size,
            modified: UNIX_EPOCH + Duration::from_secs(u64::try_from(mtime).unwrap_or(0)),
        })
    }

    /// Removes object `oid` (`ENOENT` if it does not exist).
    pub fn remove(&self, oid: &str) -> Result<()> {
        let c_oid = cstring("object name", oid)?;
        // SAFETY: a live pool handle and a NUL-terminated name.
        check(unsafe { (self.api().rados.rados_remove)(self.handle(), c_oid.as_ptr()) })
            .map_err(|e| Error::ceph("rados_remove", self.object_target(oid), e))?;
        Ok(())
    }

    /// The names of every object in the pool's default namespace, in no particular order.
    /// Lists the whole pool: RADOS has no listing by prefix. RBD's own objects
    /// (`rbd_data.*`, `rbd_header.*`, `rbd_directory`, ...) are among them.
    pub fn list_objects(&self) -> Result<Vec<String>> {
        let api = self.api();
        let mut ctx: ffi::RadosListCtxT = ptr::null_mut();
        // SAFETY: a live pool handle and a valid out-pointer.
        check(unsafe { (api.rados.rados_nobjects_list_open)(self.handle(), &mut ctx) })
            .map_err(|e| Error::ceph("rados_nobjects_list_open", self.pool(), e))?;
        let mut names = Vec::new();
        let result = loop {
            let mut entry: *const c_char = ptr::null();
            // SAFETY: an open listing; key and namespace are not asked for (NULL is allowed).
            let r = unsafe {
                (api.rados.rados_nobjects_list_next)(
                    ctx,
                    &mut entry,
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            };
            match check(r) {
                Ok(_) => {
                    // SAFETY: on success `entry` points at a NUL-terminated name that stays
                    // valid until the next call on this listing; it is copied right here.
                    names.push(
                        unsafe { CStr::from_ptr(entry) }
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
                Err(libc::ENOENT) => break Ok(names), // the end of the listing
                Err(e) => break Err(Error::ceph("rados_nobjects_list_next", self.pool(), e)),
            }
        };
        // SAFETY: opened above, closed once.
        unsafe { (api.rados.rados_nobjects_list_close)(ctx) };
        result
    }

    /// Takes the exclusive advisory lock `name` on object `oid` (creating an empty object if
    /// there is none) as this connection with `cookie`. With a `duration` the lock expires on
    /// its own unless renewed ([`IoCtx::renew_lock_exclusive`]); without one it lasts until
    /// unlocked or broken.
    ///
    /// Fails with `EBUSY` if someone else (another connection, or this one with another
    /// cookie) holds it, and `EEXIST` if this connection already holds it with this cookie.
    pub fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        desc: &str,
        duration: Option<Duration>,
    ) -> Result<()> {
        self.lock_flags(oid, name, cookie, None, desc, duration, 0)
    }

    /// Like [`IoCtx::lock_exclusive`], but holding the lock already (same connection, same
    /// cookie) is fine: its duration starts anew. This is how a lease is kept.
    pub fn renew_lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        desc: &str,
        duration: Option<Duration>,
    ) -> Result<()> {
        self.lock_flags(oid, name, cookie, None, desc, duration, LOCK_FLAG_RENEW)
    }

    /// Takes lock `name` on `oid` shared, with `tag` (every shared holder uses the same tag),
    /// as this connection with `cookie`; `duration` as for [`IoCtx::lock_exclusive`]. Fails
    /// with `EBUSY` while someone holds it exclusively (or shared with another tag).
    pub fn lock_shared(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        tag: &str,
        desc: &str,
        duration: Option<Duration>,
    ) -> Result<()> {
        self.lock_flags(oid, name, cookie, Some(tag), desc, duration, 0)
    }

    /// Like [`IoCtx::lock_shared`], but holding it already (same connection and cookie)
    /// renews its duration.
    pub fn renew_lock_shared(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        tag: &str,
        desc: &str,
        duration: Option<Duration>,
    ) -> Result<()> {
        self.lock_flags(
            oid,
            name,
            cookie,
            Some(tag),
            desc,
            duration,
            LOCK_FLAG_RENEW,
        )
    }

    /// `rados_lock_exclusive` without a `tag`, `rados_lock_shared` with one.
    #[allow(clippy::too_many_arguments)]
    fn lock_flags(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        tag: Option<&str>,
        desc: &str,
        duration: Option<Duration>,
        flags: u8,
    ) -> Result<()> {
        let c_oid = cstring("object name", oid)?;
        let c_name = cstring("lock name", name)?;
        let c_cookie = cstring("lock cookie", cookie)?;
        let c_desc = cstring("lock description", desc)?;
        let c_tag = tag.map(|t| cstring("lock tag", t)).transpose()?;
        let mut tv = duration.map(|d| libc::timeval {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(d.subsec_micros()),
        });
        let tv_ptr = tv
            .as_mut()
            .map_or(ptr::null_mut(), |t| t as *mut libc::timeval);
        let rados = &self.api().rados;
        // SAFETY: a live pool handle; every string is NUL-terminated and outlives the call;
        // `tv_ptr` is NULL (no expiry) or points at a live timeval.
        let (op, r) = unsafe {
            match &c_tag {
                None => (
                    "rados_lock_exclusive",
                    (rados.rados_lock_exclusive)(
                        self.handle(),
                        c_oid.as_ptr(),
                        c_name.as_ptr(),
                        c_cookie.as_ptr(),
                        c_desc.as_ptr(),
                        tv_ptr,
                        flags,
                    ),
                ),
                Some(c_tag) => (
                    "rados_lock_shared",
                    (rados.rados_lock_shared)(
                        self.handle(),
                        c_oid.as_ptr(),
                        c_name.as_ptr(),
                        c_cookie.as_ptr(),
                        c_tag.as_ptr(),
                        c_desc.as_ptr(),
                        tv_ptr,
                        flags,
                    ),
                ),
            }
        };
        check(r).map_err(|e| Error::ceph(op, self.lock_target(oid, name), e))?;
        Ok(())
    }

    fn lock_target(&self, oid: &str, name: &str) -> String {
        format!("lock '{name}' on {}", self.object_target(oid))
    }

    /// Releases the lock `name` on `oid` that this connection holds with `cookie` (`ENOENT`
    /// if it does not hold it, for instance because it was broken).
    pub fn unlock(&self, oid: &str, name: &str, cookie: &str) -> Result<()> {
        let c_oid = cstring("object name", oid)?;
        let c_name = cstring("lock name", name)?;
        let c_cookie = cstring("lock cookie", cookie)?;
        // SAFETY: a live pool handle; NUL-terminated strings that outlive the call.
        check(unsafe {
            (self.api().rados.rados_unlock)(
                self.handle(),
                c_oid.as_ptr(),
                c_name.as_ptr(),
                c_cookie.as_ptr(),
            )
        })
        .map_err(|e| Error::ceph("rados_unlock", self.lock_target(oid, name), e))?;
        Ok(())
    }

    /// Who holds lock `name` on object `oid` (no lockers if it is free; `ENOENT` if the object
    /// does not exist).
    pub fn list_lockers(&self, oid: &str, name: &str) -> Result<LockInfo> {
        let c_oid = cstring("object name", oid)?;
        let c_name = cstring("lock name", name)?;
        let mut sizes = [256usize; 4]; // tag, clients, cookies, addresses
        loop {
            let mut bufs: [Vec<u8>; 4] = sizes.map(|n| vec![0u8; n]);
            let mut lens = sizes;
            let mut exclusive: libc::c_int = 0;
            let [tag, clients, cookies, addrs] = &mut bufs;
            let [tag_len, clients_len, cookies_len, addrs_len] = &mut lens;
            // SAFETY: a live pool handle; each buffer has the length passed beside it, and
            // librados writes at most that many bytes (answering ERANGE and the needed
            // lengths when one is too short).
            let r = unsafe {
                (self.api().rados.rados_list_lockers)(
                    self.handle(),
                    c_oid.as_ptr(),
                    c_name.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    tag_len,
                    clients.as_mut_ptr().cast(),
                    clients_len,
                    cookies.as_mut_ptr().cast(),
                    cookies_len,
                    addrs.as_mut_ptr().cast(),
                    addrs_len,
                )
            };
            let count = match check_size(r) {
                Ok(n) => n,
                Err(libc::ERANGE) => {
                    // Grow every buffer to at least what was asked for, and retry: the lock
                    // may change between the calls.
                    for (size, need) in sizes.iter_mut().zip(lens) {
                        *size = (*size).max(need) * 2;
                    }
                    continue;
                }
                Err(e) => {
                    return Err(Error::ceph(
                        "rados_list_lockers",
                        self.lock_target(oid, name),
                        e,
                    ))
                }
            };
            let [tag, clients, cookies, addrs] = &bufs;
            let clients = split_nul(&clients[..lens[1].min(clients.len())]);
            let cookies = split_nul(&cookies[..lens[2].min(cookies.len())]);
            let addrs = split_nul(&addrs[..lens[3].min(addrs.len())]);
            let lockers = (0..count)
                .map(|i| Locker {
                    client: clients.get(i).cloned().unwrap_or_default(),
                    cookie: cookies.get(i).cloned().unwrap_or_default(),
                    address: addrs.get(i).cloned().unwrap_or_default(),
                })
                .collect();
            return Ok(LockInfo {
                exclusive: exclusive != 0,
                tag: split_nul(&tag[..lens[0].min(tag.len())])
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
                lockers,
            });
        }
    }

    /// Releases lock `name` on `oid` held by `client` (`client.<instance_id>`, as
    /// [`IoCtx::list_lockers`] gives it) with `cookie`, whoever we are. Breaking a lock does
    /// not stop its old holder from writing: fence it first with
    /// [`Cluster::blocklist_add`].
    pub fn break_lock(&self, oid: &str, name: &str, client: &str, cookie: &str) -> Result<()> {
        let c_oid = cstring("object name", oid)?;
        let c_name = cstring("lock name", name)?;
        let c_client = cstring("client name", client)?;
        let c_cookie = cstring("lock cookie", cookie)?;
        // SAFETY: a live pool handle; NUL-terminated strings that outlive the call.
        check(unsafe {
            (self.api().rados.rados_break_lock)(
                self.handle(),
                c_oid.as_ptr(),
                c_name.as_ptr(),
                c_client.as_ptr(),
                c_cookie.as_ptr(),
            )
        })
        .map_err(|e| Error::ceph("rados_break_lock", self.lock_target(oid, name), e))?;
        Ok(())
    }
}

/// The NUL-separated strings of a buffer librados filled in.
fn split_nul(buf: &[u8]) -> Vec<String> {
    let buf = buf.strip_suffix(&[0]).unwrap_or(buf);
    if buf.is_empty() {
        return Vec::new();
    }
    buf.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// `s` as a C string, refusing the NUL bytes C cannot carry.
pub(crate) fn cstring(what: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidName {
        what,
        name: s.escape_debug().to_string(),
        rule: "must not contain a NUL byte",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_listings_split_on_nul_and_ignore_the_terminator() {
        assert_eq!(split_nul(b"client.1\0client.2\0"), ["client.1", "client.2"]);
        assert_eq!(split_nul(b"a"), ["a"]);
        assert!(split_nul(b"").is_empty());
        assert!(split_nul(b"\0").is_empty());
    }

    #[test]
    fn a_nul_byte_in_a_name_is_refused_before_reaching_ceph() {
        let e = cstring("object name", "a\0b").unwrap_err().to_string();
        assert!(e.contains("invalid object name"), "{e}");
    }
}
