//! Control plane: the agent's full sync and incremental updates, and its peak RSS. (kube-proxy's
//! rule-set loads for the same Services are timed by the connect path, which uses them.)
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::cluster::{Bench, cluster, cpu_ms, ip, peak_rss_mib, strip_ansi, sync_field, sync_us};

pub struct ControlPlane {
    pub services: u32,
    pub endpoints: u32,
    pub full_sync_ms: f64,
    /// Of the full sync, the source's part (`source_us`: reading and parsing the file).
    pub full_sync_source_ms: f64,
    pub incremental_ms: Vec<f64>,
    /// Of each change's sync, the source's part (re-reading the file, parsing what changed), sorted.
    pub incremental_source_ms: Vec<f64>,
    pub rss_mib: f64,
}

pub fn control_plane(services: u32, endpoints: u32, changes: u32) -> anyhow::Result<ControlPlane> {
    eprintln!("control plane: {services} services × {endpoints} endpoints");
    let bench = Bench::start(services, endpoints, "random")?;
    let full_sync_ms = sync_us(&bench.0.agent, 1)? as f64 / 1000.0;
    let full_sync_source_ms = sync_field(&bench.0.agent, 1, "source_us")? as f64 / 1000.0;
    let mut incremental_ms = Vec::new();
    let mut incremental_source_ms = Vec::new();
    for c in 0..changes {
        let before = bench.0.agent.count("sync applied");
        // Replaced by a rename, as editors and `kubectl`-style tools do: the agent never reads a
        // half-written file (which would be a smaller cluster, synced as such).
        let next = bench.0.source.with_extension("yaml.next");
        std::fs::write(&next, cluster(services, endpoints, Some(c)))?;
        std::fs::rename(&next, &bench.0.source)?;
        bench.0.agent.wait_for_log("sync applied", before + 1, Duration::from_secs(120))?;
        incremental_ms.push(sync_us(&bench.0.agent, before + 1)? as f64 / 1000.0);
        incremental_source_ms.push(sync_field(&bench.0.agent, before + 1, "source_us")? as f64 / 1000.0);
    }
    let rss_mib = peak_rss_mib(bench.0.agent.pid())?;
    drop(bench);
    incremental_ms.sort_by(f64::total_cmp);
    incremental_source_ms.sort_by(f64::total_cmp);
    Ok(ControlPlane {
        services,
        endpoints,
        full_sync_ms,
        full_sync_source_ms,
        incremental_ms,
        incremental_source_ms,
        rss_mib,
    })
}

/// The same cluster through `--source kubernetes`: the agent lists it from the in-process API
/// server (the real list/watch protocol, the real kube client), then one EndpointSlice changes
/// `changes` times, each change waiting for the one before to be visible.
pub struct KubeControlPlane {
    pub services: u32,
    pub endpoints: u32,
    pub min_sync_period: &'static str,
    /// From the API server's receipt of the agent's first list request to the agent's first
    /// "sync applied" line (its own timestamp): list, snapshot, translation, map writes.
    pub full_sync_ms: f64,
    /// From the bench's start of the agent to that first "sync applied" line: program loading,
    /// the list (which the agent starts before loading its programs), the sync.
    pub start_to_sync_ms: f64,
    /// The agent's `elapsed_us` for that first sync (snapshot, translation, map writes).
    pub full_sync_apply_ms: f64,
    /// The agent's CPU time (user + system) from its start to the end of that sync: loading
    /// the programs, the list, the sync.
    pub full_sync_cpu_ms: f64,
    /// From the bench's `apply` of the changed slice (the watch event is sent) to the changed
    /// backend being read from the pinned maps (polled every 200 µs), sorted.
    pub visible_ms: Vec<f64>,
    /// The agent's `elapsed_us` of each of those syncs, sorted.
    pub sync_ms: Vec<f64>,
    /// Each phase of those syncs as the agent logs it (`PHASES`), each sorted.
    pub phases_ms: Vec<Vec<f64>>,
    pub rss_mib: f64,
}

/// Seconds since midnight of a log line's RFC 3339 timestamp (`…T18:04:00.123456Z …`).
fn log_seconds(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The slot backends of the IPv4 frontend `addr:port/TCP`, read from the pinned maps the way
/// the kernel walks them (the agent library's reader).
struct FrontendProbe(lb_agent::kernel::maps::PinnedMaps);

impl FrontendProbe {
    fn open(bpffs: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Self(lb_agent::kernel::maps::PinnedMaps::open(bpffs)?))
    }

    /// Whether a slot of the frontend names a backend at `backend`.
    fn serves(&self, frontend: Ipv4Addr, port: u16, backend: Ipv4Addr) -> bool {
        let key =
            lb_agent::layout::state::FrontendKey::new(frontend.into(), port, lb_agent::model::Protocol::Tcp);
        self.0.frontend_backends(&key).ok().flatten().is_some_and(|b| b.iter().any(|a| a.ip() == backend))
    }
}

/// The phases of a sync in the agent's "sync applied" line, in order.
pub const PHASES: [&str; 5] = ["source_us", "translate_us", "layout_us", "diff_us", "write_us"];

/// A cluster of `services` × `endpoints` in an in-process API server, and an agent that listed
/// it through `--source kubernetes` (fields drop in declaration order: the agent stops before
/// its pins and cgroup go).
struct KubeCluster {
    agent: lb_tests::agent::Agent,
    probe: FrontendProbe,
    api: lb_tests::apiserver::FakeApiServer,
    endpoints: u32,
    /// When the bench started the agent, in seconds since midnight UTC (as `log_seconds`).
    spawned_s: f64,
    _bpffs: lb_tests::guard::Bpffs,
    _cgroup: lb_tests::guard::Cgroup,
    _dir: lb_tests::guard::TempDir,
}

impl KubeCluster {
    fn start(services: u32, endpoints: u32, min_sync_period: &str) -> anyhow::Result<Self> {
        use lb_tests::{
            agent::Agent,
            apiserver::{FakeApiServer, node, service},
            guard::{Bpffs, Cgroup, TempDir},
        };
        let port = [("http", 80, "TCP")];
        let api = FakeApiServer::start()?;
        api.apply(node("node-1", "zone-a", "192.0.2.1"));
        api.apply_all(
            (0..services).map(|i| {
                service("bench", &format!("svc-{i}"), &ip([10, 96, 0, 0], i + 1).to_string(), &port)
            }),
        );
        api.apply_all((0..services).map(|i| slice_of(i, endpoints, None)));
        let dir = TempDir::new()?;
        let kubeconfig = api.kubeconfig(&dir.path)?;
        let cgroup = Cgroup::new()?;
        let bpffs = Bpffs::new()?;
        let spawned = std::time::SystemTime::now();
        let agent =
            Agent::spawn_kubernetes_with(&kubeconfig, &cgroup.path, &bpffs.path, min_sync_period, false)?;
        agent.wait_for_log("agent ready", 1, Duration::from_secs(1200))?;
        let probe = FrontendProbe::open(&bpffs.path)?;
        let since_epoch = spawned.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let spawned_s = since_epoch % 86_400.0;
        Ok(Self { agent, probe, api, endpoints, spawned_s, _bpffs: bpffs, _cgroup: cgroup, _dir: dir })
    }

    /// Moves the last endpoint of `svc-{service}` to the `change`-th new address (the watch
    /// event goes out); the frontend and the address to look for.
    fn change(&self, service: u32, change: u32) -> (Ipv4Addr, Ipv4Addr) {
        self.api.apply(slice_of(service, self.endpoints, Some(change)));
        (ip([10, 96, 0, 0], service + 1), ip([10, 200, 0, 0], change + 1))
    }
}

/// The EndpointSlice of `svc-{i}`; with `changed`, its last endpoint on a new address.
fn slice_of(i: u32, endpoints: u32, changed: Option<u32>) -> serde_json::Value {
    let target_port = [("http", 8080, "TCP")];
    let addrs: Vec<String> = (0..endpoints)
        .map(|j| match changed {
            Some(c) if j + 1 == endpoints => ip([10, 200, 0, 0], c + 1).to_string(),
            _ => ip([10, 128, 0, 0], i * endpoints.max(1) + j).to_string(),
        })
        .collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    lb_tests::apiserver::slice("bench", &format!("svc-{i}-1"), &format!("svc-{i}"), &target_port, &addrs)
}

pub fn kube_control_plane(
    services: u32,
    endpoints: u32,
    changes: u32,
    min_sync_period: &'static str,
) -> anyhow::Result<KubeControlPlane> {
    eprintln!(
        "control plane, Kubernetes source (--min-sync-period {min_sync_period}): {services} services × {endpoints} endpoints"
    );
    let cluster = KubeCluster::start(services, endpoints, min_sync_period)?;
    let agent = &cluster.agent;
    let line_of = |pattern: &str| {
        agent.log().into_iter().find(|l| l.contains(pattern)).and_then(|l| log_seconds(&strip_ansi(&l)))
    };
    // The first list request, as the server saw it, on the log's clock (seconds of the UTC day).
    let first_list = cluster
        .api
        .first_list()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64() % 86_400.0);
    let full_sync_ms = match (first_list, line_of("sync applied")) {
        (Some(a), Some(b)) => (b - a) * 1000.0,
        _ => f64::NAN,
    };
    let start_to_sync_ms = line_of("sync applied").map_or(f64::NAN, |b| (b - cluster.spawned_s) * 1000.0);
    let full_sync_apply_ms = sync_us(agent, 1)? as f64 / 1000.0;
    for line in agent.log().iter().filter(|l| l.contains("listed") || l.contains("sync applied")).take(4) {
        eprintln!("  agent: {}", strip_ansi(line));
    }
    let full_sync_cpu_ms = cpu_ms(agent.pid())?;
    eprintln!(
        "  agent CPU after the full sync: {full_sync_cpu_ms:.0} ms; list → last write {full_sync_ms:.0} ms, agent start → last write {start_to_sync_ms:.0} ms"
    );
    let mut visible_ms = Vec::new();
    let mut sync_ms = Vec::new();
    let mut phases_ms = vec![Vec::new(); PHASES.len()];
    for c in 0..changes {
        let before = agent.count("sync applied");
        let started = Instant::now();
        let (frontend, moved) = cluster.change(0, c);
        while !cluster.probe.serves(frontend, 80, moved) {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "change {c} not visible in 60 s");
            std::thread::sleep(Duration::from_micros(200));
        }
        visible_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        agent.wait_for_log("sync applied", before + 1, Duration::from_secs(60))?;
        sync_ms.push(sync_us(agent, before + 1)? as f64 / 1000.0);
        for (phase, times) in PHASES.iter().zip(&mut phases_ms) {
            times.push(sync_field(agent, before + 1, phase)? as f64 / 1000.0);
        }
        // Let the agent go idle, so changes do not coalesce.
        std::thread::sleep(Duration::from_millis(30));
    }
    let rss_mib = peak_rss_mib(agent.pid())?;
    drop(cluster);
    visible_ms.sort_by(f64::total_cmp);
    sync_ms.sort_by(f64::total_cmp);
    for times in &mut phases_ms {
        times.sort_by(f64::total_cmp);
    }
    Ok(KubeControlPlane {
        services,
        endpoints,
        min_sync_period,
        full_sync_ms,
        start_to_sync_ms,
        full_sync_apply_ms,
        full_sync_cpu_ms,
        visible_ms,
        sync_ms,
        phases_ms,
        rss_mib,
    })
}

/// Sustained churn: EndpointSlice changes at a fixed rate, each to another Service.
pub struct Churn {
    pub services: u32,
    pub endpoints: u32,
    pub rate: u32,
    pub seconds: u32,
    /// From each change's write to the API server to its backend read from the pinned maps,
    /// sorted.
    pub visible_ms: Vec<f64>,
    /// The agent's CPU time over the churn (from the first change until the last is visible),
    /// as a share of one CPU.
    pub cpu_share: f64,
    /// Syncs the agent applied meanwhile (changes coalesce when they come faster than a sync).
    pub syncs: usize,
    pub rss_mib: f64,
}

/// `rate` EndpointSlice changes a second for `seconds`, on a cluster of `services` ×
/// `endpoints` listed through `--source kubernetes` (`--min-sync-period 0ms`: each change is
/// synced as soon as the agent is free). Changes are written on schedule, not after the one
/// before is visible; each one's visibility is polled every 200 µs between writes.
pub fn kube_churn(services: u32, endpoints: u32, rate: u32, seconds: u32) -> anyhow::Result<Churn> {
    eprintln!(
        "control plane churn: {rate} EndpointSlice changes/s for {seconds} s, {services} services × {endpoints} endpoints"
    );
    let cluster = KubeCluster::start(services, endpoints, "0ms")?;
    let agent = &cluster.agent;
    let syncs_before = agent.count("sync applied");
    let total = rate * seconds;
    let every = Duration::from_secs(1) / rate;
    let mut pending: Vec<(Instant, Ipv4Addr, Ipv4Addr)> = Vec::new();
    let mut visible_ms = Vec::new();
    let cpu_before = cpu_ms(agent.pid())?;
    let started = Instant::now();
    let mut sent = 0;
    while sent < total || !pending.is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(u64::from(seconds) + 60),
            "{} changes not visible 60 s after the churn",
            pending.len()
        );
        if sent < total && started.elapsed() >= every * sent {
            // Each change to another Service (one of 1000), moving its last endpoint.
            let at = Instant::now();
            let (frontend, moved) = cluster.change(sent % services.min(1000), sent);
            pending.push((at, frontend, moved));
            sent += 1;
        }
        pending.retain(|(at, frontend, moved)| {
            let seen = cluster.probe.serves(*frontend, 80, *moved);
            if seen {
                visible_ms.push(at.elapsed().as_secs_f64() * 1000.0);
            }
            !seen
        });
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_share = (cpu_ms(agent.pid())? - cpu_before) / 1000.0 / elapsed;
    let syncs = agent.count("sync applied") - syncs_before;
    let rss_mib = peak_rss_mib(agent.pid())?;
    drop(cluster);
    visible_ms.sort_by(f64::total_cmp);
    Ok(Churn { services, endpoints, rate, seconds, visible_ms, cpu_share, syncs, rss_mib })
}
