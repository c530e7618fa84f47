//! `lb-agent status`: how this node's load balancer is doing, from the pins alone (works while
//! the agent is down): the agent's own record (`LB_AGENT`), the attached programs and where, and
//! each map's fill level against its capacity.
use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use lb_common::{AgentStatus, SCHEMA_VERSION, source_state, sync_result};
use serde::Serialize;

use super::new_table;
use crate::{
    cli::Output,
    kernel::{
        maps::PinnedMaps,
        pinned::{self, LinkRow, MapRow},
    },
};

#[derive(Serialize)]
struct Status {
    agent: AgentRow,
    programs: Vec<LinkRow>,
    maps: Vec<MapRow>,
}

#[derive(Serialize)]
struct AgentRow {
    /// `running`, `stopped`, or `never ran` (no record).
    state: &'static str,
    pid: Option<u32>,
    ready: bool,
    /// Schema version of the pinned maps, as the agent that wrote them recorded it.
    schema: u32,
    /// This CLI's schema version.
    cli_schema: u32,
    source: &'static str,
    started_unix_ms: Option<u64>,
    last_sync_unix_ms: Option<u64>,
    last_sync_result: &'static str,
    last_sync_duration_us: u64,
    last_applied_unix_ms: Option<u64>,
    syncs: u64,
    failed_syncs: u64,
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "lb-agent")
}

fn agent_row(r: &AgentStatus) -> AgentRow {
    let ms = |t: u64| (t != 0).then_some(t);
    AgentRow {
        state: if r.pid == 0 {
            "never ran"
        } else if running(r.pid) {
            "running"
        } else {
            "stopped"
        },
        pid: (r.pid != 0).then_some(r.pid),
        ready: r.ready != 0,
        schema: r.schema,
        cli_schema: SCHEMA_VERSION,
        source: match r.source {
            source_state::FILE => "file",
            source_state::LISTING => "kubernetes: listing",
            source_state::WATCHING => "kubernetes: watching",
            source_state::RECONNECTING => "kubernetes: reconnecting (maps keep their last state)",
            _ => "unknown",
        },
        started_unix_ms: ms(r.started_ms),
        last_sync_unix_ms: ms(r.last_sync_ms),
        last_sync_result: match r.last_result {
            sync_result::APPLIED => "applied",
            sync_result::SOURCE_INVALID => "source invalid (last good state kept)",
            sync_result::MAPS_FAILED => "map write failed (retrying)",
            sync_result::MAPS_FULL => "does not fit the maps: nothing written (see the agent log)",
            _ => "none",
        },
        last_sync_duration_us: r.last_sync_us,
        last_applied_unix_ms: ms(r.last_applied_ms),
        syncs: r.syncs,
        failed_syncs: r.failed_syncs,
    }
}

/// `12s ago` for a Unix time in milliseconds.
fn ago(unix_ms: Option<u64>) -> String {
    let Some(t) = unix_ms else { return "never".to_owned() };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let then = Duration::from_millis(t);
    match now.checked_sub(then) {
        Some(d) if d.as_secs() >= 120 => format!("{}m ago", d.as_secs() / 60),
        Some(d) => format!("{:.1}s ago", d.as_secs_f64()),
        None => "just now".to_owned(),
    }
}

pub fn status(bpffs: &Path, output: Output) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(bpffs).context("opening the pinned maps")?;
    let record = maps.agent_status().context("reading the agent record")?;
    let status = Status {
        agent: agent_row(&record),
        programs: pinned::links(bpffs).context("reading the pinned links")?,
        maps: pinned::maps(bpffs).context("reading the pinned maps")?,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Table => print_table(&status),
    }
    Ok(())
}

fn print_table(s: &Status) {
    let a = &s.agent;
    let pid = a.pid.map_or_else(String::new, |p| format!(" (pid {p})"));
    let ready = if a.ready { "ready" } else { "not ready" };
    println!("agent:      {}{pid}, {ready}", a.state);
    let schema_note = if a.schema == a.cli_schema || a.pid.is_none() {
        String::new()
    } else {
        format!(" (this CLI reads schema {})", a.cli_schema)
    };
    println!("schema:     {}{schema_note}", a.schema);
    println!("source:     {}", a.source);
    println!(
        "last sync:  {} {} (took {:.1} ms); {} syncs, {} failed; last applied {}",
        a.last_sync_result,
        ago(a.last_sync_unix_ms),
        a.last_sync_duration_us as f64 / 1000.0,
        a.syncs,
        a.failed_syncs,
        ago(a.last_applied_unix_ms),
    );
    let mut programs =
        new_table(&["PROGRAM", "HOOK", "ATTACHED TO", "LINK", "PROGRAM ID", "INSNS (VERIFIED)"]);
    let count = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for p in &s.programs {
        programs.add_row([
            p.program.clone(),
            format!("{} ({})", p.kind, p.pin),
            p.target.clone(),
            p.link_id.to_string(),
            p.program_id.to_string(),
            format!("{} ({})", count(p.instructions), count(p.verified)),
        ]);
    }
    println!("{programs}");
    let mut maps = new_table(&["MAP", "TYPE", "ENTRIES", "CAPACITY", "FILL", "SCHEMA"]);
    for m in &s.maps {
        let fill = if m.capacity == 0 { 0.0 } else { m.entries as f64 * 100.0 / f64::from(m.capacity) };
        maps.add_row([
            m.name.to_owned(),
            m.kind.to_owned(),
            m.entries.to_string(),
            m.capacity.to_string(),
            format!("{fill:.1}%"),
            m.schema.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        ]);
    }
    println!("{maps}");
}
