//! An in-process API server that speaks the real list/watch protocol for Services,
//! EndpointSlices and Nodes, reached by the agent's real kube client through a kubeconfig.
//!
//! - `GET` list: `{kind}List` with `metadata.resourceVersion`, filtered by `labelSelector`
//!   (`!key`, `key`, `key=value`) and `fieldSelector` (`metadata.name=…`), in pages of `limit`
//!   (`continue`), except at `resourceVersion=0`: whole, as the watch cache answers it.
//! - `GET ?watch=true&resourceVersion=N`: a streaming body of `{"type":…,"object":…}` lines:
//!   every event after N, a BOOKMARK, then new events as they happen. A version older than the
//!   compacted history gets an `ERROR` event with a `410 Expired` Status, as the real server sends.
//! - Test controls: `apply`/`delete` objects, `compact` the history (the next resumed watch gets
//!   410), `drop_watches` (connections cut), `stop`/`restart` (down: connections refused),
//!   `refuse` (every request answered 401 or 403, as a server that rejects a token, or whose
//!   authorizer has not loaded the bindings yet). The `User-Agent` of every request is recorded.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, Uri, header},
    response::Response,
    serve::ListenerExt as _,
};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// The resources the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/services" => Some(Self::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Self::EndpointSlice),
            "/api/v1/nodes" => Some(Self::Node),
            _ => None,
        }
    }

    fn from_object(obj: &Value) -> Self {
        match obj["kind"].as_str() {
            Some("Service") => Self::Service,
            Some("EndpointSlice") => Self::EndpointSlice,
            Some("Node") => Self::Node,
            other => panic!("the fake API server does not serve {other:?}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
}

#[derive(Default)]
struct KindState {
    /// Each object with its JSON text (encoded once when written, as the API server's watch
    /// cache keeps objects ready to send rather than encoding them again for every list).
    objects: BTreeMap<String, (Value, String)>,
    /// (resourceVersion, event type, object)
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a version below this get 410 Gone.
    oldest: u64,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    kinds: HashMap<Kind, KindState>,
    lists: HashMap<Kind, usize>,
    /// When the first list request of any kind arrived.
    first_list: Option<std::time::SystemTime>,
    watches: HashMap<Kind, usize>,
    down: bool,
    /// Answer every request with this status (401, 403).
    refuse: Option<u16>,
    user_agents: BTreeSet<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes watch streams when an event is recorded.
    events: broadcast::Sender<()>,
    /// Bumped to end every open watch stream.
    cut: watch::Sender<u64>,
}

/// The server; runs on its own Tokio runtime. Stopped on drop.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    serving: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(""),
        obj.pointer("/metadata/name").and_then(Value::as_str).expect("object has a name")
    )
}

/// A parsed `labelSelector` + `fieldSelector`.
#[derive(Clone, Default)]
struct Selector {
    absent: Vec<String>,
    present: Vec<String>,
    equal: Vec<(String, String)>,
    name: Option<String>,
}

impl Selector {
    fn parse(query: &HashMap<String, String>) -> Self {
        let mut s = Self::default();
        for term in
            query.get("labelSelector").map(String::as_str).unwrap_or("").split(',').filter(|t| !t.is_empty())
        {
            if let Some(k) = term.strip_prefix('!') {
                s.absent.push(k.to_owned());
            } else if let Some((k, v)) = term.split_once('=') {
                s.equal.push((k.trim_end_matches('=').to_owned(), v.to_owned()));
            } else {
                s.present.push(term.to_owned());
            }
        }
        if let Some(name) = query.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=")) {
            s.name = Some(name.to_owned());
        }
        s
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.absent.iter().all(|k| label(k).is_none())
            && self.present.iter().all(|k| label(k).is_some())
            && self.equal.iter().all(|(k, v)| label(k) == Some(v.as_str()))
            && self
                .name
                .as_ref()
                .is_none_or(|n| obj.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn json_response(code: StatusCode, body: &Value, close: bool) -> Response {
    let mut builder = Response::builder().status(code).header(header::CONTENT_TYPE, "application/json");
    if close {
        builder = builder.header(header::CONNECTION, "close");
    }
    builder.body(Body::from(body.to_string())).expect("response")
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("(none)").to_owned();
    let refuse = {
        let mut inner = shared.inner.lock().expect("lock");
        inner.user_agents.insert(agent);
        inner.refuse
    };
    match refuse {
        Some(401) => {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &status(401, "Unauthorized", "Unauthorized"),
                false,
            );
        }
        Some(code) => {
            let message = format!(
                "{} is forbidden: User \"system:serviceaccount:kube-system:lb-agent\" cannot list resource",
                uri.path()
            );
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN);
            return json_response(code, &status(code.as_u16(), "Forbidden", &message), false);
        }
        None => {}
    }
    if shared.inner.lock().expect("lock").down {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &status(503, "ServiceUnavailable", "down"),
            true,
        );
    }
    let Some(kind) = Kind::from_path(uri.path()) else {
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", uri.path()), false);
    };
    let selector = Selector::parse(&query);
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let since: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let timeout = query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290);
        return watch_response(shared, kind, selector, since, Duration::from_secs(timeout));
    }
    list_response(&shared, kind, &selector, &query)
}

fn list_response(
    shared: &Shared,
    kind: Kind,
    selector: &Selector,
    query: &HashMap<String, String>,
) -> Response {
    let mut inner = shared.inner.lock().expect("lock");
    *inner.lists.entry(kind).or_default() += 1;
    inner.first_list.get_or_insert_with(std::time::SystemTime::now);
    let rv = inner.rv;
    // Pages as the API server's `limit`/`continue` (kube's watcher asks for 500 objects a page):
    // the token is the key of the page's last object, and the next page starts after it (as etcd
    // reads a range: no page costs the objects before it). Unlike the API server's, later pages
    // come from the store as it is then, not from a snapshot. A list at
    // `resourceVersion=0` is answered whole, `limit` ignored, as the API server's watch cache
    // answers it (kube-proxy's informers, and the agent's first lists, ask so).
    let from_cache = query.get("resourceVersion").is_some_and(|v| v == "0");
    let limit = query.get("limit").and_then(|v| v.parse::<usize>().ok()).filter(|l| *l > 0 && !from_cache);
    let after = query.get("continue").cloned();
    let mut items: Vec<(&str, &str)> = inner
        .kinds
        .get(&kind)
        .map(|k| {
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let matching =
                k.objects.range((from, Bound::Unbounded)).filter(|(_, (o, _))| selector.matches(o));
            matching
                .take(limit.map_or(usize::MAX, |l| l + 1))
                .map(|(key, (_, text))| (key.as_str(), text.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit
        && items.len() > limit
    {
        items.truncate(limit);
        metadata["continue"] = json!(items[limit - 1].0);
    }
    let items: Vec<&str> = items.into_iter().map(|(_, text)| text).collect();
    let head = json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.name()), "metadata": metadata});
    // The list as `{...head, "items": [item, ...]}`, from the items' kept text.
    let head = head.to_string();
    let mut body = String::with_capacity(head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 16);
    body.push_str(&head[..head.len() - 1]);
    body.push_str(",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str("]}");
    drop(inner);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("response")
}

/// Events of `kind` after `since`, as watch lines, with the last of them and the store's current
/// resourceVersion (read under the same lock, so a BOOKMARK at it skips no event); `None` when
/// that history was compacted.
fn events_after(shared: &Shared, kind: Kind, selector: &Selector, since: u64) -> Option<(Vec<u8>, u64, u64)> {
    let inner = shared.inner.lock().expect("lock");
    let state = inner.kinds.get(&kind);
    if state.is_some_and(|s| since < s.oldest) {
        return None;
    }
    let mut out = Vec::new();
    let mut last = since;
    for (rv, kind_name, obj) in state.map(|s| s.history.as_slice()).unwrap_or_default() {
        if *rv > since {
            last = *rv;
            if selector.matches(obj) {
                out.extend_from_slice(json!({"type": kind_name, "object": obj}).to_string().as_bytes());
                out.push(b'\n');
            }
        }
    }
    Some((out, last.max(since), inner.rv.max(last)))
}

fn watch_response(
    shared: Arc<Shared>,
    kind: Kind,
    selector: Selector,
    since: u64,
    timeout: Duration,
) -> Response {
    *shared.inner.lock().expect("lock").watches.entry(kind).or_default() += 1;
    let events = shared.events.subscribe();
    let cut = shared.cut.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    struct St {
        shared: Arc<Shared>,
        events: broadcast::Receiver<()>,
        cut: watch::Receiver<u64>,
        last: u64,
        first: bool,
        done: bool,
    }
    let state = St { shared, events, cut, last: since, first: true, done: false };
    let stream = futures::stream::unfold(state, move |mut st| {
        let selector = selector.clone();
        async move {
            if st.done {
                return None;
            }
            loop {
                match events_after(&st.shared, kind, &selector, st.last) {
                    None => {
                        st.done = true;
                        let err = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                        return Some((
                            Ok::<_, std::convert::Infallible>(Bytes::from(format!("{err}\n"))),
                            st,
                        ));
                    }
                    Some((lines, last, current)) => {
                        st.last = last;
                        let mut chunk = lines;
                        if st.first {
                            st.first = false;
                            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind.name(),
                                "apiVersion": kind.api_version(), "metadata": {"resourceVersion": current.to_string()}}});
                            chunk.extend_from_slice(format!("{bookmark}\n").as_bytes());
                        }
                        if !chunk.is_empty() {
                            return Some((Ok(Bytes::from(chunk)), st));
                        }
                    }
                }
                tokio::select! {
                    _ = st.events.recv() => {}
                    _ = st.cut.changed() => return None,
                    () = tokio::time::sleep_until(deadline) => return None,
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

impl FakeApiServer {
    /// Starts serving on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let (events, _) = broadcast::channel(1024);
        let (cut, _) = watch::channel(0);
        let shared = Arc::new(Shared { inner: Mutex::new(Inner::default()), events, cut });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let server = Self { shared, addr, runtime, serving: Mutex::new(None) };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new().fallback(handle).with_state(Arc::clone(&self.shared));
        // TCP_NODELAY on every connection, as the API server has it (Go sets it by default):
        // without it a watch event written right after another waits for the client's delayed
        // ACK (Nagle), which held about 2% of the bench's churn changes back by 35 ms.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        let task = self.runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.serving.lock().expect("lock") = Some(task);
    }

    /// Writes a kubeconfig for this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        Self::kubeconfig_for(self.addr, dir)
    }

    /// Creates or replaces an object (ADDED or MODIFIED).
    pub fn apply(&self, obj: Value) {
        self.apply_all([obj]);
    }

    /// Applies many objects at once (one wake-up for the watchers).
    pub fn apply_all(&self, objs: impl IntoIterator<Item = Value>) {
        for obj in objs {
            let kind = Kind::from_object(&obj);
            let mut inner = self.shared.inner.lock().expect("lock");
            inner.rv += 1;
            let rv = inner.rv;
            let mut obj = obj;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            let state = inner.kinds.entry(kind).or_default();
            let event = if state.objects.insert(key(&obj), (obj.clone(), obj.to_string())).is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            state.history.push((rv, event, obj));
        }
        let _ = self.shared.events.send(());
    }

    /// Deletes an object (DELETED).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut inner = self.shared.inner.lock().expect("lock");
        inner.rv += 1;
        let rv = inner.rv;
        let state = inner.kinds.entry(kind).or_default();
        if let Some((mut obj, _)) = state.objects.remove(&format!("{namespace}/{name}")) {
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            state.history.push((rv, "DELETED", obj));
        }
        drop(inner);
        let _ = self.shared.events.send(());
    }

    /// Forgets the event history: a watch resumed from an older version gets 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.shared.inner.lock().expect("lock");
        // Compaction happens at a write: versions up to the previous one are gone, lists return
        // the new one, from which a fresh watch can start.
        inner.rv += 1;
        let rv = inner.rv;
        for state in inner.kinds.values_mut() {
            state.history.clear();
            state.oldest = rv;
        }
        // Kinds without objects yet must also refuse old versions.
        for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
            inner.kinds.entry(kind).or_default().oldest = rv;
        }
    }

    /// Ends every open watch stream (the client sees its connection's stream end).
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
    }

    /// Goes down: open watches end, requests on kept-alive connections get 503 and are closed,
    /// new connections are refused.
    pub fn stop(&self) {
        self.shared.inner.lock().expect("lock").down = true;
        self.drop_watches();
        if let Some(task) = self.serving.lock().expect("lock").take() {
            task.abort();
        }
        // Let the aborted accept loop release the port.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Comes back up on the same address.
    pub fn restart(&self) -> anyhow::Result<()> {
        let listener = self.runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(self.addr)?;
            socket.listen(128)
        })?;
        self.shared.inner.lock().expect("lock").down = false;
        self.serve(listener);
        Ok(())
    }

    /// Answers every request with `code` (401: a refused token; 403: no RBAC, or an authorizer
    /// still loading), or serves again (`None`).
    pub fn refuse(&self, code: Option<u16>) {
        self.shared.inner.lock().expect("lock").refuse = code;
        self.drop_watches();
    }

    /// The `User-Agent` of every request so far.
    pub fn user_agents(&self) -> BTreeSet<String> {
        self.shared.inner.lock().expect("lock").user_agents.clone()
    }

    /// A kubeconfig for a server at `addr` (nothing need listen there), written into `dir`.
    pub fn kubeconfig_for(addr: SocketAddr, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{addr}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n"
            ),
        )?;
        Ok(path)
    }

    /// Every object the server holds now.
    pub fn objects(&self) -> Vec<Value> {
        let inner = self.shared.inner.lock().expect("lock");
        inner.kinds.values().flat_map(|k| k.objects.values().map(|(o, _)| o.clone())).collect()
    }

    /// How many list requests the server answered for `kind`.
    pub fn lists(&self, kind: Kind) -> usize {
        self.shared.inner.lock().expect("lock").lists.get(&kind).copied().unwrap_or(0)
    }

    /// When the first list request (of any kind) arrived: where a client's list → sync starts.
    pub fn first_list(&self) -> Option<std::time::SystemTime> {
        self.shared.inner.lock().expect("lock").first_list
    }

    /// How many watch requests the server accepted for `kind`.
    pub fn watches(&self, kind: Kind) -> usize {
        self.shared.inner.lock().expect("lock").watches.get(&kind).copied().unwrap_or(0)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.drop_watches();
        if let Some(task) = self.serving.lock().expect("lock").take() {
            task.abort();
        }
    }
}

/// A ClusterIP Service object (`ipFamilies` set, as the API server stores it).
pub fn service(namespace: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16, &str)]) -> Value {
    let family = if cluster_ip.contains(':') { "IPv6" } else { "IPv4" };
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto, "targetPort": p}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}")},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ipFamilies": [family], "ports": ports},
    })
}

/// An EndpointSlice of `service` with ready endpoints on `node`.
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    ports: &[(&str, u16, &str)],
    addrs: &[&str],
) -> Value {
    let family = if addrs.first().is_some_and(|a| a.contains(':')) { "IPv6" } else { "IPv4" };
    let ports: Vec<Value> =
        ports.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto})).collect();
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "node-1"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": family, "ports": ports, "endpoints": endpoints,
    })
}

/// This node's Node object.
pub fn node(name: &str, zone: &str, address: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    })
}
