//! Incremental translation: every Service key's translation kept, re-translated only for the
//! keys a change touched, and frontend claims settled again among the Services that share a
//! frontend with them.
//!
//! `translate` settles claims greedily in key order: a Service is refused when an earlier
//! accepted one claims one of its frontends. Whether a Service is accepted depends only on the
//! Services it shares a claim with, so after a change it is enough to settle again, in key
//! order, the Services reachable from the changed ones through shared claims (old and new): the
//! greedy pass over that closed set is the global pass restricted to it.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    BackendGroup, DesiredState, Problem,
    translate::{
        Claim, NodeContext, ServiceKey, ServiceObjects, ServiceTranslation, settle, translate_service,
    },
};

/// The translation of one Service key and the outcome of settling its claims.
#[derive(Debug)]
struct Entry {
    translation: ServiceTranslation,
    /// Valid and not refused for a frontend an earlier Service has.
    accepted: bool,
    /// Why it was refused, when it was (boxed: every key has an entry, few a conflict).
    conflict: Option<Box<Problem>>,
}

impl Entry {
    fn groups(&self) -> &[BackendGroup] {
        if self.accepted { &self.translation.groups } else { &[] }
    }
}

/// A Service key whose groups in the desired state changed, with the groups it had before.
#[derive(Debug)]
pub struct Changed {
    pub key: ServiceKey,
    pub before: Vec<BackendGroup>,
}

/// What one `Translator::update` changed.
#[derive(Debug, Default)]
pub struct Update {
    /// Keys whose desired groups changed, in key order.
    pub changed: Vec<Changed>,
    /// The problems of every key translated or settled again.
    pub problems: Vec<Problem>,
    /// Keys translated again (the dirty ones, or every key after a node change).
    pub translated: usize,
}

/// The desired state, kept per Service key and brought up to date by the keys that changed.
#[derive(Debug, Default)]
pub struct Translator {
    node: NodeContext,
    entries: BTreeMap<ServiceKey, Entry>,
    /// The valid Services claiming each frontend, sorted (almost always one: a list, not a
    /// set of its own).
    claimants: HashMap<Claim, Vec<ServiceKey>>,
    /// Accepted keys with a `healthCheckNodePort` in some group.
    health: BTreeSet<ServiceKey>,
    /// Accepted keys with groups whose Local traffic policy finds no local endpoint while
    /// others exist: how many such groups, (internal, external).
    no_local: BTreeMap<ServiceKey, (usize, usize)>,
}

impl Translator {
    /// Translates every key of `objects` (the full `translate`, kept per key).
    pub fn new(objects: &BTreeMap<ServiceKey, ServiceObjects>, node: &NodeContext) -> (Self, Update) {
        Self::from_keys(objects.keys().cloned().collect(), node, &|key| objects.get(key).cloned())
    }

    /// Translates every key of `keys`, their objects from `objects` one key at a time (a
    /// source that keeps objects compact builds each key's only while it is translated).
    pub fn from_keys(
        keys: BTreeSet<ServiceKey>,
        node: &NodeContext,
        objects: &dyn Fn(&ServiceKey) -> Option<ServiceObjects>,
    ) -> (Self, Update) {
        let mut t = Self { node: node.clone(), ..Self::default() };
        let update = t.update(keys, node, objects);
        // Kept for the agent's lifetime: a tree built whole, not grown key by key.
        t.entries = std::mem::take(&mut t.entries).into_iter().collect();
        (t, update)
    }

    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// The groups `key` has in the desired state (none when it is refused, invalid or absent),
    /// sorted by (service, family, scope).
    pub fn groups(&self, key: &ServiceKey) -> &[BackendGroup] {
        self.entries.get(key).map_or(&[], Entry::groups)
    }

    /// Every accepted group, in the desired state's order.
    pub fn all_groups(&self) -> impl Iterator<Item = (&ServiceKey, &BackendGroup)> {
        self.entries.iter().flat_map(|(k, e)| e.groups().iter().map(move |g| (k, g)))
    }

    /// The whole desired state (a copy).
    pub fn desired(&self) -> DesiredState {
        DesiredState {
            groups: self.all_groups().map(|(_, g)| g.clone()).collect(),
            node_addresses: super::node_addresses(&self.node),
        }
    }

    /// The groups of the Services with a `healthCheckNodePort` (what the health-check servers
    /// need), as a desired state.
    pub fn health_state(&self) -> DesiredState {
        DesiredState {
            groups: self.health.iter().flat_map(|k| self.groups(k).iter().cloned()).collect(),
            node_addresses: super::node_addresses(&self.node),
        }
    }

    /// The groups whose Local traffic policy finds no local endpoint while others exist (they
    /// drop), as (internal, external): kube-proxy's `sync_proxy_rules_no_local_endpoints_total`.
    /// Kept per key as keys change, so asking costs only the keys that have some.
    pub fn no_local_endpoints(&self) -> (usize, usize) {
        self.no_local.values().fold((0, 0), |(i, e), (ki, ke)| (i + ki, e + ke))
    }

    /// Every problem now (translation and refusals), in key order.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.entries.values().flat_map(|e| e.translation.problems.iter().chain(e.conflict.as_deref()))
    }

    /// Number of Service keys known (with a Service or a slice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn index_claims(&mut self, key: &ServiceKey, t: &ServiceTranslation, add: bool) {
        for claim in t.claims() {
            if add {
                let keys = self.claimants.entry(claim).or_default();
                if let Err(i) = keys.binary_search(key) {
                    keys.insert(i, key.clone());
                }
            } else if let Some(set) = self.claimants.get_mut(&claim) {
                set.retain(|k| k != key);
                if set.is_empty() {
                    self.claimants.remove(&claim);
                }
            }
        }
    }

    /// Translates `dirty` again (`objects(key)`: the key's objects now, `None` when it has none)
    /// and settles claims again where they may have moved. A `node` other than the last one
    /// translates every key again (zone and addresses change endpoints' topology and locality).
    pub fn update(
        &mut self,
        mut dirty: BTreeSet<ServiceKey>,
        node: &NodeContext,
        objects: &dyn Fn(&ServiceKey) -> Option<ServiceObjects>,
    ) -> Update {
        if *node != self.node {
            self.node = node.clone();
            dirty.extend(self.entries.keys().cloned());
        }
        let mut update = Update { translated: dirty.len(), ..Update::default() };
        // Groups before, of the keys whose groups may change.
        let mut before: BTreeMap<ServiceKey, Vec<BackendGroup>> = BTreeMap::new();
        let mut frontier: Vec<Claim> = Vec::new();
        for key in &dirty {
            if let Some(old) = self.entries.remove(key) {
                self.index_claims(key, &old.translation, false);
                frontier.extend(old.translation.claims());
                before.insert(key.clone(), if old.accepted { old.translation.groups } else { Vec::new() });
            } else {
                before.insert(key.clone(), Vec::new());
            }
            let Some(objects) = objects(key).filter(|o| !o.is_empty()) else { continue };
            let translation = translate_service(key, &objects, &self.node);
            self.index_claims(key, &translation, true);
            frontier.extend(translation.claims());
            self.entries.insert(key.clone(), Entry { translation, accepted: false, conflict: None });
        }
        // Every Service sharing a claim with one settled again, transitively.
        let mut component: BTreeSet<ServiceKey> = dirty.clone();
        let mut seen: std::collections::HashSet<Claim> = std::collections::HashSet::new();
        while let Some(claim) = frontier.pop() {
            if !seen.insert(claim) {
                continue;
            }
            for key in self.claimants.get(&claim).into_iter().flatten() {
                if !component.contains(key)
                    && component.insert(key.clone())
                    && let Some(e) = self.entries.get(key)
                {
                    frontier.extend(e.translation.claims());
                }
            }
        }
        let mut claimed: BTreeMap<Claim, String> = BTreeMap::new();
        for key in &component {
            let Some(entry) = self.entries.get_mut(key) else {
                // Gone: its groups (if any) are gone.
                if before.get(key).is_some_and(|b| !b.is_empty()) {
                    update
                        .changed
                        .push(Changed { key: key.clone(), before: before.remove(key).unwrap_or_default() });
                }
                self.health.remove(key);
                self.no_local.remove(key);
                continue;
            };
            let conflict = settle(key, &entry.translation, &mut claimed);
            let accepted = entry.translation.valid && conflict.is_none();
            let was = entry.accepted;
            entry.accepted = accepted;
            entry.conflict = conflict.map(Box::new);
            update
                .problems
                .extend(entry.translation.problems.iter().chain(entry.conflict.as_deref()).cloned());
            if entry.groups().iter().any(|g| g.health_check_node_port.is_some()) {
                self.health.insert(key.clone());
            } else {
                self.health.remove(key);
            }
            match no_local_endpoints(entry.groups()) {
                (0, 0) => self.no_local.remove(key),
                counts => self.no_local.insert(key.clone(), counts),
            };
            match before.remove(key) {
                // Translated again: changed if its groups differ.
                Some(old) if old.as_slice() != entry.groups() => {
                    update.changed.push(Changed { key: key.clone(), before: old });
                }
                Some(_) => {}
                // Only settled again: changed if it was refused or accepted anew.
                None if was != accepted => {
                    let old = if was { entry.translation.groups.clone() } else { Vec::new() };
                    update.changed.push(Changed { key: key.clone(), before: old });
                }
                None => {}
            }
        }
        update
    }
}

/// How many of `groups` drop for want of a local endpoint, (internal, external).
pub(crate) fn no_local_endpoints(groups: &[BackendGroup]) -> (usize, usize) {
    let drops = |scope| {
        groups
            .iter()
            .filter(|g| g.scope == scope && g.eligible.is_empty() && g.when_empty == super::WhenEmpty::Drop)
            .count()
    };
    (drops(super::Scope::Internal), drops(super::Scope::External))
}
