//! The Kubernetes watch's events (`metadata::kubernetes::KubeEvent`), against [`Metrics`].
//! The watch reports each state change once, not each retry, so none of these floods.

use crate::export::labels::ReasonLabel;
use crate::export::prometheus::Metrics;
use crate::metadata::kubernetes::KubeEvent;

fn count_error(metrics: &Metrics, reason: &str) {
    metrics
        .self_metrics
        .kubernetes_errors
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
}

/// Writes the log line and moves the self-metrics of one watch event.
pub fn emit(event: KubeEvent, metrics: &Metrics) {
    match event {
        KubeEvent::Connected => {
            metrics.self_metrics.kubernetes_connected.set(1);
            log::info!("Kubernetes API server reachable");
        }
        KubeEvent::Disconnected { error } => {
            metrics.self_metrics.kubernetes_connected.set(0);
            count_error(metrics, "unreachable");
            log::warn!("Kubernetes API server unreachable, retrying with backoff: {error}");
        }
        KubeEvent::Synced => log::info!("Kubernetes objects listed; attribution ready"),
        KubeEvent::ObjectError { kind, error } => {
            count_error(metrics, "bad_object");
            log::warn!("skipping a {kind} that cannot be used: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::emit;
    use crate::internal_events::testkit::{assert_renders, registered};
    use crate::metadata::kubernetes::KubeEvent;

    #[test]
    fn watch_events_move_the_connection_gauge_and_the_error_counts() {
        let (mut registry, metrics) = registered();
        metrics.register_kubernetes(&mut registry);
        emit(KubeEvent::Connected, &metrics);
        emit(KubeEvent::Synced, &metrics);
        assert_renders(&registry, &["periscope_kubernetes_connected 1"]);
        emit(
            KubeEvent::Disconnected {
                error: "pods watch: connection refused".into(),
            },
            &metrics,
        );
        for _ in 0..2 {
            emit(
                KubeEvent::ObjectError {
                    kind: "Pod",
                    error: "no uid".into(),
                },
                &metrics,
            );
        }
        assert_renders(
            &registry,
            &[
                "periscope_kubernetes_connected 0",
                "periscope_kubernetes_errors_total{reason=\"unreachable\"} 1",
                "periscope_kubernetes_errors_total{reason=\"bad_object\"} 2",
            ],
        );
    }
}
