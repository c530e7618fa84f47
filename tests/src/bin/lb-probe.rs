//! Test client, run inside a test cgroup and namespace by the harness. One line of output per
//! attempt: `ok <backend-reply> [from=<addr>] [peer=<addr>]` or `err os=<errno> <message> us=<elapsed>`.
//!
//! lb-probe tcp ADDR COUNT            COUNT connections, each reads the backend's greeting
//! lb-probe udp ADDR COUNT            COUNT datagrams from one unconnected socket (sendto/recvfrom)
//! lb-probe udp-connected ADDR COUNT  one connected UDP socket, COUNT send/recv rounds
//! lb-probe tcp-hold ADDR             one connection; a round trip per line on stdin
//! lb-probe tcp-loop ADDR MILLIS      connections back to back for MILLIS; prints a summary
//! lb-probe tcp-log ADDR MILLIS       as tcp-loop, one line per connection: `<start ns> ok <reply>`
//!                                    or `<start ns> err …`, start on CLOCK_MONOTONIC
//! lb-probe udp-log ADDR MILLIS       the same with request/reply datagrams over one unconnected
//!                                    socket (sendto/recvfrom), as a resolver
//! lb-probe udp-resolver ADDR MILLIS  as a resolver keeps its socket: one connected UDP socket,
//!                                    a query every 10 ms for MILLIS, one line per query
//!                                    (`<start ns> ok <reply>`, `<start ns> timeout`, or
//!                                    `<start ns> err …`); after an error it opens a new socket
//! lb-probe tcp-connect ADDR COUNT    COUNT connects back to back, each closed at once with a reset
//!                                    (no TIME_WAIT); one line per connect, its latency in ns or
//!                                    `err …`, then `done us=<wall time of all>` (the bench)
//! lb-probe tcp-connect-pair A N B [A2 …]
//!                                    N pairs of connects, one to B and one to an A (A, A2, … in
//!                                    turn), A first in even pairs and B first in odd ones, each
//!                                    closed with a reset; one line per connect, `a <ns>` /
//!                                    `b <ns>` or `err …` (the bench: a ClusterIP against direct
//!                                    connects to its backends, same client)
//! lb-probe original-dst ADDR COUNT  a sidecar proxy's listener: prints `listening`, then accepts
//!                                    COUNT connections on ADDR; for each, reads the destination
//!                                    the client dialled (SO_ORIGINAL_DST, set by an iptables
//!                                    REDIRECT) and sends and prints `orig=<addr>`
//! lb-probe udp-flood ADDR MILLIS     32-byte datagrams from one connected socket, back to back for
//!                                    MILLIS; prints `sent=<n> errors=<n> us=<elapsed>` (the bench)
//! lb-probe udp-burst ADDR N          N datagrams from one unconnected socket back to back, then
//!                                    N replies read, one line each (`ok <reply> from=<addr>`)
//! lb-probe same-port A B           one connection to A, held, and a second from the same local
//!                                    port to B (SO_REUSEADDR), as a client that reuses its port
//!                                    for another destination; two lines, `first ok <reply>
//!                                    port=<local port>` and `second ok <reply>` or `… err …`
//! lb-probe hold ADDR N               long-lived sockets: N TCP connections, N connected and N
//!                                    unconnected UDP sockets (each sends once), all kept open;
//!                                    checks them at once and after every line on stdin, one line
//!                                    per check: `check tcp=<ok>/N udp-connected=<ok>/N
//!                                    udp=<ok>/N first_bad=<what>`, where ok means a round trip
//!                                    whose peer (getpeername) and reply source (recvfrom) are ADDR
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn err_line(e: &std::io::Error, started: Instant) -> String {
    format!("err os={} {e} us={}", e.raw_os_error().unwrap_or(0), started.elapsed().as_micros())
}

fn tcp_once(addr: SocketAddr) -> std::io::Result<(String, TcpStream)> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    Ok((line.trim().to_owned(), stream))
}

/// SO_LINGER 0: the close sends a reset and leaves no TIME_WAIT socket behind, so a long run
/// of connects does not run out of ports.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    if let Err(e) = set_socket_option(stream.as_raw_fd(), libc::SO_LINGER, &linger) {
        panic!("SO_LINGER: {e}");
    }
}

/// The IPv4 destination a redirected connection was sent to before netfilter's REDIRECT
/// (`getsockopt(SOL_IP, SO_ORIGINAL_DST)`, as Envoy and Linkerd's proxy read it).
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    use std::os::fd::AsRawFd as _;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // Safety: an all-zero sockaddr_in is valid; the kernel writes at most `len` bytes into it.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // Safety: a valid socket fd, and `sin`/`len` valid for writes for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&raw mut sin).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
}

/// A TCP connection to `to` from local port `port` (0: any) of a socket with SO_REUSEADDR, so
/// that a second socket may take the port of a first one that is still connected.
fn tcp_from_port(to: SocketAddr, port: u16) -> std::io::Result<(String, TcpStream)> {
    use std::os::fd::FromRawFd as _;
    let family = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // Safety: socket(2) with constant arguments; the fd is owned by `stream` at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: a fresh socket fd that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    set_socket_option(fd, libc::SO_REUSEADDR, &(1 as libc::c_int))?;
    // A blocking connect gives up after SO_SNDTIMEO.
    let timeout = libc::timeval { tv_sec: TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    set_socket_option(fd, libc::SO_SNDTIMEO, &timeout)?;
    let local: SocketAddr = SocketAddr::new(unspecified(to).parse::<SocketAddr>().expect("addr").ip(), port);
    // Safety: a valid fd; each `sockaddr` holds a sockaddr of `len` bytes for its call.
    let rc = unsafe {
        let (sockaddr, len) = sockaddr_of(local);
        let rc = libc::bind(fd, (&raw const sockaddr).cast(), len);
        if rc == 0 {
            let (sockaddr, len) = sockaddr_of(to);
            libc::connect(fd, (&raw const sockaddr).cast(), len)
        } else {
            rc
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    Ok((line.trim().to_owned(), stream))
}

/// `setsockopt(fd, SOL_SOCKET, name, value)`.
fn set_socket_option<T>(fd: libc::c_int, name: libc::c_int, value: &T) -> std::io::Result<()> {
    // Safety: a valid fd and a value of the size passed that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// `addr` as a `sockaddr_storage` and its length.
fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // Safety: an all-zero sockaddr_storage is valid; it is large and aligned enough for both
    // sockaddr_in and sockaddr_in6, which are written into it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // Safety: see above.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // Safety: see above.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn unspecified(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
}

/// Long-lived sockets to one address (`hold`).
struct Held {
    addr: SocketAddr,
    tcp: Vec<(TcpStream, BufReader<TcpStream>)>,
    connected: Vec<UdpSocket>,
    unconnected: Vec<UdpSocket>,
}

impl Held {
    fn open(addr: SocketAddr, n: u64) -> std::io::Result<Self> {
        let mut held = Self { addr, tcp: Vec::new(), connected: Vec::new(), unconnected: Vec::new() };
        let mut buf = [0u8; 1500];
        for _ in 0..n {
            let (_, stream) = tcp_once(addr)?;
            let reader = BufReader::new(stream.try_clone()?);
            held.tcp.push((stream, reader));
            let udp = UdpSocket::bind(unspecified(addr))?;
            udp.set_read_timeout(Some(TIMEOUT))?;
            udp.connect(addr)?;
            held.connected.push(udp);
            let udp = UdpSocket::bind(unspecified(addr))?;
            udp.set_read_timeout(Some(TIMEOUT))?;
            udp.send_to(b"ping", addr)?;
            udp.recv_from(&mut buf)?;
            held.unconnected.push(udp);
        }
        Ok(held)
    }

    /// One round trip on every socket: (ok TCP, ok connected UDP, ok unconnected UDP, the first
    /// failure).
    fn check(&mut self) -> (usize, usize, usize, String) {
        let addr = self.addr;
        let mut first_bad = String::new();
        let mut bad = |what: String| {
            if first_bad.is_empty() {
                first_bad = what.replace(' ', "_");
            }
        };
        let mut buf = [0u8; 1500];
        let mut tcp = 0;
        for (stream, reader) in &mut self.tcp {
            let mut line = String::new();
            match (stream.peer_addr(), writeln!(stream, "ping").and_then(|()| reader.read_line(&mut line))) {
                (Ok(peer), Ok(n)) if peer == addr && n > 0 => tcp += 1,
                (peer, read) => bad(format!("tcp peer={peer:?} read={read:?}")),
            }
        }
        let mut connected = 0;
        for udp in &self.connected {
            let reply = udp.send(b"ping").and_then(|_| udp.recv_from(&mut buf));
            match (udp.peer_addr(), reply) {
                (Ok(peer), Ok((_, from))) if peer == addr && from == addr => connected += 1,
                (peer, reply) => bad(format!("udp-connected peer={peer:?} reply={reply:?}")),
            }
        }
        let mut unconnected = 0;
        for udp in &self.unconnected {
            match udp.send_to(b"ping", addr).and_then(|_| udp.recv_from(&mut buf)) {
                Ok((_, from)) if from == addr => unconnected += 1,
                reply => bad(format!("udp reply={reply:?}")),
            }
        }
        (tcp, connected, unconnected, first_bad)
    }
}

/// Raises the soft limit of open files to the hard one (`hold` keeps thousands of sockets).
fn raise_nofile() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: getrlimit/setrlimit with a valid, correctly sized rlimit that outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// With `LB_PROBE_NETNS_THREAD=PATH` the probe works from a second thread that enters the
/// network namespace at PATH, while the process (its main thread, what `/proc/PID/ns/net`
/// shows) stays where it started: a namespace no visible process is in, as a pod's is to an
/// agent without the host's PID namespace.
fn main() {
    let Some(path) = std::env::var_os("LB_PROBE_NETNS_THREAD") else {
        return probe();
    };
    let ns = std::fs::File::open(&path).expect("LB_PROBE_NETNS_THREAD: open");
    let worker = std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        // Safety: setns on an open namespace fd changes only this thread's network namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        probe();
    });
    if worker.join().is_err() {
        std::process::exit(101);
    }
}

fn probe() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: lb-probe tcp|udp|udp-connected|tcp-hold|tcp-loop|tcp-log|udp-log|tcp-connect|tcp-connect-pair|udp-flood|udp-resolver|original-dst|hold|udp-burst|same-port ADDR [N|B]";
    let (Some(mode), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR must be IP:PORT");
    let n: u64 = match mode.as_str() {
        "same-port" => 1, // its third argument is an address
        _ => args.get(3).map_or(1, |s| s.parse().expect("N must be a number")),
    };
    let mut out = std::io::stdout().lock();
    match mode.as_str() {
        "tcp" => {
            for _ in 0..n {
                let started = Instant::now();
                let line = match tcp_once(addr) {
                    Ok((reply, stream)) => {
                        let peer = stream.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                        format!("ok {reply} peer={peer}")
                    }
                    Err(e) => err_line(&e, started),
                };
                writeln!(out, "{line}").expect("stdout");
            }
        }
        "same-port" => {
            let second: SocketAddr = args.get(3).expect("B").parse().expect("B must be IP:PORT");
            let started = Instant::now();
            let first = tcp_from_port(addr, 0);
            let port = match &first {
                Ok((reply, stream)) => {
                    let port = stream.local_addr().expect("local addr").port();
                    writeln!(out, "first ok {reply} port={port}").expect("stdout");
                    port
                }
                Err(e) => {
                    writeln!(out, "first {}", err_line(e, started)).expect("stdout");
                    return;
                }
            };
            let started = Instant::now();
            let line = match tcp_from_port(second, port) {
                Ok((reply, _)) => format!("second ok {reply}"),
                Err(e) => format!("second {}", err_line(&e, started)),
            };
            writeln!(out, "{line}").expect("stdout");
            drop(first);
        }
        "original-dst" => {
            let listener = std::net::TcpListener::bind(addr).expect("bind");
            writeln!(out, "listening").expect("stdout");
            out.flush().expect("stdout");
            for _ in 0..n {
                let (mut stream, _) = listener.accept().expect("accept");
                let line = match original_dst(&stream) {
                    Ok(orig) => format!("orig={orig}"),
                    Err(e) => format!("err os={} {e}", e.raw_os_error().unwrap_or(0)),
                };
                let _ = writeln!(stream, "{line}");
                writeln!(out, "{line}").expect("stdout");
                out.flush().expect("stdout");
            }
        }
        "udp" => {
            let socket = UdpSocket::bind(unspecified(addr)).expect("bind");
            socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            let mut buf = [0u8; 1500];
            for _ in 0..n {
                let started = Instant::now();
                let line = match socket.send_to(b"ping", addr).and_then(|_| socket.recv_from(&mut buf)) {
                    Ok((len, from)) => format!("ok {} from={from}", String::from_utf8_lossy(&buf[..len])),
                    Err(e) => err_line(&e, started),
                };
                writeln!(out, "{line}").expect("stdout");
            }
        }
        "udp-burst" => {
            let socket = UdpSocket::bind(unspecified(addr)).expect("bind");
            socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            for _ in 0..n {
                socket.send_to(b"ping", addr).expect("sendto");
            }
            let mut buf = [0u8; 1500];
            for _ in 0..n {
                let started = Instant::now();
                let line = match socket.recv_from(&mut buf) {
                    Ok((len, from)) => format!("ok {} from={from}", String::from_utf8_lossy(&buf[..len])),
                    Err(e) => err_line(&e, started),
                };
                writeln!(out, "{line}").expect("stdout");
            }
        }
        "udp-connected" => {
            let socket = UdpSocket::bind(unspecified(addr)).expect("bind");
            socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            let started = Instant::now();
            if let Err(e) = socket.connect(addr) {
                writeln!(out, "{}", err_line(&e, started)).expect("stdout");
                return;
            }
            let mut buf = [0u8; 1500];
            for _ in 0..n {
                let started = Instant::now();
                let line = match socket.send(b"ping").and_then(|_| socket.recv(&mut buf)) {
                    Ok(len) => {
                        let peer = socket.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                        format!("ok {} peer={peer}", String::from_utf8_lossy(&buf[..len]))
                    }
                    Err(e) => err_line(&e, started),
                };
                writeln!(out, "{line}").expect("stdout");
            }
        }
        "tcp-hold" => {
            let started = Instant::now();
            let (reply, mut stream) = match tcp_once(addr) {
                Ok(r) => r,
                Err(e) => {
                    writeln!(out, "{}", err_line(&e, started)).expect("stdout");
                    return;
                }
            };
            writeln!(out, "ok {reply}").expect("stdout");
            out.flush().expect("stdout");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            for _ in std::io::stdin().lock().lines().map_while(Result::ok) {
                let started = Instant::now();
                let mut line = String::new();
                let result = writeln!(stream, "ping").and_then(|()| reader.read_line(&mut line));
                let text = match result {
                    Ok(0) => "err os=0 closed us=0".to_owned(),
                    Ok(_) => format!("ok {}", line.trim()),
                    Err(e) => err_line(&e, started),
                };
                writeln!(out, "{text}").expect("stdout");
                out.flush().expect("stdout");
            }
        }
        "tcp-loop" => {
            let until = Instant::now() + Duration::from_millis(n);
            let (mut ok, mut failed, mut first_err) = (0u64, 0u64, String::new());
            while Instant::now() < until {
                let started = Instant::now();
                match tcp_once(addr) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        if first_err.is_empty() {
                            first_err = err_line(&e, started);
                        }
                    }
                }
            }
            writeln!(out, "done ok={ok} err={failed} first_err={first_err}").expect("stdout");
        }
        "tcp-log" => {
            let until = Instant::now() + Duration::from_millis(n);
            while Instant::now() < until {
                let (at, started) = (lb_tests::monotonic_ns(), Instant::now());
                let line = match tcp_once(addr) {
                    Ok((reply, _)) => format!("ok {reply}"),
                    Err(e) => err_line(&e, started),
                };
                writeln!(out, "{at} {line}").expect("stdout");
            }
        }
        "udp-log" => {
            let socket = UdpSocket::bind(unspecified(addr)).expect("bind");
            socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            let mut buf = [0u8; 1500];
            let until = Instant::now() + Duration::from_millis(n);
            while Instant::now() < until {
                let (at, started) = (lb_tests::monotonic_ns(), Instant::now());
                let line = match socket.send_to(b"ping", addr).and_then(|_| socket.recv_from(&mut buf)) {
                    Ok((len, _)) => format!("ok {}", String::from_utf8_lossy(&buf[..len])),
                    Err(e) => err_line(&e, started),
                };
                writeln!(out, "{at} {line}").expect("stdout");
            }
        }
        "tcp-connect" => {
            let all = Instant::now();
            for _ in 0..n {
                let started = Instant::now();
                let line = match TcpStream::connect_timeout(&addr, TIMEOUT) {
                    Ok(stream) => {
                        let ns = started.elapsed().as_nanos();
                        reset_on_close(&stream);
                        format!("{ns}")
                    }
                    Err(e) => err_line(&e, started),
                };
                writeln!(out, "{line}").expect("stdout");
            }
            writeln!(out, "done us={}", all.elapsed().as_micros()).expect("stdout");
        }
        "tcp-connect-pair" => {
            // ADDR and a second address (args[4]) alternately, N pairs: one line per connect,
            // `a <ns>` or `b <ns>` (or `err …`).
            let other: SocketAddr = args.get(4).and_then(|a| a.parse().ok()).expect("second ADDR");
            let more: Vec<SocketAddr> = args[5..].iter().map(|a| a.parse().expect("ADDR")).collect();
            let directs: Vec<SocketAddr> = std::iter::once(addr).chain(more).collect();
            for i in 0..n {
                let a = directs[usize::try_from(i).expect("small") % directs.len()];
                let order = if i % 2 == 0 { [("a", a), ("b", other)] } else { [("b", other), ("a", a)] };
                for (tag, to) in order {
                    let started = Instant::now();
                    let line = match TcpStream::connect_timeout(&to, TIMEOUT) {
                        Ok(stream) => {
                            let ns = started.elapsed().as_nanos();
                            reset_on_close(&stream);
                            format!("{tag} {ns}")
                        }
                        Err(e) => err_line(&e, started),
                    };
                    writeln!(out, "{line}").expect("stdout");
                }
            }
        }
        "udp-resolver" => {
            let open = || -> std::io::Result<UdpSocket> {
                let socket = UdpSocket::bind(unspecified(addr))?;
                socket.set_read_timeout(Some(Duration::from_millis(200)))?;
                socket.connect(addr)?;
                Ok(socket)
            };
            let mut socket = open().expect("connected socket");
            let mut buf = [0u8; 1500];
            let until = Instant::now() + Duration::from_millis(n);
            while Instant::now() < until {
                let (at, started) = (lb_tests::monotonic_ns(), Instant::now());
                let line = match socket.send(b"ping").and_then(|_| socket.recv(&mut buf)) {
                    Ok(len) => format!("ok {}", String::from_utf8_lossy(&buf[..len])),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        "timeout".to_owned()
                    }
                    Err(e) => {
                        let line = err_line(&e, started);
                        socket = open().expect("reconnect");
                        line
                    }
                };
                writeln!(out, "{at} {line}").expect("stdout");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        "udp-flood" => {
            let socket = UdpSocket::bind(unspecified(addr)).expect("bind");
            socket.connect(addr).expect("connect");
            let (payload, started) = ([0x5a_u8; 32], Instant::now());
            let until = started + Duration::from_millis(n);
            let (mut sent, mut errors) = (0u64, 0u64);
            while Instant::now() < until {
                for _ in 0..256 {
                    match socket.send(&payload) {
                        Ok(_) => sent += 1,
                        // ENOBUFS, or a refusal reported back by ICMP: counted, not fatal.
                        Err(_) => errors += 1,
                    }
                }
            }
            writeln!(out, "sent={sent} errors={errors} us={}", started.elapsed().as_micros())
                .expect("stdout");
        }
        "hold" => {
            raise_nofile();
            let mut held = Held::open(addr, n).expect("open the long-lived sockets");
            let mut lines = std::io::stdin().lock().lines();
            loop {
                let (tcp, connected, unconnected, first_bad) = held.check();
                writeln!(out, "check tcp={tcp}/{n} udp-connected={connected}/{n} udp={unconnected}/{n} first_bad={first_bad}")
                    .expect("stdout");
                out.flush().expect("stdout");
                if !matches!(lines.next(), Some(Ok(_))) {
                    break;
                }
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
