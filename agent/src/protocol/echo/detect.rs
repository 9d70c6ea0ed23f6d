use super::Stream;

/// A connection whose first bytes are `PING ` is echo, seen from the client's side of the
/// first message.
pub fn detect(bytes: &[u8]) -> Option<Stream> {
    bytes.starts_with(b"PING ").then_some(Stream::Request)
}

/// Too few bytes for [`detect`], but a prefix of `PING `.
pub fn could_start(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() < 5 && b"PING ".starts_with(bytes)
}
