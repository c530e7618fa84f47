//! `lb-agent inspect`: what the kernel holds, read from the pinned maps (not from the agent).
use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use clap::Subcommand;
use lb_common::{backend_state, frontend_flags};
use serde::Serialize;

use super::new_table;
use crate::{
    Output,
    datapath::{
        maps::{LbMaps as _, PinnedMaps},
        state::{MapState, backend_addr},
    },
    model::Protocol,
};

#[derive(Subcommand)]
pub enum What {
    /// Frontends with their backends.
    Services,
    /// Backend table.
    Backends,
    /// Datapath counters.
    Stats,
    /// Flows the TC programs track (traffic from outside: client → frontend → backend).
    Conntrack,
    /// Session affinity (`sessionAffinity: ClientIP`): which backend each client is kept on.
    Affinity,
}

#[derive(Serialize)]
struct BackendRow {
    id: u32,
    address: String,
    protocol: String,
    state: &'static str,
    /// Backend groups whose slots name this backend (it takes new connections through them).
    groups: Vec<u32>,
}

#[derive(Serialize)]
struct ServiceRow {
    frontend: String,
    protocol: String,
    kind: &'static str,
    group: u32,
    affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` enforced for packets from outside; `None`: every source.
    source_ranges: Option<Vec<String>>,
    backends: Vec<SlotRow>,
}

#[derive(Serialize)]
struct SlotRow {
    slot: u32,
    id: u32,
    address: String,
    state: &'static str,
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

fn service_rows(state: &MapState) -> Vec<ServiceRow> {
    let mut ranges: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for r in &state.source_ranges {
        ranges.entry(r.group).or_default().push(r.cidr.to_string());
    }
    state
        .frontends
        .iter()
        .map(|(key, value)| ServiceRow {
            frontend: key.addr().to_string(),
            protocol: proto_name(key.proto()),
            kind: kind_name(value.flags),
            group: value.group,
            affinity_timeout: (value.affinity_timeout != 0).then_some(value.affinity_timeout),
            source_ranges: (value.flags & frontend_flags::SOURCE_RANGES != 0)
                .then(|| ranges.get(&value.group).cloned().unwrap_or_default()),
            backends: (1..=value.count)
                .map(|slot| {
                    let id = state
                        .slots
                        .get(&lb_common::SlotKey { group: value.group, slot })
                        .map_or(0, |s| s.backend);
                    let backend = state.backends.get(&id);
                    SlotRow {
                        slot,
                        id,
                        address: backend
                            .map_or_else(|| "(missing)".to_owned(), |b| backend_addr(b).to_string()),
                        state: backend.map_or("missing", |b| state_name(b.state)),
                    }
                })
                .collect(),
        })
        .collect()
}

fn backend_rows(state: &MapState) -> Vec<BackendRow> {
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
        .map(|(id, b)| BackendRow {
            id: *id,
            address: backend_addr(b).to_string(),
            protocol: proto_name(b.proto),
            state: state_name(b.state),
            groups: groups.get(id).cloned().unwrap_or_default(),
        })
        .collect()
}

pub fn inspect(what: What, bpffs: &Path, output: Output) -> anyhow::Result<()> {
    if matches!(what, What::Conntrack) {
        return conntrack(bpffs, output);
    }
    let maps = PinnedMaps::open(bpffs).context("opening the pinned maps")?;
    let state = maps.read().context("reading the pinned maps")?;
    match (what, output) {
        (What::Services, Output::Json) => {
            println!("{}", serde_json::to_string_pretty(&service_rows(&state))?)
        }
        (What::Services, Output::Table) => {
            let mut table = new_table(&["FRONTEND", "PROTO", "KIND", "GROUP", "AFFINITY", "BACKENDS"]);
            for row in service_rows(&state) {
                let backends = if row.backends.is_empty() {
                    "(none: connections refused)".to_owned()
                } else {
                    row.backends
                        .iter()
                        .map(|s| format!("{} ({})", s.address, s.state))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let affinity = row.affinity_timeout.map_or_else(|| "-".to_owned(), |t| format!("{t}s"));
                let kind = match &row.source_ranges {
                    Some(ranges) => format!("{}\nfrom {}", row.kind, ranges.join("\n     ")),
                    None => row.kind.to_owned(),
                };
                table.add_row([row.frontend, row.protocol, kind, row.group.to_string(), affinity, backends]);
            }
            println!("{table}");
        }
        (What::Backends, Output::Json) => {
            println!("{}", serde_json::to_string_pretty(&backend_rows(&state))?)
        }
        (What::Backends, Output::Table) => {
            let mut table = new_table(&["ID", "ADDRESS", "PROTO", "STATE", "GROUPS"]);
            for row in backend_rows(&state) {
                let groups = row.groups.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
                table.add_row([row.id.to_string(), row.address, row.protocol, row.state.to_owned(), groups]);
            }
            println!("{table}");
        }
        (What::Conntrack, _) => unreachable!("handled above"),
        (What::Affinity, output) => affinity(bpffs, &state, output)?,
        (What::Stats, output) => {
            let stats = maps.stats()?;
            match output {
                Output::Json => {
                    let map: BTreeMap<_, _> = stats.into_iter().collect();
                    println!("{}", serde_json::to_string_pretty(&map)?);
                }
                Output::Table => {
                    let mut table = new_table(&["COUNTER", "VALUE"]);
                    for (name, value) in stats {
                        table.add_row([name.to_owned(), value.to_string()]);
                    }
                    println!("{table}");
                }
            }
        }
    }
    Ok(())
}

fn conntrack(bpffs: &Path, output: Output) -> anyhow::Result<()> {
    let rows = crate::datapath::conntrack::flows(bpffs).context("reading the conntrack map")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
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
        }
    }
    Ok(())
}

fn affinity(bpffs: &Path, state: &MapState, output: Output) -> anyhow::Result<()> {
    let rows = crate::datapath::affinity::entries(bpffs, state).context("reading the affinity map")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            let mut table = new_table(&["GROUP", "CLIENT", "BACKEND", "SLOT", "IDLE", "TIMEOUT", "STATE"]);
            for r in rows {
                table.add_row([
                    r.group.to_string(),
                    r.client,
                    r.backend.unwrap_or_else(|| format!("id {} (gone)", r.backend_id)),
                    r.slot.to_string(),
                    format!("{:.1}s", r.idle_ms as f64 / 1000.0),
                    r.timeout_seconds.map_or_else(|| "-".to_owned(), |t| format!("{t}s")),
                    r.state.to_owned(),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}
