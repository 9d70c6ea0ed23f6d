//! Reading Kafka primitive types from a (possibly cut) frame body.
//!
//! Every length is checked against the bytes left before anything is skipped or copied, and
//! nothing is allocated from a length: strings are borrowed, arrays are walked element by
//! element (each element consumes bytes, so a huge count just runs out of input).

/// Why reading stopped: the bytes ran out (a cut capture, or a frame shorter than its
/// contents claim), or a value no encoder produces (a negative non-null length, an over-long
/// varint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Short,
    Bad,
}

pub type Read<T> = Result<T, Stop>;

/// Bytes of a frame body that the kernel walked over instead of capturing: (the parts of) a
/// Fetch response's `records` field, `len` bytes holding `records` records, which come before
/// byte `at` of the captured bytes (`RUN_KAFKA_RECORDS` runs; adjacent ones are merged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    pub at: usize,
    pub len: u64,
    pub records: u64,
}

/// A cursor over a frame body (or its captured prefix), with the holes the kernel left in it.
/// Reading a value that a hole interrupts runs short; skipping passes over holes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    holes: &'a [Hole],
    /// The next hole, and how many of its bytes were passed over.
    hole: usize,
    into: u64,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self::with_holes(buf, &[])
    }

    /// `holes` in order of `at`.
    pub fn with_holes(buf: &'a [u8], holes: &'a [Hole]) -> Self {
        Reader {
            buf,
            pos: 0,
            holes,
            hole: 0,
            into: 0,
        }
    }

    /// Captured bytes from the cursor to the next hole (or the end).
    fn contiguous(&self) -> usize {
        self.holes
            .get(self.hole)
            .map_or(self.buf.len(), |h| h.at.min(self.buf.len()))
            .saturating_sub(self.pos)
    }

    pub fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        if n > self.contiguous() {
            return Err(Stop::Short);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The captured bytes from the cursor to the next hole, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..self.pos + self.contiguous()]
    }

    /// Passes over `n` bytes, captured ones and holes alike.
    pub fn skip(&mut self, n: usize) -> Read<()> {
        let mut n = n as u64;
        while n > 0 {
            if let Some(h) = self.holes.get(self.hole).filter(|h| h.at == self.pos) {
                let k = (h.len - self.into).min(n);
                self.into += k;
                n -= k;
                if self.into == h.len {
                    self.hole += 1;
                    self.into = 0;
                }
                continue;
            }
            let k = (self.contiguous() as u64).min(n);
            if k == 0 {
                return Err(Stop::Short);
            }
            self.pos += k as usize;
            n -= k;
        }
        Ok(())
    }

    /// A `records` field of `len` bytes at the cursor, passed over: the records of its whole
    /// record batches, whether that count is exact, and whether the field could be passed
    /// over. The count is exact when the field is captured whole, or is exactly whole holes
    /// (the kernel counted its batches); a field partly captured counts the batches whose
    /// headers were (a prefix capture), and runs short if the rest is missing.
    pub fn records(&mut self, len: usize) -> (u64, bool, Read<()>) {
        let mut left = len as u64;
        let mut count = 0u64;
        while let Some(h) = self.holes.get(self.hole).filter(|h| h.at == self.pos) {
            if left == 0 || self.into != 0 || h.len > left {
                break;
            }
            count = count.saturating_add(h.records);
            left -= h.len;
            self.hole += 1;
        }
        if left == len as u64 {
            let captured = &self.rest()[..len.min(self.contiguous())];
            count += super::body::count_records(captured, len);
            let whole = captured.len() == len;
            return (count, whole, self.skip(len));
        }
        // Holes and captured bytes mixed, or part of a hole: not what the kernel sends.
        (count, left == 0, self.skip(left as usize))
    }

    fn array<const N: usize>(&mut self) -> Read<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn i8(&mut self) -> Read<i8> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    pub fn i16(&mut self) -> Read<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Read<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Read<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn uuid(&mut self) -> Read<[u8; 16]> {
        self.array()
    }

    /// Unsigned LEB128 varint of at most 32 bits (5 bytes).
    pub fn uvarint(&mut self) -> Read<u32> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = *self.buf.get(self.pos).ok_or(Stop::Short)?;
            self.pos += 1;
            if i == 4 && b > 0x0f {
                return Err(Stop::Bad);
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Stop::Bad)
    }

    /// A length that may be null: compact (varint of length + 1, 0 = null) when `flexible`,
    /// else `i16` (or `i32` when `wide`) with -1 = null.
    fn length(&mut self, flexible: bool, wide: bool) -> Read<Option<usize>> {
        let n: i64 = if flexible {
            i64::from(self.uvarint()?) - 1
        } else if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(Stop::Bad),
            n => usize::try_from(n).map(Some).map_err(|_| Stop::Bad),
        }
    }

    /// A (nullable) string's bytes; a non-nullable string is read the same way.
    pub fn string(&mut self, flexible: bool) -> Read<Option<&'a [u8]>> {
        match self.length(flexible, false)? {
            Some(n) => self.take(n).map(Some),
            None => Ok(None),
        }
    }

    pub fn skip_string(&mut self, flexible: bool) -> Read<()> {
        self.string(flexible).map(|_| ())
    }

    /// Length of (nullable) bytes: `i32` or compact.
    pub fn bytes_len(&mut self, flexible: bool) -> Read<Option<usize>> {
        self.length(flexible, true)
    }

    /// Element count of a (nullable) array: `i32` or compact. Null reads as `None`.
    pub fn array_len(&mut self, flexible: bool) -> Read<Option<usize>> {
        self.length(flexible, true)
    }

    /// Skips an array of fixed-size elements (e.g. `[]int32`).
    pub fn skip_fixed_array(&mut self, flexible: bool, elem: usize) -> Read<()> {
        let n = self.array_len(flexible)?.unwrap_or(0);
        self.skip(n.checked_mul(elem).ok_or(Stop::Bad)?)
    }

    /// Skips a tagged-field section (flexible versions only; nothing otherwise).
    pub fn tagged_fields(&mut self, flexible: bool) -> Read<()> {
        if !flexible {
            return Ok(());
        }
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?; // tag
            let size = self.uvarint()?;
            self.skip(size as usize)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_and_lengths() {
        let mut r = Reader::new(&[0x00, 0x05, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(r.i16(), Ok(5));
        assert_eq!(r.i32(), Ok(-2));
        assert_eq!(r.i8(), Err(Stop::Short));

        // compact string "ab", compact null, non-compact null, negative length.
        let mut r = Reader::new(&[3, b'a', b'b', 0, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(r.string(true), Ok(Some(&b"ab"[..])));
        assert_eq!(r.string(true), Ok(None));
        assert_eq!(r.string(false), Ok(None));
        assert_eq!(r.string(false), Err(Stop::Bad));

        // A length beyond the input is Short, not a panic or an allocation.
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(r.bytes_len(false), Ok(Some(i32::MAX as usize)));
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(r.skip_fixed_array(false, 8), Err(Stop::Short));
    }

    #[test]
    fn varints() {
        assert_eq!(Reader::new(&[0x00]).uvarint(), Ok(0));
        assert_eq!(Reader::new(&[0x96, 0x01]).uvarint(), Ok(150));
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f]).uvarint(),
            Ok(u32::MAX)
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x1f]).uvarint(),
            Err(Stop::Bad)
        );
        assert_eq!(Reader::new(&[0x80]).uvarint(), Err(Stop::Short));
        // Tagged fields: two fields, sizes 1 and 0.
        let mut r = Reader::new(&[2, 0, 1, 0xaa, 5, 0, 7]);
        assert_eq!(r.tagged_fields(true), Ok(()));
        assert_eq!(r.i8(), Ok(7));
    }
}
