//! The agent's one typed configuration: CLI flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Periscope: eBPF observability for HTTP, without touching the application.
#[derive(Clone, Debug, Parser)]
#[command(name = "periscope", version, about)]
pub struct Config {
    /// A YAML file of settings, keyed by the long flag names (`capture-bytes: 512`); a flag or
    /// an environment variable wins over it.
    #[arg(long, env = "PERISCOPE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the settings in effect, each with where it came from, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "PERISCOPE_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,

    /// Serve the endpoint over HTTPS with this PEM certificate chain (with --metrics-tls-key).
    #[arg(long, env = "PERISCOPE_METRICS_TLS_CERT")]
    pub metrics_tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --metrics-tls-cert.
    #[arg(long, env = "PERISCOPE_METRICS_TLS_KEY")]
    pub metrics_tls_key: Option<std::path::PathBuf>,

    /// /metrics answers 401 unless the request carries `Authorization: Bearer <token>` with the
    /// token in this file (read at start-up). /healthz and /readyz stay open for probes.
    #[arg(long, env = "PERISCOPE_METRICS_BEARER_TOKEN_FILE")]
    pub metrics_bearer_token_file: Option<std::path::PathBuf>,

    /// Bytes of payload copied from the kernel per socket read or write (1..=4096).
    #[arg(long, env = "PERISCOPE_CAPTURE_BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=agent_ebpf::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,

    /// Size of the kernel → userspace ring buffer in bytes (a power of two, ≥ 4096).
    #[arg(long, env = "PERISCOPE_RINGBUF_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: u32,

    /// How to attach the syscall hooks: auto picks BTF tracepoints when the kernel has BTF.
    #[arg(
        long,
        env = "PERISCOPE_SYSCALL_HOOKS",
        value_enum,
        default_value = "auto"
    )]
    pub syscall_hooks: crate::capture::HookMode,

    /// Once the kernel programs are attached, drop every capability except `CAP_BPF`,
    /// `CAP_PERFMON`, `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH` (and `CAP_SYS_ADMIN` with
    /// `--bpf-stats` or before Linux 5.8), in every thread; `--drop-capabilities=false` keeps
    /// them all.
    #[arg(long, env = "PERISCOPE_DROP_CAPABILITIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub drop_capabilities: bool,

    /// At most this many bytes held by all protocol decoders together (buffers, queues, SQL,
    /// names; estimated). The connection that would take them over stops being decoded and is
    /// counted in `periscope_connections_muted_total{reason="memory_budget"}`.
    #[arg(long, env = "PERISCOPE_DECODER_MEMORY_BUDGET",
          default_value_t = crate::conn::DEFAULT_DECODER_MEMORY_BUDGET)]
    pub decoder_memory_budget: usize,

    /// How connects learn their socket's own address, which links a server span to the client
    /// span that called it on this node: `sock-ops` (Linux 6.10+), `tracepoint` (reads the
    /// socket at offsets from the kernel's BTF; any kernel with BTF), `auto` (the first that
    /// works) or `off`.
    #[arg(
        long,
        env = "PERISCOPE_CONNECT_HOOK",
        value_enum,
        default_value = "auto"
    )]
    pub connect_hook: crate::capture::ConnectHook,

    /// Walk the messages of PostgreSQL, Kafka and HTTP/1.x connections in the kernel, so that
    /// counts stay exact whatever a read or write carries (see the README's design section). Needs
    /// `bpf_loop` (Linux 5.17+); older kernels capture a prefix per syscall. `--framing=false`
    /// turns it off (for measuring the difference).
    #[arg(long, env = "PERISCOPE_FRAMING", default_value_t = true, action = clap::ArgAction::Set)]
    pub framing: bool,

    /// Decode TLS traffic (HTTPS, PostgreSQL and Kafka over SSL) from uprobes on OpenSSL's
    /// `SSL_read`/`SSL_write` in every `libssl` processes map and in executables that carry
    /// those symbols themselves (see the README's TLS section). `--tls=false` turns it off.
    #[arg(long, env = "PERISCOPE_TLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls: bool,

    /// Measure the kernel programs' own run time (BPF_ENABLE_STATS) and export it as
    /// `periscope_bpf_program_run_time_seconds_total`. Costs two clock reads per program run.
    #[arg(long, env = "PERISCOPE_BPF_STATS")]
    pub bpf_stats: bool,

    /// At most this many label sets per metric; observations beyond are dropped and counted in
    /// `periscope_series_dropped_total` (protects memory from random paths, tables, topics).
    #[arg(long, env = "PERISCOPE_MAX_SERIES", default_value_t = crate::export::prometheus::DEFAULT_MAX_SERIES)]
    pub max_series: usize,

    /// At most this many bytes held by the HTTP, database and messaging series together
    /// (estimated per series, exported as `periscope_series_memory_bytes`); new label sets
    /// beyond it are dropped and counted in `periscope_series_dropped_total`.
    #[arg(long, env = "PERISCOPE_SERIES_MEMORY_BUDGET",
          default_value_t = crate::export::prometheus::DEFAULT_MEMORY_BUDGET)]
    pub series_memory_budget: usize,

    /// TCP flows: connections, failures, bytes, retransmits and RTT per process and peer,
    /// aggregated in the kernel (`network_*` metrics). `--flows=false` turns them off.
    #[arg(long, env = "PERISCOPE_FLOWS", default_value_t = true, action = clap::ArgAction::Set)]
    pub flows: bool,

    /// UDP payload bytes per flow too (`network_io_bytes_total{network_transport="udp"}`).
    /// Off by default: it adds a cgroup_skb program on every packet in and out, TCP too.
    #[arg(long, env = "PERISCOPE_UDP_FLOWS")]
    pub udp_flows: bool,

    /// At most this many flow label sets; updates of further flows are dropped and counted in
    /// `periscope_series_dropped_total{metric="network_tcp_flow"}`.
    #[arg(long, env = "PERISCOPE_FLOWS_MAX_SERIES", default_value_t = crate::flows::DEFAULT_MAX_SERIES)]
    pub flows_max_series: usize,

    /// Protocols to decode: any of `http`, `postgres`, `kafka` (comma-separated), or `none`.
    /// Connections speaking another protocol are muted in the kernel after their first bytes.
    #[arg(long, env = "PERISCOPE_PROTOCOLS", default_value = "http,http2,postgres,kafka",
          value_parser = crate::conn::decoder::Protocols::parse)]
    pub protocols: crate::conn::decoder::Protocols,

    /// Kubernetes attribution: `auto` turns it on inside a pod (KUBERNETES_SERVICE_HOST set).
    #[arg(long, env = "PERISCOPE_KUBERNETES", value_enum, default_value = "auto")]
    pub kubernetes: KubernetesMode,

    /// The API server's URL, instead of the in-cluster service account (tests, out-of-cluster
    /// runs). Plain `http://` is accepted for local test servers.
    #[arg(long, env = "PERISCOPE_KUBE_API_URL")]
    pub kube_api_url: Option<String>,

    /// This node's name: pods are watched with `spec.nodeName=<it>` (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// How long the series of a deleted pod stay before they are removed (e.g. 30s, 5m, 1h).
    #[arg(long, env = "PERISCOPE_SERIES_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub series_grace: std::time::Duration,

    /// HTTP, database and messaging series that see no request for this long are removed
    /// (series of processes that are gone, of ports or routes seen once); they come back, from
    /// zero, with their next request. `0` keeps every series (up to --max-series per metric).
    #[arg(long, env = "PERISCOPE_SERIES_TTL", default_value = "5m", value_parser = parse_duration)]
    pub series_ttl: std::time::Duration,
    /// Syscalls to keep per-cgroup statistics for (count, errors by errno class, latency
    /// histogram): `none` (the default: no syscall hooks at all), `default` (the interesting
    /// set: I/O, network, waiting, memory, files, processes), or a comma-separated list of
    /// x86_64 syscall names, which may include `default` (`default,getppid`). Off by default
    /// because of the cost per selected syscall (hundreds of ns on the development VM, see
    /// BENCHMARKS.md).
    #[arg(long, env = "PERISCOPE_SYSCALLS", default_value = "none",
          value_parser = crate::syscalls::Selection::parse)]
    pub syscalls: crate::syscalls::Selection,

    /// At most this many (cgroup, syscall) pairs get syscall statistics; calls of further pairs
    /// are counted in `periscope_series_dropped_total{metric="syscall_duration_seconds"}`. The
    /// kernel table costs about 160 bytes per pair per CPU.
    #[arg(long, env = "PERISCOPE_SYSCALLS_MAX_SERIES",
          default_value_t = crate::syscalls::DEFAULT_MAX_SERIES,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub syscalls_max_series: u32,

    /// Seconds the syscall series of a removed cgroup stay exported before they are dropped.
    #[arg(long, env = "PERISCOPE_SYSCALLS_GRACE_SECONDS",
          default_value_t = crate::syscalls::DEFAULT_GRACE_SECONDS)]
    pub syscalls_grace_seconds: u64,

    /// Keep the syscall statistics' exit side in a kernel program of its own instead of the
    /// I/O exit program (only to measure the difference).
    #[arg(long, env = "PERISCOPE_SYSCALLS_SEPARATE_EXIT", hide = true)]
    pub syscalls_separate_exit: bool,

    /// Where the syscall statistics' entry hook goes: `auto` (each selected syscall's own
    /// `syscalls:sys_enter_<name>` tracepoint when all have one, else `raw_syscalls:sys_enter`),
    /// `per-syscall` or `raw-syscalls` (only to measure the difference).
    #[arg(
        long,
        env = "PERISCOPE_SYSCALLS_ENTRY",
        value_enum,
        default_value = "auto",
        hide = true
    )]
    pub syscalls_entry: crate::capture::SyscallEntry,

    /// OTLP collector base URL (`http://host:4317` for gRPC, `http://host:4318` for
    /// HTTP/protobuf; `https://` for TLS). Spans are exported only when this, the traces
    /// endpoint or `--traces-stdout` is set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The traces URL itself (HTTP/protobuf: used as given, no `/v1/traces` appended).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http/protobuf`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "grpc"
    )]
    pub otlp_protocol: crate::export::otlp::Protocol,

    /// The same for traces only; wins over `--otlp-protocol`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", value_enum)]
    pub otlp_traces_protocol: Option<crate::export::otlp::Protocol>,

    /// Extra headers on every export request: `key=value,key2=value2` (values may use `%XX`).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,

    /// The same for traces only; wins over `--otlp-headers` (as a whole, as the OTLP exporter
    /// spec has it).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_HEADERS")]
    pub otlp_traces_headers: Option<String>,

    /// Compress export requests: `gzip` or `none` (the default).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_COMPRESSION")]
    pub otlp_compression: Option<String>,

    /// The same for traces only; wins over `--otlp-compression`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")]
    pub otlp_traces_compression: Option<String>,

    /// One export attempt's time limit, in milliseconds (default 10000).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT")]
    pub otlp_timeout: Option<u64>,

    /// The same for traces only; wins over `--otlp-timeout`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")]
    pub otlp_traces_timeout: Option<u64>,

    /// Attributes added to every span's resource: `key=value,key2=value2` (values may use
    /// `%XX`), e.g. `k8s.cluster.name=prod,deployment.environment.name=prod`. A process's own
    /// attributes (its `service.name`, pod, container) win over these.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub resource_attributes: Option<String>,

    /// The agent's own `service.name`, in `target_info` on /metrics (default `periscope`, or
    /// the `service.name` of `OTEL_RESOURCE_ATTRIBUTES`). Workloads keep their own names.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// PEM file of the CA certificates that sign the collector's certificate, trusted on top
    /// of the system's roots (`https://` endpoints only).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_certificate: Option<PathBuf>,

    /// The same for traces only; wins over `--otlp-certificate`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")]
    pub otlp_traces_certificate: Option<PathBuf>,

    /// PEM file of the client certificate (chain) for mutual TLS, with `--otlp-client-key`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")]
    pub otlp_client_certificate: Option<PathBuf>,

    /// The same for traces only; wins over `--otlp-client-certificate`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE")]
    pub otlp_traces_client_certificate: Option<PathBuf>,

    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_KEY")]
    pub otlp_client_key: Option<PathBuf>,

    /// The same for traces only; wins over `--otlp-client-key`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY")]
    pub otlp_traces_client_key: Option<PathBuf>,

    /// gRPC to an endpoint given without a scheme (`host:4317`): plaintext when true, TLS
    /// when false (the default). Endpoints with `http://` or `https://` ignore it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_INSECURE", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub otlp_insecure: Option<bool>,

    /// The same for traces only; wins over `--otlp-insecure`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_INSECURE", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub otlp_traces_insecure: Option<bool>,

    /// Sampler: `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off` or `parentbased_traceidratio`. The default decides by trace id
    /// alone (ratio 1.0 unless `--traces-sampler-arg`): a `parentbased_*` sampler lets every
    /// caller's `traceparent` flag choose, which suits trusted ingress only.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", default_value = "traceidratio")]
    pub traces_sampler: String,

    /// The sampler's ratio for the `*traceidratio` samplers (0.0..=1.0, default 1.0).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub traces_sampler_arg: Option<String>,

    /// Print every span as one JSON line on stdout (local use; works without a collector).
    #[arg(long, env = "PERISCOPE_TRACES_STDOUT")]
    pub traces_stdout: bool,

    /// Exchanges waiting for the span exporter at most; newer ones are dropped and counted in
    /// `periscope_spans_dropped_total{reason="queue_full"}`. Default 8192, or
    /// `OTEL_BSP_MAX_QUEUE_SIZE`.
    #[arg(long, env = "PERISCOPE_TRACES_QUEUE_SIZE",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub traces_queue_size: Option<u32>,

    /// The OpenTelemetry SDK's name for `--traces-queue-size`, which wins over it.
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", hide = true,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub bsp_max_queue_size: Option<u32>,

    /// Most spans in one export request (OpenTelemetry's batch span processor setting).
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub traces_batch_size: u32,

    /// Milliseconds between two exports while spans arrive (a full batch goes at once). The
    /// OpenTelemetry SDKs default to 5000; Periscope to 1000, so that spans show soon.
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub traces_schedule_delay: u64,

    /// Milliseconds one batch's export may take in all, retries included; a batch not
    /// exported by then is dropped and counted (`export_failed`).
    #[arg(long, env = "OTEL_BSP_EXPORT_TIMEOUT", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub traces_export_timeout: u64,

    /// Watch only processes in these Kubernetes namespaces (comma-separated; default: all).
    /// Processes outside any pod are then not watched.
    #[arg(long, env = "PERISCOPE_INCLUDE_NAMESPACES", value_delimiter = ',')]
    pub include_namespaces: Vec<String>,

    /// Do not watch processes in these namespaces; `--exclude-namespaces=` watches them all.
    #[arg(
        long,
        env = "PERISCOPE_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub exclude_namespaces: Vec<String>,

    /// Watch only pods matching this label selector (`app=web,tier!=batch,canary,!legacy`:
    /// every term must hold).
    #[arg(long, env = "PERISCOPE_INCLUDE_POD_LABELS",
          value_parser = crate::selection::parse_selector)]
    pub include_pod_labels: Option<crate::selection::Selector>,

    /// Do not watch pods matching this label selector (every term must hold).
    #[arg(long, env = "PERISCOPE_EXCLUDE_POD_LABELS",
          value_parser = crate::selection::parse_selector)]
    pub exclude_pod_labels: Option<crate::selection::Selector>,

    /// Watch only these workloads: `name` or `Kind/name` (`Deployment/web`), comma-separated.
    #[arg(long, env = "PERISCOPE_INCLUDE_WORKLOADS", value_delimiter = ',')]
    pub include_workloads: Vec<String>,

    /// Do not watch these workloads (`name` or `Kind/name`).
    #[arg(long, env = "PERISCOPE_EXCLUDE_WORKLOADS", value_delimiter = ',')]
    pub exclude_workloads: Vec<String>,

    /// Watch only these containers (by their name in the pod spec).
    #[arg(long, env = "PERISCOPE_INCLUDE_CONTAINERS", value_delimiter = ',')]
    pub include_containers: Vec<String>,

    /// Do not watch these containers (`istio-proxy`, …).
    #[arg(long, env = "PERISCOPE_EXCLUDE_CONTAINERS", value_delimiter = ',')]
    pub exclude_containers: Vec<String>,

    /// Watch only these executables: glob patterns (`*`) over the executable's name, or its
    /// path when the pattern has a `/` (`python3*,/opt/*/bin/java`).
    #[arg(long, env = "PERISCOPE_INCLUDE_EXECUTABLES", value_delimiter = ',')]
    pub include_executables: Vec<String>,

    /// Do not watch these executables (default: the monitoring stack's scrapers and
    /// collectors); `--exclude-executables=` watches them too.
    #[arg(long, env = "PERISCOPE_EXCLUDE_EXECUTABLES", value_delimiter = ',',
          default_value = crate::selection::DEFAULT_EXCLUDED_EXECUTABLES)]
    pub exclude_executables: Vec<String>,

    /// Watch only connections to these server ports (`80,8000-8100`).
    #[arg(long, env = "PERISCOPE_INCLUDE_PORTS", value_delimiter = ',',
          value_parser = crate::selection::parse_ports)]
    pub include_ports: Vec<crate::selection::Ports>,

    /// Do not watch connections to these server ports.
    #[arg(long, env = "PERISCOPE_EXCLUDE_PORTS", value_delimiter = ',',
          value_parser = crate::selection::parse_ports)]
    pub exclude_ports: Vec<crate::selection::Ports>,

    /// Metric exporters, comma-separated: `prometheus` (the /metrics endpoint, the default,
    /// always served) and `otlp` (push to the OTLP collector as well); `none` is accepted.
    #[arg(long, env = "OTEL_METRICS_EXPORTER", default_value = "prometheus")]
    pub metrics_exporter: String,

    /// The metrics URL itself (HTTP/protobuf: used as given, no `/v1/metrics` appended);
    /// setting it turns the OTLP push on.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")]
    pub otlp_metrics_endpoint: Option<String>,

    /// OTLP transport of the metrics push; wins over `--otlp-protocol`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", value_enum)]
    pub otlp_metrics_protocol: Option<crate::export::otlp::Protocol>,

    /// Extra headers on metrics pushes; wins over `--otlp-headers` (as a whole).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_HEADERS")]
    pub otlp_metrics_headers: Option<String>,

    /// Compression of metrics pushes (`gzip` or `none`); wins over `--otlp-compression`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION")]
    pub otlp_metrics_compression: Option<String>,

    /// One metrics push attempt's time limit in milliseconds; wins over `--otlp-timeout`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT")]
    pub otlp_metrics_timeout: Option<u64>,

    /// Aggregation temporality of pushed metrics: only `cumulative` (the default).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")]
    pub otlp_metrics_temporality: Option<String>,

    /// Milliseconds between two OTLP metrics pushes.
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub metrics_export_interval: u64,

    /// Milliseconds one metrics push may take, retries included.
    #[arg(long, env = "OTEL_METRIC_EXPORT_TIMEOUT", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub metrics_export_timeout: u64,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, env = "PERISCOPE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log lines as `text` or as `json` (one object per line: ts, level, target, message).
    #[arg(long, env = "PERISCOPE_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,
}

/// Whether to attribute processes to Kubernetes pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KubernetesMode {
    /// On when running in a pod (KUBERNETES_SERVICE_HOST is set) or --kube-api-url is given.
    Auto,
    On,
    Off,
}

/// The traces exporter's transport settings, as `Config::otlp_traces_transport` resolves them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OtlpTransport<'a> {
    pub protocol: crate::export::otlp::Protocol,
    pub headers: Option<&'a str>,
    pub timeout_ms: Option<u64>,
    pub compression: Option<&'a str>,
}

impl Config {
    /// Whether Kubernetes attribution runs, resolving `auto` against the environment.
    pub fn kubernetes_enabled(&self) -> bool {
        match self.kubernetes {
            KubernetesMode::On => true,
            KubernetesMode::Off => false,
            KubernetesMode::Auto => {
                self.kube_api_url.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            }
        }
    }

    /// The OTLP protocol, headers, timeout (ms) and compression of the traces exporter: each
    /// traces-specific setting wins over the general one, as a whole.
    pub fn otlp_traces_transport(&self) -> OtlpTransport<'_> {
        OtlpTransport {
            protocol: self.otlp_traces_protocol.unwrap_or(self.otlp_protocol),
            headers: self
                .otlp_traces_headers
                .as_deref()
                .or(self.otlp_headers.as_deref()),
            timeout_ms: self.otlp_traces_timeout.or(self.otlp_timeout),
            compression: self
                .otlp_traces_compression
                .as_deref()
                .or(self.otlp_compression.as_deref()),
        }
    }

    /// `--traces-queue-size`, else `OTEL_BSP_MAX_QUEUE_SIZE`, else 8192.
    pub fn traces_queue(&self) -> usize {
        self.traces_queue_size
            .or(self.bsp_max_queue_size)
            .unwrap_or(8192) as usize
    }

    /// What is watched (`--include-*`, `--exclude-*`).
    pub fn selection(&self) -> crate::selection::Selection {
        use crate::selection::{parse_workload, Lists, Selection};
        let names = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let lists = |include: &[String], exclude: &[String]| Lists {
            include: names(include),
            exclude: names(exclude),
        };
        let selectors = |s: &Option<crate::selection::Selector>| {
            s.iter()
                .filter(|s| !s.0.is_empty())
                .map(|s| s.0.clone())
                .collect()
        };
        Selection {
            namespaces: lists(&self.include_namespaces, &self.exclude_namespaces),
            labels: Lists {
                include: selectors(&self.include_pod_labels),
                exclude: selectors(&self.exclude_pod_labels),
            },
            workloads: Lists {
                include: names(&self.include_workloads)
                    .iter()
                    .map(|w| parse_workload(w))
                    .collect(),
                exclude: names(&self.exclude_workloads)
                    .iter()
                    .map(|w| parse_workload(w))
                    .collect(),
            },
            containers: lists(&self.include_containers, &self.exclude_containers),
            executables: lists(&self.include_executables, &self.exclude_executables),
            ports: Lists {
                include: self.include_ports.clone(),
                exclude: self.exclude_ports.clone(),
            },
        }
    }

    /// The OTLP protocol, headers, timeout (ms) and compression of the metrics push: each
    /// metrics-specific setting wins over the general one, as a whole.
    pub fn otlp_metrics_transport(&self) -> OtlpTransport<'_> {
        OtlpTransport {
            protocol: self.otlp_metrics_protocol.unwrap_or(self.otlp_protocol),
            headers: self
                .otlp_metrics_headers
                .as_deref()
                .or(self.otlp_headers.as_deref()),
            timeout_ms: self.otlp_metrics_timeout.or(self.otlp_timeout),
            compression: self
                .otlp_metrics_compression
                .as_deref()
                .or(self.otlp_compression.as_deref()),
        }
    }

    /// Whether metrics are pushed over OTLP: `otlp` in `--metrics-exporter`, or a metrics
    /// endpoint of their own. An unknown exporter name is an error naming the variable.
    pub fn metrics_push(&self) -> anyhow::Result<bool> {
        let mut otlp = self.otlp_metrics_endpoint.is_some();
        for name in self.metrics_exporter.split(',').map(str::trim) {
            match name {
                "otlp" => otlp = true,
                "prometheus" | "none" | "" => {}
                other => anyhow::bail!(
                    "OTEL_METRICS_EXPORTER (--metrics-exporter): {other:?} is not an exporter \
                     (prometheus, otlp, none)"
                ),
            }
        }
        Ok(otlp)
    }

    /// The OTLP TLS settings, each traces-specific one winning over the general one, named
    /// by the variable and flag it came from (for start-up errors).
    pub fn otlp_tls(&self) -> crate::export::otlp::TlsOptions {
        self.otlp_tls_of(true)
    }

    /// The OTLP TLS settings of the metrics push: the general ones (there are no
    /// metrics-specific certificate settings).
    pub fn otlp_metrics_tls(&self) -> crate::export::otlp::TlsOptions {
        self.otlp_tls_of(false)
    }

    fn otlp_tls_of(&self, traces: bool) -> crate::export::otlp::TlsOptions {
        let specific = |p: &Option<PathBuf>| if traces { p.clone() } else { None };
        fn pick(
            traces: &Option<PathBuf>,
            traces_name: &'static str,
            general: &Option<PathBuf>,
            general_name: &'static str,
        ) -> Option<(&'static str, PathBuf)> {
            match (traces, general) {
                (Some(p), _) => Some((traces_name, p.clone())),
                (None, Some(p)) => Some((general_name, p.clone())),
                (None, None) => None,
            }
        }
        crate::export::otlp::TlsOptions {
            certificate: pick(
                &specific(&self.otlp_traces_certificate),
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE (--otlp-traces-certificate)",
                &self.otlp_certificate,
                "OTEL_EXPORTER_OTLP_CERTIFICATE (--otlp-certificate)",
            ),
            client_certificate: pick(
                &specific(&self.otlp_traces_client_certificate),
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE (--otlp-traces-client-certificate)",
                &self.otlp_client_certificate,
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE (--otlp-client-certificate)",
            ),
            client_key: pick(
                &specific(&self.otlp_traces_client_key),
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY (--otlp-traces-client-key)",
                &self.otlp_client_key,
                "OTEL_EXPORTER_OTLP_CLIENT_KEY (--otlp-client-key)",
            ),
            insecure: self
                .otlp_traces_insecure
                .filter(|_| traces)
                .or(self.otlp_insecure)
                .unwrap_or(false),
        }
    }
}

/// `90s`, `5m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two of at least 4096"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["periscope"]).unwrap();
        assert_eq!(c.metrics_addr, "0.0.0.0:9464".parse().unwrap());
        assert_eq!(c.capture_bytes, 4096);
        assert!(c.syscalls.is_empty(), "syscall statistics are opt-in");
        assert_eq!(c.protocols, crate::conn::decoder::Protocols::default());
        let c = Config::try_parse_from(["periscope", "--syscalls", "default"]).unwrap();
        assert_eq!(
            c.syscalls.numbers().count(),
            crate::syscalls::DEFAULT_SYSCALLS.len()
        );
        let c = Config::try_parse_from(["periscope", "--protocols", "kafka"]).unwrap();
        assert!(
            c.protocols.is_on("kafka")
                && !c.protocols.is_on("http")
                && !c.protocols.is_on("postgres")
        );
        assert_eq!(c.syscalls_max_series, 4096);
        assert_eq!(c.syscalls_entry, crate::capture::SyscallEntry::Auto);
        let none = Config::try_parse_from(["periscope", "--syscalls", "none"]).unwrap();
        assert!(none.syscalls.is_empty());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Config::try_parse_from(["periscope", "--ringbuf-bytes", "5000"]).unwrap_err();
        assert!(err.to_string().contains("--ringbuf-bytes"), "{err}");
        let err = Config::try_parse_from(["periscope", "--capture-bytes", "9999"]).unwrap_err();
        assert!(err.to_string().contains("--capture-bytes"), "{err}");
        let err = Config::try_parse_from(["periscope", "--metrics-addr", "nope"]).unwrap_err();
        assert!(err.to_string().contains("--metrics-addr"), "{err}");
        let err = Config::try_parse_from(["periscope", "--protocols", "http,smtp"]).unwrap_err();
        assert!(err.to_string().contains("--protocols"), "{err}");
        let err = Config::try_parse_from(["periscope", "--series-grace", "5d"]).unwrap_err();
        assert!(err.to_string().contains("--series-grace"), "{err}");
    }

    #[test]
    fn otlp_tls_settings() {
        let c = Config::try_parse_from([
            "periscope",
            "--otlp-certificate=/ca.pem",
            "--otlp-client-certificate=/c.pem",
            "--otlp-traces-client-certificate=/t.pem",
            "--otlp-client-key=/c.key",
            "--otlp-insecure",
            "--otlp-traces-insecure=false",
        ])
        .unwrap();
        let tls = c.otlp_tls();
        let (setting, path) = tls.certificate.expect("set");
        assert!(setting.starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE"));
        assert_eq!(path, PathBuf::from("/ca.pem"));
        let (setting, path) = tls.client_certificate.expect("set");
        assert!(setting.starts_with("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"));
        assert_eq!(path, PathBuf::from("/t.pem"));
        assert_eq!(tls.client_key.expect("set").1, PathBuf::from("/c.key"));
        assert!(!tls.insecure, "the traces setting wins");
        let c = Config::try_parse_from(["periscope", "--otlp-insecure"]).unwrap();
        assert!(c.otlp_tls().insecure);
        assert!(
            !Config::try_parse_from(["periscope"])
                .unwrap()
                .otlp_tls()
                .insecure
        );
        // Each flag reads the OpenTelemetry variable of the same name.
        let command = <Config as clap::CommandFactory>::command();
        for (flag, var) in [
            ("otlp-certificate", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
            (
                "otlp-traces-certificate",
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            ),
            (
                "otlp-client-certificate",
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            ),
            (
                "otlp-traces-client-certificate",
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            ),
            ("otlp-client-key", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            (
                "otlp-traces-client-key",
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            ),
            ("otlp-insecure", "OTEL_EXPORTER_OTLP_INSECURE"),
            ("otlp-traces-insecure", "OTEL_EXPORTER_OTLP_TRACES_INSECURE"),
            ("otlp-protocol", "OTEL_EXPORTER_OTLP_PROTOCOL"),
            ("otlp-traces-protocol", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            ("otlp-headers", "OTEL_EXPORTER_OTLP_HEADERS"),
            ("otlp-traces-headers", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
            ("otlp-timeout", "OTEL_EXPORTER_OTLP_TIMEOUT"),
            ("otlp-traces-timeout", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
            ("resource-attributes", "OTEL_RESOURCE_ATTRIBUTES"),
            ("otlp-compression", "OTEL_EXPORTER_OTLP_COMPRESSION"),
            (
                "otlp-traces-compression",
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            ),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("--{flag}"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(var));
        }
    }

    #[test]
    fn batch_span_processor_settings_by_their_opentelemetry_names() {
        let c = Config::try_parse_from(["periscope"]).unwrap();
        assert_eq!(c.traces_queue(), 8192);
        assert_eq!(
            (
                c.traces_batch_size,
                c.traces_schedule_delay,
                c.traces_export_timeout
            ),
            (512, 1000, 30_000)
        );
        let command = <Config as clap::CommandFactory>::command();
        for (flag, var) in [
            ("bsp-max-queue-size", "OTEL_BSP_MAX_QUEUE_SIZE"),
            ("traces-queue-size", "PERISCOPE_TRACES_QUEUE_SIZE"),
            ("traces-batch-size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
            ("traces-schedule-delay", "OTEL_BSP_SCHEDULE_DELAY"),
            ("traces-export-timeout", "OTEL_BSP_EXPORT_TIMEOUT"),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("--{flag}"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(var));
        }
        let c = Config::try_parse_from(["periscope", "--bsp-max-queue-size=100"]).unwrap();
        assert_eq!(c.traces_queue(), 100);
        let c = Config::try_parse_from([
            "periscope",
            "--bsp-max-queue-size=100",
            "--traces-queue-size=7",
        ])
        .unwrap();
        assert_eq!(c.traces_queue(), 7);
        let err = Config::try_parse_from(["periscope", "--traces-batch-size=0"]).unwrap_err();
        assert!(err.to_string().contains("--traces-batch-size"), "{err}");
    }

    #[test]
    fn traces_specific_transport_settings_win() {
        use crate::export::otlp::Protocol;
        let c = Config::try_parse_from([
            "periscope",
            "--otlp-protocol=grpc",
            "--otlp-traces-protocol=http/protobuf",
            "--otlp-headers=a=1",
            "--otlp-traces-headers=b=2",
            "--otlp-timeout=500",
        ])
        .unwrap();
        assert_eq!(
            c.otlp_traces_transport(),
            OtlpTransport {
                protocol: Protocol::HttpProtobuf,
                headers: Some("b=2"),
                timeout_ms: Some(500),
                compression: None,
            }
        );
        let c = Config::try_parse_from([
            "periscope",
            "--otlp-traces-timeout=7",
            "--otlp-compression=gzip",
            "--otlp-traces-compression=none",
        ])
        .unwrap();
        assert_eq!(
            c.otlp_traces_transport(),
            OtlpTransport {
                protocol: Protocol::Grpc,
                headers: None,
                timeout_ms: Some(7),
                compression: Some("none"),
            }
        );
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("-1s").is_err());
        let err = Config::try_parse_from(["periscope", "--syscalls", "read,nope"]).unwrap_err();
        assert!(err.to_string().contains("--syscalls"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        let err = Config::try_parse_from(["periscope", "--syscalls-max-series", "0"]).unwrap_err();
        assert!(err.to_string().contains("--syscalls-max-series"), "{err}");
    }
}
