//! TCP flows: reads the kernel's per-flow aggregates (`agent-ebpf/src/flows.rs`) every second
//! and exports them as `network_*` metrics, labelled by the owning workload and the peer.
//!
//! The kernel keeps cumulative counters per (owner process, peer address, server port, role);
//! this poller exports their increase since its last read, so a flow removed from the kernel
//! map (its process exited and it has no open connection) loses nothing already exported.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_ebpf::{
    FlowKey, FlowStats, FLOW_COUNTER_NAMES, FLOW_RTT_BUCKETS, ROLE_CLIENT, ROLE_SERVER, ROLE_UDP,
};
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::capture::flows::FlowMaps;
use crate::export::labels::WorkloadLabels;
use crate::export::labels::{MetricLabel, ReasonLabel};
use crate::export::prometheus::{register, DeltaCounter, Metrics};
use crate::metadata::{ClusterView, ProcessCache};

/// Default `--flows-max-series`: distinct flow label sets.
pub const DEFAULT_MAX_SERIES: usize = 5_000;

/// The name under which dropped flow series are counted in `periscope_series_dropped_total`.
const SERIES_METRIC: &str = "network_tcp_flow";

/// The labels of one flow series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct FlowLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    /// `tcp`, or `udp` (`--udp-flows`).
    pub network_transport: String,
    /// TCP: `client` (the process connected) or `server` (it accepted). UDP: `client` when the
    /// socket's first datagram was sent, `server` when it was received.
    pub connection_role: String,
    /// The remote port of a client flow, the local port of a server flow.
    pub server_port: u16,
    #[prometheus(flatten)]
    pub peer: FlowPeerLabels,
}

/// The other end of a flow: its IP when the cluster cannot name it, else its namespace,
/// workload and service (and an empty `peer_address`, so a restarted pod keeps its series).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct FlowPeerLabels {
    pub peer_address: String,
    pub peer_k8s_namespace_name: String,
    pub peer_k8s_owner_name: String,
    pub peer_service_name: String,
}

impl EncodeLabelSet for FlowPeerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("peer_address", self.peer_address.as_str()).encode(encoder.encode_label())?;
        for (name, value) in [
            ("peer_k8s_namespace_name", &self.peer_k8s_namespace_name),
            ("peer_k8s_owner_name", &self.peer_k8s_owner_name),
            ("peer_service_name", &self.peer_service_name),
        ] {
            if !value.is_empty() {
                (name, value.as_str()).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

/// `network_io_bytes_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct FlowIoLabels {
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// `transmit` or `receive`.
    pub network_io_direction: String,
}

/// `network_tcp_connect_failures_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct FlowErrorLabels {
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// `refused`, `timeout` or `reset`.
    pub error_type: String,
}

/// The flow metrics.
#[derive(Clone)]
pub struct FlowMetrics {
    pub bytes: Family<FlowIoLabels, Counter>,
    pub opened: Family<FlowLabels, Counter>,
    pub closed: Family<FlowLabels, Counter>,
    pub failures: Family<FlowErrorLabels, Counter>,
    pub established: Family<FlowLabels, Gauge>,
    pub retransmits: Family<FlowLabels, Counter>,
    pub rtt: Family<FlowLabels, Histogram>,
    /// Flow updates the kernel could not record, by reason.
    pub kernel_lost: Family<ReasonLabel, Counter>,
}

/// Upper bounds of the RTT histogram's buckets, in seconds: the kernel's log2 µs buckets.
fn rtt_bounds() -> impl Iterator<Item = f64> {
    (1..FLOW_RTT_BUCKETS).map(|i| (1u64 << i) as f64 / 1e6)
}

/// Values to observe for new RTT samples, given per kernel bucket (`counts`, integer µs in
/// `[2^i, 2^(i+1))`) and their exact total in µs: one value per bucket, each inside its
/// histogram bucket, placed at the same fraction of every bucket's range so that the values
/// add up to the kernel's total (the kernel keeps no single samples). Samples above the last
/// bound (8 s) stay at its lower end.
fn rtt_samples(counts: &[u64; FLOW_RTT_BUCKETS], sum_us: u64) -> Vec<(f64, u64)> {
    let last = FLOW_RTT_BUCKETS - 1;
    // The smallest and largest integer µs of a bucket, the lower end nudged above the bound
    // below it (histogram buckets include their upper bound).
    let range = |b: usize| -> (f64, f64) {
        match b {
            0 => (0.0, 1.0),
            b if b == last => ((1u64 << b) as f64 + 1e-3, (1u64 << b) as f64 + 1e-3),
            b => ((1u64 << b) as f64 + 1e-3, ((1u64 << (b + 1)) - 1) as f64),
        }
    };
    let (mut low, mut high) = (0.0, 0.0);
    for (b, &n) in counts.iter().enumerate() {
        let (lo, hi) = range(b);
        low += n as f64 * lo;
        high += n as f64 * hi;
    }
    let fraction = if high > low {
        ((sum_us as f64 - low) / (high - low)).clamp(0.0, 1.0)
    } else {
        0.0
    };
    counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(b, &n)| {
            let (lo, hi) = range(b);
            ((lo + fraction * (hi - lo)) / 1e6, n)
        })
        .collect()
}

impl FlowMetrics {
    /// Creates the flow metrics and registers them.
    pub fn register(registry: &mut Registry) -> FlowMetrics {
        let m = FlowMetrics {
            bytes: Family::default(),
            opened: Family::default(),
            closed: Family::default(),
            failures: Family::default(),
            established: Family::default(),
            retransmits: Family::default(),
            rtt: Family::new_with_constructor(|| Histogram::new(rtt_bounds())),
            kernel_lost: Family::default(),
        };
        register!(registry,
            "network_io" [Bytes]: m.bytes,
                "Payload bytes per flow: TCP bytes acknowledged by the peer (transmit) or received in order (receive); UDP datagram payload sent or received (--udp-flows)";
            "network_tcp_connections_opened": m.opened,
                "TCP connections that reached ESTABLISHED, per flow";
            "network_tcp_connections_closed": m.closed,
                "Established TCP connections that closed (gracefully or by a reset), per flow";
            "network_tcp_connect_failures": m.failures,
                "Failed TCP connections: refused (reset answering the SYN), timeout (no answer), reset (established, then reset by the peer)";
            "network_tcp_connections_established": m.established,
                "TCP connections open now, per flow";
            "network_tcp_retransmits": m.retransmits,
                "Retransmitted TCP segments, per flow";
            "network_tcp_rtt" [Seconds]: m.rtt,
                "Smoothed RTT of each TCP connection when it closed (sum approximated by bucket midpoints)";
        );
        register!(registry.sub_registry_with_prefix("periscope"),
            "flow_events_lost": m.kernel_lost,
                "Flow updates the kernel could not record, by reason";
        );
        m
    }
}

/// What a flow key resolved to (shared: one flow's labels are cloned into several families).
#[derive(Clone)]
enum Series {
    Admitted(Arc<FlowLabels>),
    /// Over `--flows-max-series`: its updates are dropped and counted.
    Dropped,
}

/// Reads the flow map and exports it.
pub struct FlowPoller {
    maps: FlowMaps,
    metrics: FlowMetrics,
    own: Arc<Metrics>,
    processes: ProcessCache,
    cluster: Option<Arc<dyn ClusterView>>,
    /// Cluster generation the cached series were resolved at.
    generation: u64,
    last: HashMap<FlowKey, FlowStats>,
    series: HashMap<FlowKey, Series>,
    admitted: std::collections::HashSet<FlowLabels>,
    max_series: usize,
    lost: Vec<DeltaCounter>,
    /// `--series-ttl`: a flow with no open connection whose counts have not moved for this
    /// long leaves the kernel map, and a label set none of whose flows moved for this long
    /// leaves the exported series and the admitted set (so a live server with many clients,
    /// or pods renamed by the cluster view, do not fill either for good). `None` keeps them.
    idle_ttl: Option<Duration>,
    /// When each kernel flow's counts last moved (or were first seen).
    flow_moved: HashMap<FlowKey, Instant>,
    /// When each admitted label set was last exported to.
    series_moved: HashMap<FlowLabels, Instant>,
}

impl FlowPoller {
    /// A poller of `maps` exporting into `metrics`, with at most `max_series` flow label sets.
    pub fn new(
        maps: FlowMaps,
        metrics: FlowMetrics,
        own: Arc<Metrics>,
        max_series: usize,
    ) -> FlowPoller {
        FlowPoller {
            maps,
            metrics,
            own,
            processes: ProcessCache::new("/proc"),
            cluster: None,
            generation: 0,
            last: HashMap::new(),
            series: HashMap::new(),
            admitted: std::collections::HashSet::new(),
            max_series,
            lost: FLOW_COUNTER_NAMES
                .iter()
                .map(|_| DeltaCounter::default())
                .collect(),
            idle_ttl: None,
            flow_moved: HashMap::new(),
            series_moved: HashMap::new(),
        }
    }

    /// Expires idle flows and series after `ttl` (`--series-ttl`; zero keeps them).
    pub fn set_idle_ttl(&mut self, ttl: Duration) {
        self.idle_ttl = (!ttl.is_zero()).then_some(ttl);
    }

    /// Names owners' pods and peers through the cluster view from now on.
    pub fn set_cluster(&mut self, cluster: Arc<dyn ClusterView>) {
        self.processes.set_cluster(cluster.clone());
        self.cluster = Some(cluster);
    }

    /// Polls every `interval` until dropped.
    pub async fn run(mut self, interval: Duration) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(interval);
        let mut polls: u64 = 0;
        // Sweeps every 30 polls, or four times per TTL when that is shorter.
        let sweep_every = self
            .idle_ttl
            .map_or(30, |ttl| {
                (ttl.as_secs_f64() / 4.0 / interval.as_secs_f64()) as u64
            })
            .clamp(1, 30);
        loop {
            tick.tick().await;
            polls += 1;
            self.poll();
            if polls.is_multiple_of(sweep_every) {
                self.forget_dead();
                self.expire_idle(Instant::now());
            }
        }
    }

    /// One read of the kernel map: exports every flow's increase since the last read.
    pub fn poll(&mut self) {
        let generation = self.cluster.as_ref().map_or(0, |c| c.generation());
        if generation != self.generation {
            // Pods or services may have been named: resolve every flow again.
            self.generation = generation;
            self.series.clear();
        }
        let current: Vec<(FlowKey, FlowStats)> =
            self.maps.flows.iter().filter_map(Result::ok).collect();
        let instant = Instant::now();
        for (key, now) in current {
            let before = self.last.get(&key).copied().unwrap_or_default();
            if differs(&before, &now) {
                self.export(&key, &before, &now);
                self.flow_moved.insert(key, instant);
            } else {
                self.flow_moved.entry(key).or_insert(instant);
            }
            self.last.insert(key, now);
        }
        for (index, name) in FLOW_COUNTER_NAMES.iter().enumerate() {
            if let Ok(values) = self.maps.counters.get(&(index as u32), 0) {
                let counter = self.metrics.kernel_lost.get_or_create(&ReasonLabel {
                    reason: (*name).to_owned(),
                });
                self.lost[index].advance(&counter, values.iter().sum());
            }
        }
    }

    fn export(&mut self, key: &FlowKey, before: &FlowStats, now: &FlowStats) {
        let series = match self.series.get(key) {
            Some(series) => series.clone(),
            None => {
                let labels = self.labels_of(key, &now.comm);
                let series = if self.admitted.contains(&labels) {
                    Series::Admitted(Arc::new(labels))
                } else if self.admitted.len() < self.max_series {
                    self.admitted.insert(labels.clone());
                    Series::Admitted(Arc::new(labels))
                } else {
                    Series::Dropped
                };
                self.series.insert(*key, series.clone());
                series
            }
        };
        let Series::Admitted(labels) = series else {
            self.own
                .self_metrics
                .series_dropped
                .get_or_create(&MetricLabel {
                    metric: SERIES_METRIC.to_owned(),
                })
                .inc();
            return;
        };
        if self.idle_ttl.is_some() {
            match self.series_moved.get_mut(&*labels) {
                Some(moved) => *moved = Instant::now(),
                None => {
                    self.series_moved.insert((*labels).clone(), Instant::now());
                }
            }
        }
        let labels: &FlowLabels = &labels;
        let m = &self.metrics;
        let delta = |f: fn(&FlowStats) -> u64| f(now).wrapping_sub(f(before));
        let io = |direction: &str| FlowIoLabels {
            flow: labels.clone(),
            network_io_direction: direction.to_owned(),
        };
        let error = |kind: &str| FlowErrorLabels {
            flow: labels.clone(),
            error_type: kind.to_owned(),
        };
        add(&m.bytes, &io("transmit"), delta(|s| s.bytes_sent));
        add(&m.bytes, &io("receive"), delta(|s| s.bytes_received));
        add(&m.opened, labels, delta(|s| s.opened));
        add(&m.closed, labels, delta(|s| s.closed));
        // Every flow has a retransmit series, at zero if need be: "no retransmits" then reads
        // as 0 in a rate, not as no data.
        m.retransmits
            .get_or_create(labels)
            .inc_by(delta(|s| s.retransmits));
        add(&m.failures, &error("refused"), delta(|s| s.refused));
        add(&m.failures, &error("timeout"), delta(|s| s.timed_out));
        add(&m.failures, &error("reset"), delta(|s| s.reset));
        let open = delta(|s| s.established) as i64;
        if open != 0 || now.opened > 0 {
            m.established.get_or_create(labels).inc_by(open);
        }
        if now.rtt == before.rtt {
            return;
        }
        let histogram = m.rtt.get_or_create(labels);
        let counts: [u64; FLOW_RTT_BUCKETS] =
            std::array::from_fn(|b| now.rtt[b].wrapping_sub(before.rtt[b]));
        for (seconds, n) in rtt_samples(&counts, delta(|s| s.rtt_sum_us)) {
            for _ in 0..n.min(1_000_000) {
                histogram.observe(seconds);
            }
        }
    }

    fn labels_of(&mut self, key: &FlowKey, comm: &[u8]) -> FlowLabels {
        flow_labels(key, comm, &mut self.processes, self.cluster.as_deref())
    }

    /// `idle_ttl` at work (see the field): idle kernel flows without an open connection, then
    /// idle label sets with every series they have.
    fn expire_idle(&mut self, now: Instant) {
        let Some(ttl) = self.idle_ttl else {
            return;
        };
        let idle = |moved: &Instant| now.saturating_duration_since(*moved) >= ttl;
        let flows: Vec<FlowKey> = self
            .flow_moved
            .iter()
            .filter(|(key, moved)| {
                idle(moved) && self.last.get(key).is_some_and(|s| s.established == 0)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in flows {
            // Counts the kernel adds between the last read and this removal are lost; the flow
            // had none for a whole TTL and has no open connection.
            let _ = self.maps.flows.remove(&key);
            self.last.remove(&key);
            self.series.remove(&key);
            self.flow_moved.remove(&key);
        }
        let stale: Vec<FlowLabels> = self
            .series_moved
            .iter()
            .filter(|(_, moved)| idle(moved))
            .map(|(labels, _)| labels.clone())
            .collect();
        if stale.is_empty() {
            return;
        }
        let mut removed = 0;
        for labels in &stale {
            self.series_moved.remove(labels);
            self.admitted.remove(labels);
            removed += remove_flow_series(&self.metrics, labels);
        }
        // A cached flow may point at a removed label set: resolve (and admit) it again.
        self.series.clear();
        self.own.self_metrics.series_expired.inc_by(removed);
    }

    /// Removes the kernel flows of exited processes that have no open connection (their last
    /// counts were exported by the poll before), so the map does not fill up over time.
    fn forget_dead(&mut self) {
        let dead: Vec<FlowKey> = self
            .last
            .iter()
            .filter(|(key, stats)| {
                key.tgid != 0
                    && stats.established == 0
                    && !Path::new(&format!("/proc/{}", key.tgid)).exists()
            })
            .map(|(key, _)| *key)
            .collect();
        for key in dead {
            let _ = self.maps.flows.remove(&key);
            self.last.remove(&key);
            self.series.remove(&key);
            self.flow_moved.remove(&key);
            self.processes.forget(key.tgid);
        }
    }
}

/// Removes every series of one flow label set from the flow families; returns how many.
fn remove_flow_series(m: &FlowMetrics, labels: &FlowLabels) -> u64 {
    let mut removed = 0;
    for direction in ["transmit", "receive"] {
        removed += u64::from(m.bytes.remove(&FlowIoLabels {
            flow: labels.clone(),
            network_io_direction: direction.to_owned(),
        }));
    }
    for kind in ["refused", "timeout", "reset"] {
        removed += u64::from(m.failures.remove(&FlowErrorLabels {
            flow: labels.clone(),
            error_type: kind.to_owned(),
        }));
    }
    removed += u64::from(m.opened.remove(labels));
    removed += u64::from(m.closed.remove(labels));
    removed += u64::from(m.established.remove(labels));
    removed += u64::from(m.retransmits.remove(labels));
    removed += u64::from(m.rtt.remove(labels));
    removed
}

/// The labels of a flow: the one place where a flow's owner becomes workload labels and its
/// peer address becomes peer labels (named by the cluster view when it knows the address).
pub fn flow_labels(
    key: &FlowKey,
    comm: &[u8],
    processes: &mut ProcessCache,
    cluster: Option<&dyn ClusterView>,
) -> FlowLabels {
    let workload = if key.tgid == 0 {
        // A socket whose creation was never seen (a listener the agent could not adopt).
        WorkloadLabels {
            service_name: "unknown".to_owned(),
            ..WorkloadLabels::default()
        }
    } else {
        let comm = comm_str(comm);
        let hint = (!comm.is_empty()).then_some(comm.as_str());
        WorkloadLabels::of(&processes.get_in(key.tgid, hint, key.cgroup_id))
    };
    let ip = peer_ip(key);
    let peer = match cluster.and_then(|c| c.peer(ip)) {
        Some(name) => FlowPeerLabels {
            peer_address: String::new(),
            peer_k8s_namespace_name: name.namespace,
            peer_k8s_owner_name: name.owner_name,
            peer_service_name: name.service_name,
        },
        None => FlowPeerLabels {
            peer_address: ip.to_string(),
            ..FlowPeerLabels::default()
        },
    };
    FlowLabels {
        workload,
        network_transport: if key.role & ROLE_UDP != 0 {
            "udp"
        } else {
            "tcp"
        }
        .to_owned(),
        connection_role: match key.role & !ROLE_UDP {
            ROLE_CLIENT => "client",
            ROLE_SERVER => "server",
            _ => "unknown",
        }
        .to_owned(),
        server_port: key.server_port,
        peer,
    }
}

fn add<L: Clone + std::hash::Hash + Eq>(family: &Family<L, Counter>, labels: &L, n: u64) {
    if n != 0 {
        family.get_or_create(labels).inc_by(n);
    }
}

fn differs(a: &FlowStats, b: &FlowStats) -> bool {
    a.opened != b.opened
        || a.closed != b.closed
        || a.refused != b.refused
        || a.timed_out != b.timed_out
        || a.reset != b.reset
        || a.retransmits != b.retransmits
        || a.bytes_sent != b.bytes_sent
        || a.bytes_received != b.bytes_received
        || a.established != b.established
        || a.rtt != b.rtt
}

/// The peer's address as the kernel stored it (network byte order).
pub fn peer_ip(key: &FlowKey) -> IpAddr {
    if key.ip_version == 6 {
        IpAddr::from(key.peer)
    } else {
        IpAddr::from([key.peer[0], key.peer[1], key.peer[2], key.peer[3]])
    }
}

fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::testkit::OnePeer;

    #[test]
    fn peer_addresses_from_kernel_bytes() {
        let mut key = FlowKey {
            ip_version: 4,
            ..FlowKey::default()
        };
        key.peer[..4].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(peer_ip(&key).to_string(), "10.1.2.3");
        key.ip_version = 6;
        key.peer = std::net::Ipv6Addr::LOCALHOST.octets();
        assert_eq!(peer_ip(&key).to_string(), "::1");
    }

    #[test]
    fn rtt_samples_keep_their_buckets_and_add_up_to_the_kernel_sum() {
        let bounds: Vec<f64> = rtt_bounds().collect();
        let mut counts = [0u64; FLOW_RTT_BUCKETS];
        // 3 samples of 40–63 µs, 1 of 1000–2047 µs, 2 of 0–1 µs.
        counts[5] = 3;
        counts[10] = 1;
        counts[0] = 2;
        for sum_us in [3 * 40 + 1000, 3 * 50 + 1500 + 1, 3 * 63 + 2047 + 2] {
            let samples = rtt_samples(&counts, sum_us);
            let total: f64 = samples.iter().map(|(v, n)| v * *n as f64).sum();
            assert!(
                (total * 1e6 - sum_us as f64).abs() < 0.01,
                "{sum_us}: {samples:?}"
            );
            for (v, n) in samples {
                let bucket = bounds.iter().position(|b| v <= *b).expect("finite");
                assert_eq!(counts[bucket], n, "{v} in bucket {bucket}");
            }
        }
    }

    #[test]
    fn rtt_buckets_are_the_kernel_log2_buckets() {
        let bounds: Vec<f64> = rtt_bounds().collect();
        assert_eq!(bounds.len(), FLOW_RTT_BUCKETS - 1);
        assert_eq!(bounds[0], 2e-6);
        assert_eq!(bounds[9], 1024e-6);
    }

    /// Names 10.0.0.7 as `shop/orders` behind `orders-db`.
    const ONE_PEER: OnePeer = OnePeer {
        generation: 1,
        ip: [10, 0, 0, 7],
        service_name: "orders-db",
    };

    fn key(peer: [u8; 4], tgid: u32) -> FlowKey {
        let mut key = FlowKey {
            tgid,
            server_port: 5432,
            role: ROLE_CLIENT,
            ip_version: 4,
            ..FlowKey::default()
        };
        key.peer[..4].copy_from_slice(&peer);
        key
    }

    #[test]
    fn peers_are_named_by_the_cluster_else_by_address() {
        let mut processes = ProcessCache::new("/proc");
        let me = std::process::id();
        let named = flow_labels(
            &key([10, 0, 0, 7], me),
            b"x",
            &mut processes,
            Some(&ONE_PEER),
        );
        assert_eq!(named.peer.peer_address, "");
        assert_eq!(named.peer.peer_service_name, "orders-db");
        assert_eq!(named.connection_role, "client");
        assert_eq!(named.server_port, 5432);
        let by_ip = flow_labels(
            &key([10, 0, 0, 8], me),
            b"x",
            &mut processes,
            Some(&ONE_PEER),
        );
        assert_eq!(by_ip.peer.peer_address, "10.0.0.8");
        assert_eq!(by_ip.peer.peer_service_name, "");
        let standalone = flow_labels(&key([10, 0, 0, 7], me), b"x", &mut processes, None);
        assert_eq!(standalone.peer.peer_address, "10.0.0.7");
        // The owner is this very test process.
        assert_eq!(standalone.workload, named.workload);
        assert!(!standalone.workload.service_name.is_empty());
    }

    #[test]
    fn an_exited_owner_is_named_by_its_comm_and_no_owner_is_unknown() {
        let mut processes = ProcessCache::new("/proc");
        let gone = flow_labels(
            &key([1, 2, 3, 4], u32::MAX - 1),
            b"curl\0",
            &mut processes,
            None,
        );
        assert_eq!(gone.workload.service_name, "curl");
        let nobody = flow_labels(&key([1, 2, 3, 4], 0), b"", &mut processes, None);
        assert_eq!(nobody.workload.service_name, "unknown");
    }

    #[test]
    fn udp_flows_carry_their_transport_and_role() {
        let mut processes = ProcessCache::new("/proc");
        let mut udp = key([10, 0, 0, 9], 0);
        udp.role = ROLE_SERVER | ROLE_UDP;
        let labels = flow_labels(&udp, b"", &mut processes, None);
        assert_eq!(labels.network_transport, "udp");
        assert_eq!(labels.connection_role, "server");
        udp.role = ROLE_CLIENT | ROLE_UDP;
        assert_eq!(
            flow_labels(&udp, b"", &mut processes, None).connection_role,
            "client"
        );
        let tcp = flow_labels(&key([10, 0, 0, 9], 0), b"", &mut processes, None);
        assert_eq!(tcp.network_transport, "tcp");
        assert_eq!(tcp.connection_role, "client");
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_str(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
