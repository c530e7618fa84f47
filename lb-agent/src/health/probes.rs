//! kube-proxy's health endpoints (`--healthz-addr`, kube-proxy serves them on :10256):
//! `/livez` (the process runs), `/healthz` (the last sync succeeded), `/readyz` (the first full
//! sync is in the maps and the programs are attached). JSON bodies with `lastUpdated` and
//! `currentTime`, as kube-proxy's.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde_json::json;

/// What the sync loop reports; the endpoints read it.
#[derive(Debug, Default)]
pub struct Health {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: bool,
    healthy: bool,
    last_updated: Option<SystemTime>,
}

impl Health {
    /// The first full sync is programmed and the programs are attached. True the first time.
    pub fn set_ready(&self) -> bool {
        let mut inner = self.inner.lock().expect("health lock");
        !std::mem::replace(&mut inner.ready, true)
    }

    /// What `/healthz` answers: ready, and the last sync succeeded.
    pub fn healthy(&self) -> bool {
        let inner = self.inner.lock().expect("health lock");
        inner.ready && inner.healthy
    }

    /// Records a sync: `ok` when the maps now match the source.
    pub fn record_sync(&self, ok: bool) {
        let mut inner = self.inner.lock().expect("health lock");
        inner.healthy = ok;
        if ok {
            inner.last_updated = Some(SystemTime::now());
        }
    }

    fn body(&self, check: fn(&Inner) -> bool) -> axum::response::Response {
        let inner = self.inner.lock().expect("health lock");
        let fmt = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
        };
        let body = json!({
            "lastUpdated": inner.last_updated.map(fmt),
            "currentTime": fmt(SystemTime::now()),
        });
        let code = if check(&inner) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (
            code,
            [(header::CONTENT_TYPE, "application/json"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
            body.to_string(),
        )
            .into_response()
    }
}

/// The three endpoints, for `--healthz-addr` and for `--metrics-addr` (which serves them too).
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/livez", get(|State(h): State<Arc<Health>>| async move { h.body(|_| true) }))
        .route(
            "/healthz",
            get(|State(h): State<Arc<Health>>| async move { h.body(|i| i.ready && i.healthy) }),
        )
        .route("/readyz", get(|State(h): State<Arc<Health>>| async move { h.body(|i| i.ready) }))
        .with_state(health)
}

/// Serves the endpoints until the task is dropped.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(health)).await?;
    Ok(())
}
