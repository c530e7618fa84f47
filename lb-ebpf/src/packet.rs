//! Parsing and rewriting the headers of one packet: reads in place from the linear data where the
//! bytes are there (nearly always for headers), else through the skb helpers at TC and
//! `bpf_xdp_load_bytes` at XDP; writes at TC through the helpers (`bpf_skb_store_bytes` and the
//! checksum helpers, which check bounds at run time and keep the skb's checksum state), at XDP in
//! place where the bytes are in the linear data (else `bpf_xdp_store_bytes`). `Packet` is what the
//! two hooks differ in; everything above it (parse, rewrite, and `nat`) is one code path.
//!
//! Only what the load balancer translates is parsed: Ethernet + IPv4 (not a fragment) or IPv6
//! (no extension header) + TCP or UDP. Anything else, including a truncated header, is `None` and
//! passes untouched.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::{TcContext, XdpContext},
};
use lb_common::proto;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IP4_CSUM: usize = ETH_HLEN + 10;
const IP4_SRC: usize = ETH_HLEN + 12;
const IP4_DST: usize = ETH_HLEN + 16;
const IP6_SRC: usize = ETH_HLEN + 8;
const IP6_DST: usize = ETH_HLEN + 24;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// What a hook's packet offers the shared code: bounds-checked loads and stores at byte offsets
/// from the Ethernet header, incremental checksum updates, and the device it arrived on.
pub trait Packet: EbpfContext {
    fn load<T>(&self, offset: usize) -> Result<T, ()>;
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), ()>;
    /// Updates the 16-bit checksum at `offset` for 4 bytes that changed from `from` to `to`.
    fn l3_csum_replace(&self, offset: usize, from: u32, to: u32) -> Result<(), ()>;
    /// Updates the TCP/UDP checksum at `offset`; `flags` as for `bpf_l4_csum_replace` (the low
    /// bits are the size, 2 or 4; `BPF_F_MARK_MANGLED_0` keeps an absent UDP checksum absent).
    fn l4_csum_replace(&self, offset: usize, from: u32, to: u32, flags: u64) -> Result<(), ()>;
    /// Updates the TCP/UDP checksum at `offset` by `diff`, the one's-complement sum of the new
    /// 16-bit words minus the old (`csum_diff`); `flags` as for `l4_csum_replace` without a size
    /// (`bpf_l4_csum_replace`'s diff form: one call for several changed fields).
    fn l4_csum_diff(&self, offset: usize, diff: u32, flags: u64) -> Result<(), ()>;
    /// The index of the device the packet is on.
    fn ifindex(&self) -> u32;
}

/// Bytes `offset..offset + size_of::<T>()` of a packet whose linear data is `start..end`, read
/// in place; `None` when they are not all in the linear data (then a helper reads them). Headers
/// are nearly always there, and reading them in place costs a few instructions where each helper
/// call costs tens of nanoseconds.
#[inline(always)]
fn load_in_place<T>(start: usize, end: usize, offset: usize) -> Option<T> {
    // A bound the verifier can see on the offset (headers lie in the first bytes).
    if offset > 256 {
        return None;
    }
    let at = start + offset;
    // At least two bytes: LLVM turns a one-byte check into `at >= end`, from which the verifier
    // derives no readable range for a variable offset. (A single last byte falls back.)
    if at + core::mem::size_of::<T>().max(2) > end {
        return None;
    }
    // Safety: `at..at + size_of::<T>()` lies within the packet's linear data (checked above,
    // and by the verifier); only plain-old-data types are loaded, read without alignment.
    Some(unsafe { core::ptr::read_unaligned(at as *const T) })
}

/// Writes `value` at `offset` of a packet whose linear data is `start..end`, in place; false
/// when the bytes are not all in the linear data (then a helper writes them). Only at XDP: a TC
/// program that writes packet data directly gets a prologue from the verifier that un-clones
/// every cloned skb it sees (a copy of the headers), ours or not, where the helpers copy only
/// the packets they write.
#[inline(always)]
fn store_in_place<T>(start: usize, end: usize, offset: usize, value: &T) -> bool {
    // Bounds as in `load_in_place`.
    if offset > 256 {
        return false;
    }
    let at = start + offset;
    if at + core::mem::size_of::<T>().max(2) > end {
        return false;
    }
    // Safety: `at..at + size_of::<T>()` lies within the packet's linear data (checked above, and
    // by the verifier), which an XDP program may write; only plain-old-data types are stored.
    unsafe { core::ptr::write_unaligned(at as *mut T, core::ptr::read(value)) };
    true
}

impl Packet for TcContext {
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, ()> {
        match load_in_place(self.data(), self.data_end(), offset) {
            Some(value) => Ok(value),
            None => TcContext::load(self, offset).map_err(|_| ()),
        }
    }

    #[inline(always)]
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), ()> {
        TcContext::store(self, offset, value, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn l3_csum_replace(&self, offset: usize, from: u32, to: u32) -> Result<(), ()> {
        TcContext::l3_csum_replace(self, offset, u64::from(from), u64::from(to), 4).map_err(|_| ())
    }

    #[inline(always)]
    fn l4_csum_replace(&self, offset: usize, from: u32, to: u32, flags: u64) -> Result<(), ()> {
        TcContext::l4_csum_replace(self, offset, u64::from(from), u64::from(to), flags).map_err(|_| ())
    }

    #[inline(always)]
    fn l4_csum_diff(&self, offset: usize, diff: u32, flags: u64) -> Result<(), ()> {
        TcContext::l4_csum_replace(self, offset, 0, u64::from(diff), flags).map_err(|_| ())
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // Safety: the context pointer is the kernel's `__sk_buff` for this run; `ifindex` is a
        // readable field of it.
        unsafe { (*self.skb.skb).ifindex }
    }
}

/// At XDP there is no skb to keep a checksum state in: a packet from a NIC carries full
/// checksums, which are updated in the packet itself (`csum_apply`). (A packet whose checksum
/// a local sender left to "hardware", as on a veth between namespaces, carries only the
/// pseudo-header sum and is not fixed up by this; see ARCHITECTURE.md, XDP.)
impl Packet for XdpContext {
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, ()> {
        if let Some(value) = load_in_place(self.data(), self.data_end(), offset) {
            return Ok(value);
        }
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // Safety: the helper writes exactly `size_of::<T>()` bytes into `value` or fails; only
        // plain-old-data types (integers and arrays of them) are loaded.
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                offset as u32,
                value.as_mut_ptr() as *mut c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        if ret == 0 {
            // Safety: fully written by the helper (ret 0).
            Ok(unsafe { value.assume_init() })
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), ()> {
        if store_in_place(self.data(), self.data_end(), offset, value) {
            return Ok(());
        }
        // Safety: the helper reads `size_of::<T>()` bytes from `value`, a live reference.
        let ret = unsafe {
            bpf_xdp_store_bytes(
                self.ctx,
                offset as u32,
                value as *const T as *mut c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        if ret == 0 { Ok(()) } else { Err(()) }
    }

    #[inline(always)]
    fn l3_csum_replace(&self, offset: usize, from: u32, to: u32) -> Result<(), ()> {
        let check: u16 = Packet::load(self, offset)?;
        Packet::store(self, offset, &csum_apply(check, csum_diff(diff32(from, to))))
    }

    #[inline(always)]
    fn l4_csum_replace(&self, offset: usize, from: u32, to: u32, flags: u64) -> Result<(), ()> {
        let diff = if flags & 0xf == 4 { diff32(from, to) } else { diff16(from as u16, to as u16) };
        Packet::l4_csum_diff(self, offset, csum_diff(diff), flags & !0xf)
    }

    #[inline(always)]
    fn l4_csum_diff(&self, offset: usize, diff: u32, flags: u64) -> Result<(), ()> {
        let check: u16 = Packet::load(self, offset)?;
        let mangled = flags & u64::from(BPF_F_MARK_MANGLED_0) != 0;
        if mangled && check == 0 {
            return Ok(()); // UDP over IPv4 without a checksum stays without one
        }
        let mut new = csum_apply(check, diff);
        if mangled && new == 0 {
            new = 0xffff; // 0 would mean "no checksum"
        }
        Packet::store(self, offset, &new)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // Safety: the context pointer is the kernel's `xdp_md` for this run.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

/// `csum_diff`'s term for a 4-byte field that changed from `from` to `to` (as loaded): the
/// one's-complement `to - from`, before folding.
#[inline(always)]
fn diff32(from: u32, to: u32) -> u64 {
    u64::from(!from) + u64::from(to)
}

/// `csum_diff`'s term for a 2-byte field.
#[inline(always)]
fn diff16(from: u16, to: u16) -> u64 {
    u64::from(!from) + u64::from(to)
}

/// A sum of `diff32`/`diff16` terms folded to 16 bits: a checksum difference (`__wsum`).
#[inline(always)]
fn csum_diff(mut sum: u64) -> u32 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u32
}

/// The checksum `check` of data that changed by `diff` (`csum_diff`): RFC 1624, eqn. 3, HC' =
/// ~(~HC + ~m + m'). Values are as loaded from the packet; the sum does not depend on byte order.
#[inline(always)]
fn csum_apply(check: u16, diff: u32) -> u16 {
    !(csum_diff(u64::from(!check) + u64::from(diff)) as u16)
}

/// The addresses and ports of one TCP or UDP packet (network byte order, IPv4 in `[0]`).
#[derive(Clone, Copy)]
pub struct Flow {
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

/// The fixed IPv4 header, as it is on the wire (multi-byte fields in network order).
#[repr(C)]
struct Ip4Head {
    version_ihl: u8,
    tos: u8,
    total_len: u16,
    id: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    src: u32,
    dst: u32,
}

/// The IPv6 header, as it is on the wire.
#[repr(C)]
struct Ip6Head {
    version_class_label: [u8; 4],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

/// The TCP header up to the urgent pointer (the UDP header is its first 8 bytes).
#[repr(C)]
struct L4Head {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    offset: u8,
    flags: u8,
    window: u16,
    check: u16,
    urgent: u16,
}

/// Each header is read with one load (three in all: EtherType, IP, L4), not field by field: when
/// a load falls back to a helper call, it costs tens of nanoseconds.
#[inline(always)]
pub fn parse<P: Packet>(ctx: &P) -> Option<Flow> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (family, proto, src, dst, l4) = if ethertype == ETH_P_IP {
        let ip: Ip4Head = ctx.load(ETH_HLEN).ok()?;
        let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
        if ip.version_ihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        // More-fragments flag or a fragment offset: the ports are not in this packet (or, for
        // the first fragment, the rest would go untranslated). Leave fragments alone.
        if u16::from_be(ip.frag) & 0x3fff != 0 {
            return None;
        }
        (4, ip.proto, [ip.src, 0, 0, 0], [ip.dst, 0, 0, 0], ETH_HLEN + ihl)
    } else if ethertype == ETH_P_IPV6 {
        let ip: Ip6Head = ctx.load(ETH_HLEN).ok()?;
        if ip.version_class_label[0] >> 4 != 6 {
            return None;
        }
        (6, ip.next_header, ip.src, ip.dst, ETH_HLEN + 40)
    } else {
        return None;
    };
    let (sport, dport, tcp_flags) = if proto == proto::TCP {
        // The whole fixed TCP header must be there, or the checksum cannot be updated.
        let h: L4Head = ctx.load(l4).ok()?;
        (h.sport, h.dport, h.flags)
    } else if proto == proto::UDP {
        let h: [u16; 4] = ctx.load(l4).ok()?;
        (h[0], h[1], 0)
    } else {
        return None;
    };
    Some(Flow { family, proto, src, dst, sport, dport, l4, tcp_flags })
}

/// Offset of the L4 checksum and the flags for its updates.
#[inline(always)]
fn l4_csum(flow: &Flow) -> (usize, u64) {
    if flow.proto == proto::TCP {
        (flow.l4 + 16, 0)
    } else {
        // A UDP/IPv4 checksum of 0 means "none": keep it so, and never produce 0 by an update.
        (flow.l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))
    }
}

/// Rewrites the packet's source and destination to `src:sport` → `dst:dport`, updating the IPv4
/// header checksum and the TCP/UDP checksum (pseudo-header included) incrementally. Fields that
/// do not change are not written. `Err` leaves the packet partly rewritten: drop it.
///
/// Few helper calls (each costs some nanoseconds: a writable check and the packet pointers
/// recomputed): for IPv4 the header checksum is computed here and written with the addresses,
/// and with the ports too when they follow (no IP options), in one store; the TCP/UDP checksum
/// takes one update for the addresses (pseudo-header) and one for the ports. Those two cannot be
/// one: a packet whose checksum is left to the device (`CHECKSUM_PARTIAL`) holds only the
/// pseudo-header's sum there, which the ports are not part of; the helper knows the skb's state.
#[inline(always)]
pub fn rewrite<P: Packet>(
    ctx: &P,
    flow: &Flow,
    src: &[u32; 4],
    sport: u16,
    dst: &[u32; 4],
    dport: u16,
) -> Result<(), ()> {
    let (csum, mangled) = l4_csum(flow);
    let ports = sport != flow.sport || dport != flow.dport;
    if flow.family == 4 {
        if src[0] != flow.src[0] || dst[0] != flow.dst[0] {
            let diff = csum_diff(diff32(flow.src[0], src[0]) + diff32(flow.dst[0], dst[0]));
            let check: u16 = ctx.load(IP4_CSUM)?;
            // Checksum, source, destination: 16-bit words as they lie from offset 10 of the header.
            let head = [
                csum_apply(check, diff),
                src[0] as u16,
                (src[0] >> 16) as u16,
                dst[0] as u16,
                (dst[0] >> 16) as u16,
            ];
            if ports && flow.l4 == IP4_DST + 4 {
                let all = [head[0], head[1], head[2], head[3], head[4], sport, dport];
                ctx.store(IP4_CSUM, &all)?;
            } else {
                ctx.store(IP4_CSUM, &head)?;
                if ports {
                    ctx.store(flow.l4, &[sport, dport])?;
                }
            }
            ctx.l4_csum_diff(csum, diff, u64::from(BPF_F_PSEUDO_HDR) | mangled)?;
        } else if ports {
            ctx.store(flow.l4, &[sport, dport])?;
        }
    } else {
        if *src != flow.src {
            rewrite_addr6(ctx, IP6_SRC, csum, mangled, &flow.src, src)?;
        }
        if *dst != flow.dst {
            rewrite_addr6(ctx, IP6_DST, csum, mangled, &flow.dst, dst)?;
        }
        if ports {
            ctx.store(flow.l4, &[sport, dport])?;
        }
    }
    if ports {
        let diff = csum_diff(diff16(flow.sport, sport) + diff16(flow.dport, dport));
        ctx.l4_csum_diff(csum, diff, mangled)?;
    }
    Ok(())
}

#[inline(always)]
fn rewrite_addr6<P: Packet>(
    ctx: &P,
    at: usize,
    csum: usize,
    mangled: u64,
    old: &[u32; 4],
    new: &[u32; 4],
) -> Result<(), ()> {
    ctx.store(at, new)?;
    let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled | 4;
    for i in 0..4 {
        if old[i] != new[i] {
            ctx.l4_csum_replace(csum, old[i], new[i], flags)?;
        }
    }
    Ok(())
}

/// Writes the Ethernet destination and source addresses (before a redirect).
#[inline(always)]
pub fn set_macs<P: Packet>(ctx: &P, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), ()> {
    ctx.store(0, dst)?;
    ctx.store(6, src)
}

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// An ICMP error (IPv4 destination unreachable, time exceeded, parameter problem; ICMPv6
/// destination unreachable, packet too big, time exceeded, parameter problem) that carries the
/// start of a TCP or UDP packet: the headers of the packet it reports on.
pub struct IcmpError {
    /// 4 or 6.
    pub family: u8,
    /// Outer addresses.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Offset of the ICMP header (its checksum is 2 bytes further).
    pub icmp: usize,
    /// Offset of the embedded IP header.
    pub inner_l3: usize,
    /// The embedded packet's tuple; `l4` is the offset of its ports.
    pub inner: Flow,
}

/// Parses an ICMP error about a TCP/UDP packet; `None` for anything else (including an embedded
/// packet with IPv4 options cut short, or IPv6 extension headers).
#[inline(always)]
pub fn parse_icmp_error<P: Packet>(ctx: &P) -> Option<IcmpError> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (family, src, dst, icmp, inner_l3) = if ethertype == ETH_P_IP {
        let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
        if version_ihl >> 4 != 4
            || ihl < 20
            || frag & 0x3fff != 0
            || ctx.load::<u8>(ETH_HLEN + 9).ok()? != ICMP
        {
            return None;
        }
        let icmp = ETH_HLEN + ihl;
        let kind: u8 = ctx.load(icmp).ok()?;
        if kind != 3 && kind != 11 && kind != 12 {
            return None;
        }
        let src: u32 = ctx.load(IP4_SRC).ok()?;
        let dst: u32 = ctx.load(IP4_DST).ok()?;
        (4, [src, 0, 0, 0], [dst, 0, 0, 0], icmp, icmp + 8)
    } else if ethertype == ETH_P_IPV6 {
        let version: u8 = ctx.load(ETH_HLEN).ok()?;
        if version >> 4 != 6 || ctx.load::<u8>(ETH_HLEN + 6).ok()? != ICMPV6 {
            return None;
        }
        let icmp = ETH_HLEN + 40;
        let kind: u8 = ctx.load(icmp).ok()?;
        if kind == 0 || kind > 4 {
            return None;
        }
        let src: [u32; 4] = ctx.load(IP6_SRC).ok()?;
        let dst: [u32; 4] = ctx.load(IP6_DST).ok()?;
        (6, src, dst, icmp, icmp + 8)
    } else {
        return None;
    };
    let (proto, isrc, idst, il4) = if family == 4 {
        let version_ihl: u8 = ctx.load(inner_l3).ok()?;
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        let proto: u8 = ctx.load(inner_l3 + 9).ok()?;
        let s: u32 = ctx.load(inner_l3 + 12).ok()?;
        let d: u32 = ctx.load(inner_l3 + 16).ok()?;
        (proto, [s, 0, 0, 0], [d, 0, 0, 0], inner_l3 + ihl)
    } else {
        let version: u8 = ctx.load(inner_l3).ok()?;
        if version >> 4 != 6 {
            return None;
        }
        let proto: u8 = ctx.load(inner_l3 + 6).ok()?;
        let s: [u32; 4] = ctx.load(inner_l3 + 8).ok()?;
        let d: [u32; 4] = ctx.load(inner_l3 + 24).ok()?;
        (proto, s, d, inner_l3 + 40)
    };
    if proto != proto::TCP && proto != proto::UDP {
        return None;
    }
    let sport: u16 = ctx.load(il4).ok()?;
    let dport: u16 = ctx.load(il4 + 2).ok()?;
    let inner = Flow { family, proto, src: isrc, dst: idst, sport, dport, l4: il4, tcp_flags: 0 };
    Some(IcmpError { family, src, dst, icmp, inner_l3, inner })
}

/// Rewrites an ICMP error: the embedded packet's tuple becomes `peer` reversed (the conntrack
/// value of the entry keyed by the quoted tuple reversed) and the outer addresses `outer_src →`
/// that tuple's source, with every checksum kept right: the outer IPv4
/// header's, the embedded IPv4 header's, and the ICMP checksum (which covers the embedded
/// packet, and for ICMPv6 a pseudo-header of the outer addresses). An embedded IPv4 header with
/// its own checksum kept right sums to the same value whatever its addresses, so its changes
/// leave the ICMPv4 checksum alone. The embedded TCP/UDP checksum is not updated (an ICMP error
/// may not carry it, and no receiver checks it). `Err` leaves the packet partly rewritten.
#[inline(always)]
pub fn rewrite_icmp_error<P: Packet>(
    ctx: &P,
    e: &IcmpError,
    outer_src: &[u32; 4],
    peer: &lb_common::CtValue,
) -> Result<(), ()> {
    // The quoted packet's original tuple is `peer` reversed; the error goes to its sender.
    let (outer_dst, src, sport, dst, dport) = (&peer.dst, &peer.dst, peer.dport, &peer.src, peer.sport);
    let csum = e.icmp + 2;
    let inner = &e.inner;
    if e.family == 4 {
        swap4(ctx, IP4_SRC, IP4_CSUM, e.src[0], outer_src[0])?;
        swap4(ctx, IP4_DST, IP4_CSUM, e.dst[0], outer_dst[0])?;
        swap4(ctx, e.inner_l3 + 12, e.inner_l3 + 10, inner.src[0], src[0])?;
        swap4(ctx, e.inner_l3 + 16, e.inner_l3 + 10, inner.dst[0], dst[0])?;
    } else {
        let pseudo = u64::from(BPF_F_PSEUDO_HDR);
        swap16(ctx, IP6_SRC, csum, pseudo, &e.src, outer_src)?;
        swap16(ctx, IP6_DST, csum, pseudo, &e.dst, outer_dst)?;
        swap16(ctx, e.inner_l3 + 8, csum, 0, &inner.src, src)?;
        swap16(ctx, e.inner_l3 + 24, csum, 0, &inner.dst, dst)?;
    }
    if sport != inner.sport {
        ctx.store(inner.l4, &sport)?;
        ctx.l4_csum_replace(csum, u32::from(inner.sport), u32::from(sport), 2)?;
    }
    if dport != inner.dport {
        ctx.store(inner.l4 + 2, &dport)?;
        ctx.l4_csum_replace(csum, u32::from(inner.dport), u32::from(dport), 2)?;
    }
    Ok(())
}

/// Replaces an IPv4 address at `at`, updating the IPv4 header checksum at `check`.
#[inline(always)]
fn swap4<P: Packet>(ctx: &P, at: usize, check: usize, old: u32, new: u32) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    ctx.store(at, &new)?;
    ctx.l3_csum_replace(check, old, new)
}

/// Replaces an IPv6 address at `at`, updating the ICMPv6 checksum at `csum` (`flags`:
/// `BPF_F_PSEUDO_HDR` for an address of the pseudo-header).
#[inline(always)]
fn swap16<P: Packet>(
    ctx: &P,
    at: usize,
    csum: usize,
    flags: u64,
    old: &[u32; 4],
    new: &[u32; 4],
) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    ctx.store(at, new)?;
    for i in 0..4 {
        if old[i] != new[i] {
            ctx.l4_csum_replace(csum, old[i], new[i], flags | 4)?;
        }
    }
    Ok(())
}
