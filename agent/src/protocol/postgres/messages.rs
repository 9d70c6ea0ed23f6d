//! What the messages mean: requests queued in the order sent, each completion paired with
//! the oldest request it answers, and the exchange built from the pair.

use std::sync::Arc;

use super::framing::cstr;
use super::{
    sql, PgDecoder, PgExchange, StartupInfo, EMPTY_OPERATION, MAX_NAME_BYTES, MAX_PARAM_CHARS,
    MAX_PENDING, MAX_PENDING_SIMPLE, MAX_PORTALS, MAX_PREPARED, MAX_PREPARED_BYTES, MAX_TEXT_BYTES,
    UNKNOWN_OPERATION,
};

/// A statement's SQL, summarised once (per Parse, or per statement of a Query).
#[derive(Debug)]
pub(super) struct Statement {
    pub(super) operation: String,
    pub(super) collection: Option<String>,
    pub(super) summary: String,
    pub(super) text: String,
}

impl Statement {
    pub(super) fn new(sql: &str) -> Self {
        let (operation, collection) = sql::summarize(sql);
        let mut text = sql::normalize(sql);
        if text.len() > MAX_TEXT_BYTES {
            let mut end = MAX_TEXT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Statement {
            summary: summary(&operation, collection.as_deref()),
            operation,
            collection,
            text,
        }
    }

    /// Bytes this statement keeps.
    fn size(&self) -> usize {
        self.operation.len()
            + self.collection.as_ref().map_or(0, String::len)
            + self.summary.len()
            + self.text.len()
    }
}

/// What remembering a named statement costs: the name twice (map and order), the statement
/// and the bookkeeping around them.
fn prepared_cost(name: &str, statement: &Statement) -> usize {
    2 * name.len() + statement.size() + 128
}

/// A statement or portal name as kept: as sent up to [`MAX_NAME_BYTES`], else a short
/// prefix and a hash of the whole (clients use short names; a long one costs the sender's
/// own pairing at worst, never the agent's memory).
pub(super) fn name_key(raw: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    if raw.len() <= MAX_NAME_BYTES {
        return String::from_utf8_lossy(raw).into_owned();
    }
    let mut hasher = rustc_hash::FxHasher::default();
    raw.hash(&mut hasher);
    let prefix = String::from_utf8_lossy(&raw[..16]);
    format!("{prefix}~{:016x}", hasher.finish())
}

pub(super) fn summary(operation: &str, collection: Option<&str>) -> String {
    match collection {
        Some(c) => format!("{operation} {c}"),
        None => operation.to_owned(),
    }
}

/// A request waiting for its response.
#[derive(Debug)]
pub(super) enum Pending {
    /// A simple Query; ended by ReadyForQuery.
    Simple(Simple),
    /// An Execute; ended by its completion message.
    Exec(Exec),
    /// A Sync; ended by ReadyForQuery.
    Sync,
    /// Executions beyond [`MAX_PENDING`]: their completions are consumed and counted unpaired.
    Untracked(u64),
}

#[derive(Debug)]
pub(super) struct Simple {
    pub(super) start_ns: u64,
    /// Given to the next statement completed (so the first gets the Query's bytes).
    pub(super) request_bytes: u64,
    /// The SQL (at most [`MAX_BUFFERED_BYTES`](super::MAX_BUFFERED_BYTES)) and its statements as byte ranges, summarised
    /// when completed so a long script costs no more memory than its text.
    pub(super) sql: Box<str>,
    pub(super) statements: Vec<(u32, u32)>,
    pub(super) next: usize,
    /// An ErrorResponse aborted the rest.
    pub(super) failed: bool,
}

#[derive(Debug)]
pub(super) struct Exec {
    pub(super) start_ns: u64,
    pub(super) request_bytes: u64,
    pub(super) statement: Option<Arc<Statement>>,
    pub(super) name: Option<Arc<str>>,
}

/// Parse/Bind/Describe messages waiting for their Execute.
#[derive(Clone, Copy, Debug)]
pub(super) struct Building {
    pub(super) start_ns: u64,
    pub(super) bytes: u64,
}

/// What a Bind made of a portal. Shared pointers: a Bind/Execute of a known statement
/// allocates nothing.
#[derive(Clone, Debug, Default)]
pub(super) struct Portal {
    pub(super) statement: Option<Arc<Statement>>,
    pub(super) name: Option<Arc<str>>,
}

impl PgDecoder {
    pub(super) fn request(&mut self, ty: u8, body: &[u8], bytes: u64, first_ns: u64) {
        match ty {
            b'Q' => {
                self.building = None;
                let (sql, _) = cstr(body);
                let sql: Box<str> = String::from_utf8_lossy(sql).into();
                let statements = sql::split_statements(&sql)
                    .into_iter()
                    .map(|s| {
                        let start = s.as_ptr() as usize - sql.as_ptr() as usize;
                        (start as u32, (start + s.len()) as u32)
                    })
                    .collect();
                self.push(Pending::Simple(Simple {
                    start_ns: first_ns,
                    request_bytes: bytes,
                    sql,
                    statements,
                    next: 0,
                    failed: false,
                }));
            }
            b'P' => {
                self.build(first_ns, bytes);
                let (name, rest) = cstr(body);
                let (sql, _) = cstr(rest);
                let statement = Arc::new(Statement::new(&String::from_utf8_lossy(sql)));
                if name.is_empty() {
                    self.unnamed = Some(statement);
                } else {
                    self.prepare(name_key(name), statement);
                }
            }
            b'B' => {
                self.build(first_ns, bytes);
                let (portal, rest) = cstr(body);
                let (name, _) = cstr(rest);
                let bound = self.statement(name);
                if portal.is_empty() {
                    self.unnamed_portal = bound;
                } else {
                    let portal = name_key(portal);
                    self.portals.retain(|(p, _)| *p != portal);
                    if self.portals.len() >= MAX_PORTALS {
                        self.portals.remove(0);
                    }
                    self.portals.push((portal, bound));
                }
            }
            b'D' => self.build(first_ns, bytes),
            b'E' => {
                let (portal, _) = cstr(body);
                let bound = if portal.is_empty() {
                    self.unnamed_portal.clone()
                } else {
                    self.portals
                        .iter()
                        .find(|(p, _)| p.as_bytes() == portal)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default()
                };
                let built = self.building.take();
                self.push(Pending::Exec(Exec {
                    start_ns: built.map_or(first_ns, |b| b.start_ns),
                    request_bytes: built.map_or(0, |b| b.bytes) + bytes,
                    statement: bound.statement,
                    name: bound.name,
                }));
            }
            b'S' => {
                self.building = None;
                self.push(Pending::Sync);
            }
            b'C' => {
                let (kind, name) = body.split_first().map_or((0, &[][..]), |(k, r)| (*k, r));
                let (name, _) = cstr(name);
                match kind {
                    b'S' if name.is_empty() => self.unnamed = None,
                    b'S' => self.unprepare(&name_key(name)),
                    b'P' if name.is_empty() => self.unnamed_portal = Portal::default(),
                    b'P' => {
                        let name = name_key(name);
                        self.portals.retain(|(p, _)| *p != name);
                    }
                    _ => {}
                }
            }
            b'd' | b'c' | b'f' => match self.pending.front_mut() {
                Some(Pending::Exec(x)) => x.request_bytes += bytes,
                Some(Pending::Simple(q)) => q.request_bytes += bytes,
                _ => {}
            },
            // Flush, Terminate, FunctionCall, password/SASL messages: nothing to record.
            _ => {}
        }
    }

    pub(super) fn build(&mut self, first_ns: u64, bytes: u64) {
        let b = self.building.get_or_insert(Building {
            start_ns: first_ns,
            bytes: 0,
        });
        b.bytes += bytes;
    }

    /// The statement a Bind names, with its name (None for the unnamed statement).
    pub(super) fn statement(&self, name: &[u8]) -> Portal {
        if name.is_empty() {
            return Portal {
                statement: self.unnamed.clone(),
                name: None,
            };
        }
        let name = name_key(name);
        match self.prepared.get(&name) {
            Some((p, _)) => p.clone(),
            // Prepared before the capture began (or evicted): name only.
            None => Portal {
                statement: None,
                name: Some(name.into()),
            },
        }
    }

    /// Remembers a named statement. The map is bounded by count ([`MAX_PREPARED`]) and by
    /// bytes ([`MAX_PREPARED_BYTES`]): the oldest statements go first.
    pub(super) fn prepare(&mut self, name: String, statement: Arc<Statement>) {
        self.unprepare(&name);
        let cost = prepared_cost(&name, &statement);
        while self.prepared.len() >= MAX_PREPARED || self.prepared_bytes + cost > MAX_PREPARED_BYTES
        {
            let Some((old, old_seq)) = self.prepared_order.pop_front() else {
                break;
            };
            if self.prepared.get(&old).is_some_and(|(_, s)| *s == old_seq) {
                self.unprepare(&old);
            }
        }
        if self.prepared_order.len() >= 2 * MAX_PREPARED {
            // Closed and re-prepared names leave stale entries behind: drop them.
            let prepared = &self.prepared;
            self.prepared_order
                .retain(|(n, s)| prepared.get(n).is_some_and(|(_, cur)| cur == s));
        }
        self.prepared_seq += 1;
        let seq = self.prepared_seq;
        self.prepared_order.push_back((name.clone(), seq));
        let bound = Portal {
            statement: Some(statement),
            name: Some(name.as_str().into()),
        };
        self.prepared_bytes += cost;
        self.prepared.insert(name, (bound, seq));
    }

    /// Forgets a named statement (closed, replaced or evicted).
    pub(super) fn unprepare(&mut self, name: &str) {
        if let Some((portal, _)) = self.prepared.remove(name) {
            if let Some(statement) = &portal.statement {
                self.prepared_bytes -= prepared_cost(name, statement);
            }
        }
    }

    pub(super) fn push(&mut self, p: Pending) {
        self.joined = false;
        let full = self.pending.len() >= MAX_PENDING
            || (matches!(p, Pending::Simple(_))
                && self.pending.len() >= MAX_PENDING_SIMPLE
                && self
                    .pending
                    .iter()
                    .filter(|q| matches!(q, Pending::Simple(_)))
                    .count()
                    >= MAX_PENDING_SIMPLE);
        if full {
            let n = match p {
                Pending::Exec(_) => 1,
                Pending::Simple(ref q) => q.statements.len().max(1) as u64,
                Pending::Untracked(n) => n,
                Pending::Sync => 0,
            };
            if n > 0 {
                if let Some(Pending::Untracked(m)) = self.pending.back_mut() {
                    *m += n;
                } else {
                    self.pending.push_back(Pending::Untracked(n));
                }
            }
            if matches!(p, Pending::Sync | Pending::Simple(_)) {
                self.pending.push_back(Pending::Sync);
            }
            while self.pending.len() > 2 * MAX_PENDING {
                if let Some(old) = self.pending.pop_front() {
                    self.stats.unpaired_requests += unanswered(&old);
                }
            }
            return;
        }
        self.pending.push_back(p);
    }

    pub(super) fn response(
        &mut self,
        ty: u8,
        body: &[u8],
        bytes: u64,
        end_ns: u64,
        out: &mut Vec<PgExchange>,
    ) {
        self.resp_bytes += bytes;
        match ty {
            b'D' => self.data_rows += 1,
            b'C' => {
                let (tag, _) = cstr(body);
                self.complete(Outcome::Done(tag), end_ns, out);
            }
            b'E' => {
                let state = sqlstate(body);
                self.complete(Outcome::Error(state), end_ns, out);
            }
            b'I' => self.complete(Outcome::Empty, end_ns, out),
            b's' => self.complete(Outcome::Suspended, end_ns, out),
            b'Z' => self.ready(),
            _ => {}
        }
    }

    /// A completion message arrived: finish the request it answers.
    pub(super) fn complete(
        &mut self,
        outcome: Outcome<'_>,
        end_ns: u64,
        out: &mut Vec<PgExchange>,
    ) {
        let resp_bytes = std::mem::take(&mut self.resp_bytes);
        let data_rows = std::mem::take(&mut self.data_rows);
        let is_error = matches!(outcome, Outcome::Error(_));
        let (start_ns, request_bytes, statement, name) = match self.pending.front_mut() {
            Some(Pending::Simple(q)) => {
                if q.failed {
                    return;
                }
                let statement = q
                    .statements
                    .get(q.next)
                    .map(|&(a, b)| Statement::new(q.sql.get(a as usize..b as usize).unwrap_or("")));
                q.next += 1;
                q.failed = is_error;
                let request_bytes = std::mem::take(&mut q.request_bytes);
                (q.start_ns, request_bytes, statement.map(Arc::new), None)
            }
            Some(Pending::Exec(_)) => {
                let Some(Pending::Exec(x)) = self.pending.pop_front() else {
                    unreachable!("front was an Exec");
                };
                (x.start_ns, x.request_bytes, x.statement, x.name)
            }
            Some(Pending::Untracked(n)) => {
                *n -= 1;
                if *n == 0 {
                    self.pending.pop_front();
                }
                self.stats.unpaired_requests += 1;
                return;
            }
            // An error for a Parse or Bind without Execute (a failed prepare): no exchange.
            Some(Pending::Sync) if is_error => return,
            // An error with nothing pending: a start-up or FATAL error.
            None if is_error => return,
            Some(Pending::Sync) | None => {
                if !self.joined {
                    self.stats.unexpected_responses += 1;
                }
                return;
            }
        };
        out.push(exchange(
            outcome,
            statement.as_deref(),
            name,
            data_rows,
            start_ns,
            end_ns,
            request_bytes,
            resp_bytes,
        ));
    }

    /// ReadyForQuery: the Query or Sync at the head is answered; Executes before it that got no
    /// completion were skipped by the server (after an error) or lost in a gap.
    pub(super) fn ready(&mut self) {
        self.resp_bytes = 0;
        self.data_rows = 0;
        if std::mem::take(&mut self.logging_in) {
            return;
        }
        if !self
            .pending
            .iter()
            .any(|p| matches!(p, Pending::Simple(_) | Pending::Sync))
        {
            return;
        }
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Simple(_) | Pending::Sync => {
                    self.stats.unpaired_requests += unanswered(&p);
                    break;
                }
                other => self.stats.unpaired_requests += unanswered(&other),
            }
        }
    }
}

/// How many requests a pending item stands for that will now get no exchange.
pub(super) fn unanswered(p: &Pending) -> u64 {
    match p {
        Pending::Simple(q) if q.failed => 0,
        Pending::Simple(q) => q.statements.len().saturating_sub(q.next) as u64,
        Pending::Exec(_) => 1,
        Pending::Untracked(n) => *n,
        Pending::Sync => 0,
    }
}

/// What ended an execution.
#[derive(Clone, Copy, Debug)]
pub(super) enum Outcome<'a> {
    /// CommandComplete with its tag.
    Done(&'a [u8]),
    /// ErrorResponse with its SQLSTATE, if found.
    Error(Option<[u8; 5]>),
    Empty,
    Suspended,
    /// The connection closed mid-response.
    Cut,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn exchange(
    outcome: Outcome<'_>,
    statement: Option<&Statement>,
    statement_name: Option<Arc<str>>,
    data_rows: u64,
    start_ns: u64,
    end_ns: u64,
    request_bytes: u64,
    response_bytes: u64,
) -> PgExchange {
    let tag = match outcome {
        Outcome::Done(tag) => Some(tag),
        _ => None,
    };
    let rows = tag
        .and_then(tag_rows)
        .or((data_rows > 0).then_some(data_rows));
    let error_sqlstate = match outcome {
        Outcome::Error(state) => {
            Some(state.map_or_else(String::new, |s| String::from_utf8_lossy(&s).into_owned()))
        }
        _ => None,
    };
    let (operation, collection, query_summary, query_text) = match statement {
        Some(s) if !s.operation.is_empty() => (
            s.operation.clone(),
            s.collection.clone(),
            s.summary.clone(),
            s.text.clone(),
        ),
        _ => {
            let op = match (outcome, tag.and_then(tag_operation)) {
                (_, Some(op)) => op,
                (Outcome::Empty, None) => EMPTY_OPERATION.to_owned(),
                _ => UNKNOWN_OPERATION.to_owned(),
            };
            let text = statement.map_or_else(String::new, |s| s.text.clone());
            (op.clone(), None, op, text)
        }
    };
    PgExchange {
        operation,
        collection,
        query_summary,
        query_text,
        statement_name: statement_name.map(|n| n.to_string()),
        rows,
        error_sqlstate,
        start_ns,
        end_ns,
        request_bytes,
        response_bytes,
        complete: !matches!(outcome, Outcome::Cut),
    }
}

/// Row count of a CommandComplete tag that carries one.
pub(super) fn tag_rows(tag: &[u8]) -> Option<u64> {
    const COUNTED: [&[u8]; 8] = [
        b"SELECT", b"INSERT", b"UPDATE", b"DELETE", b"MERGE", b"COPY", b"FETCH", b"MOVE",
    ];
    let first = tag.split(|&c| c == b' ').next()?;
    if !COUNTED.contains(&first) {
        return None;
    }
    let last = tag.rsplit(|&c| c == b' ').next()?;
    if last.is_empty() || last.len() > 20 || !last.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// First word of a CommandComplete tag, as an operation.
pub(super) fn tag_operation(tag: &[u8]) -> Option<String> {
    let first = tag.split(|&c| c == b' ').next()?;
    if first.is_empty() || first.len() > 32 || !first.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some(String::from_utf8_lossy(first).to_ascii_uppercase())
}

/// The `C` (SQLSTATE) field of an ErrorResponse body.
pub(super) fn sqlstate(mut body: &[u8]) -> Option<[u8; 5]> {
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            return None;
        }
        let (value, rest) = cstr(rest);
        if field == b'C' {
            return value
                .try_into()
                .ok()
                .filter(|v: &[u8; 5]| v.iter().all(u8::is_ascii_alphanumeric));
        }
        body = rest;
    }
    None
}

/// StartupMessage parameters (after the protocol version): user, database, application_name.
pub(super) fn startup_info(mut params: &[u8], truncated: bool) -> StartupInfo {
    let mut info = StartupInfo::default();
    loop {
        let (key, rest) = cstr(params);
        if key.is_empty() {
            break;
        }
        let (value, rest) = cstr(rest);
        if truncated && rest.is_empty() {
            break; // the value may be cut: better none than a wrong one
        }
        let value: String = String::from_utf8_lossy(value)
            .chars()
            .take(MAX_PARAM_CHARS)
            .collect();
        match key {
            b"user" => info.user = Some(value),
            b"database" => info.database = Some(value),
            b"application_name" if !value.is_empty() => info.application_name = Some(value),
            _ => {}
        }
        params = rest;
    }
    if info.database.is_none() {
        info.database = info.user.clone();
    }
    info
}
