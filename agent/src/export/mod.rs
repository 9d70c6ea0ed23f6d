//! Sinks: the Prometheus registry and the HTTP endpoint that serves it.

pub mod http;
pub mod prometheus;
