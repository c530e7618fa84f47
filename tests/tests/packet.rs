//! Packet-level tests of the TC programs (the approach of Cilium's `bpf/tests`): crafted Ethernet
//! frames go through `lb_tc_ingress` / `lb_tc_egress` once with BPF_PROG_TEST_RUN
//! (`lb-agent trace`), against the maps of an agent in a test cgroup and bpffs directory. Nothing is
//! attached to an interface.
//!
//! Every translated frame is compared field by field with the same packet built from scratch with
//! the translated tuple, and its IPv4 header and TCP/UDP checksums are recomputed here, pseudo-
//! header included (a rewrite that forgot the pseudo-header, or a port, fails). The reply of the
//! backend, through egress, must come back as the tuple the client sent, swapped. Malformed,
//! truncated and foreign frames must pass (-1) byte for byte, and start no flow.
//!
//! The frontends are external IPs and ClusterIPs (no NodePort, which would depend on the host's
//! addresses). Service `web` has one endpoint per family on the agent's node (`node-1`): a local
//! backend needs no SNAT and no FIB lookup. Service `remote` has its endpoint on `node-2`: its
//! flow is SNATed and redirected after FIB lookups, which trace runs in a test network namespace
//! (`--interface`) whose routes and neighbours the test sets up.
//!
//! BPF_PROG_TEST_RUN hands the program a `CHECKSUM_NONE` skb, on which the L4 checksum helpers
//! update the checksum field whether or not `BPF_F_PSEUDO_HDR` is passed: a missing flag (which
//! matters for `CHECKSUM_PARTIAL`/`COMPLETE` skbs) cannot show here; a missing update does.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use lb_agent::kernel::test_run::{Direction, TestRunner};
use lb_tests::{
    agent::{Agent, explain, inspect},
    guard::{Bpffs, Cgroup, Netns, TempDir, enter_netns},
    packet::{
        IcmpSeen, L4, Packet, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, Traced, fold, hex, icmp_error, icmp_seen,
        ipv4_checksum_ok, ipv4_fragment, l4_checksum, l4_checksum_ok, layout, set_l4_checksum, sum, trace,
        trace_on, tuple, vlan_tagged, with_ipv4_options, without_checksums,
    },
    require_root,
};

const CLIENT4: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:c::7";
const EXTERNAL4: &str = "203.0.113.10";
const EXTERNAL6: &str = "2001:db8:e::10";
const CLUSTER4: &str = "10.96.0.10";
const CLUSTER6: &str = "fd00:96::10";
const POD4: &str = "10.244.1.5";
const POD6: &str = "fd00:244::5";
/// A Service whose only endpoint runs on another node: its flows are SNATed.
const REMOTE_EXTERNAL: &str = "203.0.113.20";
const REMOTE_POD: &str = "10.244.2.5";
const REMOTE_EXTERNAL6: &str = "2001:db8:e::20";
const REMOTE_POD6: &str = "fd00:244:2::5";

/// TC_ACT_UNSPEC: not ours, the packet passes as it came.
/// Handed on (TCX_NEXT, TC_ACT_UNSPEC): a later program and then the stack see the packet. Not
/// ours when the frame is untouched, translated when it is rewritten.
const PASS: i64 = -1;
const OK: i64 = PASS;

fn cluster() -> String {
    let slice = |family: &str, pod: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-{family}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: {family}
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
- {{addresses: ['{pod}'], nodeName: node-1, conditions: {{ready: true}}}}
"
        )
    };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: ClusterIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: {CLUSTER4}
  clusterIPs: [{CLUSTER4}, '{CLUSTER6}']
  externalIPs: [{EXTERNAL4}, '{EXTERNAL6}']
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}
---
{}---
{}---
apiVersion: v1
kind: Service
metadata: {{name: remote, namespace: default}}
spec:
  type: ClusterIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, 'fd00:96::20']
  externalIPs: [{REMOTE_EXTERNAL}, '{REMOTE_EXTERNAL6}']
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: remote-ipv4, namespace: default, labels: {{kubernetes.io/service-name: remote}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
- {{addresses: ['{REMOTE_POD}'], nodeName: node-2, conditions: {{ready: true}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: remote-ipv6, namespace: default, labels: {{kubernetes.io/service-name: remote}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
- {{addresses: ['{REMOTE_POD6}'], nodeName: node-2, conditions: {{ready: true}}}}
",
        slice("IPv4", POD4),
        slice("IPv6", POD6)
    )
}

/// An agent with its maps in a test bpffs directory and its socket programs on a test cgroup.
/// Fields drop in order: the agent stops, the pins go, then the cgroup and the files.
struct Node {
    _agent: Agent,
    bpffs: Bpffs,
    _cgroup: Cgroup,
    _dir: TempDir,
}

impl Node {
    fn start() -> Self {
        require_root();
        let dir = TempDir::new().expect("tempdir");
        let source = dir.write("cluster.yaml", &cluster()).expect("source");
        let cgroup = Cgroup::new().expect("cgroup");
        let bpffs = Bpffs::new().expect("bpffs");
        let agent = Agent::start(&source, &cgroup.path, &bpffs.path).expect("agent");
        Self { _agent: agent, bpffs, _cgroup: cgroup, _dir: dir }
    }

    /// An agent inside `ns` with `extra` flags (e.g. `--interfaces ext0 --xdp native`).
    fn start_in(ns: &Netns, extra: &[&str]) -> Self {
        require_root();
        let dir = TempDir::new().expect("tempdir");
        let source = dir.write("cluster.yaml", &cluster()).expect("source");
        let cgroup = Cgroup::new().expect("cgroup");
        let bpffs = Bpffs::new().expect("bpffs");
        let agent = Agent::start_in(ns, &source, &cgroup.path, &bpffs.path, "node-1", extra).expect("agent");
        Self { _agent: agent, bpffs, _cgroup: cgroup, _dir: dir }
    }

    fn trace(&self, direction: &str, frame: &[u8]) -> Traced {
        trace(&self.bpffs.path, direction, frame).expect("lb-agent trace")
    }

    fn stat(&self, name: &str) -> u64 {
        let stats = inspect("stats", &self.bpffs.path).expect("inspect stats");
        stats["totals"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}: {stats}"))
    }
}

fn addr(ip: &str, port: u16) -> String {
    if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

/// The frame `packet` makes, checked well-formed first, so a test cannot pass on a broken input.
fn frame(packet: &Packet) -> Vec<u8> {
    let f = packet.frame();
    assert!(l4_checksum_ok(&f), "test input {packet:?} has a bad checksum");
    f
}

/// `traced` was handed on (-1) and its output is `expected` (the same packet built from scratch with
/// the translated tuple): every byte but the checksums equal, and the checksums verify when
/// recomputed here (and in trace's own decoder).
fn assert_translated(traced: &Traced, expected: &Packet, what: &str) {
    assert_eq!(traced.verdict, OK, "{what}: {:#}", traced.json);
    let want = expected.frame();
    assert_eq!(tuple(&traced.output), tuple(&want), "{what}: translated tuple");
    assert_eq!(
        hex(&without_checksums(&traced.output)),
        hex(&without_checksums(&want)),
        "{what}: only addresses, ports and checksums may change"
    );
    assert_checksums(traced, what);
}

fn assert_checksums(traced: &Traced, what: &str) {
    let out = &traced.output;
    if layout(out).family == 4 {
        assert!(ipv4_checksum_ok(out), "{what}: IPv4 header checksum of {}", hex(out));
        assert_eq!(traced.json["output"]["ip_checksum_valid"], true, "{what}: trace's decoder");
    }
    assert!(l4_checksum_ok(out), "{what}: TCP/UDP checksum (pseudo-header included) of {}", hex(out));
    assert_eq!(traced.json["output"]["l4_checksum_valid"], true, "{what}: trace's decoder");
}

/// A TCP flow through one frontend: SYN in (to the backend), SYN-ACK out (back from the frontend),
/// then a data segment in (conntrack hit: same backend).
fn tcp_flow(node: &Node, client: &str, frontend: &str, backend: &str) {
    let syn = Packet::tcp(client, frontend, TCP_SYN);
    let t = node.trace("ingress", &frame(&syn));
    assert_translated(&t, &syn.with(client, backend), &format!("SYN {client} → {frontend}"));
    assert_eq!(t.json["counters"]["tc_new_flow"], 1, "the SYN starts a flow: {:#}", t.json);

    let reply = Packet {
        l4: L4::Tcp { flags: TCP_SYN | TCP_ACK, seq: 0x2000_0001, ack: 0x1000_0002 },
        ..Packet::tcp(backend, client, 0)
    };
    let t = node.trace("egress", &frame(&reply));
    assert_translated(&t, &reply.with(frontend, client), &format!("SYN-ACK {backend} → {client}"));
    // The reverse translation restores the client's original tuple, swapped.
    let (_, src, dst) = tuple(&t.output);
    assert_eq!((src, dst), (syn.dst, syn.src), "reply tuple");

    // An odd-length payload: the checksum's last byte is padded.
    let data = Packet::tcp(client, frontend, TCP_ACK | TCP_PSH).payload(b"GET /x\n");
    let t = node.trace("ingress", &frame(&data));
    assert_translated(&t, &data.with(client, backend), &format!("data {client} → {frontend}"));
}

#[test]
fn tcp4_to_an_external_ip_and_a_cluster_ip_reaches_the_local_backend_and_replies_come_from_the_frontend() {
    let node = Node::start();
    tcp_flow(&node, &addr(CLIENT4, 40001), &addr(EXTERNAL4, 80), &addr(POD4, 8080));
    tcp_flow(&node, &addr(CLIENT4, 40002), &addr(CLUSTER4, 80), &addr(POD4, 8080));
    // IPv4 options move the TCP header; the rewrite must follow IHL.
    let syn = Packet::tcp(&addr(CLIENT4, 40003), &addr(EXTERNAL4, 80), TCP_SYN);
    let t = node.trace("ingress", &with_ipv4_options(&frame(&syn)));
    assert_eq!(t.verdict, OK, "{:#}", t.json);
    let want = with_ipv4_options(&syn.with(&addr(CLIENT4, 40003), &addr(POD4, 8080)).frame());
    assert_eq!(hex(&without_checksums(&t.output)), hex(&without_checksums(&want)), "with IPv4 options");
    assert_checksums(&t, "with IPv4 options");

    // Two flows and one more SYN: three new flows; the other packets hit conntrack.
    assert_eq!(node.stat("tc_new_flow"), 3);
    assert_eq!(node.stat("tc_revnat"), 2);
    assert_eq!(node.stat("tc_translated"), 5);
    assert_eq!(node.stat("tc_dropped") + node.stat("tc_nat_failed"), 0);
}

#[test]
fn tcp6_to_an_external_ip_and_a_cluster_ip_reaches_the_local_backend_and_replies_come_from_the_frontend() {
    let node = Node::start();
    tcp_flow(&node, &addr(CLIENT6, 40001), &addr(EXTERNAL6, 80), &addr(POD6, 8080));
    tcp_flow(&node, &addr(CLIENT6, 40002), &addr(CLUSTER6, 80), &addr(POD6, 8080));
    assert_eq!(node.stat("tc_new_flow"), 2);
}

/// A UDP exchange through one frontend; with `no_checksum` both datagrams carry checksum 0
/// ("none", IPv4 only), which must stay 0.
fn udp_exchange(node: &Node, client: &str, frontend: &str, backend: &str, no_checksum: bool) {
    let what = format!("UDP {client} → {frontend} (checksum 0: {no_checksum})");
    let query = Packet::udp(client, frontend, b"query");
    let reply = Packet::udp(backend, client, b"answer!");
    for (direction, packet, expected) in
        [("ingress", &query, query.with(client, backend)), ("egress", &reply, reply.with(frontend, client))]
    {
        let mut input = frame(packet);
        if no_checksum {
            set_l4_checksum(&mut input, 0);
        }
        let t = node.trace(direction, &input);
        if no_checksum {
            assert_eq!(t.verdict, OK, "{what}, {direction}: {:#}", t.json);
            assert_eq!(l4_checksum(&t.output), 0, "{what}, {direction}: checksum 0 stays 0");
            assert!(ipv4_checksum_ok(&t.output), "{what}, {direction}: IPv4 header checksum");
            let mut want = expected.frame();
            set_l4_checksum(&mut want, 0);
            assert_eq!(
                hex(&without_checksums(&t.output)),
                hex(&without_checksums(&want)),
                "{what}, {direction}"
            );
            assert_eq!(tuple(&t.output), tuple(&want), "{what}, {direction}");
        } else {
            assert_translated(&t, &expected, &format!("{what}, {direction}"));
        }
    }
}

#[test]
fn udp_datagrams_are_translated_both_ways_and_a_zero_checksum_stays_zero() {
    let node = Node::start();
    udp_exchange(&node, &addr(CLIENT4, 50001), &addr(EXTERNAL4, 53), &addr(POD4, 5353), false);
    udp_exchange(&node, &addr(CLIENT4, 50002), &addr(CLUSTER4, 53), &addr(POD4, 5353), true);
    udp_exchange(&node, &addr(CLIENT6, 50001), &addr(EXTERNAL6, 53), &addr(POD6, 5353), false);
    udp_exchange(&node, &addr(CLIENT6, 50002), &addr(CLUSTER6, 53), &addr(POD6, 5353), false);

    // A datagram whose checksum, once translated, computes to 0 must carry 0xffff (RFC 768), not
    // 0, which would mean "no checksum".
    let client = addr(CLIENT4, 50003);
    let payload = (0..=u16::MAX)
        .map(u16::to_be_bytes)
        .find(|p| l4_checksum(&Packet::udp(&client, &addr(POD4, 5353), p).frame()) == 0xffff)
        .expect("a payload whose translated checksum computes to 0");
    let query = Packet::udp(&client, &addr(EXTERNAL4, 53), &payload);
    let t = node.trace("ingress", &frame(&query));
    assert_translated(&t, &query.with(&client, &addr(POD4, 5353)), "UDP checksum computing to 0");
    assert_eq!(l4_checksum(&t.output), 0xffff);
}

/// The namespace FIB lookups of flows to remote backends run in (trace runs there, for the
/// interface it names): a client-side link (ext0, 198.51.100.0/24, 2001:db8:c::/64) and a link
/// towards the other node's pods (veth0, 10.244.2.0/24 via 192.168.50.2, fd00:244:2::/64 via
/// fd00:50::2), forwarding on, neighbours known.
fn forwarding_ns() -> Netns {
    let ns = Netns::new().expect("netns");
    for args in [
        "link add ext0 address 02:00:00:00:51:01 type veth peer name ext1",
        "link add veth0 address 02:00:00:00:50:01 type veth peer name veth1",
        "link set ext0 up",
        "link set ext1 up",
        "link set veth0 up",
        "link set veth1 up",
        "addr add 198.51.100.1/24 dev ext0",
        "addr add 192.168.50.1/24 dev veth0",
        "addr add 2001:db8:c::1/64 dev ext0 nodad",
        "addr add fd00:50::1/64 dev veth0 nodad",
        "route add 10.244.2.0/24 via 192.168.50.2 dev veth0",
        "route add fd00:244:2::/64 via fd00:50::2 dev veth0",
        "neigh add 192.168.50.2 lladdr 02:00:00:00:50:02 dev veth0 nud permanent",
        "neigh add 198.51.100.7 lladdr 02:00:00:00:51:07 dev ext0 nud permanent",
        "neigh add fd00:50::2 lladdr 02:00:00:00:50:02 dev veth0 nud permanent",
        "neigh add 2001:db8:c::7 lladdr 02:00:00:00:51:07 dev ext0 nud permanent",
    ] {
        ns.ip(&args.split(' ').collect::<Vec<_>>()).expect("ip");
    }
    for key in ["net.ipv4.conf.all.forwarding=1", "net.ipv6.conf.all.forwarding=1"] {
        let sysctl = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "sysctl", "-qw", key])
            .status()
            .expect("sysctl");
        assert!(sysctl.success(), "{key}");
    }
    ns
}

/// `t`'s output is `syn` SNATed towards `backend` in `forwarding_ns`: from the node's address on
/// veth0 and a port in the SNAT range, to the next hop's MAC, every other byte as sent, checksums
/// right. Returns the SNAT source.
fn assert_snatted(t: &Traced, syn: &Packet, backend: &str, what: &str) -> std::net::SocketAddr {
    let (_, src, dst) = tuple(&t.output);
    assert_eq!(
        src.ip().to_string(),
        "192.168.50.1",
        "{what}: SNAT to the node's address towards the backend"
    );
    assert!((61_000..=65_535).contains(&src.port()), "{what}: SNAT port {}", src.port());
    assert_eq!(dst.to_string(), backend, "{what}");
    assert_eq!(t.output[..6], mac("02:00:00:00:50:02"), "{what}: destination MAC: the next hop");
    assert_eq!(t.output[6..12], mac("02:00:00:00:50:01"), "{what}: source MAC: veth0");
    let want = syn.with(&src.to_string(), backend).frame();
    assert_eq!(hex(&without_checksums(&t.output)[12..]), hex(&without_checksums(&want)[12..]), "{what}");
    assert_checksums(t, what);
    src
}

/// TC_ACT_REDIRECT: sent out of the interface a FIB lookup chose (trace only reports it).
const REDIRECT: i64 = 7;

#[test]
fn a_flow_to_a_remote_backend_is_snatted_and_redirected_and_its_reply_comes_back_from_the_frontend() {
    let node = Node::start();
    let ns = forwarding_ns();

    let client = addr(CLIENT4, 40001);
    let frontend = addr(REMOTE_EXTERNAL, 80);
    let backend = addr(REMOTE_POD, 8080);
    let syn = Packet::tcp(&client, &frontend, TCP_SYN);
    let t = trace_on(&node.bpffs.path, "ingress", &frame(&syn), Some((&ns, "ext0"))).expect("trace");
    assert_eq!(t.verdict, REDIRECT, "{:#}", t.json);
    let src = assert_snatted(&t, &syn, &backend, "SNATed SYN");

    // The backend answers the node's address and SNAT port; it arrives on veth0 and leaves for
    // the client from the frontend.
    let reply = Packet {
        l4: L4::Tcp { flags: TCP_SYN | TCP_ACK, seq: 0x2000_0001, ack: 0x1000_0002 },
        ..Packet::tcp(&backend, &src.to_string(), 0)
    };
    let t = trace_on(&node.bpffs.path, "ingress", &frame(&reply), Some((&ns, "veth0"))).expect("trace");
    assert_eq!(t.verdict, REDIRECT, "{:#}", t.json);
    let (_, rsrc, rdst) = tuple(&t.output);
    assert_eq!((rsrc, rdst), (syn.dst, syn.src), "the reply restores the client's tuple, swapped");
    assert_eq!(t.output[..6], mac("02:00:00:00:51:07"), "destination MAC: the client");
    assert_eq!(t.output[6..12], mac("02:00:00:00:51:01"), "source MAC: ext0");
    let want = reply.with(&frontend, &client).frame();
    assert_eq!(hex(&without_checksums(&t.output)[12..]), hex(&without_checksums(&want)[12..]), "SYN-ACK");
    assert_checksums(&t, "SYN-ACK back from the frontend");

    assert_eq!(node.stat("tc_redirected"), 2);
    assert_eq!(node.stat("tc_nat_failed"), 0);
}

#[test]
fn malformed_truncated_and_foreign_frames_pass_untouched_and_start_no_flow() {
    let node = Node::start();
    let syn4 = frame(&Packet::tcp(&addr(CLIENT4, 40001), &addr(EXTERNAL4, 80), TCP_SYN));
    let udp4 = frame(&Packet::udp(&addr(CLIENT4, 50001), &addr(EXTERNAL4, 53), b"query"));
    let syn6 = Packet::tcp(&addr(CLIENT6, 40001), &addr(EXTERNAL6, 80), TCP_SYN);
    let l4 = 14 + 20;
    // IHL 15 (60 bytes) in a frame that ends 14 bytes after the fixed header: the options, and
    // so the TCP header, are cut short.
    let mut long_ihl = syn4[..l4 + 14].to_vec();
    long_ihl[14] = 0x4f;
    long_ihl[14 + 10..14 + 12].fill(0);
    let csum = !fold(sum(&long_ihl[14..l4], 0));
    long_ihl[14 + 10..14 + 12].copy_from_slice(&csum.to_be_bytes());
    let mut cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("IPv4 header, no TCP header", "ingress", syn4[..l4].to_vec()),
        ("IPv4 options cut short", "ingress", long_ihl),
        ("TCP header cut before the flags", "ingress", syn4[..l4 + 12].to_vec()),
        ("TCP header cut before the checksum", "ingress", syn4[..l4 + 16].to_vec()),
        ("TCP header cut before the urgent pointer", "ingress", syn4[..l4 + 18].to_vec()),
        ("UDP header cut before the checksum", "ingress", udp4[..l4 + 6].to_vec()),
        ("IPv4 first fragment", "ingress", ipv4_fragment(&syn4, true, 0)),
        ("IPv4 later fragment", "ingress", ipv4_fragment(&syn4, false, 185)),
        ("IPv6 header, no TCP header", "ingress", syn6.frame()[..14 + 40].to_vec()),
        ("IPv6, TCP header cut before the checksum", "ingress", syn6.frame()[..14 + 40 + 16].to_vec()),
        ("IPv6 hop-by-hop header before TCP", "ingress", syn6.frame_with_ipv6_ext(Some(0))),
        ("IPv6 destination options before TCP", "ingress", syn6.frame_with_ipv6_ext(Some(60))),
        ("802.1Q-tagged frame", "ingress", vlan_tagged(&syn4)),
        (
            "to an address that is no frontend",
            "ingress",
            frame(&Packet::tcp(&addr(CLIENT4, 40001), "203.0.113.99:80", TCP_SYN)),
        ),
        (
            "to the frontend on a port it does not serve",
            "ingress",
            frame(&Packet::tcp(&addr(CLIENT4, 40001), &addr(EXTERNAL4, 81), TCP_SYN)),
        ),
        (
            "to the frontend's TCP port over UDP",
            "ingress",
            frame(&Packet::udp(&addr(CLIENT4, 40001), &addr(EXTERNAL4, 80), b"x")),
        ),
        (
            "IPv6 to an address that is no frontend",
            "ingress",
            frame(&Packet::tcp(&addr(CLIENT6, 40001), "[2001:db8:e::99]:80", TCP_SYN)),
        ),
        (
            "a backend's packet of no tracked flow",
            "egress",
            frame(&Packet::tcp(&addr(POD4, 8080), &addr(CLIENT4, 40009), TCP_SYN | TCP_ACK)),
        ),
    ];
    let mut edit = |name: &'static str, f: fn(&mut Vec<u8>)| {
        let mut frame = syn4.clone();
        f(&mut frame);
        cases.push((name, "ingress", frame));
    };
    edit("ARP ethertype", |f| f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()));
    edit("IP version 6 in an IPv4 frame", |f| f[14] = 0x65);
    edit("IPv4 header length below 20", |f| f[14] = 0x44);

    let mut failures = Vec::new();
    for (name, direction, input) in &cases {
        let t = match trace(&node.bpffs.path, direction, input) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name} ({direction}): {e}"));
                continue;
            }
        };
        if t.verdict != PASS || t.output != *input {
            failures.push(format!(
                "{name} ({direction}): verdict {}, input {}, output {}",
                t.verdict,
                hex(input),
                hex(&t.output)
            ));
        } else if t.json["counters"] != serde_json::json!({}) {
            failures.push(format!("{name} ({direction}): counters moved: {}", t.json["counters"]));
        }
    }
    // Frames shorter than their IP header: recent kernels' BPF_PROG_TEST_RUN refuses them itself
    // (EINVAL, before the program runs); an older kernel runs the program, which must pass them.
    for (name, input) in [
        ("Ethernet header only", syn4[..14].to_vec()),
        ("IPv4 header cut short", syn4[..14 + 12].to_vec()),
        ("IPv6 header cut short", syn6.frame()[..14 + 30].to_vec()),
    ] {
        match trace(&node.bpffs.path, "ingress", &input) {
            Ok(t) if t.verdict == PASS && t.output == input => {}
            Ok(t) => failures.push(format!("{name}: verdict {}, output {}", t.verdict, hex(&t.output))),
            Err(e) if format!("{e:#}").contains("os error 22") => {}
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "frames not passed untouched:\n{}", failures.join("\n"));
    for counter in ["tc_new_flow", "tc_translated", "tc_revnat", "tc_dropped", "tc_nat_failed"] {
        assert_eq!(node.stat(counter), 0, "{counter}");
    }

    // The same SYN, whole, is translated: the cases above passed for being malformed, not for
    // missing a frontend.
    let t = node.trace("ingress", &syn4);
    assert_eq!(t.verdict, OK, "{:#}", t.json);
    assert_eq!(node.stat("tc_new_flow"), 1);
}

/// The checks above can fail: a rewrite that fixes the IPv4 header checksum but not the TCP/UDP
/// checksum's pseudo-header, or that forgets a port, is caught. (No kernel needed.)
#[test]
fn the_checksum_checks_catch_a_rewrite_that_misses_the_pseudo_header() {
    for packet in [
        Packet::tcp(&addr(CLIENT4, 40001), &addr(EXTERNAL4, 80), TCP_SYN),
        Packet::udp(&addr(CLIENT4, 40001), &addr(EXTERNAL4, 53), b"query"),
        Packet::tcp(&addr(CLIENT6, 40001), &addr(EXTERNAL6, 80), TCP_SYN),
        Packet::udp(&addr(CLIENT6, 40001), &addr(EXTERNAL6, 53), b"q"),
    ] {
        let good = packet.frame();
        assert!(l4_checksum_ok(&good), "{packet:?}");
        let l = layout(&good);
        // Destination address rewritten, IPv4 header checksum fixed, L4 checksum left alone.
        let mut bad = good.clone();
        let dst_at = if l.family == 4 { l.ip + 16 } else { l.ip + 24 };
        bad[dst_at + 3] ^= 0x01;
        if l.family == 4 {
            bad[l.ip + 10..l.ip + 12].fill(0);
            let csum = !fold(sum(&bad[l.ip..l.ip + 20], 0));
            bad[l.ip + 10..l.ip + 12].copy_from_slice(&csum.to_be_bytes());
            assert!(ipv4_checksum_ok(&bad));
        }
        assert!(!l4_checksum_ok(&bad), "missing pseudo-header update not caught: {packet:?}");
        // A port rewritten without its checksum update.
        let mut bad = good.clone();
        bad[l.l4 + 2] ^= 0x01;
        assert!(!l4_checksum_ok(&bad), "missing port checksum update not caught: {packet:?}");
        // And the field comparison sees any rewrite beyond the checksums.
        assert_ne!(without_checksums(&bad), without_checksums(&good));
    }
}

/// The state `inspect conntrack` shows for the flow from `client` to `frontend`.
fn ct_state(node: &Node, client: &str, frontend: &str) -> String {
    let flows = inspect("conntrack", &node.bpffs.path).expect("inspect conntrack");
    let row = flows
        .as_array()
        .expect("rows")
        .iter()
        .find(|f| f["client"] == client && f["frontend"] == frontend)
        .unwrap_or_else(|| panic!("no flow {client} → {frontend}: {flows:#}"))
        .clone();
    row["state"].as_str().expect("state").to_owned()
}

#[test]
fn a_half_closed_tcp_flow_stays_established_until_both_sides_finish() {
    let node = Node::start();
    let (client, frontend, backend) = (addr(CLIENT4, 41000), addr(EXTERNAL4, 80), addr(POD4, 8080));
    tcp_flow(&node, &client, &frontend, &backend);
    assert_eq!(ct_state(&node, &client, &frontend), "established");
    // The client half-closes; the server may stream on for a long time: not yet closing.
    let fin = Packet::tcp(&client, &frontend, TCP_FIN | TCP_ACK);
    assert_translated(&node.trace("ingress", &frame(&fin)), &fin.with(&client, &backend), "client FIN");
    assert_eq!(ct_state(&node, &client, &frontend), "established", "one FIN only half-closes");
    // The server finishes too: now the short closing lifetime applies.
    let fin_back = Packet::tcp(&backend, &client, TCP_FIN | TCP_ACK);
    assert_translated(
        &node.trace("egress", &frame(&fin_back)),
        &fin_back.with(&frontend, &client),
        "server FIN",
    );
    assert_eq!(ct_state(&node, &client, &frontend), "closing");
}

/// Packets to a destination that is no frontend and no tracked flow was made to skip the
/// frontend and conntrack lookups (the conntrack gate, `lb_common::ct_gate`), which must never
/// hide a frontend or a flow: one tracked before an agent restart that makes the gate anew (as
/// after an upgrade from an agent without it, which opened no slot) is still tracked by the next
/// agent's programs, not taken for new.
#[test]
fn a_flow_tracked_before_a_restart_that_makes_the_conntrack_gate_anew_is_still_tracked() {
    require_root();
    let dir = TempDir::new().expect("tempdir");
    let source = dir.write("cluster.yaml", &cluster()).expect("source");
    let cgroup = Cgroup::new().expect("cgroup");
    let bpffs = Bpffs::new().expect("bpffs");
    let (client, frontend, backend) = (addr(CLIENT4, 42000), addr(EXTERNAL4, 80), addr(POD4, 8080));
    let agent = Agent::start(&source, &cgroup.path, &bpffs.path).expect("agent");
    let syn = Packet::tcp(&client, &frontend, TCP_SYN);
    let t = trace(&bpffs.path, "ingress", &frame(&syn)).expect("trace");
    assert_translated(&t, &syn.with(&client, &backend), "SYN");
    assert_eq!(t.json["counters"]["tc_new_flow"], 1, "the SYN starts a flow: {:#}", t.json);
    drop(agent);
    let gate = bpffs.path.join(lb_common::map_names::CT_GATE);
    std::fs::remove_file(&gate).expect("removing the gate's pin");
    // The operator's tools read a datapath without a gate (one from before it) all the same.
    let services = inspect("services", &bpffs.path).expect("inspect without a gate");
    assert!(services.to_string().contains(EXTERNAL4), "{services:#}");

    let _agent = Agent::start(&source, &cgroup.path, &bpffs.path).expect("agent, again");
    assert!(gate.exists(), "the new agent pins a new gate");
    let data = data_packet(&client, &frontend);
    let t = trace(&bpffs.path, "ingress", &frame(&data)).expect("trace");
    assert_translated(&t, &data.with(&client, &backend), "data after the restart");
    assert_eq!(t.json["counters"]["tc_translated"], 1, "{:#}", t.json);
    assert!(t.json["counters"].get("tc_new_flow").is_none(), "a conntrack hit, not a new flow: {:#}", t.json);
    // A packet to a destination no flow went to takes the gate's short way and is still not ours.
    let other = Packet::tcp(&client, "192.0.2.1:80", TCP_SYN);
    let t = trace(&bpffs.path, "ingress", &frame(&other)).expect("trace");
    assert_eq!(t.verdict, PASS, "{:#}", t.json);
    assert_eq!(hex(&t.output), hex(&other.frame()), "untouched");

    // `explain` reads the gate as the programs do: the frontend's slot is open.
    let why = |e: &serde_json::Value| format!("{} {}", e["verdict"], e["notes"]);
    let to = format!("{frontend}/TCP");
    let args = ["--to", to.as_str(), "--from", client.as_str()];
    let e = explain(&bpffs.path, &args).expect("explain");
    assert_eq!(e["verdict"]["action"], "translate", "{e:#}");
    assert!(why(&e).contains(&format!("is open: packets to {frontend} are looked up")), "{e:#}");

    // The slot is what decides: closed by hand (what a restart without the agent's refill would
    // leave), the frontend's packets, this flow's included, pass as if it were none.
    let data = aya::maps::MapData::from_pin(&gate).expect("the gate's pin");
    let mut map: aya::maps::Array<_, u8> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("the gate is an array");
    let dst: std::net::Ipv4Addr = EXTERNAL4.parse().expect("address");
    let slot = lb_common::ct_gate::slot(&[u32::from_ne_bytes(dst.octets()), 0, 0, 0], 80u16.to_be(), 6);
    map.set(slot, 0, 0).expect("closing the slot");
    let data = data_packet(&client, &frontend);
    let t = trace(&bpffs.path, "ingress", &frame(&data)).expect("trace");
    assert_eq!(t.verdict, PASS, "{:#}", t.json);
    assert_eq!(hex(&t.output), hex(&data.frame()), "the gate hid the frontend and the flow: {:#}", t.json);
    // And `explain` says what the kernel did, and why.
    let e = explain(&bpffs.path, &args).expect("explain");
    assert_eq!(e["verdict"]["action"], "untouched", "{e:#}");
    assert!(why(&e).contains("is a frontend, but its conntrack gate slot"), "{e:#}");
}

/// A tracked flow's entry records the backends' epoch at which its backend was found programmed
/// (`lb_common::backend_epoch`): not yet for a new flow, the agent's epoch after its next packet,
/// and the new one after the epoch moves, as after a sync that removed a backend (the program
/// looked the backend up again; it writes the epoch only then).
#[test]
fn a_tracked_flow_records_the_backend_epoch_it_was_checked_at() {
    let node = Node::start();
    let (client, frontend, backend) = (addr(CLIENT4, 43000), addr(EXTERNAL4, 80), addr(POD4, 8080));
    let syn = Packet::tcp(&client, &frontend, TCP_SYN);
    assert_translated(&node.trace("ingress", &frame(&syn)), &syn.with(&client, &backend), "SYN");

    let pin = node.bpffs.path.join(lb_common::map_names::BACKEND_EPOCH);
    let data = aya::maps::MapData::from_pin(&pin).expect("the epoch's pin");
    let mut epoch: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("the epoch is an array");
    let agent_epoch = epoch.get(&0, 0).expect("epoch");
    assert_ne!(agent_epoch, 0, "the agent raised it when it opened the maps");

    let ct = lb_agent::readback::conntrack::open(&node.bpffs.path).expect("conntrack map");
    let word = |s: &str| {
        let ip: std::net::Ipv4Addr = s.parse().expect("address");
        [u32::from_ne_bytes(ip.octets()), 0, 0, 0]
    };
    let key = lb_common::CtKey {
        src: word(CLIENT4),
        dst: word(EXTERNAL4),
        sport: 43000u16.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        family: 4,
        dir: lb_common::ct_dir::ORIGINAL,
        pad: 0,
    };
    let recorded = || ct.get(&key, 0).expect("the flow's entry").epoch;
    assert_eq!(recorded(), 0, "a new flow's entry is not checked yet");
    let segment = data_packet(&client, &frontend);
    let translated = segment.with(&client, &backend);
    assert_translated(&node.trace("ingress", &frame(&segment)), &translated, "data");
    assert_eq!(recorded(), agent_epoch, "checked at the agent's epoch");
    assert_translated(&node.trace("ingress", &frame(&segment)), &translated, "data again");
    assert_eq!(recorded(), agent_epoch);

    let raised = lb_common::backend_epoch::next(agent_epoch);
    epoch.set(0, raised, 0).expect("raising the epoch");
    assert_translated(&node.trace("ingress", &frame(&segment)), &translated, "data after the raise");
    assert_eq!(recorded(), raised, "checked again (the backend is still there), at the new epoch");
}

fn data_packet(client: &str, frontend: &str) -> Packet {
    Packet::tcp(client, frontend, TCP_ACK | TCP_PSH).payload(b"more")
}

#[test]
fn one_client_port_to_two_frontends_of_one_local_backend_gets_a_second_source_port() {
    let node = Node::start();
    let client = addr(CLIENT4, 42000);
    let (external, cluster, backend) = (addr(EXTERNAL4, 80), addr(CLUSTER4, 80), addr(POD4, 8080));
    let syn = Packet::tcp(&client, &external, TCP_SYN);
    assert_translated(&node.trace("ingress", &frame(&syn)), &syn.with(&client, &backend), "first flow");
    // The same client port to the ClusterIP of the same backend: its reply tuple (backend →
    // client:42000) is the first flow's. As netfilter's implicit source-port remap does under
    // kube-proxy, the second flow keeps the client's address and gets another port (from the SNAT
    // range), rather than being dropped or stealing the first flow's replies.
    let other = Packet::tcp(&client, &cluster, TCP_SYN);
    let t = node.trace("ingress", &frame(&other));
    assert_eq!(t.verdict, OK, "translated: {:#}", t.json);
    let (_, from, to) = tuple(&t.output);
    assert_eq!(to.to_string(), backend, "{:#}", t.json);
    assert_eq!(from.ip().to_string(), CLIENT4, "the client's address is kept: {:#}", t.json);
    assert!(
        (lb_common::SNAT_PORT_MIN..=lb_common::SNAT_PORT_MAX).contains(&from.port()),
        "another port, from the SNAT range: {from}"
    );
    assert_translated(&t, &other.with(&from.to_string(), &backend), "second flow");
    assert!(t.json["counters"].get("tc_nat_failed").is_none(), "{:#}", t.json);
    // Each flow's replies come from the frontend it addressed, to the client's own port.
    let reply = Packet::tcp(&backend, &client, TCP_SYN | TCP_ACK);
    assert_translated(
        &node.trace("egress", &frame(&reply)),
        &reply.with(&external, &client),
        "first flow's reply",
    );
    let reply = Packet::tcp(&backend, &from.to_string(), TCP_SYN | TCP_ACK);
    assert_translated(
        &node.trace("egress", &frame(&reply)),
        &reply.with(&cluster, &client),
        "second flow's reply",
    );
    // At an ingress (a pod interface) that reply is left to the stack, and to `egress` where it
    // leaves: only SNATed flows' replies are translated at an ingress.
    let t = node.trace("ingress", &frame(&reply));
    assert_eq!(t.verdict, PASS, "{:#}", t.json);
    assert_eq!(hex(&t.output), hex(&reply.frame()), "untouched at the ingress: {:#}", t.json);
    // And its next packet follows its entry.
    let data = data_packet(&client, &cluster);
    let second = data.with(&from.to_string(), &backend);
    assert_translated(&node.trace("ingress", &frame(&data)), &second, "second flow's data");

    // The second flow's original entry evicted, and the first flow gone (its entries too): the
    // second flow's next segment keeps the port its backend knows it by, though the client's own
    // is free again.
    let mut ct = lb_agent::readback::conntrack::open(&node.bpffs.path).expect("conntrack map");
    let keys: Vec<lb_common::CtKey> = ct.keys().map(|k| k.expect("key")).collect();
    let client_port = 42000u16.to_be();
    let mut removed = 0;
    for key in keys {
        let original = key.dir == lb_common::ct_dir::ORIGINAL && key.sport == client_port;
        let first_reply = key.dir == lb_common::ct_dir::REPLY && key.dport == client_port;
        if original || first_reply {
            ct.remove(&key).expect("remove");
            removed += 1;
        }
    }
    assert_eq!(removed, 3, "both original entries and the first flow's reply entry");
    let t = node.trace("ingress", &frame(&data));
    assert_translated(&t, &second, "second flow's data after its original entry was evicted");
}

const XDP_PASS: i64 = 2;
const XDP_REDIRECT: i64 = 4;

fn mac(s: &str) -> Vec<u8> {
    s.split(':').map(|b| u8::from_str_radix(b, 16).expect("mac")).collect()
}

/// XDP (`--xdp native` on both links of `forwarding_ns`): a flow to a remote backend is SNATed and
/// sent out by XDP itself in both directions, IPv4 and IPv6, TCP and UDP, with checksums that
/// verify (XDP has no checksum helpers: these are its own incremental updates). A flow to a local
/// backend, and anything malformed, passes untouched with no state made, and TC then does the
/// same work as without XDP.
#[test]
fn xdp_finishes_flows_to_remote_backends_and_leaves_everything_else_untouched_to_tc() {
    let ns = forwarding_ns();
    let node = Node::start_in(&ns, &["--interfaces", "ext0,veth0", "--xdp", "native", "--xdp-on-veth"]);
    let xdp =
        |iface: &str, f: &[u8]| trace_on(&node.bpffs.path, "xdp", f, Some((&ns, iface))).expect("trace");

    // TCP over IPv4: SYN out to the backend, SYN-ACK back to the client, then data.
    let client = addr(CLIENT4, 40001);
    let frontend = addr(REMOTE_EXTERNAL, 80);
    let backend = addr(REMOTE_POD, 8080);
    let syn = Packet::tcp(&client, &frontend, TCP_SYN);
    let t = xdp("ext0", &frame(&syn));
    assert_eq!(t.verdict, XDP_REDIRECT, "{:#}", t.json);
    let src = assert_snatted(&t, &syn, &backend, "SNATed SYN at XDP");
    let reply = Packet {
        l4: L4::Tcp { flags: TCP_SYN | TCP_ACK, seq: 0x2000_0001, ack: 0x1000_0002 },
        ..Packet::tcp(&backend, &src.to_string(), 0)
    };
    let t = xdp("veth0", &frame(&reply));
    assert_eq!(t.verdict, XDP_REDIRECT, "{:#}", t.json);
    assert_eq!(
        tuple(&t.output),
        tuple(&reply.with(&frontend, &client).frame()),
        "the reply restores the client's tuple"
    );
    assert_eq!(t.output[..6], mac("02:00:00:00:51:07"), "destination MAC: the client");
    assert_checksums(&t, "SYN-ACK back from the frontend at XDP");
    let data = Packet::tcp(&client, &frontend, TCP_ACK | TCP_PSH).payload(b"GET / HTTP/1.0\r\n\r\n");
    let t = xdp("ext0", &frame(&data));
    assert_eq!(t.verdict, XDP_REDIRECT, "{:#}", t.json);
    assert_eq!(tuple(&t.output).1, src, "the tracked flow keeps its SNAT port");
    assert_checksums(&t, "data segment at XDP");

    // TCP over IPv6.
    let syn6 = Packet::tcp(&addr(CLIENT6, 40002), &addr(REMOTE_EXTERNAL6, 80), TCP_SYN);
    let t = xdp("ext0", &frame(&syn6));
    assert_eq!(t.verdict, XDP_REDIRECT, "{:#}", t.json);
    let (_, src6, dst6) = tuple(&t.output);
    assert_eq!(src6.ip().to_string(), "fd00:50::1");
    assert_eq!(dst6.to_string(), addr(REMOTE_POD6, 8080));
    assert_checksums(&t, "SNATed IPv6 SYN at XDP");

    // UDP over IPv4, with a checksum and without one (0 stays 0).
    let query = Packet::udp(&addr(CLIENT4, 50001), &addr(REMOTE_EXTERNAL, 53), b"query");
    let t = xdp("ext0", &frame(&query));
    assert_eq!(t.verdict, XDP_REDIRECT, "{:#}", t.json);
    assert_eq!(tuple(&t.output).2.to_string(), addr(REMOTE_POD, 5353));
    assert_checksums(&t, "SNATed UDP at XDP");
    let mut bare = Packet::udp(&addr(CLIENT4, 50002), &addr(REMOTE_EXTERNAL, 53), b"query").frame();
    set_l4_checksum(&mut bare, 0);
    let t = xdp("ext0", &bare);
    assert_eq!(t.verdict, XDP_REDIRECT, "{:#}", t.json);
    assert_eq!(l4_checksum(&t.output), 0, "an absent UDP checksum stays absent");
    assert!(ipv4_checksum_ok(&t.output), "IPv4 header checksum");

    assert_eq!(node.stat("xdp_new_flow"), 4);
    assert_eq!(node.stat("xdp_revnat"), 1);
    assert_eq!(node.stat("xdp_redirected"), 6);
    assert_eq!(node.stat("tc_new_flow"), 0, "TC saw none of these");

    // A flow to a local backend: XDP passes it as it came and makes no state; TC translates it.
    let local = frame(&Packet::tcp(&addr(CLIENT4, 40003), &addr(EXTERNAL4, 80), TCP_SYN));
    let t = xdp("ext0", &local);
    assert_eq!((t.verdict, &t.output), (XDP_PASS, &local), "{:#}", t.json);
    assert_eq!(node.stat("xdp_deferred"), 1);
    assert_eq!(node.stat("xdp_new_flow"), 4, "no flow made at XDP");
    let t = trace_on(&node.bpffs.path, "ingress", &local, Some((&ns, "ext0"))).expect("trace");
    assert_eq!(t.verdict, OK, "TC translates it: {:#}", t.json);
    assert_eq!(tuple(&t.output).2.to_string(), addr(POD4, 8080));
    let t = xdp("ext0", &local);
    assert_eq!((t.verdict, &t.output), (XDP_PASS, &local), "its next packet is TC's too: {:#}", t.json);
    assert_eq!(node.stat("xdp_deferred"), 2);

    // Malformed, truncated and foreign frames pass untouched and move no counter.
    let syn4 = frame(&Packet::tcp(&addr(CLIENT4, 40004), &frontend, TCP_SYN));
    let udp4 = frame(&Packet::udp(&addr(CLIENT4, 50004), &addr(REMOTE_EXTERNAL, 53), b"q"));
    let l4 = 14 + 20;
    for (name, input) in [
        ("TCP header cut before the urgent pointer", syn4[..l4 + 18].to_vec()),
        ("UDP header cut before the checksum", udp4[..l4 + 6].to_vec()),
        ("IPv4 first fragment", ipv4_fragment(&syn4, true, 0)),
        ("IPv6 hop-by-hop header before TCP", syn6.frame_with_ipv6_ext(Some(0))),
        ("802.1Q-tagged frame", vlan_tagged(&syn4)),
        ("to an address that is no frontend", frame(&Packet::tcp(&client, "203.0.113.99:80", TCP_SYN))),
    ] {
        let t = xdp("ext0", &input);
        assert_eq!((t.verdict, &t.output), (XDP_PASS, &input), "{name}: {:#}", t.json);
        assert_eq!(t.json["counters"], serde_json::json!({}), "{name}: counters moved");
    }
}

/// ICMP errors about translated packets are translated back, as kube-proxy's conntrack does: the
/// quoted packet becomes the one the client (or, for a reply, the backend) really sent, and the
/// error goes to it. A router's error keeps the router as its source; the backend's own error
/// comes from the frontend. Outer, quoted and ICMP checksums all verify. An error about no
/// tracked flow passes untouched.
#[test]
fn icmp_errors_about_translated_packets_are_translated_back() {
    let ns = forwarding_ns();
    let node = Node::start();
    let ip = |s: &str| -> std::net::IpAddr { s.parse().expect("ip") };
    let sock = |s: &str| -> std::net::SocketAddr { s.parse().expect("socket address") };
    let on = |iface: &'static str, f: &[u8]| {
        trace_on(&node.bpffs.path, "ingress", f, Some((&ns, iface))).expect("trace")
    };

    // IPv4, SNATed to a remote backend: "fragmentation needed" from the next-hop router, then
    // "port unreachable" from the backend itself, both to the node's SNAT address.
    let client = addr(CLIENT4, 40001);
    let frontend = addr(REMOTE_EXTERNAL, 80);
    let syn = frame(&Packet::tcp(&client, &frontend, TCP_SYN));
    let sent = on("ext0", &syn);
    assert_eq!(sent.verdict, REDIRECT, "{:#}", sent.json);
    let (_, snat, backend) = tuple(&sent.output);
    for (from, kind, code, want_from) in
        [("192.168.50.2", 3, 4, "192.168.50.2"), (REMOTE_POD, 3, 3, REMOTE_EXTERNAL)]
    {
        let error = icmp_error(ip(from), snat.ip(), kind, code, 1400, &sent.output);
        assert!(icmp_seen(&error).checksums_ok, "test input");
        let t = on("veth0", &error);
        assert_eq!(t.verdict, REDIRECT, "error from {from}: {:#}", t.json);
        let seen = icmp_seen(&t.output);
        assert_eq!(
            seen,
            IcmpSeen {
                from: ip(want_from),
                to: ip(CLIENT4),
                quoted_src: sock(&client),
                quoted_dst: sock(&frontend),
                checksums_ok: true
            },
            "error from {from}, quoting {snat} → {backend}"
        );
        assert_eq!(t.output[..6], mac("02:00:00:00:51:07"), "to the client's MAC");
    }

    // IPv6: "packet too big" from the router.
    let client6 = addr(CLIENT6, 40002);
    let frontend6 = addr(REMOTE_EXTERNAL6, 80);
    let sent = on("ext0", &frame(&Packet::tcp(&client6, &frontend6, TCP_SYN)));
    assert_eq!(sent.verdict, REDIRECT, "{:#}", sent.json);
    let (_, snat6, _) = tuple(&sent.output);
    let error = icmp_error(ip("fd00:50::2"), snat6.ip(), 2, 0, 1280, &sent.output);
    assert!(icmp_seen(&error).checksums_ok, "test input");
    let t = on("veth0", &error);
    assert_eq!(t.verdict, REDIRECT, "{:#}", t.json);
    assert_eq!(
        icmp_seen(&t.output),
        IcmpSeen {
            from: ip("fd00:50::2"),
            to: ip(CLIENT6),
            quoted_src: sock(&client6),
            quoted_dst: sock(&frontend6),
            checksums_ok: true
        }
    );

    // A local backend's "port unreachable" to the client leaves through egress, from the frontend
    // and quoting the packet the client sent.
    let client = addr(CLIENT4, 40003);
    let frontend = addr(EXTERNAL4, 80);
    let sent = node.trace("ingress", &frame(&Packet::tcp(&client, &frontend, TCP_SYN)));
    assert_eq!(sent.verdict, OK, "{:#}", sent.json);
    let error = icmp_error(ip(POD4), ip(CLIENT4), 3, 3, 0, &sent.output);
    let t = node.trace("egress", &error);
    assert_eq!(t.verdict, OK, "{:#}", t.json);
    assert_eq!(
        icmp_seen(&t.output),
        IcmpSeen {
            from: ip(EXTERNAL4),
            to: ip(CLIENT4),
            quoted_src: sock(&client),
            quoted_dst: sock(&frontend),
            checksums_ok: true
        }
    );

    // About a packet of no tracked flow: untouched.
    let stray = frame(&Packet::tcp(&addr(CLIENT4, 40009), &addr(REMOTE_POD, 8080), TCP_SYN));
    let error = icmp_error(ip("192.168.50.2"), ip(CLIENT4), 3, 1, 0, &stray);
    for direction in ["ingress", "egress"] {
        let t = node.trace(direction, &error);
        assert_eq!((t.verdict, &t.output), (PASS, &error), "{direction}: {:#}", t.json);
    }
}

/// A small deterministic generator (xorshift64*), so a failing frame is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The frontends of `cluster()`, as (protocol, destination).
fn frontends() -> Vec<(u8, std::net::SocketAddr)> {
    let mut out = Vec::new();
    for ip in [
        EXTERNAL4,
        EXTERNAL6,
        CLUSTER4,
        CLUSTER6,
        REMOTE_EXTERNAL,
        REMOTE_EXTERNAL6,
        "10.96.0.20",
        "fd00:96::20",
    ] {
        out.push((6, addr(ip, 80).parse().expect("frontend")));
        out.push((17, addr(ip, 53).parse().expect("frontend")));
    }
    out
}

/// The (protocol, source, destination) of `f` when it is, by its headers alone, a TCP or UDP
/// packet the programs may translate: IPv4 (not a fragment, any header length that fits) or IPv6
/// with TCP or UDP right after the fixed header, and the whole L4 header present. Written from
/// the RFCs, not from the programs' decoder.
fn l4_tuple(f: &[u8]) -> Option<(u8, SocketAddr, SocketAddr)> {
    let be16 = |at: usize| f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (proto, src_ip, dst_ip, l4) = match be16(12)? {
        0x0800 => {
            let vihl = *f.get(14)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            let frag = be16(14 + 6)?;
            if vihl >> 4 != 4 || ihl < 20 || frag & 0x3fff != 0 || f.len() < 14 + ihl {
                return None;
            }
            let src: [u8; 4] = f[14 + 12..14 + 16].try_into().ok()?;
            let dst: [u8; 4] = f[14 + 16..14 + 20].try_into().ok()?;
            (f[14 + 9], IpAddr::from(src), IpAddr::from(dst), 14 + ihl)
        }
        0x86dd => {
            if f.len() < 14 + 40 || f[14] >> 4 != 6 {
                return None;
            }
            let src: [u8; 16] = f[14 + 8..14 + 24].try_into().ok()?;
            let dst: [u8; 16] = f[14 + 24..14 + 40].try_into().ok()?;
            (f[14 + 6], IpAddr::from(src), IpAddr::from(dst), 14 + 40)
        }
        _ => return None,
    };
    let l4_len = match proto {
        6 => 20,
        17 => 8,
        _ => return None,
    };
    if f.len() < l4 + l4_len {
        return None;
    }
    Some((proto, SocketAddr::new(src_ip, be16(l4)?), SocketAddr::new(dst_ip, be16(l4 + 2)?)))
}

/// Whether `f` is a TCP or UDP packet (`l4_tuple`) to one of `frontends`.
fn to_a_frontend(f: &[u8], frontends: &[(u8, SocketAddr)]) -> bool {
    l4_tuple(f).is_some_and(|(proto, _, dst)| frontends.contains(&(proto, dst)))
}

/// Bad input, at volume: frames made from real packets (to frontends on this node and behind
/// another, to other addresses and ports, replies) by flipping bytes, cutting them short, forging
/// header fields or filling them with noise: 1,000,000 through `lb_tc_ingress`, 1,000,000 through
/// `lb_xdp` (both on the client link of a forwarding node, so flows to the other node's pods are
/// SNATed and redirected for real) and 200,000 through `lb_tc_egress` before any flow exists,
/// each run in-process (`lb_agent::kernel::test_run`). Each frame's outcome is checked against
/// the test's own reading of its headers (written from the RFCs, not from the programs' parser):
/// a frame that is not a TCP/UDP packet to a frontend leaves untouched and handed on (TC) or
/// passed (XDP); one that is may only be rewritten towards one of the frontends' backends; egress
/// with no flow tracked rewrites nothing. The mix must translate many and pass many, so neither
/// side of the check is empty.
#[test]
fn a_million_random_and_truncated_frames_are_rewritten_only_when_they_are_a_frontends() {
    let ns = forwarding_ns();
    let node = Node::start_in(&ns, &["--interfaces", "ext0,veth0", "--xdp", "native", "--xdp-on-veth"]);
    let frontends = frontends();
    let mut bases: Vec<Vec<u8>> = Vec::new();
    for (i, dst) in [
        EXTERNAL4,
        CLUSTER4,
        EXTERNAL6,
        CLUSTER6,
        REMOTE_EXTERNAL,
        REMOTE_EXTERNAL6,
        "203.0.113.99",
        "2001:db8:e::99",
    ]
    .iter()
    .enumerate()
    {
        let client = if dst.contains(':') { CLIENT6 } else { CLIENT4 };
        let sport = 40000 + i as u16;
        bases.push(frame(&Packet::tcp(&addr(client, sport), &addr(dst, 80), TCP_SYN)));
        bases.push(frame(&Packet::tcp(&addr(client, sport), &addr(dst, 81), TCP_SYN)));
        bases.push(frame(&Packet::udp(&addr(client, sport), &addr(dst, 53), b"query")));
        bases.push(frame(
            &Packet::tcp(&addr(client, sport), &addr(dst, 80), TCP_ACK).payload(b"GET / HTTP/1.1"),
        ));
    }
    // Replies of backends to clients (an egress packet of no tracked flow).
    bases.push(frame(&Packet::tcp(&addr(POD4, 8080), &addr(CLIENT4, 40001), TCP_SYN | TCP_ACK)));
    bases.push(frame(&Packet::udp(&addr(POD6, 5353), &addr(CLIENT6, 40002), b"answer")));

    let make = |rng: &mut Rng| -> Vec<u8> {
        let mut f = bases[rng.below(bases.len())].clone();
        match rng.below(7) {
            // A few bytes flipped anywhere.
            0 => {
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(f.len());
                    f[at] ^= 1 << rng.below(8);
                }
            }
            // Cut short (never below Ethernet + 40 bytes, which the kernel's test run refuses).
            1 => f.truncate(54 + rng.below(f.len() - 53)),
            // A random byte in the IP or L4 header.
            2 => {
                let at = 14 + rng.below(f.len().min(14 + 60) - 14);
                f[at] = rng.next() as u8;
            }
            // Noise after the Ethernet type.
            3 => {
                for b in &mut f[14..] {
                    *b = rng.next() as u8;
                }
            }
            // The IPv4 header length or fragment field forged (IPv6: the next header).
            4 => {
                if f[12..14] == [0x08, 0x00] {
                    if rng.below(2) == 0 {
                        f[14] = 0x40 | (rng.next() as u8 & 0x0f);
                    } else {
                        f[14 + 6] = rng.next() as u8;
                        f[14 + 7] = rng.next() as u8;
                    }
                } else {
                    f[14 + 6] = [0, 6, 17, 43, 44, 58, 59, 60][rng.below(8)];
                }
            }
            // Longer than its IP length says (trailing bytes).
            5 => f.extend((0..1 + rng.below(32)).map(|_| rng.next() as u8)),
            // Whole: a real packet, so most frontend frames are translated.
            _ => {}
        }
        f
    };
    let backends: Vec<IpAddr> =
        [POD4, POD6, REMOTE_POD, REMOTE_POD6].iter().map(|a| a.parse().expect("pod")).collect();

    /// What one program did with the frames.
    #[derive(Debug, Default)]
    struct Tally {
        runs: u64,
        translated: u64,
        passed: u64,
        failures: Vec<String>,
    }
    // Each program runs in a thread inside the node's namespace: its FIB lookups and devices are
    // the node's.
    // The flows the programs translated so far: a reply of one (its rewritten tuple reversed) may
    // be translated back, to come from the frontend it addressed.
    let mut replies: HashMap<(u8, SocketAddr, SocketAddr), (SocketAddr, SocketAddr)> = HashMap::new();
    let mut run = |direction: Direction, frames: u64, seed: u64, pass_code: i32| -> Tally {
        let ns_fd = ns.open().expect("namespace");
        let bpffs = node.bpffs.path.clone();
        let (frontends, backends, make, replies) = (&frontends, &backends, &make, &mut replies);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_netns(&ns_fd).expect("setns");
                    let mut runner = TestRunner::load(&bpffs, direction, Some("ext0")).expect("load");
                    let mut rng = Rng(seed);
                    let mut t = Tally::default();
                    for _ in 0..frames {
                        let input = make(&mut rng);
                        let (code, output) = runner.pass(&input).expect("test run");
                        t.runs += 1;
                        let untouched = code == pass_code && output == input;
                        let fail = |why: &str| {
                            format!(
                                "{direction:?}: {why}: code {code} for {} → {}",
                                hex(&input),
                                hex(&output)
                            )
                        };
                        let flow = l4_tuple(&input);
                        let reply_of = flow.and_then(|f| replies.get(&f).copied());
                        if let (Some((proto, src, dst)), Some((frontend, client))) = (flow, reply_of) {
                            // The reply of a flow translated earlier: back from the frontend, or
                            // untouched (a hook that leaves it to another).
                            if output != input && l4_tuple(&output) != Some((proto, frontend, client)) {
                                t.failures.push(fail(&format!(
                                    "a reply {src} → {dst} of a translated flow was not restored to {frontend} → {client}"
                                )));
                            }
                            if output != input {
                                t.translated += 1;
                            }
                        } else if direction != Direction::Egress && to_a_frontend(&input, frontends) {
                            if output != input {
                                let (proto, src, dst) = tuple(&output);
                                if let Some((_, client, frontend)) = flow {
                                    replies.insert((proto, dst, src), (frontend, client));
                                }
                                if !backends.contains(&dst.ip()) {
                                    t.failures.push(fail(&format!(
                                        "a frontend's frame rewritten to {dst}, no backend"
                                    )));
                                }
                                t.translated += 1;
                            }
                        } else if untouched {
                            t.passed += 1;
                        } else {
                            t.failures.push(fail(
                                "not a frontend's (or egress of no flow), yet not passed untouched",
                            ));
                        }
                        if t.failures.len() > 20 {
                            break;
                        }
                    }
                    t
                })
                .join()
                .expect("runner thread")
        })
    };
    let egress = run(Direction::Egress, 200_000, 0x5eed_1b5e_ed00_0007, PASS as i32);
    let ingress = run(Direction::Ingress, 1_000_000, 0x5eed_1b5e_ed00_0107, PASS as i32);
    let xdp = run(Direction::Xdp, 1_000_000, 0x5eed_1b5e_ed00_0207, XDP_PASS as i32);
    for (name, t) in [("egress", &egress), ("ingress", &ingress), ("xdp", &xdp)] {
        assert!(t.failures.is_empty(), "{name}: frames handled wrongly:\n{}", t.failures.join("\n"));
    }
    assert_eq!((egress.runs, ingress.runs, xdp.runs), (200_000, 1_000_000, 1_000_000));
    assert!(egress.passed == egress.runs, "{egress:?}");
    assert!(ingress.translated > 100_000 && ingress.passed > 100_000, "TC's mix must have both: {ingress:?}");
    assert!(xdp.translated > 10_000 && xdp.passed > 100_000, "XDP's mix must have both: {xdp:?}");
}
