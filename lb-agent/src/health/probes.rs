//! kube-proxy's health endpoints (`--healthz-addr`, kube-proxy serves them on :10256):
//! `/livez` (the process runs), `/healthz` (kube-proxy's rules, below), `/readyz` (the first full
//! sync is in the maps and the programs are attached).
//!
//! `/healthz` answers as kube-proxy's proxier health server, which cloud load balancers and
//! node-problem tooling probe: the body `{"lastUpdated": …, "currentTime": …, "nodeEligible": …}`
//! (times as Go prints them), `200` when healthy, `503` when not ready, when a change has waited
//! unapplied for longer than `HEALTH_TIMEOUT` (kube-proxy: twice its sync period), or when this
//! node is not eligible for load-balancer traffic (its Node is being deleted, or carries the
//! cluster autoscaler's `ToBeDeletedByClusterAutoscaler` taint). When healthy, `lastUpdated` is
//! the current time, as kube-proxy reports it.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

/// How long a change may wait unapplied before `/healthz` fails (kube-proxy's default: twice
/// its 30 s sync period).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// What the sync loop reports; the endpoints read it.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
}

impl Default for Health {
    fn default() -> Self {
        Self { inner: Mutex::new(Inner { node_eligible: true, ..Inner::default() }) }
    }
}

#[derive(Debug, Default)]
struct Inner {
    ready: bool,
    last_updated: Option<SystemTime>,
    /// Since when a change has waited unapplied (queued, or its sync failed).
    pending_since: Option<SystemTime>,
    node_eligible: bool,
}

impl Inner {
    fn healthy(&self, now: SystemTime) -> bool {
        let waited_too_long = self
            .pending_since
            .is_some_and(|since| now.duration_since(since).unwrap_or_default() > HEALTH_TIMEOUT);
        self.ready && self.node_eligible && !waited_too_long
    }
}

impl Health {
    /// The first full sync is programmed and the programs are attached. True the first time.
    pub fn set_ready(&self) -> bool {
        let mut inner = self.inner.lock().expect("health lock");
        !std::mem::replace(&mut inner.ready, true)
    }

    /// What `/healthz` answers (and `serviceProxyHealthy` of the health-check node ports).
    pub fn healthy(&self) -> bool {
        self.inner.lock().expect("health lock").healthy(SystemTime::now())
    }

    /// A change arrived: it waits until a sync applies it.
    pub fn queued(&self) {
        let mut inner = self.inner.lock().expect("health lock");
        inner.pending_since.get_or_insert_with(SystemTime::now);
    }

    /// Records a sync: `ok` when the maps now match the source; otherwise the change waits on.
    pub fn record_sync(&self, ok: bool) {
        let mut inner = self.inner.lock().expect("health lock");
        if ok {
            inner.last_updated = Some(SystemTime::now());
            inner.pending_since = None;
        } else {
            inner.pending_since.get_or_insert_with(SystemTime::now);
        }
    }

    /// Whether this node may take load-balancer traffic (see `node_eligible`).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.inner.lock().expect("health lock").node_eligible = eligible;
    }

    fn body(&self, check: fn(&Inner, SystemTime) -> bool) -> axum::response::Response {
        let inner = self.inner.lock().expect("health lock");
        let now = SystemTime::now();
        let ok = check(&inner, now);
        let last_updated = if ok && inner.healthy(now) { Some(now) } else { inner.last_updated };
        let body = format!(
            "{{\"lastUpdated\": {},\"currentTime\": {}, \"nodeEligible\": {}}}",
            serde_json::Value::from(last_updated.map_or_else(|| go_time(SystemTime::UNIX_EPOCH), go_time)),
            serde_json::Value::from(go_time(now)),
            inner.node_eligible
        );
        let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (
            code,
            [(header::CONTENT_TYPE, "application/json"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
            body,
        )
            .into_response()
    }
}

/// Whether a Node may take load-balancer traffic, as kube-proxy decides it: not being deleted,
/// and without the cluster autoscaler's to-be-deleted taint.
pub fn node_eligible(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// `t` as Go's `time.Time.String()` prints a UTC time: `2006-01-02 15:04:05.999999999 +0000 UTC`
/// (the fraction without trailing zeros, none when whole).
pub fn go_time(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm, years from 0000-03-01).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = format!("{:09}", since.subsec_nanos());
    let fraction = fraction.trim_end_matches('0');
    let fraction = if fraction.is_empty() { String::new() } else { format!(".{fraction}") };
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}{fraction} +0000 UTC",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

/// The three endpoints, for `--healthz-addr` and for `--metrics-addr` (which serves them too).
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/livez", get(|State(h): State<Arc<Health>>| async move { h.body(|_, _| true) }))
        .route("/healthz", get(|State(h): State<Arc<Health>>| async move { h.body(Inner::healthy) }))
        .route("/readyz", get(|State(h): State<Arc<Health>>| async move { h.body(|i, _| i.ready) }))
        .with_state(health)
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>) -> anyhow::Result<()> {
    axum::serve(listener, router(health)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_go_prints_them() {
        let at = |s: u64, n: u32| SystemTime::UNIX_EPOCH + Duration::new(s, n);
        assert_eq!(go_time(at(0, 0)), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(at(1_700_000_000, 120_000_000)), "2023-11-14 22:13:20.12 +0000 UTC");
        assert_eq!(go_time(at(951_782_400, 1)), "2000-02-29 00:00:00.000000001 +0000 UTC");
        assert_eq!(go_time(at(4_102_444_799, 0)), "2099-12-31 23:59:59 +0000 UTC");
    }

    #[test]
    fn healthz_follows_kube_proxys_rules() {
        let h = Health::default();
        let now = SystemTime::now();
        let healthy = |h: &Health, at: SystemTime| h.inner.lock().expect("lock").healthy(at);
        assert!(!healthy(&h, now), "not before the first full sync");
        h.record_sync(true);
        h.set_ready();
        assert!(healthy(&h, now));
        h.record_sync(false);
        assert!(healthy(&h, now + Duration::from_secs(30)), "a failed sync is retried within the timeout");
        assert!(!healthy(&h, now + HEALTH_TIMEOUT + Duration::from_secs(5)), "a change waiting too long");
        h.record_sync(true);
        assert!(healthy(&h, now + HEALTH_TIMEOUT + Duration::from_secs(5)));
        h.set_node_eligible(false);
        assert!(!healthy(&h, now), "a node being deleted takes no load-balancer traffic");
    }

    #[test]
    fn a_node_is_eligible_unless_being_deleted_or_tainted_for_deletion() {
        use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
        let mut node = Node::default();
        assert!(node_eligible(&node));
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: TO_BE_DELETED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            ..NodeSpec::default()
        });
        assert!(!node_eligible(&node));
        node.spec = None;
        node.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(!node_eligible(&node));
    }
}
