//! Events of TLS probe discovery (`capture::tls`), against [`Metrics`]. Each happens once per
//! file (a refused file is not tried again), so each logs.

use std::path::Path;

use crate::export::labels::ReasonLabel;
use crate::export::prometheus::Metrics;

/// A file got TLS probes; `probed` files have them now.
pub struct TlsLibraryProbed<'a> {
    pub path: &'a Path,
    pub probed: usize,
}

impl TlsLibraryProbed<'_> {
    pub fn emit(self, metrics: Option<&Metrics>) {
        log::info!(
            "tls: probing SSL_read/SSL_write in {} ({} files probed)",
            self.path.display(),
            self.probed
        );
        if let Some(m) = metrics {
            m.self_metrics.tls_files_probed.set(self.probed as i64);
        }
    }
}

/// A file lost its probes: no process maps it any more.
pub struct TlsLibraryReleased<'a> {
    pub path: &'a Path,
    pub probed: usize,
}

impl TlsLibraryReleased<'_> {
    pub fn emit(self, metrics: Option<&Metrics>) {
        log::info!(
            "tls: no process maps {} any more; its probes are released ({} files probed)",
            self.path.display(),
            self.probed
        );
        if let Some(m) = metrics {
            m.self_metrics.tls_files_probed.set(self.probed as i64);
        }
    }
}

/// A file could not be probed, for `reason` (`no_symbols`, `attach_failed`, `cap_reached`):
/// the TLS traffic of the processes using it is not decoded.
pub struct TlsProbeFailed<'a> {
    pub path: &'a Path,
    pub reason: &'static str,
    pub error: &'a str,
}

impl TlsProbeFailed<'_> {
    pub fn emit(self, metrics: Option<&Metrics>) {
        log::warn!(
            "tls: cannot probe {} ({}): {}; its processes' TLS traffic is not decoded \
             (periscope_tls_probe_failures_total)",
            self.path.display(),
            self.reason,
            self.error
        );
        if let Some(m) = metrics {
            m.self_metrics
                .tls_probe_failures
                .get_or_create(&ReasonLabel {
                    reason: self.reason.to_owned(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testkit::{assert_renders, registered};

    #[test]
    fn probe_events_move_their_series() {
        let (registry, metrics) = registered();
        let path = Path::new("/usr/lib/libssl.so.3");
        TlsLibraryProbed { path, probed: 2 }.emit(Some(&metrics));
        TlsProbeFailed {
            path,
            reason: "no_symbols",
            error: "SSL_write not found",
        }
        .emit(Some(&metrics));
        TlsLibraryReleased { path, probed: 1 }.emit(Some(&metrics));
        assert_renders(
            &registry,
            &[
                "periscope_tls_files_probed 1",
                "periscope_tls_probe_failures_total{reason=\"no_symbols\"} 1",
            ],
        );
    }
}
