//! Text helpers shared by the decoders.

/// At most `max` bytes as a String, cut at a character boundary; invalid UTF-8 is replaced.
pub(super) fn capped_string(b: &[u8], max: usize) -> String {
    let b = &b[..b.len().min(max)];
    let mut s = match std::str::from_utf8(b) {
        Ok(s) => return s.to_owned(),
        // The cut fell inside a character: drop the partial character.
        Err(e) if e.error_len().is_none() => {
            return String::from_utf8_lossy(&b[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    };
    // Replacement characters take 3 bytes where the invalid byte took 1: cut again.
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// RFC 9110 token character.
pub(super) fn is_tchar(c: u8) -> bool {
    TCHAR[usize::from(c)]
}

const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        c += 1;
    }
    table
};
