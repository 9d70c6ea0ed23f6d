//! What one data event hands the decoder: a prefix event is one piece (its captured bytes and
//! the gap after them); a framed event (`agent-ebpf/src/io/framing.rs`) is a list of records
//! that become pieces in stream order, every gap between them the rest of a body whose header
//! the decoder saw.

use agent_ebpf::{EventHeader, FrameRecord, FRAME_RECORD_LEN};

/// One piece of a syscall's bytes, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Captured bytes, then `len - bytes.len()` bytes not captured.
    Bytes { bytes: &'a [u8], len: u64 },
    /// `count` whole messages of type `kind`, `bytes` in all, counted instead of captured.
    Run { kind: u8, count: u64, bytes: u64 },
    /// Framed events of this direction were lost before what follows (never from `pieces`).
    Lost,
}

/// Whether the kernel framed this event (see `EventHeader::frame_end`).
pub fn is_framed(header: &EventHeader) -> bool {
    header.frame_end > 0
}

/// The captured bytes that begin the syscall, and the syscall's length: what detection
/// looks at. A framed event that does not start the syscall with captured bytes has none.
pub fn prefix<'a>(header: &EventHeader, pieces: &[Piece<'a>]) -> (&'a [u8], u64) {
    let len = header.ret_len.max(0) as u64;
    match pieces.first() {
        Some(Piece::Bytes { bytes, .. }) if header.frame_start == 0 => (bytes, len),
        _ => (&[], len),
    }
}

/// An event's pieces: a prefix event's one without allocating, a framed event's list.
pub enum Pieces<'a> {
    One(Piece<'a>),
    Many(Vec<Piece<'a>>),
}

impl<'a> std::ops::Deref for Pieces<'a> {
    type Target = [Piece<'a>];

    fn deref(&self) -> &[Piece<'a>] {
        match self {
            Pieces::One(piece) => std::slice::from_ref(piece),
            Pieces::Many(pieces) => pieces,
        }
    }
}

/// The event's pieces. Records that do not fit the payload or go backwards end the list with
/// a gap up to the event's end (the kernel never writes them; a gap is the safe reading).
pub fn pieces<'a>(header: &EventHeader, payload: &'a [u8]) -> Pieces<'a> {
    let len = header.ret_len.max(0) as u64;
    if !is_framed(header) {
        return Pieces::One(Piece::Bytes {
            bytes: payload,
            len: len.max(payload.len() as u64),
        });
    }
    let end = u64::from(header.frame_end);
    let mut cursor = u64::from(header.frame_start);
    let mut out: Vec<Piece<'a>> = Vec::new();
    let mut rest = payload;
    // Body bytes of syscalls that sent no event come first.
    gap(&mut out, u64::from(header.frame_skipped));
    while rest.len() >= FRAME_RECORD_LEN {
        let record = record(&rest[..FRAME_RECORD_LEN]);
        rest = &rest[FRAME_RECORD_LEN..];
        let offset = u64::from(record.offset);
        if offset < cursor {
            break;
        }
        gap(&mut out, offset - cursor);
        cursor = offset;
        if record.count > 0 || record.kind != 0 {
            out.push(Piece::Run {
                kind: record.kind,
                count: u64::from(record.count),
                bytes: u64::from(record.len),
            });
            cursor += u64::from(record.len);
        } else {
            let n = record.len as usize;
            if n > rest.len() {
                break;
            }
            out.push(Piece::Bytes {
                bytes: &rest[..n],
                len: n as u64,
            });
            rest = &rest[n..];
            cursor += n as u64;
        }
    }
    gap(&mut out, end.saturating_sub(cursor));
    Pieces::Many(out)
}

/// Adds `n` uncaptured bytes: to the captured piece before them, else as a piece of its own.
fn gap(out: &mut Vec<Piece<'_>>, n: u64) {
    if n == 0 {
        return;
    }
    match out.last_mut() {
        Some(Piece::Bytes { len, .. }) => *len += n,
        _ => out.push(Piece::Bytes { bytes: &[], len: n }),
    }
}

fn record(b: &[u8]) -> FrameRecord {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    FrameRecord {
        offset: u32_at(0),
        len: u32_at(4),
        count: u32_at(8),
        kind: b[12],
        _pad: [0; 3],
    }
}

/// Writes records as the kernel does (tests, benchmarks).
#[cfg(test)]
pub fn encode(records: &[(FrameRecord, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (record, bytes) in records {
        out.extend_from_slice(&record.offset.to_le_bytes());
        out.extend_from_slice(&record.len.to_le_bytes());
        out.extend_from_slice(&record.count.to_le_bytes());
        out.extend_from_slice(&[record.kind, 0, 0, 0]);
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(start: u32, end: u32, ret: i64) -> EventHeader {
        EventHeader {
            frame_start: start,
            frame_end: end,
            ret_len: ret,
            ..Default::default()
        }
    }

    fn data(offset: u32, bytes: &[u8]) -> (FrameRecord, &[u8]) {
        let record = FrameRecord {
            offset,
            len: bytes.len() as u32,
            ..Default::default()
        };
        (record, bytes)
    }

    fn run(offset: u32, len: u32, count: u32) -> (FrameRecord, &'static [u8]) {
        let record = FrameRecord {
            offset,
            len,
            count,
            kind: b'D',
            _pad: [0; 3],
        };
        (record, &[])
    }

    #[test]
    fn a_run_without_messages_is_still_a_run() {
        // A Kafka `records` field's part inside a syscall may hold no batch header.
        assert_eq!(
            agent_ebpf::RUN_KAFKA_RECORDS,
            crate::protocol::kafka::RECORDS_RUN
        );
        let record = FrameRecord {
            offset: 4,
            len: 100,
            count: 0,
            kind: agent_ebpf::RUN_KAFKA_RECORDS,
            _pad: [0; 3],
        };
        let payload = encode(&[data(0, b"abcd"), (record, &[])]);
        let got = pieces(&framed(0, 104, 104), &payload);
        assert_eq!(
            got.to_vec(),
            vec![
                Piece::Bytes {
                    bytes: b"abcd",
                    len: 4
                },
                Piece::Run {
                    kind: b'R',
                    count: 0,
                    bytes: 100
                },
            ]
        );
    }

    #[test]
    fn prefix_events_are_one_piece_with_their_gap() {
        let header = EventHeader {
            ret_len: 10,
            ..Default::default()
        };
        let got = pieces(&header, b"abc");
        assert_eq!(
            got.to_vec(),
            vec![Piece::Bytes {
                bytes: b"abc",
                len: 10
            }]
        );
        assert_eq!(prefix(&header, &got), (&b"abc"[..], 10));
    }

    #[test]
    fn bytes_skipped_in_syscalls_without_events_come_first() {
        let payload = encode(&[data(40, b"HTTP")]);
        let mut header = framed(0, 50, 50);
        header.frame_skipped = 1000;
        let got = pieces(&header, &payload);
        assert_eq!(
            got.to_vec(),
            vec![
                Piece::Bytes {
                    bytes: b"",
                    len: 1040
                },
                Piece::Bytes {
                    bytes: b"HTTP",
                    len: 10
                },
            ]
        );
        assert_eq!(prefix(&header, &got), (&b""[..], 50));
    }

    #[test]
    fn records_become_pieces_with_the_gaps_between_them() {
        let payload = encode(&[
            data(0, b"T0"),
            run(2, 100, 7),
            data(102, b"C1"),
            data(200, b"Z"),
        ]);
        let got = pieces(&framed(0, 300, 300), &payload);
        assert_eq!(
            got.to_vec(),
            vec![
                Piece::Bytes {
                    bytes: b"T0",
                    len: 2
                },
                Piece::Run {
                    kind: b'D',
                    count: 7,
                    bytes: 100
                },
                Piece::Bytes {
                    bytes: b"C1",
                    len: 98
                },
                Piece::Bytes {
                    bytes: b"Z",
                    len: 100
                },
            ]
        );
        let total: u64 = got
            .iter()
            .map(|p| match p {
                Piece::Bytes { len, .. } => *len,
                Piece::Run { bytes, .. } => *bytes,
                Piece::Lost => 0,
            })
            .sum();
        assert_eq!(total, 300);
        assert_eq!(prefix(&framed(0, 300, 300), &got), (&b"T0"[..], 300));
    }

    #[test]
    fn a_continuation_event_starts_with_a_gap() {
        let payload = encode(&[data(5000, b"hdr")]);
        let got = pieces(&framed(4096, 8192, 9000), &payload);
        assert_eq!(
            got.to_vec(),
            vec![
                Piece::Bytes {
                    bytes: b"",
                    len: 904
                },
                Piece::Bytes {
                    bytes: b"hdr",
                    len: 3192
                },
            ]
        );
        assert_eq!(prefix(&framed(4096, 8192, 9000), &got).0, b"");
    }

    #[test]
    fn broken_records_end_in_a_gap() {
        let mut payload = encode(&[data(0, b"ab"), data(1, b"x")]);
        let got = pieces(&framed(0, 10, 10), &payload);
        assert_eq!(
            got.to_vec(),
            vec![Piece::Bytes {
                bytes: b"ab",
                len: 10
            }]
        );
        payload.truncate(FRAME_RECORD_LEN + 1);
        let got = pieces(&framed(0, 10, 10), &payload);
        assert_eq!(
            got.to_vec(),
            vec![Piece::Bytes {
                bytes: b"",
                len: 10
            }]
        );
    }
}
