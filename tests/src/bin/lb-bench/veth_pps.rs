//! Packets per second through veth pairs: a client floods UDP datagrams at node 1's NodePort,
//! whose only endpoint is a pod on node 2, so every packet is DNATed and SNATed on node 1 and
//! forwarded to node 2. Node 1 does it with the agent's XDP program (native, on the veth), with
//! its TC program, or with the rules kube-proxy's iptables mode installs for a NodePort.
//!
//! Each variant gets its own two-node topology (`lb_tests::topology`, network namespaces only,
//! no route out of the machine); the variants alternate in rounds. The figure is what node 2's
//! pod receives per second; the client's send rate is beside it, since on a 2-CPU machine the
//! sender and the forwarding share the CPUs.
//!
//! Node 1's own CPU cost per packet, apart from the sender's and node 2's: the receiving ends of
//! the client → node 1 and node 1 → node 2 links get NAPI (GRO on, as XDP on a veth has it anyway)
//! in threaded mode, so everything node 1 does with a packet, from its veth's poll through XDP or
//! TC, netfilter, routing and the transmit into node 2's ring, runs in one kernel thread
//! (`napi/ext0-N`) whose time on CPU (`/proc/PID/schedstat`, this kernel has no separate IRQ
//! time accounting) is divided by the packets node 2's pod received.
use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use lb_tests::{
    agent::{Agent, inspect},
    guard::{Bpffs, Cgroup, Netns, TempDir, enter_netns},
    probe::{self, Place},
    topology::{CLIENT_IF, NODE1_EXT_IF, NODE1_EXT_V4, NODE2_N1_IF, NODE2_NAME, POD2_V4, Topology},
};

use crate::kube_proxy_rules::timed_load;

const NODE_PORT: u16 = 30053;
const TARGET_PORT: u16 = 8080;

fn service() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: flood, namespace: bench}}
spec:
  type: NodePort
  clusterIP: 10.96.0.53
  ports: [{{name: dns, port: 53, nodePort: {NODE_PORT}, targetPort: {TARGET_PORT}, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: flood-1, namespace: bench, labels: {{kubernetes.io/service-name: flood}}}}
addressType: IPv4
ports: [{{name: dns, port: {TARGET_PORT}, protocol: UDP}}]
endpoints:
- {{addresses: ['{POD2_V4}'], nodeName: {NODE2_NAME}, conditions: {{ready: true}}}}
"
    )
}

/// kube-proxy's iptables-mode rules for that NodePort: KUBE-SERVICES'
/// last rule sends local destinations to KUBE-NODEPORTS, which marks for masquerade (KUBE-EXT)
/// and picks the endpoint (KUBE-SVC → KUBE-SEP → DNAT); POSTROUTING masquerades marked packets.
fn iptables_nodeport_rules() -> String {
    format!(
        "*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-FLOOD - [0:0]
:KUBE-EXT-FLOOD - [0:0]
:KUBE-SEP-FLOOD - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.53/32 -p udp -m udp --dport 53 -j KUBE-SVC-FLOOD
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p udp -m udp --dport {NODE_PORT} -j KUBE-EXT-FLOOD
-A KUBE-EXT-FLOOD -j KUBE-MARK-MASQ
-A KUBE-EXT-FLOOD -j KUBE-SVC-FLOOD
-A KUBE-SVC-FLOOD -j KUBE-SEP-FLOOD
-A KUBE-SEP-FLOOD -p udp -m udp -j DNAT --to-destination {POD2_V4}:{TARGET_PORT}
COMMIT
"
    )
}

/// Runs `ethtool ARGS` in `ns`.
fn ethtool(ns: &Netns, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg("ethtool")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("ethtool (cargo xtask setup installs it)")?;
    ensure!(status.success(), "ethtool {args:?} in {}", ns.name);
    Ok(())
}

/// The kernel's NAPI threads (`napi/DEV-ID`), by PID.
fn napi_threads() -> anyhow::Result<std::collections::BTreeSet<u32>> {
    let mut out = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.starts_with("napi/")) {
            out.insert(pid);
        }
    }
    Ok(out)
}

/// Gives `dev` in `ns` NAPI (GRO on) in threaded mode; returns the PIDs of its NAPI threads.
fn threaded_napi(ns: &Netns, dev: &str) -> anyhow::Result<Vec<u32>> {
    ethtool(ns, &["-K", dev, "gro", "on"])?;
    let before = napi_threads()?;
    // `ip netns exec` mounts the namespace's own /sys for the command (in a mount namespace of
    // its own), where the device's `threaded` switch is.
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")])
        .status()?;
    ensure!(status.success(), "threaded NAPI on {dev} in {}", ns.name);
    let new: Vec<u32> = napi_threads()?.difference(&before).copied().collect();
    ensure!(!new.is_empty(), "no NAPI thread appeared for {dev} in {}", ns.name);
    Ok(new)
}

/// Nanoseconds `pids` spent on a CPU (`/proc/PID/schedstat`'s first field).
fn cpu_ns(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().try_fold(0, |sum, pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
        let ns: u64 = stat.split_whitespace().next().context("schedstat")?.parse()?;
        Ok(sum + ns)
    })
}

/// A larger receive buffer, so the receiving thread's scheduling drops fewer datagrams.
fn set_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // Safety: a valid socket fd and a correctly sized int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Counts the datagrams node 2's pod receives.
struct Receiver {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(netns: &Netns) -> anyhow::Result<Self> {
        let fd = netns.open()?;
        let addr = SocketAddr::new(POD2_V4.parse()?, TARGET_PORT);
        let socket = std::thread::spawn(move || -> anyhow::Result<UdpSocket> {
            enter_netns(&fd)?;
            let s = UdpSocket::bind(addr)?;
            set_receive_buffer(&s, 8 << 20)?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("bind thread panicked"))??;
        let (received, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (r, s) = (Arc::clone(&received), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self { received, stop, thread: Some(thread) })
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One variant's topology, its receiver and (for the eBPF paths) node 1's agent.
struct Variant {
    name: &'static str,
    /// Node 1's NAPI thread(s) for packets from the client.
    node1_threads: Vec<u32>,
    receiver: Receiver,
    agent: Option<(Agent, Bpffs, Cgroup, TempDir)>,
    topo: Topology,
}

impl Variant {
    fn new(name: &'static str, agent_flags: Option<&[&str]>) -> anyhow::Result<Self> {
        let topo = Topology::new()?;
        // Full checksums from the client, as packets from a wire carry (an XDP_REDIRECTed frame
        // is verified by its receiver); NAPI on node 2's end, which a redirect into a veth needs.
        ethtool(&topo.client, &["-K", CLIENT_IF, "tx", "off"])?;
        // Forwarded UDP (from node 1) takes node 2's NAPI only with UDP GRO forwarding on;
        // otherwise node 2's receive would run on node 1's thread (the backlog softirq).
        ethtool(&topo.node2, &["-K", NODE2_N1_IF, "rx-udp-gro-forwarding", "on"])?;
        threaded_napi(&topo.node2, NODE2_N1_IF)?;
        let node1_threads = threaded_napi(&topo.node1, NODE1_EXT_IF)?;
        let receiver = Receiver::start(&topo.node2)?;
        let agent = match agent_flags {
            Some(flags) => {
                let (dir, cgroup, bpffs) = (TempDir::new()?, Cgroup::new()?, Bpffs::new()?);
                let source = dir.write("cluster.yaml", &service())?;
                let args = [&["--metrics-addr", ""], flags].concat();
                let agent = topo.start_node1_agent(&source, &cgroup.path, &bpffs.path, &args)?;
                Some((agent, bpffs, cgroup, dir))
            }
            None => {
                timed_load(&topo.node1, "iptables-restore", &["--noflush"], &iptables_nodeport_rules())?;
                None
            }
        };
        Ok(Self { name, node1_threads, receiver, agent, topo })
    }

    /// Floods for `millis`; returns (sent, received) per second and node 1's CPU nanoseconds
    /// per received packet.
    fn flood(&self, millis: u32) -> anyhow::Result<(f64, f64, f64)> {
        let before = self.receiver.count();
        let cpu_before = cpu_ns(&self.node1_threads)?;
        let place = Place { netns: &self.topo.client, cgroup: None };
        let to = format!("{NODE1_EXT_V4}:{NODE_PORT}");
        let lines = probe::run(&place, &["udp-flood", &to, &millis.to_string()])?;
        // Let the last packets in flight arrive.
        std::thread::sleep(Duration::from_millis(100));
        let received = self.receiver.count() - before;
        let node1_ns = (cpu_ns(&self.node1_threads)? - cpu_before) as f64 / received.max(1) as f64;
        let line = lines.first().context("no udp-flood summary")?;
        let field = |name: &str| -> anyhow::Result<f64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in {line:?}"))
        };
        let secs = field("us=")? / 1e6;
        Ok((field("sent=")? / secs, received as f64 / secs, node1_ns))
    }

    fn stat(&self, name: &str) -> u64 {
        self.agent
            .as_ref()
            .and_then(|(_, bpffs, _, _)| inspect("stats", &bpffs.path).ok())
            .and_then(|s| s["totals"][name].as_u64())
            .unwrap_or(0)
    }
}

pub struct PpsRow {
    pub path: &'static str,
    pub sent_pps: f64,
    pub received_pps: f64,
    /// Packets per second the eBPF program itself handled (XDP: redirected by XDP; TC:
    /// translated by TC): shows the path was the one named.
    pub by_program_pps: Option<f64>,
    /// Node 1's CPU time per packet (ns), its NAPI thread's.
    pub node1_ns: f64,
}

/// Floods each variant `rounds` times for `millis`, alternating; returns the mean rates.
pub fn veth_pps(rounds: u32, millis: u32) -> anyhow::Result<Vec<PpsRow>> {
    eprintln!("veth packets per second");
    let variants = [
        Variant::new("XDP (native, agent)", Some(&["--xdp", "native", "--xdp-on-veth"]))?,
        Variant::new("TC (agent)", Some(&[]))?,
        Variant::new("iptables DNAT (kube-proxy's rules)", None)?,
    ];
    // Warm-up: ARP and neighbour entries (XDP leaves a flow to TC until node 2's MAC is known),
    // and a check that each path delivers at all.
    for v in &variants {
        let (_, received, _) = v.flood(300)?;
        ensure!(received > 0.0, "{}: nothing reached node 2's pod", v.name);
    }
    let counter = |v: &Variant| match v.name {
        n if n.starts_with("XDP") => Some(v.stat("xdp_redirected")),
        n if n.starts_with("TC") => Some(v.stat("tc_translated")),
        _ => None,
    };
    let mut sums = vec![(0.0, 0.0, 0u64, 0.0); variants.len()];
    for _ in 0..rounds {
        for (v, sum) in variants.iter().zip(&mut sums) {
            let before = counter(v);
            let (sent, received, node1_ns) = v.flood(millis)?;
            sum.0 += sent;
            sum.1 += received;
            sum.2 += counter(v).zip(before).map_or(0, |(a, b)| a - b);
            sum.3 += node1_ns;
        }
    }
    let seconds = f64::from(rounds * millis) / 1000.0;
    Ok(variants
        .iter()
        .zip(sums)
        .map(|(v, (sent, received, by, node1_ns))| PpsRow {
            path: v.name,
            sent_pps: sent / f64::from(rounds),
            received_pps: received / f64::from(rounds),
            by_program_pps: counter(v).map(|_| by as f64 / seconds),
            node1_ns: node1_ns / f64::from(rounds),
        })
        .collect())
}

/// The veth section of the report.
pub fn markdown(rows: &[PpsRow], rounds: u32, millis: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Packets per second through veth pairs (UDP NodePort to a pod on another node)\n\n\
         One client floods 32-byte UDP datagrams at node 1's NodePort for {millis} ms, {rounds} rounds per\n\
         path, alternating; node 1 DNATs and SNATs each to node 2's pod. Received: what the pod's\n\
         socket got. Both CPUs carry the sender, node 1's forwarding and the receiver. Node 1's CPU\n\
         per packet: the time on CPU of the NAPI thread that carries everything node 1 does with a\n\
         packet (its receiving veth's poll, XDP or TC, netfilter, routing, the transmit to node 2;\n\
         GRO on and threaded NAPI on the receiving ends, for every path), per packet received.\n\n\
         | path on node 1 | sent (pps) | received (pps) | received / iptables | handled by the program (pps) | node 1 CPU per packet (ns) | ÷ iptables |\n\
         |---|---|---|---|---|---|---|"
    );
    let iptables = rows.iter().find(|r| r.path.starts_with("iptables"));
    let (received, cpu) = iptables.map_or((f64::NAN, f64::NAN), |r| (r.received_pps, r.node1_ns));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.2} | {} | {:.0} | {:.2} |",
            r.path,
            r.sent_pps,
            r.received_pps,
            r.received_pps / received,
            r.by_program_pps.map_or_else(|| "-".to_owned(), |s| format!("{s:.0}")),
            r.node1_ns,
            r.node1_ns / cpu
        );
    }
    out
}
