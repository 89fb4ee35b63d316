//! Cursors: `{epoch}:{seq}:{full}`, opaque to clients.
//!
//! The epoch names the database, so a cursor from another (or a recreated) database
//! resets. `full` marks the pages of a download that began with a null cursor, until it
//! has caught up: such pages are never reset for purged tombstones, so the resync that
//! follows a reset cannot itself be reset page after page.

use sync_core::Cursor;
use sync_core::protocol::ErrorCode;

use crate::error::ServerError;

/// A parsed cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Changes with a higher seq come next.
    pub seq: i64,
    /// The chain started from nothing.
    pub full: bool,
}

/// Parses a client's cursor: None for a null cursor, or its position and whether its
/// epoch is this database's.
///
/// # Errors
/// 400 `invalid_request` for a cursor this server never makes.
pub fn parse(cursor: Option<&Cursor>, epoch: &str) -> Result<Option<(Position, bool)>, ServerError> {
    let Some(Cursor(text)) = cursor else { return Ok(None) };
    let bad = || ServerError::bad_request(ErrorCode::InvalidRequest, format!("malformed cursor {text:?}"));
    let mut parts = text.split(':');
    let (Some(e), Some(seq), Some(full), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let seq: i64 = seq.parse().map_err(|_| bad())?;
    if seq < 0 {
        return Err(bad());
    }
    let full = match full {
        "0" => false,
        "1" => true,
        _ => return Err(bad()),
    };
    Ok(Some((Position { seq, full }, e == epoch)))
}

/// Formats a cursor.
pub fn format(epoch: &str, position: Position) -> Cursor {
    Cursor(format!("{epoch}:{}:{}", position.seq, u8::from(position.full)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_cursors() {
        let c = format("e1", Position { seq: 42, full: true });
        assert_eq!(parse(Some(&c), "e1").unwrap(), Some((Position { seq: 42, full: true }, true)));
        assert_eq!(parse(Some(&c), "e2").unwrap(), Some((Position { seq: 42, full: true }, false)));
        assert_eq!(parse(None, "e1").unwrap(), None);
        for bad in ["", "x", "e1:1", "e1:-1:0", "e1:a:0", "e1:1:2", "e1:1:0:9"] {
            assert!(parse(Some(&Cursor(bad.into())), "e1").is_err(), "{bad}");
        }
    }
}
