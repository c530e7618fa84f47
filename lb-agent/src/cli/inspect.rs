//! `lb-agent inspect`: what the kernel holds, read from the pinned maps (not from the agent), with
//! the Service names the agent stored (`LB_SERVICES`) next to the numbers. The rows are
//! `readback::inspect`; this module reads the maps, filters and prints.
use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::new_table;
use crate::{
    cli::Output,
    kernel::maps::{LbMaps as _, PinnedMaps},
    layout::state::MapState,
    readback::inspect::{
        Matcher, ServiceStatsRow, Share, affinity_rows, backend_rows, flow_rows, labels, maglev_rows,
        proto_name, service_rows, service_stats_rows,
    },
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

fn print<T: Serialize>(rows: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(rows)?);
    Ok(())
}

impl Filter {
    fn matcher(&self) -> anyhow::Result<Matcher> {
        Matcher::new(self.service.as_deref(), self.frontend.as_deref(), self.backend.as_deref())
    }
}

pub fn inspect(what: What, bpffs: &Path, output: Output) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(bpffs).context("opening the pinned maps")?;
    let state = maps.read().context("reading the pinned maps")?;
    match what {
        What::Services(f) => services(&state, &f.matcher()?, output),
        What::Backends(f) => {
            let m = f.matcher()?;
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
            let m = f.matcher()?;
            m.only("stats", true, true, false)?;
            stats(&maps, &state, &m, output)
        }
        What::Conntrack(f) => {
            let m = f.matcher()?;
            m.only("conntrack", false, true, true)?;
            conntrack(bpffs, &m, output)
        }
        What::Affinity(f) => {
            let m = f.matcher()?;
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
    let per_service = service_stats_rows(maps.service_stats()?, state, m);
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
    let rows = flow_rows(crate::readback::conntrack::flows(bpffs).context("reading the conntrack map")?, m);
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
    let entries = crate::readback::affinity::entries(bpffs, state).context("reading the affinity map")?;
    let rows = affinity_rows(entries, state, m);
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

fn maglev(state: &MapState, query: &str, output: Output) -> anyhow::Result<()> {
    let rows = maglev_rows(state, query)?;
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
