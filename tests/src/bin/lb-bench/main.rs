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
mod cluster;
mod control_plane;
mod kube_proxy_rules;
mod packet_path;

use std::{fmt::Write as _, path::PathBuf, time::Instant};

use anyhow::Context as _;
use lb_tests::require_root;

use crate::{
    cluster::percentile,
    control_plane::control_plane,
    packet_path::{FLOWS, REPEAT, packet_path},
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
