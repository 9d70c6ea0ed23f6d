//! Messaging metrics (`messaging.*` semantic conventions) of Kafka: operation duration, and the
//! records sent and received, by operation, topic and error, from the client's side and from
//! the broker process's.
//!
//! One exchange is one observation per topic it names (or one without a destination when it
//! names none): a Produce to three topics is three series. A topic's `error_type` is its own
//! error; the exchange's error goes to every topic when no topic failed (a request-level
//! failure such as a timeout).

use super::histogram::{ExemplarTarget, Histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::budget::{SeriesBudget, SeriesKind};
use super::cache::{Lookup, Origin, SeriesCache};
use super::http::duration_histogram;
use super::HistFamily;
use crate::exchange::{Exchange, MessageFlow, Role};
use crate::export::labels::{PeerLabels, WorkloadLabels};
use crate::protocol::kafka::{errors, KafkaExchange, TopicStats};

/// What a series of this family holds besides its label values (measured, see `budget`).
pub const SERIES_KIND: SeriesKind = SeriesKind { fixed_bytes: 5300 };

/// Labels of messaging operation metrics (`messaging.*` semantic conventions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessagingLabels {
    pub messaging_system: String,
    pub messaging_operation_name: String,
    pub messaging_destination_name: String,
    /// Kafka error name (or code) of a failed operation, empty when it succeeded.
    pub error_type: String,
    /// The broker (client side only).
    #[prometheus(flatten)]
    pub peer: PeerLabels,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// The families of one side (client or broker).
pub struct MessagingFamilies {
    pub duration: HistFamily<MessagingLabels>,
    /// Records of Produce requests: sent by a client, received by the broker.
    pub produced: Family<MessagingLabels, Counter>,
    /// Records of Fetch responses: consumed by a client, delivered by the broker.
    pub fetched: Family<MessagingLabels, Counter>,
    /// The name the series budget counts this side under.
    metric: &'static str,
}

impl MessagingFamilies {
    fn new(metric: &'static str) -> MessagingFamilies {
        MessagingFamilies {
            duration: Family::new_with_constructor(duration_histogram),
            produced: Family::default(),
            fetched: Family::default(),
            metric,
        }
    }

    /// The records family of a flow.
    fn records(&self, flow: MessageFlow) -> &Family<MessagingLabels, Counter> {
        match flow {
            MessageFlow::Send => &self.produced,
            MessageFlow::Receive => &self.fetched,
        }
    }
}

/// The messaging families of both sides.
pub struct MessagingMetrics {
    pub client: MessagingFamilies,
    pub server: MessagingFamilies,
}

impl MessagingMetrics {
    pub fn register(registry: &mut Registry) -> MessagingMetrics {
        let m = MessagingMetrics {
            client: MessagingFamilies::new("messaging_client_operation_duration_seconds"),
            server: MessagingFamilies::new("messaging_server_operation_duration_seconds"),
        };
        register!(registry,
            "messaging_client_operation_duration" [Seconds]: m.client.duration,
                "Duration of messaging operations seen from the client";
            "messaging_server_operation_duration" [Seconds]: m.server.duration,
                "Duration of messaging operations seen from the broker process";
            "messaging_client_sent_messages": m.client.produced,
                "Messages a client sent to the broker (records in Produce requests)";
            "messaging_client_consumed_messages": m.client.fetched,
                "Messages a client received from the broker (records in Fetch responses)";
            "messaging_server_received_messages": m.server.produced,
                "Messages the broker process received (records in Produce requests)";
            "messaging_server_delivered_messages": m.server.fetched,
                "Messages the broker process delivered (records in Fetch responses)";
        );
        m
    }

    fn side(&self, role: Role) -> &MessagingFamilies {
        match role {
            Role::Client => &self.client,
            Role::Server => &self.server,
        }
    }

    /// The series of one topic's labels, if the budget admits it.
    fn series(
        &self,
        budget: &SeriesBudget,
        labels: MessagingLabels,
        role: Role,
        flow: Option<MessageFlow>,
    ) -> Option<MessagingSeries> {
        let side = self.side(role);
        let admitted = budget.admit(side.metric, &labels, SERIES_KIND, |expiry| {
            let workload = &labels.workload;
            expiry.register(workload, &[&side.duration], Histogram::count);
            expiry.register(workload, &[&side.produced, &side.fetched], Counter::get);
        });
        admitted.then(|| MessagingSeries {
            duration: side.duration.get_or_create(&labels).clone(),
            // The records series appears with the first record, not before.
            records: match flow {
                Some(_) => Records::Pending(Box::new(labels)),
                None => Records::None,
            },
        })
    }
}

/// The handles one topic of an exchange updates.
pub(super) struct MessagingSeries {
    duration: Histogram,
    records: Records,
}

/// The records counter of a series: resolved at the first record counted.
enum Records {
    /// The API moves no records.
    None,
    /// No record counted yet: the labels to make the series with.
    Pending(Box<MessagingLabels>),
    Resolved(Counter),
}

/// Owned label values of a cached series.
pub(super) struct MessagingKey {
    origin: Origin,
    operation: String,
    destination: String,
    error: i16,
}

/// One topic's label values, borrowed.
#[derive(Hash)]
struct MessagingLookup<'a> {
    origin: Origin,
    operation: &'a str,
    destination: &'a str,
    error: i16,
}

impl Lookup<MessagingKey> for MessagingLookup<'_> {
    fn matches(&self, key: &MessagingKey) -> bool {
        self.origin == key.origin
            && self.error == key.error
            && self.operation == key.operation
            && self.destination == key.destination
    }
    fn to_owned_key(&self) -> MessagingKey {
        MessagingKey {
            origin: self.origin,
            operation: self.operation.to_owned(),
            destination: self.destination.to_owned(),
            error: self.error,
        }
    }
}

impl MessagingLookup<'_> {
    fn labels(&self, exchange: &Exchange, peer: PeerLabels) -> MessagingLabels {
        MessagingLabels {
            messaging_system: "kafka".to_owned(),
            messaging_operation_name: self.operation.to_owned(),
            messaging_destination_name: self.destination.to_owned(),
            error_type: errors::error_type(self.error)
                .map(|e| e.into_owned())
                .unwrap_or_default(),
            peer,
            server_port: self.origin.port,
            workload: WorkloadLabels::of(&exchange.endpoint.process),
        }
    }
}

/// Records Kafka exchanges through its series cache.
pub(super) type MessagingRecorder = SeriesCache<MessagingKey, MessagingSeries>;

impl MessagingRecorder {
    /// Observes one Kafka exchange: its duration once per topic it names (or once without a
    /// destination), and the record counts of Produce and Fetch. `peer` names a client's
    /// broker.
    pub fn record(
        &mut self,
        metrics: &MessagingMetrics,
        budget: &SeriesBudget,
        exchange: &Exchange,
        kafka: &KafkaExchange,
        peer: impl Fn() -> PeerLabels,
        exemplar: bool,
    ) -> Option<ExemplarTarget> {
        let mut target = None;
        let origin = Origin::of(exchange);
        let flow = exchange.message_flow();
        let seconds = exchange.duration_seconds();
        let no_topic = kafka.topics.is_empty().then_some(None);
        for topic in no_topic.into_iter().chain(kafka.topics.iter().map(Some)) {
            let key = MessagingLookup {
                origin,
                operation: exchange.operation(),
                destination: match topic {
                    Some(t) => t.name.as_deref().unwrap_or("unknown"),
                    None => "",
                },
                error: topic_error(kafka, topic),
            };
            let create = || {
                let labels = key.labels(exchange, peer());
                metrics.series(budget, labels, exchange.role, flow)
            };
            let Some(series) = self.get_or_create(&key, create) else {
                continue;
            };
            // The exemplar names the span in the first topic's series.
            let offer = exemplar && target.is_none();
            let offered = series
                .duration
                .observe_with_exemplar(seconds, offer, exchange.end_ns);
            target = target.or(offered);
            let records = topic.map_or(0, |t| t.record_count);
            if let (Some(flow), true) = (flow, records > 0) {
                let family = metrics.side(exchange.role).records(flow);
                series.records.resolve(family).inc_by(records);
            }
        }
        target
    }
}

impl Records {
    /// The counter, made in `family` the first time.
    fn resolve(&mut self, family: &Family<MessagingLabels, Counter>) -> Counter {
        match self {
            Records::Resolved(counter) => counter.clone(),
            Records::Pending(labels) => {
                let counter = family.get_or_create(labels).clone();
                *self = Records::Resolved(counter.clone());
                counter
            }
            Records::None => Counter::default(),
        }
    }
}

/// The error code a topic's series carries: the topic's own; else the exchange's, when no
/// topic failed (the request as a whole did); else none.
fn topic_error(kafka: &KafkaExchange, topic: Option<&TopicStats>) -> i16 {
    let any_topic_failed = kafka.topics.iter().any(|t| t.error_code != 0);
    match topic {
        Some(t) if t.error_code != 0 => t.error_code,
        _ if !any_topic_failed => kafka.error_code,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::testkit::{exchange, kafka, pod_process, topic};
    use crate::exchange::Detail;
    use crate::export::prometheus::tests::{budget, dropped, samples};

    const LABELS: &str = r#"server_address="",server_port="9092",service_name="shop",container_id="abc",k8s_namespace_name="prod",k8s_pod_name="shop-1",k8s_container_name="app",k8s_node_name="n1",k8s_owner_kind="StatefulSet",k8s_owner_name="shop""#;

    fn record(
        recorder: &mut MessagingRecorder,
        metrics: &MessagingMetrics,
        budget: &SeriesBudget,
        detail: Detail,
    ) {
        let e = exchange(
            Role::Server,
            pod_process(),
            "10.0.0.4:33000",
            9092,
            10,
            detail,
        );
        let Detail::Kafka(k) = &e.detail else {
            unreachable!("a Kafka exchange")
        };
        recorder.record(metrics, budget, &e, k, PeerLabels::default, false);
    }

    #[test]
    fn one_series_per_topic_with_its_error_and_records_once_counted() {
        let mut registry = Registry::default();
        let metrics = MessagingMetrics::register(&mut registry);
        let (budget, drops) = budget(3);
        let mut recorder = MessagingRecorder::default();
        let produce = || {
            kafka(
                0,
                "Produce",
                vec![topic(Some("a"), 2, 0), topic(Some("b"), 0, 3)],
                3,
            )
        };
        record(&mut recorder, &metrics, &budget, produce());
        record(&mut recorder, &metrics, &budget, produce());
        // A Fetch without records makes no delivered series.
        record(
            &mut recorder,
            &metrics,
            &budget,
            kafka(1, "Fetch", vec![topic(Some("a"), 0, 0)], 0),
        );
        let a = format!(
            r#"{{messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="a",error_type="",{LABELS}}}"#
        );
        let b = format!(
            r#"{{messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="b",error_type="UNKNOWN_TOPIC_OR_PARTITION",{LABELS}}}"#
        );
        let fetch = format!(
            r#"{{messaging_system="kafka",messaging_operation_name="receive",messaging_destination_name="a",error_type="",{LABELS}}}"#
        );
        assert_eq!(
            samples(
                &registry,
                "messaging_server_operation_duration_seconds_count"
            ),
            [
                format!("messaging_server_operation_duration_seconds_count{fetch} 1"),
                format!("messaging_server_operation_duration_seconds_count{a} 2"),
                format!("messaging_server_operation_duration_seconds_count{b} 2"),
            ]
        );
        assert_eq!(
            samples(&registry, "messaging_server_received_messages"),
            [format!("messaging_server_received_messages_total{a} 4")]
        );
        assert!(samples(&registry, "messaging_server_delivered_messages").is_empty());
        // No topic: one observation without a destination, with the exchange's error; the
        // cap (3) is reached, so it is dropped.
        record(
            &mut recorder,
            &metrics,
            &budget,
            kafka(3, "Metadata", vec![], 5),
        );
        assert_eq!(
            dropped(&drops, "messaging_server_operation_duration_seconds"),
            1
        );
    }

    #[test]
    fn a_request_level_error_goes_to_every_topic_when_none_failed() {
        let k = |topics, code| match kafka(0, "Produce", topics, code) {
            Detail::Kafka(k) => k,
            _ => unreachable!("a Kafka exchange"),
        };
        let ok = k(vec![topic(Some("a"), 1, 0), topic(Some("b"), 1, 0)], 7);
        assert!(ok.topics.iter().all(|t| topic_error(&ok, Some(t)) == 7));
        let one_failed = k(vec![topic(Some("a"), 1, 0), topic(Some("b"), 1, 3)], 3);
        let errors: Vec<i16> = one_failed
            .topics
            .iter()
            .map(|t| topic_error(&one_failed, Some(t)))
            .collect();
        assert_eq!(errors, [0, 3]);
        assert_eq!(topic_error(&k(vec![], 5), None), 5);
    }
}
