//! The bearer token: read from its file with ssh's care, and compared in
//! constant time.
//!
//! Owns the secret. It must never let the token reach a log line, an
//! error or a debug dump: [`Token`]'s `Debug` prints nothing of it, errors
//! name the file and never its content, and the only ways out are
//! [`Token::authorizes`] and the header members send each other.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use reqwest::header::HeaderValue;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The shortest token accepted: 32 characters, as `openssl rand -hex 16`
/// gives, so that guessing is out of reach.
pub const MIN_TOKEN_LEN: usize = 32;

/// The token every request but `GET|HEAD /health` must carry.
pub struct Token {
    /// The file's content, surrounding whitespace trimmed.
    secret: Box<[u8]>,
    /// `Bearer TOKEN`, marked sensitive so that HTTP libraries never log
    /// it; what a member sends its peers.
    header: HeaderValue,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("cannot read --token-file {}: {error}; give it a file this user can read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("--token-file {} is not a regular file; give it a file holding the token", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "--token-file {} is open to group or others (mode {mode:03o}); run `chmod 600 {}` so only its owner can read it",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "--token-file {} is empty; put a token of at least {MIN_TOKEN_LEN} characters in it, for example with `openssl rand -hex 32`",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "the token in --token-file {} is {len} characters long; use at least {MIN_TOKEN_LEN}, for example from `openssl rand -hex 32`",
        path.display()
    )]
    TooShort { path: PathBuf, len: usize },
    #[error(
        "the token in --token-file {} holds characters an HTTP header cannot carry; use visible ASCII only, for example from `openssl rand -hex 32`",
        path.display()
    )]
    NotVisibleAscii { path: PathBuf },
}

/// More than any token needs: a token file is never read whole past this.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

impl Token {
    /// Reads the token from `path`, refusing a file that group or others
    /// can read (before reading it, as ssh does with a private key), and
    /// a token that is empty, short, or not visible ASCII.
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let read_error = |error| TokenError::Read {
            path: path.to_owned(),
            error,
        };
        // Checked on the open file, so the file read is the file checked.
        let file = fs::File::open(path).map_err(read_error)?;
        let metadata = file.metadata().map_err(read_error)?;
        if !metadata.is_file() {
            return Err(TokenError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let mut content = Vec::new();
        file.take(MAX_TOKEN_FILE)
            .read_to_end(&mut content)
            .map_err(read_error)?;
        Token::from_content(&content, path)
    }

    fn from_content(content: &[u8], path: &Path) -> Result<Token, TokenError> {
        let secret = content.trim_ascii();
        if secret.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        if !secret.iter().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotVisibleAscii {
                path: path.to_owned(),
            });
        }
        if secret.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort {
                path: path.to_owned(),
                len: secret.len(),
            });
        }
        let mut header = Vec::with_capacity(7 + secret.len());
        header.extend_from_slice(b"Bearer ");
        header.extend_from_slice(secret);
        let mut header =
            HeaderValue::from_bytes(&header).map_err(|_| TokenError::NotVisibleAscii {
                path: path.to_owned(),
            })?;
        header.set_sensitive(true);
        Ok(Token {
            secret: secret.into(),
            header,
        })
    }

    /// Whether an `Authorization` header value carries this token: the
    /// `Bearer` scheme (any case, as RFC 7235 has it) and the exact token.
    /// The token is compared in constant time, so how long a wrong guess
    /// takes says nothing of how much of it was right.
    pub fn authorizes(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, credentials)) = value.split_at_checked(7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"Bearer ") {
            return false;
        }
        // Different lengths compare unequal at once: that tells only the
        // length, which is no help in guessing the token.
        credentials.trim_ascii().ct_eq(&self.secret).into()
    }

    /// `Authorization: Bearer TOKEN` for requests to the other members.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token() -> Token {
        Token::from_content(format!("  {SECRET}\n").as_bytes(), Path::new("t")).unwrap()
    }

    #[test]
    fn authorizes_only_the_exact_token() {
        let token = token();
        assert!(token.authorizes(Some(format!("Bearer {SECRET}").as_bytes())));
        assert!(token.authorizes(Some(format!("bearer {SECRET}").as_bytes())));
        assert!(!token.authorizes(None));
        assert!(!token.authorizes(Some(SECRET.as_bytes())));
        assert!(!token.authorizes(Some(format!("Basic {SECRET}").as_bytes())));
        assert!(!token.authorizes(Some(format!("Bearer {}", &SECRET[..31]).as_bytes())));
        assert!(!token.authorizes(Some(format!("Bearer {SECRET}0").as_bytes())));
        assert!(!token.authorizes(Some(b"Bearer 0123456789abcdef0123456789abcdeF")));
        assert!(!token.authorizes(Some(b"Bearer")));
    }

    #[test]
    fn refuses_short_empty_and_unprintable_tokens() {
        let path = Path::new("t");
        assert!(matches!(
            Token::from_content(b" \n", path),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            Token::from_content(b"short", path),
            Err(TokenError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            Token::from_content(b"0123456789abcdef 0123456789abcdef", path),
            Err(TokenError::NotVisibleAscii { .. })
        ));
    }

    #[test]
    fn never_shows_the_secret() {
        let token = token();
        assert!(!format!("{token:?}").contains(SECRET));
        assert!(!format!("{:?}", token.header()).contains(SECRET));
    }
}
