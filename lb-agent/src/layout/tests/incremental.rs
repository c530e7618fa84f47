//! Incremental equals full: random sequences of add/update/delete events for Services,
//! EndpointSlices and the Node (the arbitrary objects of `arbitrary_objects`: every Service type
//! and policy translate knows, malformed ones too) go through the change tracking of
//! `source::store::ObjectStore` (the Kubernetes source's) and `Syncer::sync_changes` into
//! `MemoryMaps`. After every step the maps must equal, entry for entry up to the numbering of
//! ids, a from-scratch sync of the same objects (`translate` of them all) into fresh maps; every
//! prefix of each incremental apply must keep the write-order invariants (`MapState::check`);
//! the syncer's idea of the maps must be the maps; and the file source's change tracking
//! (`changed_keys`, content diff of two loads) must name the keys the events dirtied.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_common::{Backend, FrontendValue, ServiceName, SlotKey};

use super::{
    super::diff::apply_in_memory,
    arbitrary_objects::{node, service, slice, tie_slice},
    *,
};
use crate::{
    model::{Located, NodeContext, Objects, ServiceKey, group_objects, translate},
    source::store::{ObjectStore, changed_keys},
};

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant, reason = "test events, a few per case")]
enum Event {
    PutService(Box<Service>),
    DeleteService(prop::sample::Index),
    /// A slice, tied to an existing Service (with port picks) or left as drawn, under the name
    /// of an existing slice (an update) or its own.
    PutSlice(
        EndpointSlice,
        Option<(prop::sample::Index, Vec<prop::sample::Index>)>,
        Option<prop::sample::Index>,
    ),
    DeleteSlice(prop::sample::Index),
    Node(NodeContext),
}

fn event() -> impl Strategy<Value = Event> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        5 => service().prop_map(|s| Event::PutService(Box::new(s))),
        1 => index().prop_map(Event::DeleteService),
        6 => (
            slice(),
            prop::option::weighted(0.8, (index(), prop::collection::vec(index(), 3))),
            prop::option::weighted(0.4, index()),
        )
            .prop_map(|(s, tie, rename)| Event::PutSlice(s, tie, rename)),
        2 => index().prop_map(Event::DeleteSlice),
        1 => node().prop_map(Event::Node),
    ]
}

/// The objects as the API server holds them: one per namespace and name.
#[derive(Default)]
struct World {
    services: BTreeMap<(String, String), Arc<Service>>,
    slices: BTreeMap<(String, String), Arc<EndpointSlice>>,
    node: NodeContext,
}

fn id_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_else(|| "default".into()), meta.name.clone().unwrap_or_default())
}

impl World {
    /// Applies `event` here and as a watch event to `store`.
    fn apply(&mut self, event: Event, store: &mut ObjectStore) {
        match event {
            Event::PutService(s) => {
                let s = Arc::new(*s);
                self.services.insert(id_of(&s.metadata), Arc::clone(&s));
                store.apply_service(s);
            }
            Event::DeleteService(i) => {
                if self.services.is_empty() {
                    return;
                }
                let id = i.get(&self.services.keys().cloned().collect::<Vec<_>>()).clone();
                if let Some(s) = self.services.remove(&id) {
                    store.delete_service(&s);
                }
            }
            Event::PutSlice(mut s, tie, rename) => {
                let services: Vec<Service> = self.services.values().map(|s| (**s).clone()).collect();
                if let Some((which, picks)) = tie
                    && !services.is_empty()
                {
                    tie_slice(&mut s, which.get(&services), &picks);
                }
                if let Some(which) = rename
                    && !self.slices.is_empty()
                {
                    let (namespace, name) =
                        which.get(&self.slices.keys().cloned().collect::<Vec<_>>()).clone();
                    s.metadata.namespace = Some(namespace);
                    s.metadata.name = Some(name);
                }
                let s = Arc::new(s);
                self.slices.insert(id_of(&s.metadata), Arc::clone(&s));
                let _ = store.apply_slice(s);
            }
            Event::DeleteSlice(i) => {
                if self.slices.is_empty() {
                    return;
                }
                let id = i.get(&self.slices.keys().cloned().collect::<Vec<_>>()).clone();
                if let Some(s) = self.slices.remove(&id) {
                    let _ = store.delete_slice(&s);
                }
            }
            Event::Node(n) => self.node = n,
        }
    }

    fn objects(&self) -> Objects {
        fn located<T>(object: &Arc<T>) -> Located<T> {
            Located { origin: String::new(), object: Arc::clone(object) }
        }
        Objects {
            services: self.services.values().map(located).collect(),
            slices: self.slices.values().map(located).collect(),
            nodes: Vec::new(),
        }
    }
}

/// A group as the kernel sees it, without its id: its frontends (values without the id), its
/// name, its slots in order (the backend entries they name), its source ranges.
type NormalGroup = (Vec<(FrontendKey, FrontendValue)>, Option<ServiceName>, Vec<Option<Backend>>, Vec<Cidr>);

/// `state` with ids replaced by what they stand for, and each map's entry count.
fn normal(state: &MapState) -> (BTreeSet<NormalGroup>, BTreeSet<Backend>, [usize; 5]) {
    let mut frontends: BTreeMap<u32, Vec<(FrontendKey, FrontendValue)>> = BTreeMap::new();
    for (k, v) in &state.frontends {
        frontends.entry(v.group).or_default().push((*k, FrontendValue { group: 0, ..*v }));
    }
    let groups = frontends
        .into_iter()
        .map(|(id, fronts)| {
            let slots = state
                .slots
                .range(SlotKey { group: id, slot: 0 }..=SlotKey { group: id, slot: u32::MAX })
                .map(|(_, s)| state.backends.get(&s.backend).copied())
                .collect();
            let ranges = state.source_ranges.iter().filter(|r| r.group == id).map(|r| r.cidr).collect();
            (fronts, state.services.get(&id).copied(), slots, ranges)
        })
        .collect();
    let counts = [
        state.frontends.len(),
        state.slots.len(),
        state.backends.len(),
        state.source_ranges.len(),
        state.services.len(),
    ];
    (groups, state.backends.values().copied().collect(), counts)
}

/// One full sync of `objects` into fresh maps.
fn from_scratch(objects: &Objects, node: &NodeContext, options: LayoutOptions) -> MapState {
    let (desired, _) = translate(objects, node);
    let mut syncer = Syncer::with_options(MemoryMaps::default(), options).expect("memory maps read");
    syncer.sync(&desired).expect("full sync");
    syncer.programmed().clone()
}

fn run(events: Vec<Event>, options: LayoutOptions) -> Result<(), TestCaseError> {
    let mut world = World {
        node: NodeContext {
            name: "node-1".into(),
            zone: Some("zone-a".into()),
            addresses: vec!["10.0.1.1".parse().expect("address"), "fd00:1::1".parse().expect("address")],
        },
        ..World::default()
    };
    let mut store = ObjectStore::default();
    let mut syncer = Syncer::with_options(MemoryMaps::default(), options).expect("memory maps read");
    let mut last_load = BTreeMap::new();
    for (step, event) in events.into_iter().enumerate() {
        world.apply(event, &mut store);
        let dirty = store.take_dirty();
        let objects = world.objects();
        // The file source's change tracking sees the same changes.
        let (load, _) = group_objects(&objects);
        let by_content = changed_keys(&last_load, &load);
        prop_assert!(
            by_content.is_subset(&dirty),
            "step {}: file source dirtied {:?}, events {:?}",
            step,
            by_content,
            dirty
        );
        last_load = load;

        let (state_before, log_before) = (syncer.programmed().clone(), syncer.maps_mut().log.len());
        syncer
            .sync_changes(dirty, &world.node, &|k: &ServiceKey| store.objects(k), &|| store.keys())
            .expect("memory maps take every write");
        // Every prefix of the writes keeps the invariants.
        let mut mid = state_before;
        for op in &syncer.maps_mut().log[log_before..] {
            apply_in_memory(&mut mid, op);
            if let Err(e) = mid.check() {
                return Err(TestCaseError::fail(format!("step {step}: after {op}: {e}")));
            }
        }
        let in_maps = syncer.maps_mut().state.clone();
        prop_assert_eq!(&in_maps, syncer.programmed(), "step {}: the syncer's view", step);
        let want = from_scratch(&objects, &world.node, options);
        let (got_n, want_n) = (normal(syncer.programmed()), normal(&want));
        if got_n != want_n {
            let only = |a: &BTreeSet<NormalGroup>, b: &BTreeSet<NormalGroup>| -> Vec<String> {
                a.difference(b)
                    .map(|(f, _, slots, r)| format!("{f:?} slots {slots:?} ranges {r:?}"))
                    .collect()
            };
            return Err(TestCaseError::fail(format!(
                "step {step}: only incremental: {:?}\nonly full: {:?}\nbackends {:?} / {:?}\ncounts {:?} / {:?}",
                only(&got_n.0, &want_n.0),
                only(&want_n.0, &got_n.0),
                got_n.1.difference(&want_n.1).collect::<Vec<_>>(),
                want_n.1.difference(&got_n.1).collect::<Vec<_>>(),
                got_n.2,
                want_n.2
            )));
        }
        // kube-proxy's no-local-endpoints counts, kept per key, equal a count over the whole
        // translation.
        let (desired, _) = translate(&objects, &world.node);
        prop_assert_eq!(
            syncer.no_local_endpoints(),
            crate::model::incremental::no_local_endpoints(&desired.groups),
            "step {}: no-local-endpoints counts",
            step
        );
        // A sync with nothing dirty writes nothing.
        let report = syncer
            .sync_changes(BTreeSet::new(), &world.node, &|k: &ServiceKey| store.objects(k), &|| store.keys())
            .expect("empty sync");
        prop_assert_eq!((report.written, report.removed), (0, 0));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn incremental_sync_equals_a_full_sync(events in prop::collection::vec(event(), 1..14), maglev in prop::bool::weighted(0.2)) {
        let options = if maglev {
            LayoutOptions { algorithm: super::super::state::LbAlgorithm::Maglev, maglev_size: 7 }
        } else {
            LayoutOptions::default()
        };
        run(events, options)?;
    }
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object")
}

fn service_of(name: &str, cluster_ip: &str) -> Service {
    object(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80}]},
    }))
}

fn slice_of(service: &str, port: u16, ip: &str, node: &str) -> EndpointSlice {
    object(serde_json::json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": [ip], "nodeName": node}],
    }))
}

/// A backend address local in one Service's slice makes every backend entry with that address
/// `LOCAL`, another Service's too: when the first slice's endpoint moves to another node, the other entry loses the flag
/// although its own group did not change.
#[test]
fn local_flag_follows_the_address_across_services() {
    let events = vec![
        Event::PutService(Box::new(service_of("a", "10.96.0.10"))),
        Event::PutService(Box::new(service_of("b", "10.96.0.11"))),
        Event::PutSlice(slice_of("b", 9090, "10.244.1.1", "node-2"), None, None),
        Event::PutSlice(slice_of("a", 8080, "10.244.1.1", "node-1"), None, None),
        Event::PutSlice(slice_of("a", 8080, "10.244.1.1", "node-2"), None, None),
        Event::PutSlice(slice_of("a", 8080, "10.244.1.1", "node-1"), None, None),
        Event::PutSlice(slice_of("a", 8080, "10.244.1.2", "node-1"), None, None),
    ];
    run(events, LayoutOptions::default()).expect("incremental equals full");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// A write that fails in the middle of an incremental sync leaves a consistent datapath, and
    /// the next sync (the change's keys already taken: it must fall back to a full one) converges
    /// on the full sync's maps.
    #[test]
    fn a_failed_incremental_sync_is_followed_by_a_full_one(
        events in prop::collection::vec((event(), prop::option::weighted(0.3, any::<prop::sample::Index>())), 1..10),
    ) {
        let mut world = World { node: NodeContext::named("node-1"), ..World::default() };
        let mut store = ObjectStore::default();
        let mut syncer = Syncer::new(MemoryMaps::default()).expect("memory maps read");
        for (step, (event, fail)) in events.into_iter().enumerate() {
            world.apply(event, &mut store);
            let dirty = store.take_dirty();
            let objects = |k: &ServiceKey| store.objects(k);
            let all = || store.keys();
            if let Some(fail) = fail
                && syncer.incremental_ready(&world.node)
            {
                // Fail one of the first writes of the change, if it makes that many.
                let log = syncer.maps_mut().log.len();
                syncer.maps_mut().fail_at = Some(log + fail.index(3));
                let failed = syncer.sync_changes(dirty, &world.node, &objects, &all).is_err();
                syncer.maps_mut().fail_at = None;
                if let Err(e) = syncer.maps_mut().state.check() {
                    return Err(TestCaseError::fail(format!("step {step}: after a failed write: {e}")));
                }
                if failed {
                    prop_assert!(!syncer.incremental_ready(&world.node), "step {}: a failure is followed by a full sync", step);
                }
                syncer.sync_changes(BTreeSet::new(), &world.node, &objects, &all).expect("sync after the failure");
            } else {
                syncer.sync_changes(dirty, &world.node, &objects, &all).expect("sync");
            }
            let want = from_scratch(&world.objects(), &world.node, LayoutOptions::default());
            prop_assert_eq!(normal(&syncer.maps_mut().state.clone()), normal(&want), "step {}", step);
        }
    }
}

fn objects_of(store: &ObjectStore) -> Objects {
    let mut objects = Objects::default();
    for o in store.all().into_values() {
        objects.services.extend(o.services);
        objects.slices.extend(o.slices);
    }
    objects
}

/// Time of syncs at cluster scale, in-process against `MemoryMaps` (no kernel): `cargo test
/// --release -p lb-agent --lib scale -- --ignored --nocapture`. 10,000 Services × 10 endpoints:
/// the full sync, then one EndpointSlice changed at a time, synced the old way (translate and
/// lay out everything, diff the whole state) and incrementally.
#[test]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
fn scale_one_slice_change_at_10k_services() {
    use std::time::Instant;
    let (services, endpoints, changes) = (10_000u32, 10u32, 200u32);
    let svc = |i: u32| -> Arc<Service> {
        Arc::new(object(serde_json::json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
            "spec": {"clusterIP": format!("10.96.{}.{}", i / 256, i % 256), "ports": [{"name": "http", "port": 80}]},
        })))
    };
    let slice = |i: u32, change: u32| -> Arc<EndpointSlice> {
        let endpoints: Vec<serde_json::Value> = (0..endpoints)
            .map(|e| {
                // A change replaces the last endpoint by a new address (a new backend id).
                let n = if e + 1 == endpoints && change > 0 { 1_000_000 + change } else { i * endpoints + e };
                serde_json::json!({"addresses": [format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)],
                                   "conditions": {"ready": true}, "nodeName": "node-2"})
            })
            .collect();
        Arc::new(object(serde_json::json!({
            "metadata": {"name": format!("svc-{i}-1"), "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints,
        })))
    };
    let node = NodeContext::named("node-1");
    let rss = || -> String {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        };
        format!(
            "rss {} kB (peak {} kB)",
            field("VmRSS:").unwrap_or_default(),
            field("VmHWM:").unwrap_or_default()
        )
    };
    eprintln!("start: {}", rss());
    let mut store = ObjectStore::default();
    for i in 0..services {
        store.apply_service(svc(i));
        let _ = store.apply_slice(slice(i, 0));
    }
    let dirty = store.take_dirty();
    eprintln!("objects stored: {}", rss());
    {
        let all = store.all();
        eprintln!("all(): {}", rss());
        let (t, _) = crate::model::incremental::Translator::new(&all, &node);
        eprintln!("translator: {} ({} keys)", rss(), t.len());
        let (desired, _) = translate(&objects_of(&store), &node);
        eprintln!("+ a translate() desired state: {} ({} groups)", rss(), desired.groups.len());
    }
    eprintln!("dropped: {}", rss());
    let mut syncer = Syncer::new(MemoryMaps::default()).expect("memory maps");
    let t = Instant::now();
    let report =
        syncer.sync_changes(dirty, &node, &|k| store.objects(k), &|| store.keys()).expect("full sync");
    let full_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(report.full && report.frontends == services as usize);
    // (The maps themselves are counted twice here: `MemoryMaps` and the syncer's view.)
    eprintln!("after the full sync: {}", rss());
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    // Incremental: one slice at a time.
    let mut incremental = Vec::new();
    for c in 0..changes {
        let i = (c * 7919) % services;
        let t = Instant::now();
        let _ = store.apply_slice(slice(i, c + 1));
        let dirty = store.take_dirty();
        let report =
            syncer.sync_changes(dirty, &node, &|k| store.objects(k), &|| store.keys()).expect("sync");
        incremental.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(!report.full && report.written > 0);
    }
    // What the agent asks of the syncer after every applied sync (metrics, logs): its cost must
    // not grow with the cluster either.
    let metrics = crate::metrics::Metrics::new();
    let t = Instant::now();
    for _ in 0..changes {
        std::hint::black_box(syncer.no_local_endpoints());
        metrics.record_programmed(syncer.programmed(), syncer.capacity());
    }
    eprintln!(
        "after each sync (no-local counts, programmed gauges): {:.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(changes)
    );
    // Everything gone, then back within the id quarantine (a source read while half-written):
    // every id is reserved, the new ones are found in one pass.
    let t = Instant::now();
    let keys: Vec<ServiceKey> = store.all().into_keys().collect();
    for i in 0..services {
        store.delete_service(&svc(i));
        let _ = store.delete_slice(&slice(i, 0));
    }
    let dirty = store.take_dirty();
    assert_eq!(dirty.len(), keys.len());
    syncer.sync_changes(dirty, &node, &|k| store.objects(k), &|| store.keys()).expect("all gone");
    let gone_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    for i in 0..services {
        store.apply_service(svc(i));
        let _ = store.apply_slice(slice(i, 0));
    }
    let dirty = store.take_dirty();
    let report =
        syncer.sync_changes(dirty, &node, &|k| store.objects(k), &|| store.keys()).expect("all back");
    let back_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(!report.full && report.frontends == services as usize);
    // The old way: everything translated, laid out and diffed for each change.
    let mut old = Vec::new();
    let mut old_syncer = Syncer::new(MemoryMaps::default()).expect("memory maps");
    let objects = |store: &ObjectStore| {
        let mut objects = Objects::default();
        for o in store.all().into_values() {
            objects.services.extend(o.services);
            objects.slices.extend(o.slices);
        }
        objects
    };
    old_syncer.sync(&translate(&objects(&store), &node).0).expect("full");
    for c in 0..changes / 10 {
        let i = (c * 7919) % services;
        let _ = store.apply_slice(slice(i, c + 1000));
        let t = Instant::now();
        let all = objects(&store);
        old_syncer.sync(&translate(&all, &node).0).expect("sync");
        old.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(str::to_owned))
        .unwrap_or_default();
    eprintln!(
        "{services} services × {endpoints} endpoints: full sync {full_ms:.1} ms; one slice changed: \
         incremental p50 {:.3} ms p99 {:.3} ms, whole-state p50 {:.1} ms p99 {:.1} ms; all removed \
         {gone_ms:.1} ms and back {back_ms:.1} ms (incremental); {hwm}",
        pct(&mut incremental, 0.5),
        pct(&mut incremental, 0.99),
        pct(&mut old, 0.5),
        pct(&mut old, 0.99),
    );
}

/// A change that does not fit the maps is refused whole by an incremental sync too: nothing is
/// written, and the maps keep what they had.
#[test]
fn an_incremental_change_that_does_not_fit_writes_nothing() {
    let node = NodeContext::named("node-1");
    let capacity = crate::kernel::maps::Capacity {
        frontends: 2,
        slots: 100,
        backends: 100,
        source_ranges: 10,
        services: 10,
    };
    let mut syncer =
        Syncer::new(MemoryMaps { capacity: Some(capacity), ..MemoryMaps::default() }).expect("memory maps");
    let mut store = ObjectStore::default();
    store.apply_service(Arc::new(service_of("a", "10.96.0.10")));
    let _ = store.apply_slice(Arc::new(slice_of("a", 8080, "10.244.1.1", "node-2")));
    store.apply_service(Arc::new(service_of("b", "10.96.0.11")));
    let dirty = store.take_dirty();
    syncer.sync_changes(dirty, &node, &|k| store.objects(k), &|| store.keys()).expect("fits");
    let (before, writes) = (syncer.programmed().clone(), syncer.maps_mut().log.len());
    store.apply_service(Arc::new(service_of("c", "10.96.0.12")));
    let dirty = store.take_dirty();
    let err =
        syncer.sync_changes(dirty, &node, &|k| store.objects(k), &|| store.keys()).expect_err("3 frontends");
    assert!(matches!(err, MapsError::Full { needed: 3, capacity: 2, .. }), "{err}");
    assert_eq!(syncer.maps_mut().log.len(), writes, "nothing written");
    assert_eq!(syncer.programmed(), &before);
    // The Service goes again: the next sync (full, after the refusal) is back to two.
    let mut gone = service_of("c", "10.96.0.12");
    gone.metadata.name = Some("c".into());
    store.delete_service(&gone);
    let dirty = store.take_dirty();
    let report =
        syncer.sync_changes(dirty, &node, &|k| store.objects(k), &|| store.keys()).expect("fits again");
    assert!(report.full);
    assert_eq!(normal(syncer.programmed()), normal(&before));
}

/// Memory at cluster scale, counted by the test build's allocator (`sys::counting_alloc`), not
/// the RSS: `cargo test --release -p lb-agent --lib scale -- --ignored --nocapture`. 10,000
/// Services × 10 endpoints as the bench's API server serves them, relisted as the Kubernetes
/// source does (every object of a list, then the list swapped in), then fully synced into
/// `MemoryMaps` (whose own copy of the maps, the kernel's memory in the agent, is not counted).
#[test]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
fn scale_memory_at_10k_services() {
    use std::time::Instant;

    use crate::sys::counting_alloc::{live, peak, reset_peak};
    let (services, endpoints) = (10_000u32, 10u32);
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    let ip = |i: u32, base: u32| std::net::Ipv4Addr::from(base + i).to_string();
    let port = [("http", 80, "TCP")];
    let target = [("http", 8080, "TCP")];
    let node = NodeContext {
        name: "node-1".into(),
        zone: Some("zone-a".into()),
        addresses: vec!["192.0.2.1".parse().expect("address")],
    };
    let start = live();
    reset_peak();
    // As the watcher hands them over: a list's objects, parsed one at a time.
    let listed_services: Vec<_> = (0..services)
        .map(|i| {
            let v =
                lb_tests::apiserver::service("bench", &format!("svc-{i}"), &ip(i + 1, 0x0a60_0000), &port);
            crate::source::store::list_service(&object(v))
        })
        .collect();
    let mut store = ObjectStore::default();
    let listed_slices: Vec<_> = (0..services)
        .map(|i| {
            let addrs: Vec<String> = (0..endpoints).map(|j| ip(i * endpoints + j, 0x0a80_0000)).collect();
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let v = lb_tests::apiserver::slice(
                "bench",
                &format!("svc-{i}-1"),
                &format!("svc-{i}"),
                &target,
                &addrs,
            );
            store.list_slice(&object(v))
        })
        .collect();
    let listed = live() - start;
    store.replace_services(listed_services);
    store.replace_slices(listed_slices);
    let stored = live() - start;
    let relist_peak = peak() - start;
    let dirty = store.take_dirty();
    let mut syncer = Syncer::new(MemoryMaps::default()).expect("memory maps");
    let before_sync = live();
    reset_peak();
    let t = Instant::now();
    let report =
        syncer.sync_changes(dirty, &node, &|k| store.objects(k), &|| store.keys()).expect("full sync");
    let full_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(report.full && report.frontends == services as usize);
    let sync_peak = peak() - before_sync;
    let after_sync = live() - before_sync;
    // The maps' own copy (`MemoryMaps`), and the syncer's view of them, measured by a copy.
    let programmed = {
        let at = live();
        let copy = syncer.programmed().clone();
        let size = live() - at;
        drop(copy);
        size
    };
    // `MemoryMaps`' log of every write, not the agent's either.
    let log = syncer.maps_mut().log.capacity() * std::mem::size_of::<crate::layout::diff::MapOp>();
    let kept = after_sync - programmed - log; // the syncer: its view of the maps and the engine
    eprintln!(
        "{services} services × {endpoints} endpoints (counted allocations, MiB): a list's full objects {:.1}; \
         store {:.1} (peak while relisting {:.1}); full sync {full_ms:.0} ms, peak above the store {:.1}, \
         kept by the syncer {:.1} = programmed view {:.1} + translation and layout {:.1} (+ the \
         in-memory maps {:.1}, not counted); agent total ≈ {:.1}, peak ≈ {:.1}",
        mib(listed),
        mib(stored),
        mib(relist_peak),
        mib(sync_peak.saturating_sub(programmed + log)),
        mib(kept),
        mib(programmed),
        mib(kept - programmed),
        mib(programmed),
        mib(stored + kept),
        mib((stored + sync_peak.saturating_sub(programmed + log)).max(relist_peak)),
    );
    // The parts, each built again on its own.
    let at = live();
    let all = store.all();
    let objects_of_all = live() - at;
    let at = live();
    let (translator, _) = crate::model::incremental::Translator::new(&all, &node);
    let translator_bytes = live() - at;
    drop(all);
    let at = live();
    let groups: Vec<&BackendGroup> = translator.all_groups().map(|(_, g)| g).collect();
    let node_addresses = crate::model::node_addresses(&node);
    let (target, placements) = crate::layout::state::layout_groups(
        &groups,
        &node_addresses,
        &MapState::default(),
        &Reserved::default(),
        &LayoutOptions::default(),
    );
    drop(groups);
    let index = crate::layout::incremental::LayoutIndex::new(
        translator.all_groups(),
        placements,
        &target,
        node_addresses,
    );
    let index_and_target = live() - at;
    let target_bytes = {
        let at = live();
        let copy = target.clone();
        let size = live() - at;
        drop(copy);
        size
    };
    eprintln!(
        "  parts (MiB): every key's objects built again {:.1}; translator {:.1}; layout index {:.1}; \
         (sizes: Service {} B, EndpointSlice {} B, BackendGroup {} B)",
        mib(objects_of_all),
        mib(translator_bytes),
        mib(index_and_target - target_bytes),
        std::mem::size_of::<Service>(),
        std::mem::size_of::<EndpointSlice>(),
        std::mem::size_of::<BackendGroup>(),
    );
    drop((index, target, translator));
}
