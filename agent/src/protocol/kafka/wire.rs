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

/// A cursor over a frame body (or its captured prefix).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        if n > self.remaining() {
            return Err(Stop::Short);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// What is left, without consuming it.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub fn skip(&mut self, n: usize) -> Read<()> {
        self.take(n).map(|_| ())
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
