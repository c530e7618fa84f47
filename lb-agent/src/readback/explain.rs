//! `lb-agent explain`: what the kernel does with a new connection (socket path) or a new flow
//! (packet path) to an address, and why, in plain words.
//!
//! The decision is walked in userspace over the maps as the agent reads them back (`MapState`),
//! in the kernel's order (`lb-ebpf`: `nat::new_flow`, `source_range::admitted`, `lb::resolve`):
//! frontend lookup → (packet path) source ranges → no slot: reject or drop → session affinity →
//! the slot `hash % count + 1` of the path's range → its backend. On the packet path with a client
//! port the hash is `lb_common::flow_hash`, so the slot and backend are exactly the kernel's; at
//! the socket the kernel draws a random number per connection, so only the candidates are known.
//!
//! Pure: the live tables the programs write (affinity, conntrack) come in through `LiveTables`,
//! and the time (`CLOCK_MONOTONIC_COARSE`, as `bpf_ktime_get_coarse_ns`) as an argument.
mod query;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, FrontendValue, SNAT_PORT_MAX, SNAT_PORT_MIN,
    SlotKey, affinity_kind, backend_flags, backend_state, ct_dir, ct_gate, ct_lifetime, flow_hash,
    frontend_flags,
    select::{self, WhenEmpty, in_range, slot_of, slots},
};
pub use query::{Path, Query, Source, Target};
use serde::Serialize;

use crate::layout::{
    names::ServiceLabel,
    state::{FrontendKey, MapState, backend_addr, ip4_word, ip6_words, word_ip4, words_ip6},
};
use crate::model::{Cidr, FrontendKind, Protocol};

/// The tables only the programs write, looked up by key (the agent's copy of the kernel's view).
pub trait LiveTables {
    /// `LB_AFFINITY[key]`.
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue>;
    /// `LB_CONNTRACK[key]`.
    fn flow(&self, key: &CtKey) -> Option<CtValue>;
    /// `LB_CT_GATE[index]` (`lb_common::ct_gate`); `None` when the datapath has no gate (one
    /// from before it), whose programs look every packet up.
    fn gate(&self, index: u32) -> Option<u8>;
}

/// A backend as `explain` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendView {
    pub id: u32,
    pub address: SocketAddr,
    /// `active`, or `terminating` (in a slot only as the fallback when no endpoint is ready).
    pub state: &'static str,
    /// The endpoint runs on this node (`backend_flags::LOCAL`).
    pub local: bool,
}

/// A backend this path may pick.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Eligible {
    #[serde(flatten)]
    pub backend: BackendView,
    /// Slots of the path's range naming it (1 per backend, more in a Maglev table).
    pub slots: u32,
    /// Its share of the range, in percent: the share of new connections it gets.
    pub share_percent: f64,
    /// Packet path: the packet is SNATed to this node's address (backend on another node).
    pub snat: Option<bool>,
}

/// A backend of the frontend's group that this path may not pick, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotEligible {
    #[serde(flatten)]
    pub backend: BackendView,
    pub reason: String,
}

/// How the slot is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// Socket hooks: a random slot per connection.
    Random,
    /// Packet path: the slot the flow hash names (node-independent with a Maglev table).
    FlowHash,
    /// Session affinity: the backend the client got last time.
    Affinity,
}

/// What happens to a new connection or flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Verdict {
    /// The destination is rewritten to a backend. `slot` and `backend` are set when the choice
    /// is known (flow hash with a client port, affinity, or a single candidate).
    Translate { choice: Choice, slot: Option<u32>, backend: Option<BackendView>, hash: Option<u32> },
    /// No endpoint at all (kube-proxy's REJECT).
    Reject { reason: String },
    /// Endpoints exist, none this path may use (kube-proxy's DROP).
    Drop { reason: String },
    /// Packet path: the client is outside the Service's `loadBalancerSourceRanges`.
    SourceDenied { reason: String },
    /// Not a frontend: the datapath leaves it alone.
    NotAFrontend,
    /// A frontend the path does not handle (SCTP at TC): left alone.
    Untouched { reason: String },
}

/// The frontend the destination matched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrontendView {
    pub address: SocketAddr,
    pub protocol: String,
    /// `ClusterIP`, `ExternalIP`, `LoadBalancer` or `NodePort` (from the flags).
    pub kind: Option<FrontendKind>,
    pub group: u32,
    /// `namespace/name:port` from `LB_SERVICES`.
    pub service: Option<String>,
    /// The path's slot range `first..=last` (`None` when empty).
    pub slots: Option<[u32; 2]>,
    /// `maglev` when the range repeats backends (a Maglev table), `per_backend` otherwise.
    pub table: &'static str,
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` enforced on the packet path.
    pub source_ranges: Option<Vec<String>>,
}

/// The client's session-affinity entry on the packet path.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AffinityView {
    pub backend_id: u32,
    pub backend: Option<SocketAddr>,
    pub slot: u32,
    pub idle_ms: u64,
    /// The next new flow keeps this backend.
    pub holds: bool,
    /// Why it holds or not.
    pub why: String,
}

/// The client's flow in conntrack (packet path with a client port): its packets follow the
/// entry, not a new choice, while it lives and its backend is programmed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrackedView {
    pub backend: SocketAddr,
    pub snat: Option<SocketAddr>,
    pub live: bool,
    pub backend_programmed: bool,
}

/// The answer: the verdict, the candidates, and the reasons.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub to: String,
    pub from: Option<String>,
    pub path: Path,
    /// One sentence: what happens.
    pub summary: String,
    pub verdict: Verdict,
    pub frontend: Option<FrontendView>,
    pub eligible: Vec<Eligible>,
    pub not_eligible: Vec<NotEligible>,
    pub affinity: Option<AffinityView>,
    pub tracked: Option<TrackedView>,
    pub notes: Vec<String>,
}

/// The frontend kind its flags name (first match, as `inspect` shows it).
pub fn kind_of(flags: u32) -> Option<FrontendKind> {
    [
        (frontend_flags::CLUSTER_IP, FrontendKind::ClusterIP),
        (frontend_flags::EXTERNAL_IP, FrontendKind::ExternalIP),
        (frontend_flags::LOAD_BALANCER, FrontendKind::LoadBalancer),
        (frontend_flags::NODE_PORT, FrontendKind::NodePort),
    ]
    .into_iter()
    .find(|(bit, _)| flags & bit != 0)
    .map(|(_, kind)| kind)
}

/// An address as the maps hold it (`Backend::addr`: IPv4 in `[0]`).
fn words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [ip4_word(a), 0, 0, 0],
        IpAddr::V6(a) => ip6_words(a),
    }
}

fn addr_of(family: u8, w: &[u32; 4], port: u16) -> SocketAddr {
    let ip = if family == 4 { IpAddr::V4(word_ip4(w[0])) } else { IpAddr::V6(words_ip6(*w)) };
    SocketAddr::new(ip, u16::from_be(port))
}

fn view(id: u32, b: &Backend) -> BackendView {
    BackendView {
        id,
        address: backend_addr(b),
        state: if b.state == backend_state::TERMINATING { "terminating" } else { "active" },
        local: b.flags & backend_flags::LOCAL != 0,
    }
}

/// The slot range `offset+1..=offset+count` of `group`: backend id → slots naming it, and the
/// slots that are missing or name a missing backend (never, with the agent's write order).
fn walk(state: &MapState, group: u32, offset: u32, count: u32) -> (BTreeMap<u32, u32>, Vec<u32>) {
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for slot in slots(offset, count) {
        match state.slots.get(&SlotKey { group, slot }) {
            Some(s) if state.backends.contains_key(&s.backend) => *found.entry(s.backend).or_insert(0) += 1,
            _ => missing.push(slot),
        }
    }
    (found, missing)
}

/// The slot range a path uses: `(offset, count)` (`lb_common::select`).
fn range(v: &FrontendValue, path: Path) -> (u32, u32) {
    v.slot_range(path.into())
}

/// Walks the kernel's decision for `query` over `state` (see the module doc). `now`: nanoseconds
/// of `CLOCK_MONOTONIC_COARSE`, the clock of the affinity and conntrack timestamps.
pub fn explain(state: &MapState, query: &Query, live: &impl LiveTables, now: u64) -> Explanation {
    let mut out = Explanation {
        to: query.to.to_string(),
        from: query.from.map(|f| f.to_string()),
        path: query.path,
        summary: String::new(),
        verdict: Verdict::NotAFrontend,
        frontend: None,
        eligible: Vec::new(),
        not_eligible: Vec::new(),
        affinity: None,
        tracked: None,
        notes: Vec::new(),
    };
    decide(state, query, live, now, &mut out);
    out.summary = summary(&out);
    out
}

/// Fills `out` step by step in the kernel's order; each step that ends the decision returns.
fn decide(state: &MapState, query: &Query, live: &impl LiveTables, now: u64, out: &mut Explanation) {
    let (to, protocol) = (query.to.addr, query.to.protocol);
    match query.path {
        Path::Socket => out.notes.push(
            "socket path: this node's own connect/sendmsg (host and local pods), seen by the cgroup \
             hooks before any packet exists"
                .to_owned(),
        ),
        Path::Packet => out.notes.push(
            "packet path: packets arriving on the agent's --interfaces (TC/XDP), e.g. from clients \
             outside the node"
                .to_owned(),
        ),
    }
    if query.path == Path::Packet && !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
        out.verdict = Verdict::Untouched {
            reason: format!(
                "the packet programs parse TCP and UDP only: a {protocol} packet passes untouched to the stack"
            ),
        };
        return;
    }
    if query.path == Path::Socket
        && let Some(from) = query.from
    {
        out.notes.push(format!(
            "--from {from} is not used on the socket path: a connection has no source address when \
             the hooks run (affinity goes by network namespace there)"
        ));
    }

    // The socket hooks of IPv6 look a v4-mapped destination up in the IPv4 maps.
    let lookup_addr = match (query.path, to.ip()) {
        (Path::Socket, IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                out.notes.push(format!(
                    "{} is v4-mapped: the IPv6 socket hooks look {v4} up in the IPv4 maps",
                    to.ip()
                ));
                SocketAddr::new(IpAddr::V4(v4), to.port())
            }
            None => to,
        },
        _ => to,
    };

    // The conntrack gate comes before both lookups: a destination whose slot is shut is passed.
    if query.path == Path::Packet && !gate(state, lookup_addr, protocol, live, out) {
        return;
    }

    // TC looks conntrack up first: a packet of a tracked flow keeps its backend.
    if query.path == Path::Packet
        && let Some(from) = query.from
        && let Some(sport) = from.port
    {
        tracked(state, from.addr, sport, to, protocol, live, now, out);
    }

    let key = FrontendKey::new(lookup_addr.ip(), lookup_addr.port(), protocol);
    let Some(value) = state.frontends.get(&key).copied() else {
        out.verdict = Verdict::NotAFrontend;
        let others: Vec<String> = state
            .frontends
            .keys()
            .filter(|k| k.addr().ip() == lookup_addr.ip())
            .map(|k| format!("{}/{}", k.addr(), proto_name(k.proto())))
            .collect();
        if !others.is_empty() {
            out.notes.push(format!("{} is a frontend on {} only", lookup_addr.ip(), others.join(", ")));
        }
        return;
    };
    frontend(state, &key, &value, query.path, out);

    let (offset, count) = range(&value, query.path);
    let (here, missing) = walk(state, value.group, offset, count);
    let (other_offset, other_count) = range(&value, other(query.path));
    let elsewhere = if (other_offset, other_count) == (offset, count) {
        BTreeMap::new()
    } else {
        walk(state, value.group, other_offset, other_count).0
    };
    candidates(state, &here, &elsewhere, count, query.path, out);
    if !missing.is_empty() {
        out.notes.push(format!(
            "{} slot(s) of this range are missing or name a missing backend (e.g. slot {}): the kernel \
             retries once and then refuses (lookup_miss); the agent's next sync repairs it",
            missing.len(),
            missing[0]
        ));
    }

    // TC checks the source ranges before anything else about the frontend.
    if source_ranges(state, &value, query, out) {
        return;
    }
    if count == 0 {
        out.verdict = empty(&value, query.path, !elsewhere.is_empty());
        return;
    }
    let kept = if value.affinity_timeout != 0 {
        affinity(state, &value, query, offset, count, live, now, out)
    } else {
        None
    };
    out.verdict = match kept {
        Some((slot, id)) => translate(state, Choice::Affinity, Some(slot), id, None),
        None => choose(state, &value, query, offset, count, &here, out),
    };
    if query.path == Path::Packet
        && let Verdict::Translate { backend: Some(b), .. } = &out.verdict
    {
        out.notes.push(if b.local {
            format!("{} runs on this node: DNAT only, it sees the client's address", b.address)
        } else {
            format!(
                "{} runs on another node: the packet is SNATed to this node's address (port \
                 {SNAT_PORT_MIN}–{SNAT_PORT_MAX}), so the reply comes back through this node",
                b.address
            )
        });
    }
}

/// The slot choice without affinity (`lb::select`): on the packet path with a client port, the
/// slot `offset + flow_hash % count + 1` and its backend, exactly; otherwise the candidates only
/// (`here`: backend id → slots), unless there is one.
fn choose(
    state: &MapState,
    value: &FrontendValue,
    query: &Query,
    offset: u32,
    count: u32,
    here: &BTreeMap<u32, u32>,
    out: &mut Explanation,
) -> Verdict {
    if query.path == Path::Packet
        && let Some(from) = query.from
        && let Some(sport) = from.port
    {
        // As `nat::new_flow`: the ports straight from the packet, i.e. in network byte order.
        let (dport, proto) = (query.to.addr.port().to_be(), query.to.protocol.number());
        let hash = flow_hash(&words(from.addr), sport.to_be(), dport, proto);
        // `decide` returns before with an empty range (`count == 0`): there is always a slot.
        let Some(slot) = slot_of(hash, offset, count) else {
            return Verdict::Reject { reason: "no slot on this path".to_owned() };
        };
        return match state.slots.get(&SlotKey { group: value.group, slot }).map(|s| s.backend) {
            Some(id) if state.backends.contains_key(&id) => {
                translate(state, Choice::FlowHash, Some(slot), id, Some(hash))
            }
            _ => Verdict::Reject {
                reason: format!(
                    "slot {slot} (flow hash {hash:#010x}) is missing: the kernel retries once, then refuses \
                     (lookup_miss)"
                ),
            },
        };
    }
    let choice = match query.path {
        Path::Socket => Choice::Random,
        Path::Packet => {
            out.notes.push(
                "the slot is the flow hash (client address and port, service port, protocol) modulo the \
                 range: give --from ADDR:PORT to name the exact backend"
                    .to_owned(),
            );
            Choice::FlowHash
        }
    };
    let only = if here.len() == 1 { here.keys().next().copied() } else { None };
    Verdict::Translate {
        choice,
        slot: None,
        backend: only.and_then(|id| state.backends.get(&id).map(|b| view(id, b))),
        hash: None,
    }
}

fn other(path: Path) -> Path {
    match path {
        Path::Socket => Path::Packet,
        Path::Packet => Path::Socket,
    }
}

fn proto_name(p: u8) -> String {
    Protocol::from_number(p).map_or_else(|| format!("proto {p}"), |p| p.to_string())
}

fn translate(state: &MapState, choice: Choice, slot: Option<u32>, id: u32, hash: Option<u32>) -> Verdict {
    Verdict::Translate { choice, slot, backend: state.backends.get(&id).map(|b| view(id, b)), hash }
}

/// Fills `out.frontend` and the notes about the frontend as a whole.
fn frontend(state: &MapState, key: &FrontendKey, value: &FrontendValue, path: Path, out: &mut Explanation) {
    let (offset, count) = range(value, path);
    let ranges: Vec<String> =
        state.source_ranges.iter().filter(|r| r.group == value.group).map(|r| r.cidr.to_string()).collect();
    out.frontend = Some(FrontendView {
        address: key.addr(),
        protocol: proto_name(key.proto()),
        kind: kind_of(value.flags),
        group: value.group,
        service: state.services.get(&value.group).map(|n| ServiceLabel::decode(n).to_string()),
        slots: (count != 0).then(|| [offset + 1, offset + count]),
        table: "per_backend",
        affinity_timeout: (value.affinity_timeout != 0).then_some(value.affinity_timeout),
        source_ranges: (value.flags & frontend_flags::SOURCE_RANGES != 0).then_some(ranges),
    });
    if value.slot_range(select::Path::Socket) != value.slot_range(select::Path::Packet) {
        let shown = |(offset, count): (u32, u32)| {
            if count == 0 {
                "no slot".to_owned()
            } else {
                format!("slots {}..={}", offset + 1, offset + count)
            }
        };
        out.notes.push(format!(
            "this frontend has two slot ranges: {} for this node's own connections, {} for packets from \
             outside (externalTrafficPolicy: Local)",
            shown(value.slot_range(select::Path::Socket)),
            shown(value.slot_range(select::Path::Packet))
        ));
    }
}

/// Fills the eligible and not-eligible lists and the notes about them.
fn candidates(
    state: &MapState,
    here: &BTreeMap<u32, u32>,
    elsewhere: &BTreeMap<u32, u32>,
    count: u32,
    path: Path,
    out: &mut Explanation,
) {
    for (id, slots) in here {
        let Some(b) = state.backends.get(id) else { continue };
        let backend = view(*id, b);
        out.eligible.push(Eligible {
            snat: (path == Path::Packet).then_some(!backend.local),
            backend,
            slots: *slots,
            share_percent: f64::from(*slots) * 100.0 / f64::from(count.max(1)),
        });
    }
    out.eligible.sort_by_key(|e| e.backend.address);
    let maglev = here.values().any(|n| *n > 1);
    if maglev && let Some(f) = out.frontend.as_mut() {
        f.table = "maglev";
        out.notes.push(match path {
            Path::Packet => format!(
                "the slots hold a Maglev table of {count} entries over {} backends: every node with the \
                 same endpoints picks the same backend for a flow",
                here.len()
            ),
            Path::Socket => format!(
                "the slots hold a Maglev table of {count} entries: a connection takes a random entry, so \
                 each backend gets its share of the table"
            ),
        });
    }
    if out.eligible.iter().any(|e| e.backend.state == "terminating") {
        out.notes.push(
            "terminating backends are in the slots: no endpoint of this set is ready, so the terminating \
             fallback is in use (serving, terminating endpoints take new connections)"
                .to_owned(),
        );
    }
    let here_ids: BTreeSet<&u32> = here.keys().collect();
    for id in elsewhere.keys().filter(|id| !here_ids.contains(id)) {
        let Some(b) = state.backends.get(id) else { continue };
        let backend = view(*id, b);
        let reason = match (path, backend.local) {
            (Path::Socket, _) => {
                "used only for packets from outside (the externalTrafficPolicy: Local set); \
                                  this node's own connections use the Cluster set"
                    .to_owned()
            }
            (Path::Packet, false) => {
                "not local: externalTrafficPolicy: Local lets packets from outside reach \
                                      only this node's endpoints (this node's own connections may use it)"
                    .to_owned()
            }
            (Path::Packet, true) => "not in the set for packets from outside (only this node's own \
                                     connections use it)"
                .to_owned(),
        };
        out.not_eligible.push(NotEligible { backend, reason });
    }
    out.not_eligible.sort_by_key(|n| n.backend.address);
}

/// `loadBalancerSourceRanges`: on the packet path, whether the client may start a flow (true:
/// denied, with the verdict set); notes either way.
fn source_ranges(state: &MapState, value: &FrontendValue, query: &Query, out: &mut Explanation) -> bool {
    if value.flags & frontend_flags::SOURCE_RANGES == 0 {
        return false;
    }
    let ranges: Vec<Cidr> =
        state.source_ranges.iter().filter(|r| r.group == value.group).map(|r| r.cidr).collect();
    let list = ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    match (query.path, query.from) {
        (Path::Socket, _) => {
            out.notes.push(format!(
                "loadBalancerSourceRanges ({list}) are not checked by the socket hooks: this node's own \
                 connections reach this LoadBalancer IP from any source"
            ));
            false
        }
        (Path::Packet, None) => {
            out.notes.push(format!(
                "only sources in loadBalancerSourceRanges ({list}) may start a flow: give --from to check a client"
            ));
            false
        }
        (Path::Packet, Some(from)) => match ranges.iter().find(|r| r.contains(&from.addr)) {
            Some(r) => {
                out.notes
                    .push(format!("source {} is inside loadBalancerSourceRanges {r}: admitted", from.addr));
                false
            }
            None => {
                out.verdict = Verdict::SourceDenied {
                    reason: format!(
                        "source {} is not in loadBalancerSourceRanges ({list}): the packet is dropped before \
                         any backend is chosen (tc_source_denied)",
                        from.addr
                    ),
                };
                true
            }
        },
    }
}

/// No slot on this path: reject or drop. `others`: the group has backends on the other path.
fn empty(value: &FrontendValue, path: Path, others: bool) -> Verdict {
    let drop_flag = value.when_empty() == WhenEmpty::Drop;
    match path {
        Path::Socket if drop_flag => Verdict::Drop {
            reason: "endpoints exist, but none this frontend's Local traffic policy lets this node use: \
                     connect/sendmsg fails with EHOSTUNREACH"
                .to_owned(),
        },
        Path::Socket => {
            Verdict::Reject { reason: "no endpoints: connect/sendmsg fails with ECONNREFUSED".to_owned() }
        }
        Path::Packet if others => Verdict::Drop {
            reason: "endpoints exist but none local: externalTrafficPolicy: Local lets packets from outside \
                     reach only this node's endpoints; the packet is dropped (tc_dropped)"
                .to_owned(),
        },
        Path::Packet if drop_flag => Verdict::Drop {
            reason: "endpoints exist, but none this frontend's Local traffic policy lets this node use: \
                     the packet is dropped (tc_dropped)"
                .to_owned(),
        },
        Path::Packet => Verdict::Reject {
            reason: "no endpoints: kube-proxy would answer with ICMP port unreachable (TCP: a reset); at TC \
                     the packet is dropped (tc_dropped)"
                .to_owned(),
        },
    }
}

/// Session affinity: notes, and on the packet path with a client the entry the kernel would keep:
/// `(slot, backend id)` when it holds (`lb::affine`).
#[allow(clippy::too_many_arguments, reason = "the kernel's inputs, one each")]
fn affinity(
    state: &MapState,
    value: &FrontendValue,
    query: &Query,
    offset: u32,
    count: u32,
    live: &impl LiveTables,
    now: u64,
    out: &mut Explanation,
) -> Option<(u32, u32)> {
    let timeout = value.affinity_timeout;
    out.notes.push(format!(
        "sessionAffinity: ClientIP (timeout {timeout} s): a client's new connections stay on the backend it \
         last got while it comes back within the timeout and that backend is still in its slot"
    ));
    let from = match (query.path, query.from) {
        (Path::Socket, _) => {
            out.notes.push(
                "at the socket the client is its network namespace (a pod): `lb-agent inspect affinity` \
                 shows which backend each is kept on"
                    .to_owned(),
            );
            return None;
        }
        (Path::Packet, None) => {
            out.notes.push("give --from to look up the client's affinity entry".to_owned());
            return None;
        }
        (Path::Packet, Some(from)) => from.addr,
    };
    let kind = if from.is_ipv4() { affinity_kind::IPV4 } else { affinity_kind::IPV6 };
    let key = AffinityKey { group: value.group, client: words(from), kind, pad: [0; 3] };
    let Some(entry) = live.affinity(&key) else {
        out.notes.push(format!(
            "no affinity entry for {from} yet: a new flow takes the slot of its hash, and the kernel \
             remembers the backend"
        ));
        return None;
    };
    let idle = now.saturating_sub(entry.last_used);
    let inside = in_range(entry.slot, offset, count);
    let named = state.slots.get(&SlotKey { group: value.group, slot: entry.slot }).map(|s| s.backend);
    let backend = state.backends.get(&entry.backend).map(backend_addr);
    let shown = backend.map_or_else(|| format!("backend id {}", entry.backend), |a| a.to_string());
    let (holds, why) = if !entry.fresh(now, value.affinity_timeout_ns()) {
        (
            false,
            format!("expired: {from} last connected {} s ago, more than {timeout} s", idle / 1_000_000_000),
        )
    } else if !inside {
        (false, format!("slot {} is outside this path's range", entry.slot))
    } else if named != Some(entry.backend) || backend.is_none() {
        (false, format!("slot {} no longer names {shown} (the backend set changed)", entry.slot))
    } else {
        (
            true,
            format!(
                "{from} last connected {} ms ago and slot {} still names {shown}",
                idle / 1_000_000,
                entry.slot
            ),
        )
    };
    out.notes.push(if holds {
        format!("affinity holds: {why}")
    } else {
        format!("affinity entry of {from} does not hold ({why}): a new flow picks anew and replaces it")
    });
    out.affinity = Some(AffinityView {
        backend_id: entry.backend,
        backend,
        slot: entry.slot,
        idle_ms: idle / 1_000_000,
        holds,
        why,
    });
    holds.then_some((entry.slot, entry.backend))
}

/// The packet path's conntrack gate for `to` (`lb_common::ct_gate`, `lb-ebpf`'s
/// `conntrack::may_track`): whether the programs look the packet up at all. A note says which; a
/// shut slot ends the decision (the packet passes untouched: a frontend's only if the gate is
/// damaged).
fn gate(
    state: &MapState,
    to: SocketAddr,
    protocol: Protocol,
    live: &impl LiveTables,
    out: &mut Explanation,
) -> bool {
    let key = FrontendKey::new(to.ip(), to.port(), protocol);
    let slot = key.gate_slot();
    let Some(ready) = live.gate(ct_gate::READY) else {
        out.notes.push("this datapath has no conntrack gate: every packet is looked up".to_owned());
        return true;
    };
    if ready == 0 {
        out.notes.push(
            "the conntrack gate is not ready (the agent has not yet opened the slots of what the maps \
             held when its programs took over): every packet is looked up"
                .to_owned(),
        );
        return true;
    }
    // A slot that cannot be read counts as open, as in the kernel (`may_track`).
    if live.gate(slot).is_none_or(|open| open != 0) {
        out.notes.push(format!("conntrack gate slot {slot} is open: packets to {to} are looked up"));
        return true;
    }
    out.verdict = if state.frontends.contains_key(&key) {
        Verdict::Untouched {
            reason: format!(
                "{to} is a frontend, but its conntrack gate slot {slot} is shut: the packet programs \
                 pass its packets without a lookup, untranslated (the agent opens a frontend's slot \
                 before writing it; restarting the agent fills the gate again)"
            ),
        }
    } else {
        out.notes.push(format!(
            "conntrack gate slot {slot} is shut: no frontend or tracked flow has this destination, and \
             the packet programs pass it without a lookup"
        ));
        Verdict::NotAFrontend
    };
    false
}

/// The client's flow in conntrack, as TC looks it up (after the gate) before anything else.
#[allow(clippy::too_many_arguments, reason = "the flow's tuple and the kernel's inputs")]
fn tracked(
    state: &MapState,
    src: IpAddr,
    sport: u16,
    to: SocketAddr,
    protocol: Protocol,
    live: &impl LiveTables,
    now: u64,
    out: &mut Explanation,
) {
    let family = if src.is_ipv4() { 4 } else { 6 };
    let key = CtKey {
        src: words(src),
        dst: words(to.ip()),
        sport: sport.to_be(),
        dport: to.port().to_be(),
        proto: protocol.number(),
        family,
        dir: ct_dir::ORIGINAL,
        pad: 0,
    };
    let Some(entry) = live.flow(&key) else { return };
    let live_entry = now.saturating_sub(entry.last_seen) <= ct_lifetime(key.proto, entry.flags);
    let programmed = entry.backend == 0
        || state.backends.get(&entry.backend).is_some_and(|b| b.addr == entry.dst && b.port == entry.dport);
    let backend = addr_of(family, &entry.dst, entry.dport);
    let snat =
        super::conntrack::translated_source(&key, &entry).then(|| addr_of(family, &entry.src, entry.sport));
    out.notes.push(match (live_entry, programmed) {
        (true, true) => format!(
            "this flow is already tracked: its packets go to {backend} (conntrack), whatever a new flow \
             would get; the verdict is for a new flow"
        ),
        (true, false) => format!(
            "this flow was tracked to {backend}, which is no longer programmed: its next packet starts a new flow"
        ),
        (false, _) => "this flow's conntrack entry has expired: its next packet starts a new flow".to_owned(),
    });
    out.tracked = Some(TrackedView { backend, snat, live: live_entry, backend_programmed: programmed });
}

/// The one-sentence answer.
fn summary(e: &Explanation) -> String {
    match &e.verdict {
        Verdict::Translate { choice, slot, backend, .. } => {
            let n = e.eligible.len();
            match (backend, slot, choice) {
                (Some(b), Some(slot), Choice::Affinity) => {
                    format!("translate to {} (slot {slot}, kept by session affinity)", b.address)
                }
                (Some(b), Some(slot), _) => format!("translate to {} (slot {slot}, by flow hash)", b.address),
                (Some(b), None, _) => format!("translate to {} (the only backend)", b.address),
                (None, _, Choice::Random) => {
                    format!("translate to one of {n} backends, a random slot per connection")
                }
                (None, _, _) => {
                    format!("translate to one of {n} backends, by flow hash of the client's port")
                }
            }
        }
        Verdict::Reject { reason } => format!("reject: {reason}"),
        Verdict::Drop { reason } => format!("drop: {reason}"),
        Verdict::SourceDenied { reason } => format!("dropped: {reason}"),
        Verdict::NotAFrontend => "not a frontend: passed through untouched".to_owned(),
        Verdict::Untouched { reason } => format!("passed untouched: {reason}"),
    }
}
