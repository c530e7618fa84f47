//! Pods made by real CNI plugins (Debian's `containernetworking-plugins`, called through the CNI
//! protocol by `lb_tests::cni`) instead of the hand-built pods of `cni.rs`: node1 of the
//! north-south topology (`PodNetwork::Plugin`) gets a backend pod and a client pod from the
//! `bridge` plugin or the `ptp` plugin, with dual-stack host-local IPAM on node1's pod CIDRs. The
//! agent runs in node1 as in the other tests (TC on `--interfaces`, socket programs on the test
//! cgroup), and a dual-stack NodePort Service has the CNI pod on node1 and a pod on node2 as its
//! endpoints. On each network: a pod's process and a host process reach the ClusterIP, a pod and
//! an outside client reach the NodePort, landing on both pods; with `--socket-lb-scope host` the
//! pods' packets are translated at TC on the veths the plugin made (before the agent started and
//! after; a pod reaching its own Service included). With the `portmap` plugin chained after
//! `bridge`, a pod's `hostPort` (kubelet's `portMappings`) works from outside, from the node and
//! from a pod next to our NodePort on the same node address, and portmap's `DEL` takes its rules
//! away.
use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, cli_json},
    cni::{Attachment, Network, command_in},
    guard::{Bpffs, Cgroup, Netns, TempDir},
    probe::{self, Place, backend_of},
    require_root,
    servers::Servers,
    topology::{
        NODE1_EXT_V4, NODE1_EXT_V6, NODE1_NAME, NODE1_POD_CIDR_V4, NODE1_POD_CIDR_V6, NODE1_POD_GW_V4,
        NODE1_POD_GW_V6, NODE2_NAME, POD2_V4, POD2_V6, PodNetwork, Topology, ip_output,
    },
};
use serde_json::{Value, json};

const NODE_PORT: u16 = 30080;
const HOST_PORT: u16 = 8081;
const POD_PORT: u16 = 8080;
/// The ClusterIP of `own`, the backend pod's own Service.
const OWN: &str = "10.96.0.12";
/// `web`'s IPv6 ClusterIP.
const WEB_V6: &str = "fd00:96::10";

/// `web`: a dual-stack NodePort Service (TCP 80, UDP 53) whose endpoints are the CNI pod `pod1`
/// on node 1 and `POD2_V4`/`POD2_V6` on node 2; `own`: a ClusterIP Service ([`OWN`]) whose only
/// endpoint is `pod1`.
fn cluster(pod1: IpAddr, pod1_v6: IpAddr) -> String {
    let slice = |family: &str, pod1: IpAddr, pod2: &str| {
        format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-{family}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: {family}
ports: [{{name: http, port: {POD_PORT}, protocol: TCP}}, {{name: dns, port: {POD_PORT}, protocol: UDP}}]
endpoints:
- {{addresses: ['{pod1}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}
- {{addresses: ['{pod2}'], nodeName: {NODE2_NAME}, conditions: {{ready: true}}}}
"
        )
    };
    let web = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, '{WEB_V6}']
  ports:
  - {{name: http, port: 80, nodePort: {NODE_PORT}, targetPort: {POD_PORT}, protocol: TCP}}
  - {{name: dns, port: 53, nodePort: {NODE_PORT}, targetPort: {POD_PORT}, protocol: UDP}}
{}{}",
        slice("IPv4", pod1, POD2_V4),
        slice("IPv6", pod1_v6, POD2_V6)
    );
    web + &format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: own, namespace: default}}
spec:
  clusterIP: {OWN}
  ports: [{{name: http, port: 80, targetPort: {POD_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: own-1, namespace: default, labels: {{kubernetes.io/service-name: own}}}}
addressType: IPv4
ports: [{{name: http, port: {POD_PORT}, protocol: TCP}}]
endpoints:
- {{addresses: ['{pod1}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}
"
    )
}

/// host-local on node 1's pod CIDRs, one address per family.
fn ipam() -> Value {
    Network::host_local(&[(NODE1_POD_CIDR_V4, NODE1_POD_GW_V4), (NODE1_POD_CIDR_V6, NODE1_POD_GW_V6)])
}

/// The reference bridge plugin as containerd's default CNI config has it: the gateway on the
/// bridge, the bridge promiscuous, and pods' traffic leaving the pod CIDR masqueraded (`ipMasq`:
/// iptables rules the plugin adds in the node's namespace).
fn bridge() -> Value {
    json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": true,
        "promiscMode": true,
        "ipam": ipam(),
    })
}

/// The ptp plugin: one veth per pod, the gateway address on its host end, a /32 route to the pod.
fn ptp() -> Value {
    json!({"type": "ptp", "ipam": ipam()})
}

/// portmap, chained after the main plugin, taking kubelet's `portMappings`.
fn portmap() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true}})
}

/// Node 1 with its CNI pods and agent. Dropped in field order: the agent, the servers, the pins,
/// the cgroup and files, then the pods (`DEL`, while the namespaces still exist), the client
/// pod's namespace, the network's IPAM state, the topology.
struct Node1 {
    _agent: Agent,
    servers: [Servers; 2],
    bpffs: Bpffs,
    cgroup: Cgroup,
    _dir: TempDir,
    /// The backend pod, in `topo.pod1`; `None` once deleted by the test.
    backend: Option<Attachment>,
    client_pod: Attachment,
    client_ns: Netns,
    network: Network,
    topo: Topology,
}

impl Node1 {
    /// The topology, the pods of `plugins` (the backend pod with `runtime_config`), their
    /// servers and node 1's agent.
    fn start(plugins: Vec<Value>, runtime_config: Value) -> Self {
        Self::start_with(plugins, runtime_config, &[])
    }

    /// As `start`, the agent with `extra` flags.
    fn start_with(plugins: Vec<Value>, runtime_config: Value, extra: &[&str]) -> Self {
        require_root();
        let topo = Topology::with_pod_network(PodNetwork::Plugin).expect("topology");
        let network = Network::new("pods", plugins).expect("network");
        let backend =
            network.add(&topo.node1, &topo.pod1, runtime_config).expect("CNI ADD of the backend pod");
        let client_ns = Netns::new().expect("netns");
        let client_pod = network.add(&topo.node1, &client_ns, json!({})).expect("CNI ADD of the client pod");
        // Addresses are usable once DAD has run in the pods (the plugins set the pods' own sysctls
        // alone).
        for ns in [&topo.pod1, &client_ns] {
            wait_no_tentative(ns);
        }
        let serve = |ns, ips: [IpAddr; 2]| {
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, POD_PORT)).collect();
            Servers::start(ns, &addrs).expect("servers")
        };
        let pod2 = [POD2_V4.parse().expect("ip"), POD2_V6.parse().expect("ip")];
        let servers = [serve(&topo.pod1, [backend.ip(true), backend.ip(false)]), serve(&topo.node2, pod2)];
        let dir = TempDir::new().expect("tempdir");
        let source =
            dir.write("cluster.yaml", &cluster(backend.ip(true), backend.ip(false))).expect("source");
        let (cgroup, bpffs) = (Cgroup::new().expect("cgroup"), Bpffs::new().expect("bpffs"));
        let flags = [&["--metrics-addr", ""], extra].concat();
        let agent =
            topo.start_node1_agent(&source, &cgroup.path, &bpffs.path, &flags).expect("agent on node 1");
        Self {
            _agent: agent,
            servers,
            bpffs,
            cgroup,
            _dir: dir,
            backend: Some(backend),
            client_pod,
            client_ns,
            network,
            topo,
        }
    }

    /// Waits (bounded) until `lb-agent status` lists both TC links of pod interface `veth`, or
    /// none of them when `!present`.
    fn wait_pod_links(&self, veth: &str, present: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = cli_json(&["status"], &self.bpffs.path).expect("status");
            let pins: Vec<String> = status["programs"]
                .as_array()
                .expect("programs")
                .iter()
                .filter_map(|p| p["pin"].as_str().map(str::to_owned))
                .collect();
            let has = |hook: &str| pins.iter().any(|p| p.ends_with(&format!("pod-{veth}-{hook}")));
            if [has("ingress"), has("egress")] == [present; 2] {
                return;
            }
            assert!(Instant::now() < deadline, "links of {veth} (present: {present}): {pins:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn backend(&self) -> &Attachment {
        self.backend.as_ref().expect("backend pod attached")
    }

    /// The two endpoints' IPv4 addresses.
    fn both(&self) -> BTreeSet<String> {
        self.both_of(true)
    }

    /// The two endpoints' addresses of a family.
    fn both_of(&self, v4: bool) -> BTreeSet<String> {
        let pod2 = if v4 { POD2_V4 } else { POD2_V6 };
        [self.backend().ip(v4).to_string(), pod2.to_owned()].into()
    }

    fn pod(&self) -> Place<'_> {
        Place { netns: &self.client_ns, cgroup: Some(&self.cgroup) }
    }

    fn host(&self) -> Place<'_> {
        Place { netns: &self.topo.node1, cgroup: Some(&self.cgroup) }
    }

    fn outside(&self) -> Place<'_> {
        Place { netns: &self.topo.client, cgroup: None }
    }

    /// The ClusterIP from a CNI pod and from a host process, and the NodePort from outside, reach
    /// both endpoints (TCP), or one of them (a UDP flow).
    fn every_path_reaches_both_pods(&self, network: &str) {
        let node_port = format!("{NODE1_EXT_V4}:{NODE_PORT}");
        let node_port_v6 = format!("[{NODE1_EXT_V6}]:{NODE_PORT}");
        let web_v6 = format!("[{WEB_V6}]:80");
        let cases = [
            ("CNI pod → ClusterIP", self.pod(), "tcp", "10.96.0.10:80"),
            ("CNI pod → ClusterIP", self.pod(), "tcp", &web_v6),
            ("CNI pod → ClusterIP (DNS-style UDP)", self.pod(), "udp-connected", "10.96.0.10:53"),
            ("CNI pod → its node's NodePort", self.pod(), "tcp", &node_port),
            ("host process → ClusterIP", self.host(), "tcp", "10.96.0.10:80"),
            ("host process → ClusterIP", self.host(), "tcp", &web_v6),
            ("outside client → NodePort", self.outside(), "tcp", &node_port),
            ("outside client → NodePort", self.outside(), "tcp", &node_port_v6),
            ("outside client → NodePort (UDP)", self.outside(), "udp", &node_port),
        ];
        for (what, place, mode, to) in cases {
            let both = self.both_of(!to.starts_with('['));
            if mode == "tcp" {
                let got = probe::reached(&place, mode, to, 40);
                assert_eq!(got, both, "{network}: {what} {to} must reach both pods");
            } else {
                let got = probe::reached(&place, mode, to, 5);
                assert!(got.len() == 1 && got.is_subset(&both), "{network}: {what} {to}: {got:?}");
            }
        }
        // The backend's own server saw the connections that landed on it.
        assert!(!self.servers[0].hits().is_empty(), "{network}: the CNI pod's server was reached");
    }
}

/// Waits (bounded) until `ns` has no tentative IPv6 address.
fn wait_no_tentative(ns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ip_output(ns, &["-6", "addr", "show", "tentative"]).expect("ip addr");
        if !out.contains("inet6") {
            return;
        }
        assert!(Instant::now() < deadline, "still tentative in {}: {out}", ns.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `iptables-save -t nat` and `ip6tables-save -t nat` inside `ns` (the host's own tables when
/// `ns` is `None`; only read).
fn nat_rules(ns: Option<&Netns>) -> String {
    let mut all = String::new();
    for tool in ["/usr/sbin/iptables-save", "/usr/sbin/ip6tables-save"] {
        let program = std::path::Path::new(tool);
        let mut cmd = match ns {
            Some(ns) => command_in(ns, program),
            None => std::process::Command::new(program),
        };
        let out = cmd.args(["-t", "nat"]).output().expect("iptables-save");
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        all.push_str(&String::from_utf8(out.stdout).expect("utf-8"));
    }
    all
}

#[test]
fn bridge_plugin_pods_are_reached_through_the_cluster_ip_and_the_node_port() {
    let node = Node1::start(vec![bridge()], json!({}));
    // What the plugin built: both pods' host veths are ports of cni0, which holds the gateway.
    let ports = ip_output(&node.topo.node1, &["-o", "link", "show", "master", "cni0"]).expect("bridge");
    for pod in [node.backend(), &node.client_pod] {
        let veth = pod.host_interfaces().into_iter().find(|i| i != "cni0").expect("host veth");
        assert!(ports.contains(&format!(" {veth}@")), "{veth} not in cni0: {ports}");
    }
    let gateway = ip_output(&node.topo.node1, &["-4", "addr", "show", "cni0"]).expect("cni0");
    assert!(gateway.contains(&format!("{NODE1_POD_GW_V4}/24")), "gateway on cni0: {gateway}");
    node.every_path_reaches_both_pods("bridge");
}

#[test]
fn ptp_plugin_pods_are_reached_through_the_cluster_ip_and_the_node_port() {
    let node = Node1::start(vec![ptp()], json!({}));
    // What the plugin built: a /32 route per pod via its own host veth, no bridge.
    for pod in [node.backend(), &node.client_pod] {
        let veth = pod.host_interfaces().into_iter().next().expect("host veth");
        let route =
            ip_output(&node.topo.node1, &["route", "show", &format!("{}/32", pod.ipv4())]).expect("route");
        assert!(route.contains(&format!("dev {veth}")), "route to {}: {route:?}", pod.ipv4());
    }
    assert!(ip_output(&node.topo.node1, &["link", "show", "cni0"]).is_err(), "no bridge on ptp");
    node.every_path_reaches_both_pods("ptp");
}

/// With `--socket-lb-scope host` pods' sockets are left alone and their packets to a ClusterIP
/// are translated at TC on the host ends of their veths (`--pod-interfaces veth*`, the names both
/// plugins give them): on a bridge, a pod's connection to its bridge neighbour and to node 2's
/// pod; on ptp, the same through the per-pod routes.
fn pods_reach_the_cluster_ip_through_tc_on_their_veths(plugin: Value, network: &str) {
    let flags = ["--socket-lb-scope", "host", "--pod-interfaces", "veth*"];
    let node = Node1::start_with(vec![plugin], json!({}), &flags);
    // The agent attached its TC programs to both pods' host veths.
    for pod in [node.backend(), &node.client_pod] {
        node.wait_pod_links(&host_veth(pod), true);
    }
    let node_port = format!("{NODE1_EXT_V4}:{NODE_PORT}");
    let web_v6 = format!("[{WEB_V6}]:80");
    let cases = [
        ("tcp", "10.96.0.10:80", 40),
        ("tcp", web_v6.as_str(), 40),
        ("udp-connected", "10.96.0.10:53", 5),
        ("tcp", node_port.as_str(), 40),
    ];
    for (mode, to, n) in cases {
        let got = probe::reached(&node.pod(), mode, to, n);
        let both = node.both_of(!to.starts_with('['));
        if mode == "tcp" {
            assert_eq!(got, both, "{network}: CNI pod → {to} at TC must reach both pods");
        } else {
            assert!(got.len() == 1 && got.is_subset(&both), "{network}: {mode} {to}: {got:?}");
        }
    }
    // The backend pod saw the client pod's own addresses (no SNAT towards a local pod).
    let client = node.client_pod.ipv4();
    let peers: BTreeSet<IpAddr> = node.servers[0].hits().iter().map(|h| h.peer.ip()).collect();
    assert_eq!(peers, [client, node.client_pod.ip(false)].into(), "{network}: the backend pod's clients");

    // Hairpin: the backend pod reaching its own Service gets its connection back from a node
    // address, the reply coming from the ClusterIP.
    let pod1 = Place { netns: &node.topo.pod1, cgroup: Some(&node.cgroup) };
    let backend = SocketAddr::new(node.backend().ipv4(), POD_PORT);
    let lines = probe::run(&pod1, &["tcp", &format!("{OWN}:80"), "3"]).expect("probe");
    assert_eq!(lines, vec![format!("ok {backend} peer={OWN}:80"); 3], "{network}: hairpin");
    let hairpin: BTreeSet<IpAddr> =
        node.servers[0].hits().iter().map(|h| h.peer.ip()).filter(|p| !peers.contains(p)).collect();
    assert!(!hairpin.is_empty() && !hairpin.contains(&backend.ip()), "{network}: masqueraded: {hairpin:?}");

    // A pod the plugin makes after the agent started (its veth made in the pod's namespace and
    // moved into the node's): the agent attaches to it, and its connections are translated.
    let late_ns = Netns::new().expect("netns");
    let late = node.network.add(&node.topo.node1, &late_ns, json!({})).expect("CNI ADD of a late pod");
    let veth = host_veth(&late);
    node.wait_pod_links(&veth, true);
    let place = Place { netns: &late_ns, cgroup: Some(&node.cgroup) };
    assert_eq!(probe::reached(&place, "tcp", "10.96.0.10:80", 40), node.both(), "{network}: late pod");
    // Its DEL removes the veth, and the agent its links.
    late.del().expect("CNI DEL of the late pod");
    node.wait_pod_links(&veth, false);
    lb_tests::parity::shown(&["54"]);
}

/// The host end of a pod's veth, from the plugin's result.
fn host_veth(pod: &Attachment) -> String {
    pod.host_interfaces().into_iter().find(|i| i.starts_with("veth")).expect("host veth in the CNI result")
}

#[test]
fn bridge_plugin_pods_reach_the_cluster_ip_through_tc_on_their_veths() {
    pods_reach_the_cluster_ip_through_tc_on_their_veths(bridge(), "bridge");
}

#[test]
fn ptp_plugin_pods_reach_the_cluster_ip_through_tc_on_their_veths() {
    pods_reach_the_cluster_ip_through_tc_on_their_veths(ptp(), "ptp");
}

#[test]
fn portmap_host_port_and_our_node_port_work_side_by_side_on_one_node() {
    host_port_next_to_node_port(&[]);
}

/// The same with our TC programs on the pods' veths too (`--socket-lb-scope host`): they see the
/// hostPort's packets to and from the pod and leave them to portmap's DNAT.
#[test]
fn portmap_host_port_works_with_our_tc_programs_on_the_pod_veths() {
    host_port_next_to_node_port(&["--socket-lb-scope", "host", "--pod-interfaces", "veth*"]);
}

/// A pod with `hostPort: HOST_PORT` (portmap) and the `web` NodePort on node 1, the agent with
/// `extra` flags.
fn host_port_next_to_node_port(extra: &[&str]) {
    let mapping = json!({"portMappings": [
        {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"},
        {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "udp"},
    ]});
    let mut node = Node1::start_with(vec![bridge(), portmap()], mapping, extra);
    let backend_ip = node.backend().ipv4().to_string();
    let id = node.backend().container_id().to_owned();
    // portmap's DNAT is in node1's nat tables (both families), none of it in the host's.
    let rules = nat_rules(Some(&node.topo.node1));
    let dnat =
        |to: String| rules.lines().any(|l| l.contains(&format!("--dport {HOST_PORT}")) && l.contains(&to));
    assert!(dnat(format!("{backend_ip}:{POD_PORT}")), "IPv4 DNAT: {rules}");
    assert!(dnat(format!("[{}]:{POD_PORT}", node.backend().ip(false))), "IPv6 DNAT: {rules}");
    assert!(!nat_rules(None).contains(&id), "portmap wrote into the host's namespace");

    // A connection held through the hostPort while the NodePort balances new ones.
    let host_port = format!("{NODE1_EXT_V4}:{HOST_PORT}");
    let mut held = probe::spawn(&node.outside(), &["tcp-hold", &host_port]).expect("tcp-hold");
    let mut stdin = held.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(held.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("greeting");
    let held_backend = backend_of(line.trim()).unwrap_or_else(|| panic!("hostPort: {line}")).to_owned();
    assert_eq!(held_backend, format!("{backend_ip}:{POD_PORT}"), "the hostPort is the pod's");

    let node_port = format!("{NODE1_EXT_V4}:{NODE_PORT}");
    assert_eq!(probe::reached(&node.outside(), "tcp", &node_port, 40), node.both(), "NodePort next to it");
    let only_pod: BTreeSet<String> = [backend_ip.clone()].into();
    assert_eq!(probe::reached(&node.outside(), "tcp", &host_port, 10), only_pod, "hostPort from outside");
    assert_eq!(probe::reached(&node.outside(), "udp", &host_port, 5), only_pod, "UDP hostPort");
    let udp = probe::reached(&node.outside(), "udp", &node_port, 5);
    assert!(udp.len() == 1 && udp.is_subset(&node.both()), "UDP NodePort next to it: {udp:?}");
    // IPv6: portmap's ip6tables DNAT, our IPv6 NodePort.
    let host_port_v6 = format!("[{NODE1_EXT_V6}]:{HOST_PORT}");
    let only_pod_v6: BTreeSet<String> = [node.backend().ip(false).to_string()].into();
    assert_eq!(probe::reached(&node.outside(), "tcp", &host_port_v6, 5), only_pod_v6, "IPv6 hostPort");
    let node_port_v6 = format!("[{NODE1_EXT_V6}]:{NODE_PORT}");
    assert_eq!(
        probe::reached(&node.outside(), "tcp", &node_port_v6, 40),
        node.both_of(false),
        "IPv6 NodePort"
    );
    // A hostNetwork process on the node (socket programs on its cgroup): the hostPort, and the
    // NodePort on the node's own address.
    assert_eq!(probe::reached(&node.host(), "tcp", &host_port, 5), only_pod, "hostPort from the node");
    assert_eq!(probe::reached(&node.host(), "tcp", &node_port, 40), node.both(), "NodePort from the node");
    // Another pod on the bridge, through the node's address (portmap masquerades it).
    assert_eq!(probe::reached(&node.pod(), "tcp", &host_port, 5), only_pod, "hostPort from a pod");
    assert_eq!(probe::reached(&node.pod(), "tcp", &node_port, 40), node.both(), "NodePort from a pod");
    writeln!(stdin, "ping").expect("ping");
    line.clear();
    stdout.read_line(&mut line).expect("reply");
    assert_eq!(line.trim(), format!("ok {held_backend}"), "the held hostPort connection still works");
    drop(stdin);
    let _ = held.wait();

    // DEL (portmap first, then bridge and its host-local IPAM) takes the hostPort away and frees
    // the pod's address (host-local's allocation file).
    let allocated = node.network.state_dir().join("ipam/pods").join(&backend_ip);
    assert!(allocated.exists(), "{} not allocated", allocated.display());
    node.backend.take().expect("backend").del().expect("CNI DEL");
    let rules = nat_rules(Some(&node.topo.node1));
    assert!(!rules.contains(&id) && !rules.contains(&format!("--dport {HOST_PORT}")), "left: {rules}");
    let after = probe::run(&node.outside(), &["tcp", &host_port, "1"]).expect("probe");
    assert!(after.len() == 1 && after[0].starts_with("err"), "hostPort after DEL: {after:?}");
    assert!(!allocated.exists(), "{} still allocated", allocated.display());
}

/// `web` with its only endpoint on node 2 (a fresh node 1 has no pod yet).
fn remote_only() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, nodePort: {NODE_PORT}, targetPort: {POD_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {POD_PORT}, protocol: TCP}}]
endpoints:
- {{addresses: ['{POD2_V4}'], nodeName: {NODE2_NAME}, conditions: {{ready: true}}}}
"
    )
}

/// The first `tcp` probe from `place` to `to` that is answered within `within`, as
/// `(answering address, attempts)`; `None` when none is.
fn first_answer(place: &Place<'_>, to: &str, within: Duration) -> Option<(String, usize)> {
    let deadline = Instant::now() + within;
    let mut attempts = 0;
    while Instant::now() < deadline {
        attempts += 1;
        let lines = probe::run(place, &["tcp", to, "1"]).expect("probe");
        if let Some(backend) = lines.first().and_then(|l| backend_of(l)) {
            return Some((backend.parse::<SocketAddr>().expect("backend").ip().to_string(), attempts));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A fresh node: the agent starts before the node's first pod, whose CNI ADD creates `cni0` with
/// the pod CIDR's gateway address, a new address of the node. NodePorts answer on every address
/// of the node (kube-proxy's default, `--nodeport-addresses` unset), so the NodePort answers on
/// that address too, from the node and from outside, without any Service or endpoint changing.
#[test]
fn a_node_address_the_bridge_plugin_adds_after_the_agent_started_serves_node_ports() {
    require_root();
    let topo = Topology::with_pod_network(PodNetwork::Plugin).expect("topology");
    let network = Network::new("pods", vec![bridge()]).expect("network");
    let pod_ns = Netns::new().expect("netns");
    let _servers = Servers::start(&topo.node2, &[SocketAddr::new(POD2_V4.parse().expect("ip"), POD_PORT)])
        .expect("servers");
    let dir = TempDir::new().expect("tempdir");
    let source = dir.write("cluster.yaml", &remote_only()).expect("source");
    let (cgroup, bpffs) = (Cgroup::new().expect("cgroup"), Bpffs::new().expect("bpffs"));
    let agent = topo
        .start_node1_agent(&source, &cgroup.path, &bpffs.path, &["--metrics-addr", ""])
        .expect("agent on node 1");
    assert!(ip_output(&topo.node1, &["link", "show", "cni0"]).is_err(), "no bridge before the first pod");
    let syncs = agent.count("sync applied");

    let _pod = network.add(&topo.node1, &pod_ns, json!({})).expect("CNI ADD of the first pod");
    let gateway = format!("{NODE1_POD_GW_V4}:{NODE_PORT}");
    let host = Place { netns: &topo.node1, cgroup: Some(&cgroup) };
    let outside = Place { netns: &topo.client, cgroup: None };
    for (what, place) in [("host process", &host), ("outside client", &outside)] {
        let answer = first_answer(place, &gateway, Duration::from_secs(5));
        assert_eq!(
            answer.as_ref().map(|(ip, _)| ip.as_str()),
            Some(POD2_V4),
            "{what} → NodePort on cni0's new address {gateway}: {answer:?}\n{}",
            agent.log().join("\n")
        );
    }
    assert!(agent.count("sync applied") > syncs, "the new address was programmed by a sync");
    // The source did not change: the sync came from the address.
    assert_eq!(std::fs::read_to_string(&source).expect("source"), remote_only());
    lb_tests::parity::shown(&["42"]);
}
