//! A two-node topology for north-south tests, built from network namespaces only (nothing on the
//! host's namespace, no route out of the machine):
//!
//! ```text
//!  client              node1                                node2 (also hosts "pod2")
//!  eth0 10.0.1.2 ───── ext0 10.0.1.1
//!       fd00:1::2           fd00:1::1
//!                      n2   10.0.2.1 ────────────────────── n1 10.0.2.2
//!                           fd00:2::1                          fd00:2::2
//!                      pod1 10.244.1.1/32                   lo 10.244.2.2, fd00:244:2::2
//!                           fd00:244:1::1/128
//!                        │
//!  pod1: eth0 (no routable address; link-local fe80::2), lo 10.244.1.2, fd00:244:1::2
//! ```
//!
//! That is the routed pod network (`PodNetwork::Routed`, as Calico does it). With
//! `PodNetwork::Bridge` (the reference bridge plugin) node1's `pod1` veth end is a port of a bridge
//! `cni0` holding 10.244.1.1/24 and fd00:244:1::1/64, and pod1's addresses are on its `eth0`
//! (10.244.1.2/24, fd00:244:1::2/64) with its default routes via the bridge's addresses.
//!
//! With `PodNetwork::Plugin` node1 has no pod yet: a real CNI plugin makes them (`crate::cni`),
//! `pod1`'s namespace being the first pod's.
//!
//! node1 and node2 forward (sysctls set per namespace, see [`sysctl_in`]), rp_filter is off
//! everywhere, DAD is off. Every namespace is a [`Netns`] guard: dropping the `Topology` (or an
//! error half way through `new`) deletes all of them, which also removes their veths.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    agent::Agent,
    guard::{Netns, enter_netns},
};

pub const CLIENT_V4: &str = "10.0.1.2";
pub const CLIENT_V6: &str = "fd00:1::2";
/// node1's address on the client link (its "external" address: NodePort, externalIPs via it).
pub const NODE1_EXT_V4: &str = "10.0.1.1";
pub const NODE1_EXT_V6: &str = "fd00:1::1";
/// node1's address on the node-to-node link.
pub const NODE1_N2_V4: &str = "10.0.2.1";
pub const NODE1_N2_V6: &str = "fd00:2::1";
/// node2's address on the node-to-node link (its InternalIP).
pub const NODE2_V4: &str = "10.0.2.2";
pub const NODE2_V6: &str = "fd00:2::2";
/// node1's end of the pod1 veth (the pod's gateway).
pub const NODE1_POD_GW_V4: &str = "10.244.1.1";
pub const NODE1_POD_GW_V6: &str = "fd00:244:1::1";
/// The pod on node1 (on pod1's `lo`).
pub const POD1_V4: &str = "10.244.1.2";
pub const POD1_V6: &str = "fd00:244:1::2";
/// pod1's link-local address on its `eth0`: node1's IPv6 next hop to the pod (Linux answers
/// neighbour solicitations only for addresses on the receiving interface, and the pod's global
/// address lives on `lo`).
pub const POD1_LINK_LOCAL: &str = "fe80::2";
/// The "pod" on node2 (on node2's own `lo`).
pub const POD2_V4: &str = "10.244.2.2";
pub const POD2_V6: &str = "fd00:244:2::2";
/// Pod CIDRs: the cluster's, node1's and node2's.
pub const CLUSTER_POD_CIDR_V4: &str = "10.244.0.0/16";
pub const CLUSTER_POD_CIDR_V6: &str = "fd00:244::/32";
pub const NODE1_POD_CIDR_V4: &str = "10.244.1.0/24";
pub const NODE1_POD_CIDR_V6: &str = "fd00:244:1::/64";
pub const NODE2_POD_CIDR_V4: &str = "10.244.2.0/24";
pub const NODE2_POD_CIDR_V6: &str = "fd00:244:2::/64";

/// Kubernetes node names to give the agents (`--node-name`).
pub const NODE1_NAME: &str = "node-1";
pub const NODE2_NAME: &str = "node-2";

/// Interface names (per namespace).
pub const CLIENT_IF: &str = "eth0";
pub const NODE1_EXT_IF: &str = "ext0";
pub const NODE1_N2_IF: &str = "n2";
pub const NODE1_POD1_IF: &str = "pod1";
pub const NODE2_N1_IF: &str = "n1";
pub const POD1_IF: &str = "eth0";

/// How node1 connects its pod, as the common CNI plugins do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetwork {
    /// One /32 (/128) route per pod veth, the gateway address on the host end (Calico's way):
    /// the pod's addresses on its `lo`, its default route via the gateway on `eth0`.
    Routed,
    /// The host end of the pod veth in a Linux bridge (`cni0`) that holds the gateway address for
    /// node1's pod CIDR (the reference `bridge` plugin's way): the pod's addresses on its `eth0`.
    Bridge,
    /// Nothing for node1's pods: no pod veth, bridge, gateway address or route to node1's pod CIDR
    /// on node1, and `pod1`'s namespace stays empty, for a real CNI plugin to wire pods into
    /// afterwards (`crate::cni`). node2 and the client still route node1's pod CIDR via node1.
    Plugin,
}

/// The bridge of `PodNetwork::Bridge`, in node1.
pub const NODE1_BRIDGE_IF: &str = "cni0";

/// The namespaces of the topology; all are deleted on drop.
pub struct Topology {
    pub client: Netns,
    pub node1: Netns,
    pub node2: Netns,
    pub pod1: Netns,
}

impl Topology {
    /// `lb-agent run --source SOURCE --interfaces ext0,n2 EXTRA…` on node 1 (its programs on both
    /// of node 1's links), in `cgroup` with its pins under `bpffs`; waits until it is ready.
    pub fn start_node1_agent(
        &self,
        source: &std::path::Path,
        cgroup: &std::path::Path,
        bpffs: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let interfaces = format!("{NODE1_EXT_IF},{NODE1_N2_IF}");
        let args = [&["--interfaces", interfaces.as_str()], extra].concat();
        Agent::start_in(&self.node1, source, cgroup, bpffs, NODE1_NAME, &args)
    }

    /// The routed pod network (`PodNetwork::Routed`).
    pub fn new() -> anyhow::Result<Self> {
        Self::with_pod_network(PodNetwork::Routed)
    }

    pub fn with_pod_network(pods: PodNetwork) -> anyhow::Result<Self> {
        let topo =
            Self { client: Netns::new()?, node1: Netns::new()?, node2: Netns::new()?, pod1: Netns::new()? };
        let (client, node1, node2, pod1) = (&topo.client, &topo.node1, &topo.node2, &topo.pod1);

        // Before any interface exists, so that the ones created next inherit the defaults.
        for ns in topo.all() {
            for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
                sysctl_in(ns, key, "0")?;
            }
            for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
                sysctl_in(ns, key, "0")?;
            }
        }

        // veth pairs, made directly in their namespaces.
        client.ip(&[
            "link",
            "add",
            CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            NODE1_EXT_IF,
            "netns",
            &node1.name,
        ])?;
        node1.ip(&[
            "link",
            "add",
            NODE1_N2_IF,
            "type",
            "veth",
            "peer",
            "name",
            NODE2_N1_IF,
            "netns",
            &node2.name,
        ])?;
        let hand_built = pods != PodNetwork::Plugin;
        if hand_built {
            node1.ip(&[
                "link",
                "add",
                NODE1_POD1_IF,
                "type",
                "veth",
                "peer",
                "name",
                POD1_IF,
                "netns",
                &pod1.name,
            ])?;
        }

        // Addresses.
        add_addr(client, CLIENT_IF, &format!("{CLIENT_V4}/24"))?;
        add_addr(client, CLIENT_IF, &format!("{CLIENT_V6}/64"))?;
        add_addr(node1, NODE1_EXT_IF, &format!("{NODE1_EXT_V4}/24"))?;
        add_addr(node1, NODE1_EXT_IF, &format!("{NODE1_EXT_V6}/64"))?;
        add_addr(node1, NODE1_N2_IF, &format!("{NODE1_N2_V4}/24"))?;
        add_addr(node1, NODE1_N2_IF, &format!("{NODE1_N2_V6}/64"))?;
        if pods == PodNetwork::Bridge {
            node1.ip(&["link", "add", NODE1_BRIDGE_IF, "type", "bridge"])?;
            node1.ip(&["link", "set", NODE1_POD1_IF, "master", NODE1_BRIDGE_IF])?;
            add_addr(node1, NODE1_BRIDGE_IF, &format!("{NODE1_POD_GW_V4}/24"))?;
            add_addr(node1, NODE1_BRIDGE_IF, &format!("{NODE1_POD_GW_V6}/64"))?;
        } else if pods == PodNetwork::Routed {
            add_addr(node1, NODE1_POD1_IF, &format!("{NODE1_POD_GW_V4}/32"))?;
            add_addr(node1, NODE1_POD1_IF, &format!("{NODE1_POD_GW_V6}/128"))?;
        }
        add_addr(node2, NODE2_N1_IF, &format!("{NODE2_V4}/24"))?;
        add_addr(node2, NODE2_N1_IF, &format!("{NODE2_V6}/64"))?;
        // The pods' own addresses (Servers::start leaves addresses already there alone). pod1's
        // must exist before its routes name them as source.
        if pods == PodNetwork::Bridge {
            add_addr(pod1, POD1_IF, &format!("{POD1_LINK_LOCAL}/64"))?;
            add_addr(pod1, POD1_IF, &format!("{POD1_V4}/24"))?;
            add_addr(pod1, POD1_IF, &format!("{POD1_V6}/64"))?;
        } else if pods == PodNetwork::Routed {
            add_addr(pod1, POD1_IF, &format!("{POD1_LINK_LOCAL}/64"))?;
            add_addr(pod1, "lo", &format!("{POD1_V4}/32"))?;
            add_addr(pod1, "lo", &format!("{POD1_V6}/128"))?;
        }
        add_addr(node2, "lo", &format!("{POD2_V4}/32"))?;
        add_addr(node2, "lo", &format!("{POD2_V6}/128"))?;

        // Links up (routes need their device up).
        for (ns, dev) in
            [(client, CLIENT_IF), (node1, NODE1_EXT_IF), (node1, NODE1_N2_IF), (node2, NODE2_N1_IF)]
        {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        if hand_built {
            node1.ip(&["link", "set", NODE1_POD1_IF, "up"])?;
            pod1.ip(&["link", "set", POD1_IF, "up"])?;
        }
        if pods == PodNetwork::Bridge {
            node1.ip(&["link", "set", NODE1_BRIDGE_IF, "up"])?;
        }

        // Routes.
        client.ip(&["route", "add", CLUSTER_POD_CIDR_V4, "via", NODE1_EXT_V4])?;
        client.ip(&["-6", "route", "add", CLUSTER_POD_CIDR_V6, "via", NODE1_EXT_V6])?;
        client.ip(&["route", "add", "10.0.2.0/24", "via", NODE1_EXT_V4])?;
        client.ip(&["-6", "route", "add", "fd00:2::/64", "via", NODE1_EXT_V6])?;

        // The bridge's own addresses give node1 its connected pod-CIDR routes.
        if pods == PodNetwork::Routed {
            node1.ip(&["route", "add", &format!("{POD1_V4}/32"), "dev", NODE1_POD1_IF])?;
            node1.ip(&[
                "-6",
                "route",
                "add",
                &format!("{POD1_V6}/128"),
                "via",
                POD1_LINK_LOCAL,
                "dev",
                NODE1_POD1_IF,
            ])?;
        }
        node1.ip(&["route", "add", NODE2_POD_CIDR_V4, "via", NODE2_V4])?;
        node1.ip(&["-6", "route", "add", NODE2_POD_CIDR_V6, "via", NODE2_V6])?;

        if pods == PodNetwork::Routed {
            pod1.ip(&["route", "add", &format!("{NODE1_POD_GW_V4}/32"), "dev", POD1_IF])?;
            pod1.ip(&["-6", "route", "add", &format!("{NODE1_POD_GW_V6}/128"), "dev", POD1_IF])?;
        }
        if hand_built {
            pod1.ip(&["route", "add", "default", "via", NODE1_POD_GW_V4, "dev", POD1_IF, "src", POD1_V4])?;
            pod1.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                NODE1_POD_GW_V6,
                "dev",
                POD1_IF,
                "src",
                POD1_V6,
            ])?;
        }

        node2.ip(&["route", "add", NODE1_POD_CIDR_V4, "via", NODE1_N2_V4])?;
        node2.ip(&["route", "add", "10.0.1.0/24", "via", NODE1_N2_V4])?;
        node2.ip(&["-6", "route", "add", NODE1_POD_CIDR_V6, "via", NODE1_N2_V6])?;
        node2.ip(&["-6", "route", "add", "fd00:1::/64", "via", NODE1_N2_V6])?;

        // Forwarding on the nodes, once their interfaces exist.
        for ns in [node1, node2] {
            sysctl_in(ns, "net.ipv4.ip_forward", "1")?;
            sysctl_in(ns, "net.ipv6.conf.all.forwarding", "1")?;
        }

        topo.wait_no_tentative(Duration::from_secs(3))?;
        Ok(topo)
    }

    /// Another pod on node1, made the way `PodNetwork::Routed` makes pod1: a veth whose node1 end
    /// is `host_if` (holding the gateway address, with a /32 route to the pod), the pod's IPv4
    /// address `v4` on its `lo`, its default route via the gateway. The namespace (and with it
    /// the veth) is deleted when the returned guard drops. Made after the agent started, its
    /// veth is one the agent has to find as it appears.
    pub fn add_pod(&self, host_if: &str, v4: &str) -> anyhow::Result<Netns> {
        let pod = Netns::new()?;
        sysctl_in(&pod, "net.ipv4.conf.all.rp_filter", "0")?;
        self.node1
            .ip(&["link", "add", host_if, "type", "veth", "peer", "name", POD1_IF, "netns", &pod.name])?;
        add_addr(&self.node1, host_if, &format!("{NODE1_POD_GW_V4}/32"))?;
        add_addr(&pod, "lo", &format!("{v4}/32"))?;
        self.node1.ip(&["link", "set", host_if, "up"])?;
        pod.ip(&["link", "set", POD1_IF, "up"])?;
        self.node1.ip(&["route", "add", &format!("{v4}/32"), "dev", host_if])?;
        pod.ip(&["route", "add", &format!("{NODE1_POD_GW_V4}/32"), "dev", POD1_IF])?;
        pod.ip(&["route", "add", "default", "via", NODE1_POD_GW_V4, "dev", POD1_IF, "src", v4])?;
        Ok(pod)
    }

    /// Every namespace of the topology.
    pub fn all(&self) -> [&Netns; 4] {
        [&self.client, &self.node1, &self.node2, &self.pod1]
    }

    /// Their names (`ip netns list` shows them while the topology lives).
    pub fn names(&self) -> Vec<String> {
        self.all().iter().map(|ns| ns.name.clone()).collect()
    }

    /// Waits (bounded) until no namespace has a tentative IPv6 address.
    fn wait_no_tentative(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = Vec::new();
            for ns in self.all() {
                let out = ip_output(ns, &["-6", "addr", "show", "tentative"])?;
                if out.contains("inet6") {
                    pending.push(format!("{}:\n{out}", ns.name));
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "IPv6 addresses still tentative after {timeout:?}:\n{}",
                pending.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn add_addr(ns: &Netns, dev: &str, cidr: &str) -> anyhow::Result<()> {
    if cidr.contains(':') {
        ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])
    } else {
        ns.ip(&["addr", "add", cidr, "dev", dev])
    }
}

/// Runs `ip -n NS ARGS...` and returns its stdout.
pub fn ip_output(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").arg("-n").arg(&ns.name).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip -n {} {args:?} failed: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `/proc/sys/...` path of a sysctl key (`net.ipv4.ip_forward` or `net/ipv4/ip_forward`).
fn sysctl_path(key: &str) -> String {
    let rel = if key.contains('/') { key.to_owned() } else { key.replace('.', "/") };
    format!("/proc/sys/{}", rel.trim_start_matches('/'))
}

/// Runs `f` on a short-lived thread that has entered `ns` (setns is per thread; /proc/sys/net is
/// resolved against the calling thread's network namespace). Refuses to run `f` if the thread is
/// still in the caller's namespace afterwards, so a sysctl can never land on the host.
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let fd = ns.open()?;
    let name = ns.name.clone();
    std::thread::spawn(move || -> anyhow::Result<T> {
        let before = std::fs::read_link("/proc/thread-self/ns/net")?;
        enter_netns(&fd)?;
        let after = std::fs::read_link("/proc/thread-self/ns/net")?;
        anyhow::ensure!(before != after, "setns into {name} left the thread in {before:?}");
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// Sets a sysctl inside `ns` only (never via `ip netns exec`, which remounts /sys), and checks
/// it by reading it back there.
pub fn sysctl_in(ns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = sysctl_path(key);
    let value = value.to_owned();
    let name = ns.name.clone();
    in_netns(ns, move || {
        std::fs::write(&path, &value).map_err(|e| anyhow::anyhow!("writing {path} in {name}: {e}"))?;
        let read = std::fs::read_to_string(&path)?;
        anyhow::ensure!(
            read.trim() == value,
            "{path} in {name} reads {:?} after writing {value:?}",
            read.trim()
        );
        Ok(())
    })
}

/// Reads a sysctl inside `ns`.
pub fn sysctl_get(ns: &Netns, key: &str) -> anyhow::Result<String> {
    let path = sysctl_path(key);
    in_netns(ns, move || Ok(std::fs::read_to_string(&path)?.trim().to_owned()))
}
