//! Connected UDP sockets that still point at a backend their Service no longer offers.
//!
//! A resolver (or nginx, or Envoy) `connect()`s a UDP socket to a DNS ClusterIP and keeps it; the
//! socket hook translated that connect once, so the socket sends to one backend for as long as
//! it lives. kube-proxy clears the UDP conntrack entries of endpoints that stop serving (rule
//! 48); at the socket layer the equivalent is to close the socket, so the application gets an
//! error and connects again, to a live backend. TCP connections are left to drain (rule 49).
//!
//! The socket hooks keep each socket's translation with the socket (`LB_SOCK_REVNAT`, socket
//! storage, which userspace cannot list) and copy a connected UDP socket's, by socket cookie, to
//! `LB_REVNAT_V4/V6` (with what the storage cannot hold): the backend a socket was sent to and
//! the frontend it asked for. After a sync,
//! [`stale`] picks the entries whose backend is no longer one the frontend's UDP port may use on
//! the socket path; `sock_destroy` finds the connected UDP sockets with those cookies (and that
//! destination) in every network namespace and destroys them.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap, MapData};
use lb_common::{RevNat4Key, RevNat4Value, RevNat6Key, RevNat6Value, SlotKey, map_names, proto};

use crate::{
    kernel::maps::MapsError,
    layout::state::{FrontendKey, MapState, word_ip4, words_ip6},
};

/// One socket the hooks translated: its cookie, the backend it was sent to, the frontend it
/// addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Translated {
    pub cookie: u64,
    pub backend: SocketAddr,
    pub frontend: SocketAddr,
}

/// The backends each UDP frontend may use on the socket path now, by frontend address and port
/// (a NodePort's wildcard frontend under 0.0.0.0 or ::).
pub fn udp_targets(state: &MapState) -> BTreeMap<SocketAddr, BTreeSet<SocketAddr>> {
    let mut out = BTreeMap::new();
    for (key, value) in &state.frontends {
        let (addr, port, protocol) = match key {
            FrontendKey::V4(k) => (IpAddr::V4(word_ip4(k.addr)), k.port, k.proto),
            FrontendKey::V6(k) => (IpAddr::V6(words_ip6(k.addr)), k.port, k.proto),
        };
        if protocol != proto::UDP {
            continue;
        }
        let backends: BTreeSet<SocketAddr> = (1..=value.count)
            .filter_map(|slot| state.slots.get(&SlotKey { group: value.group, slot }))
            .filter_map(|s| state.backends.get(&s.backend))
            .map(|b| {
                let ip = if b.family == 4 {
                    IpAddr::V4(word_ip4(b.addr[0]))
                } else {
                    IpAddr::V6(words_ip6(b.addr))
                };
                SocketAddr::new(ip, u16::from_be(b.port))
            })
            .collect();
        out.insert(SocketAddr::new(addr, u16::from_be(port)), backends);
    }
    out
}

/// The translated sockets whose backend the frontend they addressed no longer offers for UDP
/// (the backend left the Service, stopped being eligible, or the Service port went). Entries of
/// TCP sockets are among them too when their frontend has no UDP port; only UDP sockets are
/// destroyed, so they are harmless.
pub fn stale(
    translated: &[Translated],
    targets: &BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
) -> Vec<Translated> {
    translated
        .iter()
        .filter(|t| {
            let wildcard = match t.frontend.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let offered = targets
                .get(&t.frontend)
                .or_else(|| targets.get(&SocketAddr::new(wildcard, t.frontend.port())));
            !offered.is_some_and(|backends| backends.contains(&t.backend))
        })
        .copied()
        .collect()
}

/// What one sync makes stale: the sockets that were fine under `before` and are stale under
/// `after` (entries stale already were handled when they became so, and TCP-only frontends never
/// count), by cookie with the backend they were sent to. With `untracked` (a cookie map was full,
/// so sockets may be missing from it), also every backend no UDP frontend offers any more, to be
/// found by destination address.
pub fn plan(
    translated: &[Translated],
    before: &BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
    after: &BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
    untracked: bool,
) -> crate::kernel::sock_destroy::Targets {
    let already: BTreeSet<u64> = stale(translated, before).iter().map(|t| t.cookie).collect();
    let cookies = stale(translated, after)
        .into_iter()
        .filter(|t| !already.contains(&t.cookie))
        .map(|t| (t.cookie, t.backend))
        .collect();
    let by_destination = if untracked {
        let offered: BTreeSet<&SocketAddr> = after.values().flatten().collect();
        before.values().flatten().filter(|b| !offered.contains(b)).copied().collect()
    } else {
        BTreeSet::new()
    };
    crate::kernel::sock_destroy::Targets { cookies, by_destination }
}

/// Every entry of the socket hooks' reverse-NAT maps under `bpffs`, and whether either map is
/// full (an LRU at capacity evicts: a socket may have been forgotten).
pub fn translated(bpffs: &Path) -> Result<(Vec<Translated>, bool), MapsError> {
    let mut out = Vec::new();
    let mut full = false;
    let v4: HashMap<MapData, RevNat4Key, RevNat4Value> = open(bpffs, map_names::REVNAT_V4)?;
    let mut count = 0;
    for entry in v4.iter() {
        let (k, v) = entry.map_err(|source| MapsError::Read { name: map_names::REVNAT_V4, source })?;
        count += 1;
        out.push(Translated {
            cookie: k.cookie,
            backend: SocketAddr::new(IpAddr::V4(word_ip4(k.backend_addr)), u16::from_be(k.backend_port)),
            frontend: SocketAddr::new(IpAddr::V4(word_ip4(v.frontend_addr)), u16::from_be(v.frontend_port)),
        });
    }
    full |= count >= capacity(bpffs, map_names::REVNAT_V4)?;
    let v6: HashMap<MapData, RevNat6Key, RevNat6Value> = open(bpffs, map_names::REVNAT_V6)?;
    let mut count = 0;
    for entry in v6.iter() {
        let (k, v) = entry.map_err(|source| MapsError::Read { name: map_names::REVNAT_V6, source })?;
        count += 1;
        out.push(Translated {
            cookie: k.cookie,
            backend: SocketAddr::new(IpAddr::V6(words_ip6(k.backend_addr)), u16::from_be(k.backend_port)),
            frontend: SocketAddr::new(IpAddr::V6(words_ip6(v.frontend_addr)), u16::from_be(v.frontend_port)),
        });
    }
    full |= count >= capacity(bpffs, map_names::REVNAT_V6)?;
    Ok((out, full))
}

fn open<K: aya::Pod, V: aya::Pod>(
    bpffs: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapsError> {
    let path = bpffs.join(name);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open { path: path.clone(), source })?;
    HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(|source| MapsError::Open { path, source })
}

fn capacity(bpffs: &Path, name: &'static str) -> Result<usize, MapsError> {
    let path = bpffs.join(name);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open { path: path.clone(), source })?;
    let info = data.info().map_err(|source| MapsError::Open { path, source })?;
    Ok(info.max_entries() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_plans_only_the_sockets_it_made_stale_and_the_fallback_only_when_untracked() {
        let before = targets(&[("10.96.0.10:53", &["10.244.1.2:53", "10.244.1.3:53"])]);
        let after = targets(&[("10.96.0.10:53", &["10.244.1.2:53"])]);
        let t = |cookie, backend: &str, frontend: &str| Translated {
            cookie,
            backend: sa(backend),
            frontend: sa(frontend),
        };
        let translated = [
            t(1, "10.244.1.3:53", "10.96.0.10:53"),
            t(2, "10.244.1.2:53", "10.96.0.10:53"),
            // A TCP-only frontend (no UDP entry before or after): never planned.
            t(3, "10.244.9.9:80", "10.96.0.20:80"),
        ];
        let p = plan(&translated, &before, &after, false);
        assert_eq!(p.cookies.into_iter().collect::<Vec<_>>(), [(1, sa("10.244.1.3:53"))]);
        assert!(p.by_destination.is_empty());
        let p = plan(&translated, &before, &after, true);
        assert_eq!(p.by_destination.into_iter().collect::<Vec<_>>(), [sa("10.244.1.3:53")]);
        // Nothing changed: nothing planned, although socket 3 is "stale" against both.
        let p = plan(&translated, &after, &after, false);
        assert!(p.cookies.is_empty());
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn targets(rows: &[(&str, &[&str])]) -> BTreeMap<SocketAddr, BTreeSet<SocketAddr>> {
        rows.iter().map(|(f, bs)| (sa(f), bs.iter().map(|b| sa(b)).collect())).collect()
    }

    #[test]
    fn stale_sockets_are_those_whose_frontend_no_longer_offers_their_backend() {
        let now = targets(&[
            ("10.96.0.10:53", &["10.244.1.2:53"]),
            ("[fd00:96::10]:53", &["[fd00:244::2]:53"]),
            ("0.0.0.0:30053", &["10.244.1.2:53"]),
        ]);
        let t = |cookie, backend: &str, frontend: &str| Translated {
            cookie,
            backend: sa(backend),
            frontend: sa(frontend),
        };
        let rows = [
            // (socket, stale?, why)
            (t(1, "10.244.1.2:53", "10.96.0.10:53"), false, "backend still offered"),
            (t(2, "10.244.1.3:53", "10.96.0.10:53"), true, "backend left the Service"),
            (t(3, "10.244.1.2:53", "10.96.0.99:53"), true, "the Service port went"),
            (t(4, "[fd00:244::3]:53", "[fd00:96::10]:53"), true, "IPv6 backend left"),
            (t(5, "[fd00:244::2]:53", "[fd00:96::10]:53"), false, "IPv6 backend offered"),
            (t(6, "10.244.1.2:53", "192.0.2.10:30053"), false, "NodePort through the wildcard frontend"),
            (t(7, "10.244.1.3:53", "192.0.2.10:30053"), true, "NodePort backend left"),
        ];
        let translated: Vec<Translated> = rows.iter().map(|r| r.0).collect();
        let got: BTreeSet<u64> = stale(&translated, &now).iter().map(|s| s.cookie).collect();
        for (socket, want, why) in rows {
            assert_eq!(got.contains(&socket.cookie), want, "{why}: {socket:?}");
        }
    }
}
