//! Route templating: turns a request path into a low-cardinality template fit for a metric
//! label (`/users/42/orders` → `/users/{id}/orders`).
//!
//! Rules, applied to each `/`-separated segment of the path:
//! - the query string and fragment are never part of the template;
//! - empty segments are dropped, so `//a/b/` → `/a/b`;
//! - `;params` (servlet-style `;jsessionid=…`) are cut from a segment;
//! - a segment that looks like an identifier becomes `{id}`: all digits; a UUID; a hex token of
//!   at least 8 characters (`deadbeef`, `5f2b8c1e9a`, also with `-`/`_`/`.`/`:` separators
//!   when it has a digit); or any long (>= 16 bytes) token that mixes letters and digits
//!   (base64-ish tokens, ULIDs, hashed file names);
//! - other segments are kept, cut to [`MAX_SEGMENT_BYTES`] bytes;
//! - at most [`MAX_SEGMENTS`] segments are kept; a longer path ends in `/{...}`.
//!
//! `*` (the `OPTIONS *` target) stays `*`; an empty path becomes `/`.

/// Segments kept before the rest of the path collapses to `/{...}`.
pub const MAX_SEGMENTS: usize = 8;
/// Longest segment kept verbatim, in bytes (cut at a character boundary).
pub const MAX_SEGMENT_BYTES: usize = 64;

const ID: &str = "{id}";
const REST: &str = "/{...}";

/// Low-cardinality route template of a path (no query string): numeric segments, UUIDs, and hex
/// segments (>= 8 hex digits, or any hex-looking token containing a digit and length >= 8), and
/// other id-like tokens (>= 16 bytes mixing digits and letters) become `{id}`; empty path -> "/";
/// at most [`MAX_SEGMENTS`] segments kept, then "/{...}" is appended; each segment capped to
/// [`MAX_SEGMENT_BYTES`]; never includes query strings. Examples: "/users/42" -> "/users/{id}",
/// "/orders/550e8400-e29b-41d4-a716-446655440000/items" -> "/orders/{id}/items", "/" -> "/".
pub fn template(path: &str) -> String {
    let bytes = path.as_bytes();
    // Defensive: callers pass paths without a query, but a template must never carry one.
    let end = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    if &bytes[..end] == b"*" {
        return "*".to_owned();
    }
    let mut out = String::with_capacity(end.min(128) + 8);
    let mut kept = 0;
    let mut start = 0;
    // Byte offsets are safe slicing points: '/' and ';' are ASCII, never inside a character.
    while start <= end {
        let stop = bytes[start..end]
            .iter()
            .position(|&b| b == b'/')
            .map_or(end, |i| start + i);
        // Matrix parameters carry session ids: the route is the part before them.
        let seg_end = bytes[start..stop]
            .iter()
            .position(|&b| b == b';')
            .map_or(stop, |i| start + i);
        let segment = &path[start..seg_end];
        start = stop + 1;
        if segment.is_empty() {
            continue;
        }
        if kept == MAX_SEGMENTS {
            out.push_str(REST);
            break;
        }
        kept += 1;
        out.push('/');
        if is_id(segment.as_bytes()) {
            out.push_str(ID);
        } else {
            out.push_str(cap(segment, MAX_SEGMENT_BYTES));
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether a path segment looks like an identifier rather than a fixed part of a route.
fn is_id(s: &[u8]) -> bool {
    let (mut digits, mut hex_letters, mut other_letters, mut separators, mut others) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    for &b in s {
        match b {
            b'0'..=b'9' => digits += 1,
            b'a'..=b'f' | b'A'..=b'F' => hex_letters += 1,
            b'g'..=b'z' | b'G'..=b'Z' => other_letters += 1,
            b'-' | b'_' | b'.' | b':' => separators += 1,
            _ => others += 1,
        }
    }
    if digits == s.len() {
        return true;
    }
    if is_uuid(s) {
        return true;
    }
    let hexish = other_letters == 0 && others == 0;
    // A bare run of hex digits: object ids, hashes, hex-encoded keys.
    if hexish && separators == 0 && s.len() >= 8 {
        return true;
    }
    // Hex with separators (`ab12-cd34`, MAC-like `00:1a:2b`): only with a digit, so that words
    // such as `cafe-bed` stay.
    if hexish && digits > 0 && s.len() >= 8 {
        return true;
    }
    // Long tokens that mix letters and digits: base64/ULID/hashed names.
    others == 0 && s.len() >= 16 && digits > 0 && hex_letters + other_letters > 0
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_from_the_contract() {
        assert_eq!(template("/users/42"), "/users/{id}");
        assert_eq!(
            template("/orders/550e8400-e29b-41d4-a716-446655440000/items"),
            "/orders/{id}/items"
        );
        assert_eq!(template("/"), "/");
        assert_eq!(template(""), "/");
    }

    #[test]
    fn fixed_segments_stay() {
        assert_eq!(template("/api/v1/users"), "/api/v1/users");
        assert_eq!(template("/healthz"), "/healthz");
        assert_eq!(template("/cafe/bed"), "/cafe/bed");
        assert_eq!(template("/index.html"), "/index.html");
        assert_eq!(template("/facade"), "/facade");
    }

    #[test]
    fn numeric_hex_and_uuid_segments_become_id() {
        assert_eq!(template("/items/0"), "/items/{id}");
        assert_eq!(
            template("/objects/5f2b8c1e9a3d4e7f8a9b0c1d"),
            "/objects/{id}"
        );
        assert_eq!(template("/blobs/deadbeef"), "/blobs/{id}");
        assert_eq!(template("/blobs/DEADBEEF00"), "/blobs/{id}");
        assert_eq!(template("/mac/00:1a:2b:3c:4d:5e"), "/mac/{id}");
        assert_eq!(template("/x/ab12-cd34"), "/x/{id}");
        assert_eq!(
            template("/x/550E8400-E29B-41D4-A716-446655440000"),
            "/x/{id}"
        );
        // Short hex-looking words are not ids.
        assert_eq!(template("/x/abc123"), "/x/abc123");
    }

    #[test]
    fn long_mixed_tokens_become_id() {
        assert_eq!(template("/s/01ARZ3NDEKTSV4RRFFQ69G5FAV"), "/s/{id}");
        assert_eq!(template("/static/main.8f3a2b1cq.js"), "/static/{id}");
        assert_eq!(template("/t/aGVsbG8gd29ybGQx_-"), "/t/{id}");
        // Long but letters only: a word-ish slug stays.
        assert_eq!(
            template("/blog/an-article-about-routing"),
            "/blog/an-article-about-routing"
        );
    }

    #[test]
    fn query_fragment_and_matrix_params_are_dropped() {
        assert_eq!(template("/search?q=42"), "/search");
        assert_eq!(template("/page#top"), "/page");
        assert_eq!(template("/app;jsessionid=ABC123DEF456GHI789"), "/app");
        assert_eq!(template("/a;x/b"), "/a/b");
    }

    #[test]
    fn empty_segments_collapse() {
        assert_eq!(template("//a///b/"), "/a/b");
        assert_eq!(template("/users/42/"), "/users/{id}");
        assert_eq!(template("///"), "/");
    }

    #[test]
    fn at_most_eight_segments() {
        assert_eq!(
            template("/1/2/3/4/5/6/7/8"),
            "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}"
        );
        assert_eq!(template("/a/b/c/d/e/f/g/h/i/j"), "/a/b/c/d/e/f/g/h/{...}");
    }

    #[test]
    fn long_segments_are_capped_at_char_boundaries() {
        let long = "x".repeat(100);
        assert_eq!(
            template(&format!("/{long}")),
            format!("/{}", "x".repeat(64))
        );
        let accents = "é".repeat(40); // 80 bytes, 2 per char
        let t = template(&format!("/{accents}"));
        assert_eq!(t, format!("/{}", "é".repeat(32)));
    }

    #[test]
    fn asterisk_and_relative() {
        assert_eq!(template("*"), "*");
        assert_eq!(template("relative/7"), "/relative/{id}");
    }
}
