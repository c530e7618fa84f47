//! North-south load balancing in a real kernel: an external client, two nodes joined by a link,
//! a pod behind node 1 and a pod on node 2 (`lb_tests::topology`). The agent runs inside node 1's
//! network namespace with its TC programs on node 1's interfaces; the client's packets to a
//! NodePort must reach both backends, come back from the NodePort, be SNATed only towards the
//! remote backend, and keep working in IPv6 and UDP.
use std::{collections::BTreeMap, io::Write as _, net::SocketAddr, time::Duration};

use lb_tests::{
    agent::{Agent, inspect},
    guard::{Bpffs, Cgroup, Netns, TempDir, enter_netns},
    observer::Observer,
    probe::{self, Place, backend_of},
    require_root,
    servers::Servers,
    topology::{
        CLIENT_IF, CLIENT_V4, CLIENT_V6, NODE1_EXT_IF, NODE1_EXT_V4, NODE1_EXT_V6, NODE1_N2_IF, NODE1_N2_V4,
        NODE1_N2_V6, NODE1_NAME, NODE2_N1_IF, NODE2_NAME, NODE2_V4, POD1_V4, POD1_V6, POD2_V4, POD2_V6,
        Topology,
    },
};

const NODE_PORT: u16 = 30080;
const LOCAL_NODE_PORT: u16 = 30081;
const HEALTH_CHECK_PORT: u16 = 32000;

/// A Service `web` (NodePort 30080, dual-stack, Cluster policy) with one pod on each node, and a
/// Service `local` (LoadBalancer, NodePort 30081, externalTrafficPolicy Local, health check on
/// 32000) with its only pod on node 1.
fn cluster() -> String {
    let endpoints = |family: &str, pod1: &str, pod2: &str| {
        format!(
            "
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-{family}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: {family}
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 8080, protocol: UDP}}]
endpoints:
- {{addresses: ['{pod1}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}
- {{addresses: ['{pod2}'], nodeName: {NODE2_NAME}, conditions: {{ready: true}}}}"
        )
    };
    let mut yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ports:
  - {{name: http, port: 80, nodePort: {NODE_PORT}, targetPort: 8080, protocol: TCP}}
  - {{name: dns, port: 53, nodePort: {NODE_PORT}, targetPort: 8080, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: local, namespace: default}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: {HEALTH_CHECK_PORT}
  clusterIP: 10.96.0.11
  ports:
  - {{name: http, port: 80, nodePort: {LOCAL_NODE_PORT}, targetPort: 8080, protocol: TCP}}
status: {{loadBalancer: {{ingress: [{{ip: 192.0.2.80}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: local-1, namespace: default, labels: {{kubernetes.io/service-name: local}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ['{POD1_V4}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}"
    );
    yaml.push_str(&endpoints("IPv4", POD1_V4, POD2_V4));
    yaml.push_str(&endpoints("IPv6", POD1_V6, POD2_V6));
    yaml.push('\n');
    yaml
}

struct Cluster {
    // Dropped in field order: agents first (they run in the namespaces), servers, then the rest.
    agent1: Agent,
    agent2: Option<Agent>,
    pods: Vec<Servers>,
    bpffs1: Bpffs,
    _bpffs2: Bpffs,
    cgroups: [Cgroup; 2],
    dir: TempDir,
    topo: Topology,
}

impl Cluster {
    /// Node 1's agent always; node 2's only with `both` (its own maps, cgroup and interfaces).
    fn start(both: bool) -> Self {
        Self::start_with(both, &cluster())
    }

    /// As `start`, with `yaml` as the agents' source instead of `cluster()`.
    fn start_with(both: bool, yaml: &str) -> Self {
        Self::start_flags(both, yaml, &[])
    }

    /// As `start_with`, with `extra` flags for both agents (e.g. `--xdp native`).
    fn start_flags(both: bool, yaml: &str, extra: &[&str]) -> Self {
        require_root();
        let topo = Topology::new().expect("topology");
        let pod = |ns: &Netns, addrs: [&str; 2]| {
            let backends: Vec<SocketAddr> =
                addrs.iter().map(|a| SocketAddr::new(a.parse().expect("ip"), 8080)).collect();
            Servers::start(ns, &backends).expect("servers")
        };
        let pods = vec![pod(&topo.pod1, [POD1_V4, POD1_V6]), pod(&topo.node2, [POD2_V4, POD2_V6])];
        let dir = TempDir::new().expect("tempdir");
        let source = dir.write("cluster.yaml", yaml).expect("source");
        let cgroups = [Cgroup::new().expect("cgroup"), Cgroup::new().expect("cgroup")];
        let (bpffs1, bpffs2) = (Bpffs::new().expect("bpffs"), Bpffs::new().expect("bpffs"));
        let agent1 = topo
            .start_node1_agent(
                &source,
                &cgroups[0].path,
                &bpffs1.path,
                &[&["--healthz-addr", "127.0.0.1:10256"], extra].concat(),
            )
            .expect("agent on node 1");
        let agent2 = both.then(|| {
            Agent::start_in(
                &topo.node2,
                &source,
                &cgroups[1].path,
                &bpffs2.path,
                NODE2_NAME,
                &[&["--interfaces", NODE2_N1_IF, "--healthz-addr", "127.0.0.1:10256"], extra].concat(),
            )
            .expect("agent on node 2")
        });
        Self { agent1, agent2, pods, bpffs1, _bpffs2: bpffs2, cgroups, dir, topo }
    }

    fn client(&self) -> Place<'_> {
        Place { netns: &self.topo.client, cgroup: None }
    }

    /// The peer addresses each backend saw, by backend IP.
    fn peers(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for hit in self.pods.iter().flat_map(Servers::hits) {
            out.entry(hit.backend.ip().to_string()).or_default().push(hit.peer.ip().to_string());
        }
        out
    }

    fn stat(&self, name: &str) -> u64 {
        inspect("stats", &self.bpffs1.path).expect("stats")["totals"][name].as_u64().unwrap_or(0)
    }
}

/// `n` TCP connects from the client; returns the backend of each.
fn tcp(place: &Place<'_>, to: &str, n: usize) -> Vec<String> {
    let lines = probe::run(place, &["tcp", to, &n.to_string()]).expect("probe");
    assert_eq!(lines.len(), n, "{lines:?}");
    lines
        .iter()
        .map(|l| backend_of(l).unwrap_or_else(|| panic!("connect to {to} failed: {l}")).to_owned())
        .collect()
}

fn ip_of(backend: &str) -> String {
    backend.parse::<SocketAddr>().expect("backend addr").ip().to_string()
}

#[test]
fn nodeport_from_outside_reaches_both_nodes_and_snats_only_towards_the_remote_one() {
    let c = Cluster::start(false);
    let to = format!("{NODE1_EXT_V4}:{NODE_PORT}");
    let backends = tcp(&c.client(), &to, 40);
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    for b in &backends {
        *spread.entry(ip_of(b)).or_default() += 1;
    }
    assert_eq!(spread.keys().cloned().collect::<Vec<_>>(), [POD1_V4, POD2_V4], "{spread:?}");
    assert!(spread.values().all(|n| *n >= 5), "both backends get a share: {spread:?}");

    // The local pod sees the client itself; the pod on node 2 sees node 1 (SNAT), so its reply
    // returns through node 1, which translates it back.
    let peers = c.peers();
    assert!(peers[POD1_V4].iter().all(|p| p == CLIENT_V4), "{peers:?}");
    assert!(peers[POD2_V4].iter().all(|p| p == NODE1_N2_V4), "{peers:?}");

    // The TC path did it (the client is outside every cgroup), new flows were tracked, and the
    // SNATed packets left by redirect.
    assert!(c.stat("tc_new_flow") >= 40, "one conntrack flow per connection");
    assert!(c.stat("tc_revnat") > 0 && c.stat("tc_redirected") > 0);
    assert_eq!(c.stat("translated"), 0, "no socket-level translation was involved");
    assert_eq!(c.stat("tc_nat_failed"), 0);
    assert_eq!(c.stat("xdp_new_flow") + c.stat("xdp_deferred"), 0, "no XDP without --xdp");

    // The SNAT ports are reserved in node 1's namespace, so its own sockets never take them.
    let reserved =
        lb_tests::topology::sysctl_get(&c.topo.node1, "net.ipv4.ip_local_reserved_ports").expect("sysctl");
    assert!(reserved.split(',').any(|r| r == "61000-65535"), "{reserved:?}");

    // `inspect conntrack` shows the flows as the kernel tracks them.
    let flows = inspect("conntrack", &c.bpffs1.path).expect("conntrack");
    let flows = flows.as_array().expect("rows");
    assert!(flows.len() >= 40, "{flows:?}");
    for f in flows {
        let backend: SocketAddr = f["backend"].as_str().expect("backend").parse().expect("addr");
        assert_eq!(f["frontend"], to.as_str(), "{f}");
        assert!(f["client"].as_str().is_some_and(|c| c.starts_with(CLIENT_V4)), "{f}");
        let snat = f["snat"].as_str();
        if backend.ip().to_string() == POD2_V4 {
            assert!(snat.is_some_and(|s| s.starts_with(NODE1_N2_V4)), "{f}");
        } else {
            assert_eq!(snat, None, "{f}");
        }
    }
    lb_tests::parity::shown(&["32", "44"]);
}

/// Runs `ethtool ARGS` in `ns`.
fn ethtool(ns: &Netns, args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ethtool"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("ethtool (cargo xtask setup installs it)");
    assert!(status.success(), "ethtool {args:?} in {}", ns.name);
}

/// `--xdp native` on both nodes: the flows to node 2's pod are SNATed and sent out by XDP on node
/// 1, in both directions, and TC never sees them (it redirects nothing); the flows to the local
/// pod are left to TC, which translates them as without XDP. Every connection succeeds.
///
/// On a veth, a sender's stack leaves the TCP checksum to "hardware" (CHECKSUM_PARTIAL) and
/// nothing computes it while the packet stays an skb; XDP_REDIRECT turns it into a bare frame,
/// whose receiver verifies the checksum. The senders here (the client, and node 2 for its pod's
/// replies) so compute full checksums (`tx off`), as packets from a wire carry. A redirect into a
/// veth also needs NAPI on the receiving peer: XDP on node 2's `n1`, GRO on the client's `eth0`.
/// The peers ready, `--xdp-on-veth` says so (the default veths are in
/// `native_xdp_on_default_veths_leaves_every_flow_to_tc`).
#[test]
fn nodeport_through_native_xdp_reaches_the_remote_pod_without_tc() {
    nodeport_through_xdp("native");
}

/// The same with `--xdp generic` (XDP on the skb, for drivers without native XDP).
#[test]
fn nodeport_through_generic_xdp_reaches_the_remote_pod_without_tc() {
    nodeport_through_xdp("generic");
}

fn nodeport_through_xdp(mode: &str) {
    let c = Cluster::start_flags(true, &cluster(), &["--xdp", mode, "--xdp-on-veth"]);
    ethtool(&c.topo.client, &["-K", CLIENT_IF, "tx", "off", "gro", "on"]);
    ethtool(&c.topo.node2, &["-K", NODE2_N1_IF, "tx", "off"]);
    let to = format!("{NODE1_EXT_V4}:{NODE_PORT}");
    // XDP needs the next hop's MAC: until the kernel has resolved it (TC's redirect does, for
    // the first flow to node 2), XDP leaves the flow to TC. A first round warms that up.
    tcp(&c.client(), &to, 20);
    let before: BTreeMap<&str, u64> =
        ["xdp_new_flow", "xdp_deferred", "tc_new_flow", "tc_redirected"].map(|n| (n, c.stat(n))).into();
    let moved = |name: &str| c.stat(name) - before[name];
    let backends = tcp(&c.client(), &to, 40);
    let remote = backends.iter().filter(|b| ip_of(b) == POD2_V4).count() as u64;
    assert!((5..=35).contains(&remote), "both backends get a share: {backends:?}");
    let peers = c.peers();
    assert!(peers[POD2_V4].iter().all(|p| p == NODE1_N2_V4), "SNAT towards node 2: {peers:?}");
    assert!(peers[POD1_V4].iter().all(|p| p == CLIENT_V4), "{peers:?}");

    assert_eq!(moved("xdp_new_flow"), remote, "one XDP flow per connection to node 2's pod");
    assert_eq!(moved("tc_redirected"), 0, "TC sent no SNATed packet: XDP did, both ways");
    assert_eq!(moved("tc_new_flow"), 40 - remote, "TC took the local pod's flows");
    assert!(moved("xdp_deferred") >= 40 - remote, "XDP left the local flows to TC");
    assert!(c.stat("xdp_revnat") > 0, "node 2's replies were translated at XDP");
    assert_eq!(c.stat("tc_nat_failed") + c.stat("xdp_nat_failed"), 0);
    // The per-Service counters count the same new flows, by the hook that made them.
    let stats = inspect("stats", &c.bpffs1.path).expect("stats");
    let per_service = |key: &str| -> u64 {
        let rows = stats["services"].as_array().expect("services");
        rows.iter().map(|r| r["counters"][key].as_u64().expect("counter")).sum()
    };
    assert_eq!(per_service("xdp/translated"), c.stat("xdp_new_flow"), "{stats}");
    assert_eq!(per_service("tc/translated"), c.stat("tc_new_flow"), "{stats}");
    let links = std::fs::read_dir(c.bpffs1.path.join("links")).expect("links");
    let mut xdp_links: Vec<String> = links
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("xdp-"))
        .collect();
    xdp_links.sort();
    assert_eq!(
        xdp_links,
        [format!("xdp-ext0-{mode}"), format!("xdp-n2-{mode}")],
        "{mode} XDP on node 1's interfaces"
    );
}

#[test]
fn udp_nodeport_replies_come_from_the_nodeport() {
    let c = Cluster::start(false);
    for addr in [format!("{NODE1_EXT_V4}:{NODE_PORT}"), format!("[{NODE1_EXT_V6}]:{NODE_PORT}")] {
        let lines = probe::run(&c.client(), &["udp", &addr, "20"]).expect("probe");
        assert_eq!(lines.len(), 20);
        let mut reached = BTreeMap::new();
        for l in &lines {
            // `ok <backend> from=<source of the reply>`: the reply must come from the NodePort
            // the client addressed, or an unconnected UDP client would not accept it.
            let backend = backend_of(l).unwrap_or_else(|| panic!("udp to {addr}: {l}"));
            let from = l.split("from=").nth(1).expect("from=");
            assert_eq!(from, addr, "{l}");
            *reached.entry(ip_of(backend)).or_insert(0) += 1;
        }
        // One socket, one 5-tuple: every datagram of it stays on one backend (conntrack).
        assert_eq!(reached.len(), 1, "{addr}: {reached:?}");
    }
    lb_tests::parity::shown(&["6", "44"]);
}

#[test]
fn ipv6_nodeport_reaches_both_nodes() {
    let c = Cluster::start(false);
    let to = format!("[{NODE1_EXT_V6}]:{NODE_PORT}");
    let backends = tcp(&c.client(), &to, 40);
    let reached: std::collections::BTreeSet<String> = backends.iter().map(|b| ip_of(b)).collect();
    assert_eq!(reached.into_iter().collect::<Vec<_>>(), [POD1_V6, POD2_V6]);
    let peers = c.peers();
    assert!(peers[POD1_V6].iter().all(|p| p == CLIENT_V6), "{peers:?}");
    assert!(peers[POD2_V6].iter().all(|p| p == NODE1_N2_V6), "{peers:?}");
    lb_tests::parity::shown(&["44"]);
}

#[test]
fn tracked_flow_keeps_its_backend_and_survives_an_agent_restart() {
    let mut c = Cluster::start(false);
    let to = format!("{NODE1_EXT_V4}:{NODE_PORT}");
    let mut held = probe::spawn(&c.client(), &["tcp-hold", &to]).expect("probe");
    let mut stdin = held.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(held.stdout.take().expect("stdout"));
    let mut line = String::new();
    use std::io::BufRead as _;
    stdout.read_line(&mut line).expect("first line");
    let first = backend_of(line.trim()).expect("connected").to_owned();
    let mut ping = |stdin: &mut std::process::ChildStdin| {
        writeln!(stdin, "ping").expect("ping");
        let mut reply = String::new();
        stdout.read_line(&mut reply).expect("reply");
        reply.trim().to_owned()
    };
    for _ in 0..5 {
        assert_eq!(ping(&mut stdin), format!("ok {first}"));
    }
    // A new agent takes over the pinned maps (conntrack included) and links.
    let source = c.dir.path.join("cluster.yaml");
    let cgroup = c.cgroups[0].path.clone();
    let second = c.topo.start_node1_agent(&source, &cgroup, &c.bpffs1.path, &[]).expect("second agent");
    let old = std::mem::replace(&mut c.agent1, second);
    old.stop().expect("old agent stops");
    for _ in 0..5 {
        assert_eq!(ping(&mut stdin), format!("ok {first}"), "the flow stays on its backend");
    }
    drop(stdin);
    let _ = held.wait();
}

/// The programs attached by TCX to `direction` of `interface` in `netns`.
fn tcx_programs(netns: &Netns, interface: &'static str, direction: aya::programs::TcAttachType) -> usize {
    let fd = netns.open().expect("netns fd");
    std::thread::spawn(move || {
        enter_netns(&fd).expect("setns");
        aya::programs::SchedClassifier::query_tcx(interface, direction).expect("TCX query").1.len()
    })
    .join()
    .expect("query thread")
}

#[test]
fn an_interface_dropped_from_interfaces_loses_the_earlier_agents_programs() {
    use aya::programs::TcAttachType::{Egress, Ingress};
    let mut c = Cluster::start(false);
    let pin = |interface: &str, direction: &str| {
        c.bpffs1.path.join("links").join(format!("tc-{interface}-{direction}"))
    };
    let (kept, dropped) = (
        (pin(NODE1_EXT_IF, "ingress"), pin(NODE1_EXT_IF, "egress")),
        (pin(NODE1_N2_IF, "ingress"), pin(NODE1_N2_IF, "egress")),
    );
    assert!(kept.0.exists() && kept.1.exists() && dropped.0.exists() && dropped.1.exists());
    assert_eq!(tcx_programs(&c.topo.node1, NODE1_N2_IF, Ingress), 1);
    // A new agent with only the external interface takes over.
    let source = c.dir.path.join("cluster.yaml");
    let second = Agent::start_in(
        &c.topo.node1,
        &source,
        &c.cgroups[0].path,
        &c.bpffs1.path,
        NODE1_NAME,
        &["--interfaces", NODE1_EXT_IF],
    )
    .expect("second agent");
    let old = std::mem::replace(&mut c.agent1, second);
    old.stop().expect("old agent stops");
    assert!(kept.0.exists() && kept.1.exists(), "the kept interface keeps its links");
    assert!(!dropped.0.exists() && !dropped.1.exists(), "the dropped interface's links are gone");
    for direction in [Ingress, Egress] {
        assert_eq!(
            tcx_programs(&c.topo.node1, NODE1_N2_IF, direction),
            0,
            "no program left on {NODE1_N2_IF}"
        );
        assert_eq!(tcx_programs(&c.topo.node1, NODE1_EXT_IF, direction), 1, "ours on {NODE1_EXT_IF}");
    }
    // The NodePort still answers through the kept interface (from node 1's own pod: replies
    // from node 2's come back through the interface no longer translated).
    let lines =
        probe::run(&c.client(), &["tcp", &format!("{NODE1_EXT_V4}:{NODE_PORT}"), "10"]).expect("probe");
    assert!(lines.iter().filter_map(|l| backend_of(l)).any(|b| ip_of(b) == POD1_V4), "{lines:?}");
}

/// GET / on `addr` from inside `netns`: (status, body).
fn http_get(netns: &Netns, addr: SocketAddr) -> (u16, String) {
    let fd = netns.open().expect("netns fd");
    std::thread::spawn(move || {
        enter_netns(&fd).expect("setns");
        lb_tests::agent::http_get(addr, "/")
    })
    .join()
    .expect("http thread")
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_node2_drops() {
    let c = Cluster::start(true);
    // Node 1 has the only endpoint: the pod sees the client's own address.
    let backends = tcp(&c.client(), &format!("{NODE1_EXT_V4}:{LOCAL_NODE_PORT}"), 10);
    assert!(backends.iter().all(|b| ip_of(b) == POD1_V4), "{backends:?}");
    assert!(c.peers()[POD1_V4].iter().all(|p| p == CLIENT_V4));

    // Node 2 has none: its NodePort drops (the connect times out) instead of forwarding.
    let lines =
        probe::run(&c.client(), &["tcp", &format!("{NODE2_V4}:{LOCAL_NODE_PORT}"), "1"]).expect("probe");
    assert!(lines[0].starts_with("err"), "node 2 must not serve a Local service: {lines:?}");
    assert!(c.agent2.is_some());

    // The health-check node port says so to the cloud load balancer.
    let (status, body) =
        http_get(&c.topo.client, SocketAddr::new(NODE1_EXT_V4.parse().expect("ip"), HEALTH_CHECK_PORT));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"localEndpoints\": 1"), "{body}");
    let (status, body) =
        http_get(&c.topo.client, SocketAddr::new(NODE2_V4.parse().expect("ip"), HEALTH_CHECK_PORT));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\": 0"), "{body}");
    lb_tests::parity::shown(&["30", "32", "40"]);
}

const GUARDED_LB_V4: &str = "192.0.2.81";
const GUARDED_LB_V6: &str = "2001:db8::81";
const GUARDED_EXTERNAL_V4: &str = "192.0.2.82";
const GUARDED_NODE_PORT: u16 = 30082;

/// A dual-stack LoadBalancer Service `guarded` (LB IPs 192.0.2.81 and 2001:db8::81, externalIP
/// 192.0.2.82, NodePort 30082) with its pod on node 1 and `loadBalancerSourceRanges: ranges`
/// (none when empty).
fn guarded(ranges: &[&str]) -> String {
    let ranges = if ranges.is_empty() {
        String::new()
    } else {
        format!("  loadBalancerSourceRanges: ['{}']\n", ranges.join("', '"))
    };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: guarded, namespace: default}}
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.12
  clusterIPs: [10.96.0.12, 'fd00:96::12']
  externalIPs: [{GUARDED_EXTERNAL_V4}]
{ranges}  ports:
  - {{name: http, port: 80, nodePort: {GUARDED_NODE_PORT}, targetPort: 8080, protocol: TCP}}
status: {{loadBalancer: {{ingress: [{{ip: {GUARDED_LB_V4}}}, {{ip: '{GUARDED_LB_V6}'}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: guarded-v4, namespace: default, labels: {{kubernetes.io/service-name: guarded}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ['{POD1_V4}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: guarded-v6, namespace: default, labels: {{kubernetes.io/service-name: guarded}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ['{POD1_V6}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}
"
    )
}

/// Rewrites the agents' source and waits until node 1's agent applied a sync that removed an
/// entry (the file source re-reads within about a second).
fn resync(c: &Cluster, yaml: &str) {
    let from = c.agent1.log().len();
    c.dir.write("cluster.yaml", yaml).expect("source");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if c.agent1.log()[from..].iter().any(|l| l.contains("sync applied") && !l.contains("removed=0")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no sync applied the change:\n{}", c.agent1.log()[from..].join("\n"));
}

#[test]
fn load_balancer_source_ranges_admit_listed_clients_only() {
    let c = Cluster::start_with(false, &guarded(&[&format!("{CLIENT_V4}/32"), &format!("{CLIENT_V6}/128")]));
    // The LB IPs and the externalIP are routed to node 1, which holds none of them: TC matches
    // the frontend at ext0's ingress, before routing.
    for vip in [GUARDED_LB_V4, GUARDED_EXTERNAL_V4] {
        c.topo.client.ip(&["route", "add", &format!("{vip}/32"), "via", NODE1_EXT_V4]).expect("route");
    }
    let route6 = format!("{GUARDED_LB_V6}/128");
    c.topo.client.ip(&["-6", "route", "add", &route6, "via", NODE1_EXT_V6]).expect("route");
    let lbs = [(format!("{GUARDED_LB_V4}:80"), POD1_V4), (format!("[{GUARDED_LB_V6}]:80"), POD1_V6)];
    for (lb, pod) in &lbs {
        let backends = tcp(&c.client(), lb, 3);
        assert!(backends.iter().all(|b| ip_of(b) == *pod), "{lb}: {backends:?}");
    }
    assert_eq!(c.stat("tc_source_denied"), 0);
    // `inspect services` reads the ranges back from the kernel's trie, on the LB IPs only.
    let rows = inspect("services", &c.bpffs1.path).expect("services");
    let ranges_of = |frontend: &str| {
        let row = rows.as_array().expect("rows").iter().find(|r| r["frontend"] == frontend);
        row.unwrap_or_else(|| panic!("{frontend} in {rows}"))["source_ranges"].clone()
    };
    assert_eq!(ranges_of(&lbs[0].0), serde_json::json!([format!("{CLIENT_V4}/32")]));
    assert_eq!(ranges_of(&lbs[1].0), serde_json::json!([format!("{CLIENT_V6}/128")]));
    assert_eq!(ranges_of(&format!("{NODE1_EXT_V4}:{GUARDED_NODE_PORT}")), serde_json::Value::Null);
    assert_eq!(ranges_of(&format!("{GUARDED_EXTERNAL_V4}:80")), serde_json::Value::Null);

    // The client is no longer in a range: its connects to the LB IPs are dropped (they time out).
    resync(&c, &guarded(&["10.9.9.0/24", "fd00:9::/64"]));
    for (lb, _) in &lbs {
        let denied = c.stat("tc_source_denied");
        let lines = probe::run(&c.client(), &["tcp", lb, "1"]).expect("probe");
        assert!(lines[0].starts_with("err"), "{lb} must drop the client: {lines:?}");
        assert!(c.stat("tc_source_denied") > denied, "{lb}: counted as denied");
    }
    // kube-proxy rule 10: the NodePort and the externalIP of the same Service are not gated.
    for to in [format!("{NODE1_EXT_V4}:{GUARDED_NODE_PORT}"), format!("{GUARDED_EXTERNAL_V4}:80")] {
        let backends = tcp(&c.client(), &to, 2);
        assert!(backends.iter().all(|b| ip_of(b) == POD1_V4), "{to}: {backends:?}");
    }

    // Ranges gone: open again.
    resync(&c, &guarded(&[]));
    let denied = c.stat("tc_source_denied");
    for (lb, pod) in &lbs {
        let backends = tcp(&c.client(), lb, 3);
        assert!(backends.iter().all(|b| ip_of(b) == *pod), "{lb}: {backends:?}");
    }
    assert_eq!(c.stat("tc_source_denied"), denied);
    lb_tests::parity::shown(&["10"]);
}

const STICKY_NODE_PORT: u16 = 30083;

/// `cluster()` and a Service `two-ports` whose two NodePorts (30090, 30091) lead to the same pod
/// port, on node 1 only.
fn two_ports_cluster() -> String {
    let mut yaml = cluster();
    yaml.push_str(&format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: two-ports, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.0.14
  ports:
  - {{name: http, port: 80, nodePort: {TWO_PORTS_A}, targetPort: 8080, protocol: TCP}}
  - {{name: alt, port: 81, nodePort: {TWO_PORTS_B}, targetPort: 8080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: two-ports-1, namespace: default, labels: {{kubernetes.io/service-name: two-ports}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: alt, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ['{POD1_V4}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}
"
    ));
    yaml
}

const TWO_PORTS_A: u16 = 30090;
const TWO_PORTS_B: u16 = 30091;

/// A client that keeps a connection to one frontend and opens another from the same local port
/// to a second frontend of the same pod (clients pick ports per destination, so this happens by
/// chance too): both translated tuples would be pod:8080 ↔ client:port, one reply tuple for two
/// flows. kube-proxy's conntrack gives the second flow another source port (netfilter's implicit
/// source-port remap); so must we, and not drop it.
#[test]
fn a_client_port_reused_for_another_frontend_of_the_same_pod_gets_its_connection() {
    let c = Cluster::start_with(false, &two_ports_cluster());
    let (a, b) = (format!("{NODE1_EXT_V4}:{TWO_PORTS_A}"), format!("{NODE1_EXT_V4}:{TWO_PORTS_B}"));
    let mut client_ports = Vec::new();
    for _ in 0..3 {
        let lines = probe::run(&c.client(), &["same-port", &a, &b]).expect("probe");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with(&format!("first ok {POD1_V4}:8080")), "{lines:?}");
        assert!(lines[1].starts_with(&format!("second ok {POD1_V4}:8080")), "{lines:?}");
        let port = lines[0].rsplit_once("port=").and_then(|(_, p)| p.parse::<u16>().ok()).expect("port");
        client_ports.push(port);
    }
    // The pod saw the client's own address each time (no address SNAT towards a local pod): the
    // first connection of each pair from the client's port, the second from another.
    let hits: Vec<SocketAddr> =
        c.pods.iter().flat_map(Servers::hits).filter(|h| h.backend.port() == 8080).map(|h| h.peer).collect();
    assert_eq!(hits.len(), 6, "{hits:?}");
    assert!(hits.iter().all(|p| p.ip().to_string() == CLIENT_V4), "{hits:?}");
    let remapped = hits.iter().filter(|p| !client_ports.contains(&p.port())).count();
    assert_eq!(remapped, 3, "client ports {client_ports:?}, the pod saw {hits:?}");
    assert_eq!(c.stat("tc_nat_failed"), 0);
}

/// `cluster()` plus a Service `sticky` (NodePort 30083, dual-stack, `sessionAffinity: ClientIP`
/// with the default timeout) on the same two pods as `web`.
fn sticky_cluster() -> String {
    let mut yaml = cluster();
    yaml.push_str(&format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: default}}
spec:
  type: NodePort
  sessionAffinity: ClientIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.13
  clusterIPs: [10.96.0.13, 'fd00:96::13']
  ports:
  - {{name: http, port: 80, nodePort: {STICKY_NODE_PORT}, targetPort: 8080, protocol: TCP}}
"
    ));
    for (family, pod1, pod2) in [("IPv4", POD1_V4, POD2_V4), ("IPv6", POD1_V6, POD2_V6)] {
        yaml.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: sticky-{family}, namespace: default, labels: {{kubernetes.io/service-name: sticky}}}}
addressType: {family}
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ['{pod1}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}
- {{addresses: ['{pod2}'], nodeName: {NODE2_NAME}, conditions: {{ready: true}}}}
"
        ));
    }
    yaml
}

#[test]
fn session_affinity_keeps_an_outside_client_on_one_backend() {
    let c = Cluster::start_with(false, &sticky_cluster());
    let reached = |backends: &[String]| -> Vec<String> {
        let ips: std::collections::BTreeSet<String> = backends.iter().map(|b| ip_of(b)).collect();
        ips.into_iter().collect()
    };
    // Without affinity the client's 50 connections (50 source ports, 50 flow hashes) spread.
    let plain = tcp(&c.client(), &format!("{NODE1_EXT_V4}:{NODE_PORT}"), 50);
    assert_eq!(reached(&plain), [POD1_V4, POD2_V4], "{plain:?}");
    // With affinity every connection after the first goes where the first went.
    let sticky = tcp(&c.client(), &format!("{NODE1_EXT_V4}:{STICKY_NODE_PORT}"), 50);
    let chosen = reached(&sticky);
    assert_eq!(chosen.len(), 1, "{sticky:?}");
    // IPv6: the client's IPv6 address, the IPv6 group.
    let sticky6 = tcp(&c.client(), &format!("[{NODE1_EXT_V6}]:{STICKY_NODE_PORT}"), 20);
    let chosen6 = reached(&sticky6);
    assert_eq!(chosen6.len(), 1, "{sticky6:?}");
    // Every connection was a new flow at TC (the client is outside every cgroup).
    assert!(c.stat("tc_new_flow") >= 120, "{}", c.stat("tc_new_flow"));
    assert_eq!(c.stat("translated"), 0);

    // The kernel's entries: one per client address and group, on the backend chosen.
    let rows = inspect("affinity", &c.bpffs1.path).expect("inspect affinity");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in rows {
        let (client, backend) = (row["client"].as_str(), row["backend"].as_str().map(ip_of));
        let expected = if client == Some(CLIENT_V4) { &chosen[0] } else { &chosen6[0] };
        assert!(client == Some(CLIENT_V4) || client == Some(CLIENT_V6), "{row}");
        assert_eq!(backend.as_ref(), Some(expected), "{row}");
        assert_eq!(row["state"], "active", "{row}");
        assert_eq!(row["timeout_seconds"], 10800, "{row}");
    }
    lb_tests::parity::shown(&["13"]);
}

#[test]
fn udp_flow_to_a_removed_backend_moves_to_a_live_one() {
    let c = Cluster::start(false);
    let nodeport = SocketAddr::new(NODE1_EXT_V4.parse().expect("ip"), NODE_PORT);
    // One UDP socket in the client namespace, kept across the change (one 5-tuple, one flow).
    let fd = c.topo.client.open().expect("netns fd");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<String>>();
    let client = std::thread::spawn(move || {
        enter_netns(&fd).expect("setns");
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let exchange = || {
            let mut buf = [0u8; 256];
            socket.send_to(b"ping", nodeport).expect("send");
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => format!("{} from={from}", String::from_utf8_lossy(&buf[..n])),
                Err(e) => format!("err {e}"),
            }
        };
        let before: Vec<String> = (0..5).map(|_| exchange()).collect();
        done_tx.send(before).expect("send");
        rx.recv().expect("go on");
        // After the change: the first datagrams may still be in flight to the old backend.
        let after: Vec<String> = (0..20).map(|_| exchange()).collect();
        done_tx.send(after).expect("send");
    });
    let before = done_rx.recv().expect("before");
    let first = before[0].split_whitespace().next().expect("backend").to_owned();
    assert!(
        before.iter().all(|l| l == &format!("{first} from={nodeport}")),
        "one flow, one backend: {before:?}"
    );

    // The endpoint the flow uses leaves the Service (and every Service: its backend is deleted).
    let gone_ip = ip_of(&first);
    let kept_ip = if gone_ip == POD1_V4 { POD2_V4 } else { POD1_V4 };
    let yaml: String = cluster()
        .lines()
        .filter(|l| !(l.contains(&format!("['{gone_ip}']")) && l.contains("addresses")))
        .map(|l| format!("{l}\n"))
        .collect();
    let syncs = c.agent1.count("sync applied");
    std::fs::write(c.dir.path.join("cluster.yaml"), yaml).expect("rewrite source");
    c.agent1.wait_for_log("sync applied", syncs + 1, Duration::from_secs(10)).expect("resync");
    tx.send(()).expect("go on");
    let after = done_rx.recv().expect("after");
    client.join().expect("client thread");
    let last = after.last().expect("replies");
    assert!(
        last.starts_with(&format!("{kept_ip}:8080 from={nodeport}")),
        "the same socket now reaches the live backend, still from the NodePort: {after:?}"
    );
    assert!(after.iter().filter(|l| l.starts_with(&gone_ip)).count() == 0, "{after:?}");
    lb_tests::parity::shown(&["48"]);
}

/// On TCX, a program after ours on the same hook (a CNI's, a network policy's) is shown every
/// packet we do not own, untouched, and the packets we translate for this node's stack in their
/// translated form (to the backend, as netfilter shows DNATed packets to the filter table), so a
/// policy on pods still applies. No frontend packet reaches it untranslated. Packets we send out
/// of another device ourselves (towards other nodes' backends) or drop, it does not see.
#[test]
fn a_tcx_program_after_ours_sees_other_packets_and_translated_ones() {
    let c = Cluster::start(false);
    let node1 = c.topo.node1.open().expect("node 1's namespace");
    let observer = std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&node1)?;
            let ifindex = lb_agent::sys::net::interface_index(NODE1_EXT_IF)
                .ok_or_else(|| anyhow::anyhow!("no {NODE1_EXT_IF} in node 1"))?;
            Observer::attach(ifindex, true)
        })
        .join()
        .expect("attach thread")
    })
    .expect("observer after the agent's TC program");
    let to = format!("{NODE1_EXT_V4}:{NODE_PORT}");
    let backends = tcp(&c.client(), &to, 20);
    assert!(backends.iter().any(|b| ip_of(b) == POD1_V4) && backends.iter().any(|b| ip_of(b) == POD2_V4));
    // Not a frontend: a port of node 1 nothing serves (refused, the SYN is not ours).
    let refused = probe::run(&c.client(), &["tcp", &format!("{NODE1_EXT_V4}:9"), "1"]).expect("probe");
    assert!(refused[0].starts_with("err"), "{refused:?}");

    let seen = observer.seen().expect("the observer's counts");
    let at =
        |a: &str, port: u16| seen.get(&std::net::SocketAddrV4::new(a.parse().expect("ip"), port)).copied();
    assert_eq!(
        at(NODE1_EXT_V4, NODE_PORT),
        None,
        "a frontend's packet reached the next program untranslated: {seen:?}"
    );
    assert!(at(POD1_V4, 8080).is_some_and(|n| n >= 3), "translated packets to the local pod: {seen:?}");
    assert!(at(NODE1_EXT_V4, 9).is_some_and(|n| n >= 1), "packets not ours go on untouched: {seen:?}");
    assert_eq!(
        at(POD2_V4, 8080),
        None,
        "packets redirected to node 2 leave before the next program: {seen:?}"
    );
}

/// Nodes made of veths exactly as `ip link add … type veth` makes them (no ethtool, no sysctl but
/// forwarding): their frames may carry unfinished checksums and their peers no NAPI, so with
/// `--xdp native` XDP hands every packet arriving on them to TC, which carries every NodePort
/// flow to both nodes' pods as with `--xdp off`. The counters show TC took them (XDP deferred,
/// finished none); the link pins (`status`) say XDP is attached to hand over to TC.
#[test]
fn native_xdp_on_default_veths_leaves_every_flow_to_tc() {
    let c = Cluster::start_flags(true, &cluster(), &["--xdp", "native"]);
    let to = format!("{NODE1_EXT_V4}:{NODE_PORT}");
    let backends = tcp(&c.client(), &to, 40);
    let remote = backends.iter().filter(|b| ip_of(b) == POD2_V4).count();
    assert!((5..=35).contains(&remote), "both nodes' pods get a share: {backends:?}");
    let udp = probe::run(&c.client(), &["udp", &format!("{NODE1_EXT_V4}:{NODE_PORT}"), "10"]).expect("udp");
    assert!(udp.iter().all(|l| backend_of(l).is_some()), "{udp:?}");
    assert_eq!(c.stat("xdp_new_flow") + c.stat("xdp_revnat"), 0, "XDP finished nothing itself");
    assert!(c.stat("xdp_deferred") >= 40, "XDP saw the flows and left them to TC");
    assert!(c.stat("tc_new_flow") >= 40 && c.stat("tc_redirected") > 0, "TC carried them");
    assert_eq!(c.stat("tc_nat_failed") + c.stat("xdp_nat_failed"), 0);
    let status = lb_tests::agent::cli_json(&["status"], &c.bpffs1.path).expect("status");
    let mut xdp_pins: Vec<String> = status["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter_map(|p| p["pin"].as_str())
        .filter(|p| p.starts_with("xdp-"))
        .map(str::to_owned)
        .collect();
    xdp_pins.sort();
    assert_eq!(xdp_pins, ["xdp-ext0-native-tc", "xdp-n2-native-tc"], "{status:#}");
    let log = c.agent1.log().join("\n");
    assert!(log.contains("XDP hands all its packets to TC"), "{log}");
}
