//! The map-level picture of the load balancer: exactly the entries of the frontend, slot,
//! backend and source-range maps. `layout` turns a `DesiredState` into one, keeping the ids that are already
//! programmed so a change rewrites only what changed and a restarted agent adopts its own maps.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::{
    Backend, Frontend4Key, Frontend6Key, FrontendValue, ServiceName, SlotKey, SlotValue, backend_flags,
    backend_state, frontend_flags,
};

use super::{maglev, names};
use crate::model::{
    BackendGroup, Cidr, DesiredState, EndpointState, FrontendKind, Protocol, Scope, WhenEmpty,
};

/// A frontend map key of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKey {
    V4(Frontend4Key),
    V6(Frontend6Key),
}

impl FrontendKey {
    pub fn new(addr: IpAddr, port: u16, protocol: Protocol) -> Self {
        let (port, proto) = (port.to_be(), protocol.number());
        match addr {
            IpAddr::V4(a) => Self::V4(Frontend4Key { addr: ip4_word(a), port, proto, pad: 0 }),
            IpAddr::V6(a) => Self::V6(Frontend6Key { addr: ip6_words(a), port, proto, pad: 0 }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::V4(k) => SocketAddr::new(IpAddr::V4(word_ip4(k.addr)), u16::from_be(k.port)),
            Self::V6(k) => SocketAddr::new(IpAddr::V6(words_ip6(k.addr)), u16::from_be(k.port)),
        }
    }

    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(k) => k.proto,
            Self::V6(k) => k.proto,
        }
    }
    /// The frontend's slot in the conntrack gate (`lb_common::ct_gate`).
    pub fn gate_slot(&self) -> u32 {
        match self {
            Self::V4(k) => lb_common::ct_gate::slot(&[k.addr, 0, 0, 0], k.port, k.proto),
            Self::V6(k) => lb_common::ct_gate::slot(&k.addr, k.port, k.proto),
        }
    }
}

/// IPv4 address as the kernel context holds it: network byte order in a native `u32`.
pub fn ip4_word(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}
pub fn word_ip4(w: u32) -> Ipv4Addr {
    Ipv4Addr::from(w.to_ne_bytes())
}
pub fn ip6_words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}
pub fn words_ip6(w: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// Builds a backend map value.
pub fn backend_value(addr: SocketAddr, protocol: u8, state: u8, flags: u8) -> Backend {
    let (words, family) = match addr.ip() {
        IpAddr::V4(a) => ([ip4_word(a), 0, 0, 0], 4),
        IpAddr::V6(a) => (ip6_words(a), 6),
    };
    Backend { addr: words, port: addr.port().to_be(), proto: protocol, family, state, flags, pad: [0; 2] }
}

/// The socket address a backend map value names.
pub fn backend_addr(b: &Backend) -> SocketAddr {
    let ip = if b.family == 6 { IpAddr::V6(words_ip6(b.addr)) } else { IpAddr::V4(word_ip4(b.addr[0])) };
    SocketAddr::new(ip, u16::from_be(b.port))
}

/// Identity of a backend entry: address, port and protocol, in 20 bytes (a `(SocketAddr, u8)`
/// takes 36, and the layout holds one per backend of the cluster). Ordered as
/// `(SocketAddr, u8)` is: IPv4 before IPv6, then address, port, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BackendIdentity {
    v6: bool,
    /// IPv4 in the first 4 bytes, the rest zero.
    ip: [u8; 16],
    port: u16,
    proto: u8,
}

impl BackendIdentity {
    pub(crate) fn new(addr: SocketAddr, proto: u8) -> Self {
        let (v6, ip) = match addr.ip() {
            IpAddr::V4(a) => {
                let mut ip = [0; 16];
                ip[..4].copy_from_slice(&a.octets());
                (false, ip)
            }
            IpAddr::V6(a) => (true, a.octets()),
        };
        Self { v6, ip, port: addr.port(), proto }
    }

    pub(crate) fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.ip))
        } else {
            IpAddr::V4(Ipv4Addr::new(self.ip[0], self.ip[1], self.ip[2], self.ip[3]))
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }

    pub(crate) fn proto(&self) -> u8 {
        self.proto
    }

    /// The lowest and highest identity with address `ip` (every port and protocol).
    pub(crate) fn bounds(ip: IpAddr) -> (Self, Self) {
        let lo = Self::new(SocketAddr::new(ip, 0), 0);
        (lo, Self { port: u16::MAX, proto: u8::MAX, ..lo })
    }
}

/// An `LB_SOURCE_RANGES` entry: sources in `cidr` may reach the LoadBalancer frontends of
/// `group` that carry `frontend_flags::SOURCE_RANGES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    pub group: u32,
    pub cidr: Cidr,
}

/// The content of the service maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    /// Backend group id → the Service port it serves (`LB_SERVICES`; the programs never read it).
    pub services: BTreeMap<u32, ServiceName>,
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    pub slots: BTreeMap<SlotKey, SlotValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub source_ranges: BTreeSet<SourceRange>,
}

/// The tree of `sorted` (sorted by key, keys distinct) with full nodes, built a part at a time
/// from the end while the vector gives back its memory: the two are never both whole (a full
/// sync of a large cluster builds its largest trees so, at the agent's peak of memory). Each
/// part merges the tree built so far again: 8 parts at most.
pub(crate) fn tree_of_sorted<K: Ord, V>(sorted: Vec<(K, V)>) -> BTreeMap<K, V> {
    tree_in_parts(sorted, |_, _| false, |part| part.collect())
}

/// The tree `part_tree` makes of `sorted`, a part at a time from the end as in `tree_of_sorted`;
/// items `together` with the one after them stay in one part (`part_tree` may merge them into
/// one entry), and the parts' keys must not overlap.
pub(crate) fn tree_in_parts<T, K: Ord, V>(
    mut sorted: Vec<T>,
    together: impl Fn(&T, &T) -> bool,
    mut part_tree: impl FnMut(std::vec::Drain<'_, T>) -> BTreeMap<K, V>,
) -> BTreeMap<K, V> {
    let part = (sorted.len() / 8).max(4096);
    let mut tree = BTreeMap::new();
    while !sorted.is_empty() {
        let mut at = sorted.len().saturating_sub(part);
        while at > 0 && together(&sorted[at - 1], &sorted[at]) {
            at -= 1;
        }
        let mut front = part_tree(sorted.drain(at..));
        sorted.shrink_to_fit();
        front.append(&mut tree);
        tree = front;
    }
    tree
}

/// Hands out the lowest id that is neither programmed nor already given out in this layout, so
/// an id freed by this change is never reused by it (a frontend still pointing at the old owner
/// would briefly see the new owner's slots).
pub(crate) struct Ids {
    taken: BTreeSet<u32>,
    next: u32,
}

impl Ids {
    fn new(taken: impl IntoIterator<Item = u32>) -> Self {
        Self { taken: taken.into_iter().collect(), next: 1 }
    }
    fn claim(&mut self, id: u32) -> bool {
        self.taken.insert(id)
    }
    fn allocate(&mut self) -> u32 {
        while self.taken.contains(&self.next) {
            self.next += 1;
        }
        self.taken.insert(self.next);
        self.next
    }
}

/// Lays `desired` out as map entries, reusing the ids found in `programmed`. NodePort frontends
/// are expanded to `desired.node_addresses`; a group with `WhenEmpty::Drop` and no eligible
/// backend gets `DROP_WHEN_EMPTY` in its frontends' flags.
#[cfg_attr(not(test), allow(dead_code, reason = "the agent lays out through `Syncer`; tests use this"))]
pub fn layout(desired: &DesiredState, programmed: &MapState) -> MapState {
    layout_reserving(desired, programmed, &Reserved::default(), &LayoutOptions::default())
}

/// How the kernel picks among a group's backends (`--lb-algorithm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LbAlgorithm {
    /// A random backend per connection: one slot per backend.
    #[default]
    Random,
    /// Maglev consistent hashing of the 5-tuple for NodePort, externalIP and LoadBalancer
    /// traffic, so every node picks the same backend for a flow; ClusterIPs stay random.
    Maglev,
}

/// What `layout` needs besides the desired state: how a group's slots are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutOptions {
    pub algorithm: LbAlgorithm,
    /// Slots of a Maglev group (`maglev::is_valid_size`); unused with `Random`.
    pub maglev_size: u32,
}

impl Default for LayoutOptions {
    fn default() -> Self {
        Self { algorithm: LbAlgorithm::Random, maglev_size: maglev::DEFAULT_SIZE }
    }
}

impl LayoutOptions {
    /// Whether `group`'s slots hold a Maglev table. Only `External` groups: their traffic will
    /// arrive per packet (TC/XDP) at whichever node the network picks, so every node must choose
    /// the same backend for a flow. A ClusterIP is only reached from the client's own node, at
    /// connect time, where a random choice is as good and costs one slot per backend.
    pub fn maglev(&self, group: &BackendGroup) -> bool {
        self.algorithm == LbAlgorithm::Maglev && group.scope == Scope::External
    }
}

/// Ids freed recently that must not be handed out yet: a program that read the old frontend
/// just before the change may still look up that id's slots or backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    pub groups: BTreeSet<u32>,
    pub backends: BTreeSet<u32>,
}

/// As `layout`, never allocating a new id from `reserved`, filling slots as `options` say.
pub fn layout_reserving(
    desired: &DesiredState,
    programmed: &MapState,
    reserved: &Reserved,
    options: &LayoutOptions,
) -> MapState {
    layout_placed(desired, programmed, reserved, options).0
}

/// Where one group went: its id and frontend keys (`None`: no frontend on this node, so no id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub id: Option<u32>,
    pub keys: Vec<(FrontendKey, FrontendKind)>,
}

/// A group's backends with the state it gives each: the lowest of its entries (active before
/// terminating); a backend only in `eligible` or `from_node` is active. With each, whether the
/// group lists it as a backend on this node (`BackendInfo::local`).
pub(crate) fn backend_uses(group: &BackendGroup) -> BTreeMap<BackendIdentity, (u8, bool)> {
    let proto = group.service.protocol.number();
    let mut uses: BTreeMap<BackendIdentity, (u8, bool)> = BTreeMap::new();
    for info in &group.backends {
        let state = match info.state {
            EndpointState::Active => backend_state::ACTIVE,
            EndpointState::Terminating => backend_state::TERMINATING,
        };
        uses.entry(BackendIdentity::new(info.addr, proto))
            .and_modify(|(s, local)| (*s, *local) = ((*s).min(state), *local || info.local))
            .or_insert((state, info.local));
    }
    for addr in group.eligible.iter().chain(group.from_node.iter()) {
        uses.entry(BackendIdentity::new(*addr, proto)).or_insert((backend_state::ACTIVE, false));
    }
    uses
}

/// A group's frontends at an explicit address (all but the NodePort).
pub(crate) fn explicit_keys(group: &BackendGroup) -> impl Iterator<Item = FrontendKey> + '_ {
    group
        .frontends
        .iter()
        .filter(|f| !f.on_every_node_address())
        .map(|f| FrontendKey::new(f.addr, f.port, f.protocol))
}

/// A group's frontend keys: a NodePort (unspecified address) becomes one key per node address of
/// its family, except where `explicit` says an explicit frontend (ClusterIP, externalIP,
/// LoadBalancer IP) has that address:port/proto: it wins, as kube-proxy's service rules come
/// before its NodePort jump. `take` claims a key (false: an earlier group has it).
pub(crate) fn frontend_keys(
    group: &BackendGroup,
    node_addresses: &[IpAddr],
    explicit: &dyn Fn(&FrontendKey) -> bool,
    take: &mut dyn FnMut(FrontendKey) -> bool,
) -> Vec<(FrontendKey, FrontendKind)> {
    let mut keys = Vec::new();
    for f in &group.frontends {
        if f.on_every_node_address() {
            for addr in node_addresses.iter().filter(|a| a.is_ipv4() == f.addr.is_ipv4()) {
                let key = FrontendKey::new(*addr, f.port, f.protocol);
                if !explicit(&key) && take(key) {
                    keys.push((key, f.kind));
                }
            }
        } else {
            let key = FrontendKey::new(f.addr, f.port, f.protocol);
            if take(key) {
                keys.push((key, f.kind));
            }
        }
    }
    keys
}

/// The programmed id a group with frontends `keys` keeps: one its programmed frontends point at,
/// not `reused` by another group yet, whose programmed frontends (`owners`) all belong to this
/// group (otherwise another Service's frontend would see this group's slots until it is deleted).
pub(crate) fn kept_id(
    keys: &[(FrontendKey, FrontendKind)],
    programmed: &BTreeMap<FrontendKey, FrontendValue>,
    owners: &HashMap<u32, Vec<FrontendKey>>,
    reused: &BTreeSet<u32>,
) -> Option<u32> {
    keys.iter().filter_map(|(k, _)| programmed.get(k).map(|v| v.group)).find(|id| {
        !reused.contains(id)
            && owners.get(id).is_some_and(|o| o.iter().all(|k| keys.iter().any(|(key, _)| key == k)))
    })
}

/// The backend entry of `identity` with the state its groups give it and `LOCAL` when its
/// address is a backend on this node in some group.
pub(crate) fn backend_entry(identity: &BackendIdentity, state: u8, local: bool) -> Backend {
    let flags = if local { backend_flags::LOCAL } else { 0 };
    backend_value(identity.addr(), identity.proto(), state, flags)
}

/// Lays `desired` out (see `layout_reserving`), also saying where each group went.
pub fn layout_placed(
    desired: &DesiredState,
    programmed: &MapState,
    reserved: &Reserved,
    options: &LayoutOptions,
) -> (MapState, Vec<Placement>) {
    let groups: Vec<&BackendGroup> = desired.groups.iter().collect();
    layout_groups(&groups, &desired.node_addresses, programmed, reserved, options)
}

/// As `layout_placed`, for the desired state's `groups` (in its order) and `node_addresses`
/// (wherever the groups are kept: no copy of them is made).
pub fn layout_groups(
    groups: &[&BackendGroup],
    node_addresses: &[IpAddr],
    programmed: &MapState,
    reserved: &Reserved,
    options: &LayoutOptions,
) -> (MapState, Vec<Placement>) {
    let mut out = MapState::default();

    // Backends: one entry per (address, port, protocol), shared by every group that uses it.
    // (Sorted vectors, not trees and hash maps: a full sync of a large cluster lays out every
    // backend at once, and this is its peak of memory.)
    let programmed_backends: HashMap<BackendIdentity, u32> = programmed
        .backends
        .iter()
        .map(|(id, b)| (BackendIdentity::new(backend_addr(b), b.proto), *id))
        .collect();
    let mut uses: Vec<(BackendIdentity, u8)> = Vec::new();
    let mut local: Vec<IpAddr> = Vec::new();
    for group in groups {
        local.extend(group.backends.iter().filter(|b| b.local).map(|b| b.addr.ip()));
        uses.extend(backend_uses(group).into_iter().map(|(identity, (state, _))| (identity, state)));
    }
    local.sort_unstable();
    local.dedup();
    // Each backend's state: the lowest any group gives it (sorted by identity, then state).
    uses.sort_unstable();
    uses.dedup_by(|later, first| later.0 == first.0);
    let mut backend_ids = Ids::new(programmed.backends.keys().chain(&reserved.backends).copied());
    // (identity, id), sorted by identity.
    let ids: Vec<(BackendIdentity, u32)> = uses
        .iter()
        .map(|(identity, _)| {
            let id = match programmed_backends.get(identity) {
                Some(id) => *id,
                None => backend_ids.allocate(),
            };
            (*identity, id)
        })
        .collect();
    drop(programmed_backends);
    let mut entries: Vec<(u32, Backend)> = uses
        .iter()
        .zip(&ids)
        .map(|((identity, state), (_, id))| {
            (*id, backend_entry(identity, *state, local.binary_search(&identity.ip()).is_ok()))
        })
        .collect();
    drop((uses, local));
    entries.sort_unstable_by_key(|(id, _)| *id);
    out.backends = tree_of_sorted(entries);
    let id_of = |identity: &BackendIdentity| -> u32 {
        ids.binary_search_by(|(i, _)| i.cmp(identity)).map_or(0, |at| ids[at].1)
    };

    // Frontend keys per group; the first group wins a key (translate refuses such conflicts).
    let explicit: BTreeSet<FrontendKey> = groups.iter().flat_map(|g| explicit_keys(g)).collect();
    let mut taken: BTreeSet<FrontendKey> = BTreeSet::new();
    let group_keys: Vec<Vec<(FrontendKey, FrontendKind)>> = groups
        .iter()
        .map(|group| {
            frontend_keys(group, node_addresses, &|k| explicit.contains(k), &mut |k| taken.insert(k))
        })
        .collect();

    // Groups: keep the id a group's frontends already point at, if no other group took it.
    let mut group_ids = Ids::new(
        programmed
            .frontends
            .values()
            .map(|v| v.group)
            .chain(programmed.slots.keys().map(|k| k.group))
            .chain(programmed.source_ranges.iter().map(|r| r.group))
            .chain(programmed.services.keys().copied())
            .chain(reserved.groups.iter().copied()),
    );
    let mut reused = BTreeSet::new();
    let mut owners: HashMap<u32, Vec<FrontendKey>> = HashMap::new();
    for (key, value) in &programmed.frontends {
        owners.entry(value.group).or_default().push(*key);
    }
    let mut placements = Vec::with_capacity(groups.len());
    // Each group is laid out on its own and its entries gathered in vectors, the trees built
    // whole at the end: grown entry by entry, they would hold about twice the memory (half-full
    // nodes) at the full sync's peak. Group ids, so the entries' keys, are distinct.
    let mut one = MapState::default();
    let mut slots: Vec<(SlotKey, SlotValue)> = Vec::new();
    let mut services: Vec<(u32, ServiceName)> = Vec::new();
    let mut frontends: Vec<(FrontendKey, FrontendValue)> = Vec::new();
    let mut ranges: Vec<SourceRange> = Vec::new();
    for (group, keys) in groups.iter().zip(group_keys) {
        // No frontend on this node (a NodePort-only group and no node address of its family):
        // no id and no slots, which nothing could reach.
        if keys.is_empty() {
            placements.push(Placement { id: None, keys });
            continue;
        }
        let id = match kept_id(&keys, &programmed.frontends, &owners, &reused) {
            Some(id) => {
                reused.insert(id);
                group_ids.claim(id);
                id
            }
            None => group_ids.allocate(),
        };
        lay_group(&mut one, group, id, &keys, &id_of, node_addresses, options);
        slots.extend(std::mem::take(&mut one.slots));
        services.extend(std::mem::take(&mut one.services));
        frontends.extend(std::mem::take(&mut one.frontends));
        ranges.extend(std::mem::take(&mut one.source_ranges));
        placements.push(Placement { id: Some(id), keys });
    }
    slots.sort_unstable_by_key(|(k, _)| *k);
    out.slots = tree_of_sorted(slots);
    services.sort_unstable_by_key(|(id, _)| *id);
    out.services = tree_of_sorted(services);
    frontends.sort_unstable_by_key(|(k, _)| *k);
    out.frontends = tree_of_sorted(frontends);
    out.source_ranges = ranges.into_iter().collect();
    (out, placements)
}

/// Writes the entries of `group` under group id `id` with frontend `keys` into `out`: its slots
/// (backend ids from `id_of`), source ranges, service name and frontends.
pub(crate) fn lay_group(
    out: &mut MapState,
    group: &BackendGroup,
    id: u32,
    keys: &[(FrontendKey, FrontendKind)],
    id_of: &dyn Fn(&BackendIdentity) -> u32,
    node_addresses: &[IpAddr],
    options: &LayoutOptions,
) {
    let proto = group.service.protocol.number();
    let ids_of = |set: &[SocketAddr]| -> Vec<u32> {
        set.iter().map(|addr| id_of(&BackendIdentity::new(*addr, proto))).collect()
    };
    // Maglev: slot i+1 holds table entry i, which depends only on the backend set, so a
    // backend change rewrites only the slots whose entry changed (about 1/N of them).
    let maglev_slots = |set: &[SocketAddr]| -> Vec<u32> {
        let ids = ids_of(set);
        maglev::table(set, options.maglev_size).into_iter().map(|i| ids[i]).collect()
    };
    // The socket hooks see only this node's own connections: they use `from_node`. Packets
    // from outside (TC/XDP) use `eligible`; both are one range unless they differ (an
    // external group with a Local policy).
    let sorted = |set: &[SocketAddr]| -> BTreeSet<SocketAddr> { set.iter().copied().collect() };
    // (The sets are sorted vectors: equal vectors are the common case, compared without sets.)
    let shared = group.from_node == group.eligible || sorted(&group.from_node) == sorted(&group.eligible);
    let socket_slots =
        if options.maglev(group) { maglev_slots(&group.from_node) } else { ids_of(&group.from_node) };
    let packet_slots = if shared {
        Vec::new()
    } else if options.maglev(group) {
        maglev_slots(&group.eligible)
    } else {
        ids_of(&group.eligible)
    };
    for (slot, backend) in (1u32..).zip(socket_slots.iter().chain(&packet_slots)) {
        out.slots.insert(SlotKey { group: id, slot }, SlotValue { backend: *backend });
    }
    let count = u32::try_from(socket_slots.len()).unwrap_or(u32::MAX);
    let (ext_offset, ext_count) =
        if shared { (0, count) } else { (count, u32::try_from(packet_slots.len()).unwrap_or(u32::MAX)) };
    // Rule 40 against 39: with no slot, drop (EHOSTUNREACH) rather than refuse.
    let drop = if group.from_node.is_empty() && group.when_empty == WhenEmpty::Drop {
        frontend_flags::DROP_WHEN_EMPTY
    } else {
        0
    };
    // Rule 10: the Service's source ranges gate its LoadBalancer frontends only. kube-proxy
    // also lets in packets from the LB IPs themselves when a node address is in a range
    // (a VIP bound on the node loops back with itself as source).
    let gated = !group.source_ranges.is_empty() && keys.iter().any(|(_, k)| *k == FrontendKind::LoadBalancer);
    if gated {
        out.source_ranges.extend(group.source_ranges.iter().map(|&cidr| SourceRange { group: id, cidr }));
        let node_inside = node_addresses.iter().any(|a| group.source_ranges.iter().any(|r| r.contains(a)));
        if node_inside {
            let vips = keys.iter().filter(|(_, k)| *k == FrontendKind::LoadBalancer);
            out.source_ranges
                .extend(vips.map(|(key, _)| SourceRange { group: id, cidr: Cidr::host(key.addr().ip()) }));
        }
    }
    out.services.insert(id, names::encode(group));
    for (key, kind) in keys {
        let ranges =
            if gated && *kind == FrontendKind::LoadBalancer { frontend_flags::SOURCE_RANGES } else { 0 };
        let value = FrontendValue {
            group: id,
            count,
            flags: kind.flag() | drop | ranges,
            affinity_timeout: group.affinity_timeout.unwrap_or(0),
            ext_offset,
            ext_count,
        };
        out.frontends.insert(*key, value);
    }
}

impl MapState {
    /// The entries no frontend reaches: groups (slots, names, source ranges) no frontend names
    /// and backends no reached slot names. A state the agent laid out has none; maps read back
    /// after an apply that failed part-way hold what it wrote ahead of the frontends that were to
    /// use it.
    pub fn unreachable(&self) -> MapState {
        let groups: BTreeSet<u32> = self.frontends.values().map(|v| v.group).collect();
        let named: BTreeSet<u32> =
            self.slots.iter().filter(|(k, _)| groups.contains(&k.group)).map(|(_, v)| v.backend).collect();
        MapState {
            services: self
                .services
                .iter()
                .filter(|(g, _)| !groups.contains(g))
                .map(|(g, n)| (*g, *n))
                .collect(),
            frontends: BTreeMap::new(),
            slots: self
                .slots
                .iter()
                .filter(|(k, _)| !groups.contains(&k.group))
                .map(|(k, v)| (*k, *v))
                .collect(),
            backends: self
                .backends
                .iter()
                .filter(|(id, _)| !named.contains(id))
                .map(|(id, b)| (*id, *b))
                .collect(),
            source_ranges: self
                .source_ranges
                .iter()
                .filter(|r| !groups.contains(&r.group))
                .copied()
                .collect(),
        }
    }
}

#[cfg(test)]
impl MapState {
    /// Checks the invariant the kernel relies on: every frontend's group has its name and
    /// counters entry (so its connections are counted from the first), its slots `1..=count` and
    /// `ext_offset+1..=ext_offset+ext_count` exist and name existing backends, and a frontend
    /// flagged `SOURCE_RANGES` has at least one range under its group (or it would drop every
    /// client). Returns the first violation.
    pub fn check(&self) -> Result<(), String> {
        for (key, value) in &self.frontends {
            if !self.services.contains_key(&value.group) {
                return Err(format!("{} group {}: no service name (nor counters)", key.addr(), value.group));
            }
            if value.flags & frontend_flags::SOURCE_RANGES != 0
                && !self.source_ranges.iter().any(|r| r.group == value.group)
            {
                return Err(format!(
                    "{} group {}: source ranges flagged, none present",
                    key.addr(),
                    value.group
                ));
            }
            let packet = value.ext_offset + 1..=value.ext_offset + value.ext_count;
            for slot in (1..=value.count).chain(packet) {
                let slot_key = SlotKey { group: value.group, slot };
                let Some(s) = self.slots.get(&slot_key) else {
                    return Err(format!(
                        "{} group {} count {}: slot {slot} missing",
                        key.addr(),
                        value.group,
                        value.count
                    ));
                };
                if !self.backends.contains_key(&s.backend) {
                    return Err(format!(
                        "{} group {} slot {slot}: backend {} missing",
                        key.addr(),
                        value.group,
                        s.backend
                    ));
                }
            }
        }
        Ok(())
    }
}
