//! Destroying connected UDP sockets in every network namespace of the node, with sock_diag's
//! `SOCK_DESTROY` (the kernel's `udp_diag_destroy`, `CONFIG_INET_DIAG_DESTROY`): the socket is
//! disconnected and its owner's next `send` fails (`EDESTADDRREQ`) and a blocked `recv` returns
//! `ECONNABORTED`, so the application reconnects.
//!
//! sock_diag answers for one network namespace, the one of the netlink socket: the namespaces
//! are found through `/proc/*/ns/net` (the DaemonSet runs with the host's PID namespace), and each
//! is entered by a short-lived thread (`setns` changes only the calling thread).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// A connected UDP socket is in TCP_ESTABLISHED (1); an unconnected one in TCP_CLOSE.
const ESTABLISHED: u32 = 1 << 1;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`, without its attributes.
const MSG_LEN: usize = 72;

#[derive(Debug, thiserror::Error)]
pub enum SockDestroyError {
    #[error("listing network namespaces under /proc: {0}")]
    Namespaces(std::io::Error),
    #[error("in network namespace {ns}: {what}: {source}")]
    Netns { ns: PathBuf, what: &'static str, source: std::io::Error },
}

/// One connected UDP socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Diag {
    family: u8,
    src: SocketAddr,
    dst: SocketAddr,
    interface: u32,
    cookie: u64,
}

/// What to destroy: sockets with one of these cookies whose destination is the recorded backend,
/// and (when the cookie map may have lost entries) any connected UDP socket to one of
/// `by_destination`.
#[derive(Debug, Default)]
pub struct Targets {
    pub cookies: BTreeMap<u64, SocketAddr>,
    pub by_destination: BTreeSet<SocketAddr>,
}

impl Targets {
    fn matches(&self, d: &Diag) -> bool {
        let dst = canonical(d.dst);
        self.cookies.get(&d.cookie).is_some_and(|b| canonical(*b) == dst)
            || self.by_destination.contains(&dst)
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// One path per network namespace in use on the node (`/proc/<pid>/ns/net`, by inode).
fn namespaces() -> Result<Vec<PathBuf>, SockDestroyError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(SockDestroyError::Namespaces)? {
        let Ok(entry) = entry else { continue };
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        // A process may exit while we look: skip it.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Destroys the connected UDP sockets `targets` names in every network namespace; returns how
/// many were destroyed.
pub fn destroy_connected_udp(targets: &Targets) -> Result<usize, SockDestroyError> {
    if targets.cookies.is_empty() && targets.by_destination.is_empty() {
        return Ok(0);
    }
    let mut destroyed = 0;
    for ns in namespaces()? {
        // The namespace may be gone by now (its last process exited): nothing to destroy there.
        let Ok(file) = File::open(&ns) else { continue };
        let found = std::thread::scope(|s| s.spawn(|| in_namespace(&file, &ns, targets)).join());
        destroyed += found.map_err(|_| SockDestroyError::Netns {
            ns: ns.clone(),
            what: "worker thread",
            source: std::io::Error::other("panicked"),
        })??;
    }
    Ok(destroyed)
}

/// In the calling (short-lived) thread: enter `file`'s namespace and destroy the matches there.
fn in_namespace(file: &File, ns: &std::path::Path, targets: &Targets) -> Result<usize, SockDestroyError> {
    let err = |what: &'static str| {
        let ns = ns.to_owned();
        move |source| SockDestroyError::Netns { ns, what, source }
    };
    // Safety: setns on a valid namespace fd only changes this thread's network namespace; the
    // thread ends right after.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err("setns")(std::io::Error::last_os_error()));
    }
    let sock = netlink_socket().map_err(err("netlink socket"))?;
    let mut destroyed = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let sockets = dump_connected_udp(&sock, family).map_err(err("sock_diag dump"))?;
        for d in sockets.iter().filter(|d| targets.matches(d)) {
            match destroy(&sock, d) {
                Ok(()) => destroyed += 1,
                // Closed by its owner meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(err("SOCK_DESTROY")(e)),
            }
        }
    }
    Ok(destroyed)
}

fn netlink_socket() -> std::io::Result<OwnedFd> {
    // Safety: plain socket(2); the fd is owned at once.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: a fresh fd this function owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A netlink message: header, then `struct inet_diag_req_v2` for UDP with `id`.
fn request(kind: u16, flags: u16, family: u8, states: u32, id: &[u8; 48]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    m.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.extend_from_slice(&[family, libc::IPPROTO_UDP as u8, 0, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

fn send(sock: &OwnedFd, msg: &[u8]) -> std::io::Result<()> {
    // Safety: sends `msg`, a live buffer, on a valid socket (to the kernel: a zeroed sockaddr_nl
    // is not needed on an unbound netlink socket).
    let n = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn recv(sock: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // Safety: receives into `buf`, a live buffer of the given length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// The messages in one netlink datagram: (type, payload).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
        if len < NLMSG_HDR || at + len > buf.len() {
            break;
        }
        out.push((kind, &buf[at + NLMSG_HDR..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// The error code of an NLMSG_ERROR payload (0: an acknowledgement).
fn error_code(payload: &[u8]) -> i32 {
    payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
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
fn sockid(d: &Diag) -> [u8; 48] {
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

fn parse_diag(p: &[u8]) -> Option<Diag> {
    if p.len() < MSG_LEN {
        return None;
    }
    let family = p[0];
    let id = &p[4..52];
    let cookie = u64::from(u32::from_ne_bytes(id[40..44].try_into().ok()?))
        | u64::from(u32::from_ne_bytes(id[44..48].try_into().ok()?)) << 32;
    Some(Diag {
        family,
        src: addr(family, &id[4..20], [id[0], id[1]]),
        dst: addr(family, &id[20..36], [id[2], id[3]]),
        interface: u32::from_ne_bytes(id[36..40].try_into().ok()?),
        cookie,
    })
}

/// Every connected UDP socket of `family` in this thread's namespace.
fn dump_connected_udp(sock: &OwnedFd, family: u8) -> std::io::Result<Vec<Diag>> {
    send(sock, &request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, ESTABLISHED, &[0; 48]))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(sock, &mut buf)?;
        for (kind, payload) in messages(&buf[..n]) {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = error_code(payload);
                    return Err(std::io::Error::from_raw_os_error(-code));
                }
                SOCK_DIAG_BY_FAMILY => out.extend(parse_diag(payload)),
                _ => {}
            }
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

fn destroy(sock: &OwnedFd, d: &Diag) -> std::io::Result<()> {
    send(sock, &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, d.family, u32::MAX, &sockid(d)))?;
    let mut buf = vec![0u8; 4096];
    let n = recv(sock, &mut buf)?;
    for (kind, payload) in messages(&buf[..n]) {
        if kind == NLMSG_ERROR {
            let code = error_code(payload);
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
            Diag {
                family: libc::AF_INET as u8,
                src: "10.0.0.1:40000".parse().expect("addr"),
                dst: "10.244.1.2:53".parse().expect("addr"),
                interface: 0,
                cookie: 0x1234_5678_9abc_def0,
            },
            Diag {
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
            assert_eq!(parse_diag(&msg), Some(d));
        }
    }

    #[test]
    fn targets_match_by_cookie_and_destination_or_by_destination() {
        let d = |cookie, dst: &str| Diag {
            family: libc::AF_INET6 as u8,
            src: "[::ffff:10.0.0.1]:40000".parse().expect("addr"),
            dst: dst.parse().expect("addr"),
            interface: 0,
            cookie,
        };
        let mut t = Targets::default();
        t.cookies.insert(1, "10.244.1.2:53".parse().expect("addr"));
        assert!(t.matches(&d(1, "[::ffff:10.244.1.2]:53")), "v4-mapped destination of a dual-stack socket");
        assert!(!t.matches(&d(1, "[::ffff:10.244.1.3]:53")), "the cookie was reused for another socket");
        assert!(!t.matches(&d(2, "[::ffff:10.244.1.2]:53")), "another socket to that backend, not ours");
        t.by_destination.insert("10.244.1.2:53".parse().expect("addr"));
        assert!(t.matches(&d(2, "[::ffff:10.244.1.2]:53")), "the fallback by destination");
    }
}
