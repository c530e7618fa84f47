//! Control plane: the agent's full sync and incremental updates, and its peak RSS. (kube-proxy's
//! rule-set loads for the same Services are timed by the connect path, which uses them.)
use std::time::Duration;

use crate::cluster::{Bench, cluster, peak_rss_mib, sync_us};

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
        std::fs::write(&bench.0.source, cluster(services, endpoints, Some(c)))?;
        bench.0.agent.wait_for_log("sync applied", before + 1, Duration::from_secs(120))?;
        incremental_ms.push(sync_us(&bench.0.agent, before + 1)? as f64 / 1000.0);
    }
    let rss_mib = peak_rss_mib(bench.0.agent.pid())?;
    drop(bench);
    incremental_ms.sort_by(f64::total_cmp);
    Ok(ControlPlane { services, endpoints, full_sync_ms, incremental_ms, rss_mib })
}
