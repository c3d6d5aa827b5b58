//! `serve --tls-cert --tls-key [--tls-ca]` with the real clients: nbdinfo, nbdcopy and fio over
//! `nbds://`, qemu-io and qemu-img with `tls-creds-x509`; the clients TLS must turn away, each
//! while another TLS client goes on being served; SIGHUP reloading the certificates; the
//! warning for a server exposed without TLS. Certificates come from `scripts/tls-certs.sh`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use super::*;

/// NBD_REP_ERR_TLS_REQD.
const TLS_REQD: u32 = (1 << 31) | 5;

/// `qemu-io` or `qemu-img info` with the x509 credentials of the client directory `client`
/// as object `t0`, taking the image as `--image-opts` (see [`image_opts`]).
fn qemu_tls(tool_name: &str, pki: &Pki, client: &str) -> Command {
    let mut cmd = tool(tool_name);
    if tool_name == "qemu-img" {
        cmd.arg("info");
    }
    cmd.arg("--object")
        .arg(format!(
            "tls-creds-x509,id=t0,dir={},endpoint=client",
            pki.path(client).display()
        ))
        .arg("--image-opts");
    cmd
}

/// The image options of export `export` on `port` through the credentials `t0`.
fn image_opts(port: u16, export: &str) -> String {
    format!("driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=t0")
}

/// Runs qemu-io `commands` over TLS on `export` and returns what it printed; it must succeed
/// and report no failure.
fn qemu_io_tls(pki: &Pki, client: &str, port: u16, export: &str, commands: &[&str]) -> String {
    let mut cmd = qemu_tls("qemu-io", pki, client);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = run_ok(cmd.arg(image_opts(port, export)));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !all.to_lowercase().contains("fail"),
        "qemu-io {commands:?} over TLS:\n{all}"
    );
    all
}

/// True when `qemu-img info` over TLS with the client directory `client` gets in.
fn qemu_img_gets_in(pki: &Pki, client: &str, port: u16) -> bool {
    let mut cmd = qemu_tls("qemu-img", pki, client);
    output_within(cmd.arg(image_opts(port, "vol")), LIMIT)
        .status
        .success()
}

/// fio over `nbds://` with the certificates of the client directory `client`. fio's nbd engine
/// takes no `tls-certificates=DIR` in its URI (libnbd forbids local files unless the program
/// allows them), so libnbd finds them in `$HOME/.pki/libnbd`, which it reads only when not
/// run as root: as root, fio runs as nobody.
fn fio_tls(pki: &Pki, client: &str, port: u16, extra: &[&str]) -> serde_json::Value {
    let home = pki.libnbd_home(client);
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| text(&o.stdout).trim() == "0");
    let mut cmd = if as_root {
        let mut c = tool("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(require("fio"));
        c
    } else {
        tool("fio")
    };
    cmd.current_dir(home.path())
        .env("HOME", home.path())
        .args([
            "--name=tls",
            "--ioengine=nbd",
            &format!("--uri=nbds://127.0.0.1:{port}/vol"),
            "--rw=randwrite",
            "--bsrange=4k-256k",
            "--iodepth=16",
            "--size=32M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .args(extra);
    let out = run_ok(&mut cmd);
    let v = fio_json(&out);
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{v}");
    assert_eq!(job["write"]["io_bytes"], 32 * MIB, "{v}");
    v
}

#[test]
fn nbdinfo_nbdcopy_qemu_and_fio_read_and_write_through_tls_with_client_certificates() {
    let env = Env::new();
    env.create("vol", "64M");
    let pki = Pki::new(&env);
    let server = serve_tls(&env, &pki, "server", Some("ca"));
    let port = server.port();

    let out = run_ok(
        tool("nbdinfo")
            .arg("--json")
            .arg(pki.nbds(port, "vol", "client")),
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nbdinfo JSON");
    assert_eq!(info["TLS"], true, "{info}");
    assert_eq!(info["exports"][0]["export-size"], 64 * MIB, "{info}");

    let written = qemu_io_tls(
        &pki,
        "client",
        port,
        "vol",
        &["write -P 0xa5 0 1M", "aio_write -P 0x5a 1M 3M", "aio_flush"],
    );
    assert!(
        written.contains("wrote 1048576/1048576 bytes at offset 0"),
        "{written}"
    );
    qemu_io_tls(
        &pki,
        "client",
        port,
        "vol",
        &["read -P 0xa5 0 1M", "read -P 0x5a 1M 3M"],
    );

    let copy = env.path("copy.img");
    nbdcopy(&pki.nbds(port, "vol", "client"), &copy);
    let image = std::fs::read(&copy).expect("the copy");
    assert_eq!(image.len() as u64, 64 * MIB);
    assert!(image[..MIB as usize].iter().all(|&b| b == 0xa5));
    assert!(image[MIB as usize..4 * MIB as usize]
        .iter()
        .all(|&b| b == 0x5a));

    fio_tls(&pki, "client", port, &["--offset=8M"]);
    fio_tls(&pki, "client", port, &["--offset=8M", "--verify_only=1"]);

    // The control socket stays a Unix socket only the server's user can use.
    let mode = std::fs::metadata(env.store().join("control.sock"))
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
    server.stop();
}

#[test]
fn clients_turned_away_by_tls_fail_cleanly_while_another_tls_client_is_served() {
    let env = Env::new();
    env.create("vol", "16M");
    let pki = Pki::new(&env);
    pki.make(&["ca", "other-ca", "another CA"]);
    // Trusts the server, but holds a certificate from another CA.
    pki.make(&["client", "other", "other-ca"]);
    std::fs::copy(pki.path("ca/ca-cert.pem"), pki.path("other/ca-cert.pem")).expect("copy");
    // Trusts the server, and has no certificate at all.
    std::fs::create_dir(pki.path("anonymous")).expect("mkdir");
    std::fs::copy(
        pki.path("ca/ca-cert.pem"),
        pki.path("anonymous/ca-cert.pem"),
    )
    .expect("copy");
    let server = serve_tls(&env, &pki, "server", Some("ca"));
    let port = server.port();

    let mut session =
        Interactive::spawn(python_client("tls_session.py").arg(pki.nbds(port, "vol", "client")));
    session.wait_for("connected tls=True");
    let mut round = 0;
    let mut still_served = |session: &mut Interactive| {
        round += 1;
        session.send(&round.to_string());
        session.wait_for(&format!("round trip {round} ok"));
    };
    still_served(&mut session);

    // A plain client never gets past the handshake: TLS required for every option, and
    // EXPORT_NAME (which cannot be answered with an error) ends the connection at once.
    let plain = run_fails(tool("nbdinfo").arg(server.uri("vol")));
    assert!(!text(&plain.stdout).contains("export-size"), "{plain:?}");
    let qemu = run_fails(tool("qemu-img").args(["info", &server.uri("vol")]));
    assert!(
        text(&qemu.stderr).contains("TLS negotiation required"),
        "{}",
        text(&qemu.stderr)
    );
    assert_eq!(RawNbd::connect(port, "vol").map(|_| ()), Err(TLS_REQD));
    assert_eq!(export_name_answer(port, "vol"), Vec::<u8>::new());
    still_served(&mut session);

    for client in ["other", "anonymous"] {
        let refused = run_fails(tool("nbdinfo").arg(pki.nbds(port, "vol", client)));
        assert!(
            text(&refused.stderr).contains("TLS"),
            "{client}: {}",
            text(&refused.stderr)
        );
        assert!(
            !qemu_img_gets_in(&pki, client, port),
            "{client}: qemu-img got in"
        );
        still_served(&mut session);
    }
    // The server refused three: nbdinfo with either directory, and qemu-img without a
    // certificate. qemu-img with the other CA's certificate checks it against its own
    // ca-cert.pem and gives up before connecting ("Our own certificate ... failed
    // validation"). GnuTLS clients send no certificate when theirs is not from a CA the server
    // names, so the refusals read "peer sent no certificates"; a client that sent one anyway
    // would be refused for its issuer. (A client may exit before its refusal is logged.)
    wait_until("the server logs 3 refused clients", || {
        let log = server.log();
        log.matches("TLS handshake failed: peer sent no certificates")
            .count()
            + log
                .matches("TLS handshake failed: invalid peer certificate: UnknownIssuer")
                .count()
            == 3
    });
    let (status, out) = session.finish();
    assert!(status.success() && out.contains("closed"), "{out}");
    server.stop();
}

#[test]
fn a_server_certificate_for_another_host_fails_the_client_and_not_the_server() {
    let env = Env::new();
    env.create("vol", "16M");
    let pki = Pki::new(&env);
    pki.make(&[
        "server",
        "elsewhere",
        "ca",
        "DNS:storage.example,IP:192.0.2.1",
    ]);
    let server = serve_tls(&env, &pki, "elsewhere", None);
    let port = server.port();
    let refused = run_fails(tool("nbdinfo").arg(pki.nbds(port, "vol", "client")));
    assert!(
        text(&refused.stderr).contains("certificate"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        !qemu_img_gets_in(&pki, "client", port),
        "qemu-img accepted the certificate"
    );
    // The clients gave up; the server did not.
    let mut server = server;
    assert!(server.is_running());
    assert!(
        server.log().contains("TLS handshake failed"),
        "{}",
        server.log()
    );
    server.stop();
}

#[test]
fn sighup_reloads_the_certificates_for_new_connections_and_open_ones_carry_on() {
    let env = Env::new();
    env.create("vol", "16M");
    let pki = Pki::new(&env);
    pki.make(&["ca", "new-ca", "the new CA"]);
    pki.make(&["server", "new-server", "new-ca", "IP:127.0.0.1"]);
    pki.make(&["client", "new-client", "new-ca"]);
    // The files the server reads, replaced under it.
    let live = pki.path("live");
    let install = |server: &str, ca: &str| {
        std::fs::create_dir_all(&live).expect("mkdir");
        for (from, to) in [
            (format!("{server}/server-cert.pem"), "server-cert.pem"),
            (format!("{server}/server-key.pem"), "server-key.pem"),
            (format!("{ca}/ca-cert.pem"), "ca-cert.pem"),
        ] {
            std::fs::copy(pki.path(&from), live.join(to)).expect("install a certificate");
        }
    };
    install("server", "ca");
    let mut server = serve_tls(&env, &pki, "live", Some("live"));
    let port = server.port();

    let mut session =
        Interactive::spawn(python_client("tls_session.py").arg(pki.nbds(port, "vol", "client")));
    session.wait_for("connected tls=True");
    session.send("1");
    session.wait_for("round trip 1 ok");

    install("new-server", "new-ca");
    let reloads = |log: &str| log.matches("reloaded the TLS certificate").count();
    signal(server.pid(), libc::SIGHUP);
    wait_until("the server logs the reload", || reloads(&server.log()) == 1);

    // The connection opened before goes on, with the credentials it started with.
    session.send("2");
    session.wait_for("round trip 2 ok");
    // New connections get the new certificate: only clients of the new CA get in.
    run_ok(tool("nbdinfo").arg(pki.nbds(port, "vol", "new-client")));
    run_fails(tool("nbdinfo").arg(pki.nbds(port, "vol", "client")));

    // A file that cannot be used on reload keeps the credentials in use.
    std::fs::write(live.join("server-cert.pem"), "not a certificate\n").expect("write");
    signal(server.pid(), libc::SIGHUP);
    wait_until("the server logs the failed reload", || {
        server.log().contains("cannot reload the TLS credentials")
    });
    assert!(server.is_running());
    run_ok(tool("nbdinfo").arg(pki.nbds(port, "vol", "new-client")));
    session.send("3");
    session.wait_for("round trip 3 ok");
    let (status, out) = session.finish();
    assert!(status.success() && out.contains("closed"), "{out}");
    server.stop();
}

#[test]
fn listening_beyond_loopback_without_tls_logs_a_warning_and_with_tls_does_not() {
    let env = Env::new();
    env.create("vol", "16M");
    let warning = "listening on a non-loopback address without TLS";
    let server = Server::start_on(&env, "0.0.0.0", &[], "exposed.log");
    assert!(server.log().contains(warning), "{}", server.log());
    server.stop();
    let local = env.serve_logged(&[], "loopback.log");
    assert!(!local.log().contains(warning), "{}", local.log());
    local.stop();
    let pki = Pki::new(&env);
    let args = pki.serve_args("server", None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tls = Server::start_on(&env, "0.0.0.0", &args, "tls.log");
    assert!(!tls.log().contains(warning), "{}", tls.log());
    tls.stop();
}

/// `snapvol serve` with the certificate of the server directory `server`, requiring client
/// certificates of the CA directory `client_ca` if any.
fn serve_tls(env: &Env, pki: &Pki, server: &str, client_ca: Option<&str>) -> Server {
    let args = pki.serve_args(server, client_ca);
    env.serve_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Waits (at most 60 s) until `cond` holds.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
