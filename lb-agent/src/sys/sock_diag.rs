//! sock_diag (`NETLINK_SOCK_DIAG`) for UDP: list the connected sockets of the calling thread's
//! network namespace, each with its value in a socket storage map when asked (the kernel's
//! `bpf_sk_storage_diag_put`), and destroy one (`SOCK_DESTROY`, the kernel's `udp_diag_destroy`,
//! `CONFIG_INET_DIAG_DESTROY`).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd},
};

use super::netlink::{self, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// A connected UDP socket is in TCP_ESTABLISHED (1); an unconnected one in TCP_CLOSE.
const ESTABLISHED: u32 = 1 << 1;
/// `struct inet_diag_msg`, without its attributes.
const MSG_LEN: usize = 72;
/// `NLA_F_NESTED`, and the mask of an attribute's type without its flags.
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Request attribute `INET_DIAG_REQ_SK_BPF_STORAGES`, nesting `SK_DIAG_BPF_STORAGE_REQ_MAP_FD`s.
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
/// Reply attribute `INET_DIAG_SK_BPF_STORAGES`, nesting one `SK_DIAG_BPF_STORAGE` per map, which
/// nests `SK_DIAG_BPF_STORAGE_MAP_ID` and `SK_DIAG_BPF_STORAGE_MAP_VALUE`.
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
const SK_DIAG_BPF_STORAGE: u16 = 1;
const SK_DIAG_BPF_STORAGE_MAP_VALUE: u16 = 3;

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

/// `struct inet_diag_req_v2` for UDP with `id`, then the attributes `extra`.
fn request(kind: u16, flags: u16, family: u8, states: u32, id: &[u8; 48], extra: &[u8]) -> Vec<u8> {
    let mut payload = vec![family, libc::IPPROTO_UDP as u8, 0, 0];
    payload.extend_from_slice(&states.to_ne_bytes());
    payload.extend_from_slice(id);
    payload.extend_from_slice(extra);
    netlink::request(kind, flags, &payload)
}

/// One attribute: length, type, value, padded to 4 bytes.
fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(netlink::align4(4 + value.len()));
    a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(value);
    a.resize(netlink::align4(a.len()), 0);
    a
}

/// The value the socket of one dump message holds in the storage map asked for (the kernel
/// reports only the maps the request named, so the first value is that map's).
fn storage_value(p: &[u8]) -> Option<Vec<u8>> {
    let (_, storages) = netlink::attributes(p, MSG_LEN)
        .into_iter()
        .find(|(kind, _)| kind & NLA_TYPE_MASK == INET_DIAG_SK_BPF_STORAGES)?;
    let (_, storage) = netlink::attributes(storages, 0)
        .into_iter()
        .find(|(kind, _)| kind & NLA_TYPE_MASK == SK_DIAG_BPF_STORAGE)?;
    netlink::attributes(storage, 0)
        .into_iter()
        .find(|(kind, _)| kind & NLA_TYPE_MASK == SK_DIAG_BPF_STORAGE_MAP_VALUE)
        .map(|(_, value)| value.to_vec())
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

/// Every connected UDP socket of `family` in the namespace of `sock`, with its value in the socket
/// storage map `storage` when one is given (`None` for a socket without one).
pub fn connected_udp(
    sock: &OwnedFd,
    family: u8,
    storage: Option<BorrowedFd<'_>>,
) -> std::io::Result<Vec<(UdpSocket, Option<Vec<u8>>)>> {
    let extra = storage.map_or_else(Vec::new, |fd| {
        let map_fd = attribute(SK_DIAG_BPF_STORAGE_REQ_MAP_FD, &(fd.as_raw_fd() as u32).to_ne_bytes());
        attribute(INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED, &map_fd)
    });
    netlink::send(
        sock,
        &request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, ESTABLISHED, &[0; 48], &extra),
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = netlink::recv(sock, &mut buf, false)?;
        for (kind, payload) in netlink::messages(&buf[..n]) {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => return Err(std::io::Error::from_raw_os_error(-netlink::error_code(payload))),
                SOCK_DIAG_BY_FAMILY => {
                    out.extend(parse(payload).map(|d| (d, storage.and_then(|_| storage_value(payload)))));
                }
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
    netlink::send(
        sock,
        &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, d.family, u32::MAX, &sockid(d), &[]),
    )?;
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

    #[test]
    fn a_storage_value_is_found_in_its_nested_attributes() {
        let mut msg = vec![0u8; MSG_LEN];
        let value = [7u8; 12];
        let id = attribute(2, &42u32.to_ne_bytes());
        let pad = attribute(1, &[]);
        let storage = attribute(
            SK_DIAG_BPF_STORAGE | NLA_F_NESTED,
            &[pad, id, attribute(SK_DIAG_BPF_STORAGE_MAP_VALUE, &value)].concat(),
        );
        msg.extend(attribute(8, &[1])); // INET_DIAG_SHUTDOWN, before it
        assert_eq!(storage_value(&msg), None, "no storage attribute");
        msg.extend(attribute(INET_DIAG_SK_BPF_STORAGES | NLA_F_NESTED, &storage));
        assert_eq!(storage_value(&msg), Some(value.to_vec()));
    }
}
