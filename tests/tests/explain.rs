//! `lb-agent explain` against the kernel: what it predicts from the pinned maps must be what
//! `lb_tc_ingress` does with the packet (`lb-agent trace`, BPF_PROG_TEST_RUN; nothing attached).
//!
//! An agent with `--lb-algorithm maglev` serves:
//! - `web`: a LoadBalancer IP with `externalTrafficPolicy: Local` and `loadBalancerSourceRanges`,
//!   four endpoints on this node (`node-1`) and two on `node-2`: packets from outside may use only
//!   the local four, through a Maglev table, so the flow hash names one of them per client port;
//! - `sticky`: an external IP with `sessionAffinity: ClientIP` and three local endpoints;
//! - `empty`: an external IP and a ClusterIP without endpoints.
//!
//! Local endpoints only take new flows, so the translated SYN goes through the stack (no SNAT, no
//! FIB lookup) and trace needs no interface.
use std::{collections::BTreeSet, time::Duration};

use lb_tests::{
    agent::{explain, explain_table},
    node::PinnedAgent,
    packet::{Packet, TCP_SYN, trace, trace_batch, tuple},
};
use serde_json::Value;

const WEB_LB: &str = "203.0.113.60:80";
const STICKY: &str = "203.0.113.80:80";
const EMPTY_EXTERNAL: &str = "203.0.113.70:80";
const EMPTY_CLUSTER: &str = "10.96.0.70:80";
/// Inside `web`'s source range 198.18.0.0/15.
const CLIENT: &str = "198.18.0.7";
/// Outside it.
const STRANGER: &str = "192.0.2.9";
const LOCAL_PODS: [&str; 4] = ["10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13"];
const REMOTE_PODS: [&str; 2] = ["10.244.2.10", "10.244.2.11"];
const STICKY_PODS: [&str; 3] = ["10.244.1.20", "10.244.1.21", "10.244.1.22"];

/// TC verdicts (`trace`'s `return_code`).
/// A translated frame is handed on (TCX_NEXT) to later programs and the stack.
const OK: i64 = -1;
const SHOT: i64 = 2;
const PASS: i64 = -1;

fn endpoints(pods: &[&str], node: &str) -> String {
    pods.iter()
        .map(|p| format!("- {{addresses: ['{p}'], nodeName: {node}, conditions: {{ready: true}}}}\n"))
        .collect()
}

fn cluster() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.60
  loadBalancerSourceRanges: ['198.18.0.0/15']
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
status: {{loadBalancer: {{ingress: [{{ip: 203.0.113.60}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{}{}---
apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: default}}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.80
  externalIPs: ['203.0.113.80']
  sessionAffinity: ClientIP
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: sticky-1, namespace: default, labels: {{kubernetes.io/service-name: sticky}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{}---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: default}}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.70
  externalIPs: ['203.0.113.70']
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
",
        endpoints(&LOCAL_PODS, "node-1"),
        endpoints(&REMOTE_PODS, "node-2"),
        endpoints(&STICKY_PODS, "node-1"),
    )
}

/// An agent with `--lb-algorithm maglev` on `cluster()`.
struct Node(PinnedAgent);

impl Node {
    fn start() -> Self {
        let agent =
            PinnedAgent::start(&cluster(), &["--lb-algorithm", "maglev"], Duration::from_secs(20), true);
        Self(agent.expect("agent"))
    }

    fn bpffs(&self) -> &std::path::Path {
        &self.0.bpffs.path
    }

    /// `lb-agent explain --to TO [--from FROM] --output json`.
    fn explain(&self, to: &str, from: Option<&str>) -> Value {
        let to = format!("{to}/TCP");
        let mut args = vec!["--to", to.as_str()];
        if let Some(from) = from {
            args.extend(["--from", from]);
        }
        explain(self.bpffs(), &args).expect("lb-agent explain")
    }
}

/// The backend address a JSON explanation's verdict names.
fn predicted(e: &Value) -> String {
    e["verdict"]["backend"]["address"].as_str().unwrap_or_else(|| panic!("no backend in {e:#}")).to_owned()
}

fn addresses(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .map(|a| a.iter().filter_map(|b| b["address"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn pods(ips: &[&str]) -> BTreeSet<String> {
    ips.iter().map(|ip| format!("{ip}:8080")).collect()
}

#[test]
fn explain_names_the_backend_the_kernel_picks_for_each_client_port() {
    let node = Node::start();
    let ports: Vec<u16> = (0..48).map(|i| 1024 + i * 1361).collect();

    let first = node.explain(WEB_LB, Some(&format!("{CLIENT}:{}", ports[0])));
    assert_eq!(first["frontend"]["service"], "default/web:http", "{first:#}");
    assert_eq!(first["frontend"]["kind"], "LoadBalancer", "{first:#}");
    assert_eq!(first["frontend"]["table"], "maglev", "{first:#}");
    assert_eq!(
        addresses(&first["eligible"]),
        pods(&LOCAL_PODS),
        "only local endpoints for packets: {first:#}"
    );
    assert_eq!(addresses(&first["not_eligible"]), pods(&REMOTE_PODS), "{first:#}");
    for n in first["not_eligible"].as_array().expect("not_eligible") {
        assert!(n["reason"].as_str().is_some_and(|r| r.contains("not local")), "{n:#}");
    }

    // This node's own connections may use every endpoint (kube-proxy's short-circuit).
    let socket = node.explain(WEB_LB, None);
    assert_eq!(socket["path"], "socket", "{socket:#}");
    assert_eq!(socket["verdict"]["choice"], "random", "{socket:#}");
    let all: BTreeSet<String> = pods(&LOCAL_PODS).union(&pods(&REMOTE_PODS)).cloned().collect();
    assert_eq!(addresses(&socket["eligible"]), all, "{socket:#}");

    // Predict every flow first (no state yet), then let the kernel choose.
    let predictions: Vec<String> = ports
        .iter()
        .map(|port| {
            let e = node.explain(WEB_LB, Some(&format!("{CLIENT}:{port}")));
            assert_eq!(e["verdict"]["action"], "translate", "{e:#}");
            assert_eq!(e["verdict"]["choice"], "flow_hash", "{e:#}");
            predicted(&e)
        })
        .collect();
    let frames: Vec<Vec<u8>> =
        ports.iter().map(|port| Packet::tcp(&format!("{CLIENT}:{port}"), WEB_LB, TCP_SYN).frame()).collect();
    let traced = trace_batch(node.bpffs(), "ingress", &frames).expect("trace --batch");
    for ((port, predicted), t) in ports.iter().zip(&predictions).zip(&traced) {
        assert_eq!(t.verdict, OK, "port {port}: {:#}", t.json);
        let backend = tuple(&t.output).2.to_string();
        assert_eq!(
            &backend, predicted,
            "client port {port}: explain said {predicted}, the kernel chose {backend}"
        );
    }
    let distinct: BTreeSet<&String> = predictions.iter().collect();
    eprintln!(
        "{} client ports spread over {} backends, each as explain predicted",
        ports.len(),
        distinct.len()
    );
    assert!(distinct.len() >= 3, "the ports should spread over the local backends: {distinct:?}");
    assert!(distinct.iter().all(|b| pods(&LOCAL_PODS).contains(*b)), "{distinct:?}");

    // The plain-words form: the verdict, the frontend, the chosen backend marked, the reasons.
    let from = format!("{CLIENT}:{}", ports[0]);
    let table = explain_table(node.bpffs(), &["--to", &format!("{WEB_LB}/tcp"), "--from", &from])
        .expect("explain as a table");
    eprintln!("{table}");
    for piece in [
        format!("→ translate to {} (slot", predictions[0]),
        "default/web:http".to_owned(),
        "◀ chosen".to_owned(),
        "not local: externalTrafficPolicy: Local".to_owned(),
        format!("source {CLIENT} is inside loadBalancerSourceRanges 198.18.0.0/15"),
    ] {
        assert!(table.contains(&piece), "{piece:?} missing from:\n{table}");
    }

    // Now tracked: explain says so, and names the same backend.
    let again = node.explain(WEB_LB, Some(&format!("{CLIENT}:{}", ports[0])));
    assert_eq!(again["tracked"]["backend"], predictions[0].as_str(), "{again:#}");
    assert_eq!(again["tracked"]["live"], true, "{again:#}");
}

#[test]
fn explain_verdicts_match_what_the_kernel_does_with_the_packet() {
    let node = Node::start();
    let stat = |t: &lb_tests::packet::Traced, name: &str| t.json["counters"][name].as_u64().unwrap_or(0);

    // A source outside loadBalancerSourceRanges: denied before any backend is chosen.
    let e = node.explain(WEB_LB, Some(&format!("{STRANGER}:1234")));
    assert_eq!(e["verdict"]["action"], "source_denied", "{e:#}");
    assert!(e["summary"].as_str().is_some_and(|s| s.contains("not in loadBalancerSourceRanges")), "{e:#}");
    let t =
        trace(node.bpffs(), "ingress", &Packet::tcp(&format!("{STRANGER}:1234"), WEB_LB, TCP_SYN).frame())
            .expect("trace");
    assert_eq!((t.verdict, stat(&t, "tc_source_denied")), (SHOT, 1), "{:#}", t.json);

    // A frontend without endpoints: rejected (at TC: dropped).
    let e = node.explain(EMPTY_EXTERNAL, Some(&format!("{CLIENT}:40000")));
    assert_eq!(e["verdict"]["action"], "reject", "{e:#}");
    assert!(e["summary"].as_str().is_some_and(|s| s.contains("no endpoints")), "{e:#}");
    let t = trace(
        node.bpffs(),
        "ingress",
        &Packet::tcp(&format!("{CLIENT}:40000"), EMPTY_EXTERNAL, TCP_SYN).frame(),
    )
    .expect("trace");
    assert_eq!((t.verdict, stat(&t, "tc_dropped")), (SHOT, 1), "{:#}", t.json);
    let e = node.explain(EMPTY_CLUSTER, None);
    assert_eq!(e["verdict"]["action"], "reject", "{e:#}");
    assert!(e["verdict"]["reason"].as_str().is_some_and(|s| s.contains("ECONNREFUSED")), "{e:#}");

    // Not a frontend: untouched.
    let e = node.explain("203.0.113.99:80", Some(&format!("{CLIENT}:40000")));
    assert_eq!(e["verdict"]["action"], "not_a_frontend", "{e:#}");
    let t = trace(
        node.bpffs(),
        "ingress",
        &Packet::tcp(&format!("{CLIENT}:40000"), "203.0.113.99:80", TCP_SYN).frame(),
    )
    .expect("trace");
    assert_eq!(t.verdict, PASS, "{:#}", t.json);
}

#[test]
fn explain_reads_the_kernels_session_affinity_entry() {
    let node = Node::start();
    // Two ports of one client whose flow hashes name different backends.
    let first = node.explain(STICKY, Some(&format!("{CLIENT}:40000")));
    assert_eq!(first["frontend"]["affinity_timeout"], 10800, "{first:#}");
    let b1 = predicted(&first);
    let (p2, b2) = (40001..41000)
        .map(|p| (p, predicted(&node.explain(STICKY, Some(&format!("{CLIENT}:{p}"))))))
        .find(|(_, b)| *b != b1)
        .expect("a port hashing to another backend");
    eprintln!("port 40000 → {b1}, port {p2} → {b2} by hash");

    // The first flow makes the kernel remember the client's backend.
    let t = trace(node.bpffs(), "ingress", &Packet::tcp(&format!("{CLIENT}:40000"), STICKY, TCP_SYN).frame())
        .expect("trace");
    assert_eq!(tuple(&t.output).2.to_string(), b1, "{:#}", t.json);

    // Now explain says the second port stays on it too, and the kernel agrees.
    let e = node.explain(STICKY, Some(&format!("{CLIENT}:{p2}")));
    assert_eq!(e["verdict"]["choice"], "affinity", "{e:#}");
    assert_eq!(predicted(&e), b1, "{e:#}");
    assert_eq!(e["affinity"]["holds"], true, "{e:#}");
    let t = trace(node.bpffs(), "ingress", &Packet::tcp(&format!("{CLIENT}:{p2}"), STICKY, TCP_SYN).frame())
        .expect("trace");
    assert_eq!(tuple(&t.output).2.to_string(), b1, "kept by affinity: {:#}", t.json);
}

/// "Why does pod X get no traffic?": the maps hold only the endpoints a path uses, so with the
/// agent running `explain` also lists every endpoint of the Service from the agent's translation,
/// used or not and why in kube-proxy's terms: a terminating endpoint next to ready ones, one not
/// ready. Without the agent it says that reasons need the agent, and shows what the maps hold.
#[test]
fn explain_names_every_endpoint_and_why_with_the_agent_running() {
    let yaml = "apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.90
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ['10.244.1.30'], nodeName: node-1, conditions: {ready: true}}
- {addresses: ['10.244.1.31'], nodeName: node-2, conditions: {ready: true}}
- {addresses: ['10.244.1.32'], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: ['10.244.1.33'], nodeName: node-2, conditions: {ready: false, serving: false, terminating: false}}
";
    let metrics = lb_tests::agent::free_local_addr().to_string();
    let node = lb_tests::node::PinnedAgent::start(
        yaml,
        &["--metrics-addr", &metrics],
        Duration::from_secs(20),
        true,
    )
    .expect("agent");
    let args = ["--to", "10.96.0.90:80/TCP", "--agent", &metrics];
    let e = explain(&node.bpffs.path, &args).expect("explain");
    let endpoints = e["endpoints"].as_array().unwrap_or_else(|| panic!("no endpoints from the agent: {e:#}"));
    let of = |addr: &str| {
        endpoints
            .iter()
            .find(|v| v["address"] == format!("{addr}:8080"))
            .unwrap_or_else(|| panic!("{addr} not named: {e:#}"))
    };
    assert_eq!(endpoints.len(), 4, "every endpoint, used or not: {e:#}");
    assert_eq!(of("10.244.1.30")["used"], true);
    assert_eq!(of("10.244.1.31")["used"], true);
    let terminating = of("10.244.1.32");
    assert_eq!(terminating["used"], false, "{terminating}");
    assert!(
        terminating["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("terminating") && r.contains("ready ones exist")),
        "{terminating}"
    );
    let not_ready = of("10.244.1.33");
    assert_eq!(not_ready["used"], false);
    assert!(not_ready["reason"].as_str().is_some_and(|r| r.starts_with("not ready")), "{not_ready}");
    assert_eq!(not_ready["node"], "node-2");
    let table = explain_table(&node.bpffs.path, &args).expect("explain table");
    assert!(table.contains("10.244.1.32:8080") && table.contains("terminating"), "{table}");

    // The agent stopped: the maps still answer; the reasons need the agent.
    // Moved out alone: the pins, cgroup and files still drop in their order afterwards.
    node.agent.stop().expect("stop");
    let e = explain(&node.bpffs.path, &args).expect("explain without the agent");
    assert_eq!(e["verdict"]["action"], "translate", "{e:#}");
    assert!(e.get("endpoints").is_none(), "{e:#}");
    let why = e["endpoints_unavailable"].as_str().unwrap_or_default();
    assert!(why.contains("needs the running agent"), "{e:#}");
}
