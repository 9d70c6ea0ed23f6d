use super::testkit::{client, http, kafka, server, sql, topic};
use super::*;

#[test]
fn http_operation_target_error_sizes_by_role() {
    let ok = server(http("GET", 200, "/users/{id}", (10, 300)));
    assert_eq!(ok.operation(), "GET");
    assert_eq!(ok.target(), Some("/users/{id}"));
    assert_eq!(ok.error_type(), None);
    assert_eq!((ok.request_size(), ok.response_size()), (10, 300));
    assert!(ok.complete());
    assert_eq!(ok.server_ip(), None);
    assert_eq!(ok.message_flow(), None);
    // A server fails on 5xx only, a client on 4xx too.
    assert_eq!(server(http("GET", 404, "", (0, 0))).error_type(), None);
    assert_eq!(
        server(http("GET", 503, "", (0, 0))).error_type().as_deref(),
        Some("503")
    );
    let not_found = client(http("POST", 404, "", (0, 0)));
    assert_eq!(not_found.error_type().as_deref(), Some("404"));
    assert_eq!(not_found.target(), None, "an empty route is no target");
    assert_eq!(not_found.server_ip(), Some(IpAddr::from([10, 0, 0, 9])));
    assert_eq!(client(http("GET", 399, "/", (0, 0))).error_type(), None);
    // Unknown methods are _OTHER.
    assert_eq!(client(http("BREW", 200, "/", (0, 0))).operation(), "_OTHER");
    assert_eq!(client(http("get", 200, "/", (0, 0))).operation(), "_OTHER");
    for m in [
        "HEAD", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "POST",
    ] {
        assert_eq!(normalize_method(m), m);
    }
    let mut cut = http("GET", 200, "/", (0, 0));
    if let Detail::Http(h) = &mut cut {
        h.complete = false;
    }
    assert!(!client(cut).complete());
}

#[test]
fn sql_operation_target_error_sizes_by_role() {
    for make in [server, client] {
        let ok = make(sql("SELECT", Some("users"), Some(3), None, Some("shop")));
        assert_eq!(ok.operation(), "SELECT");
        assert_eq!(ok.target(), Some("users"));
        assert_eq!(ok.error_type(), None);
        assert_eq!((ok.request_size(), ok.response_size()), (10, 20));
        assert!(ok.complete());
        let failed = make(sql("INSERT", None, None, Some("23505"), None));
        assert_eq!(failed.operation(), "INSERT");
        assert_eq!(failed.target(), None);
        assert_eq!(failed.error_type().as_deref(), Some("23505"));
        assert_eq!(failed.message_flow(), None);
    }
}

#[test]
fn kafka_operation_target_error_sizes_by_role() {
    for make in [server, client] {
        let produce = make(kafka(
            0,
            "Produce",
            vec![topic(None, 2, 0), topic(Some("orders"), 3, 0)],
            0,
        ));
        assert_eq!(produce.operation(), "send");
        assert_eq!(produce.message_flow(), Some(MessageFlow::Send));
        assert_eq!(produce.target(), Some("orders"), "the first named topic");
        assert_eq!(produce.error_type(), None);
        assert_eq!((produce.request_size(), produce.response_size()), (10, 20));
        assert!(produce.complete());
        let fetch = make(kafka(1, "Fetch", vec![topic(Some("t"), 5, 3)], 3));
        assert_eq!(fetch.operation(), "receive");
        assert_eq!(fetch.message_flow(), Some(MessageFlow::Receive));
        assert_eq!(
            fetch.error_type().as_deref(),
            Some("UNKNOWN_TOPIC_OR_PARTITION")
        );
        let other = make(kafka(18, "ApiVersions", vec![], 999));
        assert_eq!(other.operation(), "ApiVersions");
        assert_eq!(other.message_flow(), None);
        assert_eq!(other.target(), None);
        assert_eq!(other.error_type().as_deref(), Some("999"));
    }
}
