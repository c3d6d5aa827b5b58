//! A server that requires TLS (proto.md "FORCEDTLS mode"), driven by the test client over
//! rustls: what a plain client gets, the upgrade, client certificates, replies while the
//! reader waits, and credentials replaced while sessions run.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use snapvol_nbd::handshake::frame as hf;
use snapvol_nbd::proto::*;
use snapvol_nbd::transmission::frame::Command;
use snapvol_nbd::{MemDevice, TlsAcceptor, TlsCredentials, TlsFiles};

use crate::client::{one_export, Client};
use crate::common::{serve_with, wait_for_event, Harness, Pki};
use crate::connections::second_read_overtakes_a_gated_first;
use crate::devices::GatedDevice;
use crate::limits::closed_within;

fn credentials(pki: &Pki, server: &str, client_ca: Option<&str>) -> TlsCredentials {
    TlsCredentials::load(&TlsFiles {
        cert: pki.path(&format!("{server}/server-cert.pem")),
        key: pki.path(&format!("{server}/server-key.pem")),
        client_ca: client_ca.map(|ca| pki.path(&format!("{ca}/ca-cert.pem"))),
    })
    .unwrap()
}

/// A client configuration trusting the CA in `trust` and presenting the certificate in
/// `identity` (a client directory of [`Pki`]), if any.
fn client_config(pki: &Pki, trust: &str, identity: Option<&str>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.path(&format!("{trust}/ca-cert.pem"))).unwrap())
        .unwrap();
    let builder = ClientConfig::builder().with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some(dir) => builder
            .with_client_auth_cert(
                vec![
                    CertificateDer::from_pem_file(pki.path(&format!("{dir}/client-cert.pem")))
                        .unwrap(),
                ],
                PrivateKeyDer::from_pem_file(pki.path(&format!("{dir}/client-key.pem"))).unwrap(),
            )
            .unwrap(),
    })
}

fn serve_tls(dev: Arc<dyn snapvol_nbd::BlockDevice>, acceptor: TlsAcceptor) -> Harness {
    serve_with(one_export("vol", dev), |b| b.tls(acceptor))
}

/// A 1 MiB export behind TLS without client certificates.
fn plain_memory_server(pki: &Pki) -> Harness {
    serve_tls(
        Arc::new(MemDevice::new(1 << 20)),
        TlsAcceptor::new(credentials(pki, "server", None)),
    )
}

/// A client that went through STARTTLS and a TLS handshake with `config`.
fn tls_client(h: &Harness, config: Arc<ClientConfig>) -> Client {
    let mut c = Client::tcp(h.addr);
    c.starttls(config).expect("the TLS handshake");
    c
}

#[test]
fn a_plain_client_gets_tls_required_for_every_option_and_no_export() {
    let pki = Pki::new();
    let h = plain_memory_server(&pki);
    let mut c = Client::tcp(h.addr);
    for option in [
        NBD_OPT_LIST,
        NBD_OPT_STRUCTURED_REPLY,
        NBD_OPT_GO,
        NBD_OPT_INFO,
    ] {
        let data = match option {
            NBD_OPT_GO | NBD_OPT_INFO => hf::encode_info_request(&hf::InfoRequest {
                name: "vol".into(),
                requests: vec![],
            }),
            _ => Vec::new(),
        };
        let r = c.option(option, &data);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].reply_type, NBD_REP_ERR_TLS_REQD, "option {option}");
    }
    // EXPORT_NAME cannot be refused with an error: the connection ends, with no export data.
    let mut out = Vec::new();
    hf::encode_option(&mut out, NBD_OPT_EXPORT_NAME, b"vol");
    c.send_raw(&out);
    assert!(c.closed(), "the server answered EXPORT_NAME without TLS");
}

#[test]
fn through_tls_the_handshake_and_transmission_work_as_usual() {
    let pki = Pki::new();
    let dev = Arc::new(MemDevice::new(1 << 20));
    let h = serve_tls(
        dev.clone(),
        TlsAcceptor::new(credentials(&pki, "server", Some("ca"))),
    );
    let mut c = tls_client(&h, client_config(&pki, "ca", Some("client")));
    // A second STARTTLS is invalid; the session carries on.
    let r = c.option(NBD_OPT_STARTTLS, &[]);
    assert_eq!(Client::last_type(&r), NBD_REP_ERR_INVALID);
    let (size, _, _) = c.go("vol", true, &[]);
    assert_eq!(size, 1 << 20);
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    c.write(1, 4096, &data, NBD_CMD_FLAG_FUA);
    assert_eq!(c.reply().error, None);
    c.request(Command::Read, 0, 2, 4096, data.len() as u32);
    assert_eq!(c.reply().data, data);
    assert_eq!(&dev.contents()[4096..4096 + data.len()], &data[..]);
    c.disc();
    assert!(c.closed());
}

/// What broke in a first design: a reader blocked on the socket while holding the TLS
/// session's lock would keep every reply from being sent until the client sent another
/// request. Here the reader waits for a request that never comes while a reply is sent.
#[test]
fn a_reader_waiting_for_the_next_request_does_not_hold_up_replies() {
    let pki = Pki::new();
    let dev = Arc::new(GatedDevice::new(64 * 1024, 0));
    let h = serve_tls(
        dev.clone(),
        TlsAcceptor::new(credentials(&pki, "server", None)),
    );
    let mut c = tls_client(&h, client_config(&pki, "ca", None));
    c.go("vol", true, &[]);
    // The first reply is sent while the reader waits for a third request.
    second_read_overtakes_a_gated_first(&mut c, &dev);
    c.disc();
}

#[test]
fn pipelined_writes_and_reads_of_every_size_round_trip_through_tls() {
    let pki = Pki::new();
    let dev = Arc::new(MemDevice::new(16 << 20));
    let h = serve_tls(
        dev.clone(),
        TlsAcceptor::new(credentials(&pki, "server", None)),
    );
    let mut c = tls_client(&h, client_config(&pki, "ca", None));
    c.go("vol", false, &[]);
    // Sizes around TLS's 16 KiB records and rustls's 64 KiB buffer; 16 in flight, as qemu.
    let sizes = [1usize, 4095, 16384, 16385, 65536, 65537, 1 << 20, 3 << 20];
    let mut offset = 0u64;
    let mut expected = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        c.write(i as u64, offset, &data, 0);
        expected.push((offset, data));
        offset += len as u64;
    }
    for _ in &sizes {
        assert_eq!(c.reply().error, None);
    }
    for (i, (offset, data)) in expected.iter().enumerate() {
        c.request(Command::Read, 0, 100 + i as u64, *offset, data.len() as u32);
    }
    for _ in &expected {
        let r = c.reply();
        let (_, data) = &expected[(r.cookie - 100) as usize];
        assert!(r.data == *data, "read {} came back different", r.cookie);
    }
}

#[test]
fn client_certificates_from_another_ca_or_none_fail_the_handshake_and_others_are_served() {
    let pki = Pki::new();
    let h = serve_tls(
        Arc::new(MemDevice::new(1 << 20)),
        TlsAcceptor::new(credentials(&pki, "server", Some("ca"))),
    );
    let mut good = tls_client(&h, client_config(&pki, "ca", Some("client")));
    good.go("vol", false, &[]);

    for (identity, why) in [
        (None, "peer sent no certificates"),
        (Some("other"), "invalid peer certificate: UnknownIssuer"),
    ] {
        let mut c = Client::tcp(h.addr);
        let handshake = c.starttls(client_config(&pki, "ca", identity));
        // In TLS 1.3 the client finishes its handshake before the server has checked the
        // client's certificate: it learns of the refusal when it reads next.
        assert!(handshake.is_err() || c.ended(), "{identity:?} was served");
        wait_for_event(
            &format!("closing NBD connection during the handshake: TLS handshake failed: {why}"),
            &[("peer", &c.peer)],
        );
    }

    // The good client is still served.
    good.request(Command::Read, 0, 7, 0, 512);
    assert_eq!(good.reply().data, vec![0; 512]);
}

#[test]
fn a_server_certificate_for_another_name_fails_the_clients_handshake() {
    let pki = Pki::new();
    pki.make(&[
        "server",
        "elsewhere",
        "ca",
        "DNS:elsewhere.example,IP:192.0.2.1",
    ]);
    let h = serve_tls(
        Arc::new(MemDevice::new(1 << 20)),
        TlsAcceptor::new(credentials(&pki, "elsewhere", None)),
    );
    let mut c = Client::tcp(h.addr);
    let err = c.starttls(client_config(&pki, "ca", None)).unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

/// The handshake's deadline runs on through the TLS handshake: a client that is told to start
/// TLS and never does is closed when the time is up.
#[test]
fn a_client_that_never_starts_its_tls_handshake_is_closed_at_the_deadline() {
    let pki = Pki::new();
    let limit = Duration::from_millis(500);
    let acceptor = TlsAcceptor::new(credentials(&pki, "server", None));
    let h = serve_with(one_export("vol", Arc::new(MemDevice::new(4096))), |b| {
        b.tls(acceptor).handshake_timeout(limit)
    });
    let s = TcpStream::connect(h.addr).unwrap();
    let started = Instant::now();
    let mut c = Client::over(Box::new(s.try_clone().unwrap()), "silent".into());
    let r = c.option(NBD_OPT_STARTTLS, &[]);
    assert_eq!(Client::last_type(&r), NBD_REP_ACK);
    // A bound on a hang, not a measurement.
    assert!(closed_within(&s, Duration::from_secs(20)));
    assert!(started.elapsed() >= limit);
}

#[test]
fn plain_text_sent_after_starttls_before_the_reply_is_not_taken_as_tls() {
    let pki = Pki::new();
    let h = plain_memory_server(&pki);
    let mut c = Client::tcp(h.addr);
    let peer = c.peer.clone();
    // STARTTLS and, in the same write, an option an attacker injected in plain text.
    let mut out = Vec::new();
    hf::encode_option(&mut out, NBD_OPT_STARTTLS, b"");
    hf::encode_option(&mut out, NBD_OPT_LIST, b"");
    c.send_raw(&out);
    wait_for_event(
        "closing NBD connection during the handshake: the client sent data after NBD_OPT_STARTTLS without waiting for the reply",
        &[("peer", &peer)],
    );
}

#[test]
fn replaced_credentials_serve_new_handshakes_while_open_sessions_carry_on() {
    let pki = Pki::new();
    pki.make(&["ca", "new-ca"]);
    pki.make(&["server", "new-server", "new-ca", "IP:127.0.0.1"]);
    let dev = Arc::new(MemDevice::new(1 << 20));
    let acceptor = TlsAcceptor::new(credentials(&pki, "server", None));
    let h = serve_tls(dev, acceptor.clone());
    let mut before = tls_client(&h, client_config(&pki, "ca", None));
    before.go("vol", false, &[]);

    acceptor.replace(credentials(&pki, "new-server", None));
    let mut after = tls_client(&h, client_config(&pki, "new-ca", None));
    after.go("vol", false, &[]);
    after.write(1, 0, &[5; 4096], 0);
    assert_eq!(after.reply().error, None);
    // The session opened before still works, with the old credentials.
    before.request(Command::Read, 0, 2, 0, 4096);
    assert_eq!(before.reply().data, vec![5; 4096]);
    // And a client trusting only the old CA no longer gets in.
    let mut old = Client::tcp(h.addr);
    assert!(old.starttls(client_config(&pki, "ca", None)).is_err());
}

#[test]
fn credentials_that_cannot_be_used_are_refused_with_the_file_named() {
    let pki = Pki::new();
    let files = |cert: &str, key: &str| TlsFiles {
        cert: pki.path(cert),
        key: pki.path(key),
        client_ca: None,
    };
    let err = |f: TlsFiles| TlsCredentials::load(&f).unwrap_err().to_string();
    let missing = err(files("nope.pem", "server/server-key.pem"));
    assert!(missing.contains("nope.pem"), "{missing}");
    let not_a_cert = err(files("server/server-key.pem", "server/server-key.pem"));
    assert!(not_a_cert.contains("no certificate"), "{not_a_cert}");
    let not_a_key = err(files("server/server-cert.pem", "server/server-cert.pem"));
    assert!(not_a_key.contains("no private key"), "{not_a_key}");
    let mismatch = err(files("server/server-cert.pem", "client/client-key.pem"));
    assert!(mismatch.contains("server-cert.pem"), "{mismatch}");
}
