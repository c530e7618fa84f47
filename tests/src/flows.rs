//! What users have in flight when an agent restarts, crashes or upgrades, and the check that it
//! all survived: a client's session affinity, a held TCP connection, a tracked TC flow and a
//! client connecting in a loop (`tests/tests/reliability.rs`, `tests/tests/upgrade.rs`).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout},
    time::Duration,
};

use crate::{
    agent::inspect,
    node::Node,
    packet::{Packet, TCP_ACK, TCP_SYN, trace, tuple},
    probe,
    yaml::{Ep, Port, documents, service, slice},
};

/// web: ClientIP affinity, on a ClusterIP (socket hooks) and an external IP (TC path), three pods.
pub fn web_node(extra: &[&str]) -> Node {
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

/// What exists before an agent restart, crash or upgrade: the client's affinity backend, a held connection, a tracked
/// TC flow, and a client connecting in a loop for `loop_ms`.
pub struct Load {
    sticky: String,
    held: Child,
    held_in: ChildStdin,
    held_out: BufReader<ChildStdout>,
    tracked_backend: std::net::SocketAddr,
    looper: Child,
}

impl Load {
    pub fn start(node: &Node, loop_ms: u64) -> Self {
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

    /// Called right after the new agent is up: the client loop must still be running, or the
    /// restart happened after the load and the test would show nothing.
    pub fn still_running(&mut self) {
        assert!(
            self.looper.try_wait().expect("tcp-loop").is_none(),
            "the client loop ended before the new agent was up: lengthen it"
        );
    }

    /// After the restart: nothing failed, nothing was lost.
    pub fn check(mut self, node: &Node) {
        let out = self.looper.wait_with_output().expect("tcp-loop");
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains(" err=0 "), "connections failed around the restart: {summary}");
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
        assert_eq!(ack.json["counters"]["tc_translated"].as_u64(), Some(1), "{}", ack.json);
    }
}
