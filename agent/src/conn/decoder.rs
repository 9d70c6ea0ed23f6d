//! Protocol detection on a connection's first bytes, through the protocol registry: the
//! tracker never names a protocol.

use crate::exchange::Role;
use crate::protocol::{AnyDecoder, Stream};

/// Kept at this path for `config` and `capture`.
pub use crate::protocol::Protocols;

/// A connection's decoder, whatever its protocol.
pub type Decoder = Box<dyn AnyDecoder>;

/// What detection found: the protocol, and the role the observed process plays.
pub struct Detected {
    pub role: Role,
    pub decoder: Decoder,
}

/// The role of a process that sent (`ingress == false`) or received the first bytes of a
/// message travelling on `stream`.
fn role_of(stream: Stream, ingress: bool) -> Role {
    match (stream, ingress) {
        (Stream::Request, true) | (Stream::Response, false) => Role::Server,
        (Stream::Request, false) | (Stream::Response, true) => Role::Client,
    }
}

/// Tries every enabled protocol, in registry order, on bytes seen on a connection.
/// `mid_stream` connections were found already open, so their bytes may start anywhere in a
/// conversation.
pub fn detect(
    payload: &[u8],
    ingress: bool,
    mid_stream: bool,
    protocols: Protocols,
) -> Option<Detected> {
    protocols.enabled().find_map(|p| {
        let stream = (p.detect)(payload, mid_stream)?;
        Some(Detected {
            role: role_of(stream, ingress),
            decoder: (p.start)(mid_stream),
        })
    })
}

/// Whether `bytes`, too few to recognise, could still begin a message of a protocol Periscope
/// decodes (enabled or not): an HTTP method being typed, or a big-endian length prefix in a
/// plausible range (Kafka frames, PostgreSQL startup packets). TLS records and other binary
/// protocols fail this at once and are switched off without waiting.
pub fn could_be_start(bytes: &[u8], protocols: Protocols) -> bool {
    protocols.registry().iter().any(|p| (p.could_start)(bytes))
}

/// A connection found already open whose role its socket tells: the first enabled protocol
/// whose `joins_mid_stream` takes bytes that [`detect`] could not place.
pub fn join_mid_stream(payload: &[u8], role: Role, protocols: Protocols) -> Option<Detected> {
    protocols
        .enabled()
        .find(|p| (p.joins_mid_stream)(payload))
        .map(|p| Detected {
            role,
            decoder: (p.start)(true),
        })
}
