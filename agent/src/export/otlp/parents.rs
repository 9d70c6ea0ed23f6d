//! Parents without propagation: which span called which, worked out from what the kernel saw.
//!
//! Two links are known without any header:
//! - **Same thread.** A client call made by the thread that is handling a server request is
//!   that request's child (thread-per-request servers, blocking clients, and event loops while
//!   one request is in flight on the thread). The thread is the one whose syscall completed
//!   the exchange; event loops that move a request between threads are not parented.
//! - **Same connection.** When the client end of a connection was seen on this node, a server
//!   exchange on the other end is the child of the client exchange whose time holds it; on a
//!   multiplexed connection (HTTP/2), the one of the same stream.
//!
//! A caller finishes after its callees (a server answers after its calls return, a client
//! reads the answer after the server wrote it), so a span that may still get a parent waits
//! here until it arrives, or [`HOLD`] has passed. A waiting span is adopted by its parent even
//! if the parent must wait in turn (nginx's server span waits for curl's client span), and the
//! trace id is settled only when the root of the tree is known: then the whole tree takes the
//! root's trace and is sampled once, by the root's trace id.
//!
//! A `traceparent` in a request (see `Converter::span`) gives the span its trace and parent
//! only if the span ends up a root: a link the kernel saw is closer. So a request through curl
//! (with `-H traceparent`), nginx (which passes the header on) and an app is one tree under
//! curl's span, in the header's trace. The two ends of a connection are stamped by different
//! syscalls, so a callee may appear to start a few microseconds before its caller, or end a
//! few after: the caller's start is moved back to the callee's (the caller's write began
//! before the callee's read returned) and the callee's end is cut to the caller's (the answer
//! was delivered by then), so that timings nest. A caller already sent (its callee came late)
//! cannot move: the callee's tree is fitted into the caller's time instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metadata::ProcessInfo;

use super::context::{Sampler, TraceParent};
use super::proto::{Span, SpanKind};

/// How long a span waits for its parent.
pub const HOLD: Duration = Duration::from_secs(2);
/// Spans waiting at most; beyond, new spans are sent at once (unparented).
const MAX_HELD: usize = 4096;
/// Server pids remembered at most (the set is cleared when full).
const MAX_SERVERS: usize = 65536;
/// Clock slack between the two ends of a connection: each end is stamped when its own syscall
/// returned, so a server may finish reading a request a little before the client's write
/// returns (the data is delivered inside the client's syscall).
const CONN_SLACK_NS: u64 = 5_000_000;
/// How long a sent client span is kept for a late server end.
const SENT_KEPT: Duration = Duration::from_millis(500);
/// Sent client spans kept at most.
const MAX_SENT: usize = 65536;

/// Whether `child` lies within `start..end`, give or take `slack`.
fn fits(start: u64, end: u64, child: &Span, slack: u64) -> bool {
    start <= child.start_unix_ns + slack && child.end_unix_ns <= end + slack
}

/// A span with its process, on its way to a batch.
pub type Pending = (Arc<ProcessInfo>, Span);

/// A new span and what the kernel knows about where it came from.
pub struct Arrival {
    pub process: Arc<ProcessInfo>,
    /// The thread that completed the exchange.
    pub tid: Option<u32>,
    /// The exchange's connection.
    pub conn_id: u64,
    /// For a server span: the connection of its client end on this node.
    pub peer_conn: Option<u64>,
    /// The exchange's stream on a multiplexed connection (HTTP/2), 0 elsewhere: both ends of
    /// a connection number a stream alike.
    pub stream: u32,
    /// The `traceparent` of the request, whose trace the span has joined.
    pub remote_parent: Option<TraceParent>,
    pub span: Span,
}

/// A span and the children it adopted, waiting for the tree's trace to be settled.
struct Node {
    process: Arc<ProcessInfo>,
    conn: Link,
    remote_parent: Option<TraceParent>,
    span: Span,
    children: Vec<Node>,
    /// Spans in this tree.
    size: usize,
}

/// A connection and a stream on it (0 where streams are not multiplexed).
type Link = (u64, u32);

/// What a waiting span waits for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Wait {
    /// A server span of this (pid, thread) whose time holds it.
    Thread(u32, u32),
    /// A client span on this connection and stream whose time holds it.
    Conn(Link),
}

struct Waiting {
    node: Node,
    wait: Wait,
}

/// A client span already sent, kept a moment for a server span of its request that arrives
/// after it: the two ends' last syscalls return on different CPUs, so the client may read the
/// answer before the server's write returns.
struct Sent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    trace_state: String,
    start_unix_ns: u64,
    end_unix_ns: u64,
    sampled: bool,
    until: Instant,
}

/// Spans waiting for their parents.
#[derive(Default)]
pub struct Parents {
    waiting: HashMap<u64, Waiting>,
    /// Keys of `waiting` by what they wait for.
    by_wait: HashMap<Wait, Vec<u64>>,
    /// Keys of `waiting` in arrival order, with their deadlines.
    deadlines: VecDeque<(Instant, u64)>,
    next_key: u64,
    /// Spans held, adopted children included.
    held: usize,
    /// Processes seen serving: only their client calls may have a server parent.
    servers: HashSet<u32>,
    /// The latest client span sent per connection and stream, while no server span claimed
    /// it.
    sent: HashMap<Link, Sent>,
    /// Keys of `sent` in the order they were sent, with when they stop being kept.
    sent_order: VecDeque<(Instant, Link)>,
}

impl Parents {
    /// Takes one span; whatever is settled by it (it, and the trees it completes) goes to
    /// `out`, sampled.
    pub fn offer(&mut self, arrival: Arrival, sampler: &Sampler, out: &mut Vec<Pending>) {
        let pid = arrival.process.pid;
        let server = arrival.span.kind == SpanKind::Server;
        let mut node = Node {
            process: arrival.process,
            conn: (arrival.conn_id, arrival.stream),
            remote_parent: arrival.remote_parent,
            span: arrival.span,
            children: Vec::new(),
            size: 1,
        };
        match (server, arrival.tid) {
            (true, Some(tid)) => {
                while let Some(child) = self.take_fitting(Wait::Thread(pid, tid), &node.span) {
                    node.adopt(child, false);
                }
                if self.servers.len() >= MAX_SERVERS {
                    self.servers.clear();
                }
                self.servers.insert(pid);
            }
            (true, None) => {}
            (false, _) => {
                if let Some(child) = self.take_fitting(Wait::Conn(node.conn), &node.span) {
                    node.adopt(child, true);
                }
            }
        }
        let peer = arrival.peer_conn.map(|conn| (conn, arrival.stream));
        if let (true, Some(conn)) = (server, peer) {
            if let Some(caller) = self.take_sent(conn, &node.span) {
                node.span.trace_id = caller.trace_id;
                node.span.parent_span_id = Some(caller.span_id);
                node.span.trace_state = caller.trace_state;
                // The caller is sent and cannot move: the callee's tree is fitted into it.
                node.fit_within(caller.start_unix_ns, caller.end_unix_ns);
                self.send(node, caller.sampled, out);
                return;
            }
        }
        let wait = match (server, arrival.tid) {
            (true, _) => peer.map(Wait::Conn),
            (false, Some(tid)) if self.servers.contains(&pid) => Some(Wait::Thread(pid, tid)),
            (false, _) => None,
        };
        match wait {
            Some(wait) if self.held + node.size <= MAX_HELD => {
                let key = self.next_key;
                self.next_key += 1;
                self.held += node.size;
                self.by_wait.entry(wait).or_default().push(key);
                self.deadlines.push_back((Instant::now() + HOLD, key));
                self.waiting.insert(key, Waiting { node, wait });
            }
            _ => {
                let sampled = sampler.sample(&node.span.trace_id, node.remote_parent.as_ref());
                self.send(node, sampled, out);
            }
        }
    }

    /// Takes the oldest span waiting for `wait` whose time `parent` holds (with the clock
    /// slack of a connection's two ends for `Wait::Conn`).
    fn take_fitting(&mut self, wait: Wait, parent: &Span) -> Option<Node> {
        let slack = match wait {
            Wait::Thread(..) => 0,
            Wait::Conn(_) => CONN_SLACK_NS,
        };
        let keys = self.by_wait.get_mut(&wait)?;
        keys.retain(|k| self.waiting.contains_key(k));
        let at = keys.iter().position(|k| {
            self.waiting.get(k).is_some_and(|w| {
                fits(
                    parent.start_unix_ns,
                    parent.end_unix_ns,
                    &w.node.span,
                    slack,
                )
            })
        });
        let key = at.map(|i| keys.remove(i));
        if keys.is_empty() {
            self.by_wait.remove(&wait);
        }
        let w = self.waiting.remove(&key?)?;
        self.held -= w.node.size;
        Some(w.node)
    }

    /// The client span sent on `conn` whose time holds `callee`, if it is still kept.
    fn take_sent(&mut self, conn: Link, callee: &Span) -> Option<Sent> {
        let sent = self.sent.get(&conn)?;
        if !fits(sent.start_unix_ns, sent.end_unix_ns, callee, CONN_SLACK_NS) {
            return None;
        }
        self.sent.remove(&conn)
    }

    /// Settles the spans whose wait is over (all of them with `all`) as roots of their trees.
    pub fn release(&mut self, now: Instant, all: bool, sampler: &Sampler, out: &mut Vec<Pending>) {
        while let Some(&(deadline, key)) = self.deadlines.front() {
            if !all && deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(w) = self.waiting.remove(&key) else {
                continue;
            };
            self.held -= w.node.size;
            if let Some(keys) = self.by_wait.get_mut(&w.wait) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.by_wait.remove(&w.wait);
                }
            }
            let root = w.node;
            let sampled = sampler.sample(&root.span.trace_id, root.remote_parent.as_ref());
            self.send(root, sampled, out);
        }
        while let Some(&(until, conn)) = self.sent_order.front() {
            if !all && until > now {
                break;
            }
            self.sent_order.pop_front();
            // A later span of the connection replaced this one and is kept longer.
            if self.sent.get(&conn).is_some_and(|s| all || s.until <= now) {
                self.sent.remove(&conn);
            }
        }
    }

    /// Sends a settled tree, whose root's ids are final, or drops it when not `sampled`: every
    /// span takes the root's trace and children point at their adopter. A client span without
    /// its server end yet takes one that arrived after it was adopted, or is kept a moment for
    /// one still to come.
    fn send(&mut self, root: Node, sampled: bool, out: &mut Vec<Pending>) {
        let mut stack = vec![root];
        while let Some(mut node) = stack.pop() {
            if node.span.kind != SpanKind::Server && node.children.is_empty() {
                match self.take_fitting(Wait::Conn(node.conn), &node.span) {
                    Some(child) => node.adopt(child, true),
                    None => self.keep_sent(&node, sampled),
                }
            }
            for mut child in std::mem::take(&mut node.children) {
                child.span.trace_id = node.span.trace_id;
                child.span.parent_span_id = Some(node.span.span_id);
                child.span.trace_state.clone_from(&node.span.trace_state);
                stack.push(child);
            }
            if sampled {
                out.push((node.process, node.span));
            }
        }
    }

    /// Keeps a client span a moment for a late server end (see [`Sent`]).
    fn keep_sent(&mut self, node: &Node, sampled: bool) {
        if self.sent.len() >= MAX_SENT {
            return;
        }
        let until = Instant::now() + SENT_KEPT;
        let sent = Sent {
            trace_id: node.span.trace_id,
            span_id: node.span.span_id,
            trace_state: node.span.trace_state.clone(),
            start_unix_ns: node.span.start_unix_ns,
            end_unix_ns: node.span.end_unix_ns,
            sampled,
            until,
        };
        self.sent.insert(node.conn, sent);
        self.sent_order.push_back((until, node.conn));
    }

    /// Spans held now.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Node {
    /// Makes `child` a child of this span. Across a connection the two ends' clocks are made
    /// to nest (see the module's doc).
    fn adopt(&mut self, mut child: Node, across_connection: bool) {
        if across_connection {
            let caller = &mut self.span;
            caller.start_unix_ns = caller.start_unix_ns.min(child.span.start_unix_ns);
            child.fit_within(caller.start_unix_ns, caller.end_unix_ns);
        }
        self.size += child.size;
        self.children.push(child);
    }

    /// Clamps the times of this span and all its descendants into `start..=end`. Clamping is
    /// monotonic, so spans that nested still nest. Iterative: a tree's depth is not bounded.
    fn fit_within(&mut self, start: u64, end: u64) {
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            let span = &mut node.span;
            span.start_unix_ns = span.start_unix_ns.clamp(start, end.max(start));
            span.end_unix_ns = span.end_unix_ns.clamp(start, end.max(start));
            stack.extend(node.children.iter_mut());
        }
    }
}

#[cfg(test)]
mod tests;
