//! Connected UDP sockets follow backend changes (kube-proxy rule 48 at the socket layer): a
//! resolver that keeps one UDP socket connected to a DNS ClusterIP gets an error on it once its
//! backend leaves the Service, reopens, and its next queries are answered by a live backend; no
//! query goes to the removed backend after the removal was applied. (Its server keeps running,
//! as a pod that is only taken out of the Service does: without the agent's destroy, the socket
//! would go on talking to it.)
use std::{io::Read as _, net::SocketAddr, time::Duration};

use lb_tests::{monotonic_ns, node::Node, probe};

const A: &str = "10.244.1.1:5353";
const B: &str = "10.244.1.2:5353";

fn cluster(backends: &[&str]) -> String {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|b| {
            let ip = b.parse::<SocketAddr>().expect("backend").ip();
            format!("- {{addresses: ['{ip}'], conditions: {{ready: true}}}}")
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: kube-system}}
spec:
  clusterIP: 10.96.0.53
  ports: [{{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: dns-1, namespace: kube-system, labels: {{kubernetes.io/service-name: dns}}}}
addressType: IPv4
ports: [{{name: dns, port: 5353, protocol: UDP}}]
endpoints:
{}
",
        endpoints.join("\n")
    )
}

/// One probe line: (start on CLOCK_MONOTONIC, what happened).
fn parse(line: &str) -> (u64, &str) {
    let (at, rest) = line.split_once(' ').expect("`<ns> <result>`");
    (at.parse().expect("start ns"), rest)
}

#[test]
fn a_connected_udp_socket_to_a_removed_backend_is_closed_and_the_client_moves_to_a_live_one() {
    resolver_follows_the_removal(probe::spawn);
    lb_tests::parity::shown(&["48"]);
}

/// The same where no process of the client's network namespace is in sight (the probe's main
/// thread stays outside it; a thread of it works inside): the agent finds the namespace by the
/// file `ip netns` bind-mounts under /run/netns, as containerd and CRI-O do for every pod, which
/// is how the DaemonSet does without the host's PID namespace and CAP_SYS_PTRACE.
#[test]
fn a_namespace_found_only_by_its_runtime_file_gets_its_sockets_closed() {
    resolver_follows_the_removal(probe::spawn_from_thread);
}

fn resolver_follows_the_removal(
    spawn: fn(&probe::Place<'_>, &[&str]) -> anyhow::Result<std::process::Child>,
) {
    let node = Node::new(&[A, B], &cluster(&[A, B]));
    let mut resolver = spawn(&node.inside(), &["udp-resolver", "10.96.0.53:53", "3000"]).expect("probe");

    // The socket was connected through the hook to one backend; find which from the servers.
    std::thread::sleep(Duration::from_millis(700));
    let counts = node.servers.counts();
    assert_eq!(counts.len(), 1, "one connected socket talks to one backend: {counts:?}");
    let used = *counts.keys().next().expect("a backend");
    let other = if used.to_string() == A { B } else { A };

    let removal_started = monotonic_ns();
    let remaining = [other];
    node.update(&cluster(&remaining));
    node.agent()
        .wait_for_log("destroyed connected UDP sockets", 1, Duration::from_secs(2))
        .expect("the agent destroys the socket");
    let applied = monotonic_ns();

    let mut out = String::new();
    resolver.stdout.take().expect("stdout").read_to_string(&mut out).expect("probe output");
    assert!(resolver.wait().expect("probe exit").success());
    let lines: Vec<(u64, &str)> = out.lines().map(parse).collect();

    // Answered by the first backend until the removal.
    let before: Vec<&str> = lines.iter().filter(|(at, _)| *at < removal_started).map(|(_, r)| *r).collect();
    assert!(before.len() > 20 && before.iter().all(|r| *r == format!("ok {used}")), "{before:?}");
    // Within a second of the removal, the socket fails (the application sees the error).
    let (err_at, err) = lines
        .iter()
        .find(|(at, r)| *at >= removal_started && r.starts_with("err"))
        .unwrap_or_else(|| panic!("no error on the socket after the removal: {out}"));
    assert!(
        err_at - removal_started < 1_000_000_000,
        "error {} ms after the removal",
        (err_at - removal_started) / 1_000_000
    );
    assert!(err.contains("os=89") || err.contains("os=103"), "EDESTADDRREQ or ECONNABORTED: {err}");
    // Reopened: every later query is answered, by the live backend.
    let after: Vec<&str> = lines.iter().filter(|(at, _)| at > err_at).map(|(_, r)| *r).collect();
    assert!(after.len() > 20, "too few queries after the reconnect: {after:?}");
    assert!(after.iter().all(|r| *r == format!("ok {other}")), "after the reconnect: {after:?}");
    // Nothing asked after the removal was applied went to the removed backend.
    let late: Vec<_> = lines.iter().filter(|(at, r)| *at >= applied && *r == format!("ok {used}")).collect();
    assert!(late.is_empty(), "queries answered by the removed backend after the removal: {late:?}");
    assert_eq!(node.agent().count("sockets=1"), 1, "exactly the one socket was destroyed");
}
