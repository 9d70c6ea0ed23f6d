//! What the scraped target is: `target_info`, the OpenTelemetry Prometheus compatibility's
//! metric for the resource of whoever exposes the metrics (here the agent itself, not the
//! workloads it watches), and `periscope_build_info`, the build's version. Both are gauges
//! of value 1, as `periscope_hooks_info`, so that the classic text format carries them as is.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The agent's `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES`
/// names one.
pub const DEFAULT_SERVICE_NAME: &str = "periscope";

/// The agent's own resource, as `target_info` carries it.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// `OTEL_SERVICE_NAME`, for the agent only (workloads keep their own names).
    pub service_name: Option<&'a str>,
    pub host_name: &'a str,
    /// `OTEL_RESOURCE_ATTRIBUTES`, as parsed for the spans.
    pub attributes: &'a [(&'static str, String)],
}

impl Target<'_> {
    /// The labels of `target_info`: `service_name` (`OTEL_SERVICE_NAME`, else the attributes'
    /// `service.name`, else "periscope"), `service_version`, `host_name`, then every other
    /// attribute with its dots (and anything else a label name cannot hold) turned to `_`.
    pub fn labels(&self) -> Vec<(String, String)> {
        let named = self
            .attributes
            .iter()
            .find(|(k, _)| *k == "service.name")
            .map(|(_, v)| v.as_str());
        let service = self
            .service_name
            .filter(|s| !s.trim().is_empty())
            .or(named)
            .unwrap_or(DEFAULT_SERVICE_NAME);
        let mut labels = vec![
            ("service_name".to_owned(), service.to_owned()),
            (
                "service_version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            ("host_name".to_owned(), self.host_name.to_owned()),
        ];
        for (key, value) in self.attributes {
            let name = label_name(key);
            if !labels.iter().any(|(k, _)| *k == name) {
                labels.push((name, value.clone()));
            }
        }
        labels
    }
}

/// A resource attribute's key as a Prometheus label name (the compatibility spec's rule:
/// characters other than letters, digits and `_` become `_`; a leading digit gets a `key_`).
fn label_name(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{name}")
    } else {
        name
    }
}

/// Registers `target_info` and `periscope_build_info`.
pub fn register(registry: &mut Registry, target: &Target<'_>) {
    let info: Family<Vec<(String, String)>, Gauge> = Family::default();
    info.get_or_create(&target.labels()).set(1);
    registry.register(
        "target_info",
        "The agent's own resource (OpenTelemetry): service_name from OTEL_SERVICE_NAME, host_name, and OTEL_RESOURCE_ATTRIBUTES",
        info,
    );
    let build: Family<Vec<(String, String)>, Gauge> = Family::default();
    build
        .get_or_create(&vec![
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("target_arch".to_owned(), std::env::consts::ARCH.to_owned()),
        ])
        .set(1);
    registry.sub_registry_with_prefix("periscope").register(
        "build_info",
        "The agent's version and the architecture it was built for",
        build,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_from_the_variable_then_the_attributes_then_the_default() {
        let attributes = [
            ("service.name", "from-attributes".to_owned()),
            ("k8s.cluster.name", "prod".to_owned()),
            ("1st", "x".to_owned()),
        ];
        let target = Target {
            service_name: Some("edge-agent"),
            host_name: "node-1",
            attributes: &attributes,
        };
        let labels = target.labels();
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("service_name"), Some("edge-agent"));
        assert_eq!(get("host_name"), Some("node-1"));
        assert_eq!(get("k8s_cluster_name"), Some("prod"));
        assert_eq!(get("key_1st"), Some("x"));
        assert_eq!(get("service_version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(
            labels.iter().filter(|(n, _)| n == "service_name").count(),
            1
        );

        let target = Target {
            service_name: None,
            ..target
        };
        assert_eq!(target.labels()[0].1, "from-attributes");
        let target = Target {
            service_name: Some(" "),
            attributes: &[],
            host_name: "n",
        };
        assert_eq!(target.labels()[0].1, DEFAULT_SERVICE_NAME);
    }

    #[test]
    fn both_are_exposed() {
        let mut registry = Registry::default();
        register(
            &mut registry,
            &Target {
                service_name: None,
                host_name: "node-1",
                attributes: &[],
            },
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"target_info{service_name="periscope",service_version="#),
            "{text}"
        );
        assert!(text.contains("periscope_build_info{version="), "{text}");
    }
}
