//! SQL text helpers shared by the database decoders: literal stripping ([`normalize`]),
//! statement splitting ([`split_statements`]) and a low-cardinality summary ([`summarize`]).
//!
//! These are tolerant *lexers*, not parsers: they know PostgreSQL's lexical rules (quotes,
//! `E'..'` escapes, dollar quotes, nested block comments, quoted identifiers) well enough never to
//! mistake a literal or a comment for code, and they never fail: unterminated quotes or comments
//! simply run to the end of the text. Every function is linear in the input and never panics.

/// Longest normalised query text, in bytes.
pub const MAX_QUERY_TEXT_BYTES: usize = 1024;
/// Longest operation name kept (a keyword; anything longer is not one).
const MAX_OPERATION_BYTES: usize = 32;
/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 = 63 bytes.
const MAX_IDENT_BYTES: usize = 63;
/// At most `catalog.schema.table`.
const MAX_NAME_PARTS: usize = 3;

/// Replaces every literal with `?` and collapses whitespace, so that executions of the same
/// statement with different values read the same.
///
/// Replaced: string constants (`'..'`, `E'..'`, `B'..'`, `X'..'`, `N'..'`, `U&'..'`), dollar-quoted
/// strings (`$$..$$`, `$tag$..$tag$`) and numbers (`42`, `3.5e-2`, `0x1F`, `1_000`); quoted
/// identifiers that are not plain names (`"jane@example.com"`: other dialects read `".."` as a
/// string). Kept as written: identifiers (plain quoted ones too), keywords including
/// `true`/`false`/`null`, parameters (`$1`), operators. Comments are removed: they often carry
/// per-request values (sqlcommenter trace ids). A plain string holding `\'` ends the text at
/// `?`: whether the backslash escapes the quote depends on server settings, so where the
/// literal ends cannot be told. The result is capped at [`MAX_QUERY_TEXT_BYTES`] (cut on a
/// character boundary).
pub fn normalize(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(MAX_QUERY_TEXT_BYTES));
    let mut space = false;
    let mut i = 0;
    while i < b.len() && out.len() < MAX_QUERY_TEXT_BYTES {
        let c = b[i];
        if c.is_ascii_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        if let Some(end) = comment_end(b, i) {
            space = true;
            i = end;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        match c {
            b'\'' => {
                let end = string_end(b, i + 1, false);
                out.push('?');
                if b[i + 1..end].windows(2).any(|w| w == b"\\'") {
                    // `\'` inside a plain string: a server without standard_conforming_strings
                    // (or another SQL dialect) reads it as an escaped quote, so where the
                    // literal ends is ambiguous. Never guess: the rest of the text is withheld.
                    break;
                }
                i = end;
            }
            b'"' => {
                let end = quoted_ident_end(b, i + 1);
                let inner = &b[i + 1..end.saturating_sub(1).max(i + 1)];
                if is_plain_ident(inner) {
                    out.push_str(&sql[i..end]);
                } else {
                    // Not an identifier one would name a table or column with (some dialects
                    // read `"..."` as a string): withheld like a literal.
                    out.push('?');
                }
                i = end;
            }
            b'$' => match dollar(b, i) {
                Dollar::Param(end) => {
                    out.push_str(&sql[i..end]);
                    i = end;
                }
                Dollar::Quote(end) => {
                    out.push('?');
                    i = end;
                }
                Dollar::Plain => {
                    out.push('$');
                    i += 1;
                }
            },
            b'0'..=b'9' => {
                i = number_end(b, i);
                out.push('?');
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = number_end(b, i);
                out.push('?');
            }
            _ if is_ident_start(c) => {
                let end = ident_end(b, i);
                if let Some(after) = prefixed_string(b, i, end) {
                    out.push('?');
                    i = after;
                } else {
                    out.push_str(&sql[i..end]);
                    i = end;
                }
            }
            _ => {
                // One character (operators, punctuation, anything else), whole if multi-byte.
                let end = i + utf8_len(c);
                out.push_str(sql.get(i..end).unwrap_or("?"));
                i = end;
            }
        }
    }
    if out.len() > MAX_QUERY_TEXT_BYTES {
        let mut cut = MAX_QUERY_TEXT_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Splits a simple-query string into its statements at top-level `;` (not inside quotes,
/// dollar quotes, identifiers or comments), the way the server does. Each statement is trimmed;
/// empty ones (nothing but whitespace and comments) are dropped, as the server sends no result
/// for them. Known gap: a `BEGIN ATOMIC .. END` function body is split at its inner `;`.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut content = false;
    let mut i = 0;
    let mut push = |from: usize, to: usize, content: bool| {
        if content {
            out.push(sql[from..to].trim());
        }
    };
    while i < b.len() {
        let c = b[i];
        if let Some(end) = comment_end(b, i) {
            i = end;
            continue;
        }
        if !c.is_ascii_whitespace() && c != b';' {
            content = true;
        }
        i = match c {
            b';' => {
                push(start, i, content);
                start = i + 1;
                content = false;
                i + 1
            }
            b'\'' => string_end(b, i + 1, false),
            b'"' => quoted_ident_end(b, i + 1),
            b'$' => match dollar(b, i) {
                Dollar::Param(end) | Dollar::Quote(end) => end,
                Dollar::Plain => i + 1,
            },
            _ if is_ident_start(c) => {
                let end = ident_end(b, i);
                prefixed_string(b, i, end).unwrap_or(end)
            }
            _ => i + 1,
        };
    }
    push(start, b.len(), content);
    out
}

/// The operation and main table of the first statement in `sql`: (`"SELECT"`, `Some("orders")`).
///
/// The operation is the first keyword, upper-cased; for `WITH ..` it is the main statement's
/// keyword after the common table expressions. The collection is the table the statement is
/// about, when one can be told: `SELECT .. FROM t`, `INSERT INTO t`, `UPDATE t`,
/// `DELETE FROM t`, `MERGE INTO t`, `COPY t` (or the `FROM` of `COPY (query)`), `TRUNCATE t`,
/// `LOCK t`, `TABLE t`, `CREATE|DROP|ALTER TABLE t`, `CREATE INDEX .. ON t`. Unquoted names are
/// lower-cased, quoted ones kept as written (without the quotes); a schema-qualified name keeps
/// its parts (`public.orders`). No table: a `FROM` that starts with a subquery or a function
/// call, or a statement that has none. The operation is empty when the statement does not
/// start with a keyword (ASCII letters only).
pub fn summarize(sql: &str) -> (String, Option<String>) {
    let mut lx = Lexer::new(sql);
    let Some(first) = lx.next_word() else {
        return (String::new(), None);
    };
    let operation = lx.operation(first);
    let collection = match operation.as_str() {
        "COPY" => lx.copy_source(),
        op => lx.collection(op),
    };
    (operation, collection)
}

/// The first keyword upper-cased and capped; "" if the word is not keyword-like (SQL keywords
/// are ASCII letters), so that garbage never becomes an operation name.
fn keyword(word: &str) -> String {
    if !word.bytes().all(|c| c.is_ascii_alphabetic()) {
        return String::new();
    }
    word[..word.len().min(MAX_OPERATION_BYTES)].to_ascii_uppercase()
}

/// Lexical items [`summarize`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    /// Unquoted word (keyword or identifier), as written.
    Word(&'a str),
    /// Quoted identifier, without the quotes (doubled quotes left doubled: rare, harmless).
    Quoted(&'a str),
    /// Literal of any kind, or a parameter.
    Literal,
    /// One punctuation or operator byte.
    Punct(u8),
}

struct Lexer<'a> {
    sql: &'a str,
    pos: usize,
    /// Parenthesis depth of the next token.
    depth: u32,
    /// Depth of the statement being summarised: 0, or inside `COPY (query)` the depth of the
    /// query. A `)` that would close it ends the statement.
    floor: u32,
    /// A top-level `;` was passed: the first statement is over.
    done: bool,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Lexer {
            sql,
            pos: 0,
            depth: 0,
            floor: 0,
            done: false,
        }
    }

    /// Next token of the first statement, tracking parenthesis depth.
    fn next(&mut self) -> Option<Tok<'a>> {
        let b = self.sql.as_bytes();
        loop {
            if self.done {
                return None;
            }
            let i = self.pos;
            let c = *b.get(i)?;
            if c.is_ascii_whitespace() {
                self.pos += 1;
                continue;
            }
            if let Some(end) = comment_end(b, i) {
                self.pos = end;
                continue;
            }
            let (end, tok) = match c {
                b'\'' => (string_end(b, i + 1, false), Tok::Literal),
                b'"' => {
                    let end = quoted_ident_end(b, i + 1);
                    let inner = end.saturating_sub(1).max(i + 1);
                    (end, Tok::Quoted(self.sql.get(i + 1..inner).unwrap_or("")))
                }
                b'$' => match dollar(b, i) {
                    Dollar::Param(end) | Dollar::Quote(end) => (end, Tok::Literal),
                    Dollar::Plain => (i + 1, Tok::Punct(c)),
                },
                b'0'..=b'9' => (number_end(b, i), Tok::Literal),
                _ if is_ident_start(c) => {
                    let end = ident_end(b, i);
                    match prefixed_string(b, i, end) {
                        Some(after) => (after, Tok::Literal),
                        None => (end, Tok::Word(&self.sql[i..end])),
                    }
                }
                b'(' => {
                    self.depth += 1;
                    (i + 1, Tok::Punct(c))
                }
                b')' if self.depth == self.floor && self.floor > 0 => {
                    self.done = true;
                    return None;
                }
                b')' => {
                    self.depth = self.depth.saturating_sub(1);
                    (i + 1, Tok::Punct(c))
                }
                b';' if self.depth == 0 => {
                    self.done = true;
                    return None;
                }
                _ => (i + 1, Tok::Punct(c)),
            };
            self.pos = end;
            return Some(tok);
        }
    }

    fn next_word(&mut self) -> Option<&'a str> {
        loop {
            if let Tok::Word(w) = self.next()? {
                return Some(w);
            }
        }
    }

    /// Next token of the statement's own level (outside every parenthesis inside it).
    fn next_top(&mut self) -> Option<Tok<'a>> {
        loop {
            let before = self.depth;
            let tok = self.next()?;
            if before == self.floor && self.depth == self.floor {
                return Some(tok);
            }
        }
    }

    /// Skips to just past the next top-level `word`.
    fn find_word(&mut self, word: &str) -> Option<()> {
        loop {
            match self.next_top()? {
                Tok::Word(w) if w.eq_ignore_ascii_case(word) => return Some(()),
                _ => {}
            }
        }
    }

    /// Consumes the next token if it is `word`; None (and the token consumed) otherwise.
    fn expect_word(&mut self, word: &str) -> Option<()> {
        match self.next()? {
            Tok::Word(w) if w.eq_ignore_ascii_case(word) => Some(()),
            _ => None,
        }
    }

    /// Consumes the next token only if it is `word`.
    fn skip_word(&mut self, word: &str) -> bool {
        let save = (self.pos, self.depth, self.done);
        if self.expect_word(word).is_some() {
            return true;
        }
        (self.pos, self.depth, self.done) = save;
        false
    }

    fn peek(&mut self) -> Option<Tok<'a>> {
        let save = (self.pos, self.depth, self.done);
        let tok = self.next();
        (self.pos, self.depth, self.done) = save;
        tok
    }

    /// A possibly qualified table name starting at the next token. `from_clause` allows the
    /// `LATERAL` keyword and treats a name followed by `(` as a function call, not a table.
    fn table(&mut self, from_clause: bool) -> Option<String> {
        self.skip_word("ONLY");
        if from_clause {
            self.skip_word("LATERAL");
        }
        let mut name = String::new();
        for part in 0..MAX_NAME_PARTS {
            let piece = match self.next()? {
                Tok::Word(w) => {
                    let mut w = cap(w, MAX_IDENT_BYTES).to_owned();
                    w.make_ascii_lowercase();
                    w
                }
                Tok::Quoted(q) => cap(q, MAX_IDENT_BYTES).to_owned(),
                _ => return None,
            };
            if part > 0 {
                name.push('.');
            }
            name.push_str(&piece);
            match self.peek() {
                Some(Tok::Punct(b'.')) => {
                    self.next();
                }
                // In a FROM clause a name followed by `(` is a function call; elsewhere
                // (INSERT INTO t (cols), CREATE TABLE t (..)) it is a column list.
                Some(Tok::Punct(b'(')) if from_clause => return None,
                _ => break,
            }
        }
        (!name.is_empty()).then_some(name)
    }

    /// The statement's operation, given its first word: that keyword upper-cased, or for
    /// `WITH ..` the main statement's keyword after the common table expressions.
    fn operation(&mut self, first: &'a str) -> String {
        let mut op = first;
        if op.eq_ignore_ascii_case("WITH") {
            // The main statement is the first statement keyword outside the CTE bodies'
            // parentheses.
            const MAIN: [&str; 6] = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES"];
            while let Some(tok) = self.next_top() {
                if let Tok::Word(w) = tok {
                    if MAIN.iter().any(|m| w.eq_ignore_ascii_case(m)) {
                        op = w;
                        break;
                    }
                }
            }
        }
        keyword(op)
    }

    /// The main table of a statement whose operation was just read (not `COPY`).
    fn collection(&mut self, operation: &str) -> Option<String> {
        match operation {
            "SELECT" | "VALUES" => self.find_word("FROM").and_then(|_| self.table(true)),
            "INSERT" | "MERGE" => self.expect_word("INTO").and_then(|_| self.table(false)),
            "UPDATE" | "TABLE" => self.table(false),
            "DELETE" => self.expect_word("FROM").and_then(|_| self.table(false)),
            "TRUNCATE" | "LOCK" => {
                self.skip_word("TABLE");
                self.table(false)
            }
            "CREATE" | "DROP" | "ALTER" => self.ddl_target(),
            _ => None,
        }
    }

    /// `COPY t ..` or `COPY (query) ..`: the table, or the query's table.
    ///
    /// The query is summarised in place, with the lexer's floor raised to its parenthesis, so
    /// that nothing is scanned twice. Nested `COPY (COPY (..))` (not valid SQL, but any pod can
    /// send it) is walked by this loop, one level per turn: no recursion, linear time.
    fn copy_source(&mut self) -> Option<String> {
        loop {
            if self.peek() != Some(Tok::Punct(b'(')) {
                return self.table(false);
            }
            self.next();
            self.floor = self.depth;
            let first = self.next_word()?;
            let operation = self.operation(first);
            if operation != "COPY" {
                return self.collection(&operation);
            }
        }
    }

    /// `CREATE|DROP|ALTER [modifiers] TABLE [IF [NOT] EXISTS] t`, `CREATE .. INDEX .. ON t`.
    fn ddl_target(&mut self) -> Option<String> {
        const MODIFIERS: [&str; 6] = ["TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL", "UNIQUE"];
        let mut w = self.next_word()?;
        while MODIFIERS.iter().any(|m| w.eq_ignore_ascii_case(m)) {
            w = self.next_word()?;
        }
        if w.eq_ignore_ascii_case("TABLE") {
            if self.skip_word("IF") {
                self.skip_word("NOT");
                self.skip_word("EXISTS");
            }
            return self.table(false);
        }
        if w.eq_ignore_ascii_case("INDEX") {
            self.find_word("ON")?;
            return self.table(false);
        }
        None
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// A quoted identifier kept in query text: ASCII letters, digits, `_` and `$`, at most
/// [`MAX_IDENT_BYTES`] (`"Orders"`, `"order_items"`), never text such as `"jane@example.com"`.
fn is_plain_ident(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IDENT_BYTES
        && s.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// End of the identifier or keyword starting at `i`.
fn ident_end(b: &[u8], i: usize) -> usize {
    i + b[i..].iter().take_while(|&&c| is_ident_char(c)).count()
}

/// If the word `b[i..end]` is a string prefix (`E`, `B`, `X`, `N`, `U&`) directly followed by a
/// quote, the end of that string constant.
fn prefixed_string(b: &[u8], i: usize, end: usize) -> Option<usize> {
    if end != i + 1 {
        return None;
    }
    match (b[i].to_ascii_uppercase(), b.get(end), b.get(end + 1)) {
        (b'E', Some(b'\''), _) => Some(string_end(b, end + 1, true)),
        (b'B' | b'X' | b'N', Some(b'\''), _) => Some(string_end(b, end + 1, false)),
        (b'U', Some(b'&'), Some(b'\'')) => Some(string_end(b, end + 2, false)),
        _ => None,
    }
}

/// Length of the UTF-8 sequence a lead byte starts (1 for stray continuation bytes).
fn utf8_len(c: u8) -> usize {
    match c {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// End of a comment starting at `i` (`--` to end of line, nested `/* */`), if one starts there.
fn comment_end(b: &[u8], i: usize) -> Option<usize> {
    match (b[i], b.get(i + 1)) {
        (b'-', Some(b'-')) => Some(
            b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n + 1),
        ),
        (b'/', Some(b'*')) => {
            let mut depth = 0u32;
            let mut j = i;
            while j + 1 < b.len() {
                match (b[j], b[j + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        j += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                    _ => j += 1,
                }
            }
            Some(b.len())
        }
        _ => None,
    }
}

/// End (just past the closing quote) of a string constant whose body starts at `i`. `''` is an
/// escaped quote; with `backslash` (E strings) so is `\'`.
fn string_end(b: &[u8], mut i: usize, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// End (just past the closing quote) of a quoted identifier whose body starts at `i`.
fn quoted_ident_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// End of a numeric constant starting at `i`: digits, `.`, exponent with sign, `0x`/`0o`/`0b`
/// prefixes and `_` separators.
fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'0'..=b'9' | b'.' | b'_' => i += 1,
            b'e' | b'E' if matches!(b.get(i + 1), Some(b'+' | b'-')) => i += 2,
            c if c.is_ascii_alphabetic() => i += 1,
            _ => break,
        }
    }
    i
}

enum Dollar {
    /// `$1`: a parameter, ending here.
    Param(usize),
    /// A dollar-quoted string, ending here (end of text if unterminated).
    Quote(usize),
    /// A lone `$`.
    Plain,
}

/// What a `$` at `i` starts.
fn dollar(b: &[u8], i: usize) -> Dollar {
    let rest = &b[i + 1..];
    if rest.first().is_some_and(u8::is_ascii_digit) {
        return Dollar::Param(i + 1 + rest.iter().take_while(|c| c.is_ascii_digit()).count());
    }
    // Tag: empty, or an identifier not starting with a digit and without `$`.
    let tag_len = match rest.first() {
        Some(&c) if is_ident_start(c) => rest
            .iter()
            .take_while(|&&c| is_ident_char(c) && c != b'$')
            .count(),
        _ => 0,
    };
    if rest.get(tag_len) != Some(&b'$') {
        return Dollar::Plain;
    }
    let delim = &b[i..i + tag_len + 2];
    let body = i + delim.len();
    // Only a `$` can start the closing delimiter, and a comparison that runs k bytes into the
    // tag has passed k bytes without a `$`: linear in the text whatever the tag's length (a
    // search over every window would be quadratic for a long tag).
    let mut at = body;
    while let Some(n) = b[at..].iter().position(|&c| c == b'$') {
        let start = at + n;
        if b[start..].starts_with(delim) {
            return Dollar::Quote(start + delim.len());
        }
        at = start + 1;
    }
    Dollar::Quote(b.len())
}

#[cfg(test)]
mod tests;
