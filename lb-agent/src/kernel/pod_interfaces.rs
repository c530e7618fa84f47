//! `--pod-interfaces GLOB,...`: the TC programs on the host end of every pod interface whose name
//! matches, attached to the ones present at start and to each one that appears later, as rtnetlink
//! reports it (`RTM_NEWLINK` on the link multicast group). Ingress there is traffic from the pod,
//! so a pod's packets to a ClusterIP are translated per packet (with `--socket-lb-scope host`,
//! where its socket was not); egress is traffic towards the pod, where replies are translated
//! back to come from the ClusterIP.
//!
//! The links are pinned as `links/pod-<interface>-<direction>`: a restarted agent attaches its
//! own next to them and renames its pins over theirs (no moment without a program), then removes
//! the pins of interfaces that are gone or no longer match. The kernel drops a TCX link with its
//! device; `RTM_DELLINK` removes the pin.
use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::Ebpf;
use tokio::io::unix::AsyncFd;

use super::loader;
use crate::sys::{
    async_fd, netlink,
    rtnetlink::{self, LinkEvent},
};

/// The interface-name patterns of `--pod-interfaces` (shell globs: `*`, `?`, `[...]`).
#[derive(Clone, Debug, Default)]
pub struct Patterns(Vec<glob::Pattern>);

impl Patterns {
    /// Parses `veth*,cali*`; empty items are ignored.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| glob::Pattern::new(p).map_err(|e| format!("--pod-interfaces pattern {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }
}

/// The pod interfaces the agent has attached to, kept in step with rtnetlink.
pub struct PodInterfaces {
    patterns: Patterns,
    bpffs: PathBuf,
    /// ifindex → name, of the interfaces with our links.
    attached: BTreeMap<u32, String>,
    socket: AsyncFd<OwnedFd>,
}

impl PodInterfaces {
    /// Subscribes to link changes, then attaches to every matching interface present and removes
    /// the pins of earlier agents' links whose interface is gone or no longer matches. (The
    /// subscription comes first, so an interface made meanwhile is not missed.)
    pub fn start(ebpf: &mut Ebpf, patterns: Patterns, bpffs: &Path) -> anyhow::Result<Self> {
        let link_socket = rtnetlink::link_socket().context("rtnetlink socket on the link group")?;
        let socket = async_fd::readable(link_socket).context("registering the rtnetlink socket")?;
        let mut this = Self { patterns, bpffs: bpffs.to_owned(), attached: BTreeMap::new(), socket };
        this.resync(ebpf)?;
        Ok(this)
    }

    /// The interfaces attached now, by name.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.values().map(String::as_str)
    }

    /// Brings the links in line with the interfaces present (at start, and after the socket
    /// overflowed and events were lost).
    fn resync(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        let present = rtnetlink::interfaces().context("listing the interfaces")?;
        let gone: Vec<u32> = self
            .attached
            .iter()
            .filter(|(index, name)| present.get(index) != Some(name))
            .map(|(index, _)| *index)
            .collect();
        for index in gone {
            self.forget(index);
        }
        for (index, name) in present {
            self.link_changed(ebpf, index, &name);
        }
        // Pins no interface of ours owns now: an earlier agent's, for interfaces gone or no
        // longer matching, and `_new` pins a crash left.
        let keep: Vec<String> = self.attached.values().flat_map(|n| loader::pod_pin_names(n)).collect();
        for pin in loader::pod_pins(&self.bpffs)? {
            if !keep.contains(&pin) && loader::remove_link_pin(&self.bpffs, &pin)? {
                tracing::info!(pin, "removed the link pin of a pod interface no longer present or matching");
            }
        }
        Ok(())
    }

    /// `RTM_NEWLINK` for `index` named `name`: attach if it matches and is not attached yet,
    /// follow a rename, or detach if it no longer matches. Failures are logged: one pod's
    /// interface must not stop the agent.
    fn link_changed(&mut self, ebpf: &mut Ebpf, index: u32, name: &str) {
        let matches = self.patterns.matches(name);
        match self.attached.get(&index).cloned() {
            Some(old) if old == name => {}
            Some(old) if matches => {
                // Renamed: the links stay on the device; their pins follow the name.
                for (from, to) in loader::pod_pin_names(&old).iter().zip(loader::pod_pin_names(name)) {
                    if let Err(e) = loader::rename_link_pin(&self.bpffs, from, &to) {
                        tracing::warn!(interface = name, error = %e, "cannot rename the pod interface's link pin");
                    }
                }
                self.attached.insert(index, name.to_owned());
            }
            Some(_) => self.forget(index),
            None if matches => match loader::attach_pod_tc(ebpf, name, &self.bpffs) {
                Ok(pinned) => {
                    tracing::info!(interface = name, ifindex = index, pinned, "TC attached to pod interface");
                    self.attached.insert(index, name.to_owned());
                }
                Err(e) => {
                    tracing::warn!(
                        interface = name,
                        error = format!("{e:#}"),
                        "cannot attach TC to pod interface"
                    )
                }
            },
            None => {}
        }
    }

    /// Removes the pins of interface `index` (detaching the links if the device is still there).
    fn forget(&mut self, index: u32) {
        let Some(name) = self.attached.remove(&index) else { return };
        for pin in loader::pod_pin_names(&name) {
            if let Err(e) = loader::remove_link_pin(&self.bpffs, &pin) {
                tracing::warn!(interface = name, error = %e, "cannot remove the pod interface's link pin");
            }
        }
        tracing::info!(
            interface = name,
            ifindex = index,
            "pod interface gone or no longer matching; links removed"
        );
    }

    /// Waits until rtnetlink has something to read; then call `handle`.
    pub async fn changed(&self) {
        match self.socket.readable().await {
            // Cleared before `handle` reads to the end: anything arriving later wakes us again.
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => {
                tracing::warn!(error = %e, "rtnetlink socket failed; pod interfaces are no longer followed");
                std::future::pending::<()>().await;
            }
        }
    }

    /// Reads every queued link change and applies it.
    pub fn handle(&mut self, ebpf: &mut Ebpf) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match netlink::recv(self.socket.get_ref(), &mut buf, true) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        tracing::warn!("rtnetlink overflowed; re-reading every interface");
                        if let Err(e) = self.resync(ebpf) {
                            tracing::warn!(error = format!("{e:#}"), "pod interface resync failed");
                        }
                        continue;
                    }
                    _ => {
                        tracing::warn!(error = %e, "reading rtnetlink");
                        return;
                    }
                },
            };
            let events = rtnetlink::parse_link_messages(&buf[..n]);
            for event in events {
                match event {
                    LinkEvent::New { index, name } => self.link_changed(ebpf, index, &name),
                    LinkEvent::Gone { index } => self.forget(index),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_shell_globs() {
        let p = Patterns::parse("veth*, cali*,,lxc?").expect("patterns");
        assert!(p.matches("veth1a2b") && p.matches("cali12345") && p.matches("lxc1"));
        assert!(!p.matches("eth0") && !p.matches("lxc12") && !p.matches("cni0"));
        assert!(Patterns::parse("").expect("empty").is_empty());
        assert!(Patterns::parse("veth[").is_err());
    }
}
