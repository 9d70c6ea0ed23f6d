//! HPACK (RFC 7541) header-block decoding for a passive HTTP/2 observer.
//!
//! One [`Hpack`] is the decoding context of one direction of one connection: the dynamic table
//! the peer's encoder maintains, mirrored from the header blocks we watch go by. [`Hpack::decode`]
//! takes one complete header block (HEADERS + CONTINUATION payloads joined) and reports each
//! field through a callback, borrowing names and values from the tables or from two reused
//! scratch buffers, so a block costs no allocation per field.
//!
//! # Hostile input
//! Every byte comes from an untrusted pod, so:
//! - nothing recurses and every loop consumes input, so the work is linear in the block;
//! - a length is believed only once the bytes it claims are present in the block (a 1 MiB
//!   string length in a 10-byte block is [`HpackError::Truncated`], nothing is reserved);
//! - every buffer has a cap declared next to it: a decoded name or value
//!   ([`MAX_FIELD_BYTES`]), the fields of a block ([`MAX_FIELDS`]), the dynamic table
//!   ([`MAX_TABLE_BYTES`], whatever the peer's SETTINGS say), the scratch kept between blocks
//!   (`SCRATCH_KEEP_BYTES`), an integer (`MAX_INT_CONTINUATIONS` bytes, at most `u32::MAX`);
//! - nothing panics: slices are split with checked methods, table positions are looked up
//!   with `get`, every subtraction is guarded, and the Huffman tables are checked when the
//!   crate compiles (the one direct indexing, by code length, is bounded by its range).
//!
//! An error leaves the table in a memory-safe but meaningless state: the caller stops
//! decoding the connection, since every later block depends on the table.
//!
//! # Unknown mode (a connection adopted mid-stream)
//! The dynamic table's older contents were inserted before we started watching, but HPACK
//! indexes the dynamic table by *recency* (index 62 is the newest insertion), so the entries
//! inserted since we started are exactly the newest ones and their indices are known. What we
//! cannot know is what sits behind them, nor exactly when the encoder evicts (it depends on
//! the sizes of the entries we never saw). Hence, in [`Hpack::new_unknown`]:
//! - a reference to one of the entries we saw inserted resolves normally;
//! - a reference past them is reported through `on_unknown` rather than failing (up to the
//!   most entries a table of the current maximum size can hold: beyond that it is garbage);
//! - we evict no earlier than the encoder does (our sizes are lower bounds and our maximum is
//!   an upper bound on the encoder's), so an entry the encoder still holds is never dropped
//!   here; an entry the encoder dropped and we kept is harmless, a conforming encoder never
//!   refers to it (an encoder whose table outgrew [`MAX_TABLE_BYTES`] before we started
//!   breaks the bound: then entries we dropped early read as unknown, never as wrong);
//! - an insertion whose name is itself unknown is tracked as a placeholder: its position
//!   counts, its content is unknown (references to it are unknown too) and its size counts as
//!   the value's plus 32, a lower bound;
//! - the older entries are known to be gone once the encoder provably emptied them: a size
//!   update no larger than what the entries we track already occupy, or an insertion larger
//!   than the table. From then on a reference past the tracked entries is an error again.
//!
//! A header block we missed (a capture gap) desynchronises the table for good; the caller
//! then starts a fresh [`Hpack::new_unknown`] (needless only while [`Hpack::is_unknown`]).
//!
//! # Huffman
//! The code of Appendix B is canonical (for each length, the codes are consecutive and
//! numerically above every shorter code shifted to that length). The decoder keeps a 56-bit
//! window of input, and finds each symbol's length by comparing the next 32 bits against the
//! upper bound of each length's codes (at most 26 comparisons, 1 to 4 for the common 5- to
//! 8-bit symbols); the symbol is then an offset into the codes sorted by length. The tables are
//! built and checked (complete, consecutive, one slot per symbol) by `const fn` at compile
//! time.

use std::collections::VecDeque;
use std::fmt;

/// The largest dynamic table we mirror, in RFC size units (name + value + 32 per entry).
/// A peer advertising more in SETTINGS_HEADER_TABLE_SIZE is clamped to this, and an encoder
/// that then signals a larger table fails with [`HpackError::BadSizeUpdate`]: 64 KiB covers
/// the defaults of every mainstream stack (4 KiB) with room to spare, and bounds what one
/// direction of one connection can make us hold.
pub const MAX_TABLE_BYTES: usize = 65_536;

/// The longest decoded name or value, in bytes; longer is [`HpackError::TooLarge`]. Also the
/// most either scratch buffer grows to. The caller decodes header blocks of at most 64 KiB
/// (`MAX_BLOCK_BYTES`), whose strings Huffman-decode to at most 8/5 of their length: 128 KiB
/// lets any field of an accepted block decode (a 24 KiB cookie is real traffic) and still
/// bounds the scratch.
pub const MAX_FIELD_BYTES: usize = 128 * 1024;

/// The most fields in one header block; more is [`HpackError::TooLarge`]. Real requests carry
/// a few dozen; the cap stops a block of one-byte indexed fields from flooding the caller.
pub const MAX_FIELDS: usize = 256;

/// The table size an HTTP/2 endpoint starts with (RFC 7540 §6.5.2 SETTINGS_HEADER_TABLE_SIZE).
const DEFAULT_TABLE_BYTES: usize = 4_096;

/// The per-entry overhead in the RFC's size accounting (RFC 7541 §4.1). Also means a table of
/// `n` size units holds at most `n / 32` entries.
const ENTRY_OVERHEAD: usize = 32;

/// The scratch capacity kept between blocks, per buffer: a larger one (after an unusually long
/// field) is released, so an idle connection does not pin up to 2 × [`MAX_FIELD_BYTES`].
const SCRATCH_KEEP_BYTES: usize = 1_024;

/// Continuation bytes an integer may take after its prefix: 5 × 7 bits already exceed the
/// `u32` range we accept, so a longer one can only be padding or an attack.
const MAX_INT_CONTINUATIONS: usize = 5;

/// The static table (RFC 7541 Appendix A); index `i` (1-based on the wire) is entry `i - 1`.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Why a header block could not be decoded. Every variant means the table may now differ
/// from the encoder's: the caller stops decoding the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// Block ended in the middle of a representation / integer / string.
    Truncated,
    /// Integer over 2^32 or longer than 5 continuation bytes.
    BadInteger,
    /// Index 0, or beyond static+dynamic table.
    BadIndex,
    /// Invalid Huffman (EOS symbol inside, padding > 7 bits or not all ones).
    BadHuffman,
    /// Dynamic table size update above the limit or not at the block start.
    BadSizeUpdate,
    /// Field or block beyond MAX_FIELD_BYTES / MAX_FIELDS.
    TooLarge,
}

impl HpackError {
    /// Low-cardinality snake_case reason, fit for a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            HpackError::Truncated => "hpack_truncated",
            HpackError::BadInteger => "hpack_bad_integer",
            HpackError::BadIndex => "hpack_bad_index",
            HpackError::BadHuffman => "hpack_bad_huffman",
            HpackError::BadSizeUpdate => "hpack_bad_size_update",
            HpackError::TooLarge => "hpack_too_large",
        }
    }
}

impl fmt::Display for HpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HpackError {}

/// One dynamic table entry.
#[derive(Debug, Clone)]
struct Entry {
    /// Name then value, in one allocation; `None` for a placeholder whose name came from an
    /// entry we never saw (unknown mode): its position is known, its content is not.
    bytes: Option<Box<[u8]>>,
    /// Where the name ends in `bytes` (at most [`MAX_FIELD_BYTES`]).
    name_len: usize,
    /// RFC size (name + value + 32); for a placeholder a lower bound (value + 32).
    size: usize,
}

impl Entry {
    /// The (name, value) pair, or `None` for a placeholder.
    fn field(&self) -> Option<(&[u8], &[u8])> {
        self.bytes
            .as_deref()
            .and_then(|b| b.split_at_checked(self.name_len))
    }
}

/// Where an index points.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// 0-based into [`STATIC_TABLE`].
    Static(usize),
    /// 0-based into the dynamic table, newest first.
    Dynamic(usize),
    /// Into the dynamic table, at an entry inserted before we started watching.
    Unknown,
}

/// The decoding context of one direction of one connection.
///
/// Bounded by [`MAX_TABLE_BYTES`] of entries (plus at most `MAX_TABLE_BYTES / 32` entry
/// headers) and two scratch buffers of at most [`MAX_FIELD_BYTES`] each during a block,
/// `SCRATCH_KEEP_BYTES` each between blocks; [`Hpack::heap_bytes`] reports the total.
#[derive(Debug, Clone)]
pub struct Hpack {
    /// The dynamic table, newest entry first (wire index 62 is `table[0]`), so insertion is
    /// `push_front` and eviction `pop_back`.
    table: VecDeque<Entry>,
    /// Sum of the entries' sizes (RFC units), at most `max_size`.
    size: usize,
    /// Heap bytes held by the entries' contents.
    data_bytes: usize,
    /// The table's current maximum size, as the encoder last signalled it (RFC 7541 §4.2);
    /// at most `limit`.
    max_size: usize,
    /// The peer's SETTINGS_HEADER_TABLE_SIZE, clamped to [`MAX_TABLE_BYTES`]: the most a size
    /// update may ask for.
    limit: usize,
    /// Unknown mode: entries inserted before we started watching may still sit behind the
    /// ones in `table`.
    older_unknown: bool,
    /// Scratch for a literal name, reused across fields (at most [`MAX_FIELD_BYTES`]).
    name_buf: Vec<u8>,
    /// Scratch for a literal value, reused across fields (at most [`MAX_FIELD_BYTES`]).
    value_buf: Vec<u8>,
}

impl Default for Hpack {
    fn default() -> Self {
        Self::new()
    }
}

impl Hpack {
    /// A table for a connection seen from its start: dynamic table empty, limit 4096 (the
    /// RFC 7540 default SETTINGS_HEADER_TABLE_SIZE).
    pub fn new() -> Self {
        Hpack {
            table: VecDeque::new(),
            size: 0,
            data_bytes: 0,
            max_size: DEFAULT_TABLE_BYTES,
            limit: DEFAULT_TABLE_BYTES,
            older_unknown: false,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// A table for a connection adopted mid-stream: the dynamic table's contents are
    /// unknown. References to entries inserted after this point decode normally; references
    /// to older ones are reported through `on_unknown` (see the module docs for why this is
    /// exact). Static-table references and literals decode normally.
    ///
    /// The peer's SETTINGS were missed too, so both the limit and the table's maximum start
    /// at [`MAX_TABLE_BYTES`]: that accepts any size update we could honour and never evicts
    /// an entry the encoder still holds. [`Hpack::set_limit`] narrows them when SETTINGS are
    /// seen.
    pub fn new_unknown() -> Self {
        Hpack {
            max_size: MAX_TABLE_BYTES,
            limit: MAX_TABLE_BYTES,
            older_unknown: true,
            ..Self::new()
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE (the limit the *encoder* may use for this
    /// table): clamp to MAX_TABLE_BYTES; evict as needed.
    ///
    /// Call it where the encoder starts honouring the setting: at the SETTINGS ACK the
    /// encoder's side sends (it writes later header blocks under the new limit). A lower
    /// limit shrinks the table at once (the encoder must signal a size update no larger in
    /// its next block anyway); a higher one only allows the encoder to grow the table with a
    /// size update later.
    pub fn set_limit(&mut self, bytes: usize) {
        self.limit = bytes.min(MAX_TABLE_BYTES);
        if self.max_size > self.limit {
            self.max_size = self.limit;
            self.evict_to(self.limit);
        }
    }

    /// Whether the dynamic table is wholly unknown: entries from before we started watching
    /// may remain and none inserted since is tracked, so losing a header block of this
    /// direction changes nothing. A context that is not (it tracks entries, from the start or
    /// since adoption) is desynchronised by a lost block: replace it with a fresh
    /// [`Hpack::new_unknown`] (carrying over [`Hpack::limit`]).
    pub fn is_unknown(&self) -> bool {
        self.older_unknown && self.table.is_empty()
    }

    /// The SETTINGS_HEADER_TABLE_SIZE in force, as clamped by [`Hpack::set_limit`] (4096 from
    /// [`Hpack::new`], [`MAX_TABLE_BYTES`] from [`Hpack::new_unknown`] until set).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads concatenated,
    /// padding and priority already removed), calling `on_field` for every field in order.
    /// Fields whose name or value come from an unknown dynamic entry are reported as
    /// `on_unknown()` (count them) instead. On error the table is left in an
    /// unspecified-but-memory-safe state; the caller stops decoding the connection.
    ///
    /// Names and values passed to `on_field` borrow from the tables or from scratch buffers
    /// reused for the next field: copy what must outlive the call.
    pub fn decode(
        &mut self,
        block: &[u8],
        on_field: &mut dyn FnMut(&[u8], &[u8]),
        on_unknown: &mut dyn FnMut(),
    ) -> Result<(), HpackError> {
        let result = self.decode_block(block, on_field, on_unknown);
        trim_scratch(&mut self.name_buf);
        trim_scratch(&mut self.value_buf);
        result
    }

    /// Approximate heap bytes held (for a memory budget).
    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * std::mem::size_of::<Entry>()
            + self.data_bytes
            + self.name_buf.capacity()
            + self.value_buf.capacity()
    }

    fn decode_block(
        &mut self,
        block: &[u8],
        on_field: &mut dyn FnMut(&[u8], &[u8]),
        on_unknown: &mut dyn FnMut(),
    ) -> Result<(), HpackError> {
        let mut input = Input(block);
        let mut fields = 0usize;
        // Every arm consumes at least the byte peeked here, so the loop ends.
        while let Some(first) = input.peek() {
            if first & 0x80 != 0 {
                // 1xxxxxxx: indexed field (§6.1).
                let index = input.integer(7)?;
                count_field(&mut fields)?;
                let slot = self.slot(index)?;
                match self.resolve(slot) {
                    Some((name, value)) => on_field(name, value),
                    None => on_unknown(),
                }
            } else if first & 0x40 != 0 {
                // 01xxxxxx: literal with incremental indexing (§6.2.1).
                count_field(&mut fields)?;
                self.literal(&mut input, 6, true, on_field, on_unknown)?;
            } else if first & 0x20 != 0 {
                // 001xxxxx: dynamic table size update (§6.3), only before the first field
                // (§4.2).
                if fields > 0 {
                    return Err(HpackError::BadSizeUpdate);
                }
                let size = input.integer(5)? as usize;
                self.size_update(size)?;
            } else {
                // 0000xxxx without indexing (§6.2.2), 0001xxxx never indexed (§6.2.3): the
                // same to a decoder, the never-indexed bit only binds re-encoders.
                count_field(&mut fields)?;
                self.literal(&mut input, 4, false, on_field, on_unknown)?;
            }
        }
        Ok(())
    }

    /// A literal field whose first byte has a `prefix_bits` name index (0: literal name);
    /// `index` inserts it into the dynamic table afterwards.
    fn literal(
        &mut self,
        input: &mut Input<'_>,
        prefix_bits: u32,
        index: bool,
        on_field: &mut dyn FnMut(&[u8], &[u8]),
        on_unknown: &mut dyn FnMut(),
    ) -> Result<(), HpackError> {
        let name_index = input.integer(prefix_bits)?;
        let name_slot = if name_index == 0 {
            read_string(input, &mut self.name_buf)?;
            None
        } else {
            Some(self.slot(name_index)?)
        };
        read_string(input, &mut self.value_buf)?;

        let name = match name_slot {
            None => Some(self.name_buf.as_slice()),
            Some(slot) => self.resolve(slot).map(|(name, _)| name),
        };
        let value = self.value_buf.as_slice();
        match name {
            Some(name) => on_field(name, value),
            None => on_unknown(),
        }
        if !index {
            return Ok(());
        }
        // The new entry is built before inserting: the insertion may evict the very entry
        // the name came from (§4.4).
        let size = name.map_or(0, <[u8]>::len) + value.len() + ENTRY_OVERHEAD;
        let entry = if size > self.max_size {
            // It only empties the table: allocate nothing.
            Entry {
                bytes: None,
                name_len: 0,
                size,
            }
        } else {
            // Both parts are at most MAX_FIELD_BYTES, and within the table's maximum.
            Entry {
                bytes: name.map(|name| [name, value].concat().into_boxed_slice()),
                name_len: name.map_or(0, <[u8]>::len),
                size,
            }
        };
        self.insert(entry);
        Ok(())
    }

    /// Where a wire index (static 1..=61, then dynamic newest first) points.
    fn slot(&self, index: u32) -> Result<Slot, HpackError> {
        let index = index as usize;
        if index == 0 {
            return Err(HpackError::BadIndex);
        }
        if index <= STATIC_TABLE.len() {
            return Ok(Slot::Static(index - 1));
        }
        let position = index - STATIC_TABLE.len() - 1;
        if position < self.table.len() {
            Ok(Slot::Dynamic(position))
        } else if self.older_unknown && position < self.max_size / ENTRY_OVERHEAD {
            // Behind the entries we saw inserted, yet within what a table of this maximum
            // can hold: an entry from before we started watching.
            Ok(Slot::Unknown)
        } else {
            Err(HpackError::BadIndex)
        }
    }

    /// The (name, value) at a slot, `None` when unknown.
    fn resolve(&self, slot: Slot) -> Option<(&[u8], &[u8])> {
        match slot {
            Slot::Static(i) => STATIC_TABLE.get(i).copied(),
            Slot::Dynamic(i) => self.table.get(i).and_then(Entry::field),
            Slot::Unknown => None,
        }
    }

    /// Adds an entry (§4.4): evict the oldest until it fits; an entry larger than the whole
    /// table empties it and is not added.
    fn insert(&mut self, entry: Entry) {
        if entry.size > self.max_size {
            self.evict_to(0);
            // The encoder emptied its table too (its maximum is at most ours, and the
            // entry's real size at least this one): nothing older is left.
            self.older_unknown = false;
            return;
        }
        self.evict_to(self.max_size - entry.size);
        self.size += entry.size;
        self.data_bytes += entry.bytes.as_ref().map_or(0, |b| b.len());
        self.table.push_front(entry);
    }

    /// A dynamic table size update (§6.3): at most the SETTINGS limit; evicts down to it.
    fn size_update(&mut self, size: usize) -> Result<(), HpackError> {
        if size > self.limit {
            return Err(HpackError::BadSizeUpdate);
        }
        if self.size >= size {
            // The entries we track already fill the new maximum: the encoder's eviction
            // (oldest first) removed everything older than them.
            self.older_unknown = false;
        }
        self.max_size = size;
        self.evict_to(size);
        // A table shrunk for good should not keep the slots of its largest day.
        if self.table.capacity() > 16 && self.table.capacity() > 4 * self.table.len() {
            self.table.shrink_to(2 * self.table.len());
        }
        Ok(())
    }

    /// Evicts the oldest entries until the table's size is at most `target`.
    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.table.pop_back() {
                Some(old) => {
                    self.size -= old.size;
                    self.data_bytes -= old.bytes.as_ref().map_or(0, |b| b.len());
                }
                None => {
                    // Unreachable while `size` is the sum of the entries; stay safe anyway.
                    self.size = 0;
                    self.data_bytes = 0;
                }
            }
        }
    }
}

/// Counts one more field of the block against [`MAX_FIELDS`].
fn count_field(fields: &mut usize) -> Result<(), HpackError> {
    *fields += 1;
    if *fields > MAX_FIELDS {
        return Err(HpackError::TooLarge);
    }
    Ok(())
}

/// Releases a scratch buffer that grew past [`SCRATCH_KEEP_BYTES`].
fn trim_scratch(buf: &mut Vec<u8>) {
    if buf.capacity() > SCRATCH_KEEP_BYTES {
        *buf = Vec::new();
    }
}

/// A cursor over a header block.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn byte(&mut self) -> Result<u8, HpackError> {
        let (&b, rest) = self.0.split_first().ok_or(HpackError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], HpackError> {
        let (taken, rest) = self.0.split_at_checked(n).ok_or(HpackError::Truncated)?;
        self.0 = rest;
        Ok(taken)
    }

    /// An integer with an N-bit prefix (§5.1), the flag bits above the prefix ignored.
    fn integer(&mut self, prefix_bits: u32) -> Result<u32, HpackError> {
        let max_prefix = (1u8 << prefix_bits) - 1;
        let prefix = self.byte()? & max_prefix;
        if prefix < max_prefix {
            return Ok(u32::from(prefix));
        }
        // u64 holds max_prefix + 5 × 7 bits without overflow; the u32 check comes after.
        let mut value = u64::from(max_prefix);
        for i in 0..MAX_INT_CONTINUATIONS {
            let b = self.byte()?;
            value += u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return u32::try_from(value).map_err(|_| HpackError::BadInteger);
            }
        }
        Err(HpackError::BadInteger)
    }
}

/// A string literal (§5.2) into `out` (cleared first).
fn read_string(input: &mut Input<'_>, out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = input.peek().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = input.integer(7)? as usize;
    // The bytes must be there before the length is believed (Truncated, not TooLarge, for a
    // length a cut block cannot hold).
    let raw = input.take(len)?;
    out.clear();
    if huffman {
        huffman_decode(raw, out)
    } else if raw.len() > MAX_FIELD_BYTES {
        Err(HpackError::TooLarge)
    } else {
        out.extend_from_slice(raw);
        Ok(())
    }
}

/// The Huffman code of RFC 7541 Appendix B, `(code, bit length)` per symbol; symbol 256 is
/// EOS. Four symbols a line, the first one's number at the end (kept by `rustfmt::skip`).
#[rustfmt::skip]
const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), // 0
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), // 4
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28), // 8
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), // 12
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28), // 16
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), // 20
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), // 24
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28), // 28
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12), // 32
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), // 36
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), // 40
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), // 44
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), // 48
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), // 52
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8), // 56
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), // 60
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7), // 64
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), // 68
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), // 72
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), // 76
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), // 80
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), // 84
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13), // 88
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), // 92
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), // 96
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), // 100
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), // 104
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), // 108
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), // 112
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), // 116
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), // 120
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28), // 124
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), // 128
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), // 132
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), // 136
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), // 140
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), // 144
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23), // 148
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), // 152
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), // 156
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), // 160
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), // 164
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), // 168
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23), // 172
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), // 176
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), // 180
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), // 184
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23), // 188
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), // 192
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25), // 196
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), // 200
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), // 204
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), // 208
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24), // 212
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), // 216
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27), // 220
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), // 224
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), // 228
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), // 232
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23), // 236
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), // 240
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), // 244
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27), // 248
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), // 252
    (0x3fffffff, 30), // 256
];

/// The shortest and longest codes.
const HUFFMAN_MIN_LEN: usize = 5;
const HUFFMAN_MAX_LEN: usize = 30;

/// The EOS symbol: never valid inside a string (§5.2).
const HUFFMAN_EOS: u16 = 256;

/// The canonical decoding tables, indexed by code length.
struct Canonical {
    /// One past the largest code of each length (and of every shorter one), left-aligned in
    /// 32 bits: the next 32 input bits are below `limit[len]` iff the next symbol is at most
    /// `len` bits long. u64 since the last one is 2^32.
    limit: [u64; HUFFMAN_MAX_LEN + 1],
    /// The first code of each length.
    first: [u32; HUFFMAN_MAX_LEN + 1],
    /// Where each length's symbols start in `symbols`.
    offset: [u16; HUFFMAN_MAX_LEN + 1],
    /// The symbols, by code length then code.
    symbols: [u16; 257],
}

/// Built (and checked) at compile time: a wrong table does not compile.
static HUFFMAN: Canonical = build_canonical();

const fn build_canonical() -> Canonical {
    let mut count = [0u32; HUFFMAN_MAX_LEN + 1];
    let mut sym = 0;
    while sym < HUFFMAN_CODES.len() {
        let len = HUFFMAN_CODES[sym].1 as usize;
        assert!(len >= HUFFMAN_MIN_LEN && len <= HUFFMAN_MAX_LEN);
        count[len] += 1;
        sym += 1;
    }
    let mut t = Canonical {
        limit: [0; HUFFMAN_MAX_LEN + 1],
        first: [0; HUFFMAN_MAX_LEN + 1],
        offset: [0; HUFFMAN_MAX_LEN + 1],
        symbols: [0; 257],
    };
    // Canonical assignment: each length's codes follow the previous length's, shifted.
    let mut code = 0u32;
    let mut offset = 0u16;
    let mut len = HUFFMAN_MIN_LEN;
    while len <= HUFFMAN_MAX_LEN {
        t.first[len] = code;
        t.offset[len] = offset;
        t.limit[len] = ((code + count[len]) as u64) << (32 - len);
        offset += count[len] as u16;
        code = (code + count[len]) << 1;
        len += 1;
    }
    // A complete code: the longest codes end exactly at 2^32 left-aligned, so every 32-bit
    // window has a length.
    assert!(t.limit[HUFFMAN_MAX_LEN] == 1 << 32);
    let mut filled = [false; 257];
    sym = 0;
    while sym < HUFFMAN_CODES.len() {
        let (code, len) = HUFFMAN_CODES[sym];
        let len = len as usize;
        // Each code lies in its length's consecutive range, one symbol per slot.
        assert!(code >= t.first[len] && code - t.first[len] < count[len]);
        let slot = t.offset[len] as usize + (code - t.first[len]) as usize;
        assert!(!filled[slot]);
        filled[slot] = true;
        t.symbols[slot] = sym as u16;
        sym += 1;
    }
    t
}

/// Decodes a Huffman string (§5.2) into `out` (cleared first), at most [`MAX_FIELD_BYTES`]
/// long.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    out.clear();
    // Every symbol is at least 5 bits: bound the reservation by what the input can yield.
    out.reserve((src.len() * 8 / HUFFMAN_MIN_LEN).min(MAX_FIELD_BYTES));
    let t = &HUFFMAN;
    let mut bytes = src.iter();
    // Input bits not yet consumed are the low `nbits` of `acc` (higher bits are stale).
    let mut acc = 0u64;
    let mut nbits = 0usize;
    loop {
        // Keep at least 49 bits when the input allows: more than the longest code.
        let mut exhausted = false;
        while nbits <= 48 {
            match bytes.next() {
                Some(&b) => {
                    acc = (acc << 8) | u64::from(b);
                    nbits += 8;
                }
                None => {
                    exhausted = true;
                    break;
                }
            }
        }
        if nbits == 0 {
            return Ok(());
        }
        if exhausted && nbits < 8 {
            // Fewer than 8 bits left: valid padding iff all ones (the EOS prefix). No code
            // of at most 7 bits is all ones, so this is not a symbol.
            let mask = (1u64 << nbits) - 1;
            if acc & mask == mask {
                return Ok(());
            }
        }
        // The next 32 bits, left-aligned; past the end of the input, ones (as padding would
        // be): a symbol found there is longer than what is left, and rejected below.
        let window = if nbits >= 32 {
            (acc >> (nbits - 32)) as u32
        } else {
            ((acc << (32 - nbits)) | ((1u64 << (32 - nbits)) - 1)) as u32
        };
        let len = (HUFFMAN_MIN_LEN..=HUFFMAN_MAX_LEN)
            .find(|&len| u64::from(window) < t.limit[len])
            .ok_or(HpackError::BadHuffman)?;
        if len > nbits {
            // A code cut by the end of the string: padding longer than 7 bits, or not all
            // ones.
            return Err(HpackError::BadHuffman);
        }
        let code = window >> (32 - len);
        let slot = usize::from(t.offset[len]) + code.wrapping_sub(t.first[len]) as usize;
        let sym = *t.symbols.get(slot).ok_or(HpackError::BadHuffman)?;
        if sym == HUFFMAN_EOS {
            return Err(HpackError::BadHuffman);
        }
        if out.len() >= MAX_FIELD_BYTES {
            return Err(HpackError::TooLarge);
        }
        out.push(sym as u8);
        nbits -= len;
    }
}

#[cfg(test)]
#[path = "hpack_tests.rs"]
mod tests;
