//! `lb-agent trace`: what the TC or XDP datapath does with one packet. The program is loaded from the
//! embedded object against the maps an agent pinned, run once on the given Ethernet frame with
//! `BPF_PROG_TEST_RUN`, and its verdict and output frame are decoded (addresses, ports, checksums).
//!
//! Nothing is attached and the packet goes nowhere (a redirect verdict is only reported), but the
//! run is real for the maps: a new flow to a frontend creates conntrack entries, a packet of a
//! tracked flow refreshes them, and the datapath counters move.
use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context as _, ensure};
use aya::{
    maps::DevMapHash,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::new_table;
use crate::{
    cli::Output,
    kernel::{loader, maps::PinnedMaps},
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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Direction {
    Ingress,
    Egress,
    Xdp,
}

impl Direction {
    fn program(self) -> &'static str {
        match self {
            Self::Ingress => loader::TC_INGRESS,
            Self::Egress => loader::TC_EGRESS,
            Self::Xdp => loader::XDP,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
            Self::Xdp => "xdp",
        }
    }
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

/// Collects the kernel log records of a run (aya-log) as lines.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// What `decode` makes of a frame. Fields that do not apply (or could not be read) are `None`.
#[derive(Serialize, Default)]
struct Decoded {
    length: usize,
    src_mac: Option<String>,
    dst_mac: Option<String>,
    ethertype: Option<String>,
    /// `IPv4` or `IPv6`.
    network: Option<&'static str>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    /// `TCP`, `UDP`, or the IP protocol / IPv6 next header number.
    protocol: Option<String>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    tcp_flags: Option<String>,
    /// IPv4 header checksum verifies.
    ip_checksum_valid: Option<bool>,
    /// The TCP/UDP checksum field.
    l4_checksum: Option<String>,
    /// The TCP/UDP checksum verifies (pseudo-header included); `None` when it cannot be checked
    /// (segment cut short, fragment) or is absent (UDP over IPv4 with checksum 0).
    l4_checksum_valid: Option<bool>,
    /// Anything unusual: truncation, fragments, extension headers, absent checksum.
    notes: Vec<String>,
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

    let index = args.interface.as_deref().map(loader::interface_index).transpose()?;
    let mut ebpf = loader::load_pinned(&args.bpffs)?;
    let stats = PinnedMaps::open(&args.bpffs).context("opening the pinned maps")?;
    let captured = Captured::default();
    let mut kernel_log = aya_log::EbpfLogger::init_with_logger(&mut ebpf, captured.clone())
        .context("reading the kernel log")?;
    let name = args.direction.program();
    if matches!(args.direction, Direction::Xdp) {
        let mut ports: DevMapHash<_> = ebpf
            .map_mut("LB_XDP_PORTS")
            .context("map LB_XDP_PORTS is missing from the eBPF object")?
            .try_into()
            .context("map LB_XDP_PORTS is not a DEVMAP_HASH")?;
        for port in loader::xdp_interfaces(&args.bpffs)?.into_iter().chain(index) {
            ports.insert(port, port, None, 0).context("filling LB_XDP_PORTS")?;
        }
    }
    let program =
        ebpf.program_mut(name).with_context(|| format!("program {name} is missing from the eBPF object"))?;
    let program = match args.direction {
        Direction::Xdp => {
            let program: &mut Xdp =
                program.try_into().with_context(|| format!("{name} is not an XDP program"))?;
            program.load().with_context(|| format!("verifier rejected {name}"))?;
            Loaded::Xdp(program)
        }
        _ => {
            let program: &mut SchedClassifier =
                program.try_into().with_context(|| format!("{name} is not a TC classifier"))?;
            program.load().with_context(|| format!("verifier rejected {name}"))?;
            Loaded::Tc(program)
        }
    };
    for frame in &frames {
        let mut report = run_one(&program, &args, index, &stats, frame)?;
        kernel_log.flush();
        report.kernel_log = captured.0.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
        match (args.output, args.batch) {
            (Output::Json, false) => println!("{}", serde_json::to_string_pretty(&report)?),
            // One compact object per line: thousands of frames stay easy to stream and parse.
            (Output::Json, true) => println!("{}", serde_json::to_string(&report)?),
            (Output::Table, _) => print_table(&report),
        }
    }
    Ok(())
}

/// The loaded program a frame runs through.
enum Loaded<'a> {
    Tc(&'a mut SchedClassifier),
    Xdp(&'a mut Xdp),
}

/// Runs `frame` once through the program and reports what it did.
fn run_one(
    program: &Loaded<'_>,
    args: &TraceArgs,
    index: Option<u32>,
    stats: &PinnedMaps,
    frame: &[u8],
) -> anyhow::Result<Report> {
    let name = args.direction.program();
    let ctx_in = match (args.direction, index) {
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (`__u32` each); the kernel wants data_end to be the frame's length.
        (Direction::Xdp, Some(index)) => {
            let mut ctx = vec![0u8; 24];
            ctx[4..8].copy_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_ne_bytes());
            ctx[12..16].copy_from_slice(&index.to_ne_bytes());
            Some(ctx)
        }
        // `struct __sk_buff` up to `ifindex` (offset 40), the only field set: BPF_PROG_TEST_RUN
        // accepts a shorter context and takes the rest as zero.
        (_, Some(index)) => {
            let mut ctx = vec![0u8; SKB_IFINDEX_OFFSET + 4];
            ctx[SKB_IFINDEX_OFFSET..].copy_from_slice(&index.to_ne_bytes());
            Some(ctx)
        }
        (_, None) => None,
    };
    // The programs never grow a packet; the slack only turns a surprise into a clear ENOSPC.
    let mut out = vec![0u8; frame.len() + 256];
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx_in.as_deref(),
        repeat: args.repeat,
        ..TestRunOptions::new()
    };
    let before = stats.stats().context("reading the counters")?;
    let result = match program {
        Loaded::Xdp(program) => program.test_run(options),
        Loaded::Tc(program) => program.test_run(options),
    }
    .with_context(|| {
        let short_ip = match be16(frame, 12) {
            Some(ETH_P_IP) => frame.len() < ETH_HLEN + 20,
            Some(ETH_P_IPV6) => frame.len() < ETH_HLEN + 40,
            _ => false,
        };
        if short_ip {
            format!(
                "BPF_PROG_TEST_RUN of {name} (recent kernels refuse an IP frame shorter than its \
                     IP header before the program runs)"
            )
        } else {
            format!("BPF_PROG_TEST_RUN of {name}")
        }
    })?;
    out.truncate(usize::try_from(result.data_size_out).unwrap_or(usize::MAX).min(out.len()));
    // The kernel reports the program's `int` return value as a `u32`.
    let return_code = result.return_value as i32;

    let after = stats.stats().context("reading the counters")?;
    let counters = after
        .iter()
        .zip(&before)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| (*name, a.wrapping_sub(*b)))
        .collect();
    Ok(Report {
        program: name,
        direction: args.direction.name(),
        return_code,
        verdict: verdict_name(args.direction, return_code),
        meaning: verdict_meaning(args.direction, return_code),
        rewritten: out != frame,
        input: decode(frame),
        output: decode(&out),
        output_hex: hex(&out),
        counters,
        duration_ns: u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
        kernel_log: Vec::new(),
    })
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

fn verdict_name(direction: Direction, code: i32) -> &'static str {
    if matches!(direction, Direction::Xdp) {
        return match code {
            0 => "XDP_ABORTED",
            1 => "XDP_DROP",
            2 => "XDP_PASS",
            3 => "XDP_TX",
            4 => "XDP_REDIRECT",
            _ => "unknown",
        };
    }
    match code {
        -1 => "TC_ACT_UNSPEC",
        0 => "TC_ACT_OK",
        1 => "TC_ACT_RECLASSIFY",
        2 => "TC_ACT_SHOT",
        3 => "TC_ACT_PIPE",
        4 => "TC_ACT_STOLEN",
        5 => "TC_ACT_QUEUED",
        6 => "TC_ACT_REPEAT",
        7 => "TC_ACT_REDIRECT",
        8 => "TC_ACT_TRAP",
        _ => "unknown",
    }
}

fn verdict_meaning(direction: Direction, code: i32) -> &'static str {
    if matches!(direction, Direction::Xdp) {
        return match code {
            1 => "dropped",
            2 => "passed to the stack (and TC) as the output frame shows; XDP left it to TC when it is ours",
            3 => "sent back out of the interface it came in on (trace does not send it)",
            4 => "redirected to the interface a FIB lookup chose (trace does not send it)",
            _ => "not a verdict lb_xdp returns",
        };
    }
    match code {
        -1 => "not ours: the next program or the default action decides (the packet passes as it came)",
        0 => "passed on to the stack (as the output frame shows)",
        2 => "dropped",
        7 => "redirected to the interface a FIB lookup chose (trace does not send it)",
        _ => "not a verdict lb_tc_* returns",
    }
}

/// Offset of `ifindex` in `struct __sk_buff` (after len, pkt_type, mark, queue_mapping, protocol,
/// vlan_present, vlan_tci, vlan_proto, priority, ingress_ifindex: ten `__u32`), UAPI-stable.
const SKB_IFINDEX_OFFSET: usize = 40;

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// One's-complement sum of `data` (odd length: a zero byte is appended) added to `sum`.
fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum = sum.wrapping_add(u32::from(word));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Whether the one's-complement sum, checksum field included, is all ones.
fn verifies(sum: u32) -> bool {
    let mut s = sum;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// Decodes Ethernet, IPv4/IPv6 and TCP/UDP as far as the frame allows.
fn decode(f: &[u8]) -> Decoded {
    let mut d = Decoded { length: f.len(), ..Decoded::default() };
    if f.len() < ETH_HLEN {
        d.notes.push("shorter than an Ethernet header".to_owned());
        return d;
    }
    d.dst_mac = Some(mac(&f[0..6]));
    d.src_mac = Some(mac(&f[6..12]));
    let ethertype = be16(f, 12).unwrap_or(0);
    d.ethertype = Some(format!("0x{ethertype:04x}"));
    let ip = &f[ETH_HLEN..];
    // (protocol, L4 bytes as far as the IP length says and the frame has, L4 length, pseudo sum)
    let (proto, l4, l4_len, pseudo) = match ethertype {
        ETH_P_IP => {
            d.network = Some("IPv4");
            if ip.len() < 20 {
                d.notes.push("IPv4 header cut short".to_owned());
                return d;
            }
            if ip[0] >> 4 != 4 {
                d.notes.push(format!("IP version {} in an IPv4 frame", ip[0] >> 4));
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            d.src = Some(src.into());
            d.dst = Some(dst.into());
            let proto = ip[9];
            d.protocol = Some(proto_name(proto));
            if ihl < 20 || ip.len() < ihl {
                d.notes.push(format!("IPv4 header length {ihl} does not fit"));
                return d;
            }
            d.ip_checksum_valid = Some(verifies(ones_sum(&ip[..ihl], 0)));
            let total = usize::from(be16(ip, 2).unwrap_or(0));
            let frag = be16(ip, 6).unwrap_or(0);
            if frag & 0x3fff != 0 {
                d.notes.push(format!(
                    "IPv4 fragment (offset {}, more fragments: {})",
                    (frag & 0x1fff) * 8,
                    frag & 0x2000 != 0
                ));
                if frag & 0x1fff != 0 {
                    return d;
                }
            }
            if total < ihl {
                d.notes.push(format!("IPv4 total length {total} is shorter than its header"));
                return d;
            }
            let l4_len = total - ihl;
            let l4 = &ip[ihl..ip.len().min(total)];
            let mut pseudo = ones_sum(&ip[12..20], 0);
            pseudo = ones_sum(&[0, proto], pseudo);
            pseudo = ones_sum(&u16::try_from(l4_len).unwrap_or(0).to_be_bytes(), pseudo);
            (proto, l4, l4_len, pseudo)
        }
        ETH_P_IPV6 => {
            d.network = Some("IPv6");
            if ip.len() < 40 {
                d.notes.push("IPv6 header cut short".to_owned());
                return d;
            }
            if ip[0] >> 4 != 6 {
                d.notes.push(format!("IP version {} in an IPv6 frame", ip[0] >> 4));
            }
            let addr = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&ip[at..at + 16]);
                Ipv6Addr::from(o)
            };
            d.src = Some(addr(8).into());
            d.dst = Some(addr(24).into());
            let proto = ip[6];
            d.protocol = Some(proto_name(proto));
            if proto != TCP && proto != UDP {
                if matches!(proto, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140) {
                    d.notes.push(format!("IPv6 extension header {proto} (not followed)"));
                }
                return d;
            }
            let l4_len = usize::from(be16(ip, 4).unwrap_or(0));
            let l4 = &ip[40..ip.len().min(40 + l4_len)];
            let mut pseudo = ones_sum(&ip[8..40], 0);
            pseudo = ones_sum(&u32::try_from(l4_len).unwrap_or(0).to_be_bytes(), pseudo);
            pseudo = ones_sum(&[0, 0, 0, proto], pseudo);
            (proto, l4, l4_len, pseudo)
        }
        _ => {
            d.notes.push("not IPv4 or IPv6".to_owned());
            return d;
        }
    };
    if proto != TCP && proto != UDP {
        return d;
    }
    let csum_at = if proto == TCP { 16 } else { 6 };
    d.src_port = be16(l4, 0);
    d.dst_port = be16(l4, 2);
    if proto == TCP
        && let Some(flags) = l4.get(13)
    {
        d.tcp_flags = Some(tcp_flags(*flags));
    }
    let Some(csum) = be16(l4, csum_at) else {
        d.notes.push(format!("{} header cut short", proto_name(proto)));
        return d;
    };
    d.l4_checksum = Some(format!("0x{csum:04x}"));
    if d.notes.iter().any(|n| n.starts_with("IPv4 fragment")) {
        return d;
    }
    if l4.len() < l4_len {
        d.notes.push(format!("segment cut short: {} of {l4_len} bytes", l4.len()));
        return d;
    }
    if proto == UDP && csum == 0 {
        d.notes.push(if d.network == Some("IPv4") {
            "UDP checksum 0: none".to_owned()
        } else {
            "UDP checksum 0 (invalid over IPv6)".to_owned()
        });
        if d.network == Some("IPv4") {
            return d;
        }
    }
    d.l4_checksum_valid = Some(verifies(ones_sum(l4, pseudo)));
    d
}

fn proto_name(p: u8) -> String {
    match p {
        TCP => "TCP".to_owned(),
        UDP => "UDP".to_owned(),
        1 => "ICMP".to_owned(),
        58 => "ICMPv6".to_owned(),
        other => format!("proto {other}"),
    }
}

fn tcp_flags(f: u8) -> String {
    let names = [(0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"), (0x20, "URG")];
    let set: Vec<&str> = names.iter().filter(|(bit, _)| f & bit != 0).map(|(_, n)| *n).collect();
    if set.is_empty() { "none".to_owned() } else { set.join(",") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP SYN 10.0.0.1:40000 → 10.0.0.2:80 with correct checksums (as tcpdump -xx shows it).
    const SYN: &str = "02000000000202000000000108004500002800010000400666cd0a0000010a0000029c400050000000010000000050022000df4e0000";

    #[test]
    fn decodes_a_valid_syn() {
        let frame = parse_hex(SYN).expect("hex");
        let d = decode(&frame);
        assert_eq!(d.src, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(d.dst_port, Some(80));
        assert_eq!(d.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!(d.ip_checksum_valid, Some(true), "{:?}", d.notes);
        assert_eq!(d.l4_checksum_valid, Some(true), "{:?}", d.notes);
    }

    #[test]
    fn a_changed_address_breaks_both_checksums() {
        let mut frame = parse_hex(SYN).expect("hex");
        frame[ETH_HLEN + 19] = 3; // destination 10.0.0.3
        let d = decode(&frame);
        assert_eq!(d.ip_checksum_valid, Some(false));
        assert_eq!(d.l4_checksum_valid, Some(false), "the pseudo-header covers the addresses");
    }

    #[test]
    fn hex_input_forms() {
        assert_eq!(parse_hex("0x0a:0B 0c\n").expect("hex"), [10, 11, 12]);
        let tcpdump = "\t0x0000:  0200 0000 0002\n\t0x0006:  0a0b\n";
        assert_eq!(parse_hex(tcpdump).expect("hex"), [2, 0, 0, 0, 0, 2, 10, 11]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }
}
