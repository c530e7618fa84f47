//! The agent's Prometheus endpoint against a real kernel: `--metrics-addr` serves the health
//! endpoints and `/metrics`, which reports what was programmed and what the programs counted.
//! The agent runs in the host network namespace (as in `socket_lb.rs`) and listens on a free
//! loopback port there; clients run in the test cgroup inside a test namespace, backends on that
//! namespace's `lo`.
use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    agent::{Agent, free_local_addr, http_status},
    guard::{Bpffs, Cgroup, Netns, TempDir},
    metrics::{Scrape, scrape},
    probe::{self, Place},
    require_root,
    servers::Servers,
    yaml::{Ep, Port, documents, service, slice},
};

const ECONNREFUSED: &str = "os=111";

/// Fields drop in order: the agent stops, servers stop, pins go, then cgroup, namespace, files.
struct Node {
    agent: Agent,
    _servers: Servers,
    _bpffs: Bpffs,
    cgroup: Cgroup,
    netns: Netns,
    _dir: TempDir,
    metrics: SocketAddr,
}

/// `default/web` (ClusterIP 10.96.0.10:80, two ready endpoints) and `default/empty`
/// (ClusterIP 10.96.0.20:80, no endpoints: connections are refused).
fn cluster() -> String {
    documents(&[
        service("default", "web", &["10.96.0.10"], &[Port("http", 80, "TCP", 8080)]),
        slice(
            "default",
            "web",
            "web",
            "IPv4",
            &[("http", 8080, "TCP")],
            &[Ep::ready("10.244.1.1"), Ep::ready("10.244.1.2")],
        ),
        service("default", "empty", &["10.96.0.20"], &[Port("http", 80, "TCP", 8080)]),
    ])
}

impl Node {
    fn new() -> Self {
        require_root();
        let netns = Netns::new().expect("netns");
        let cgroup = Cgroup::new().expect("cgroup");
        let bpffs = Bpffs::new().expect("bpffs");
        let dir = TempDir::new().expect("tempdir");
        let backends: Vec<SocketAddr> =
            ["10.244.1.1:8080", "10.244.1.2:8080"].iter().map(|b| b.parse().expect("addr")).collect();
        let servers = Servers::start(&netns, &backends).expect("servers");
        let source = dir.write("cluster.yaml", &cluster()).expect("source");
        let metrics = free_local_addr();
        let agent = Agent::spawn(
            &[
                "--source".as_ref(),
                source.as_os_str(),
                "--metrics-addr".as_ref(),
                metrics.to_string().as_ref(),
            ],
            &cgroup.path,
            &bpffs.path,
            true,
        )
        .expect("agent");
        agent.wait_for_log("agent ready", 1, Duration::from_secs(20)).expect("ready");
        Self { agent, _servers: servers, _bpffs: bpffs, cgroup, netns, _dir: dir, metrics }
    }

    fn probe(&self, args: &[&str]) -> Vec<String> {
        probe::run(&Place { netns: &self.netns, cgroup: Some(&self.cgroup) }, args).expect("probe")
    }

    fn scrape(&self) -> Scrape {
        scrape(self.metrics).expect("scrape")
    }
}

/// The per-service counter of `default/NAME` on the socket path with `verdict` (0 when absent:
/// counters at zero are not exported).
fn connections(s: &Scrape, name: &str, verdict: &str) -> f64 {
    let labels = [
        ("namespace", "default"),
        ("service", name),
        ("port", "http"),
        ("protocol", "TCP"),
        ("family", "IPv4"),
        ("scope", "cluster"),
        ("path", "socket"),
        ("verdict", verdict),
    ];
    match s.matching("lb_service_connections_total", &labels).as_slice() {
        [] => 0.0,
        [one] => one.value,
        more => panic!("{} samples for {labels:?}:\n{}", more.len(), s.text),
    }
}

fn events(s: &Scrape, counter: &str) -> f64 {
    s.value("lb_datapath_events_total", &[("counter", counter)]).expect("sample")
}

#[test]
fn health_endpoints_answer_on_the_metrics_address() {
    let node = Node::new();
    // The agent logged "agent ready" after setting it: /readyz is 200 from then on.
    assert_eq!(http_status(node.metrics, "/readyz"), 200);
    assert_eq!(http_status(node.metrics, "/healthz"), 200);
    assert_eq!(http_status(node.metrics, "/livez"), 200);
    assert_eq!(http_status(node.metrics, "/nothing-here"), 404);
    assert_eq!(node.agent.count("metrics endpoint stopped"), 0, "{:?}", node.agent.log());
}

/// kube-proxy's `/healthz`, as load balancers and node tooling read it: the JSON body with
/// `lastUpdated`, `currentTime` (Go's time format) and `nodeEligible`, and 503 while this node's
/// Node carries the cluster autoscaler's to-be-deleted taint (the process stays live).
#[test]
fn healthz_answers_kube_proxys_body_and_fails_while_the_node_is_to_be_deleted() {
    let node = Node::new();
    let body = |path: &str| -> (u16, serde_json::Value) {
        let (status, text) = lb_tests::agent::http_get(node.metrics, path);
        let json = text.split_once("\r\n\r\n").map_or(text.as_str(), |(_, b)| b).trim().to_owned();
        (status, serde_json::from_str(&json).unwrap_or_else(|e| panic!("{path}: {e}: {text}")))
    };
    let (status, healthy) = body("/healthz");
    assert_eq!(status, 200, "{healthy}");
    assert_eq!(healthy["nodeEligible"], true);
    let go_time = |v: &serde_json::Value| {
        let t = v.as_str().unwrap_or_default();
        t.len() >= 23 && t.ends_with(" +0000 UTC") && t.as_bytes()[4] == b'-' && t.as_bytes()[10] == b' '
    };
    assert!(go_time(&healthy["lastUpdated"]) && go_time(&healthy["currentTime"]), "{healthy}");
    assert_eq!(
        healthy["lastUpdated"], healthy["currentTime"],
        "healthy: lastUpdated is now, as kube-proxy says"
    );

    let tainted = format!(
        "{}---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\nspec:\n  taints: [{{key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}}]\n",
        cluster()
    );
    let source = node._dir.path.join("cluster.yaml");
    let before = node.agent.count("sync applied");
    std::fs::write(&source, &tainted).expect("write");
    node.agent.wait_for_log("sync applied", before + 1, Duration::from_secs(10)).expect("synced");
    let (status, draining) = body("/healthz");
    assert_eq!((status, &draining["nodeEligible"]), (503, &serde_json::Value::from(false)), "{draining}");
    assert_eq!(http_status(node.metrics, "/livez"), 200);
    std::fs::write(&source, cluster()).expect("write");
    node.agent.wait_for_log("sync applied", before + 2, Duration::from_secs(10)).expect("synced");
    let (status, back) = body("/healthz");
    assert_eq!((status, &back["nodeEligible"]), (200, &serde_json::Value::from(true)), "{back}");
    lb_tests::parity::shown(&["55"]);
}

#[test]
fn metrics_report_what_is_programmed() {
    let node = Node::new();
    let s = node.scrape();
    let v = |name: &str, labels: &[(&str, &str)]| s.value(name, labels).expect("sample");
    // Two Services with one IPv4 port each: two backend groups, two frontends, two backends.
    assert_eq!(v("lb_programmed_services", &[]), 2.0);
    assert_eq!(v("lb_programmed_frontends", &[]), 2.0);
    assert_eq!(v("lb_programmed_backends", &[]), 2.0);
    assert!(v("lb_syncs_total", &[("result", "applied")]) >= 1.0);
    assert_eq!(v("lb_syncs_total", &[("result", "maps_failed")]), 0.0);
    assert!(v("lb_sync_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(v("lb_map_entries", &[("map", "LB_FRONTENDS_V4")]), 2.0);
    assert_eq!(v("lb_map_entries", &[("map", "LB_SERVICES")]), 2.0);
    assert_eq!(v("lb_map_capacity", &[("map", "LB_BACKENDS")]), 1_048_576.0);
    // The LRU maps are read from the kernel: their capacity as created, and (no TC here) an
    // empty conntrack table.
    assert_eq!(v("lb_map_capacity", &[("map", "LB_CONNTRACK")]), 524_288.0);
    assert_eq!(v("lb_map_entries", &[("map", "LB_CONNTRACK")]), 0.0);
    for map in ["LB_REVNAT_V4", "LB_REVNAT_V6", "LB_AFFINITY"] {
        assert!(!s.matching("lb_map_entries", &[("map", map)]).is_empty(), "{map}:\n{}", s.text);
    }
    assert_eq!(v("lb_errors_total", &[("kind", "map_read")]), 0.0);
    // The file source has no watches.
    assert!(s.matching("lb_watch_restarts_total", &[]).is_empty(), "{}", s.text);
    // Every datapath counter is there (`events` fails on a missing sample), and nothing has
    // been counted yet: no traffic has flowed.
    for counter in ["translated", "no_backend", "tc_new_flow", "xdp_deferred"] {
        assert_eq!(events(&s, counter), 0.0, "{counter}");
    }
}

#[test]
fn connections_through_the_socket_hooks_are_counted_per_service_and_verdict() {
    let node = Node::new();
    const N: usize = 25;
    let before = node.scrape();
    let lines = node.probe(&["tcp", "10.96.0.10:80", &N.to_string()]);
    assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.")), "{lines:?}");
    let after = node.scrape();
    assert_eq!(
        connections(&after, "web", "translated") - connections(&before, "web", "translated"),
        N as f64,
        "{}",
        after.text
    );
    assert_eq!(connections(&after, "web", "no_backend"), connections(&before, "web", "no_backend"));
    assert!(events(&after, "translated") - events(&before, "translated") >= N as f64);
    // The translations (for getpeername) live with the sockets, in socket storage: the LRU
    // reverse-NAT map, counted by key, holds none of them.
    let revnat = after.value("lb_map_entries", &[("map", "LB_REVNAT_V4")]).expect("sample");
    assert_eq!(revnat, 0.0, "{}", after.text);

    // A Service without endpoints refuses, counted as no_backend.
    const M: usize = 4;
    let lines = node.probe(&["tcp", "10.96.0.20:80", &M.to_string()]);
    assert!(lines.iter().all(|l| l.contains(ECONNREFUSED)), "{lines:?}");
    let refused = node.scrape();
    assert_eq!(
        connections(&refused, "empty", "no_backend") - connections(&after, "empty", "no_backend"),
        M as f64,
        "{}",
        refused.text
    );
    assert_eq!(connections(&refused, "empty", "translated"), 0.0);
    assert!(events(&refused, "no_backend") - events(&after, "no_backend") >= M as f64);
    // And web's counters did not move.
    assert_eq!(connections(&refused, "web", "translated"), connections(&after, "web", "translated"));
}

/// The metric names a PromQL expression uses: identifiers of ours (`lb_…`) or kube-proxy's
/// (`kubeproxy_…`), with their `_total`/`_bucket`/… suffixes.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("lb_") || word.starts_with("kubeproxy_") {
                out.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    out
}

/// The dashboard and the alert rules in `deploy/monitoring/` query only metrics a live agent
/// exposes, with their type's suffixes: a renamed metric breaks this test, not a user's
/// dashboard. (Both files name enough metrics that an empty match would fail too.)
#[test]
fn the_dashboard_and_alerts_query_metrics_the_agent_exposes() {
    // As deployed: the Kubernetes source (its watch metrics exist only there).
    let node = KubeAgent::start(vec![lb_tests::apiserver::service(
        "default",
        "web",
        "10.96.0.10",
        &[("http", 80, "TCP")],
    )]);
    let s = scrape(node.metrics).expect("scrape");
    // Families and their types, from the live text.
    let families: Vec<(String, String)> = s
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' ').map(|(f, t)| (f.to_owned(), t.to_owned())))
        .collect();
    let exposed = |name: &str| {
        families.iter().any(|(family, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().any(|suffix| name == format!("{family}{suffix}"))
        })
    };
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    exprs.extend(
        dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["query"].as_str().map(str::to_owned)),
    );
    let panel_exprs = exprs.len();
    let rules: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(deploy.join("prometheus-rules.yaml")).expect("rules"),
    )
    .expect("rules YAML");
    for group in rules["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(panel_exprs >= 10 && exprs.len() >= panel_exprs + 5, "{exprs:?}");
    let mut names: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    let missing: Vec<&String> = names.iter().filter(|n| !exposed(n)).collect();
    assert!(missing.is_empty(), "queried but not exposed: {missing:?}\nexposed families: {families:?}");
}

/// The document kubeadm writes for kube-proxy (its defaults), as `--config` takes it.
const KUBEADM: &str = include_str!("../../lb-agent/src/agent/kube_proxy_config/kubeadm.yaml");

/// An operator swapping kube-proxy keeps kubeadm's `KubeProxyConfiguration`: with `--config`
/// the agent serves `/metrics` and `/healthz` where the file says, takes `hostnameOverride` as
/// this node's name (here: only its own endpoint under `internalTrafficPolicy: Local`), and
/// warns once about the fields that do not apply.
#[test]
fn run_with_kubeadms_kube_proxy_configuration() {
    require_root();
    let (dir, cgroup, bpffs) =
        (TempDir::new().expect("dir"), Cgroup::new().expect("cgroup"), Bpffs::new().expect("bpffs"));
    let (metrics, healthz) = (free_local_addr(), free_local_addr());
    let config = KUBEADM
        .replace("metricsBindAddress: 0.0.0.0:10249", &format!("metricsBindAddress: {metrics}"))
        .replace("healthzBindAddress: \"\"", &format!("healthzBindAddress: {healthz}"))
        .replace("hostnameOverride: node-from-config", "hostnameOverride: node-cfg");
    let config = dir.write("kube-proxy.yaml", &config).expect("config");
    let source = dir
        .write(
            "cluster.yaml",
            "apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  clusterIP: 10.96.0.30
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ['10.244.1.1'], nodeName: node-cfg, conditions: {ready: true}}
- {addresses: ['10.244.1.2'], nodeName: node-other, conditions: {ready: true}}
",
        )
        .expect("source");
    let args = ["--source".as_ref(), source.as_os_str(), "--config".as_ref(), config.as_os_str()];
    let agent = Agent::spawn_named(&args, &cgroup.path, &bpffs.path, "", true).expect("agent");
    agent.wait_for_log("agent ready", 1, Duration::from_secs(20)).expect("ready");
    assert_eq!(http_status(metrics, "/metrics"), 200, "metrics where metricsBindAddress says");
    assert_eq!(http_status(healthz, "/healthz"), 200, "healthz where healthzBindAddress says");
    let rows = lb_tests::agent::inspect("services", &bpffs.path).expect("inspect");
    let backends: Vec<String> = rows
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r["backends"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["address"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(backends, ["10.244.1.1:8080"], "hostnameOverride named this node: {rows:#}");
    let warnings: Vec<String> = agent.log().into_iter().filter(|l| l.contains("do not apply")).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("clusterCIDR") && warnings[0].contains("mode"), "{warnings:?}");
    lb_tests::parity::shown(&["56"]);
}

/// kube-proxy's own metrics, same names and types, so its dashboards and alerts keep working:
/// served next to ours by an agent on the Kubernetes source, and moving as kube-proxy's do (an
/// EndpointSlice change is counted, the sync times stamped).
#[test]
fn kube_proxys_metrics_are_served_with_its_names_and_types() {
    let node = KubeAgent::start(vec![
        lb_tests::apiserver::service("default", "web", "10.96.0.10", &[("http", 80, "TCP")]),
        lb_tests::apiserver::slice("default", "web-1", "web", &[("http", 8080, "TCP")], &["10.244.1.1"]),
    ]);
    let (api, agent, addr) = (&node.api, &node.agent, node.metrics);
    // kube-proxy's metric families and their types.
    let kube_proxy = [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        ("kubeproxy_network_programming_duration_seconds", "histogram"),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        ("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "gauge"),
        ("kubeproxy_sync_proxy_rules_endpoint_changes", "counter"),
        ("kubeproxy_sync_proxy_rules_endpoint_changes_pending", "gauge"),
        ("kubeproxy_sync_proxy_rules_service_changes", "counter"),
        ("kubeproxy_sync_proxy_rules_service_changes_pending", "gauge"),
        ("kubeproxy_sync_proxy_rules_no_local_endpoints_total", "gauge"),
    ];
    let before = scrape(addr).expect("scrape");
    for (family, kind) in kube_proxy {
        assert!(
            before.text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} {kind}:\n{}",
            before.text
        );
    }
    let changes =
        |s: &Scrape| s.value("kubeproxy_sync_proxy_rules_endpoint_changes_total", &[]).expect("sample");
    let synced = before.value("kubeproxy_sync_proxy_rules_last_timestamp_seconds", &[]).expect("sample");
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!((now - synced).abs() < 60.0, "last sync stamped now: {synced} vs {now}");
    // The sync that carries the change (one Service dirty), not a periodic one that may land
    // between the count and the apply.
    let carried = "sync applied services=1 slices=1 full=false dirty=1";
    let syncs = agent.count(carried);
    api.apply(lb_tests::apiserver::slice(
        "default",
        "web-1",
        "web",
        &[("http", 8080, "TCP")],
        &["10.244.1.1", "10.244.1.2"],
    ));
    agent.wait_for_log(carried, syncs + 1, Duration::from_secs(10)).expect("synced");
    let after = scrape(addr).expect("scrape");
    assert!(changes(&after) >= changes(&before) + 1.0, "the slice change is counted:\n{}", after.text);
    assert_eq!(after.value("kubeproxy_sync_proxy_rules_endpoint_changes_pending", &[]).expect("sample"), 0.0);
    assert!(
        after.value("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", &[]).expect("sample") > 0.0
    );
}

/// An agent on the Kubernetes source (the in-process API server holding `node-1` and `objects`),
/// serving metrics on a free loopback port. Fields drop in order: the agent stops, the pins go,
/// then the cgroup, the files and the API server.
struct KubeAgent {
    agent: Agent,
    metrics: SocketAddr,
    _bpffs: Bpffs,
    _cgroup: Cgroup,
    _dir: TempDir,
    api: lb_tests::apiserver::FakeApiServer,
}

impl KubeAgent {
    fn start(objects: Vec<serde_json::Value>) -> Self {
        require_root();
        let api = lb_tests::apiserver::FakeApiServer::start().expect("api server");
        api.apply(lb_tests::apiserver::node("node-1", "zone-a", "192.0.2.10"));
        api.apply_all(objects);
        let (dir, cgroup, bpffs) =
            (TempDir::new().expect("dir"), Cgroup::new().expect("cgroup"), Bpffs::new().expect("bpffs"));
        let metrics = free_local_addr();
        let kubeconfig = api.kubeconfig(&dir.path).expect("kubeconfig");
        let agent = Agent::spawn_kubernetes(
            &kubeconfig,
            &cgroup.path,
            &bpffs.path,
            &["--metrics-addr", &metrics.to_string()],
        )
        .expect("agent");
        agent.wait_for_log("agent ready", 1, Duration::from_secs(30)).expect("ready");
        Self { agent, metrics, _bpffs: bpffs, _cgroup: cgroup, _dir: dir, api }
    }
}
