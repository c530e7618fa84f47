//! A Service and an EndpointSlice as the object store keeps them for the agent's lifetime:
//! what translation and the endpoint verdicts read, nothing else. A k8s-openapi `Service` is
//! over a kilobyte before any of its strings (`ObjectMeta` and `ServiceSpec` hold every field
//! the API has); a kept one is the dozen fields translation reads. A k8s-openapi `Endpoint` is 352 bytes before
//! any of its strings, most of them fields the agent never reads (`targetRef`, `hostname`,
//! `zone`, `deprecatedTopology`), and an `ObjectMeta` with one label costs a whole B-tree node;
//! a kept endpoint is one small record: its address as an `IpAddr` (when the text is exactly
//! that address's), its node name shared with every endpoint on that node. Texts that many
//! objects repeat (a type, a policy, an IP family, a protocol, a common port name; a slice's
//! namespace) are one shared copy, not one allocation per object.
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
            ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::kubernetes::LAST_CHANGE_TRIGGER_TIME;
use crate::model::{SERVICE_NAME, SERVICE_PROXY_NAME, ServiceKey};

type Text = Option<Arc<str>>;

/// Values of the fields a Service's objects share with most others: held once for the agent's
/// lifetime (a 4-byte text is a 32-byte allocation of its own).
const WORDS: [&str; 24] = [
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "None",
    "ClientIP",
    "Cluster",
    "Local",
    "IPv4",
    "IPv6",
    "TCP",
    "UDP",
    "SCTP",
    "VIP",
    "Proxy",
    "http",
    "https",
    "grpc",
    "metrics",
    "dns",
    "dns-tcp",
    "web",
    "SingleStack",
    "PreferDualStack",
];

/// `s`, shared when it is one of `WORDS`.
fn word(s: &str) -> Arc<str> {
    static SHARED: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| WORDS.iter().map(|w| Arc::from(*w)).collect());
    shared.iter().find(|w| ***w == *s).map_or_else(|| s.into(), Arc::clone)
}

fn text(s: &Option<String>) -> Text {
    s.as_deref().map(word)
}

fn owned(s: &Text) -> Option<String> {
    s.as_deref().map(str::to_owned)
}

fn texts(list: Option<&Vec<String>>) -> Box<[Arc<str>]> {
    list.into_iter().flatten().map(|s| word(s)).collect()
}

/// A list translation reads as "empty when unset": given back unset when empty.
fn strings(list: &[Arc<str>]) -> Option<Vec<String>> {
    (!list.is_empty()).then(|| list.iter().map(|s| s.to_string()).collect())
}

/// The kept part of a Service; `to_service` gives it back as one. Equal when everything
/// translation reads is equal.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredService {
    name: Text,
    namespace: Text,
    /// The `service.kubernetes.io/service-proxy-name` label's value (another proxy's Service).
    proxy_name: Text,
    /// `None`: the object had no spec.
    spec: Option<Box<StoredSpec>>,
    /// `status.loadBalancer.ingress` as (ip, ipMode).
    ingress: Box<[(Text, Text)]>,
}

#[derive(Clone, Debug, PartialEq)]
struct StoredSpec {
    type_: Text,
    cluster_ip: Text,
    cluster_ips: Box<[Arc<str>]>,
    ip_families: Box<[Arc<str>]>,
    ports: Box<[StoredPort]>,
    session_affinity: Text,
    affinity_timeout: Option<i32>,
    external_ips: Box<[Arc<str>]>,
    load_balancer_source_ranges: Box<[Arc<str>]>,
    external_traffic_policy: Text,
    internal_traffic_policy: Text,
    health_check_node_port: Option<i32>,
}

/// A Service port: (name, protocol, port, nodePort).
type StoredPort = (Text, Text, i32, Option<i32>);

impl From<&Service> for StoredService {
    fn from(svc: &Service) -> Self {
        let meta = &svc.metadata;
        let spec = svc.spec.as_ref().map(|spec| {
            Box::new(StoredSpec {
                type_: text(&spec.type_),
                cluster_ip: text(&spec.cluster_ip),
                cluster_ips: texts(spec.cluster_ips.as_ref()),
                ip_families: texts(spec.ip_families.as_ref()),
                ports: spec
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| (text(&p.name), text(&p.protocol), p.port, p.node_port))
                    .collect(),
                session_affinity: text(&spec.session_affinity),
                affinity_timeout: spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds),
                external_ips: texts(spec.external_ips.as_ref()),
                load_balancer_source_ranges: texts(spec.load_balancer_source_ranges.as_ref()),
                external_traffic_policy: text(&spec.external_traffic_policy),
                internal_traffic_policy: text(&spec.internal_traffic_policy),
                health_check_node_port: spec.health_check_node_port,
            })
        });
        let ingress =
            svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        Self {
            name: text(&meta.name),
            namespace: text(&meta.namespace),
            proxy_name: meta.labels.as_ref().and_then(|l| l.get(SERVICE_PROXY_NAME)).map(|v| word(v)),
            spec,
            ingress: ingress.into_iter().flatten().map(|i| (text(&i.ip), text(&i.ip_mode))).collect(),
        }
    }
}

/// `text` as `kept` holds it, when they are equal.
fn share(text: &mut Option<Arc<str>>, kept: &Arc<str>) {
    if text.as_deref() == Some(&**kept) {
        *text = Some(Arc::clone(kept));
    }
}

impl StoredService {
    /// Holds the name and namespace as `key` holds them (one copy for the store).
    pub fn share_key(&mut self, key: &ServiceKey) {
        share(&mut self.namespace, &key.namespace);
        share(&mut self.name, &key.name);
    }

    /// The Service again, with only the kept fields (a Kubernetes object for translation).
    pub fn to_service(&self) -> Arc<Service> {
        let spec = self.spec.as_deref().map(|s| ServiceSpec {
            type_: owned(&s.type_),
            cluster_ip: owned(&s.cluster_ip),
            cluster_ips: strings(&s.cluster_ips),
            ip_families: strings(&s.ip_families),
            ports: (!s.ports.is_empty()).then(|| {
                s.ports
                    .iter()
                    .map(|(name, protocol, port, node_port)| ServicePort {
                        name: owned(name),
                        protocol: owned(protocol),
                        port: *port,
                        node_port: *node_port,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            session_affinity: owned(&s.session_affinity),
            session_affinity_config: s.affinity_timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig { timeout_seconds: Some(t) }),
            }),
            external_ips: strings(&s.external_ips),
            load_balancer_source_ranges: strings(&s.load_balancer_source_ranges),
            external_traffic_policy: owned(&s.external_traffic_policy),
            internal_traffic_policy: owned(&s.internal_traffic_policy),
            health_check_node_port: s.health_check_node_port,
            ..ServiceSpec::default()
        });
        let status = (!self.ingress.is_empty()).then(|| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    self.ingress
                        .iter()
                        .map(|(ip, ip_mode)| LoadBalancerIngress {
                            ip: owned(ip),
                            ip_mode: owned(ip_mode),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        Arc::new(Service {
            metadata: ObjectMeta {
                name: owned(&self.name),
                namespace: owned(&self.namespace),
                labels: self
                    .proxy_name
                    .as_deref()
                    .map(|v| BTreeMap::from([(SERVICE_PROXY_NAME.to_owned(), v.to_owned())])),
                ..ObjectMeta::default()
            },
            spec,
            status,
        })
    }
}

/// The kept part of an EndpointSlice; `to_slice` gives it back as one (without what was
/// dropped). Equal when everything the agent reads is equal.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSlice {
    /// (Shared with the store's index of slices by name.)
    name: Option<Arc<str>>,
    namespace: Option<Arc<str>>,
    /// The `kubernetes.io/service-name` label (the only label a stored slice's readers use:
    /// slices labelled headless are not stored).
    service: Option<Arc<str>>,
    /// The `last-change-trigger-time` annotation.
    trigger: Option<Box<str>>,
    address_type: Arc<str>,
    ports: Box<[SlicePort]>,
    endpoints: Box<[StoredEndpoint]>,
}

/// An `EndpointPort`, its texts shared.
#[derive(Clone, Debug, PartialEq)]
struct SlicePort {
    name: Text,
    port: Option<i32>,
    protocol: Text,
    app_protocol: Text,
}

/// The kept part of one endpoint: almost always one IPv4 address, written as it prints, and no
/// hints, kept in 24 bytes (`V4`); any other is boxed (`Full`, 56 bytes more). A slice holds up
/// to 100 endpoints and a large cluster hundreds of thousands.
#[derive(Clone, Debug, PartialEq)]
enum StoredEndpoint {
    V4 { ip: [u8; 4], conditions: Conditions, node_name: Option<Arc<str>> },
    Full(Box<FullEndpoint>),
}

#[derive(Clone, Debug, PartialEq)]
struct FullEndpoint {
    addresses: Addresses,
    conditions: Option<EndpointConditions>,
    hints: Option<EndpointHints>,
    node_name: Option<Arc<str>>,
}

/// An `Option<EndpointConditions>` in one byte: `PRESENT`, and two bits per condition (0 unset,
/// 1 false, 2 true): ready, serving, terminating from the lowest.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Conditions(u8);

impl Conditions {
    const PRESENT: u8 = 0x40;

    fn of(conditions: Option<&EndpointConditions>) -> Self {
        let bits = |b: Option<bool>| match b {
            None => 0u8,
            Some(false) => 1,
            Some(true) => 2,
        };
        Self(
            conditions.map_or(0, |c| {
                Self::PRESENT | bits(c.ready) | bits(c.serving) << 2 | bits(c.terminating) << 4
            }),
        )
    }

    fn get(self) -> Option<EndpointConditions> {
        let bit = |shift: u8| match (self.0 >> shift) & 3 {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        };
        (self.0 & Self::PRESENT != 0).then(|| EndpointConditions {
            ready: bit(0),
            serving: bit(2),
            terminating: bit(4),
        })
    }
}

impl StoredEndpoint {
    fn new(e: &Endpoint, texts: &mut SharedTexts) -> Self {
        let node_name = e.node_name.as_deref().map(|n| texts.get(n));
        match Addresses::of(&e.addresses) {
            Addresses::One(IpAddr::V4(ip)) if e.hints.is_none() => {
                Self::V4 { ip: ip.octets(), conditions: Conditions::of(e.conditions.as_ref()), node_name }
            }
            addresses => Self::Full(Box::new(FullEndpoint {
                addresses,
                conditions: e.conditions.clone(),
                hints: e.hints.clone(),
                node_name,
            })),
        }
    }

    fn to_endpoint(&self) -> Endpoint {
        let owned = |n: &Option<Arc<str>>| n.as_deref().map(str::to_owned);
        match self {
            Self::V4 { ip, conditions, node_name } => Endpoint {
                addresses: vec![ipv4_text(*ip)],
                conditions: conditions.get(),
                node_name: owned(node_name),
                ..Endpoint::default()
            },
            Self::Full(e) => Endpoint {
                addresses: e.addresses.to_strings(),
                conditions: e.conditions.clone(),
                hints: e.hints.clone(),
                node_name: owned(&e.node_name),
                ..Endpoint::default()
            },
        }
    }
}

/// An endpoint's addresses: almost always one, kept as the address itself when its text is
/// exactly how that address prints (so the slice given back is the same text).
#[derive(Clone, Debug, PartialEq)]
enum Addresses {
    One(IpAddr),
    Text(Box<[Box<str>]>),
}

impl Addresses {
    fn of(addresses: &[String]) -> Self {
        if let [one] = addresses
            && let Ok(ip) = one.parse::<IpAddr>()
            && ip.to_string() == *one
        {
            return Self::One(ip);
        }
        Self::Text(addresses.iter().map(|a| a.as_str().into()).collect())
    }

    fn to_strings(&self) -> Vec<String> {
        match self {
            Self::One(IpAddr::V4(ip)) => vec![ipv4_text(ip.octets())],
            Self::One(ip) => vec![ip.to_string()],
            Self::Text(texts) => texts.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// `a.b.c.d`, as `Ipv4Addr`'s `Display` writes it, without the formatting machinery (a full
/// sync gives back every endpoint's address as text).
fn ipv4_text(octets: [u8; 4]) -> String {
    let mut out = String::with_capacity(15);
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if o >= 100 {
            out.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            out.push(char::from(b'0' + o / 10 % 10));
        }
        out.push(char::from(b'0' + o % 10));
    }
    out
}

/// The texts slices repeat, held once: node names (a cluster has few nodes and many endpoints),
/// namespaces, address types, port names and protocols. Texts no slice uses any more are let go
/// by `prune`.
#[derive(Debug, Default)]
pub struct SharedTexts(HashSet<Arc<str>>);

impl SharedTexts {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return Arc::clone(n);
        }
        let n: Arc<str> = name.into();
        self.0.insert(Arc::clone(&n));
        n
    }

    /// Forgets the texts only this set holds.
    pub fn prune(&mut self) {
        self.0.retain(|n| Arc::strong_count(n) > 1);
    }
}

impl StoredSlice {
    /// The kept part of `slice`, its repeated texts shared through `texts`.
    pub fn new(slice: &EndpointSlice, texts: &mut SharedTexts) -> Self {
        let meta = &slice.metadata;
        Self {
            name: meta.name.as_deref().map(Arc::from),
            namespace: meta.namespace.as_deref().map(|n| texts.get(n)),
            service: meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME)).map(|s| s.as_str().into()),
            trigger: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
                .map(|s| s.as_str().into()),
            address_type: texts.get(&slice.address_type),
            ports: slice
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    let mut shared = |t: &Option<String>| t.as_deref().map(|t| texts.get(t));
                    SlicePort {
                        name: shared(&p.name),
                        port: p.port,
                        protocol: shared(&p.protocol),
                        app_protocol: shared(&p.app_protocol),
                    }
                })
                .collect(),
            endpoints: slice.endpoints.iter().map(|e| StoredEndpoint::new(e, texts)).collect(),
        }
    }

    /// Holds the namespace and Service name as `key` holds them (one copy for the store).
    pub fn share_key(&mut self, key: &ServiceKey) {
        share(&mut self.namespace, &key.namespace);
        share(&mut self.service, &key.name);
    }

    /// The slice's name as kept (none when it has none).
    pub fn shared_name(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }

    /// The slice's name (empty when it has none).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// The slice again, with only the kept fields (a Kubernetes object for translation).
    pub fn to_slice(&self) -> Arc<EndpointSlice> {
        let one = |k: &str, v: Option<&str>| v.map(|v| BTreeMap::from([(k.to_owned(), v.to_owned())]));
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: owned(&self.name),
                namespace: owned(&self.namespace),
                labels: one(SERVICE_NAME, self.service.as_deref()),
                annotations: one(LAST_CHANGE_TRIGGER_TIME, self.trigger.as_deref()),
                ..ObjectMeta::default()
            },
            address_type: self.address_type.to_string(),
            ports: (!self.ports.is_empty()).then(|| {
                self.ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: owned(&p.name),
                        port: p.port,
                        protocol: owned(&p.protocol),
                        app_protocol: owned(&p.app_protocol),
                    })
                    .collect()
            }),
            endpoints: self.endpoints.iter().map(StoredEndpoint::to_endpoint).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `slice` with one endpoint of one IPv4 address, no hints and only kept fields.
    fn odd_free(slice: &EndpointSlice) -> EndpointSlice {
        let mut plain = slice.clone();
        plain.endpoints = vec![Endpoint {
            addresses: vec!["10.0.0.7".into()],
            node_name: Some("node-1".into()),
            ..Endpoint::default()
        }];
        plain
    }

    #[test]
    fn a_stored_slice_keeps_what_translation_reads_and_drops_the_rest() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                         "labels": {"kubernetes.io/service-name": "web"},
                         "annotations": {(LAST_CHANGE_TRIGGER_TIME): "2026-12-07T00:00:01Z", "other": "x"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node-1", "zone": "a", "hostname": "h",
                           "conditions": {"ready": false, "serving": true, "terminating": true},
                           "hints": {"forZones": [{"name": "a"}]},
                           "targetRef": {"kind": "Pod", "name": "web-abc", "namespace": "shop"}}],
        }))
        .expect("slice");
        let names = &mut SharedTexts::default();
        let back = StoredSlice::new(&slice, names).to_slice();
        let mut expected = slice.clone();
        expected.metadata = ObjectMeta {
            name: slice.metadata.name.clone(),
            namespace: slice.metadata.namespace.clone(),
            labels: slice.metadata.labels.clone(),
            annotations: Some(
                [(LAST_CHANGE_TRIGGER_TIME.to_owned(), "2026-12-07T00:00:01Z".to_owned())].into(),
            ),
            ..ObjectMeta::default()
        };
        for e in &mut expected.endpoints {
            (e.zone, e.hostname, e.target_ref) = (None, None, None);
        }
        assert_eq!(*back, expected);
        // What translation never reads does not make two slices differ.
        let mut moved = slice.clone();
        moved.endpoints[0].target_ref = None;
        moved.metadata.resource_version = Some("8".into());
        assert_eq!(StoredSlice::new(&moved, names), StoredSlice::new(&slice, names));
        let mut not_ready = slice;
        not_ready.endpoints[0].conditions.as_mut().expect("conditions").serving = Some(false);
        assert_ne!(StoredSlice::new(&not_ready, names), StoredSlice::new(&moved, names));
        // Addresses are given back as written, whatever their form.
        for texts in
            [vec!["fd00::1"], vec!["10.0.0.1", "10.0.0.2"], vec!["FD00::1"], vec!["010.0.0.1"], vec![]]
        {
            let mut odd = not_ready.clone();
            odd.endpoints[0].addresses = texts.iter().map(|t| t.to_string()).collect();
            assert_eq!(
                StoredSlice::new(&odd, names).to_slice().endpoints[0].addresses,
                odd.endpoints[0].addresses
            );
        }
        // The common endpoint (one IPv4 address, no hints) is kept in 24 bytes, its conditions
        // in one: every combination given back as it was.
        assert_eq!(std::mem::size_of::<StoredEndpoint>(), 24);
        let states = [None, Some(false), Some(true)];
        let mut all = vec![None];
        for ready in states {
            for serving in states {
                for terminating in states {
                    all.push(Some(EndpointConditions { ready, serving, terminating }));
                }
            }
        }
        for conditions in all {
            let mut plain = odd_free(&not_ready);
            plain.endpoints[0].conditions = conditions.clone();
            let stored = StoredSlice::new(&plain, names);
            assert!(matches!(stored.endpoints[0], StoredEndpoint::V4 { .. }), "{conditions:?}");
            assert_eq!(stored.to_slice().endpoints, plain.endpoints, "{conditions:?}");
        }
        for ip in ["0.0.0.0", "10.0.0.1", "255.255.255.255", "1.20.100.9", "100.10.1.0"] {
            let octets = ip.parse::<std::net::Ipv4Addr>().expect("ip").octets();
            assert_eq!(ipv4_text(octets), ip);
        }
        // One node name held once, however many endpoints name it (with the namespace, address
        // type, port name and protocol every slice of the namespace repeats).
        let mut held: Vec<&str> = names.0.iter().map(|n| &**n).collect();
        held.sort_unstable();
        assert_eq!(held, ["IPv4", "TCP", "http", "node-1", "shop"]);
        names.prune();
        assert!(names.0.is_empty(), "no stored slice names node-1 any more");
    }
}
