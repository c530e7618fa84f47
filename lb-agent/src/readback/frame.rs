//! Ethernet frames as `lb-agent trace` shows them: decoded (addresses, ports, TCP flags) with
//! their IPv4 and TCP/UDP checksums verified, and the verdict a program returned for one, named.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::kernel::test_run::Direction;

/// What `decode` makes of a frame. Fields that do not apply (or could not be read) are `None`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Decoded {
    pub length: usize,
    pub src_mac: Option<String>,
    pub dst_mac: Option<String>,
    pub ethertype: Option<String>,
    /// `IPv4` or `IPv6`.
    pub network: Option<&'static str>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// `TCP`, `UDP`, or the IP protocol / IPv6 next header number.
    pub protocol: Option<String>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub tcp_flags: Option<String>,
    /// IPv4 header checksum verifies.
    pub ip_checksum_valid: Option<bool>,
    /// The TCP/UDP checksum field.
    pub l4_checksum: Option<String>,
    /// The TCP/UDP checksum verifies (pseudo-header included); `None` when it cannot be checked
    /// (segment cut short, fragment) or is absent (UDP over IPv4 with checksum 0).
    pub l4_checksum_valid: Option<bool>,
    /// Anything unusual: truncation, fragments, extension headers, absent checksum.
    pub notes: Vec<String>,
}

/// The name of a program's return value (`TC_ACT_*`, `XDP_*`).
pub fn verdict_name(direction: Direction, code: i32) -> &'static str {
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

/// What a program's return value does with the packet, in words.
pub fn verdict_meaning(direction: Direction, code: i32) -> &'static str {
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
        -1 => {
            "on to the next program, then the stack: translated when the output frame differs, \
             otherwise not ours and untouched"
        }
        0 => "passed on to the stack, past any later program",
        2 => "dropped",
        7 => "redirected to the interface a FIB lookup chose (trace does not send it)",
        _ => "not a verdict lb_tc_* returns",
    }
}

/// Bytes as lowercase hex digits, without separators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// The big-endian `u16` at `at`, if the frame has it.
pub fn be16(b: &[u8], at: usize) -> Option<u16> {
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
pub fn decode(f: &[u8]) -> Decoded {
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

    fn parse_hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
    }

    /// A TCP SYN 10.0.0.1:40000 → 10.0.0.2:80 with correct checksums (as tcpdump -xx shows it).
    const SYN: &str = "02000000000202000000000108004500002800010000400666cd0a0000010a0000029c400050000000010000000050022000df4e0000";

    #[test]
    fn decodes_a_valid_syn() {
        let frame = parse_hex(SYN);
        let d = decode(&frame);
        assert_eq!(d.src, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(d.dst_port, Some(80));
        assert_eq!(d.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!(d.ip_checksum_valid, Some(true), "{:?}", d.notes);
        assert_eq!(d.l4_checksum_valid, Some(true), "{:?}", d.notes);
    }

    #[test]
    fn a_changed_address_breaks_both_checksums() {
        let mut frame = parse_hex(SYN);
        frame[ETH_HLEN + 19] = 3; // destination 10.0.0.3
        let d = decode(&frame);
        assert_eq!(d.ip_checksum_valid, Some(false));
        assert_eq!(d.l4_checksum_valid, Some(false), "the pseudo-header covers the addresses");
    }
}
