//! Kubernetes objects → `DesiredState`, with kube-proxy's semantics.
//! Pure: no I/O, never fails as a whole; an object it cannot use is reported as a `Problem` and
//! left out entirely, so no Service is ever half-applied.
//!
//! Rule numbers are those of the repository's list of kube-proxy behaviours
//! (`xtask/src/parity/rules.rs`, rendered as `docs/PARITY.md`). Per Service port and IP family (only a
//! family with a ClusterIP, 4): the `Internal` group holds the ClusterIPs and follows
//! `internalTrafficPolicy` (29); the `External` group, made only when there is one, holds the
//! externalIPs (8), the LoadBalancer ingress IPs with `ipMode` unset or `VIP` (9) and the NodePort
//! (`nodePort != 0`, whatever the type, 7) as the family's unspecified address, and follows
//! `externalTrafficPolicy` when the Service is externally accessible (11, 30). The Cluster set is
//! the ready endpoints after the topology filter (same node, then same zone: 33-37), else the
//! serving-and-terminating ones (25, 38); the Local set is this node's ready endpoints, else its
//! serving-and-terminating ones (26). An empty set drops when endpoints exist elsewhere (40), else
//! rejects (39). Short-circuit of local traffic to external frontends (31) is the datapath's.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service, ServicePort},
    discovery::v1::EndpointSlice,
};

use super::types::*;

/// Label that hands a Service to another proxy (kube-proxy skips such Services).
pub const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label that ties an EndpointSlice to its Service (the only link kube-proxy uses).
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label set on the slices of headless Services.
const HEADLESS: &str = "service.kubernetes.io/headless";
/// The API server's default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// An object and where it came from (a file and document, or the API server). Shared: the
/// Kubernetes source hands out its reflector stores' own copies, so a sync's snapshot copies no
/// object.
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub origin: String,
    pub object: Arc<T>,
}

/// The objects a source produced.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Located<Service>>,
    pub slices: Vec<Located<EndpointSlice>>,
    /// Node objects; the one named like this node gives its zone and addresses.
    pub nodes: Vec<Located<Node>>,
}

/// What the translation needs to know about the node it runs for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name (`--node-name`); empty means no endpoint is local.
    pub name: String,
    /// The `topology.kubernetes.io/zone` label of this node's Node object (topology hints).
    pub zone: Option<String>,
    /// The node's addresses from its Node object (`status.addresses` InternalIP/ExternalIP), for
    /// NodePort frontends.
    pub addresses: Vec<IpAddr>,
}

/// Label holding a Node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

impl NodeContext {
    /// A node known only by name.
    #[cfg_attr(not(test), allow(dead_code, reason = "tests and sources without Node objects"))]
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }

    /// This node's context from its Node object, when there is one among `nodes`.
    pub fn from_nodes<'a>(name: &str, nodes: impl IntoIterator<Item = &'a Node>) -> Self {
        let node = nodes.into_iter().find(|n| n.metadata.name.as_deref() == Some(name));
        let zone = node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned();
        let mut addresses: Vec<IpAddr> = node
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        addresses.sort();
        addresses.dedup();
        Self { name: name.to_owned(), zone, addresses }
    }
}

/// A Service that passed validation, with the parts the translation uses.
struct ValidService<'a> {
    namespace: &'a str,
    name: &'a str,
    cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`, both families, sorted and de-duplicated.
    external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` with `ipMode` unset or `VIP`, sorted, de-duplicated.
    load_balancer_ips: Vec<IpAddr>,
    ports: Vec<ValidPort>,
    /// `internalTrafficPolicy: Local` (rule 11: InternalPolicyLocal).
    internal_local: bool,
    /// `externalTrafficPolicy: Local` on an externally accessible Service (ExternalPolicyLocal).
    external_local: bool,
    affinity_timeout: Option<u32>,
    /// Both families, sorted and de-duplicated.
    source_ranges: Vec<Cidr>,
    health_check_node_port: Option<u16>,
}

/// One `spec.ports[i]`.
struct ValidPort {
    name: String,
    protocol: Protocol,
    port: u16,
    /// `nodePort`, when set and not 0 (rule 7: whatever the Service type).
    node_port: Option<u16>,
}

/// One endpoint after merging every slice of a Service port.
#[derive(Clone, Copy)]
struct Endpoint {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    /// `hints.forNodes` is not empty.
    node_hints: bool,
    /// `hints.forNodes` names this node.
    for_this_node: bool,
    /// `hints.forZones` is not empty.
    zone_hints: bool,
    /// `hints.forZones` names this node's zone.
    for_this_zone: bool,
}

impl Endpoint {
    /// Which of two copies of one address:port (in two slices) is kept: the non-terminating one
    /// (rule 21), then the ready, then the serving one; the remaining fields only make the choice
    /// total, so it never depends on the order the slices came in (kube-proxy walks a Go map there,
    /// so its choice between two such copies is arbitrary).
    fn preference(&self) -> (bool, bool, bool, bool, bool, bool, bool, bool) {
        (
            !self.terminating,
            self.ready,
            self.serving,
            self.local,
            self.node_hints,
            self.for_this_node,
            self.zone_hints,
            self.for_this_zone,
        )
    }

    /// Counts for `hasAnyEndpoints` (rule 27): usable by some policy set somewhere.
    fn usable(&self) -> bool {
        self.ready || (self.serving && self.terminating)
    }
}

fn describe<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    kind: &str,
    located: &Located<T>,
) -> String {
    let meta = located.object.metadata();
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or("<unnamed>");
    if located.origin.is_empty() {
        format!("{kind} {ns}/{name}")
    } else {
        format!("{kind} {ns}/{name} ({})", located.origin)
    }
}

/// Namespace and name of a Service (namespace unset: `default`): the unit of change tracking
/// and of translation. A Service's EndpointSlices are tied to it by their
/// `kubernetes.io/service-name` label, so they share its key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Shared by every copy (a key is held by the store, the translation and the layout).
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into().into(), name: name.into().into() }
    }

    /// The key of a Service (a missing name is the empty name: such a Service is malformed).
    pub fn of_service(svc: &Service) -> Self {
        let meta = &svc.metadata;
        Self::new(meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or(""))
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How an EndpointSlice relates to the Services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceTie {
    /// Labelled for the Service with this key.
    Service(ServiceKey),
    /// A headless Service's slice or an FQDN slice: never used, nothing to report.
    Ignored,
    /// No `kubernetes.io/service-name` label: reported, never used.
    Unlabelled,
}

impl SliceTie {
    pub fn of(slice: &EndpointSlice) -> Self {
        let labels = slice.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(HEADLESS)) || slice.address_type == "FQDN" {
            return Self::Ignored;
        }
        match labels.and_then(|l| l.get(SERVICE_NAME)).filter(|s| !s.is_empty()) {
            Some(service) => Self::Service(ServiceKey::new(
                slice.metadata.namespace.as_deref().unwrap_or("default"),
                service.as_str(),
            )),
            None => Self::Unlabelled,
        }
    }
}

/// Every object of one Service key: its definitions (one from the API server; a hand-written
/// file may hold several, of which the first is used) and the slices labelled for it.
#[derive(Clone, Debug, Default)]
pub struct ServiceObjects {
    pub services: Vec<Located<Service>>,
    pub slices: Vec<Located<EndpointSlice>>,
}

fn same_objects<T: PartialEq>(a: &[Located<T>], b: &[Located<T>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(&a.object, &b.object) || a.object == b.object)
}

impl ServiceObjects {
    /// Same objects (by content, wherever they came from) in the same order.
    pub fn same_content(&self, other: &Self) -> bool {
        self.same_services(other) && self.same_slices(other)
    }

    /// Same Services (by content).
    pub fn same_services(&self, other: &Self) -> bool {
        same_objects(&self.services, &other.services)
    }

    /// Same EndpointSlices (by content).
    pub fn same_slices(&self, other: &Self) -> bool {
        same_objects(&self.slices, &other.slices)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }
}

/// `objects` grouped by Service key (definitions and slices in their order in `objects`), with
/// the problems of slices tied to no Service.
pub fn group_objects(objects: &Objects) -> (BTreeMap<ServiceKey, ServiceObjects>, Vec<Problem>) {
    let mut grouped: BTreeMap<ServiceKey, ServiceObjects> = BTreeMap::new();
    let mut problems = Vec::new();
    for located in &objects.services {
        grouped.entry(ServiceKey::of_service(&located.object)).or_default().services.push(located.clone());
    }
    for located in &objects.slices {
        match SliceTie::of(&located.object) {
            SliceTie::Service(key) => grouped.entry(key).or_default().slices.push(located.clone()),
            SliceTie::Ignored => {}
            SliceTie::Unlabelled => problems.push(unlabelled_slice(located)),
        }
    }
    (grouped, problems)
}

/// The problem of a slice with no `kubernetes.io/service-name` label.
pub fn unlabelled_slice(located: &Located<EndpointSlice>) -> Problem {
    Problem {
        object: describe("EndpointSlice", located),
        reason: format!("has no {SERVICE_NAME} label; ignored"),
    }
}

/// One Service key translated on its own, before frontends are settled between Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTranslation {
    /// The Service is valid and proxied: it claims the frontends of `groups`.
    pub valid: bool,
    /// Its groups (empty unless `valid`), sorted by (service, family, scope).
    pub groups: Vec<BackendGroup>,
    /// What was left out of this key's objects, and why.
    pub problems: Vec<Problem>,
}

/// A frontend as Services claim it: two Services may not have one (address, port, protocol);
/// a NodePort claims its port on the unspecified address of its family.
pub type Claim = (IpAddr, u16, Protocol);

impl ServiceTranslation {
    /// The frontends this Service claims (none unless valid).
    pub fn claims(&self) -> impl Iterator<Item = Claim> + '_ {
        self.groups.iter().flat_map(|g| &g.frontends).map(|f| (f.addr, f.port, f.protocol))
    }

    /// The problem of refusing this Service, when one of its frontends is already claimed by
    /// another (`claimed` gives the owner of a claim), `None` if it is free to take them.
    pub fn conflict(&self, key: &ServiceKey, claimed: impl Fn(&Claim) -> Option<String>) -> Option<Problem> {
        let (frontend, owner) = self
            .groups
            .iter()
            .flat_map(|g| &g.frontends)
            .find_map(|f| claimed(&(f.addr, f.port, f.protocol)).map(|owner| (*f, owner)))?;
        Some(Problem {
            object: format!("Service {key}"),
            reason: format!("frontend {frontend} is already used by {owner}; Service skipped"),
        })
    }

    /// Each claim with the owner name a later conflicting Service is told.
    pub fn owners(&self) -> impl Iterator<Item = (Claim, String)> + '_ {
        self.groups.iter().flat_map(|g| {
            g.frontends.iter().map(move |f| ((f.addr, f.port, f.protocol), g.service.to_string()))
        })
    }
}

/// Translates objects into the state this node should program, plus what had to be left out:
/// each Service key on its own (`translate_service`), then frontends settled between Services in
/// key order (`settle`: a Service whose frontend an earlier one has is refused whole).
pub fn translate(objects: &Objects, node: &NodeContext) -> (DesiredState, Vec<Problem>) {
    let (grouped, mut problems) = group_objects(objects);
    let translations: Vec<(&ServiceKey, ServiceTranslation)> =
        grouped.iter().map(|(key, objects)| (key, translate_service(key, objects, node))).collect();
    let mut claimed: BTreeMap<Claim, String> = BTreeMap::new();
    let mut groups = Vec::new();
    for (key, mut t) in translations {
        problems.append(&mut t.problems);
        if let Some(problem) = settle(key, &t, &mut claimed) {
            problems.push(problem);
            continue;
        }
        groups.append(&mut t.groups);
    }
    groups.sort_by(|a, b| (&a.service, a.family, a.scope).cmp(&(&b.service, b.family, b.scope)));
    (DesiredState { groups, node_addresses: node_addresses(node) }, problems)
}

/// Frontend claims between Services, one step: `t` (the translation of `key`, taken in key
/// order) takes its frontends unless one of them is in `claimed` already, in which case the
/// Service is refused whole and the problem says why.
pub fn settle(
    key: &ServiceKey,
    t: &ServiceTranslation,
    claimed: &mut BTreeMap<Claim, String>,
) -> Option<Problem> {
    if !t.valid {
        return None;
    }
    if let Some(problem) = t.conflict(key, |c| claimed.get(c).cloned()) {
        return Some(problem);
    }
    for (claim, owner) in t.owners() {
        claimed.insert(claim, owner);
    }
    None
}

/// This node's addresses as `DesiredState::node_addresses` holds them: canonical, sorted, unique.
pub fn node_addresses(node: &NodeContext) -> Vec<IpAddr> {
    let mut node_addresses: Vec<IpAddr> = node.addresses.iter().map(IpAddr::to_canonical).collect();
    node_addresses.sort();
    node_addresses.dedup();
    node_addresses
}

/// Translates the objects of one Service key: the first definition (a later valid one is
/// reported as a duplicate), with the slices labelled for it.
pub fn translate_service(
    key: &ServiceKey,
    objects: &ServiceObjects,
    node: &NodeContext,
) -> ServiceTranslation {
    let mut problems = Vec::new();
    let mut first: Option<Option<ValidService<'_>>> = None;
    for located in &objects.services {
        let result = validate_service(&located.object);
        if first.is_some() {
            match result {
                Ok(Some(_)) => problems.push(Problem {
                    object: describe("Service", located),
                    reason: "defined more than once; the first definition is used".into(),
                }),
                Ok(None) => {}
                Err(reason) => problems.push(Problem { object: describe("Service", located), reason }),
            }
            continue;
        }
        first = Some(match result {
            Ok(valid) => valid,
            Err(reason) => {
                problems.push(Problem { object: describe("Service", located), reason });
                None
            }
        });
    }
    let exists = first.is_some();
    let slices = usable_slices(key, objects, exists, &mut problems);
    match first.flatten() {
        Some(svc) => {
            let mut groups = service_groups(key, &svc, Some(&slices), node);
            groups.sort_by(|a, b| (&a.service, a.family, a.scope).cmp(&(&b.service, b.family, b.scope)));
            // Kept for the agent's lifetime (`incremental::Translator`): no spare capacity.
            for g in &mut groups {
                g.frontends.shrink_to_fit();
                g.backends.shrink_to_fit();
                g.source_ranges.shrink_to_fit();
            }
            groups.shrink_to_fit();
            ServiceTranslation { valid: true, groups, problems }
        }
        None => ServiceTranslation { valid: false, groups: Vec::new(), problems },
    }
}

/// `Ok(None)`: a Service kube-proxy deliberately ignores. `Err`: malformed, reported.
fn validate_service(svc: &Service) -> Result<Option<ValidService<'_>>, String> {
    let meta = &svc.metadata;
    let name = meta.name.as_deref().filter(|n| !n.is_empty()).ok_or("metadata.name is missing")?;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    if meta.labels.as_ref().is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME)) {
        return Ok(None);
    }
    let spec = svc.spec.as_ref().ok_or("spec is missing")?;
    // Unset: a hand-written object; the API server defaults it to ClusterIP.
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    match service_type {
        "ExternalName" => return Ok(None),
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        other => return Err(format!("unknown type {other:?}")),
    }
    let cluster_ips = cluster_ips_by_family(spec)?;
    if cluster_ips.is_empty() {
        return Ok(None); // headless
    }
    let mut ports: Vec<ValidPort> = Vec::new();
    for port in spec.ports.iter().flatten() {
        let valid = validate_port(port)?;
        let (port_name, protocol, number) = (&valid.name, valid.protocol, valid.port);
        if ports.iter().any(|p| p.name == *port_name && p.protocol == protocol) {
            return Err(format!("port {port_name:?}/{protocol} is listed twice"));
        }
        // The API server refuses this too: two ports would claim one frontend.
        if ports.iter().any(|p| p.port == number && p.protocol == protocol) {
            return Err(format!("port {number}/{protocol} is listed twice"));
        }
        if let Some(node_port) = valid.node_port
            && ports.iter().any(|p| p.node_port == Some(node_port) && p.protocol == protocol)
        {
            return Err(format!("nodePort {node_port}/{protocol} is listed twice"));
        }
        ports.push(valid);
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map_or(Ok(DEFAULT_AFFINITY_TIMEOUT), |t| {
                    u32::try_from(t).ok().filter(|t| (1..=86_400).contains(t)).ok_or_else(|| {
                        format!("sessionAffinityConfig timeoutSeconds {t} is not in 1..=86400")
                    })
                })?,
        ),
        None | Some("None") => None,
        Some(other) => return Err(format!("unknown sessionAffinity {other:?}")),
    };
    // kube-proxy skips an unparsable externalIP or ingress IP with a log line and keeps the rest;
    // the API server never lets one through. Here (a hand-written file) the Service is left out
    // whole, like any other malformed field, so it is never half-applied.
    let parse_ips = |what: &str, ips: &mut dyn Iterator<Item = &str>| -> Result<Vec<IpAddr>, String> {
        let mut out = ips
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map(|a| a.to_canonical())
                    .map_err(|_| format!("{what} {ip:?} is not an IP address"))
                    .and_then(|a| frontend_address(what, a))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    };
    let raw_external_ips = spec.external_ips.as_deref().unwrap_or_default();
    let external_ips = parse_ips("externalIP", &mut raw_external_ips.iter().map(String::as_str))?;
    // Rule 9: an ingress entry counts only with an `ip` and an `ipMode` that is unset or `VIP`
    // (hostname-only entries and `Proxy` ones are the load balancer's business).
    let ingress =
        svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    let load_balancer_ips = parse_ips(
        "status.loadBalancer.ingress ip",
        &mut ingress
            .into_iter()
            .flatten()
            .filter(|i| matches!(i.ip_mode.as_deref(), None | Some("VIP")))
            .filter_map(|i| i.ip.as_deref().filter(|ip| !ip.is_empty())),
    )?;
    // Rule 10: trimmed; both families kept here, each group takes its own.
    let mut source_ranges = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .map(|r| {
            Cidr::parse(r.trim()).ok_or_else(|| format!("loadBalancerSourceRanges entry {r:?} is not a CIDR"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    source_ranges.sort();
    source_ranges.dedup();
    // Rule 11.
    let externally_accessible = matches!(service_type, "LoadBalancer" | "NodePort")
        || (service_type == "ClusterIP" && !raw_external_ips.is_empty());
    let external_local = externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    // Rule 12 (NeedsHealthCheck). A 0 port is ignored, as kube-proxy does (it logs it).
    let health_check_node_port = if service_type == "LoadBalancer" && external_local {
        match spec.health_check_node_port {
            None | Some(0) => None,
            Some(p) => Some(
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("healthCheckNodePort {p} is out of range 1..=65535"))?,
            ),
        }
    } else {
        None
    };
    Ok(Some(ValidService {
        namespace,
        name,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_local,
        affinity_timeout,
        source_ranges,
        health_check_node_port,
    }))
}

/// A frontend address other than the unspecified one (`0.0.0.0`, `::`): a connect to that means
/// "this host", so a frontend there would capture the node's own connections to every local
/// listener on that port. The API server never allocates one; a hand-written file can hold one.
fn frontend_address(what: &str, addr: IpAddr) -> Result<IpAddr, String> {
    if addr.is_unspecified() {
        return Err(format!("{what} {addr} is the unspecified address"));
    }
    Ok(addr)
}

/// kube-proxy's GetClusterIPByFamily for both families: with `ipFamilies` set, `clusterIPs[i]`
/// serves `ipFamilies[i]`; without it (objects written by hand, old API servers), only
/// `clusterIP` is used. Empty: headless (`None`) or no ClusterIP at all.
fn cluster_ips_by_family(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Result<Vec<IpAddr>, String> {
    let parse = |ip: &str| {
        ip.parse::<IpAddr>()
            .map_err(|_| format!("clusterIP {ip:?} is not an IP address"))
            .and_then(|a| frontend_address("clusterIP", a))
    };
    let families = spec.ip_families.as_deref().unwrap_or_default();
    if families.is_empty() {
        return match spec.cluster_ip.as_deref() {
            None | Some("" | "None") => Ok(vec![]),
            Some(ip) => Ok(vec![parse(ip)?]),
        };
    }
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if ips.iter().any(|ip| ip == "None") || (ips.is_empty() && spec.cluster_ip.as_deref() == Some("None")) {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for (family, ip) in families.iter().zip(ips) {
        let addr = parse(ip)?;
        let expected = match family.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            other => return Err(format!("unknown ipFamily {other:?}")),
        };
        if Family::of(&addr) != expected {
            return Err(format!("clusterIP {ip} does not match its ipFamily {family}"));
        }
        if out.iter().any(|a| Family::of(a) == expected) {
            return Err(format!("ipFamilies lists {family} twice"));
        }
        out.push(addr);
    }
    Ok(out)
}

fn validate_port(port: &ServicePort) -> Result<ValidPort, String> {
    let port_name = port.name.clone().unwrap_or_default();
    let protocol = Protocol::parse(port.protocol.as_deref()).ok_or_else(|| {
        format!(
            "port {port_name:?}: unknown protocol {:?} (TCP, UDP or SCTP)",
            port.protocol.as_deref().unwrap_or_default()
        )
    })?;
    let number = u16::try_from(port.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port_name:?}: port {} is out of range 1..=65535", port.port))?;
    let node_port = match port.node_port {
        None | Some(0) => None,
        Some(n) => Some(
            u16::try_from(n)
                .map_err(|_| format!("port {port_name:?}: nodePort {n} is out of range 1..=65535"))?,
        ),
    };
    Ok(ValidPort { name: port_name, protocol, port: number, node_port })
}

/// The slices of `key` translation uses; reports those it cannot use, and every one when the
/// Service does not exist.
fn usable_slices<'a>(
    key: &ServiceKey,
    objects: &'a ServiceObjects,
    exists: bool,
    problems: &mut Vec<Problem>,
) -> Vec<&'a EndpointSlice> {
    let mut usable = Vec::new();
    for located in &objects.slices {
        let slice: &EndpointSlice = &located.object;
        if !exists {
            problems.push(Problem {
                object: describe("EndpointSlice", located),
                reason: format!("its Service {key} does not exist; no frontend uses it"),
            });
        }
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            problems.push(Problem {
                object: describe("EndpointSlice", located),
                reason: format!("unknown addressType {:?}; ignored", slice.address_type),
            });
            continue;
        }
        for port in slice.ports.iter().flatten() {
            if port.name.is_none() {
                problems.push(Problem {
                    object: describe("EndpointSlice", located),
                    reason:
                        "a port has no name; kube-proxy ignores it (an unnamed port must be `name: \"\"`)"
                            .into(),
                });
            }
        }
        usable.push(slice);
    }
    usable
}

/// The groups of a valid Service: per port and IP family, the `Internal` group (ClusterIPs) and,
/// when there are external frontends in that family, the `External` group.
fn service_groups(
    key: &ServiceKey,
    svc: &ValidService<'_>,
    slices: Option<&Vec<&EndpointSlice>>,
    node: &NodeContext,
) -> Vec<BackendGroup> {
    let mut groups = Vec::new();
    // The groups' names share the key's strings (the same text but for a malformed key).
    let (namespace, name) = (shared_str(&key.namespace, svc.namespace), shared_str(&key.name, svc.name));
    for port in &svc.ports {
        let port_name: Arc<str> = port.name.as_str().into();
        for family in [Family::V4, Family::V6] {
            let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
                ips.iter().copied().filter(|ip| Family::of(ip) == family).collect()
            };
            let frontend = |addr, kind| Frontend { addr, port: port.port, protocol: port.protocol, kind };
            let internal: Vec<Frontend> = of_family(&svc.cluster_ips)
                .into_iter()
                .map(|a| frontend(a, FrontendKind::ClusterIP))
                .collect();
            // Rule 4: no ClusterIP in this family, nothing at all in this family.
            if internal.is_empty() {
                continue;
            }
            // Rules 8, 9, 7. An address that is already a frontend of this port keeps its first kind
            // (kube-proxy's ClusterIP rule comes before its externalIP and LB rules).
            let mut external: Vec<Frontend> = Vec::new();
            let candidates = of_family(&svc.external_ips)
                .into_iter()
                .map(|a| frontend(a, FrontendKind::ExternalIP))
                .chain(
                    of_family(&svc.load_balancer_ips)
                        .into_iter()
                        .map(|a| frontend(a, FrontendKind::LoadBalancer)),
                );
            for f in candidates {
                if !internal.iter().chain(&external).any(|e| e.addr == f.addr) {
                    external.push(f);
                }
            }
            if let Some(node_port) = port.node_port {
                let every_address = match family {
                    Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                external
                    .push(Frontend { port: node_port, ..frontend(every_address, FrontendKind::NodePort) });
            }

            let endpoints = merge_endpoints(
                slices.map_or(&[][..], Vec::as_slice),
                &port.name,
                port.protocol,
                family,
                node,
            );
            // Rule 27: decides reject (nothing anywhere) against drop (nothing in the Local set).
            let has_any_endpoints = endpoints.iter().any(Endpoint::usable);
            // Shared by the groups that use them (`BackendGroup::eligible`).
            let cluster: Arc<[SocketAddr]> = cluster_set(&endpoints).into();
            let local: Arc<[SocketAddr]> = local_set(&endpoints).into();
            let mut backends: Vec<BackendInfo> = endpoints
                .iter()
                .filter(|e| e.usable())
                .map(|e| BackendInfo {
                    addr: e.addr,
                    state: if e.ready { EndpointState::Active } else { EndpointState::Terminating },
                    local: e.local,
                })
                .collect();
            backends.sort();
            let mut source_ranges: Vec<Cidr> =
                svc.source_ranges.iter().copied().filter(|c| c.family() == family).collect();
            source_ranges.sort();
            let group = |scope, frontends, policy_local: bool| {
                let eligible = if policy_local { Arc::clone(&local) } else { Arc::clone(&cluster) };
                let from_node =
                    if scope == Scope::External { Arc::clone(&cluster) } else { Arc::clone(&eligible) };
                // The Cluster set is empty only when no endpoint is usable anywhere, so a Drop
                // always comes from a Local policy (rule 40).
                let when_empty = if eligible.is_empty() && has_any_endpoints {
                    WhenEmpty::Drop
                } else {
                    WhenEmpty::Reject
                };
                BackendGroup {
                    service: ServicePortName {
                        namespace: Arc::clone(&namespace),
                        name: Arc::clone(&name),
                        port: Arc::clone(&port_name),
                        protocol: port.protocol,
                    },
                    family,
                    scope,
                    frontends,
                    eligible,
                    from_node,
                    when_empty,
                    backends: backends.clone(),
                    affinity_timeout: svc.affinity_timeout,
                    source_ranges: source_ranges.clone(),
                    health_check_node_port: svc.health_check_node_port,
                }
            };
            // Rules 29, 30 (rule 31, short-circuit, is the datapath's: see `BackendGroup`).
            groups.push(group(Scope::Internal, internal, svc.internal_local));
            if !external.is_empty() {
                groups.push(group(Scope::External, external, svc.external_local));
            }
        }
    }
    groups
}

/// kube-proxy's Local policy set (rule 26): this node's ready endpoints, or when it has none,
/// its serving-and-terminating ones (decided per node). Never topology-filtered (rule 33). Sorted.
fn local_set(endpoints: &[Endpoint]) -> Vec<SocketAddr> {
    let local = || endpoints.iter().filter(|e| e.local);
    let mut chosen: Vec<SocketAddr> = local().filter(|e| e.ready).map(|e| e.addr).collect();
    if chosen.is_empty() {
        chosen = local().filter(|e| e.serving && e.terminating).map(|e| e.addr).collect();
    }
    chosen.sort();
    chosen
}

/// Which topology filter applies to the Cluster set (kube-proxy's topologyModeFromHints).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// No filter: every ready endpoint.
    None,
    /// Ready endpoints hinted for this node (`hints.forNodes`, PreferSameNode).
    SameNode,
    /// Ready endpoints hinted for this node's zone (`hints.forZones`).
    SameZone,
}

/// Rules 35, 36: only ready endpoints count. Same-node first: every ready endpoint has node hints
/// and one names this node. Then same-zone: every ready endpoint has zone hints and one names this
/// node's zone. Otherwise none. Either filter keeps at least one ready endpoint.
fn topology(endpoints: &[Endpoint]) -> Topology {
    let ready = || endpoints.iter().filter(|e| e.ready);
    if ready().all(|e| e.node_hints) && ready().any(|e| e.for_this_node) {
        Topology::SameNode
    } else if ready().all(|e| e.zone_hints) && ready().any(|e| e.for_this_zone) {
        Topology::SameZone
    } else {
        Topology::None
    }
}

/// kube-proxy's Cluster policy set (rule 25): the ready endpoints after the topology filter
/// (33-37), or when there is no ready endpoint, every serving-and-terminating one with no
/// topology filter (38). Sorted.
fn cluster_set(endpoints: &[Endpoint]) -> Vec<SocketAddr> {
    let mode = topology(endpoints);
    let mut chosen: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|e| e.ready)
        .filter(|e| match mode {
            Topology::None => true,
            Topology::SameNode => e.for_this_node,
            Topology::SameZone => e.for_this_zone,
        })
        .map(|e| e.addr)
        .collect();
    if chosen.is_empty() {
        chosen = endpoints.iter().filter(|e| e.serving && e.terminating).map(|e| e.addr).collect();
    }
    chosen.sort();
    chosen
}

/// Every endpoint of a Service port in one family, merged across slices and de-duplicated by
/// address:port (the non-terminating copy wins; see `Endpoint::preference`).
fn merge_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    family: Family,
    node: &NodeContext,
) -> Vec<Endpoint> {
    let want_type = match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    };
    let mut merged: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == want_type) {
        for slice_port in slice.ports.iter().flatten() {
            let matches = slice_port.name.as_deref() == Some(port_name)
                && Protocol::parse(slice_port.protocol.as_deref()) == Some(protocol);
            let Some(number) = slice_port.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
                continue;
            };
            if !matches {
                continue;
            }
            for endpoint in &slice.endpoints {
                // An unparsable or unspecified address is no endpoint (the API server refuses both).
                let Some(ip) = endpoint
                    .addresses
                    .first()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .filter(|a| !a.is_unspecified())
                else {
                    continue;
                };
                if Family::of(&ip) != family {
                    continue;
                }
                let conditions = endpoint.conditions.as_ref();
                // Rule 34: the node's zone label against the hints; the endpoint's own `zone`
                // field is never read. A node without a zone compares as "" (as kube-proxy does).
                let hints = endpoint.hints.as_ref();
                let for_nodes = hints.and_then(|h| h.for_nodes.as_deref()).unwrap_or_default();
                let for_zones = hints.and_then(|h| h.for_zones.as_deref()).unwrap_or_default();
                let zone = node.zone.as_deref().unwrap_or_default();
                let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                let candidate = Endpoint {
                    addr: SocketAddr::new(ip, number),
                    ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                    serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                    terminating,
                    local: !node.name.is_empty() && endpoint.node_name.as_deref() == Some(node.name.as_str()),
                    node_hints: !for_nodes.is_empty(),
                    for_this_node: for_nodes.iter().any(|n| n.name == node.name),
                    zone_hints: !for_zones.is_empty(),
                    for_this_zone: for_zones.iter().any(|z| z.name == zone),
                };
                merged
                    .entry(candidate.addr)
                    .and_modify(|existing| {
                        if candidate.preference() > existing.preference() {
                            *existing = candidate;
                        }
                    })
                    .or_insert(candidate);
            }
        }
    }
    merged.into_values().collect()
}

/// Whether one endpoint of a Service port is used by one of its groups, and why, in kube-proxy's
/// terms: what `explain` shows for endpoints the maps never held.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EndpointVerdict {
    /// The Service port's name (`""` for an unnamed port).
    pub port: String,
    pub protocol: Protocol,
    pub family: Family,
    /// `Internal`: the ClusterIPs' set; `External`: the set of traffic arriving from outside.
    pub scope: Scope,
    pub address: SocketAddr,
    /// The endpoint's `nodeName`.
    pub node: Option<String>,
    pub used: bool,
    pub reason: String,
}

/// Every endpoint of every port of the Service `key` and, per group, whether it is used and why
/// (the same sets `translate_service` lays out: `local_set`, `cluster_set`, `topology`). Empty
/// when the Service is not translated (see the translation's problems for why).
pub fn endpoint_verdicts(
    key: &ServiceKey,
    objects: &ServiceObjects,
    node: &NodeContext,
) -> Vec<EndpointVerdict> {
    let Some(Ok(Some(svc))) = objects.services.first().map(|s| validate_service(&s.object)) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let slices = usable_slices(key, objects, true, &mut problems);
    let node_of = |addr: &SocketAddr| {
        slices.iter().flat_map(|s| &s.endpoints).find_map(|e| {
            e.addresses
                .iter()
                .any(|a| a.parse::<IpAddr>().ok() == Some(addr.ip()))
                .then(|| e.node_name.clone())?
        })
    };
    let zone = node.zone.as_deref().unwrap_or("(none)");
    let groups = service_groups(key, &svc, Some(&slices), node);
    let mut out = Vec::new();
    for port in &svc.ports {
        for family in [Family::V4, Family::V6] {
            let endpoints = merge_endpoints(&slices, &port.name, port.protocol, family, node);
            let any_ready = endpoints.iter().any(|e| e.ready);
            let local_ready = endpoints.iter().any(|e| e.local && e.ready);
            let mode = topology(&endpoints);
            for scope in [Scope::Internal, Scope::External] {
                let Some(group) = groups.iter().find(|g| {
                    *g.service.port == *port.name
                        && g.service.protocol == port.protocol
                        && g.family == family
                        && g.scope == scope
                }) else {
                    continue;
                };
                let (policy_local, policy) = match scope {
                    Scope::Internal => (svc.internal_local, "internalTrafficPolicy: Local"),
                    Scope::External => (svc.external_local, "externalTrafficPolicy: Local"),
                };
                for e in &endpoints {
                    let used = group.eligible.contains(&e.addr);
                    let node_name = node_of(&e.addr);
                    let reason = if !e.usable() {
                        "not ready (conditions.ready is false, and it is not serving while terminating)"
                            .to_owned()
                    } else if policy_local && !e.local {
                        format!(
                            "on node {}, not this node ({}): {policy} uses only this node's endpoints",
                            node_name.as_deref().unwrap_or("(unknown)"),
                            node.name
                        )
                    } else if used && e.ready {
                        match (policy_local, mode) {
                            (true, _) => format!("ready, on this node ({policy})"),
                            (false, Topology::SameNode) => "ready, hinted for this node".to_owned(),
                            (false, Topology::SameZone) => {
                                format!("ready, hinted for this node's zone {zone}")
                            }
                            (false, Topology::None) => "ready".to_owned(),
                        }
                    } else if used {
                        "terminating but serving: used because no endpoint is ready".to_owned()
                    } else if !e.ready && (if policy_local { local_ready } else { any_ready }) {
                        "terminating: used only when no endpoint is ready, and ready ones exist".to_owned()
                    } else if !policy_local && mode == Topology::SameZone && !e.for_this_zone {
                        format!("topology hints send it to other zones; this node is in zone {zone}")
                    } else if !policy_local && mode == Topology::SameNode && !e.for_this_node {
                        "topology hints send it to other nodes".to_owned()
                    } else {
                        "not in the set this path uses".to_owned()
                    };
                    out.push(EndpointVerdict {
                        port: port.name.clone(),
                        protocol: port.protocol,
                        family,
                        scope,
                        address: e.addr,
                        node: node_name,
                        used,
                        reason,
                    });
                }
            }
        }
    }
    out
}
