//! The agent assumes nothing about the pod network: the same Service works on the two shapes
//! common CNI plugins give a node (`lb_tests::topology::PodNetwork`): a routed one (a /32 route
//! per pod veth, as Calico builds it) and a bridged one (pod veths in a Linux bridge that holds
//! the gateway address, as the reference bridge plugin builds it). On each: a pod's process to a
//! ClusterIP, a host process to a ClusterIP, a hostNetwork-style process to a NodePort of its own
//! node (socket hooks), and an outside client to the NodePort (TC), IPv4 and IPv6, reaching the
//! pod on node 1 and the one on node 2.
use std::{collections::BTreeSet, net::SocketAddr};

use lb_tests::{
    agent::Agent,
    guard::{Bpffs, Cgroup, TempDir},
    probe::{self, Place},
    require_root,
    servers::Servers,
    topology::{
        NODE1_BRIDGE_IF, NODE1_EXT_V4, NODE1_EXT_V6, NODE1_NAME, NODE1_POD1_IF, NODE2_NAME, POD1_V4, POD1_V6,
        POD2_V4, POD2_V6, PodNetwork, Topology, ip_output,
    },
};

const NODE_PORT: u16 = 30080;

/// `web`: dual-stack NodePort Service (TCP 80, UDP 53) with one pod on each node.
fn cluster() -> String {
    let slice = |family: &str, pod1: &str, pod2: &str| {
        format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-{family}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: {family}
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 8080, protocol: UDP}}]
endpoints:
- {{addresses: ['{pod1}'], nodeName: {NODE1_NAME}, conditions: {{ready: true}}}}
- {{addresses: ['{pod2}'], nodeName: {NODE2_NAME}, conditions: {{ready: true}}}}
"
        )
    };
    format!(
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
{}{}",
        slice("IPv4", POD1_V4, POD2_V4),
        slice("IPv6", POD1_V6, POD2_V6)
    )
}

/// Node 1's agent on a topology with `pods`. Dropped in field order: the agent, the pods'
/// servers, the pins, the cgroup, the files, then the namespaces.
struct Node1 {
    _agent: Agent,
    _pods: [Servers; 2],
    _bpffs: Bpffs,
    cgroup: Cgroup,
    _dir: TempDir,
    topo: Topology,
}

impl Node1 {
    fn start(pods: PodNetwork) -> Self {
        require_root();
        let topo = Topology::with_pod_network(pods).expect("topology");
        let serve = |ns, addrs: [&str; 2]| {
            let backends: Vec<SocketAddr> =
                addrs.iter().map(|a| SocketAddr::new(a.parse().expect("ip"), 8080)).collect();
            Servers::start(ns, &backends).expect("servers")
        };
        let servers = [serve(&topo.pod1, [POD1_V4, POD1_V6]), serve(&topo.node2, [POD2_V4, POD2_V6])];
        let dir = TempDir::new().expect("tempdir");
        let source = dir.write("cluster.yaml", &cluster()).expect("source");
        let (cgroup, bpffs) = (Cgroup::new().expect("cgroup"), Bpffs::new().expect("bpffs"));
        let agent = topo
            .start_node1_agent(&source, &cgroup.path, &bpffs.path, &["--metrics-addr", ""])
            .expect("agent on node 1");
        Self { _agent: agent, _pods: servers, _bpffs: bpffs, cgroup, _dir: dir, topo }
    }
}

/// Every path of the module doc reaches both pods, in both families.
fn every_path_reaches_both_pods(pods: PodNetwork) {
    let node = Node1::start(pods);
    // The two shapes really differ where a CNI makes them: how node1 reaches its pod.
    let bridge_ports = ip_output(&node.topo.node1, &["-o", "link", "show", "master", NODE1_BRIDGE_IF]);
    let pod_route = ip_output(&node.topo.node1, &["route", "show", &format!("{POD1_V4}/32")]).expect("route");
    match pods {
        PodNetwork::Bridge => {
            assert!(bridge_ports.expect("bridge").contains(NODE1_POD1_IF), "pod veth not in the bridge");
            assert!(pod_route.trim().is_empty(), "no per-pod route on a bridge: {pod_route}");
        }
        PodNetwork::Routed => {
            assert!(bridge_ports.is_err(), "no bridge on the routed network");
            assert!(pod_route.contains(&format!("dev {NODE1_POD1_IF}")), "per-pod route: {pod_route:?}");
        }
        PodNetwork::Plugin => panic!("hand-built pods only: cni_plugins.rs runs the real plugins"),
    }
    let both = |v4: bool| -> BTreeSet<String> {
        let pair = if v4 { [POD1_V4, POD2_V4] } else { [POD1_V6, POD2_V6] };
        pair.iter().map(|s| (*s).to_owned()).collect()
    };
    let pod = Place { netns: &node.topo.pod1, cgroup: Some(&node.cgroup) };
    let host = Place { netns: &node.topo.node1, cgroup: Some(&node.cgroup) };
    let outside = Place { netns: &node.topo.client, cgroup: None };
    let cases: [(&str, &Place<'_>, &str, String, bool); 10] = [
        ("pod → ClusterIP", &pod, "tcp", "10.96.0.10:80".to_owned(), true),
        ("pod → ClusterIP", &pod, "tcp", "[fd00:96::10]:80".to_owned(), false),
        ("pod → ClusterIP (DNS-style UDP)", &pod, "udp-connected", "10.96.0.10:53".to_owned(), true),
        ("host process → ClusterIP", &host, "tcp", "10.96.0.10:80".to_owned(), true),
        ("host process → ClusterIP", &host, "tcp", "[fd00:96::10]:80".to_owned(), false),
        ("hostNetwork process → own NodePort", &host, "tcp", format!("{NODE1_EXT_V4}:{NODE_PORT}"), true),
        ("hostNetwork process → own NodePort", &host, "tcp", format!("[{NODE1_EXT_V6}]:{NODE_PORT}"), false),
        ("outside client → NodePort", &outside, "tcp", format!("{NODE1_EXT_V4}:{NODE_PORT}"), true),
        ("outside client → NodePort", &outside, "tcp", format!("[{NODE1_EXT_V6}]:{NODE_PORT}"), false),
        ("outside client → NodePort (UDP)", &outside, "udp", format!("{NODE1_EXT_V4}:{NODE_PORT}"), true),
    ];
    for (what, place, mode, to, v4) in cases {
        // A connected UDP socket and an unconnected one from one port each stay on one backend
        // (one flow); TCP connections spread over both pods.
        let (n, want) = if mode == "tcp" { (40, both(v4)) } else { (5, BTreeSet::new()) };
        let got = probe::reached(place, mode, &to, n);
        if mode == "tcp" {
            assert_eq!(got, want, "{pods:?}: {what} {to} must reach both pods");
        } else {
            assert!(got.len() == 1 && got.is_subset(&both(v4)), "{pods:?}: {what} {to}: {got:?}");
        }
    }
}

#[test]
fn routed_pod_network_every_path_reaches_the_pods_on_both_nodes() {
    every_path_reaches_both_pods(PodNetwork::Routed);
}

#[test]
fn bridged_pod_network_every_path_reaches_the_pods_on_both_nodes() {
    every_path_reaches_both_pods(PodNetwork::Bridge);
}
