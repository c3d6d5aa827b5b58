//! TLS credentials: a server certificate and key, and optionally the CA that client
//! certificates must chain to, read from PEM files as qemu-nbd and nbdkit read theirs.
//!
//! A server given a [`TlsAcceptor`] requires TLS (the spec's FORCEDTLS mode, proto.md "TLS
//! support"): every option but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` is refused with
//! `NBD_REP_ERR_TLS_REQD` until the client has upgraded, so transmission never starts in plain
//! text. The acceptor's credentials can be replaced while the server runs
//! ([`TlsAcceptor::replace`]): handshakes from then on use the new ones, and sessions already
//! established keep theirs.
//!
//! Pre-shared keys (qemu's `tls-creds-psk`, nbdkit's `--tls-psk`) are not offered: rustls has
//! no external PSKs in TLS 1.3, and refuses TLS 1.2's PSK cipher suites (those without forward
//! secrecy on principle).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::ring;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS credentials cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not PEM, or holds no item of the kind it is there for.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the credentials (a key that does not match the certificate, an
    /// unsupported key type, a CA certificate it cannot use).
    #[error("{what}: {source}")]
    Rejected {
        /// What was being set up.
        what: String,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// Where a server's credentials are: the files named by `--tls-cert`, `--tls-key` and
/// `--tls-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Credentials ready for TLS handshakes.
#[derive(Clone)]
pub struct TlsCredentials {
    config: Arc<ServerConfig>,
    client_auth: bool,
}

impl fmt::Debug for TlsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCredentials")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, what: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(
            path,
            "no certificate in it (expected a '-----BEGIN CERTIFICATE-----' block)",
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem_error(
            path,
            "no private key in it (expected a '-----BEGIN PRIVATE KEY-----', \
             'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block)",
        ),
        other => pem_error(path, other),
    })
}

impl TlsCredentials {
    /// Reads and checks the files: the certificate chain, a key that matches its first
    /// certificate, and the client CA if any.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let chain = certificates(&files.cert)?;
        let key = private_key(&files.key)?;
        let client_ca = files
            .client_ca
            .as_deref()
            .map(|p| certificates(p).map(|c| (p, c)))
            .transpose()?;
        let provider = Arc::new(ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            // TLS 1.3 and 1.2: proto.md "TLS versions" requires 1.2 and recommends later ones.
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rejected {
                what: "TLS protocol versions".into(),
                source,
            })?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some((path, cas)) => {
                let mut roots = RootCertStore::empty();
                for ca in cas {
                    roots.add(ca).map_err(|source| TlsError::Rejected {
                        what: format!("the CA certificate in {}", path.display()),
                        source,
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| pem_error(path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::Rejected {
                what: format!(
                    "the certificate {} with the key {}",
                    files.cert.display(),
                    files.key.display()
                ),
                source,
            })?;
        Ok(TlsCredentials {
            config: Arc::new(config),
            client_auth: files.client_ca.is_some(),
        })
    }

    /// True when clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_auth
    }
}

/// The credentials a server hands to each new TLS session. Cloning gives another handle on the
/// same credentials, so that one kept aside can [`replace`](TlsAcceptor::replace) them while
/// the server runs.
#[derive(Clone)]
pub struct TlsAcceptor {
    current: Arc<RwLock<TlsCredentials>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsAcceptor")
            .field(&*self.current.read())
            .finish()
    }
}

impl TlsAcceptor {
    /// An acceptor handing out `credentials`.
    pub fn new(credentials: TlsCredentials) -> Self {
        TlsAcceptor {
            current: Arc::new(RwLock::new(credentials)),
        }
    }

    /// From now on, handshakes use `credentials`; established sessions are not affected.
    pub fn replace(&self, credentials: TlsCredentials) {
        *self.current.write() = credentials;
    }

    /// The configuration for a handshake starting now.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current.read().config.clone()
    }
}
