//! What `lb-agent run` is told: its flags (kube-proxy's names where it has the same flag).
use std::{path::PathBuf, time::Duration};

use clap::Args;
use lb_common::capacity;

use crate::{
    kernel::{loader, pod_interfaces::Patterns, socket_scope::SocketScope},
    layout::{maglev, state::LbAlgorithm},
    nodeport_addresses::NodePortAddresses,
};

#[derive(Args)]
pub struct Config {
    /// kube-proxy's configuration file (a `KubeProxyConfiguration`, as kubeadm keeps it in the
    /// `kube-system/kube-proxy` ConfigMap): the fields that mean the same here are honoured,
    /// flags given win over it, fields that do not apply are named in one warning, and one that
    /// would ask for behaviour the agent lacks is an error.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The `--config` fields that do not apply here (warned about at start).
    #[arg(skip)]
    pub not_applicable: Vec<String>,
    /// `kubernetes` to watch the API server, or a YAML file or directory of Kubernetes objects.
    #[arg(long)]
    pub source: String,
    /// Kubeconfig for `--source kubernetes` (default: `KUBECONFIG`, `~/.kube/config`, then the
    /// in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// cgroup v2 directory to attach the socket programs to (default: the cgroup2 root, for
    /// production nodes only; tests and the demo always pass their own).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Directory on a bpf filesystem for the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    pub bpffs: PathBuf,
    /// Addresses NodePorts answer on (kube-proxy's flag): CIDRs, or `primary` for the Node
    /// object's addresses only; empty: every address of the node's interfaces and Node object.
    #[arg(long, default_value = "", value_parser = |s: &str| NodePortAddresses::parse(s).map_err(|e| e.to_string()))]
    pub nodeport_addresses: NodePortAddresses,
    /// Serve /livez, /healthz and /readyz here (kube-proxy uses 0.0.0.0:10256); empty: off.
    #[arg(long, default_value = "")]
    pub healthz_addr: String,
    /// Serve Prometheus metrics on /metrics here, with /livez, /healthz and /readyz (kube-proxy's
    /// metrics port); empty: off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_addr: String,
    /// This node's name; endpoints with this `nodeName` are local.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// How long to wait for more changes after one arrives, so a burst becomes one sync
    /// (kube-proxy's flag; a change never waits longer than this). `10ms`, `1s`…
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// Node interfaces to load-balance traffic from outside on (NodePort, LoadBalancer and
    /// external IPs, ClusterIPs): TC programs on their ingress and egress. Comma-separated;
    /// empty: socket-level load balancing only.
    #[arg(long, value_delimiter = ',', default_value = "")]
    pub interfaces: Vec<String>,
    /// XDP fast path on the `--interfaces`: flows to backends on other nodes (SNAT) are
    /// translated and sent out again before the stack sees them; everything else goes on to TC.
    /// `native` runs in the driver (falling back to `generic` where the driver refuses).
    #[arg(long, value_enum, default_value_t)]
    pub xdp: loader::XdpSetting,
    /// Let XDP translate and send packets on veth interfaces too. Only for veths whose peers
    /// compute full checksums (`ethtool -K PEER tx off`) and have NAPI (GRO or XDP on): by
    /// default XDP hands every packet arriving on a veth to TC, which carries it.
    #[arg(long)]
    pub xdp_on_veth: bool,
    /// Capacity of the TC conntrack map (two entries per flow).
    #[arg(long, default_value_t = capacity::CONNTRACK)]
    pub max_conntrack: u32,
    /// Capacity of the session-affinity map (one entry per client and Service port with
    /// `sessionAffinity: ClientIP`; least recently used entries are evicted when full).
    #[arg(long, default_value_t = capacity::AFFINITY)]
    pub max_affinity: u32,
    /// Capacity of each frontend map (IPv4 and IPv6), set when the maps are first created.
    #[arg(long, default_value_t = capacity::FRONTENDS)]
    pub max_frontends: u32,
    /// Capacity of the backend-slot map.
    #[arg(long, default_value_t = capacity::SLOTS)]
    pub max_slots: u32,
    /// Capacity of the backend map.
    #[arg(long, default_value_t = capacity::BACKENDS)]
    pub max_backends: u32,
    /// Capacity of each reverse-NAT map (one entry per translated socket and backend).
    #[arg(long, default_value_t = capacity::REVNAT)]
    pub max_revnat: u32,
    /// Capacity of the `loadBalancerSourceRanges` map (one entry per range of each LoadBalancer
    /// Service port and family).
    #[arg(long, default_value_t = capacity::SOURCE_RANGES)]
    pub max_source_ranges: u32,
    /// Capacity of the service-name and per-service counter maps (one entry per Service port,
    /// family and traffic scope).
    #[arg(long, default_value_t = capacity::SERVICES)]
    pub max_services: u32,
    /// Backend choice for NodePort, externalIP and LoadBalancer frontends: `maglev` hashes the
    /// 5-tuple so every node picks the same backend for a flow. ClusterIPs are always random.
    #[arg(long, value_enum, default_value_t)]
    pub lb_algorithm: LbAlgorithm,
    /// Entries of each Maglev table: a prime up to 65521. Each external group then takes this
    /// many slots (about 64 B of kernel memory each), so `--max-slots` must cover them.
    #[arg(long, default_value_t = maglev::DEFAULT_SIZE, value_parser = maglev::parse_size)]
    pub maglev_table_size: u32,
    /// Which sockets the cgroup hooks translate: `all`, or `host` (only the host network
    /// namespace: the node's processes and hostNetwork pods). With `host`, a pod's connect to a
    /// ClusterIP leaves its socket as it is, so a service mesh's sidecar redirect in the pod sees
    /// the ClusterIP, and the packets are translated at TC on `--pod-interfaces` (required).
    #[arg(long, value_enum, default_value_t)]
    pub socket_lb_scope: SocketScope,
    /// Host ends of pod interfaces, as shell globs (`veth*,cali*,lxc*`): TC programs on their
    /// ingress (from the pod) and egress (to the pod) translate pods' packets to ClusterIPs and
    /// the other frontends; attached to matching interfaces at start and as they appear.
    #[arg(long, default_value = "", value_parser = |s: &str| Patterns::parse(s))]
    pub pod_interfaces: Patterns,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration like 10ms or 1s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{s:?}: unit must be ms or s")),
    }
}

impl Config {
    /// Applies `--config`: each field the file sets, unless `given(flag id)` says the flag was
    /// given (command line or environment). Returns what the file said, for its warning and its
    /// log format; `None` without `--config`.
    pub fn apply_kube_proxy_config(
        &mut self,
        given: &dyn Fn(&str) -> bool,
    ) -> Result<Option<super::kube_proxy_config::FromFile>, super::kube_proxy_config::ConfigError> {
        let Some(path) = &self.config else { return Ok(None) };
        let file = super::kube_proxy_config::load(path)?;
        // An empty --node-name (or NODE_NAME) names no node: the file's hostnameOverride applies.
        if let Some(name) =
            file.node_name.clone().filter(|_| !given("node_name") || self.node_name.is_empty())
        {
            self.node_name = name;
        }
        if let Some(kubeconfig) = file.kubeconfig.clone().filter(|_| !given("kubeconfig")) {
            self.kubeconfig = Some(kubeconfig);
        }
        if let Some(addr) = file.metrics_addr.clone().filter(|_| !given("metrics_addr")) {
            self.metrics_addr = addr;
        }
        if let Some(addr) = file.healthz_addr.clone().filter(|_| !given("healthz_addr")) {
            self.healthz_addr = addr;
        }
        if let Some(list) = file.nodeport_addresses.as_deref().filter(|_| !given("nodeport_addresses")) {
            self.nodeport_addresses = NodePortAddresses::parse(list).map_err(|e| {
                super::kube_proxy_config::ConfigError::Refused {
                    path: path.clone(),
                    problems: format!("nodePortAddresses: {e}"),
                }
            })?;
        }
        if let Some(period) = file.min_sync_period.filter(|_| !given("min_sync_period")) {
            self.min_sync_period = period;
        }
        Ok(Some(file))
    }
}
