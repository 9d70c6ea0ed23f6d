use super::wire::Reader;
use super::{apis, Stream, MAX_REQUEST_FRAME, MIN_REQUEST_FRAME};

/// Cheap protocol detection on the first bytes a connection sends: Some(Stream::Request) if
/// they begin a plausible Kafka request frame, else None (responses are not detected: they
/// carry no recognisable marker).
///
/// Plausible: a size in 8..=100 MiB; an API key in 0..=74 with a version no higher than a few
/// past the API's known maximum ([`apis::plausible`]); then, for request header v1/v2, a
/// client id length of -1 or one that fits the frame, whose captured bytes are printable
/// ASCII. At least 14 bytes are needed (12 for header v0). HTTP methods and TLS records make
/// sizes far above 100 MiB; a Postgres startup message (length, 0x0003_0000, "user\0name")
/// reads as Metadata v0 but its client id length (0x00, first letter of the user name)
/// overruns the frame or covers a NUL.
pub fn detect(bytes: &[u8]) -> Option<Stream> {
    let mut r = Reader::new(bytes);
    let size = r.i32().ok()?;
    if !(MIN_REQUEST_FRAME..=MAX_REQUEST_FRAME).contains(&size) {
        return None;
    }
    let api_key = r.i16().ok()?;
    let api_version = r.i16().ok()?;
    if !apis::plausible(api_key, api_version) {
        return None;
    }
    r.i32().ok()?; // correlation_id
    if apis::request_header_version(api_key, api_version) == 0 {
        return Some(Stream::Request);
    }
    let len = r.i16().ok()?;
    if len < -1 || i32::from(len) > size - 10 {
        return None;
    }
    let len = usize::try_from(len).unwrap_or(0);
    let rest = r.rest();
    let captured = &rest[..len.min(rest.len())];
    captured
        .iter()
        .all(|&c| (0x20..0x7f).contains(&c))
        .then_some(Stream::Request)
}
