//! The line protocol `cargo xtask vm` parses from the guest's serial console, and the watchdog
//! that guarantees the guest always ends.
//!
//! ```text
//! VMTEST-KERNEL release=<uname -r> btf=yes|no
//! VMTEST <name> PASS|FAIL|SKIP <detail>
//! VMTEST-DONE passed=<n> failed=<n> skipped=<n>
//! ```

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a single test may take before the watchdog fails it and ends the run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a test concluded.
pub enum Outcome {
    Pass(String),
    Fail(String),
    /// The kernel lacks something the test needs (e.g. BTF); not a failure.
    Skip(String),
}

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
static SKIPPED: AtomicU32 = AtomicU32::new(0);
/// The running test and its deadline, for the watchdog.
static CURRENT: Mutex<Option<(String, Instant)>> = Mutex::new(None);

/// Runs one test under the watchdog; a panic counts as a failure.
pub fn test(name: &str, body: impl FnOnce() -> Outcome) {
    set_current(Some((name.to_owned(), Instant::now() + TEST_TIMEOUT)));
    let outcome = catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|panic| Outcome::Fail(format!("panicked: {}", panic_message(&panic))));
    set_current(None);
    record(name, outcome);
}

/// Prints a result line and counts it.
pub fn record(name: &str, outcome: Outcome) {
    let (word, detail, counter) = match outcome {
        Outcome::Pass(d) => ("PASS", d, &PASSED),
        Outcome::Fail(d) => ("FAIL", d, &FAILED),
        Outcome::Skip(d) => ("SKIP", d, &SKIPPED),
    };
    counter.fetch_add(1, Ordering::SeqCst);
    // One line per result: details must not break the line protocol.
    let detail = detail.replace(['\n', '\r'], " ");
    line(&format!("VMTEST {name} {word} {detail}"));
}

/// The final line; `true` if nothing failed.
pub fn done() -> bool {
    let failed = FAILED.load(Ordering::SeqCst);
    line(&format!(
        "VMTEST-DONE passed={} failed={failed} skipped={}",
        PASSED.load(Ordering::SeqCst),
        SKIPPED.load(Ordering::SeqCst)
    ));
    failed == 0
}

/// Writes one protocol line in a single write, so kernel messages cannot split it.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{text}\n").as_bytes());
    let _ = out.flush();
}

/// Starts the watchdog: when a test overruns, it reports the failure, the summary, and calls
/// `finish` (which powers the guest off).
pub fn start_watchdog(finish: fn(bool) -> !) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let overdue = match CURRENT.lock() {
            Ok(current) => current
                .as_ref()
                .filter(|(_, deadline)| Instant::now() > *deadline)
                .map(|(name, _)| name.clone()),
            Err(_) => None,
        };
        if let Some(name) = overdue {
            record(
                &name,
                Outcome::Fail(format!("timed out after {}s", TEST_TIMEOUT.as_secs())),
            );
            done();
            finish(false);
        }
    });
}

fn set_current(value: Option<(String, Instant)>) {
    if let Ok(mut current) = CURRENT.lock() {
        *current = value;
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}
