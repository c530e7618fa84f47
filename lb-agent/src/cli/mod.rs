//! One module per command; each is a thin function over the library modules.
pub mod explain;
pub mod inspect;
pub mod log;
pub mod logging;
pub mod plan;
pub mod run;
pub mod status;
pub mod trace;

use std::path::Path;

use anyhow::bail;
use serde::Serialize;

use crate::{
    kernel::{attached::attached_programs, loader},
    kube_proxy_cleanup,
};

/// How a command prints: a table for people, JSON for scripts.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Where `cleanup` looks for pins when `--bpffs` is not given.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf/lb";

/// `lb-agent cleanup`: the agent's pins (when `bpffs` is given, or when `kube_proxy` is not, at
/// the default path), then kube-proxy's leftovers (when `kube_proxy`).
pub fn cleanup(bpffs: Option<&Path>, cgroup: Option<&Path>, kube_proxy: bool) -> anyhow::Result<()> {
    if bpffs.is_some() || !kube_proxy {
        let bpffs = bpffs.unwrap_or(Path::new(DEFAULT_BPFFS));
        let removed = loader::cleanup(bpffs)?;
        if removed.is_empty() {
            println!("nothing to remove under {}", bpffs.display());
        }
        for path in removed {
            println!("removed {}", path.display());
        }
    }
    if kube_proxy {
        let removed = kube_proxy_cleanup::cleanup()?;
        if removed.is_empty() {
            println!("no kube-proxy chains, rules or tables to remove");
        }
        for thing in removed {
            println!("removed {thing}");
        }
    }
    if let Some(cgroup) = cgroup {
        // The kernel releases an unpinned link from a work queue: give it a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let ours = loop {
            let ours: Vec<_> =
                attached_programs(cgroup)?.into_iter().filter(|a| a.name.starts_with("lb_")).collect();
            if ours.is_empty() || std::time::Instant::now() > deadline {
                break ours;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if !ours.is_empty() {
            let list: Vec<String> =
                ours.iter().map(|a| format!("{} (id {}) at {}", a.name, a.program_id, a.hook)).collect();
            bail!(
                "still attached to {}: {}; a running lb-agent holds them: stop it and run cleanup again",
                cgroup.display(),
                list.join(", ")
            );
        }
        println!("no lb programs attached to {}", cgroup.display());
    }
    Ok(())
}

#[derive(Serialize)]
struct AttachedRow {
    hook: &'static str,
    program_id: u32,
    name: String,
}

pub fn attached(cgroup: &Path, output: Output) -> anyhow::Result<()> {
    let rows: Vec<AttachedRow> = attached_programs(cgroup)?
        .into_iter()
        .map(|a| AttachedRow { hook: a.hook, program_id: a.program_id, name: a.name })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            let mut table = new_table(&["HOOK", "PROGRAM ID", "NAME"]);
            for r in rows {
                table.add_row([r.hook.to_owned(), r.program_id.to_string(), r.name]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

/// A table in the style every command prints.
pub fn new_table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(header.iter().copied());
    table
}
