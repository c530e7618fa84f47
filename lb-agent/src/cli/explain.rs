//! `lb-agent explain`: the kernel's decision for a connection or packet to an address, and why,
//! read from the pinned maps (works while the agent is down). The decision itself is
//! `readback::explain`; this module reads the maps, looks the live tables up, and prints. With
//! the agent running, every endpoint of the Service comes next, used or not and why (the agent's
//! translation, `GET /explain/endpoints` on its metrics address): the maps hold only the ones used.
use std::{io::Read as _, io::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, MapError};
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
    /// The running agent's metrics address (`--metrics-addr`), where it answers why each
    /// endpoint is or is not used; without an agent there, only what the maps hold is shown.
    #[arg(long, default_value = "127.0.0.1:10249")]
    agent: SocketAddr,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// The programs' own tables, looked up in their pins one key at a time.
struct PinnedLive {
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    /// `None`: a datapath from before the conntrack gate.
    gate: Option<Array<MapData, u8>>,
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

    fn gate(&self, index: u32) -> Option<u8> {
        found(lb_common::map_names::CT_GATE, self.gate.as_ref()?.get(&index, 0))
    }
}

pub fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let query = Query::new(args.to, args.from, args.path)?;
    let maps = PinnedMaps::open(&args.bpffs).context("opening the pinned maps")?;
    let state = maps.read().context("reading the pinned maps")?;
    let live = PinnedLive {
        affinity: affinity::open(&args.bpffs).context("opening the affinity map")?,
        conntrack: conntrack::open(&args.bpffs).context("opening the conntrack map")?,
        gate: crate::kernel::ct_gate::open_if_pinned(&args.bpffs).context("opening the conntrack gate")?,
    };
    let explanation = explain::explain(&state, &query, &live, affinity::monotonic_ns());
    let endpoints = endpoints_of(&explanation, &state, args.agent);
    match args.output {
        Output::Json => {
            let mut json = serde_json::to_value(&explanation)?;
            if let Some(object) = json.as_object_mut() {
                match &endpoints {
                    Ok(Some(list)) => {
                        object.insert("endpoints".into(), serde_json::Value::Array(list.clone()));
                    }
                    Ok(None) => {}
                    Err(why) => {
                        object.insert("endpoints_unavailable".into(), why.clone().into());
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        Output::Table => {
            print(&explanation);
            print_endpoints(&endpoints);
        }
    }
    Ok(())
}

/// Every endpoint of the frontend's Service port, family and scope, from the agent at `agent`
/// (`Ok(None)`: not a frontend; `Err`: why the agent cannot say).
fn endpoints_of(
    e: &Explanation,
    state: &crate::layout::state::MapState,
    agent: SocketAddr,
) -> Result<Option<Vec<serde_json::Value>>, String> {
    let Some(f) = &e.frontend else { return Ok(None) };
    let Some(label) = state.services.get(&f.group).map(crate::layout::names::ServiceLabel::decode) else {
        return Ok(None);
    };
    // The set this path uses: the External group's for packets from outside; this node's own
    // connections use the ClusterIP's (to an external frontend: the Cluster set, kube-proxy's
    // short-circuit).
    let scope = if label.scope == "external" && e.path == Path::Packet { "External" } else { "Internal" };
    let family = if f.address.is_ipv4() { "V4" } else { "V6" };
    let body =
        http_get(agent, &format!("/explain/endpoints?namespace={}&name={}", label.namespace, label.name))
            .map_err(|why| {
                format!(
                    "why endpoints are or are not used needs the running agent (its metrics address \
                 {agent}, --agent): {why}; the maps hold only the ones used"
                )
            })?;
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&body).map_err(|e| format!("the agent's answer is not JSON: {e}"))?;
    Ok(Some(
        all.into_iter()
            .filter(|v| {
                v["port"] == label.port.as_str()
                    && v["scope"] == scope
                    && v["family"] == family
                    && v["protocol"].as_str().is_some_and(|p| p.eq_ignore_ascii_case(&label.protocol))
            })
            .collect(),
    ))
}

/// A plain HTTP/1.1 GET on loopback; the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("a truncated answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("it answered {status}: {}", body.trim()));
    }
    Ok(body.to_owned())
}

fn print_endpoints(endpoints: &Result<Option<Vec<serde_json::Value>>, String>) {
    match endpoints {
        Ok(Some(list)) if !list.is_empty() => {
            let mut table = new_table(&["ENDPOINT", "NODE", "USED", "WHY (the agent's translation)"]);
            for v in list {
                let text = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
                table.add_row([
                    text("address"),
                    text("node"),
                    if v["used"] == true { "yes" } else { "no" }.to_owned(),
                    text("reason"),
                ]);
            }
            println!("{table}");
        }
        Ok(_) => {}
        Err(why) => println!("- {why}"),
    }
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
