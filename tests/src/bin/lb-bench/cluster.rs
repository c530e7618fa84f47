//! The bench's cluster: generated Services and EndpointSlices, and an agent programmed with them.
use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use lb_tests::{agent::Agent, node::PinnedAgent};

/// The external IP of `svc-0`, the Service the packet path sends flows to.
pub const TARGET: &str = "203.0.113.10";

/// `10.0.0.0 + n` style addresses.
pub fn ip(base: [u8; 4], n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + n)
}

/// `services` Services (the first one, `svc-0`, also on the external IP `TARGET`), each with
/// `endpoints` ready endpoints on this node, as compact flow-style YAML.
pub fn cluster(services: u32, endpoints: u32, changed: Option<u32>) -> String {
    let mut out = String::with_capacity(services as usize * (300 + 40 * endpoints as usize));
    for i in 0..services {
        let external = if i == 0 { format!(", externalIPs: ['{TARGET}']") } else { String::new() };
        let _ = writeln!(
            out,
            "---\n{{apiVersion: v1, kind: Service, metadata: {{name: svc-{i}, namespace: bench}}, spec: {{clusterIP: {}{external}, ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]}}}}",
            ip([10, 96, 0, 0], i + 1)
        );
        let eps: Vec<String> = (0..endpoints)
            .map(|j| {
                // `changed`: the last endpoint of svc-0 moves (one EndpointSlice update).
                let n = if i == 0 && j + 1 == endpoints { changed.map_or(j, |c| 1_000_000 + c) } else { j };
                format!(
                    "{{addresses: ['{}'], nodeName: node-1, conditions: {{ready: true}}}}",
                    ip([10, 128, 0, 0], i * endpoints.max(1) + n)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "---\n{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: svc-{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}, addressType: IPv4, ports: [{{name: http, port: 8080, protocol: TCP}}], endpoints: [{}]}}",
            eps.join(", ")
        );
    }
    out
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `elapsed_us` of the agent's `n`-th "sync applied" line (1-based).
pub fn sync_us(agent: &Agent, n: usize) -> anyhow::Result<u64> {
    sync_field(agent, n, "elapsed_us")
}

/// The field `name` (a number) of the agent's `n`-th "sync applied" line (1-based).
pub fn sync_field(agent: &Agent, n: usize, name: &str) -> anyhow::Result<u64> {
    let line = agent
        .log()
        .into_iter()
        .map(|l| strip_ansi(&l))
        .filter(|l| l.contains("sync applied"))
        .nth(n - 1)
        .context("no such sync")?;
    line.split(&format!(" {name}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in {line:?}"))
}

/// Peak resident memory of `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")?;
    Ok(kib / 1024.0)
}

/// CPU time (user + system) `pid` has used, in ms.
pub fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) in parentheses: utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after ") ".
    let rest = stat.rsplit_once(") ").context("no command in /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    // Linux reports these in USER_HZ ticks, 100 a second.
    Ok(ticks * 10.0)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// One agent with `services` × `endpoints` programmed from a file.
pub struct Bench(pub PinnedAgent);

impl Bench {
    pub fn start(services: u32, endpoints: u32, algorithm: &str) -> anyhow::Result<Self> {
        let yaml = cluster(services, endpoints, None);
        let extra = ["--lb-algorithm", algorithm, "--metrics-addr", ""];
        Ok(Self(PinnedAgent::start(&yaml, &extra, Duration::from_secs(600), false)?))
    }
}
