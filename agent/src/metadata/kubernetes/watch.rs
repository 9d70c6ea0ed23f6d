//! The I/O side: a kube client, one task per watch (each with its own backoff), and the
//! model task that folds their messages into the [`Attribution`].

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::attribution::Attribution;
use super::convert::{key_of, owner_record, Key, Lenient};
use super::model::{Failure, Model, Msg, Record, Watch};
use super::{KubeEvent, KubeSettings, WatchTiming};

/// Messages buffered between the watch tasks and the model task. Enough to absorb a list
/// page; a full channel makes the watch tasks wait (and so read the API more slowly).
const CHANNEL: usize = 1024;
/// Messages folded into the model before one publication.
const BATCH: usize = 512;

/// Keeps `attribution` in step with the API server, forever, with [`WatchTiming::default`].
/// See [`run_with_timing`].
pub async fn run(
    settings: KubeSettings,
    attribution: Attribution,
    events: impl Fn(KubeEvent) + Send + Sync + 'static,
) -> ! {
    run_with_timing(settings, WatchTiming::default(), attribution, events).await
}

/// Keeps `attribution` in step with the API server, forever: connection failures, refusals,
/// stalls and malformed objects are reported through `events` and retried with capped
/// exponential backoff; nothing here returns or panics. Dropping the future stops every
/// watch.
pub async fn run_with_timing(
    settings: KubeSettings,
    timing: WatchTiming,
    attribution: Attribution,
    events: impl Fn(KubeEvent) + Send + Sync + 'static,
) -> ! {
    let mut model = Model::new();
    let mut backoff = Backoff::new(&timing);
    let client = loop {
        match make_client(&settings, &timing) {
            Ok(client) => break client,
            Err(error) => {
                model.client_failed(error);
                model.publish(&attribution, &events);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    model.client_ready();

    let (tx, mut rx) = mpsc::channel(CHANNEL);
    // Owned by this future: dropping it aborts the watch tasks.
    let mut tasks = JoinSet::new();
    spawn_watches(&mut tasks, &client, &settings, &timing, &tx);
    drop(tx);

    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // The watch tasks never end (each one loops forever and survives panics), so the
        // channel never closes; should it, wait rather than spin.
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            std::future::pending::<()>().await;
        }
        for msg in batch.drain(..) {
            model.handle(msg, &events);
        }
        model.publish(&attribution, &events);
    }
}

fn make_client(settings: &KubeSettings, timing: &WatchTiming) -> Result<Client, String> {
    let mut config = match &settings.api_url {
        Some(url) => {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("Kubernetes API URL {url:?} is not a valid URL: {e}"))?;
            if uri.scheme().is_none() || uri.host().is_none() {
                return Err(format!(
                    "Kubernetes API URL {url:?} needs a scheme and a host, e.g. https://10.0.0.1:6443"
                ));
            }
            kube::Config::new(uri)
        }
        None => kube::Config::incluster().map_err(|e| {
            format!(
                "no in-cluster Kubernetes configuration (KUBERNETES_SERVICE_HOST and \
                 KUBERNETES_SERVICE_PORT, and the service account under \
                 /var/run/secrets/kubernetes.io/serviceaccount): {}",
                error_chain(&e)
            )
        })?,
    };
    config.connect_timeout = Some(timing.connect_timeout);
    config.read_timeout = Some(timing.read_timeout);
    // Count the read timeout from each request, not from when its pooled connection went
    // idle (which would make the first read on a reused connection time out early).
    config.reset_reader_on_write = true;
    Client::try_from(config)
        .map_err(|e| format!("cannot build a Kubernetes client: {}", error_chain(&e)))
}

fn spawn_watches(
    tasks: &mut JoinSet<()>,
    client: &Client,
    settings: &KubeSettings,
    timing: &WatchTiming,
    tx: &mpsc::Sender<Msg>,
) {
    let timeout_secs = u32::try_from(timing.watch_timeout.as_secs())
        .unwrap_or(u32::MAX)
        .max(1);
    let config = watcher::Config::default().timeout(timeout_secs);
    let node_config = config
        .clone()
        .fields(&format!("spec.nodeName={}", settings.node_name));
    let pod = || lenient_record(|p| Record::Pod(Box::new(p)));
    let pods = Api::<Lenient<Pod>>::all(client.clone());
    spawn_watch(
        tasks,
        Watch::NodePods,
        pods.clone(),
        node_config,
        pod(),
        tx,
        timing,
    );
    spawn_watch(tasks, Watch::Pods, pods, config.clone(), pod(), tx, timing);
    let services = Api::<Lenient<Service>>::all(client.clone());
    let service = lenient_record(Record::Service);
    spawn_watch(
        tasks,
        Watch::Services,
        services,
        config.clone(),
        service,
        tx,
        timing,
    );
    // ReplicaSets and Jobs: only their owner references matter, so only metadata is
    // fetched (`Api<PartialObjectMeta<_>>` asks for PartialObjectMetadata), not specs and
    // statuses.
    let replica_sets = Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone());
    let owner = |o: PartialObjectMeta<ReplicaSet>| {
        (key_of(&o.metadata), Ok(Record::Owner(owner_record(&o))))
    };
    spawn_watch(
        tasks,
        Watch::ReplicaSets,
        replica_sets,
        config.clone(),
        owner,
        tx,
        timing,
    );
    let jobs = Api::<PartialObjectMeta<Job>>::all(client.clone());
    let owner =
        |o: PartialObjectMeta<Job>| (key_of(&o.metadata), Ok(Record::Owner(owner_record(&o))));
    spawn_watch(tasks, Watch::Jobs, jobs, config, owner, tx, timing);
}

/// `Lenient<K>` → its key and record (or the decode error).
fn lenient_record<K: super::convert::Extract>(
    wrap: impl Fn(K::Record) -> Record + Send + Sync + 'static,
) -> impl Fn(Lenient<K>) -> (Key, Result<Record, String>) + Send + Sync + 'static {
    move |o| {
        let key = o.key();
        (key, o.decoded.map(&wrap))
    }
}

type WatchStream<T> = BoxStream<'static, Result<Event<T>, watcher::Error>>;
type Probe = BoxFuture<'static, Result<(), String>>;

/// Runs one watch of `api` in its own task, restarting it if it ever panics.
fn spawn_watch<K>(
    tasks: &mut JoinSet<()>,
    watch: Watch,
    api: Api<K>,
    config: watcher::Config,
    to_record: impl Fn(K) -> (Key, Result<Record, String>) + Send + Sync + 'static,
    tx: &mpsc::Sender<Msg>,
    timing: &WatchTiming,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    // The probe asks for one object of the same selection: it proves the server answers
    // this watch's requests (and that RBAC allows them), cheaply.
    let probe_params = ListParams {
        label_selector: config.label_selector.clone(),
        field_selector: config.field_selector.clone(),
        limit: Some(1),
        ..ListParams::default()
    };
    let probe_api = api.clone();
    let probe = move || -> Probe {
        let api = probe_api.clone();
        let params = probe_params.clone();
        async move {
            api.list(&params)
                .await
                .map(|_| ())
                .map_err(|e| error_chain(&e))
        }
        .boxed()
    };
    let make_stream = move || -> WatchStream<K> { watcher(api.clone(), config.clone()).boxed() };
    let tx = tx.clone();
    let timing = timing.clone();
    tasks.spawn(async move {
        let mut backoff = Backoff::new(&timing);
        loop {
            let run = watch_loop(watch, &make_stream, &probe, &to_record, &tx, &timing);
            if AssertUnwindSafe(run).catch_unwind().await.is_ok() {
                return; // the model task is gone: nothing left to feed
            }
            let error = format!("the {} watch panicked; restarting it", watch.describe());
            let failure = Failure::Object(error);
            if tx.send(Msg::Failed { watch, failure }).await.is_err() {
                return;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    });
}

/// Feeds one watch's events to the model until the model goes away.
async fn watch_loop<T>(
    watch: Watch,
    make_stream: &(impl Fn() -> WatchStream<T> + Send + Sync),
    probe: &(impl Fn() -> Probe + Send + Sync),
    to_record: &(impl Fn(T) -> (Key, Result<Record, String>) + Send + Sync),
    tx: &mpsc::Sender<Msg>,
    timing: &WatchTiming,
) {
    let mut backoff = Backoff::new(timing);
    loop {
        let mut stream = make_stream();
        while let Some(item) = stream.next().await {
            let msgs = match item {
                Ok(Event::Init) => vec![Msg::Init(watch)],
                Ok(Event::InitApply(object) | Event::Apply(object)) => {
                    backoff.reset();
                    let (key, record) = to_record(object);
                    match record {
                        Ok(record) => vec![Msg::Apply {
                            watch,
                            key,
                            record: Some(record),
                        }],
                        Err(error) => vec![
                            Msg::Failed {
                                watch,
                                failure: Failure::Object(error),
                            },
                            // Still seen: a relist keeps its last good state.
                            Msg::Apply {
                                watch,
                                key,
                                record: None,
                            },
                        ],
                    }
                }
                Ok(Event::Delete(object)) => {
                    backoff.reset();
                    let (key, _) = to_record(object);
                    vec![Msg::Delete { watch, key }]
                }
                Ok(Event::InitDone) => {
                    backoff.reset();
                    vec![Msg::InitDone(watch)]
                }
                Err(error) => {
                    let outcome = classify(&error);
                    log::debug!("kubernetes: {} watch: {outcome:?}", watch.describe());
                    let connection_lost = matches!(outcome.failure, Some(Failure::Connection(_)));
                    if let Some(failure) = outcome.failure {
                        if tx.send(Msg::Failed { watch, failure }).await.is_err() {
                            return;
                        }
                    }
                    if outcome.relist {
                        break;
                    }
                    if connection_lost {
                        // Back off, probing, until the server answers again; then the watcher
                        // retries (resuming, or relisting if it must).
                        loop {
                            tokio::time::sleep(backoff.next_delay()).await;
                            let msg = match probe().await {
                                Ok(()) => Msg::Reachable(watch),
                                Err(error) => Msg::Failed {
                                    watch,
                                    failure: Failure::Connection(error),
                                },
                            };
                            let reachable = matches!(msg, Msg::Reachable(_));
                            if tx.send(msg).await.is_err() {
                                return;
                            }
                            if reachable {
                                break;
                            }
                        }
                    } else if outcome.pause {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    continue;
                }
            };
            for msg in msgs {
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        }
        // Only a relist request gets here (kube's watcher stream itself never ends): start
        // over with a fresh watcher, which lists first.
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// What to do about a watcher error.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// What to report (`None`: routine, e.g. a 410 that only means "relist").
    failure: Option<Failure>,
    /// Restart the watcher from a fresh list.
    relist: bool,
    /// Wait (backoff) before the next attempt.
    pause: bool,
}

fn classify(error: &watcher::Error) -> Outcome {
    use kube::Error as K;
    use watcher::Error as W;
    let report = |failure| Outcome {
        failure: Some(failure),
        relist: false,
        pause: true,
    };
    let client_error = match error {
        // The watcher relists by itself after a 410 ERROR event.
        W::WatchError(status) if status.code == 410 => {
            return Outcome {
                failure: None,
                relist: false,
                pause: false,
            }
        }
        W::WatchError(status) => {
            return report(Failure::Connection(format!(
                "the API server ended the watch with an error: {} (HTTP {})",
                status_text(status),
                status.code
            )))
        }
        W::NoResourceVersion => {
            return report(Failure::Object(
                "an object or list without metadata.resourceVersion".to_owned(),
            ))
        }
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => e,
    };
    match client_error {
        // Some servers answer a watch from an expired resourceVersion with HTTP 410 instead
        // of an ERROR event; kube would retry the same resourceVersion forever, so start
        // over with a list.
        K::Api(status) if status.code == 410 => Outcome {
            failure: None,
            relist: true,
            pause: false,
        },
        K::Api(status) => report(Failure::Connection(format!(
            "the API server refused: {} (HTTP {})",
            status_text(status),
            status.code
        ))),
        K::SerdeError(_) | K::LinesCodecMaxLineLengthExceeded => {
            let failure = Failure::Object(format!(
                "undecodable response: {}",
                error_chain(client_error)
            ));
            // One bad event in a running watch: the stream goes on, no reason to wait.
            let pause = !matches!(error, W::WatchFailed(_));
            Outcome {
                failure: Some(failure),
                relist: false,
                pause,
            }
        }
        _ => report(Failure::Connection(error_chain(client_error))),
    }
}

fn status_text(status: &kube::core::Status) -> String {
    let reason = if status.reason.is_empty() {
        "no reason given"
    } else {
        &status.reason
    };
    if status.message.is_empty() {
        reason.to_owned()
    } else {
        format!("{reason}: {}", status.message)
    }
}

/// An error and its sources, `: `-separated, skipping sources whose text the outer message
/// already contains (many errors repeat their source in their own message).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Capped exponential backoff with ±25 % jitter, so that agents on many nodes do not
/// retry in lock-step after an API server restart.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    fn new(timing: &WatchTiming) -> Backoff {
        let initial = timing.backoff_initial.max(Duration::from_millis(1));
        // Seeded from the process's random hash keys: no extra dependency, different per
        // process and per backoff.
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::time::Instant::now(),
        );
        Backoff {
            initial,
            max: timing.backoff_max.max(initial),
            next: initial,
            rng: seed | 1,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let factor = 0.75 + (self.rng % 1000) as f64 / 2000.0;
        base.mul_f64(factor).min(self.max)
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let timing = WatchTiming {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            ..WatchTiming::default()
        };
        let mut b = Backoff::new(&timing);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        let bases = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0];
        for (d, base) in delays.iter().zip(bases) {
            let d = d.as_secs_f64();
            assert!(
                d >= base * 0.75 - 1e-9 && d <= (base * 1.25).min(30.0),
                "{d} vs {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(625));
    }

    fn status(code: u16) -> Box<kube::core::Status> {
        let mut s = kube::core::Status::failure("too old resource version: 5 (10)", "Expired");
        s.code = code;
        Box::new(s)
    }

    #[test]
    fn errors_are_classified() {
        let gone_event = classify(&watcher::Error::WatchError(status(410)));
        assert_eq!(
            gone_event,
            Outcome {
                failure: None,
                relist: false,
                pause: false
            }
        );
        let gone_http = classify(&watcher::Error::WatchStartFailed(kube::Error::Api(status(
            410,
        ))));
        assert!(gone_http.relist && gone_http.failure.is_none());
        let forbidden = classify(&watcher::Error::InitialListFailed(kube::Error::Api(
            status(403),
        )));
        assert_eq!(
            forbidden.failure,
            Some(Failure::Connection(
                "the API server refused: Expired: too old resource version: 5 (10) (HTTP 403)"
                    .to_owned()
            ))
        );
        let bad_json = serde_json::from_str::<u8>("x").unwrap_err();
        let bad_event = classify(&watcher::Error::WatchFailed(kube::Error::SerdeError(
            bad_json,
        )));
        assert!(matches!(bad_event.failure, Some(Failure::Object(_))));
        assert!(!bad_event.pause && !bad_event.relist);
    }

    /// TLS is rustls with ring: building an https client must find its crypto provider
    /// (rustls panics when none, or two, are compiled in).
    #[tokio::test]
    async fn https_clients_build() {
        let settings = KubeSettings {
            api_url: Some("https://127.0.0.1:6443".to_owned()),
            node_name: "n".to_owned(),
        };
        assert!(make_client(&settings, &WatchTiming::default()).is_ok());
    }

    #[test]
    fn bad_api_urls_are_named() {
        let settings = |url: &str| KubeSettings {
            api_url: Some(url.to_owned()),
            node_name: "n".to_owned(),
        };
        let err = make_client(&settings("not a url"), &WatchTiming::default())
            .err()
            .unwrap();
        assert!(err.starts_with("Kubernetes API URL \"not a url\""), "{err}");
        let err = make_client(&settings("/just/a/path"), &WatchTiming::default())
            .err()
            .unwrap();
        assert!(err.contains("needs a scheme and a host"), "{err}");
    }
}
