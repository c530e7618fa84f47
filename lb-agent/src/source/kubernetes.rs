//! The Kubernetes source: kube-runtime watchers with reflector stores for Services,
//! EndpointSlices and this node's Node, as kube-proxy's informers.
//!
//! - Selectors as kube-proxy's: Services labelled `service.kubernetes.io/service-proxy-name`
//!   and slices labelled `service.kubernetes.io/headless` are never even listed; the Node watch
//!   is restricted to `metadata.name=<this node>`.
//! - A store changes only at `InitDone` of a (re)list (the reflector swaps the new list in
//!   atomically) and on watch events, so a relist after `410 Gone` that finds the same objects
//!   yields the same snapshot, and the sync writes nothing.
//! - Watch errors (API server down, dropped connections) are retried with kube-runtime's default
//!   backoff; the maps keep their last good state meanwhile.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{info, warn};

use crate::model::{Located, Objects};

/// The three reflector stores and the tasks that feed them (aborted on drop).
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    tasks: Vec<JoinHandle<()>>,
    /// When each watch last failed (see `WatchErrors`).
    errors: Arc<WatchErrors>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// When each watch last failed, cleared when it lists or delivers an event again. A watch that
/// resumes quietly (kube-runtime yields nothing when a re-watch succeeds) is taken as recovered
/// once `RECONNECTING_FOR` has passed without another error: a watch that keeps failing errs
/// again within its backoff (at most 30 s with the default backoff).
#[derive(Default)]
struct WatchErrors(Mutex<[Option<Instant>; 3]>);

const RECONNECTING_FOR: Duration = Duration::from_secs(60);

impl WatchErrors {
    fn set(&self, watch: usize, failed: bool) {
        let mut errors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        errors[watch] = failed.then(Instant::now);
    }

    fn failing(&self, watch: usize) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)[watch].is_some()
    }

    fn reconnecting(&self) -> bool {
        let errors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        errors.iter().flatten().any(|at| at.elapsed() < RECONNECTING_FOR)
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    changed: Arc<Notify>,
    errors: (Arc<WatchErrors>, usize),
    restarts: Counter,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let (errors, watch) = errors;
        while let Some(event) = stream.next().await {
            match event {
                // The store is replaced at InitDone; nothing to sync before that.
                Ok(Event::Init | Event::InitApply(_)) => {}
                Ok(Event::InitDone) => {
                    info!(kind, "listed");
                    errors.set(watch, false);
                    changed.notify_one();
                }
                Ok(Event::Apply(_) | Event::Delete(_)) => {
                    if errors.failing(watch) {
                        info!(kind, "watch resumed");
                        errors.set(watch, false);
                    }
                    changed.notify_one();
                }
                Err(e) => {
                    // Every error is followed by a retry (a new watch, or a relist after
                    // 410 Gone) once the backoff allows.
                    restarts.inc();
                    errors.set(watch, true);
                    warn!(kind, error = %e, "watch failed; retrying with backoff, programmed maps are kept");
                }
            }
        }
    });
    (reader, task)
}

impl KubeSource {
    /// Starts the watches; `changed` is notified whenever a store changes, and the counter
    /// `restarts(resource)` (`services`, `endpointslices`, `nodes`) counts each watch error,
    /// every one of which is followed by a retry.
    pub fn start(
        client: &Client,
        node_name: &str,
        changed: &Arc<Notify>,
        restarts: &dyn Fn(&'static str) -> Counter,
    ) -> Self {
        let errors = Arc::new(WatchErrors::default());
        let (services, t1) = spawn_watch(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels("!service.kubernetes.io/service-proxy-name"),
            "Service",
            Arc::clone(changed),
            (Arc::clone(&errors), 0),
            restarts("services"),
        );
        let (slices, t2) = spawn_watch(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels("!service.kubernetes.io/headless"),
            "EndpointSlice",
            Arc::clone(changed),
            (Arc::clone(&errors), 1),
            restarts("endpointslices"),
        );
        let (nodes, t3) = spawn_watch(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            "Node",
            Arc::clone(changed),
            (Arc::clone(&errors), 2),
            restarts("nodes"),
        );
        Self { services, slices, nodes, tasks: vec![t1, t2, t3], errors }
    }

    /// Waits until all three stores have their first complete list (kube-proxy's
    /// `isInitialized`): syncing a partial view would remove what is programmed.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        Ok(())
    }

    /// Whether a watch is failing now (the API server is unreachable or refuses us).
    pub fn reconnecting(&self) -> bool {
        self.errors.reconnecting()
    }

    /// The objects in the stores now: the stores' own shared copies, none copied.
    pub fn snapshot(&self) -> Objects {
        fn located<K>(store: &Store<K>) -> Vec<Located<K>>
        where
            K: Clone + Resource<DynamicType = ()> + 'static,
        {
            store.state().into_iter().map(|object| Located { origin: String::new(), object }).collect()
        }
        Objects {
            services: located(&self.services),
            slices: located(&self.slices),
            nodes: located(&self.nodes),
        }
    }
}

/// Sent with every request, so API server audit logs name the agent.
const USER_AGENT: &str = concat!("lb-agent/", env!("CARGO_PKG_VERSION"));

/// The client configuration from `--kubeconfig`, else `KUBECONFIG`/`~/.kube/config`, else the
/// in-cluster config, with our `User-Agent`.
pub async fn config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    use anyhow::Context as _;
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("using the kubeconfig")?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not running in a cluster")?,
    };
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)));
    Ok(config)
}

/// A client from `config`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    Client::try_from(config(kubeconfig).await?).context("building the Kubernetes client")
}
