use std::collections::VecDeque;

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers: a test-only encoder (integers, strings, Huffman) and a decode that collects.
// ---------------------------------------------------------------------------------------------

fn hex(text: &str) -> Vec<u8> {
    let text: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// An integer with a `prefix_bits` prefix under the flag bits `flags` (§5.1).
fn put_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: u64) {
    let max_prefix = (1u64 << prefix_bits) - 1;
    if value < max_prefix {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Huffman-encodes with the module's own code table, padding with ones.
fn huffman_encode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u64;
    let mut nbits = 0u32;
    for &b in text {
        let (code, len) = HUFFMAN_CODES[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        nbits += u32::from(len);
        while nbits >= 8 {
            nbits -= 8;
            out.push((acc >> nbits) as u8);
        }
    }
    if nbits > 0 {
        let pad = 8 - nbits;
        out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
    out
}

/// A string literal (§5.2), raw or Huffman-coded.
fn put_str(out: &mut Vec<u8>, text: &[u8], huffman: bool) {
    if huffman {
        let coded = huffman_encode(text);
        put_int(out, 0x80, 7, coded.len() as u64);
        out.extend_from_slice(&coded);
    } else {
        put_int(out, 0, 7, text.len() as u64);
        out.extend_from_slice(text);
    }
}

/// One decoded field, owned (the decoder lends them to its callback).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: Vec<u8>,
    value: Vec<u8>,
}

fn field(name: &[u8], value: &[u8]) -> Field {
    Field {
        name: name.to_vec(),
        value: value.to_vec(),
    }
}

/// Decodes a block: the result, the fields in order, and the unknown count.
fn run(h: &mut Hpack, block: &[u8]) -> (Result<(), HpackError>, Vec<Field>, usize) {
    let mut fields = Vec::new();
    let mut unknown = 0;
    let result = h.decode(
        block,
        &mut |name, value| fields.push(field(name, value)),
        &mut || unknown += 1,
    );
    (result, fields, unknown)
}

/// Decodes a block that must succeed with no unknown field.
fn ok(h: &mut Hpack, block: &[u8]) -> Vec<Field> {
    let (result, fields, unknown) = run(h, block);
    assert_eq!(result, Ok(()));
    assert_eq!(unknown, 0);
    fields
}

/// Decodes a block that must fail, returning the error.
fn err(h: &mut Hpack, block: &[u8]) -> HpackError {
    run(h, block).0.expect_err("the block should be rejected")
}

/// The dynamic table, newest first.
fn table(h: &Hpack) -> Vec<Field> {
    h.table
        .iter()
        .map(|e| {
            let (n, v) = e.field().expect("a known entry");
            field(n, v)
        })
        .collect()
}

/// The table's bookkeeping matches its entries.
fn check_invariants(h: &Hpack) {
    let size: usize = h.table.iter().map(|e| e.size).sum();
    let data: usize = h
        .table
        .iter()
        .map(|e| e.bytes.as_ref().map_or(0, |b| b.len()))
        .sum();
    assert_eq!(h.size, size);
    assert_eq!(h.data_bytes, data);
    assert!(h.size <= h.max_size, "{} > {}", h.size, h.max_size);
    assert!(h.max_size <= h.limit && h.limit <= MAX_TABLE_BYTES);
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 7541 Appendix C.
// ---------------------------------------------------------------------------------------------

/// One example: the block, the fields it decodes to, the dynamic table after it (newest
/// first) and its size.
struct Example {
    block: &'static str,
    fields: &'static [(&'static str, &'static str)],
    table: &'static [(&'static str, &'static str)],
    size: usize,
}

fn fields_of(pairs: &[(&str, &str)]) -> Vec<Field> {
    pairs
        .iter()
        .map(|(n, v)| field(n.as_bytes(), v.as_bytes()))
        .collect()
}

/// Decodes a sequence of examples on one context, checking fields, table and size.
fn check_examples(h: &mut Hpack, examples: &[Example]) {
    for (i, ex) in examples.iter().enumerate() {
        assert_eq!(ok(h, &hex(ex.block)), fields_of(ex.fields), "example {i}");
        assert_eq!(table(h), fields_of(ex.table), "example {i}");
        assert_eq!(h.size, ex.size, "example {i}");
        check_invariants(h);
    }
}

const REQ_1: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const REQ_2: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const REQ_3: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];
const REQ_TABLE_1: &[(&str, &str)] = &[(":authority", "www.example.com")];
const REQ_TABLE_2: &[(&str, &str)] = &[
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];
const REQ_TABLE_3: &[(&str, &str)] = &[
    ("custom-key", "custom-value"),
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];

const RESP_1: &[(&str, &str)] = &[
    (":status", "302"),
    ("cache-control", "private"),
    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
    ("location", "https://www.example.com"),
];
const RESP_2: &[(&str, &str)] = &[
    (":status", "307"),
    ("cache-control", "private"),
    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
    ("location", "https://www.example.com"),
];
const RESP_3: &[(&str, &str)] = &[
    (":status", "200"),
    ("cache-control", "private"),
    ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
    ("location", "https://www.example.com"),
    ("content-encoding", "gzip"),
    (
        "set-cookie",
        "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
    ),
];
const RESP_TABLE_1: &[(&str, &str)] = &[
    ("location", "https://www.example.com"),
    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
    ("cache-control", "private"),
    (":status", "302"),
];
const RESP_TABLE_2: &[(&str, &str)] = &[
    (":status", "307"),
    ("location", "https://www.example.com"),
    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
    ("cache-control", "private"),
];
const RESP_TABLE_3: &[(&str, &str)] = &[
    (
        "set-cookie",
        "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
    ),
    ("content-encoding", "gzip"),
    ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
];

/// C.3: requests without Huffman.
const C3: [Example; 3] = [
    Example {
        block: "828684410f7777772e6578616d706c652e636f6d",
        fields: REQ_1,
        table: REQ_TABLE_1,
        size: 57,
    },
    Example {
        block: "828684be58086e6f2d6361636865",
        fields: REQ_2,
        table: REQ_TABLE_2,
        size: 110,
    },
    Example {
        block: "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        fields: REQ_3,
        table: REQ_TABLE_3,
        size: 164,
    },
];

/// C.4: the same requests with Huffman.
const C4: [Example; 3] = [
    Example {
        block: "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        fields: REQ_1,
        table: REQ_TABLE_1,
        size: 57,
    },
    Example {
        block: "828684be5886a8eb10649cbf",
        fields: REQ_2,
        table: REQ_TABLE_2,
        size: 110,
    },
    Example {
        block: "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        fields: REQ_3,
        table: REQ_TABLE_3,
        size: 164,
    },
];

/// C.5: responses without Huffman, 256-byte table.
const C5: [Example; 3] = [
    Example {
        block: "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a
                323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
        fields: RESP_1,
        table: RESP_TABLE_1,
        size: 222,
    },
    Example {
        block: "4803333037c1c0bf",
        fields: RESP_2,
        table: RESP_TABLE_2,
        size: 222,
    },
    Example {
        block: "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69
                707738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d6178
                2d6167653d333630303b2076657273696f6e3d31",
        fields: RESP_3,
        table: RESP_TABLE_3,
        size: 215,
    },
];

/// C.6: the same responses with Huffman.
const C6: [Example; 3] = [
    Example {
        block: "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29
                ad171863c78f0b97c8e9ae82ae43d3",
        fields: RESP_1,
        table: RESP_TABLE_1,
        size: 222,
    },
    Example {
        block: "4883640effc1c0bf",
        fields: RESP_2,
        table: RESP_TABLE_2,
        size: 222,
    },
    Example {
        block: "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7
                f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d50
                07",
        fields: RESP_3,
        table: RESP_TABLE_3,
        size: 215,
    },
];

/// A context for the response examples: a 256-byte table.
fn responses() -> Hpack {
    let mut h = Hpack::new();
    h.set_limit(256);
    h
}

#[test]
fn c1_integers() {
    // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42 at an octet
    // boundary (8-bit prefix: 7 is the widest HPACK uses, 42 fits it too).
    assert_eq!(Input(&[0xea]).integer(5), Ok(10));
    assert_eq!(Input(&[0x1f, 0x9a, 0x0a]).integer(5), Ok(1337));
    assert_eq!(Input(&[0x2a]).integer(7), Ok(42));
}

#[test]
fn c2_1_literal_with_indexing() {
    let mut h = Hpack::new();
    let block = hex("400a637573746f6d2d6b65790d637573746f6d2d686561646572");
    assert_eq!(ok(&mut h, &block), [field(b"custom-key", b"custom-header")]);
    assert_eq!(table(&h), [field(b"custom-key", b"custom-header")]);
    assert_eq!(h.size, 55);
}

#[test]
fn c2_2_literal_without_indexing() {
    let mut h = Hpack::new();
    let block = hex("040c2f73616d706c652f70617468");
    assert_eq!(ok(&mut h, &block), [field(b":path", b"/sample/path")]);
    assert!(h.table.is_empty());
    assert_eq!(h.size, 0);
}

#[test]
fn c2_3_literal_never_indexed() {
    let mut h = Hpack::new();
    let block = hex("100870617373776f726406736563726574");
    assert_eq!(ok(&mut h, &block), [field(b"password", b"secret")]);
    assert!(h.table.is_empty());
}

#[test]
fn c2_4_indexed() {
    let mut h = Hpack::new();
    assert_eq!(ok(&mut h, &hex("82")), [field(b":method", b"GET")]);
    assert!(h.table.is_empty());
}

#[test]
fn c3_requests_without_huffman() {
    check_examples(&mut Hpack::new(), &C3);
}

#[test]
fn c4_requests_with_huffman() {
    check_examples(&mut Hpack::new(), &C4);
}

#[test]
fn c5_responses_without_huffman_evict() {
    check_examples(&mut responses(), &C5);
}

#[test]
fn c6_responses_with_huffman_evict() {
    check_examples(&mut responses(), &C6);
}

#[test]
fn every_prefix_of_every_example_is_ok_or_truncated() {
    for (examples, fresh) in [
        (&C3, Hpack::new as fn() -> Hpack),
        (&C4, Hpack::new),
        (&C5, responses),
        (&C6, responses),
    ] {
        let mut h = fresh();
        for ex in examples.iter() {
            let block = hex(ex.block);
            let full = fields_of(ex.fields);
            for cut in 0..=block.len() {
                let mut copy = h.clone();
                let (result, fields, unknown) = run(&mut copy, &block[..cut]);
                // A cut falls between representations (Ok) or inside one, whose integer or
                // declared string length then runs past the end (Truncated): nothing else.
                assert!(
                    matches!(result, Ok(()) | Err(HpackError::Truncated)),
                    "{}: cut at {cut}: {result:?}",
                    ex.block
                );
                assert_eq!(unknown, 0);
                assert_eq!(fields[..], full[..fields.len()], "fields are a prefix");
                check_invariants(&copy);
            }
            ok(&mut h, &block);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Static table and Huffman.
// ---------------------------------------------------------------------------------------------

#[test]
fn static_table_is_appendix_a() {
    assert_eq!(STATIC_TABLE.len(), 61);
    let mut h = Hpack::new();
    let all: Vec<u8> = (1..=61).map(|i| 0x80 | i).collect();
    let fields = ok(&mut h, &all);
    assert_eq!(fields.len(), 61);
    assert_eq!(fields[0], field(b":authority", b""));
    assert_eq!(fields[15], field(b"accept-encoding", b"gzip, deflate"));
    assert_eq!(fields[32], field(b"date", b""));
    assert_eq!(fields[54], field(b"set-cookie", b""));
    assert_eq!(fields[60], field(b"www-authenticate", b""));
}

#[test]
fn huffman_table_is_complete_and_prefix_free() {
    // Kraft sum exactly 1 over 257 symbols (the build also checks it, and consecutiveness).
    let kraft: u64 = HUFFMAN_CODES
        .iter()
        .map(|&(_, len)| 1u64 << (30 - len))
        .sum();
    assert_eq!(kraft, 1 << 30);
    assert_eq!(HUFFMAN_CODES[256], (0x3fff_ffff, 30));
}

#[test]
fn huffman_round_trips_every_byte() {
    let mut out = Vec::new();
    for b in 0..=255u8 {
        // Alone (every padding length from 0 to 7 occurs), and tripled.
        for text in [vec![b], vec![b, b, b]] {
            huffman_decode(&huffman_encode(&text), &mut out).unwrap();
            assert_eq!(out, text, "byte {b}");
        }
    }
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    huffman_decode(&huffman_encode(&all), &mut out).unwrap();
    assert_eq!(out, all);
    huffman_decode(&[], &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn huffman_rejects_eos_and_bad_padding() {
    let decode = |input: &[u8]| huffman_decode(input, &mut Vec::new());
    // EOS (thirty ones) whole inside the string.
    assert_eq!(
        decode(&[0xff, 0xff, 0xff, 0xff]),
        Err(HpackError::BadHuffman)
    );
    // 'a' (00011), EOS, then two bits of padding.
    assert_eq!(
        decode(&[0b0001_1111, 0xff, 0xff, 0xff, 0b1111_1111]),
        Err(HpackError::BadHuffman)
    );
    // Eight ones of padding.
    assert_eq!(decode(&[0xff]), Err(HpackError::BadHuffman));
    // 'a' then eleven ones.
    assert_eq!(decode(&[0b0001_1111, 0xff]), Err(HpackError::BadHuffman));
    // '0' (00000) then three zero bits: padding not all ones.
    assert_eq!(decode(&[0x00]), Err(HpackError::BadHuffman));
    // 'a' then a one and two zeros.
    assert_eq!(decode(&[0b0001_1100]), Err(HpackError::BadHuffman));
    // An incomplete code: the first eight bits of '!' (11111110 00).
    assert_eq!(decode(&[0xfe]), Err(HpackError::BadHuffman));
    // 'a', '0', then six ones: valid.
    let mut out = Vec::new();
    huffman_decode(&[0b0001_1000, 0b0011_1111], &mut out).unwrap();
    assert_eq!(out, b"a0");
    // In a block: EOS in a value.
    let mut h = Hpack::new();
    assert_eq!(
        err(&mut h, &[0x00, 0x01, b'a', 0x84, 0xff, 0xff, 0xff, 0xff]),
        HpackError::BadHuffman
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed blocks.
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_indices() {
    let mut h = Hpack::new();
    assert_eq!(err(&mut h, &[0x80]), HpackError::BadIndex, "index 0");
    assert_eq!(
        err(&mut h, &[0xbe]),
        HpackError::BadIndex,
        "62, empty table"
    );
    assert_eq!(err(&mut h, &[0x7e, 0x00]), HpackError::BadIndex, "name 62");
    assert_eq!(
        err(&mut h, &[0x0f, 0x2f, 0x00]),
        HpackError::BadIndex,
        "name 62"
    );
    // u32::MAX is a valid integer but no index.
    let mut block = Vec::new();
    put_int(&mut block, 0x80, 7, u64::from(u32::MAX));
    assert_eq!(err(&mut h, &block), HpackError::BadIndex);
    // One past the dynamic table.
    let mut h = Hpack::new();
    ok(&mut h, &hex(C3[0].block));
    assert_eq!(
        ok(&mut h, &[0xbe]),
        [field(b":authority", b"www.example.com")]
    );
    assert_eq!(err(&mut h, &[0xbf]), HpackError::BadIndex);
}

#[test]
fn integer_bounds() {
    let mut h = Hpack::new();
    // 127 + 2^32 - 1: five continuation bytes, beyond u32.
    assert_eq!(
        err(&mut h, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        HpackError::BadInteger
    );
    // A sixth continuation byte.
    assert_eq!(
        err(&mut h, &[0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
        HpackError::BadInteger
    );
    // A padded but in-range encoding of 127 + 1 (five bytes): accepted, then a bad index.
    assert_eq!(
        err(&mut h, &[0xff, 0x81, 0x80, 0x80, 0x80, 0x00]),
        HpackError::BadIndex
    );
    // Cut inside the integer.
    assert_eq!(err(&mut h, &[0xff]), HpackError::Truncated);
    assert_eq!(err(&mut h, &[0xff, 0x80]), HpackError::Truncated);
    // The largest u32 as a 5-bit integer decodes.
    let mut block = Vec::new();
    put_int(&mut block, 0, 5, u64::from(u32::MAX));
    assert_eq!(Input(&block).integer(5), Ok(u32::MAX));
    block.clear();
    put_int(&mut block, 0, 5, u64::from(u32::MAX) + 1);
    assert_eq!(Input(&block).integer(5), Err(HpackError::BadInteger));
}

#[test]
fn size_updates() {
    // At most the limit: 4096 (0x3f e1 1f), not 4097.
    let mut h = Hpack::new();
    assert_eq!(
        err(&mut h, &[0x3f, 0xe2, 0x1f, 0x82]),
        HpackError::BadSizeUpdate
    );
    let mut h = Hpack::new();
    assert_eq!(ok(&mut h, &[0x3f, 0xe1, 0x1f, 0x82]).len(), 1);
    assert_eq!(h.max_size, 4096);
    // Two in a row (shrink then grow), and one alone, are fine.
    assert!(ok(&mut h, &[0x20, 0x3f, 0xe1, 0x1f]).is_empty());
    // Not after a field.
    assert_eq!(err(&mut h, &[0x82, 0x20]), HpackError::BadSizeUpdate);
    // Above the limit even when SETTINGS allowed more than we honour.
    let mut h = Hpack::new();
    h.set_limit(1 << 20);
    let mut block = Vec::new();
    put_int(&mut block, 0x20, 5, MAX_TABLE_BYTES as u64 + 1);
    assert_eq!(err(&mut h, &block), HpackError::BadSizeUpdate);
    let mut block = Vec::new();
    put_int(&mut block, 0x20, 5, MAX_TABLE_BYTES as u64);
    ok(&mut h, &block);
    assert_eq!(h.max_size, MAX_TABLE_BYTES);
}

#[test]
fn size_update_and_lower_limit_evict() {
    let mut h = Hpack::new();
    check_examples(&mut h, &C3);
    // 110: keeps the two newest (54 + 53 = 107).
    ok(&mut h, &[0x3f, 0x4f]);
    assert_eq!(table(&h), fields_of(&REQ_TABLE_3[..2]));
    assert_eq!(h.size, 107);
    // A SETTINGS limit below the table evicts at once.
    h.set_limit(60);
    assert_eq!(table(&h), fields_of(&REQ_TABLE_3[..1]));
    assert_eq!(h.max_size, 60);
    // Raising it again does not grow the table by itself.
    h.set_limit(4096);
    assert_eq!(h.max_size, 60);
    // Zero empties it.
    ok(&mut h, &[0x20]);
    assert!(h.table.is_empty());
    assert_eq!((h.size, h.data_bytes), (0, 0));
    check_invariants(&h);
}

#[test]
fn truncated_and_oversized_strings() {
    let mut h = Hpack::new();
    assert_eq!(err(&mut h, &[0x40]), HpackError::Truncated, "no name");
    assert_eq!(err(&mut h, &[0x40, 0x05, b'a']), HpackError::Truncated);
    assert_eq!(err(&mut h, &[0x04]), HpackError::Truncated, "no value");
    assert_eq!(err(&mut h, &[0x04, 0x81]), HpackError::Truncated);

    // Exactly MAX_FIELD_BYTES passes, raw or Huffman; one more is TooLarge.
    for huffman in [false, true] {
        for (len, expect) in [
            (MAX_FIELD_BYTES, Ok(())),
            (MAX_FIELD_BYTES + 1, Err(HpackError::TooLarge)),
        ] {
            let mut block = vec![0x04];
            put_str(&mut block, &vec![b'a'; len], huffman);
            let mut h = Hpack::new();
            let (result, fields, _) = run(&mut h, &block);
            assert_eq!(result, expect, "len {len} huffman {huffman}");
            if result.is_ok() {
                assert_eq!(fields[0].value.len(), len);
            }
            // The scratch is released after the block.
            assert!(h.heap_bytes() <= 2 * SCRATCH_KEEP_BYTES);
        }
    }
}

#[test]
fn a_huge_claimed_length_allocates_nothing() {
    // A 1 MiB name length in a 10-byte block.
    let mut block = vec![0x00];
    put_int(&mut block, 0, 7, 1 << 20);
    block.resize(10, b'x');
    let mut h = Hpack::new();
    assert_eq!(err(&mut h, &block), HpackError::Truncated);
    // The string reader itself, with a scratch we can inspect: nothing reserved.
    let mut input = Input(&block[1..]);
    let mut buf = Vec::new();
    assert_eq!(
        read_string(&mut input, &mut buf),
        Err(HpackError::Truncated)
    );
    assert_eq!(buf.capacity(), 0);
    // The same with the Huffman flag.
    block[1] |= 0x80;
    let mut input = Input(&block[1..]);
    assert_eq!(
        read_string(&mut input, &mut buf),
        Err(HpackError::Truncated)
    );
    assert_eq!(buf.capacity(), 0);
}

#[test]
fn field_count_is_capped() {
    let mut h = Hpack::new();
    assert_eq!(ok(&mut h, &[0x82; MAX_FIELDS]).len(), MAX_FIELDS);
    assert_eq!(err(&mut h, &[0x82; MAX_FIELDS + 1]), HpackError::TooLarge);
}

#[test]
fn reasons() {
    let all = [
        (HpackError::Truncated, "hpack_truncated"),
        (HpackError::BadInteger, "hpack_bad_integer"),
        (HpackError::BadIndex, "hpack_bad_index"),
        (HpackError::BadHuffman, "hpack_bad_huffman"),
        (HpackError::BadSizeUpdate, "hpack_bad_size_update"),
        (HpackError::TooLarge, "hpack_too_large"),
    ];
    for (e, reason) in all {
        assert_eq!(e.reason(), reason);
        assert_eq!(e.to_string(), reason);
    }
}

// ---------------------------------------------------------------------------------------------
// Table mechanics (§4.4).
// ---------------------------------------------------------------------------------------------

#[test]
fn an_entry_larger_than_the_table_empties_it() {
    let mut h = Hpack::new();
    h.set_limit(40);
    ok(&mut h, &hex("4001610162")); // a: b, 34 bytes
    assert_eq!(h.table.len(), 1);
    // custom-key: abc, 45 bytes: decoded, and the table ends up empty.
    let fields = ok(&mut h, &hex("400a637573746f6d2d6b657903616263"));
    assert_eq!(fields, [field(b"custom-key", b"abc")]);
    assert!(h.table.is_empty());
    check_invariants(&h);
}

#[test]
fn a_dynamic_name_survives_the_eviction_of_its_entry() {
    // Room for exactly one entry: re-indexing its name with a new value evicts it.
    let mut h = Hpack::new();
    h.set_limit(32 + 10 + 3);
    ok(&mut h, &hex("400a637573746f6d2d6b657903616263")); // custom-key: abc
    let fields = ok(&mut h, &hex("7e03787978")); // name 62, value "xyx"
    assert_eq!(fields, [field(b"custom-key", b"xyx")]);
    assert_eq!(table(&h), [field(b"custom-key", b"xyx")]);
}

#[test]
fn scratch_is_released_and_heap_is_counted() {
    let mut h = Hpack::new();
    assert_eq!(h.heap_bytes(), 0);
    check_examples(&mut h, &C3);
    let small = h.heap_bytes();
    assert!(small >= 3 * std::mem::size_of::<Entry>() + (164 - 3 * 32));
    assert!(small < 4 * 1024, "{small}");
}

// ---------------------------------------------------------------------------------------------
// Unknown mode.
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_mode_dynamic_reference_is_unknown_static_decodes() {
    let mut h = Hpack::new_unknown();
    let (result, fields, unknown) = run(&mut h, &[0x82, 0xbe, 0x84]);
    assert_eq!(result, Ok(()));
    assert_eq!(fields, [field(b":method", b"GET"), field(b":path", b"/")]);
    assert_eq!(unknown, 1);
    // A literal with an unknown name: unknown, but still consumes its value.
    let (result, fields, unknown) = run(&mut h, &hex("0f2f03616263 82"));
    assert_eq!(result, Ok(()));
    assert_eq!((fields, unknown), (vec![field(b":method", b"GET")], 1));
    // Index 0 stays an error, and so does an index no 64 KiB table can reach.
    assert_eq!(
        err(&mut Hpack::new_unknown(), &[0x80]),
        HpackError::BadIndex
    );
    let reach = STATIC_TABLE.len() + MAX_TABLE_BYTES / ENTRY_OVERHEAD;
    let mut block = Vec::new();
    put_int(&mut block, 0x80, 7, reach as u64);
    assert_eq!(run(&mut Hpack::new_unknown(), &block).2, 1);
    block.clear();
    put_int(&mut block, 0x80, 7, reach as u64 + 1);
    assert_eq!(err(&mut Hpack::new_unknown(), &block), HpackError::BadIndex);
}

#[test]
fn unknown_mode_tracks_what_it_sees_inserted() {
    let mut h = Hpack::new_unknown();
    // C.3.1 inserts :authority; C.3.2 refers to it (62) and inserts cache-control.
    assert_eq!(ok(&mut h, &hex(C3[0].block)), fields_of(REQ_1));
    assert_eq!(ok(&mut h, &hex(C3[1].block)), fields_of(REQ_2));
    // 64 is older than anything we saw: unknown.
    let (result, fields, unknown) = run(&mut h, &[0xbf, 0xc0]);
    assert_eq!(result, Ok(()));
    assert_eq!(fields, [field(b":authority", b"www.example.com")]);
    assert_eq!(unknown, 1);
    // An insertion whose name is unknown: a placeholder at 62, still unknown.
    let (result, _, unknown) = run(&mut h, &hex("7f0103 78797a")); // name 64, value "xyz"
    assert_eq!((result, unknown), (Ok(()), 1));
    assert_eq!(h.table.len(), 3);
    assert_eq!(h.size, 110 + 3 + 32);
    let (_, fields, unknown) = run(&mut h, &[0xbe, 0xbf]);
    assert_eq!(fields, [field(b"cache-control", b"no-cache")]);
    assert_eq!(unknown, 1);
    // A size update the tracked entries fill (145 >= 100): the older ones are gone, an
    // index past the table is an error again.
    ok(&mut h, &[0x3f, 0x45]);
    assert!(!h.older_unknown);
    assert_eq!(err(&mut h, &[0xc1]), HpackError::BadIndex);
}

#[test]
fn is_unknown_and_limit() {
    let mut h = Hpack::new();
    assert!(!h.is_unknown());
    assert_eq!(h.limit(), 4096);
    h.set_limit(1 << 20);
    assert_eq!(h.limit(), MAX_TABLE_BYTES);
    let mut h = Hpack::new_unknown();
    assert!(h.is_unknown());
    assert_eq!(h.limit(), MAX_TABLE_BYTES);
    h.set_limit(100);
    assert_eq!(h.limit(), 100);
    // Literals without indexing and static references track nothing: still wholly unknown.
    ok(&mut h, &hex("82 040c2f73616d706c652f70617468"));
    assert!(h.is_unknown());
    // Once it tracks an insertion, a lost block would desynchronise it.
    ok(&mut h, &hex("4001610162"));
    assert!(!h.is_unknown());
    // Likewise once the older entries are provably gone.
    let mut h = Hpack::new_unknown();
    ok(&mut h, &[0x20]);
    assert!(!h.is_unknown());
}

#[test]
fn unknown_mode_size_update_to_zero_makes_it_known() {
    let mut h = Hpack::new_unknown();
    ok(&mut h, &[0x20]);
    assert_eq!(err(&mut h, &[0xbe]), HpackError::BadIndex);
    // A larger update that the (empty) tracked table does not fill keeps it unknown.
    let mut h = Hpack::new_unknown();
    ok(&mut h, &[0x3f, 0xe1, 0x1f]);
    assert_eq!(run(&mut h, &[0xbe]).2, 1);
}

// ---------------------------------------------------------------------------------------------
// Simulation: a model encoder against the decoder, from the start and adopted mid-stream.
// ---------------------------------------------------------------------------------------------

/// An encoder following RFC 7541 with its own table, choosing representations at random.
struct Encoder {
    /// (name, value, known to a decoder adopted mid-stream), newest first.
    table: VecDeque<(Vec<u8>, Vec<u8>, bool)>,
    size: usize,
    max: usize,
    /// Whether a decoder adopted now has seen the insertions from here on.
    adopted: bool,
}

impl Encoder {
    fn new(max: usize) -> Self {
        Encoder {
            table: VecDeque::new(),
            size: 0,
            max,
            adopted: false,
        }
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let (n, v, _) = self.table.pop_back().unwrap();
            self.size -= n.len() + v.len() + 32;
        }
    }

    fn size_update(&mut self, out: &mut Vec<u8>, max: usize) {
        put_int(out, 0x20, 5, max as u64);
        self.max = max;
        self.evict_to(max);
    }

    /// Encodes one field; returns whether the adopted decoder can know it.
    fn field(&mut self, out: &mut Vec<u8>, rng: &mut Xorshift, name: &[u8], value: &[u8]) -> bool {
        let full = self
            .table
            .iter()
            .position(|(n, v, _)| n == name && v == value);
        if let (Some(i), true) = (full, rng.chance(80)) {
            put_int(out, 0x80, 7, (62 + i) as u64);
            return self.table[i].2;
        }
        let static_name = STATIC_TABLE.iter().position(|(n, _)| *n == name);
        let dynamic_name = self.table.iter().position(|(n, _, _)| n == name);
        let (name_index, name_known) = match (static_name, dynamic_name, rng.below(3)) {
            (Some(i), _, 0 | 1) => (i + 1, true),
            (_, Some(i), 0 | 1) => (62 + i, self.table[i].2),
            _ => (0, true),
        };
        let huffman = rng.chance(50);
        let (flags, prefix, index) = match rng.below(4) {
            0 | 1 => (0x40, 6, true),
            2 => (0x00, 4, false),
            _ => (0x10, 4, false),
        };
        put_int(out, flags, prefix, name_index as u64);
        if name_index == 0 {
            put_str(out, name, huffman);
        }
        put_str(out, value, huffman);
        if index {
            let size = name.len() + value.len() + 32;
            if size > self.max {
                self.evict_to(0);
            } else {
                self.evict_to(self.max - size);
                self.size += size;
                let known = self.adopted && name_known;
                self.table
                    .push_front((name.to_vec(), value.to_vec(), known));
            }
        }
        name_known
    }
}

const NAMES: [&[u8]; 8] = [
    b":path",
    b":authority",
    b"content-type",
    b"user-agent",
    b"x-request-id",
    b"grpc-timeout",
    b"x-b3-traceid",
    b"cookie",
];

fn random_field(rng: &mut Xorshift) -> (Vec<u8>, Vec<u8>) {
    let name = NAMES[rng.below(NAMES.len() as u64) as usize].to_vec();
    let value = if rng.chance(70) {
        // Few distinct values, so the table gets reused.
        format!("v{}", rng.below(6)).into_bytes()
    } else {
        // Occasionally long ones, so it gets evicted too.
        let len = rng.below(300) as usize;
        rng.bytes(len)
    };
    (name, value)
}

#[test]
fn simulation_from_start_and_adopted_mid_stream() {
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..40 {
        let mut enc = Encoder::new(4096);
        let mut from_start = Hpack::new();
        from_start.set_limit(MAX_TABLE_BYTES);
        let mut adopted: Option<Hpack> = None;
        let mut resolved = 0;
        for block_no in 0..60 {
            if block_no == 10 {
                adopted = Some(Hpack::new_unknown());
                enc.adopted = true;
                for entry in enc.table.iter_mut() {
                    entry.2 = false;
                }
            }
            let mut block = Vec::new();
            if rng.chance(10) {
                let max = [0, 100, 256, 1024, 4096, 8192][rng.below(6) as usize];
                enc.size_update(&mut block, max);
            }
            let mut expected = Vec::new();
            for _ in 0..rng.below(12) {
                let (name, value) = random_field(&mut rng);
                let known = enc.field(&mut block, &mut rng, &name, &value);
                expected.push((field(&name, &value), known));
            }
            let want: Vec<Field> = expected.iter().map(|(f, _)| f.clone()).collect();
            assert_eq!(ok(&mut from_start, &block), want);
            check_invariants(&from_start);
            assert_eq!(table(&from_start).len(), enc.table.len());
            if let Some(h) = adopted.as_mut() {
                let (result, fields, unknown) = run(h, &block);
                assert_eq!(result, Ok(()));
                let want: Vec<Field> = expected
                    .iter()
                    .filter(|(_, known)| *known)
                    .map(|(f, _)| f.clone())
                    .collect();
                assert_eq!(fields, want);
                assert_eq!(unknown, expected.len() - want.len());
                resolved += fields.len();
                check_invariants(h);
            }
        }
        assert!(resolved > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input.
// ---------------------------------------------------------------------------------------------

/// What a context may hold at most: the table's contents, one entry header per 32 size
/// units (`capacity` doubles up to that count), and the scratch kept between blocks.
const HEAP_BOUND: usize = MAX_TABLE_BYTES
    + (MAX_TABLE_BYTES / ENTRY_OVERHEAD) * std::mem::size_of::<Entry>()
    + 2 * SCRATCH_KEEP_BYTES;

/// A random block: plain noise, or plausible representations with noise mixed in.
fn random_block(rng: &mut Xorshift) -> Vec<u8> {
    let mut block = Vec::new();
    if rng.chance(40) {
        let len = rng.below(64) as usize;
        return rng.bytes(len);
    }
    for _ in 0..rng.below(10) {
        match rng.below(6) {
            0 => put_int(&mut block, 0x80, 7, rng.below(80)),
            1 => put_int(&mut block, 0x20, 5, rng.below(70_000)),
            2 => {
                put_int(&mut block, 0x40, 6, rng.below(70));
                let len = rng.below(2_000) as usize;
                put_str(&mut block, &rng.bytes(len), rng.chance(50));
            }
            3 => {
                put_int(&mut block, 0x40, 6, 0);
                let len = rng.below(40) as usize;
                put_str(&mut block, &rng.bytes(len), rng.chance(50));
                let len = rng.below(40) as usize;
                put_str(&mut block, &rng.bytes(len), rng.chance(50));
            }
            4 => {
                put_int(&mut block, rng.below(2) as u8 * 0x10, 4, rng.below(70));
                let len = rng.below(40) as usize;
                put_str(&mut block, &rng.bytes(len), rng.chance(50));
            }
            _ => {
                let len = rng.below(8) as usize;
                block.extend(rng.bytes(len));
            }
        }
    }
    if !block.is_empty() && rng.chance(30) {
        let at = rng.below(block.len() as u64) as usize;
        block[at] = rng.next() as u8;
    }
    if rng.chance(20) {
        let len = rng.below(block.len() as u64 + 1) as usize;
        block.truncate(len);
    }
    block
}

#[test]
fn random_blocks_never_panic_and_stay_bounded() {
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let mut h = Hpack::new();
    let mut outcomes = [0usize; 2];
    for _ in 0..20_000 {
        if rng.chance(2) {
            h = if rng.chance(50) {
                Hpack::new()
            } else {
                Hpack::new_unknown()
            };
        }
        if rng.chance(5) {
            h.set_limit(rng.below(2 * MAX_TABLE_BYTES as u64) as usize);
        }
        let block = random_block(&mut rng);
        let (result, fields, unknown) = run(&mut h, &block);
        outcomes[usize::from(result.is_ok())] += 1;
        assert!(fields.len() + unknown <= MAX_FIELDS);
        assert!(fields
            .iter()
            .all(|f| f.name.len() <= MAX_FIELD_BYTES && f.value.len() <= MAX_FIELD_BYTES));
        // After an error the caller would stop; keep feeding the same context anyway, to
        // show it stays memory-safe and bounded.
        check_invariants(&h);
        assert!(h.heap_bytes() <= HEAP_BOUND, "{}", h.heap_bytes());
    }
    // Both paths were exercised.
    assert!(outcomes[0] > 1_000 && outcomes[1] > 1_000, "{outcomes:?}");
}

#[test]
fn a_full_table_stays_bounded() {
    // The most entries a 64 KiB table holds (empty name and value: 32 units each), then the
    // most bytes (a few large entries).
    let mut h = Hpack::new();
    h.set_limit(MAX_TABLE_BYTES);
    let mut block = Vec::new();
    put_int(&mut block, 0x20, 5, MAX_TABLE_BYTES as u64);
    ok(&mut h, &block);
    for _ in 0..2 * MAX_TABLE_BYTES / ENTRY_OVERHEAD / MAX_FIELDS {
        ok(&mut h, &[0x40, 0x00, 0x00].repeat(MAX_FIELDS));
    }
    assert_eq!(h.table.len(), MAX_TABLE_BYTES / ENTRY_OVERHEAD);
    assert!(h.heap_bytes() <= HEAP_BOUND, "{}", h.heap_bytes());
    let mut block = Vec::new();
    for _ in 0..8 {
        put_int(&mut block, 0x40, 6, 0);
        put_str(&mut block, b"n", false);
        put_str(&mut block, &vec![b'v'; MAX_FIELD_BYTES], false);
    }
    ok(&mut h, &block);
    check_invariants(&h);
    assert!(h.heap_bytes() <= HEAP_BOUND, "{}", h.heap_bytes());
    // Shrinking the table gives the entry slots back.
    ok(&mut h, &[0x20]);
    assert!(h.heap_bytes() <= 2 * SCRATCH_KEEP_BYTES + 64 * std::mem::size_of::<Entry>());
}
