//! `layout` + `diff` + `Syncer` against in-memory maps: no kernel needed.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    rc::Rc,
};

use proptest::prelude::*;

use super::{
    diff::{MapOp, apply_in_memory, diff},
    maps::{Capacity, LbMaps, MapsError, MemoryMaps},
    state::{FrontendKey, MapState, backend_addr, layout},
};
use crate::{
    model::{
        BackendGroup, BackendInfo, DesiredState, EndpointState, Family, Frontend, FrontendKind, Protocol,
        ServicePortName,
    },
    sync::{SyncReport, Syncer},
};

// ---- builders -----------------------------------------------------------------------------------

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

/// A group of Service `ns/name` port `port_name`, with `frontends` ("ip:port") and `backends`
/// ("ip:port", all ready). Eligible = every backend.
fn group(svc: &str, protocol: Protocol, frontends: &[&str], backends: &[&str]) -> BackendGroup {
    let (namespace, rest) = svc.split_once('/').expect("ns/name:port");
    let (name, port) = rest.split_once(':').expect("ns/name:port");
    let frontends: Vec<Frontend> = frontends
        .iter()
        .map(|f| {
            let a = sock(f);
            Frontend { addr: a.ip(), port: a.port(), protocol, kind: FrontendKind::ClusterIP }
        })
        .collect();
    let family = Family::of(&frontends.first().expect("at least one frontend").addr);
    let mut eligible: Vec<SocketAddr> = backends.iter().map(|b| sock(b)).collect();
    eligible.sort();
    BackendGroup {
        service: ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        },
        family,
        frontends,
        backends: eligible.iter().map(|&addr| BackendInfo { addr, state: EndpointState::Active }).collect(),
        eligible,
        affinity_timeout: None,
    }
}

fn desired(mut groups: Vec<BackendGroup>) -> DesiredState {
    groups.sort_by(|a, b| (&a.service, a.family).cmp(&(&b.service, b.family)));
    DesiredState { groups }
}

/// What each frontend really serves in `state`, by following count → slots → backends:
/// "ip:port/proto" → (backends "ip:port/proto", affinity timeout).
fn served(state: &MapState) -> BTreeMap<String, (Vec<String>, u32)> {
    state
        .frontends
        .iter()
        .map(|(k, v)| {
            let backends = (1..=v.count)
                .map(|slot| {
                    let s = state.slots[&lb_common::SlotKey { group: v.group, slot }];
                    let b = state.backends[&s.backend];
                    format!("{}/{}", backend_addr(&b), b.proto)
                })
                .collect();
            (format!("{}/{}", k.addr(), k.proto()), (backends, v.affinity_timeout))
        })
        .collect()
}

/// What `desired` says each frontend should serve, in the same shape as `served`.
fn expected_service(desired: &DesiredState) -> BTreeMap<String, (Vec<String>, u32)> {
    let mut out = BTreeMap::new();
    for g in &desired.groups {
        let proto = g.service.protocol.number();
        let backends: Vec<String> = g.eligible.iter().map(|b| format!("{b}/{proto}")).collect();
        for f in &g.frontends {
            let key = format!("{}/{}", SocketAddr::new(f.addr, f.port), f.protocol.number());
            let previous = out.insert(key.clone(), (backends.clone(), g.affinity_timeout.unwrap_or(0)));
            assert!(previous.is_none(), "test bug: frontend {key} in two groups");
        }
    }
    out
}

/// Map writes as the human lines `MapOp` displays.
fn lines(ops: &[MapOp]) -> Vec<String> {
    ops.iter().map(ToString::to_string).collect()
}

/// Applies `ops` one by one to a copy of `from`, checking the kernel's invariant after each.
fn apply_checked(from: &MapState, ops: &[MapOp]) -> Result<MapState, String> {
    let mut state = from.clone();
    state.check().map_err(|e| format!("before any op: {e}"))?;
    for (i, op) in ops.iter().enumerate() {
        apply_in_memory(&mut state, op);
        state.check().map_err(|e| format!("after op {i} ({op}): {e}"))?;
    }
    Ok(state)
}

/// Maps shared between a `Syncer` and the test, so the test can look at and tweak them.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<MemoryMaps>>);

impl Shared {
    fn with(maps: MemoryMaps) -> Self {
        Self(Rc::new(RefCell::new(maps)))
    }
    fn state(&self) -> MapState {
        self.0.borrow().state.clone()
    }
    fn log_len(&self) -> usize {
        self.0.borrow().log.len()
    }
}

impl LbMaps for Shared {
    fn read(&self) -> Result<MapState, MapsError> {
        self.0.borrow().read()
    }
    fn apply(&mut self, op: &MapOp) -> Result<(), MapsError> {
        self.0.borrow_mut().apply(op)
    }
    fn capacity(&self) -> Capacity {
        self.0.borrow().capacity()
    }
}

// Two states used by several tests: `before` → `after` touches every phase of the diff.
fn before() -> DesiredState {
    desired(vec![
        group("ns/web:http", Protocol::Tcp, &["10.96.0.10:80"], &["10.244.1.1:8080", "10.244.1.2:8080"]),
        group("ns/old:http", Protocol::Tcp, &["10.96.0.20:80"], &["10.244.1.3:8080"]),
    ])
}

fn after() -> DesiredState {
    desired(vec![
        group("ns/web:http", Protocol::Tcp, &["10.96.0.10:80"], &["10.244.1.2:8080", "10.244.1.4:8080"]),
        group("ns/new:dns", Protocol::Udp, &["10.96.0.30:53"], &["10.244.1.2:8080"]),
    ])
}

// ---- (b) golden diff ----------------------------------------------------------------------------

#[test]
fn golden_diff_for_a_small_change() {
    let programmed = layout(&before(), &MapState::default());
    assert_eq!(
        lines(&diff(&MapState::default(), &programmed)),
        [
            "put backend 1 = 10.244.1.1:8080 state 0",
            "put backend 2 = 10.244.1.2:8080 state 0",
            "put backend 3 = 10.244.1.3:8080 state 0",
            "put slot 1/1 = backend 3",
            "put slot 2/1 = backend 1",
            "put slot 2/2 = backend 2",
            "put frontend 10.96.0.10:80/6 = group 2 count 2",
            "put frontend 10.96.0.20:80/6 = group 1 count 1",
        ]
    );

    let target = layout(&after(), &programmed);
    // Order: put backends, put slots, put frontends, delete frontends, delete slots, delete
    // backends. 10.244.1.2 over UDP is a new backend entry (a backend is address, port and
    // protocol), the unchanged web frontend is not rewritten, freed ids are not reused.
    assert_eq!(
        lines(&diff(&programmed, &target)),
        [
            "put backend 4 = 10.244.1.2:8080 state 0",
            "put backend 5 = 10.244.1.4:8080 state 0",
            "put slot 2/1 = backend 2",
            "put slot 2/2 = backend 5",
            "put slot 3/1 = backend 4",
            "put frontend 10.96.0.30:53/17 = group 3 count 1",
            "delete frontend 10.96.0.20:80/6",
            "delete slot 1/1",
            "delete backend 1",
            "delete backend 3",
        ]
    );
    assert!(diff(&target, &target).is_empty());
}

#[test]
fn golden_diff_for_state_and_affinity_changes() {
    let old = desired(vec![group(
        "ns/web:http",
        Protocol::Tcp,
        &["10.96.0.10:80", "10.96.0.11:80"],
        &["10.244.1.1:8080", "10.244.1.2:8080"],
    )]);
    let programmed = layout(&old, &MapState::default());
    // 10.244.1.1 starts terminating (still listed, no longer eligible); affinity is switched on.
    let mut new = old.clone();
    let g = &mut new.groups[0];
    g.backends[0].state = EndpointState::Terminating;
    g.eligible = vec![sock("10.244.1.2:8080")];
    g.affinity_timeout = Some(10_800);
    let target = layout(&new, &programmed);
    assert_eq!(
        lines(&diff(&programmed, &target)),
        [
            "put backend 1 = 10.244.1.1:8080 state 1",
            "put slot 1/1 = backend 2",
            "put frontend 10.96.0.10:80/6 = group 1 count 1",
            "put frontend 10.96.0.11:80/6 = group 1 count 1",
            "delete slot 1/2",
        ]
    );
    assert!(target.frontends.values().all(|v| v.affinity_timeout == 10_800));
}

#[test]
fn backend_shared_by_two_groups_is_one_entry_and_active_wins() {
    let mut a = group("ns/a:http", Protocol::Tcp, &["10.96.0.1:80"], &["10.244.1.1:8080"]);
    let mut b = group("ns/b:http", Protocol::Tcp, &["10.96.0.2:80"], &["10.244.1.1:8080"]);
    a.backends[0].state = EndpointState::Terminating;
    b.backends[0].state = EndpointState::Active;
    let state = layout(&desired(vec![a.clone(), b]), &MapState::default());
    assert_eq!(state.backends.len(), 1);
    assert_eq!(state.backends[&1].state, lb_common::backend_state::ACTIVE);
    // Terminating everywhere: terminating.
    let state = layout(&desired(vec![a]), &MapState::default());
    assert_eq!(state.backends[&1].state, lb_common::backend_state::TERMINATING);
}

#[test]
fn swapped_cluster_ips_keep_each_frontends_group() {
    let old = desired(vec![
        group("ns/a:http", Protocol::Tcp, &["10.96.0.1:80"], &["10.244.1.1:8080"]),
        group("ns/b:http", Protocol::Tcp, &["10.96.0.2:80"], &["10.244.1.2:8080"]),
    ]);
    let new = desired(vec![
        group("ns/a:http", Protocol::Tcp, &["10.96.0.2:80"], &["10.244.1.1:8080"]),
        group("ns/b:http", Protocol::Tcp, &["10.96.0.1:80"], &["10.244.1.2:8080"]),
    ]);
    let programmed = layout(&old, &MapState::default());
    let target = layout(&new, &programmed);
    // Each frontend keeps its group id; only the slots behind it change.
    for key in programmed.frontends.keys() {
        assert_eq!(programmed.frontends[key].group, target.frontends[key].group, "{}", key.addr());
    }
    assert_eq!(served(&target), expected_service(&new));
    let ops = diff(&programmed, &target);
    assert_eq!(lines(&ops), ["put slot 1/1 = backend 2", "put slot 2/1 = backend 1"]);
    apply_checked(&programmed, &ops).expect("invariant");
}

#[test]
fn group_id_is_not_reused_while_a_departing_frontend_points_at_it() {
    // 10.96.0.1 moves from ns/a to ns/b. ns/a may not keep group 1: until 10.96.0.1 is rewritten
    // it points at group 1 too, so ns/a gets a fresh id; ns/b keeps its own.
    let old = desired(vec![
        group("ns/a:http", Protocol::Tcp, &["10.96.0.1:80", "10.96.0.3:80"], &["10.244.1.1:8080"]),
        group("ns/b:http", Protocol::Tcp, &["10.96.0.2:80"], &["10.244.1.2:8080"]),
    ]);
    let new = desired(vec![
        group("ns/a:http", Protocol::Tcp, &["10.96.0.3:80"], &["10.244.1.1:8080"]),
        group("ns/b:http", Protocol::Tcp, &["10.96.0.1:80", "10.96.0.2:80"], &["10.244.1.2:8080"]),
    ]);
    let programmed = layout(&old, &MapState::default());
    let target = layout(&new, &programmed);
    check_transition(&programmed, &target, &new).expect("transition");
    let group_of = |s: &MapState, f: &str| s.frontends[&key(f, Protocol::Tcp)].group;
    assert_eq!((group_of(&programmed, "10.96.0.1:80"), group_of(&programmed, "10.96.0.2:80")), (1, 2));
    assert_eq!(group_of(&target, "10.96.0.3:80"), 3);
    assert_eq!(group_of(&target, "10.96.0.1:80"), 2);
    assert_eq!(group_of(&target, "10.96.0.2:80"), 2);
    assert!(!target.slots.keys().any(|k| k.group == 1), "group 1 is freed");
}

fn key(f: &str, protocol: Protocol) -> FrontendKey {
    let a = sock(f);
    FrontendKey::new(a.ip(), a.port(), protocol)
}

#[test]
fn ipv6_frontends_and_backends_round_trip() {
    let d = desired(vec![group(
        "ns/web:http",
        Protocol::Sctp,
        &["[fd00:10:96::10]:80"],
        &["[fd00:10:244::1]:8080", "[fd00:10:244::2]:8080"],
    )]);
    let state = layout(&d, &MapState::default());
    assert!(matches!(state.frontends.keys().next(), Some(FrontendKey::V6(_))));
    assert_eq!(served(&state), expected_service(&d));
    assert_eq!(
        served(&state).into_iter().collect::<Vec<_>>(),
        [(
            "[fd00:10:96::10]:80/132".to_owned(),
            (vec!["[fd00:10:244::1]:8080/132".to_owned(), "[fd00:10:244::2]:8080/132".to_owned()], 0)
        )]
    );
}

#[test]
fn the_checker_catches_a_break_before_make_order() {
    // The harness must be able to fail: frontends written before their slots, or backends
    // deleted before the slots naming them, break the invariant.
    let programmed = layout(&before(), &MapState::default());
    let target = layout(&after(), &programmed);
    let ops = diff(&programmed, &target);
    let mut frontends_first = ops.clone();
    frontends_first.sort_by_key(|op| !matches!(op, MapOp::PutFrontend(..)));
    let err = apply_checked(&programmed, &frontends_first).expect_err("frontend before its slot");
    assert!(err.contains("10.96.0.30:53 group 3 count 1: slot 1 missing"), "{err}");
    let mut deletes_first = ops;
    deletes_first.sort_by_key(|op| !matches!(op, MapOp::DeleteBackend(..)));
    let err = apply_checked(&programmed, &deletes_first).expect_err("backend deleted while used");
    assert!(err.contains("backend 1 missing"), "{err}");
}

// ---- transition checks shared by the proptests --------------------------------------------------

/// Every property of one `programmed` → `target = layout(new, programmed)` transition.
fn check_transition(programmed: &MapState, target: &MapState, new: &DesiredState) -> Result<(), String> {
    // Applied op by op, the invariant holds after every op, and the result is the target.
    let ops = diff(programmed, target);
    let reached = apply_checked(programmed, &ops)?;
    if reached != *target {
        return Err("applying the diff does not reach the layout".into());
    }
    // The target serves exactly the desired state, and holds nothing else.
    let (got, want) = (served(target), expected_service(new));
    if got != want {
        return Err(format!("served {got:#?}\nwanted {want:#?}"));
    }
    let slots: usize = new.groups.iter().map(|g| g.eligible.len()).sum();
    if target.slots.len() != slots {
        return Err(format!("{} slots for {slots} eligible backends", target.slots.len()));
    }
    let mut backends = BTreeSet::new();
    for g in &new.groups {
        let proto = g.service.protocol.number();
        backends.extend(g.backends.iter().map(|b| (b.addr, proto)));
        backends.extend(g.eligible.iter().map(|&a| (a, proto)));
    }
    let programmed_backends: BTreeSet<(SocketAddr, u8)> =
        target.backends.values().map(|b| (backend_addr(b), b.proto)).collect();
    if programmed_backends != backends || target.backends.len() != backends.len() {
        return Err(format!("backends {programmed_backends:?}, wanted {backends:?}"));
    }
    if target.backends.contains_key(&0) || target.frontends.values().any(|v| v.group == 0) {
        return Err("id 0 used".into());
    }
    // Ids of backends that persist are unchanged, and an id never changes its backend.
    for (id, b) in &target.backends {
        let identity = (backend_addr(b), b.proto);
        for (old_id, old) in &programmed.backends {
            let old_identity = (backend_addr(old), old.proto);
            if (old_identity == identity) != (old_id == id) {
                return Err(format!("backend {identity:?} was id {old_id}, now {id}"));
            }
        }
    }
    // A group whose frontends did not change keeps its id.
    let by_group = |s: &MapState| {
        let mut m: BTreeMap<u32, BTreeSet<FrontendKey>> = BTreeMap::new();
        for (k, v) in &s.frontends {
            m.entry(v.group).or_default().insert(*k);
        }
        m
    };
    let (old_groups, new_groups) = (by_group(programmed), by_group(target));
    for (old_id, keys) in &old_groups {
        if let Some((new_id, _)) = new_groups.iter().find(|(_, k)| *k == keys)
            && new_id != old_id
        {
            return Err(format!("group with frontends {keys:?} was id {old_id}, now {new_id}"));
        }
    }
    // A group id that stays in use keeps every frontend that used it (no frontend ever sees
    // another Service's slots through a reused id).
    for (old_id, keys) in &old_groups {
        if let Some(new_keys) = new_groups.get(old_id)
            && let Some(k) = keys.iter().find(|k| target.frontends.contains_key(k) && !new_keys.contains(k))
        {
            return Err(format!("{} pointed at group {old_id}, which now belongs to others", k.addr()));
        }
    }
    // Converged: laying out the same state again changes nothing.
    let again = layout(new, target);
    if again != *target {
        return Err(format!("not idempotent: {:?}", lines(&diff(target, &again))));
    }
    Ok(())
}

// ---- (a) proptest of random transitions --------------------------------------------------------

const SERVICES: usize = 4;
const VIPS: u8 = 5;
const PODS: usize = 5;

/// One Service of the generated world.
#[derive(Clone, Copy, Debug, Default)]
struct Svc {
    present: bool,
    v4: Option<u8>,
    v6: Option<u8>,
    /// Also has a UDP port `dns` 53 (besides `http` 80/TCP).
    udp: bool,
    /// Per pod: 0 absent, 1 ready, 2 serving+terminating.
    pods: [u8; PODS],
    affinity: Option<u32>,
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Toggle(usize),
    SetV4(usize, Option<u8>),
    SetV6(usize, Option<u8>),
    Pod(usize, usize, u8),
    ToggleUdp(usize),
    Affinity(usize, Option<u32>),
    /// ClusterIP reassignment: two Services swap their addresses.
    Swap(usize, usize),
}

fn change() -> impl Strategy<Value = Change> {
    let svc = 0..SERVICES;
    let vip = prop::option::weighted(0.8, 0..VIPS);
    prop_oneof![
        1 => svc.clone().prop_map(Change::Toggle),
        1 => (svc.clone(), vip.clone()).prop_map(|(s, v)| Change::SetV4(s, v)),
        1 => (svc.clone(), vip).prop_map(|(s, v)| Change::SetV6(s, v)),
        4 => (svc.clone(), 0..PODS, 0..3u8).prop_map(|(s, p, st)| Change::Pod(s, p, st)),
        1 => svc.clone().prop_map(Change::ToggleUdp),
        1 => (svc.clone(), prop::option::of(1..100u32)).prop_map(|(s, t)| Change::Affinity(s, t)),
        2 => (svc.clone(), svc).prop_map(|(a, b)| Change::Swap(a, b)),
    ]
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        prop::bool::weighted(0.8),
        prop::option::weighted(0.9, 0..VIPS),
        prop::option::of(0..VIPS),
        any::<bool>(),
        prop::array::uniform5(0..3u8),
        prop::option::of(1..100u32),
    )
        .prop_map(|(present, v4, v6, udp, pods, affinity)| Svc { present, v4, v6, udp, pods, affinity })
}

fn apply_change(world: &mut [Svc; SERVICES], c: Change) {
    match c {
        Change::Toggle(s) => world[s].present = !world[s].present,
        Change::SetV4(s, v) => world[s].v4 = v,
        Change::SetV6(s, v) => world[s].v6 = v,
        Change::Pod(s, p, st) => world[s].pods[p] = st,
        Change::ToggleUdp(s) => world[s].udp = !world[s].udp,
        Change::Affinity(s, t) => world[s].affinity = t,
        Change::Swap(a, b) => {
            let (v4, v6) = (world[a].v4, world[a].v6);
            (world[a].v4, world[a].v6) = (world[b].v4, world[b].v6);
            (world[b].v4, world[b].v6) = (v4, v6);
        }
    }
}

/// The desired state of a world, built the way `translate` builds it: sorted, one group per port
/// and family, a Service whose frontend is already taken left out, eligible = ready backends or
/// else the terminating ones. Pods are shared between Services (so are backend entries).
fn world_state(world: &[Svc; SERVICES]) -> DesiredState {
    let mut claimed = BTreeSet::new();
    let mut groups = Vec::new();
    for (i, s) in world.iter().enumerate() {
        if !s.present {
            continue;
        }
        let ips: Vec<IpAddr> =
            s.v4.map(|v| IpAddr::V4(Ipv4Addr::new(10, 96, 0, v + 1)))
                .into_iter()
                .chain(s.v6.map(|v| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(v) + 1))))
                .collect();
        let mut ports = vec![("http", 80, Protocol::Tcp)];
        if s.udp {
            ports.push(("dns", 53, Protocol::Udp));
        }
        let frontends: Vec<(IpAddr, u16, Protocol)> =
            ports.iter().flat_map(|&(_, port, proto)| ips.iter().map(move |&ip| (ip, port, proto))).collect();
        if frontends.iter().any(|f| claimed.contains(f)) {
            continue;
        }
        claimed.extend(frontends);
        for &(port_name, port, protocol) in &ports {
            for family in [Family::V4, Family::V6] {
                let fronts: Vec<Frontend> = ips
                    .iter()
                    .filter(|ip| Family::of(ip) == family)
                    .map(|&addr| Frontend { addr, port, protocol, kind: FrontendKind::ClusterIP })
                    .collect();
                if fronts.is_empty() {
                    continue;
                }
                let pod_addr = |p: usize| -> SocketAddr {
                    let p = u8::try_from(p).expect("few pods") + 1;
                    let ip = match family {
                        Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 244, 0, p)),
                        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, u16::from(p))),
                    };
                    SocketAddr::new(ip, 8080)
                };
                let backends: Vec<BackendInfo> = (0..PODS)
                    .filter(|&p| s.pods[p] != 0)
                    .map(|p| BackendInfo {
                        addr: pod_addr(p),
                        state: if s.pods[p] == 1 {
                            EndpointState::Active
                        } else {
                            EndpointState::Terminating
                        },
                    })
                    .collect();
                let ready: Vec<SocketAddr> =
                    backends.iter().filter(|b| b.state == EndpointState::Active).map(|b| b.addr).collect();
                let eligible =
                    if ready.is_empty() { backends.iter().map(|b| b.addr).collect() } else { ready };
                groups.push(BackendGroup {
                    service: ServicePortName {
                        namespace: "ns".into(),
                        name: format!("svc-{i}"),
                        port: port_name.into(),
                        protocol,
                    },
                    family,
                    frontends: fronts,
                    eligible,
                    backends,
                    affinity_timeout: s.affinity,
                });
            }
        }
    }
    desired(groups)
}

/// A start world, then batches of changes.
fn scenario() -> impl Strategy<Value = ([Svc; SERVICES], Vec<Vec<Change>>)> {
    (prop::array::uniform4(svc()), prop::collection::vec(prop::collection::vec(change(), 1..5), 1..12))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_transition_keeps_the_datapath_consistent((start, batches) in scenario()) {
        let mut world = start;
        let mut programmed = MapState::default();
        let mut states = vec![world_state(&world)];
        for batch in &batches {
            for c in batch {
                apply_change(&mut world, *c);
            }
            states.push(world_state(&world));
        }
        // Also end by removing everything.
        states.push(DesiredState::default());
        for (step, new) in states.iter().enumerate() {
            let target = layout(new, &programmed);
            if let Err(e) = check_transition(&programmed, &target, new) {
                return Err(TestCaseError::fail(format!("step {step}: {e}")));
            }
            programmed = target;
        }
        prop_assert_eq!(programmed, MapState::default());
    }

    #[test]
    fn syncer_converges_after_a_failure_anywhere(
        (start, batches) in scenario(),
        fail_points in prop::collection::vec(any::<prop::sample::Index>(), 12),
    ) {
        let maps = Shared::default();
        let mut syncer = Syncer::new(maps.clone()).expect("memory maps read");
        let mut world = start;
        syncer.sync(&world_state(&world)).expect("first sync");
        for (batch, fail) in batches.iter().zip(&fail_points) {
            for c in batch {
                apply_change(&mut world, *c);
            }
            let new = world_state(&world);
            let ops = diff(&maps.state(), &layout(&new, &maps.state())).len();
            if ops > 0 {
                let at = fail.index(ops);
                let before = maps.log_len();
                maps.0.borrow_mut().fail_at = Some(before + at);
                prop_assert!(syncer.sync(&new).is_err());
                prop_assert_eq!(maps.log_len(), before + at);
                if let Err(e) = maps.state().check() {
                    return Err(TestCaseError::fail(format!("after a failure at op {at} of {ops}: {e}")));
                }
                maps.0.borrow_mut().fail_at = None;
            }
            syncer.sync(&new).expect("sync after the failure");
            prop_assert_eq!(served(&maps.state()), expected_service(&new));
            prop_assert_eq!(&maps.state(), syncer.programmed());
            let report = syncer.sync(&new).expect("resync");
            prop_assert_eq!((report.written, report.removed), (0, 0));
        }
    }
}

// ---- (c) Syncer with a failing write ------------------------------------------------------------

#[test]
fn failed_apply_leaves_a_consistent_state_and_the_next_sync_converges() {
    let total = {
        let programmed = layout(&before(), &MapState::default());
        diff(&programmed, &layout(&after(), &programmed)).len()
    };
    assert_eq!(total, 10);
    for k in 0..total {
        let maps = Shared::default();
        let mut syncer = Syncer::new(maps.clone()).expect("read");
        syncer.sync(&before()).expect("first sync");
        let first = maps.log_len();
        maps.0.borrow_mut().fail_at = Some(first + k);

        let err = syncer.sync(&after()).expect_err("the write fails");
        assert!(matches!(err, MapsError::Write { .. }), "{err}");
        assert_eq!(maps.log_len(), first + k, "ops applied before the failure");
        maps.state().check().unwrap_or_else(|e| panic!("failure at op {k}: {e}"));
        // Still failing: nothing more is written, state still consistent.
        assert!(syncer.sync(&after()).is_err());
        maps.state().check().unwrap_or_else(|e| panic!("second failure at op {k}: {e}"));

        maps.0.borrow_mut().fail_at = None;
        let report = syncer.sync(&after()).expect("converges");
        assert_eq!(report.frontends, 2);
        assert_eq!(report.backends, 3);
        assert_eq!(served(&maps.state()), expected_service(&after()), "failure at op {k}");
        assert_eq!(&maps.state(), syncer.programmed());
        let report = syncer.sync(&after()).expect("resync");
        assert_eq!(report, SyncReport { written: 0, removed: 0, frontends: 2, backends: 3 });
    }
}

#[test]
fn failure_on_the_first_sync_then_converges() {
    let maps = Shared::with(MemoryMaps { fail_at: Some(4), ..Default::default() });
    let mut syncer = Syncer::new(maps.clone()).expect("read");
    assert!(syncer.sync(&before()).is_err());
    assert_eq!(maps.log_len(), 4);
    maps.state().check().expect("consistent");
    assert!(maps.state().frontends.is_empty(), "no frontend before all its slots");
    maps.0.borrow_mut().fail_at = None;
    syncer.sync(&before()).expect("converges");
    assert_eq!(served(&maps.state()), expected_service(&before()));
    // The backends that did land are not written again.
    let puts = maps.0.borrow().log.iter().filter(|op| matches!(op, MapOp::PutBackend(..))).count();
    assert_eq!(puts, 3);
}

// ---- (d) capacity -------------------------------------------------------------------------------

#[test]
fn over_capacity_fails_before_writing_anything() {
    let cap = |frontends, slots, backends| Some(Capacity { frontends, slots, backends });
    for (capacity, map, needed) in [
        (cap(1, 10, 10), lb_common::map_names::FRONTENDS_V4, 2),
        (cap(10, 2, 10), lb_common::map_names::SLOTS, 3),
        (cap(10, 10, 2), lb_common::map_names::BACKENDS, 3),
    ] {
        let maps = Shared::with(MemoryMaps { capacity, ..Default::default() });
        let mut syncer = Syncer::new(maps.clone()).expect("read");
        match syncer.sync(&before()) {
            Err(MapsError::Full { name, needed: n, .. }) => assert_eq!((name, n), (map, needed)),
            other => panic!("{map}: expected Full, got {other:?}"),
        }
        assert_eq!(maps.log_len(), 0, "{map}: nothing written");
        assert_eq!(maps.state(), MapState::default());
    }
}

#[test]
fn over_capacity_keeps_what_is_programmed() {
    let maps = Shared::with(MemoryMaps {
        capacity: Some(Capacity { frontends: 1, slots: 10, backends: 10 }),
        ..Default::default()
    });
    let mut syncer = Syncer::new(maps.clone()).expect("read");
    let one = desired(vec![group("ns/web:http", Protocol::Tcp, &["10.96.0.10:80"], &["10.244.1.1:8080"])]);
    syncer.sync(&one).expect("fits");
    let programmed = maps.state();
    let err = syncer.sync(&before()).expect_err("two IPv4 frontends do not fit");
    assert!(matches!(err, MapsError::Full { needed: 2, capacity: 1, .. }), "{err}");
    assert_eq!(maps.state(), programmed);
    // One IPv4 and one IPv6 frontend fit: the families have a map each.
    let dual = desired(vec![
        group("ns/web:http", Protocol::Tcp, &["10.96.0.10:80"], &["10.244.1.1:8080"]),
        group("ns/web:http", Protocol::Tcp, &["[fd00::10]:80"], &["[fd00::1]:8080"]),
    ]);
    syncer.sync(&dual).expect("fits");
    assert_eq!(served(&maps.state()), expected_service(&dual));
}

// ---- (e) restart --------------------------------------------------------------------------------

#[test]
fn restarted_syncer_adopts_the_programmed_ids() {
    let maps = Shared::default();
    let mut first = Syncer::new(maps.clone()).expect("read");
    first.sync(&before()).expect("sync");
    let programmed = maps.state();
    let written = maps.log_len();
    drop(first);

    let mut second = Syncer::new(maps.clone()).expect("read");
    assert_eq!(second.programmed(), &programmed);
    let report = second.sync(&before()).expect("sync");
    assert_eq!(report, SyncReport { written: 0, removed: 0, frontends: 2, backends: 3 });
    assert_eq!(maps.log_len(), written, "no op written");
    assert_eq!(maps.state(), programmed);

    // A later change keeps the ids of what persists.
    second.sync(&after()).expect("sync");
    let state = maps.state();
    let id_of = |s: &MapState, addr: &str| {
        s.backends.iter().find(|(_, b)| backend_addr(b) == sock(addr) && b.proto == 6).map(|(id, _)| *id)
    };
    assert_eq!(id_of(&state, "10.244.1.2:8080"), id_of(&programmed, "10.244.1.2:8080"));
    let web = key("10.96.0.10:80", Protocol::Tcp);
    assert_eq!(state.frontends[&web].group, programmed.frontends[&web].group);
}

#[test]
fn restart_over_maps_from_an_unknown_layout_converges() {
    // Maps left by an agent that numbered differently (ids 100+): adopted, not renumbered.
    let foreign = {
        let mut s = layout(&before(), &MapState::default());
        let renumber = |id: u32| id + 100;
        s.backends = s.backends.into_iter().map(|(id, b)| (renumber(id), b)).collect();
        s.slots = s
            .slots
            .into_iter()
            .map(|(k, v)| {
                (
                    lb_common::SlotKey { group: renumber(k.group), slot: k.slot },
                    lb_common::SlotValue { backend: renumber(v.backend) },
                )
            })
            .collect();
        for v in s.frontends.values_mut() {
            v.group = renumber(v.group);
        }
        s
    };
    foreign.check().expect("consistent");
    let maps = Shared::with(MemoryMaps { state: foreign.clone(), ..Default::default() });
    let mut syncer = Syncer::new(maps.clone()).expect("read");
    let report = syncer.sync(&before()).expect("sync");
    assert_eq!((report.written, report.removed), (0, 0));
    assert_eq!(maps.state(), foreign);
    let target = layout(&after(), &foreign);
    check_transition(&foreign, &target, &after()).expect("transition from foreign ids");
}
