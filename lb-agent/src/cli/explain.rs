//! `lb-agent explain`: the kernel's decision for a connection or packet to an address, and why,
//! read from the pinned maps (works while the agent is down). The decision itself is
//! `readback::explain`; this module reads the maps, looks the live tables up, and prints.
use std::path::PathBuf;

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, MapError};
use clap::Args;
use lb_common::{AffinityKey, AffinityValue, CtKey, CtValue};

use super::new_table;
use crate::{
    cli::Output,
    kernel::maps::{LbMaps as _, PinnedMaps},
    readback::{
        affinity, conntrack,
        explain::{self, Explanation, LiveTables, Path, Query, Source, Target, Verdict},
    },
};

#[derive(Args)]
pub struct ExplainArgs {
    /// The destination: ADDR:PORT/PROTO, e.g. 10.96.0.10:80/TCP or [fd00::10]:53/udp.
    #[arg(long)]
    to: Target,
    /// The client: ADDR or ADDR:PORT ([IPv6]:PORT). On the packet path its address is checked
    /// against loadBalancerSourceRanges and looked up for session affinity, and with a port the
    /// flow hash names the exact slot and backend.
    #[arg(long)]
    from: Option<Source>,
    /// `socket`: this node's own connections (cgroup hooks); `packet`: packets arriving on the
    /// agent's --interfaces (TC/XDP). Default: packet with --from, else socket.
    #[arg(long, value_enum)]
    path: Option<Path>,
    /// Directory the agent pins its maps under.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// The programs' own tables, looked up in their pins one key at a time.
struct PinnedLive {
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
}

/// A lookup's value; a failed read other than "no such key" is logged and taken as absent.
fn found<V>(name: &str, result: Result<V, MapError>) -> Option<V> {
    match result {
        Ok(v) => Some(v),
        Err(MapError::KeyNotFound) => None,
        Err(e) => {
            tracing::warn!("reading {name}: {e}; taken as no entry");
            None
        }
    }
}

impl LiveTables for PinnedLive {
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
        found(lb_common::map_names::AFFINITY, self.affinity.get(key, 0))
    }

    fn flow(&self, key: &CtKey) -> Option<CtValue> {
        found(lb_common::map_names::CONNTRACK, self.conntrack.get(key, 0))
    }
}

pub fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let query = Query::new(args.to, args.from, args.path)?;
    let maps = PinnedMaps::open(&args.bpffs).context("opening the pinned maps")?;
    let state = maps.read().context("reading the pinned maps")?;
    let live = PinnedLive {
        affinity: affinity::open(&args.bpffs).context("opening the affinity map")?,
        conntrack: conntrack::open(&args.bpffs).context("opening the conntrack map")?,
    };
    let explanation = explain::explain(&state, &query, &live, affinity::monotonic_ns());
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
        Output::Table => print(&explanation),
    }
    Ok(())
}

fn print(e: &Explanation) {
    let from = e.from.as_ref().map_or_else(String::new, |f| format!(" from {f}"));
    println!("{}{from}, {} path", e.to, e.path);
    println!("→ {}", e.summary);
    if let Some(f) = &e.frontend {
        let mut table = new_table(&["FRONTEND", "KIND", "SERVICE", "GROUP", "SLOTS", "AFFINITY"]);
        let slots = f.slots.map_or_else(
            || "none".to_owned(),
            |[a, b]| if f.table == "maglev" { format!("{a}..={b} (Maglev)") } else { format!("{a}..={b}") },
        );
        table.add_row([
            format!("{}/{}", f.address, f.protocol),
            f.kind.map_or("-", |k| k.name()).to_owned(),
            f.service.clone().unwrap_or_else(|| "-".to_owned()),
            f.group.to_string(),
            slots,
            f.affinity_timeout.map_or_else(|| "-".to_owned(), |t| format!("{t}s")),
        ]);
        println!("{table}");
    }
    let chosen = match &e.verdict {
        Verdict::Translate { backend: Some(b), .. } => Some(b.id),
        _ => None,
    };
    if !e.eligible.is_empty() {
        let mut table = new_table(&["ELIGIBLE BACKEND", "ID", "STATE", "NODE", "SLOTS", "SHARE", ""]);
        for b in &e.eligible {
            let node = match (b.backend.local, b.snat) {
                (true, _) => "local",
                (false, Some(true)) => "remote (SNAT)",
                (false, _) => "remote",
            };
            table.add_row([
                b.backend.address.to_string(),
                b.backend.id.to_string(),
                b.backend.state.to_owned(),
                node.to_owned(),
                b.slots.to_string(),
                format!("{:.1}%", b.share_percent),
                if chosen == Some(b.backend.id) { "◀ chosen" } else { "" }.to_owned(),
            ]);
        }
        println!("{table}");
    }
    if !e.not_eligible.is_empty() {
        let mut table = new_table(&["NOT ELIGIBLE", "ID", "STATE", "WHY"]);
        for n in &e.not_eligible {
            table.add_row([
                n.backend.address.to_string(),
                n.backend.id.to_string(),
                n.backend.state.to_owned(),
                n.reason.clone(),
            ]);
        }
        println!("{table}");
    }
    for note in &e.notes {
        println!("- {note}");
    }
}
