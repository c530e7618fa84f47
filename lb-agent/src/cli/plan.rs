//! `lb-agent plan`: the desired state for a node, as a table or JSON, without a kernel.
use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use crate::{
    cli::Output,
    model::{DesiredState, Family, NodeContext, Objects, Problem, WhenEmpty, translate},
    source::{self, kubernetes::KubeSource},
};

#[derive(Args)]
pub struct PlanArgs {
    /// A YAML file or directory of Kubernetes objects, or `kubernetes` to list them from the API
    /// server once.
    #[arg(long)]
    source: String,
    /// Kubeconfig for `--source kubernetes` (default: `KUBECONFIG`, `~/.kube/config`, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// One frontend of the plan. The field order is the JSON order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanRow {
    /// `ADDR:PORT/PROTO`, IPv6 in brackets; a NodePort (every node address) is `*:PORT/PROTO`.
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalIP`.
    pub kind: String,
    /// `namespace/name:portname` (`namespace/name` for an unnamed port).
    pub service: String,
    /// `ADDR:PORT` eligible for new connections as decided on this node, sorted.
    pub backends: Vec<String>,
    /// No backend and no usable endpoint anywhere: the connection is refused.
    pub reject: bool,
    /// Session-affinity timeout in seconds, or null.
    pub affinity_timeout: Option<u32>,
    /// No backend because the Local traffic policy set is empty while endpoints exist elsewhere:
    /// the connection is dropped. Never true together with `reject`.
    pub drop: bool,
    /// Not in the JSON: tells the two `*:PORT/PROTO` rows of a dual-stack NodePort apart.
    #[serde(skip)]
    pub family: Family,
}

/// The rows of a desired state, sorted by service then frontend (a dual-stack NodePort shows
/// `*:PORT/PROTO` twice: IPv4 first).
pub fn rows(desired: &DesiredState) -> Vec<PlanRow> {
    let mut rows: Vec<PlanRow> = desired
        .groups
        .iter()
        .flat_map(|g| {
            let empty = g.eligible.is_empty();
            g.frontends.iter().map(move |f| PlanRow {
                frontend: f.to_string(),
                kind: f.kind.name().to_owned(),
                service: g.service.to_string(),
                backends: g.eligible.iter().map(ToString::to_string).collect(),
                reject: empty && g.when_empty == WhenEmpty::Reject,
                affinity_timeout: g.affinity_timeout,
                drop: empty && g.when_empty == WhenEmpty::Drop,
                family: g.family,
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.service, &a.frontend, a.family).cmp(&(&b.service, &b.frontend, b.family)));
    rows
}

/// How long `plan` waits for the API server's first answer.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long `plan` waits for the complete lists, once the API server answers.
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The objects from a file source, or one complete list from the API server.
fn load(args: &PlanArgs) -> anyhow::Result<(Objects, Vec<Problem>)> {
    if args.source != "kubernetes" {
        return source::file::load(std::path::Path::new(&args.source)).context("reading the source");
    }
    anyhow::ensure!(!args.node_name.is_empty(), "--source kubernetes needs --node-name or NODE_NAME");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let config = source::kubernetes::config(args.kubeconfig.as_deref()).await?;
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        // A one-shot command fails fast, naming the cause; the agent instead retries forever.
        source::api_check::check(&client, &url, API_TIMEOUT).await?;
        let kube = KubeSource::start(
            &client,
            &args.node_name,
            &std::sync::Arc::new(tokio::sync::Notify::new()),
            &|_| prometheus_client::metrics::counter::Counter::default(),
            &source::watch_retry::Counters::default(),
        );
        tokio::time::timeout(LIST_TIMEOUT, kube.wait_ready()).await.with_context(|| {
            format!("the lists from {url} did not complete within {} s", LIST_TIMEOUT.as_secs())
        })??;
        Ok((kube.snapshot(), Vec::new()))
    })
}

pub fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let (objects, mut problems) = load(&args)?;
    let node = NodeContext::from_nodes(&args.node_name, objects.nodes.iter().map(|n| &*n.object));
    let (desired, more) = translate(&objects, &node);
    problems.extend(more);
    for p in &problems {
        eprintln!("skipped: {p}");
    }
    let rows = rows(&desired);
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&rows)?,
        Output::Table => {
            let mut table = super::new_table(&["FRONTEND", "KIND", "SERVICE", "BACKENDS", "AFFINITY"]);
            for r in rows {
                let backends = if r.reject {
                    "(none: reject)".to_owned()
                } else if r.drop {
                    "(none: drop)".to_owned()
                } else {
                    r.backends.join("\n")
                };
                let affinity = r.affinity_timeout.map_or_else(|| "-".to_owned(), |t| format!("{t}s"));
                let kind = match (r.kind.as_str(), r.family) {
                    ("NodePort", Family::V4) => "NodePort IPv4".to_owned(),
                    ("NodePort", Family::V6) => "NodePort IPv6".to_owned(),
                    _ => r.kind,
                };
                table.add_row([r.frontend, kind, r.service, backends, affinity]);
            }
            table.to_string()
        }
    };
    // A closed pipe (`plan | head`) is not an error.
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const OBJECTS: &str = include_str!("testdata/plan.yaml");

    fn plan_of(node: &str) -> Vec<PlanRow> {
        let (mut objects, mut problems) = (Default::default(), Vec::new());
        source::file::parse_into("test.yaml", OBJECTS, &mut objects, &mut problems).expect("valid YAML");
        assert!(problems.is_empty(), "{problems:?}");
        let node = NodeContext::from_nodes(node, objects.nodes.iter().map(|n| &*n.object));
        let (desired, problems) = translate(&objects, &node);
        assert!(problems.is_empty(), "{problems:?}");
        let want: &[std::net::IpAddr] = if node.name == "node-1" { &[[192, 168, 0, 1].into()] } else { &[] };
        assert_eq!(desired.node_addresses, want);
        rows(&desired)
    }

    #[test]
    fn plan_rows_are_sorted_with_kinds_policies_and_outcomes() {
        let rows = serde_json::to_value(plan_of("node-1")).expect("serializes");
        let row = |frontend: &str, kind: &str, service: &str, backends: &[&str], affinity: Option<u32>| {
            json!({
                "frontend": frontend,
                "kind": kind,
                "service": service,
                "backends": backends,
                "reject": backends.is_empty(),
                "affinity_timeout": affinity,
                "drop": false,
            })
        };
        let local = ["10.244.1.1:8080"];
        let mut drop = row("*:30081/UDP", "NodePort", "ns/lonely:http", &[], None);
        drop["reject"] = json!(false);
        drop["drop"] = json!(true);
        let want = json!([
            row("10.96.0.20:5432/TCP", "ClusterIP", "ns/db:sql", &[], None),
            drop,
            row("10.96.0.30:80/UDP", "ClusterIP", "ns/lonely:http", &["10.244.2.2:8081"], None),
            // IPv4 NodePort first: this node's endpoint only (externalTrafficPolicy Local).
            row("*:30080/TCP", "NodePort", "ns/web:http", &local, Some(10_800)),
            // IPv6: no endpoint anywhere, so a reject rather than a drop.
            row("*:30080/TCP", "NodePort", "ns/web:http", &[], Some(10_800)),
            row(
                "10.96.0.10:80/TCP",
                "ClusterIP",
                "ns/web:http",
                &["10.244.1.1:8080", "10.244.2.1:8080"],
                Some(10_800)
            ),
            row("198.51.100.1:80/TCP", "ExternalIP", "ns/web:http", &local, Some(10_800)),
            row("203.0.113.10:80/TCP", "LoadBalancer", "ns/web:http", &local, Some(10_800)),
            row("[fd00:10:96::10]:80/TCP", "ClusterIP", "ns/web:http", &[], Some(10_800)),
        ]);
        assert_eq!(rows, want);
    }

    #[test]
    fn plan_json_keeps_the_field_order() {
        let rows = plan_of("node-1");
        let first = serde_json::to_string(&rows[0]).expect("serializes");
        assert_eq!(
            first,
            r#"{"frontend":"10.96.0.20:5432/TCP","kind":"ClusterIP","service":"ns/db:sql","backends":[],"reject":true,"affinity_timeout":null,"drop":false}"#
        );
    }

    #[test]
    fn plan_depends_on_the_node() {
        // On node-2 the Local policy picks node-2's endpoint, and lonely's NodePort has one.
        let rows = plan_of("node-2");
        let pick = |frontend: &str| -> Vec<(String, bool, bool)> {
            rows.iter()
                .filter(|r| r.frontend == frontend)
                .map(|r| (r.backends.join(","), r.reject, r.drop))
                .collect()
        };
        assert_eq!(pick("*:30081/UDP"), [("10.244.2.2:8081".to_owned(), false, false)]);
        assert_eq!(
            pick("*:30080/TCP"),
            [("10.244.2.1:8080".to_owned(), false, false), (String::new(), true, false)]
        );
    }
}
