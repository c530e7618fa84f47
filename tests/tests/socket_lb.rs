//! Socket-level load balancing in a real kernel: the agent attaches its cgroup programs to a test
//! cgroup, clients run in that cgroup inside a test network namespace, and backends are servers on
//! the namespace's own `lo`. Nothing leaves the namespace: a missed rewrite fails with
//! ENETUNREACH there.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{attached, cleanup, inspect},
    node::Node,
    probe::{self, Place, backend_of},
    yaml::{Ep, Port, documents, service, slice},
};

const ECONNREFUSED: &str = "os=111";
const ENETUNREACH: &str = "os=101";
const EHOSTUNREACH: &str = "os=113";

fn web(ips: &[&str], endpoints: &[&str]) -> String {
    let v4: Vec<Ep<'_>> = endpoints.iter().filter(|e| !e.contains(':')).map(|e| Ep::ready(e)).collect();
    let v6: Vec<Ep<'_>> = endpoints.iter().filter(|e| e.contains(':')).map(|e| Ep::ready(e)).collect();
    documents(&[
        service("default", "web", ips, &[Port("http", 80, "TCP", 8080)]),
        slice("default", "web-v4", "web", "IPv4", &[("http", 8080, "TCP")], &v4),
        slice("default", "web-v6", "web", "IPv6", &[("http", 8080, "TCP")], &v6),
    ])
}

fn dns(ips: &[&str], endpoints: &[&str]) -> String {
    let v4: Vec<Ep<'_>> = endpoints.iter().filter(|e| !e.contains(':')).map(|e| Ep::ready(e)).collect();
    let v6: Vec<Ep<'_>> = endpoints.iter().filter(|e| e.contains(':')).map(|e| Ep::ready(e)).collect();
    let ports = [("dns", 5353, "UDP"), ("dns-tcp", 5353, "TCP")];
    documents(&[
        service("kube-system", "dns", ips, &[Port("dns", 53, "UDP", 5353), Port("dns-tcp", 53, "TCP", 5353)]),
        slice("kube-system", "dns-v4", "dns", "IPv4", &ports, &v4),
        slice("kube-system", "dns-v6", "dns", "IPv6", &ports, &v6),
    ])
}

fn tally(lines: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lines {
        let key = backend_of(line).map_or_else(|| format!("ERROR {line}"), str::to_owned);
        *out.entry(key).or_default() += 1;
    }
    out
}

const EXPECTED_PROGRAMS: [&str; 8] = [
    "connect4:lb_connect4",
    "connect6:lb_connect6",
    "getpeername4:lb_getpeername4",
    "getpeername6:lb_getpeername6",
    "recvmsg4:lb_recvmsg4",
    "recvmsg6:lb_recvmsg6",
    "sendmsg4:lb_sendmsg4",
    "sendmsg6:lb_sendmsg6",
];

const POD_IPS: [&str; 3] = ["10.244.1.1", "10.244.1.2", "10.244.1.3"];

fn web_backends() -> Vec<String> {
    POD_IPS.iter().map(|ip| format!("{ip}:8080")).collect()
}

#[test]
fn tcp_to_clusterip_reaches_every_backend() {
    let node = Node::new(
        &["10.244.1.1:8080", "10.244.1.2:8080", "10.244.1.3:8080"],
        &web(&["10.96.0.10"], &POD_IPS),
    );
    let lines = node.probe(&["tcp", "10.96.0.10:80", "300"]);
    let counts = tally(&lines);
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        web_backends(),
        "every connection reaches a backend: {counts:?}"
    );
    for (backend, n) in &counts {
        assert!(*n >= 45, "{backend} got {n} of 300 connections (< 15%): {counts:?}");
    }
    // The application sees the ClusterIP as its peer, as with kube-proxy's DNAT.
    assert!(lines.iter().all(|l| l.ends_with("peer=10.96.0.10:80")), "{:?}", &lines[..3]);
    // A dual-stack IPv6 socket dialling the ClusterIP v4-mapped is balanced the same way.
    let lines = node.probe(&["tcp", "[::ffff:10.96.0.10]:80", "30"]);
    assert_eq!(tally(&lines).len(), 3, "{:?}", tally(&lines));
    assert!(lines.iter().all(|l| l.ends_with("peer=[::ffff:10.96.0.10]:80")), "{:?}", &lines[..3]);
    // The servers agree: 330 accepted connections in all.
    assert_eq!(node.servers.counts().values().sum::<usize>(), 330);
    lb_tests::parity::shown(&["5", "13b"]);
}

#[test]
fn udp_replies_come_from_the_clusterip() {
    let backends = ["10.244.1.1:5353", "10.244.1.2:5353", "10.244.1.3:5353"];
    let node = Node::new(&backends, &dns(&["10.96.0.53"], &POD_IPS));
    let lines = node.probe(&["udp", "10.96.0.53:53", "30"]);
    assert_eq!(lines.len(), 30);
    for line in &lines {
        assert!(line.starts_with("ok 10.244.1."), "no answer from a backend: {line}");
        assert!(line.ends_with("from=10.96.0.53:53"), "recvfrom must show the ClusterIP: {line}");
    }
    assert!(tally(&lines).len() >= 2, "datagrams are spread: {:?}", tally(&lines));
    // A connected UDP socket (resolvers, nginx, Envoy): replies received, peer is the ClusterIP.
    let lines = node.probe(&["udp-connected", "10.96.0.53:53", "5"]);
    assert!(
        lines.iter().all(|l| l.starts_with("ok 10.244.1.") && l.ends_with("peer=10.96.0.53:53")),
        "{lines:?}"
    );
    // An IPv6 socket dialling the IPv4 ClusterIP v4-mapped (Java and other dual-stack runtimes).
    let lines = node.probe(&["udp", "[::ffff:10.96.0.53]:53", "5"]);
    assert!(
        lines.iter().all(|l| l.starts_with("ok 10.244.1.") && l.ends_with("from=[::ffff:10.96.0.53]:53")),
        "{lines:?}"
    );
    // TCP on the same ClusterIP and port number is a different frontend.
    let lines = node.probe(&["tcp", "10.96.0.53:53", "5"]);
    assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.")), "{lines:?}");
    lb_tests::parity::shown(&["6"]);
}

#[test]
fn ipv6_clusterip_tcp_and_udp() {
    let pods = ["fd00:10:244:1::1", "fd00:10:244:1::2", "fd00:10:244:1::3"];
    let mut backends: Vec<String> = pods.iter().map(|p| format!("[{p}]:8080")).collect();
    backends.extend(pods.iter().map(|p| format!("[{p}]:5353")));
    let backend_refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let source = documents(&[web(&["10.96.0.10", "fd00:10:96::10"], &pods), dns(&["fd00:10:96::53"], &pods)]);
    let node = Node::new(&backend_refs, &source);

    let lines = node.probe(&["tcp", "[fd00:10:96::10]:80", "60"]);
    let counts = tally(&lines);
    assert_eq!(counts.len(), 3, "all three IPv6 backends reached: {counts:?}");
    assert!(counts.keys().all(|k| k.starts_with("[fd00:10:244:1::")), "{counts:?}");
    assert!(lines.iter().all(|l| l.ends_with("peer=[fd00:10:96::10]:80")), "{:?}", &lines[..3]);

    let lines = node.probe(&["udp", "[fd00:10:96::53]:53", "20"]);
    assert!(
        lines.iter().all(|l| l.starts_with("ok [fd00:10:244:1::") && l.ends_with("from=[fd00:10:96::53]:53")),
        "{lines:?}"
    );

    // The dual-stack Service has no IPv4 endpoints here: its IPv4 ClusterIP refuses.
    let lines = node.probe(&["tcp", "10.96.0.10:80", "1"]);
    assert!(lines[0].contains(ECONNREFUSED), "{lines:?}");
    lb_tests::parity::shown(&["4", "6"]);
}

#[test]
fn service_without_ready_endpoints_refuses_promptly() {
    let not_ready = documents(&[
        service("default", "web", &["10.96.0.10"], &[Port("http", 80, "TCP", 8080)]),
        service("kube-system", "dns", &["10.96.0.53"], &[Port("dns", 53, "UDP", 5353)]),
        slice(
            "default",
            "web",
            "web",
            "IPv4",
            &[("http", 8080, "TCP")],
            &[Ep("10.244.1.1", false, false, false)],
        ),
    ]);
    let node = Node::new(&["10.244.1.1:8080", "10.244.1.1:5353"], &not_ready);
    let lines = node.probe(&["tcp", "10.96.0.10:80", "5"]);
    for line in &lines {
        assert!(line.starts_with("err") && line.contains(ECONNREFUSED), "connect must be refused: {line}");
        let us: u64 = line.rsplit("us=").next().and_then(|v| v.parse().ok()).expect("elapsed");
        assert!(us < 100_000, "refusal took {us} µs: {line}");
    }
    let lines = node.probe(&["udp", "10.96.0.53:53", "3"]);
    assert!(lines.iter().all(|l| l.contains(ECONNREFUSED)), "UDP send must be refused: {lines:?}");
    assert!(node.servers.hits().is_empty(), "the not-ready backend got traffic");
    lb_tests::parity::shown(&["39"]);
}

#[test]
fn removed_backend_gets_no_new_flows_but_keeps_established_ones() {
    let node = Node::new(
        &["10.244.1.1:8080", "10.244.1.2:8080", "10.244.1.3:8080"],
        &web(&["10.96.0.10"], &POD_IPS),
    );
    // Hold a connection open to whichever backend it reaches; remove that backend.
    let mut held = probe::spawn(&node.inside(), &["tcp-hold", "10.96.0.10:80"]).expect("tcp-hold");
    let mut held_out = std::io::BufReader::new(held.stdout.take().expect("stdout"));
    let mut held_in = held.stdin.take().expect("stdin");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut held_out, &mut line).expect("greeting");
    let victim = backend_of(line.trim()).expect("held connection reached a backend").to_owned();
    let remaining: Vec<&str> =
        POD_IPS.iter().copied().filter(|ip| !victim.starts_with(&format!("{ip}:"))).collect();
    assert_eq!(remaining.len(), 2);

    let edited = Instant::now();
    let applied_after = node.update(&web(&["10.96.0.10"], &remaining));
    assert!(applied_after < Duration::from_secs(1), "change applied after {applied_after:?}");
    let lines = node.probe(&["tcp", "10.96.0.10:80", "100"]);
    let counts = tally(&lines);
    assert!(!counts.contains_key(&victim), "removed backend {victim} still gets new connections: {counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    let victim_addr: SocketAddr = victim.parse().expect("addr");
    let new_hits = node.servers.hits_since(victim_addr, edited + applied_after);
    assert_eq!(new_hits, 0, "{victim} accepted {new_hits} connections after the change was applied");

    // The established connection still works.
    std::io::Write::write_all(&mut held_in, b"ping\n").expect("stdin");
    line.clear();
    std::io::BufRead::read_line(&mut held_out, &mut line).expect("reply");
    assert_eq!(line.trim(), format!("ok {victim}"), "established connection broke");
    drop(held_in);
    let _ = held.wait();

    // The kernel's backend table no longer lists it as active.
    let backends = inspect("backends", &node.bpffs.path).expect("inspect");
    let active: Vec<&str> = backends
        .as_array()
        .expect("array")
        .iter()
        .filter(|b| b["state"] == "active")
        .filter_map(|b| b["address"].as_str())
        .collect();
    assert!(!active.contains(&victim.as_str()), "inspect backends lists {victim} as active: {backends}");
    assert_eq!(active.len(), 2, "{backends}");
    lb_tests::parity::shown(&["49"]);
}

#[test]
fn process_outside_the_cgroup_is_not_affected() {
    let node = Node::new(&["10.244.1.1:8080"], &web(&["10.96.0.10"], &["10.244.1.1"]));
    let outside = Place { netns: &node.netns, cgroup: None };
    let lines = probe::run(&outside, &["tcp", "10.96.0.10:80", "3"]).expect("probe");
    assert!(
        lines.iter().all(|l| l.contains(ENETUNREACH)),
        "outside the cgroup the ClusterIP must stay untranslated: {lines:?}"
    );
    // The same namespace, inside the cgroup, is translated.
    let lines = node.probe(&["tcp", "10.96.0.10:80", "3"]);
    assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.1:8080")), "{lines:?}");
    assert!(node.servers.counts().values().sum::<usize>() == 3);
}

#[test]
fn agent_restart_keeps_connections_flowing_and_drops_stale_entries() {
    let source = documents(&[web(&["10.96.0.10"], &POD_IPS), dns(&["10.96.0.53"], &POD_IPS)]);
    let backends: Vec<String> =
        POD_IPS.iter().flat_map(|ip| [format!("{ip}:8080"), format!("{ip}:5353")]).collect();
    let backend_refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let mut node = Node::new(&backend_refs, &source);

    let looper = probe::spawn(&node.inside(), &["tcp-loop", "10.96.0.10:80", "3000"]).expect("tcp-loop");
    std::thread::sleep(Duration::from_millis(500));
    node.agent.take().expect("agent").stop().expect("clean stop");
    // While no agent runs, the file changes: the dns Service goes and a web backend goes.
    node.dir.write("cluster.yaml", &web(&["10.96.0.10"], &POD_IPS[..2])).expect("source");
    std::thread::sleep(Duration::from_millis(500));
    node.start_agent();
    let out = looper.wait_with_output().expect("tcp-loop");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" err=0 "), "connections failed during the restart: {summary}");
    let ok: u64 = summary
        .split("ok=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("ok count");
    assert!(ok > 50, "too few connections went through: {summary}");

    let services = inspect("services", &node.bpffs.path).expect("inspect");
    let frontends: Vec<&str> =
        services.as_array().expect("array").iter().filter_map(|s| s["frontend"].as_str()).collect();
    assert_eq!(frontends, ["10.96.0.10:80"], "stale frontends stayed: {services}");
    let backends = inspect("backends", &node.bpffs.path).expect("inspect");
    let addrs: Vec<&str> =
        backends.as_array().expect("array").iter().filter_map(|b| b["address"].as_str()).collect();
    assert_eq!(addrs.len(), 2, "stale backends stayed: {backends}");
    assert!(!addrs.contains(&"10.244.1.3:8080"), "{backends}");
    // The old agent's programs were detached once the new ones were attached: one program per hook.
    // (The kernel frees an unpinned link from a work queue, so allow it a moment.)
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut programs = attached(&node.cgroup.path).expect("attached");
    while programs != EXPECTED_PROGRAMS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        programs = attached(&node.cgroup.path).expect("attached");
    }
    assert_eq!(programs, EXPECTED_PROGRAMS, "exactly the new agent's programs are attached");
    // And the new agent's programs serve: the removed backend gets nothing new.
    let lines = node.probe(&["tcp", "10.96.0.10:80", "30"]);
    assert!(tally(&lines).keys().all(|b| b == "10.244.1.1:8080" || b == "10.244.1.2:8080"), "{lines:?}");
    let lines = node.probe(&["udp", "10.96.0.53:53", "1"]);
    assert!(lines[0].contains(ENETUNREACH), "the removed dns ClusterIP must no longer translate: {lines:?}");
}

#[test]
fn bad_objects_are_reported_and_the_rest_applies() {
    let source = documents(&[
        web(&["10.96.0.10"], &["10.244.1.1"]),
        // Unknown protocol: the whole Service is left out.
        service("default", "bad-proto", &["10.96.0.20"], &[Port("x", 80, "QUIC", 8080)]),
        // Port out of range.
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad-port, namespace: default}\nspec:\n  clusterIP: 10.96.0.21\n  ports: [{name: p, port: 70000, protocol: TCP}]\n".to_owned(),
        // A second Service on web's frontend.
        service("default", "zz-duplicate", &["10.96.0.10"], &[Port("http", 80, "TCP", 8080)]),
        // A slice whose Service does not exist.
        slice("default", "orphan", "ghost", "IPv4", &[("http", 8080, "TCP")], &[Ep::ready("10.244.1.1")]),
    ]);
    let node = Node::new(&["10.244.1.1:8080"], &source);
    let log = node.agent().log().join("\n");
    for expected in [
        "bad-proto",
        "unknown protocol \"QUIC\"",
        "bad-port",
        "70000",
        "zz-duplicate",
        "already used by default/web:http",
        "ghost does not exist",
    ] {
        assert!(log.contains(expected), "agent log does not mention {expected:?}:\n{log}");
    }
    let services = inspect("services", &node.bpffs.path).expect("inspect");
    let rows = services.as_array().expect("array");
    assert_eq!(rows.len(), 1, "only web is programmed: {services}");
    assert_eq!(rows[0]["frontend"], "10.96.0.10:80");
    assert_eq!(rows[0]["backends"].as_array().expect("backends").len(), 1);
    let lines = node.probe(&["tcp", "10.96.0.10:80", "3"]);
    assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.1:8080")), "{lines:?}");
    let lines = node.probe(&["tcp", "10.96.0.20:80", "1"]);
    assert!(lines[0].contains(ENETUNREACH), "{lines:?}");
}

#[test]
fn datapath_serves_while_the_agent_is_down_and_cleanup_removes_it() {
    let mut node = Node::new(&["10.244.1.1:8080"], &web(&["10.96.0.10"], &["10.244.1.1"]));
    node.agent.take().expect("agent").stop().expect("clean stop");
    // Pinned links and maps keep the programs attached and serving without the agent.
    assert_eq!(attached(&node.cgroup.path).expect("attached"), EXPECTED_PROGRAMS);
    let lines = node.probe(&["tcp", "10.96.0.10:80", "3"]);
    assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.1:8080")), "{lines:?}");
    // inspect reads the pins, not the agent.
    let services = inspect("services", &node.bpffs.path).expect("inspect");
    assert_eq!(services[0]["frontend"], "10.96.0.10:80");

    let out = cleanup(&node.bpffs.path, &node.cgroup.path).expect("cleanup");
    assert!(out.contains("no lb programs attached"), "{out}");
    assert!(attached(&node.cgroup.path).expect("attached").is_empty());
    assert!(!node.bpffs.path.exists(), "pins left behind");
    let lines = node.probe(&["tcp", "10.96.0.10:80", "1"]);
    assert!(lines[0].contains(ENETUNREACH), "after cleanup nothing is translated: {lines:?}");
}

#[test]
fn external_frontends_and_traffic_policies_at_the_socket() {
    let source = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {topology.kubernetes.io/zone: zone-a}}
status: {addresses: [{type: InternalIP, address: 192.0.2.10}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.30
  clusterIPs: [10.96.0.30]
  ipFamilies: [IPv4]
  externalIPs: [203.0.113.7]
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.9}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: default, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.1], conditions: {ready: true}, nodeName: node-2}]
---
apiVersion: v1
kind: Service
metadata: {name: itp, namespace: default}
spec:
  clusterIP: 10.96.0.31
  clusterIPs: [10.96.0.31]
  ipFamilies: [IPv4]
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: itp-1, namespace: default, labels: {kubernetes.io/service-name: itp}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.2], conditions: {ready: true}, nodeName: node-2}]
"#;
    let node = Node::new(&["10.244.1.1:8080", "10.244.1.2:8080"], source);
    // This node's own connections to every frontend of `ext` reach its (remote) endpoint: the
    // ClusterIP by policy, the external ones by kube-proxy's short-circuit of local traffic.
    for frontend in ["10.96.0.30:80", "203.0.113.7:80", "198.51.100.9:80", "192.0.2.10:30080"] {
        let lines = node.probe(&["tcp", frontend, "3"]);
        assert!(lines.iter().all(|l| backend_of(l) == Some("10.244.1.1:8080")), "{frontend}: {lines:?}");
    }
    // internalTrafficPolicy: Local with endpoints only on other nodes: dropped, not refused.
    let lines = node.probe(&["tcp", "10.96.0.31:80", "2"]);
    assert!(lines.iter().all(|l| l.contains(EHOSTUNREACH)), "{lines:?}");
    assert_eq!(
        node.servers
            .hits_since("10.244.1.2:8080".parse().expect("addr"), Instant::now() - Duration::from_secs(60)),
        0
    );
    let services = inspect("services", &node.bpffs.path).expect("inspect");
    let kinds: BTreeMap<String, String> = services
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (r["frontend"].as_str().unwrap_or("").to_owned(), r["kind"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(kinds.get("203.0.113.7:80").map(String::as_str), Some("ExternalIP"), "{services}");
    assert_eq!(kinds.get("198.51.100.9:80").map(String::as_str), Some("LoadBalancer"), "{services}");
    assert_eq!(kinds.get("192.0.2.10:30080").map(String::as_str), Some("NodePort"), "{services}");
    lb_tests::parity::shown(&["8", "9", "31", "40"]);
}

/// `spec.sessionAffinity: ClientIP` (and `timeoutSeconds`, when given) added to a Service.
fn with_affinity(service: String, timeout: Option<u32>) -> String {
    let config = timeout.map_or_else(String::new, |t| {
        format!("  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}\n")
    });
    service.replacen("spec:\n", &format!("spec:\n  sessionAffinity: ClientIP\n{config}"), 1)
}

/// `web` (10.96.0.10) with ClientIP affinity on `endpoints`, and `other` (10.96.0.11) on all
/// three pods without affinity: the same backends (ids) behind a second Service.
fn sticky_web(timeout: Option<u32>, endpoints: &[&str]) -> String {
    let eps: Vec<Ep<'_>> = endpoints.iter().map(|e| Ep::ready(e)).collect();
    let all: Vec<Ep<'_>> = POD_IPS.iter().map(|e| Ep::ready(e)).collect();
    documents(&[
        with_affinity(service("default", "web", &["10.96.0.10"], &[Port("http", 80, "TCP", 8080)]), timeout),
        slice("default", "web", "web", "IPv4", &[("http", 8080, "TCP")], &eps),
        service("default", "other", &["10.96.0.11"], &[Port("http", 80, "TCP", 8080)]),
        slice("default", "other", "other", "IPv4", &[("http", 8080, "TCP")], &all),
    ])
}

/// `n` connects to `to` from the node's namespace; asserts they all reach one backend and returns it.
fn one_backend(node: &Node, to: &str, n: usize) -> String {
    let counts = tally(&node.probe(&["tcp", to, &n.to_string()]));
    assert_eq!(counts.len(), 1, "{n} connections to {to} must reach one backend: {counts:?}");
    let (backend, got) = counts.into_iter().next().expect("one backend");
    assert!(!backend.starts_with("ERROR") && got == n, "{backend}");
    backend
}

/// The `inspect affinity` rows.
fn affinity_rows(node: &Node) -> Vec<serde_json::Value> {
    inspect("affinity", &node.bpffs.path).expect("inspect affinity").as_array().expect("rows").clone()
}

#[test]
fn session_affinity_keeps_a_client_namespace_on_one_backend() {
    let backends = web_backends();
    let backend_refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let node = Node::new(&backend_refs, &sticky_web(None, &POD_IPS));
    let chosen = one_backend(&node, "10.96.0.10:80", 50);
    // The same namespace through a dual-stack socket (the same Service port) is the same client.
    let lines = node.probe(&["tcp", "[::ffff:10.96.0.10]:80", "10"]);
    assert!(lines.iter().all(|l| backend_of(l) == Some(chosen.as_str())), "{chosen}: {lines:?}");
    // Without affinity the same pods are spread.
    let counts = tally(&node.probe(&["tcp", "10.96.0.11:80", "50"]));
    assert!(counts.len() >= 2 && counts.keys().all(|k| backends.contains(k)), "{counts:?}");

    // The kernel's entry: the client is the network namespace, kept on `chosen`, default timeout.
    let rows = affinity_rows(&node);
    assert_eq!(rows.len(), 1, "one client of one group (`other` has no affinity): {rows:?}");
    assert!(rows[0]["client"].as_str().is_some_and(|c| c.starts_with("netns:")), "{rows:?}");
    assert_eq!(rows[0]["backend"], chosen.as_str(), "{rows:?}");
    assert_eq!(rows[0]["state"], "active", "{rows:?}");
    assert_eq!(rows[0]["timeout_seconds"], 10800, "{rows:?}");

    // `chosen` leaves `web` but stays a backend of `other` (same backend id, still in the maps):
    // web's slots no longer name it, so its clients move, and stick to their new backend.
    let remaining: Vec<&str> =
        POD_IPS.iter().copied().filter(|ip| !chosen.starts_with(&format!("{ip}:"))).collect();
    node.update(&sticky_web(None, &remaining));
    let services = inspect("backends", &node.bpffs.path).expect("inspect");
    assert!(
        services.as_array().expect("rows").iter().any(|b| b["address"] == chosen.as_str()),
        "{chosen} is still other's backend: {services}"
    );
    let moved = one_backend(&node, "10.96.0.10:80", 50);
    assert_ne!(moved, chosen, "a backend removed from the Service must not be kept by affinity");
    let rows = affinity_rows(&node);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["backend"], moved.as_str(), "{rows:?}");
    assert_eq!(rows[0]["state"], "active", "{rows:?}");
    lb_tests::parity::shown(&["13"]);
}

#[test]
fn session_affinity_is_refreshed_by_each_connection_and_expires_after_the_timeout() {
    let backends = web_backends();
    let backend_refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let node = Node::new(&backend_refs, &sticky_web(Some(2), &POD_IPS));
    let first = one_backend(&node, "10.96.0.10:80", 10);
    // A client that keeps connecting within the timeout keeps its backend (kube-proxy's `recent`
    // match refreshes on every new connection), well past the timeout since its first one.
    let started = Instant::now();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(one_backend(&node, "10.96.0.10:80", 1), first);
    }
    assert!(started.elapsed() > Duration::from_secs(3));
    let rows = affinity_rows(&node);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "active", "{rows:?}");
    assert_eq!(rows[0]["timeout_seconds"], 2, "{rows:?}");

    // Idle for longer than the timeout: the entry has expired, and the next connection chooses
    // anew. Which backend a new random choice takes cannot be asserted (it may be `first` again);
    // the entry's expiry and its replacement can.
    std::thread::sleep(Duration::from_secs(3));
    let rows = affinity_rows(&node);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "expired", "{rows:?}");
    assert!(rows[0]["idle_ms"].as_u64().is_some_and(|ms| ms >= 3000), "{rows:?}");
    assert_eq!(rows[0]["backend"], first.as_str(), "{rows:?}");
    let second = one_backend(&node, "10.96.0.10:80", 10);
    let rows = affinity_rows(&node);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "active", "a new choice was recorded: {rows:?}");
    assert!(rows[0]["idle_ms"].as_u64().is_some_and(|ms| ms < 2000), "{rows:?}");
    assert_eq!(rows[0]["backend"], second.as_str(), "{rows:?}");
    lb_tests::parity::shown(&["13a"]);
}

/// An unconnected UDP socket sent to more backends than its socket storage holds (four) before
/// it reads the replies: the translations pushed out of its storage go to the LRU reverse-NAT map
/// by socket cookie, and every reply still comes from the ClusterIP, from every backend, through
/// plain and v4-mapped sockets.
#[test]
fn an_unconnected_udp_socket_sent_to_more_backends_than_its_storage_holds_keeps_the_clusterip() {
    let pods: Vec<String> = (1..=8).map(|i| format!("10.244.1.{i}")).collect();
    let backends: Vec<String> = pods.iter().map(|p| format!("{p}:5353")).collect();
    let backend_refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let pod_refs: Vec<&str> = pods.iter().map(String::as_str).collect();
    let node = Node::new(&backend_refs, &dns(&["10.96.0.53"], &pod_refs));
    for (addr, from) in
        [("10.96.0.53:53", "from=10.96.0.53:53"), ("[::ffff:10.96.0.53]:53", "from=[::ffff:10.96.0.53]:53")]
    {
        let lines = node.probe(&["udp-burst", addr, "200"]);
        assert_eq!(lines.len(), 200, "{addr}");
        let wrong: Vec<&String> =
            lines.iter().filter(|l| !(l.starts_with("ok 10.244.1.") && l.ends_with(from))).collect();
        assert!(wrong.is_empty(), "{addr}: {} of 200, first {:?}", wrong.len(), wrong.first());
        // Random choices over eight backends: all of them answered, so the socket went through
        // more backends than its four storage slots.
        assert_eq!(tally(&lines).len(), 8, "{addr}: {:?}", tally(&lines));
    }
}

/// The reverse translation lives with the socket (`LB_SOCK_REVNAT`, socket storage): long-lived
/// sockets keep the ClusterIP as their peer (getpeername) and as the source of their UDP replies
/// (recvfrom) however many other connections come and go, even with reverse-NAT maps far smaller
/// than the number of connections made (before, each connect left an entry in an LRU that then
/// evicted those of the live sockets, the reverse-map exhaustion that breaks DNS under Cilium).
#[test]
fn long_lived_sockets_keep_the_clusterip_while_many_connections_come_and_go() {
    use std::io::{BufRead as _, BufReader, Write as _};

    const CAPACITY: &str = "256";
    let v4 = ["10.244.1.1", "10.244.1.2", "10.244.1.3"];
    let v6 = ["fd00:10:244:1::1", "fd00:10:244:1::2", "fd00:10:244:1::3"];
    let mut backends: Vec<String> = v4.iter().map(|p| format!("{p}:5353")).collect();
    backends.extend(v6.iter().map(|p| format!("[{p}]:5353")));
    let backend_refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let pods: Vec<&str> = v4.iter().chain(&v6).copied().collect();
    let node = Node::with_args(
        &backend_refs,
        &dns(&["10.96.0.53", "fd00:10:96::53"], &pods),
        &["--max-revnat", CAPACITY],
    );

    // (ClusterIP, sockets of each kind: TCP, connected UDP, unconnected UDP): 1,320 in all.
    let held = [("10.96.0.53:53", 340), ("[fd00:10:96::53]:53", 100)];
    let mut probes = Vec::new();
    for (addr, n) in held {
        let mut child = probe::spawn(&node.inside(), &["hold", addr, &n.to_string()]).expect("probe");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        probes.push((addr, n, child, stdout));
    }
    let check = |addr: &str, n: usize, stdout: &mut BufReader<std::process::ChildStdout>| {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("probe output");
        let all = format!("check tcp={n}/{n} udp-connected={n}/{n} udp={n}/{n} first_bad=");
        assert_eq!(line.trim(), all, "{addr}");
    };
    for (addr, n, _, stdout) in &mut probes {
        check(addr, *n, stdout);
    }

    // Short connections, many times the reverse-NAT capacity, each closed at once.
    let started = Instant::now();
    for (addr, count) in [("10.96.0.53:53", "4000"), ("[fd00:10:96::53]:53", "1000")] {
        let lines = node.probe(&["tcp-connect", addr, count]);
        let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("err")).collect();
        assert!(failed.is_empty(), "{addr}: {} failed, first {:?}", failed.len(), failed.first());
        assert_eq!(lines.len(), count.parse::<usize>().expect("count") + 1, "{addr}");
    }
    eprintln!("5000 short connections in {:?}", started.elapsed());

    for (addr, n, child, stdout) in &mut probes {
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "check").expect("probe stdin");
        stdin.flush().expect("probe stdin");
        check(addr, *n, stdout);
    }
    for (_, _, mut child, _) in probes {
        drop(child.stdin.take());
        assert!(child.wait().expect("probe exit").success());
    }
}
