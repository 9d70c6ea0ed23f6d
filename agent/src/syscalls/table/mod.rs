//! Syscall tables, number → name, of the architectures Periscope runs on. The agent uses its
//! own architecture's ([`NAMES`]); both are compiled everywhere so that each is unit-tested.
//! Metric labels are the running architecture's names: most are the same on both (`read`,
//! `openat`, `futex`), but arm64 lacks the older forms (`open`, `poll`, `epoll_wait`, ...).

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub mod aarch64;
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use aarch64::{COUNT, EVENTS, NAMES};
#[cfg(not(target_arch = "aarch64"))]
pub use x86_64::{COUNT, EVENTS, NAMES};
