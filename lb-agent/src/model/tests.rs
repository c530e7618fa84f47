//! Table-driven tests of `translate`, in the style of kube-proxy's proxier tests: each case is a
//! set of real Kubernetes objects and the frontends → eligible backends (and problems) expected
//! for `node-1` in zone `zone-a`. Rule numbers are those of the repository's list of kube-proxy behaviours
//! (`xtask/src/parity/rules.rs`, rendered as `docs/PARITY.md`).
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
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::*;

const NODE: &str = "node-1";
const ZONE: &str = "zone-a";
/// How the table shows an empty group whose connections are dropped (`WhenEmpty::Drop`); an
/// empty list means rejected.
const DROP: &str = "(drop)";

// ---- object builders ----------------------------------------------------------------------------

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() }
}

fn label(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
}

fn port(name: &str, number: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        protocol: Some(protocol.into()),
        // Deliberately different from every slice port: the backend port never comes from here.
        target_port: Some(IntOrString::Int(1)),
        ..Default::default()
    }
}

/// A ClusterIP Service as the API server stores it: `10.96.0.10`, one port `http` 80/TCP.
fn service(ns: &str, name: &str, f: impl FnOnce(&mut Service)) -> Service {
    let mut svc = Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            ip_families: Some(vec!["IPv4".into()]),
            ports: Some(vec![port("http", 80, "TCP")]),
            session_affinity: Some("None".into()),
            internal_traffic_policy: Some("Cluster".into()),
            ..Default::default()
        }),
        status: None,
    };
    f(&mut svc);
    svc
}

fn spec(s: &mut Service) -> &mut ServiceSpec {
    s.spec.as_mut().expect("service() always sets a spec")
}

fn set_ips(s: &mut Service, ips: &[&str]) {
    let spec = spec(s);
    spec.cluster_ip = ips.first().map(|ip| (*ip).into());
    spec.cluster_ips = Some(ips.iter().map(|ip| (*ip).into()).collect());
    spec.ip_families =
        Some(ips.iter().map(|ip| if ip.contains(':') { "IPv6".into() } else { "IPv4".into() }).collect());
}

fn set_ports(s: &mut Service, ports: Vec<ServicePort>) {
    spec(s).ports = Some(ports);
}

fn set_type(s: &mut Service, type_: &str) {
    spec(s).type_ = Some(type_.into());
}

/// Port `http` 80/TCP with a NodePort.
fn node_port(number: i32) -> ServicePort {
    ServicePort { node_port: Some(number), ..port("http", 80, "TCP") }
}

/// `type: NodePort`, port `http` 80/TCP with NodePort 30080.
fn make_node_port(s: &mut Service) {
    set_type(s, "NodePort");
    set_ports(s, vec![node_port(30080)]);
}

fn set_external_ips(s: &mut Service, ips: &[&str]) {
    spec(s).external_ips = Some(ips.iter().map(|ip| (*ip).into()).collect());
}

fn etp_local(s: &mut Service) {
    spec(s).external_traffic_policy = Some("Local".into());
}

fn ingress(ip: Option<&str>, hostname: Option<&str>, ip_mode: Option<&str>) -> LoadBalancerIngress {
    LoadBalancerIngress {
        ip: ip.map(Into::into),
        hostname: hostname.map(Into::into),
        ip_mode: ip_mode.map(Into::into),
        ..Default::default()
    }
}

fn set_ingress(s: &mut Service, entries: Vec<LoadBalancerIngress>) {
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus { ingress: Some(entries) }),
        ..Default::default()
    });
}

/// `type: LoadBalancer`, NodePort 30080, ingress IP 203.0.113.10.
fn make_load_balancer(s: &mut Service) {
    set_type(s, "LoadBalancer");
    set_ports(s, vec![node_port(30080)]);
    set_ingress(s, vec![ingress(Some("203.0.113.10"), None, None)]);
}

fn slice_port(name: Option<&str>, number: i32, protocol: &str) -> EndpointPort {
    EndpointPort {
        name: name.map(Into::into),
        port: Some(number),
        protocol: Some(protocol.into()),
        app_protocol: None,
    }
}

/// An EndpointSlice of Service `svc`, with one port `http` 8080/TCP and no endpoints.
fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    address_type: &str,
    f: impl FnOnce(&mut EndpointSlice),
) -> EndpointSlice {
    let mut s = EndpointSlice {
        metadata: meta(ns, name),
        address_type: address_type.into(),
        endpoints: vec![],
        ports: Some(vec![slice_port(Some("http"), 8080, "TCP")]),
    };
    label(&mut s.metadata, "kubernetes.io/service-name", svc);
    f(&mut s);
    s
}

fn conditions(
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> Option<EndpointConditions> {
    Some(EndpointConditions { ready, serving, terminating })
}

/// A ready endpoint on `node-1`.
fn ep(addr: &str) -> Endpoint {
    Endpoint {
        addresses: vec![addr.into()],
        conditions: conditions(Some(true), Some(true), Some(false)),
        node_name: Some(NODE.into()),
        ..Default::default()
    }
}

fn ep_on(addr: &str, node: Option<&str>) -> Endpoint {
    Endpoint { node_name: node.map(Into::into), ..ep(addr) }
}

fn zones(endpoint: Endpoint, zones: &[&str]) -> Endpoint {
    let mut hints = endpoint.hints.clone().unwrap_or_default();
    hints.for_zones = Some(zones.iter().map(|z| ForZone { name: (*z).into() }).collect());
    Endpoint { hints: Some(hints), ..endpoint }
}

fn nodes(endpoint: Endpoint, nodes: &[&str]) -> Endpoint {
    let mut hints: EndpointHints = endpoint.hints.clone().unwrap_or_default();
    hints.for_nodes = Some(nodes.iter().map(|n| ForNode { name: (*n).into() }).collect());
    Endpoint { hints: Some(hints), ..endpoint }
}

/// Ready endpoint that is terminating and still serving: only a fallback.
fn terminating(addr: &str) -> Endpoint {
    Endpoint { conditions: conditions(Some(false), Some(true), Some(true)), ..ep(addr) }
}

/// Terminating and no longer serving: never used.
fn terminating_not_serving(addr: &str) -> Endpoint {
    Endpoint { conditions: conditions(Some(false), Some(false), Some(true)), ..ep(addr) }
}

/// Not ready and not terminating (a starting pod): never used, even when `serving` is true.
fn not_ready(addr: &str, serving: bool) -> Endpoint {
    Endpoint { conditions: conditions(Some(false), Some(serving), Some(false)), ..ep(addr) }
}

fn objects(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Objects {
    Objects {
        services: services.into_iter().map(|o| Located { origin: String::new(), object: o.into() }).collect(),
        slices: slices.into_iter().map(|o| Located { origin: String::new(), object: o.into() }).collect(),
        nodes: vec![],
    }
}

/// `node-1`, in `zone-a`, with one address per family.
fn node() -> NodeContext {
    NodeContext {
        name: NODE.into(),
        zone: Some(ZONE.into()),
        addresses: vec!["fd00:192::1".parse().expect("ip"), "192.168.0.1".parse().expect("ip")],
    }
}

fn run(services: Vec<Service>, slices: Vec<EndpointSlice>) -> (DesiredState, Vec<Problem>) {
    translate(&objects(services, slices), &node())
}

/// Frontends → eligible backends, in output order. A frontend other than a ClusterIP is prefixed
/// with its kind ("NodePort *:30080/TCP"); an empty group that drops shows as `[DROP]`.
fn frontends(state: &DesiredState) -> Vec<(String, Vec<String>)> {
    state
        .groups
        .iter()
        .flat_map(|g| {
            g.frontends.iter().map(move |f| {
                let name =
                    if f.kind == FrontendKind::ClusterIP { f.to_string() } else { format!("{} {f}", f.kind) };
                let backends = if g.eligible.is_empty() && g.when_empty == WhenEmpty::Drop {
                    vec![DROP.to_owned()]
                } else {
                    g.eligible.iter().map(ToString::to_string).collect()
                };
                (name, backends)
            })
        })
        .collect()
}

/// What holds for every translation: scopes match frontend kinds, a Drop group is empty, groups
/// are sorted and unique per (service, family, scope), backends hold every eligible address.
fn check_groups(case: &str, state: &DesiredState) {
    for g in &state.groups {
        let internal = g.frontends.iter().all(|f| f.kind == FrontendKind::ClusterIP);
        let external = g.frontends.iter().all(|f| f.kind != FrontendKind::ClusterIP);
        match g.scope {
            Scope::Internal => assert!(internal && !g.frontends.is_empty(), "{case}: {g:?}"),
            Scope::External => assert!(external && !g.frontends.is_empty(), "{case}: {g:?}"),
        }
        assert!(g.when_empty == WhenEmpty::Reject || g.eligible.is_empty(), "{case}: {g:?}");
        assert!(g.frontends.iter().all(|f| Family::of(&f.addr) == g.family), "{case}: {g:?}");
        assert!(g.eligible.iter().all(|a| g.backends.iter().any(|b| b.addr == *a)), "{case}: {g:?}");
    }
    let keys: Vec<_> = state.groups.iter().map(|g| (&g.service, g.family, g.scope)).collect();
    assert!(keys.is_sorted() && keys.windows(2).all(|w| w[0] != w[1]), "{case}: {keys:?}");
}

fn check_problems(case: &str, problems: &[Problem], expected: &[&str]) {
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), expected.len(), "{case}: problems {shown:#?}, expected substrings {expected:?}");
    for want in expected {
        assert!(shown.iter().any(|p| p.contains(want)), "{case}: no problem contains {want:?}: {shown:#?}");
    }
}

// ---- the table ----------------------------------------------------------------------------------

struct Case {
    name: &'static str,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    /// Frontend → eligible backends, in output order.
    expected: Vec<(&'static str, Vec<&'static str>)>,
    /// Each problem must contain one of these, and there must be exactly as many problems.
    problems: Vec<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "basic ClusterIP TCP (rule 5)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-1", "web", "IPv4", |s| {
                s.endpoints = vec![ep("10.244.1.2"), ep("10.244.1.1")]
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.1.2:8080"])],
            problems: vec![],
        },
        Case {
            name: "UDP (rule 6)",
            services: vec![service("kube-system", "dns", |s| set_ports(s, vec![port("dns", 53, "UDP")]))],
            slices: vec![slice("kube-system", "dns-1", "dns", "IPv4", |s| {
                s.ports = Some(vec![slice_port(Some("dns"), 5353, "UDP")]);
                s.endpoints = vec![ep("10.244.1.1")];
            })],
            expected: vec![("10.96.0.10:53/UDP", vec!["10.244.1.1:5353"])],
            problems: vec![],
        },
        Case {
            name: "unset protocol means TCP (rule 6)",
            services: vec![service("ns", "web", |s| {
                set_ports(s, vec![ServicePort { protocol: None, ..port("http", 80, "") }])
            })],
            slices: vec![slice("ns", "web-1", "web", "IPv4", |s| {
                s.ports = Some(vec![EndpointPort { protocol: None, ..slice_port(Some("http"), 8080, "") }]);
                s.endpoints = vec![ep("10.244.1.1")];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "dual-stack: each family gets only its own slices (rules 4, 15)",
            services: vec![service("ns", "web", |s| set_ips(s, &["10.96.0.10", "fd00:10:96::10"]))],
            slices: vec![
                slice("ns", "web-v4", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "web-v6", "web", "IPv6", |s| {
                    s.endpoints = vec![ep("fd00:10:244::1"), ep("fd00:10:244::2")]
                }),
            ],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("[fd00:10:96::10]:80/TCP", vec!["[fd00:10:244::1]:8080", "[fd00:10:244::2]:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "dual-stack: no IPv6 endpoints means an empty IPv6 group (rule 15)",
            services: vec![service("ns", "web", |s| set_ips(s, &["fd00:10:96::10", "10.96.0.10"]))],
            slices: vec![slice("ns", "web-v4", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")])],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("[fd00:10:96::10]:80/TCP", vec![]),
            ],
            problems: vec![],
        },
        Case {
            name: "without ipFamilies only clusterIP is used (GetClusterIPByFamily) (rule 4)",
            services: vec![service("ns", "web", |s| {
                set_ips(s, &["10.96.0.10", "fd00:10:96::10"]);
                spec(s).ip_families = None;
            })],
            slices: vec![
                slice("ns", "web-v4", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "web-v6", "web", "IPv6", |s| s.endpoints = vec![ep("fd00:10:244::1")]),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "with ipFamilies, clusterIPs[i] serves ipFamilies[i]; a missing index yields nothing (rule 4)",
            services: vec![service("ns", "web", |s| {
                set_ips(s, &["fd00:10:96::10"]);
                spec(s).ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
            })],
            slices: vec![
                slice("ns", "web-v4", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "web-v6", "web", "IPv6", |s| s.endpoints = vec![ep("fd00:10:244::1")]),
            ],
            expected: vec![("[fd00:10:96::10]:80/TCP", vec!["[fd00:10:244::1]:8080"])],
            problems: vec![],
        },
        Case {
            name: "a clusterIP that contradicts its ipFamily is reported",
            services: vec![service("ns", "web", |s| {
                spec(s).ip_families = Some(vec!["IPv6".into()]);
            })],
            slices: vec![],
            expected: vec![],
            problems: vec!["does not match its ipFamily IPv6"],
        },
        Case {
            name: "single-stack IPv4 ignores IPv6 slices (rule 15)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![
                slice("ns", "web-v4", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "web-v6", "web", "IPv6", |s| s.endpoints = vec![ep("fd00:10:244::1")]),
                slice("ns", "web-fqdn", "web", "FQDN", |s| s.endpoints = vec![ep("example.com")]),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "headless Service skipped without a problem (rule 2)",
            services: vec![
                service("ns", "headless", |s| set_ips(s, &["None"])),
                service("ns", "empty-ip", |s| {
                    spec(s).cluster_ip = None;
                    spec(s).cluster_ips = None;
                }),
            ],
            slices: vec![
                slice("ns", "headless-1", "headless", "IPv4", |s| {
                    label(&mut s.metadata, "service.kubernetes.io/headless", "");
                    s.endpoints = vec![ep("10.244.1.1")];
                }),
                // Even without the headless label, its Service exists: not reported.
                slice("ns", "headless-2", "headless", "IPv4", |s| s.endpoints = vec![ep("10.244.1.2")]),
            ],
            expected: vec![],
            problems: vec![],
        },
        Case {
            name: "ExternalName skipped even with a ClusterIP (rule 3)",
            services: vec![service("ns", "ext", |s| {
                spec(s).type_ = Some("ExternalName".into());
                spec(s).external_name = Some("example.com".into());
            })],
            slices: vec![slice("ns", "ext-1", "ext", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")])],
            expected: vec![],
            problems: vec![],
        },
        Case {
            name: "service-proxy-name label hands the Service to another proxy (rule 1)",
            services: vec![
                service("ns", "other", |s| {
                    label(&mut s.metadata, "service.kubernetes.io/service-proxy-name", "other-proxy")
                }),
                service("ns", "mine", |s| set_ips(s, &["10.96.0.11"])),
            ],
            slices: vec![
                slice("ns", "other-1", "other", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "mine-1", "mine", "IPv4", |s| s.endpoints = vec![ep("10.244.1.2")]),
            ],
            expected: vec![("10.96.0.11:80/TCP", vec!["10.244.1.2:8080"])],
            problems: vec![],
        },
        Case {
            name: "multiple slices merged (rule 17)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![
                slice("ns", "web-b", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.3")]),
                slice("ns", "web-a", "web", "IPv4", |s| {
                    s.endpoints = vec![ep("10.244.1.1"), ep("10.244.1.2")]
                }),
            ],
            expected: vec![(
                "10.96.0.10:80/TCP",
                vec!["10.244.1.1:8080", "10.244.1.2:8080", "10.244.1.3:8080"],
            )],
            problems: vec![],
        },
        Case {
            name: "named targetPort resolving to different numbers: slices merge (rule 19)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![
                slice("ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "web-b", "web", "IPv4", |s| {
                    s.ports = Some(vec![slice_port(Some("http"), 9090, "TCP")]);
                    s.endpoints = vec![ep("10.244.1.2")];
                }),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.1.2:9090"])],
            problems: vec![],
        },
        Case {
            name: "duplicate endpoint: non-terminating copy wins (terminating copy first) (rule 21)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![
                slice("ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![terminating("10.244.1.1")]),
                slice("ns", "web-b", "web", "IPv4", |s| {
                    s.endpoints = vec![ep("10.244.1.1"), ep("10.244.1.2")]
                }),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.1.2:8080"])],
            problems: vec![],
        },
        Case {
            name: "duplicate endpoint: non-terminating copy wins (ready copy first) (rule 21)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![
                slice("ns", "web-a", "web", "IPv4", |s| {
                    s.endpoints = vec![ep("10.244.1.1"), ep("10.244.1.2")]
                }),
                slice("ns", "web-b", "web", "IPv4", |s| s.endpoints = vec![terminating("10.244.1.1")]),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.1.2:8080"])],
            problems: vec![],
        },
        Case {
            name: "duplicate endpoint in one slice listed once",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![ep("10.244.1.1"), ep("10.244.1.1")]
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "ready nil means ready (rule 22)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    Endpoint { conditions: None, ..ep("10.244.1.1") },
                    Endpoint { conditions: conditions(None, None, None), ..ep("10.244.1.2") },
                    not_ready("10.244.1.3", true),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.1.2:8080"])],
            problems: vec![],
        },
        Case {
            name: "not-ready endpoints excluded, ready ones preferred over terminating (rule 25)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    ep("10.244.1.1"),
                    not_ready("10.244.1.2", false),
                    not_ready("10.244.1.3", true),
                    terminating("10.244.1.4"),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "terminating fallback: no ready endpoint, serving+terminating used (rule 25)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    terminating("10.244.1.2"),
                    terminating_not_serving("10.244.1.3"),
                    not_ready("10.244.1.4", true),
                    // Fallback ignores where the endpoint runs (cluster policy).
                    Endpoint { node_name: Some("node-2".into()), ..terminating("10.244.1.1") },
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.1.2:8080"])],
            problems: vec![],
        },
        Case {
            name: "terminating but not serving is never used (rule 25)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![terminating_not_serving("10.244.1.1"), not_ready("10.244.1.2", true)];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec![])],
            problems: vec![],
        },
        Case {
            name: "no endpoints at all: empty eligible (reject) (rule 39)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![],
            expected: vec![("10.96.0.10:80/TCP", vec![])],
            problems: vec![],
        },
        Case {
            name: "slice port matched by name and protocol; number from the slice (rules 18, 19)",
            services: vec![service("ns", "web", |s| {
                set_ports(
                    s,
                    vec![port("http", 80, "TCP"), port("metrics", 9090, "TCP"), port("http", 80, "UDP")],
                );
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.ports = Some(vec![
                    slice_port(Some("metrics"), 9100, "TCP"),
                    slice_port(Some("http"), 8080, "TCP"),
                    // Same name, other protocol: only for the UDP port.
                    slice_port(Some("http"), 8081, "UDP"),
                ]);
                s.endpoints = vec![ep("10.244.1.1")];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("10.96.0.10:80/UDP", vec!["10.244.1.1:8081"]),
                ("10.96.0.10:9090/TCP", vec!["10.244.1.1:9100"]),
            ],
            problems: vec![],
        },
        Case {
            name: "slice port with the wrong name or protocol never matches (rules 18, 41)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.ports = Some(vec![
                    slice_port(Some("https"), 8443, "TCP"),
                    slice_port(Some("http"), 8080, "SCTP"),
                ]);
                s.endpoints = vec![ep("10.244.1.1")];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec![])],
            problems: vec![],
        },
        Case {
            name: "unnamed port: slice port name \"\" matches, nil name ignored and reported (rule 18)",
            services: vec![service("ns", "web", |s| {
                set_ports(s, vec![ServicePort { name: None, ..port("", 80, "TCP") }])
            })],
            slices: vec![
                slice("ns", "web-a", "web", "IPv4", |s| {
                    s.ports = Some(vec![slice_port(Some(""), 8080, "TCP")]);
                    s.endpoints = vec![ep("10.244.1.1")];
                }),
                slice("ns", "web-b", "web", "IPv4", |s| {
                    s.ports = Some(vec![slice_port(None, 8080, "TCP")]);
                    s.endpoints = vec![ep("10.244.1.2")];
                }),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec!["EndpointSlice ns/web-b: a port has no name"],
        },
        Case {
            name: "slice port with nil or 0 port skipped (rule 18)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![
                slice("ns", "web-a", "web", "IPv4", |s| {
                    s.ports = Some(vec![EndpointPort { port: None, ..slice_port(Some("http"), 0, "TCP") }]);
                    s.endpoints = vec![ep("10.244.1.1")];
                }),
                slice("ns", "web-b", "web", "IPv4", |s| {
                    s.ports = Some(vec![slice_port(Some("http"), 0, "TCP")]);
                    s.endpoints = vec![ep("10.244.1.2")];
                }),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec![])],
            problems: vec![],
        },
        Case {
            name: "endpoint without addresses skipped; only addresses[0] used (rule 20)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    Endpoint { addresses: vec![], ..ep("10.244.1.1") },
                    Endpoint {
                        addresses: vec!["10.244.1.2".into(), "10.244.1.3".into()],
                        ..ep("10.244.1.2")
                    },
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.2:8080"])],
            problems: vec![],
        },
        Case {
            name: "slice without the service-name label reported and ignored (rule 16)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![
                slice("ns", "web-a", "web", "IPv4", |s| {
                    s.metadata.labels = None;
                    s.endpoints = vec![ep("10.244.1.1")];
                }),
                slice("ns", "web-b", "", "IPv4", |s| s.endpoints = vec![ep("10.244.1.2")]),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec![])],
            problems: vec![
                "EndpointSlice ns/web-a: has no kubernetes.io/service-name label",
                "EndpointSlice ns/web-b: has no kubernetes.io/service-name label",
            ],
        },
        Case {
            name: "slice for a missing Service reported (rule 17)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![
                slice("ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "gone-a", "gone", "IPv4", |s| s.endpoints = vec![ep("10.244.1.2")]),
                // Same Service name, other namespace: the slice's namespace is what counts.
                slice("other", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.3")]),
            ],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![
                "EndpointSlice ns/gone-a: its Service ns/gone does not exist",
                "Service other/web does not exist",
            ],
        },
        Case {
            name: "unknown protocol: whole Service skipped",
            services: vec![
                service("ns", "web", |s| {
                    set_ports(s, vec![port("http", 80, "TCP"), port("ping", 7, "ICMP")])
                }),
                service("ns", "ok", |s| set_ips(s, &["10.96.0.11"])),
            ],
            slices: vec![
                slice("ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "ok-a", "ok", "IPv4", |s| s.endpoints = vec![ep("10.244.1.2")]),
            ],
            expected: vec![("10.96.0.11:80/TCP", vec!["10.244.1.2:8080"])],
            problems: vec!["Service ns/web: port \"ping\": unknown protocol \"ICMP\""],
        },
        Case {
            name: "port 0 or out of range: Service skipped",
            services: vec![
                service("ns", "zero", |s| set_ports(s, vec![port("http", 0, "TCP")])),
                service("ns", "big", |s| {
                    set_ips(s, &["10.96.0.11"]);
                    set_ports(s, vec![port("http", 70_000, "TCP")]);
                }),
                service("ns", "negative", |s| {
                    set_ips(s, &["10.96.0.12"]);
                    set_ports(s, vec![port("http", -80, "TCP"), port("https", 443, "TCP")]);
                }),
            ],
            slices: vec![slice("ns", "zero-a", "zero", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")])],
            expected: vec![],
            problems: vec![
                "Service ns/zero: port \"http\": port 0 is out of range",
                "Service ns/big: port \"http\": port 70000 is out of range",
                "Service ns/negative: port \"http\": port -80 is out of range",
            ],
        },
        Case {
            name: "malformed ClusterIP: Service skipped",
            services: vec![service("ns", "web", |s| set_ips(s, &["10.96.0.300"]))],
            slices: vec![],
            expected: vec![],
            problems: vec!["Service ns/web: clusterIP \"10.96.0.300\" is not an IP address"],
        },
        Case {
            name: "unspecified frontend addresses: Service skipped (a connect to 0.0.0.0 means this host)",
            services: vec![
                service("ns", "any4", |s| set_ips(s, &["0.0.0.0"])),
                service("ns", "any6", |s| set_ips(s, &["::"])),
                service("ns", "external", |s| {
                    set_ips(s, &["10.96.0.13"]);
                    set_external_ips(s, &["0.0.0.0"]);
                }),
            ],
            slices: vec![slice("ns", "any4-1", "any4", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")])],
            expected: vec![],
            problems: vec![
                "Service ns/any4: clusterIP 0.0.0.0 is the unspecified address",
                "Service ns/any6: clusterIP :: is the unspecified address",
                "Service ns/external: externalIP 0.0.0.0 is the unspecified address",
            ],
        },
        Case {
            name: "an unspecified endpoint address is no endpoint",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-1", "web", "IPv4", |s| {
                s.endpoints = vec![ep("0.0.0.0"), ep("10.244.1.1")]
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "one address in two slices, both not terminating: the ready copy wins, in any order (rule 21)",
            services: vec![
                service("ns", "web", |_| {}),
                service("ns", "other", |s| set_ips(s, &["10.96.0.11"])),
            ],
            slices: vec![
                slice("ns", "web-1", "web", "IPv4", |s| s.endpoints = vec![not_ready("10.244.1.1", false)]),
                slice("ns", "web-2", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "other-1", "other", "IPv4", |s| s.endpoints = vec![ep("10.244.1.2")]),
                slice("ns", "other-2", "other", "IPv4", |s| {
                    s.endpoints = vec![not_ready("10.244.1.2", false)]
                }),
            ],
            expected: vec![
                ("10.96.0.11:80/TCP", vec!["10.244.1.2:8080"]),
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "ipFamilies naming one family twice: Service skipped",
            services: vec![service("ns", "web", |s| {
                set_ips(s, &["fd00::10", "fd00::11"]);
            })],
            slices: vec![],
            expected: vec![],
            problems: vec!["Service ns/web: ipFamilies lists IPv6 twice"],
        },
        Case {
            name: "same port name and protocol listed twice: Service skipped",
            services: vec![service("ns", "web", |s| {
                set_ports(s, vec![port("http", 80, "TCP"), port("http", 81, "TCP")])
            })],
            slices: vec![],
            expected: vec![],
            problems: vec!["Service ns/web: port \"http\"/TCP is listed twice"],
        },
        Case {
            // The API server rejects this (`spec.ports[1]: Duplicate value`); from a file it would
            // give two groups one frontend, and the datapath could not serve both.
            name: "same port number and protocol on two named ports: Service skipped",
            services: vec![service("ns", "web", |s| {
                set_ports(s, vec![port("a", 80, "TCP"), port("b", 80, "TCP")])
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.ports = Some(vec![slice_port(Some("a"), 8080, "TCP"), slice_port(Some("b"), 8081, "TCP")]);
                s.endpoints = vec![ep("10.244.1.1")];
            })],
            expected: vec![],
            problems: vec!["Service ns/web: port 80/TCP is listed twice"],
        },
        Case {
            name: "two Services on one ClusterIP:port/proto: the second by namespace/name is skipped",
            services: vec![
                service("b-ns", "web", |_| {}),
                service("a-ns", "web", |s| {
                    set_ports(s, vec![port("http", 80, "TCP"), port("dns", 53, "UDP")])
                }),
                // Same address and port, other protocol: no conflict.
                service("c-ns", "web", |s| set_ports(s, vec![port("http", 80, "UDP")])),
            ],
            slices: vec![
                slice("a-ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("b-ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.2")]),
            ],
            expected: vec![
                ("10.96.0.10:53/UDP", vec![]),
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("10.96.0.10:80/UDP", vec![]),
            ],
            problems: vec!["Service b-ns/web: frontend 10.96.0.10:80/TCP is already used by a-ns/web:http"],
        },
        Case {
            name: "Service defined twice: the first definition is used",
            services: vec![
                service("ns", "web", |_| {}),
                service("ns", "web", |s| set_ports(s, vec![port("http", 8000, "TCP")])),
            ],
            slices: vec![],
            expected: vec![("10.96.0.10:80/TCP", vec![])],
            problems: vec!["Service ns/web: defined more than once"],
        },
        Case {
            name: "internalTrafficPolicy Local: only this node's endpoints (rules 23, 29)",
            services: vec![service("ns", "web", |s| spec(s).internal_traffic_policy = Some("Local".into()))],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    ep_on("10.244.1.1", Some(NODE)),
                    ep_on("10.244.2.1", Some("node-2")),
                    ep_on("10.244.3.1", None),
                    // The zone and hostname never make an endpoint local.
                    Endpoint {
                        zone: Some(NODE.into()),
                        hostname: Some(NODE.into()),
                        ..ep_on("10.244.4.1", Some("node-4"))
                    },
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "internalTrafficPolicy Local: no local endpoint means empty (drop) even with remote ones (rule 40)",
            services: vec![service("ns", "web", |s| spec(s).internal_traffic_policy = Some("Local".into()))],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![ep_on("10.244.2.1", Some("node-2"))]
            })],
            expected: vec![("10.96.0.10:80/TCP", vec![DROP])],
            problems: vec![],
        },
        Case {
            name: "internalTrafficPolicy Local: a remote terminating endpoint also makes it a drop",
            services: vec![service("ns", "web", |s| spec(s).internal_traffic_policy = Some("Local".into()))],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    Endpoint { node_name: Some("node-2".into()), ..terminating("10.244.2.1") },
                    // Never usable: does not make this node's set non-empty.
                    terminating_not_serving("10.244.1.1"),
                ]
            })],
            expected: vec![("10.96.0.10:80/TCP", vec![DROP])],
            problems: vec![],
        },
        Case {
            name: "internalTrafficPolicy Local: no usable endpoint anywhere is a reject (rules 27, 39)",
            services: vec![service("ns", "web", |s| spec(s).internal_traffic_policy = Some("Local".into()))],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![not_ready("10.244.1.1", true), terminating_not_serving("10.244.2.1")]
            })],
            expected: vec![("10.96.0.10:80/TCP", vec![])],
            problems: vec![],
        },
        Case {
            name: "internalTrafficPolicy Local: local terminating fallback is per node (rule 26)",
            services: vec![service("ns", "web", |s| spec(s).internal_traffic_policy = Some("Local".into()))],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![terminating("10.244.1.1"), ep_on("10.244.2.1", Some("node-2"))];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        // ---- frontends per Service port (rules 4, 7, 8, 9, 44) ----
        Case {
            name: "externalIPs: any type may use them, each family gets its own (rule 8)",
            services: vec![service("ns", "web", |s| {
                set_ips(s, &["10.96.0.10", "fd00:10:96::10"]);
                set_external_ips(s, &["198.51.100.2", "2001:db8::2", "198.51.100.1"]);
            })],
            slices: vec![
                slice("ns", "web-v4", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "web-v6", "web", "IPv6", |s| s.endpoints = vec![ep("fd00:10:244::1")]),
            ],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("ExternalIP 198.51.100.1:80/TCP", vec!["10.244.1.1:8080"]),
                ("ExternalIP 198.51.100.2:80/TCP", vec!["10.244.1.1:8080"]),
                ("[fd00:10:96::10]:80/TCP", vec!["[fd00:10:244::1]:8080"]),
                ("ExternalIP [2001:db8::2]:80/TCP", vec!["[fd00:10:244::1]:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "no ClusterIP in a family: no externalIP, LB or NodePort frontend in it (rule 4)",
            services: vec![service("ns", "web", |s| {
                make_node_port(s);
                set_external_ips(s, &["2001:db8::2", "198.51.100.1"]);
                set_ingress(s, vec![ingress(Some("2001:db8::10"), None, None)]);
            })],
            slices: vec![
                slice("ns", "web-v4", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "web-v6", "web", "IPv6", |s| s.endpoints = vec![ep("fd00:10:244::1")]),
            ],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("ExternalIP 198.51.100.1:80/TCP", vec!["10.244.1.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "LB ingress: ip with ipMode unset or VIP counts; hostname-only and Proxy do not (rule 9)",
            services: vec![service("ns", "web", |s| {
                make_load_balancer(s);
                set_ingress(
                    s,
                    vec![
                        ingress(Some("203.0.113.10"), None, None),
                        ingress(None, Some("lb.example.com"), None),
                        ingress(Some(""), Some("lb2.example.com"), None),
                        ingress(Some("203.0.113.11"), None, Some("Proxy")),
                        ingress(Some("203.0.113.12"), Some("lb3.example.com"), Some("VIP")),
                    ],
                );
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")])],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("LoadBalancer 203.0.113.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("LoadBalancer 203.0.113.12:80/TCP", vec!["10.244.1.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "NodePort iff nodePort is set and not 0, whatever the type (rule 7)",
            services: vec![
                service("ns", "np", make_node_port),
                // A ClusterIP Service with a nodePort (the API server would refuse it): still served.
                service("ns", "cip", |s| {
                    set_ips(s, &["10.96.0.11"]);
                    set_ports(s, vec![node_port(30081)]);
                }),
                service("ns", "zero", |s| {
                    set_ips(s, &["10.96.0.12"]);
                    set_type(s, "NodePort");
                    set_ports(s, vec![node_port(0)]);
                }),
                service("ns", "unset", |s| {
                    set_ips(s, &["10.96.0.13"]);
                    set_type(s, "NodePort");
                }),
            ],
            slices: vec![slice("ns", "np-a", "np", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")])],
            expected: vec![
                ("10.96.0.11:80/TCP", vec![]),
                ("NodePort *:30081/TCP", vec![]),
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080"]),
                ("10.96.0.13:80/TCP", vec![]),
                ("10.96.0.12:80/TCP", vec![]),
            ],
            problems: vec![],
        },
        Case {
            name: "LoadBalancer with allocateLoadBalancerNodePorts false: no NodePort (rule 7)",
            services: vec![service("ns", "web", |s| {
                make_load_balancer(s);
                set_ports(s, vec![port("http", 80, "TCP")]);
                spec(s).allocate_load_balancer_node_ports = Some(false);
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")])],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("LoadBalancer 203.0.113.10:80/TCP", vec!["10.244.1.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "dual-stack NodePort: one per family, each with its family's endpoints (rules 4, 7)",
            services: vec![service("ns", "web", |s| {
                set_ips(s, &["fd00:10:96::10", "10.96.0.10"]);
                make_node_port(s);
            })],
            slices: vec![
                slice("ns", "web-v4", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")]),
                slice("ns", "web-v6", "web", "IPv6", |s| s.endpoints = vec![ep("fd00:10:244::1")]),
            ],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080"]),
                ("[fd00:10:96::10]:80/TCP", vec!["[fd00:10:244::1]:8080"]),
                ("NodePort *:30080/TCP", vec!["[fd00:10:244::1]:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "each port has its own NodePort and protocol (rule 44)",
            services: vec![service("ns", "dns", |s| {
                set_type(s, "NodePort");
                set_ports(
                    s,
                    vec![node_port(30080), ServicePort { node_port: Some(30053), ..port("dns", 53, "UDP") }],
                );
            })],
            slices: vec![slice("ns", "dns-a", "dns", "IPv4", |s| {
                s.ports =
                    Some(vec![slice_port(Some("http"), 8080, "TCP"), slice_port(Some("dns"), 5353, "UDP")]);
                s.endpoints = vec![ep("10.244.1.1")];
            })],
            expected: vec![
                ("10.96.0.10:53/UDP", vec!["10.244.1.1:5353"]),
                ("NodePort *:30053/UDP", vec!["10.244.1.1:5353"]),
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "an address listed as ClusterIP, externalIP and LB IP keeps its first kind",
            services: vec![service("ns", "web", |s| {
                make_load_balancer(s);
                set_external_ips(s, &["10.96.0.10", "198.51.100.1", "198.51.100.1"]);
                set_ingress(
                    s,
                    vec![
                        ingress(Some("198.51.100.1"), None, None),
                        ingress(Some("203.0.113.10"), None, None),
                        ingress(Some("203.0.113.10"), None, None),
                    ],
                );
            })],
            slices: vec![],
            expected: vec![
                ("10.96.0.10:80/TCP", vec![]),
                ("ExternalIP 198.51.100.1:80/TCP", vec![]),
                ("LoadBalancer 203.0.113.10:80/TCP", vec![]),
                ("NodePort *:30080/TCP", vec![]),
            ],
            problems: vec![],
        },
        Case {
            name: "two Services on one NodePort or externalIP:port: the second is skipped",
            services: vec![
                service("ns", "a", make_node_port),
                service("ns", "b", |s| {
                    set_ips(s, &["10.96.0.11"]);
                    make_node_port(s);
                }),
                // Same NodePort number, other protocol: no conflict.
                service("ns", "c", |s| {
                    set_ips(s, &["10.96.0.12"]);
                    set_type(s, "NodePort");
                    set_ports(s, vec![ServicePort { node_port: Some(30080), ..port("http", 80, "UDP") }]);
                    set_external_ips(s, &["198.51.100.1"]);
                }),
                service("ns", "d", |s| {
                    set_ips(s, &["10.96.0.13"]);
                    set_ports(s, vec![port("http", 80, "UDP")]);
                    set_external_ips(s, &["198.51.100.1"]);
                }),
            ],
            slices: vec![],
            expected: vec![
                ("10.96.0.10:80/TCP", vec![]),
                ("NodePort *:30080/TCP", vec![]),
                ("10.96.0.12:80/UDP", vec![]),
                ("ExternalIP 198.51.100.1:80/UDP", vec![]),
                ("NodePort *:30080/UDP", vec![]),
            ],
            problems: vec![
                "Service ns/b: frontend *:30080/TCP is already used by ns/a:http; Service skipped",
                "Service ns/d: frontend 198.51.100.1:80/UDP is already used by ns/c:http",
            ],
        },
        Case {
            name: "malformed type, nodePort, externalIP, ingress IP or source range: Service skipped",
            services: vec![
                service("ns", "type", |s| set_type(s, "Ingress")),
                service("ns", "nodeport", |s| {
                    set_ips(s, &["10.96.0.11"]);
                    set_ports(s, vec![node_port(70_000)]);
                }),
                service("ns", "nodeport-twice", |s| {
                    set_ips(s, &["10.96.0.12"]);
                    set_ports(
                        s,
                        vec![
                            node_port(30080),
                            ServicePort { node_port: Some(30080), ..port("b", 81, "TCP") },
                        ],
                    );
                }),
                service("ns", "external", |s| {
                    set_ips(s, &["10.96.0.13"]);
                    set_external_ips(s, &["198.51.100.1", "example.com"]);
                }),
                service("ns", "ingress", |s| {
                    set_ips(s, &["10.96.0.14"]);
                    set_ingress(s, vec![ingress(Some("203.0.113.300"), None, None)]);
                }),
                service("ns", "ranges", |s| {
                    set_ips(s, &["10.96.0.15"]);
                    spec(s).load_balancer_source_ranges =
                        Some(vec![" 10.0.0.0/8 ".into(), "10.0.0.0/33".into()]);
                }),
                service("ns", "ok", |s| set_ips(s, &["10.96.0.16"])),
            ],
            slices: vec![],
            expected: vec![("10.96.0.16:80/TCP", vec![])],
            problems: vec![
                "Service ns/type: unknown type \"Ingress\"",
                "Service ns/nodeport: port \"http\": nodePort 70000 is out of range 1..=65535",
                "Service ns/nodeport-twice: nodePort 30080/TCP is listed twice",
                "Service ns/external: externalIP \"example.com\" is not an IP address",
                "Service ns/ingress: status.loadBalancer.ingress ip \"203.0.113.300\" is not an IP address",
                "Service ns/ranges: loadBalancerSourceRanges entry \"10.0.0.0/33\" is not a CIDR",
            ],
        },
        // ---- traffic policies (rules 11, 25, 26, 29, 30, 39, 40) ----
        Case {
            name: "externalTrafficPolicy Local: external frontends use this node's ready endpoints only (rule 30)",
            services: vec![service("ns", "web", |s| {
                make_load_balancer(s);
                etp_local(s);
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    ep("10.244.1.1"),
                    not_ready("10.244.1.2", true),
                    terminating("10.244.1.3"),
                    ep_on("10.244.2.1", Some("node-2")),
                ];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.2.1:8080"]),
                ("LoadBalancer 203.0.113.10:80/TCP", vec!["10.244.1.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "externalTrafficPolicy Local: a local terminating endpoint is used although others are ready (rule 26)",
            services: vec![service("ns", "web", |s| {
                make_node_port(s);
                etp_local(s);
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    terminating("10.244.1.1"),
                    terminating_not_serving("10.244.1.2"),
                    ep_on("10.244.2.1", Some("node-2")),
                ];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.2.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "externalTrafficPolicy Local: no local endpoint drops external traffic, ClusterIP unaffected (rule 40)",
            services: vec![service("ns", "web", |s| {
                make_load_balancer(s);
                etp_local(s);
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![ep_on("10.244.2.1", Some("node-2")), not_ready("10.244.1.1", true)];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.2.1:8080"]),
                ("LoadBalancer 203.0.113.10:80/TCP", vec![DROP]),
                ("NodePort *:30080/TCP", vec![DROP]),
            ],
            problems: vec![],
        },
        Case {
            name: "both policies Local and no usable endpoint anywhere: every frontend rejects (rule 39)",
            services: vec![service("ns", "web", |s| {
                make_load_balancer(s);
                etp_local(s);
                spec(s).internal_traffic_policy = Some("Local".into());
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![not_ready("10.244.1.1", true), terminating_not_serving("10.244.2.1")];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec![]),
                ("LoadBalancer 203.0.113.10:80/TCP", vec![]),
                ("NodePort *:30080/TCP", vec![]),
            ],
            problems: vec![],
        },
        Case {
            name: "externalTrafficPolicy Local is ignored when not externally accessible (rule 11)",
            // type ClusterIP without externalIPs, yet with a nodePort and an ingress IP: both are
            // served (rules 7, 9), under the Cluster policy.
            services: vec![service("ns", "web", |s| {
                set_ports(s, vec![node_port(30080)]);
                set_ingress(s, vec![ingress(Some("203.0.113.10"), None, None)]);
                etp_local(s);
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![ep("10.244.1.1"), ep_on("10.244.2.1", Some("node-2"))];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.2.1:8080"]),
                ("LoadBalancer 203.0.113.10:80/TCP", vec!["10.244.1.1:8080", "10.244.2.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080", "10.244.2.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "externalTrafficPolicy Local applies to a ClusterIP Service with externalIPs (rule 11)",
            services: vec![service("ns", "web", |s| {
                set_external_ips(s, &["198.51.100.1"]);
                etp_local(s);
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![ep("10.244.1.1"), ep_on("10.244.2.1", Some("node-2"))];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.2.1:8080"]),
                ("ExternalIP 198.51.100.1:80/TCP", vec!["10.244.1.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "externalIPs of the other family make a Service externally accessible (rule 11)",
            // kube-proxy tests `len(externalIPs) > 0` before any family filter.
            services: vec![service("ns", "web", |s| {
                set_ports(s, vec![node_port(30080)]);
                set_external_ips(s, &["2001:db8::1"]);
                etp_local(s);
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![ep_on("10.244.2.1", Some("node-2"))];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.2.1:8080"]),
                ("NodePort *:30080/TCP", vec![DROP]),
            ],
            problems: vec![],
        },
        Case {
            name: "internalTrafficPolicy Local restricts ClusterIPs only, not external frontends (rule 29)",
            services: vec![service("ns", "web", |s| {
                make_node_port(s);
                spec(s).internal_traffic_policy = Some("Local".into());
            })],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![ep_on("10.244.2.1", Some("node-2")), ep_on("10.244.3.1", Some("node-3"))];
            })],
            expected: vec![
                ("10.96.0.10:80/TCP", vec![DROP]),
                ("NodePort *:30080/TCP", vec!["10.244.2.1:8080", "10.244.3.1:8080"]),
            ],
            problems: vec![],
        },
        // ---- topology (rules 33-38) ----
        Case {
            name: "topology: every ready endpoint zone-hinted: those for this node's zone (rule 35)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    zones(ep_on("10.244.1.1", Some("node-1")), &["zone-a"]),
                    zones(ep_on("10.244.2.1", Some("node-2")), &["zone-b"]),
                    zones(ep_on("10.244.3.1", Some("node-3")), &["zone-c", "zone-a"]),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.3.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: one ready endpoint without hints: no filter (rule 35)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    zones(ep_on("10.244.1.1", Some("node-1")), &["zone-a"]),
                    zones(ep_on("10.244.2.1", Some("node-2")), &["zone-b"]),
                    ep_on("10.244.3.1", Some("node-3")),
                ];
            })],
            expected: vec![(
                "10.96.0.10:80/TCP",
                vec!["10.244.1.1:8080", "10.244.2.1:8080", "10.244.3.1:8080"],
            )],
            problems: vec![],
        },
        Case {
            name: "topology: an empty forZones counts as no hints",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    zones(ep_on("10.244.1.1", Some("node-1")), &["zone-a"]),
                    zones(ep_on("10.244.2.1", Some("node-2")), &[]),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.2.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: not-ready endpoints without hints do not disable the filter (rule 35)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    zones(ep_on("10.244.1.1", Some("node-1")), &["zone-a"]),
                    zones(ep_on("10.244.2.1", Some("node-2")), &["zone-b"]),
                    not_ready("10.244.1.2", true),
                    terminating("10.244.1.3"),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: this node's zone in no hint: no filter",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    zones(ep_on("10.244.2.1", Some("node-2")), &["zone-b"]),
                    zones(ep_on("10.244.3.1", Some("node-3")), &["zone-c"]),
                    // Hinted for this zone but not ready: does not count.
                    zones(not_ready("10.244.1.1", true), &["zone-a"]),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.2.1:8080", "10.244.3.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: the endpoint's zone field is never compared (rule 34)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    Endpoint {
                        zone: Some(ZONE.into()),
                        ..zones(ep_on("10.244.1.1", Some("node-1")), &["zone-b"])
                    },
                    Endpoint {
                        zone: Some("zone-b".into()),
                        ..zones(ep_on("10.244.2.1", Some("node-2")), &[ZONE])
                    },
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.2.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: same-node hints (forNodes) come before zones (rule 36)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    nodes(zones(ep_on("10.244.1.1", Some("node-1")), &["zone-a"]), &["node-1"]),
                    nodes(zones(ep_on("10.244.2.1", Some("node-2")), &["zone-a"]), &["node-2"]),
                    nodes(zones(ep_on("10.244.3.1", Some("node-3")), &["zone-b"]), &["node-3"]),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: the forNodes hint counts, not the endpoint's nodeName (rule 36)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    nodes(ep_on("10.244.1.1", Some("node-1")), &["node-2"]),
                    nodes(ep_on("10.244.2.1", Some("node-2")), &["node-1", "node-2"]),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.2.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: no forNodes hint for this node falls back to zones (rule 36)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    nodes(zones(ep_on("10.244.2.1", Some("node-2")), &["zone-a"]), &["node-2"]),
                    nodes(zones(ep_on("10.244.3.1", Some("node-3")), &["zone-b"]), &["node-3"]),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.2.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: forNodes on only some ready endpoints is ignored, zones still apply",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    nodes(zones(ep_on("10.244.1.1", Some("node-1")), &["zone-a"]), &["node-1"]),
                    zones(ep_on("10.244.2.1", Some("node-2")), &["zone-a"]),
                    zones(ep_on("10.244.3.1", Some("node-3")), &["zone-b"]),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.2.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: the terminating fallback ignores hints (rule 38)",
            services: vec![service("ns", "web", |_| {})],
            slices: vec![slice("ns", "web-a", "web", "IPv4", |s| {
                s.endpoints = vec![
                    zones(terminating("10.244.1.1"), &["zone-b"]),
                    nodes(
                        zones(
                            Endpoint { node_name: Some("node-2".into()), ..terminating("10.244.2.1") },
                            &["zone-a"],
                        ),
                        &["node-2"],
                    ),
                ];
            })],
            expected: vec![("10.96.0.10:80/TCP", vec!["10.244.1.1:8080", "10.244.2.1:8080"])],
            problems: vec![],
        },
        Case {
            name: "topology: never applied to the Local set; applies to external Cluster sets (rule 33)",
            services: vec![
                service("ns", "etp", |s| {
                    make_node_port(s);
                    etp_local(s);
                }),
                service("ns", "itp", |s| {
                    set_ips(s, &["10.96.0.11"]);
                    set_type(s, "NodePort");
                    set_ports(s, vec![node_port(30081)]);
                    spec(s).internal_traffic_policy = Some("Local".into());
                }),
            ],
            slices: ["etp", "itp"]
                .into_iter()
                .map(|svc| {
                    slice("ns", &format!("{svc}-a"), svc, "IPv4", |s| {
                        s.endpoints = vec![
                            zones(ep_on("10.244.1.1", Some("node-1")), &["zone-b"]),
                            zones(ep_on("10.244.2.1", Some("node-2")), &["zone-a"]),
                        ];
                    })
                })
                .collect(),
            expected: vec![
                ("10.96.0.10:80/TCP", vec!["10.244.2.1:8080"]),
                ("NodePort *:30080/TCP", vec!["10.244.1.1:8080"]),
                ("10.96.0.11:80/TCP", vec!["10.244.1.1:8080"]),
                ("NodePort *:30081/TCP", vec!["10.244.2.1:8080"]),
            ],
            problems: vec![],
        },
        Case {
            name: "output is sorted by namespace, name, port name, protocol, family",
            services: vec![
                service("z", "svc", |s| set_ips(s, &["10.96.0.20"])),
                service("a", "web", |s| {
                    set_ips(s, &["fd00:10:96::10", "10.96.0.10"]);
                    set_ports(
                        s,
                        vec![port("web", 80, "TCP"), port("dns", 53, "UDP"), port("dns", 53, "TCP")],
                    );
                }),
                service("a", "api", |s| set_ips(s, &["10.96.0.30"])),
            ],
            slices: vec![],
            expected: vec![
                ("10.96.0.30:80/TCP", vec![]),
                ("10.96.0.10:53/TCP", vec![]),
                ("[fd00:10:96::10]:53/TCP", vec![]),
                ("10.96.0.10:53/UDP", vec![]),
                ("[fd00:10:96::10]:53/UDP", vec![]),
                ("10.96.0.10:80/TCP", vec![]),
                ("[fd00:10:96::10]:80/TCP", vec![]),
                ("10.96.0.20:80/TCP", vec![]),
            ],
            problems: vec![],
        },
    ]
}

#[test]
fn translate_table() {
    let mut seen = std::collections::BTreeSet::new();
    // The kube-proxy rules the cases name, recorded once every case passed.
    let mut rules = Vec::new();
    for case in cases() {
        assert!(seen.insert(case.name), "duplicate case name {}", case.name);
        let (state, problems) = run(case.services, case.slices);
        check_groups(case.name, &state);
        let got = frontends(&state);
        let want: Vec<(String, Vec<String>)> = case
            .expected
            .iter()
            .map(|(f, e)| ((*f).to_owned(), e.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        assert_eq!(got, want, "case {:?}: frontends (problems: {problems:?})", case.name);
        check_problems(case.name, &problems, &case.problems);
        rules.extend(lb_tests::parity::rules_in(case.name));
    }
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    lb_tests::parity::shown(&rules);
}

#[test]
fn translate_is_independent_of_input_order() {
    for case in cases() {
        let (forward, forward_problems) = run(case.services.clone(), case.slices.clone());
        let mut services = case.services;
        let mut slices = case.slices;
        services.reverse();
        slices.reverse();
        let (backward, backward_problems) = run(services, slices);
        // "Defined twice" keeps the first definition, which depends on the order by design.
        if case.name.starts_with("Service defined twice") {
            continue;
        }
        assert_eq!(forward, backward, "case {:?}", case.name);
        let sorted = |p: Vec<Problem>| {
            let mut p: Vec<String> = p.iter().map(ToString::to_string).collect();
            p.sort();
            p
        };
        assert_eq!(sorted(forward_problems), sorted(backward_problems), "case {:?}", case.name);
    }
}

// ---- fields the table does not show ------------------------------------------------------------

#[test]
fn groups_carry_service_port_name_and_family() {
    let (state, _) = run(
        vec![service("ns", "web", |s| set_ips(s, &["10.96.0.10", "fd00:10:96::10"]))],
        vec![slice("ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep("10.244.1.1")])],
    );
    let summary: Vec<(String, Family, Protocol)> =
        state.groups.iter().map(|g| (g.service.to_string(), g.family, g.service.protocol)).collect();
    assert_eq!(
        summary,
        vec![
            ("ns/web:http".to_owned(), Family::V4, Protocol::Tcp),
            ("ns/web:http".to_owned(), Family::V6, Protocol::Tcp)
        ]
    );
    assert!(state.groups.iter().all(|g| { g.frontends.iter().all(|f| f.kind == FrontendKind::ClusterIP) }));
}

#[test]
fn backends_list_ready_and_terminating_with_their_state() {
    let (state, _) = run(
        vec![service("ns", "web", |_| {})],
        vec![slice("ns", "web-a", "web", "IPv4", |s| {
            s.endpoints = vec![
                ep("10.244.1.1"),
                terminating("10.244.1.2"),
                terminating_not_serving("10.244.1.3"),
                not_ready("10.244.1.4", true),
                ep_on("10.244.1.5", Some("node-2")),
            ];
        })],
    );
    let [group] = state.groups.as_slice() else { panic!("one group expected: {state:?}") };
    let backends: Vec<(String, EndpointState)> =
        group.backends.iter().map(|b| (b.addr.to_string(), b.state)).collect();
    assert_eq!(
        backends,
        vec![
            ("10.244.1.1:8080".to_owned(), EndpointState::Active),
            ("10.244.1.2:8080".to_owned(), EndpointState::Terminating),
            ("10.244.1.5:8080".to_owned(), EndpointState::Active),
        ]
    );
    let eligible: Vec<String> = group.eligible.iter().map(ToString::to_string).collect();
    assert_eq!(eligible, ["10.244.1.1:8080", "10.244.1.5:8080"]);
}

#[test]
fn session_affinity_timeout() {
    let with_affinity = |affinity: Option<&str>, timeout: Option<Option<i32>>| {
        let svc = service("ns", "web", |s| {
            spec(s).session_affinity = affinity.map(Into::into);
            spec(s).session_affinity_config = timeout
                .map(|t| SessionAffinityConfig { client_ip: Some(ClientIPConfig { timeout_seconds: t }) });
        });
        let (state, problems) = run(vec![svc], vec![]);
        (state.groups.iter().map(|g| g.affinity_timeout).collect::<Vec<_>>(), problems)
    };
    /// (sessionAffinity, clientIP.timeoutSeconds if the config is set, timeouts, problems)
    type AffinityCase<'a> = (Option<&'a str>, Option<Option<i32>>, Vec<Option<u32>>, &'a [&'a str]);
    let cases: [AffinityCase; 8] = [
        (None, None, vec![None], &[]),
        (Some("None"), Some(Some(60)), vec![None], &[]),
        (Some("ClientIP"), None, vec![Some(10_800)], &[]),
        (Some("ClientIP"), Some(None), vec![Some(10_800)], &[]),
        (Some("ClientIP"), Some(Some(60)), vec![Some(60)], &[]),
        (Some("ClientIP"), Some(Some(86_400)), vec![Some(86_400)], &[]),
        (Some("ClientIP"), Some(Some(0)), vec![], &["timeoutSeconds 0 is not in 1..=86400"]),
        (Some("Cookie"), None, vec![], &["unknown sessionAffinity \"Cookie\""]),
    ];
    for (affinity, timeout, want, want_problems) in cases {
        let (got, problems) = with_affinity(affinity, timeout);
        let name = format!("{affinity:?} {timeout:?}");
        assert_eq!(got, want, "{name}");
        check_problems(&name, &problems, want_problems);
    }
    lb_tests::parity::shown(&["13"]);
}

#[test]
fn session_affinity_applies_to_every_family_and_port() {
    let (state, _) = run(
        vec![service("ns", "web", |s| {
            set_ips(s, &["10.96.0.10", "fd00:10:96::10"]);
            set_ports(s, vec![port("http", 80, "TCP"), port("dns", 53, "UDP")]);
            spec(s).session_affinity = Some("ClientIP".into());
            spec(s).session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig { timeout_seconds: Some(300) }),
            });
        })],
        vec![],
    );
    assert_eq!(state.groups.len(), 4);
    assert!(state.groups.iter().all(|g| g.affinity_timeout == Some(300)), "{state:?}");
    lb_tests::parity::shown(&["13"]);
}

#[test]
fn problems_name_the_origin() {
    let mut objects =
        objects(vec![service("ns", "web", |s| set_ports(s, vec![port("x", 0, "TCP")]))], vec![]);
    objects.services[0].origin = "cluster.yaml#3".into();
    let (_, problems) = translate(&objects, &NodeContext::named(NODE));
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["Service ns/web (cluster.yaml#3): port \"x\": port 0 is out of range 1..=65535"]);
}

#[test]
fn empty_node_name_means_nothing_is_local() {
    let svc = service("ns", "web", |s| spec(s).internal_traffic_policy = Some("Local".into()));
    let slices =
        vec![slice("ns", "web-a", "web", "IPv4", |s| s.endpoints = vec![ep_on("10.244.1.1", Some(""))])];
    let (state, _) = translate(&objects(vec![svc], slices), &NodeContext::default());
    // Not local, yet an endpoint exists: a drop, not a reject.
    assert_eq!(frontends(&state), vec![("10.96.0.10:80/TCP".to_owned(), vec![DROP.to_owned()])]);
    lb_tests::parity::shown(&["23"]);
}

#[test]
fn translate_is_deterministic() {
    let build = || {
        run(
            vec![
                service("ns", "b", |s| set_ips(s, &["10.96.0.2", "fd00::2"])),
                service("ns", "a", |s| set_ips(s, &["10.96.0.1"])),
            ],
            vec![
                slice("ns", "b-2", "b", "IPv4", |s| s.endpoints = vec![ep("10.244.0.9"), ep("10.244.0.3")]),
                slice("ns", "b-1", "b", "IPv4", |s| s.endpoints = vec![ep("10.244.0.5")]),
                slice("ns", "a-1", "a", "IPv4", |s| s.endpoints = vec![ep("10.244.0.7"), ep("10.244.0.1")]),
            ],
        )
    };
    let (first, _) = build();
    for _ in 0..5 {
        assert_eq!(build().0, first);
    }
    let names: Vec<String> = first.groups.iter().map(|g| format!("{} {:?}", g.service, g.family)).collect();
    assert_eq!(names, ["ns/a:http V4", "ns/b:http V4", "ns/b:http V6"]);
    for g in &first.groups {
        assert!(g.eligible.is_sorted(), "{g:?}");
        assert!(g.backends.is_sorted(), "{g:?}");
    }
}

#[test]
fn groups_carry_scope_and_when_empty() {
    let (state, _) = run(
        vec![service("ns", "web", |s| {
            set_ips(s, &["10.96.0.10", "fd00:10:96::10"]);
            make_load_balancer(s);
            etp_local(s);
        })],
        vec![slice("ns", "web-a", "web", "IPv4", |s| {
            s.endpoints = vec![ep_on("10.244.2.1", Some("node-2"))]
        })],
    );
    let summary: Vec<(Family, Scope, Vec<FrontendKind>, usize, WhenEmpty)> = state
        .groups
        .iter()
        .map(|g| {
            (g.family, g.scope, g.frontends.iter().map(|f| f.kind).collect(), g.eligible.len(), g.when_empty)
        })
        .collect();
    use FrontendKind::*;
    assert_eq!(
        summary,
        vec![
            (Family::V4, Scope::Internal, vec![ClusterIP], 1, WhenEmpty::Reject),
            (Family::V4, Scope::External, vec![LoadBalancer, NodePort], 0, WhenEmpty::Drop),
            // No IPv6 endpoint anywhere: reject, although the policy is Local.
            (Family::V6, Scope::Internal, vec![ClusterIP], 0, WhenEmpty::Reject),
            (Family::V6, Scope::External, vec![NodePort], 0, WhenEmpty::Reject),
        ]
    );
    let node_ports: Vec<String> = state
        .groups
        .iter()
        .flat_map(|g| &g.frontends)
        .filter(|f| f.kind == NodePort)
        .map(|f| f.addr.to_string())
        .collect();
    assert_eq!(node_ports, ["0.0.0.0", "::"]);
    // The External group lists every backend too (draining, display).
    assert_eq!(state.groups[1].backends, state.groups[0].backends);
    assert_eq!(state.groups[1].backends.len(), 1);
    // Rule 31: this node's own connections to the LB IP or NodePort are short-circuited to the
    // Cluster set, so the socket hooks reach the remote endpoint instead of dropping.
    let from_node: Vec<String> = state.groups[1].from_node.iter().map(ToString::to_string).collect();
    assert_eq!(from_node, ["10.244.2.1:8080"]);
    assert_eq!(state.groups[0].from_node, state.groups[0].eligible, "Internal: the policy set itself");
    lb_tests::parity::shown(&["31"]);
}

#[test]
fn external_group_only_with_external_frontends() {
    let (state, _) = run(
        vec![
            service("ns", "plain", etp_local),
            // A LoadBalancer still waiting for its IP, without NodePorts: nothing external yet.
            service("ns", "pending", |s| {
                set_ips(s, &["10.96.0.11"]);
                set_type(s, "LoadBalancer");
                spec(s).allocate_load_balancer_node_ports = Some(false);
            }),
        ],
        vec![],
    );
    let scopes: Vec<(String, Scope)> =
        state.groups.iter().map(|g| (g.service.to_string(), g.scope)).collect();
    assert_eq!(
        scopes,
        [("ns/pending:http".to_owned(), Scope::Internal), ("ns/plain:http".to_owned(), Scope::Internal)]
    );
}

#[test]
fn frontend_display() {
    let f = |addr: &str, kind| Frontend {
        addr: addr.parse().expect("ip"),
        port: 30080,
        protocol: Protocol::Udp,
        kind,
    };
    assert_eq!(f("0.0.0.0", FrontendKind::NodePort).to_string(), "*:30080/UDP");
    assert_eq!(f("::", FrontendKind::NodePort).to_string(), "*:30080/UDP");
    // An unspecified address of another kind, or a NodePort on one address, shows the address.
    assert_eq!(f("0.0.0.0", FrontendKind::ExternalIP).to_string(), "0.0.0.0:30080/UDP");
    assert_eq!(f("192.168.0.1", FrontendKind::NodePort).to_string(), "192.168.0.1:30080/UDP");
    assert_eq!(f("fd00::1", FrontendKind::LoadBalancer).to_string(), "[fd00::1]:30080/UDP");
    let names: Vec<String> = [
        FrontendKind::ClusterIP,
        FrontendKind::ExternalIP,
        FrontendKind::LoadBalancer,
        FrontendKind::NodePort,
    ]
    .iter()
    .map(|k| format!("{k} {:#x}", k.flag()))
    .collect();
    assert_eq!(names, ["ClusterIP 0x1", "ExternalIP 0x2", "LoadBalancer 0x4", "NodePort 0x8"]);
}

#[test]
fn node_addresses_come_from_the_node_context_sorted_and_canonical() {
    let node = NodeContext {
        name: NODE.into(),
        zone: None,
        addresses: ["192.168.0.2", "fd00::1", "::ffff:192.168.0.1", "192.168.0.2"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect(),
    };
    let (state, _) = translate(&objects(vec![], vec![]), &node);
    let shown: Vec<String> = state.node_addresses.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["192.168.0.1", "192.168.0.2", "fd00::1"]);
    assert!(state.groups.is_empty());
}

#[test]
fn node_without_zone_uses_no_zone_filter() {
    let svc = service("ns", "web", |_| {});
    let slices = vec![slice("ns", "web-a", "web", "IPv4", |s| {
        s.endpoints = vec![
            zones(ep_on("10.244.1.1", Some("node-1")), &["zone-a"]),
            zones(ep_on("10.244.2.1", Some("node-2")), &["zone-b"]),
        ]
    })];
    let objects = objects(vec![svc], slices);
    let zoned = |zone: Option<&str>| {
        let node = NodeContext { zone: zone.map(Into::into), ..node() };
        frontends(&translate(&objects, &node).0)
    };
    let all = vec!["10.244.1.1:8080".to_owned(), "10.244.2.1:8080".to_owned()];
    assert_eq!(zoned(None), vec![("10.96.0.10:80/TCP".to_owned(), all)]);
    assert_eq!(
        zoned(Some("zone-b")),
        vec![("10.96.0.10:80/TCP".to_owned(), vec!["10.244.2.1:8080".to_owned()])]
    );
    lb_tests::parity::shown(&["34"]);
}

#[test]
fn load_balancer_source_ranges_are_trimmed_parsed_and_split_by_family() {
    let (state, problems) = run(
        vec![service("ns", "web", |s| {
            set_ips(s, &["10.96.0.10", "fd00:10:96::10"]);
            make_load_balancer(s);
            spec(s).load_balancer_source_ranges = Some(vec![
                " 192.168.0.0/16".into(),
                "10.1.2.3/8 ".into(),
                "2001:db8::1/32".into(),
                "203.0.113.7/32".into(),
                "10.0.0.0/8".into(),
            ]);
        })],
        vec![],
    );
    assert!(problems.is_empty(), "{problems:?}");
    let ranges: Vec<(Family, Scope, Vec<String>)> = state
        .groups
        .iter()
        .map(|g| (g.family, g.scope, g.source_ranges.iter().map(ToString::to_string).collect()))
        .collect();
    let v4 = vec!["10.0.0.0/8".to_owned(), "192.168.0.0/16".to_owned(), "203.0.113.7/32".to_owned()];
    let v6 = vec!["2001:db8::/32".to_owned()];
    assert_eq!(
        ranges,
        vec![
            (Family::V4, Scope::Internal, v4.clone()),
            (Family::V4, Scope::External, v4),
            (Family::V6, Scope::Internal, v6.clone()),
            (Family::V6, Scope::External, v6),
        ]
    );
    // None set: empty everywhere.
    let (state, _) = run(vec![service("ns", "web", make_load_balancer)], vec![]);
    assert!(state.groups.iter().all(|g| g.source_ranges.is_empty()), "{state:?}");
    lb_tests::parity::shown(&["10"]);
}

#[test]
fn cidr_parsing() {
    let parse = |s: &str| Cidr::parse(s).map(|c| c.to_string());
    assert_eq!(parse("10.1.2.3/8").as_deref(), Some("10.0.0.0/8"));
    assert_eq!(parse("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
    assert_eq!(parse("10.1.2.3/32").as_deref(), Some("10.1.2.3/32"));
    assert_eq!(parse("2001:db8:ffff::1/33").as_deref(), Some("2001:db8:8000::/33"));
    assert_eq!(parse("::/0").as_deref(), Some("::/0"));
    assert_eq!(parse("fd00::1/128").as_deref(), Some("fd00::1/128"));
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0/8",
        "/8",
        "",
        " 10.0.0.0/8",
    ] {
        assert_eq!(parse(bad), None, "{bad:?}");
    }
    assert_eq!(Cidr::parse("fd00::/8").map(|c| c.family()), Some(Family::V6));
}

#[test]
fn health_check_node_port_only_for_load_balancer_with_local_external_policy() {
    let hc = |type_: &str, local: bool, port: Option<i32>| {
        let svc = service("ns", "web", |s| {
            make_load_balancer(s);
            set_type(s, type_);
            if local {
                etp_local(s);
            }
            spec(s).health_check_node_port = port;
        });
        let (state, problems) = run(vec![svc], vec![]);
        let ports: Vec<Option<u16>> = state.groups.iter().map(|g| g.health_check_node_port).collect();
        (ports, problems.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let none: Vec<String> = vec![];
    assert_eq!(hc("LoadBalancer", true, Some(31_000)), (vec![Some(31_000), Some(31_000)], none.clone()));
    assert_eq!(hc("LoadBalancer", false, Some(31_000)), (vec![None, None], none.clone()));
    assert_eq!(hc("NodePort", true, Some(31_000)), (vec![None, None], none.clone()));
    assert_eq!(hc("ClusterIP", true, Some(31_000)), (vec![None, None], none.clone()));
    // 0 (or unset) is ignored, as kube-proxy does.
    assert_eq!(hc("LoadBalancer", true, Some(0)), (vec![None, None], none.clone()));
    assert_eq!(hc("LoadBalancer", true, None), (vec![None, None], none.clone()));
    // Out of range when it is used: the Service is skipped.
    assert_eq!(
        hc("LoadBalancer", true, Some(65_536)),
        (vec![], vec!["Service ns/web: healthCheckNodePort 65536 is out of range 1..=65535".to_owned()])
    );
    assert_eq!(hc("NodePort", true, Some(65_536)), (vec![None, None], none));
    lb_tests::parity::shown(&["12"]);
}

/// `endpoint_verdicts`: every endpoint of the Service, used or not, with kube-proxy's reason, for
/// the path's set (Internal: the ClusterIP; External: traffic from outside), agreeing with the
/// groups `translate` lays out.
#[test]
fn endpoint_verdicts_name_every_endpoint_and_why_it_is_or_is_not_used() {
    let svc = service("default", "web", |s| {
        make_node_port(s);
        etp_local(s);
    });
    let eps = slice("default", "web-1", "web", "IPv4", |s| {
        s.endpoints = vec![
            ep("10.244.1.1"),
            terminating("10.244.1.2"),
            not_ready("10.244.1.3", false),
            ep_on("10.244.2.1", Some("node-2")),
        ];
    });
    let objs = objects(vec![svc], vec![eps]);
    let (grouped, _) = group_objects(&objs);
    let key = ServiceKey::new("default", "web");
    let verdicts = endpoint_verdicts(&key, &grouped[&key], &node());
    let (state, _) = translate(&objs, &node());
    let find = |scope: Scope, addr: &str| {
        verdicts
            .iter()
            .find(|v| v.scope == scope && v.address.to_string() == format!("{addr}:8080"))
            .unwrap_or_else(|| panic!("no verdict for {addr} in {scope:?}: {verdicts:#?}"))
    };
    // Every verdict agrees with the laid-out group.
    for v in &verdicts {
        let group = state.groups.iter().find(|g| g.scope == v.scope && g.family == v.family).expect("group");
        assert_eq!(group.eligible.contains(&v.address), v.used, "{v:?}");
    }
    assert_eq!(verdicts.len(), 8, "four endpoints, two groups: {verdicts:#?}");
    let internal = |a| find(Scope::Internal, a);
    let external = |a| find(Scope::External, a);
    assert!(internal("10.244.1.1").used && internal("10.244.1.1").reason == "ready");
    assert!(internal("10.244.2.1").used, "Cluster policy uses other nodes' endpoints");
    assert!(!internal("10.244.1.2").used && internal("10.244.1.2").reason.starts_with("terminating"));
    assert!(!internal("10.244.1.3").used && internal("10.244.1.3").reason.starts_with("not ready"));
    let remote = external("10.244.2.1");
    assert!(
        !remote.used
            && remote.reason.contains("node-2")
            && remote.reason.contains("externalTrafficPolicy: Local")
    );
    assert_eq!(remote.node.as_deref(), Some("node-2"));
    assert!(external("10.244.1.1").used && external("10.244.1.1").reason.contains("on this node"));

    // Topology hints: a ready endpoint hinted for another zone.
    let svc = service("default", "zoned", |_| {});
    let eps = slice("default", "zoned-1", "zoned", "IPv4", |s| {
        s.endpoints =
            vec![zones(ep("10.244.1.1"), &[ZONE]), zones(ep_on("10.244.3.1", Some("node-3")), &["zone-b"])];
    });
    let objs = objects(vec![svc], vec![eps]);
    let (grouped, _) = group_objects(&objs);
    let key = ServiceKey::new("default", "zoned");
    let verdicts = endpoint_verdicts(&key, &grouped[&key], &node());
    let other = verdicts.iter().find(|v| v.address.ip().to_string() == "10.244.3.1").expect("verdict");
    assert!(!other.used && other.reason.contains("other zones") && other.reason.contains(ZONE), "{other:?}");
}
