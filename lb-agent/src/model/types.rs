use std::{
    fmt,
    net::{IpAddr, SocketAddr},
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

/// kube-proxy's ServicePortName: a Service port is identified by namespace, name, port **name**
/// and protocol, never by its number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
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

/// Which kind of address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrontendKind {
    ClusterIP,
}

impl FrontendKind {
    pub const fn flag(self) -> u32 {
        match self {
            Self::ClusterIP => lb_common::frontend_flags::CLUSTER_IP,
        }
    }
}

/// One address:port/protocol that clients dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: FrontendKind,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.addr, self.port), self.protocol)
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
}

/// A set of frontends that share one backend set: one Service port, one IP family.
/// The datapath gives each group an id and a slot array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendGroup {
    pub service: ServicePortName,
    pub family: Family,
    pub frontends: Vec<Frontend>,
    /// Backends eligible for new connections, sorted. Empty: connections are refused.
    pub eligible: Vec<SocketAddr>,
    /// Every known backend of the group (eligible or not), sorted, for display and draining.
    pub backends: Vec<BackendInfo>,
    /// Session-affinity timeout in seconds, when `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
}

/// Everything this node should program, sorted by (service, family).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub groups: Vec<BackendGroup>,
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
