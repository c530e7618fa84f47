//! `lb-agent trace`: what the TC or XDP datapath does with one packet. The program is loaded from the
//! embedded object against the maps an agent pinned, run once on the given Ethernet frame with
//! `BPF_PROG_TEST_RUN`, and its verdict and output frame are decoded (addresses, ports, checksums).
//! The run is `kernel::test_run`, the decoding `readback::frame`; this module parses and prints.
//!
//! Nothing is attached and the packet goes nowhere (a redirect verdict is only reported), but the
//! run is real for the maps: a new flow to a frontend creates conntrack entries, a packet of a
//! tracked flow refreshes them, and the datapath counters move.
use std::{collections::BTreeMap, io::Read as _, net::IpAddr, path::PathBuf};

use anyhow::{Context as _, ensure};
use clap::Args;
use serde::Serialize;

use super::new_table;
pub use crate::kernel::test_run::Direction;
use crate::{
    cli::Output,
    kernel::test_run::TestRunner,
    readback::frame::{Decoded, ETH_HLEN, decode, hex, verdict_meaning, verdict_name},
};

#[derive(Args)]
pub struct TraceArgs {
    /// Directory the agent pinned its maps under. The pins must exist: trace never creates maps.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,
    /// Which program runs: `ingress` (lb_tc_ingress: packets arriving on an interface), `egress`
    /// (lb_tc_egress: packets leaving it, e.g. a local backend's reply) or `xdp` (lb_xdp, the fast
    /// path in front of lb_tc_ingress with `--xdp`; with `--interface`, that interface must have
    /// native XDP attached, as the kernel's test run asks). XDP may send packets out of the
    /// interfaces the agent attached it to (read from its pinned links) and `--interface`.
    #[arg(long, value_enum)]
    direction: Direction,
    /// The Ethernet frame, in hex (whitespace, ':', 0x and `tcpdump -xx` line offsets are
    /// ignored); `-` reads it from stdin.
    #[arg(long)]
    packet: String,
    /// `--packet` holds many frames, one per line (`-`: stdin): each runs in turn through the
    /// program loaded once, and each report is one line (`--output json`: JSON lines).
    #[arg(long)]
    batch: bool,
    /// Run the program this many times on the frame (BPF_PROG_TEST_RUN's `repeat`) and report
    /// the kernel's mean time per run. The runs share one buffer: a frame the program rewrites
    /// is the rewritten one from the second run on, so time a rewrite with `--batch` instead.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// The interface the packet is on (in this network namespace): the program sees it as the
    /// packet's device, so its FIB lookups (SNAT towards another node's backend, the redirect of
    /// a reply) route as they would for that interface. Without it the device is `lo`, where
    /// forwarding is usually off, and a new flow to a remote backend is dropped (tc_nat_failed).
    #[arg(long)]
    interface: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
struct Report {
    program: &'static str,
    direction: &'static str,
    /// The program's return value (`TC_ACT_*`, -1 being TC_ACT_UNSPEC, "not ours"; `XDP_*` for
    /// `xdp`).
    return_code: i32,
    verdict: &'static str,
    meaning: &'static str,
    /// Whether the output frame differs from the input.
    rewritten: bool,
    input: Decoded,
    output: Decoded,
    output_hex: String,
    /// Datapath counters that moved during the run (`inspect stats` names), e.g. `tc_nat_failed`
    /// for a drop. On a node with traffic, other packets count too.
    counters: BTreeMap<&'static str, u64>,
    /// The kernel's mean time per run, in nanoseconds (over `--repeat` runs).
    duration_ns: u64,
    /// What the program logged during the run (`lb-agent log on --frontend …`; empty when
    /// kernel logging is off for the frontend).
    kernel_log: Vec<String>,
}

pub fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let text = if args.packet == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the packet from stdin")?;
        s
    } else {
        args.packet.clone()
    };
    // One frame, or with --batch one per line (blank lines skipped).
    let frames: Vec<Vec<u8>> = if args.batch {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| parse_hex(l).with_context(|| format!("frame {}", i + 1)))
            .collect::<anyhow::Result<_>>()?
    } else {
        vec![parse_hex(&text)?]
    };
    for frame in &frames {
        ensure!(frame.len() >= ETH_HLEN, "a frame needs at least its {ETH_HLEN}-byte Ethernet header");
    }

    let mut runner = TestRunner::load(&args.bpffs, args.direction, args.interface.as_deref())?;
    for frame in &frames {
        let run = runner.run(frame, args.repeat)?;
        let report = Report {
            program: args.direction.program(),
            direction: args.direction.name(),
            return_code: run.return_code,
            verdict: verdict_name(args.direction, run.return_code),
            meaning: verdict_meaning(args.direction, run.return_code),
            rewritten: run.output != *frame,
            input: decode(frame),
            output: decode(&run.output),
            output_hex: hex(&run.output),
            counters: run.counters,
            duration_ns: run.duration_ns,
            kernel_log: run.kernel_log,
        };
        match (args.output, args.batch) {
            (Output::Json, false) => println!("{}", serde_json::to_string_pretty(&report)?),
            // One compact object per line: thousands of frames stay easy to stream and parse.
            (Output::Json, true) => println!("{}", serde_json::to_string(&report)?),
            (Output::Table, _) => print_table(&report),
        }
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!("{} ({}): {} ({}): {}", r.program, r.direction, r.verdict, r.return_code, r.meaning);
    for line in &r.kernel_log {
        println!("kernel log: {line}");
    }
    let mut table = new_table(&["", "INPUT", "OUTPUT"]);
    let endpoint = |ip: Option<IpAddr>, port: Option<u16>| match (ip, port) {
        (Some(IpAddr::V6(ip)), Some(port)) => format!("[{ip}]:{port}"),
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        (Some(ip), None) => ip.to_string(),
        (None, _) => "-".to_owned(),
    };
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
    let valid = |v: Option<bool>| match v {
        Some(true) => "valid".to_owned(),
        Some(false) => "INVALID".to_owned(),
        None => "-".to_owned(),
    };
    let (i, o) = (&r.input, &r.output);
    let mut row = |name: &str, a: String, b: String| {
        table.add_row([name.to_owned(), a, b]);
    };
    row("length", i.length.to_string(), o.length.to_string());
    row(
        "ethernet",
        format!("{} > {} {}", opt(&i.src_mac), opt(&i.dst_mac), opt(&i.ethertype)),
        format!("{} > {} {}", opt(&o.src_mac), opt(&o.dst_mac), opt(&o.ethertype)),
    );
    row("network", i.network.unwrap_or("-").to_owned(), o.network.unwrap_or("-").to_owned());
    row("source", endpoint(i.src, i.src_port), endpoint(o.src, o.src_port));
    row("destination", endpoint(i.dst, i.dst_port), endpoint(o.dst, o.dst_port));
    row("protocol", opt(&i.protocol), opt(&o.protocol));
    row("TCP flags", opt(&i.tcp_flags), opt(&o.tcp_flags));
    row("IPv4 checksum", valid(i.ip_checksum_valid), valid(o.ip_checksum_valid));
    row(
        "L4 checksum",
        format!("{} {}", opt(&i.l4_checksum), valid(i.l4_checksum_valid)),
        format!("{} {}", opt(&o.l4_checksum), valid(o.l4_checksum_valid)),
    );
    if !i.notes.is_empty() || !o.notes.is_empty() {
        row("notes", i.notes.join("\n"), o.notes.join("\n"));
    }
    println!("{table}");
    println!("output frame ({}):", if r.rewritten { "rewritten" } else { "unchanged" });
    println!("{}", r.output_hex);
    if !r.counters.is_empty() {
        let moved: Vec<String> = r.counters.iter().map(|(name, n)| format!("{name} +{n}")).collect();
        println!("counters: {}", moved.join(", "));
    }
}

/// Parses hex digits, ignoring whitespace, ':', a leading `0x` and `tcpdump -xx` line offsets
/// (`0x0010:` at the start of a line).
fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut digits: Vec<u8> = Vec::new();
    for line in text.lines() {
        let mut tokens = line.split_whitespace().peekable();
        if tokens.peek().is_some_and(|t| t.len() > 1 && t.ends_with(':')) {
            tokens.next();
        }
        for token in tokens {
            let token = token.strip_prefix("0x").or_else(|| token.strip_prefix("0X")).unwrap_or(token);
            digits.extend(token.bytes().filter(|b| *b != b':'));
        }
    }
    ensure!(digits.len().is_multiple_of(2), "the packet has an odd number of hex digits ({})", digits.len());
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok().context("the packet is not hex")?;
            u8::from_str_radix(s, 16).with_context(|| format!("{s:?} is not a hex byte"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_input_forms() {
        assert_eq!(parse_hex("0x0a:0B 0c\n").expect("hex"), [10, 11, 12]);
        let tcpdump = "\t0x0000:  0200 0000 0002\n\t0x0006:  0a0b\n";
        assert_eq!(parse_hex(tcpdump).expect("hex"), [2, 0, 0, 0, 0, 2, 10, 11]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }
}
