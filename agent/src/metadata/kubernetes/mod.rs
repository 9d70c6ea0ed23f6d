//! Kubernetes attribution: which pod, container and workload a process belongs to, and
//! which workload or Service a remote IP is.
//!
//! [`run`] keeps five list/watch streams open against the API server (kube's `watcher`,
//! which lists, then watches from the list's resourceVersion, resumes after a dropped
//! connection and relists after `410 Gone`):
//!
//! | watch | what is kept |
//! |---|---|
//! | Pods with `spec.nodeName=<node>` | per pod: UID, names, controller, `app.kubernetes.io/name`, container ids → names |
//! | all Pods | per pod: IPs, controller, `app.kubernetes.io/name` (host-network and finished pods claim no IP) |
//! | ReplicaSets, metadata only | controller (→ Deployment) |
//! | Jobs, metadata only | controller (→ CronJob) |
//! | Services | ClusterIPs |
//!
//! Objects are reduced to these small records as they arrive; no full object is kept, and
//! pods and Services are decoded one at a time, so one malformed object costs only itself
//! (a [`KubeEvent::ObjectError`]). From the records the watch task derives [`PodInfo`] and
//! [`PeerInfo`] and publishes them in an [`Attribution`], which the pipeline reads.
//!
//! Liveness: each watch asks the server to end it after [`WatchTiming::watch_timeout`] and
//! gives up on a response that stays silent for [`WatchTiming::read_timeout`] (a stalled
//! connection), then resumes from its last resourceVersion. Failures are retried with
//! capped exponential backoff, per watch, forever.

mod attribution;
mod convert;
mod model;
mod watch;

use std::time::Duration;

pub use attribution::{Attribution, PeerInfo, PeerKind, PodInfo};
pub use watch::{run, run_with_timing};

/// Where the API server is and which node this agent runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSettings {
    /// The API server's base URL, e.g. `http://127.0.0.1:8001` (a `kubectl proxy`, or a
    /// test server). `None`: in-cluster, from `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT`, with the service account's token and CA from
    /// `/var/run/secrets/kubernetes.io/serviceaccount` (both re-read as they rotate).
    pub api_url: Option<String>,
    /// This node's name (`spec.nodeName` of the pods whose processes are attributed),
    /// usually from the downward API.
    pub node_name: String,
}

/// Timeouts and retry pacing of the watches. [`Default`] suits production; tests shorten
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchTiming {
    /// `timeoutSeconds` of each watch request: the server ends the watch after this long and
    /// it is resumed from its resourceVersion. Whole seconds, at least 1. Default 290 s
    /// (kube's, below the API server's own limit).
    pub watch_timeout: Duration,
    /// Longest silence accepted on a response (a list, or a watch between events and
    /// bookmarks) before the connection is taken for stalled and dropped. Default 90 s:
    /// API servers send a bookmark about every minute to watches that allow them, so a
    /// healthy watch is never silent that long, and a quiet one that is costs only a resume.
    pub read_timeout: Duration,
    /// TCP (and TLS) connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// First retry delay after a failure. Default 0.5 s.
    pub backoff_initial: Duration,
    /// Retry delays double up to this. Default 30 s.
    pub backoff_max: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        WatchTiming {
            watch_timeout: Duration::from_secs(290),
            read_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Notable changes of the watches' state, for logs and self-metrics. Each is reported once
/// per change, not per retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeEvent {
    /// Every watch reaches the API server (again).
    Connected,
    /// A watch cannot reach the API server (or is refused by it, e.g. RBAC); `error` names
    /// the watch and the cause. Reported when the state changes, not on every retry.
    Disconnected { error: String },
    /// Every watch has listed its objects once; reported once.
    Synced,
    /// An object of `kind` (`Pod`, `ReplicaSet`, `Job`, `Service`) could not be used; it is
    /// skipped (an object seen before keeps its last good state).
    ObjectError { kind: &'static str, error: String },
}
