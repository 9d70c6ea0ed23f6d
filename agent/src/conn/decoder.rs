//! The protocol decoders a connection can be handed to, behind one interface: detection on a
//! connection's first bytes, then bytes in and exchange details out.

use crate::exchange::{Detail, PostgresDetail, Role};
use crate::protocol::http1::{self, DecoderStats, Http1Decoder, HttpExchange};
use crate::protocol::kafka::{self, KafkaDecoder, KafkaExchange};
use crate::protocol::postgres::{self, PgDecoder, PgExchange};
use crate::protocol::{Chunk, Stream};

use super::MuteReason;

/// A connection's decoder, with the buffer its exchanges are collected in.
pub enum Decoder {
    Http(Box<(Http1Decoder, Vec<HttpExchange>)>),
    Kafka(Box<(KafkaDecoder, Vec<KafkaExchange>)>),
    Postgres(Box<(PgDecoder, Vec<PgExchange>)>),
}

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

/// Tries every enabled protocol on bytes seen on a connection. `mid_stream` connections were
/// found already open, so their bytes may start anywhere in a conversation.
/// Which protocol decoders are on (`--protocols`); a connection speaking one that is off is
/// muted like an unknown protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocols {
    pub http: bool,
    pub postgres: bool,
    pub kafka: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            http: true,
            postgres: true,
            kafka: true,
        }
    }
}

impl Protocols {
    /// `http,postgres,kafka` (any subset, or `none`).
    pub fn parse(text: &str) -> Result<Protocols, String> {
        let mut on = Protocols {
            http: false,
            postgres: false,
            kafka: false,
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "http" => on.http = true,
                "postgres" | "postgresql" => on.postgres = true,
                "kafka" => on.kafka = true,
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown protocol {other:?} (known: http, postgres, kafka, none)"
                    ))
                }
            }
        }
        Ok(on)
    }
}

pub fn detect(
    payload: &[u8],
    ingress: bool,
    mid_stream: bool,
    protocols: Protocols,
) -> Option<Detected> {
    if let Some(stream) = http1::detect(payload).filter(|_| protocols.http) {
        return Some(Detected {
            role: role_of(stream, ingress),
            decoder: Decoder::Http(Box::default()),
        });
    }
    if let Some(stream) = postgres::detect(payload, mid_stream).filter(|_| protocols.postgres) {
        let decoder = if mid_stream {
            PgDecoder::new_mid_stream()
        } else {
            PgDecoder::new()
        };
        return Some(Detected {
            role: role_of(stream, ingress),
            decoder: Decoder::Postgres(Box::new((decoder, Vec::new()))),
        });
    }
    if let Some(stream) = kafka::detect(payload).filter(|_| protocols.kafka) {
        return Some(Detected {
            role: role_of(stream, ingress),
            decoder: Decoder::Kafka(Box::new((KafkaDecoder::new(), Vec::new()))),
        });
    }
    None
}

/// Whether `bytes`, too few to recognise, could still begin a message of a protocol Periscope
/// decodes: an HTTP method being typed, or a big-endian length prefix in a plausible range
/// (Kafka frames, PostgreSQL startup packets). TLS records and other binary protocols fail this
/// at once and are switched off without waiting.
pub fn could_be_start(bytes: &[u8]) -> bool {
    if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_uppercase()) {
        return true;
    }
    match bytes {
        [a, b, c, d, ..] => {
            let n = u32::from_be_bytes([*a, *b, *c, *d]);
            (8..=100 << 20).contains(&n)
        }
        // Lengths up to 100 MiB start with 0x00..=0x06.
        [first, ..] => *first <= 0x06,
        [] => false,
    }
}

impl Decoder {
    /// Protocol name for self-metrics.
    pub fn protocol(&self) -> &'static str {
        match self {
            Decoder::Http(_) => "http1",
            Decoder::Kafka(_) => "kafka",
            Decoder::Postgres(_) => "postgresql",
        }
    }

    /// Feeds one chunk; completed exchanges are appended to `out`. An error is the reason
    /// label of a parse error: the caller stops decoding the connection.
    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Detail>) -> Result<(), &'static str> {
        match self {
            Decoder::Http(state) => {
                let (decoder, found) = &mut **state;
                let result = decoder.feed(chunk, found);
                out.extend(found.drain(..).map(Detail::Http));
                result.map_err(|e| e.reason())
            }
            Decoder::Kafka(state) => {
                let (decoder, found) = &mut **state;
                let result = decoder.feed(chunk, found);
                out.extend(found.drain(..).map(Detail::Kafka));
                result.map_err(|e| e.reason())
            }
            Decoder::Postgres(state) => {
                let (decoder, found) = &mut **state;
                let result = decoder.feed(chunk, found);
                postgres_details(decoder, found, out);
                result.map_err(|e| e.reason())
            }
        }
    }

    /// The connection closed at `ts_ns`: flush what can still be completed.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<Detail>) {
        match self {
            Decoder::Http(state) => {
                let (decoder, found) = &mut **state;
                decoder.close(ts_ns, found);
                out.extend(found.drain(..).map(Detail::Http));
            }
            Decoder::Kafka(state) => {
                let (decoder, found) = &mut **state;
                decoder.close(ts_ns, found);
                out.extend(found.drain(..).map(Detail::Kafka));
            }
            Decoder::Postgres(state) => {
                let (decoder, found) = &mut **state;
                decoder.close(ts_ns, found);
                postgres_details(decoder, found, out);
            }
        }
    }

    pub fn take_stats(&mut self) -> DecoderStats {
        match self {
            Decoder::Http(state) => state.0.take_stats(),
            Decoder::Kafka(state) => state.0.take_stats(),
            Decoder::Postgres(state) => state.0.take_stats(),
        }
    }

    /// Set when the conversation left the protocol (an upgrade, TLS): stop decoding.
    pub fn stopped(&self) -> Option<MuteReason> {
        match self {
            Decoder::Http(state) => state.0.upgraded().then_some(MuteReason::Upgraded),
            Decoder::Kafka(_) => None,
            Decoder::Postgres(state) => state.0.is_tls().then_some(MuteReason::Tls),
        }
    }
}

/// Statements with the database the connection's startup message named.
fn postgres_details(decoder: &PgDecoder, found: &mut Vec<PgExchange>, out: &mut Vec<Detail>) {
    let namespace = decoder.startup().and_then(|s| s.database.clone());
    out.extend(found.drain(..).map(|statement| {
        Detail::Postgres(PostgresDetail {
            statement,
            db_namespace: namespace.clone(),
        })
    }));
}
