//! Encryption at rest with SQLCipher: the key type, and the checks that a key is used
//! only where it really encrypts.
//!
//! With the `encryption` feature, sqlx's SQLite driver is built on the SQLCipher variant
//! of `libsqlite3-sys` (cargo unifies every SQLite user of the build on it), and a store
//! opened with a key is encrypted page by page, its WAL and shared-memory files included.
//! Without the feature, asking for a key is an error instead of a silently plain file.

use std::fmt;

use sqlx::SqliteConnection;
use sync_core::Error;

use crate::errors::storage;

/// A store's encryption key. Its `Debug` form never shows the key.
///
/// A raw key (32 bytes, from the platform's key store) opens a store at once; a
/// passphrase goes through SQLCipher's key derivation (PBKDF2, 256,000 rounds) on every
/// connection the store opens, which costs a noticeable fraction of a second.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    /// The value of `PRAGMA key`, quoted for SQL.
    pragma: String,
}

impl EncryptionKey {
    /// A raw 256-bit key.
    ///
    /// # Errors
    /// [`Error::EncryptionKey`] when `bytes` is not 32 bytes long.
    pub fn raw(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != 32 {
            return Err(Error::EncryptionKey { message: format!("a raw key is 32 bytes, not {}", bytes.len()) });
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { pragma: format!("\"x'{hex}'\"") })
    }

    /// A raw 256-bit key written as 64 hexadecimal digits.
    ///
    /// # Errors
    /// [`Error::EncryptionKey`] when `hex` is not 64 hexadecimal digits.
    pub fn raw_hex(hex: &str) -> Result<Self, Error> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::EncryptionKey { message: "a raw key in hex is 64 hexadecimal digits".into() });
        }
        Ok(Self { pragma: format!("\"x'{}'\"", hex.to_ascii_lowercase()) })
    }

    /// A passphrase (derived into a key by SQLCipher).
    ///
    /// # Errors
    /// [`Error::EncryptionKey`] when it is empty or holds a NUL character.
    pub fn passphrase(passphrase: &str) -> Result<Self, Error> {
        if passphrase.is_empty() || passphrase.contains('\0') {
            return Err(Error::EncryptionKey { message: "a passphrase is non-empty text without NUL".into() });
        }
        Ok(Self { pragma: format!("'{}'", passphrase.replace('\'', "''")) })
    }

    /// The value for `PRAGMA key` and `PRAGMA rekey`.
    pub(crate) fn pragma_value(&self) -> &str {
        &self.pragma
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// Whether this build's SQLite is SQLCipher (`PRAGMA cipher_version` answers).
pub(crate) async fn sqlcipher_linked(conn: &mut SqliteConnection) -> Result<bool, Error> {
    let version: Option<String> =
        sqlx::query_scalar("PRAGMA cipher_version").fetch_optional(&mut *conn).await.map_err(storage)?;
    Ok(version.is_some_and(|v| !v.is_empty()))
}

/// The error for a key asked of a build without SQLCipher: the file would be plain.
pub(crate) fn not_built_in() -> Error {
    Error::EncryptionKey {
        message: "this build has no SQLCipher: enable sync-sqlite's `encryption` feature (the store was not opened, \
                  so nothing was written in plain text)"
            .into(),
    }
}

/// Reads the schema once, so that a key that does not open the file shows now, as
/// [`Error::EncryptionKey`], instead of as corruption at the first real query.
pub(crate) async fn check_key(conn: &mut SqliteConnection, keyed: bool) -> Result<(), Error> {
    sqlx::query("SELECT count(*) FROM sqlite_master")
        .fetch_one(&mut *conn)
        .await
        .map(|_| ())
        .map_err(|e| open_error(e, keyed))
}

/// Maps the error of a store's first read: "not a database" there means the key does
/// not open the file (wrong key, a key for a plain file, or no key for an encrypted one).
pub(crate) fn open_error(error: sqlx::Error, keyed: bool) -> Error {
    let not_a_database = matches!(&error, sqlx::Error::Database(db)
        if db.code().as_deref().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff) == Some(26));
    if not_a_database {
        let message = if keyed {
            "the key does not open this store (another key, or the store is not encrypted); nothing was changed"
        } else {
            "this store is encrypted (or is not a database): open it with its key; nothing was changed"
        };
        return Error::EncryptionKey { message: message.into() };
    }
    storage(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_the_wrong_form_are_refused() {
        assert!(EncryptionKey::raw(&[7u8; 32]).is_ok());
        assert!(EncryptionKey::raw_hex(&"ab".repeat(32)).is_ok());
        assert!(EncryptionKey::passphrase("correct horse").is_ok());
        for bad in [
            EncryptionKey::raw(&[7u8; 31]),
            EncryptionKey::raw(&[]),
            EncryptionKey::raw_hex("abc"),
            EncryptionKey::raw_hex(&"zz".repeat(32)),
            EncryptionKey::passphrase(""),
            EncryptionKey::passphrase("nul\0inside"),
        ] {
            assert!(matches!(bad, Err(Error::EncryptionKey { .. })), "{bad:?}");
        }
    }

    #[test]
    fn the_same_key_in_bytes_or_hex_is_the_same_key_and_debug_hides_it() {
        let bytes = [0xabu8; 32];
        assert_eq!(EncryptionKey::raw(&bytes).ok(), EncryptionKey::raw_hex(&"AB".repeat(32)).ok());
        let key = EncryptionKey::passphrase("s3cret").expect("valid");
        assert!(!format!("{key:?}").contains("s3cret"));
        // Quotes in a passphrase cannot end the SQL string.
        let quoted = EncryptionKey::passphrase("it's").expect("valid");
        assert_eq!(quoted.pragma_value(), "'it''s'");
    }
}
