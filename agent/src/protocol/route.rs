//! Route templating: turns a request path into a low-cardinality template fit for a metric
//! label (`/users/42/orders` → `/users/{id}/orders`).
//!
//! Rules, applied to each `/`-separated segment of the path:
//! - the query string and fragment are never part of the template;
//! - empty segments are dropped, so `//a/b/` → `/a/b`;
//! - `;params` (servlet-style `;jsessionid=…`) are cut from a segment;
//! - a segment is kept only when it is clearly a static path word: at most
//!   [`MAX_WORD_BYTES`] bytes of ASCII letters, digits and `-` `_` `.` `~` `:`, with at least
//!   one letter and at most [`MAX_WORD_DIGITS`] digits (`v1`, `oauth2`, `index.html`,
//!   `sha256`, `projects:batchGet`);
//! - every other segment becomes `{id}`: numbers, UUIDs, hex tokens of 8 or more characters
//!   (`deadbeef`, also with `-`/`_`/`.`/`:` separators when they have a digit), long tokens
//!   mixing letters and digits, and anything else that is not a word: e-mail addresses (`@`),
//!   names with spaces or any `%`-escape, non-ASCII text, `+`/`=`/`,` and other punctuation,
//!   segments longer than [`MAX_WORD_BYTES`] (opaque tokens, long slugs);
//! - at most [`MAX_SEGMENTS`] segments are kept; a longer path ends in `/{...}`.
//!
//! `*` (the `OPTIONS *` target) stays `*`; an empty path becomes `/`.
//!
//! Route labels leave the node, so the rule is deliberately conservative: a segment that
//! might carry user data is never kept on a guess. A word-like value (`/users/john-smith`)
//! still looks like a path word and is kept; an application that puts such values in paths
//! should not be templated by shape alone.

/// Segments kept before the rest of the path collapses to `/{...}`.
pub const MAX_SEGMENTS: usize = 8;
/// Longest segment kept as a path word, in bytes; a longer one becomes `{id}`.
pub const MAX_WORD_BYTES: usize = 32;
/// Most digits a path word may hold (`v2beta1`, `sha256`); more make it an id (`user12345`).
pub const MAX_WORD_DIGITS: usize = 3;

const ID: &str = "{id}";
const REST: &str = "/{...}";

/// Low-cardinality route template of a path (no query string), by the rules of this module:
/// path words are kept, every other segment becomes `{id}`; empty path -> "/"; at most
/// [`MAX_SEGMENTS`] segments kept, then "/{...}" is appended; never includes query strings.
/// Examples: "/users/42" -> "/users/{id}", "/orders/550e8400-e29b-41d4-a716-446655440000/items"
/// -> "/orders/{id}/items", "/users/a%40b.com" -> "/users/{id}", "/" -> "/".
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
        if is_word(segment.as_bytes()) && !is_id(segment.as_bytes()) {
            out.push_str(segment);
        } else {
            out.push_str(ID);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether a segment is clearly a static path word (see the module docs).
fn is_word(s: &[u8]) -> bool {
    let allowed =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':');
    s.len() <= MAX_WORD_BYTES
        && s.iter().all(allowed)
        && s.iter().any(u8::is_ascii_alphabetic)
        && s.iter().filter(|b| b.is_ascii_digit()).count() <= MAX_WORD_DIGITS
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
        // Letters only and short enough: a word-ish slug stays; a longer one is an id.
        assert_eq!(
            template("/blog/an-article-about-routing"),
            "/blog/an-article-about-routing"
        );
        assert_eq!(
            template("/blog/an-article-about-routing-in-big-clusters"),
            "/blog/{id}"
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
    fn long_segments_become_id() {
        let word = "x".repeat(MAX_WORD_BYTES);
        assert_eq!(template(&format!("/{word}")), format!("/{word}"));
        let long = "x".repeat(MAX_WORD_BYTES + 1);
        assert_eq!(template(&format!("/{long}")), "/{id}");
        assert_eq!(template(&format!("/{}", "é".repeat(40))), "/{id}");
    }

    #[test]
    fn personal_data_and_tokens_never_stay() {
        for path in [
            "/users/jane.doe@example.com",
            "/users/jane.doe%40example.com",
            "/people/Jane%20Doe",
            "/people/Jane Doe",
            "/people/Zoë",
            "/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            "/share/Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4",
            "/search/a+b",
            "/k/v=1",
            "/users/user12345",
            "/x/..",
        ] {
            let t = template(path);
            let (first, rest) = t[1..].split_once('/').unwrap();
            assert_eq!(rest, "{id}", "{path} -> {t}");
            assert!(path.starts_with(&format!("/{first}/")), "{path} -> {t}");
        }
        // Words with a few digits and API-style custom methods stay.
        assert_eq!(
            template("/v2beta1/projects:batchGet/oauth2/sha256"),
            "/v2beta1/projects:batchGet/oauth2/sha256"
        );
    }

    #[test]
    fn asterisk_and_relative() {
        assert_eq!(template("*"), "*");
        assert_eq!(template("relative/7"), "/relative/{id}");
    }
}
