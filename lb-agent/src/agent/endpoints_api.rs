//! The running agent's translation, for `explain`: `GET /explain/endpoints?namespace=NS&name=NAME`
//! on the metrics address (loopback by default) answers every endpoint of that Service, per
//! Service port, family and traffic scope, with whether it is used and why
//! (`model::endpoint_verdicts`), including the endpoints the maps never hold (not ready,
//! terminating next to ready ones, on another node under a Local policy, hinted for another zone).
//!
//! The HTTP task asks the run loop, which owns the source, over a channel: the answer is computed
//! from the objects the last sync saw, between two syncs.
use std::{collections::HashMap, time::Duration};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::{mpsc, oneshot};

use super::source::{NodeIdentity, Source};
use crate::model::{EndpointVerdict, ServiceKey, endpoint_verdicts};

/// One question from the HTTP task: the Service, and where to answer (`None`: no such Service).
pub struct Request {
    pub key: ServiceKey,
    pub reply: oneshot::Sender<Option<Vec<EndpointVerdict>>>,
}

/// How long a request waits for the run loop (busy with a long sync, it answers late).
const WAIT: Duration = Duration::from_secs(5);

/// The route, answering through `asks`.
pub fn router(asks: mpsc::Sender<Request>) -> Router {
    Router::new().route("/explain/endpoints", get(endpoints)).with_state(asks)
}

async fn endpoints(
    State(asks): State<mpsc::Sender<Request>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(namespace), Some(name)) = (q.get("namespace"), q.get("name")) else {
        return (StatusCode::BAD_REQUEST, "namespace and name are required\n").into_response();
    };
    let (reply, answer) = oneshot::channel();
    let asked = asks.send(Request { key: ServiceKey::new(namespace.as_str(), name.as_str()), reply });
    let answer = tokio::time::timeout(WAIT, async {
        asked.await.ok()?;
        answer.await.ok()
    })
    .await;
    match answer {
        Ok(Some(Some(verdicts))) => match serde_json::to_string(&verdicts) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
        Ok(Some(None)) => (StatusCode::NOT_FOUND, format!("no Service {namespace}/{name}\n")).into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "the agent did not answer in time\n").into_response(),
    }
}

/// Answers `request` from the source's objects and this node's context (in the run loop).
pub fn answer(request: Request, source: &Source, identity: &NodeIdentity) {
    let verdicts = source
        .objects(&request.key)
        .filter(|o| !o.services.is_empty())
        .map(|objects| endpoint_verdicts(&request.key, &objects, &identity.context(&source.nodes())));
    // The HTTP task may have given up waiting.
    let _ = request.reply.send(verdicts);
}
