//! Crafted Ethernet frames for the packet-level tests of the TC programs (the approach of Cilium's
//! `bpf/tests`): builders for Ethernet + IPv4/IPv6 + TCP/UDP with correct checksums, mutators for
//! malformed variants, checks that recompute every checksum from scratch (pure Rust, independent
//! of the agent's decoder), and `trace`, which runs `lb-agent trace` on a frame.
use std::{
    net::{IpAddr, SocketAddr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::Command,
};

use crate::guard::Netns;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The transport header of a packet.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { flags: u8, seq: u32, ack: u32 },
    Udp,
}

/// One TCP or UDP packet; `frame` lays it out with every checksum correct.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s:?} is not a socket address: {e}"))
}

impl Packet {
    /// A TCP segment `src` → `dst` (`"ip:port"` / `"[ip6]:port"`) with `flags` and no payload.
    pub fn tcp(src: &str, dst: &str, flags: u8) -> Self {
        Self {
            src: sock(src),
            dst: sock(dst),
            l4: L4::Tcp { flags, seq: 0x1000_0001, ack: 0 },
            payload: Vec::new(),
        }
    }

    /// A UDP datagram `src` → `dst` carrying `payload`.
    pub fn udp(src: &str, dst: &str, payload: &[u8]) -> Self {
        Self { src: sock(src), dst: sock(dst), l4: L4::Udp, payload: payload.to_vec() }
    }

    /// The same packet with another tuple (what a translation should make of it).
    pub fn with(&self, src: &str, dst: &str) -> Self {
        Self { src: sock(src), dst: sock(dst), ..self.clone() }
    }

    /// The same packet with a payload.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => TCP,
            L4::Udp => UDP,
        }
    }

    /// The TCP/UDP header and payload, checksum computed over `pseudo`'s sum.
    fn segment(&self) -> Vec<u8> {
        let mut seg = Vec::new();
        seg.extend_from_slice(&self.src.port().to_be_bytes());
        seg.extend_from_slice(&self.dst.port().to_be_bytes());
        match self.l4 {
            L4::Tcp { flags, seq, ack } => {
                seg.extend_from_slice(&seq.to_be_bytes());
                seg.extend_from_slice(&ack.to_be_bytes());
                seg.push(5 << 4); // data offset: 5 words, no options
                seg.push(flags);
                seg.extend_from_slice(&64240u16.to_be_bytes()); // window
                seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            }
            L4::Udp => {
                let len = u16::try_from(8 + self.payload.len()).expect("UDP length");
                seg.extend_from_slice(&len.to_be_bytes());
                seg.extend_from_slice(&[0, 0]); // checksum
            }
        }
        seg.extend_from_slice(&self.payload);
        seg
    }

    /// Ethernet + IP + TCP/UDP, with a correct IPv4 header checksum and TCP/UDP checksum.
    pub fn frame(&self) -> Vec<u8> {
        self.frame_with_ipv6_ext(None)
    }

    /// As `frame`, for IPv6 with one 8-byte extension header of type `ext` (0 hop-by-hop, 60
    /// destination options) between the IPv6 header and the TCP/UDP header. The upper-layer
    /// checksum is as without it (RFC 8200 8.1).
    pub fn frame_with_ipv6_ext(&self, ext: Option<u8>) -> Vec<u8> {
        let proto = self.proto();
        let mut seg = self.segment();
        let mut f = Vec::new();
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                assert!(ext.is_none(), "extension headers are IPv6");
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let total = u16::try_from(20 + seg.len()).expect("IPv4 length");
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
                ip.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
                ip.extend_from_slice(&[64, proto, 0, 0]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                let csum = !fold(sum(&ip, 0));
                ip[10..12].copy_from_slice(&csum.to_be_bytes());
                let pseudo = pseudo4(&src.octets(), &dst.octets(), proto, seg.len());
                set_l4_checksum_in(&mut seg, proto, pseudo);
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let ext_len = if ext.is_some() { 8 } else { 0 };
                let payload_len = u16::try_from(ext_len + seg.len()).expect("IPv6 length");
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&payload_len.to_be_bytes());
                ip.push(ext.unwrap_or(proto));
                ip.push(64);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                let pseudo = pseudo6(&src.octets(), &dst.octets(), proto, seg.len());
                set_l4_checksum_in(&mut seg, proto, pseudo);
                f.extend_from_slice(&ip);
                if ext.is_some() {
                    // Next header, length 0 (8 bytes), a 4-byte PadN option (RFC 8200 4.2).
                    f.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            _ => panic!("mixed address families: {} → {}", self.src, self.dst),
        }
        f.extend_from_slice(&seg);
        f
    }
}

fn set_l4_checksum_in(seg: &mut [u8], proto: u8, pseudo: u32) {
    let at = if proto == TCP { 16 } else { 6 };
    let mut csum = !fold(sum(seg, pseudo));
    if proto == UDP && csum == 0 {
        csum = 0xffff; // RFC 768: a computed 0 is sent as all ones
    }
    seg[at..at + 2].copy_from_slice(&csum.to_be_bytes());
}

/// One's-complement sum of 16-bit big-endian words (an odd last byte padded with zero), added to
/// `acc`, not yet folded.
pub fn sum(data: &[u8], acc: u32) -> u32 {
    data.chunks(2)
        .fold(acc, |acc, c| acc + u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
}

/// Folds a sum to 16 bits, carries added back.
pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo4(src: &[u8; 4], dst: &[u8; 4], proto: u8, len: usize) -> u32 {
    let len = u16::try_from(len).expect("L4 length");
    sum(&len.to_be_bytes(), sum(&[0, proto], sum(dst, sum(src, 0))))
}

fn pseudo6(src: &[u8; 16], dst: &[u8; 16], proto: u8, len: usize) -> u32 {
    let len = u32::try_from(len).expect("L4 length");
    sum(&[0, 0, 0, proto], sum(&len.to_be_bytes(), sum(dst, sum(src, 0))))
}

/// Where the headers of a well-formed frame (as `Packet::frame` makes them) are.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub family: u8,
    pub proto: u8,
    /// Offset of the IP header.
    pub ip: usize,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    /// Length of the TCP/UDP header and payload, from the IP header.
    pub l4_len: usize,
}

impl Layout {
    /// Offset of the TCP/UDP checksum.
    pub fn l4_checksum_at(&self) -> usize {
        self.l4 + if self.proto == TCP { 16 } else { 6 }
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// The layout of a plain (no IPv4 options, no IPv6 extension header) TCP or UDP frame; panics on
/// anything else, which a test frame never is.
pub fn layout(f: &[u8]) -> Layout {
    match be16(f, 12) {
        ETH_P_IP => {
            let ihl = usize::from(f[ETH_HLEN] & 0x0f) * 4;
            let total = usize::from(be16(f, ETH_HLEN + 2));
            Layout {
                family: 4,
                proto: f[ETH_HLEN + 9],
                ip: ETH_HLEN,
                l4: ETH_HLEN + ihl,
                l4_len: total - ihl,
            }
        }
        ETH_P_IPV6 => Layout {
            family: 6,
            proto: f[ETH_HLEN + 6],
            ip: ETH_HLEN,
            l4: ETH_HLEN + 40,
            l4_len: usize::from(be16(f, ETH_HLEN + 4)),
        },
        other => panic!("ethertype {other:#06x} is not IP"),
    }
}

/// The addresses and ports of a frame (`layout` rules).
pub fn tuple(f: &[u8]) -> (u8, SocketAddr, SocketAddr) {
    let l = layout(f);
    let (src, dst): (IpAddr, IpAddr) = if l.family == 4 {
        let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&f[at..at + 4]).expect("4 bytes"));
        (a(l.ip + 12), a(l.ip + 16))
    } else {
        let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&f[at..at + 16]).expect("16 bytes"));
        (a(l.ip + 8), a(l.ip + 24))
    };
    (l.proto, SocketAddr::new(src, be16(f, l.l4)), SocketAddr::new(dst, be16(f, l.l4 + 2)))
}

/// The IPv4 header checksum verifies.
pub fn ipv4_checksum_ok(f: &[u8]) -> bool {
    let l = layout(f);
    assert_eq!(l.family, 4, "IPv4 only");
    let ihl = usize::from(f[l.ip] & 0x0f) * 4;
    fold(sum(&f[l.ip..l.ip + ihl], 0)) == 0xffff
}

/// The TCP/UDP checksum field.
pub fn l4_checksum(f: &[u8]) -> u16 {
    be16(f, layout(f).l4_checksum_at())
}

/// The TCP/UDP checksum verifies over the pseudo-header (addresses as the frame has them now),
/// the header and the payload. A UDP/IPv4 checksum of 0 ("none") does not count as verifying.
pub fn l4_checksum_ok(f: &[u8]) -> bool {
    let l = layout(f);
    let seg = &f[l.l4..l.l4 + l.l4_len];
    let pseudo = if l.family == 4 {
        let a = |at: usize| <[u8; 4]>::try_from(&f[at..at + 4]).expect("4 bytes");
        pseudo4(&a(l.ip + 12), &a(l.ip + 16), l.proto, l.l4_len)
    } else {
        let a = |at: usize| <[u8; 16]>::try_from(&f[at..at + 16]).expect("16 bytes");
        pseudo6(&a(l.ip + 8), &a(l.ip + 24), l.proto, l.l4_len)
    };
    l4_checksum(f) != 0 && fold(sum(seg, pseudo)) == 0xffff
}

/// A copy with the IPv4 header checksum and the TCP/UDP checksum zeroed, to compare two frames
/// field by field when checksums are checked on their own (an incremental update may yield
/// 0xffff where a full computation yields 0, both correct).
pub fn without_checksums(f: &[u8]) -> Vec<u8> {
    let l = layout(f);
    let mut out = f.to_vec();
    if l.family == 4 {
        out[l.ip + 10..l.ip + 12].fill(0);
    }
    let at = l.l4_checksum_at();
    out[at..at + 2].fill(0);
    out
}

/// Sets the TCP/UDP checksum field (0 on UDP/IPv4: "no checksum").
pub fn set_l4_checksum(f: &mut [u8], value: u16) {
    let at = layout(f).l4_checksum_at();
    f[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Turns an IPv4 frame into a fragment: `more` fragments flag and `offset` in 8-byte units
/// (the IPv4 header checksum is recomputed, so only the fragment fields differ).
pub fn ipv4_fragment(f: &[u8], more: bool, offset: u16) -> Vec<u8> {
    let l = layout(f);
    assert_eq!(l.family, 4);
    let mut out = f.to_vec();
    let field = (if more { 0x2000 } else { 0 }) | (offset & 0x1fff);
    out[l.ip + 6..l.ip + 8].copy_from_slice(&field.to_be_bytes());
    out[l.ip + 10..l.ip + 12].fill(0);
    let ihl = usize::from(out[l.ip] & 0x0f) * 4;
    let csum = !fold(sum(&out[l.ip..l.ip + ihl], 0));
    out[l.ip + 10..l.ip + 12].copy_from_slice(&csum.to_be_bytes());
    out
}

/// The same IPv4 frame with 4 bytes of IP options (NOP, NOP, NOP, end of list) after the fixed
/// header: IHL 6, total length and header checksum updated.
pub fn with_ipv4_options(f: &[u8]) -> Vec<u8> {
    let l = layout(f);
    assert_eq!(l.family, 4);
    let mut out = f[..l.ip + 20].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&f[l.ip + 20..]);
    out[l.ip] = 0x46;
    let total = be16(&out, l.ip + 2) + 4;
    out[l.ip + 2..l.ip + 4].copy_from_slice(&total.to_be_bytes());
    out[l.ip + 10..l.ip + 12].fill(0);
    let csum = !fold(sum(&out[l.ip..l.ip + 24], 0));
    out[l.ip + 10..l.ip + 12].copy_from_slice(&csum.to_be_bytes());
    out
}

/// An 802.1Q VLAN tag (VLAN 100) inserted after the MAC addresses.
pub fn vlan_tagged(f: &[u8]) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00, 0x00, 100]);
    out.extend_from_slice(&f[12..]);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex byte")).collect()
}

/// What `lb-agent trace` reported.
#[derive(Debug)]
pub struct Traced {
    /// The program's return value: -1 handed on (TC_ACT_UNSPEC: translated or not ours), 2 TC_ACT_SHOT,
    /// 7 TC_ACT_REDIRECT.
    pub verdict: i64,
    pub output: Vec<u8>,
    /// The whole JSON report.
    pub json: serde_json::Value,
}

/// Runs `lb-agent trace --bpffs DIR --direction DIRECTION --packet HEX --output json`.
pub fn trace(bpffs: &Path, direction: &str, frame: &[u8]) -> anyhow::Result<Traced> {
    trace_on(bpffs, direction, frame, None)
}

/// As `trace`, with `--interface IFACE` inside `netns` when given: the child enters the namespace
/// with `setns` before exec (not `ip netns exec`, which would remount /sys and hide bpffs).
pub fn trace_on(
    bpffs: &Path,
    direction: &str,
    frame: &[u8],
    on: Option<(&Netns, &str)>,
) -> anyhow::Result<Traced> {
    let mut cmd = Command::new(crate::agent_bin());
    cmd.args(["trace", "--output", "json", "--direction", direction, "--packet", &hex(frame), "--bpffs"])
        .arg(bpffs)
        .env("RUST_BACKTRACE", "0");
    if let Some((netns, interface)) = on {
        cmd.args(["--interface", interface]);
        let ns = netns.open()?;
        // Safety: between fork and exec the closure only calls setns(2) (async-signal-safe) on an
        // fd opened before the fork, which the closure keeps alive.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "trace failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let verdict = json["return_code"].as_i64().ok_or_else(|| anyhow::anyhow!("no return_code: {json}"))?;
    let output = unhex(json["output_hex"].as_str().ok_or_else(|| anyhow::anyhow!("no output_hex: {json}"))?);
    Ok(Traced { verdict, output, json })
}

/// Runs every frame of `frames` once through one program, loaded once (`lb-agent trace --batch`,
/// frames on stdin); one `Traced` per frame, in order.
pub fn trace_batch(bpffs: &Path, direction: &str, frames: &[Vec<u8>]) -> anyhow::Result<Vec<Traced>> {
    trace_batch_with(&crate::agent_bin(), bpffs, direction, frames)
}

/// `trace_batch` with the programs of the agent binary `agent` (e.g. an older build, to compare).
pub fn trace_batch_with(
    agent: &Path,
    bpffs: &Path,
    direction: &str,
    frames: &[Vec<u8>],
) -> anyhow::Result<Vec<Traced>> {
    use std::io::Write as _;
    let mut child = Command::new(agent)
        .args(["trace", "--batch", "--output", "json", "--direction", direction, "--packet", "-", "--bpffs"])
        .arg(bpffs)
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input: String = frames.iter().map(|f| hex(f) + "\n").collect();
    // Written from a thread: the child's stdout fills while we still write.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    writer.join().expect("writer thread")?;
    anyhow::ensure!(out.status.success(), "trace --batch failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut traced = Vec::with_capacity(frames.len());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let json: serde_json::Value = serde_json::from_str(line)?;
        let verdict =
            json["return_code"].as_i64().ok_or_else(|| anyhow::anyhow!("no return_code: {json}"))?;
        let output =
            unhex(json["output_hex"].as_str().ok_or_else(|| anyhow::anyhow!("no output_hex: {json}"))?);
        traced.push(Traced { verdict, output, json });
    }
    anyhow::ensure!(traced.len() == frames.len(), "{} reports for {} frames", traced.len(), frames.len());
    Ok(traced)
}

/// An ICMP error frame (`kind`/`code`: ICMPv4 for IPv4 addresses, ICMPv6 for IPv6) from `from` to
/// `to`, quoting `quoted`'s IP header and the first 8 bytes of its TCP/UDP header, with correct
/// IPv4 header and ICMP checksums. The 4 bytes after the checksum carry `mtu` (a fragmentation-
/// needed / packet-too-big error's next-hop MTU).
pub fn icmp_error(from: IpAddr, to: IpAddr, kind: u8, code: u8, mtu: u32, quoted: &[u8]) -> Vec<u8> {
    let l = layout(quoted);
    let quote = &quoted[ETH_HLEN..(l.l4 + 8).min(quoted.len())];
    let mut msg = vec![kind, code, 0, 0];
    msg.extend_from_slice(&mtu.to_be_bytes());
    msg.extend_from_slice(quote);
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    match (from, to) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let csum = !fold(sum(&msg, 0));
            msg[2..4].copy_from_slice(&csum.to_be_bytes());
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let total = u16::try_from(20 + msg.len()).expect("IPv4 length");
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            let csum = !fold(sum(&ip, 0));
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let csum = !fold(sum(&msg, pseudo6(&src.octets(), &dst.octets(), 58, msg.len())));
            msg[2..4].copy_from_slice(&csum.to_be_bytes());
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&u16::try_from(msg.len()).expect("IPv6 length").to_be_bytes());
            ip.extend_from_slice(&[58, 64]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            f.extend_from_slice(&ip);
        }
        _ => panic!("mixed address families: {from} → {to}"),
    }
    f.extend_from_slice(&msg);
    f
}

/// What an ICMP error frame says: outer source and destination, the quoted packet's tuple, and
/// whether its checksums verify (outer IPv4 header, ICMP message with ICMPv6's pseudo-header,
/// quoted IPv4 header).
#[derive(Debug, PartialEq, Eq)]
pub struct IcmpSeen {
    pub from: IpAddr,
    pub to: IpAddr,
    pub quoted_src: SocketAddr,
    pub quoted_dst: SocketAddr,
    pub checksums_ok: bool,
}

pub fn icmp_seen(f: &[u8]) -> IcmpSeen {
    let v4 = u16::from_be_bytes([f[12], f[13]]) == ETH_P_IP;
    let (from, to, icmp) = if v4 {
        let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&f[at..at + 4]).expect("4 bytes"));
        (a(ETH_HLEN + 12), a(ETH_HLEN + 16), ETH_HLEN + 20)
    } else {
        let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&f[at..at + 16]).expect("16 bytes"));
        (a(ETH_HLEN + 8), a(ETH_HLEN + 24), ETH_HLEN + 40)
    };
    let msg = &f[icmp..];
    let quoted = &msg[8..];
    let (quoted_src, quoted_dst, quoted_ok) = if v4 {
        let ihl = usize::from(quoted[0] & 0x0f) * 4;
        let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&quoted[at..at + 4]).expect("4 bytes"));
        let p = |at: usize| u16::from_be_bytes([quoted[ihl + at], quoted[ihl + at + 1]]);
        let ok = fold(sum(&quoted[..ihl], 0)) == 0xffff;
        (SocketAddr::new(a(12), p(0)), SocketAddr::new(a(16), p(2)), ok)
    } else {
        let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&quoted[at..at + 16]).expect("16 bytes"));
        let p = |at: usize| u16::from_be_bytes([quoted[40 + at], quoted[40 + at + 1]]);
        (SocketAddr::new(a(8), p(0)), SocketAddr::new(a(24), p(2)), true)
    };
    let icmp_ok = match (from, to) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            fold(sum(msg, pseudo6(&s.octets(), &d.octets(), 58, msg.len()))) == 0xffff
        }
        _ => fold(sum(msg, 0)) == 0xffff,
    };
    let outer_ok = !v4 || fold(sum(&f[ETH_HLEN..ETH_HLEN + 20], 0)) == 0xffff;
    IcmpSeen { from, to, quoted_src, quoted_dst, checksums_ok: icmp_ok && quoted_ok && outer_ok }
}
