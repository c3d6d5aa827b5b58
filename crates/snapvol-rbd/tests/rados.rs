//! RADOS objects and advisory locks against a real cluster: what a store kept in a pool, and
//! one writer per volume with failover, are built on.
//!
//! They run when `CEPH_CONF` is set (`scripts/ceph.sh start DIR` prints it), print a skip
//! line otherwise, and fail instead with `SNAPVOL_REQUIRE_CEPH=1`.

mod common;

use std::time::{Duration, SystemTime};

use common::{cluster, pattern, unique, ScratchImage, POOL};
use snapvol_engine::vlun::Vlun;
use snapvol_rbd::{Cluster, IoCtx};

/// Removes an object when the test ends, however it ends.
struct ScratchObject<'a>(&'a IoCtx, String);

impl Drop for ScratchObject<'_> {
    fn drop(&mut self) {
        let _ = self.0.remove(&self.1);
    }
}

#[test]
fn objects_are_written_whole_read_whole_listed_and_removed() {
    let Some(cluster) = cluster("objects") else {
        return;
    };
    let io = cluster.ioctx(POOL).unwrap();
    let oid = unique("obj");
    let _cleanup = ScratchObject(&io, oid.clone());

    let e = io.read(&oid).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    let e = io.stat(&oid).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");

    let before = SystemTime::now() - Duration::from_secs(5);
    io.write_full(&oid, b"{\"version\": 1}").unwrap();
    assert_eq!(io.read(&oid).unwrap(), b"{\"version\": 1}");
    let st = io.stat(&oid).unwrap();
    assert_eq!(st.size, 14);
    assert!(st.modified >= before, "{st:?}");

    // Replacing is whole: a shorter content leaves no tail of the longer one.
    io.write_full(&oid, b"{}").unwrap();
    assert_eq!(io.read(&oid).unwrap(), b"{}");
    // Larger than one read's first guess, and empty.
    let big = pattern(4, 0, 9 << 20);
    io.write_full(&oid, &big).unwrap();
    assert_eq!(io.read(&oid).unwrap(), big);
    io.write_full(&oid, b"").unwrap();
    assert_eq!(io.read(&oid).unwrap(), b"");

    assert!(io.list_objects().unwrap().contains(&oid));
    io.remove(&oid).unwrap();
    assert!(!io.list_objects().unwrap().contains(&oid));
    let e = io.remove(&oid).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
}

#[test]
fn an_exclusive_lock_refuses_a_second_connection_until_released() {
    let Some(a) = cluster("exclusive lock") else {
        return;
    };
    let b = Cluster::connect(None, "admin").unwrap();
    assert_ne!(a.instance_id(), b.instance_id());
    let (io_a, io_b) = (a.ioctx(POOL).unwrap(), b.ioctx(POOL).unwrap());
    let oid = unique("lock");
    let _cleanup = ScratchObject(&io_a, oid.clone());

    let free = io_a.list_lockers(&oid, "owner");
    assert_eq!(free.unwrap_err().errno(), Some(libc::ENOENT));

    io_a.lock_exclusive(&oid, "owner", "serve-a", "serving", None)
        .unwrap();
    let e = io_b
        .lock_exclusive(&oid, "owner", "serve-b", "standby", None)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    // The same connection with another cookie is someone else too.
    let e = io_a
        .lock_exclusive(&oid, "owner", "other-cookie", "", None)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    let e = io_a
        .lock_exclusive(&oid, "owner", "serve-a", "serving", None)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "taking it again: {e}");

    let info = io_b.list_lockers(&oid, "owner").unwrap();
    assert!(info.exclusive);
    assert_eq!(info.lockers.len(), 1, "{info:?}");
    let holder = &info.lockers[0];
    assert_eq!(holder.client, a.client_name());
    assert_eq!(holder.cookie, "serve-a");
    let addr = a.instance_addr().unwrap();
    assert!(
        addr.contains(&holder.address) || holder.address.contains(addr.trim_start_matches("v2:")),
        "lock listing says {}, rados_getaddrs says {addr}",
        holder.address
    );

    let e = io_b.unlock(&oid, "owner", "serve-a").unwrap_err();
    assert_eq!(
        e.errno(),
        Some(libc::ENOENT),
        "only the holder unlocks: {e}"
    );
    io_a.unlock(&oid, "owner", "serve-a").unwrap();
    assert!(io_b.list_lockers(&oid, "owner").unwrap().lockers.is_empty());
    io_b.lock_exclusive(&oid, "owner", "serve-b", "serving", None)
        .unwrap();
}

#[test]
fn a_lock_with_a_duration_expires_unless_renewed() {
    let Some(a) = cluster("lock lease") else {
        return;
    };
    let b = Cluster::connect(None, "admin").unwrap();
    let (io_a, io_b) = (a.ioctx(POOL).unwrap(), b.ioctx(POOL).unwrap());
    let oid = unique("lease");
    let _cleanup = ScratchObject(&io_a, oid.clone());
    let lease = Some(Duration::from_secs(2));

    io_a.lock_exclusive(&oid, "owner", "a", "", lease).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    io_a.renew_lock_exclusive(&oid, "owner", "a", "", lease)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let e = io_b
        .lock_exclusive(&oid, "owner", "b", "", lease)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "renewed, so still held: {e}");
    std::thread::sleep(Duration::from_millis(1500));
    io_b.lock_exclusive(&oid, "owner", "b", "", lease)
        .expect("the lease ran out, so the lock is free");
    let e = io_a
        .renew_lock_exclusive(&oid, "owner", "a", "", lease)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
}

/// Failover: the standby fences the holder, breaks its lock and takes it. From then on the
/// old holder can write nothing, to objects or to images, even though its connection lives.
#[test]
fn breaking_a_lock_after_a_blocklist_entry_fences_the_old_holder() {
    let Some(standby) = cluster("fencing") else {
        return;
    };
    let holder = Cluster::connect(None, "admin").unwrap();
    let (io_h, io_s) = (holder.ioctx(POOL).unwrap(), standby.ioctx(POOL).unwrap());
    let oid = unique("fence");
    let _cleanup = ScratchObject(&io_s, oid.clone());
    let scratch = ScratchImage::new(&io_s, "fence", 8 << 20);
    let image = snapvol_rbd::RbdImage::open(&io_h, &scratch.name, false).unwrap();

    io_h.lock_exclusive(&oid, "owner", "serve", "", None)
        .unwrap();
    io_h.write_full(&oid, b"written by the holder").unwrap();
    image.write_at(b"holder", 0).unwrap();
    image.sync().unwrap();

    let info = io_s.list_lockers(&oid, "owner").unwrap();
    let dead = &info.lockers[0];
    standby.blocklist_add(&dead.address, 600).unwrap();
    io_s.break_lock(&oid, "owner", &dead.client, &dead.cookie)
        .unwrap();
    io_s.lock_exclusive(&oid, "owner", "serve", "took over", None)
        .unwrap();

    let e = io_h.write_full(&oid, b"late write").unwrap_err();
    eprintln!("a fenced client's object write fails with: {e}");
    assert_eq!(
        e.errno(),
        Some(libc::ESHUTDOWN),
        "EBLOCKLISTED is ESHUTDOWN: {e}"
    );
    // An image write may land in the client's cache (RBD's default); its flush cannot.
    let e = match image.write_at(b"late", 0) {
        Err(e) => {
            eprintln!("a fenced client's image write fails with: {e}");
            e
        }
        Ok(()) => {
            let e = image.sync().expect_err("a fenced client's flush must fail");
            eprintln!("a fenced client's image write was cached; its flush fails with: {e}");
            e
        }
    };
    assert_eq!(e.raw_os_error(), Some(libc::ESHUTDOWN), "{e}");

    assert_eq!(io_s.read(&oid).unwrap(), b"written by the holder");
    let fresh = snapvol_rbd::RbdImage::open(&io_s, &scratch.name, true).unwrap();
    let mut buf = [0u8; 6];
    fresh.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"holder");
    drop((fresh, image));
}

#[test]
fn a_connection_names_itself_as_lock_listings_and_blocklists_do() {
    let Some(c) = cluster("identity") else {
        return;
    };
    assert_eq!(c.id(), "admin");
    assert!(c.instance_id() > 0);
    assert_eq!(c.client_name(), format!("client.{}", c.instance_id()));
    let addr = c.instance_addr().unwrap();
    assert!(addr.contains("127.0.0.1"), "{addr}");
    let e = Cluster::connect(Some("/nonexistent/ceph.conf".as_ref()), "admin").unwrap_err();
    assert!(e.to_string().contains("rados_conf_read_file"), "{e}");
}
