//! The Kubernetes source end to end: the real agent, through the real kube client, watching an
//! in-process API server that speaks the list/watch protocol; the kernel's behaviour is checked
//! through the socket hooks in a test namespace and cgroup.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, free_local_addr, http_status, inspect},
    apiserver::{FakeApiServer, Kind, node, service, slice},
    guard::{Bpffs, Cgroup, Netns, TempDir},
    metrics::scrape,
    probe::{self, Place, backend_of},
    require_root,
    servers::Servers,
};
use serde_json::Value;

const PODS: [&str; 3] = ["10.244.1.1", "10.244.1.2", "10.244.1.3"];

/// Fields drop in order: agent, servers, pins, cgroup, namespace, files, API server.
struct KubeNode {
    agent: Option<Agent>,
    servers: Servers,
    bpffs: Bpffs,
    cgroup: Cgroup,
    netns: Netns,
    dir: TempDir,
    api: FakeApiServer,
}

impl KubeNode {
    fn new() -> Self {
        require_root();
        let api = FakeApiServer::start().expect("api server");
        let netns = Netns::new().expect("netns");
        let backends: Vec<SocketAddr> =
            PODS.iter().map(|p| format!("{p}:8080").parse().expect("addr")).collect();
        let servers = Servers::start(&netns, &backends).expect("servers");
        Self {
            agent: None,
            servers,
            bpffs: Bpffs::new().expect("bpffs"),
            cgroup: Cgroup::new().expect("cgroup"),
            netns,
            dir: TempDir::new().expect("dir"),
            api,
        }
    }

    fn spawn_agent(&mut self) {
        self.spawn_agent_with(&[]);
    }

    fn spawn_agent_with(&mut self, extra: &[&str]) {
        let kubeconfig = self.api.kubeconfig(&self.dir.path).expect("kubeconfig");
        self.agent = Some(
            Agent::spawn_kubernetes(&kubeconfig, &self.cgroup.path, &self.bpffs.path, extra).expect("agent"),
        );
    }

    fn start_agent(&mut self) {
        self.spawn_agent();
        self.agent().wait_for_log("agent ready", 1, Duration::from_secs(30)).expect("agent ready");
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent")
    }

    fn probe(&self, args: &[&str]) -> Vec<String> {
        probe::run(&Place { netns: &self.netns, cgroup: Some(&self.cgroup) }, args).expect("probe")
    }
}

/// frontend → sorted backend addresses, from `inspect services` (ids left out).
fn frontends(bpffs: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let rows = inspect("services", bpffs).expect("inspect");
    rows.as_array()
        .expect("array")
        .iter()
        .map(|r| {
            let mut backends: Vec<String> = r["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .map(|b| b["address"].as_str().expect("address").to_owned())
                .collect();
            backends.sort();
            (
                format!(
                    "{}/{}",
                    r["frontend"].as_str().expect("frontend"),
                    r["protocol"].as_str().expect("proto")
                ),
                backends,
            )
        })
        .collect()
}

/// Waits until `check` holds on the programmed frontends.
fn wait_frontends(
    bpffs: &std::path::Path,
    timeout: Duration,
    check: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
) -> BTreeMap<String, Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let f = frontends(bpffs);
        if check(&f) || Instant::now() > deadline {
            return f;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn web() -> Vec<Value> {
    vec![
        service("default", "web", "10.96.0.10", &[("http", 80, "TCP")]),
        slice("default", "web-1", "web", &[("http", 8080, "TCP")], &PODS),
    ]
}

/// Service `i` of the bulk set: 10.97.x.y:80 with one backend.
fn bulk(i: usize) -> Vec<Value> {
    let ip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
    let name = format!("svc-{i}");
    vec![
        service("bulk", &name, &ip, &[("http", 80, "TCP")]),
        slice("bulk", &format!("{name}-1"), &name, &[("http", 8080, "TCP")], &[PODS[i % 3]]),
    ]
}

fn sync_lines(agent: &Agent) -> Vec<String> {
    agent.log().into_iter().filter(|l| l.contains("sync applied")).collect()
}

fn tcp_loop(node: &KubeNode, millis: u32) -> std::process::Child {
    probe::spawn(
        &Place { netns: &node.netns, cgroup: Some(&node.cgroup) },
        &["tcp-loop", "10.96.0.10:80", &millis.to_string()],
    )
    .expect("tcp-loop")
}

fn loop_summary(child: std::process::Child) -> (u64, String) {
    let out = child.wait_with_output().expect("tcp-loop");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains(" err=0 "), "connections failed: {summary}");
    let ok =
        summary.split("ok=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok());
    (ok.expect("ok count"), summary)
}

#[test]
fn initial_sync_of_1000_services_and_changes_converge_like_the_file_source() {
    let mut kn = KubeNode::new();
    kn.api.apply(node("node-1", "zone-a", "192.0.2.10"));
    kn.api.apply_all(web());
    kn.api.apply_all((0..1000).flat_map(bulk));
    // A Service another proxy owns is not even listed (label selector), as with kube-proxy.
    let mut foreign = service("default", "foreign", "10.96.0.99", &[("http", 80, "TCP")]);
    foreign["metadata"]["labels"] = serde_json::json!({"service.kubernetes.io/service-proxy-name": "other"});
    kn.api.apply(foreign);
    let started = Instant::now();
    kn.start_agent();
    eprintln!("agent ready with 1001 services after {:?}", started.elapsed());

    let f = frontends(&kn.bpffs.path);
    assert_eq!(f.len(), 1001, "every Service programmed once");
    assert_eq!(f["10.97.2.1:80/TCP"], ["10.244.1.3:8080"]);
    assert!(!f.contains_key("10.96.0.99:80/TCP"), "a Service owned by another proxy is skipped");
    let lines = kn.probe(&["tcp", "10.97.2.1:80", "3"]);
    assert!(lines.iter().all(|l| backend_of(l) == Some("10.244.1.3:8080")), "{lines:?}");

    // Modify a slice, add a Service, delete a Service and its slice.
    kn.api.apply(slice("bulk", "svc-500-1", "svc-500", &[("http", 8080, "TCP")], &[PODS[0]]));
    kn.api.apply_all(bulk(1000));
    kn.api.delete(Kind::Service, "bulk", "svc-7");
    kn.api.delete(Kind::EndpointSlice, "bulk", "svc-7-1");
    let f = wait_frontends(&kn.bpffs.path, Duration::from_secs(5), |f| {
        f.get("10.97.2.1:80/TCP").is_some_and(|b| b == &["10.244.1.1:8080"])
            && f.contains_key("10.97.4.1:80/TCP")
            && !f.contains_key("10.97.0.8:80/TCP")
    });
    assert_eq!(f["10.97.2.1:80/TCP"], ["10.244.1.1:8080"], "modified slice applied");
    assert!(f.contains_key("10.97.4.1:80/TCP"), "added Service applied");
    assert!(!f.contains_key("10.97.0.8:80/TCP"), "deleted Service removed");
    let lines = kn.probe(&["tcp", "10.97.2.1:80", "3"]);
    assert!(lines.iter().all(|l| backend_of(l) == Some("10.244.1.1:8080")), "{lines:?}");

    // The file source, given the same objects, programs the same maps.
    let docs: Vec<String> = kn.api.objects().iter().map(Value::to_string).collect();
    let file = kn.dir.write("same.yaml", &docs.join("\n---\n")).expect("file");
    let (cgroup2, bpffs2) = (Cgroup::new().expect("cgroup"), Bpffs::new().expect("bpffs"));
    let file_agent = Agent::start(&file, &cgroup2.path, &bpffs2.path).expect("file agent");
    assert_eq!(frontends(&bpffs2.path), f, "file and Kubernetes sources disagree");
    drop(file_agent);
    lb_tests::parity::shown(&["1", "17"]);
}

#[test]
fn dropped_watch_resumes_and_410_relists_without_touching_the_maps() {
    let mut kn = KubeNode::new();
    kn.api.apply(node("node-1", "zone-a", "192.0.2.10"));
    kn.api.apply_all(web());
    kn.api.apply_all((0..20).flat_map(bulk));
    let metrics = free_local_addr();
    kn.spawn_agent_with(&["--metrics-addr", &metrics.to_string()]);
    kn.agent().wait_for_log("agent ready", 1, Duration::from_secs(30)).expect("agent ready");
    let lists = kn.api.lists(Kind::Service);
    let watches = kn.api.watches(Kind::Service);

    // A dropped watch resumes from its resourceVersion: no relist, and new events arrive.
    kn.api.drop_watches();
    kn.api.apply_all(bulk(20));
    let f = wait_frontends(&kn.bpffs.path, Duration::from_secs(10), |f| f.contains_key("10.97.0.21:80/TCP"));
    assert!(f.contains_key("10.97.0.21:80/TCP"), "event after a dropped watch not applied");
    assert!(kn.api.watches(Kind::Service) > watches, "the watch was not resumed");
    assert_eq!(kn.api.lists(Kind::Service), lists, "a dropped watch must resume, not relist");

    // Expired history: the resumed watch gets 410 Gone and the agent relists. Nothing changed,
    // so no map entry may be removed and re-added, and connections keep flowing.
    let before = frontends(&kn.bpffs.path);
    let syncs_before = sync_lines(kn.agent()).len();
    let looper = tcp_loop(&kn, 2000);
    kn.api.compact();
    kn.api.drop_watches();
    let deadline = Instant::now() + Duration::from_secs(10);
    while kn.api.lists(Kind::Service) == lists && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(kn.api.lists(Kind::Service) > lists, "410 Gone did not cause a relist");
    kn.agent()
        .wait_for_log("sync applied", syncs_before + 1, Duration::from_secs(5))
        .expect("sync after relist");
    let (ok, _) = loop_summary(looper);
    assert!(ok > 20, "too few connections during the relist");
    for line in &sync_lines(kn.agent())[syncs_before..] {
        assert!(line.contains("written=0") && line.contains("removed=0"), "relist flapped the maps: {line}");
    }
    assert_eq!(frontends(&kn.bpffs.path), before);

    // Each watch error (the 410 at least) counts as a restart of its resource's watch.
    let restarts = |s: &lb_tests::metrics::Scrape, resource| {
        s.value("lb_watch_restarts_total", &[("resource", resource)]).expect("sample")
    };
    // A scrape between two equal counts of the log lines (a watch may fail meanwhile).
    let (failed, s) = (0..10)
        .find_map(|_| {
            let failed = kn.agent().count("watch failed");
            let s = scrape(metrics).expect("scrape");
            (kn.agent().count("watch failed") == failed).then_some((failed, s))
        })
        .expect("watch failures kept coming");
    assert!(restarts(&s, "services") >= 1.0, "{}", s.text);
    let total: f64 = ["services", "endpointslices", "nodes"].iter().map(|r| restarts(&s, r)).sum();
    assert_eq!(total, failed as f64, "one restart per logged watch failure:\n{}", s.text);
    lb_tests::parity::shown(&["50", "53"]);
}

#[test]
fn api_server_down_at_start_and_later_keeps_the_maps() {
    let mut kn = KubeNode::new();
    kn.api.apply(node("node-1", "zone-a", "192.0.2.10"));
    kn.api.apply_all(web());
    kn.api.stop();
    let healthz = free_local_addr();
    kn.spawn_agent_with(&["--healthz-addr", &healthz.to_string()]);
    kn.agent().wait_for_log("watch failed", 1, Duration::from_secs(10)).expect("agent reports the outage");
    assert_eq!(kn.agent().count("agent ready"), 0, "nothing may be programmed before the first full list");
    // Alive, not ready: kube-proxy's endpoints, as the DaemonSet's probes use them.
    assert_eq!(http_status(healthz, "/livez"), 200);
    assert_eq!(http_status(healthz, "/readyz"), 503);
    assert_eq!(http_status(healthz, "/healthz"), 503);

    kn.api.restart().expect("restart");
    kn.agent()
        .wait_for_log("agent ready", 1, Duration::from_secs(30))
        .expect("agent ready after the server came up");
    assert_eq!(http_status(healthz, "/readyz"), 200);
    assert_eq!(http_status(healthz, "/healthz"), 200);
    let lines = kn.probe(&["tcp", "10.96.0.10:80", "30"]);
    assert!(lines.iter().all(|l| backend_of(l).is_some_and(|b| b.starts_with("10.244.1."))), "{lines:?}");

    // Down for a while: the maps keep their last good state and traffic flows.
    let before = frontends(&kn.bpffs.path);
    let failures = kn.agent().count("watch failed");
    let looper = tcp_loop(&kn, 3000);
    kn.api.stop();
    kn.agent().wait_for_log("watch failed", failures + 1, Duration::from_secs(10)).expect("outage logged");
    let (ok, _) = loop_summary(looper);
    assert!(ok > 20, "too few connections while the API server was down");
    assert_eq!(frontends(&kn.bpffs.path), before, "maps changed while the API server was down");

    // Back up: changes flow again.
    kn.api.restart().expect("restart");
    kn.api.apply_all(bulk(0));
    let f = wait_frontends(&kn.bpffs.path, Duration::from_secs(40), |f| f.contains_key("10.97.0.1:80/TCP"));
    assert!(f.contains_key("10.97.0.1:80/TCP"), "no change applied after the API server came back");
    lb_tests::parity::shown(&["46", "51"]);
}

/// However long the API server was down, a change made right after it is back is in the maps
/// within 5 s of its return. The restarted server's watch cache no longer knows the agent's
/// versions (its first re-watch gets 410 Gone), so the agent must relist at once, and its retries
/// must not have backed off beyond a few seconds during the outage.
#[test]
fn a_change_after_a_30s_outage_is_in_the_maps_within_5s_of_the_servers_return() {
    let mut kn = KubeNode::new();
    kn.api.apply(node("node-1", "zone-a", "192.0.2.10"));
    kn.api.apply_all(web());
    kn.start_agent();
    kn.api.stop();
    std::thread::sleep(Duration::from_secs(30));
    kn.api.restart().expect("restart");
    // A restarted server's watch cache starts anew: every resumed watch gets 410 Gone.
    kn.api.compact();
    let back = Instant::now();
    kn.api.apply_all(bulk(0));
    let f = wait_frontends(&kn.bpffs.path, Duration::from_secs(20), |f| f.contains_key("10.97.0.1:80/TCP"));
    let took = back.elapsed();
    assert!(f.contains_key("10.97.0.1:80/TCP"), "no change applied after the API server came back");
    assert!(took < Duration::from_secs(5), "the change took {took:?} after the server's return");
    assert!(
        kn.agent().count("relisting now") >= 1,
        "the 410 relisted at once:\n{}",
        kn.agent().log().join("\n")
    );
}

/// For a few seconds after it starts, an API server refuses every request with 403 (its
/// authorizer has not loaded the bindings): the agent says "not authorized yet" once per watch,
/// not that RBAC is missing, counts the refusals, and lists as soon as it is allowed.
#[test]
fn forbidden_while_the_api_server_starts_is_not_reported_as_missing_rbac() {
    let mut kn = KubeNode::new();
    kn.api.apply(node("node-1", "zone-a", "192.0.2.10"));
    kn.api.apply_all(web());
    kn.api.refuse(Some(403));
    let metrics = free_local_addr();
    kn.spawn_agent_with(&["--metrics-addr", &metrics.to_string()]);
    kn.agent().wait_for_log("not authorized yet", 3, Duration::from_secs(10)).expect("403s said");
    std::thread::sleep(Duration::from_secs(3));
    let refused = scrape(metrics)
        .expect("scrape")
        .value("lb_errors_total", &[("kind", "api_forbidden")])
        .expect("counted");
    assert!(refused >= 6.0, "every 403 is counted: {refused}");
    kn.api.refuse(None);
    kn.agent().wait_for_log("agent ready", 1, Duration::from_secs(10)).expect("ready once allowed");
    let log = kn.agent().log();
    assert_eq!(kn.agent().count("not authorized yet"), 3, "once per watch:\n{}", log.join("\n"));
    assert_eq!(kn.agent().count("RBAC is missing"), 0, "{}", log.join("\n"));
    assert!(
        !log.iter().any(|l| l.contains("watch list error with 403")),
        "kube-runtime's own dump:\n{}",
        log.join("\n")
    );
    assert_eq!(
        scrape(metrics)
            .expect("scrape")
            .value("lb_errors_total", &[("kind", "rbac_missing")])
            .expect("metric"),
        0.0
    );
}

#[test]
fn agent_restart_with_kubernetes_source_keeps_connections_and_drops_stale_entries() {
    let mut kn = KubeNode::new();
    kn.api.apply(node("node-1", "zone-a", "192.0.2.10"));
    kn.api.apply_all(web());
    kn.api.apply_all(bulk(0));
    kn.start_agent();
    let looper = tcp_loop(&kn, 3000);
    std::thread::sleep(Duration::from_millis(400));
    kn.agent.take().expect("agent").stop().expect("clean stop");
    // While no agent runs: a Service goes, and a web backend goes.
    kn.api.delete(Kind::Service, "bulk", "svc-0");
    kn.api.apply(slice("default", "web-1", "web", &[("http", 8080, "TCP")], &PODS[..2]));
    std::thread::sleep(Duration::from_millis(400));
    kn.start_agent();
    let (ok, summary) = loop_summary(looper);
    assert!(ok > 50, "too few connections through the restart: {summary}");
    let f = frontends(&kn.bpffs.path);
    assert_eq!(f.keys().collect::<Vec<_>>(), ["10.96.0.10:80/TCP"], "stale frontend left");
    assert_eq!(f["10.96.0.10:80/TCP"], ["10.244.1.1:8080", "10.244.1.2:8080"]);
    let since = Instant::now();
    let lines = kn.probe(&["tcp", "10.96.0.10:80", "30"]);
    assert!(lines.iter().all(|l| backend_of(l).is_some_and(|b| b != "10.244.1.3:8080")), "{lines:?}");
    assert_eq!(kn.servers.hits_since("10.244.1.3:8080".parse().expect("addr"), since), 0);
}

#[test]
fn plan_lists_from_the_api_server_without_a_kernel() {
    let api = FakeApiServer::start().expect("api server");
    let dir = TempDir::new().expect("dir");
    api.apply(node("node-1", "zone-a", "192.0.2.10"));
    api.apply_all(web());
    let kubeconfig = api.kubeconfig(&dir.path).expect("kubeconfig");
    let out = std::process::Command::new(lb_tests::agent_bin())
        .args(["plan", "--source", "kubernetes", "--node-name", "node-1", "--output", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .expect("plan");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["frontend"], "10.96.0.10:80/TCP", "{rows}");
    assert_eq!(rows[0]["kind"], "ClusterIP");
    assert_eq!(rows[0]["service"], "default/web:http");
    assert_eq!(
        rows[0]["backends"],
        serde_json::json!(["10.244.1.1:8080", "10.244.1.2:8080", "10.244.1.3:8080"])
    );
    assert_eq!(rows[0]["reject"], false);
    assert_eq!(rows.as_array().expect("array").len(), 1);
    // API audit logs name the agent.
    let agents = api.user_agents();
    assert!(
        !agents.is_empty() && agents.iter().all(|a| a.starts_with("lb-agent/")),
        "User-Agent of every request: {agents:?}"
    );
}

/// `plan` is a command a person types: with an API server it cannot use, it fails within
/// seconds, saying which of unreachable, unauthorized or forbidden it is, in one error line
/// without a backtrace or colour codes (even with `RUST_BACKTRACE=1`), instead of retrying until
/// killed.
#[test]
fn plan_fails_fast_saying_why_the_api_server_cannot_be_used() {
    let api = FakeApiServer::start().expect("api server");
    let dir = TempDir::new().expect("dir");
    api.apply(node("node-1", "zone-a", "192.0.2.10"));
    api.apply_all(web());
    let served = api.kubeconfig(&dir.path).expect("kubeconfig");
    let nowhere_dir = TempDir::new().expect("dir");
    // A loopback port nothing listens on: connections are refused.
    let nowhere = FakeApiServer::kubeconfig_for(free_local_addr(), &nowhere_dir.path).expect("kubeconfig");
    for (refuse, kubeconfig, said) in [
        (None, &nowhere, "connection refused"),
        (Some(401), &served, "unauthorized"),
        (Some(403), &served, "forbidden"),
    ] {
        api.refuse(refuse);
        let started = Instant::now();
        let out = std::process::Command::new(lb_tests::agent_bin())
            .args(["plan", "--source", "kubernetes", "--node-name", "node-1", "--kubeconfig"])
            .arg(kubeconfig)
            .env("RUST_BACKTRACE", "1")
            .env_remove("NO_COLOR")
            .output()
            .expect("plan");
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}: plan succeeded:\n{stderr}");
        assert!(elapsed < Duration::from_secs(15), "{said}: plan took {elapsed:?}:\n{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(said),
            "{said}: the error line is {last:?}:\n{stderr}"
        );
        assert!(!stderr.to_lowercase().contains("backtrace"), "{said}: a backtrace:\n{stderr}");
        assert!(!stderr.contains('\u{1b}'), "{said}: colour codes in a pipe:\n{stderr}");
        assert!(!stderr.contains("programmed maps are kept"), "{said}: plan programs nothing:\n{stderr}");
    }
    // The same server, serving again: plan works.
    api.refuse(None);
    let out = std::process::Command::new(lb_tests::agent_bin())
        .args(["plan", "--source", "kubernetes", "--node-name", "node-1", "--kubeconfig"])
        .arg(&served)
        .output()
        .expect("plan");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
