//! Control plane: the agent's full sync and incremental updates, and its peak RSS. (kube-proxy's
//! rule-set loads for the same Services are timed by the connect path, which uses them.)
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::cluster::{Bench, cluster, ip, peak_rss_mib, strip_ansi, sync_field, sync_us};

pub struct ControlPlane {
    pub services: u32,
    pub endpoints: u32,
    pub full_sync_ms: f64,
    pub incremental_ms: Vec<f64>,
    pub rss_mib: f64,
}

pub fn control_plane(services: u32, endpoints: u32, changes: u32) -> anyhow::Result<ControlPlane> {
    eprintln!("control plane: {services} services × {endpoints} endpoints");
    let bench = Bench::start(services, endpoints, "random")?;
    let full_sync_ms = sync_us(&bench.0.agent, 1)? as f64 / 1000.0;
    let mut incremental_ms = Vec::new();
    for c in 0..changes {
        let before = bench.0.agent.count("sync applied");
        // Replaced by a rename, as editors and `kubectl`-style tools do: the agent never reads a
        // half-written file (which would be a smaller cluster, synced as such).
        let next = bench.0.source.with_extension("yaml.next");
        std::fs::write(&next, cluster(services, endpoints, Some(c)))?;
        std::fs::rename(&next, &bench.0.source)?;
        bench.0.agent.wait_for_log("sync applied", before + 1, Duration::from_secs(120))?;
        incremental_ms.push(sync_us(&bench.0.agent, before + 1)? as f64 / 1000.0);
    }
    let rss_mib = peak_rss_mib(bench.0.agent.pid())?;
    drop(bench);
    incremental_ms.sort_by(f64::total_cmp);
    Ok(ControlPlane { services, endpoints, full_sync_ms, incremental_ms, rss_mib })
}

/// The same cluster through `--source kubernetes`: the agent lists it from the in-process API
/// server (the real list/watch protocol, the real kube client), then one EndpointSlice changes
/// `changes` times, each change waiting for the one before to be visible.
pub struct KubeControlPlane {
    pub min_sync_period: &'static str,
    /// From the agent's "waiting for the initial list" line to its first "sync applied" line
    /// (the agent's own timestamps): list, snapshot, translation, map writes.
    pub full_sync_ms: f64,
    /// The agent's `elapsed_us` for that first sync (snapshot, translation, map writes).
    pub full_sync_apply_ms: f64,
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

pub fn kube_control_plane(
    services: u32,
    endpoints: u32,
    changes: u32,
    min_sync_period: &'static str,
) -> anyhow::Result<KubeControlPlane> {
    use lb_tests::{
        agent::Agent,
        apiserver::{FakeApiServer, node, service, slice},
        guard::{Bpffs, Cgroup, TempDir},
    };
    eprintln!(
        "control plane, Kubernetes source (--min-sync-period {min_sync_period}): {services} services × {endpoints} endpoints"
    );
    let port = [("http", 80, "TCP")];
    let target_port = [("http", 8080, "TCP")];
    let addrs = |i: u32, changed: Option<u32>| -> Vec<String> {
        (0..endpoints)
            .map(|j| match changed {
                // The last endpoint of svc-0 moves to a new address each change.
                Some(c) if j + 1 == endpoints => ip([10, 200, 0, 0], c + 1).to_string(),
                _ => ip([10, 128, 0, 0], i * endpoints.max(1) + j).to_string(),
            })
            .collect()
    };
    let slice_of = |i: u32, changed: Option<u32>| {
        let addrs = addrs(i, changed);
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        slice("bench", &format!("svc-{i}-1"), &format!("svc-{i}"), &target_port, &addrs)
    };
    let api = FakeApiServer::start()?;
    api.apply(node("node-1", "zone-a", "192.0.2.1"));
    api.apply_all(
        (0..services)
            .map(|i| service("bench", &format!("svc-{i}"), &ip([10, 96, 0, 0], i + 1).to_string(), &port)),
    );
    api.apply_all((0..services).map(|i| slice_of(i, None)));
    let dir = TempDir::new()?;
    let kubeconfig = api.kubeconfig(&dir.path)?;
    let cgroup = Cgroup::new()?;
    let bpffs = Bpffs::new()?;
    let agent = Agent::spawn_kubernetes_with(&kubeconfig, &cgroup.path, &bpffs.path, min_sync_period, false)?;
    agent.wait_for_log("agent ready", 1, Duration::from_secs(600))?;
    let line_of = |pattern: &str| {
        agent.log().into_iter().find(|l| l.contains(pattern)).and_then(|l| log_seconds(&strip_ansi(&l)))
    };
    let full_sync_ms = match (line_of("waiting for the initial list"), line_of("sync applied")) {
        (Some(a), Some(b)) => (b - a) * 1000.0,
        _ => f64::NAN,
    };
    let full_sync_apply_ms = sync_us(&agent, 1)? as f64 / 1000.0;
    let probe = FrontendProbe::open(&bpffs.path)?;
    let frontend = ip([10, 96, 0, 0], 1);
    let mut visible_ms = Vec::new();
    let mut sync_ms = Vec::new();
    let mut phases_ms = vec![Vec::new(); PHASES.len()];
    for c in 0..changes {
        let before = agent.count("sync applied");
        let moved = ip([10, 200, 0, 0], c + 1);
        let object = slice_of(0, Some(c));
        let started = Instant::now();
        api.apply(object);
        while !probe.serves(frontend, 80, moved) {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "change {c} not visible in 60 s");
            std::thread::sleep(Duration::from_micros(200));
        }
        visible_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        agent.wait_for_log("sync applied", before + 1, Duration::from_secs(60))?;
        sync_ms.push(sync_us(&agent, before + 1)? as f64 / 1000.0);
        for (phase, times) in PHASES.iter().zip(&mut phases_ms) {
            times.push(sync_field(&agent, before + 1, phase)? as f64 / 1000.0);
        }
        // Let the agent go idle, so changes do not coalesce.
        std::thread::sleep(Duration::from_millis(30));
    }
    let rss_mib = peak_rss_mib(agent.pid())?;
    drop(agent);
    visible_ms.sort_by(f64::total_cmp);
    sync_ms.sort_by(f64::total_cmp);
    for times in &mut phases_ms {
        times.sort_by(f64::total_cmp);
    }
    Ok(KubeControlPlane {
        min_sync_period,
        full_sync_ms,
        full_sync_apply_ms,
        visible_ms,
        sync_ms,
        phases_ms,
        rss_mib,
    })
}
