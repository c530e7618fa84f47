//! Connect path: TCP connect latency and rate from a client to the last-programmed Service's
//! ClusterIP, through the socket hooks, through kube-proxy's iptables rule set and through its
//! nftables rule set, against connecting to a backend directly.
//!
//! Each path gets its own network namespace with only `lo`: the target Service's endpoints are
//! addresses on it, served by accept loops of this process, and a route sends the Service range to
//! `lo` as well, so a packet that is not rewritten never leaves the namespace. The rule-set
//! namespaces load kube-proxy's rules for all the Services (their load time is the control-plane
//! comparison); the socket path runs in the agent's cgroup. The paths alternate round by round
//! so drift on the machine lands on all of them alike.
use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, ensure};
use lb_tests::{
    guard::{Netns, enter_netns},
    probe::{self, Place},
};

use crate::{
    cluster::{Bench, ip, percentile},
    kube_proxy_rules::{iptables_rules, nft_rules, timed_load},
};

/// The client's own address in the rule-set namespaces (the source kube-proxy's rules see).
const CLIENT: &str = "10.244.0.1";

/// Accept loops on the target's endpoints: each accepted connection is dropped at once.
struct Acceptors {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Acceptors {
    fn start(netns: &Netns, addrs: &[SocketAddr]) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &addr in addrs {
            netns.add_lo_address(addr.ip())?;
            let fd = netns.open()?;
            // setns is per thread: bind from a short-lived one, serve from another.
            let listener = std::thread::spawn(move || -> anyhow::Result<TcpListener> {
                enter_netns(&fd)?;
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("bind thread panicked"))??;
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || accept_loop(&listener, &stop)));
        }
        Ok(Self { stop, threads })
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    while !stop.load(Ordering::Relaxed) {
        // Safety: one valid pollfd that outlives the call.
        let ready = unsafe { libc::poll(&raw mut pfd, 1, 50) };
        if ready <= 0 {
            continue;
        }
        while listener.accept().is_ok() {}
    }
}

impl Drop for Acceptors {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A namespace with the target's endpoints served, ready for a client to dial.
struct PathNs {
    netns: Netns,
    _acceptors: Acceptors,
}

impl PathNs {
    fn new(endpoints: &[SocketAddr]) -> anyhow::Result<Self> {
        let netns = Netns::new()?;
        netns.add_lo_address(CLIENT.parse()?)?;
        // The Service range goes to `lo` from the client's address: kube-proxy's DNAT happens at
        // nat OUTPUT, after this route lookup; an untranslated packet stays in the namespace.
        netns.ip(&["route", "add", "10.96.0.0/12", "dev", "lo", "src", CLIENT])?;
        let acceptors = Acceptors::start(&netns, endpoints)?;
        Ok(Self { netns, _acceptors: acceptors })
    }
}

/// Latencies and wall time of one path at one size, over all rounds.
pub struct ConnectRow {
    pub services: u32,
    pub path: &'static str,
    pub latencies_ns: Vec<f64>,
    pub failed: usize,
    pub wall_us: f64,
}

impl ConnectRow {
    fn new(services: u32, path: &'static str) -> Self {
        Self { services, path, latencies_ns: Vec::new(), failed: 0, wall_us: 0.0 }
    }

    pub fn p50_us(&self) -> f64 {
        percentile(&self.latencies_ns, 0.5) / 1000.0
    }

    pub fn p99_us(&self) -> f64 {
        percentile(&self.latencies_ns, 0.99) / 1000.0
    }

    /// Connections per second of one client connecting back to back.
    pub fn rate(&self) -> f64 {
        (self.latencies_ns.len() + self.failed) as f64 / (self.wall_us / 1e6).max(1e-9)
    }
}

/// A ClusterIP connect through the socket hooks against direct connects to the same backends,
/// pair after pair in one client in the agent's cgroup (both pay the hooks' lookup; only the
/// ClusterIP's is translated).
pub struct PairedRow {
    pub services: u32,
    pub direct_ns: Vec<f64>,
    pub cluster_ip_ns: Vec<f64>,
    pub failed: usize,
}

impl PairedRow {
    pub fn p50_ratio(&self) -> f64 {
        percentile(&self.cluster_ip_ns, 0.5) / percentile(&self.direct_ns, 0.5)
    }
}

/// `pairs` pairs of connects from `place`: the ClusterIP and a direct one to each of `direct` in
/// turn, the first of a pair alternating.
fn run_pairs(
    place: &Place<'_>,
    direct: &[SocketAddr],
    cluster_ip: SocketAddr,
    pairs: u32,
    row: &mut PairedRow,
) -> anyhow::Result<()> {
    let mut args =
        vec!["tcp-connect-pair".to_owned(), direct[0].to_string(), pairs.to_string(), cluster_ip.to_string()];
    args.extend(direct[1..].iter().map(ToString::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for line in probe::run(place, &args)? {
        match line.split_once(' ') {
            Some(("a", ns)) => row.direct_ns.push(ns.parse().context("a line")?),
            Some(("b", ns)) => row.cluster_ip_ns.push(ns.parse().context("b line")?),
            _ => row.failed += 1,
        }
    }
    Ok(())
}

/// kube-proxy's rule-set load times at one size (the control-plane comparison).
pub struct RuleLoads {
    pub services: u32,
    pub iptables_ms: f64,
    pub nft_ms: f64,
}

/// One probe run: `count` connects to `to` from `place`.
fn run_probe(place: &Place<'_>, to: SocketAddr, count: u32, row: &mut ConnectRow) -> anyhow::Result<()> {
    let lines = probe::run(place, &["tcp-connect", &to.to_string(), &count.to_string()])?;
    for line in &lines {
        if let Some(us) = line.strip_prefix("done us=") {
            row.wall_us += us.parse::<f64>().context("done line")?;
        } else if let Ok(ns) = line.parse::<f64>() {
            row.latencies_ns.push(ns);
        } else {
            row.failed += 1;
        }
    }
    Ok(())
}

pub fn connect_path(
    sizes: &[u32],
    endpoints: u32,
    rounds: u32,
    per_round: u32,
) -> anyhow::Result<(Vec<ConnectRow>, Vec<RuleLoads>, Vec<PairedRow>)> {
    let (mut rows, mut loads, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    for &services in sizes {
        eprintln!("connect path: {services} services × {endpoints} endpoints");
        // The target is the last Service programmed (the last rule in KUBE-SERVICES).
        let last = services - 1;
        let backends: Vec<SocketAddr> = (0..endpoints)
            .map(|j| SocketAddr::new(ip([10, 128, 0, 0], last * endpoints + j).into(), 8080))
            .collect();
        let cluster_ip = SocketAddr::new(ip([10, 96, 0, 0], services).into(), 80);

        let agent = Bench::start(services, endpoints, "random")?;
        let socket_ns = PathNs::new(&backends)?;
        let iptables_ns = PathNs::new(&backends)?;
        let iptables_ms = timed_load(
            &iptables_ns.netns,
            "iptables-restore",
            &["--noflush"],
            &iptables_rules(services, endpoints),
        )?;
        let nft_ns = PathNs::new(&backends)?;
        let nft_ms = timed_load(&nft_ns.netns, "nft", &["-f", "-"], &nft_rules(services, endpoints))?;
        loads.push(RuleLoads { services, iptables_ms, nft_ms });

        let paths: [(&'static str, Place<'_>, SocketAddr); 4] = [
            ("direct", Place { netns: &socket_ns.netns, cgroup: None }, backends[0]),
            ("socket hooks", Place { netns: &socket_ns.netns, cgroup: Some(&agent.0.cgroup) }, cluster_ip),
            ("iptables", Place { netns: &iptables_ns.netns, cgroup: None }, cluster_ip),
            ("nftables", Place { netns: &nft_ns.netns, cgroup: None }, cluster_ip),
        ];
        let mut size_rows: Vec<ConnectRow> =
            paths.iter().map(|(path, _, _)| ConnectRow::new(services, path)).collect();
        // Warm-up, and a check that every path reaches a backend at all.
        for (path, place, to) in &paths {
            let mut warm = ConnectRow::new(services, path);
            run_probe(place, *to, 200, &mut warm)?;
            ensure!(warm.failed == 0, "{path}: {} of 200 warm-up connects to {to} failed", warm.failed);
        }
        for _ in 0..rounds {
            for ((_, place, to), row) in paths.iter().zip(&mut size_rows) {
                run_probe(place, *to, per_round, row)?;
            }
        }
        for row in &mut size_rows {
            row.latencies_ns.sort_by(f64::total_cmp);
        }
        rows.extend(size_rows);
        let mut pair = PairedRow { services, direct_ns: Vec::new(), cluster_ip_ns: Vec::new(), failed: 0 };
        let hooked = Place { netns: &socket_ns.netns, cgroup: Some(&agent.0.cgroup) };
        for _ in 0..rounds {
            run_pairs(&hooked, &backends, cluster_ip, per_round, &mut pair)?;
        }
        pair.direct_ns.sort_by(f64::total_cmp);
        pair.cluster_ip_ns.sort_by(f64::total_cmp);
        paired.push(pair);
    }
    Ok((rows, loads, paired))
}

/// The same-client comparison of the connect-path section.
pub fn paired_markdown(rows: &[PairedRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nThe same client in the agent's cgroup, pair after pair: a ClusterIP connect through the\n\
         socket hooks and a direct connect to one of the Service's backends (each in turn, so both\n\
         reach the same backends as often; the first of a pair alternates). Both pay the hooks'\n\
         lookup; only the ClusterIP's is translated:\n\n\
         | services | pairs | direct p50 (µs) | ClusterIP p50 (µs) | ClusterIP / direct, p50 | failed |\n\
         |---|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.3} | {} |",
            r.services,
            r.direct_ns.len(),
            percentile(&r.direct_ns, 0.5) / 1000.0,
            percentile(&r.cluster_ip_ns, 0.5) / 1000.0,
            r.p50_ratio(),
            r.failed
        );
    }
    out
}

/// The connect-path section of the report.
pub fn markdown(rows: &[ConnectRow], per_path: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Connect path (TCP connect from a client namespace)\n\n\
         {per_path} connects per path and size from one client, back to back, each closed with a\n\
         reset; the target is the last Service programmed (10 endpoints); the paths alternate in\n\
         rounds. Latency is connect() until established; the rate is one client's.\n\n\
         | services | path | p50 (µs) | p99 (µs) | connects/s | failed | p50 / direct | p99 / direct |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for row in rows {
        let direct = rows.iter().find(|r| r.services == row.services && r.path == "direct");
        let ratio = |f: fn(&ConnectRow) -> f64| {
            direct.map_or_else(|| "-".to_owned(), |d| format!("{:.2}", f(row) / f(d)))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.0} | {} | {} | {} |",
            row.services,
            row.path,
            row.p50_us(),
            row.p99_us(),
            row.rate(),
            row.failed,
            ratio(ConnectRow::p50_us),
            ratio(ConnectRow::p99_us),
        );
    }
    out
}

/// Series colours in the chart, by path.
const COLOURS: [(&str, &str); 4] =
    [("direct", "#7f7f7f"), ("socket hooks", "#2b8a3e"), ("iptables", "#c92a2a"), ("nftables", "#e67700")];

/// A bar chart of p50 connect latency (bars) and p99 (ticks) per path and size, log scale.
pub fn svg(rows: &[ConnectRow]) -> String {
    let (width, height, left, top, bottom) = (760.0, 380.0, 70.0, 40.0, 60.0);
    let plot_h = height - top - bottom;
    let mut sizes: Vec<u32> = rows.iter().map(|r| r.services).collect();
    sizes.dedup();
    let max = rows.iter().map(ConnectRow::p99_us).fold(1.0, f64::max);
    let min = rows.iter().map(ConnectRow::p50_us).fold(max, f64::min).max(0.1);
    let (lo, hi) = (min.log10().floor(), max.log10().ceil().max(min.log10().floor() + 1.0));
    let y = |v: f64| top + plot_h * (1.0 - (v.max(0.1).log10() - lo) / (hi - lo));
    let group_w = (width - left - 20.0) / sizes.len().max(1) as f64;
    let bar_w = group_w / (COLOURS.len() as f64 + 1.5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="20" font-size="14">TCP connect latency to a ClusterIP, p50 (bar) and p99 (tick), µs, log scale</text>"#
    );
    let mut decade = lo;
    while decade <= hi {
        let v = 10f64.powf(decade);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
            width - 20.0,
            left - 6.0,
            y(v) + 4.0,
            y = y(v),
        );
        decade += 1.0;
    }
    for (g, &services) in sizes.iter().enumerate() {
        let gx = left + g as f64 * group_w + bar_w * 0.75;
        for (k, (path, colour)) in COLOURS.iter().enumerate() {
            let Some(row) = rows.iter().find(|r| r.services == services && r.path == *path) else { continue };
            let x = gx + k as f64 * bar_w;
            let (p50, p99) = (y(row.p50_us()), y(row.p99_us()));
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{p50:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{path}, {services} services: p50 {:.1} µs, p99 {:.1} µs</title></rect><line x1="{x:.1}" x2="{:.1}" y1="{p99:.1}" y2="{p99:.1}" stroke="{colour}" stroke-width="2"/>"#,
                bar_w * 0.9,
                (top + plot_h - p50).max(0.0),
                row.p50_us(),
                row.p99_us(),
                x + bar_w * 0.9,
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{services} services</text>"#,
            gx + bar_w * COLOURS.len() as f64 / 2.0,
            top + plot_h + 18.0
        );
    }
    for (k, (path, colour)) in COLOURS.iter().enumerate() {
        let x = left + k as f64 * 150.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{:.1}" width="12" height="12" fill="{colour}"/><text x="{}" y="{:.1}">{path}</text>"#,
            height - 22.0,
            x + 18.0,
            height - 12.0
        );
    }
    out.push_str("</svg>\n");
    out
}
