//! Periscope's userspace agent: capture → connection tracking → protocol decoding → metrics.
//! See the README's design section for the one-screen tour.

pub mod capture;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod exchange;
pub mod export;
pub mod flows;
pub mod internal_events;
pub mod logging;
pub mod metadata;
pub mod pipeline;
pub mod privileges;
pub mod protocol;
pub mod selection;
pub mod syscalls;
#[cfg(test)]
pub mod test_alloc;
