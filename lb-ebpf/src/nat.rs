//! Per-packet load balancing shared by TC and XDP: conntrack lookup, new-flow backend choice
//! (through `lb::resolve`, as at the sockets), SNAT for remote backends, and the rewrite. The
//! hooks differ only in their `Hook` (how a packet is read and written, which counters move, and
//! whether the hook may leave a flow to the next stage) and in how they turn an `Action` into a
//! return code.
//!
//! - a packet of a tracked flow is rewritten as its conntrack entry says;
//! - a packet to a frontend starts a flow: a backend is picked from the slot the flow hash names
//!   (so with a Maglev table every node picks the same one), the destination becomes the backend,
//!   and when the backend is on another node the source becomes this node's address towards it
//!   (SNAT, a port from `SNAT_PORT_MIN..=SNAT_PORT_MAX`), so its reply comes back here;
//! - a packet whose source is now one of this node's addresses (SNAT, or a reply rewritten back
//!   to come from the frontend) cannot go through the stack's forwarding, which drops packets
//!   with a local source: it is sent out directly after a FIB lookup.
//!
//! XDP (`Hook::WHOLE_ONLY`) takes only what it can finish without the stack: flows with SNAT
//! whose next hop is resolved and whose output device takes XDP redirects. Anything else it
//! leaves untouched, with no state made, for TC to do the same work.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    macros::map,
    maps::PerCpuArray,
};
use aya_log_ebpf::info;
use lb_common::{
    CtKey, CtValue, Frontend4Key, Frontend6Key, SNAT_PORT_MAX, SNAT_PORT_MIN, backend_flags, ct_dir,
    ct_flags, flow_hash, service_stats,
};

use crate::{
    conntrack,
    lb::{Path, Resolved, Verdict, resolve},
    log,
    maps::{LB_BACKEND_EPOCH, LB_BACKENDS, LB_FRONTENDS_V4, LB_FRONTENDS_V6},
    packet::{self, Flow, Packet},
    source_range,
    stats::{bump, bump_service},
};

/// Indexes in `LB_STATS` (`lb_common::stats`) a hook counts its work under.
pub struct Counters {
    pub translated: u32,
    pub revnat: u32,
    pub new_flow: u32,
    pub dropped: u32,
    pub nat_failed: u32,
    pub redirected: u32,
    pub source_denied: u32,
    /// The hook's first index in `lb_common::ServiceStats` (`service_stats::TC_NEW_FLOW` or
    /// `XDP_NEW_FLOW`); its verdicts follow at `service_stats::NEW_FLOW` and the other offsets.
    pub service: u32,
}

/// A hook the shared code runs in.
pub trait Hook: Packet {
    /// Only flows the hook finishes itself (XDP); others get `Action::NEXT`, untouched.
    const WHOLE_ONLY: bool;
    const COUNTERS: Counters;
    /// Whether a packet may be sent out of `ifindex` from this hook.
    fn can_send_out(&self, ifindex: u32) -> bool;
}

/// What to do with a packet after the shared code ran: a kind in the high half and, for the
/// `OUT*` kinds, a device index in the low half. One register, not an enum: the out-of-line steps
/// return it, and an enum returned through memory compiles to stack stores the verifier refuses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Action(u64);

impl Action {
    /// Not ours (or not one this hook finishes): untouched, on to the next stage.
    pub const NEXT: Self = Self(0);
    /// Rewritten; on through the stack.
    pub const STACK: Self = Self(1 << 32);
    pub const DROP: Self = Self(2 << 32);
    const OUT: u64 = 3 << 32;
    const OUT_RESOLVE: u64 = 4 << 32;

    /// Rewritten, MAC addresses set: send out of this device.
    #[inline(always)]
    fn out(ifindex: u32) -> Self {
        Self(Self::OUT | u64::from(ifindex))
    }

    /// Rewritten: send out of this device, the kernel resolving the next hop (TC only).
    #[inline(always)]
    fn out_resolve(ifindex: u32) -> Self {
        Self(Self::OUT_RESOLVE | u64::from(ifindex))
    }

    /// Bit 63: a new flow was recorded for the kernel log (`log_new_flow`); the hook's entry
    /// prints it after the out-of-line step returned, where the stack is shallow.
    const LOG: u64 = 1 << 63;

    #[inline(always)]
    fn logged(self) -> Self {
        Self(self.0 | Self::LOG)
    }

    /// The action without the log bit, and whether it was set.
    #[inline(always)]
    fn take_log(self) -> (Self, bool) {
        (Self(self.0 & !Self::LOG), self.0 & Self::LOG != 0)
    }

    /// The device of an `out` action.
    #[inline(always)]
    pub fn out_device(self) -> Option<u32> {
        if self.0 & !0xffff_ffff == Self::OUT { Some(self.0 as u32) } else { None }
    }

    /// The device of an `out_resolve` action.
    #[inline(always)]
    pub fn out_resolve_device(self) -> Option<u32> {
        if self.0 & !0xffff_ffff == Self::OUT_RESOLVE { Some(self.0 as u32) } else { None }
    }
}

/// `tracked`'s answer for a packet of no tracked flow.
const UNTRACKED: Action = Action(u64::MAX);

/// Per-CPU working space of `new_flow` (kernel-internal, not pinned).
#[repr(C)]
struct Scratch {
    entry: CtValue,
    back: CtValue,
    fib: FibParams,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// How many SNAT ports a new flow tries before giving up.
const SNAT_TRIES: u32 = 8;

/// Translates one packet arriving at a node interface.
#[inline(always)]
pub fn ingress<H: Hook>(ctx: &H) -> Action {
    let Some(flow) = packet::parse(ctx) else {
        return if H::WHOLE_ONLY { Action::NEXT } else { icmp_error(ctx, true) };
    };
    // A packet whose destination the gate shuts out is to no frontend and of no flow tracked in
    // its original direction: only a reply to a SNAT port can still be ours. No hash lookup.
    if !conntrack::may_track(&flow) {
        if !snat_port(flow.dport) {
            return Action::NEXT;
        }
        let action = tracked(ctx, &flow, false);
        return if action == UNTRACKED { Action::NEXT } else { action };
    }
    // Two out-of-line steps, each with its own stack frame: the 512-byte limit applies to the
    // deepest call chain, not to the sum of everything inlined.
    let action = tracked(ctx, &flow, true);
    if action != UNTRACKED {
        return action;
    }
    let (action, log) = new_flow(ctx, &flow).take_log();
    if log {
        log_flow(ctx);
    }
    action
}

/// Whether `port` (network order) is one SNAT gives out (`SNAT_PORT_MIN..=SNAT_PORT_MAX`).
#[inline(always)]
fn snat_port(port: u16) -> bool {
    (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&u16::from_be(port))
}

/// A packet of a tracked flow, in either direction, is rewritten as its entry says; `UNTRACKED`
/// for a packet of no tracked flow. `may_original`: whether the conntrack gate lets the packet
/// look for an original-direction entry (`conntrack::may_track`).
#[inline(never)]
fn tracked<H: Hook>(ctx: &H, flow: &Flow, may_original: bool) -> Action {
    let now = conntrack::now();
    let original = conntrack::key(flow, ct_dir::ORIGINAL);
    if may_original
        && let Some(found) = conntrack::lookup(&original, now)
        && backend_alive(found)
    {
        let entry = found.value();
        let snat = entry.flags & ct_flags::SNAT != 0;
        if H::WHOLE_ONLY && !snat {
            return defer();
        }
        let action = apply(ctx, flow, entry, snat);
        if action != Action::NEXT {
            conntrack::touch(&original, found, flow.tcp_flags, false, now);
            bump(H::COUNTERS.translated);
        }
        return action;
    }
    // At an ingress the only replies translated are those of SNATed flows (a local backend's
    // reply leaves through `egress`), and they come back to a port of the SNAT range: any other
    // packet needs no second lookup, which a packet to no frontend would otherwise pay.
    if !snat_port(flow.dport) {
        return UNTRACKED;
    }
    let reply = conntrack::key(flow, ct_dir::REPLY);
    if let Some(found) = conntrack::lookup(&reply, now) {
        let entry = found.value();
        if entry.flags & ct_flags::SNAT == 0 {
            // A local backend's reply to a client port of that range (a port given to a flow
            // whose own was taken, or the client's own): it goes through the stack, and whatever
            // else is attached here, and `egress` translates it where it leaves.
            return if H::WHOLE_ONLY { defer() } else { Action::NEXT };
        }
        // The reply now comes from the frontend, an address of ours for a NodePort.
        let action = apply(ctx, flow, entry, true);
        if action != Action::NEXT {
            conntrack::touch(&reply, found, flow.tcp_flags, true, now);
            bump(H::COUNTERS.revnat);
        }
        return action;
    }
    UNTRACKED
}

/// An ICMP error about a packet this node translated (kube-proxy's conntrack does the same):
/// the packet it quotes is put back as it was before translation, and the error goes to that
/// packet's sender. The quoted packet `T` was made from a packet `T0` by one conntrack entry, whose
/// peer is keyed by `T` reversed and holds `T0` reversed (see `conntrack`). An error that came from
/// the host `T` was sent to (a backend's port unreachable) now comes from where `T0` was sent (the
/// frontend); one from a router on the way keeps its source. At ingress the error is sent out by
/// FIB (`direct`), at egress through the stack. Not inlined: its own stack frame.
#[inline(never)]
fn icmp_error<H: Hook>(ctx: &H, direct: bool) -> Action {
    let Some(e) = packet::parse_icmp_error(ctx) else {
        return Action::NEXT;
    };
    let now = conntrack::now();
    let inner = &e.inner;
    let mut key = CtKey {
        src: inner.dst,
        dst: inner.src,
        sport: inner.dport,
        dport: inner.sport,
        proto: inner.proto,
        family: inner.family,
        dir: ct_dir::REPLY,
        pad: 0,
    };
    let entry = match conntrack::lookup(&key, now) {
        Some(entry) => entry.value(),
        None => {
            key.dir = ct_dir::ORIGINAL;
            match conntrack::lookup(&key, now) {
                Some(entry) => entry.value(),
                None => return Action::NEXT,
            }
        }
    };
    // `T0` reversed is the entry's value: T0 = (value.dst:value.dport → value.src:value.sport).
    let outer_src = if e.src == inner.dst { entry.src } else { e.src };
    let outer_dst = entry.dst;
    if packet::rewrite_icmp_error(ctx, &e, &outer_src, entry).is_err() {
        return Action::DROP;
    }
    bump(H::COUNTERS.revnat);
    if !direct {
        return Action::STACK;
    }
    // The FIB block lives in the per-CPU scratch slot: this frame's stack is already large.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Action::DROP;
    };
    // Safety: as in `new_flow`: this CPU's slot, this program run's only user.
    let fib = unsafe { &mut (*scratch).fib };
    *fib = fib_params(e.family, inner.proto, &outer_src, &outer_dst, ctx.ifindex());
    match fib_lookup(ctx, fib, 0) {
        Some(found) => out(ctx, fib, found),
        // Not forwarded (e.g. the error is now for this node itself): the stack decides.
        None => Action::STACK,
    }
}

/// A local backend's reply leaving through a node interface (TC egress): its source becomes the
/// frontend, and the stack sends it on.
#[inline(always)]
pub fn egress<H: Hook>(ctx: &H) -> Action {
    let Some(flow) = packet::parse(ctx) else {
        return icmp_error(ctx, false);
    };
    reply(ctx, &flow)
}

/// `egress` for a TCP/UDP packet. Not inlined: `icmp_error`'s frame and this one are never on
/// the stack together.
#[inline(never)]
fn reply<H: Hook>(ctx: &H, flow: &Flow) -> Action {
    let flow = *flow;
    let now = conntrack::now();
    let reply = conntrack::key(&flow, ct_dir::REPLY);
    let Some(found) = conntrack::lookup(&reply, now) else {
        return Action::NEXT;
    };
    conntrack::touch(&reply, found, flow.tcp_flags, true, now);
    bump(H::COUNTERS.revnat);
    apply(ctx, &flow, found.value(), false)
}

/// A packet of ours that this hook leaves to the next stage (counted).
#[inline(always)]
fn defer() -> Action {
    bump(lb_common::stats::XDP_DEFERRED);
    Action::NEXT
}

/// What `log_flow` says happened to a new flow.
const LOG_TRANSLATED: u32 = 0;
const LOG_SNAT: u32 = 1;
const LOG_NO_BACKEND: u32 = 2;
const LOG_SOURCE_DENIED: u32 = 3;

/// A new flow to log, in per-CPU memory (see `log_flow`).
#[repr(C)]
struct LogFlow {
    src: [u32; 4],
    dst: [u32; 4],
    backend: [u32; 4],
    sport: u16,
    dport: u16,
    backend_port: u16,
    proto: u8,
    family: u8,
    pad: u16,
    group: u32,
    what: u32,
}

#[map]
static LOG_SCRATCH: PerCpuArray<LogFlow> = PerCpuArray::with_max_entries(1, 0);

/// Records a new flow of a group with logging on (`log`) for `log_flow`, which the hook's entry
/// calls when `new_flow`'s action carries `Action::LOG`. Only called when logging is on for
/// `group`.
#[inline(always)]
fn log_new_flow(flow: &Flow, group: u32, what: u32, backend: &[u32; 4], port: u16) {
    let Some(entry) = LOG_SCRATCH.get_ptr_mut(0) else { return };
    // Safety: this CPU's slot of a per-CPU array, used by this program run only (as `SCRATCH`).
    unsafe {
        (*entry).src = flow.src;
        (*entry).dst = flow.dst;
        (*entry).backend = *backend;
        (*entry).sport = flow.sport;
        (*entry).dport = flow.dport;
        (*entry).backend_port = port;
        (*entry).proto = flow.proto;
        (*entry).family = flow.family;
        (*entry).group = group;
        (*entry).what = what;
    }
}

/// Logs the flow `log_new_flow` recorded, from per-CPU memory. Out of line and called from the
/// hook's entry, not from `new_flow`: building a log record takes about 240 bytes of stack,
/// which on top of `new_flow`'s frame would pass the 512-byte combined limit.
#[inline(never)]
fn log_flow<H: Hook>(ctx: &H) {
    let Some(f) = LOG_SCRATCH.get_ptr(0) else { return };
    // Safety: as in `log_new_flow`; the slot was written during this program run.
    let f = unsafe { &*f };
    let (group, what) = (f.group, f.what);
    let hook = if H::WHOLE_ONLY { "xdp" } else { "tc" };
    let what = match what {
        LOG_TRANSLATED => "new flow",
        LOG_SNAT => "new flow, SNAT",
        LOG_NO_BACKEND => "no usable endpoint, dropped",
        _ => "source not in loadBalancerSourceRanges, dropped",
    };
    if f.family == 4 {
        info!(
            ctx,
            "{}: group {} {:i}:{} -> {:i}:{} proto {}: {} -> {:i}:{}",
            hook,
            group,
            u32::from_be(f.src[0]),
            u16::from_be(f.sport),
            u32::from_be(f.dst[0]),
            u16::from_be(f.dport),
            f.proto,
            what,
            u32::from_be(f.backend[0]),
            u16::from_be(f.backend_port)
        );
    } else {
        info!(
            ctx,
            "{}: group {} [{:i}]:{} -> [{:i}]:{} proto {}: {} -> [{:i}]:{}",
            hook,
            group,
            log::ip6_bytes(&f.src),
            u16::from_be(f.sport),
            log::ip6_bytes(&f.dst),
            u16::from_be(f.dport),
            f.proto,
            what,
            log::ip6_bytes(&f.backend),
            u16::from_be(f.backend_port)
        );
    }
}

/// Whether the backend a tracked flow goes to is still programmed (same id, same address). When
/// it is gone (its endpoint left every Service), the flow is treated as new and gets a live
/// backend, as kube-proxy clears the conntrack entries of a removed UDP endpoint; otherwise a
/// UDP client that keeps sending would be stuck on a dead backend. Looked up only when a backend
/// was removed since the entry's last check (`lb_common::backend_epoch`), which is then recorded.
#[inline(always)]
fn backend_alive(found: conntrack::Entry) -> bool {
    let entry = found.value();
    if entry.backend == 0 {
        return true; // made by an agent that did not record ids: trust it
    }
    let epoch = LB_BACKEND_EPOCH.get(0).copied().unwrap_or(0);
    if epoch != 0 && entry.epoch == epoch {
        return true;
    }
    // Safety: plain-old-data value read once in place.
    let alive = match unsafe { LB_BACKENDS.get(entry.backend) } {
        Some(b) => b.addr == entry.dst && b.port == entry.dport,
        None => false,
    };
    if alive && epoch != 0 {
        found.set_epoch(epoch);
    }
    alive
}

/// Rewrites a tracked packet to `entry`'s tuple and sends it on: through the stack when its
/// source is still the client's, out of the device the FIB names (`direct`) when the source may
/// now be one of ours. The route is looked up first, so a hook that cannot finish the packet
/// leaves it untouched.
#[inline(always)]
fn apply<H: Hook>(ctx: &H, flow: &Flow, entry: &CtValue, direct: bool) -> Action {
    if !direct {
        return match rewrite(ctx, flow, entry) {
            Ok(()) => Action::STACK,
            Err(()) => Action::DROP,
        };
    }
    let mut fib = fib_params(flow.family, flow.proto, &entry.src, &entry.dst, ctx.ifindex());
    let Some(found) = fib_lookup(ctx, &mut fib, 0) else {
        if H::WHOLE_ONLY {
            return defer();
        }
        // The stack would drop it anyway (a local source): drop it here, counted.
        bump(H::COUNTERS.nat_failed);
        return Action::DROP;
    };
    if H::WHOLE_ONLY && !finishes(ctx, &fib, found) {
        return defer();
    }
    if rewrite(ctx, flow, entry).is_err() {
        return Action::DROP;
    }
    out(ctx, &fib, found)
}

#[inline(always)]
fn rewrite<H: Hook>(ctx: &H, flow: &Flow, entry: &CtValue) -> Result<(), ()> {
    packet::rewrite(ctx, flow, &entry.src, entry.sport, &entry.dst, entry.dport)
}

/// Whether a hook that must finish a packet itself can send it where the FIB said: the next
/// hop's MAC is known and the device takes packets from this hook.
#[inline(always)]
fn finishes<H: Hook>(ctx: &H, fib: &FibParams, found: Found) -> bool {
    matches!(found, Found::Neighbour) && ctx.can_send_out(fib.ifindex)
}

/// A packet that is not part of a tracked flow: if it is addressed to a frontend, pick a backend
/// and track the flow. Not inlined: its own stack frame keeps the program under 512 bytes.
#[inline(never)]
fn new_flow<H: Hook>(ctx: &H, flow: &Flow) -> Action {
    let hash = || flow_hash(&flow.src, flow.sport, flow.dport, flow.proto);
    // A LoadBalancer frontend whose source ranges leave this client out is, for `resolve`, no
    // frontend; `denied` tells the two apart (checked before the backend choice, so a Service
    // without endpoints drops such a client too, as kube-proxy's firewall chain comes first).
    let denied = core::cell::Cell::new(0);
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
    let (group, backend_id, backend) = match verdict {
        None if denied.get() != 0 => {
            bump(H::COUNTERS.source_denied);
            bump_service(denied.get(), H::COUNTERS.service + service_stats::SOURCE_DENIED);
            if log::enabled(denied.get()) {
                log_new_flow(flow, denied.get(), LOG_SOURCE_DENIED, &[0; 4], 0);
                return Action::DROP.logged();
            }
            return Action::DROP;
        }
        None => return Action::NEXT,
        Some(Resolved { group, verdict: Verdict::Backend(id, backend) }) => (group, id, backend),
        Some(Resolved { group, verdict: Verdict::Reject | Verdict::Unreachable }) => {
            bump(H::COUNTERS.dropped);
            bump_service(group, H::COUNTERS.service + service_stats::NO_BACKEND);
            if log::enabled(group) {
                log_new_flow(flow, group, LOG_NO_BACKEND, &[0; 4], 0);
                return Action::DROP.logged();
            }
            return Action::DROP;
        }
    };
    // The flow's tuple after translation: to the backend, from the client or (SNAT) from us:
    // towards another node's backend, and back to a client that is itself the backend (hairpin:
    // a pod reaching its own Service at its interface; kube-proxy masquerades it too), which
    // would otherwise get a packet from itself to itself and drop it.
    let snat = backend.flags & backend_flags::LOCAL == 0 || backend.addr == flow.src;
    if H::WHOLE_ONLY && !snat {
        return defer();
    }
    let now = conntrack::now();

    // Big values live in a per-CPU scratch slot, not on the 512-byte stack.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Action::DROP;
    };
    // Safety: this CPU's slot of a per-CPU array, used by this program run only (TC and XDP
    // programs run to completion on a CPU without another of ours in between), and valid until
    // the run ends.
    let scratch = unsafe { &mut *scratch };

    scratch.fib = fib_params(flow.family, flow.proto, &flow.src, &backend.addr, ctx.ifindex());
    let mut found = None;
    let mut src = flow.src;
    if snat {
        // The source this node uses towards the backend (BPF_FIB_LOOKUP_SRC, Linux 6.7+).
        found = fib_lookup(ctx, &mut scratch.fib, BPF_FIB_LOOKUP_SRC);
        match found {
            Some(f) if !H::WHOLE_ONLY || finishes(ctx, &scratch.fib, f) => {}
            _ if H::WHOLE_ONLY => return defer(),
            _ => {
                bump(H::COUNTERS.nat_failed);
                bump_service(group, H::COUNTERS.service + service_stats::NAT_FAILED);
                return Action::DROP;
            }
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
        epoch: 0,
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
        epoch: 0,
        last_seen: now,
    };
    // The source port: the client's own unless SNAT, if its reply tuple is free, else a port of
    // the SNAT range whose reply tuple is free. The client's port can be taken when the client
    // reused it for another frontend of the same backend (clients pick ports per destination):
    // both flows would have the same reply tuple, and netfilter, under kube-proxy, gives the
    // second flow another source port too. The reply entry is made first, so a concurrent flow
    // cannot take the same tuple.
    let mut sport = None;
    // A TCP packet other than a SYN that starts a flow: its original entry was evicted (or it is
    // of no flow of ours). A port of the SNAT range its reply entry still holds stays its port
    // (the backend knows the flow by it), even where an earlier candidate has come free since.
    if flow.proto == lb_common::proto::TCP && flow.tcp_flags & packet::TCP_SYN == 0 {
        let hash = hash();
        let mut tries = 0;
        while tries < SNAT_TRIES {
            let port = snat_candidate(hash, tries);
            if conntrack::holds(&reply_key(flow, &backend.addr, backend.port, &src, port), &scratch.back, now)
            {
                sport = Some(port);
                break;
            }
            tries += 1;
        }
    }
    if sport.is_none()
        && !snat
        && conntrack::claim(
            &reply_key(flow, &backend.addr, backend.port, &src, flow.sport),
            &scratch.back,
            now,
        )
        .is_ok()
    {
        sport = Some(flow.sport);
    }
    if sport.is_none() {
        let hash = hash();
        let mut tries = 0;
        while tries < SNAT_TRIES {
            let port = snat_candidate(hash, tries);
            let reply_key = reply_key(flow, &backend.addr, backend.port, &src, port);
            if conntrack::claim(&reply_key, &scratch.back, now).is_ok() {
                sport = Some(port);
                break;
            }
            tries += 1;
        }
    }
    let Some(sport) = sport else {
        bump(H::COUNTERS.nat_failed);
        bump_service(group, H::COUNTERS.service + service_stats::NAT_FAILED);
        return Action::DROP;
    };
    scratch.entry.sport = sport;
    if conntrack::open_gate(flow).is_err()
        || conntrack::store(&conntrack::key(flow, ct_dir::ORIGINAL), &scratch.entry).is_err()
    {
        bump(H::COUNTERS.nat_failed);
        bump_service(group, H::COUNTERS.service + service_stats::NAT_FAILED);
        return Action::DROP;
    }
    bump(H::COUNTERS.new_flow);
    bump_service(group, H::COUNTERS.service + service_stats::NEW_FLOW);
    let logged = log::enabled(group);
    if logged {
        let what = if snat { LOG_SNAT } else { LOG_TRANSLATED };
        log_new_flow(flow, group, what, &backend.addr, backend.port);
    }
    bump(H::COUNTERS.translated);
    if rewrite(ctx, flow, &scratch.entry).is_err() {
        return Action::DROP;
    }
    let action = match found {
        Some(found) => out(ctx, &scratch.fib, found),
        None => Action::STACK,
    };
    if logged { action.logged() } else { action }
}

/// The client of a flow for session affinity: its source address (`affinity_kind::IPV4` and
/// `IPV6` are the family numbers 4 and 6).
#[inline(always)]
fn affinity_client(flow: &Flow) -> crate::lb::Client {
    crate::lb::Client { id: flow.src, kind: flow.family }
}

/// The `tries`-th port of the SNAT range a flow with `hash` tries (network order).
#[inline(always)]
fn snat_candidate(hash: u32, tries: u32) -> u16 {
    let span = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    (SNAT_PORT_MIN + (hash.wrapping_add(tries.wrapping_mul(7919)) % span) as u16).to_be()
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
    /// Next hop's MAC known: set the MACs and send.
    Neighbour,
    /// Route found, neighbour not resolved: let `bpf_redirect_neigh` resolve it (TC only).
    Route,
}

#[inline(always)]
fn fib_lookup<H: Hook>(ctx: &H, p: &mut FibParams, flags: u32) -> Option<Found> {
    // Safety: `p` is a valid, initialised parameter block of the size passed, and the context
    // is this run's.
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
fn out<H: Hook>(ctx: &H, p: &FibParams, found: Found) -> Action {
    bump(H::COUNTERS.redirected);
    match found {
        Found::Neighbour => {
            if packet::set_macs(ctx, &p.dmac, &p.smac).is_err() {
                return Action::DROP;
            }
            Action::out(p.ifindex)
        }
        Found::Route => Action::out_resolve(p.ifindex),
    }
}
