//! Packet path: the kernel's own time per run (BPF_PROG_TEST_RUN) of `lb_tc_ingress` and `lb_xdp`.
use std::process::Command;

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
