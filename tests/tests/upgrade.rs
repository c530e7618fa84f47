//! Upgrades that change map shapes, in a real kernel: an agent restarted with other capacities
//! (or, through the harness, over maps of an older layout) migrates the pinned maps while a
//! client connects in a loop, a TCP connection is held open, a client has session affinity and
//! a TC flow is tracked: no connection fails, the held one keeps working, the client keeps its
//! backend, the tracked flow its conntrack entry; the old maps are gone.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout},
    time::Duration,
};

use lb_tests::{
    agent::{cli_json, inspect},
    node::Node,
    packet::{Packet, TCP_ACK, TCP_SYN, trace, tuple},
    probe,
    yaml::{Ep, Port, documents, service, slice},
};

const SMALL: [&str; 6] = ["--max-frontends", "16", "--max-affinity", "32", "--max-conntrack", "64"];
const LARGE: [&str; 6] = ["--max-frontends", "64", "--max-affinity", "128", "--max-conntrack", "256"];

/// web: ClientIP affinity, on a ClusterIP (socket hooks) and an external IP (TC path), three pods.
fn web_node(extra: &[&str]) -> Node {
    let web = service("default", "web", &["10.96.0.10"], &[Port("http", 80, "TCP", 8080)]).replacen(
        "spec:\n",
        "spec:\n  sessionAffinity: ClientIP\n  externalIPs: ['203.0.113.10']\n",
        1,
    );
    let pods = ["10.244.1.1", "10.244.1.2", "10.244.1.3"];
    let eps: Vec<Ep<'_>> = pods.iter().map(|p| Ep::ready(p)).collect();
    let source = documents(&[web, slice("default", "web-1", "web", "IPv4", &[("http", 8080, "TCP")], &eps)]);
    Node::with_args(&["10.244.1.1:8080", "10.244.1.2:8080", "10.244.1.3:8080"], &source, extra)
}

/// What exists before the upgrade: the client's affinity backend, a held connection, a tracked
/// TC flow, and a client connecting in a loop for `loop_ms`.
struct Load {
    sticky: String,
    held: Child,
    held_in: ChildStdin,
    held_out: BufReader<ChildStdout>,
    tracked_backend: std::net::SocketAddr,
    looper: Child,
}

impl Load {
    fn start(node: &Node, loop_ms: u64) -> Self {
        let first = node.probe(&["tcp", "10.96.0.10:80", "1"]);
        let sticky = probe::backend_of(&first[0]).expect("a backend").to_owned();
        let mut held = probe::spawn(&node.inside(), &["tcp-hold", "10.96.0.10:80"]).expect("tcp-hold");
        let mut held_out = BufReader::new(held.stdout.take().expect("stdout"));
        let held_in = held.stdin.take().expect("stdin");
        let mut line = String::new();
        held_out.read_line(&mut line).expect("greeting");
        assert_eq!(probe::backend_of(line.trim()), Some(sticky.as_str()), "affinity holds: {line}");
        let syn = trace(
            &node.bpffs.path,
            "ingress",
            &Packet::tcp("198.18.0.1:40000", "203.0.113.10:80", TCP_SYN).frame(),
        )
        .expect("trace");
        let (_, _, tracked_backend) = tuple(&syn.output);
        let looper = probe::spawn(&node.inside(), &["tcp-loop", "10.96.0.10:80", &loop_ms.to_string()])
            .expect("tcp-loop");
        std::thread::sleep(Duration::from_millis(500));
        Self { sticky, held, held_in, held_out, tracked_backend, looper }
    }

    /// After the upgrade: nothing failed, nothing was lost.
    fn check(mut self, node: &Node) {
        let out = self.looper.wait_with_output().expect("tcp-loop");
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains(" err=0 "), "connections failed around the upgrade: {summary}");
        self.held_in.write_all(b"ping\n").expect("stdin");
        let mut line = String::new();
        self.held_out.read_line(&mut line).expect("reply");
        assert_eq!(line.trim(), format!("ok {}", self.sticky), "the held connection broke");
        drop(self.held_in);
        let _ = self.held.wait();
        let rows = inspect("affinity", &node.bpffs.path).expect("inspect affinity");
        let rows = rows.as_array().expect("rows");
        let client: Vec<_> =
            rows.iter().filter(|r| r["client"].as_str().is_some_and(|c| c.starts_with("netns:"))).collect();
        assert_eq!(client.len(), 1, "the socket client's entry: {rows:?}");
        assert_eq!(client[0]["backend"], self.sticky.as_str(), "the affinity entry: {rows:?}");
        assert_eq!(client[0]["state"], "active", "{rows:?}");
        let lines = node.probe(&["tcp", "10.96.0.10:80", "10"]);
        assert!(
            lines.iter().all(|l| probe::backend_of(l) == Some(self.sticky.as_str())),
            "the client's affinity did not survive: {lines:?}"
        );
        // The TC flow's next packet is tracked: same backend, no new flow.
        let ack = trace(
            &node.bpffs.path,
            "ingress",
            &Packet::tcp("198.18.0.1:40000", "203.0.113.10:80", TCP_ACK).frame(),
        )
        .expect("trace");
        let (_, _, dst) = tuple(&ack.output);
        assert_eq!(dst, self.tracked_backend, "the tracked flow lost its conntrack entry");
        assert!(ack.json["counters"].get("tc_new_flow").is_none(), "{}", ack.json);
    }
}

/// `status`'s capacity of each map, by name.
fn capacities(node: &Node) -> serde_json::Map<String, serde_json::Value> {
    let status = cli_json(&["status"], &node.bpffs.path).expect("status");
    status["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .map(|m| (m["name"].as_str().expect("name").to_owned(), m["capacity"].clone()))
        .collect()
}

#[test]
fn an_agent_restarted_with_larger_maps_migrates_them_without_dropping_a_flow() {
    let mut node = web_node(&SMALL);
    let before = capacities(&node);
    assert_eq!(before["LB_AFFINITY"], 32, "{before:?}");
    let load = Load::start(&node, 4000);

    node.agent.take().expect("agent").stop().expect("clean stop");
    node.start_agent_with(&LARGE);
    let log = node.agent().log().join("\n");
    for map in ["LB_FRONTENDS_V4", "LB_FRONTENDS_V6", "LB_AFFINITY", "LB_CONNTRACK"] {
        assert!(
            log.lines().any(|l| l.contains("migrating it") && l.contains(map)),
            "{map} is migrated:\n{log}"
        );
    }
    assert!(log.contains("upgrade done"), "{log}");
    load.check(&node);

    let after = capacities(&node);
    assert_eq!(after["LB_FRONTENDS_V4"], 64, "{after:?}");
    assert_eq!(after["LB_AFFINITY"], 128, "{after:?}");
    assert_eq!(after["LB_CONNTRACK"], 256, "{after:?}");
    assert_eq!(after["LB_SLOTS"], before["LB_SLOTS"], "an unchanged map is adopted: {after:?}");
    let status = cli_json(&["status"], &node.bpffs.path).expect("status");
    assert_eq!(status["agent"]["schema"], status["agent"]["cli_schema"], "{status}");
    assert!(!node.bpffs.path.join("migrate").exists(), "the staging pins are gone");

    // The same flags again: every map is adopted as it is.
    node.agent.take().expect("agent").stop().expect("clean stop");
    node.start_agent_with(&LARGE);
    let log = node.agent().log().join("\n");
    assert!(!log.contains("migrating it"), "nothing to migrate:\n{log}");
}
