//! The operator's view in a real kernel: `inspect` (names, filters, slot shares, Maglev tables,
//! per-service counters) and `status` (the agent's record, attached programs, map fill), checked
//! against a known map state, with counters that move when traffic flows.
//!
//! Socket traffic runs inside a test namespace and cgroup (`Node`); packet traffic goes through
//! `lb_tc_ingress` with BPF_PROG_TEST_RUN (`lb-agent trace`), nothing attached to an interface.
use std::time::Duration;

use lb_tests::{
    agent::{cli_json, cli_table},
    node::{Node, PinnedAgent},
    packet::{Packet, TCP_SYN, trace, trace_batch, tuple},
    yaml::{Ep, Port, documents, service, slice},
};
use serde_json::Value;

const ECONNREFUSED: &str = "os=111";

/// web (two endpoints), kube-system/dns over UDP and TCP (one endpoint), empty (none).
fn cluster() -> String {
    documents(&[
        service("default", "web", &["10.96.0.10"], &[Port("http", 80, "TCP", 8080)]),
        slice(
            "default",
            "web-1",
            "web",
            "IPv4",
            &[("http", 8080, "TCP")],
            &[Ep::ready("10.244.1.1"), Ep::ready("10.244.1.2")],
        ),
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
            &[Ep::ready("10.244.1.3")],
        ),
        service("default", "empty", &["10.96.0.30"], &[Port("http", 80, "TCP", 8080)]),
    ])
}

fn rows(v: &Value) -> &Vec<Value> {
    v.as_array().expect("a JSON array")
}

fn frontends(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = rows(v)
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["frontend"].as_str().expect("frontend"),
                r["protocol"].as_str().expect("protocol")
            )
        })
        .collect();
    out.sort();
    out
}

/// The per-service counters of `namespace/name:port` in `inspect stats --output json`.
fn service_counters(stats: &Value, name: &str) -> Value {
    let found = rows(&stats["services"]).iter().find(|r| {
        let s = &r["service"];
        format!(
            "{}/{}:{}",
            s["namespace"].as_str().unwrap_or(""),
            s["name"].as_str().unwrap_or(""),
            s["port"].as_str().unwrap_or("")
        ) == name
    });
    found.unwrap_or_else(|| panic!("no counters for {name}: {stats}"))["counters"].clone()
}

#[test]
fn inspect_names_filters_and_per_service_counters_follow_socket_traffic() {
    let node = Node::new(&["10.244.1.1:8080", "10.244.1.2:8080", "10.244.1.3:5353"], &cluster());
    let bpffs = &node.bpffs.path;

    let all = cli_json(&["inspect", "services"], bpffs).expect("inspect services");
    assert_eq!(
        frontends(&all),
        ["10.96.0.10:80/TCP", "10.96.0.30:80/TCP", "10.96.0.53:53/TCP", "10.96.0.53:53/UDP"],
        "{all}"
    );
    let web = rows(&all).iter().find(|r| r["frontend"] == "10.96.0.10:80").expect("web row");
    assert_eq!(web["service"]["namespace"], "default", "{web}");
    assert_eq!(web["service"]["name"], "web");
    assert_eq!(web["service"]["port"], "http");
    assert_eq!(web["service"]["scope"], "cluster");
    assert_eq!(web["kind"], "ClusterIP");
    let mut addrs: Vec<&str> =
        rows(&web["backends"]).iter().map(|b| b["address"].as_str().expect("address")).collect();
    addrs.sort_unstable();
    assert_eq!(addrs, ["10.244.1.1:8080", "10.244.1.2:8080"], "{web}");
    assert!(
        rows(&web["backends"])
            .iter()
            .all(|b| b["state"] == "active" && b["slots"] == 1 && b["local"] == true)
    );
    let empty = rows(&all).iter().find(|r| r["frontend"] == "10.96.0.30:80").expect("empty row");
    assert!(rows(&empty["backends"]).is_empty(), "{empty}");
    assert_eq!(empty["when_empty"], "reject");

    // Filters: by Service (with and without the port name), by frontend, by backend.
    let dns = cli_json(&["inspect", "services", "--service", "kube-system/dns"], bpffs).expect("filter");
    assert_eq!(frontends(&dns), ["10.96.0.53:53/TCP", "10.96.0.53:53/UDP"], "{dns}");
    let dns_tcp = cli_json(&["inspect", "services", "--service", "dns:dns-tcp"], bpffs).expect("filter");
    assert_eq!(frontends(&dns_tcp), ["10.96.0.53:53/TCP"], "{dns_tcp}");
    let by_frontend = cli_json(&["inspect", "services", "--frontend", "10.96.0.30"], bpffs).expect("filter");
    assert_eq!(frontends(&by_frontend), ["10.96.0.30:80/TCP"]);
    let by_backend =
        cli_json(&["inspect", "services", "--backend", "10.244.1.2:8080"], bpffs).expect("filter");
    assert_eq!(frontends(&by_backend), ["10.96.0.10:80/TCP"]);
    let backends =
        cli_json(&["inspect", "backends", "--service", "kube-system/dns"], bpffs).expect("backends");
    let dns_backend = &rows(&backends)[0];
    assert_eq!(rows(&backends).len(), 2, "UDP and TCP backend entries: {backends}");
    assert_eq!(dns_backend["address"], "10.244.1.3:5353");
    let services: Vec<&str> = rows(&backends)
        .iter()
        .flat_map(|b| rows(&b["services"]).iter().map(|s| s.as_str().expect("name")))
        .collect();
    assert_eq!(services.len(), 2);
    assert!(
        services.contains(&"kube-system/dns:dns") && services.contains(&"kube-system/dns:dns-tcp"),
        "{backends}"
    );

    // The table names the Services too.
    let table = cli_table(&["inspect", "services"], bpffs).expect("table");
    for expected in [
        "default/web:http",
        "kube-system/dns:dns-tcp",
        "connections refused",
        "10.244.1.2:8080 (active, local)",
    ] {
        assert!(table.contains(expected), "table lacks {expected:?}:\n{table}");
    }

    // Counters per Service move with traffic: 7 connections to web, 3 refused by empty.
    let before = cli_json(&["inspect", "stats"], bpffs).expect("stats");
    assert_eq!(service_counters(&before, "default/web:http")["socket/translated"], 0, "{before}");
    let lines = node.probe(&["tcp", "10.96.0.10:80", "7"]);
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:?}");
    let lines = node.probe(&["tcp", "10.96.0.30:80", "3"]);
    assert!(lines.iter().all(|l| l.contains(ECONNREFUSED)), "{lines:?}");
    let after = cli_json(&["inspect", "stats"], bpffs).expect("stats");
    let web = service_counters(&after, "default/web:http");
    assert_eq!(web["socket/translated"], 7, "{after}");
    assert_eq!(web["socket/no_backend"], 0);
    let empty = service_counters(&after, "default/empty:http");
    assert_eq!(empty["socket/no_backend"], 3, "{after}");
    assert_eq!(empty["socket/translated"], 0);
    assert_eq!(service_counters(&after, "kube-system/dns:dns")["socket/translated"], 0);
    let total = |v: &Value, name: &str| v["totals"][name].as_u64().expect("counter");
    assert_eq!(total(&after, "translated") - total(&before, "translated"), 7);
    assert_eq!(total(&after, "no_backend") - total(&before, "no_backend"), 3);
    let filtered = cli_json(&["inspect", "stats", "--service", "web"], bpffs).expect("stats");
    assert_eq!(rows(&filtered["services"]).len(), 1, "{filtered}");
    let table = cli_table(&["inspect", "stats"], bpffs).expect("table");
    assert!(
        table.lines().any(|l| l.contains("default/web:http")
            && l.contains("socket")
            && l.contains("translated")
            && l.contains(" 7 ")),
        "{table}"
    );

    // A Service whose group goes away takes its counters with it; a new one starts at zero.
    node.update(&documents(&[
        service("default", "web", &["10.96.0.10"], &[Port("http", 80, "TCP", 8080)]),
        slice("default", "web-1", "web", "IPv4", &[("http", 8080, "TCP")], &[Ep::ready("10.244.1.1")]),
    ]));
    let stats = cli_json(&["inspect", "stats"], bpffs).expect("stats");
    assert_eq!(rows(&stats["services"]).len(), 1, "removed Services' counters are gone: {stats}");
    assert_eq!(service_counters(&stats, "default/web:http")["socket/translated"], 7, "kept across a change");
}

#[test]
fn status_reports_the_agent_its_programs_and_map_fill_also_after_it_stopped() {
    let mut node = Node::new(&["10.244.1.1:8080"], &cluster());
    let bpffs = node.bpffs.path.clone();
    let status = cli_json(&["status"], &bpffs).expect("status");
    let agent = &status["agent"];
    assert_eq!(agent["state"], "running", "{status}");
    assert_eq!(agent["pid"], node.agent().pid());
    assert_eq!(agent["ready"], true);
    assert_eq!(agent["schema"], agent["cli_schema"]);
    assert_eq!(agent["source"], "file");
    assert_eq!(agent["last_sync_result"], "applied");
    assert!(agent["syncs"].as_u64().expect("syncs") >= 1, "{status}");
    assert_eq!(agent["failed_syncs"], 0);

    // Eight socket hooks, each attached to the test's cgroup through a pinned link.
    let programs = rows(&status["programs"]);
    assert_eq!(programs.len(), 8, "{status}");
    let cgroup = node.cgroup.path.display().to_string();
    for p in programs {
        assert_eq!(p["kind"], "cgroup", "{p}");
        assert_eq!(p["target"], cgroup.as_str(), "{p}");
        assert!(p["program"].as_str().expect("name").starts_with("lb_"), "{p}");
    }

    // Fill levels: four IPv4 frontends and four groups (web, dns ×2, empty).
    let map = |name: &str| -> Value {
        rows(&status["maps"])
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {status}"))
            .clone()
    };
    assert_eq!(map("LB_FRONTENDS_V4")["entries"], 4, "{status}");
    assert_eq!(map("LB_FRONTENDS_V4")["capacity"], 131_072);
    assert_eq!(map("LB_FRONTENDS_V6")["entries"], 0);
    assert_eq!(map("LB_SERVICES")["entries"], 4);
    assert_eq!(map("LB_SERVICE_STATS")["entries"], 4);
    // web's two endpoints, and dns's one over UDP and over TCP (a backend entry is address,
    // port and protocol).
    assert_eq!(map("LB_BACKENDS")["entries"], 4, "{status}");
    assert_eq!(map("LB_STATS")["kind"], "percpu_array");

    let table = cli_table(&["status"], &bpffs).expect("table");
    for expected in ["running", "ready", "applied", "LB_FRONTENDS_V4", "lb_connect4", cgroup.as_str()] {
        assert!(table.contains(expected), "status lacks {expected:?}:\n{table}");
    }

    // With the agent stopped, status still reads the pins and says so.
    node.agent.take().expect("agent").stop().expect("clean stop");
    let status = cli_json(&["status"], &bpffs).expect("status");
    assert_eq!(status["agent"]["state"], "stopped", "{status}");
    assert_eq!(rows(&status["programs"]).len(), 8, "the pinned links keep the programs attached");
}

const EXTERNAL: &str = "203.0.113.50";

/// web behind an external IP (five local endpoints), `lb` with `loadBalancerSourceRanges`, and
/// `idle` with an external IP and no endpoints.
fn external_cluster() -> String {
    let endpoints: String = (1..=5)
        .map(|i| {
            format!("- {{addresses: ['10.244.1.{i}'], nodeName: node-1, conditions: {{ready: true}}}}\n")
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.50
  externalIPs: ['{EXTERNAL}']
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}---
apiVersion: v1
kind: Service
metadata: {{name: lb, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.60
  loadBalancerSourceRanges: ['192.0.2.0/24']
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}}]
status:
  loadBalancer:
    ingress: [{{ip: 203.0.113.60}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: lb-1, namespace: default, labels: {{kubernetes.io/service-name: lb}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ['10.244.1.9'], nodeName: node-1, conditions: {{ready: true}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: idle, namespace: default}}
spec:
  clusterIP: 10.96.0.70
  externalIPs: ['203.0.113.70']
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
"
    )
}

#[test]
fn maglev_tables_and_packet_path_counters_per_service() {
    let agent =
        PinnedAgent::start(&external_cluster(), &["--lb-algorithm", "maglev"], Duration::from_secs(20), true)
            .expect("agent");
    let bpffs = &agent.bpffs.path;

    // The external group's Maglev table: every entry names one of the five backends, each with
    // about a fifth of the table (Maglev's balance is within a few percent).
    let tables = cli_json(&["inspect", "maglev", "default/web"], bpffs).expect("maglev");
    let table = &rows(&tables)[0];
    assert_eq!(rows(&tables).len(), 1, "{tables}");
    assert_eq!(table["service"]["scope"], "external");
    assert_eq!(table["frontends"], serde_json::json!([format!("{EXTERNAL}:80/TCP")]));
    let size = table["size"].as_u64().expect("size");
    assert!(size > 1000, "a Maglev table, not one slot per backend: {size}");
    assert_eq!(rows(&table["table"]).len() as u64, size);
    let shares = rows(&table["backends"]);
    assert_eq!(shares.len(), 5, "{table}");
    let sum: u64 = shares.iter().map(|s| s["slots"].as_u64().expect("slots")).sum();
    assert_eq!(sum, size);
    for s in shares {
        let share = s["slots"].as_u64().expect("slots") as f64 / size as f64;
        assert!((0.17..=0.23).contains(&share), "unbalanced share {share}: {s}");
    }
    let by_address = cli_json(&["inspect", "maglev", &format!("{EXTERNAL}:80")], bpffs).expect("maglev");
    assert_eq!(by_address[0]["group"], table["group"]);
    let text = cli_table(&["inspect", "maglev", "web"], bpffs).expect("maglev table");
    assert!(text.contains("default/web:http") && text.contains("Maglev table"), "{text}");
    // A ClusterIP has no table: a clear error.
    let out = std::process::Command::new(lb_tests::agent_bin())
        .args(["inspect", "maglev", "10.96.0.50:80", "--bpffs"])
        .arg(bpffs)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no NodePort, LoadBalancer or external-IP frontend")
    );

    // Packets from outside count per Service and verdict: 21 new flows to web, 2 SYNs to idle
    // (no endpoints: dropped), 4 SYNs to lb from outside its source ranges (denied), 1 from inside.
    let syns: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            Packet::tcp(&format!("198.18.0.{}:{}", 1 + i, 40_000 + i), &format!("{EXTERNAL}:80"), TCP_SYN)
                .frame()
        })
        .collect();
    let traced = trace_batch(bpffs, "ingress", &syns).expect("trace");
    for t in &traced {
        let (_, _, dst) = tuple(&t.output);
        assert!(dst.to_string().starts_with("10.244.1."), "translated to a backend: {dst}");
    }
    for i in 0..2 {
        let t = trace(
            bpffs,
            "ingress",
            &Packet::tcp(&format!("198.18.1.1:{}", 50_000 + i), "203.0.113.70:80", TCP_SYN).frame(),
        )
        .expect("trace");
        assert_eq!(t.verdict, 2, "no endpoints: dropped");
    }
    for i in 0..3 {
        let t = trace(
            bpffs,
            "ingress",
            &Packet::tcp(&format!("198.18.2.1:{}", 50_000 + i), "203.0.113.60:80", TCP_SYN).frame(),
        )
        .expect("trace");
        assert_eq!(t.verdict, 2, "outside loadBalancerSourceRanges: dropped");
    }
    // With the kernel log on for lb's LoadBalancer IP, the program says what it did.
    cli_table(&["log", "on", "--frontend", "203.0.113.60:80/TCP"], bpffs).expect("log on");
    let t = trace(bpffs, "ingress", &Packet::tcp("192.0.2.7:50000", "203.0.113.60:80", TCP_SYN).frame())
        .expect("trace");
    assert_eq!(t.verdict, -1, "inside the ranges: translated, handed on (TCX_NEXT) to the stack");
    let log = t.json["kernel_log"].to_string();
    assert!(
        log.contains("tc: group")
            && log.contains("192.0.2.7:50000 -> 203.0.113.60:80 proto 6: new flow -> 10.244.1.9:8080"),
        "{log}"
    );
    let t = trace(bpffs, "ingress", &Packet::tcp("198.18.2.9:50000", "203.0.113.60:80", TCP_SYN).frame())
        .expect("trace");
    assert_eq!(t.verdict, 2, "outside the ranges: dropped, logged or not");
    assert!(
        t.json["kernel_log"].to_string().contains("source not in loadBalancerSourceRanges, dropped"),
        "{}",
        t.json
    );
    let t =
        trace(bpffs, "ingress", &Packet::tcp("198.18.3.1:50000", &format!("{EXTERNAL}:80"), TCP_SYN).frame())
            .expect("trace");
    assert_eq!(t.json["kernel_log"], serde_json::json!([]), "web is not logged");
    cli_table(&["log", "off"], bpffs).expect("log off");

    let stats = cli_json(&["inspect", "stats"], bpffs).expect("stats");
    // web's external group (the table) and its ClusterIP group are separate rows.
    let external = rows(&stats["services"])
        .iter()
        .find(|r| r["service"]["name"] == "web" && r["service"]["scope"] == "external")
        .expect("web external counters");
    assert_eq!(external["counters"]["tc/translated"], 21, "{stats}");
    assert_eq!(external["counters"]["socket/translated"], 0);
    let idle = rows(&stats["services"])
        .iter()
        .find(|r| r["service"]["name"] == "idle" && r["service"]["scope"] == "external")
        .expect("idle");
    assert_eq!(idle["counters"]["tc/no_backend"], 2, "{stats}");
    let lb = rows(&stats["services"])
        .iter()
        .find(|r| r["service"]["name"] == "lb" && r["service"]["scope"] == "external")
        .expect("lb");
    assert_eq!(lb["counters"]["tc/source_denied"], 4, "{stats}");
    assert_eq!(lb["counters"]["tc/translated"], 1, "{stats}");
    assert_eq!(stats["totals"]["tc_source_denied"], 4);
    assert_eq!(stats["totals"]["tc_new_flow"], 22);
}

#[test]
fn kernel_log_is_off_by_default_and_switches_on_for_one_frontend() {
    let node = Node::new(&["10.244.1.1:8080", "10.244.1.2:8080", "10.244.1.3:5353"], &cluster());
    let bpffs = &node.bpffs.path;
    let agent = node.agent();
    let logged = |frontend: &str| {
        agent.log().iter().filter(|l| l.contains("socket: group") && l.contains(frontend)).count()
    };

    // Off by default: traffic logs nothing.
    assert!(node.probe(&["tcp", "10.96.0.10:80", "2"]).iter().all(|l| l.starts_with("ok ")));
    assert_eq!(cli_table(&["log", "show"], bpffs).expect("show").trim(), "kernel logging off");

    let on = cli_table(&["log", "on", "--frontend", "10.96.0.10:80/TCP"], bpffs).expect("log on");
    assert!(on.contains("default/web:http"), "{on}");
    let lines = node.probe(&["tcp", "10.96.0.10:80", "3"]);
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:?}");
    assert!(node.probe(&["tcp", "10.96.0.53:53", "2"]).iter().all(|l| l.starts_with("ok ")));
    agent
        .wait_for_log("10.96.0.10:80 proto 6 -> backend 10.244.1.", 3, Duration::from_secs(3))
        .expect("three kernel log lines for web's connections");
    assert_eq!(logged("10.96.0.10:80"), 3, "{:?}", agent.log());
    assert_eq!(logged("10.96.0.53"), 0, "another Service is not logged");
    assert!(cli_table(&["log", "show"], bpffs).expect("show").contains("default/web:http"));

    // A frontend that does not exist is refused with a clear error.
    let out = std::process::Command::new(lb_tests::agent_bin())
        .args(["log", "on", "--frontend", "10.96.0.99:80/TCP", "--bpffs"])
        .arg(bpffs)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a frontend"));

    cli_table(&["log", "off"], bpffs).expect("log off");
    assert!(node.probe(&["tcp", "10.96.0.10:80", "3"]).iter().all(|l| l.starts_with("ok ")));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(logged("10.96.0.10:80"), 3, "nothing more once off");
}
