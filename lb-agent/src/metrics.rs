//! Prometheus metrics on `--metrics-addr` (kube-proxy's :10249), in the OpenMetrics text format
//! (`prometheus-client`), next to kube-proxy's `/livez`, `/healthz` and `/readyz`.
//!
//! kube-proxy's two SLI histograms, under their kube-proxy names, so its dashboards and SLO
//! tooling read this agent as they read kube-proxy: `kubeproxy_sync_proxy_rules_duration_seconds`
//! (every sync) and `kubeproxy_network_programming_duration_seconds` (from an EndpointSlice's
//! `endpoints.kubernetes.io/last-change-trigger-time` to the sync that wrote it), with
//! kube-proxy's current buckets.
//!
//! And two kinds of metric of our own, all prefixed `lb_`:
//! - what the agent does, recorded by the run loop into `Metrics` as it happens: syncs and their
//!   duration, what is programmed, errors, Kubernetes watch restarts;
//! - what the kernel counted, read from the pinned maps at scrape time by `kernel::KernelCollector`
//!   (datapath counters, per-Service connection verdicts, LRU map fill), on a blocking thread, so
//!   a scrape never stalls the sync loop.
mod kernel;
#[cfg(test)]
mod tests;

use std::{path::Path, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use lb_common::map_names;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tracing::warn;

use crate::source::store::ChangeCounts;

use crate::{
    health::Health,
    kernel::maps::{Capacity, MapsError},
    layout::state::{FrontendKey, MapState},
};

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a sync ended (`lb_syncs_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncResult {
    /// The maps now equal the source.
    Applied,
    /// The source could not be read; what is programmed was kept.
    SourceInvalid,
    /// A map refused a write (or the target did not fit); retried later.
    MapsFailed,
}

impl SyncResult {
    const ALL: [Self; 3] = [Self::Applied, Self::SourceInvalid, Self::MapsFailed];

    fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::SourceInvalid => "source_invalid",
            Self::MapsFailed => "maps_failed",
        }
    }
}

/// What went wrong (`lb_errors_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The source could not be read or parsed.
    SourceInvalid,
    /// A map write failed during a sync.
    MapWrite,
    /// The target did not fit a map's capacity (`MapsError::Full`, `MaglevFull`).
    MapFull,
    /// A pinned map could not be opened or read (by a sync or a scrape).
    MapRead,
    /// An object (or part of one) left out by translation, counted at every sync that translates
    /// it (every object at a full sync, the changed Services' at an incremental one).
    ObjectSkipped,
    /// The socket hooks' cookie maps were full when backends left: connected UDP sockets to them
    /// were found by destination address instead of by cookie.
    UdpSocketsUntracked,
    /// Finding or destroying connected UDP sockets to removed backends failed.
    SockDestroy,
    /// The API server refused a list or watch with 403 (for a few seconds after it starts).
    ApiForbidden,
    /// 403s lasted long enough to be taken for missing RBAC.
    RbacMissing,
}

impl ErrorKind {
    const ALL: [Self; 9] = [
        Self::SourceInvalid,
        Self::MapWrite,
        Self::MapFull,
        Self::MapRead,
        Self::ObjectSkipped,
        Self::UdpSocketsUntracked,
        Self::SockDestroy,
        Self::ApiForbidden,
        Self::RbacMissing,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::SourceInvalid => "source_invalid",
            Self::MapWrite => "map_write",
            Self::MapFull => "map_full",
            Self::MapRead => "map_read",
            Self::ObjectSkipped => "object_skipped",
            Self::UdpSocketsUntracked => "udp_sockets_untracked",
            Self::SockDestroy => "sock_destroy",
            Self::ApiForbidden => "api_forbidden",
            Self::RbacMissing => "rbac_missing",
        }
    }

    /// The kind of a failed sync's map error.
    pub fn of(e: &MapsError) -> Self {
        match e {
            MapsError::Open { .. } | MapsError::Read { .. } => Self::MapRead,
            MapsError::Write { .. } => Self::MapWrite,
            MapsError::Full { .. } | MapsError::MaglevFull { .. } => Self::MapFull,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

/// kube-proxy's `sync_proxy_rules_duration_seconds` buckets: `ExponentialBuckets(0.001, 2, 15)`,
/// 1 ms to 16.384 s.
fn sync_proxy_rules_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// kube-proxy's `network_programming_duration_seconds` buckets (since Kubernetes 1.15; before,
/// `ExponentialBuckets(0.001, 2, 20)`): 0.25 s and 0.5 s, every second to 59 s, every 5 s to
/// 115 s, every 30 s to 5 min.
fn network_programming_buckets() -> impl Iterator<Item = f64> {
    let linear = |start: f64, width: f64, count: u32| (0..count).map(move |i| start + width * f64::from(i));
    linear(0.25, 0.25, 2)
        .chain(linear(1.0, 1.0, 59))
        .chain(linear(60.0, 5.0, 12))
        .chain(linear(120.0, 30.0, 7))
}

/// The agent's metrics: the run loop records into it, `/metrics` renders it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// kube-proxy's other sync metrics, same names, types and labels.
    kube_proxy: KubeProxyMetrics,
    sync_duration: Histogram,
    /// kube-proxy's `kubeproxy_sync_proxy_rules_duration_seconds`.
    sync_proxy_rules_duration: Histogram,
    /// kube-proxy's `kubeproxy_network_programming_duration_seconds`.
    network_programming_duration: Histogram,
    syncs: Family<ResultLabel, Counter>,
    programmed_services: Gauge,
    programmed_frontends: Gauge,
    programmed_backends: Gauge,
    /// `--interfaces` where XDP hands every packet to TC (veths, without `--xdp-on-veth`).
    xdp_to_tc: Gauge,
    watch_restarts: Family<ResourceLabel, Counter>,
    errors: Family<KindLabel, Counter>,
    udp_sockets_destroyed: Counter,
    kernel: Arc<kernel::KernelCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let sync_proxy_rules_duration = Histogram::new(sync_proxy_rules_buckets());
        root.register_with_unit(
            "kubeproxy_sync_proxy_rules_duration",
            "SyncProxyRules latency in seconds (kube-proxy's name: one sync of the maps)",
            Unit::Seconds,
            sync_proxy_rules_duration.clone(),
        );
        let network_programming_duration = Histogram::new(network_programming_buckets());
        root.register_with_unit(
            "kubeproxy_network_programming_duration",
            "In Cluster Network Programming Latency in seconds (kube-proxy's name: from an \
             EndpointSlice's last-change-trigger-time to the sync that wrote the change)",
            Unit::Seconds,
            network_programming_duration.clone(),
        );
        let kube_proxy = KubeProxyMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("lb");
        // kube-proxy's sync_proxy_rules_duration_seconds buckets: 1 ms to 16 s.
        let sync_duration = Histogram::new(sync_proxy_rules_buckets());
        registry.register_with_unit(
            "sync_duration",
            "Time one sync took: source snapshot, translation, layout, diff and map writes",
            Unit::Seconds,
            sync_duration.clone(),
        );
        let syncs = Family::<ResultLabel, Counter>::default();
        registry.register("syncs", "Syncs by result", syncs.clone());
        let programmed_services = Gauge::default();
        registry.register(
            "programmed_services",
            "Backend groups (Service port, family, scope) in the maps after the last applied sync",
            programmed_services.clone(),
        );
        let programmed_frontends = Gauge::default();
        registry.register(
            "programmed_frontends",
            "Frontends (address, port, protocol) in the maps after the last applied sync",
            programmed_frontends.clone(),
        );
        let programmed_backends = Gauge::default();
        registry.register(
            "programmed_backends",
            "Backends in the maps after the last applied sync",
            programmed_backends.clone(),
        );
        let xdp_to_tc = Gauge::default();
        registry.register(
            "xdp_to_tc_interfaces",
            "Interfaces where XDP hands every packet to TC: veths, whose frames may carry unfinished \
             checksums (see --xdp-on-veth)",
            xdp_to_tc.clone(),
        );
        let watch_restarts = Family::<ResourceLabel, Counter>::default();
        registry.register(
            "watch_restarts",
            "Kubernetes watch errors, each followed by a retry with backoff (a relist after 410 Gone)",
            watch_restarts.clone(),
        );
        let errors = Family::<KindLabel, Counter>::default();
        registry.register("errors", "Errors by kind", errors.clone());
        let udp_sockets_destroyed = Counter::default();
        registry.register(
            "udp_sockets_destroyed",
            "Connected UDP sockets destroyed because their backend left the Service (they reconnect)",
            udp_sockets_destroyed.clone(),
        );
        let kernel = Arc::new(kernel::KernelCollector::new(
            errors.get_or_create(&KindLabel { kind: ErrorKind::MapRead.label() }).clone(),
        ));
        registry.register_collector(Box::new(Arc::clone(&kernel)));
        for result in SyncResult::ALL {
            let _ = syncs.get_or_create(&ResultLabel { result: result.label() });
        }
        for kind in ErrorKind::ALL {
            let _ = errors.get_or_create(&KindLabel { kind: kind.label() });
        }
        Self {
            registry: root,
            kube_proxy,
            sync_duration,
            sync_proxy_rules_duration,
            network_programming_duration,
            syncs,
            programmed_services,
            programmed_frontends,
            programmed_backends,
            xdp_to_tc,
            watch_restarts,
            errors,
            udp_sockets_destroyed,
            kernel,
        }
    }

    /// One sync ended with `result` after `elapsed`.
    pub fn record_sync(&self, result: SyncResult, elapsed: Duration) {
        self.sync_duration.observe(elapsed.as_secs_f64());
        self.sync_proxy_rules_duration.observe(elapsed.as_secs_f64());
        self.syncs.get_or_create(&ResultLabel { result: result.label() }).inc();
    }

    /// A change an EndpointSlice's `last-change-trigger-time` stamped is in the maps, `latency`
    /// after that time (kube-proxy observes each trigger time of the slices a sync wrote).
    pub fn record_network_programming(&self, latency: Duration) {
        self.network_programming_duration.observe(latency.as_secs_f64());
    }

    /// A change arrived and a sync is queued (`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`),
    /// with the source's change counts now.
    pub fn record_queued(&self, changes: ChangeCounts) {
        self.kube_proxy.last_queued.set(unix_seconds());
        self.record_changes(changes);
    }

    /// The source's change counts (`kubeproxy_sync_proxy_rules_{service,endpoint}_changes_*`).
    pub fn record_changes(&self, changes: ChangeCounts) {
        let k = &self.kube_proxy;
        k.service_changes.inc_by(changes.service_total.saturating_sub(k.service_changes.get()));
        k.endpoint_changes.inc_by(changes.endpoint_total.saturating_sub(k.endpoint_changes.get()));
        k.service_pending.set(i64::try_from(changes.service_pending).unwrap_or(i64::MAX));
        k.endpoint_pending.set(i64::try_from(changes.endpoint_pending).unwrap_or(i64::MAX));
    }

    /// A sync applied: its time (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`) and the
    /// Service ports whose Local policy finds no local endpoint, by `Scope`
    /// (`kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy}`).
    pub fn record_applied(&self, no_local_internal: usize, no_local_external: usize) {
        let k = &self.kube_proxy;
        k.last_synced.set(unix_seconds());
        for (policy, n) in [("internal", no_local_internal), ("external", no_local_external)] {
            k.no_local_endpoints
                .get_or_create(&PolicyLabel { traffic_policy: policy })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// `n` connected UDP sockets destroyed.
    pub fn record_udp_sockets_destroyed(&self, n: u64) {
        self.udp_sockets_destroyed.inc_by(n);
    }

    /// `n` errors of `kind`.
    pub fn record_errors(&self, kind: ErrorKind, n: u64) {
        self.errors.get_or_create(&KindLabel { kind: kind.label() }).inc_by(n);
    }

    /// What the maps hold after an applied sync, and their capacity.
    pub fn record_programmed(&self, state: &MapState, capacity: Capacity) {
        let gauge = |g: &Gauge, n: usize| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        gauge(&self.programmed_services, state.services.len());
        gauge(&self.programmed_frontends, state.frontends.len());
        gauge(&self.programmed_backends, state.backends.len());
        // IPv4 keys sort before IPv6 ones: count the (usually fewer) IPv6 keys, from the least.
        let least_v6 = FrontendKey::V6(lb_common::Frontend6Key { addr: [0; 4], port: 0, proto: 0, pad: 0 });
        let v4 = state.frontends.len() - state.frontends.range(least_v6..).count();
        let fill = |map, entries: usize, capacity: u32| kernel::MapFill {
            map,
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
            capacity: u64::from(capacity),
        };
        self.kernel.set_programmed(vec![
            fill(map_names::FRONTENDS_V4, v4, capacity.frontends),
            fill(map_names::FRONTENDS_V6, state.frontends.len() - v4, capacity.frontends),
            fill(map_names::SLOTS, state.slots.len(), capacity.slots),
            fill(map_names::BACKENDS, state.backends.len(), capacity.backends),
            fill(map_names::SOURCE_RANGES, state.source_ranges.len(), capacity.source_ranges),
            fill(map_names::SERVICES, state.services.len(), capacity.services),
            fill(map_names::SERVICE_STATS, state.services.len(), capacity.services),
        ]);
    }

    /// The counter of watch restarts of `resource` (`services`, `endpointslices`, `nodes`),
    /// for the Kubernetes source to count into; its series exists (at 0) from now on.
    /// How many `--interfaces` XDP hands every packet of to TC.
    pub fn set_xdp_to_tc(&self, interfaces: usize) {
        self.xdp_to_tc.set(i64::try_from(interfaces).unwrap_or(i64::MAX));
    }

    /// The counters of the Kubernetes watches' 403s (`watch_retry`).
    pub fn watch_retry_counters(&self) -> crate::source::watch_retry::Counters {
        let counter = |kind: ErrorKind| self.errors.get_or_create(&KindLabel { kind: kind.label() }).clone();
        crate::source::watch_retry::Counters {
            forbidden: counter(ErrorKind::ApiForbidden),
            rbac_missing: counter(ErrorKind::RbacMissing),
        }
    }

    pub fn watch_restarts(&self, resource: &'static str) -> Counter {
        self.watch_restarts.get_or_create(&ResourceLabel { resource }).clone()
    }

    /// The pinned maps are under `bpffs` from now on: scrapes read the kernel's counters there.
    pub fn set_bpffs(&self, bpffs: &Path) {
        self.kernel.set_bpffs(bpffs);
    }

    /// The OpenMetrics text of every metric (reads the pinned maps: call off the async runtime).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `GET /metrics`: rendered on a blocking thread, since it reads the kernel's maps.
async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(Ok(text)) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot render the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(e) => {
            warn!(error = %e, "the metrics scrape failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `/metrics` and the health endpoints on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    extra: Router,
) -> std::io::Result<()> {
    let app = crate::health::probes::router(health)
        .merge(Router::new().route("/metrics", get(scrape)).with_state(metrics))
        .merge(extra);
    axum::serve(listener, app).await
}

/// A gauge of seconds (a timestamp).
type Seconds = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    traffic_policy: &'static str,
}

/// kube-proxy's sync metrics besides its two histograms (kube-proxy's own names,
/// types and labels), so dashboards and alerts built on kube-proxy read this agent as they read it.
#[derive(Debug)]
struct KubeProxyMetrics {
    last_synced: Seconds,
    last_queued: Seconds,
    endpoint_changes: Counter,
    endpoint_pending: Gauge,
    service_changes: Counter,
    service_pending: Gauge,
    no_local_endpoints: Family<PolicyLabel, Gauge>,
}

impl KubeProxyMetrics {
    fn register(root: &mut Registry) -> Self {
        let this = Self {
            last_synced: Seconds::default(),
            last_queued: Seconds::default(),
            endpoint_changes: Counter::default(),
            endpoint_pending: Gauge::default(),
            service_changes: Counter::default(),
            service_pending: Gauge::default(),
            no_local_endpoints: Family::default(),
        };
        root.register_with_unit(
            "kubeproxy_sync_proxy_rules_last_timestamp",
            "The last time proxy rules were successfully synced",
            Unit::Seconds,
            this.last_synced.clone(),
        );
        root.register_with_unit(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp",
            "The last time a sync of proxy rules was queued",
            Unit::Seconds,
            this.last_queued.clone(),
        );
        root.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            this.endpoint_changes.clone(),
        );
        root.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            this.endpoint_pending.clone(),
        );
        root.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            this.service_changes.clone(),
        );
        root.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            this.service_pending.clone(),
        );
        root.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            this.no_local_endpoints.clone(),
        );
        this
    }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
