//! Exchanges for tests: one builder per protocol, and two processes (one in a pod, one on the
//! host).

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Detail, Endpoint, Exchange, PostgresDetail, Role};
use crate::metadata::{K8sIdentity, ProcessInfo};
use crate::protocol::http1::HttpExchange;
use crate::protocol::kafka::{KafkaExchange, TopicStats};
use crate::protocol::postgres::PgExchange;

pub fn pod_process() -> Arc<ProcessInfo> {
    Arc::new(ProcessInfo {
        pid: 7,
        comm: "shop".into(),
        exe_name: "shop-bin".into(),
        exe_path: "/app/shop-bin".into(),
        env_service_name: None,
        container_id: Some("abc".into()),
        service_name: "shop".into(),
        pod_uid: Some("uid".into()),
        k8s: Some(Arc::new(K8sIdentity {
            namespace: "prod".into(),
            pod_name: "shop-1".into(),
            pod_uid: "uid".into(),
            container_name: "app".into(),
            node_name: "n1".into(),
            owner_kind: "StatefulSet".into(),
            owner_name: "shop".into(),
            service_name: "shop".into(),
            labels: Vec::new(),
        })),
        seq: 1_000_001,
    })
}

pub fn host_process() -> Arc<ProcessInfo> {
    Arc::new(ProcessInfo {
        pid: 8,
        comm: "psql".into(),
        exe_name: String::new(),
        exe_path: String::new(),
        env_service_name: None,
        container_id: None,
        service_name: "psql".into(),
        pod_uid: None,
        k8s: None,
        seq: 1_000_002,
    })
}

pub fn exchange(
    role: Role,
    process: Arc<ProcessInfo>,
    peer: &str,
    port: u16,
    ms: u64,
    detail: Detail,
) -> Exchange {
    Exchange {
        role,
        start_ns: 1_000_000_000,
        end_ns: 1_000_000_000 + ms * 1_000_000,
        endpoint: Endpoint {
            process,
            peer: Some(peer.parse::<SocketAddr>().expect("literal")),
            server_port: Some(port),
            tid: Some(7),
            conn_id: 1,
            peer_conn: None,
            tls: false,
        },
        detail,
    }
}

pub fn http(method: &str, status: u16, route: &str, bodies: (u64, u64)) -> Detail {
    Detail::Http(HttpExchange {
        method: method.into(),
        path: "/users/42".into(),
        route: route.into(),
        status,
        start_ns: 0,
        end_ns: 0,
        request_body_bytes: bodies.0,
        response_body_bytes: bodies.1,
        host: None,
        traceparent: None,
        tracestate: None,
        complete: true,
        version: Default::default(),
        grpc: None,
        stream_id: None,
    })
}

pub fn sql(
    operation: &str,
    collection: Option<&str>,
    rows: Option<u64>,
    sqlstate: Option<&str>,
    namespace: Option<&str>,
) -> Detail {
    Detail::Postgres(PostgresDetail {
        statement: PgExchange {
            operation: operation.into(),
            collection: collection.map(Into::into),
            query_summary: String::new(),
            query_text: String::new(),
            statement_name: None,
            rows,
            error_sqlstate: sqlstate.map(Into::into),
            start_ns: 0,
            end_ns: 0,
            request_bytes: 10,
            response_bytes: 20,
            complete: true,
        },
        db_namespace: namespace.map(Into::into),
    })
}

pub fn topic(name: Option<&str>, records: u64, error_code: i16) -> TopicStats {
    TopicStats {
        name: name.map(Into::into),
        topic_id: None,
        partitions: 1,
        record_count: records,
        error_code,
    }
}

pub fn kafka(
    api_key: i16,
    api_name: &'static str,
    topics: Vec<TopicStats>,
    error_code: i16,
) -> Detail {
    Detail::Kafka(KafkaExchange {
        api_key,
        api_name,
        api_version: 9,
        correlation_id: 1,
        client_id: Some("c1".into()),
        topics,
        acks: None,
        error_code,
        metadata_topics: Vec::new(),
        start_ns: 0,
        end_ns: 0,
        request_bytes: 10,
        response_bytes: 20,
        complete: true,
    })
}

/// A server exchange of the pod process on port 8080, from 10.0.0.2:5000, of 20 ms.
pub fn server(detail: Detail) -> Exchange {
    exchange(
        Role::Server,
        pod_process(),
        "10.0.0.2:5000",
        8080,
        20,
        detail,
    )
}

/// A client exchange of the host process to 10.0.0.9:80, of 20 ms.
pub fn client(detail: Detail) -> Exchange {
    exchange(Role::Client, host_process(), "10.0.0.9:80", 80, 20, detail)
}
