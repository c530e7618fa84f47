//! Issue 19's cost table: the datapath figures the other sections measured, beside the figures
//! before the work on them (bench/RESULTS.md of that time) and the targets.
use std::fmt::Write as _;

use crate::{connect_path::PairedRow, packet_path::PacketRow, veth_pps::PpsRow};

/// One row: measurement, figure before, figure now, decimals, target (at most this; none for
/// the new flow).
type Line<'a> = (&'a str, &'a str, Option<f64>, usize, Option<f64>);

/// The summary at `services` (the packet path's and the connect path's size), random selection.
pub fn markdown(packet: &[PacketRow], paired: &[PairedRow], veth: &[PpsRow], services: u32) -> String {
    let row = |hook: &str| {
        packet.iter().find(|r| r.services == services && r.algorithm == "random" && r.hook == hook)
    };
    let fmt = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"));
    let connect = paired.iter().find(|r| r.services == services).map(PairedRow::p50_ratio);
    let node1 = |prefix: &str| veth.iter().find(|r| r.path.starts_with(prefix)).map(|r| r.node1_ns);
    let xdp_cpu = node1("XDP").zip(node1("iptables")).map(|(x, i)| x / i);
    // The tracked flow's target applies to a flow's packets back to back (its steady cost); the
    // interleaved figure (each of 10,000 flows once, its conntrack entry cold) has none. The
    // figure before was the same SYN again, single runs.
    let lines: [Line<'_>; 7] = [
        ("TC, packet to no frontend (ns)", "≈ 200", row("tc").map(|r| r.miss), 0, Some(100.0)),
        ("XDP, packet to no frontend (ns)", "≈ 210", row("xdp").map(|r| r.miss), 0, Some(80.0)),
        ("TC, new flow (ns)", "≈ 1,500 (single runs)", row("tc").and_then(|r| r.new_flow), 0, None),
        (
            "TC, tracked flow, back to back (ns)",
            "≈ 1,000 (the same SYN again, single runs)",
            row("tc").and_then(|r| r.tracked),
            0,
            Some(150.0),
        ),
        (
            "TC, tracked flow, 10,000 flows interleaved (ns)",
            "-",
            row("tc").and_then(|r| r.tracked_interleaved),
            0,
            None,
        ),
        ("TCP connect to a ClusterIP ÷ direct, p50, same client", "1.15", connect, 3, Some(1.05)),
        ("NodePort forwarding, node 1's CPU per packet, XDP ÷ iptables", "-", xdp_cpu, 2, Some(0.33)),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Datapath cost (issue 19), {services} services, random selection\n\n\
         Gathered from the sections above (this run) beside the figures before (the bench of that\n\
         time; its new and tracked flows were single runs minus an estimated timer overhead). A\n\
         tracked flow's packet is an established flow's data segment; its target applies to a\n\
         flow's packets back to back.\n\n\
         | measurement | before | now | target | met |\n|---|---|---|---|---|"
    );
    for (name, before, now, digits, limit) in lines {
        let met = match (now, limit) {
            (Some(v), Some(limit)) => {
                if v <= limit {
                    "yes"
                } else {
                    "no"
                }
            }
            _ => "-",
        };
        let target = limit.map_or_else(|| "-".to_owned(), |l| format!("≤ {l}"));
        let _ = writeln!(out, "| {name} | {before} | {} | {target} | {met} |", fmt(now, digits));
    }
    out
}
