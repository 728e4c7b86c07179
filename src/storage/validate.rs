//! The rules a key and a value must follow, in one place.
//!
//! The HTTP layer, the data-file reader and `kvs restore` all call these
//! functions, so a pair the server would refuse can never get into the data
//! file by another door. This module must never do I/O or know about HTTP
//! status codes: it only says what is wrong, in words a person can act on.

use thiserror::Error;

/// The longest key, in bytes. Long enough for any path-like or UUID-based
/// naming scheme, short enough that keys never dominate memory.
pub const MAX_KEY_BYTES: usize = 1024;

/// The default value limit of `kvs serve` and `kvs restore`, in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a key was refused. The messages are the HTTP API's error bodies
/// (without the trailing newline), so they must stay byte-for-byte as the
/// SPEC gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("key cannot be empty")]
    Empty,
    #[error("key contains invalid characters")]
    InvalidCharacters,
    #[error("key too long")]
    TooLong,
}

/// Why a value was refused; the messages are the HTTP API's error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("value cannot be empty")]
    Empty,
    #[error("value must be valid UTF-8")]
    NotUtf8,
    #[error("value too large")]
    TooLarge,
}

/// Checks a key that has already been percent-decoded.
///
/// Characters are checked before length so that a long key with a bad
/// character reports the character, which is the more useful fix.
pub fn key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if !key.bytes().all(is_key_byte) {
        return Err(KeyError::InvalidCharacters);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong);
    }
    Ok(())
}

/// Checks a value's text. Size limits are applied by the caller while it
/// reads the bytes (see [`value_bytes`]), because by the time a whole value
/// is in memory the damage a huge one does is already done.
pub fn value(value: &str) -> Result<(), ValueError> {
    if value.is_empty() {
        return Err(ValueError::Empty);
    }
    Ok(())
}

/// Checks a value that arrived as raw bytes and returns it as text.
pub fn value_bytes(bytes: &[u8]) -> Result<&str, ValueError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ValueError::NotUtf8)?;
    value(text)?;
    Ok(text)
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key("user:42_a.b-C"), Ok(()));
        assert_eq!(key(""), Err(KeyError::Empty));
        assert_eq!(key("a b"), Err(KeyError::InvalidCharacters));
        assert_eq!(key("a/b"), Err(KeyError::InvalidCharacters));
        assert_eq!(key("é"), Err(KeyError::InvalidCharacters));
        assert_eq!(key(&"k".repeat(MAX_KEY_BYTES)), Ok(()));
        assert_eq!(key(&"k".repeat(MAX_KEY_BYTES + 1)), Err(KeyError::TooLong));
        let long_and_bad = format!("{} ", "k".repeat(MAX_KEY_BYTES + 1));
        assert_eq!(key(&long_and_bad), Err(KeyError::InvalidCharacters));
    }

    #[test]
    fn values() {
        assert_eq!(value_bytes(b"x"), Ok("x"));
        assert_eq!(value_bytes(" \t\n🦀".as_bytes()), Ok(" \t\n🦀"));
        assert_eq!(value_bytes(b""), Err(ValueError::Empty));
        assert_eq!(value_bytes(&[0xff, 0xfe]), Err(ValueError::NotUtf8));
    }
}
