//! What `lb-agent explain` is asked: a destination `ADDR:PORT/PROTO`, optionally a client
//! `ADDR[:PORT]`, and which hook sees the traffic. Parsed here with typed errors, so the CLI only
//! adds context.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::Serialize;
use thiserror::Error;

use crate::model::Protocol;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("{0:?}: expected ADDR:PORT/PROTO, e.g. 10.96.0.10:80/TCP or [fd00::10]:53/UDP")]
    Target(String),
    #[error("{given:?}: unknown protocol {protocol:?}: expected TCP, UDP or SCTP")]
    Protocol { given: String, protocol: String },
    #[error(
        "{0:?}: expected ADDR or ADDR:PORT, e.g. 198.51.100.7, 198.51.100.7:40000 or [2001:db8::7]:40000"
    )]
    Source(String),
    #[error(
        "--from {from} and --to {to} are of different IP families: a packet's source and \
         destination are of one family"
    )]
    Family { from: IpAddr, to: IpAddr },
}

/// Which hook sees the traffic, and so which slot range of the frontend is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// The cgroup socket hooks: this node's own connect/sendmsg (pods and host), slots
    /// `1..=count`, a random slot per connection.
    Socket,
    /// TC/XDP on `--interfaces`: packets from outside, slots `ext_offset+1..=ext_offset+ext_count`,
    /// the slot named by the flow hash.
    Packet,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Socket => "socket",
            Self::Packet => "packet",
        })
    }
}

impl From<Path> for lb_common::select::Path {
    fn from(path: Path) -> Self {
        match path {
            Path::Socket => Self::Socket,
            Path::Packet => Self::Packet,
        }
    }
}

/// The destination: `ADDR:PORT/PROTO`, IPv6 in brackets, the protocol in any case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl FromStr for Target {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, protocol) = s.rsplit_once('/').ok_or_else(|| QueryError::Target(s.to_owned()))?;
        let addr: SocketAddr = addr.parse().map_err(|_| QueryError::Target(s.to_owned()))?;
        let protocol = Protocol::parse(Some(&protocol.to_ascii_uppercase()))
            .ok_or_else(|| QueryError::Protocol { given: s.to_owned(), protocol: protocol.to_owned() })?;
        Ok(Self { addr, protocol })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// The client: an address, and the source port when known (the packet path's flow hash needs it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl FromStr for Source {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self { addr: sa.ip(), port: Some(sa.port()) });
        }
        // A bare address; IPv6 may come in brackets without a port.
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        let addr: IpAddr = bare.parse().map_err(|_| QueryError::Source(s.to_owned()))?;
        Ok(Self { addr, port: None })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", SocketAddr::new(self.addr, port)),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// One question for `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub to: Target,
    pub from: Option<Source>,
    pub path: Path,
}

impl Query {
    /// A query; `path` defaults to `Packet` when a client is given (only packets carry a source
    /// the datapath looks at), else `Socket`. On the packet path the client and the destination
    /// must be of one family.
    pub fn new(to: Target, from: Option<Source>, path: Option<Path>) -> Result<Self, QueryError> {
        let path = path.unwrap_or(if from.is_some() { Path::Packet } else { Path::Socket });
        if path == Path::Packet
            && let Some(from) = from
            && from.addr.is_ipv4() != to.addr.is_ipv4()
        {
            return Err(QueryError::Family { from: from.addr, to: to.addr.ip() });
        }
        Ok(Self { to, from, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_any_protocol_case_and_bracketed_ipv6() {
        let t: Target = "10.96.0.10:80/TCP".parse().expect("target");
        assert_eq!((t.addr.to_string(), t.protocol), ("10.96.0.10:80".to_owned(), Protocol::Tcp));
        let t: Target = "[fd00::1]:53/udp".parse().expect("target");
        assert_eq!((t.addr.to_string(), t.protocol), ("[fd00::1]:53".to_owned(), Protocol::Udp));
        let t: Target = "10.0.0.1:9/Sctp".parse().expect("target");
        assert_eq!(t.protocol, Protocol::Sctp);
        assert_eq!(t.to_string(), "10.0.0.1:9/SCTP");
        for bad in ["10.96.0.10:80", "10.96.0.10/TCP", "fd00::1:80/TCP", "10.96.0.10:99999/TCP", ""] {
            assert_eq!(bad.parse::<Target>(), Err(QueryError::Target(bad.to_owned())), "{bad}");
        }
        let err = "10.96.0.10:80/ICMP".parse::<Target>().expect_err("unknown protocol");
        assert!(err.to_string().contains("expected TCP, UDP or SCTP"), "{err}");
    }

    #[test]
    fn sources_take_an_optional_port() {
        let s: Source = "198.51.100.7".parse().expect("source");
        assert_eq!((s.addr.to_string(), s.port), ("198.51.100.7".to_owned(), None));
        let s: Source = "198.51.100.7:40000".parse().expect("source");
        assert_eq!(s.port, Some(40000));
        let s: Source = "[2001:db8::7]:40000".parse().expect("source");
        assert_eq!((s.addr.to_string(), s.port), ("2001:db8::7".to_owned(), Some(40000)));
        let s: Source = "2001:db8::7".parse().expect("source");
        assert_eq!(s.port, None);
        let s: Source = "[2001:db8::7]".parse().expect("source");
        assert_eq!(s.to_string(), "2001:db8::7");
        assert!(matches!("nonsense".parse::<Source>(), Err(QueryError::Source(_))));
    }

    #[test]
    fn the_path_defaults_by_client_and_families_must_match_on_the_packet_path() {
        let to: Target = "10.96.0.10:80/TCP".parse().expect("target");
        let v4: Source = "198.51.100.7".parse().expect("source");
        let v6: Source = "2001:db8::7".parse().expect("source");
        assert_eq!(Query::new(to, None, None).expect("query").path, Path::Socket);
        assert_eq!(Query::new(to, Some(v4), None).expect("query").path, Path::Packet);
        assert!(matches!(Query::new(to, Some(v6), None), Err(QueryError::Family { .. })));
        assert_eq!(
            Query::new(to, Some(v6), Some(Path::Socket)).expect("socket ignores it").path,
            Path::Socket
        );
    }
}
