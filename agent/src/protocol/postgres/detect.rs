use super::framing::{plausible, startup_packet};
use super::Stream;

/// Protocol detection from the first bytes seen on a connection: Some(Stream::Request) if they
/// are a start-up packet (StartupMessage for protocol 3.x, SSLRequest, GSSENCRequest,
/// CancelRequest) or, for a connection joined `mid_stream`, a plausible frontend message (a
/// known type with a sane length, a Query or Parse followed by text, and every further message
/// header in the bytes valid). Backend bytes are never claimed: their types overlap the
/// frontend's and a server never speaks first. Needs 8 bytes for a start-up packet, 5 for a
/// message.
pub fn detect(bytes: &[u8], mid_stream: bool) -> Option<Stream> {
    if startup_packet(bytes).is_some() {
        return Some(Stream::Request);
    }
    if !mid_stream {
        return None;
    }
    let &ty = bytes.first()?;
    // A Query or Parse must show some text; other types carry binary fields.
    let enough = match ty {
        b'Q' => bytes.len() >= 8,
        _ => bytes.len() >= 5,
    };
    (enough && plausible(Stream::Request, bytes)).then_some(Stream::Request)
}
