//! Packet path: the kernel's own time per run (BPF_PROG_TEST_RUN) of `lb_tc_ingress` and `lb_xdp`.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, ensure};
use lb_tests::packet::{Packet, TCP_ACK, TCP_PSH, TCP_SYN, Traced, trace_batch_with, tuple};

use crate::cluster::{Bench, TARGET};

pub const FLOWS: u32 = 10_000;
pub const REPEAT: u32 = 1_000_000;

/// TC ingress figures of a set of TCP flows (`Bench::tcp_flows_with`), each the median extra time
/// of a run over its paired non-IP frame (ns).
struct FlowFigures {
    new_flow: f64,
    back_to_back: f64,
    interleaved: f64,
}

impl Bench {
    /// Kernel time (ns) of a run of each of `frames` beyond a run of its partner in `reference`,
    /// the two interleaved in one batch (one run each) so that each pair meets the same timer,
    /// cache and scheduling conditions: the median over pairs, and what each of `frames` became.
    /// Steady where the mean of single runs is not (their timer overhead alone moves by 2×
    /// between runs on a VM). Single runs, not `--repeat`: each run gets the frame afresh, where
    /// repeated runs would reuse the buffer a rewrite changed.
    fn paired_with(
        &self,
        agent: &Path,
        direction: &str,
        frames: &[Vec<u8>],
        reference: &[Vec<u8>],
    ) -> anyhow::Result<(f64, Vec<Traced>)> {
        let interleaved: Vec<Vec<u8>> =
            frames.iter().zip(reference).flat_map(|(f, r)| [f.clone(), r.clone()]).collect();
        let traced = trace_batch_with(agent, &self.0.bpffs.path, direction, &interleaved)?;
        let ns = |t: &Traced| t.json["duration_ns"].as_i64().unwrap_or(0) as f64;
        let mut extra = Vec::with_capacity(frames.len());
        let mut outputs = Vec::with_capacity(frames.len());
        let mut pairs = traced.into_iter();
        while let (Some(frame), Some(partner)) = (pairs.next(), pairs.next()) {
            extra.push(ns(&frame) - ns(&partner));
            outputs.push(frame);
        }
        extra.sort_by(f64::total_cmp);
        Ok((crate::cluster::percentile(&extra, 0.5), outputs))
    }

    /// The TC ingress figures of `clients`' TCP flows to `target` (one flow per client), each the
    /// median extra time over the non-IP frame (`paired_with`):
    /// - new flow: each client's SYN, once (`FLOWS` flows interleaved, as they would arrive);
    /// - then each flow is driven to established as the programs' conntrack needs it: the
    ///   backend's SYN-ACK through `lb_tc_egress` (its reply entry marks both entries as having
    ///   seen a reply: the established lifetime) and the client's ACK that ends the handshake;
    /// - tracked flow, interleaved: each flow's next segment (an ACK with 64 bytes of data) once,
    ///   the flows interleaved (each run meets the flow's conntrack entry cold);
    /// - tracked flow, back to back: one flow's data segment `FLOWS` times in a row (the same
    ///   flow's packets arriving back to back: the steady per-packet cost).
    ///
    /// A tracked flow's ordinary packet writes nothing to conntrack (only a SYN, FIN or RST, a
    /// state change or an old timestamp does), so its cost is that of the packet alone.
    fn tcp_flows_with(
        &self,
        agent: &Path,
        clients: &[String],
        target: &str,
        reference: &[Vec<u8>],
    ) -> anyhow::Result<FlowFigures> {
        let bpffs = &self.0.bpffs.path;
        let syns: Vec<Vec<u8>> = clients.iter().map(|c| Packet::tcp(c, target, TCP_SYN).frame()).collect();
        let (new_flow, translated) = self.paired_with(agent, "ingress", &syns, reference)?;
        // The backend each SYN went to, from the translated frame.
        let mut backends = Vec::with_capacity(clients.len());
        for (client, syn) in clients.iter().zip(&translated) {
            let (_, src, dst) = tuple(&syn.output);
            ensure!(
                src.to_string() == *client && dst.to_string() != target,
                "the SYN {client} -> {target} was not translated (now {src} -> {dst})"
            );
            backends.push(dst.to_string());
        }
        let syn_acks: Vec<Vec<u8>> = clients
            .iter()
            .zip(&backends)
            .map(|(c, b)| Packet::tcp(b, c, TCP_SYN | TCP_ACK).frame())
            .collect();
        for (reply, traced) in syn_acks.iter().zip(trace_batch_with(agent, bpffs, "egress", &syn_acks)?) {
            let (_, src, _) = tuple(&traced.output);
            ensure!(src.to_string() == target, "the SYN-ACK {:?} was not translated back", tuple(reply));
        }
        let acks: Vec<Vec<u8>> = clients.iter().map(|c| Packet::tcp(c, target, TCP_ACK).frame()).collect();
        trace_batch_with(agent, bpffs, "ingress", &acks)?;
        let data: Vec<Vec<u8>> = clients
            .iter()
            .map(|c| Packet::tcp(c, target, TCP_ACK | TCP_PSH).payload(&[0x61; 64]).frame())
            .collect();
        let (interleaved, translated) = self.paired_with(agent, "ingress", &data, reference)?;
        for ((client, backend), segment) in clients.iter().zip(&backends).zip(&translated) {
            let (_, _, dst) = tuple(&segment.output);
            ensure!(dst.to_string() == *backend, "{client}'s data segment went to {dst}, not {backend}");
        }
        let same = vec![data[0].clone(); reference.len()];
        let (back_to_back, _) = self.paired_with(agent, "ingress", &same, reference)?;
        Ok(FlowFigures { new_flow, back_to_back, interleaved })
    }

    /// Kernel time (ns) per run of `frame` repeated `REPEAT` times.
    fn repeated_ns(&self, direction: &str, frame: &[u8]) -> anyhow::Result<f64> {
        self.repeated_ns_with(&lb_tests::agent_bin(), direction, frame)
    }

    /// `repeated_ns` with the programs of the agent binary `agent`.
    fn repeated_ns_with(&self, agent: &Path, direction: &str, frame: &[u8]) -> anyhow::Result<f64> {
        let out = Command::new(agent)
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

/// Kernel time (ns) per run of `frame` repeated `REPEAT` times through a program that only
/// returns (`r0 = ret; exit`) at the hook `direction` names: BPF_PROG_TEST_RUN's own floor.
fn empty_program_ns(direction: &str, frame: &[u8]) -> anyhow::Result<f64> {
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    let (prog_type, ret): (u32, i32) =
        if direction == "xdp" { (BPF_PROG_TYPE_XDP, 2) } else { (BPF_PROG_TYPE_SCHED_CLS, -1) };
    // `r0 = ret` (BPF_ALU64 | BPF_MOV | BPF_K), `exit`.
    let insns = [0xb7 | (u64::from(ret as u32) << 32), 0x95];
    let prog = lb_agent::sys::bpf::prog_load(prog_type, "lb_bench_empty", &insns, "GPL")
        .context("loading the empty program")?;
    use std::os::fd::AsFd as _;
    let (_, ns) = lb_agent::sys::bpf::prog_test_run(prog.as_fd(), frame, REPEAT)?;
    Ok(f64::from(ns))
}

/// The packet path's `FLOWS` clients, in 198.18.0.0/15 (no backend's address).
fn clients() -> Vec<String> {
    (0..FLOWS)
        .map(|i| format!("198.{}.{}.{}:{}", 18 + (i >> 16) % 2, (i >> 8) & 0xff, i & 0xff, 1024 + i % 60_000))
        .collect()
}

/// The frames each stage repeats, and the reference new and tracked flows are paired with.
struct StageFrames {
    /// A TCP SYN to no frontend.
    miss: Vec<u8>,
    /// An ARP request: the programs look at the EtherType and pass it.
    arp: Vec<u8>,
    /// The same IPv4 packet as `miss`, its protocol GRE (47): parsed up to the IP header.
    gre: Vec<u8>,
    /// `FLOWS` copies of the non-IP frame, which every version of the programs treats alike (a
    /// packet to no frontend, once the reference, changes with the programs: it would move the
    /// flows' figures by its own change).
    reference: Vec<Vec<u8>>,
}

impl StageFrames {
    fn new() -> Self {
        let miss = Packet::tcp("198.18.0.1:40000", "192.0.2.1:80", TCP_SYN).frame();
        let arp = lb_tests::packet::unhex(
            "ffffffffffff02000000000108060001080006040001020000000001c612000100000000000000c0000201",
        );
        let mut gre = miss.clone();
        gre[14 + 9] = 47;
        let reference = vec![arp.clone(); FLOWS as usize];
        Self { miss, arp, gre, reference }
    }
}

/// `--compare OLD_AGENT`: the packet path of the programs embedded in `old` (an agent binary,
/// e.g. a build before a change) and in this bench's agent, side by side against one agent's maps
/// at `services` services (random selection), the two alternated stage by stage over `rounds`
/// rounds, new and tracked flows paired with the non-IP frame (`Bench::tcp_flows_with`). Each
/// figure is the median over rounds; each round's flows are a fresh set of distinct flows, driven
/// through their handshake by the programs being measured. The older programs must load against this agent's pinned maps.
pub fn compare(old: &Path, services: u32, rounds: u32) -> anyhow::Result<String> {
    let new = lb_tests::agent_bin();
    let agents = [old, new.as_path()];
    let target = format!("{TARGET}:80");
    let StageFrames { miss, arp, gre, reference } = StageFrames::new();
    // Clients 100.64.0.0/10 (no backend's address), one set of FLOWS per run.
    let clients = |set: u32| -> Vec<String> {
        (0..FLOWS)
            .map(|j| {
                let i = set * FLOWS + j;
                format!("100.{}.{}.{}:{}", 64 + (i >> 16) % 64, (i >> 8) & 0xff, i & 0xff, 1024 + i % 60_000)
            })
            .collect()
    };
    let bench = Bench::start(services, 2, "random")?;
    const STAGES: [&str; 6] = [
        "non-IP",
        "other IPv4",
        "no frontend",
        "new flow",
        "tracked flow, back to back",
        "tracked flow, 10,000 flows interleaved",
    ];
    // [hook][agent][stage] → one figure per round.
    let mut figures = vec![vec![vec![Vec::new(); STAGES.len()]; 2]; 2];
    let mut set = 0;
    for round in 0..rounds {
        eprintln!("packet compare: round {}/{rounds}", round + 1);
        for (h, direction) in ["ingress", "xdp"].into_iter().enumerate() {
            for (a, agent) in agents.iter().enumerate() {
                let f = &mut figures[h][a];
                f[0].push(bench.repeated_ns_with(agent, direction, &arp)?);
                f[1].push(bench.repeated_ns_with(agent, direction, &gre)?);
                let base = f[0][f[0].len() - 1];
                f[2].push(bench.repeated_ns_with(agent, direction, &miss)?);
                let fresh = clients(set);
                set += 1;
                if direction == "ingress" {
                    let flows = bench.tcp_flows_with(agent, &fresh, &target, &reference)?;
                    f[3].push(base + flows.new_flow);
                    f[4].push(base + flows.back_to_back);
                    f[5].push(base + flows.interleaved);
                } else {
                    let syns: Vec<Vec<u8>> =
                        fresh.iter().map(|c| Packet::tcp(c, &target, TCP_SYN).frame()).collect();
                    f[3].push(base + bench.paired_with(agent, direction, &syns, &reference)?.0);
                }
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Packet path, {} (before) and {} (after), {services} services, random, median of {rounds} alternated rounds\n\n\
         | hook | stage | before (ns) | after (ns) | before, each round | after, each round |\n|---|---|---|---|---|---|",
        old.display(),
        new.display()
    );
    for (h, hook) in ["tc", "xdp"].into_iter().enumerate() {
        for (s, stage) in STAGES.iter().enumerate() {
            let [before, after] = [&figures[h][0][s], &figures[h][1][s]];
            if before.is_empty() {
                continue;
            }
            let med = |v: &Vec<f64>| {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                crate::cluster::percentile(&v, 0.5)
            };
            let each = |v: &Vec<f64>| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ");
            let _ = writeln!(
                out,
                "| {hook} | {stage} | {:.0} | {:.0} | {} | {} |",
                med(before),
                med(after),
                each(before),
                each(after)
            );
        }
    }
    Ok(out)
}

pub struct PacketRow {
    pub services: u32,
    /// A program that only returns, on the non-IP frame: the harness alone.
    pub empty: f64,
    /// A non-IP frame repeated: the program's entry and BPF_PROG_TEST_RUN's own cost.
    pub baseline: f64,
    /// An IPv4 packet of another protocol (GRE) repeated: the headers read, no lookup.
    pub other_ip: f64,
    pub algorithm: &'static str,
    pub hook: &'static str,
    pub miss: f64,
    pub new_flow: Option<f64>,
    /// An established flow's data segment, the same flow's run back to back (TC only).
    pub tracked: Option<f64>,
    /// Each of `FLOWS` established flows' data segment once, interleaved (TC only).
    pub tracked_interleaved: Option<f64>,
}

pub fn packet_path(sizes: &[u32]) -> anyhow::Result<Vec<PacketRow>> {
    let mut rows = Vec::new();
    let target = format!("{TARGET}:80");
    let StageFrames { miss, arp, gre, reference } = StageFrames::new();
    for &services in sizes {
        for algorithm in ["random", "maglev"] {
            eprintln!("packet path: {services} services, {algorithm}");
            let bench = Bench::start(services, 2, algorithm)?;
            for (hook, direction) in [("tc", "ingress"), ("xdp", "xdp")] {
                let empty = empty_program_ns(direction, &arp)?;
                let baseline = bench.repeated_ns(direction, &arp)?;
                let other_ip = bench.repeated_ns(direction, &gre)?;
                let repeated = bench.repeated_ns(direction, &miss)?;
                let agent = lb_tests::agent_bin();
                // XDP leaves flows to local backends to TC untouched, creating nothing: its
                // "new flow" is the decision to defer, and there is no tracked flow for it.
                let (new_flow, tracked, tracked_interleaved) = if hook == "tc" {
                    let flows = bench.tcp_flows_with(&agent, &clients(), &target, &reference)?;
                    (flows.new_flow, Some(baseline + flows.back_to_back), Some(baseline + flows.interleaved))
                } else {
                    let syns: Vec<Vec<u8>> =
                        clients().iter().map(|c| Packet::tcp(c, &target, TCP_SYN).frame()).collect();
                    (bench.paired_with(&agent, direction, &syns, &reference)?.0, None, None)
                };
                let new_flow = baseline + new_flow;
                rows.push(PacketRow {
                    services,
                    empty,
                    baseline,
                    other_ip,
                    algorithm,
                    hook,
                    miss: repeated,
                    new_flow: Some(new_flow),
                    tracked,
                    tracked_interleaved,
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
         Stages, each one packet repeated {REPEAT} times: a program that only returns, on a non-IP\n\
         frame (BPF_PROG_TEST_RUN's own floor), then ours on a non-IP frame (its entry), an IPv4 packet of another protocol (headers read, no lookup) and a TCP\n\
         SYN to no frontend (headers, the conntrack and frontend lookups). Flows: {FLOWS} TCP flows\n\
         from distinct clients to an external IP with 2 local endpoints (every Service has 2); each\n\
         figure is the non-IP time above plus the median extra time of a run over its partner, a\n\
         run of the non-IP frame in the same batch (single runs: the pairing cancels the single\n\
         run's timer overhead, and each run gets its frame afresh). New flow: each flow's SYN once.\n\
         The flows are then established as the programs' conntrack needs (the backend's SYN-ACK\n\
         through the egress program, the client's ACK); tracked flow: a data segment (ACK, 64 bytes)\n\
         of one flow run back to back {FLOWS} times (the steady cost of a flow's packets), and of\n\
         each of the {FLOWS} flows once, interleaved (each meets its conntrack entry cold). XDP\n\
         defers flows to local backends to TC untouched.\n\n\
         | services | algorithm | hook | empty program (ns) | non-IP frame (ns) | other IPv4 (ns) | no frontend (ns) | new flow (ns) | tracked flow, back to back (ns) | tracked flow, {FLOWS} interleaved (ns) |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            r.services,
            r.algorithm,
            r.hook,
            r.empty,
            r.baseline,
            r.other_ip,
            r.miss,
            fmt(r.new_flow),
            fmt(r.tracked),
            fmt(r.tracked_interleaved)
        );
    }
    // Flatness: the largest size against one service, per algorithm and hook.
    let _ = writeln!(
        out,
        "\nRatio, largest size to 1 service (target ≤ 1.1).\n\n\
         | algorithm | hook | no frontend | new flow | tracked, back to back | tracked, interleaved |\n|---|---|---|---|---|---|"
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
                    "| {algorithm} | {hook} | {:.2} | {} | {} | {} |",
                    b.miss / a.miss.max(1.0),
                    ratio(a.new_flow, b.new_flow),
                    ratio(a.tracked, b.tracked),
                    ratio(a.tracked_interleaved, b.tracked_interleaved)
                );
            }
        }
    }
    out
}
