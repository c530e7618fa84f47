//! The node's own addresses, followed. NodePorts answer on every address of the node's
//! interfaces (`--nodeport-addresses` unset or CIDRs), which a sync reads when it runs; an
//! address that appears later (the gateway address a CNI bridge plugin gives `cni0` with the
//! node's first pod, a DHCP lease, a secondary IP) must not wait for the next Service change.
//! rtnetlink's address groups wake the agent; it syncs when the addresses NodePorts would answer
//! on differ from the last ones seen (a new pod veth's link-local address does not count).
use std::{net::IpAddr, os::fd::OwnedFd};

use tokio::io::unix::AsyncFd;

use crate::{
    nodeport_addresses::{NodePortAddresses, interface_addresses},
    sys::{async_fd, netlink, rtnetlink},
};

pub struct AddressWatch {
    filter: NodePortAddresses,
    socket: AsyncFd<OwnedFd>,
    /// The addresses NodePorts would answer on, when last read.
    last: Vec<IpAddr>,
}

impl AddressWatch {
    /// Subscribes, then reads the addresses (so a change meanwhile is not missed). `None` with
    /// `primary` (only the Node object's addresses count).
    pub fn start(filter: &NodePortAddresses) -> std::io::Result<Option<Self>> {
        if *filter == NodePortAddresses::Primary {
            return Ok(None);
        }
        let socket = async_fd::readable(rtnetlink::address_socket()?)?;
        let mut this = Self { filter: filter.clone(), socket, last: Vec::new() };
        this.last = this.current();
        Ok(Some(this))
    }

    fn current(&self) -> Vec<IpAddr> {
        let interfaces = interface_addresses().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list this node's interface addresses");
            Vec::new()
        });
        self.filter.select(&[], &interfaces)
    }

    /// Waits until rtnetlink has something to read; then call `changed`.
    pub async fn readable(&self) {
        match self.socket.readable().await {
            // Cleared before `changed` reads to the end: anything arriving later wakes us again.
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => {
                tracing::warn!(error = %e, "rtnetlink socket failed; the node's addresses are no longer followed");
                std::future::pending::<()>().await;
            }
        }
    }

    /// Reads every queued message (an overflow only means more changes) and says whether the
    /// addresses NodePorts would answer on changed since the last call.
    pub fn changed(&mut self) -> bool {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match netlink::recv(self.socket.get_ref(), &mut buf, true) {
                Ok(_) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::ENOBUFS) => {}
                    Some(libc::EAGAIN) => break,
                    _ => {
                        tracing::warn!(error = %e, "reading rtnetlink");
                        break;
                    }
                },
            }
        }
        let now = self.current();
        if now == self.last {
            return false;
        }
        tracing::info!(before = ?self.last, after = ?now, "the node's addresses changed");
        self.last = now;
        true
    }
}
