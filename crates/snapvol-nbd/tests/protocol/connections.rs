//! Connections: replies out of order, pipelining, clients that send junk or vanish,
//! disconnect and shutdown with requests in flight, removed exports, and a Unix socket.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use snapvol_nbd::handshake::frame::{self as hf, InfoRequest};
use snapvol_nbd::proto::*;
use snapvol_nbd::transmission::frame::{self as tf, Command, Request};
use snapvol_nbd::{MemDevice, Server};

use crate::client::{one_export, Client};
use crate::common::*;
use crate::devices::GatedDevice;

#[test]
fn replies_come_back_out_of_order_when_an_earlier_request_is_slow() {
    let dev = Arc::new(GatedDevice::new(64 * 1024, 0));
    let h = serve(one_export("g", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("g", true, &[]);
    second_read_overtakes_a_gated_first(&mut c, &dev);
}

/// Sends a read the device holds at its gate and a second one; the second is answered first,
/// the first once the gate is released, and then nothing more is sent.
pub(crate) fn second_read_overtakes_a_gated_first(c: &mut Client, dev: &GatedDevice) {
    c.request(Command::Read, 0, 1, 0, 4096);
    dev.wait_entered();
    c.request(Command::Read, 0, 2, 4096, 4096);
    // The second request is answered while the first still waits in the device.
    assert_eq!(c.reply().cookie, 2);
    dev.release();
    assert_eq!(c.reply().cookie, 1);
}

#[test]
fn many_pipelined_requests_are_all_answered_correctly() {
    let dev = Arc::new(MemDevice::new(8 << 20));
    let h = serve(one_export("p", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("p", true, &[]);
    let chunk = 64 * 1024;
    let n = 128u64;
    // Writes in flight, a flush, then reads back in flight; replies are read concurrently
    // by the same client after sending, so the server's bounded queue must not stall.
    for i in 0..n {
        let data = vec![i as u8; chunk];
        c.write(i, i * chunk as u64, &data, 0);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let r = c.reply();
        assert_eq!(r.error, None);
        assert!(seen.insert(r.cookie));
    }
    c.request(Command::Flush, 0, 1000, 0, 0);
    assert_eq!(c.reply().error, None);
    for i in 0..n {
        c.request(Command::Read, 0, 2000 + i, i * chunk as u64, chunk as u32);
    }
    for _ in 0..n {
        let r = c.reply();
        let i = r.cookie - 2000;
        assert!(r.data.iter().all(|&b| b == i as u8), "read {i}");
    }
}

#[test]
fn a_bad_request_magic_closes_only_that_connection() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut good = Client::tcp(h.addr);
    good.go("vol", true, &[]);
    let mut bad = Client::tcp(h.addr);
    bad.go("vol", true, &[]);
    bad.send_raw(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
    assert!(bad.closed());
    good.request(Command::Read, 0, 1, 0, 16);
    assert_eq!(good.reply().error, None);
    // The server still accepts new connections.
    let mut fresh = Client::tcp(h.addr);
    fresh.go("vol", false, &[]);
    fresh.request(Command::Read, 0, 1, 0, 16);
    assert_eq!(fresh.reply().error, None);
}

#[test]
fn an_oversized_write_closes_only_that_connection() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut good = Client::tcp(h.addr);
    good.go("vol", false, &[]);
    let mut bad = Client::tcp(h.addr);
    bad.go("vol", false, &[]);
    bad.request(Command::Write, 0, 1, 0, MAX_PAYLOAD + 1);
    assert!(bad.closed());
    good.write(1, 0, &[1; 8], 0);
    assert_eq!(good.reply().error, None);
}

#[test]
fn a_client_vanishing_mid_request_does_not_disturb_the_server() {
    let (exports, vol, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    {
        let mut c = Client::tcp(h.addr);
        c.go("vol", true, &[]);
        // A write header promising 4096 bytes, then only 10, then gone.
        let mut out = Vec::new();
        tf::encode_request(
            &mut out,
            &Request {
                flags: 0,
                command: Command::Write,
                cookie: 1,
                offset: 0,
                length: 4096,
            },
        );
        out.extend_from_slice(&[7; 10]);
        c.send_raw(&out);
    }
    {
        // And one gone in the middle of the handshake.
        let mut c = Client::tcp(h.addr);
        let mut out = Vec::new();
        hf::encode_option(&mut out, NBD_OPT_GO, &[0, 0]);
        c.send_raw(&out[..out.len() - 1]);
    }
    let mut c = Client::tcp(h.addr);
    c.go("vol", true, &[]);
    c.request(Command::Read, 0, 1, 0, 4096);
    assert_eq!(c.reply().data, vec![0; 4096]);
    assert_eq!(vol.write_count(), 0, "a partial write reached the device");
}

#[test]
fn disc_answers_requests_in_flight_then_closes_and_flushes_written_data() {
    let dev = Arc::new(GatedDevice::new(64 * 1024, 0));
    let h = serve(one_export("g", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("g", true, &[]);
    c.write(1, 0, &[4; 4096], 0);
    dev.wait_entered();
    c.disc();
    // The server has read the DISC while the write is still held in the device.
    wait_for_event("NBD_CMD_DISC", &[("peer", &c.peer)]);
    dev.release();
    let r = c.reply();
    assert_eq!((r.cookie, r.error), (1, None));
    assert!(c.closed());
    dev.wait_flushed();
    assert_eq!(&dev.inner.contents()[..4096], &[4; 4096][..]);
}

#[test]
fn graceful_shutdown_finishes_requests_in_flight_and_flushes_written_devices() {
    let dev = Arc::new(GatedDevice::new(64 * 1024, 0));
    let h = serve(one_export("g", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("g", true, &[]);
    c.write(1, 0, &[8; 4096], 0);
    dev.wait_entered();
    let handle = h.server.shutdown_handle();
    let (tx, rx) = mpsc::channel();
    let server = h.server;
    let stopper = {
        let dev = dev.clone();
        std::thread::spawn(move || {
            let r = server.stop();
            // What the device had been through when the server said it had stopped.
            tx.send((r.is_ok(), dev.inner.flush_count())).unwrap();
        })
    };
    let asked = Instant::now();
    while !handle.is_triggered() {
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "the shutdown never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // New connections are refused or closed at once while shutting down.
    if let Ok(s) = TcpStream::connect(h.addr) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 32];
        assert_eq!((&s).read(&mut b).unwrap_or(0), 0);
    }
    // The server has reached the point where it waits for the connections, and this one's
    // write is still held in the device: it must not have stopped.
    wait_for_event(
        "waiting for connections to finish their requests in flight",
        &[
            ("tcp", &format!("{:?}", Some(h.addr))),
            ("connections", "1"),
        ],
    );
    assert!(
        rx.try_recv().is_err(),
        "the server stopped with a request in flight"
    );
    dev.release();
    let r = c.reply();
    assert_eq!((r.cookie, r.error), (1, None));
    let (stopped_ok, flushes_when_stopped) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(stopped_ok);
    stopper.join().unwrap();
    assert!(
        flushes_when_stopped >= 1,
        "the server stopped before flushing the written device"
    );
    assert!(c.closed());
}

#[test]
fn removed_exports_stay_served_to_connected_clients_but_not_to_new_ones() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![6; 4096]);
    let h = serve(exports.clone());
    let mut c = Client::tcp(h.addr);
    c.go("vol@snap", true, &[]);
    exports.remove("vol@snap");
    c.request(Command::Read, 0, 1, 0, 16);
    assert_eq!(c.reply().data, vec![6; 16]);
    let mut fresh = Client::tcp(h.addr);
    let r = fresh.option(
        NBD_OPT_GO,
        &hf::encode_info_request(&InfoRequest {
            name: "vol@snap".into(),
            requests: vec![],
        }),
    );
    assert_eq!(Client::last_type(&r), NBD_REP_ERR_UNKNOWN);
}

#[test]
fn a_unix_socket_serves_the_same_protocol() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let (exports, _, _) = volume_and_snapshot(4096, vec![2; 4096]);
    let running = Server::builder(exports)
        .unix(&path)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client::over(Box::new(s), "unix".into());
    c.go("vol@snap", true, &[]);
    c.request(Command::Read, 0, 1, 100, 10);
    assert_eq!(c.reply().data, vec![2; 10]);
    c.disc();
    running.stop().unwrap();
    assert!(!path.exists(), "the socket file was left behind");
}
