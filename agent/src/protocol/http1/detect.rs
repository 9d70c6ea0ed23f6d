use super::Stream;

/// Cheap protocol detection on the first bytes seen on a connection: Some(Stream::Request) if they
/// start an HTTP/1.x request line (known method token + space), Some(Stream::Response) if they start
/// "HTTP/1.", else None. Must be fast and must not need more than ~16 bytes.
pub fn detect(bytes: &[u8]) -> Option<Stream> {
    // Standard methods, then the common WebDAV ones.
    const METHODS: [&[u8]; 16] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
        b"PROPFIND ",
        b"PROPPATCH ",
        b"MKCOL ",
        b"COPY ",
        b"MOVE ",
        b"LOCK ",
        b"UNLOCK ",
    ];
    match bytes.first()? {
        b'H' if bytes.starts_with(b"HTTP/1.") => Some(Stream::Response),
        b'A'..=b'Z' => METHODS
            .iter()
            .any(|m| bytes.starts_with(m))
            .then_some(Stream::Request),
        _ => None,
    }
}

/// Whether `bytes`, too few for [`detect`] to decide, could still begin a request: an HTTP
/// method being typed (a client writing one byte at a time).
pub fn could_start(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_uppercase())
}
