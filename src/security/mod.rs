//! Who may talk to a server, and over what (SPEC §7): the bearer token,
//! TLS, and the protected-mode check that refuses to expose a server
//! without a token.
//!
//! Owns reading and checking the token file and the PEM files at start,
//! before anything in the data directory is touched, so a refused start
//! changes nothing. It must never log, print or format the token: the
//! only way out of a [`token::Token`] is a constant-time comparison and
//! the header a member sends its peers.

pub mod tls;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;

use thiserror::Error;

use crate::cli::ServeArgs;
use tls::{Tls, TlsError};
use token::{Token, TokenError};

/// What `kvs serve` enforces on every connection and request.
#[derive(Clone, Default)]
pub struct Security {
    /// Every request but `GET|HEAD /health` must carry it; `None`: no
    /// authentication (loopback, or `--insecure`).
    pub token: Option<Arc<Token>>,
    /// The port speaks HTTPS only, and members reach each other over it.
    pub tls: Option<Tls>,
}

#[derive(Debug, Error)]
pub enum SecurityError {
    #[error(
        "refusing to serve on {ip} without a token, as anyone who can reach it could read, change and clear every key; give --token-file FILE, or --insecure (KVS_INSECURE=1) to serve unprotected"
    )]
    Unprotected { ip: IpAddr },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("token", &self.token.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Makes ring rustls' process-wide provider, for whatever builds a TLS
/// configuration without naming one (the members' HTTP client does, even
/// when it speaks plain HTTP). Installing it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Security {
    /// Reads and checks what the flags name, and applies protected mode to
    /// the address the server will listen on.
    /// Only a cluster member (`cluster`) needs what its peers are trusted
    /// by.
    pub fn load(
        args: &ServeArgs,
        listen: IpAddr,
        cluster: bool,
    ) -> Result<Security, SecurityError> {
        // `::ffff:127.0.0.1` is loopback too.
        if args.token_file.is_none() && !args.insecure && !listen.to_canonical().is_loopback() {
            return Err(SecurityError::Unprotected { ip: listen });
        }
        let token = match &args.token_file {
            Some(path) => Some(Arc::new(Token::load(path)?)),
            None => None,
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key, args.tls_ca.as_deref(), cluster)?),
            // clap requires both or neither.
            _ => None,
        };
        Ok(Security { token, tls })
    }

    /// `https` when the port speaks TLS, else `http`: what redirects and
    /// members' addresses begin with.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}
