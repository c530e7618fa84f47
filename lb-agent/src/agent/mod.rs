//! The running agent (`lb-agent run`): startup in the order that never leaves a moment without
//! a datapath (health and metrics servers, the source, the maps adopted or migrated, the first
//! full sync, the programs attached staged and switched), then the loop that keeps the maps equal
//! to the source until SIGTERM. The pins outlive it.
mod address_watch;
mod config;
mod cycle;
mod endpoints_api;
mod kernel_log;
pub mod kube_proxy_config;
mod record;
mod source;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use config::{Config, parse_duration};
use lb_common::{SCHEMA_VERSION, source_state};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracing::{error, info, warn};

use self::{
    address_watch::AddressWatch,
    cycle::sync_once,
    kernel_log::{AbortOnDrop, forward_kernel_log},
    record::{Outcome, Record},
    source::{NodeIdentity, Source},
};
use crate::{
    health::{Health, service_checks::ServiceHealthServer},
    kernel::{
        ct_gate,
        loader::{self, Capacities},
        maps::PinnedMaps,
        migrate::{self, Migration},
        pod_interfaces::PodInterfaces,
        socket_scope::{self, SocketScope},
    },
    layout::state::LayoutOptions,
    metrics::Metrics,
    source::{self as sources, kubernetes::KubeSource},
    sync::Syncer,
};

/// Runs the agent until SIGTERM or Ctrl-C.
pub fn run(args: Config) -> anyhow::Result<()> {
    crate::sys::malloc::return_large_allocations();
    // The file source parses a large file on two threads, which one arena's lock would serialize.
    if args.source == "kubernetes" {
        crate::sys::malloc::one_arena();
    }
    // The run loop (program loading, syncs: blocking work) runs on this thread; the tasks it
    // spawns (the watches, the servers) on one worker thread, so the initial list arrives while
    // the programs load and watch events are read while a sync runs.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Config) -> anyhow::Result<()> {
    if !args.not_applicable.is_empty() {
        warn!(
            fields = args.not_applicable.join(", "),
            "--config: these KubeProxyConfiguration fields do not apply to lb-agent and are not used"
        );
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let health = Arc::new(Health::default());
    let _health_server = if args.healthz_addr.is_empty() {
        None
    } else {
        let addr: std::net::SocketAddr =
            args.healthz_addr.parse().with_context(|| format!("--healthz-addr {:?}", args.healthz_addr))?;
        let health = Arc::clone(&health);
        // Bound before the first sync, so "ready" means the endpoints answer.
        listen(addr, "health endpoints stopped").await.map(|listener| {
            AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = crate::health::probes::serve(listener, health).await {
                    error!(%addr, error = %e, "health endpoints stopped");
                }
            }))
        })
    };
    let metrics = Arc::new(Metrics::new());
    // `explain`'s questions about endpoints, answered by the run loop between syncs.
    let (asks, mut questions) = tokio::sync::mpsc::channel::<endpoints_api::Request>(16);
    let _metrics_server = if args.metrics_addr.is_empty() {
        None
    } else {
        let addr: std::net::SocketAddr =
            args.metrics_addr.parse().with_context(|| format!("--metrics-addr {:?}", args.metrics_addr))?;
        let (metrics, health) = (Arc::clone(&metrics), Arc::clone(&health));
        let explain = endpoints_api::router(asks.clone());
        listen(addr, "metrics endpoint stopped").await.map(|listener| {
            AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(listener, metrics, health, explain).await {
                    error!(%addr, error = %e, "metrics endpoint stopped");
                }
            }))
        })
    };
    // kube-proxy's healthCheckNodePort servers, on every address (kube-proxy's default).
    let mut service_health = ServiceHealthServer::new(Arc::clone(&health), Vec::new());
    let changed = Arc::new(Notify::new());
    let mut source = if args.source == "kubernetes" {
        if args.node_name.is_empty() {
            bail!("--source kubernetes needs this node's name: --node-name or NODE_NAME");
        }
        let client = sources::kubernetes::client(args.kubeconfig.as_deref()).await?;
        Source::Kubernetes(KubeSource::start(
            &client,
            &args.node_name,
            &changed,
            &|resource| metrics.watch_restarts(resource),
            &metrics.watch_retry_counters(),
        ))
    } else {
        let path = PathBuf::from(&args.source);
        let notify = Arc::clone(&changed);
        let watcher =
            sources::file::watch(&path, move || notify.notify_one()).context("watching the source")?;
        Source::file(path, watcher)
    };
    let cgroup = match args.cgroup {
        Some(c) => c,
        None => loader::cgroup2_root()?,
    };
    let caps = Capacities {
        frontends: args.max_frontends,
        slots: args.max_slots,
        backends: args.max_backends,
        revnat: args.max_revnat,
        conntrack: args.max_conntrack,
        affinity: args.max_affinity,
        source_ranges: args.max_source_ranges,
        services: args.max_services,
    };
    if args.socket_lb_scope == SocketScope::Host && args.pod_interfaces.is_empty() {
        bail!(
            "--socket-lb-scope host needs --pod-interfaces: pods' connections to ClusterIPs would \
             not be translated anywhere"
        );
    }
    // Maps whose shape this agent changes (capacity flags, layouts) are migrated, the others
    // adopted (`kernel::migrate`). Until the switch below the old datapath serves, untouched.
    loader::prepare_bpffs(&args.bpffs)?;
    let pinned_before = migrate::pinned_maps(&args.bpffs);
    let mut migration =
        Migration::prepare(&args.bpffs, caps).context("comparing the pinned maps with this agent's")?;
    let pin_paths = migration.as_ref().map(Migration::pin_paths).unwrap_or_default();
    let mut ebpf = loader::load(&args.bpffs, caps, &pin_paths)?;
    // Until this agent's programs are the only writers (below) and every frontend's and conntrack
    // entry's gate slot is open, no packet skips the lookups.
    ct_gate::close(&args.bpffs).context("closing the conntrack gate")?;
    socket_scope::program(&mut ebpf, args.socket_lb_scope)?;
    if let Some(m) = &mut migration {
        m.copy()
            .context("upgrade: copying the pinned maps into the new ones; the old datapath keeps serving")?;
    }
    // The programs' own log (`lb-agent log on`), printed as this agent's log lines.
    let _kernel_log = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(AbortOnDrop(tokio::spawn(forward_kernel_log(logger)))),
        Err(e) => {
            warn!(error = %e, "kernel log unavailable; `lb-agent log on` will print nothing");
            None
        }
    };
    let maps = PinnedMaps::open_with(&|name| {
        migration.as_ref().map_or_else(|| args.bpffs.join(name), |m| m.path_of(name))
    })
    .context("opening the maps just pinned")?;
    metrics.set_bpffs(&args.bpffs);
    let options = LayoutOptions { algorithm: args.lb_algorithm, maglev_size: args.maglev_table_size };
    let mut syncer = Syncer::with_options(maps, options).context("reading the pinned maps")?;
    if !syncer.programmed().frontends.is_empty() {
        info!(frontends = syncer.programmed().frontends.len(), "adopted the maps of an earlier agent");
    }

    let mut record = Record::new();
    record.0.source = match source {
        Source::File { .. } => source_state::FILE,
        Source::Kubernetes(_) => source_state::LISTING,
    };
    record.write(syncer.maps_mut());
    if let Source::Kubernetes(kube) = &source {
        // Nothing is written before Services, EndpointSlices and the Node are all listed: a
        // partial view would delete what an earlier agent programmed.
        info!("waiting for the initial list of Services, EndpointSlices and this Node");
        tokio::select! {
            ready = kube.wait_ready() => ready?,
            _ = sigterm.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
    // Subscribed before the first sync reads the addresses: a change meanwhile is not missed.
    let mut addresses = AddressWatch::start(&args.nodeport_addresses).unwrap_or_else(|e| {
        warn!(error = %e, "cannot follow the node's addresses; NodePorts get new ones at the next sync");
        None
    });
    let identity = NodeIdentity { name: args.node_name, nodeport_addresses: args.nodeport_addresses };
    let started = Instant::now();
    let (mut outcome, desired) = sync_once(&mut source, &identity, &mut syncer, &metrics, &args.bpffs);
    record.sync(syncer.maps_mut(), &outcome, started.elapsed(), source.state());
    if let Some(desired) = &desired {
        service_health.sync(desired);
    }
    health.record_sync(matches!(outcome, Outcome::Applied));
    health.set_node_eligible(identity.eligible(&source.nodes()));
    // Every program attached beside the earlier agent's (staged), then switched over: first the
    // programs that write per-connection state, then, once what the old ones wrote is copied,
    // those that read it. Dropped before the switch, `staged` detaches the new programs again.
    let mut staged = loader::Staged::new(&args.bpffs);
    loader::attach(&mut ebpf, &cgroup, &mut staged)?;
    let interfaces: Vec<String> = args.interfaces.iter().filter(|i| !i.is_empty()).cloned().collect();
    loader::attach_tc(&mut ebpf, &interfaces, &mut staged)?;
    if let Some(m) = &mut migration {
        let n = m
            .delta()
            .context("upgrade: copying the latest connection state; the old datapath keeps serving")?;
        info!(entries = n, "upgrade: connection state copied again before the switch");
    }
    staged.commit(migrate::writes_state)?;
    let migrated = migration.as_ref().map(Migration::names).unwrap_or_default();
    if let Some(m) = &mut migration {
        // Writers switched: the new maps take the pins at once, so nothing after this point
        // can leave the pins naming maps that no running writer uses.
        m.switch_pins().context("upgrade: putting the new maps in place of the old pins")?;
        migrate::record_layouts(&args.bpffs, &pinned_before, &migrated)
            .context("recording the map layouts")?;
    }
    // The other writers of per-connection state right after TC: XDP (its flows must find their
    // conntrack entries where TC looks) and the pod interfaces' TC programs.
    let xdp_to_tc = loader::attach_xdp(&mut ebpf, &interfaces, args.xdp, args.xdp_on_veth, &args.bpffs)?;
    metrics.set_xdp_to_tc(xdp_to_tc.len());
    let mut pods = if args.pod_interfaces.is_empty() {
        loader::remove_pod_pins(&args.bpffs)?;
        None
    } else {
        let pods = PodInterfaces::start(&mut ebpf, args.pod_interfaces, &args.bpffs)
            .context("attaching to the pod interfaces")?;
        info!(interfaces = ?pods.attached().collect::<Vec<_>>(), "pod interfaces followed");
        Some(pods)
    };
    if let Some(m) = &mut migration {
        // The old writers are detached: this copy is complete. A failure now only loses entries.
        match m.delta() {
            Ok(n) => info!(entries = n, "upgrade: connection state written by the old programs copied"),
            Err(e) => warn!(error = %e, "upgrade: cannot copy the old programs' latest connection state"),
        }
    }
    staged.commit(|_| true)?;
    loader::remove_stale_tc_pins(&args.bpffs, &interfaces)?;
    if let Some(m) = migration.take() {
        m.finish()?;
        info!(maps = ?migrated, schema = SCHEMA_VERSION, "upgrade done: the programs use the new maps");
        // Until the switch the old programs checked flows against the old maps' backends, some
        // of which the first sync left out of the new ones.
        if let Err(e) = syncer.invalidate_backend_checks() {
            warn!(error = %e, "cannot raise the backends' epoch; tracked flows recheck at the next sync");
        }
    } else {
        migrate::record_layouts(&args.bpffs, &pinned_before, &migrated)
            .context("recording the map layouts")?;
    }
    ct_gate::fill_logged(&args.bpffs);
    if !interfaces.is_empty() || pods.is_some() {
        crate::snat_ports::reserve();
    }
    // Ready means the first full sync is programmed: not before a sync has applied.
    info!(cgroup = %cgroup.display(), bpffs = %args.bpffs.display(), "programs attached");
    if matches!(outcome, Outcome::Applied) && health.set_ready() {
        record.0.ready = 1;
        record.write(syncer.maps_mut());
        info!("agent ready");
    }

    let mut backoff = Duration::from_secs(1);
    loop {
        let retry = matches!(outcome, Outcome::MapsFailed | Outcome::MapsFull);
        tokio::select! {
            () = changed.notified() => {
                health.queued();
                metrics.record_queued(source.change_counts());
                tokio::time::sleep(args.min_sync_period).await;
            }
            () = tokio::time::sleep(backoff), if retry => backoff = (backoff * 2).min(Duration::from_secs(30)),
            () = async { if let Some(p) = &pods { p.changed().await } }, if pods.is_some() => {
                if let Some(p) = &mut pods {
                    p.handle(&mut ebpf);
                }
                continue;
            }
            () = async { if let Some(a) = &addresses { a.readable().await } }, if addresses.is_some() => {
                if !addresses.as_mut().is_some_and(AddressWatch::changed) {
                    continue;
                }
            }
            Some(question) = questions.recv() => {
                endpoints_api::answer(question, &source, &identity);
                continue;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let started = Instant::now();
        let (next, desired) = sync_once(&mut source, &identity, &mut syncer, &metrics, &args.bpffs);
        outcome = next;
        record.sync(syncer.maps_mut(), &outcome, started.elapsed(), source.state());
        if let Some(desired) = &desired {
            service_health.sync(desired);
        }
        health.record_sync(matches!(outcome, Outcome::Applied));
        health.set_node_eligible(identity.eligible(&source.nodes()));
        if matches!(outcome, Outcome::Applied) {
            backoff = Duration::from_secs(1);
            if health.set_ready() {
                record.0.ready = 1;
                record.write(syncer.maps_mut());
                info!("agent ready");
            }
        }
    }
    info!(
        bpffs = %args.bpffs.display(),
        "stopping; programs stay attached and maps stay pinned (`lb-agent cleanup` removes them)"
    );
    Ok(())
}

/// A listener on `addr`; when the address cannot be bound, the error is logged under `stopped`
/// and the agent runs on without that server (as kube-proxy does).
async fn listen(addr: std::net::SocketAddr, stopped: &str) -> Option<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| error!(%addr, error = %e, "{stopped}")).ok()
}
