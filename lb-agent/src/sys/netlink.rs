//! Netlink sockets and their framing, shared by rtnetlink (link changes, `--pod-interfaces`) and
//! sock_diag (connected UDP sockets): one socket constructor, one send and receive, one parser
//! of `nlmsghdr` sequences.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// `struct nlmsghdr`'s size.
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;

/// Netlink messages and attributes are 4-byte aligned.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// A netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`…), non-blocking when
/// asked, bound to the multicast `groups` when not 0.
pub fn socket(protocol: libc::c_int, groups: u32, nonblocking: bool) -> std::io::Result<OwnedFd> {
    let kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // Safety: plain socket(2); the result is checked before being owned.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, kind, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if groups != 0 {
        // A larger receive buffer makes an overflow (then a full resync) rare in bursts.
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
        addr.nl_groups = groups;
        // Safety: `addr` is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Sends one datagram to the kernel.
pub fn send(sock: &OwnedFd, msg: &[u8]) -> std::io::Result<()> {
    // Safety: sends `msg`, a live buffer, on a valid socket (an unbound netlink socket sends to
    // the kernel without an address).
    let n = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Receives one datagram into `buf` (`MSG_DONTWAIT` when `nonblocking`); its length.
pub fn recv(sock: &OwnedFd, buf: &mut [u8], nonblocking: bool) -> std::io::Result<usize> {
    let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    // Safety: receives into `buf`, a live buffer of the given length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// A request: `nlmsghdr` (sequence 1, to the kernel) then `payload`.
pub fn request(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + payload.len());
    m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.extend_from_slice(payload);
    m
}

/// The messages in one datagram: (type, payload). A truncated message ends the list.
pub fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        out.push((kind, &buf[at + NLMSG_HDRLEN..at + len]));
        at += align4(len);
    }
    out
}

/// The error code of an `NLMSG_ERROR` payload (0: an acknowledgement; otherwise `-errno`).
pub fn error_code(payload: &[u8]) -> i32 {
    payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
}

/// The attributes (`struct rtattr`/`nlattr`: length, type, value) from `at` in `msg`: (type,
/// value). A truncated attribute ends the list.
pub fn attributes(msg: &[u8], mut at: usize) -> Vec<(u16, &[u8])> {
    const RTA_HDRLEN: usize = 4;
    let mut out = Vec::new();
    while let (Some(len), Some(kind)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
        let len = usize::from(len);
        if len < RTA_HDRLEN || at + len > msg.len() {
            break;
        }
        out.push((kind, &msg[at + RTA_HDRLEN..at + len]));
        at += align4(len);
    }
    out
}
