//! Requests and their replies: errors for read-only exports, ranges past the end and device
//! failures, simple replies, fast zero, block status, and FUA.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use snapvol_nbd::proto::*;
use snapvol_nbd::transmission::frame::Command;
use snapvol_nbd::{BlockDevice, DevError, Errno, Export, ExportMap, Extent, MemDevice};

use crate::client::{one_export, Client, Reply};
use crate::common::*;
use crate::devices::{Counting, FailingDevice, Recording, Silent};

#[test]
fn writes_to_a_read_only_export_get_eperm_with_simple_and_structured_replies() {
    for structured in [false, true] {
        let (exports, _, ro) = volume_and_snapshot(4096, vec![3; 4096]);
        let h = serve(exports);
        let mut c = Client::tcp(h.addr);
        c.go("vol@snap", structured, &[]);
        c.write(1, 0, &[9; 512], 0);
        c.request(Command::Trim, 0, 2, 0, 512);
        c.request(Command::WriteZeroes, 0, 3, 0, 512);
        for _ in 0..3 {
            let r = c.reply();
            assert_eq!(r.error, Some(Errno::EPERM), "cookie {}", r.cookie);
            if structured {
                assert!(r.message.contains("read-only"), "{:?}", r.message);
            }
        }
        // The connection is still usable.
        c.request(Command::Read, 0, 4, 0, 4096);
        assert_eq!(c.reply().data, vec![3; 4096]);
        assert!(ro.contents().iter().all(|&b| b == 3));
    }
}

/// What `snapvol serve --metrics` counts: every request answered, with the error the client
/// got — those the server answers itself (`EPERM`, `EINVAL`) included — and how long it took;
/// and a client that has its reply finds the request already counted.
#[test]
fn the_device_is_told_of_every_reply_with_its_error_and_duration() {
    let exports = Arc::new(ExportMap::new());
    let rw = Arc::new(Recording {
        inner: MemDevice::new(8192),
        done: Default::default(),
    });
    let ro = Arc::new(Recording {
        inner: MemDevice::new(8192).with_read_only(true),
        done: Default::default(),
    });
    exports.insert("vol", Export::new(rw.clone(), "rw"));
    exports.insert("vol@snap", Export::new(ro.clone(), "ro"));
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    c.go("vol", true, &[]);
    c.write(1, 0, &[7; 4096], 0);
    assert_eq!(c.reply().error, None);
    c.request(Command::Read, 0, 2, 4096, 4096);
    assert_eq!(c.reply().error, None);
    c.request(Command::Flush, 0, 3, 0, 0);
    assert_eq!(c.reply().error, None);
    c.request(Command::Read, 0, 4, 8000, 512);
    assert_eq!(c.reply().error, Some(Errno::EINVAL));
    let mut s = Client::tcp(h.addr);
    s.go("vol@snap", false, &[]);
    s.write(5, 0, &[1; 512], 0);
    assert_eq!(s.reply().error, Some(Errno::EPERM));

    let done = rw.done.lock().unwrap().clone();
    let seen: Vec<_> = done
        .iter()
        .map(|d| (d.command, d.length, d.error))
        .collect();
    assert_eq!(
        seen,
        [
            (Command::Write, 4096, None),
            (Command::Read, 4096, None),
            (Command::Flush, 0, None),
            (Command::Read, 512, Some(Errno::EINVAL)),
        ]
    );
    assert!(done[2].elapsed >= std::time::Duration::from_millis(20));
    let done = ro.done.lock().unwrap().clone();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].command, done[0].error),
        (Command::Write, Some(Errno::EPERM))
    );
}

#[test]
fn requests_past_the_end_get_einval_and_the_connection_stays_usable() {
    for structured in [false, true] {
        let (exports, vol, _) = volume_and_snapshot(8192, vec![0; 4096]);
        let h = serve(exports);
        let mut c = Client::tcp(h.addr);
        c.go("vol", structured, &[]);
        c.request(Command::Read, 0, 1, 8000, 200);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        c.write(2, 8191, &[1, 2], 0);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        c.request(Command::WriteZeroes, 0, 3, u64::MAX - 1, 4);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        c.request(Command::Unknown(99), 0, 4, 0, 0);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        c.write(5, 8190, &[1, 2], NBD_CMD_FLAG_FUA);
        assert_eq!(c.reply().error, None);
        assert_eq!(&vol.contents()[8190..], &[1, 2]);
    }
}

/// Pins what the audit of issue 9 (defect 5) found already right on the wire side: the server
/// checks `offset + length` with checked arithmetic before it calls the device, for every
/// command that takes a range, so a request whose end overflows u64 gets EINVAL (proto.md
/// "Error values": a range past the end), never reaches the device, and leaves the connection
/// usable.
#[test]
fn a_request_whose_end_overflows_u64_gets_einval_and_never_reaches_the_device() {
    for structured in [false, true] {
        let dev = Arc::new(Counting {
            inner: MemDevice::new(8192),
            calls: AtomicU64::new(0),
        });
        let h = serve(one_export("d", dev.clone()));
        let mut c = Client::tcp(h.addr);
        let contexts: &[&str] = if structured { &[BASE_ALLOCATION] } else { &[] };
        c.go("d", structured, contexts);
        let mut commands = vec![
            Command::Read,
            Command::Trim,
            Command::WriteZeroes,
            Command::Cache,
        ];
        if structured {
            commands.push(Command::BlockStatus);
        }
        for (cookie, &command) in (1..).zip(&commands) {
            for (offset, length) in [(u64::MAX, 1), (u64::MAX - 1, 4), (u64::MAX - 0xfff, 0x2000)] {
                c.request(command, 0, cookie, offset, length);
                let r = c.reply();
                assert_eq!(
                    (r.cookie, r.error),
                    (cookie, Some(Errno::EINVAL)),
                    "{command:?} at {offset:#x}+{length:#x}"
                );
            }
        }
        c.write(99, u64::MAX - 1, &[1, 2, 3, 4], 0);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        assert_eq!(dev.calls.load(Ordering::SeqCst), 0);
        c.request(Command::Read, 0, 100, 8188, 4);
        assert_eq!(c.reply().error, None);
        assert_eq!(dev.calls.load(Ordering::SeqCst), 1);
        c.disc();
    }
}

#[test]
fn simple_replies_carry_read_data_and_zero_length_reads_succeed() {
    for structured in [false, true] {
        let data: Vec<u8> = (0..=255).collect();
        let map = one_export("d", Arc::new(MemDevice::from_vec(data.clone())));
        let h = serve(map);
        let mut c = Client::tcp(h.addr);
        c.go("d", structured, &[]);
        c.request(Command::Read, 0, 1, 10, 20);
        c.request(Command::Read, 0, 2, 256, 0);
        let mut got: HashMap<u64, Reply> = HashMap::new();
        for _ in 0..2 {
            let r = c.reply();
            got.insert(r.cookie, r);
        }
        assert_eq!(got[&1].data, data[10..30]);
        assert_eq!((got[&2].error, got[&2].data.len()), (None, 0));
    }
}

#[test]
fn device_errors_reach_the_client_with_their_errno_and_message() {
    let dev = Arc::new(FailingDevice {
        inner: MemDevice::new(3 * 4096),
    });
    let h = serve(one_export("f", dev));
    let mut c = Client::tcp(h.addr);
    c.go("f", true, &[]);
    c.request(Command::Read, 0, 1, 0, 512);
    let r = c.reply();
    assert_eq!(r.error, Some(Errno::EIO));
    assert!(r.message.contains("media error"), "{}", r.message);
    c.write(2, 8192, &[1; 16], 0);
    let r = c.reply();
    assert_eq!(r.error, Some(Errno::ENOSPC));
    assert!(r.message.contains("full"), "{}", r.message);
    c.request(Command::Flush, 0, 3, 0, 0);
    assert_eq!(c.reply().error, Some(Errno::EIO));
    // A panicking device becomes EIO; the connection and the server carry on.
    c.request(Command::Read, 0, 4, 4096, 16);
    assert_eq!(c.reply().error, Some(Errno::EIO));
    c.request(Command::Read, 0, 5, 8192, 16);
    assert_eq!(c.reply().error, None);
}

#[test]
fn fast_zero_gets_einval_unless_advertised_and_reaches_the_device_when_it_is() {
    for fast in [false, true] {
        let dev = Arc::new(MemDevice::from_vec(vec![1; 8192]).with_fast_zero(fast));
        let h = serve(one_export("z", dev.clone()));
        let mut c = Client::tcp(h.addr);
        let (_, flags, _) = c.go("z", true, &[]);
        assert_eq!(flags & NBD_FLAG_SEND_FAST_ZERO != 0, fast);
        c.request(
            Command::WriteZeroes,
            NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE,
            1,
            0,
            4096,
        );
        let r = c.reply();
        if fast {
            assert_eq!(r.error, None);
            assert!(dev.contents()[..4096].iter().all(|&b| b == 0));
        } else {
            assert_eq!(r.error, Some(Errno::EINVAL));
            assert!(dev.contents().iter().all(|&b| b == 1));
        }
    }
}

#[test]
fn block_status_reports_base_allocation_and_the_device_contexts() {
    let dev =
        Arc::new(MemDevice::new(64 * 1024).with_meta_contexts(vec!["qemu:dirty-bitmap:s1".into()]));
    dev.write(8192, &[5; 4096], false).unwrap();
    let h = serve(one_export("b", dev));
    let mut c = Client::tcp(h.addr);
    let (_, _, ids) = c.go("b", true, &[BASE_ALLOCATION, "qemu:dirty-bitmap:s1"]);
    assert_eq!(ids.len(), 2);
    c.request(Command::BlockStatus, 0, 1, 0, 64 * 1024);
    let r = c.reply();
    assert_eq!(r.error, None);
    let by_id: HashMap<u32, Vec<Extent>> = r.status.into_iter().collect();
    let hz = NBD_STATE_HOLE | NBD_STATE_ZERO;
    assert_eq!(
        by_id[&ids[0]],
        vec![
            Extent::new(8192, hz),
            Extent::new(4096, 0),
            Extent::new(52 * 1024, hz)
        ]
    );
    assert_eq!(by_id[&ids[1]], vec![Extent::new(64 * 1024, 0)]);
    c.request(Command::BlockStatus, NBD_CMD_FLAG_REQ_ONE, 2, 4096, 8192);
    let r = c.reply();
    assert!(r
        .status
        .iter()
        .all(|(_, e)| e.len() == 1 && e[0].length <= 8192));
    c.request(Command::BlockStatus, 0, 3, 60 * 1024, 8 * 1024);
    assert_eq!(c.reply().error, Some(Errno::EINVAL));
}

#[test]
fn a_context_the_device_answers_nothing_for_fails_instead_of_reading_as_clean() {
    // What broke: an empty answer became one descriptor of flags 0 for every context, and
    // for a dirty bitmap 0 means "clean": a backup would have skipped changed data.
    let h = serve(one_export("b", Arc::new(Silent { size: 8192 })));
    let mut c = Client::tcp(h.addr);
    let (_, _, ids) = c.go("b", true, &[BASE_ALLOCATION, "qemu:dirty-bitmap:s1"]);
    assert_eq!(ids.len(), 2);
    c.request(Command::BlockStatus, 0, 1, 0, 8192);
    let r = c.reply();
    assert_eq!(r.error, Some(Errno::EIO), "{r:?}");
    assert!(
        r.message.contains("qemu:dirty-bitmap:s1"),
        "{:?}",
        r.message
    );
    // base:allocation alone may still say "allocated, contents unknown".
    let mut c = Client::tcp(h.addr);
    let (_, _, ids) = c.go("b", true, &[BASE_ALLOCATION]);
    c.request(Command::BlockStatus, 0, 2, 0, 8192);
    let r = c.reply();
    assert_eq!(r.error, None);
    assert_eq!(r.status, vec![(ids[0], vec![Extent::new(8192, 0)])]);
}

#[test]
fn block_status_without_a_selected_context_gets_einval() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    c.go("vol", true, &[]);
    c.request(Command::BlockStatus, 0, 1, 0, 4096);
    assert_eq!(c.reply().error, Some(Errno::EINVAL));
}

#[test]
fn fua_writes_reach_the_device_with_fua_set() {
    struct FuaCounter {
        inner: MemDevice,
        fua: AtomicU64,
    }
    impl BlockDevice for FuaCounter {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
            self.inner.read(offset, buf)
        }
        fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
            if fua {
                self.fua.fetch_add(1, Ordering::SeqCst);
            }
            self.inner.write(offset, data, fua)
        }
        fn flush(&self) -> Result<(), DevError> {
            self.inner.flush()
        }
    }
    let dev = Arc::new(FuaCounter {
        inner: MemDevice::new(4096),
        fua: AtomicU64::new(0),
    });
    let h = serve(one_export("f", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("f", false, &[]);
    c.write(1, 0, &[1; 512], NBD_CMD_FLAG_FUA);
    c.write(2, 512, &[1; 512], 0);
    c.reply();
    c.reply();
    assert_eq!(dev.fua.load(Ordering::SeqCst), 1);
}
