//! Database metrics (`db.*` semantic conventions): operation duration and returned rows, by
//! system, operation, collection, namespace and error, from the client's side and from the
//! database server process's.

use super::histogram::{ExemplarTarget, Histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::budget::{SeriesBudget, SeriesKind};
use super::cache::{Lookup, Origin, SeriesCache};
use super::HistFamily;
use crate::exchange::{Exchange, PostgresDetail, Role};
use crate::export::labels::{PeerLabels, WorkloadLabels};

/// What a series of this family holds besides its label values (measured, see `budget`).
pub const SERIES_KIND: SeriesKind = SeriesKind { fixed_bytes: 5000 };

/// Semantic-convention buckets for `db.client.operation.duration`.
pub const DB_DURATION_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Buckets for returned-row and message-count histograms.
pub const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
];

fn db_duration_histogram() -> Histogram {
    Histogram::new(&DB_DURATION_BUCKETS)
}

fn count_histogram() -> Histogram {
    Histogram::new(&COUNT_BUCKETS)
}

/// Labels of database operation metrics (`db.*` semantic conventions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    pub db_system_name: String,
    pub db_operation_name: String,
    pub db_collection_name: String,
    pub db_namespace: String,
    /// SQLSTATE of a failed operation, empty when it succeeded.
    pub error_type: String,
    /// The database server (client side only).
    #[prometheus(flatten)]
    pub peer: PeerLabels,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// The two families of one side (client or server).
pub struct DbFamilies {
    pub duration: HistFamily<DbLabels>,
    pub rows: HistFamily<DbLabels>,
    /// The name the series budget counts this side under.
    metric: &'static str,
}

impl DbFamilies {
    fn new(metric: &'static str) -> DbFamilies {
        DbFamilies {
            duration: Family::new_with_constructor(db_duration_histogram),
            rows: Family::new_with_constructor(count_histogram),
            metric,
        }
    }
}

/// The database families of both sides.
pub struct DbMetrics {
    pub client: DbFamilies,
    pub server: DbFamilies,
}

impl DbMetrics {
    pub fn register(registry: &mut Registry) -> DbMetrics {
        let m = DbMetrics {
            client: DbFamilies::new("db_client_operation_duration_seconds"),
            server: DbFamilies::new("db_server_operation_duration_seconds"),
        };
        register!(registry,
            "db_client_operation_duration" [Seconds]: m.client.duration,
                "Duration of database operations seen from the client, first request byte sent to last response byte read";
            "db_server_operation_duration" [Seconds]: m.server.duration,
                "Duration of database operations seen from the server process, first request byte read to last response byte written";
            "db_client_response_returned_rows": m.client.rows,
                "Rows returned by database operations, seen from the client";
            "db_server_response_returned_rows": m.server.rows,
                "Rows returned by database operations, seen from the server process";
        );
        m
    }

    /// The histograms of a statement's series, if the budget admits it.
    fn series(&self, budget: &SeriesBudget, labels: DbLabels, role: Role) -> Option<DbSeries> {
        let side = match role {
            Role::Client => &self.client,
            Role::Server => &self.server,
        };
        let families = [&side.duration, &side.rows];
        let admitted = budget.admit(side.metric, &labels, SERIES_KIND, |expiry| {
            expiry.register(&labels.workload, &families, Histogram::count)
        });
        admitted.then(|| DbSeries {
            duration: side.duration.get_or_create(&labels).clone(),
            rows: side.rows.get_or_create(&labels).clone(),
        })
    }
}

/// The histograms one SQL statement updates.
pub(super) struct DbSeries {
    duration: Histogram,
    rows: Histogram,
}

/// Owned label values of a cached series.
pub(super) struct DbKey {
    origin: Origin,
    operation: String,
    collection: Option<String>,
    namespace: Option<String>,
    error: Option<String>,
}

/// A statement's label values, borrowed.
#[derive(Hash)]
struct DbLookup<'a> {
    origin: Origin,
    operation: &'a str,
    collection: Option<&'a str>,
    namespace: Option<&'a str>,
    error: Option<&'a str>,
}

impl Lookup<DbKey> for DbLookup<'_> {
    fn matches(&self, key: &DbKey) -> bool {
        self.origin == key.origin
            && self.operation == key.operation
            && self.collection == key.collection.as_deref()
            && self.namespace == key.namespace.as_deref()
            && self.error == key.error.as_deref()
    }
    fn to_owned_key(&self) -> DbKey {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        DbKey {
            origin: self.origin,
            operation: self.operation.to_owned(),
            collection: owned(self.collection),
            namespace: owned(self.namespace),
            error: owned(self.error),
        }
    }
}

impl DbLookup<'_> {
    fn labels(&self, exchange: &Exchange, peer: PeerLabels) -> DbLabels {
        DbLabels {
            db_system_name: "postgresql".to_owned(),
            db_operation_name: self.operation.to_owned(),
            db_collection_name: self.collection.unwrap_or_default().to_owned(),
            db_namespace: self.namespace.unwrap_or_default().to_owned(),
            error_type: self.error.unwrap_or_default().to_owned(),
            peer,
            server_port: self.origin.port,
            workload: WorkloadLabels::of(&exchange.endpoint.process),
        }
    }
}

/// Records SQL statements through its series cache.
pub(super) type DbRecorder = SeriesCache<DbKey, DbSeries>;

impl DbRecorder {
    /// Observes one statement's duration and returned rows; `peer` names a client's server.
    pub fn record(
        &mut self,
        metrics: &DbMetrics,
        budget: &SeriesBudget,
        exchange: &Exchange,
        pg: &PostgresDetail,
        peer: impl FnOnce() -> PeerLabels,
        exemplar: bool,
    ) -> Option<ExemplarTarget> {
        let error = exchange.error_type();
        let key = DbLookup {
            origin: Origin::of(exchange),
            operation: exchange.operation(),
            collection: exchange.target(),
            namespace: pg.db_namespace.as_deref(),
            error: error.as_deref(),
        };
        let create = || metrics.series(budget, key.labels(exchange, peer()), exchange.role);
        let series = self.get_or_create(&key, create)?;
        if let Some(n) = pg.statement.rows {
            series.rows.observe(n as f64);
        }
        let seconds = exchange.duration_seconds();
        series
            .duration
            .observe_with_exemplar(seconds, exemplar, exchange.end_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::testkit::{exchange, host_process, pod_process, sql};
    use crate::exchange::Detail;
    use crate::export::prometheus::tests::{budget, dropped, samples};

    fn record(recorder: &mut DbRecorder, metrics: &DbMetrics, budget: &SeriesBudget, e: &Exchange) {
        let Detail::Postgres(pg) = &e.detail else {
            unreachable!("a SQL exchange")
        };
        let peer = || PeerLabels::of(e.server_ip(), None);
        recorder.record(metrics, budget, e, pg, peer, false);
    }

    /// A 2 ms statement of a host process to 192.0.2.5:5432.
    fn client_sql(detail: Detail) -> Exchange {
        exchange(
            Role::Client,
            host_process(),
            "192.0.2.5:5432",
            5432,
            2,
            detail,
        )
    }

    #[test]
    fn records_duration_and_rows_by_side_with_the_sqlstate() {
        let mut registry = Registry::default();
        let metrics = DbMetrics::register(&mut registry);
        let (budget, drops) = budget(1);
        let mut recorder = DbRecorder::default();
        let client = client_sql(sql("SELECT", Some("users"), Some(4), None, Some("shop")));
        let server = exchange(
            Role::Server,
            pod_process(),
            "10.0.0.3:4000",
            5432,
            5,
            sql("UPDATE", None, None, Some("40001"), None),
        );
        for e in [&client, &client, &server] {
            record(&mut recorder, &metrics, &budget, e);
        }
        let labels = r#"{db_system_name="postgresql",db_operation_name="SELECT",db_collection_name="users",db_namespace="shop",error_type="",server_address="192.0.2.5",server_port="5432",service_name="psql",container_id=""}"#;
        assert_eq!(
            samples(&registry, "db_client_"),
            [
                format!("db_client_operation_duration_seconds_count{labels} 2"),
                format!("db_client_operation_duration_seconds_sum{labels} 0.004"),
                format!("db_client_response_returned_rows_count{labels} 2"),
                format!("db_client_response_returned_rows_sum{labels} 8.0"),
            ]
        );
        let server_rows = samples(&registry, "db_server_response_returned_rows_count");
        assert_eq!(server_rows.len(), 1);
        assert!(server_rows[0].contains(r#"db_operation_name="UPDATE",db_collection_name="",db_namespace="",error_type="40001",server_address="",server_port="5432""#));
        assert!(
            server_rows[0].ends_with("} 0"),
            "no rows observed: {}",
            server_rows[0]
        );
        // The cap (1 per metric) drops a second client series.
        let other = client_sql(sql("DELETE", Some("users"), Some(1), None, Some("shop")));
        record(&mut recorder, &metrics, &budget, &other);
        assert_eq!(dropped(&drops, "db_client_operation_duration_seconds"), 1);
        assert_eq!(
            samples(&registry, "db_client_operation_duration_seconds_count").len(),
            1
        );
    }
}
