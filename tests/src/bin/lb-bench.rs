//! `cargo xtask bench`: measurements anyone can rerun, printed as markdown tables and written to
//! `bench/RESULTS.md`. Benchmarks print; they never assert timings.
//!
//! - Packet path: the kernel's own time per run (BPF_PROG_TEST_RUN) of `lb_tc_ingress` and
//!   `lb_xdp` for 1, 10,000 and 100,000 services, random and Maglev: a packet to no frontend
//!   (`--repeat`, the runs share one buffer and the packet is never rewritten), a TCP SYN that
//!   starts a flow to an external IP, and the same SYN again (a tracked flow), both from batches of
//!   distinct flows timed one run each. Single runs carry the kernel's timer overhead, estimated
//!   as (a batch of single runs to no frontend) − (the same packet repeated) and subtracted.
//! - Control plane: the agent's full sync of 10,000 services × 10 endpoints (source read,
//!   translation, map writes), one EndpointSlice change (the file source re-reads the whole file),
//!   and the agent's peak RSS; beside them, the time `iptables-restore` and `nft -f` take to load
//!   the rule sets kube-proxy would write for the same services (its iptables and nftables
//!   layouts), in a network namespace made for it.
//!
//! Everything runs in a cgroup, bpffs directory and network namespaces made here and removed on
//! exit; no packet is sent anywhere (BPF_PROG_TEST_RUN only returns the program's verdict).
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_tests::{
    agent::Agent,
    guard::Netns,
    node::PinnedAgent,
    packet::{Packet, TCP_SYN, trace_batch},
    require_root,
};

const TARGET: &str = "203.0.113.10";
const FLOWS: u32 = 10_000;
const REPEAT: u32 = 1_000_000;

/// `10.0.0.0 + n` style addresses.
fn ip(base: [u8; 4], n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + n)
}

/// `services` Services (the first one, `svc-0`, also on the external IP `TARGET`), each with
/// `endpoints` ready endpoints on this node, as compact flow-style YAML.
fn cluster(services: u32, endpoints: u32, changed: Option<u32>) -> String {
    let mut out = String::with_capacity(services as usize * (300 + 40 * endpoints as usize));
    for i in 0..services {
        let external = if i == 0 { format!(", externalIPs: ['{TARGET}']") } else { String::new() };
        let _ = writeln!(
            out,
            "---\n{{apiVersion: v1, kind: Service, metadata: {{name: svc-{i}, namespace: bench}}, spec: {{clusterIP: {}{external}, ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]}}}}",
            ip([10, 96, 0, 0], i + 1)
        );
        let eps: Vec<String> = (0..endpoints)
            .map(|j| {
                // `changed`: the last endpoint of svc-0 moves (one EndpointSlice update).
                let n = if i == 0 && j + 1 == endpoints { changed.map_or(j, |c| 1_000_000 + c) } else { j };
                format!(
                    "{{addresses: ['{}'], nodeName: node-1, conditions: {{ready: true}}}}",
                    ip([10, 128, 0, 0], i * endpoints.max(1) + n)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "---\n{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: svc-{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}, addressType: IPv4, ports: [{{name: http, port: 8080, protocol: TCP}}], endpoints: [{}]}}",
            eps.join(", ")
        );
    }
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `elapsed_us` of the agent's `n`-th "sync applied" line (1-based).
fn sync_us(agent: &Agent, n: usize) -> anyhow::Result<u64> {
    let line = agent
        .log()
        .into_iter()
        .map(|l| strip_ansi(&l))
        .filter(|l| l.contains("sync applied"))
        .nth(n - 1)
        .context("no such sync")?;
    line.split("elapsed_us=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no elapsed_us in {line:?}"))
}

/// Peak resident memory of `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")?;
    Ok(kib / 1024.0)
}

/// One agent with `services` × `endpoints` programmed from a file.
struct Bench(PinnedAgent);

impl Bench {
    fn start(services: u32, endpoints: u32, algorithm: &str) -> anyhow::Result<Self> {
        let yaml = cluster(services, endpoints, None);
        let extra = ["--lb-algorithm", algorithm, "--metrics-addr", ""];
        Ok(Self(PinnedAgent::start(&yaml, &extra, Duration::from_secs(600), false)?))
    }

    /// Mean kernel time (ns) per run of `frames`, one run each, through `direction`.
    fn mean_ns(&self, direction: &str, frames: &[Vec<u8>]) -> anyhow::Result<f64> {
        let traced = trace_batch(&self.0.bpffs.path, direction, frames)?;
        let total: u64 = traced.iter().map(|t| t.json["duration_ns"].as_u64().unwrap_or(0)).sum();
        Ok(total as f64 / traced.len().max(1) as f64)
    }

    /// Kernel time (ns) per run of `frame` repeated `REPEAT` times.
    fn repeated_ns(&self, direction: &str, frame: &[u8]) -> anyhow::Result<f64> {
        let out = Command::new(lb_tests::agent_bin())
            .args(["trace", "--output", "json", "--direction", direction, "--repeat"])
            .arg(REPEAT.to_string())
            .args(["--packet", &lb_tests::packet::hex(frame), "--bpffs"])
            .arg(&self.0.bpffs.path)
            .output()?;
        ensure!(out.status.success(), "trace --repeat: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(json["duration_ns"].as_u64().context("duration_ns")? as f64)
    }
}

fn syn(i: u32, dst: &str) -> Vec<u8> {
    let client = format!("198.{}.{}.{}:{}", 18 + (i >> 16) % 2, (i >> 8) & 0xff, i & 0xff, 1024 + i % 60_000);
    Packet::tcp(&client, dst, TCP_SYN).frame()
}

struct PacketRow {
    services: u32,
    /// A non-IP frame repeated: the program's entry and BPF_PROG_TEST_RUN's own cost.
    baseline: f64,
    algorithm: &'static str,
    hook: &'static str,
    miss: f64,
    new_flow: Option<f64>,
    tracked: Option<f64>,
    overhead: f64,
}

fn packet_path(sizes: &[u32]) -> anyhow::Result<Vec<PacketRow>> {
    let mut rows = Vec::new();
    let target = format!("{TARGET}:80");
    let miss = Packet::tcp("198.18.0.1:40000", "192.0.2.1:80", TCP_SYN).frame();
    // An ARP request: the programs look at the EtherType and pass it.
    let arp = lb_tests::packet::unhex(
        "ffffffffffff02000000000108060001080006040001020000000001c612000100000000000000c0000201",
    );
    let misses: Vec<Vec<u8>> = (0..FLOWS).map(|i| syn(i, "192.0.2.1:80")).collect();
    for &services in sizes {
        for algorithm in ["random", "maglev"] {
            eprintln!("packet path: {services} services, {algorithm}");
            let bench = Bench::start(services, 2, algorithm)?;
            for (hook, direction) in [("tc", "ingress"), ("xdp", "xdp")] {
                let baseline = bench.repeated_ns(direction, &arp)?;
                let repeated = bench.repeated_ns(direction, &miss)?;
                let single = bench.mean_ns(direction, &misses)?;
                let overhead = (single - repeated).max(0.0);
                let flows: Vec<Vec<u8>> = (0..FLOWS).map(|i| syn(i, &target)).collect();
                // XDP leaves flows to local backends to TC untouched, creating nothing: its
                // "new flow" is the decision to defer, and there is no tracked flow for it.
                let new_flow = bench.mean_ns(direction, &flows)? - overhead;
                let tracked =
                    if hook == "tc" { Some(bench.mean_ns(direction, &flows)? - overhead) } else { None };
                rows.push(PacketRow {
                    services,
                    baseline,
                    algorithm,
                    hook,
                    miss: repeated,
                    new_flow: Some(new_flow),
                    tracked,
                    overhead,
                });
            }
        }
    }
    Ok(rows)
}

struct ControlPlane {
    services: u32,
    endpoints: u32,
    full_sync_ms: f64,
    incremental_ms: Vec<f64>,
    rss_mib: f64,
    iptables_ms: f64,
    nft_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// kube-proxy's iptables-mode rule set for the bench's Services (`pkg/proxy/iptables`): the
/// KUBE-SERVICES jump per ClusterIP, a KUBE-SVC chain picking an endpoint with `statistic` random
/// probabilities, and a KUBE-SEP chain per endpoint with the masquerade mark and the DNAT.
fn iptables_rules(services: u32, endpoints: u32) -> String {
    let mut out = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n",
    );
    let mut rules = String::new();
    for i in 0..services {
        let svc = format!("KUBE-SVC-{i:016X}");
        let _ = writeln!(out, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}",
            ip([10, 96, 0, 0], i + 1)
        );
        for j in 0..endpoints {
            let sep = format!("KUBE-SEP-{:016X}", u64::from(i) << 8 | u64::from(j));
            let ep = ip([10, 128, 0, 0], i * endpoints + j);
            let _ = writeln!(out, ":{sep} - [0:0]");
            let left = endpoints - j;
            if left > 1 {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/svc-{i}:http -> {ep}:8080\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / f64::from(left)
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/svc-{i}:http -> {ep}:8080\" -j {sep}"
                );
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {ep}/32 -m comment --comment bench/svc-{i}:http -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment bench/svc-{i}:http -m tcp -j DNAT --to-destination {ep}:8080"
            );
        }
    }
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's nftables-mode layout (`pkg/proxy/nftables`): a `service-ips` verdict map from
/// address . protocol . port to a per-service chain, which picks an endpoint chain with `numgen
/// random mod N`, which DNATs.
fn nft_rules(services: u32, endpoints: u32) -> String {
    let mut out = String::from("table ip kube-proxy {\n");
    let mut elements = Vec::new();
    for i in 0..services {
        let _ = writeln!(out, "  chain service-{i}-bench-svc-{i}-tcp-http {{");
        let targets: Vec<String> = (0..endpoints).map(|j| format!("{j} : goto endpoint-{i}-{j}")).collect();
        let _ = writeln!(out, "    numgen random mod {endpoints} vmap {{ {} }}\n  }}", targets.join(", "));
        for j in 0..endpoints {
            let ep = ip([10, 128, 0, 0], i * endpoints + j);
            let _ = writeln!(
                out,
                "  chain endpoint-{i}-{j} {{\n    ip saddr {ep} jump mark-for-masquerade\n    meta l4proto tcp dnat to {ep}:8080\n  }}"
            );
        }
        elements.push(format!(
            "{} . tcp . 80 : goto service-{i}-bench-svc-{i}-tcp-http",
            ip([10, 96, 0, 0], i + 1)
        ));
    }
    out.push_str("  chain mark-for-masquerade {\n    mark set mark or 0x4000\n  }\n");
    let _ = writeln!(
        out,
        "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}",
        elements.join(", ")
    );
    out.push_str(
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n  \
         chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n}\n",
    );
    out
}

/// Time `program args < input` takes inside `netns`.
fn timed_load(netns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", netns.name))
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn control_plane(services: u32, endpoints: u32, changes: u32) -> anyhow::Result<ControlPlane> {
    eprintln!("control plane: {services} services × {endpoints} endpoints");
    let bench = Bench::start(services, endpoints, "random")?;
    let full_sync_ms = sync_us(&bench.0.agent, 1)? as f64 / 1000.0;
    let mut incremental_ms = Vec::new();
    for c in 0..changes {
        let before = bench.0.agent.count("sync applied");
        std::fs::write(&bench.0.source, cluster(services, endpoints, Some(c)))?;
        bench.0.agent.wait_for_log("sync applied", before + 1, Duration::from_secs(120))?;
        incremental_ms.push(sync_us(&bench.0.agent, before + 1)? as f64 / 1000.0);
    }
    let rss_mib = peak_rss_mib(bench.0.agent.pid())?;
    drop(bench);
    let netns = Netns::new()?;
    let iptables_ms =
        timed_load(&netns, "iptables-restore", &["--noflush"], &iptables_rules(services, endpoints))?;
    let nft_ms = timed_load(&netns, "nft", &["-f", "-"], &nft_rules(services, endpoints))?;
    incremental_ms.sort_by(f64::total_cmp);
    Ok(ControlPlane { services, endpoints, full_sync_ms, incremental_ms, rss_mib, iptables_ms, nft_ms })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs ({cpu}), Linux {}", kernel.trim())
}

fn main() -> anyhow::Result<()> {
    require_root();
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[u32] = if quick { &[1, 1_000] } else { &[1, 10_000, 100_000] };
    let started = Instant::now();
    let mut report = String::new();
    let _ = writeln!(report, "# Benchmark results\n\nMachine: {}.\n", machine());

    let rows = packet_path(sizes)?;
    let _ = writeln!(
        report,
        "## Packet path (BPF_PROG_TEST_RUN, kernel time per run)\n\n\
         Non-IP frame and no frontend: one packet repeated {REPEAT} times (the non-IP frame is what\n\
         the harness and the program's entry cost). New flow and tracked flow: {FLOWS} distinct TCP\n\
         SYNs to an external IP with 2 local endpoints (every Service has 2), one run each, minus the\n\
         single-run timer overhead (last column). XDP defers flows to local backends to TC untouched.\n\n\
         | services | algorithm | hook | non-IP frame (ns) | no frontend (ns) | new flow (ns) | tracked flow (ns) | timer overhead (ns) |\n|---|---|---|---|---|---|---|---|"
    );
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    for r in &rows {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {:.0} |",
            r.services,
            r.algorithm,
            r.hook,
            r.baseline,
            r.miss,
            fmt(r.new_flow),
            fmt(r.tracked),
            r.overhead
        );
    }
    // Flatness: the largest size against one service, per algorithm and hook.
    let _ = writeln!(
        report,
        "\nRatio, largest size to 1 service (target ≤ 1.1). The repeated columns are steady from run\n\
         to run; the single-run columns (new and tracked flow) are not: their timer overhead alone\n\
         moves by 2× between runs on a VM, so read their ratios as ±50%.\n\n\
         | algorithm | hook | no frontend | new flow | tracked |\n|---|---|---|---|---|"
    );
    let largest = *sizes.last().unwrap_or(&1);
    for algorithm in ["random", "maglev"] {
        for hook in ["tc", "xdp"] {
            let find =
                |n: u32| rows.iter().find(|r| r.services == n && r.algorithm == algorithm && r.hook == hook);
            if let (Some(a), Some(b)) = (find(1), find(largest)) {
                let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
                    (Some(x), Some(y)) if x > 0.0 => format!("{:.2}", y / x),
                    _ => "-".to_owned(),
                };
                let _ = writeln!(
                    report,
                    "| {algorithm} | {hook} | {:.2} | {} | {} |",
                    b.miss / a.miss.max(1.0),
                    ratio(a.new_flow, b.new_flow),
                    ratio(a.tracked, b.tracked)
                );
            }
        }
    }

    let (services, endpoints, changes) = if quick { (1_000, 10, 5) } else { (10_000, 10, 20) };
    let cp = control_plane(services, endpoints, changes)?;
    let _ = writeln!(
        report,
        "\n## Control plane ({} services × {} endpoints)\n\n\
         | measurement | lb-agent | kube-proxy's rule set | ratio |\n|---|---|---|---|\n\
         | full sync: source read, translation, map writes (ms) | {:.0} | iptables-restore {:.0} / nft -f {:.0} | {:.2} / {:.2} |\n\
         | one EndpointSlice change, p50 / p99 of {} (ms; the file source re-reads all) | {:.1} / {:.1} | - | - |\n\
         | agent peak RSS (MiB) | {:.1} | - | - |",
        cp.services,
        cp.endpoints,
        cp.full_sync_ms,
        cp.iptables_ms,
        cp.nft_ms,
        cp.full_sync_ms / cp.iptables_ms,
        cp.full_sync_ms / cp.nft_ms,
        cp.incremental_ms.len(),
        percentile(&cp.incremental_ms, 0.5),
        percentile(&cp.incremental_ms, 0.99),
        cp.rss_mib
    );
    let _ = writeln!(
        report,
        "\nNot measured yet: connect latency and rate through the socket hooks against direct,\n\
         iptables and nftables; packets per second through a veth pair; incremental updates\n\
         through the Kubernetes source. Whole run: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/RESULTS.md");
    if !quick {
        std::fs::create_dir_all(path.parent().context("bench dir")?)?;
        std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
