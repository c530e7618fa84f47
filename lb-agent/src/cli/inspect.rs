//! `lb-agent inspect`: what the kernel holds, read from the pinned maps (not from the agent), with
//! the Service names the agent stored (`LB_SERVICES`) next to the numbers.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use lb_common::{FrontendValue, backend_flags, backend_state, frontend_flags, service_stats};
use serde::Serialize;

use super::new_table;
use crate::{
    cli::Output,
    kernel::maps::{LbMaps as _, PinnedMaps},
    layout::{
        names::ServiceLabel,
        state::{FrontendKey, MapState, backend_addr},
    },
    model::Protocol,
};

#[derive(Subcommand)]
pub enum What {
    /// Frontends with their Service and backends.
    Services(Filter),
    /// Backend table, with the Services that use each backend.
    Backends(Filter),
    /// Datapath counters: totals, then per Service port by path and verdict.
    Stats(Filter),
    /// Flows the TC programs track (traffic from outside: client → frontend → backend).
    Conntrack(Filter),
    /// Session affinity (`sessionAffinity: ClientIP`): which backend each client is kept on.
    Affinity(Filter),
    /// The Maglev table of a Service's external frontends: each backend's share of the slots
    /// (`--output json`: the whole table, slot by slot).
    Maglev {
        /// `namespace/name[:port]`, `name[:port]`, or a frontend address (`10.0.0.5:30080`).
        service: String,
    },
}

/// Which rows to print. Filters combine (all must match).
#[derive(Args, Default, Clone)]
pub struct Filter {
    /// Service: `namespace/name`, `name`, either with `:port-name` (the port's name).
    #[arg(long)]
    service: Option<String>,
    /// Frontend address, with or without `:port`.
    #[arg(long)]
    frontend: Option<String>,
    /// Backend address, with or without `:port`.
    #[arg(long)]
    backend: Option<String>,
}

/// An address filter: `10.0.0.1`, `10.0.0.1:80`, `fd00::1`, `[fd00::1]:80`.
fn parse_addr(text: &str) -> anyhow::Result<(IpAddr, Option<u16>)> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    let ip = text.trim_start_matches('[').trim_end_matches(']');
    ip.parse().map(|ip| (ip, None)).with_context(|| format!("{text:?} is not an address or address:port"))
}

fn addr_matches(filter: Option<(IpAddr, Option<u16>)>, addr: SocketAddr) -> bool {
    filter.is_none_or(|(ip, port)| ip == addr.ip() && port.is_none_or(|p| p == addr.port()))
}

/// Parsed filters.
struct Matcher {
    service: Option<String>,
    frontend: Option<(IpAddr, Option<u16>)>,
    backend: Option<(IpAddr, Option<u16>)>,
}

impl Matcher {
    fn new(f: &Filter) -> anyhow::Result<Self> {
        if let Some((_, port)) = f.service.as_deref().and_then(|s| s.rsplit_once(':'))
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            bail!(
                "--service takes the port's name (`web:http`), not its number; --frontend takes addresses and ports"
            );
        }
        Ok(Self {
            service: f.service.clone(),
            frontend: f.frontend.as_deref().map(parse_addr).transpose()?,
            backend: f.backend.as_deref().map(parse_addr).transpose()?,
        })
    }

    /// Fails when a filter `what` does not support was given, rather than ignoring it.
    fn only(&self, what: &str, service: bool, frontend: bool, backend: bool) -> anyhow::Result<()> {
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

    fn service(&self, label: Option<&ServiceLabel>) -> bool {
        match (&self.service, label) {
            (None, _) => true,
            (Some(f), Some(l)) => l.matches(f),
            (Some(_), None) => false,
        }
    }
}

fn proto_name(p: u8) -> String {
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
fn labels(state: &MapState) -> BTreeMap<u32, ServiceLabel> {
    state.services.iter().map(|(g, n)| (*g, ServiceLabel::decode(n))).collect()
}

/// One backend's place in a slot range: how many slots name it (one, except in a Maglev table).
#[derive(Serialize)]
struct Share {
    id: u32,
    address: String,
    state: &'static str,
    /// On this node (no SNAT for packets from outside).
    local: bool,
    slots: u32,
}

/// The backends of slots `offset+1..=offset+count` of `group`, in order of first appearance.
fn shares(state: &MapState, group: u32, offset: u32, count: u32) -> Vec<Share> {
    let mut out: Vec<Share> = Vec::new();
    for slot in offset + 1..=offset + count {
        let id = state.slots.get(&lb_common::SlotKey { group, slot }).map_or(0, |s| s.backend);
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
struct ServiceRow {
    frontend: String,
    protocol: String,
    kind: &'static str,
    /// The Service port (`None` for maps written by an agent that did not record names).
    service: Option<ServiceLabel>,
    group: u32,
    affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` enforced for packets from outside; `None`: every source.
    source_ranges: Option<Vec<String>>,
    /// With no backend: `drop` (endpoints exist, none local: EHOSTUNREACH) or `reject`.
    when_empty: &'static str,
    /// What this node's own connections (socket hooks) get.
    backends: Vec<Share>,
    /// What packets from outside (TC/XDP) get, when it differs (a Local traffic policy, or a
    /// Maglev table).
    external_backends: Option<Vec<Share>>,
}

fn service_rows(state: &MapState, m: &Matcher) -> Vec<ServiceRow> {
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
            let backends = shares(state, value.group, 0, value.count);
            let shared = (value.ext_offset, value.ext_count) == (0, value.count);
            ServiceRow {
                frontend: key.addr().to_string(),
                protocol: proto_name(key.proto()),
                kind: kind_name(value.flags),
                service: labels.get(&value.group).cloned(),
                group: value.group,
                affinity_timeout: (value.affinity_timeout != 0).then_some(value.affinity_timeout),
                source_ranges: (value.flags & frontend_flags::SOURCE_RANGES != 0)
                    .then(|| ranges.get(&value.group).cloned().unwrap_or_default()),
                when_empty: if value.flags & frontend_flags::DROP_WHEN_EMPTY != 0 {
                    "drop"
                } else {
                    "reject"
                },
                backends,
                external_backends: (!shared)
                    .then(|| shares(state, value.group, value.ext_offset, value.ext_count)),
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

fn shares_text(shares: &[Share]) -> String {
    if shares.is_empty() {
        return "(none)".to_owned();
    }
    let total: u32 = shares.iter().map(|s| s.slots).sum();
    shares
        .iter()
        .map(|s| {
            let local = if s.local { ", local" } else { "" };
            let part = if total as usize == shares.len() {
                String::new()
            } else {
                format!(" {:.1}%", f64::from(s.slots) * 100.0 / f64::from(total))
            };
            format!("{} ({}{local}){part}", s.address, s.state)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Serialize)]
struct BackendRow {
    id: u32,
    address: String,
    protocol: String,
    state: &'static str,
    local: bool,
    /// Backend groups whose slots name this backend (it takes new connections through them).
    groups: Vec<u32>,
    /// Their Service ports.
    services: Vec<String>,
}

fn backend_rows(state: &MapState, m: &Matcher) -> Vec<BackendRow> {
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
struct ServiceStatsRow {
    group: u32,
    service: Option<ServiceLabel>,
    /// `path/verdict` → count (new connections or flows).
    counters: BTreeMap<String, u64>,
}

fn print<T: Serialize>(rows: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(rows)?);
    Ok(())
}

pub fn inspect(what: What, bpffs: &Path, output: Output) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(bpffs).context("opening the pinned maps")?;
    let state = maps.read().context("reading the pinned maps")?;
    match what {
        What::Services(f) => services(&state, &Matcher::new(&f)?, output),
        What::Backends(f) => {
            let m = Matcher::new(&f)?;
            m.only("backends", true, false, true)?;
            let rows = backend_rows(&state, &m);
            if matches!(output, Output::Json) {
                return print(&rows);
            }
            let mut table = new_table(&["ID", "ADDRESS", "PROTO", "STATE", "SERVICES"]);
            for row in rows {
                let state = if row.local { format!("{}, local", row.state) } else { row.state.to_owned() };
                let services = if row.services.is_empty() {
                    row.groups.iter().map(|g| format!("group {g}")).collect::<Vec<_>>().join("\n")
                } else {
                    row.services.join("\n")
                };
                table.add_row([row.id.to_string(), row.address, row.protocol, state, services]);
            }
            println!("{table}");
            Ok(())
        }
        What::Stats(f) => {
            let m = Matcher::new(&f)?;
            m.only("stats", true, true, false)?;
            stats(&maps, &state, &m, output)
        }
        What::Conntrack(f) => {
            let m = Matcher::new(&f)?;
            m.only("conntrack", false, true, true)?;
            conntrack(bpffs, &m, output)
        }
        What::Affinity(f) => {
            let m = Matcher::new(&f)?;
            m.only("affinity", true, false, true)?;
            affinity(bpffs, &state, &m, output)
        }
        What::Maglev { service } => maglev(&state, &service, output),
    }
}

fn services(state: &MapState, m: &Matcher, output: Output) -> anyhow::Result<()> {
    let rows = service_rows(state, m);
    if matches!(output, Output::Json) {
        return print(&rows);
    }
    let mut table = new_table(&["FRONTEND", "PROTO", "KIND", "SERVICE", "AFFINITY", "BACKENDS"]);
    for row in rows {
        let mut backends = if row.backends.is_empty() {
            match row.when_empty {
                "drop" => "(none local: dropped, EHOSTUNREACH)".to_owned(),
                _ => "(none: connections refused)".to_owned(),
            }
        } else {
            shares_text(&row.backends)
        };
        if let Some(external) = &row.external_backends {
            backends = format!("{backends}\nfrom outside:\n{}", shares_text(external));
        }
        let affinity = row.affinity_timeout.map_or_else(|| "-".to_owned(), |t| format!("{t}s"));
        let kind = match &row.source_ranges {
            Some(ranges) => format!("{}\nfrom {}", row.kind, ranges.join("\n     ")),
            None => row.kind.to_owned(),
        };
        let service = row.service.as_ref().map_or_else(
            || format!("group {}", row.group),
            |l| format!("{l}\ngroup {} {}", row.group, l.scope),
        );
        table.add_row([row.frontend, row.protocol, kind, service, affinity, backends]);
    }
    println!("{table}");
    Ok(())
}

fn stats(maps: &PinnedMaps, state: &MapState, m: &Matcher, output: Output) -> anyhow::Result<()> {
    let totals = maps.stats()?;
    let labels = labels(state);
    let frontends_of = |group: u32| state.frontends.iter().filter(move |(_, v)| v.group == group);
    let per_service: Vec<ServiceStatsRow> = maps
        .service_stats()?
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
        .collect();
    if matches!(output, Output::Json) {
        #[derive(Serialize)]
        struct All {
            totals: BTreeMap<&'static str, u64>,
            services: Vec<ServiceStatsRow>,
        }
        return print(&All { totals: totals.into_iter().collect(), services: per_service });
    }
    let mut table = new_table(&["COUNTER", "VALUE"]);
    for (name, value) in totals {
        table.add_row([name.to_owned(), value.to_string()]);
    }
    println!("{table}");
    let mut table = new_table(&["SERVICE", "GROUP", "PATH", "VERDICT", "COUNT"]);
    for row in per_service {
        let name = row.service.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
        let mut any = false;
        for (key, n) in &row.counters {
            if *n == 0 {
                continue;
            }
            any = true;
            let (path, verdict) = key.split_once('/').unwrap_or((key, ""));
            table.add_row([
                name.clone(),
                row.group.to_string(),
                path.to_owned(),
                verdict.to_owned(),
                n.to_string(),
            ]);
        }
        if !any {
            table.add_row([name, row.group.to_string(), "-".to_owned(), "-".to_owned(), "0".to_owned()]);
        }
    }
    println!("{table}");
    Ok(())
}

fn conntrack(bpffs: &Path, m: &Matcher, output: Output) -> anyhow::Result<()> {
    let rows: Vec<_> = crate::readback::conntrack::flows(bpffs)
        .context("reading the conntrack map")?
        .into_iter()
        .filter(|r| addr_matches(m.frontend, r.frontend) && addr_matches(m.backend, r.backend))
        .collect();
    if matches!(output, Output::Json) {
        return print(&rows);
    }
    let mut table = new_table(&["PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "STATE", "IDLE"]);
    for r in rows {
        let idle = if r.live { format!("{}s", r.idle_seconds) } else { "expired".to_owned() };
        table.add_row([
            proto_name(r.protocol),
            r.client.to_string(),
            r.frontend.to_string(),
            r.backend.to_string(),
            r.snat.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            r.state.to_owned(),
            idle,
        ]);
    }
    println!("{table}");
    Ok(())
}

fn affinity(bpffs: &Path, state: &MapState, m: &Matcher, output: Output) -> anyhow::Result<()> {
    let labels = labels(state);
    let rows: Vec<_> = crate::readback::affinity::entries(bpffs, state)
        .context("reading the affinity map")?
        .into_iter()
        .filter(|r| m.service(labels.get(&r.group)))
        .filter(|r| {
            m.backend.is_none()
                || r.backend
                    .as_deref()
                    .and_then(|b| b.parse().ok())
                    .is_some_and(|a| addr_matches(m.backend, a))
        })
        .collect();
    if matches!(output, Output::Json) {
        return print(&rows);
    }
    let mut table = new_table(&["SERVICE", "CLIENT", "BACKEND", "SLOT", "IDLE", "TIMEOUT", "STATE"]);
    for r in rows {
        let service = labels.get(&r.group).map_or_else(|| format!("group {}", r.group), ToString::to_string);
        table.add_row([
            service,
            r.client,
            r.backend.unwrap_or_else(|| format!("id {} (gone)", r.backend_id)),
            r.slot.to_string(),
            format!("{:.1}s", r.idle_ms as f64 / 1000.0),
            r.timeout_seconds.map_or_else(|| "-".to_owned(), |t| format!("{t}s")),
            r.state.to_owned(),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// One external group's Maglev table.
#[derive(Serialize)]
struct MaglevRow {
    service: Option<ServiceLabel>,
    group: u32,
    frontends: Vec<String>,
    size: u32,
    backends: Vec<Share>,
    /// Backend id of each table entry, in slot order (JSON only).
    table: Vec<u32>,
}

/// The external slot range of a group's frontends: where its Maglev table lives.
fn external_range(v: &FrontendValue) -> (u32, u32) {
    (v.ext_offset, v.ext_count)
}

fn maglev(state: &MapState, query: &str, output: Output) -> anyhow::Result<()> {
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
            let entry = groups.entry(value.group).or_insert_with(|| (Vec::new(), external_range(value)));
            entry.0.push(frontend_text(key));
        }
    }
    if groups.is_empty() {
        bail!(
            "no NodePort, LoadBalancer or external-IP frontend matches {query:?} (ClusterIPs have no Maglev table)"
        );
    }
    let rows: Vec<MaglevRow> = groups
        .into_iter()
        .map(|(group, (frontends, (offset, count)))| MaglevRow {
            service: labels.get(&group).cloned(),
            group,
            frontends,
            size: count,
            backends: shares(state, group, offset, count),
            table: (offset + 1..=offset + count)
                .map(|slot| state.slots.get(&lb_common::SlotKey { group, slot }).map_or(0, |s| s.backend))
                .collect(),
        })
        .collect();
    if matches!(output, Output::Json) {
        return print(&rows);
    }
    for row in rows {
        let name = row.service.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
        let distinct = row.backends.len() as u32;
        let kind = if row.size > distinct { "Maglev table" } else { "one slot per backend (not Maglev)" };
        println!(
            "{name} (group {}): {kind} of {} slots, frontends {}",
            row.group,
            row.size,
            row.frontends.join(", ")
        );
        let mut table = new_table(&["BACKEND", "STATE", "SLOTS", "SHARE"]);
        for s in row.backends {
            let state = if s.local { format!("{}, local", s.state) } else { s.state.to_owned() };
            let share = f64::from(s.slots) * 100.0 / f64::from(row.size.max(1));
            table.add_row([s.address, state, s.slots.to_string(), format!("{share:.2}%")]);
        }
        println!("{table}");
    }
    Ok(())
}

fn frontend_text(key: &FrontendKey) -> String {
    format!("{}/{}", key.addr(), proto_name(key.proto()))
}
