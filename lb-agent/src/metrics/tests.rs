//! The rendered text parses as OpenMetrics (a strict little parser below) and holds the samples
//! the recorded syncs and a kernel snapshot imply.
use std::{collections::BTreeMap, time::Duration};

use lb_common::{ServiceName, service_scope, service_stats};
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, registry::Registry};

use super::{
    ErrorKind, Metrics, SyncResult,
    kernel::{KernelCollector, KernelSnapshot, MapFill, label_connections},
};
use crate::{
    kernel::maps::{Capacity, MemoryMaps},
    model::{NodeContext, Objects, translate},
    source::file::parse_into,
    sync::Syncer,
};

// The OpenMetrics parser is the kernel tests' (`lb_tests::metrics`): one strict parser checks
// both the rendered text here and live scrapes there.
use lb_tests::metrics::{Sample, parse};

/// The value of the sample `name` whose labels include `labels`; panics unless exactly one.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

// ---- what the agent records ---------------------------------------------------------------------

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:10:96::10"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.1], conditions: {ready: true}}
- {addresses: [10.244.1.2], conditions: {ready: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:10:244::1"], conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.53
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.3], conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default}
spec:
  type: ClusterIP
  clusterIP: not-an-address
  ports: [{port: 80, protocol: TCP}]
"#;

/// Two applied syncs of `CLUSTER` (4 backend groups, 4 frontends, 5 backends, one Service
/// skipped), one invalid source and one failed apply, recorded as the run loop does.
fn recorded() -> Metrics {
    let metrics = Metrics::new();
    let (mut objects, mut problems) = (Objects::default(), Vec::new());
    parse_into("cluster.yaml", CLUSTER, &mut objects, &mut problems).expect("parses");
    let (desired, more) = translate(&objects, &NodeContext::named("node-1"));
    problems.extend(more);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let capacity = Capacity { frontends: 100, slots: 200, backends: 300, source_ranges: 10, services: 50 };
    let mut syncer =
        Syncer::new(MemoryMaps { capacity: Some(capacity), ..Default::default() }).expect("syncer");
    for elapsed_ms in [3, 40] {
        metrics.record_errors(ErrorKind::ObjectSkipped, problems.len() as u64);
        syncer.sync(&desired).expect("applies");
        metrics.record_sync(SyncResult::Applied, Duration::from_millis(elapsed_ms));
        metrics.record_programmed(syncer.programmed(), syncer.capacity());
    }
    metrics.record_errors(ErrorKind::SourceInvalid, 1);
    metrics.record_sync(SyncResult::SourceInvalid, Duration::from_micros(200));
    let full = crate::kernel::maps::MapsError::Full { name: "LB_SLOTS", needed: 9, capacity: 1 };
    metrics.record_errors(ErrorKind::of(&full), 1);
    metrics.record_sync(SyncResult::MapsFailed, Duration::from_millis(1));
    metrics.watch_restarts("services").inc();
    let _ = metrics.watch_restarts("nodes");
    for ms in [80, 300, 1_500, 400_000] {
        metrics.record_network_programming(Duration::from_millis(ms));
    }
    metrics
}

#[test]
fn recorded_syncs_render_as_parseable_openmetrics() {
    let text = recorded().render().expect("renders");
    let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);

    assert_eq!(v("lb_syncs_total", &[("result", "applied")]), 2.0);
    assert_eq!(v("lb_syncs_total", &[("result", "source_invalid")]), 1.0);
    assert_eq!(v("lb_syncs_total", &[("result", "maps_failed")]), 1.0);
    // Every sync is in the histogram; 3 ms, 0.2 ms and 1 ms are within 4 ms, 40 ms is not.
    assert_eq!(v("lb_sync_duration_seconds_count", &[]), 4.0);
    assert!((v("lb_sync_duration_seconds_sum", &[]) - 0.0442).abs() < 1e-9);
    assert_eq!(v("lb_sync_duration_seconds_bucket", &[("le", "0.004")]), 3.0);
    assert_eq!(v("lb_sync_duration_seconds_bucket", &[("le", "+Inf")]), 4.0);
    assert!(text.contains("# UNIT lb_sync_duration_seconds seconds"), "{text}");

    // kube-proxy's SLIs under kube-proxy's names and buckets: every sync, and each trigger time.
    assert_eq!(v("kubeproxy_sync_proxy_rules_duration_seconds_count", &[]), 4.0);
    assert!((v("kubeproxy_sync_proxy_rules_duration_seconds_sum", &[]) - 0.0442).abs() < 1e-9);
    assert_eq!(v("kubeproxy_sync_proxy_rules_duration_seconds_bucket", &[("le", "0.001")]), 2.0);
    assert_eq!(v("kubeproxy_sync_proxy_rules_duration_seconds_bucket", &[("le", "0.004")]), 3.0);
    assert_eq!(v("kubeproxy_sync_proxy_rules_duration_seconds_bucket", &[("le", "16.384")]), 4.0);
    let buckets = |name: &str| -> Vec<String> {
        samples.iter().filter(|s| s.name == name).filter_map(|s| s.labels.get("le").cloned()).collect()
    };
    assert_eq!(buckets("kubeproxy_sync_proxy_rules_duration_seconds_bucket").len(), 16, "15 and +Inf");
    let programming = buckets("kubeproxy_network_programming_duration_seconds_bucket");
    assert_eq!(programming.len(), 2 + 59 + 12 + 7 + 1, "{programming:?}");
    assert_eq!(&programming[..4], ["0.25", "0.5", "1.0", "2.0"]);
    assert_eq!(&programming[programming.len() - 3..], ["270.0", "300.0", "+Inf"]);
    let np = |le: &str| v("kubeproxy_network_programming_duration_seconds_bucket", &[("le", le)]);
    assert_eq!((np("0.25"), np("0.5"), np("2.0"), np("300.0"), np("+Inf")), (1.0, 2.0, 3.0, 3.0, 4.0));
    assert_eq!(v("kubeproxy_network_programming_duration_seconds_count", &[]), 4.0);
    assert!(text.contains("# UNIT kubeproxy_network_programming_duration_seconds seconds"), "{text}");

    // web (IPv4 and IPv6), dns UDP and dns TCP: four groups, one frontend each.
    assert_eq!(v("lb_programmed_services", &[]), 4.0);
    assert_eq!(v("lb_programmed_frontends", &[]), 4.0);
    assert_eq!(v("lb_programmed_backends", &[]), 5.0);
    for (map, entries, capacity) in [
        ("LB_FRONTENDS_V4", 3.0, 100.0),
        ("LB_FRONTENDS_V6", 1.0, 100.0),
        ("LB_SLOTS", 5.0, 200.0),
        ("LB_BACKENDS", 5.0, 300.0),
        ("LB_SOURCE_RANGES", 0.0, 10.0),
        ("LB_SERVICES", 4.0, 50.0),
        ("LB_SERVICE_STATS", 4.0, 50.0),
    ] {
        assert_eq!(v("lb_map_entries", &[("map", map)]), entries, "{map}");
        assert_eq!(v("lb_map_capacity", &[("map", map)]), capacity, "{map}");
    }

    // Two syncs each saw the broken Service.
    assert_eq!(v("lb_errors_total", &[("kind", "object_skipped")]), 2.0);
    assert_eq!(v("lb_errors_total", &[("kind", "source_invalid")]), 1.0);
    assert_eq!(v("lb_errors_total", &[("kind", "map_full")]), 1.0);
    assert_eq!(v("lb_errors_total", &[("kind", "map_write")]), 0.0);
    assert_eq!(v("lb_errors_total", &[("kind", "map_read")]), 0.0);
    assert_eq!(v("lb_watch_restarts_total", &[("resource", "services")]), 1.0);
    assert_eq!(v("lb_watch_restarts_total", &[("resource", "nodes")]), 0.0);

    // No pinned maps known: no kernel counters (rather than zeros that are not true).
    assert!(!samples.iter().any(|s| s.name.starts_with("lb_datapath_events")), "{text}");
    assert!(!samples.iter().any(|s| s.name.starts_with("lb_service_connections")), "{text}");
}

// ---- what the kernel counted ------------------------------------------------------------------

fn name(namespace: &str, service: &str, port: &str, proto: u8, family: u8, scope: u8) -> ServiceName {
    let field = |s: &str, out: &mut [u8]| out[..s.len()].copy_from_slice(s.as_bytes());
    let mut n =
        ServiceName { namespace: [0; 64], name: [0; 64], port: [0; 16], proto, family, scope, pad: [0; 5] };
    field(namespace, &mut n.namespace);
    field(service, &mut n.name);
    field(port, &mut n.port);
    n
}

fn counts(pairs: &[(u32, u64)]) -> [u64; service_stats::COUNT as usize] {
    let mut out = [0; service_stats::COUNT as usize];
    for &(i, v) in pairs {
        out[i as usize] = v;
    }
    out
}

#[test]
fn per_service_counters_are_labelled_by_service_port_family_path_and_verdict() {
    let names = BTreeMap::from([
        (1, name("default", "web", "http", 6, 4, service_scope::CLUSTER)),
        (2, name("default", "web", "http", 6, 6, service_scope::CLUSTER)),
        (3, name("default", "web", "http", 6, 4, service_scope::EXTERNAL)),
        // A Service port that moved to group 5 and is still under 4 for a moment.
        (4, name("default", "db", "", 6, 4, service_scope::CLUSTER)),
        (5, name("default", "db", "", 6, 4, service_scope::CLUSTER)),
    ]);
    let counters = BTreeMap::from([
        (1, counts(&[(service_stats::SOCKET_TRANSLATED, 7), (service_stats::SOCKET_NO_BACKEND, 1)])),
        (2, counts(&[(service_stats::SOCKET_TRANSLATED, 2)])),
        (3, counts(&[(service_stats::TC_NEW_FLOW, 4), (service_stats::XDP_SOURCE_DENIED, 9)])),
        (4, counts(&[(service_stats::SOCKET_TRANSLATED, 1)])),
        (5, counts(&[(service_stats::SOCKET_TRANSLATED, 2)])),
        // No name (a failed apply's leftover): left out.
        (6, counts(&[(service_stats::SOCKET_TRANSLATED, 100)])),
    ]);
    let labelled = label_connections(&counters, &names);
    // The counters that moved, each once (db's two groups summed); group 6 left out.
    assert_eq!(labelled.len(), 6, "{labelled:#?}");
    let get = |service: &str, family: &str, scope: &str, path: &str, verdict: &str| {
        let found: Vec<u64> = labelled
            .iter()
            .filter(|(l, _)| {
                l.service == service
                    && l.family == family
                    && l.scope == scope
                    && l.path == path
                    && l.verdict == verdict
            })
            .map(|(_, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{service} {family} {scope} {path} {verdict}");
        found.first().copied().unwrap_or(0)
    };
    assert_eq!(get("web", "IPv4", "cluster", "socket", "translated"), 7);
    assert_eq!(get("web", "IPv4", "cluster", "socket", "no_backend"), 1);
    assert_eq!(get("web", "IPv6", "cluster", "socket", "translated"), 2);
    assert_eq!(get("web", "IPv4", "external", "tc", "translated"), 4);
    assert_eq!(get("web", "IPv4", "external", "xdp", "source_denied"), 9);
    assert_eq!(get("web", "IPv4", "external", "socket", "translated"), 0);
    assert_eq!(get("db", "IPv4", "cluster", "socket", "translated"), 3);
    let web = labelled.keys().find(|l| l.service == "web").expect("web");
    assert_eq!(
        (web.namespace.0.as_str(), web.port.0.as_str(), web.protocol.0.as_str()),
        ("default", "http", "TCP")
    );
}

/// A collector that encodes a fixed kernel snapshot.
#[derive(Debug)]
struct Fixed(KernelCollector, KernelSnapshot);

impl Collector for Fixed {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode_snapshot(&self.1, encoder)
    }
}

#[test]
fn kernel_counters_render_as_parseable_openmetrics() {
    let names = BTreeMap::from([(1, name("default", "we\"b\\", "http", 6, 4, service_scope::CLUSTER))]);
    let counters = BTreeMap::from([(1, counts(&[(service_stats::SOCKET_TRANSLATED, 5)]))]);
    let collector = KernelCollector::new(Default::default());
    collector.set_programmed(vec![MapFill { map: "LB_SLOTS", entries: 3, capacity: 8 }]);
    let snapshot = KernelSnapshot {
        events: Some(lb_common::stats::NAMES.iter().enumerate().map(|(i, n)| (*n, i as u64)).collect()),
        connections: Some(label_connections(&counters, &names)),
        lru: vec![MapFill { map: "LB_CONNTRACK", entries: 2, capacity: 1024 }],
    };
    let mut registry = Registry::with_prefix("lb");
    registry.register_collector(Box::new(Fixed(collector, snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("renders");
    let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(v("lb_datapath_events_total", &[("counter", "translated")]), 0.0);
    assert_eq!(v("lb_datapath_events_total", &[("counter", "tc_new_flow")]), 6.0);
    assert_eq!(
        samples.iter().filter(|s| s.name == "lb_datapath_events_total").count(),
        lb_common::stats::NAMES.len()
    );
    let web = [("namespace", "default"), ("service", "we\"b\\"), ("port", "http"), ("protocol", "TCP")];
    let socket = [("family", "IPv4"), ("scope", "cluster"), ("path", "socket")];
    let labels = |verdict| [&web[..], &socket[..], &[("verdict", verdict)]].concat();
    assert_eq!(v("lb_service_connections_total", &labels("translated")), 5.0);
    // Zero counters are not exported.
    assert!(!samples.iter().any(|s| s.labels.get("verdict").map(String::as_str) == Some("no_backend")));
    assert_eq!(v("lb_map_entries", &[("map", "LB_SLOTS")]), 3.0);
    assert_eq!(v("lb_map_entries", &[("map", "LB_CONNTRACK")]), 2.0);
    assert_eq!(v("lb_map_capacity", &[("map", "LB_CONNTRACK")]), 1024.0);
}
