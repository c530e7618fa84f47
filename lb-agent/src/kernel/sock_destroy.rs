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
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

use crate::sys::{
    net,
    sock_diag::{self, UdpSocket},
};

#[derive(Debug, thiserror::Error)]
pub enum SockDestroyError {
    #[error("listing network namespaces under /proc: {0}")]
    Namespaces(std::io::Error),
    #[error("in network namespace {ns}: {what}: {source}")]
    Netns { ns: PathBuf, what: &'static str, source: std::io::Error },
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
    fn matches(&self, d: &UdpSocket) -> bool {
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
    // The thread ends right after: only it changes namespace.
    net::enter_netns(file).map_err(err("setns"))?;
    let sock = sock_diag::socket().map_err(err("netlink socket"))?;
    let mut destroyed = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let sockets = sock_diag::connected_udp(&sock, family).map_err(err("sock_diag dump"))?;
        for d in sockets.iter().filter(|d| targets.matches(d)) {
            match sock_diag::destroy(&sock, d) {
                Ok(()) => destroyed += 1,
                // Closed by its owner meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(err("SOCK_DESTROY")(e)),
            }
        }
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_by_cookie_and_destination_or_by_destination() {
        let d = |cookie, dst: &str| UdpSocket {
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
