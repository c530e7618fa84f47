//! Backend "pods": TCP and UDP servers on addresses inside a test namespace, run by threads of
//! this process. Each answers with its own address, so a client can tell which backend it reached:
//! TCP sends `ADDR\n` on accept and again for every line it receives; UDP answers every datagram
//! with `ADDR`. Every connection and datagram is recorded with its time and the peer (client) address.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::OwnedFd,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::guard::{Netns, enter_netns};

/// One connection or datagram a backend received.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    pub backend: SocketAddr,
    pub at: Instant,
    pub udp: bool,
    /// The client as the backend saw it (the accepted connection's peer, the datagram's source):
    /// shows whether the client's address was preserved or SNATed on the way.
    pub peer: SocketAddr,
}

/// Servers for a set of backend addresses. Stopped on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<Hit>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Adds each address to the namespace's `lo` (unless the namespace has it already on any
    /// interface, e.g. put there by `topology::Topology`) and serves TCP and UDP on it.
    pub fn start(netns: &Netns, backends: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut ips: Vec<_> = backends.iter().map(SocketAddr::ip).collect();
        ips.sort();
        ips.dedup();
        let present = addresses(netns)?;
        for ip in ips {
            if !present.contains(&ip) {
                netns.add_lo_address(ip)?;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for &addr in backends {
            let (tcp, udp) = bind_in(netns.open()?, addr)?;
            let (stop_t, hits_t) = (Arc::clone(&stop), Arc::clone(&hits));
            threads.push(std::thread::spawn(move || serve_tcp(tcp, addr, &stop_t, &hits_t)));
            let (stop_u, hits_u) = (Arc::clone(&stop), Arc::clone(&hits));
            threads.push(std::thread::spawn(move || serve_udp(udp, addr, &stop_u, &hits_u)));
        }
        Ok(Self { stop, hits, threads })
    }

    /// Every hit so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits lock").clone()
    }

    /// Hits on `backend` at or after `since`.
    pub fn hits_since(&self, backend: SocketAddr, since: Instant) -> usize {
        self.hits().iter().filter(|h| h.backend == backend && h.at >= since).count()
    }

    /// Hits per backend.
    pub fn counts(&self) -> BTreeMap<SocketAddr, usize> {
        let mut out = BTreeMap::new();
        for h in self.hits() {
            *out.entry(h.backend).or_default() += 1;
        }
        out
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The addresses on the namespace's interfaces.
fn addresses(netns: &Netns) -> anyhow::Result<Vec<IpAddr>> {
    let out = Command::new("ip").args(["-n", &netns.name, "-o", "addr", "show"]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip -n {} addr show failed: {}",
        netns.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // `1: lo    inet 10.244.1.2/32 scope global lo ...`
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip_while(|w| *w != "inet" && *w != "inet6").skip(1);
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// Binds in the namespace from a short-lived thread (setns is per thread); the sockets stay there.
fn bind_in(ns: OwnedFd, addr: SocketAddr) -> anyhow::Result<(TcpListener, UdpSocket)> {
    std::thread::spawn(move || -> anyhow::Result<(TcpListener, UdpSocket)> {
        enter_netns(&ns)?;
        let tcp = TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        let udp = UdpSocket::bind(addr)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok((tcp, udp))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("bind thread panicked"))?
}

fn record(hits: &Mutex<Vec<Hit>>, backend: SocketAddr, udp: bool, peer: SocketAddr) {
    hits.lock().expect("hits lock").push(Hit { backend, at: Instant::now(), udp, peer });
}

fn serve_tcp(listener: TcpListener, addr: SocketAddr, stop: &Arc<AtomicBool>, hits: &Arc<Mutex<Vec<Hit>>>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                record(hits, addr, false, peer);
                let stop = Arc::clone(stop);
                std::thread::spawn(move || serve_connection(stream, addr, &stop));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn serve_connection(mut stream: TcpStream, addr: SocketAddr, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    if writeln!(stream, "{addr}").is_err() {
        return;
    }
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                line.clear();
                if writeln!(stream, "{addr}").is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn serve_udp(socket: UdpSocket, addr: SocketAddr, stop: &AtomicBool, hits: &Mutex<Vec<Hit>>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            record(hits, addr, true, from);
            let _ = socket.send_to(addr.to_string().as_bytes(), from);
        }
    }
}
