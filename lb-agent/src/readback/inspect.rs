//! The rows `lb-agent inspect` shows, made from the maps as the agent reads them back
//! (`MapState`) with the Service names the agent stored (`LB_SERVICES`) next to the numbers, and
//! the filters that select them. Which slots a path uses is `lb_common::select`, as in the kernel.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, bail};
use lb_common::{
    SlotKey, backend_flags, backend_state, frontend_flags,
    select::{Path, WhenEmpty, slots},
    service_stats,
};
use serde::Serialize;

use crate::{
    layout::{
        names::ServiceLabel,
        state::{FrontendKey, MapState, backend_addr},
    },
    model::Protocol,
    readback::{affinity::AffinityRow, conntrack::FlowRow},
};

/// An address filter: `10.0.0.1`, `10.0.0.1:80`, `fd00::1`, `[fd00::1]:80`.
pub fn parse_addr(text: &str) -> anyhow::Result<(IpAddr, Option<u16>)> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    let ip = text.trim_start_matches('[').trim_end_matches(']');
    ip.parse().map(|ip| (ip, None)).with_context(|| format!("{text:?} is not an address or address:port"))
}

/// Whether `addr` passes an address filter (`None`: every address).
pub fn addr_matches(filter: Option<(IpAddr, Option<u16>)>, addr: SocketAddr) -> bool {
    filter.is_none_or(|(ip, port)| ip == addr.ip() && port.is_none_or(|p| p == addr.port()))
}

/// Parsed filters: which rows to show. Filters combine (all must match).
pub struct Matcher {
    pub service: Option<String>,
    pub frontend: Option<(IpAddr, Option<u16>)>,
    pub backend: Option<(IpAddr, Option<u16>)>,
}

impl Matcher {
    /// `service`: `namespace/name` or `name`, either with `:port-name`; `frontend`, `backend`:
    /// addresses with or without `:port`.
    pub fn new(service: Option<&str>, frontend: Option<&str>, backend: Option<&str>) -> anyhow::Result<Self> {
        if let Some((_, port)) = service.and_then(|s| s.rsplit_once(':'))
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            bail!(
                "--service takes the port's name (`web:http`), not its number; --frontend takes addresses and ports"
            );
        }
        Ok(Self {
            service: service.map(str::to_owned),
            frontend: frontend.map(parse_addr).transpose()?,
            backend: backend.map(parse_addr).transpose()?,
        })
    }

    /// Fails when a filter `what` does not support was given, rather than ignoring it.
    pub fn only(&self, what: &str, service: bool, frontend: bool, backend: bool) -> anyhow::Result<()> {
        for (given, supported, flag) in [
            (self.service.is_some(), service, "--service"),
            (self.frontend.is_some(), frontend, "--frontend"),
            (self.backend.is_some(), backend, "--backend"),
        ] {
            if given && !supported {
                bail!("inspect {what} does not filter by {flag}");
            }
        }
        Ok(())
    }

    /// Whether a group with Service `label` passes the `--service` filter.
    pub fn service(&self, label: Option<&ServiceLabel>) -> bool {
        match (&self.service, label) {
            (None, _) => true,
            (Some(f), Some(l)) => l.matches(f),
            (Some(_), None) => false,
        }
    }
}

/// A protocol number's name (`TCP`, …, or `proto N`).
pub fn proto_name(p: u8) -> String {
    Protocol::from_number(p).map_or_else(|| format!("proto {p}"), |p| p.to_string())
}

fn state_name(s: u8) -> &'static str {
    match s {
        backend_state::ACTIVE => "active",
        backend_state::TERMINATING => "terminating",
        _ => "unknown",
    }
}

fn kind_name(flags: u32) -> &'static str {
    if flags & frontend_flags::CLUSTER_IP != 0 {
        "ClusterIP"
    } else if flags & frontend_flags::EXTERNAL_IP != 0 {
        "ExternalIP"
    } else if flags & frontend_flags::LOAD_BALANCER != 0 {
        "LoadBalancer"
    } else if flags & frontend_flags::NODE_PORT != 0 {
        "NodePort"
    } else {
        "-"
    }
}

/// The Service names of every group in `state`.
pub fn labels(state: &MapState) -> BTreeMap<u32, ServiceLabel> {
    state.services.iter().map(|(g, n)| (*g, ServiceLabel::decode(n))).collect()
}

/// One backend's place in a slot range: how many slots name it (one, except in a Maglev table).
#[derive(Serialize)]
pub struct Share {
    pub id: u32,
    pub address: String,
    pub state: &'static str,
    /// On this node (no SNAT for packets from outside).
    pub local: bool,
    pub slots: u32,
}

/// The backend id in slot `slot` of `group` (0: the slot is missing).
fn slot_backend(state: &MapState, group: u32, slot: u32) -> u32 {
    state.slots.get(&SlotKey { group, slot }).map_or(0, |s| s.backend)
}

/// The backends of slots `offset+1..=offset+count` of `group`, in order of first appearance.
pub fn shares(state: &MapState, group: u32, (offset, count): (u32, u32)) -> Vec<Share> {
    let mut out: Vec<Share> = Vec::new();
    for slot in slots(offset, count) {
        let id = slot_backend(state, group, slot);
        if let Some(share) = out.iter_mut().find(|s| s.id == id) {
            share.slots += 1;
            continue;
        }
        let backend = state.backends.get(&id);
        out.push(Share {
            id,
            address: backend.map_or_else(|| "(missing)".to_owned(), |b| backend_addr(b).to_string()),
            state: backend.map_or("missing", |b| state_name(b.state)),
            local: backend.is_some_and(|b| b.flags & backend_flags::LOCAL != 0),
            slots: 1,
        });
    }
    out
}

#[derive(Serialize)]
pub struct ServiceRow {
    pub frontend: String,
    pub protocol: String,
    pub kind: &'static str,
    /// The Service port (`None` for maps written by an agent that did not record names).
    pub service: Option<ServiceLabel>,
    pub group: u32,
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` enforced for packets from outside; `None`: every source.
    pub source_ranges: Option<Vec<String>>,
    /// With no backend: `drop` (endpoints exist, none local: EHOSTUNREACH) or `reject`.
    pub when_empty: &'static str,
    /// What this node's own connections (socket hooks) get.
    pub backends: Vec<Share>,
    /// What packets from outside (TC/XDP) get, when it differs (a Local traffic policy, or a
    /// Maglev table).
    pub external_backends: Option<Vec<Share>>,
}

/// One row per frontend that passes the filters.
pub fn service_rows(state: &MapState, m: &Matcher) -> Vec<ServiceRow> {
    let labels = labels(state);
    let mut ranges: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for r in &state.source_ranges {
        ranges.entry(r.group).or_default().push(r.cidr.to_string());
    }
    state
        .frontends
        .iter()
        .filter(|(key, value)| m.service(labels.get(&value.group)) && addr_matches(m.frontend, key.addr()))
        .map(|(key, value)| {
            let (socket, packet) = (value.slot_range(Path::Socket), value.slot_range(Path::Packet));
            ServiceRow {
                frontend: key.addr().to_string(),
                protocol: proto_name(key.proto()),
                kind: kind_name(value.flags),
                service: labels.get(&value.group).cloned(),
                group: value.group,
                affinity_timeout: (value.affinity_timeout != 0).then_some(value.affinity_timeout),
                source_ranges: (value.flags & frontend_flags::SOURCE_RANGES != 0)
                    .then(|| ranges.get(&value.group).cloned().unwrap_or_default()),
                when_empty: match value.when_empty() {
                    WhenEmpty::Drop => "drop",
                    WhenEmpty::Reject => "reject",
                },
                backends: shares(state, value.group, socket),
                external_backends: (packet != socket).then(|| shares(state, value.group, packet)),
            }
        })
        .filter(|row| {
            m.backend.is_none()
                || row
                    .backends
                    .iter()
                    .chain(row.external_backends.iter().flatten())
                    .any(|s| s.address.parse().is_ok_and(|a| addr_matches(m.backend, a)))
        })
        .collect()
}

#[derive(Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    pub protocol: String,
    pub state: &'static str,
    pub local: bool,
    /// Backend groups whose slots name this backend (it takes new connections through them).
    pub groups: Vec<u32>,
    /// Their Service ports.
    pub services: Vec<String>,
}

/// One row per backend that passes the filters.
pub fn backend_rows(state: &MapState, m: &Matcher) -> Vec<BackendRow> {
    let labels = labels(state);
    let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (key, slot) in &state.slots {
        let used = groups.entry(slot.backend).or_default();
        if !used.contains(&key.group) {
            used.push(key.group);
        }
    }
    state
        .backends
        .iter()
        .map(|(id, b)| {
            let groups = groups.get(id).cloned().unwrap_or_default();
            BackendRow {
                id: *id,
                address: backend_addr(b).to_string(),
                protocol: proto_name(b.proto),
                state: state_name(b.state),
                local: b.flags & backend_flags::LOCAL != 0,
                services: groups.iter().filter_map(|g| labels.get(g)).map(ToString::to_string).collect(),
                groups,
            }
        })
        .filter(|row| {
            let used_by = |g: &u32| m.service(labels.get(g));
            row.address.parse().is_ok_and(|a| addr_matches(m.backend, a))
                && (m.service.is_none() || row.groups.iter().any(used_by))
        })
        .collect()
}

#[derive(Serialize)]
pub struct ServiceStatsRow {
    pub group: u32,
    pub service: Option<ServiceLabel>,
    /// `path/verdict` → count (new connections or flows).
    pub counters: BTreeMap<String, u64>,
}

/// The per-Service counters (`LB_SERVICE_STATS`, by group) of the groups that pass the filters.
pub fn service_stats_rows(
    counters: BTreeMap<u32, [u64; service_stats::COUNT as usize]>,
    state: &MapState,
    m: &Matcher,
) -> Vec<ServiceStatsRow> {
    let labels = labels(state);
    let frontends_of = |group: u32| state.frontends.iter().filter(move |(_, v)| v.group == group);
    counters
        .into_iter()
        .filter(|(g, _)| m.service(labels.get(g)))
        .filter(|(g, _)| {
            m.frontend.is_none() || frontends_of(*g).any(|(k, _)| addr_matches(m.frontend, k.addr()))
        })
        .map(|(group, counters)| ServiceStatsRow {
            group,
            service: labels.get(&group).cloned(),
            counters: service_stats::LABELS
                .iter()
                .zip(counters)
                .map(|((path, verdict), n)| (format!("{path}/{verdict}"), n))
                .collect(),
        })
        .collect()
}

/// The tracked flows that pass the filters.
pub fn flow_rows(flows: Vec<FlowRow>, m: &Matcher) -> Vec<FlowRow> {
    flows
        .into_iter()
        .filter(|r| addr_matches(m.frontend, r.frontend) && addr_matches(m.backend, r.backend))
        .collect()
}

/// The affinity entries that pass the filters.
pub fn affinity_rows(entries: Vec<AffinityRow>, state: &MapState, m: &Matcher) -> Vec<AffinityRow> {
    let labels = labels(state);
    entries
        .into_iter()
        .filter(|r| m.service(labels.get(&r.group)))
        .filter(|r| {
            m.backend.is_none()
                || r.backend
                    .as_deref()
                    .and_then(|b| b.parse().ok())
                    .is_some_and(|a| addr_matches(m.backend, a))
        })
        .collect()
}

/// One external group's Maglev table.
#[derive(Serialize)]
pub struct MaglevRow {
    pub service: Option<ServiceLabel>,
    pub group: u32,
    pub frontends: Vec<String>,
    pub size: u32,
    pub backends: Vec<Share>,
    /// Backend id of each table entry, in slot order (JSON only).
    pub table: Vec<u32>,
}

/// The Maglev tables (the packet path's slot range) of the external frontends `query` names:
/// `namespace/name[:port]`, `name[:port]`, or a frontend address.
pub fn maglev_rows(state: &MapState, query: &str) -> anyhow::Result<Vec<MaglevRow>> {
    let labels = labels(state);
    let by_addr = parse_addr(query).ok();
    let external = frontend_flags::EXTERNAL_IP | frontend_flags::LOAD_BALANCER | frontend_flags::NODE_PORT;
    let mut groups: BTreeMap<u32, (Vec<String>, (u32, u32))> = BTreeMap::new();
    for (key, value) in &state.frontends {
        let hit = match by_addr {
            Some(a) => addr_matches(Some(a), key.addr()),
            None => labels.get(&value.group).is_some_and(|l| l.matches(query)),
        };
        if hit && value.flags & external != 0 {
            let entry =
                groups.entry(value.group).or_insert_with(|| (Vec::new(), value.slot_range(Path::Packet)));
            entry.0.push(frontend_text(key));
        }
    }
    if groups.is_empty() {
        bail!(
            "no NodePort, LoadBalancer or external-IP frontend matches {query:?} (ClusterIPs have no Maglev table)"
        );
    }
    Ok(groups
        .into_iter()
        .map(|(group, (frontends, (offset, count)))| MaglevRow {
            service: labels.get(&group).cloned(),
            group,
            frontends,
            size: count,
            backends: shares(state, group, (offset, count)),
            table: slots(offset, count).map(|slot| slot_backend(state, group, slot)).collect(),
        })
        .collect())
}

fn frontend_text(key: &FrontendKey) -> String {
    format!("{}/{}", key.addr(), proto_name(key.proto()))
}

#[cfg(test)]
mod tests {
    use lb_common::{Backend, FrontendValue, SlotValue};

    use super::*;

    /// A NodePort of group 7: socket slots 1..=2 (backends 1, 2), packet slots 3..=6, a Maglev
    /// table naming backend 2 three times and backend 1 once.
    fn state() -> MapState {
        let mut s = MapState::default();
        let key = FrontendKey::new("10.0.0.5".parse().expect("ip"), 30080, Protocol::Tcp);
        let value = FrontendValue {
            group: 7,
            count: 2,
            flags: frontend_flags::NODE_PORT | frontend_flags::DROP_WHEN_EMPTY,
            affinity_timeout: 0,
            ext_offset: 2,
            ext_count: 4,
        };
        s.frontends.insert(key, value);
        for (slot, backend) in [(1, 1), (2, 2), (3, 2), (4, 1), (5, 2), (6, 2)] {
            s.slots.insert(SlotKey { group: 7, slot }, SlotValue { backend });
        }
        for (id, last) in [(1, 1), (2, 2)] {
            let backend = Backend {
                addr: [u32::from_ne_bytes([10, 1, 0, last]), 0, 0, 0],
                port: 8080u16.to_be(),
                proto: 6,
                family: 4,
                state: backend_state::ACTIVE,
                flags: if id == 2 { backend_flags::LOCAL } else { 0 },
                pad: [0; 2],
            };
            s.backends.insert(id, backend);
        }
        s
    }

    #[test]
    fn a_service_row_shows_both_ranges_when_they_differ() {
        let s = state();
        let rows = service_rows(&s, &Matcher::new(None, None, None).expect("matcher"));
        let [row] = rows.as_slice() else { panic!("one row") };
        assert_eq!(row.when_empty, "drop");
        assert_eq!(row.backends.iter().map(|b| (b.id, b.slots)).collect::<Vec<_>>(), [(1, 1), (2, 1)]);
        let external = row.external_backends.as_ref().expect("external range");
        assert_eq!(external.iter().map(|b| (b.id, b.slots)).collect::<Vec<_>>(), [(2, 3), (1, 1)]);
        assert_eq!(external[0].address, "10.1.0.2:8080");
        assert!(external[0].local);
    }

    #[test]
    fn the_maglev_table_is_the_packet_range() {
        let s = state();
        let [row] = maglev_rows(&s, "10.0.0.5:30080").expect("rows").try_into().ok().expect("one row");
        assert_eq!((row.size, row.table), (4, vec![2, 1, 2, 2]));
        assert!(maglev_rows(&s, "10.0.0.6").is_err());
    }

    #[test]
    fn filters() {
        let s = state();
        assert!(Matcher::new(Some("web:80"), None, None).is_err(), "a port number, not a name");
        let m = Matcher::new(None, None, Some("10.1.0.2")).expect("matcher");
        assert_eq!(backend_rows(&s, &m).iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
        assert_eq!(service_rows(&s, &m).len(), 1);
        let m = Matcher::new(None, None, Some("10.1.0.9:8080")).expect("matcher");
        assert!(service_rows(&s, &m).is_empty());
        assert!(m.only("conntrack", false, true, true).is_ok());
        assert!(m.only("stats", true, true, false).is_err());
    }
}
