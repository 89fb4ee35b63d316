//! Compressed bodies: what a request body's `Content-Encoding` may be, and decoding it
//! without letting a small compressed body grow past the size limit.

use std::borrow::Cow;
use std::io::Read;

use sync_core::protocol::ErrorCode;

use crate::error::ServerError;

/// The codings the server decodes in requests and may use in answers, as it announces
/// them in every answer's `Accept-Encoding`.
pub const ACCEPTED: &str = "zstd, gzip";

/// Answers smaller than this are sent as they are: compressing them saves less than it costs.
pub const COMPRESS_ABOVE: u16 = 1024;

/// A request body decoded per its `Content-Encoding` (none, `identity`, `gzip`, `zstd`),
/// never past `limit` decoded bytes.
///
/// # Errors
/// [`ServerError::PayloadTooLarge`] when the decoded body would pass `limit` (a
/// compression bomb stops there); [`ServerError::BadRequest`] `invalid_request` for a
/// body that does not decode; [`ServerError::UnsupportedEncoding`] for another coding.
pub fn decode_body<'a>(encoding: Option<&str>, bytes: &'a [u8], limit: usize) -> Result<Cow<'a, [u8]>, ServerError> {
    let encoding = encoding.map(str::trim).map(str::to_ascii_lowercase);
    let reader: Box<dyn Read + 'a> = match encoding.as_deref() {
        None | Some("" | "identity") => return Ok(Cow::Borrowed(bytes)),
        Some("gzip" | "x-gzip") => Box::new(flate2::read::GzDecoder::new(bytes)),
        Some("zstd") => Box::new(
            zstd::stream::read::Decoder::new(bytes)
                .map_err(|e| ServerError::bad_request(ErrorCode::InvalidRequest, format!("zstd body: {e}")))?,
        ),
        Some(other) => return Err(ServerError::UnsupportedEncoding { encoding: other.to_owned() }),
    };
    let mut decoded = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut decoded)
        .map_err(|e| ServerError::bad_request(ErrorCode::InvalidRequest, format!("the body does not decode: {e}")))?;
    if decoded.len() > limit {
        return Err(ServerError::PayloadTooLarge { limit });
    }
    Ok(Cow::Owned(decoded))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn bodies_decode_within_the_limit_or_are_refused() {
        let body = br#"{"client_id": "d", "mutations": []}"#;
        assert_eq!(&*decode_body(None, body, 100).unwrap(), body);
        assert_eq!(&*decode_body(Some("identity"), body, 100).unwrap(), body);
        assert_eq!(&*decode_body(Some("gzip"), &gzip(body), 100).unwrap(), body);
        assert_eq!(&*decode_body(Some("ZSTD"), &zstd::encode_all(&body[..], 3).unwrap(), 100).unwrap(), body);
        // A bomb: 10 MB of zeros in a few KB.
        let bomb = zstd::encode_all(&vec![0u8; 10_000_000][..], 19).unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(decode_body(Some("zstd"), &bomb, 4096), Err(ServerError::PayloadTooLarge { .. })));
        assert!(matches!(decode_body(Some("gzip"), b"not gzip", 100), Err(ServerError::BadRequest { .. })));
        assert!(matches!(decode_body(Some("br"), body, 100), Err(ServerError::UnsupportedEncoding { .. })));
    }
}
