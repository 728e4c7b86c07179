//! TLS for the port and for the members' own traffic (SPEC §7): rustls
//! with the ring provider, TLS 1.2 and 1.3, certificates and keys from
//! PEM files read by rustls' own parser.
//!
//! Owns building the server and client configurations once, at start. It
//! must never do a handshake itself (the server and the cluster's network
//! do) or accept a certificate it could not verify.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

/// TLS 1.3 and 1.2, as SPEC §7 says, on both sides.
const PROTOCOLS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The server side and, for a cluster member, the client side of TLS.
#[derive(Clone)]
pub struct Tls {
    /// Wraps each accepted connection.
    pub acceptor: TlsAcceptor,
    /// What a member reaches its peers with: it trusts `--tls-ca`, or the
    /// system's roots without it. `None` on a single node, which reaches
    /// nothing.
    pub client: Option<Arc<ClientConfig>>,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {error}; give a readable PEM file", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("{} holds no PEM certificate; give --tls-cert the server's certificate chain, leaf first", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key; give --tls-key the key of the certificate in --tls-cert", path.display())]
    NoKey { path: PathBuf },
    #[error("{} holds no PEM certificate to trust; give --tls-ca the certificate of the authority that signed the members' certificates", path.display())]
    NoCa { path: PathBuf },
    #[error("cannot use --tls-cert {} with --tls-key {}: {error}; check that the key belongs to the certificate", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        error: rustls::Error,
    },
    #[error("cannot trust the certificates in {}: {error}; give --tls-ca a PEM file of CA certificates", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        error: rustls::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Setup(#[source] rustls::Error),
}

impl Tls {
    /// Reads the certificate chain and key the port serves, and for a
    /// cluster member what it trusts in its peers: `ca`, or the system's
    /// roots.
    pub fn load(
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
        cluster: bool,
    ) -> Result<Tls, TlsError> {
        let chain = certificates(cert, "the TLS certificate")?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert.to_owned(),
            });
        }
        let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                path: key.to_owned(),
            },
            other => TlsError::Read {
                what: "the TLS key",
                path: key.to_owned(),
                error: pem_io(other),
            },
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(PROTOCOLS)
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|error| TlsError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
                error,
            })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let client = if cluster {
            Some(Arc::new(client_config(provider, ca)?))
        } else {
            None
        };
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            client,
        })
    }
}

/// What a member trusts in its peers: the certificates in `ca`, or the
/// system's roots.
fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    ca: Option<&Path>,
) -> Result<ClientConfig, TlsError> {
    let roots = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let cas = certificates(path, "the CA certificates")?;
            if cas.is_empty() {
                return Err(TlsError::NoCa {
                    path: path.to_owned(),
                });
            }
            for ca in cas {
                roots.add(ca).map_err(|error| TlsError::BadCa {
                    path: path.to_owned(),
                    error,
                })?;
            }
            roots
        }
        None => system_roots(),
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOLS)
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Every certificate in a PEM file, in order.
fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(pem_io(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(pem_io(e)))
}

/// The system's trusted roots. Ones that cannot be read or parsed are
/// skipped, as every TLS client does; an empty store only means that
/// members must be given `--tls-ca`, which their handshakes' errors say.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!("skipping a system root certificate: {error}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no system root certificates found; members will trust no certificate without --tls-ca"
        );
    }
    roots
}

/// A PEM error as the I/O error it nearly always is, or as invalid data.
fn pem_io(e: rustls::pki_types::pem::Error) -> io::Error {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}
