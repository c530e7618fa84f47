//! Which node addresses NodePorts answer on: kube-proxy's `--nodeport-addresses`.
//!
//! Candidates are the addresses of the node's own interfaces and of its Node object
//! (`status.addresses`). An empty flag takes them all (kube-proxy's iptables default); `primary`
//! takes only the Node object's addresses (the nftables default); CIDRs keep the candidates
//! inside them. Loopback addresses never serve NodePorts (IPv6 `::1` never does in kube-proxy,
//! and IPv4 127/8 only with a route_localnet hack this datapath does not need).
use std::net::IpAddr;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("--nodeport-addresses: {0:?} is not a CIDR (like 10.0.0.0/8) or `primary`")]
pub struct BadCidr(String);

/// A parsed `--nodeport-addresses` value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every candidate address.
    #[default]
    All,
    /// Only the Node object's addresses.
    Primary,
    /// Candidates inside any of these networks.
    Cidrs(Vec<(IpAddr, u8)>),
}

impl NodePortAddresses {
    pub fn parse(flag: &str) -> Result<Self, BadCidr> {
        let terms: Vec<&str> = flag.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        if terms.is_empty() {
            return Ok(Self::All);
        }
        if terms == ["primary"] {
            return Ok(Self::Primary);
        }
        terms
            .iter()
            .map(|t| {
                let (ip, len) = t.split_once('/').ok_or_else(|| BadCidr((*t).to_owned()))?;
                let ip: IpAddr = ip.parse().map_err(|_| BadCidr((*t).to_owned()))?;
                let len: u8 = len.parse().map_err(|_| BadCidr((*t).to_owned()))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if len > max {
                    return Err(BadCidr((*t).to_owned()));
                }
                Ok((ip, len))
            })
            .collect::<Result<_, _>>()
            .map(Self::Cidrs)
    }

    /// The addresses NodePorts answer on, sorted and without duplicates.
    pub fn select(&self, node_object: &[IpAddr], interfaces: &[IpAddr]) -> Vec<IpAddr> {
        let candidates: Vec<IpAddr> = match self {
            Self::Primary => node_object.to_vec(),
            _ => node_object.iter().chain(interfaces).copied().collect(),
        };
        let mut out: Vec<IpAddr> = candidates
            .into_iter()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !is_link_local(ip))
            .filter(|ip| match self {
                Self::Cidrs(cidrs) => cidrs.iter().any(|(net, len)| contains(*net, *len, *ip)),
                _ => true,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

pub use crate::sys::net::interface_addresses;

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn selection_follows_kube_proxy() {
        let node = ips(&["192.0.2.10", "2001:db8::10"]);
        let ifaces = ips(&["127.0.0.1", "::1", "192.0.2.10", "10.1.0.5", "fe80::1", "172.16.0.1"]);
        let cases: [(&str, &[&str]); 5] = [
            ("", &["10.1.0.5", "172.16.0.1", "192.0.2.10", "2001:db8::10"]),
            ("primary", &["192.0.2.10", "2001:db8::10"]),
            ("10.0.0.0/8", &["10.1.0.5"]),
            ("10.0.0.0/8, 2001:db8::/32", &["10.1.0.5", "2001:db8::10"]),
            ("127.0.0.0/8", &[]),
        ];
        for (flag, want) in cases {
            let got = NodePortAddresses::parse(flag).expect("parse").select(&node, &ifaces);
            assert_eq!(got, ips(want), "--nodeport-addresses {flag:?}");
        }
        lb_tests::parity::shown(&["42", "43"]);
    }

    #[test]
    fn bad_values_are_refused() {
        for flag in ["10.0.0.0", "10.0.0.0/33", "fd00::/129", "nope/8", "primary,10.0.0.0/8"] {
            assert!(NodePortAddresses::parse(flag).is_err(), "{flag:?} accepted");
        }
    }

    #[test]
    fn interfaces_include_loopback() {
        let found = interface_addresses().expect("getifaddrs");
        assert!(found.iter().any(IpAddr::is_loopback), "{found:?}");
    }
}
