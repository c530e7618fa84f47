//! `lb-agent run`: load and attach the datapath, then keep the maps equal to the source.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use lb_common::capacity;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracing::{error, info, warn};

use crate::{
    datapath::{
        loader::{self, Capacities},
        maps::PinnedMaps,
    },
    model::{NodeContext, translate},
    source,
    sync::Syncer,
};

#[derive(Args)]
pub struct RunArgs {
    /// A YAML file or directory of Kubernetes objects (`kubernetes` is reserved for the API watch).
    #[arg(long)]
    source: String,
    /// cgroup v2 directory to attach the socket programs to (default: the cgroup2 root, for
    /// production nodes only; tests and the demo always pass their own).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Directory on a bpf filesystem for the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,
    /// This node's name; endpoints with this `nodeName` are local.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// How long to wait for more changes after one arrives, so a burst becomes one sync (ms).
    #[arg(long, default_value_t = 50)]
    min_sync_period_ms: u64,
    /// Capacity of each frontend map (IPv4 and IPv6), set when the maps are first created.
    #[arg(long, default_value_t = capacity::FRONTENDS)]
    max_frontends: u32,
    /// Capacity of the backend-slot map.
    #[arg(long, default_value_t = capacity::SLOTS)]
    max_slots: u32,
    /// Capacity of the backend map.
    #[arg(long, default_value_t = capacity::BACKENDS)]
    max_backends: u32,
    /// Capacity of each reverse-NAT map (one entry per translated socket and backend).
    #[arg(long, default_value_t = capacity::REVNAT)]
    max_revnat: u32,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

/// Result of one attempt to bring the maps in line with the source.
enum Outcome {
    Applied,
    /// The source cannot be read; wait for it to change.
    SourceInvalid,
    /// The maps refused a write; retry later.
    MapsFailed,
}

fn sync_from_file(path: &Path, node_name: &str, syncer: &mut Syncer<PinnedMaps>) -> Outcome {
    let started = Instant::now();
    let (objects, mut problems) = match source::file::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            error!(error = %e, "source is invalid; keeping what is programmed");
            return Outcome::SourceInvalid;
        }
    };
    let node = NodeContext::from_nodes(node_name, objects.nodes.iter().map(|n| &n.object));
    let (desired, more) = translate(&objects, &node);
    problems.extend(more);
    for p in &problems {
        warn!(object = %p.object, reason = %p.reason, "skipped");
    }
    match syncer.sync(&desired) {
        Ok(report) => {
            info!(
                services = objects.services.len(),
                slices = objects.slices.len(),
                frontends = report.frontends,
                backends = report.backends,
                written = report.written,
                removed = report.removed,
                skipped = problems.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "sync applied"
            );
            Outcome::Applied
        }
        Err(e) => {
            error!(error = %e, "sync failed; nothing half-applied is visible, will retry");
            Outcome::MapsFailed
        }
    }
}

async fn run_async(args: RunArgs) -> anyhow::Result<()> {
    if args.source == "kubernetes" {
        bail!("--source kubernetes is not available in this build yet; pass a YAML file or directory");
    }
    let path = PathBuf::from(&args.source);
    let cgroup = match args.cgroup {
        Some(c) => c,
        None => loader::cgroup2_root()?,
    };
    let caps = Capacities {
        frontends: args.max_frontends,
        slots: args.max_slots,
        backends: args.max_backends,
        revnat: args.max_revnat,
    };
    let mut ebpf = loader::load(&args.bpffs, caps)?;
    let maps = PinnedMaps::open(&args.bpffs).context("opening the maps just pinned")?;
    let mut syncer = Syncer::new(maps).context("reading the pinned maps")?;
    if !syncer.programmed().frontends.is_empty() {
        info!(frontends = syncer.programmed().frontends.len(), "adopted the maps of an earlier agent");
    }

    let changed = Arc::new(Notify::new());
    let _watcher = {
        let changed = Arc::clone(&changed);
        source::file::watch(&path, move || changed.notify_one()).context("watching the source")?
    };
    let node = args.node_name;
    let mut outcome = sync_from_file(&path, &node, &mut syncer);
    loader::attach(&mut ebpf, &cgroup, &args.bpffs)?;
    info!(cgroup = %cgroup.display(), bpffs = %args.bpffs.display(), "programs attached; agent ready");

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let min_sync_period = Duration::from_millis(args.min_sync_period_ms);
    let mut backoff = Duration::from_secs(1);
    loop {
        let retry = matches!(outcome, Outcome::MapsFailed);
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(min_sync_period).await,
            () = tokio::time::sleep(backoff), if retry => backoff = (backoff * 2).min(Duration::from_secs(30)),
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        outcome = sync_from_file(&path, &node, &mut syncer);
        if matches!(outcome, Outcome::Applied) {
            backoff = Duration::from_secs(1);
        }
    }
    info!(
        bpffs = %args.bpffs.display(),
        "stopping; programs stay attached and maps stay pinned (`lb-agent cleanup` removes them)"
    );
    Ok(())
}
