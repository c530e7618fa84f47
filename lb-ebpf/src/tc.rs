//! TC programs: per-packet load balancing of traffic that did not pass the socket hooks (from
//! outside the node: NodePort, LoadBalancer IPs, external IPs, and ClusterIPs), kube-proxy's
//! PREROUTING path.
//!
//! `lb_tc_ingress` (on every `--interfaces` device):
//! - a packet of a tracked flow is rewritten as its conntrack entry says;
//! - a packet to a frontend starts a flow: a backend is picked from the slot the flow hash names
//!   (so with a Maglev table every node picks the same one), the destination becomes the backend,
//!   and when the backend is on another node the source becomes this node's address towards it
//!   (SNAT, a port from `SNAT_PORT_MIN..=SNAT_PORT_MAX`), so its reply comes back here;
//! - a packet whose source is now one of this node's addresses (SNAT, or a reply rewritten back
//!   to come from the frontend) cannot go through the stack's forwarding, which drops packets
//!   with a local source: it is sent out directly after a FIB lookup (`bpf_redirect`).
//!
//! `lb_tc_egress` rewrites the replies of local backends (no SNAT), which the stack forwards to
//! the client, back to come from the frontend.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use lb_common::{
    CtKey, CtValue, Frontend4Key, Frontend6Key, SNAT_PORT_MAX, SNAT_PORT_MIN, backend_flags, ct_dir,
    ct_flags, flow_hash, stats,
};

use crate::{
    conntrack,
    lb::{Path, Verdict, resolve},
    maps::{LB_BACKENDS, LB_FRONTENDS_V4, LB_FRONTENDS_V6},
    packet::{self, Flow},
    source_range,
    stats::bump,
};

/// Per-CPU working space of `new_flow` (kernel-internal, not pinned).
#[repr(C)]
struct Scratch {
    entry: CtValue,
    back: CtValue,
    fib: FibParams,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Not ours: let the next program (TCX) or the default action (clsact) decide.
const NEXT: i32 = -1;
const OK: i32 = TC_ACT_OK;
const DROP: i32 = TC_ACT_SHOT;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// How many SNAT ports a new flow tries before giving up.
const SNAT_TRIES: u32 = 8;

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    ingress(&ctx)
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    egress(&ctx)
}

#[inline(always)]
fn ingress(ctx: &TcContext) -> i32 {
    let Some(flow) = packet::parse(ctx) else {
        return NEXT;
    };
    let now = conntrack::now();
    // Two out-of-line steps, each with its own stack frame: the 512-byte limit applies to the
    // deepest call chain, not to the sum of everything inlined.
    let verdict = tracked(ctx, &flow, now);
    if verdict != UNTRACKED {
        return verdict;
    }
    new_flow(ctx, &flow, now)
}

/// Returned by `tracked` for a packet of no tracked flow.
const UNTRACKED: i32 = i32::MIN;

/// A packet of a tracked flow, in either direction, is rewritten as its entry says.
#[inline(never)]
fn tracked(ctx: &TcContext, flow: &Flow, now: u64) -> i32 {
    let original = conntrack::key(flow, ct_dir::ORIGINAL);
    if let Some(entry) = conntrack::lookup(&original, now)
        && backend_alive(entry)
    {
        conntrack::touch(&original, entry, flow.tcp_flags, false, now);
        bump(stats::TC_TRANSLATED);
        return apply(ctx, flow, entry, entry.flags & ct_flags::SNAT != 0);
    }
    let reply = conntrack::key(flow, ct_dir::REPLY);
    if let Some(entry) = conntrack::lookup(&reply, now) {
        conntrack::touch(&reply, entry, flow.tcp_flags, true, now);
        bump(stats::TC_REVNAT);
        // The reply now comes from the frontend, an address of ours for a NodePort.
        return apply(ctx, flow, entry, true);
    }
    UNTRACKED
}

#[inline(always)]
fn egress(ctx: &TcContext) -> i32 {
    let Some(flow) = packet::parse(ctx) else {
        return NEXT;
    };
    let now = conntrack::now();
    let reply = conntrack::key(&flow, ct_dir::REPLY);
    let Some(entry) = conntrack::lookup(&reply, now) else {
        return NEXT;
    };
    conntrack::touch(&reply, entry, flow.tcp_flags, true, now);
    bump(stats::TC_REVNAT);
    // A local backend's reply, routed here by the stack: the source becomes the frontend.
    apply(ctx, &flow, entry, false)
}

/// Whether the backend a tracked flow goes to is still programmed (same id, same address). When
/// it is gone (its endpoint left every Service), the flow is treated as new and gets a live
/// backend, as kube-proxy clears the conntrack entries of a removed UDP endpoint; otherwise a
/// UDP client that keeps sending would be stuck on a dead backend.
#[inline(always)]
fn backend_alive(entry: &CtValue) -> bool {
    if entry.backend == 0 {
        return true; // made by an agent that did not record ids: trust it
    }
    // Safety: plain-old-data value read once in place.
    match unsafe { LB_BACKENDS.get(entry.backend) } {
        Some(b) => b.addr == entry.dst && b.port == entry.dport,
        None => false,
    }
}

/// Rewrites a tracked packet and sends it on: through the stack when its source is still the
/// client's, by redirect (`direct`) when the source may now be one of ours.
#[inline(always)]
fn apply(ctx: &TcContext, flow: &Flow, entry: &CtValue, direct: bool) -> i32 {
    if packet::rewrite(ctx, flow, &entry.src, entry.sport, &entry.dst, entry.dport).is_err() {
        return DROP;
    }
    if !direct {
        return OK;
    }
    let mut fib = fib_params(flow.family, flow.proto, &entry.src, &entry.dst, ctx_ifindex(ctx));
    match fib_lookup(ctx, &mut fib, 0) {
        Some(found) => redirect(ctx, &fib, found),
        // The stack would drop it anyway (a local source): drop it here, counted.
        None => {
            bump(stats::TC_NAT_FAILED);
            DROP
        }
    }
}

/// A packet that is not part of a tracked flow: if it is addressed to a frontend, pick a backend
/// and track the flow. Not inlined: its own stack frame keeps the program under 512 bytes.
#[inline(never)]
fn new_flow(ctx: &TcContext, flow: &Flow, now: u64) -> i32 {
    let hash = flow_hash(&flow.src, flow.sport, flow.dport, flow.proto);
    // A LoadBalancer frontend whose source ranges leave this client out is, for `resolve`, no
    // frontend; `denied` tells the two apart (checked before the backend choice, so a Service
    // without endpoints drops such a client too, as kube-proxy's firewall chain comes first).
    let denied = core::cell::Cell::new(false);
    let (family, src) = (flow.family, &flow.src);
    let client = || affinity_client(flow);
    let verdict = if flow.family == 4 {
        let key = Frontend4Key { addr: flow.dst[0], port: flow.dport, proto: flow.proto, pad: 0 };
        // Safety: plain-old-data value, copied out at once; see `lb::backend_at`.
        let lookup = || unsafe { LB_FRONTENDS_V4.get(key) }.copied();
        resolve(|| source_range::admitted(lookup, family, src, &denied), hash, Path::Packet, client)
    } else {
        let key = Frontend6Key { addr: flow.dst, port: flow.dport, proto: flow.proto, pad: 0 };
        // Safety: as above.
        let lookup = || unsafe { LB_FRONTENDS_V6.get(key) }.copied();
        resolve(|| source_range::admitted(lookup, family, src, &denied), hash, Path::Packet, client)
    };
    let (backend_id, backend) = match verdict {
        None if denied.get() => {
            bump(stats::TC_SOURCE_DENIED);
            return DROP;
        }
        None => return NEXT,
        Some(Verdict::Backend(id, backend)) => (id, backend),
        Some(Verdict::Reject | Verdict::Unreachable) => {
            bump(stats::TC_DROPPED);
            return DROP;
        }
    };

    // Big values live in a per-CPU scratch slot, not on the 512-byte stack.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return DROP;
    };
    // Safety: this CPU's slot of a per-CPU array, used by this program run only (TC programs
    // are not preempted by one another on a CPU), and valid until the run ends.
    let scratch = unsafe { &mut *scratch };

    // The flow's tuple after translation: to the backend, from the client or (SNAT) from us.
    let snat = backend.flags & backend_flags::LOCAL == 0;
    scratch.fib = fib_params(flow.family, flow.proto, &flow.src, &backend.addr, ctx_ifindex(ctx));
    let mut found = None;
    let mut src = flow.src;
    if snat {
        // The source this node uses towards the backend (BPF_FIB_LOOKUP_SRC, Linux 6.7+).
        found = fib_lookup(ctx, &mut scratch.fib, BPF_FIB_LOOKUP_SRC);
        if found.is_none() {
            bump(stats::TC_NAT_FAILED);
            return DROP;
        }
        src = fib_src(&scratch.fib, flow.family);
    }
    let flags = if snat { ct_flags::SNAT } else { 0 };
    scratch.entry = CtValue {
        src,
        dst: backend.addr,
        sport: flow.sport,
        dport: backend.port,
        flags,
        pad: 0,
        backend: backend_id,
        pad2: 0,
        last_seen: now,
    };
    scratch.back = CtValue {
        src: flow.dst,
        dst: flow.src,
        sport: flow.dport,
        dport: flow.sport,
        flags,
        pad: 0,
        backend: 0,
        pad2: 0,
        last_seen: now,
    };
    if snat {
        // A port whose reply tuple is free; the reply entry is made first so a concurrent flow
        // cannot take the same one.
        let mut sport = 0;
        let mut tries = 0;
        while tries < SNAT_TRIES {
            let span = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
            let port = (SNAT_PORT_MIN + (hash.wrapping_add(tries.wrapping_mul(7919)) % span) as u16).to_be();
            let reply_key = reply_key(flow, &backend.addr, backend.port, &src, port);
            if conntrack::claim(&reply_key, &scratch.back, now).is_ok() {
                sport = port;
                break;
            }
            tries += 1;
        }
        if sport == 0 {
            bump(stats::TC_NAT_FAILED);
            return DROP;
        }
        scratch.entry.sport = sport;
    } else {
        // The reply tuple names no frontend: if another live flow of this client port already
        // owns it (the same client port to two frontends of one backend), refuse this one
        // rather than send the other's replies from the wrong frontend.
        let reply_key = reply_key(flow, &backend.addr, backend.port, &src, flow.sport);
        if conntrack::claim(&reply_key, &scratch.back, now).is_err() {
            bump(stats::TC_NAT_FAILED);
            return DROP;
        }
    }
    if conntrack::store(&conntrack::key(flow, ct_dir::ORIGINAL), &scratch.entry).is_err() {
        bump(stats::TC_NAT_FAILED);
        return DROP;
    }
    bump(stats::TC_NEW_FLOW);
    bump(stats::TC_TRANSLATED);
    let entry = &scratch.entry;
    if packet::rewrite(ctx, flow, &entry.src, entry.sport, &entry.dst, entry.dport).is_err() {
        return DROP;
    }
    match found {
        Some(found) => redirect(ctx, &scratch.fib, found),
        None => OK,
    }
}

/// The client of a flow for session affinity: its source address (`affinity_kind::IPV4` and
/// `IPV6` are the family numbers 4 and 6).
#[inline(always)]
fn affinity_client(flow: &Flow) -> crate::lb::Client {
    crate::lb::Client { id: flow.src, kind: flow.family }
}

/// Key of the reply direction of a flow translated to `backend` from `src:sport`.
#[inline(always)]
fn reply_key(flow: &Flow, backend: &[u32; 4], backend_port: u16, src: &[u32; 4], sport: u16) -> CtKey {
    CtKey {
        src: *backend,
        dst: *src,
        sport: backend_port,
        dport: sport,
        proto: flow.proto,
        family: flow.family,
        dir: ct_dir::REPLY,
        pad: 0,
    }
}

#[inline(always)]
fn ctx_ifindex(ctx: &TcContext) -> u32 {
    // Safety: the context pointer is the kernel's `__sk_buff` for this run; `ifindex` is a
    // readable field of it.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn fib_params(family: u8, proto: u8, src: &[u32; 4], dst: &[u32; 4], ifindex: u32) -> FibParams {
    // Safety: an all-zero `bpf_fib_lookup` is a valid (empty) parameter block.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.l4_protocol = proto;
    p.ifindex = ifindex;
    if family == 4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    }
    p
}

#[inline(always)]
fn fib_src(p: &FibParams, family: u8) -> [u32; 4] {
    // Safety: the union member read is the one of `family`, written by the kernel's lookup.
    unsafe { if family == 4 { [p.__bindgen_anon_3.ipv4_src, 0, 0, 0] } else { p.__bindgen_anon_3.ipv6_src } }
}

/// How a FIB lookup found the next hop.
#[derive(Clone, Copy)]
enum Found {
    /// Next hop's MAC known: set the MACs and redirect.
    Neighbour,
    /// Route found, neighbour not resolved: let `bpf_redirect_neigh` resolve it.
    Route,
}

#[inline(always)]
fn fib_lookup(ctx: &TcContext, p: &mut FibParams, flags: u32) -> Option<Found> {
    // Safety: `p` is a valid, initialised parameter block of the size passed.
    let ret = unsafe {
        bpf_fib_lookup(ctx.as_ptr(), p as *mut FibParams, core::mem::size_of::<FibParams>() as i32, flags)
    };
    if ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        Some(Found::Neighbour)
    } else if ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        Some(Found::Route)
    } else {
        None
    }
}

#[inline(always)]
fn redirect(ctx: &TcContext, p: &FibParams, found: Found) -> i32 {
    bump(stats::TC_REDIRECTED);
    match found {
        Found::Neighbour => {
            if packet::set_macs(ctx, &p.dmac, &p.smac).is_err() {
                return DROP;
            }
            // Safety: plain helper call with an ifindex from the FIB.
            unsafe { bpf_redirect(p.ifindex, 0) as i32 }
        }
        // Safety: a null parameter block asks the kernel to use the packet's destination.
        Found::Route => unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) as i32 },
    }
}
