//! Reliability in a real kernel: what users see when things go wrong.
//!
//! - Map capacity: a source that needs more frontends than the map holds is refused whole, with a
//!   clear log line, `status` and a metric; what was programmed keeps serving; a source that fits
//!   again is applied.
use std::time::Duration;

use lb_tests::{
    agent::{cli_json, free_local_addr, inspect},
    metrics::scrape,
    node::Node,
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
