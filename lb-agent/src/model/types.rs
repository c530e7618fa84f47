use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::Serialize;

/// A Service port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol name; unset means TCP, as the API server defaults it.
    pub fn parse(name: Option<&str>) -> Option<Self> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The IANA number the kernel uses.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::proto::TCP,
            Self::Udp => lb_common::proto::UDP,
            Self::Sctp => lb_common::proto::SCTP,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::proto::TCP => Some(Self::Tcp),
            lb_common::proto::UDP => Some(Self::Udp),
            lb_common::proto::SCTP => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// IP family of a frontend and its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

/// `text` as `kept` holds it when they are equal (one copy shared), else a copy of its own.
pub fn shared_str(kept: &Arc<str>, text: &str) -> Arc<str> {
    if **kept == *text { Arc::clone(kept) } else { text.into() }
}

/// kube-proxy's ServicePortName: a Service port is identified by namespace, name, port **name**
/// and protocol, never by its number. (The strings are shared: with the `ServiceKey`, and
/// between the groups of a Service port.)
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: Arc<str>,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Which kind of address a frontend is. The order is kube-proxy's rule order: when one address
/// is several kinds at once (an externalIP equal to the ClusterIP), the first kind wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrontendKind {
    /// An address of `spec.clusterIPs`.
    ClusterIP,
    /// An address of `spec.externalIPs`.
    ExternalIP,
    /// An address of `status.loadBalancer.ingress[].ip` (`ipMode` unset or `VIP`).
    LoadBalancer,
    /// `ports[i].nodePort` on every node address of the family: in the model its address is the
    /// unspecified one (`0.0.0.0` or `::`), which `layout::state::layout` expands to
    /// `DesiredState::node_addresses`.
    NodePort,
}

impl FrontendKind {
    pub const fn flag(self) -> u32 {
        match self {
            Self::ClusterIP => lb_common::frontend_flags::CLUSTER_IP,
            Self::ExternalIP => lb_common::frontend_flags::EXTERNAL_IP,
            Self::LoadBalancer => lb_common::frontend_flags::LOAD_BALANCER,
            Self::NodePort => lb_common::frontend_flags::NODE_PORT,
        }
    }

    /// The name `plan` and `inspect` show.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::ExternalIP => "ExternalIP",
            Self::LoadBalancer => "LoadBalancer",
            Self::NodePort => "NodePort",
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One address:port/protocol that clients dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// For a NodePort: the unspecified address of its family, meaning "every node address".
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: FrontendKind,
}

impl Frontend {
    /// A NodePort frontend standing for every node address of its family.
    pub fn on_every_node_address(&self) -> bool {
        self.kind == FrontendKind::NodePort && self.addr.is_unspecified()
    }
}

impl fmt::Display for Frontend {
    /// `ADDR:PORT/PROTO` (IPv6 in brackets); a NodePort on every node address is `*:PORT/PROTO`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on_every_node_address() {
            write!(f, "*:{}/{}", self.port, self.protocol)
        } else {
            write!(f, "{}/{}", SocketAddr::new(self.addr, self.port), self.protocol)
        }
    }
}

/// Which traffic policy a group follows, and so which frontends it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Scope {
    /// ClusterIP frontends, under `internalTrafficPolicy` (kube-proxy rule 29).
    Internal,
    /// NodePort, externalIP and LoadBalancer frontends, under `externalTrafficPolicy` when the
    /// Service is externally accessible (rules 11, 30).
    External,
}

/// What the datapath does with a new connection to a group whose `eligible` is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum WhenEmpty {
    /// No usable endpoint anywhere in the cluster (kube-proxy rule 39, `hasAnyEndpoints` false):
    /// refuse (ECONNREFUSED at the socket, ICMP port unreachable / TCP RST on the packet path).
    /// Also the value of every group whose `eligible` is not empty.
    Reject,
    /// Endpoints exist elsewhere, but the group's Local policy set on this node is empty
    /// (rule 40): drop silently (EHOSTUNREACH at the socket). Laid out as
    /// `lb_common::frontend_flags::DROP_WHEN_EMPTY` on the group's frontends.
    Drop,
}

/// An address prefix, as in `loadBalancerSourceRanges`; host bits are cleared (Go's ParseCIDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` (no surrounding whitespace).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        let addr = match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) if prefix <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
            _ => return None,
        };
        Some(Self { addr, prefix })
    }

    pub const fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// The prefix holding only `addr` (`/32` or `/128`).
    pub const fn host(addr: IpAddr) -> Self {
        let prefix = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Self { addr, prefix }
    }

    /// Whether `ip` (of the same family) is inside the prefix.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(*ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(*ip) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The condition of an endpoint, as the datapath shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EndpointState {
    /// Ready: takes new connections.
    Active,
    /// Terminating: takes new connections only when its Service has no ready endpoint.
    Terminating,
}

/// A backend of a group, with its condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendInfo {
    pub addr: SocketAddr,
    pub state: EndpointState,
    /// The endpoint's `nodeName` is this node.
    pub local: bool,
}

/// A set of frontends that share one backend set: one Service port, one IP family, one `Scope`.
/// The datapath gives each group an id and a slot array.
///
/// The `External` group exists only when the Service has external frontends in that family. Its
/// `eligible` is the set for traffic that arrives from outside the node. kube-proxy
/// "short-circuits" traffic from this node's pods and from the host itself to an external
/// frontend (rule 31): with `externalTrafficPolicy: Local` such traffic still uses the Cluster
/// set (all ready endpoints, after topology), not the Local one. Which traffic is which is for the
/// datapath to tell; the socket hooks only ever see local traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendGroup {
    pub service: ServicePortName,
    pub family: Family,
    pub scope: Scope,
    /// `Internal`: the ClusterIPs. `External`: externalIPs, LoadBalancer IPs, then the NodePort.
    pub frontends: Vec<Frontend>,
    /// Backends eligible for new connections under the group's traffic policy (for `External`,
    /// what traffic arriving from outside the node may use), sorted. Empty: see `when_empty`.
    /// (Shared with `from_node` and the Service's other groups when they are the same set: a
    /// large cluster keeps one copy of most.)
    pub eligible: Arc<[SocketAddr]>,
    /// Backends for connections made on this node (the socket hooks), sorted: `eligible` for
    /// `Internal`; for `External` the Cluster set, because kube-proxy short-circuits this node's
    /// own traffic to external frontends (rule 31) even with `externalTrafficPolicy: Local`.
    pub from_node: Arc<[SocketAddr]>,
    /// Reject or drop when `eligible` is empty (`Reject` whenever it is not).
    pub when_empty: WhenEmpty,
    /// Every known backend of the group (eligible or not), sorted, for display and draining.
    pub backends: Vec<BackendInfo>,
    /// Session-affinity timeout in seconds, when `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    /// The Service's `loadBalancerSourceRanges` of this family, sorted, de-duplicated (same value
    /// in every group of the Service and family). They gate only the LoadBalancer frontends
    /// (kube-proxy rule 10); empty means every source. Laid out as `LB_SOURCE_RANGES` entries.
    pub source_ranges: Vec<Cidr>,
    /// The Service's `healthCheckNodePort`, set only for `type: LoadBalancer` with
    /// `externalTrafficPolicy: Local` and a port other than 0 (rule 12); the same value in every
    /// group of the Service. Not written to the maps yet.
    pub health_check_node_port: Option<u16>,
}

/// Everything this node should program: groups sorted by (service, family, scope).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub groups: Vec<BackendGroup>,
    /// This node's addresses (sorted, de-duplicated): every NodePort frontend is served on each
    /// address of its family.
    pub node_addresses: Vec<IpAddr>,
}

/// An object (or part of one) that was not applied, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `Kind namespace/name`.
    pub object: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}
