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
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::Ebpf;
use tokio::io::unix::AsyncFd;

use super::loader;

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

/// One link change rtnetlink reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A new interface, or a change to one (state, name...).
    New {
        index: u32,
        name: String,
    },
    Gone {
        index: u32,
    },
}

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RTA_HDRLEN: usize = 4;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The link events in one datagram of rtnetlink messages (`nlmsghdr` + `ifinfomsg` + attributes).
/// Messages of other types are skipped; a truncated message ends the parse.
pub fn parse_link_messages(buf: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let msg = &buf[at + NLMSG_HDRLEN..at + len];
        at += align4(len);
        if kind != libc::RTM_NEWLINK && kind != libc::RTM_DELLINK {
            continue;
        }
        // ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32. AF_BRIDGE
        // messages speak of a bridge port (a port leaving its bridge is an RTM_DELLINK there),
        // not of the device: skipped.
        if msg.first().is_some_and(|&family| i32::from(family) == libc::AF_BRIDGE) {
            continue;
        }
        let Some(index) = u32_at(msg, 4) else { continue };
        if kind == libc::RTM_DELLINK {
            events.push(LinkEvent::Gone { index });
            continue;
        }
        let mut attr = IFINFOMSG_LEN;
        let mut name = None;
        while let (Some(alen), Some(atype)) = (u16_at(msg, attr), u16_at(msg, attr + 2)) {
            let alen = usize::from(alen);
            if alen < RTA_HDRLEN || attr + alen > msg.len() {
                break;
            }
            if atype == libc::IFLA_IFNAME {
                let value = &msg[attr + RTA_HDRLEN..attr + alen];
                let value = value.split(|&b| b == 0).next().unwrap_or_default();
                name = Some(String::from_utf8_lossy(value).into_owned());
            }
            attr += align4(alen);
        }
        if let Some(name) = name {
            events.push(LinkEvent::New { index, name });
        }
    }
    events
}

/// The interfaces of this network namespace: index → name.
fn interfaces() -> anyhow::Result<BTreeMap<u32, String>> {
    // Safety: if_nameindex returns an array ending with a zero entry, or null on error; it is
    // read up to that entry and freed once.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(std::io::Error::last_os_error()).context("if_nameindex");
        }
        let mut out = BTreeMap::new();
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned();
            out.insert((*entry).if_index, name);
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
        Ok(out)
    }
}

/// A non-blocking rtnetlink socket on the link multicast group.
fn link_socket() -> anyhow::Result<OwnedFd> {
    // Safety: plain socket(2); the result is checked before being owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_NETLINK, NETLINK_ROUTE)");
    }
    // Safety: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A larger receive buffer makes an overflow (then a full resync) rare when many pods start.
    let size: libc::c_int = 1 << 20;
    // Safety: `size` is a valid c_int for the call; failure only leaves the default size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // Safety: an all-zero sockaddr_nl is valid; the fields set are the family and groups.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // Safety: `addr` is a valid sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the rtnetlink socket to RTMGRP_LINK");
    }
    Ok(fd)
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
        // Safety: the AsyncFd owns the socket from here on, so the fd stays open while registered
        // and is closed only after deregistering.
        let socket = unsafe { AsyncFd::register(link_socket()?) }
            .map_err(|e| anyhow::anyhow!("registering the rtnetlink socket: {e}"))?;
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
        let present = interfaces()?;
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
            // Safety: `buf` is valid for writes of its length for the call.
            let n = unsafe {
                libc::recv(
                    self.socket.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
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
                }
            }
            let events = parse_link_messages(&buf[..n as usize]);
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

    fn message(kind: u16, index: u32, name: Option<&str>) -> Vec<u8> {
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[4..8].copy_from_slice(&index.to_ne_bytes());
        // An attribute before the name (IFLA_MTU = 4), to walk over.
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&4u16.to_ne_bytes());
        payload.extend_from_slice(&1500u32.to_ne_bytes());
        if let Some(name) = name {
            let value = [name.as_bytes(), &[0]].concat();
            let len = RTA_HDRLEN + value.len();
            payload.extend_from_slice(&(len as u16).to_ne_bytes());
            payload.extend_from_slice(&libc::IFLA_IFNAME.to_ne_bytes());
            payload.extend_from_slice(&value);
            payload.resize(align4(payload.len()), 0);
        }
        let len = NLMSG_HDRLEN + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0u8; 10]);
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn parses_new_and_deleted_links_and_skips_the_rest() {
        let mut buf = message(libc::RTM_NEWLINK, 7, Some("veth1a2b"));
        buf.extend(message(libc::RTM_NEWADDR, 7, Some("ignored")));
        buf.extend(message(libc::RTM_NEWLINK, 8, None));
        buf.extend(message(libc::RTM_DELLINK, 9, Some("cali0")));
        assert_eq!(
            parse_link_messages(&buf),
            vec![LinkEvent::New { index: 7, name: "veth1a2b".into() }, LinkEvent::Gone { index: 9 }]
        );
    }

    #[test]
    fn bridge_port_messages_are_not_device_events() {
        let mut bridge = message(libc::RTM_DELLINK, 7, Some("veth0"));
        bridge[NLMSG_HDRLEN] = libc::AF_BRIDGE as u8;
        let mut buf = bridge.clone();
        buf.extend(message(libc::RTM_DELLINK, 8, Some("veth1")));
        assert_eq!(parse_link_messages(&buf), vec![LinkEvent::Gone { index: 8 }]);
    }

    #[test]
    fn a_truncated_message_ends_the_parse() {
        let mut buf = message(libc::RTM_NEWLINK, 7, Some("veth0"));
        let second = message(libc::RTM_NEWLINK, 8, Some("veth1"));
        buf.extend_from_slice(&second[..second.len() - 3]);
        assert_eq!(parse_link_messages(&buf), vec![LinkEvent::New { index: 7, name: "veth0".into() }]);
        assert!(parse_link_messages(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn patterns_match_shell_globs() {
        let p = Patterns::parse("veth*, cali*,,lxc?").expect("patterns");
        assert!(p.matches("veth1a2b") && p.matches("cali12345") && p.matches("lxc1"));
        assert!(!p.matches("eth0") && !p.matches("lxc12") && !p.matches("cni0"));
        assert!(Patterns::parse("").expect("empty").is_empty());
        assert!(Patterns::parse("veth[").is_err());
    }
}
