//! TLS for `serve`: the credentials from `--tls-cert`, `--tls-key` and `--tls-ca`, their reload
//! on SIGHUP, and the warning for a server exposed without them.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use snapvol_nbd::{TlsAcceptor, TlsCredentials, TlsFiles};

/// The TLS credentials a server uses and the files they come from.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Loads the files; any problem with them stops the server from starting.
    pub fn load(files: TlsFiles) -> Result<Self> {
        let credentials = TlsCredentials::load(&files).context("TLS credentials")?;
        tracing::info!(
            cert = %files.cert.display(),
            client_certificates = credentials.requires_client_certificates(),
            "TLS required on every NBD connection"
        );
        Ok(Tls {
            files,
            acceptor: TlsAcceptor::new(credentials),
        })
    }

    /// The acceptor to give the NBD server (a handle on the credentials [`reload`] replaces).
    ///
    /// [`reload`]: Tls::reload
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the files again (on SIGHUP): new handshakes use what they hold now, sessions
    /// already established keep theirs. Files that cannot be used leave the credentials in use
    /// as they are, with an error in the log.
    pub fn reload(&self) {
        match TlsCredentials::load(&self.files) {
            Ok(credentials) => {
                self.acceptor.replace(credentials);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "reloaded the TLS certificate, key and CA: new connections use them"
                );
            }
            Err(e) => tracing::error!(
                error = %e,
                "cannot reload the TLS credentials: still using the ones loaded before"
            ),
        }
    }
}

/// Warns when clients beyond this host can reach a server that has no TLS: NBD has no
/// authentication of its own, so whoever reaches the port can read and write every volume.
pub fn warn_if_exposed(addr: SocketAddr, tls: bool) {
    if !tls && !addr.ip().is_loopback() {
        tracing::warn!(
            listen = %addr,
            "listening on a non-loopback address without TLS: anyone who can reach it can read \
             and overwrite every volume; use --tls-cert and --tls-key (and --tls-ca), or a \
             loopback address"
        );
    }
}
