//! `lb-agent plan`: the desired state for a node, as a table or JSON, without a kernel.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use crate::{
    Output,
    model::{NodeContext, translate},
    source,
};

#[derive(Args)]
pub struct PlanArgs {
    /// A YAML file or directory of Kubernetes objects.
    #[arg(long)]
    source: PathBuf,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
pub struct PlanRow {
    pub frontend: String,
    pub kind: String,
    pub service: String,
    pub backends: Vec<String>,
    pub reject: bool,
    pub affinity_timeout: Option<u32>,
}

pub fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let (objects, mut problems) = source::file::load(&args.source).context("reading the source")?;
    let (desired, more) = translate(&objects, &NodeContext::from_nodes(&args.node_name, objects.nodes.iter().map(|n| &n.object)));
    problems.extend(more);
    for p in &problems {
        eprintln!("skipped: {p}");
    }
    let mut rows: Vec<PlanRow> = desired
        .groups
        .iter()
        .flat_map(|g| {
            g.frontends.iter().map(|f| PlanRow {
                frontend: format!("{}", f),
                kind: format!("{:?}", f.kind),
                service: g.service.to_string(),
                backends: g.eligible.iter().map(ToString::to_string).collect(),
                reject: g.eligible.is_empty(),
                affinity_timeout: g.affinity_timeout,
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            let mut table = super::new_table(&["FRONTEND", "KIND", "SERVICE", "BACKENDS", "AFFINITY"]);
            for r in rows {
                let backends = if r.reject { "(none: reject)".to_owned() } else { r.backends.join("\n") };
                let affinity = r.affinity_timeout.map_or_else(|| "-".to_owned(), |t| format!("{t}s"));
                table.add_row([r.frontend, r.kind, r.service, backends, affinity]);
            }
            println!("{table}");
        }
    }
    Ok(())
}
