//! What every fuzz target shares: turning the fuzzer's bytes into a sequence of syscall-sized
//! chunks. Each record is one control byte (bit 0: request or response stream; bits 1-2: how
//! many little-endian bytes of gap length follow, 0/1/2/4), the gap length, one length byte,
//! then that many payload bytes. A target may give other control bits a meaning of its own.

use periscope::protocol::Stream;

/// One chunk: the stream it belongs to, the bytes the capture limit cut off after it, and the
/// captured bytes.
pub struct Record<'a> {
    pub stream: Stream,
    pub gap: u64,
    pub bytes: &'a [u8],
}

/// Splits the fuzzer input into records.
pub fn parse(mut data: &[u8]) -> Vec<Record<'_>> {
    let mut records = Vec::new();
    while let [ctrl, rest @ ..] = data {
        data = rest;
        let stream = if ctrl & 1 == 0 {
            Stream::Request
        } else {
            Stream::Response
        };
        let gap_bytes = match (ctrl >> 1) & 3 {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => 4,
        };
        let n = gap_bytes.min(data.len());
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(&data[..n]);
        let gap = u64::from_le_bytes(le);
        data = &data[n..];
        let Some((&len, rest)) = data.split_first() else {
            records.push(Record {
                stream,
                gap,
                bytes: &[],
            });
            break;
        };
        let len = usize::from(len).min(rest.len());
        records.push(Record {
            stream,
            gap,
            bytes: &rest[..len],
        });
        data = &rest[len..];
    }
    records
}
