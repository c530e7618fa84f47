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
    maglev,
    state::{
        FrontendKey, LayoutOptions, MapState, Reserved, SourceRange, backend_addr, layout, layout_reserving,
    },
};
use crate::{
    kernel::maps::{Capacity, LbMaps, MapsError, MemoryMaps},
    model::{
        BackendGroup, BackendInfo, Cidr, DesiredState, EndpointState, Family, Frontend, FrontendKind,
        Protocol, Scope, ServicePortName, WhenEmpty,
    },
    sync::{SyncReport, Syncer},
};

// ---- builders -----------------------------------------------------------------------------------

pub(crate) fn sock(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

/// A frontend from its test spelling: "ip:port" is a ClusterIP, "ext ip:port" an externalIP,
/// "lb ip:port" a LoadBalancer IP, "np4 port" / "np6 port" a NodePort of that family.
fn frontend(spelling: &str, protocol: Protocol) -> Frontend {
    let node_port = |ip: IpAddr, port: &str| SocketAddr::new(ip, port.parse().expect("test port"));
    let (kind, a) = match spelling.split_once(' ') {
        None => (FrontendKind::ClusterIP, sock(spelling)),
        Some(("ext", rest)) => (FrontendKind::ExternalIP, sock(rest)),
        Some(("lb", rest)) => (FrontendKind::LoadBalancer, sock(rest)),
        Some(("np4", port)) => (FrontendKind::NodePort, node_port(Ipv4Addr::UNSPECIFIED.into(), port)),
        Some(("np6", port)) => (FrontendKind::NodePort, node_port(Ipv6Addr::UNSPECIFIED.into(), port)),
        Some((other, _)) => panic!("test bug: frontend kind {other:?}"),
    };
    Frontend { addr: a.ip(), port: a.port(), protocol, kind }
}

/// A group of Service `ns/name` port `port_name`, with `frontends` (see `frontend`) and
/// `backends` ("ip:port", all ready). Eligible = every backend. External when its frontends are.
pub(crate) fn group(svc: &str, protocol: Protocol, frontends: &[&str], backends: &[&str]) -> BackendGroup {
    let (namespace, rest) = svc.split_once('/').expect("ns/name:port");
    let (name, port) = rest.split_once(':').expect("ns/name:port");
    let frontends: Vec<Frontend> = frontends.iter().map(|f| frontend(f, protocol)).collect();
    let family = Family::of(&frontends.first().expect("at least one frontend").addr);
    let scope = if frontends[0].kind == FrontendKind::ClusterIP { Scope::Internal } else { Scope::External };
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
        scope,
        frontends,
        backends: eligible
            .iter()
            .map(|&addr| BackendInfo { addr, state: EndpointState::Active, local: false })
            .collect(),
        from_node: eligible.clone().into(),
        eligible: eligible.into(),
        when_empty: WhenEmpty::Reject,
        affinity_timeout: None,
        source_ranges: vec![],
        health_check_node_port: None,
    }
}

pub(crate) fn desired(mut groups: Vec<BackendGroup>) -> DesiredState {
    groups.sort_by(|a, b| (&a.service, a.family, a.scope).cmp(&(&b.service, b.family, b.scope)));
    DesiredState { groups, node_addresses: vec![] }
}

pub(crate) fn with_nodes(mut state: DesiredState, addresses: &[&str]) -> DesiredState {
    state.node_addresses = addresses.iter().map(|a| a.parse().expect("test address")).collect();
    state
}

/// What a frontend serves: backends "ip:port/proto" in slot order, affinity timeout, flags.
type Served = (Vec<String>, u32, u32);

/// What each frontend really serves in `state`, by following count → slots → backends:
/// "ip:port/proto" → `Served`.
fn served(state: &MapState) -> BTreeMap<String, Served> {
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
            (format!("{}/{}", k.addr(), k.proto()), (backends, v.affinity_timeout, v.flags))
        })
        .collect()
}

/// What `desired` says each frontend should serve, in the same shape as `served`: NodePorts on
/// every node address of their family, except where an explicit frontend (ClusterIP, externalIP,
/// LB IP) has the same address, port and protocol.
fn expected_service(desired: &DesiredState) -> BTreeMap<String, Served> {
    expected_service_with(desired, &LayoutOptions::default())
}

/// As `expected_service`, with a Maglev group's slots holding its table.
fn expected_service_with(desired: &DesiredState, options: &LayoutOptions) -> BTreeMap<String, Served> {
    let mut out = BTreeMap::new();
    let mut node_ports = BTreeMap::new();
    for g in &desired.groups {
        let proto = g.service.protocol.number();
        let slots: Vec<SocketAddr> = if options.maglev(g) {
            maglev::table(&g.from_node, options.maglev_size).into_iter().map(|i| g.from_node[i]).collect()
        } else {
            g.from_node.to_vec()
        };
        let backends: Vec<String> = slots.iter().map(|b| format!("{b}/{proto}")).collect();
        let drop = if g.from_node.is_empty() && g.when_empty == WhenEmpty::Drop {
            lb_common::frontend_flags::DROP_WHEN_EMPTY
        } else {
            0
        };
        for f in &g.frontends {
            let ranges = if f.kind == FrontendKind::LoadBalancer && !g.source_ranges.is_empty() {
                lb_common::frontend_flags::SOURCE_RANGES
            } else {
                0
            };
            let value = (backends.clone(), g.affinity_timeout.unwrap_or(0), f.kind.flag() | drop | ranges);
            if f.kind == FrontendKind::NodePort {
                for a in desired.node_addresses.iter().filter(|a| Family::of(a) == g.family) {
                    let key = format!("{}/{proto}", SocketAddr::new(*a, f.port));
                    let previous = node_ports.insert(key.clone(), value.clone());
                    assert!(previous.is_none(), "test bug: NodePort {key} in two groups");
                }
            } else {
                let key = format!("{}/{proto}", SocketAddr::new(f.addr, f.port));
                let previous = out.insert(key.clone(), value);
                assert!(previous.is_none(), "test bug: frontend {key} in two groups");
            }
        }
    }
    for (key, value) in node_ports {
        out.entry(key).or_insert(value);
    }
    out
}

/// Map writes as the human lines `MapOp` displays.
fn lines(ops: &[MapOp]) -> Vec<String> {
    ops.iter().map(ToString::to_string).collect()
}

/// Applies `ops` one by one to a copy of `from`, checking the kernel's invariant after each, and
/// that no intermediate state turns away a source both ends admit (`check_admission`).
fn apply_checked(from: &MapState, ops: &[MapOp]) -> Result<MapState, String> {
    let mut to = from.clone();
    for op in ops {
        apply_in_memory(&mut to, op);
    }
    let mut state = from.clone();
    state.check().map_err(|e| format!("before any op: {e}"))?;
    for (i, op) in ops.iter().enumerate() {
        apply_in_memory(&mut state, op);
        state.check().map_err(|e| format!("after op {i} ({op}): {e}"))?;
        check_admission(from, &to, &state).map_err(|e| format!("after op {i} ({op}): {e}"))?;
    }
    Ok(state)
}

/// Whether `state` lets a packet from `src` start a flow to frontend `key` (`None`: no such
/// frontend), as `lb-ebpf`'s `source_range::allowed` decides.
fn admits(state: &MapState, key: &FrontendKey, src: &IpAddr) -> Option<bool> {
    let v = state.frontends.get(key)?;
    Some(
        v.flags & lb_common::frontend_flags::SOURCE_RANGES == 0
            || state.source_ranges.iter().any(|r| r.group == v.group && r.cidr.contains(src)),
    )
}

/// Sources worth trying against `states`: the first and last address of every range, every
/// frontend address, and one address outside everything per family.
fn probe_sources(states: &[&MapState]) -> BTreeSet<IpAddr> {
    let mut out: BTreeSet<IpAddr> =
        ["203.0.113.254", "2001:db8:ffff::1"].iter().map(|a| a.parse().expect("test address")).collect();
    for state in states {
        out.extend(state.frontends.keys().map(|k| k.addr().ip()));
        for r in &state.source_ranges {
            out.insert(r.cidr.addr);
            out.insert(match r.cidr.addr {
                IpAddr::V4(a) => IpAddr::V4(
                    (u32::from(a) | u32::MAX.checked_shr(u32::from(r.cidr.prefix)).unwrap_or(0)).into(),
                ),
                IpAddr::V6(a) => IpAddr::V6(
                    (u128::from(a) | u128::MAX.checked_shr(u32::from(r.cidr.prefix)).unwrap_or(0)).into(),
                ),
            });
        }
    }
    out
}

/// The source-range property of `mid`, a state on the way from `from` to `to`: each frontend
/// admits every source that both ends admit there (one end, for a frontend only one end has), so
/// no change turns away a client that is allowed before and after it; and a frontend that keeps
/// its group admits no source that neither end admits.
fn check_admission(from: &MapState, to: &MapState, mid: &MapState) -> Result<(), String> {
    let sources = probe_sources(&[from, to, mid]);
    for key in mid.frontends.keys() {
        let same_group = matches!(
            (from.frontends.get(key), to.frontends.get(key)),
            (Some(a), Some(b)) if a.group == b.group
        );
        for src in sources.iter().filter(|s| s.is_ipv4() == key.addr().is_ipv4()) {
            let now = admits(mid, key, src).expect("frontend of mid");
            let ends: Vec<bool> =
                [admits(from, key, src), admits(to, key, src)].into_iter().flatten().collect();
            if ends.iter().all(|a| *a) && !now {
                return Err(format!("{} turns away {src}, which {ends:?} admit", key.addr()));
            }
            if same_group && now && !ends.iter().any(|a| *a) {
                return Err(format!("{} admits {src}, which neither end admits", key.addr()));
            }
        }
    }
    Ok(())
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
    fn raise_backend_epoch(&mut self) -> Result<(), MapsError> {
        self.0.borrow_mut().raise_backend_epoch()
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
            "put service 1 = ns/old:http",
            "put service 2 = ns/web:http",
            "put frontend 10.96.0.10:80/6 = group 2 count 2",
            "put frontend 10.96.0.20:80/6 = group 1 count 1",
        ]
    );

    let target = layout(&after(), &programmed);
    // Order: put backends, put slots, put service names, put frontends, delete frontends, delete
    // slots, delete service names, delete backends. 10.244.1.2 over UDP is a new backend entry (a backend is address, port and
    // protocol), the unchanged web frontend is not rewritten, freed ids are not reused.
    assert_eq!(
        lines(&diff(&programmed, &target)),
        [
            "put backend 4 = 10.244.1.2:8080 state 0",
            "put backend 5 = 10.244.1.4:8080 state 0",
            "put slot 2/1 = backend 2",
            "put slot 2/2 = backend 5",
            "put slot 3/1 = backend 4",
            "put service 3 = ns/new:dns",
            "put frontend 10.96.0.30:53/17 = group 3 count 1",
            "delete frontend 10.96.0.20:80/6",
            "delete slot 1/1",
            "delete service 1",
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
    g.eligible = [sock("10.244.1.2:8080")].into();
    g.from_node = g.eligible.clone();
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
    // Each group id now serves the other Service: its name (and counters) follow.
    assert_eq!(
        lines(&ops),
        [
            "put slot 1/1 = backend 2",
            "put slot 2/1 = backend 1",
            "put service 1 = ns/b:http",
            "put service 2 = ns/a:http"
        ]
    );
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

#[test]
fn node_ports_expand_to_node_addresses_and_drop_is_flagged() {
    use lb_common::frontend_flags::{CLUSTER_IP, DROP_WHEN_EMPTY, EXTERNAL_IP, NODE_PORT};
    // ns/web: eTP Local without a local endpoint (drop) on its NodePort 30080, both families.
    // ns/other: an externalIP on a node address with the same port: it wins that address.
    let drop = |mut g: BackendGroup| {
        g.backends =
            vec![BackendInfo { addr: sock("10.244.2.1:8080"), state: EndpointState::Active, local: false }];
        g.eligible = [].into();
        g.from_node = [].into();
        g.when_empty = WhenEmpty::Drop;
        g
    };
    let world = |web_v4: BackendGroup| {
        desired(vec![
            group("ns/web:http", Protocol::Tcp, &["10.96.0.10:80"], &["10.244.2.1:8080"]),
            web_v4,
            group("ns/web:http", Protocol::Tcp, &["np6 30080"], &["[fd00::1]:8080"]),
            group("ns/other:http", Protocol::Tcp, &["ext 192.168.0.2:30080"], &["10.244.1.9:8080"]),
        ])
    };
    let web_v4 = group("ns/web:http", Protocol::Tcp, &["np4 30080"], &[]);
    let nodes = ["192.168.0.1", "192.168.0.2", "fd00:1::1"];
    let old = with_nodes(world(drop(web_v4.clone())), &nodes);
    let programmed = layout(&old, &MapState::default());
    check_transition(&MapState::default(), &programmed, &old).expect("transition");
    let backends = |b: &[&str]| b.iter().map(|b| format!("{b}/6")).collect::<Vec<_>>();
    let want = |web_np4: Served| -> BTreeMap<String, Served> {
        [
            ("10.96.0.10:80/6", (backends(&["10.244.2.1:8080"]), 0, CLUSTER_IP)),
            ("192.168.0.1:30080/6", web_np4),
            ("192.168.0.2:30080/6", (backends(&["10.244.1.9:8080"]), 0, EXTERNAL_IP)),
            ("[fd00:1::1]:30080/6", (backends(&["[fd00::1]:8080"]), 0, NODE_PORT)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    assert_eq!(served(&programmed), want((vec![], 0, NODE_PORT | DROP_WHEN_EMPTY)));

    // A local endpoint appears: served, and the flag goes.
    let new =
        with_nodes(world(group("ns/web:http", Protocol::Tcp, &["np4 30080"], &["10.244.1.1:8080"])), &nodes);
    let target = layout(&new, &programmed);
    check_transition(&programmed, &target, &new).expect("transition");
    assert_eq!(served(&target), want((backends(&["10.244.1.1:8080"]), 0, NODE_PORT)));
    let np4 = key("192.168.0.1:30080", Protocol::Tcp);
    assert_eq!(target.frontends[&np4].group, programmed.frontends[&np4].group, "same group id");

    // Empty and no endpoint anywhere: a reject, no flag.
    let reject = with_nodes(world(web_v4), &nodes);
    let target = layout(&reject, &programmed);
    check_transition(&programmed, &target, &reject).expect("transition");
    assert_eq!(served(&target)["192.168.0.1:30080/6"], (vec![], 0, NODE_PORT));

    // The node loses an address and gains one: the NodePort follows; with no IPv6 address the
    // IPv6 NodePort group has no frontend, and no slots either.
    let moved =
        with_nodes(world(drop(group("ns/web:http", Protocol::Tcp, &["np4 30080"], &[]))), &["192.168.0.3"]);
    let target = layout(&moved, &programmed);
    check_transition(&programmed, &target, &moved).expect("transition");
    let keys: Vec<String> = served(&target).into_keys().collect();
    assert_eq!(keys, ["10.96.0.10:80/6", "192.168.0.2:30080/6", "192.168.0.3:30080/6"]);
    assert_eq!(target.slots.len(), 2, "{:?}", target.slots);
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
            (
                vec!["[fd00:10:244::1]:8080/132".to_owned(), "[fd00:10:244::2]:8080/132".to_owned()],
                0,
                lb_common::frontend_flags::CLUSTER_IP
            )
        )]
    );
}

#[test]
fn the_checker_catches_a_break_before_make_order() {
    // The harness must be able to fail: frontends written before their slots or their names
    // (counters), or backends deleted before the slots naming them, break the invariant.
    let programmed = layout(&before(), &MapState::default());
    let target = layout(&after(), &programmed);
    let ops = diff(&programmed, &target);
    let mut frontends_first = ops.clone();
    frontends_first.sort_by_key(|op| !matches!(op, MapOp::PutService(..) | MapOp::PutFrontend(..)));
    let err = apply_checked(&programmed, &frontends_first).expect_err("frontend before its slot");
    assert!(err.contains("10.96.0.30:53 group 3 count 1: slot 1 missing"), "{err}");
    let mut names_last = ops.clone();
    names_last.sort_by_key(|op| matches!(op, MapOp::PutService(..)));
    let err = apply_checked(&programmed, &names_last).expect_err("frontend before its name");
    assert!(err.contains("10.96.0.30:53 group 3: no service name"), "{err}");
    let mut deletes_first = ops;
    deletes_first.sort_by_key(|op| !matches!(op, MapOp::DeleteBackend(..)));
    let err = apply_checked(&programmed, &deletes_first).expect_err("backend deleted while used");
    assert!(err.contains("backend 1 missing"), "{err}");
}

// ---- transition checks shared by the proptests --------------------------------------------------

/// Every property of one `programmed` → `target = layout(new, programmed)` transition.
fn check_transition(programmed: &MapState, target: &MapState, new: &DesiredState) -> Result<(), String> {
    check_transition_with(programmed, target, new, &LayoutOptions::default())
}

/// As `check_transition`, for a layout made with `options`.
fn check_transition_with(
    programmed: &MapState,
    target: &MapState,
    new: &DesiredState,
    options: &LayoutOptions,
) -> Result<(), String> {
    // Applied op by op, the invariant holds after every op, and the result is the target.
    let ops = diff(programmed, target);
    let reached = apply_checked(programmed, &ops)?;
    if reached != *target {
        return Err("applying the diff does not reach the layout".into());
    }
    // The target serves exactly the desired state, and holds nothing else.
    let (got, want) = (served(target), expected_service_with(new, options));
    if got != want {
        return Err(format!("served {got:#?}\nwanted {want:#?}"));
    }
    // Source ranges: exactly those of each group with a LoadBalancer frontend, under its id, plus
    // its LB IPs when a node address is in a range (kube-proxy rule 10); nothing for other groups.
    let mut want_ranges = BTreeSet::new();
    for g in new.groups.iter().filter(|g| !g.source_ranges.is_empty()) {
        let vips: Vec<&Frontend> =
            g.frontends.iter().filter(|f| f.kind == FrontendKind::LoadBalancer).collect();
        let Some(id) = vips
            .iter()
            .find_map(|f| target.frontends.get(&FrontendKey::new(f.addr, f.port, f.protocol)))
            .map(|v| v.group)
        else {
            continue;
        };
        want_ranges.extend(g.source_ranges.iter().map(|&cidr| SourceRange { group: id, cidr }));
        if new.node_addresses.iter().any(|a| g.source_ranges.iter().any(|r| r.contains(a))) {
            want_ranges.extend(vips.iter().map(|f| SourceRange { group: id, cidr: Cidr::host(f.addr) }));
        }
    }
    if target.source_ranges != want_ranges {
        return Err(format!("source ranges {:?}, wanted {want_ranges:?}", target.source_ranges));
    }
    // Every slot is reachable: it belongs to a frontend's group, within its count (and every
    // frontend of a group has the same count). With `check`, the slots are exactly 1..=count.
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for v in target.frontends.values() {
        let end = v.count.max(v.ext_offset + v.ext_count);
        if *counts.entry(v.group).or_insert(end) != end {
            return Err(format!("group {} has frontends with different counts", v.group));
        }
    }
    // Packets from outside reach exactly the eligible backends of each frontend's group.
    for g in &new.groups {
        let want: BTreeSet<String> =
            g.eligible.iter().map(|a| format!("{a}/{}", g.service.protocol.number())).collect();
        for f in g.frontends.iter().filter(|f| !f.on_every_node_address()) {
            let Some(v) = target.frontends.get(&FrontendKey::new(f.addr, f.port, f.protocol)) else {
                continue; // a conflicting frontend another group owns
            };
            let slot_set = |range: std::ops::RangeInclusive<u32>| -> BTreeSet<String> {
                range
                    .map(|slot| {
                        let s = target.slots[&lb_common::SlotKey { group: v.group, slot }];
                        let b = target.backends[&s.backend];
                        format!("{}/{}", backend_addr(&b), b.proto)
                    })
                    .collect()
            };
            // Only a frontend this group owns (its socket range is this group's `from_node`).
            let from_node: BTreeSet<String> =
                g.from_node.iter().map(|a| format!("{a}/{}", g.service.protocol.number())).collect();
            if slot_set(1..=v.count) != from_node {
                continue;
            }
            let got = slot_set(v.ext_offset + 1..=v.ext_offset + v.ext_count);
            if got != want {
                return Err(format!("{f}: packets reach {got:?}, wanted {want:?}"));
            }
        }
    }
    if let Some(k) = target.slots.keys().find(|k| counts.get(&k.group).is_none_or(|c| k.slot > *c)) {
        return Err(format!("slot {}/{} is unreachable", k.group, k.slot));
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
    let again = layout_reserving(new, target, &Reserved::default(), options);
    if again != *target {
        return Err(format!("not idempotent: {:?}", lines(&diff(target, &again))));
    }
    Ok(())
}

// ---- (a) proptest of random transitions --------------------------------------------------------

const SERVICES: usize = 4;
const VIPS: u8 = 5;
const PODS: usize = 5;
/// Pods `0..LOCAL_PODS` run on this node.
const LOCAL_PODS: usize = 2;
/// NodePort numbers; 80 collides with the http port of externalIPs on a node address.
const NODE_PORTS: [u16; 3] = [80, 30000, 30001];
/// externalIP choices: the first of each family is also a node address (when present).
const EXTERNAL_IPS: [&str; 4] = ["192.168.0.1", "192.168.0.9", "fd00:1::1", "fd00:1::9"];
/// Node address choices, by bit of `World::nodes`.
const NODE_ADDRS: [&str; 3] = ["192.168.0.1", "192.168.0.2", "fd00:1::1"];
/// LoadBalancer ingress IP choices (two Services may pick the same one: the later is left out).
const LB_IPS: [&str; 4] = ["192.0.2.1", "192.0.2.2", "fd00:2::1", "fd00:2::2"];
/// `loadBalancerSourceRanges` choices, by bit of `Svc::ranges`; 192.168.0.0/24 and fd00:1::/64
/// hold node addresses, 10.1.0.0/16 is inside 10.0.0.0/8.
const RANGES: [&str; 6] =
    ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24", "203.0.113.7/32", "fd00:1::/64", "fd00:9::/32"];

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
    /// NodePort of the http port, an index into `NODE_PORTS`.
    node_port: Option<u8>,
    /// An index into `EXTERNAL_IPS`.
    external: Option<u8>,
    internal_local: bool,
    external_local: bool,
    /// A LoadBalancer ingress IP, an index into `LB_IPS`.
    lb: Option<u8>,
    /// Bit i: `RANGES[i]` is a source range.
    ranges: u8,
}

#[derive(Clone, Copy, Debug, Default)]
struct World {
    svcs: [Svc; SERVICES],
    /// Bit i: this node has `NODE_ADDRS[i]`.
    nodes: u8,
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
    NodePort(usize, Option<u8>),
    External(usize, Option<u8>),
    /// internalTrafficPolicy, externalTrafficPolicy Local or not.
    Policy(usize, bool, bool),
    /// The node's addresses change.
    Nodes(u8),
    LoadBalancer(usize, Option<u8>),
    Ranges(usize, u8),
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
        2 => (svc.clone(), svc.clone()).prop_map(|(a, b)| Change::Swap(a, b)),
        1 => (svc.clone(), prop::option::of(0..3u8)).prop_map(|(s, n)| Change::NodePort(s, n)),
        1 => (svc.clone(), prop::option::of(0..4u8)).prop_map(|(s, e)| Change::External(s, e)),
        2 => (svc.clone(), any::<bool>(), any::<bool>()).prop_map(|(s, i, e)| Change::Policy(s, i, e)),
        1 => (0..8u8).prop_map(Change::Nodes),
        1 => (svc.clone(), prop::option::of(0..4u8)).prop_map(|(s, l)| Change::LoadBalancer(s, l)),
        2 => (svc, 0..64u8).prop_map(|(s, r)| Change::Ranges(s, r)),
    ]
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        (
            prop::bool::weighted(0.8),
            prop::option::weighted(0.9, 0..VIPS),
            prop::option::of(0..VIPS),
            any::<bool>(),
            prop::array::uniform5(0..3u8),
            prop::option::of(1..100u32),
        ),
        (
            prop::option::of(0..3u8),
            prop::option::of(0..4u8),
            prop::bool::weighted(0.2),
            any::<bool>(),
            prop::option::of(0..4u8),
            0..64u8,
        ),
    )
        .prop_map(
            |(
                (present, v4, v6, udp, pods, affinity),
                (node_port, external, internal_local, external_local, lb, ranges),
            )| {
                Svc {
                    present,
                    v4,
                    v6,
                    udp,
                    pods,
                    affinity,
                    node_port,
                    external,
                    internal_local,
                    external_local,
                    lb,
                    ranges,
                }
            },
        )
}

fn world() -> impl Strategy<Value = World> {
    (prop::array::uniform4(svc()), 0..8u8).prop_map(|(svcs, nodes)| World { svcs, nodes })
}

fn apply_change(world: &mut World, c: Change) {
    let svcs = &mut world.svcs;
    match c {
        Change::Toggle(s) => svcs[s].present = !svcs[s].present,
        Change::SetV4(s, v) => svcs[s].v4 = v,
        Change::SetV6(s, v) => svcs[s].v6 = v,
        Change::Pod(s, p, st) => svcs[s].pods[p] = st,
        Change::ToggleUdp(s) => svcs[s].udp = !svcs[s].udp,
        Change::Affinity(s, t) => svcs[s].affinity = t,
        Change::Swap(a, b) => {
            let (v4, v6) = (svcs[a].v4, svcs[a].v6);
            (svcs[a].v4, svcs[a].v6) = (svcs[b].v4, svcs[b].v6);
            (svcs[b].v4, svcs[b].v6) = (v4, v6);
        }
        Change::NodePort(s, n) => svcs[s].node_port = n,
        Change::External(s, e) => svcs[s].external = e,
        Change::Policy(s, i, e) => (svcs[s].internal_local, svcs[s].external_local) = (i, e),
        Change::Nodes(n) => world.nodes = n,
        Change::LoadBalancer(s, l) => svcs[s].lb = l,
        Change::Ranges(s, r) => svcs[s].ranges = r,
    }
}

/// The desired state of a world, built the way `translate` builds it: sorted, per port and
/// family an Internal group (ClusterIPs) and, with an externalIP or a NodePort, an External one;
/// a Service whose frontend is already taken left out; eligible = the Cluster set (ready
/// backends, else the terminating ones) or the Local set (the same among local pods), drop when
/// the Local set is empty while backends exist. Pods are shared between Services (so are backend
/// entries).
fn world_state(world: &World) -> DesiredState {
    let mut claimed = BTreeSet::new();
    let mut groups = Vec::new();
    for (i, s) in world.svcs.iter().enumerate() {
        if !s.present {
            continue;
        }
        let ips: Vec<IpAddr> =
            s.v4.map(|v| IpAddr::V4(Ipv4Addr::new(10, 96, 0, v + 1)))
                .into_iter()
                .chain(s.v6.map(|v| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(v) + 1))))
                .collect();
        let has_family = |ip: &IpAddr| ips.iter().any(|c| Family::of(c) == Family::of(ip));
        let external: Option<IpAddr> = s
            .external
            .map(|e| EXTERNAL_IPS[usize::from(e)].parse().expect("test address"))
            .filter(|ip| has_family(ip));
        let lb: Option<IpAddr> =
            s.lb.map(|l| LB_IPS[usize::from(l)].parse().expect("test address")).filter(|ip| has_family(ip));
        let node_port = s.node_port.map(|n| NODE_PORTS[usize::from(n)]);
        let mut ports = vec![("http", 80, Protocol::Tcp, node_port)];
        if s.udp {
            ports.push(("dns", 53, Protocol::Udp, None));
        }
        let mut frontends: Vec<(IpAddr, u16, Protocol)> = Vec::new();
        for &(_, port, proto, node_port) in &ports {
            frontends.extend(ips.iter().chain(&external).chain(&lb).map(|&ip| (ip, port, proto)));
            if let Some(np) = node_port {
                for ip in &ips {
                    let any: IpAddr = if ip.is_ipv4() {
                        Ipv4Addr::UNSPECIFIED.into()
                    } else {
                        Ipv6Addr::UNSPECIFIED.into()
                    };
                    frontends.push((any, np, proto));
                }
            }
        }
        if frontends.iter().any(|f| claimed.contains(f)) {
            continue;
        }
        claimed.extend(frontends);
        for &(port_name, port, protocol, node_port) in &ports {
            for family in [Family::V4, Family::V6] {
                let internal: Vec<Frontend> = ips
                    .iter()
                    .filter(|ip| Family::of(ip) == family)
                    .map(|&addr| Frontend { addr, port, protocol, kind: FrontendKind::ClusterIP })
                    .collect();
                if internal.is_empty() {
                    continue;
                }
                let mut external_fronts: Vec<Frontend> = external
                    .iter()
                    .filter(|ip| Family::of(ip) == family)
                    .map(|&addr| Frontend { addr, port, protocol, kind: FrontendKind::ExternalIP })
                    .chain(lb.iter().filter(|ip| Family::of(ip) == family).map(|&addr| Frontend {
                        addr,
                        port,
                        protocol,
                        kind: FrontendKind::LoadBalancer,
                    }))
                    .collect();
                let source_ranges: Vec<Cidr> = RANGES
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| s.ranges & (1 << bit) != 0)
                    .map(|(_, r)| Cidr::parse(r).expect("test range"))
                    .filter(|c| c.family() == family)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if let Some(np) = node_port {
                    let addr: IpAddr = match family {
                        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
                        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
                    };
                    external_fronts.push(Frontend { addr, port: np, protocol, kind: FrontendKind::NodePort });
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
                        local: false,
                    })
                    .collect();
                let set = |pods: &[usize]| -> Vec<SocketAddr> {
                    let of = |state: u8| -> Vec<SocketAddr> {
                        pods.iter().filter(|&&p| s.pods[p] == state).map(|&p| pod_addr(p)).collect()
                    };
                    let ready = of(1);
                    if ready.is_empty() { of(2) } else { ready }
                };
                let cluster = set(&(0..PODS).collect::<Vec<_>>());
                let local = set(&(0..LOCAL_PODS).collect::<Vec<_>>());
                let group = |scope, frontends, policy_local: bool| {
                    let eligible: Vec<SocketAddr> =
                        if policy_local { local.clone() } else { cluster.clone() };
                    let from_node = if scope == Scope::External { cluster.clone() } else { eligible.clone() };
                    let when_empty = if eligible.is_empty() && !backends.is_empty() {
                        WhenEmpty::Drop
                    } else {
                        WhenEmpty::Reject
                    };
                    BackendGroup {
                        service: ServicePortName {
                            namespace: "ns".into(),
                            name: format!("svc-{i}").into(),
                            port: port_name.into(),
                            protocol,
                        },
                        family,
                        scope,
                        frontends,
                        eligible: eligible.into(),
                        from_node: from_node.into(),
                        when_empty,
                        backends: backends.clone(),
                        affinity_timeout: s.affinity,
                        source_ranges: source_ranges.clone(),
                        health_check_node_port: None,
                    }
                };
                groups.push(group(Scope::Internal, internal, s.internal_local));
                if !external_fronts.is_empty() {
                    groups.push(group(Scope::External, external_fronts, s.external_local));
                }
            }
        }
    }
    let mut state = desired(groups);
    state.node_addresses = NODE_ADDRS
        .iter()
        .enumerate()
        .filter(|(bit, _)| world.nodes & (1 << bit) != 0)
        .map(|(_, a)| a.parse().expect("test address"))
        .collect();
    state
}

/// A start world, then batches of changes.
fn scenario() -> impl Strategy<Value = (World, Vec<Vec<Change>>)> {
    (world(), prop::collection::vec(prop::collection::vec(change(), 1..5), 1..12))
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

    #[test]
    fn a_sync_that_does_not_fit_is_refused_before_any_write_also_after_a_failure(
        (start, batches) in scenario(),
        caps in prop::collection::vec((1u32..8, 1u32..40, 1u32..16, 1u32..8), 12),
        fail_points in prop::collection::vec(any::<prop::sample::Index>(), 12),
    ) {
        let maps = Shared::default();
        let mut syncer = Syncer::new(maps.clone()).expect("memory maps read");
        let mut world = start;
        for ((batch, (frontends, slots, backends, services)), fail) in batches.iter().zip(&caps).zip(&fail_points) {
            for c in batch {
                apply_change(&mut world, *c);
            }
            let new = world_state(&world);
            // An apply that stops part-way first (a write refused for another reason), leaving
            // entries written ahead of their frontends.
            maps.0.borrow_mut().capacity = None;
            let ops = diff(&maps.state(), &layout(&new, &maps.state())).len();
            if ops > 1 {
                maps.0.borrow_mut().fail_at = Some(maps.log_len() + fail.index(ops));
                prop_assert!(syncer.sync(&new).is_err());
                maps.0.borrow_mut().fail_at = None;
            }
            let cap = Capacity { frontends: *frontends, slots: *slots, backends: *backends, source_ranges: 64, services: *services };
            maps.0.borrow_mut().capacity = Some(cap);
            let (before, written) = (maps.state(), maps.log_len());
            match syncer.sync(&new) {
                Ok(_) => {
                    prop_assert_eq!(served(&maps.state()), expected_service(&new));
                }
                Err(MapsError::Full { .. } | MapsError::MaglevFull { .. }) => {
                    prop_assert_eq!(maps.log_len(), written, "refused, yet written");
                    prop_assert_eq!(maps.state(), before);
                }
                Err(e) => return Err(TestCaseError::fail(format!("a write failed instead of a refusal: {e}"))),
            }
            prop_assert_eq!(&maps.state(), syncer.programmed());
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
    assert_eq!(total, 12);
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
        assert_eq!(
            report,
            SyncReport {
                written: 0,
                removed: 0,
                frontends: 2,
                backends: 3,
                full: true,
                ..SyncReport::default()
            }
        );
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

/// The backends' epoch moves at the first sync and at each sync that removes a backend, and only
/// then: a tracked flow's backend is looked up again exactly when it may be gone.
#[test]
fn the_backend_epoch_moves_when_a_backend_goes() {
    let maps = Shared::with(MemoryMaps::default());
    let mut syncer = Syncer::new(maps.clone()).expect("read");
    let epoch = || maps.0.borrow().epoch;
    assert_eq!(epoch(), 1, "opening the maps raises it (an earlier agent may have removed backends)");
    syncer.sync(&before()).expect("first sync");
    assert_eq!(epoch(), 1, "nothing removed");
    syncer.sync(&before()).expect("the same again");
    assert_eq!(epoch(), 1, "nothing removed");
    let mut more = before();
    more.groups.push(group("ns/extra:http", Protocol::Tcp, &["10.96.0.40:80"], &["10.244.1.9:8080"]));
    syncer.sync(&more).expect("a backend added");
    assert_eq!(epoch(), 1, "nothing removed");
    syncer.sync(&after()).expect("backends removed");
    assert!(maps.0.borrow().log.iter().any(|op| matches!(op, MapOp::DeleteBackend(_))));
    assert_eq!(epoch(), 2, "backends removed");
    assert_eq!(lb_common::backend_epoch::next(u32::MAX), 1, "never 0");
}

/// A raise that fails fails the sync that needed it, and is made by the next apply even when
/// that one removes nothing (the removal is already in the maps).
#[test]
fn a_failed_backend_epoch_raise_is_retried() {
    let maps = Shared::with(MemoryMaps { fail_epoch: true, ..Default::default() });
    let mut syncer = Syncer::new(maps.clone()).expect("read");
    let epoch = || maps.0.borrow().epoch;
    syncer.sync(&before()).expect_err("the raise due since the start fails");
    assert_eq!(epoch(), 0);
    maps.0.borrow_mut().fail_epoch = false;
    syncer.sync(&before()).expect("converges");
    assert_eq!(epoch(), 1, "raised once it can be");
    maps.0.borrow_mut().fail_epoch = true;
    syncer.sync(&after()).expect_err("backends removed, the raise fails");
    maps.0.borrow_mut().fail_epoch = false;
    syncer.sync(&after()).expect("nothing left to write");
    assert_eq!(epoch(), 2, "raised by the next apply");
}

// ---- (d) capacity -------------------------------------------------------------------------------

#[test]
fn over_capacity_fails_before_writing_anything() {
    let cap = |frontends, slots, backends| {
        Some(Capacity { frontends, slots, backends, source_ranges: 10, services: 100 })
    };
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
        capacity: Some(Capacity { frontends: 1, slots: 10, backends: 10, source_ranges: 10, services: 100 }),
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

#[test]
fn entries_a_failed_apply_left_ahead_of_their_frontends_are_removed_first() {
    // The first apply stops before any frontend: backends, slots and names are written under
    // ids no frontend names yet.
    let maps = Shared::default();
    let mut syncer = Syncer::new(maps.clone()).expect("read");
    let full = layout(&before(), &MapState::default());
    let ahead =
        diff(&MapState::default(), &full).iter().filter(|op| !matches!(op, MapOp::PutFrontend(..))).count();
    maps.0.borrow_mut().fail_at = Some(ahead);
    syncer.sync(&before()).expect_err("the first frontend's write fails");
    let left = maps.state();
    assert!(left.frontends.is_empty());
    assert_eq!(left.unreachable(), left, "all of it is ahead of its frontends");
    // Room for exactly what `after` needs: the retry lays `after` out under new group ids, so it
    // fits only if what the failed apply left goes first.
    let target = layout(&after(), &MapState::default());
    maps.0.borrow_mut().fail_at = None;
    maps.0.borrow_mut().capacity = Some(Capacity {
        frontends: 2,
        slots: u32::try_from(target.slots.len()).expect("small"),
        backends: 3,
        source_ranges: 1,
        services: 2,
    });
    syncer.sync(&after()).expect("fits once the leftovers are removed");
    assert_eq!(served(&maps.state()), expected_service(&after()));
    let log = &maps.0.borrow().log;
    let first_put = log[ahead..].iter().position(|op| matches!(op, MapOp::PutSlot(..))).expect("a slot");
    assert!(
        log[ahead..ahead + first_put].iter().any(|op| matches!(op, MapOp::DeleteSlot(..))),
        "the leftover slots go before the new ones: {:?}",
        lines(&log[ahead..])
    );
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
    assert_eq!(
        report,
        SyncReport { written: 0, removed: 0, frontends: 2, backends: 3, full: true, ..SyncReport::default() }
    );
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
        s.services = s.services.into_iter().map(|(g, n)| (renumber(g), n)).collect();
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

#[test]
fn freed_ids_are_not_handed_to_the_next_service_at_once() {
    let maps = Shared::default();
    let mut syncer = Syncer::new(maps.clone()).expect("read");
    syncer.sync(&before()).expect("sync");
    let old = key("10.96.0.20:80", Protocol::Tcp);
    let first = maps.state();
    let old_group = first.frontends[&old].group;
    let old_backend = first
        .backends
        .iter()
        .find(|(_, b)| backend_addr(b) == sock("10.244.1.3:8080"))
        .map(|(id, _)| *id)
        .expect("backend of ns/old");

    // ns/old goes away; in the same sync a new Service with a new backend arrives.
    syncer.sync(&after()).expect("sync");
    let mut next = after();
    next.groups.push(group("ns/newer:http", Protocol::Tcp, &["10.96.0.40:80"], &["10.244.1.9:8080"]));
    syncer.sync(&next).expect("sync");
    let state = maps.state();
    let newer = key("10.96.0.40:80", Protocol::Tcp);
    assert_ne!(state.frontends[&newer].group, old_group, "a just-freed group id was reused");
    assert!(!state.backends.contains_key(&old_backend), "a just-freed backend id was reused");
    // Without the quarantine the plain layout would have reused them: the test can fail.
    let plain = layout(&next, &layout(&after(), &first));
    assert!(
        plain.frontends[&newer].group == old_group || plain.backends.contains_key(&old_backend),
        "layout without reservation hands out the lowest free ids"
    );
}

/// A tree built a part at a time (`layout_groups`' maps at a full sync) holds exactly
/// the entries, in order, at every size around the part boundaries.
#[test]
fn a_tree_built_in_parts_holds_every_entry() {
    for n in [0u32, 1, 4095, 4096, 4097, 8192 * 3 + 5, 40_000] {
        let sorted: Vec<(u32, u32)> = (0..n).map(|i| (i * 3, i)).collect();
        let tree = super::state::tree_of_sorted(sorted.clone());
        assert_eq!(tree.len(), sorted.len(), "{n} entries");
        assert!(tree.iter().map(|(k, v)| (*k, *v)).eq(sorted.iter().copied()), "{n} entries in order");
    }
}

// ---- (f) Maglev ---------------------------------------------------------------------------------

mod maglev_layout;

// ---- (g) loadBalancerSourceRanges ---------------------------------------------------------------

mod source_ranges;

// ---- (h) bad input: arbitrary Kubernetes objects ------------------------------------------------

mod arbitrary_objects;

// ---- (i) incremental sync against a full one ----------------------------------------------------

mod incremental;
