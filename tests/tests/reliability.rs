//! Reliability in a real kernel: what users see when things go wrong.
//!
//! - Map capacity: a source that needs more frontends than the map holds is refused whole, with a
//!   clear log line, `status` and a metric; what was programmed keeps serving; a source that fits
//!   again is applied.
//! - Endpoint churn under load: a rolling update replaces every backend of a ClusterIP, one every
//!   200 ms (new endpoint ready, old one terminating, then removed), while a client connects back
//!   to back: no connection fails, and none started after a removal was applied reaches the
//!   removed backend.
//! - Source faults: a file that stops parsing keeps the last good state programmed, with a log
//!   line, `status` and a metric saying so; the next valid file is applied.
//! - Agent crash under load: `kill -9` while connections flow through the socket hooks, one is
//!   held open, a client has session affinity and a TC flow is tracked; after the restart no
//!   connection has failed, the held one still works, the client keeps its backend and the
//!   tracked flow its entry (the maps are pinned).
//! - Logs: written to a pipe they carry no colour codes; `--log-format json` writes one JSON
//!   object per line with the sync's fields.
use std::time::Duration;

use lb_tests::{
    agent::{cli_json, free_local_addr, inspect},
    flows::{Load, web_node},
    metrics::scrape,
    node::Node,
    probe,
    yaml::{Ep, Port, documents, service, slice},
};

const ENETUNREACH: &str = "os=101";

/// `n` ClusterIP Services `s0…`, one IPv4 frontend each, all served by 10.244.1.1:8080.
fn services(n: u8) -> String {
    let objects: Vec<String> = (0..n)
        .flat_map(|i| {
            let name = format!("s{i}");
            [
                service(
                    "default",
                    &name,
                    &[&format!("10.96.0.{}", 10 + i)],
                    &[Port("http", 80, "TCP", 8080)],
                ),
                slice(
                    "default",
                    &format!("{name}-1"),
                    &name,
                    "IPv4",
                    &[("http", 8080, "TCP")],
                    &[Ep::ready("10.244.1.1")],
                ),
            ]
        })
        .collect();
    documents(&objects)
}

fn frontends(bpffs: &std::path::Path) -> Vec<String> {
    let rows = inspect("services", bpffs).expect("inspect");
    let mut out: Vec<String> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["frontend"].as_str().expect("frontend").to_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn services_beyond_a_maps_capacity_are_refused_whole_and_the_programmed_ones_keep_serving() {
    let metrics = free_local_addr();
    let metrics_flag = metrics.to_string();
    let node = Node::with_args(
        &["10.244.1.1:8080"],
        &services(3),
        &["--max-frontends", "4", "--metrics-addr", &metrics_flag],
    );
    let bpffs = &node.bpffs.path;
    let agent = node.agent();
    let programmed = ["10.96.0.10:80", "10.96.0.11:80", "10.96.0.12:80"];
    assert_eq!(frontends(bpffs), programmed);

    // Six frontends into a map of four: nothing of the new state is written.
    node.dir.write("cluster.yaml", &services(6)).expect("source");
    agent.wait_for_log("sync failed", 1, Duration::from_secs(5)).expect("the sync fails");
    let log = agent.log().join("\n");
    assert!(log.contains("map LB_FRONTENDS_V4 is full: 6 entries needed, capacity 4"), "{log}");
    assert_eq!(frontends(bpffs), programmed, "no new frontend, none removed");
    let status = cli_json(&["status"], bpffs).expect("status");
    assert_eq!(
        status["agent"]["last_sync_result"],
        "does not fit the maps: nothing written (see the agent log)"
    );
    assert!(status["agent"]["failed_syncs"].as_u64().expect("failed") >= 1, "{status}");
    let s = scrape(metrics).expect("scrape");
    assert!(s.value("lb_errors_total", &[("kind", "map_full")]).expect("map_full") >= 1.0, "{}", s.text);

    // What was programmed keeps serving; what did not fit was never half-written.
    for frontend in programmed {
        let lines = node.probe(&["tcp", frontend, "3"]);
        assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.1:8080")), "{frontend}: {lines:?}");
    }
    let lines = node.probe(&["tcp", "10.96.0.14:80", "1"]);
    assert!(lines[0].contains(ENETUNREACH), "a Service that did not fit is not translated: {lines:?}");

    // A source that fits again is applied (the agent retries, and the change wakes it).
    node.update(&services(4));
    assert_eq!(frontends(bpffs), ["10.96.0.10:80", "10.96.0.11:80", "10.96.0.12:80", "10.96.0.13:80"]);
    let lines = node.probe(&["tcp", "10.96.0.13:80", "3"]);
    assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.1:8080")), "{lines:?}");
    let status = cli_json(&["status"], bpffs).expect("status");
    assert_eq!(status["agent"]["last_sync_result"], "applied", "{status}");
}

/// Source faults: a file that becomes invalid (cut mid-write, as an editor or a copy leaves it)
/// keeps the last good state programmed and says so (log line, `status`, metric); traffic keeps
/// flowing; the next valid file is applied.
#[test]
fn a_source_file_that_becomes_invalid_keeps_the_last_good_state_and_says_so() {
    let metrics = free_local_addr();
    let metrics_flag = metrics.to_string();
    let node = Node::with_args(&["10.244.1.1:8080"], &services(2), &["--metrics-addr", &metrics_flag]);
    let bpffs = &node.bpffs.path;
    let agent = node.agent();
    assert_eq!(frontends(bpffs), ["10.96.0.10:80", "10.96.0.11:80"]);

    // Cut inside the third Service's port mapping: not YAML. The two whole Services before the cut
    // are not taken either: a file that does not parse is refused whole.
    let whole = services(3);
    let cut = &whole[..whole.rfind("  - {name: \"http\", port: 80").expect("the last Service's port") + 16];
    node.dir.write("cluster.yaml", cut).expect("source");
    agent
        .wait_for_log("source is invalid; keeping what is programmed", 1, Duration::from_secs(5))
        .expect("said");
    let log = agent.log().join("\n");
    assert!(log.contains("cluster.yaml"), "the log names the file: {log}");
    assert_eq!(frontends(bpffs), ["10.96.0.10:80", "10.96.0.11:80"], "the last good state stays programmed");
    let status = cli_json(&["status"], bpffs).expect("status");
    assert_eq!(status["agent"]["last_sync_result"], "source invalid (last good state kept)", "{status}");
    let s = scrape(metrics).expect("scrape");
    assert!(
        s.value("lb_errors_total", &[("kind", "source_invalid")]).expect("source_invalid") >= 1.0,
        "{}",
        s.text
    );
    for frontend in ["10.96.0.10:80", "10.96.0.11:80"] {
        let lines = node.probe(&["tcp", frontend, "3"]);
        assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.1:8080")), "{frontend}: {lines:?}");
    }

    // Valid again (with one more Service): applied.
    node.update(&services(3));
    assert_eq!(frontends(bpffs), ["10.96.0.10:80", "10.96.0.11:80", "10.96.0.12:80"]);
    let lines = node.probe(&["tcp", "10.96.0.12:80", "3"]);
    assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.1:8080")), "{lines:?}");
    let status = cli_json(&["status"], bpffs).expect("status");
    assert_eq!(status["agent"]["last_sync_result"], "applied", "{status}");
}

/// `ready` endpoints and `terminating` ones (not ready, still serving) of pods 10.244.1.N.
fn endpoints<'a>(addrs: &'a [String], ready: usize) -> Vec<Ep<'a>> {
    addrs
        .iter()
        .enumerate()
        .map(|(k, a)| if k < ready { Ep::ready(a) } else { Ep(a, false, true, true) })
        .collect()
}

fn pod_ips(ready: &[u8], terminating: &[u8]) -> Vec<String> {
    ready.iter().chain(terminating).map(|i| format!("10.244.1.{i}")).collect()
}

/// web: an HTTP-style TCP Service on 10.96.0.10:80.
fn web(ready: &[u8], terminating: &[u8]) -> String {
    let addrs = pod_ips(ready, terminating);
    documents(&[
        service("default", "web", &["10.96.0.10"], &[Port("http", 80, "TCP", 8080)]),
        slice("default", "web-1", "web", "IPv4", &[("http", 8080, "TCP")], &endpoints(&addrs, ready.len())),
    ])
}

/// dns: UDP and TCP on 10.96.0.53:53, as CoreDNS serves (pods listen on 5353).
fn dns(ready: &[u8], terminating: &[u8]) -> String {
    let addrs = pod_ips(ready, terminating);
    documents(&[
        service(
            "kube-system",
            "dns",
            &["10.96.0.53"],
            &[Port("dns", 53, "UDP", 5353), Port("dns-tcp", 53, "TCP", 5353)],
        ),
        slice(
            "kube-system",
            "dns-1",
            "dns",
            "IPv4",
            &[("dns", 5353, "UDP"), ("dns-tcp", 5353, "TCP")],
            &endpoints(&addrs, ready.len()),
        ),
    ])
}

/// Replaces pods 1, 2, 3 by 4 … 12 one at a time (new pod ready and old one terminating, then
/// the old one removed 200 ms later) while each client (`lb-probe MODE ADDR`) requests back to
/// back, then checks every request: none failed, none that started after a removal was applied
/// reached the removed pod (`port` is the pods' port); afterwards requests reach the last three.
fn rolling_update(cluster: fn(&[u8], &[u8]) -> String, port: u16, clients: &[(&str, &str)]) {
    let pods: Vec<String> = (1..=12).map(|i| format!("10.244.1.{i}:{port}")).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let node = Node::new(&pods, &cluster(&[1, 2, 3], &[]));
    let children: Vec<_> = clients
        .iter()
        .map(|(mode, addr)| probe::spawn(&node.inside(), &[mode, addr, "8000"]).expect("client"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut ready: Vec<u8> = vec![1, 2, 3];
    let mut removed_at: Vec<(String, u64)> = Vec::new();
    for new in 4..=12u8 {
        let old = ready.remove(0);
        ready.push(new);
        node.update(&cluster(&ready, &[old]));
        std::thread::sleep(Duration::from_millis(200));
        node.update(&cluster(&ready, &[]));
        // The maps were written before the agent logged the sync: any request that starts from
        // now on must not reach `old`.
        removed_at.push((format!("10.244.1.{old}:{port}"), lb_tests::monotonic_ns()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let last_three: Vec<String> = (10..=12).map(|i| format!("10.244.1.{i}:{port}")).collect();
    for ((mode, addr), child) in clients.iter().zip(children) {
        let out = child.wait_with_output().expect("client");
        let lines = String::from_utf8_lossy(&out.stdout);
        let mut total = 0;
        for line in lines.lines() {
            let (at, rest) = line.split_once(' ').expect("timestamped line");
            let at: u64 = at.parse().expect("timestamp");
            assert!(
                rest.starts_with("ok "),
                "{mode} {addr}: a request failed during the rolling update: {line}"
            );
            let backend = rest[3..].split_whitespace().next().expect("backend");
            for (old, when) in &removed_at {
                assert!(
                    !(at > *when && backend == old),
                    "{mode} {addr}: a request started {} µs after {old} was removed reached it",
                    (at - when) / 1000
                );
            }
            total += 1;
        }
        assert!(total > 200, "{mode} {addr}: too few requests to say anything: {total}");
        let single = if mode.starts_with("udp") { "udp" } else { "tcp" };
        for line in node.probe(&[single, addr, "10"]) {
            let backend = probe::backend_of(&line).unwrap_or_default();
            assert!(last_three.iter().any(|p| p == backend), "{mode} {addr} after the update: {line}");
        }
    }
}

#[test]
fn a_rolling_update_under_load_fails_no_connection_and_removed_backends_get_none() {
    rolling_update(web, 8080, &[("tcp-log", "10.96.0.10:80")]);
}

#[test]
fn a_rolling_update_of_dns_fails_no_udp_or_tcp_query_and_removed_backends_get_none() {
    rolling_update(dns, 5353, &[("udp-log", "10.96.0.53:53"), ("tcp-log", "10.96.0.53:53")]);
}

#[test]
fn an_agent_killed_under_load_drops_nothing_and_its_successor_keeps_flows_and_affinity() {
    // web: ClientIP affinity, on a ClusterIP (socket hooks) and an external IP (TC path).
    let mut node = web_node(&[]);
    // Before the crash: the client's affinity backend, a held connection, a tracked TC flow and
    // a client connecting in a loop.
    let mut load = Load::start(&node, 3000);
    node.agent.take().expect("agent").kill9();
    std::thread::sleep(Duration::from_millis(500));
    node.start_agent();
    load.still_running();
    load.check(&node);
}

/// A log read by a container runtime or `kubectl logs` is a pipe: plain text, no colour codes;
/// with `--log-format json` (kube-proxy's `--logging-format json`) every line is one JSON object,
/// the sync's numbers as fields.
#[test]
fn logs_in_a_pipe_are_plain_text_or_json_lines() {
    let mut node = Node::new(&["10.244.1.1:8080"], &services(1));
    let text = node.agent.as_ref().expect("agent").log();
    let applied = text.iter().find(|l| l.contains("sync applied")).expect("a sync applied line");
    assert!(applied.contains(" written=") && applied.contains(" frontends=1"), "{applied}");
    assert!(text.iter().all(|l| !l.contains('\u{1b}')), "colour codes in a pipe:\n{}", text.join("\n"));
    node.agent.take().expect("agent").stop().expect("stop");
    node.start_agent_with(&["--log-format", "json"]);
    let lines = node.agent.as_ref().expect("agent").log();
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(parsed.iter().all(|v| v["level"].is_string() && v["timestamp"].is_string()), "{lines:?}");
    let sync = parsed.iter().find(|v| v["fields"]["message"] == "sync applied").expect("sync applied");
    assert_eq!(sync["fields"]["frontends"], 1, "{sync}");
    assert!(sync["fields"]["written"].is_u64(), "{sync}");
    assert!(parsed.iter().any(|v| v["fields"]["message"] == "agent ready"), "{lines:?}");
}
