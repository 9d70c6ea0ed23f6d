//! Sinks: the Prometheus registry and the HTTP endpoint that serves it.

pub mod expiry;
pub mod http;
pub mod labels;
pub mod prometheus;
