//! RPC metrics (`rpc.*` semantic conventions, v1.45) of gRPC calls: call duration by
//! `rpc.method` and `rpc.status_code`, for servers and (with the server's labels) clients. A
//! gRPC call is counted here only, not in the HTTP families.

use super::histogram::{ExemplarTarget, Histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::budget::{SeriesBudget, SeriesKind};
use super::cache::{Lookup, Origin, SeriesCache};
use super::http::duration_histogram;
use super::HistFamily;
use crate::exchange::{Exchange, Role};
use crate::export::labels::{PeerLabels, WorkloadLabels};
use crate::protocol::http::GrpcCall;

/// What an RPC series holds besides its label values (measured, see `budget`).
pub const SERIES_KIND: SeriesKind = SeriesKind { fixed_bytes: 2600 };

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc_system_name: &'static str,
    pub rpc_method: String,
    /// The status name (`OK`, `NOT_FOUND`); empty when the call ended without one.
    pub rpc_status_code: String,
    /// The status name of a failed call (see [`GrpcCall::failed`]), else empty.
    pub error_type: String,
    /// The server (client side only).
    #[prometheus(flatten)]
    pub peer: PeerLabels,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// The duration family of one side.
pub struct RpcFamily {
    pub duration: HistFamily<RpcLabels>,
    /// The name the series budget counts this side under.
    metric: &'static str,
}

/// The RPC families of both sides.
pub struct RpcMetrics {
    pub server: RpcFamily,
    pub client: RpcFamily,
}

impl RpcMetrics {
    pub fn register(registry: &mut Registry) -> RpcMetrics {
        let family = |metric| RpcFamily {
            duration: Family::new_with_constructor(duration_histogram),
            metric,
        };
        let m = RpcMetrics {
            server: family("rpc_server_call_duration_seconds"),
            client: family("rpc_client_call_duration_seconds"),
        };
        register!(registry,
            "rpc_server_call_duration" [Seconds]: m.server.duration,
                "Duration of RPC calls served, first request byte read to last response byte written";
            "rpc_client_call_duration" [Seconds]: m.client.duration,
                "Duration of RPC calls made, first request byte written to last response byte read";
        );
        m
    }

    fn series(&self, budget: &SeriesBudget, labels: &RpcLabels, role: Role) -> Option<Histogram> {
        let side = match role {
            Role::Server => &self.server,
            Role::Client => &self.client,
        };
        let admitted = budget.admit(side.metric, labels, SERIES_KIND, |expiry| {
            expiry.register(&labels.workload, &[&side.duration], Histogram::count)
        });
        admitted.then(|| side.duration.get_or_create(labels).clone())
    }
}

/// Owned label values of a cached series.
pub(super) struct RpcKey {
    origin: Origin,
    method: String,
    status: Option<u32>,
}

/// An exchange's label values, borrowed.
#[derive(Hash)]
struct RpcLookup<'a> {
    origin: Origin,
    method: &'a str,
    status: Option<u32>,
}

impl Lookup<RpcKey> for RpcLookup<'_> {
    fn matches(&self, key: &RpcKey) -> bool {
        self.origin == key.origin && self.status == key.status && self.method == key.method
    }
    fn to_owned_key(&self) -> RpcKey {
        RpcKey {
            origin: self.origin,
            method: self.method.to_owned(),
            status: self.status,
        }
    }
}

/// Records gRPC calls through its series cache.
pub(super) type RpcRecorder = SeriesCache<RpcKey, Histogram>;

impl RpcRecorder {
    /// Observes one gRPC call's duration; `peer` names a client's server.
    pub fn record(
        &mut self,
        metrics: &RpcMetrics,
        budget: &SeriesBudget,
        exchange: &Exchange,
        grpc: &GrpcCall,
        peer: impl FnOnce() -> PeerLabels,
        exemplar: bool,
    ) -> Option<ExemplarTarget> {
        let method = grpc.rpc_method();
        let key = RpcLookup {
            origin: Origin::of(exchange),
            method: &method,
            status: grpc.status,
        };
        let create = || {
            let labels = RpcLabels {
                rpc_system_name: "grpc",
                rpc_method: method.clone(),
                rpc_status_code: grpc.status_name().into_owned(),
                error_type: exchange
                    .error_type()
                    .map(|e| e.into_owned())
                    .unwrap_or_default(),
                peer: peer(),
                server_port: key.origin.port,
                workload: WorkloadLabels::of(&exchange.endpoint.process),
            };
            metrics.series(budget, &labels, exchange.role)
        };
        let duration = self.get_or_create(&key, create)?;
        duration.observe_with_exemplar(exchange.duration_seconds(), exemplar, exchange.end_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::testkit::{exchange, host_process, http, server};
    use crate::export::prometheus::tests::{budget, samples};
    use crate::protocol::http::HttpVersion;

    fn grpc(status: Option<u32>) -> crate::exchange::Detail {
        let mut detail = http("POST", 200, "/shop.Cart/Add", (10, 20));
        if let crate::exchange::Detail::Http(h) = &mut detail {
            h.version = HttpVersion::Http2;
            h.grpc = Some(GrpcCall {
                service: "shop.Cart".into(),
                method: "Add".into(),
                status,
            });
        }
        detail
    }

    #[test]
    fn calls_by_method_and_status_with_errors_by_side() {
        let mut registry = Registry::default();
        let metrics = RpcMetrics::register(&mut registry);
        let (budget, _) = budget(10);
        let mut recorder = RpcRecorder::default();
        let record = |recorder: &mut RpcRecorder, e: &Exchange| {
            let g = match &e.detail {
                crate::exchange::Detail::Http(h) => h.grpc.clone().unwrap(),
                _ => unreachable!(),
            };
            recorder.record(&metrics, &budget, e, &g, PeerLabels::default, false);
        };
        for status in [Some(0), Some(0), Some(5), Some(4)] {
            record(&mut recorder, &server(grpc(status)));
        }
        record(
            &mut recorder,
            &exchange(
                Role::Client,
                host_process(),
                "10.0.0.9:50051",
                50051,
                7,
                grpc(Some(5)),
            ),
        );
        let counts = samples(&registry, "rpc_server_call_duration_seconds_count");
        let find = |status: &str| {
            counts
                .iter()
                .find(|s| s.contains(&format!("rpc_status_code=\"{status}\"")))
                .cloned()
                .unwrap_or_default()
        };
        assert!(find("OK").ends_with(" 2") && find("OK").contains(r#"error_type="""#));
        assert!(find("OK").contains(r#"rpc_system_name="grpc",rpc_method="shop.Cart/Add""#));
        // A server answering NOT_FOUND did its job; DEADLINE_EXCEEDED is its failure.
        assert!(find("NOT_FOUND").contains(r#"error_type="""#));
        assert!(find("DEADLINE_EXCEEDED").contains(r#"error_type="DEADLINE_EXCEEDED""#));
        let client = samples(&registry, "rpc_client_call_duration_seconds_count");
        assert_eq!(client.len(), 1);
        assert!(
            client[0].contains(r#"error_type="NOT_FOUND""#),
            "{client:?}"
        );
        assert!(samples(&registry, "http_server_request_duration").is_empty());
    }
}
