//! `cargo xtask bench`: measurements anyone can rerun, printed as markdown tables and written to
//! `bench/RESULTS.md`. Benchmarks print; they never assert timings.
//!
//! - Packet path: the kernel's own time per run (BPF_PROG_TEST_RUN) of `lb_tc_ingress` and
//!   `lb_xdp` for 1, 10,000 and 100,000 services, random and Maglev, stage by stage: a non-IP
//!   frame, an IPv4 packet of another protocol and a packet to no frontend (each `--repeat`ed: the
//!   runs share one buffer and the packet is never rewritten), then a TCP SYN that starts a flow to
//!   an external IP and the same SYN again (a tracked flow), from batches of distinct flows run
//!   once each, each run paired with a run of the non-IP frame in the same batch (the median extra
//!   time, which the single run's timer overhead cancels out of).
//! - Control plane: the agent's full sync of 10,000 services × 10 endpoints (source read,
//!   translation, map writes), one EndpointSlice change (the file source re-reads the file and
//!   parses the changed document again),
//!   and the agent's peak RSS; beside them, the time `iptables-restore` and `nft -f` take to load
//!   the rule sets kube-proxy would write for the same services (its iptables and nftables
//!   layouts), in a network namespace made for it.
//!
//! Everything runs in a cgroup, bpffs directory and network namespaces made here and removed on
//! exit; no packet is sent anywhere (BPF_PROG_TEST_RUN only returns the program's verdict).
mod cluster;
mod connect_path;
mod control_plane;
mod cost;
mod kube_proxy_rules;
mod packet_path;
mod veth_pps;

use std::{fmt::Write as _, path::PathBuf, time::Instant};

use anyhow::Context as _;
use lb_tests::require_root;

use crate::{
    cluster::percentile,
    connect_path::{RuleLoads, connect_path},
    control_plane::{PHASES, control_plane, kube_churn, kube_control_plane},
    packet_path::packet_path,
    veth_pps::veth_pps,
};

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
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only packet|connect|veth|control`: one section, for working on it; nothing is written
    // (`--only kube`: the control plane's Kubernetes-source part alone, `--only file` its
    // file-source part alone).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    // `--skip-large` / `--skip-churn`: the Kubernetes source's largest row or its churn row left
    // out, for iterating on the control plane (nothing is written then either).
    let skip_large = args.iter().any(|a| a == "--skip-large");
    let skip_churn = args.iter().any(|a| a == "--skip-churn");
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let sizes: &[u32] = if quick { &[1, 1_000] } else { &[1, 10_000, 100_000] };
    // `--compare OLD_AGENT [--services N] [--rounds R]`: the packet path of an older agent's
    // programs and this one's, alternated in one sitting (see `packet_path::compare`); nothing else
    // runs and nothing is written.
    if let Some(old) = args.iter().position(|a| a == "--compare").and_then(|i| args.get(i + 1)) {
        let value = |flag: &str, default: u32| -> anyhow::Result<u32> {
            match args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)) {
                Some(v) => v.parse().with_context(|| format!("{flag} {v}")),
                None => Ok(default),
            }
        };
        let report =
            packet_path::compare(&PathBuf::from(old), value("--services", 10_000)?, value("--rounds", 3)?)?;
        println!("{report}");
        return Ok(());
    }
    let started = Instant::now();
    let mut report = String::new();
    let _ = writeln!(report, "# Benchmark results\n\nMachine: {}.\n", machine());

    let packet = if run("packet") { packet_path(sizes)? } else { Vec::new() };
    if !packet.is_empty() {
        report.push_str(&packet_path::markdown(&packet, sizes));
    }

    let connect_sizes: &[u32] = if quick { &[1, 1_000] } else { &[1, 1_000, 10_000] };
    let (rounds, per_round) = if quick { (2, 500) } else { (5, 2_000) };
    let (connects, loads, paired) =
        if run("connect") { connect_path(connect_sizes, 10, rounds, per_round)? } else { Default::default() };
    if !connects.is_empty() {
        report.push_str(&connect_path::markdown(&connects, rounds * per_round));
        report.push_str(&connect_path::paired_markdown(&paired));
    }
    let svg = connect_path::svg(&connects);

    let (veth_rounds, millis) = if quick { (1, 1_000) } else { (3, 3_000) };
    let veth = if run("veth") { veth_pps(veth_rounds, millis)? } else { Vec::new() };
    if !veth.is_empty() {
        report.push_str(&veth_pps::markdown(&veth, veth_rounds, millis));
    }
    // The largest size both the packet and the connect path measured.
    let cost_size = *connect_sizes.iter().filter(|n| sizes.contains(n)).max().unwrap_or(&1);
    if !packet.is_empty() || !paired.is_empty() || !veth.is_empty() {
        report.push_str(&cost::markdown(&packet, &paired, &veth, cost_size));
    }

    let (services, endpoints, changes) = if quick { (1_000, 10, 5) } else { (10_000, 10, 20) };
    if run("control") || only.as_deref() == Some("file") {
        let cp = control_plane(services, endpoints, changes)?;
        // The connect path's loads at this size (not run with `--only control`).
        let load = loads.iter().find(|l| l.services == services);
        let loaded =
            |f: fn(&RuleLoads) -> f64| load.map_or((f64::NAN, f64::NAN), |l| (f(l), cp.full_sync_ms / f(l)));
        let (iptables_ms, iptables_ratio) = loaded(|l| l.iptables_ms);
        let (nft_ms, nft_ratio) = loaded(|l| l.nft_ms);
        let _ = writeln!(
            report,
            "\n## Control plane ({} services × {} endpoints)\n\n\
             kube-proxy's rule sets are the connect path's, loaded into its namespaces.\n\n\
             | measurement | lb-agent | kube-proxy's rule set | ratio |\n|---|---|---|---|\n\
             | full sync: source read, translation, map writes (ms) | {:.0} | iptables-restore {:.0} / nft -f {:.0} | {:.3} / {:.3} |\n\
             | of which the source: reading and parsing the file (ms) | {:.0} | - | - |\n\
             | one EndpointSlice change, p50 / p99 of {} (ms; the file source re-reads the file, parses the changed document) | {:.1} / {:.1} | - | - |\n\
             | of which the source, p50 / p99 (ms) | {:.1} / {:.1} | - | - |\n\
             | agent peak RSS (MiB) | {:.1} | - | - |",
            cp.services,
            cp.endpoints,
            cp.full_sync_ms,
            iptables_ms,
            nft_ms,
            iptables_ratio,
            nft_ratio,
            cp.full_sync_source_ms,
            cp.incremental_ms.len(),
            percentile(&cp.incremental_ms, 0.5),
            percentile(&cp.incremental_ms, 0.99),
            percentile(&cp.incremental_source_ms, 0.5),
            percentile(&cp.incremental_source_ms, 0.99),
            cp.rss_mib
        );
    }
    if run("control") || only.as_deref() == Some("kube") {
        let kube_changes = if quick { 10 } else { 50 };
        let _ = writeln!(
            report,
            "\n## Control plane, Kubernetes source\n\n\
             The agent lists the cluster from an in-process API server (the list/watch protocol, the\n\
             agent's real kube client; its lists are consistent reads in pages of 500, the server's\n\
             objects encoded once as they are written), then one EndpointSlice changes {kube_changes}\n\
             times (20 at the largest size). Visible: from the bench's write of the changed slice to\n\
             the API server (the watch event goes out) to the new backend read from the pinned maps\n\
             (polled every 200 µs). Sync: the agent's own `elapsed_us` of that sync (changes,\n\
             translation, layout, diff, writes). Full sync: from the API server's receipt of the agent's\n\
             first list request to the agent's first \"sync applied\" (its log timestamp: list, full\n\
             translation, writes; the lists run while the agent loads its programs), from the\n\
             bench's start of the agent to then (program loading, list, sync), its\n\
             `elapsed_us`, and the agent's CPU time (user + system) from its start to then (program\n\
             loading included). Times are wall clock on a shared machine.\n\n\
             | Services × endpoints | --min-sync-period | full sync, list → last write (ms) | agent start → last write (ms) | of which the sync (ms) | agent CPU until then (ms) | change visible p50 / p99 (ms) | sync p50 / p99 (ms) | peak RSS (MiB) |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        let mut phases = String::new();
        let large = if quick { 10_000 } else { 100_000 };
        let runs = [
            (services, endpoints, kube_changes, "10ms"),
            (services, endpoints, kube_changes, "0ms"),
            (large, endpoints, 20, "0ms"),
        ];
        let runs = if skip_large { &runs[..2] } else { &runs[..] };
        for &(services, endpoints, changes, period) in runs {
            let k = kube_control_plane(services, endpoints, changes, period)?;
            let p50: Vec<String> = k.phases_ms.iter().map(|t| format!("{:.1}", percentile(t, 0.5))).collect();
            let _ = writeln!(
                phases,
                "| {} × {} | {} | {} |",
                k.services,
                k.endpoints,
                k.min_sync_period,
                p50.join(" | ")
            );
            let _ = writeln!(
                report,
                "| {} × {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} |",
                k.services,
                k.endpoints,
                k.min_sync_period,
                k.full_sync_ms,
                k.start_to_sync_ms,
                k.full_sync_apply_ms,
                k.full_sync_cpu_ms,
                percentile(&k.visible_ms, 0.5),
                percentile(&k.visible_ms, 0.99),
                percentile(&k.sync_ms, 0.5),
                percentile(&k.sync_ms, 0.99),
                k.rss_mib
            );
        }
        let _ = writeln!(
            report,
            "\nWhere a change's sync goes (p50 of each phase, ms, the agent's own clock): a change's\n\
             sync translates and lays out only the Services it touched.\n\n\
             | Services × endpoints | --min-sync-period | {} |\n|---|---|---|---|---|---|---|\n{phases}",
            PHASES.map(|p| p.trim_end_matches("_us")).join(" | ")
        );
        let (rate, seconds) = if quick { (100, 3) } else { (100, 10) };
        let churn = if skip_churn { None } else { Some(kube_churn(services, endpoints, rate, seconds)?) };
        if let Some(c) = churn {
            let _ = writeln!(
                report,
                "Sustained churn: {} EndpointSlice changes a second for {} s, each to another Service, on\n\
             {} × {} (`--min-sync-period 0ms`), written on schedule whatever the agent is doing.\n\
             Visible as above; CPU: the agent's user + system time over the churn, per second.\n\n\
             | changes | change visible p50 / p99 (ms) | agent CPU (% of one CPU) | syncs | peak RSS (MiB) |\n\
             |---|---|---|---|---|\n\
             | {} | {:.1} / {:.1} | {:.1} | {} | {:.1} |",
                c.rate,
                c.seconds,
                c.services,
                c.endpoints,
                c.visible_ms.len(),
                percentile(&c.visible_ms, 0.5),
                percentile(&c.visible_ms, 0.99),
                c.cpu_share * 100.0,
                c.syncs,
                c.rss_mib
            );
        }
    }
    let _ = writeln!(report, "\nWhole run: {:.0} s.", started.elapsed().as_secs_f64());
    println!("{report}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/RESULTS.md");
    if !quick && only.is_none() && !skip_large && !skip_churn {
        std::fs::create_dir_all(path.parent().context("bench dir")?)?;
        std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
        let chart = path.with_file_name("connect.svg");
        std::fs::write(&chart, &svg).with_context(|| format!("writing {}", chart.display()))?;
        eprintln!("wrote {} and {}", path.display(), chart.display());
    }
    Ok(())
}
