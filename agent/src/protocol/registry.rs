//! The protocols Periscope decodes, in detection order, and the one place that turns each
//! protocol's own exchange type into the agent's [`Detail`].
//!
//! The decoders know nothing of `crate::exchange`; this file does, so that `conn` can hold any
//! decoder behind one object-safe interface ([`AnyDecoder`]) and stay free of per-protocol
//! code. Adding a protocol adds an entry to [`REGISTRY`] and one [`IntoDetail`] impl here.

use std::fmt;

use crate::exchange::{Detail, PostgresDetail};

use super::http1::{self, Http1Decoder};
use super::http2::{self, Http2Decoder};
use super::kafka::{self, KafkaDecoder, TopicNames};
use super::postgres::{self, PgDecoder};
use super::{could_start_with_length, Chunk, Decoder, DecoderStats, Run, Stopped, Stream};

/// One protocol, as detection, `--protocols` and the tools that replay fixtures see it.
#[derive(Clone, Copy)]
pub struct Protocol {
    /// The `protocol` label of self-metrics (the decoder's [`Decoder::PROTOCOL`]).
    pub name: &'static str,
    /// What `--protocols` accepts for it; the first is the one error messages list.
    pub flags: &'static [&'static str],
    /// Its recorded traffic: `agent/tests/fixtures/<fixtures>/`.
    pub fixtures: &'static str,
    /// Recognises the protocol from the first bytes seen on a connection (at most ~16 bytes
    /// are needed): the stream they belong to, or None. `mid_stream`: the connection was found
    /// already open, so its bytes may start anywhere in a conversation.
    pub detect: fn(bytes: &[u8], mid_stream: bool) -> Option<Stream>,
    /// Whether `bytes`, too few for `detect` to decide, could still begin this protocol:
    /// the connection's bytes are then held until more arrive.
    pub could_start: fn(bytes: &[u8]) -> bool,
    /// On a connection found already open whose socket tells the side (its local port is a
    /// listening one, or not): whether `bytes`, which `detect` could not place, are this
    /// protocol all the same. An HTTP/2 chunk whose header block opens with a reference to the
    /// table the agent never saw says nothing of its side, but is whole frames.
    pub joins_mid_stream: fn(bytes: &[u8]) -> bool,
    /// A decoder for a connection `detect` recognised.
    pub start: fn(mid_stream: bool) -> Box<dyn AnyDecoder>,
}

/// Every protocol, in detection order: the first enabled one whose `detect` accepts a
/// connection's first bytes decodes it. Each `detect` is written to refuse the others' first
/// bytes (see `kafka::detect` on PostgreSQL start-up packets); the order decides only where
/// two would accept the same bytes.
pub static REGISTRY: [Protocol; 4] = [
    Protocol {
        name: Http1Decoder::PROTOCOL,
        flags: &["http"],
        fixtures: "http1",
        detect: |bytes, _| http1::detect(bytes),
        could_start: http1::could_start,
        joins_mid_stream: |_| false,
        start: session::<Http1Decoder>,
    },
    Protocol {
        name: Http2Decoder::PROTOCOL,
        flags: &["http2", "grpc"],
        fixtures: "http2",
        detect: http2::detect,
        could_start: http2::could_start,
        joins_mid_stream: http2::joins_mid_stream,
        start: session::<Http2Decoder>,
    },
    Protocol {
        name: PgDecoder::PROTOCOL,
        flags: &["postgres", "postgresql"],
        fixtures: "postgres",
        detect: postgres::detect,
        could_start: could_start_with_length,
        joins_mid_stream: |_| false,
        start: session::<PgDecoder>,
    },
    Protocol {
        name: KafkaDecoder::PROTOCOL,
        flags: &["kafka"],
        fixtures: "kafka",
        detect: |bytes, _| kafka::detect(bytes),
        could_start: could_start_with_length,
        joins_mid_stream: |_| false,
        start: session::<KafkaDecoder>,
    },
];

/// What decoders learn on one connection and use on others: one per agent, handed to every
/// [`AnyDecoder`] call.
#[derive(Debug, Default)]
pub struct Shared {
    /// Kafka topic names by id, from Metadata responses anywhere on the node.
    pub kafka_topics: TopicNames,
}

/// How a protocol's exchanges become the agent's [`Detail`]: one impl per protocol, the only
/// per-protocol code the connection tracker depends on.
pub trait IntoDetail: Decoder + Sized {
    /// `self` is the decoder that completed `exchange`, as it is right after the `feed` or
    /// `close` call that did.
    fn detail(&self, exchange: Self::Exchange, shared: &mut Shared) -> Detail;
}

impl IntoDetail for Http1Decoder {
    fn detail(&self, exchange: http1::HttpExchange, _: &mut Shared) -> Detail {
        Detail::Http(exchange)
    }
}

impl IntoDetail for Http2Decoder {
    fn detail(&self, exchange: super::http::HttpExchange, _: &mut Shared) -> Detail {
        Detail::Http(exchange)
    }
}

impl IntoDetail for PgDecoder {
    /// Statements with the database the connection's startup message named (kept through
    /// `close`, so statements the close completes carry it too).
    fn detail(&self, statement: postgres::PgExchange, _: &mut Shared) -> Detail {
        Detail::Postgres(PostgresDetail {
            statement,
            db_namespace: self.startup().and_then(|s| s.database.clone()),
        })
    }
}

impl IntoDetail for KafkaDecoder {
    fn detail(&self, mut exchange: kafka::KafkaExchange, shared: &mut Shared) -> Detail {
        shared.kafka_topics.learn_and_resolve(&mut exchange);
        Detail::Kafka(exchange)
    }
}

/// A connection's decoder as the tracker holds it: any protocol, exchanges as [`Detail`].
pub trait AnyDecoder: Send {
    /// The `protocol` label of self-metrics.
    fn protocol(&self) -> &'static str;
    /// [`Decoder::feed`], exchanges appended to `out`; an error is its reason label.
    fn feed(
        &mut self,
        chunk: &Chunk<'_>,
        shared: &mut Shared,
        out: &mut Vec<Detail>,
    ) -> Result<(), &'static str>;
    /// [`Decoder::skipped`], exchanges appended to `out`.
    fn skipped(
        &mut self,
        run: &Run,
        shared: &mut Shared,
        out: &mut Vec<Detail>,
    ) -> Result<(), &'static str>;
    /// [`Decoder::lost`], exchanges appended to `out`.
    fn lost(
        &mut self,
        stream: Stream,
        ts_ns: u64,
        shared: &mut Shared,
        out: &mut Vec<Detail>,
    ) -> Result<(), &'static str>;
    /// [`Decoder::close`], exchanges appended to `out`.
    fn close(&mut self, ts_ns: u64, shared: &mut Shared, out: &mut Vec<Detail>);
    fn take_stats(&mut self) -> DecoderStats;
    fn stopped(&self) -> Option<Stopped>;
    /// [`Decoder::heap_bytes`].
    fn heap_bytes(&self) -> usize;
}

/// A decoder with the buffer its exchanges are collected in before they become details.
struct Session<D: Decoder> {
    decoder: D,
    found: Vec<D::Exchange>,
}

/// The constructor every registry entry uses: `D` and the buffer its exchanges are collected in,
/// boxed.
pub fn session<D: IntoDetail>(mid_stream: bool) -> Box<dyn AnyDecoder> {
    Box::new(Session {
        decoder: D::start(mid_stream),
        found: Vec::new(),
    })
}

impl<D: IntoDetail> Session<D> {
    /// After a call into the decoder: its exchanges become details, its error a reason.
    fn settle(
        &mut self,
        result: Result<(), super::DecodeError>,
        shared: &mut Shared,
        out: &mut Vec<Detail>,
    ) -> Result<(), &'static str> {
        self.details(shared, out);
        result.map_err(|e| e.reason())
    }

    fn details(&mut self, shared: &mut Shared, out: &mut Vec<Detail>) {
        if self.found.capacity() == 0 {
            return;
        }
        let decoder = &self.decoder;
        // Taken, not drained: an idle connection keeps no buffer (four exchanges' worth, ~1 kB
        // for HTTP, on every connection once it completed one).
        let found = std::mem::take(&mut self.found);
        out.extend(found.into_iter().map(|x| decoder.detail(x, shared)));
    }
}

impl<D: IntoDetail> AnyDecoder for Session<D> {
    fn protocol(&self) -> &'static str {
        D::PROTOCOL
    }

    fn feed(
        &mut self,
        chunk: &Chunk<'_>,
        shared: &mut Shared,
        out: &mut Vec<Detail>,
    ) -> Result<(), &'static str> {
        let result = self.decoder.feed(chunk, &mut self.found);
        self.settle(result, shared, out)
    }

    fn skipped(
        &mut self,
        run: &Run,
        shared: &mut Shared,
        out: &mut Vec<Detail>,
    ) -> Result<(), &'static str> {
        let result = self.decoder.skipped(run, &mut self.found);
        self.settle(result, shared, out)
    }

    fn lost(
        &mut self,
        stream: Stream,
        ts_ns: u64,
        shared: &mut Shared,
        out: &mut Vec<Detail>,
    ) -> Result<(), &'static str> {
        let result = self.decoder.lost(stream, ts_ns, &mut self.found);
        self.settle(result, shared, out)
    }

    fn close(&mut self, ts_ns: u64, shared: &mut Shared, out: &mut Vec<Detail>) {
        self.decoder.close(ts_ns, &mut self.found);
        self.details(shared, out);
    }

    fn take_stats(&mut self) -> DecoderStats {
        self.decoder.take_stats()
    }

    fn stopped(&self) -> Option<Stopped> {
        self.decoder.stopped()
    }

    fn heap_bytes(&self) -> usize {
        self.decoder.heap_bytes()
    }
}

/// Which protocols are decoded (`--protocols`): a subset of a registry ([`REGISTRY`] outside
/// tests). A connection speaking one that is off is muted like an unknown protocol.
#[derive(Clone, Copy)]
pub struct Protocols {
    registry: &'static [Protocol],
    /// Bit `i`: `registry[i]` is on.
    on: u64,
}

impl Default for Protocols {
    /// Every protocol of [`REGISTRY`].
    fn default() -> Self {
        Protocols::all_of(&REGISTRY)
    }
}

impl Protocols {
    /// Every protocol of `registry`.
    pub fn all_of(registry: &'static [Protocol]) -> Self {
        assert!(
            registry.len() <= 64,
            "a registry holds at most 64 protocols"
        );
        Protocols {
            registry,
            on: mask(registry.len()),
        }
    }

    /// `http,http2,postgres,kafka` (any subset, or `none`), names from [`REGISTRY`]'s `flags`.
    pub fn parse(text: &str) -> Result<Protocols, String> {
        let mut on = Protocols {
            registry: &REGISTRY,
            on: 0,
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "none" {
                continue;
            }
            match REGISTRY.iter().position(|p| p.flags.contains(&name)) {
                Some(i) => on.on |= 1 << i,
                None => {
                    let known: Vec<&str> = REGISTRY.iter().map(|p| p.flags[0]).collect();
                    return Err(format!(
                        "unknown protocol {name:?} (known: {}, none)",
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(on)
    }

    /// Whether the protocol that `--protocols` calls `flag` is on.
    pub fn is_on(&self, flag: &str) -> bool {
        self.enabled().any(|p| p.flags.contains(&flag))
    }

    /// The protocols that are on, in detection order.
    pub fn enabled(&self) -> impl Iterator<Item = &'static Protocol> {
        let on = self.on;
        self.registry
            .iter()
            .enumerate()
            .filter(move |(i, _)| on & (1 << i) != 0)
            .map(|(_, p)| p)
    }

    /// Every protocol that could be on, in detection order.
    pub fn registry(&self) -> &'static [Protocol] {
        self.registry
    }
}

/// The low `n` bits set.
fn mask(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1 << n) - 1
    }
}

impl PartialEq for Protocols {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.registry, other.registry) && self.on == other.on
    }
}

impl Eq for Protocols {}

impl fmt::Debug for Protocols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.enabled().map(|p| p.flags[0]))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_flag_parses_names_aliases_and_none() {
        assert_eq!(
            Protocols::parse("http,http2,postgres,kafka"),
            Ok(Protocols::default())
        );
        let kafka = Protocols::parse("kafka").unwrap();
        assert!(kafka.is_on("kafka") && !kafka.is_on("http") && !kafka.is_on("postgres"));
        assert_eq!(format!("{kafka:?}"), r#"["kafka"]"#);
        let pg = Protocols::parse(" postgresql , ").unwrap();
        assert!(pg.is_on("postgres") && pg.is_on("postgresql") && !pg.is_on("http"));
        assert_eq!(
            pg.enabled().map(|p| p.name).collect::<Vec<_>>(),
            ["postgresql"]
        );
        let none = Protocols::parse("none").unwrap();
        assert_eq!(none.enabled().count(), 0);
        assert_eq!(Protocols::parse(""), Ok(none));
        assert_eq!(
            Protocols::parse("http,smtp"),
            Err(
                r#"unknown protocol "smtp" (known: http, http2, postgres, kafka, none)"#.to_owned()
            )
        );
        assert_eq!(
            Protocols::default()
                .enabled()
                .map(|p| p.name)
                .collect::<Vec<_>>(),
            ["http1", "http2", "postgresql", "kafka"]
        );
    }

    #[test]
    fn registry_entries_name_their_decoders() {
        for p in &REGISTRY {
            assert_eq!((p.start)(false).protocol(), p.name);
            assert_eq!((p.start)(true).protocol(), p.name);
        }
    }
}
