use super::Stream;

/// The client connection preface (RFC 9113 §3.4), sent first by every HTTP/2 client with prior
/// knowledge (gRPC, `h2c` clients, and after TLS ALPN `h2`).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The part of the preface detection waits for: no other protocol starts so (HTTP/1 has no
/// `PRI` method), and it fits the ~16 bytes detection is given.
const DETECTED: usize = 16;

/// Most settings a server's first SETTINGS frame is believed to carry (RFC 9113 defines 6,
/// extensions a few more).
const MAX_FIRST_SETTINGS: u8 = 10;

/// `Some(Stream::Request)` for bytes that start the client preface; `Some(Stream::Response)`
/// for a server's first frame, a SETTINGS frame without flags on stream 0, which servers
/// such as gRPC's send without waiting for the client's preface. On a connection found
/// already open: a chunk that is exactly a chain of plausible frames with a HEADERS frame
/// among them, whose first field says the side (`frames::exact_chain_side`).
pub fn detect(bytes: &[u8], mid_stream: bool) -> Option<Stream> {
    if bytes.len() >= DETECTED && bytes.starts_with(&PREFACE[..DETECTED]) {
        return Some(Stream::Request);
    }
    if is_server_settings(bytes) && (!mid_stream || super::frames::is_exact_chain(bytes)) {
        // Mid-stream too: a TLS connection whose first plaintext is the server's (gRPC and
        // nginx send their SETTINGS first) counts as joined late, yet a chunk of exactly
        // whole frames opening with SETTINGS is the start of HTTP/2.
        return Some(Stream::Response);
    }
    if mid_stream {
        return super::frames::exact_chain_side(bytes);
    }
    None
}

/// `00 00 LL 04 00 00 00 00 00`: SETTINGS, no flags, stream 0, a whole number of settings.
/// A Kafka request (length, api key, version) would need to be a Produce v0 with a length of
/// `LL04`, a request no client sends first.
fn is_server_settings(bytes: &[u8]) -> bool {
    match bytes {
        [0, 0, len, 4, 0, 0, 0, 0, 0, ..] => len.is_multiple_of(6) && len / 6 <= MAX_FIRST_SETTINGS,
        _ => false,
    }
}

/// Whether `bytes`, too few for [`detect`], could still begin the preface or a server's first
/// SETTINGS frame.
pub fn could_start(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    if bytes.len() < DETECTED && PREFACE.starts_with(bytes) {
        return true;
    }
    let mut head = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let n = bytes.len().min(8);
    head[..n].copy_from_slice(&bytes[..n]);
    bytes.len() < 9 && is_server_settings(&head)
}

/// On a connection found already open whose side the socket tells: a chunk that is exactly a
/// chain of plausible frames holding a HEADERS frame (see `Protocol::joins_mid_stream`).
pub fn joins_mid_stream(bytes: &[u8]) -> bool {
    super::frames::is_exact_chain_with_headers(bytes)
}
