//! The two-node topology on its own (no agent, no BPF): plain routing gets a client's TCP and UDP,
//! IPv4 and IPv6, to a pod on node1 and to the "pod" on node2 with the client's address intact;
//! the forwarding sysctls land in the node namespaces only; dropping the topology removes every
//! namespace it made.
use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Instant,
};

use lb_tests::{
    probe::{self, Place},
    require_root,
    servers::Servers,
    topology::{CLIENT_V4, CLIENT_V6, POD1_V4, POD1_V6, POD2_V4, POD2_V6, Topology, sysctl_get},
};

fn netns_names() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn host_sysctl(path: &str) -> String {
    std::fs::read_to_string(path).expect("host sysctl").trim().to_owned()
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// Probes `backend` from `place` over TCP and UDP (3 each) and checks the replies name it and the
/// server saw `peer` as the client.
fn check(place: &Place<'_>, servers: &Servers, backend: SocketAddr, peer: &str) {
    let since = Instant::now();
    let target = backend.to_string();
    let lines = probe::run(place, &["tcp", &target, "3"]).expect("tcp probe");
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line, &format!("ok {backend} peer={backend}"), "tcp to {backend}");
    }
    let lines = probe::run(place, &["udp", &target, "3"]).expect("udp probe");
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line, &format!("ok {backend} from={backend}"), "udp to {backend}");
    }
    let peer: IpAddr = peer.parse().expect("peer ip");
    let hits: Vec<_> = servers.hits().into_iter().filter(|h| h.backend == backend && h.at >= since).collect();
    assert_eq!(hits.iter().filter(|h| !h.udp).count(), 3, "tcp hits on {backend}: {hits:?}");
    assert_eq!(hits.iter().filter(|h| h.udp).count(), 3, "udp hits on {backend}: {hits:?}");
    assert!(hits.iter().all(|h| h.peer.ip() == peer), "{backend} must see {peer} as the client: {hits:?}");
}

#[test]
fn client_reaches_pods_on_both_nodes_and_drop_removes_the_namespaces() {
    require_root();
    let host_forward = host_sysctl("/proc/sys/net/ipv4/ip_forward");
    let host_forward6 = host_sysctl("/proc/sys/net/ipv6/conf/all/forwarding");

    let topo = Topology::new().expect("topology");
    let names = topo.names();
    let listed = netns_names();
    assert!(names.iter().all(|n| listed.contains(n)), "{names:?} not all in {listed:?}");

    // Forwarding is on in the nodes only, and the host's setting is untouched.
    for ns in [&topo.node1, &topo.node2] {
        assert_eq!(sysctl_get(ns, "net.ipv4.ip_forward").expect("sysctl"), "1", "{}", ns.name);
        assert_eq!(sysctl_get(ns, "net.ipv6.conf.all.forwarding").expect("sysctl"), "1", "{}", ns.name);
        assert_eq!(sysctl_get(ns, "net.ipv4.conf.all.rp_filter").expect("sysctl"), "0", "{}", ns.name);
    }
    assert_eq!(sysctl_get(&topo.client, "net.ipv4.ip_forward").expect("sysctl"), "0");
    assert_eq!(host_sysctl("/proc/sys/net/ipv4/ip_forward"), host_forward, "host ip_forward changed");
    assert_eq!(
        host_sysctl("/proc/sys/net/ipv6/conf/all/forwarding"),
        host_forward6,
        "host forwarding changed"
    );

    let pod1 = [addr(POD1_V4, 8080), addr(POD1_V6, 8080)];
    let pod2 = [addr(POD2_V4, 8080), addr(POD2_V6, 8080)];
    let servers1 = Servers::start(&topo.pod1, &pod1).expect("servers in pod1");
    let servers2 = Servers::start(&topo.node2, &pod2).expect("servers in node2");

    // North-south without any load balancer: the client's address reaches the pods unchanged.
    let client = Place { netns: &topo.client, cgroup: None };
    check(&client, &servers1, pod1[0], CLIENT_V4);
    check(&client, &servers1, pod1[1], CLIENT_V6);
    check(&client, &servers2, pod2[0], CLIENT_V4);
    check(&client, &servers2, pod2[1], CLIENT_V6);

    // Pod to pod across the nodes: pod1's default route sources its own address.
    let from_pod1 = Place { netns: &topo.pod1, cgroup: None };
    check(&from_pod1, &servers2, pod2[0], POD1_V4);
    check(&from_pod1, &servers2, pod2[1], POD1_V6);

    drop(servers1);
    drop(servers2);
    drop(topo);
    let listed = netns_names();
    let left: Vec<_> = names.iter().filter(|n| listed.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
}
