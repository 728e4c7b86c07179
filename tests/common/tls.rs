//! TLS for the tests: a CA and a server certificate for 127.0.0.1 made
//! with rcgen, and a blocking HTTPS client on rustls that trusts a given
//! CA file and shows responses as the plain client does.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::Response;

/// PEM files written by [`make_certs`].
pub struct Certs {
    /// The CA that signed `cert`.
    pub ca: PathBuf,
    /// A certificate for 127.0.0.1 and localhost, signed by `ca`.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Another CA, which signed nothing the server holds.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("CA certificate").pem();
    (params, key, pem)
}

/// Writes a CA, a server certificate signed by it and its key, and an
/// unrelated CA, into `dir`.
pub fn make_certs(dir: &Path) -> Certs {
    let (params, key, ca_pem) = ca("kvs test CA");
    let issuer = Issuer::new(params, key);
    let leaf_key = KeyPair::generate().expect("server key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params")
        .signed_by(&leaf_key, &issuer)
        .expect("server certificate");
    let (_, _, other_pem) = ca("some other CA");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    Certs {
        ca: write("ca.pem", &ca_pem),
        cert: write("cert.pem", &leaf.pem()),
        key: write("key.pem", &leaf_key.serialize_pem()),
        other_ca: write("other-ca.pem", &other_pem),
    }
}

/// Sends one request over HTTPS to `addr`, trusting only the certificates
/// in `ca`, with extra header lines, and reads the whole response.
pub fn https_request(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(connection, socket);
    tls.write_all(&super::raw_request(addr, method, path, headers, body))?;
    tls.flush()?;
    super::read_response(&mut tls, method == "HEAD")
}
