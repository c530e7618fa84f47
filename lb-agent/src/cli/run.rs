//! `lb-agent run`: load and attach the datapath, then keep the maps equal to the source.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use lb_common::{AgentStatus, SCHEMA_VERSION, capacity, source_state, sync_result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracing::{error, info, warn};

use crate::{
    datapath::{
        loader::{self, Capacities},
        maglev,
        maps::{MapsError, PinnedMaps},
        migrate::{self, Migration},
        pod_interfaces::{Patterns, PodInterfaces},
        socket_scope::{self, SocketScope},
        state::{LayoutOptions, LbAlgorithm, MapState},
        udp_sockets,
    },
    health::Health,
    health_check::ServiceHealthServer,
    metrics::{ErrorKind, Metrics, SyncResult},
    model::{DesiredState, NodeContext, Objects, Problem, translate},
    nodeport_addresses::{self, NodePortAddresses},
    source::{self, SourceError, kubernetes::KubeSource},
    sync::Syncer,
};

#[derive(Args)]
pub struct RunArgs {
    /// `kubernetes` to watch the API server, or a YAML file or directory of Kubernetes objects.
    #[arg(long)]
    source: String,
    /// Kubeconfig for `--source kubernetes` (default: `KUBECONFIG`, `~/.kube/config`, then the
    /// in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// cgroup v2 directory to attach the socket programs to (default: the cgroup2 root, for
    /// production nodes only; tests and the demo always pass their own).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Directory on a bpf filesystem for the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    bpffs: PathBuf,
    /// Addresses NodePorts answer on (kube-proxy's flag): CIDRs, or `primary` for the Node
    /// object's addresses only; empty: every address of the node's interfaces and Node object.
    #[arg(long, default_value = "", value_parser = |s: &str| NodePortAddresses::parse(s).map_err(|e| e.to_string()))]
    nodeport_addresses: NodePortAddresses,
    /// Serve /livez, /healthz and /readyz here (kube-proxy uses 0.0.0.0:10256); empty: off.
    #[arg(long, default_value = "")]
    healthz_addr: String,
    /// Serve Prometheus metrics on /metrics here, with /livez, /healthz and /readyz (kube-proxy's
    /// metrics port); empty: off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_addr: String,
    /// This node's name; endpoints with this `nodeName` are local.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// How long to wait for more changes after one arrives, so a burst becomes one sync
    /// (kube-proxy's flag; a change never waits longer than this). `10ms`, `1s`…
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    min_sync_period: Duration,
    /// Node interfaces to load-balance traffic from outside on (NodePort, LoadBalancer and
    /// external IPs, ClusterIPs): TC programs on their ingress and egress. Comma-separated;
    /// empty: socket-level load balancing only.
    #[arg(long, value_delimiter = ',', default_value = "")]
    interfaces: Vec<String>,
    /// XDP fast path on the `--interfaces`: flows to backends on other nodes (SNAT) are
    /// translated and sent out again before the stack sees them; everything else goes on to TC.
    /// `native` runs in the driver (falling back to `generic` where the driver refuses).
    #[arg(long, value_enum, default_value_t)]
    xdp: loader::XdpSetting,
    /// Capacity of the TC conntrack map (two entries per flow).
    #[arg(long, default_value_t = capacity::CONNTRACK)]
    max_conntrack: u32,
    /// Capacity of the session-affinity map (one entry per client and Service port with
    /// `sessionAffinity: ClientIP`; least recently used entries are evicted when full).
    #[arg(long, default_value_t = capacity::AFFINITY)]
    max_affinity: u32,
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
    /// Capacity of the `loadBalancerSourceRanges` map (one entry per range of each LoadBalancer
    /// Service port and family).
    #[arg(long, default_value_t = capacity::SOURCE_RANGES)]
    max_source_ranges: u32,
    /// Capacity of the service-name and per-service counter maps (one entry per Service port,
    /// family and traffic scope).
    #[arg(long, default_value_t = capacity::SERVICES)]
    max_services: u32,
    /// Backend choice for NodePort, externalIP and LoadBalancer frontends: `maglev` hashes the
    /// 5-tuple so every node picks the same backend for a flow. ClusterIPs are always random.
    #[arg(long, value_enum, default_value_t)]
    lb_algorithm: LbAlgorithm,
    /// Entries of each Maglev table: a prime up to 65521. Each external group then takes this
    /// many slots (about 64 B of kernel memory each), so `--max-slots` must cover them.
    #[arg(long, default_value_t = maglev::DEFAULT_SIZE, value_parser = maglev::parse_size)]
    maglev_table_size: u32,
    /// Which sockets the cgroup hooks translate: `all`, or `host` (only the host network
    /// namespace: the node's processes and hostNetwork pods). With `host`, a pod's connect to a
    /// ClusterIP leaves its socket as it is, so a service mesh's sidecar redirect in the pod sees
    /// the ClusterIP, and the packets are translated at TC on `--pod-interfaces` (required).
    #[arg(long, value_enum, default_value_t)]
    socket_lb_scope: SocketScope,
    /// Host ends of pod interfaces, as shell globs (`veth*,cali*,lxc*`): TC programs on their
    /// ingress (from the pod) and egress (to the pod) translate pods' packets to ClusterIPs and
    /// the other frontends; attached to matching interfaces at start and as they appear.
    #[arg(long, default_value = "", value_parser = |s: &str| Patterns::parse(s))]
    pod_interfaces: Patterns,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration like 10ms or 1s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{s:?}: unit must be ms or s")),
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints the kernel programs' log records as they arrive (through the `log` → `tracing`
/// bridge), until the task is aborted.
async fn forward_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // Safety: the ring buffer's fd is owned by `logger`, which the AsyncFd owns from here on, so
    // it stays open for as long as it is registered and is closed only after deregistering.
    let registered =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the kernel log");
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                warn!(error = %e, "kernel log stopped");
                return;
            }
        }
    }
}

/// Result of one attempt to bring the maps in line with the source.
enum Outcome {
    Applied,
    /// The source cannot be read; wait for it to change.
    SourceInvalid,
    /// The maps refused a write; retry later.
    MapsFailed,
    /// The desired state does not fit the maps: nothing was written (retried all the same, in
    /// case the source shrank).
    MapsFull,
}

/// The agent's record in the pinned `LB_AGENT` map, rewritten after every sync so
/// `lb-agent status` can tell how the node is doing, while the agent is down too.
struct Record(AgentStatus);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Record {
    fn new() -> Self {
        Self(AgentStatus {
            schema: SCHEMA_VERSION,
            pid: std::process::id(),
            started_ms: unix_ms(),
            last_sync_ms: 0,
            last_applied_ms: 0,
            last_sync_us: 0,
            syncs: 0,
            failed_syncs: 0,
            last_result: sync_result::NONE,
            source: source_state::UNKNOWN,
            ready: 0,
            pad: [0; 5],
        })
    }

    /// Records a sync that took `elapsed` and writes the record (a failed write is logged:
    /// the record is for operators, the datapath does not need it).
    fn sync(&mut self, maps: &mut PinnedMaps, outcome: &Outcome, elapsed: Duration, source: u8) {
        let now = unix_ms();
        let r = &mut self.0;
        r.last_sync_ms = now;
        r.last_sync_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        r.syncs += 1;
        r.source = source;
        r.last_result = match outcome {
            Outcome::Applied => {
                r.last_applied_ms = now;
                sync_result::APPLIED
            }
            Outcome::SourceInvalid => sync_result::SOURCE_INVALID,
            Outcome::MapsFailed => sync_result::MAPS_FAILED,
            Outcome::MapsFull => sync_result::MAPS_FULL,
        };
        if !matches!(outcome, Outcome::Applied) {
            r.failed_syncs += 1;
        }
        self.write(maps);
    }

    fn write(&self, maps: &mut PinnedMaps) {
        if let Err(e) = maps.set_agent_status(&self.0) {
            warn!(error = %e, "cannot write the agent record for `lb-agent status`");
        }
    }
}

/// Where this agent's objects come from.
enum Source {
    File { path: PathBuf, _watcher: notify::RecommendedWatcher },
    Kubernetes(KubeSource),
}

impl Source {
    /// `lb_common::source_state` now.
    fn state(&self) -> u8 {
        match self {
            Self::File { .. } => source_state::FILE,
            Self::Kubernetes(kube) if kube.reconnecting() => source_state::RECONNECTING,
            Self::Kubernetes(_) => source_state::WATCHING,
        }
    }

    fn load(&self) -> Result<(Objects, Vec<Problem>), SourceError> {
        match self {
            Self::File { path, .. } => source::file::load(path),
            Self::Kubernetes(kube) => Ok((kube.snapshot(), Vec::new())),
        }
    }
}

/// Who this node is: its name, and from its Node object and interfaces, its zone and the
/// addresses NodePorts answer on.
struct NodeIdentity {
    name: String,
    nodeport_addresses: NodePortAddresses,
}

impl NodeIdentity {
    fn context(&self, objects: &Objects) -> NodeContext {
        let mut node = NodeContext::from_nodes(&self.name, objects.nodes.iter().map(|n| &*n.object));
        let interfaces = nodeport_addresses::interface_addresses().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list this node's interface addresses");
            Vec::new()
        });
        node.addresses = self.nodeport_addresses.select(&node.addresses, &interfaces);
        node
    }
}

/// After an applied sync: connected UDP sockets that the sync left pointing at a backend their
/// frontend no longer offers are destroyed, so their applications reconnect to a live one
/// (`datapath::udp_sockets`). Failures are logged and counted; the sync stands.
fn close_stale_udp(
    bpffs: &Path,
    before: &BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
    after: &MapState,
    metrics: &Metrics,
) {
    let after = udp_sockets::udp_targets(after);
    if before.iter().all(|(f, b)| after.get(f).is_some_and(|a| b.is_subset(a))) {
        return; // no UDP frontend lost a backend
    }
    let (translated, untracked) = match udp_sockets::translated(bpffs) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "cannot read the socket cookie maps; connected UDP sockets are left alone");
            metrics.record_errors(ErrorKind::MapRead, 1);
            return;
        }
    };
    if untracked {
        warn!(
            "the socket cookie maps are full: connected UDP sockets to removed backends are found by address"
        );
        metrics.record_errors(ErrorKind::UdpSocketsUntracked, 1);
    }
    let targets = udp_sockets::plan(&translated, before, &after, untracked);
    match crate::sock_destroy::destroy_connected_udp(&targets) {
        Ok(0) => {}
        Ok(n) => {
            info!(sockets = n, "destroyed connected UDP sockets to backends their Service no longer offers");
            metrics.record_udp_sockets_destroyed(n as u64);
        }
        Err(e) => {
            warn!(error = %e, "cannot destroy connected UDP sockets to removed backends");
            metrics.record_errors(ErrorKind::SockDestroy, 1);
        }
    }
}

/// One sync: source snapshot → translate → diff → ordered map writes. The desired state comes
/// back when it was applied.
fn sync_once(
    source: &Source,
    identity: &NodeIdentity,
    syncer: &mut Syncer<PinnedMaps>,
    metrics: &Metrics,
    bpffs: &Path,
) -> (Outcome, Option<DesiredState>) {
    let started = Instant::now();
    let (objects, mut problems) = match source.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            error!(error = %e, "source is invalid; keeping what is programmed");
            metrics.record_errors(ErrorKind::SourceInvalid, 1);
            metrics.record_sync(SyncResult::SourceInvalid, started.elapsed());
            return (Outcome::SourceInvalid, None);
        }
    };
    let loaded = Instant::now();
    let node = identity.context(&objects);
    let (desired, more) = translate(&objects, &node);
    let translated = Instant::now();
    problems.extend(more);
    for p in &problems {
        warn!(object = %p.object, reason = %p.reason, "skipped");
    }
    metrics.record_errors(ErrorKind::ObjectSkipped, problems.len() as u64);
    let seen = objects.services.len() + objects.slices.len() + objects.nodes.len();
    let udp_before = udp_sockets::udp_targets(syncer.programmed());
    match syncer.sync_objects(&desired, Some(seen)) {
        Ok(report) => {
            close_stale_udp(bpffs, &udp_before, syncer.programmed(), metrics);
            metrics.record_sync(SyncResult::Applied, started.elapsed());
            metrics.record_programmed(syncer.programmed(), syncer.capacity());
            info!(
                services = objects.services.len(),
                slices = objects.slices.len(),
                frontends = report.frontends,
                backends = report.backends,
                written = report.written,
                removed = report.removed,
                skipped = problems.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                source_us = (loaded - started).as_micros() as u64,
                translate_us = (translated - loaded).as_micros() as u64,
                layout_us = syncer.times().layout.as_micros() as u64,
                diff_us = syncer.times().diff.as_micros() as u64,
                write_us = syncer.times().writes.as_micros() as u64,
                "sync applied"
            );
            (Outcome::Applied, Some(desired))
        }
        Err(e) => {
            error!(error = %e, "sync failed; nothing half-applied is visible, will retry");
            metrics.record_errors(ErrorKind::of(&e), 1);
            metrics.record_sync(SyncResult::MapsFailed, started.elapsed());
            let full = matches!(e, MapsError::Full { .. } | MapsError::MaglevFull { .. });
            (if full { Outcome::MapsFull } else { Outcome::MapsFailed }, None)
        }
    }
}

async fn run_async(args: RunArgs) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let health = Arc::new(Health::default());
    let _health_server = if args.healthz_addr.is_empty() {
        None
    } else {
        let addr: std::net::SocketAddr =
            args.healthz_addr.parse().with_context(|| format!("--healthz-addr {:?}", args.healthz_addr))?;
        let health = Arc::clone(&health);
        Some(AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::health::serve(addr, health).await {
                error!(%addr, error = %e, "health endpoints stopped");
            }
        })))
    };
    let metrics = Arc::new(Metrics::new());
    let _metrics_server = if args.metrics_addr.is_empty() {
        None
    } else {
        let addr: std::net::SocketAddr =
            args.metrics_addr.parse().with_context(|| format!("--metrics-addr {:?}", args.metrics_addr))?;
        let (metrics, health) = (Arc::clone(&metrics), Arc::clone(&health));
        Some(AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, metrics, health).await {
                error!(%addr, error = %e, "metrics endpoint stopped");
            }
        })))
    };
    // kube-proxy's healthCheckNodePort servers, on every address (kube-proxy's default).
    let mut service_health = ServiceHealthServer::new(Arc::clone(&health), Vec::new());
    let changed = Arc::new(Notify::new());
    let source = if args.source == "kubernetes" {
        if args.node_name.is_empty() {
            bail!("--source kubernetes needs this node's name: --node-name or NODE_NAME");
        }
        let client = source::kubernetes::client(args.kubeconfig.as_deref()).await?;
        Source::Kubernetes(KubeSource::start(&client, &args.node_name, &changed, &|resource| {
            metrics.watch_restarts(resource)
        }))
    } else {
        let path = PathBuf::from(&args.source);
        let notify = Arc::clone(&changed);
        let watcher =
            source::file::watch(&path, move || notify.notify_one()).context("watching the source")?;
        Source::File { path, _watcher: watcher }
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
    // adopted (`datapath::migrate`). Until the switch below the old datapath serves, untouched.
    loader::prepare_bpffs(&args.bpffs)?;
    let pinned_before = migrate::pinned_maps(&args.bpffs);
    let mut migration =
        Migration::prepare(&args.bpffs, caps).context("comparing the pinned maps with this agent's")?;
    let pin_paths = migration.as_ref().map(Migration::pin_paths).unwrap_or_default();
    let mut ebpf = loader::load(&args.bpffs, caps, &pin_paths)?;
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
    let identity = NodeIdentity { name: args.node_name, nodeport_addresses: args.nodeport_addresses };
    let started = Instant::now();
    let (mut outcome, desired) = sync_once(&source, &identity, &mut syncer, &metrics, &args.bpffs);
    record.sync(syncer.maps_mut(), &outcome, started.elapsed(), source.state());
    if let Some(desired) = &desired {
        service_health.sync(desired);
    }
    health.record_sync(matches!(outcome, Outcome::Applied));
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
    loader::attach_xdp(&mut ebpf, &interfaces, args.xdp, &args.bpffs)?;
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
    if let Some(m) = migration.take() {
        m.finish()?;
        info!(maps = ?migrated, schema = SCHEMA_VERSION, "upgrade done: the programs use the new maps");
    } else {
        migrate::record_layouts(&args.bpffs, &pinned_before, &migrated)
            .context("recording the map layouts")?;
    }
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
            () = changed.notified() => tokio::time::sleep(args.min_sync_period).await,
            () = tokio::time::sleep(backoff), if retry => backoff = (backoff * 2).min(Duration::from_secs(30)),
            () = async { if let Some(p) = &pods { p.changed().await } }, if pods.is_some() => {
                if let Some(p) = &mut pods {
                    p.handle(&mut ebpf);
                }
                continue;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let started = Instant::now();
        let (next, desired) = sync_once(&source, &identity, &mut syncer, &metrics, &args.bpffs);
        outcome = next;
        record.sync(syncer.maps_mut(), &outcome, started.elapsed(), source.state());
        if let Some(desired) = &desired {
            service_health.sync(desired);
        }
        health.record_sync(matches!(outcome, Outcome::Applied));
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
