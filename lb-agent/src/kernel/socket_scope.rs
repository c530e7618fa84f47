//! `--socket-lb-scope`: which sockets the cgroup hooks translate (`lb_common::socket_scope`).
//!
//! With `host`, only sockets in the agent's own network namespace (the node's processes and
//! hostNetwork pods) are translated at connect/send; a pod's connect to a ClusterIP leaves its
//! socket untouched, so a service mesh's redirect inside the pod (Istio's and Linkerd's iptables
//! rules, which read the original destination with `SO_ORIGINAL_DST`) still sees the ClusterIP,
//! and the TC programs on the pod interfaces (`--pod-interfaces`) translate the packets.
use anyhow::Context as _;
use aya::{Ebpf, maps::Array};
use lb_common::socket_scope;

/// `--socket-lb-scope`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketScope {
    /// Every socket in the cgroup: pods and host alike (no per-packet work for pods).
    #[default]
    All,
    /// Only sockets in the host's network namespace; pods' traffic is translated per packet at TC
    /// on `--pod-interfaces`.
    Host,
}

/// The cookie of the calling thread's network namespace, the value `bpf_get_netns_cookie` gives
/// the programs for a socket there.
pub fn own_netns_cookie() -> anyhow::Result<u64> {
    let cookie = crate::sys::net::own_netns_cookie()
        .context("getsockopt(SO_NETNS_COOKIE) (Linux 5.14+ needed for --socket-lb-scope host)")?;
    anyhow::ensure!(cookie != socket_scope::ALL, "the kernel gave network namespace cookie 0");
    Ok(cookie)
}

/// Writes the scope into the programs' `LB_SOCKET_SCOPE` (before they are attached).
pub fn program(ebpf: &mut Ebpf, scope: SocketScope) -> anyhow::Result<()> {
    let value = match scope {
        SocketScope::All => socket_scope::ALL,
        SocketScope::Host => own_netns_cookie()?,
    };
    let mut map: Array<_, u64> = ebpf
        .map_mut(socket_scope::MAP)
        .with_context(|| format!("map {} is missing from the eBPF object", socket_scope::MAP))?
        .try_into()
        .with_context(|| format!("map {} is not an array of u64", socket_scope::MAP))?;
    map.set(0, value, 0).with_context(|| format!("writing {}", socket_scope::MAP))?;
    tracing::info!(scope = ?scope, host_netns_cookie = value, "socket load-balancing scope");
    Ok(())
}
