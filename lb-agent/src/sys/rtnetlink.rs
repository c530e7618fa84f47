//! rtnetlink's link messages (`RTM_NEWLINK`, `RTM_DELLINK`) and the interface list: what
//! `--pod-interfaces` follows; and a socket on the address groups, whose messages tell the agent
//! the node's addresses may have changed.
use std::{collections::BTreeMap, os::fd::OwnedFd};

use super::netlink::{self, u32_at};

/// `struct ifinfomsg`'s size.
const IFINFOMSG_LEN: usize = 16;

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

/// The link events in one datagram of rtnetlink messages (`nlmsghdr` + `ifinfomsg` + attributes).
/// Messages of other types are skipped; a truncated message ends the parse.
pub fn parse_link_messages(buf: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    for (kind, msg) in netlink::messages(buf) {
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
        let name = netlink::attributes(msg, IFINFOMSG_LEN)
            .into_iter()
            .find(|(t, _)| *t == libc::IFLA_IFNAME)
            .map(|(_, value)| {
                let value = value.split(|&b| b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(value).into_owned()
            });
        if let Some(name) = name {
            events.push(LinkEvent::New { index, name });
        }
    }
    events
}

/// A non-blocking rtnetlink socket on the link multicast group.
pub fn link_socket() -> std::io::Result<OwnedFd> {
    netlink::socket(libc::NETLINK_ROUTE, libc::RTMGRP_LINK as u32, true)
}

/// A non-blocking rtnetlink socket on the IPv4 and IPv6 address multicast groups
/// (`RTM_NEWADDR`, `RTM_DELADDR`).
pub fn address_socket() -> std::io::Result<OwnedFd> {
    netlink::socket(libc::NETLINK_ROUTE, (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32, true)
}

/// The interfaces of this network namespace: index → name.
pub fn interfaces() -> std::io::Result<BTreeMap<u32, String>> {
    // Safety: if_nameindex returns an array ending with a zero entry, or null on error; it is
    // read up to that entry and freed once.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(std::io::Error::last_os_error());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::{NLMSG_HDRLEN, align4};

    fn message(kind: u16, index: u32, name: Option<&str>) -> Vec<u8> {
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[4..8].copy_from_slice(&index.to_ne_bytes());
        // An attribute before the name (IFLA_MTU = 4), to walk over.
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&4u16.to_ne_bytes());
        payload.extend_from_slice(&1500u32.to_ne_bytes());
        if let Some(name) = name {
            let value = [name.as_bytes(), &[0]].concat();
            let len = 4 + value.len();
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
}
