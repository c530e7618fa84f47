//! The objects a source holds, grouped by Service key, with change tracking: which keys changed
//! since the last sync (the "dirty" set the incremental sync works from).
//!
//! The Kubernetes source applies watch events one by one (`apply_*`, `delete_*`) and a relist as
//! a whole (`replace`); the file source replaces everything at each load. Either way a key is
//! dirty only when its objects' content changed, so a relist or a reload that finds the same
//! objects dirties nothing.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::compact::{SharedTexts, StoredService, StoredSlice};
use crate::model::{Located, ServiceKey, ServiceObjects, SliceTie, shared_str};

/// The objects of every Service key, and the keys changed since `take_dirty`.
#[derive(Debug, Default)]
pub struct ObjectStore {
    /// Services by key, as much of them as the agent reads (`StoredService`).
    services: BTreeMap<ServiceKey, StoredService>,
    /// Slices by the key they are labelled for, sorted by name (a Service has one or a few:
    /// a list, not a map of its own), as much of them as the agent reads (`StoredSlice`).
    slices: BTreeMap<ServiceKey, Vec<StoredSlice>>,
    /// The texts the stored slices share (node names, namespaces, port names, ...).
    shared_texts: SharedTexts,
    /// The key of each stored slice, by (namespace, name): a slice relabelled for another
    /// Service dirties both.
    slice_keys: HashMap<SliceId, ServiceKey>,
    /// The keys changed since `take_dirty`, with what changed: (its Service, its slices).
    dirty: BTreeMap<ServiceKey, (bool, bool)>,
    /// kube-proxy's change counts: Service and EndpointSlice changes so far, and how many keys
    /// of `dirty` had their Service or their slices changed.
    changes: ChangeCounts,
}

/// A Service as a list holds it until the list is swapped in: its key and kept part.
#[derive(Debug)]
pub struct ListedService {
    key: ServiceKey,
    stored: StoredService,
}

/// A Service as the store keeps it, made as soon as the watch hands it over.
pub fn list_service(service: &Service) -> ListedService {
    ListedService { key: ServiceKey::of_service(service), stored: StoredService::from(service) }
}

/// An EndpointSlice as a list holds it until the list is swapped in (`ObjectStore::list_slice`):
/// its namespace and name, and the Service key and kept part of one the store keeps.
#[derive(Debug)]
pub struct ListedSlice {
    id: (String, String),
    stored: Option<(ServiceKey, StoredSlice)>,
}

/// Changes a source saw, as kube-proxy counts them (`kubeproxy_sync_proxy_rules_*_changes_*`):
/// every change of a Service or an EndpointSlice, and the Services with changes not yet synced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub service_total: u64,
    pub endpoint_total: u64,
    pub service_pending: usize,
    pub endpoint_pending: usize,
}

impl ObjectStore {
    fn service_changed(&mut self, key: ServiceKey) {
        self.changes.service_total += 1;
        let (service, _) = self.dirty.entry(key).or_default();
        if !std::mem::replace(service, true) {
            self.changes.service_pending += 1;
        }
    }

    fn slices_changed(&mut self, key: ServiceKey) {
        self.changes.endpoint_total += 1;
        let (_, slices) = self.dirty.entry(key).or_default();
        if !std::mem::replace(slices, true) {
            self.changes.endpoint_pending += 1;
        }
    }

    /// The change counts now.
    pub fn change_counts(&self) -> ChangeCounts {
        self.changes
    }
}

/// A kept slice's namespace and name as `ObjectStore::slice_keys` holds them: the namespace
/// shared with its Service key, the name with its stored record.
type SliceId = (Arc<str>, Arc<str>);

fn slice_id(slice: &EndpointSlice) -> (String, String) {
    let meta = &slice.metadata;
    (meta.namespace.clone().unwrap_or_else(|| "default".into()), meta.name.clone().unwrap_or_default())
}

impl ObjectStore {
    /// A Service added or updated.
    pub fn apply_service(&mut self, service: Arc<Service>) {
        self.apply_listed_service(list_service(&service));
    }

    /// `key` as the store already holds it (its strings shared by every copy), or itself.
    fn shared_key(&self, key: ServiceKey) -> ServiceKey {
        let held = self.services.get_key_value(&key).map(|(k, _)| k);
        held.or_else(|| self.slices.get_key_value(&key).map(|(k, _)| k)).map_or(key, Clone::clone)
    }

    /// As `apply_service`, for a Service already made what the store keeps.
    pub fn apply_listed_service(&mut self, listed: ListedService) {
        let ListedService { key, mut stored } = listed;
        if self.services.get(&key).is_some_and(|old| *old == stored) {
            return;
        }
        let key = self.shared_key(key);
        stored.share_key(&key);
        self.services.insert(key.clone(), stored);
        self.service_changed(key);
    }

    /// A Service deleted.
    pub fn delete_service(&mut self, service: &Service) {
        let key = ServiceKey::of_service(service);
        if self.services.remove(&key).is_some() {
            self.service_changed(key);
        }
    }

    /// An EndpointSlice as the store keeps it, made as soon as the watch hands it over (a
    /// relist holds these, not whole objects, until it is swapped in).
    pub fn list_slice(&mut self, slice: &EndpointSlice) -> ListedSlice {
        let stored = match SliceTie::of(slice) {
            SliceTie::Service(key) => {
                let key = self.shared_key(key);
                let mut stored = StoredSlice::new(slice, &mut self.shared_texts);
                stored.share_key(&key);
                Some((key, stored))
            }
            SliceTie::Ignored | SliceTie::Unlabelled => None,
        };
        ListedSlice { id: slice_id(slice), stored }
    }

    /// An EndpointSlice added or updated. Slices of headless Services, FQDN and unlabelled ones
    /// are not kept (nothing uses them). Whether the slices of a Service changed.
    pub fn apply_slice(&mut self, slice: Arc<EndpointSlice>) -> bool {
        let listed = self.list_slice(&slice);
        self.apply_listed(listed)
    }

    /// As `apply_slice`, for a slice already made what the store keeps.
    pub fn apply_listed(&mut self, listed: ListedSlice) -> bool {
        self.apply_listed_id(listed).0
    }

    /// As `apply_listed`, also giving the slice's id when it is kept.
    fn apply_listed_id(&mut self, listed: ListedSlice) -> (bool, Option<SliceId>) {
        let ListedSlice { id, stored } = listed;
        let Some((key, mut stored)) = stored else { return (self.delete_id(&id), None) };
        let key = self.shared_key(key);
        stored.share_key(&key);
        let sid: SliceId = (
            shared_str(&key.namespace, &id.0),
            stored.shared_name().map_or_else(|| id.1.as_str().into(), |n| shared_str(n, &id.1)),
        );
        if let Some(old_key) = self.slice_keys.get(&sid)
            && *old_key != key
        {
            self.delete_sid(&sid);
        }
        let slices = self.slices.entry(key.clone()).or_default();
        match slices.binary_search_by(|s| s.name().cmp(&id.1)) {
            Ok(i) if slices[i] == stored => return (false, Some(sid)),
            Ok(i) => slices[i] = stored,
            Err(i) => slices.insert(i, stored),
        }
        // Removed first: an entry that stays keeps its old id, the replaced record's name.
        self.slice_keys.remove(&sid);
        self.slice_keys.insert(sid.clone(), key.clone());
        self.slices_changed(key);
        (true, Some(sid))
    }

    /// An EndpointSlice deleted (found by namespace and name); whether it was kept.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) -> bool {
        self.delete_id(&slice_id(slice))
    }

    fn delete_id(&mut self, (namespace, name): &(String, String)) -> bool {
        self.delete_sid(&(namespace.as_str().into(), name.as_str().into()))
    }

    fn delete_sid(&mut self, id: &SliceId) -> bool {
        let Some(key) = self.slice_keys.remove(id) else { return false };
        if let Some(slices) = self.slices.get_mut(&key) {
            slices.retain(|s| s.name() != &*id.1);
            if slices.is_empty() {
                self.slices.remove(&key);
            }
        }
        self.slices_changed(key);
        true
    }

    /// Every Service replaced by `services` (a relist, made by `list_service` as it came): only
    /// keys whose Service changed, came or went are dirtied.
    pub fn replace_services(&mut self, services: Vec<ListedService>) {
        let mut seen = std::collections::HashSet::with_capacity(services.len());
        for s in services {
            seen.insert(s.key.clone());
            self.apply_listed_service(s);
        }
        let gone: Vec<ServiceKey> = self.services.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for key in gone {
            self.services.remove(&key);
            self.service_changed(key);
        }
        // Built whole: a list inserts in key order, which leaves a tree's nodes about half full.
        self.services = std::mem::take(&mut self.services).into_iter().collect();
    }

    /// Every EndpointSlice replaced by `slices` (a relist, made by `list_slice` as it came),
    /// as `replace_services`.
    pub fn replace_slices(&mut self, slices: Vec<ListedSlice>) {
        let mut seen = std::collections::HashSet::with_capacity(slices.len());
        for s in slices {
            if let (_, Some(id)) = self.apply_listed_id(s) {
                seen.insert(id);
            }
        }
        let gone: Vec<SliceId> = self.slice_keys.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for id in gone {
            let _ = self.delete_sid(&id);
        }
        self.shared_texts.prune();
        // As in `replace_services`.
        self.slices = std::mem::take(&mut self.slices).into_iter().collect();
    }

    /// The objects of `key` now (shared, not copied); `None` when it has none.
    pub fn objects(&self, key: &ServiceKey) -> Option<ServiceObjects> {
        let services: Vec<Located<Service>> = self
            .services
            .get(key)
            .map(|s| Located { origin: String::new(), object: s.to_service() })
            .into_iter()
            .collect();
        let slices: Vec<Located<EndpointSlice>> = self
            .slices
            .get(key)
            .map(|s| s.iter().map(|s| Located { origin: String::new(), object: s.to_slice() }).collect())
            .unwrap_or_default();
        let objects = ServiceObjects { services, slices };
        (!objects.is_empty()).then_some(objects)
    }

    /// Every key's objects (each slice built again from what is kept: `keys` and `objects`
    /// give them one key at a time).
    pub fn all(&self) -> BTreeMap<ServiceKey, ServiceObjects> {
        self.keys().into_iter().filter_map(|k| self.objects(&k).map(|o| (k, o))).collect()
    }

    /// Every key with objects.
    pub fn keys(&self) -> BTreeSet<ServiceKey> {
        self.services.keys().chain(self.slices.keys()).cloned().collect()
    }

    /// The keys changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<ServiceKey> {
        (self.changes.service_pending, self.changes.endpoint_pending) = (0, 0);
        std::mem::take(&mut self.dirty).into_keys().collect()
    }

    /// Services and EndpointSlices held.
    pub fn counts(&self) -> (usize, usize) {
        (self.services.len(), self.slice_keys.len())
    }
}

/// The keys whose objects differ between two groupings of a whole source (the file source's
/// change tracking: each load is compared with the last, by content).
pub fn changed_keys(
    old: &BTreeMap<ServiceKey, ServiceObjects>,
    new: &BTreeMap<ServiceKey, ServiceObjects>,
) -> BTreeSet<ServiceKey> {
    let mut dirty: BTreeSet<ServiceKey> = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
    for (key, objects) in new {
        if !old.get(key).is_some_and(|o| o.same_content(objects)) {
            dirty.insert(key.clone());
        }
    }
    dirty
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ip: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
            }))
            .expect("service"),
        )
    }

    fn slice(name: &str, service: &str, ip: &str) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip]}],
            }))
            .expect("slice"),
        )
    }

    fn replace_services(store: &mut ObjectStore, services: Vec<Arc<Service>>) {
        store.replace_services(services.iter().map(|s| list_service(s)).collect());
    }

    fn replace_slices(store: &mut ObjectStore, slices: Vec<Arc<EndpointSlice>>) {
        let listed = slices.iter().map(|s| store.list_slice(s)).collect();
        store.replace_slices(listed);
    }

    fn keys(names: &[&str]) -> BTreeSet<ServiceKey> {
        names.iter().map(|n| ServiceKey::new("ns", *n)).collect()
    }

    #[test]
    fn changes_are_counted_as_kube_proxy_counts_them() {
        let mut store = ObjectStore::default();
        store.apply_service(service("a", "10.96.0.1"));
        store.apply_slice(slice("a-1", "a", "10.244.0.1"));
        store.apply_slice(slice("a-1", "a", "10.244.0.2"));
        store.apply_slice(slice("a-1", "a", "10.244.0.2"));
        let c = store.change_counts();
        assert_eq!((c.service_total, c.endpoint_total), (1, 2), "an unchanged object is no change");
        assert_eq!((c.service_pending, c.endpoint_pending), (1, 1), "pending: Services with changes");
        store.take_dirty();
        let c = store.change_counts();
        assert_eq!((c.service_total, c.endpoint_total, c.service_pending, c.endpoint_pending), (1, 2, 0, 0));
        let mut gone = EndpointSlice::default();
        gone.metadata.namespace = Some("ns".into());
        gone.metadata.name = Some("a-1".into());
        assert!(store.delete_slice(&gone));
        assert_eq!(store.change_counts().endpoint_total, 3);
    }

    #[test]
    fn a_relist_dirties_only_what_changed() {
        let mut store = ObjectStore::default();
        replace_services(&mut store, vec![service("a", "10.96.0.1"), service("b", "10.96.0.2")]);
        replace_slices(&mut store, vec![slice("a-1", "a", "10.244.0.1"), slice("b-1", "b", "10.244.0.2")]);
        assert_eq!(store.take_dirty(), keys(&["a", "b"]));
        // The same list again (a relist after 410 Gone), then one with b's slice changed and a gone.
        replace_services(&mut store, vec![service("a", "10.96.0.1"), service("b", "10.96.0.2")]);
        replace_slices(&mut store, vec![slice("a-1", "a", "10.244.0.1"), slice("b-1", "b", "10.244.0.2")]);
        assert_eq!(store.take_dirty(), keys(&[]));
        replace_services(&mut store, vec![service("b", "10.96.0.2")]);
        replace_slices(&mut store, vec![slice("b-1", "b", "10.244.0.3")]);
        assert_eq!(store.take_dirty(), keys(&["a", "b"]));
        assert!(store.objects(&ServiceKey::new("ns", "a")).is_none());
        assert_eq!(store.counts(), (1, 1));
    }

    #[test]
    fn a_relabelled_slice_dirties_both_services() {
        let mut store = ObjectStore::default();
        store.apply_slice(slice("s", "a", "10.244.0.1"));
        assert_eq!(store.take_dirty(), keys(&["a"]));
        store.apply_slice(slice("s", "b", "10.244.0.1"));
        assert_eq!(store.take_dirty(), keys(&["a", "b"]));
        assert!(store.objects(&ServiceKey::new("ns", "a")).is_none());
        assert_eq!(store.objects(&ServiceKey::new("ns", "b")).map(|o| o.slices.len()), Some(1));
        // Unchanged content: nothing dirty.
        store.apply_slice(slice("s", "b", "10.244.0.1"));
        assert_eq!(store.take_dirty(), keys(&[]));
    }
}
