//! Bad input, property-based: arbitrary Services and EndpointSlices (fields drawn from pools
//! that mix valid values with the malformed ones clusters and hand-written files produce: bad
//! addresses, ports out of range, unknown protocols, families and types, missing labels and
//! names, odd conditions and hints) go through `translate`, then `layout` and `diff`.
//!
//! Properties: `translate` never panics; every frontend it produces has a port in 1..=65535, a
//! known protocol and an address of its group's family; every backend has a port and the group's
//! family, the eligible and node sets are sorted subsets of the group's backends; no two groups
//! claim one frontend; and the layout from empty, and from another arbitrary state, keeps every
//! write-order invariant (`check_transition`: after every op each visible frontend's slots exist
//! and name existing backends, the result serves exactly the desired state).
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
            ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::*;
use crate::model::{Located, NodeContext, Objects, translate};

/// Each field is drawn mostly from usable values and now and then from malformed ones, so that
/// many Services survive validation (and reach the layout) while every kind of bad value still
/// comes up. `10.0.1.1` and `fd00:1::1` are also node addresses, so externalIPs and LoadBalancer
/// IPs collide with NodePorts now and then.
const ADDRESSES: (&[&str], &[&str]) = (
    &[
        "10.96.0.10",
        "10.96.0.11",
        "fd00::10",
        "fd00::11",
        "10.244.1.1",
        "10.244.1.2",
        "fd00:244::1",
        "10.0.1.1",
        "fd00:1::1",
    ],
    &[
        "::ffff:10.96.0.12",
        "0.0.0.0",
        "::",
        "None",
        "",
        "300.1.2.3",
        "10.96.0.10 ",
        "10.96.0.10/32",
        "fe80::1%eth0",
        "localhost",
    ],
);
const PROTOCOLS: (&[Option<&str>], &[Option<&str>]) = (
    &[Some("TCP"), Some("TCP"), Some("TCP"), Some("TCP"), Some("UDP"), Some("SCTP"), None],
    &[Some("tcp"), Some("QUIC"), Some("")],
);
const PORT_NAMES: (&[Option<&str>], &[Option<&str>]) =
    (&[Some("http"), Some("http"), Some("http"), Some("http"), Some("dns"), Some("")], &[None]);
const NAMES: (&[&str], &[&str]) = (&["a", "b", "c"], &[""]);
const NAMESPACES: (&[Option<&str>], &[Option<&str>]) =
    (&[Some("default"), Some("default"), None, Some("kube-system")], &[Some("")]);
const TYPES: (&[Option<&str>], &[Option<&str>]) = (
    &[Some("ClusterIP"), Some("NodePort"), Some("LoadBalancer"), None],
    &[Some("ExternalName"), Some("Bogus")],
);
const FAMILIES: (&[&str], &[&str]) = (&["IPv4", "IPv6"], &["IPv5", ""]);
const POLICIES: (&[Option<&str>], &[Option<&str>]) =
    (&[Some("Cluster"), Some("Local"), None], &[Some("Bogus")]);
const AFFINITIES: (&[Option<&str>], &[Option<&str>]) =
    (&[Some("None"), Some("ClientIP"), None], &[Some("Sticky")]);
const IP_MODES: (&[Option<&str>], &[Option<&str>]) = (&[None, Some("VIP"), Some("Proxy")], &[Some("Bogus")]);
const RANGES: (&[&str], &[&str]) = (
    &["10.0.0.0/8", "10.0.1.1/32", "fd00::/8", "0.0.0.0/0", " 10.0.0.0/8"],
    &["garbage", "10.0.0.1/33", "1.2.3.4"],
);
const ADDRESS_TYPES: (&[&str], &[&str]) = (&["IPv4", "IPv4", "IPv6"], &["FQDN", "Bogus"]);
const NODE_NAMES: (&[Option<&str>], &[Option<&str>]) = (&[Some("node-1"), Some("node-2"), None], &[Some("")]);
const ZONES: (&[Option<&str>], &[Option<&str>]) = (&[Some("zone-a"), Some("zone-b"), None], &[Some("")]);

/// A usable value nine times in ten, a malformed one otherwise.
fn pick<T: Clone + std::fmt::Debug + 'static>(
    (good, bad): (&'static [T], &'static [T]),
) -> impl Strategy<Value = T> {
    prop_oneof![9 => prop::sample::select(good), 1 => prop::sample::select(bad)]
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

/// Ports: the common ones, the edges and anything at all.
fn port_number() -> impl Strategy<Value = i32> {
    prop_oneof![
        12 => prop::sample::select(&[80, 53, 443, 8080, 30080][..]),
        1 => prop::sample::select(&[0, -1, 65535, 65536, i32::MIN, i32::MAX][..]),
        1 => any::<i32>(),
    ]
}

fn addresses(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(pick(ADDRESSES).prop_map(str::to_owned), 0..=max)
}

fn service_port() -> impl Strategy<Value = ServicePort> {
    (pick(PORT_NAMES), port_number(), pick(PROTOCOLS), prop::option::of(port_number())).prop_map(
        |(name, port, protocol, node_port)| ServicePort {
            name: owned(name),
            port,
            protocol: owned(protocol),
            node_port,
            ..Default::default()
        },
    )
}

/// `clusterIP`, `clusterIPs` and `ipFamilies`: mostly as the API server writes them (single or
/// dual stack, either family first), sometimes only `clusterIP`, sometimes anything at all.
fn cluster_addressing() -> impl Strategy<Value = (Option<String>, Option<Vec<String>>, Option<Vec<String>>)> {
    let v4 = || prop::sample::select(&["10.96.0.10", "10.96.0.11", "10.0.1.1"][..]).prop_map(str::to_owned);
    let v6 = || prop::sample::select(&["fd00::10", "fd00::11", "fd00:1::1"][..]).prop_map(str::to_owned);
    let families = |f: &[&str]| Some(f.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>());
    prop_oneof![
        4 => v4().prop_map(move |a| (Some(a.clone()), Some(vec![a]), families(&["IPv4"]))),
        2 => v6().prop_map(move |a| (Some(a.clone()), Some(vec![a]), families(&["IPv6"]))),
        2 => (v4(), v6()).prop_map(move |(a, b)| (Some(a.clone()), Some(vec![a, b]), families(&["IPv4", "IPv6"]))),
        1 => (v4(), v6()).prop_map(move |(a, b)| (Some(b.clone()), Some(vec![b, a]), families(&["IPv6", "IPv4"]))),
        1 => prop::option::of(pick(ADDRESSES).prop_map(str::to_owned)).prop_map(|a| (a, None, None)),
        1 => (
            prop::option::of(pick(ADDRESSES).prop_map(str::to_owned)),
            prop::option::of(addresses(3)),
            prop::option::of(prop::collection::vec(pick(FAMILIES).prop_map(str::to_owned), 0..=3)),
        ),
    ]
}

pub(super) fn service() -> impl Strategy<Value = Service> {
    let identity = (pick(NAMESPACES), pick(NAMES), prop::bool::weighted(0.05));
    let addressing = (
        pick(TYPES),
        cluster_addressing(),
        prop::option::weighted(0.95, prop::collection::vec(service_port(), 1..=3)),
        prop::option::of(addresses(2)),
    );
    let policies = (
        pick(POLICIES),
        pick(POLICIES),
        pick(AFFINITIES),
        prop::option::of(port_number()),
        prop::option::of(prop::collection::vec(pick(RANGES).prop_map(str::to_owned), 0..=3)),
        prop::option::of(port_number()),
        prop::collection::vec((pick(ADDRESSES), pick(IP_MODES)), 0..=2),
    );
    (identity, addressing, policies).prop_map(
        |(
            (namespace, name, other_proxy),
            (type_, (cluster_ip, cluster_ips, ip_families), ports, external_ips),
            (internal, external, affinity, timeout, ranges, health, ingress),
        )| {
            let mut metadata =
                ObjectMeta { namespace: owned(namespace), name: Some(name.to_owned()), ..Default::default() };
            if other_proxy {
                metadata.labels = Some(BTreeMap::from([(
                    "service.kubernetes.io/service-proxy-name".to_owned(),
                    "other".to_owned(),
                )]));
            }
            let ingress: Vec<LoadBalancerIngress> = ingress
                .into_iter()
                .map(|(ip, mode)| LoadBalancerIngress {
                    ip: Some(ip.to_owned()),
                    ip_mode: owned(mode),
                    ..Default::default()
                })
                .collect();
            Service {
                metadata,
                spec: Some(ServiceSpec {
                    type_: owned(type_),
                    cluster_ip,
                    cluster_ips,
                    ip_families,
                    ports,
                    external_ips,
                    internal_traffic_policy: owned(internal),
                    external_traffic_policy: owned(external),
                    session_affinity: owned(affinity),
                    session_affinity_config: timeout.map(|t| SessionAffinityConfig {
                        client_ip: Some(ClientIPConfig { timeout_seconds: Some(t) }),
                    }),
                    load_balancer_source_ranges: ranges,
                    health_check_node_port: health,
                    ..Default::default()
                }),
                status: Some(ServiceStatus {
                    load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress) }),
                    ..Default::default()
                }),
            }
        },
    )
}

/// Pod addresses of both families, mostly; `addresses[0]` is the one used.
const POD_ADDRESSES: (&[&str], &[&str]) =
    (&["10.244.1.1", "10.244.1.2", "10.244.2.1", "10.244.2.2", "fd00:244::1", "fd00:244::2"], ADDRESSES.1);

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        prop::collection::vec(pick(POD_ADDRESSES).prop_map(str::to_owned), 1..=2),
        prop::option::of((
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        )),
        pick(NODE_NAMES),
        pick(ZONES),
        prop::option::of((prop::option::of(pick(ZONES)), prop::option::of(pick(NODE_NAMES)))),
    )
        .prop_map(|(addresses, conditions, node_name, zone, hints)| Endpoint {
            addresses,
            conditions: conditions.map(|(ready, serving, terminating)| EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            node_name: owned(node_name),
            zone: owned(zone),
            hints: hints.map(|(zone, node)| EndpointHints {
                for_zones: zone.map(|z| vec![ForZone { name: z.unwrap_or_default().to_owned() }]),
                for_nodes: node.map(|n| vec![ForNode { name: n.unwrap_or_default().to_owned() }]),
            }),
            ..Default::default()
        })
}

pub(super) fn slice() -> impl Strategy<Value = EndpointSlice> {
    (
        pick(NAMESPACES),
        pick(NAMES),
        prop::option::weighted(0.9, pick(NAMES)),
        prop::bool::weighted(0.05),
        pick(ADDRESS_TYPES),
        prop::option::weighted(
            0.95,
            prop::collection::vec(
                (pick(PORT_NAMES), prop::option::weighted(0.95, port_number()), pick(PROTOCOLS)),
                1..=3,
            ),
        ),
        prop::collection::vec(endpoint(), 0..=4),
        0..1000u32,
    )
        .prop_map(|(namespace, service, label, headless, address_type, ports, endpoints, n)| {
            let mut labels = BTreeMap::new();
            if let Some(service) = label {
                labels.insert("kubernetes.io/service-name".to_owned(), service.to_owned());
            }
            if headless {
                labels.insert("service.kubernetes.io/headless".to_owned(), String::new());
            }
            EndpointSlice {
                metadata: ObjectMeta {
                    namespace: owned(namespace),
                    name: Some(format!("{service}-{n}")),
                    labels: Some(labels),
                    ..Default::default()
                },
                address_type: address_type.to_owned(),
                endpoints,
                ports: ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: owned(name),
                            port,
                            protocol: owned(protocol),
                            ..Default::default()
                        })
                        .collect()
                }),
            }
        })
}

/// Makes `slice` one of `svc`'s: its namespace, name label, and the names and protocols of its
/// ports (picked by `port_picks`).
pub(super) fn tie_slice(slice: &mut EndpointSlice, svc: &Service, port_picks: &[prop::sample::Index]) {
    slice.metadata.namespace.clone_from(&svc.metadata.namespace);
    if let (Some(labels), Some(name)) = (slice.metadata.labels.as_mut(), &svc.metadata.name) {
        labels.insert("kubernetes.io/service-name".to_owned(), name.clone());
    }
    let svc_ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default();
    for (port, pick) in slice.ports.iter_mut().flatten().zip(port_picks) {
        if !svc_ports.is_empty() {
            let from = pick.get(svc_ports);
            port.name.clone_from(&from.name);
            port.protocol.clone_from(&from.protocol);
        }
    }
}

/// Slices made for one of the Services most of the time (its namespace, name label, and the
/// names and protocols of its ports, from which they may still stray), so that endpoints reach
/// the layout; the rest are left as drawn (orphans, unlabelled, other ports).
fn objects() -> impl Strategy<Value = Objects> {
    let tied = (
        prop::bool::weighted(0.8),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<prop::sample::Index>(), 3),
    );
    (prop::collection::vec(service(), 0..=5), prop::collection::vec((slice(), tied), 0..=10)).prop_map(
        |(services, slices)| {
            let slices = slices
                .into_iter()
                .map(|(mut slice, (tie, which, port_picks))| {
                    if tie && !services.is_empty() {
                        tie_slice(&mut slice, which.get(&services), &port_picks);
                    }
                    slice
                })
                .collect::<Vec<_>>();
            let located = |i: usize| format!("arbitrary.yaml document {i}");
            Objects {
                services: services
                    .into_iter()
                    .enumerate()
                    .map(|(i, object)| Located { origin: located(i), object: object.into() })
                    .collect(),
                slices: slices
                    .into_iter()
                    .enumerate()
                    .map(|(i, object)| Located { origin: located(i), object: object.into() })
                    .collect(),
                nodes: Vec::new(),
            }
        },
    )
}

pub(super) fn node() -> impl Strategy<Value = NodeContext> {
    (
        pick(ZONES),
        prop::collection::vec(prop::sample::select(&["10.0.1.1", "fd00:1::1", "10.0.1.2"][..]), 0..=3),
    )
        .prop_map(|(zone, addresses)| NodeContext {
            name: "node-1".into(),
            zone: owned(zone),
            addresses: addresses.iter().map(|a| a.parse().expect("pool address")).collect(),
        })
}

/// The properties of one translated state that hold whatever the input.
fn check_desired(desired: &DesiredState) -> Result<(), String> {
    let mut claimed: BTreeMap<(IpAddr, u16, Protocol), String> = BTreeMap::new();
    for g in &desired.groups {
        let name = format!("{} {:?} {:?}", g.service, g.family, g.scope);
        for f in &g.frontends {
            if f.port == 0 {
                return Err(format!("{name}: frontend {f} has port 0"));
            }
            if Family::of(&f.addr) != g.family {
                return Err(format!("{name}: frontend {f} is not of the group's family"));
            }
            if f.protocol != g.service.protocol {
                return Err(format!("{name}: frontend {f} has another protocol than its Service port"));
            }
            if f.addr.is_unspecified() != (f.kind == FrontendKind::NodePort) {
                return Err(format!("{name}: frontend {f}: unspecified address iff NodePort"));
            }
            if !f.on_every_node_address()
                && let Some(owner) = claimed.insert((f.addr, f.port, f.protocol), name.clone())
            {
                return Err(format!("{name}: frontend {f} is also claimed by {owner}"));
            }
        }
        let known: Vec<SocketAddr> = g.backends.iter().map(|b| b.addr).collect();
        for b in &known {
            if b.port() == 0 || Family::of(&b.ip()) != g.family || b.ip().is_unspecified() {
                return Err(format!("{name}: backend {b} has no port, the wrong family or no address"));
            }
        }
        for (set, list) in [("eligible", &g.eligible), ("from_node", &g.from_node)] {
            if !list.is_sorted() {
                return Err(format!("{name}: {set} is not sorted"));
            }
            if let Some(b) = list.iter().find(|b| !known.contains(b)) {
                return Err(format!("{name}: {set} backend {b} is not among the group's backends"));
            }
        }
        if !g.eligible.is_empty() && g.when_empty != WhenEmpty::Reject {
            return Err(format!("{name}: has eligible backends but is not Reject"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_objects_translate_to_a_consistent_datapath(
        a in objects(),
        b in objects(),
        node in node(),
    ) {
        let (first, _) = translate(&a, &node);
        let (second, _) = translate(&b, &node);
        for desired in [&first, &second] {
            if let Err(e) = check_desired(desired) {
                return Err(TestCaseError::fail(e));
            }
        }
        let start = layout(&first, &MapState::default());
        if let Err(e) = check_transition(&MapState::default(), &start, &first) {
            return Err(TestCaseError::fail(format!("from empty: {e}")));
        }
        let next = layout(&second, &start);
        if let Err(e) = check_transition(&start, &next, &second) {
            return Err(TestCaseError::fail(format!("from one arbitrary state to another: {e}")));
        }
    }

    /// The same objects in another order give the same state (the sources hand objects over in
    /// no particular order). Services are made unique by namespace and name first: of two
    /// definitions of one Service in files, the first is used, which is an order by definition.
    #[test]
    fn translation_does_not_depend_on_object_order(mut a in objects(), node in node(), seed in any::<u64>()) {
        let mut seen = std::collections::BTreeSet::new();
        a.services.retain(|s| {
            let m = &s.object.metadata;
            seen.insert((m.namespace.clone().unwrap_or_else(|| "default".into()), m.name.clone()))
        });
        let (want, _) = translate(&a, &node);
        let mut shuffled = a.clone();
        let n = shuffled.slices.len().max(1) as u64;
        shuffled.slices.rotate_left((seed % n) as usize);
        shuffled.services.reverse();
        let (got, _) = translate(&shuffled, &node);
        prop_assert_eq!(got, want);
    }
}
