//! Service meshes keep working (`--socket-lb-scope host`, `--pod-interfaces`). A mesh's init step
//! installs an iptables REDIRECT in the pod that sends its outbound TCP to a local proxy, which
//! reads the destination the application dialled with `SO_ORIGINAL_DST` (Istio's and Linkerd's
//! way). If the socket hooks translate a pod's connect, that destination is already a backend and
//! the mesh's per-Service routing and policy are bypassed. With `host` scope the hooks translate
//! only host sockets; pods' packets to a ClusterIP are translated at TC on the host end of their
//! veths, attached as the veths appear.
//!
//! Topology (`lb_tests::topology`): node1 with pod1 (the Service's local backend) and two pods
//! made after the agent started (a meshed one with the redirect and its proxy, a plain one), node2
//! with the remote backend. Every pod process runs in the test cgroup the socket hooks are on.
use std::{
    io::{BufRead as _, BufReader},
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, cli_json, inspect},
    guard::{Bpffs, Cgroup, Netns, TempDir},
    probe::{self, Place},
    require_root,
    servers::Servers,
    topology::{NODE1_N2_IF, NODE1_NAME, NODE2_NAME, POD1_V4, POD2_V4, Topology},
};

const WEB: &str = "10.96.0.10";
const FAR: &str = "10.96.0.20";
const PROXY_PORT: &str = "15001";
const MESHED_V4: &str = "10.244.1.3";
const PLAIN_V4: &str = "10.244.1.4";

/// `web` (TCP 80 and UDP 53 → pod1 on node 1) and `far` (TCP 80 → the pod on node 2).
fn cluster() -> String {
    let service = |name: &str, ip: &str, pod: &str, node: &str| {
        format!(
            "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-v4, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 8080, protocol: UDP}}]
endpoints:
- {{addresses: ['{pod}'], nodeName: {node}, conditions: {{ready: true}}}}
"
        )
    };
    [service("web", WEB, POD1_V4, NODE1_NAME), service("far", FAR, POD2_V4, NODE2_NAME)].concat()
}

/// Node 1's agent with `--socket-lb-scope SCOPE --pod-interfaces pod*,lxc*`. Dropped in field
/// order: the agent, the servers, the pins, the cgroup, the files, the extra pods, the topology.
struct Mesh {
    agent: Option<Agent>,
    _servers: [Servers; 2],
    bpffs: Bpffs,
    cgroup: Cgroup,
    _dir: TempDir,
    pods: Vec<Netns>,
    topo: Topology,
}

impl Mesh {
    fn start(scope: &str) -> Self {
        require_root();
        let topo = Topology::new().expect("topology");
        let backend = |ip: &str| vec![format!("{ip}:8080").parse().expect("addr")];
        let servers = [
            Servers::start(&topo.pod1, &backend(POD1_V4)).expect("pod1 servers"),
            Servers::start(&topo.node2, &backend(POD2_V4)).expect("pod2 servers"),
        ];
        let dir = TempDir::new().expect("tempdir");
        dir.write("cluster.yaml", &cluster()).expect("source");
        let (cgroup, bpffs) = (Cgroup::new().expect("cgroup"), Bpffs::new().expect("bpffs"));
        // `n2` for the replies of flows SNATed to node 2's pod.
        let mut mesh =
            Self { agent: None, _servers: servers, bpffs, cgroup, _dir: dir, pods: Vec::new(), topo };
        mesh.start_agent(scope, "pod*,lxc*");
        mesh
    }

    fn start_agent(&mut self, scope: &str, globs: &str) {
        let flags = [
            "--socket-lb-scope",
            scope,
            "--pod-interfaces",
            globs,
            "--interfaces",
            NODE1_N2_IF,
            "--metrics-addr",
            "",
        ];
        let source = self._dir.path.join("cluster.yaml");
        let agent = Agent::start_in(
            &self.topo.node1,
            &source,
            &self.cgroup.path,
            &self.bpffs.path,
            NODE1_NAME,
            &flags,
        )
        .expect("agent on node 1");
        self.agent = Some(agent);
    }

    fn agent_log(&self) -> String {
        self.agent.as_ref().map(|a| a.log().join("\n")).unwrap_or_default()
    }

    /// The pins under `links/` as `lb-agent status` lists them: (pin, program, interface).
    fn links(&self) -> Vec<(String, String, String)> {
        let status = cli_json(&["status"], &self.bpffs.path).expect("status");
        status["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .map(|p| {
                let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
                (s("pin"), s("program"), s("target"))
            })
            .collect()
    }

    /// Waits (bounded) until `status` shows the two TC links of `interface`, or none when `!present`.
    fn wait_links(&self, interface: &str, present: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        // (The CLI runs in the test's namespace, where node 1's ifindexes name nothing: the pin
        // names the interface.)
        let want = [
            (format!("pod-{interface}-egress"), "lb_tc_egress".to_owned()),
            (format!("pod-{interface}-ingress"), "lb_tc_ingress".to_owned()),
        ];
        loop {
            let links: Vec<(String, String)> = self.links().into_iter().map(|l| (l.0, l.1)).collect();
            let pod_links: Vec<_> =
                links.iter().filter(|l| l.0.starts_with(&format!("pod-{interface}-"))).collect();
            let ok = if present { want.iter().all(|w| links.contains(w)) } else { pod_links.is_empty() };
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "links of {interface} (present: {present}) not as expected: {links:?}\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A pod made now on node 1 (the agent must find its veth `host_if`); kept until the end.
    fn add_pod(&mut self, host_if: &str, v4: &str) -> usize {
        let pod = self.topo.add_pod(host_if, v4).expect("pod");
        self.pods.push(pod);
        self.wait_links(host_if, true);
        self.pods.len() - 1
    }

    /// The pod made `i`-th by `add_pod`, as a place to run probes (in the test cgroup).
    fn pod(&self, i: usize) -> Place<'_> {
        Place { netns: &self.pods[i], cgroup: Some(&self.cgroup) }
    }

    /// A host process: node 1's namespace, in the test cgroup.
    fn host(&self) -> Place<'_> {
        Place { netns: &self.topo.node1, cgroup: Some(&self.cgroup) }
    }

    fn stat(&self, name: &str) -> u64 {
        inspect("stats", &self.bpffs.path).expect("stats")["totals"][name].as_u64().unwrap_or(0)
    }
}

/// Installs, inside `pod` only, the redirect a mesh's init container installs: every outbound
/// TCP connection (not to loopback) goes to the proxy's port.
fn mesh_redirect(pod: &Netns) {
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "!", "-d"])
        .args(["127.0.0.0/8", "-j", "REDIRECT", "--to-ports", PROXY_PORT])
        .output()
        .expect("iptables");
    assert!(out.status.success(), "iptables in the pod: {}", String::from_utf8_lossy(&out.stderr));
}

/// One connection from the meshed pod's application to `web`'s ClusterIP, taken by the pod's
/// proxy: what the application read (the proxy's `orig=` line, and its peer) and what the proxy
/// saw as the original destination.
fn through_the_proxy(mesh: &Mesh) -> (String, String) {
    let mut proxy =
        probe::spawn(&mesh.pod(0), &["original-dst", &format!("0.0.0.0:{PROXY_PORT}"), "1"]).expect("proxy");
    let mut lines = BufReader::new(proxy.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("listening"));
    let client = probe::run(&mesh.pod(0), &["tcp", &format!("{WEB}:80"), "1"]).expect("client");
    let seen = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = proxy.wait();
    (client.concat(), seen)
}

#[test]
fn host_scope_keeps_the_clusterip_for_the_mesh_and_translates_pods_at_tc() {
    let mut mesh = Mesh::start("host");
    // pod1's veth was there at start; the pods made now are found over netlink.
    mesh.wait_links("pod1", true);
    let meshed = mesh.add_pod("lxcmesh", MESHED_V4);
    mesh_redirect(&mesh.pods[meshed]);

    // The meshed pod: its socket is left alone, the redirect sends it to the proxy, which reads
    // the ClusterIP as the original destination (and no packet reached TC).
    let (tc_before, sock_before) = (mesh.stat("tc_new_flow"), mesh.stat("translated"));
    let (client, seen) = through_the_proxy(&mesh);
    assert_eq!(seen, format!("orig={WEB}:80"), "the proxy must see the ClusterIP");
    assert_eq!(client, format!("ok orig={WEB}:80 peer={WEB}:80"), "the application talked to its proxy");
    assert_eq!((mesh.stat("tc_new_flow"), mesh.stat("translated")), (tc_before, sock_before));

    // A pod without the redirect reaches the backend through TC: its socket still sees the
    // ClusterIP as its peer (TCP) and as the source of the replies (UDP), the backend sees the
    // pod's own address, and TC (not the socket hooks) counted the flows.
    mesh.add_pod("lxcplain", PLAIN_V4);
    let (tc_before, sock_before) = (mesh.stat("tc_new_flow"), mesh.stat("translated"));
    let lines = probe::run(&mesh.pod(1), &["tcp", &format!("{WEB}:80"), "5"]).expect("tcp");
    assert_eq!(lines, vec![format!("ok {POD1_V4}:8080 peer={WEB}:80"); 5]);
    let lines = probe::run(&mesh.pod(1), &["udp", &format!("{WEB}:53"), "3"]).expect("udp");
    assert_eq!(lines, vec![format!("ok {POD1_V4}:8080 from={WEB}:53"); 3]);
    let peers: Vec<String> = mesh._servers[0].hits().iter().map(|h| h.peer.ip().to_string()).collect();
    assert!(peers.iter().filter(|p| *p == PLAIN_V4).count() >= 8, "the pod's address is kept: {peers:?}");
    assert!(mesh.stat("tc_new_flow") >= tc_before + 6, "5 TCP flows and a UDP one at TC");
    assert_eq!(mesh.stat("translated"), sock_before, "no pod socket was translated");

    // Bonus: the backend on node 2, SNATed at the pod's interface, replies translated on n2.
    let lines = probe::run(&mesh.pod(1), &["tcp", &format!("{FAR}:80"), "3"]).expect("far");
    assert_eq!(lines, vec![format!("ok {POD2_V4}:8080 peer={FAR}:80"); 3]);

    // A host process still goes through its socket: translated there, nothing at TC.
    let tc_before = mesh.stat("tc_new_flow");
    let sock_before = mesh.stat("translated");
    let lines = probe::run(&mesh.host(), &["tcp", &format!("{WEB}:80"), "3"]).expect("host");
    assert_eq!(lines, vec![format!("ok {POD1_V4}:8080 peer={WEB}:80"); 3]);
    assert_eq!(mesh.stat("translated"), sock_before + 3);
    assert_eq!(mesh.stat("tc_new_flow"), tc_before);

    // A pod that goes takes its links with it; its pins are removed.
    drop(mesh.pods.pop());
    mesh.wait_links("lxcplain", false);
    mesh.wait_links("lxcmesh", true);
}

#[test]
fn all_scope_translates_pods_at_the_socket_so_the_mesh_sees_the_backend() {
    // The contrast: with the default scope the pod's connect is rewritten before the redirect
    // sees it, and the proxy gets the backend's address: the mesh is bypassed.
    let mut mesh = Mesh::start("all");
    let meshed = mesh.add_pod("lxcmesh", MESHED_V4);
    mesh_redirect(&mesh.pods[meshed]);
    let sock_before = mesh.stat("translated");
    let (client, seen) = through_the_proxy(&mesh);
    assert_eq!(seen, format!("orig={POD1_V4}:8080"), "the socket hook translated first");
    assert_eq!(client, format!("ok orig={POD1_V4}:8080 peer={WEB}:80"));
    assert_eq!(mesh.stat("translated"), sock_before + 1);
}

#[test]
fn pod_links_serve_while_the_agent_is_down_and_a_restarted_agent_replaces_them_or_drops_unmatched_ones() {
    let mut mesh = Mesh::start("host");
    mesh.add_pod("lxcplain", PLAIN_V4);
    mesh.add_pod("lxcother", MESHED_V4);
    let link_ids = |m: &Mesh| -> Vec<String> {
        let status = cli_json(&["status"], &m.bpffs.path).expect("status");
        let rows = status["programs"].as_array().cloned().unwrap_or_default();
        rows.iter()
            .filter(|p| p["pin"].as_str().is_some_and(|n| n.starts_with("pod-lxcplain-")))
            .map(|p| p["link_id"].to_string())
            .collect()
    };
    let before = link_ids(&mesh);
    assert_eq!(before.len(), 2, "{before:?}");
    // The agent stops: the links stay pinned and keep translating.
    mesh.agent.take().expect("agent").stop().expect("clean stop");
    let lines = probe::run(&mesh.pod(0), &["tcp", &format!("{WEB}:80"), "2"]).expect("tcp");
    assert_eq!(lines, vec![format!("ok {POD1_V4}:8080 peer={WEB}:80"); 2]);
    // A new agent that matches only one of the two: it replaces that one's links with its own
    // and removes the other's.
    mesh.start_agent("host", "lxcplain");
    mesh.wait_links("lxcplain", true);
    mesh.wait_links("lxcother", false);
    let after = link_ids(&mesh);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|id| !before.contains(id)), "new links: {before:?} -> {after:?}");
    let lines = probe::run(&mesh.pod(0), &["tcp", &format!("{WEB}:80"), "2"]).expect("tcp");
    assert_eq!(lines, vec![format!("ok {POD1_V4}:8080 peer={WEB}:80"); 2]);
}

/// Hairpin: a pod that reaches its own Service's ClusterIP and is picked as the backend (here the
/// only one) gets its connection, as kube-proxy masquerades such traffic: translated at its veth,
/// the packet goes back into the pod from a node address (SNAT), so the pod does not see a packet
/// from itself to itself, and the reply is translated back to come from the ClusterIP.
#[test]
fn a_pod_reaching_its_own_service_through_tc_is_masqueraded_back_to_itself() {
    let mesh = Mesh::start("host");
    mesh.wait_links("pod1", true);
    let pod1 = Place { netns: &mesh.topo.pod1, cgroup: Some(&mesh.cgroup) };
    let before = mesh.stat("tc_new_flow");
    let lines = probe::run(&pod1, &["tcp", &format!("{WEB}:80"), "3"]).expect("tcp");
    assert_eq!(lines, vec![format!("ok {POD1_V4}:8080 peer={WEB}:80"); 3], "{}", mesh.agent_log());
    let lines = probe::run(&pod1, &["udp", &format!("{WEB}:53"), "2"]).expect("udp");
    assert_eq!(lines, vec![format!("ok {POD1_V4}:8080 from={WEB}:53"); 2], "{}", mesh.agent_log());
    let peers: Vec<String> = mesh._servers[0].hits().iter().map(|h| h.peer.ip().to_string()).collect();
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p != POD1_V4),
        "masqueraded, not the pod itself: {peers:?}"
    );
    assert!(mesh.stat("tc_new_flow") >= before + 4, "translated at TC on the pod's interface");
    lb_tests::parity::shown(&["54"]);
}
