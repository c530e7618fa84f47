//! Packet path: the kernel's own time per run (BPF_PROG_TEST_RUN) of `lb_tc_ingress` and `lb_xdp`.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, ensure};
use lb_tests::packet::{Packet, TCP_SYN, trace_batch};

use crate::cluster::{Bench, TARGET};

pub const FLOWS: u32 = 10_000;
pub const REPEAT: u32 = 1_000_000;

impl Bench {
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

pub struct PacketRow {
    pub services: u32,
    /// A non-IP frame repeated: the program's entry and BPF_PROG_TEST_RUN's own cost.
    pub baseline: f64,
    pub algorithm: &'static str,
    pub hook: &'static str,
    pub miss: f64,
    pub new_flow: Option<f64>,
    pub tracked: Option<f64>,
    pub overhead: f64,
}

pub fn packet_path(sizes: &[u32]) -> anyhow::Result<Vec<PacketRow>> {
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

/// The packet-path section of the report.
pub fn markdown(rows: &[PacketRow], sizes: &[u32]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Packet path (BPF_PROG_TEST_RUN, kernel time per run)\n\n\
         Non-IP frame and no frontend: one packet repeated {REPEAT} times (the non-IP frame is what\n\
         the harness and the program's entry cost). New flow and tracked flow: {FLOWS} distinct TCP\n\
         SYNs to an external IP with 2 local endpoints (every Service has 2), one run each, minus the\n\
         single-run timer overhead (last column). XDP defers flows to local backends to TC untouched.\n\n\
         | services | algorithm | hook | non-IP frame (ns) | no frontend (ns) | new flow (ns) | tracked flow (ns) | timer overhead (ns) |\n|---|---|---|---|---|---|---|---|"
    );
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    for r in rows {
        let _ = writeln!(
            out,
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
        out,
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
                    out,
                    "| {algorithm} | {hook} | {:.2} | {} | {} |",
                    b.miss / a.miss.max(1.0),
                    ratio(a.new_flow, b.new_flow),
                    ratio(a.tracked, b.tracked)
                );
            }
        }
    }
    out
}
