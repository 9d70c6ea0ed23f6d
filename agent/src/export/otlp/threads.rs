//! Same-thread parenting: a client call made by the thread that is handling a server request
//! becomes that request's child.
//!
//! The client exchange finishes first (the server answers after its calls return), so client
//! spans of processes that serve requests wait here, keyed by (pid, thread), until a server
//! span of the same thread arrives whose time contains them, or [`HOLD`] has passed. Clients of
//! processes never seen serving (curl, psql) are not held. The thread is the one whose syscall
//! completed the exchange, so this holds for thread-per-request servers and blocking clients;
//! event loops that move a request between threads are not parented.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metadata::ProcessInfo;

use super::proto::{Span, SpanKind};

/// How long a client span waits for its server span.
pub const HOLD: Duration = Duration::from_secs(2);
/// Spans held at most; beyond, client spans are released at once (unparented).
const MAX_HELD: usize = 4096;
/// Server pids remembered at most (the set is cleared when full).
const MAX_SERVERS: usize = 65536;

/// A span with its process and thread, on its way to a batch.
pub type Pending = (Arc<ProcessInfo>, Span);

struct Held {
    process: Arc<ProcessInfo>,
    tid: u32,
    span: Span,
    deadline: Instant,
}

/// Client spans waiting for their server span.
#[derive(Default)]
pub struct ThreadParents {
    held: Vec<Held>,
    servers: HashSet<u32>,
}

impl ThreadParents {
    /// Takes one span: returns the spans ready to be sent (it, and any held children it
    /// adopted), or nothing when it is held.
    pub fn offer(
        &mut self,
        process: Arc<ProcessInfo>,
        tid: Option<u32>,
        span: Span,
        out: &mut Vec<Pending>,
    ) {
        let pid = process.pid;
        match (span.kind, tid) {
            (SpanKind::Server, Some(tid)) => {
                if self.servers.len() >= MAX_SERVERS {
                    self.servers.clear();
                }
                self.servers.insert(pid);
                let mut i = 0;
                while i < self.held.len() {
                    let h = &self.held[i];
                    let inside = h.process.pid == pid
                        && h.tid == tid
                        && span.start_unix_ns <= h.span.start_unix_ns
                        && h.span.end_unix_ns <= span.end_unix_ns;
                    if inside {
                        let mut child = self.held.swap_remove(i);
                        child.span.trace_id = span.trace_id;
                        child.span.parent_span_id = Some(span.span_id);
                        child.span.trace_state = span.trace_state.clone();
                        out.push((child.process, child.span));
                    } else {
                        i += 1;
                    }
                }
                out.push((process, span));
            }
            (SpanKind::Server, None) => out.push((process, span)),
            (_, Some(tid)) if self.servers.contains(&pid) && self.held.len() < MAX_HELD => {
                self.held.push(Held {
                    process,
                    tid,
                    span,
                    deadline: Instant::now() + HOLD,
                });
            }
            _ => out.push((process, span)),
        }
    }

    /// Releases the spans whose wait is over (all of them with `all`).
    pub fn release(&mut self, now: Instant, all: bool, out: &mut Vec<Pending>) {
        let mut i = 0;
        while i < self.held.len() {
            if all || self.held[i].deadline <= now {
                let h = self.held.swap_remove(i);
                out.push((h.process, h.span));
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: SpanKind, id: u8, start: u64, end: u64) -> Span {
        Span {
            trace_id: [id; 16],
            span_id: [id; 8],
            parent_span_id: None,
            trace_state: String::new(),
            name: String::new(),
            kind,
            start_unix_ns: start,
            end_unix_ns: end,
            attributes: Vec::new(),
            error: None,
        }
    }

    fn process(pid: u32) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            pid,
            comm: String::new(),
            exe_name: String::new(),
            container_id: None,
            service_name: String::new(),
            pod_uid: None,
            k8s: None,
            seq: u64::from(pid),
        })
    }

    #[test]
    fn a_call_inside_a_request_on_its_thread_becomes_its_child() {
        let mut p = ThreadParents::default();
        let mut out = Vec::new();
        p.offer(
            process(1),
            Some(10),
            span(SpanKind::Server, 1, 0, 5),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        out.clear();
        // Held: the process serves requests.
        p.offer(
            process(1),
            Some(10),
            span(SpanKind::Client, 2, 20, 30),
            &mut out,
        );
        // Another thread, and a call outside the request's time: not adopted.
        p.offer(
            process(1),
            Some(11),
            span(SpanKind::Client, 3, 20, 30),
            &mut out,
        );
        p.offer(
            process(1),
            Some(10),
            span(SpanKind::Client, 4, 5, 30),
            &mut out,
        );
        // A process never seen serving: passed on at once.
        p.offer(
            process(2),
            Some(10),
            span(SpanKind::Client, 5, 20, 30),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        out.clear();
        p.offer(
            process(1),
            Some(10),
            span(SpanKind::Server, 6, 10, 40),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        let child = &out[0].1;
        assert_eq!(child.span_id, [2; 8]);
        assert_eq!(child.trace_id, [6; 16]);
        assert_eq!(child.parent_span_id, Some([6; 8]));
        out.clear();
        p.release(Instant::now(), false, &mut out);
        assert!(out.is_empty());
        p.release(Instant::now() + HOLD, false, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, s)| s.parent_span_id.is_none()));
    }
}
