//! Kubernetes objects → `DesiredState`, with kube-proxy's semantics (`pkg/proxy` of kubernetes).
//! Pure: no I/O, never fails as a whole; an object it cannot use is reported as a `Problem` and
//! left out entirely, so no Service is ever half-applied.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::{
    core::v1::{Node, Service, ServicePort},
    discovery::v1::EndpointSlice,
};

use super::types::*;

/// Label that hands a Service to another proxy (kube-proxy skips such Services).
const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label that ties an EndpointSlice to its Service (the only link kube-proxy uses).
const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label set on the slices of headless Services.
const HEADLESS: &str = "service.kubernetes.io/headless";
/// The API server's default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// An object and where it came from (a file and document, or the API server).
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub origin: String,
    pub object: T,
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
    ports: Vec<(String, Protocol, u16)>,
    internal_local: bool,
    affinity_timeout: Option<u32>,
}

/// One endpoint after merging every slice of a Service port.
#[derive(Clone, Copy)]
struct Endpoint {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
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

/// Translates objects into the state this node should program, plus what had to be left out.
pub fn translate(objects: &Objects, node: &NodeContext) -> (DesiredState, Vec<Problem>) {
    let mut problems = Vec::new();

    let mut services: Vec<&Located<Service>> = objects.services.iter().collect();
    services.sort_by(|a, b| {
        let key =
            |s: &Located<Service>| (s.object.metadata.namespace.clone(), s.object.metadata.name.clone());
        key(a).cmp(&key(b))
    });

    let mut valid = Vec::new();
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    for located in services {
        match validate_service(&located.object) {
            Ok(Some(svc)) => {
                if !known.insert((svc.namespace.to_owned(), svc.name.to_owned())) {
                    problems.push(Problem {
                        object: describe("Service", located),
                        reason: "defined more than once; the first definition is used".into(),
                    });
                    continue;
                }
                valid.push(svc);
            }
            result => {
                // Not ours to proxy (headless, ExternalName, another proxy's) or malformed (reported
                // here): still "exists" for the slice check below.
                let meta = &located.object.metadata;
                known.insert((
                    meta.namespace.clone().unwrap_or_else(|| "default".into()),
                    meta.name.clone().unwrap_or_default(),
                ));
                if let Err(reason) = result {
                    problems.push(Problem { object: describe("Service", located), reason });
                }
            }
        }
    }

    let slices = index_slices(objects, &known, &mut problems);

    // Frontends already claimed, to refuse a second Service on the same address:port/proto.
    let mut claimed: BTreeMap<(IpAddr, u16, Protocol), String> = BTreeMap::new();
    let mut groups = Vec::new();
    for svc in &valid {
        let svc_groups = service_groups(svc, slices.get(&(svc.namespace, svc.name)), node);
        let conflict = svc_groups
            .iter()
            .flat_map(|g| &g.frontends)
            .find_map(|f| claimed.get(&(f.addr, f.port, f.protocol)).map(|owner| (*f, owner.clone())));
        if let Some((frontend, owner)) = conflict {
            problems.push(Problem {
                object: format!("Service {}/{}", svc.namespace, svc.name),
                reason: format!("frontend {frontend} is already used by {owner}; Service skipped"),
            });
            continue;
        }
        for group in svc_groups {
            for f in &group.frontends {
                claimed.insert((f.addr, f.port, f.protocol), group.service.to_string());
            }
            groups.push(group);
        }
    }
    groups.sort_by(|a, b| (&a.service, a.family).cmp(&(&b.service, b.family)));
    (DesiredState { groups }, problems)
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
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let cluster_ips = cluster_ips_by_family(spec)?;
    if cluster_ips.is_empty() {
        return Ok(None); // headless
    }
    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let (port_name, protocol, number) = validate_port(port)?;
        if ports.iter().any(|(n, p, _)| *n == port_name && *p == protocol) {
            return Err(format!("port {port_name:?}/{protocol} is listed twice"));
        }
        // The API server refuses this too: two ports would claim one frontend.
        if ports.iter().any(|(_, p, n)| *n == number && *p == protocol) {
            return Err(format!("port {number}/{protocol} is listed twice"));
        }
        ports.push((port_name, protocol, number));
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
    Ok(Some(ValidService {
        namespace,
        name,
        cluster_ips,
        ports,
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        affinity_timeout,
    }))
}

/// kube-proxy's GetClusterIPByFamily for both families: with `ipFamilies` set, `clusterIPs[i]`
/// serves `ipFamilies[i]`; without it (objects written by hand, old API servers), only
/// `clusterIP` is used. Empty: headless (`None`) or no ClusterIP at all.
fn cluster_ips_by_family(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Result<Vec<IpAddr>, String> {
    let parse = |ip: &str| ip.parse::<IpAddr>().map_err(|_| format!("clusterIP {ip:?} is not an IP address"));
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
        out.push(addr);
    }
    Ok(out)
}

fn validate_port(port: &ServicePort) -> Result<(String, Protocol, u16), String> {
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
    Ok((port_name, protocol, number))
}

/// Slices by (namespace, service name), for the Services that exist. Reports slices that cannot be
/// tied to a Service.
fn index_slices<'a>(
    objects: &'a Objects,
    known: &BTreeSet<(String, String)>,
    problems: &mut Vec<Problem>,
) -> HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for located in &objects.slices {
        let slice = &located.object;
        let labels = slice.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(HEADLESS)) || slice.address_type == "FQDN" {
            continue;
        }
        let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME)).filter(|s| !s.is_empty()) else {
            problems.push(Problem {
                object: describe("EndpointSlice", located),
                reason: format!("has no {SERVICE_NAME} label; ignored"),
            });
            continue;
        };
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        if !known.contains(&(namespace.to_owned(), service.clone())) {
            problems.push(Problem {
                object: describe("EndpointSlice", located),
                reason: format!("its Service {namespace}/{service} does not exist; no frontend uses it"),
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
        by_service.entry((namespace, service.as_str())).or_default().push(slice);
    }
    by_service
}

/// The groups (one per port and IP family) of a valid Service.
fn service_groups(
    svc: &ValidService<'_>,
    slices: Option<&Vec<&EndpointSlice>>,
    node: &NodeContext,
) -> Vec<BackendGroup> {
    let mut groups = Vec::new();
    for (port_name, protocol, port) in &svc.ports {
        for family in [Family::V4, Family::V6] {
            let frontends: Vec<Frontend> = svc
                .cluster_ips
                .iter()
                .filter(|ip| Family::of(ip) == family)
                .map(|&addr| Frontend {
                    addr,
                    port: *port,
                    protocol: *protocol,
                    kind: FrontendKind::ClusterIP,
                })
                .collect();
            if frontends.is_empty() {
                continue;
            }
            let endpoints =
                merge_endpoints(slices.map_or(&[][..], Vec::as_slice), port_name, *protocol, family, node);
            let eligible = if svc.internal_local {
                choose(endpoints.iter().filter(|e| e.local))
            } else {
                choose(endpoints.iter())
            };
            let mut backends: Vec<BackendInfo> = endpoints
                .iter()
                .filter(|e| e.ready || (e.serving && e.terminating))
                .map(|e| BackendInfo {
                    addr: e.addr,
                    state: if e.ready { EndpointState::Active } else { EndpointState::Terminating },
                })
                .collect();
            backends.sort();
            groups.push(BackendGroup {
                service: ServicePortName {
                    namespace: svc.namespace.to_owned(),
                    name: svc.name.to_owned(),
                    port: port_name.clone(),
                    protocol: *protocol,
                },
                family,
                frontends,
                eligible,
                backends,
                affinity_timeout: svc.affinity_timeout,
            });
        }
    }
    groups
}

/// kube-proxy's CategorizeEndpoints for one policy set: the ready endpoints, or when there is
/// none, the serving-and-terminating ones. Sorted.
fn choose<'a>(endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<SocketAddr> {
    let ready: Vec<SocketAddr> = endpoints.clone().filter(|e| e.ready).map(|e| e.addr).collect();
    let mut chosen = if ready.is_empty() {
        endpoints.filter(|e| e.serving && e.terminating).map(|e| e.addr).collect()
    } else {
        ready
    };
    chosen.sort();
    chosen
}

/// Every endpoint of a Service port in one family, merged across slices and de-duplicated by
/// address:port (the non-terminating copy wins).
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
                let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                if Family::of(&ip) != family {
                    continue;
                }
                let conditions = endpoint.conditions.as_ref();
                let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                let candidate = Endpoint {
                    addr: SocketAddr::new(ip, number),
                    ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                    serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                    terminating,
                    local: !node.name.is_empty() && endpoint.node_name.as_deref() == Some(node.name.as_str()),
                };
                merged
                    .entry(candidate.addr)
                    .and_modify(|existing| {
                        if existing.terminating && !candidate.terminating {
                            *existing = candidate;
                        }
                    })
                    .or_insert(candidate);
            }
        }
    }
    merged.into_values().collect()
}
