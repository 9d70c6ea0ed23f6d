//! Pure protocol decoders: bytes in, exchanges out. No I/O, no clocks, no kernel types.

pub mod fixture;
pub mod http1;
pub mod kafka;
pub mod postgres;
pub mod route;
pub mod sql;

/// Which half of a connection a chunk of bytes belongs to, from the protocol's point of view
/// (not the syscall's): the connection tracker maps (direction, role) to this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Client → server bytes.
    Request,
    /// Server → client bytes.
    Response,
}

/// Bytes moved by one syscall, as captured.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub stream: Stream,
    /// When the first byte of this chunk moved: a write's entry, a read's return.
    pub first_ns: u64,
    /// When the last byte of this chunk moved: the syscall's return.
    pub last_ns: u64,
    /// The captured prefix of the bytes.
    pub bytes: &'a [u8],
    /// The real number of bytes moved (`>= bytes.len()`): the rest is a gap the capture
    /// limit cut off, to be skipped by length.
    pub len: u64,
}

impl Chunk<'_> {
    /// Bytes moved but not captured.
    pub fn gap(&self) -> u64 {
        self.len.saturating_sub(self.bytes.len() as u64)
    }
}
