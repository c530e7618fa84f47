//! kube-proxy's service health checks: for every
//! Service of `type: LoadBalancer` with `externalTrafficPolicy: Local`, an HTTP server on its
//! `healthCheckNodePort` tells the cloud load balancer whether this node has a ready endpoint of
//! the Service, so the load balancer only sends traffic to nodes that can serve it locally.
//!
//! Any method and path: `200` when the node has at least one local ready endpoint and the agent
//! is healthy (`/healthz`), `503` otherwise, with kube-proxy's JSON body
//! `{"service": {"namespace", "name"}, "localEndpoints", "serviceProxyHealthy"}`.
//!
//! One listener per port and bind address. The answers are read from a table the sync updates,
//! so a change of endpoint count only rewrites the table; listeners are opened when a port
//! appears and closed (their tasks aborted) when it goes. A port that cannot be bound is logged
//! and tried again at the next sync, as kube-proxy does.
use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::{net::TcpSocket, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    health::Health,
    model::{BackendGroup, DesiredState, EndpointState, Scope},
};

/// `healthCheckNodePort` → (namespace, name, local ready endpoints) of the Service it serves.
pub type Wanted = BTreeMap<u16, (String, String, usize)>;

/// The health-check node ports of a desired state, with each Service's number of local ready
/// endpoints.
///
/// Only the `External` groups of a Service carry the Local set, so only they count. Like
/// kube-proxy's `LocalReadyEndpoints`, the count is the number of distinct endpoint IPs (a pod
/// behind ports 80 and 443 is one endpoint) that are ready: serving-and-terminating endpoints,
/// though used for traffic when nothing is ready, do not count, so a node with only terminating
/// endpoints fails its health check. Both IP families of a dual-stack Service are counted
/// together. Two Services with one port (the API server never allocates that; a file source can
/// say it): the first by namespace/name keeps it, the other is logged.
pub fn wanted(desired: &DesiredState) -> Wanted {
    let mut services: BTreeMap<(&str, &str), (u16, BTreeSet<IpAddr>)> = BTreeMap::new();
    for group in desired.groups.iter().filter(|g| g.scope == Scope::External) {
        let Some(port) = group.health_check_node_port else { continue };
        let (_, ips) = services
            .entry((&group.service.namespace, &group.service.name))
            .or_insert_with(|| (port, BTreeSet::new()));
        ips.extend(group.eligible.iter().filter(|addr| is_ready(group, addr)).map(SocketAddr::ip));
    }
    let mut wanted = Wanted::new();
    for ((namespace, name), (port, ips)) in services {
        match wanted.entry(port) {
            Entry::Vacant(slot) => {
                slot.insert((namespace.to_owned(), name.to_owned(), ips.len()));
            }
            Entry::Occupied(taken) => {
                let (kept_ns, kept_name, _) = taken.get();
                warn!(
                    service = %format!("{namespace}/{name}"),
                    port,
                    served_for = %format!("{kept_ns}/{kept_name}"),
                    "healthCheckNodePort already belongs to another Service; not served for this one"
                );
            }
        }
    }
    wanted
}

/// Whether `addr` is a ready (not terminating) backend of the group; `backends` is sorted.
fn is_ready(group: &BackendGroup, addr: &SocketAddr) -> bool {
    let start = group.backends.partition_point(|b| b.addr < *addr);
    group.backends[start..].iter().take_while(|b| b.addr == *addr).any(|b| b.state == EndpointState::Active)
}

/// A serving task, aborted (which closes its listening socket) when dropped.
struct ServeTask(JoinHandle<()>);

impl Drop for ServeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What each listener needs to answer.
#[derive(Clone)]
struct Ctx {
    port: u16,
    answers: Arc<RwLock<Wanted>>,
    health: Arc<Health>,
}

/// Serves the health-check node ports of the Services that have one. Call [`Self::sync`] after
/// each applied sync, from within the tokio runtime.
pub struct ServiceHealthServer {
    health: Arc<Health>,
    bind: Vec<IpAddr>,
    /// What every port answers; the listeners read it per request.
    answers: Arc<RwLock<Wanted>>,
    /// Ports with every bind address listening. Always a subset of `answers`' ports.
    open: BTreeMap<u16, Vec<ServeTask>>,
}

impl ServiceHealthServer {
    /// `bind`: the addresses to listen on; empty means `0.0.0.0` and `::` (kube-proxy's default,
    /// every address of the node). `health` gives `serviceProxyHealthy`.
    pub fn new(health: Arc<Health>, bind: Vec<IpAddr>) -> Self {
        let bind = if bind.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        } else {
            bind
        };
        Self { health, bind, answers: Arc::default(), open: BTreeMap::new() }
    }

    /// Brings the listeners and their answers in line with `desired`. Cheap when nothing changed
    /// and every port is open; ports that could not be opened before are tried again.
    pub fn sync(&mut self, desired: &DesiredState) {
        let wanted = wanted(desired);
        {
            let mut answers = self.answers.write().expect("health-check answers lock");
            if *answers == wanted && self.open.len() == wanted.len() {
                return;
            }
            answers.clone_from(&wanted);
        }
        self.open.retain(|port, _| {
            let keep = wanted.contains_key(port);
            if !keep {
                info!(port, "closing health-check node port");
            }
            keep
        });
        for (&port, (namespace, name, endpoints)) in &wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            let service = format!("{namespace}/{name}");
            match self.listen(port) {
                Ok(tasks) => {
                    info!(%service, port, local_endpoints = endpoints, "serving health-check node port");
                    self.open.insert(port, tasks);
                }
                Err(e) => warn!(
                    %service,
                    port,
                    error = %e,
                    "cannot open the health-check node port; trying again at the next sync"
                ),
            }
        }
    }

    /// Opens `port` on every bind address, or none of them.
    fn listen(&self, port: u16) -> io::Result<Vec<ServeTask>> {
        let ctx = Ctx { port, answers: Arc::clone(&self.answers), health: Arc::clone(&self.health) };
        let mut tasks = Vec::with_capacity(self.bind.len());
        for &ip in &self.bind {
            let addr = SocketAddr::new(ip, port);
            let listener = match bind(addr) {
                Ok(listener) => listener,
                // The kernel has no IPv6 (or no IPv4): nothing of that family to serve.
                Err(e) if ip.is_unspecified() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                    debug!(%addr, "address family not supported; skipped");
                    continue;
                }
                // Dropping `tasks` closes what this port opened so far.
                Err(e) => return Err(io::Error::new(e.kind(), format!("{addr}: {e}"))),
            };
            let app = Router::new().fallback(answer).with_state(ctx.clone());
            tasks.push(ServeTask(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    warn!(%addr, error = %e, "health-check node port stopped");
                }
            })));
        }
        if tasks.is_empty() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no bind address could be used"));
        }
        Ok(tasks)
    }
}

/// A listening socket on `addr`, with `SO_REUSEADDR` (as Go's listeners) and, for `::`,
/// `IPV6_V6ONLY`, so that `0.0.0.0` and `::` can both hold the port.
fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// kube-proxy's `hcHandler.ServeHTTP`, for any method and path.
async fn answer(State(ctx): State<Ctx>) -> Response {
    let entry = ctx.answers.read().expect("health-check answers lock").get(&ctx.port).cloned();
    // A connection kept alive past the port's removal: tell the load balancer to stay away.
    let Some((namespace, name, endpoints)) = entry else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let healthy = ctx.health.healthy();
    let code = if endpoints != 0 && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        code,
        [(header::CONTENT_TYPE, "application/json"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        body(&namespace, &name, endpoints, healthy),
    )
        .into_response()
}

/// The body as kube-proxy writes it (tab-indented).
fn body(namespace: &str, name: &str, endpoints: usize, healthy: bool) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": \
         {endpoints},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        quote(namespace),
        quote(name)
    )
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::model::{BackendInfo, Family, Frontend, FrontendKind, Protocol, ServicePortName, WhenEmpty};

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// An `External` group of `ns/name` port `port` with `eligible` as its Local set; `ready`
    /// says which of them are ready (the others are serving and terminating).
    fn group(
        service: &str,
        port: &str,
        scope: Scope,
        hc: Option<u16>,
        eligible: &[(&str, bool)],
    ) -> BackendGroup {
        let (namespace, name) = service.split_once('/').expect("ns/name");
        let eligible: Vec<(SocketAddr, bool)> =
            eligible.iter().map(|(a, ready)| (a.parse().expect("address"), *ready)).collect();
        let mut backends: Vec<BackendInfo> = eligible
            .iter()
            .map(|&(addr, ready)| BackendInfo {
                addr,
                state: if ready { EndpointState::Active } else { EndpointState::Terminating },
                local: true,
            })
            .collect();
        // A ready endpoint elsewhere in the cluster: known, not local, never counted.
        backends.push(BackendInfo {
            addr: "10.9.9.9:8080".parse().expect("address"),
            state: EndpointState::Active,
            local: false,
        });
        backends.sort();
        let mut eligible: Vec<SocketAddr> = eligible.into_iter().map(|(a, _)| a).collect();
        eligible.sort();
        BackendGroup {
            service: ServicePortName {
                namespace: namespace.into(),
                name: name.into(),
                port: port.into(),
                protocol: Protocol::Tcp,
            },
            family: Family::V4,
            scope,
            frontends: vec![Frontend {
                addr: "0.0.0.0".parse().expect("address"),
                port: 30080,
                protocol: Protocol::Tcp,
                kind: FrontendKind::NodePort,
            }],
            when_empty: if eligible.is_empty() { WhenEmpty::Drop } else { WhenEmpty::Reject },
            from_node: backends.iter().map(|b| b.addr).collect(),
            eligible: eligible.into(),
            backends,
            affinity_timeout: None,
            source_ranges: Vec::new(),
            health_check_node_port: hc,
        }
    }

    fn state(groups: Vec<BackendGroup>) -> DesiredState {
        DesiredState { groups, node_addresses: Vec::new() }
    }

    #[test]
    fn wanted_counts_local_ready_endpoints_per_service() {
        use Scope::{External, Internal};
        let entry = |ns: &str, name: &str, n: usize| (ns.to_owned(), name.to_owned(), n);
        // (what, groups, expected entries)
        type Case = (&'static str, Vec<BackendGroup>, Vec<(u16, (String, String, usize))>);
        let cases: Vec<Case> = vec![
            (
                "eTP Local LoadBalancer with two local endpoints",
                vec![
                    group("ns/web", "http", Internal, Some(32000), &[("10.0.0.1:80", true)]),
                    group(
                        "ns/web",
                        "http",
                        External,
                        Some(32000),
                        &[("10.0.0.1:80", true), ("10.0.0.2:80", true)],
                    ),
                ],
                vec![(32000, entry("ns", "web", 2))],
            ),
            (
                "no local endpoint: served, answering 0",
                vec![group("ns/web", "http", External, Some(32000), &[])],
                vec![(32000, entry("ns", "web", 0))],
            ),
            (
                "Cluster policy (no healthCheckNodePort in the model): absent",
                vec![group("ns/web", "http", External, None, &[("10.0.0.1:80", true)])],
                vec![],
            ),
            (
                "only an Internal group carries the port: absent",
                vec![group("ns/web", "http", Internal, Some(32000), &[("10.0.0.1:80", true)])],
                vec![],
            ),
            (
                "two ports of one Service: one entry, endpoints counted by IP",
                vec![
                    group(
                        "ns/web",
                        "http",
                        External,
                        Some(32000),
                        &[("10.0.0.1:80", true), ("10.0.0.2:80", true)],
                    ),
                    group(
                        "ns/web",
                        "https",
                        External,
                        Some(32000),
                        &[("10.0.0.1:443", true), ("10.0.0.3:443", true)],
                    ),
                ],
                vec![(32000, entry("ns", "web", 3))],
            ),
            (
                "only serving-and-terminating local endpoints: 0, as kube-proxy",
                vec![group("ns/web", "http", External, Some(32000), &[("10.0.0.1:80", false)])],
                vec![(32000, entry("ns", "web", 0))],
            ),
            (
                "one port claimed by two Services: the first by namespace/name keeps it",
                vec![
                    group("a/zeta", "http", External, Some(32000), &[("10.0.0.1:80", true)]),
                    group("b/alpha", "http", External, Some(32000), &[]),
                    group("b/other", "http", External, Some(32001), &[]),
                ],
                vec![(32000, entry("a", "zeta", 1)), (32001, entry("b", "other", 0))],
            ),
        ];
        for (name, groups, expected) in cases {
            let expected: Wanted = expected.into_iter().collect();
            assert_eq!(wanted(&state(groups)), expected, "{name}");
        }
        lb_tests::parity::shown(&["28"]);
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind((LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        listener.local_addr().expect("local address").port()
    }

    /// `GET /any/path` over HTTP/1.1: (status, headers, body), or the connect error.
    async fn get(port: u16) -> io::Result<(u16, String, String)> {
        get_from(LOCALHOST, port).await
    }

    async fn get_from(ip: IpAddr, port: u16) -> io::Result<(u16, String, String)> {
        tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect((ip, port))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /any/path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            Ok((status, head.to_ascii_lowercase(), body.to_owned()))
        })
        .await
        .expect("client thread")
    }

    fn healthy() -> Arc<Health> {
        let health = Arc::new(Health::default());
        health.record_sync(true);
        health.set_ready();
        health
    }

    fn parse(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    #[tokio::test]
    async fn serves_opens_and_closes_health_check_ports() {
        let port = free_port();
        let health = healthy();
        let mut server = ServiceHealthServer::new(Arc::clone(&health), vec![LOCALHOST]);
        let two = [("10.0.0.1:80", true), ("10.0.0.2:80", true)];
        server.sync(&state(vec![group("ns/web", "http", Scope::External, Some(port), &two)]));

        let (status, head, body) = get(port).await.expect("health check answers");
        assert_eq!(status, 200, "{head}{body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert_eq!(
            parse(&body),
            serde_json::json!({
                "service": {"namespace": "ns", "name": "web"},
                "localEndpoints": 2,
                "serviceProxyHealthy": true,
            })
        );

        // The agent is unhealthy (here: its node is being deleted), whatever the endpoints.
        health.set_node_eligible(false);
        let (status, _, body) = get(port).await.expect("health check answers");
        assert_eq!(status, 503);
        assert_eq!(parse(&body)["serviceProxyHealthy"], false);
        assert_eq!(parse(&body)["localEndpoints"], 2);
        health.set_node_eligible(true);

        // No local endpoint left: same listener, 503.
        server.sync(&state(vec![group("ns/web", "http", Scope::External, Some(port), &[])]));
        let (status, _, body) = get(port).await.expect("health check answers");
        assert_eq!(status, 503, "{body}");
        assert_eq!(parse(&body)["localEndpoints"], 0);
        assert_eq!(parse(&body)["serviceProxyHealthy"], true);

        // The Service is gone: the port closes.
        server.sync(&DesiredState::default());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match get(port).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                other => assert!(Instant::now() < deadline, "port {port} still open: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lb_tests::parity::shown(&["45", "47"]);
    }

    #[tokio::test]
    async fn a_port_in_use_is_retried_at_the_next_sync() {
        let port = free_port();
        let squatter = TcpListener::bind((LOCALHOST, port)).expect("bind the port first");
        let mut server = ServiceHealthServer::new(healthy(), vec![LOCALHOST]);
        let desired =
            state(vec![group("ns/web", "http", Scope::External, Some(port), &[("10.0.0.1:80", true)])]);
        server.sync(&desired);
        assert!(server.open.is_empty(), "the port is taken");

        drop(squatter);
        server.sync(&desired);
        let (status, _, body) = get(port).await.expect("health check answers after the retry");
        assert_eq!(status, 200, "{body}");
        assert_eq!(parse(&body)["localEndpoints"], 1);
    }

    #[tokio::test]
    async fn default_bind_serves_both_families() {
        let port = free_port();
        let mut server = ServiceHealthServer::new(healthy(), Vec::new());
        server.sync(&state(vec![group(
            "ns/web",
            "http",
            Scope::External,
            Some(port),
            &[("10.0.0.1:80", true)],
        )]));
        let (status, _, body) = get(port).await.expect("answers on 127.0.0.1");
        assert_eq!(status, 200, "{body}");
        // `0.0.0.0` and `::` (IPV6_V6ONLY) both hold the port, when the host has IPv6.
        if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
            assert_eq!(server.open[&port].len(), 2);
            let (status, _, body) =
                get_from(IpAddr::V6(Ipv6Addr::LOCALHOST), port).await.expect("answers on ::1");
            assert_eq!(status, 200, "{body}");
        }
    }

    #[test]
    fn body_is_kube_proxys() {
        assert_eq!(
            body("ns", "web", 3, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 3,\n\t\"serviceProxyHealthy\": true\n}"
        );
        lb_tests::parity::shown(&["45"]);
    }
}
