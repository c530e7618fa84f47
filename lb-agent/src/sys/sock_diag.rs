//! sock_diag (`NETLINK_SOCK_DIAG`) for UDP: list the connected sockets of the calling thread's
//! network namespace, and destroy one (`SOCK_DESTROY`, the kernel's `udp_diag_destroy`,
//! `CONFIG_INET_DIAG_DESTROY`).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::OwnedFd,
};

use super::netlink::{self, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// A connected UDP socket is in TCP_ESTABLISHED (1); an unconnected one in TCP_CLOSE.
const ESTABLISHED: u32 = 1 << 1;
/// `struct inet_diag_msg`, without its attributes.
const MSG_LEN: usize = 72;

/// One connected UDP socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSocket {
    pub family: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub interface: u32,
    pub cookie: u64,
}

/// A sock_diag socket in the calling thread's network namespace.
pub fn socket() -> std::io::Result<OwnedFd> {
    netlink::socket(NETLINK_SOCK_DIAG, 0, false)
}

/// `struct inet_diag_req_v2` for UDP with `id`.
fn request(kind: u16, flags: u16, family: u8, states: u32, id: &[u8; 48]) -> Vec<u8> {
    let mut payload = vec![family, libc::IPPROTO_UDP as u8, 0, 0];
    payload.extend_from_slice(&states.to_ne_bytes());
    payload.extend_from_slice(id);
    netlink::request(kind, flags, &payload)
}

fn addr(family: u8, bytes: &[u8], port: [u8; 2]) -> SocketAddr {
    let port = u16::from_be_bytes(port);
    if family == libc::AF_INET as u8 {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])), port)
    } else {
        let o: [u8; 16] = bytes[..16].try_into().unwrap_or_default();
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)
    }
}

/// `struct inet_diag_sockid` of `d`, as the kernel reported it.
fn sockid(d: &UdpSocket) -> [u8; 48] {
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&d.src.port().to_be_bytes());
    id[2..4].copy_from_slice(&d.dst.port().to_be_bytes());
    let put = |slot: &mut [u8], ip: IpAddr| match ip {
        IpAddr::V4(a) => slot[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => slot.copy_from_slice(&a.octets()),
    };
    put(&mut id[4..20], d.src.ip());
    put(&mut id[20..36], d.dst.ip());
    id[36..40].copy_from_slice(&d.interface.to_ne_bytes());
    id[40..44].copy_from_slice(&(d.cookie as u32).to_ne_bytes());
    id[44..48].copy_from_slice(&((d.cookie >> 32) as u32).to_ne_bytes());
    id
}

fn parse(p: &[u8]) -> Option<UdpSocket> {
    if p.len() < MSG_LEN {
        return None;
    }
    let family = p[0];
    let id = &p[4..52];
    let cookie = u64::from(u32::from_ne_bytes(id[40..44].try_into().ok()?))
        | u64::from(u32::from_ne_bytes(id[44..48].try_into().ok()?)) << 32;
    Some(UdpSocket {
        family,
        src: addr(family, &id[4..20], [id[0], id[1]]),
        dst: addr(family, &id[20..36], [id[2], id[3]]),
        interface: u32::from_ne_bytes(id[36..40].try_into().ok()?),
        cookie,
    })
}

/// Every connected UDP socket of `family` in the namespace of `sock`.
pub fn connected_udp(sock: &OwnedFd, family: u8) -> std::io::Result<Vec<UdpSocket>> {
    netlink::send(
        sock,
        &request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, ESTABLISHED, &[0; 48]),
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = netlink::recv(sock, &mut buf, false)?;
        for (kind, payload) in netlink::messages(&buf[..n]) {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => return Err(std::io::Error::from_raw_os_error(-netlink::error_code(payload))),
                SOCK_DIAG_BY_FAMILY => out.extend(parse(payload)),
                _ => {}
            }
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

/// Destroys the socket `d` (`ENOENT`: it is gone already).
pub fn destroy(sock: &OwnedFd, d: &UdpSocket) -> std::io::Result<()> {
    netlink::send(sock, &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, d.family, u32::MAX, &sockid(d)))?;
    let mut buf = vec![0u8; 4096];
    let n = netlink::recv(sock, &mut buf, false)?;
    for (kind, payload) in netlink::messages(&buf[..n]) {
        if kind == NLMSG_ERROR {
            let code = netlink::error_code(payload);
            return if code == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(-code)) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sockid_round_trips_through_the_kernels_layout() {
        for d in [
            UdpSocket {
                family: libc::AF_INET as u8,
                src: "10.0.0.1:40000".parse().expect("addr"),
                dst: "10.244.1.2:53".parse().expect("addr"),
                interface: 0,
                cookie: 0x1234_5678_9abc_def0,
            },
            UdpSocket {
                family: libc::AF_INET6 as u8,
                src: "[fd00::1]:40000".parse().expect("addr"),
                dst: "[fd00:244::2]:53".parse().expect("addr"),
                interface: 3,
                cookie: 7,
            },
        ] {
            let mut msg = vec![d.family, 1, 0, 0];
            msg.extend_from_slice(&sockid(&d));
            msg.resize(MSG_LEN, 0);
            assert_eq!(parse(&msg), Some(d));
        }
    }
}
