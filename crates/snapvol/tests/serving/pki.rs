//! Certificates for the TLS tests, made by the project's `scripts/tls-certs.sh` (openssl) in
//! the test's directory, in the layout qemu and libnbd read: a directory per party holding
//! `ca-cert.pem` and its own certificate and key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::server::Env;
use super::tools::{require, run_ok};

/// The certificate directories of one test, under `pki/` in its directory.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA `ca`, a server certificate for 127.0.0.1 and localhost signed by it in `server/`,
    /// and a client certificate signed by it in `client/`.
    pub fn new(env: &Env) -> Self {
        let pki = Pki {
            dir: env.path("pki"),
        };
        pki.make(&["ca", "ca"]);
        pki.make(&["server", "server", "ca", "IP:127.0.0.1,DNS:localhost"]);
        pki.make(&["client", "client", "ca"]);
        pki
    }

    /// Runs `scripts/tls-certs.sh ARGS` in the `pki/` directory.
    pub fn make(&self, args: &[&str]) {
        require("openssl");
        fs::create_dir_all(&self.dir).expect("pki directory");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tls-certs.sh");
        run_ok(Command::new(script).current_dir(&self.dir).args(args));
    }

    /// `pki/NAME`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `--tls-cert` and `--tls-key` of the server directory `server`, and `--tls-ca` of the
    /// CA directory `client_ca` if any.
    pub fn serve_args(&self, server: &str, client_ca: Option<&str>) -> Vec<String> {
        let file = |f: &str| self.path(server).join(f).display().to_string();
        let mut args = vec![
            "--tls-cert".into(),
            file("server-cert.pem"),
            "--tls-key".into(),
            file("server-key.pem"),
        ];
        if let Some(ca) = client_ca {
            args.push("--tls-ca".into());
            args.push(self.path(ca).join("ca-cert.pem").display().to_string());
        }
        args
    }

    /// `nbds://127.0.0.1:PORT/EXPORT?tls-certificates=DIR` for the client directory `client`.
    pub fn nbds(&self, port: u16, export: &str, client: &str) -> String {
        format!(
            "nbds://127.0.0.1:{port}/{export}?tls-certificates={}",
            self.path(client).display()
        )
    }

    /// A copy of the client directory `client` as `HOME/.pki/libnbd` in a new directory HOME
    /// that every user can read, for a client that takes no certificate directory and runs as
    /// another user (fio: libnbd looks there when not run as root). Test keys only.
    pub fn libnbd_home(&self, client: &str) -> TempDir {
        let home = tempfile::tempdir().expect("temporary directory");
        let certs = home.path().join(".pki/libnbd");
        fs::create_dir_all(&certs).expect("libnbd certificate directory");
        for f in ["ca-cert.pem", "client-cert.pem", "client-key.pem"] {
            fs::copy(self.path(client).join(f), certs.join(f)).expect("copy a certificate");
        }
        for p in [home.path(), &home.path().join(".pki"), &certs] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for f in fs::read_dir(&certs).expect("read_dir") {
            let f = f.expect("directory entry").path();
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        home
    }
}
