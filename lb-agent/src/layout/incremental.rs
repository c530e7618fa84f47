//! Incremental layout: where every group of the desired state went (id, frontend keys), how
//! many groups use each backend, and the entries of only the groups a change touched laid out
//! again, with the same pieces as `state::layout_placed`.
//!
//! What a group's entries depend on beyond the group itself, and how it is followed here:
//! - its backends' ids and entries: a backend entry's state is the lowest any group gives it
//!   and it carries `LOCAL` when its address is local in any group: counted per backend (an
//!   address is local while one of its backends is counted local), so a change rewrites exactly
//!   the backend entries whose state or flags moved;
//! - its NodePort keys: a node address:port that another group has as an explicit frontend is
//!   that group's: explicit keys are counted, and a NodePort group is laid out again when an
//!   explicit key on a node address with its port appears or goes;
//! - the node's addresses: a change of them is a full layout (`update` refuses it).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{FrontendValue, SlotKey, backend_state};

use super::state::{
    BackendIdentity, FrontendKey, LayoutOptions, MapState, Placement, Reserved, SourceRange, backend_entry,
    backend_uses, explicit_keys, frontend_keys, kept_id, lay_group, tree_in_parts,
};
use crate::model::{
    BackendGroup, Cidr, ServiceKey,
    incremental::{Changed, Translator},
};

/// How many groups use a backend, by the state they give it, how many list it as a backend on
/// this node, and its id.
#[derive(Clone, Copy, Debug, Default)]
struct BackendUse {
    id: Option<u32>,
    active: u32,
    terminating: u32,
    /// Groups listing it on this node (`BackendInfo::local`): its address is local while some
    /// backend with that address has one.
    local: u32,
}

/// The layout of the desired state, by Service key, kept up to date incrementally.
#[derive(Debug, Default)]
pub struct LayoutIndex {
    node_addresses: Vec<IpAddr>,
    placed: HashMap<ServiceKey, Vec<Placement>>,
    backends: BTreeMap<BackendIdentity, BackendUse>,
    /// Explicit frontends (all but NodePorts) of the groups, counted.
    explicit: HashMap<FrontendKey, u32>,
    /// Keys with a NodePort group, by (node port, protocol number, IPv4).
    node_ports: HashMap<(u16, u8, bool), BTreeSet<ServiceKey>>,
    group_ids: IdPool,
    backend_ids: IdPool,
    /// IPv4 frontends programmed (for the capacity check).
    frontends_v4: usize,
}

/// The entries a change replaces (`before`, as programmed) and their replacement (`after`):
/// `diff(before, after)` is the change's ordered writes. Backends the slots of either side
/// name are in both sides (unchanged ones equal), so each side serves its frontends whole.
#[derive(Clone, Debug, Default)]
pub struct Parts {
    pub before: MapState,
    pub after: MapState,
    /// Keys laid out again.
    pub relaid: usize,
}

/// One group's use of a backend (the state it gives it, whether it lists it on this node)
/// counted in or out.
fn count(u: &mut BackendUse, (state, local): (u8, bool), add: bool) {
    let n = if state == backend_state::ACTIVE { &mut u.active } else { &mut u.terminating };
    let counters = std::iter::once(n).chain(local.then_some(&mut u.local));
    for n in counters {
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
    }
}

/// Every backend's uses (`uses`, sorted by backend) counted, as a tree with full nodes built a
/// part at a time while the vector gives back its memory (`state::tree_in_parts`: never the
/// vector and the tree both whole); a backend's uses are counted in one part.
fn counted(uses: Vec<(BackendIdentity, (u8, bool))>) -> BTreeMap<BackendIdentity, BackendUse> {
    tree_in_parts(
        uses,
        |a, b| a.0 == b.0,
        |part| {
            let mut front: Vec<(BackendIdentity, BackendUse)> = Vec::new();
            for (identity, used) in part {
                if front.last().is_none_or(|(last, _)| *last != identity) {
                    front.push((identity, BackendUse::default()));
                }
                if let Some((_, u)) = front.last_mut() {
                    count(u, used, true);
                }
            }
            front.into_iter().collect()
        },
    )
}

fn node_port_keys(group: &BackendGroup) -> impl Iterator<Item = (u16, u8, bool)> + '_ {
    group
        .frontends
        .iter()
        .filter(|f| f.on_every_node_address())
        .map(|f| (f.port, f.protocol.number(), f.addr.is_ipv4()))
}

/// The ids of one map (groups or backends): every id from `high` up is free, and below it
/// exactly those in `free` (ids freed since, some still quarantined). Allocation takes the
/// lowest free id that is neither programmed nor reserved, without scanning the ids in use.
#[derive(Debug, Default)]
struct IdPool {
    free: BTreeSet<u32>,
    high: u32,
}

impl IdPool {
    fn from_used(used: impl Iterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.collect();
        let high = used.last().map_or(1, |m| m.saturating_add(1));
        Self { free: (1..high).filter(|id| !used.contains(id)).collect(), high }
    }

    fn release(&mut self, id: u32) {
        if id < self.high {
            self.free.insert(id);
        }
    }

    /// One id for a change that has handed out ids up to `cursor` (ids are handed out in
    /// increasing order within a change, so quarantined ids are passed over once per change).
    fn allocate(
        &mut self,
        cursor: &mut u32,
        programmed: impl Fn(u32) -> bool,
        reserved: impl Fn(u32) -> bool,
    ) -> u32 {
        let found = self.free.range(*cursor..).copied().find(|id| !reserved(*id) && !programmed(*id));
        let id = match found {
            Some(id) => {
                self.free.remove(&id);
                id
            }
            None => {
                self.high = self.high.max(*cursor).max(1);
                while programmed(self.high) || reserved(self.high) {
                    self.high += 1;
                }
                self.high += 1;
                self.high - 1
            }
        };
        *cursor = id + 1;
        id
    }
}

impl LayoutIndex {
    /// The index of a full layout: `groups` (key, group) in the desired state's order, placed
    /// as `placements` say, into `target`.
    pub fn new<'a>(
        groups: impl Iterator<Item = (&'a ServiceKey, &'a BackendGroup)>,
        placements: Vec<Placement>,
        target: &MapState,
        node_addresses: Vec<IpAddr>,
    ) -> Self {
        let mut index = Self {
            node_addresses,
            group_ids: IdPool::from_used(target.services.keys().copied()),
            backend_ids: IdPool::from_used(target.backends.keys().copied()),
            ..Self::default()
        };
        // What `add_group` does for each group, with the backends' uses gathered in a vector
        // and their tree built whole at the end (grown entry by entry, its nodes would be half
        // full, and a full sync is the agent's peak of memory).
        let mut uses: Vec<(BackendIdentity, (u8, bool))> = Vec::new();
        for ((key, group), placement) in groups.zip(placements) {
            uses.extend(backend_uses(group));
            for k in explicit_keys(group) {
                *index.explicit.entry(k).or_default() += 1;
            }
            for np in node_port_keys(group) {
                index.node_ports.entry(np).or_default().insert(key.clone());
            }
            match index.placed.get_mut(key) {
                Some(placed) => placed.push(placement),
                None => {
                    index.placed.insert(key.clone(), vec![placement]);
                }
            }
        }
        uses.sort_unstable_by_key(|(identity, _)| *identity);
        index.backends = counted(uses);
        index.placed = std::mem::take(&mut index.placed).into_iter().collect();
        for placed in index.placed.values_mut() {
            placed.shrink_to_fit();
        }
        index.explicit.shrink_to_fit();
        for (id, b) in &target.backends {
            if let Some(u) =
                index.backends.get_mut(&BackendIdentity::new(super::state::backend_addr(b), b.proto))
            {
                u.id = Some(*id);
            }
        }
        index.frontends_v4 = target.frontends.keys().filter(|k| matches!(k, FrontendKey::V4(_))).count();
        index
    }

    pub fn node_addresses(&self) -> &[IpAddr] {
        &self.node_addresses
    }

    /// IPv4 and IPv6 frontends programmed.
    pub fn frontends_v4(&self) -> usize {
        self.frontends_v4
    }

    /// Whether some group lists a backend at `ip` on this node (its entries carry `LOCAL`).
    fn ip_local(&self, ip: IpAddr) -> bool {
        let (lo, hi) = BackendIdentity::bounds(ip);
        self.backends.range(lo..=hi).any(|(_, u)| u.local > 0)
    }

    fn add_group(
        &mut self,
        key: &ServiceKey,
        group: &BackendGroup,
        touched: &mut BTreeSet<BackendIdentity>,
        ips: &mut BTreeSet<IpAddr>,
        explicit: &mut BTreeSet<FrontendKey>,
    ) {
        for (identity, used) in backend_uses(group) {
            // An address that was not local and is now.
            if used.1 && !self.ip_local(identity.ip()) {
                ips.insert(identity.ip());
            }
            count(self.backends.entry(identity).or_default(), used, true);
            touched.insert(identity);
        }
        for k in explicit_keys(group) {
            let n = self.explicit.entry(k).or_default();
            *n += 1;
            if *n == 1 {
                explicit.insert(k);
            }
        }
        for np in node_port_keys(group) {
            self.node_ports.entry(np).or_default().insert(key.clone());
        }
    }

    fn remove_group(
        &mut self,
        key: &ServiceKey,
        group: &BackendGroup,
        touched: &mut BTreeSet<BackendIdentity>,
        ips: &mut BTreeSet<IpAddr>,
        explicit: &mut BTreeSet<FrontendKey>,
    ) {
        for (identity, used) in backend_uses(group) {
            if let Some(u) = self.backends.get_mut(&identity) {
                count(u, used, false);
            }
            // An address that was local and is not any more.
            if used.1 && !self.ip_local(identity.ip()) {
                ips.insert(identity.ip());
            }
            touched.insert(identity);
        }
        for k in explicit_keys(group) {
            if let Some(n) = self.explicit.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.explicit.remove(&k);
                    explicit.insert(k);
                }
            }
        }
        for np in node_port_keys(group) {
            if let Some(set) = self.node_ports.get_mut(&np) {
                set.remove(key);
                if set.is_empty() {
                    self.node_ports.remove(&np);
                }
            }
        }
    }

    /// Lays out again the groups of `changed` (their new groups from `translator`) and those
    /// whose NodePort keys the change moves; returns the entries replaced and their
    /// replacement. `programmed` is what the maps hold (consistent: every group id in use has
    /// its service entry), `reserved` the ids not to hand out yet.
    pub fn update(
        &mut self,
        changed: &[Changed],
        translator: &Translator,
        programmed: &MapState,
        reserved: &Reserved,
        options: &LayoutOptions,
    ) -> Parts {
        let (mut touched, mut ips, mut explicit) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut old: BTreeMap<ServiceKey, Vec<Placement>> = BTreeMap::new();
        for c in changed {
            for g in &c.before {
                self.remove_group(&c.key, g, &mut touched, &mut ips, &mut explicit);
            }
            old.insert(c.key.clone(), self.placed.remove(&c.key).unwrap_or_default());
        }
        for c in changed {
            for g in translator.groups(&c.key) {
                self.add_group(&c.key, g, &mut touched, &mut ips, &mut explicit);
            }
        }
        // NodePort groups whose keys an explicit frontend on a node address took or gave back.
        for k in &explicit {
            let addr = k.addr();
            if !self.node_addresses.contains(&addr.ip()) {
                continue;
            }
            let np = (addr.port(), k.proto(), addr.is_ipv4());
            for key in self.node_ports.get(&np).into_iter().flatten() {
                if !old.contains_key(key) {
                    old.insert(key.clone(), self.placed.remove(key).unwrap_or_default());
                }
            }
        }
        // Backends whose `LOCAL` flag moved.
        for ip in &ips {
            let (lo, hi) = BackendIdentity::bounds(*ip);
            touched.extend(self.backends.range(lo..=hi).map(|(k, _)| *k));
        }

        let mut parts = Parts { relaid: old.len(), ..Parts::default() };
        let mut owners: HashMap<u32, Vec<FrontendKey>> = HashMap::new();
        for placement in old.values().flatten() {
            let Some(id) = placement.id else { continue };
            owners.insert(id, placement.keys.iter().map(|(k, _)| *k).collect());
            let before = &mut parts.before;
            for (k, _) in &placement.keys {
                if let Some(v) = programmed.frontends.get(k) {
                    before.frontends.insert(*k, *v);
                }
            }
            let slots = SlotKey { group: id, slot: 0 }..=SlotKey { group: id, slot: u32::MAX };
            before.slots.extend(programmed.slots.range(slots));
            let (lo, hi) = (Cidr::host(IpAddr::from([0u8; 4])), Cidr::host(IpAddr::from([0xffu8; 16])));
            let ranges = SourceRange { group: id, cidr: Cidr { prefix: 0, ..lo } }..=SourceRange {
                group: id,
                cidr: Cidr { prefix: u8::MAX, ..hi },
            };
            before.source_ranges.extend(programmed.source_ranges.range(ranges));
            if let Some(name) = programmed.services.get(&id) {
                before.services.insert(id, *name);
            }
        }

        // Backends: the touched ones written anew, or deleted when no group uses them.
        let mut cursor = 0;
        let mut deleted = Vec::new();
        for identity in &touched {
            let Some(u) = self.backends.get(identity).copied() else { continue };
            if let Some(id) = u.id
                && let Some(b) = programmed.backends.get(&id)
            {
                parts.before.backends.insert(id, *b);
            }
            if u.active + u.terminating == 0 {
                deleted.push(*identity);
                if let Some(id) = u.id {
                    self.backend_ids.release(id);
                }
                continue;
            }
            let id = match u.id {
                Some(id) => id,
                None => self.backend_ids.allocate(
                    &mut cursor,
                    |id| programmed.backends.contains_key(&id),
                    |id| reserved.backends.contains(&id),
                ),
            };
            if let Some(entry) = self.backends.get_mut(identity) {
                entry.id = Some(id);
            }
            let state = if u.active > 0 { backend_state::ACTIVE } else { backend_state::TERMINATING };
            let local = self.ip_local(identity.ip());
            parts.after.backends.insert(id, backend_entry(identity, state, local));
        }
        for identity in deleted {
            self.backends.remove(&identity);
        }

        // Groups, in the desired state's order.
        let mut reused = BTreeSet::new();
        let mut cursor = 0;
        for key in old.keys() {
            let mut placements = Vec::new();
            for group in translator.groups(key) {
                let keys = frontend_keys(
                    group,
                    &self.node_addresses,
                    &|k| self.explicit.contains_key(k),
                    &mut |_| true,
                );
                if keys.is_empty() {
                    placements.push(Placement { id: None, keys });
                    continue;
                }
                let id = match kept_id(&keys, &programmed.frontends, &owners, &reused) {
                    Some(id) => {
                        reused.insert(id);
                        id
                    }
                    None => self.group_ids.allocate(
                        &mut cursor,
                        |id| programmed.services.contains_key(&id),
                        |id| reserved.groups.contains(&id),
                    ),
                };
                let backends = &self.backends;
                let id_of =
                    |identity: &BackendIdentity| backends.get(identity).and_then(|u| u.id).unwrap_or(0);
                lay_group(&mut parts.after, group, id, &keys, &id_of, &self.node_addresses, options);
                placements.push(Placement { id: Some(id), keys });
            }
            if !placements.is_empty() {
                self.placed.insert(key.clone(), placements);
            }
        }
        for id in parts.before.services.keys() {
            if !parts.after.services.contains_key(id) {
                self.group_ids.release(*id);
            }
        }

        // Backends the slots name and no change touched: the same on both sides.
        let named: BTreeSet<u32> =
            parts.before.slots.values().chain(parts.after.slots.values()).map(|s| s.backend).collect();
        for id in named {
            if !parts.before.backends.contains_key(&id)
                && !parts.after.backends.contains_key(&id)
                && let Some(b) = programmed.backends.get(&id)
            {
                parts.before.backends.insert(id, *b);
                parts.after.backends.insert(id, *b);
            }
        }
        let v4 = |s: &BTreeMap<FrontendKey, FrontendValue>| {
            s.keys().filter(|k| matches!(k, FrontendKey::V4(_))).count()
        };
        self.frontends_v4 =
            (self.frontends_v4 + v4(&parts.after.frontends)).saturating_sub(v4(&parts.before.frontends));
        parts
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    /// Counted in parts, every backend's uses add up as counted one by one, at sizes around
    /// the part boundaries and with a backend's uses spread over them.
    #[test]
    fn uses_counted_in_parts_add_up() {
        for n in [0u32, 1, 4095, 4096, 4097, 3 * 4096 + 7, 50_000] {
            let uses: Vec<(BackendIdentity, (u8, bool))> = (0..n)
                .map(|i| {
                    // Runs of 1 to 5 uses of one backend.
                    let backend = i - i % (1 + i % 5);
                    let addr = SocketAddr::from(([10, 0, (backend >> 8) as u8, backend as u8], 80));
                    let state = if i % 3 == 0 { backend_state::TERMINATING } else { backend_state::ACTIVE };
                    (BackendIdentity::new(addr, 6 + (backend >> 16) as u8), (state, i % 2 == 0))
                })
                .collect();
            let mut sorted = uses.clone();
            sorted.sort_unstable_by_key(|(identity, _)| *identity);
            let tree = counted(sorted);
            let mut expected: BTreeMap<BackendIdentity, (u32, u32, u32)> = BTreeMap::new();
            for (identity, (state, local)) in uses {
                let e = expected.entry(identity).or_default();
                if state == backend_state::ACTIVE {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
                e.2 += u32::from(local);
            }
            let got: BTreeMap<BackendIdentity, (u32, u32, u32)> =
                tree.iter().map(|(k, u)| (*k, (u.active, u.terminating, u.local))).collect();
            assert_eq!(got, expected, "{n} uses");
        }
    }
}
