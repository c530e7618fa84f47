//! One look at the API server before a one-shot command (`plan --source kubernetes`) waits for
//! lists: can it be reached, does it take our credentials, may we read what we need? The agent
//! itself retries forever (the maps keep serving); a command a person typed must instead fail
//! quickly, saying which of these it is.
use std::time::Duration;

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, Client, api::ListParams};
use thiserror::Error;

/// Why the API server cannot be used.
#[derive(Debug, Error)]
pub enum AccessError {
    #[error("cannot reach the API server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "unauthorized: the API server at {url} refused this client's credentials (401); check the \
         kubeconfig or the service account token"
    )]
    Unauthorized { url: String },
    #[error(
        "forbidden: the API server at {url} refused to list {resource} (403): RBAC is missing, the \
         agent needs get/list/watch on services, endpointslices and nodes (deploy/clusterrole.yaml)"
    )]
    Forbidden { url: String, resource: &'static str },
    #[error("the API server at {url} did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("the API server at {url} failed listing {resource}: {reason}")]
    Other { url: String, resource: &'static str, reason: String },
}

/// The deepest cause of `e` in words (a refused connection reads "connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    match cur.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        _ => cur.to_string(),
    }
}

fn classify(e: kube::Error, url: &str, resource: &'static str) -> AccessError {
    let url = url.to_owned();
    match e {
        kube::Error::Api(status) if status.code == 401 => AccessError::Unauthorized { url },
        kube::Error::Api(status) if status.code == 403 => AccessError::Forbidden { url, resource },
        kube::Error::Api(status) => AccessError::Other { url, resource, reason: status.message.clone() },
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            AccessError::Unreachable { reason: root_cause(&e), url }
        }
        other => AccessError::Other { url, resource, reason: root_cause(&other) },
    }
}

/// Lists one object of each kind the agent watches, within `timeout` in all.
pub async fn check(client: &Client, url: &str, timeout: Duration) -> Result<(), AccessError> {
    let one = ListParams::default().limit(1);
    let lists = async {
        Api::<Service>::all(client.clone())
            .list_metadata(&one)
            .await
            .map_err(|e| classify(e, url, "services"))?;
        Api::<EndpointSlice>::all(client.clone())
            .list_metadata(&one)
            .await
            .map_err(|e| classify(e, url, "endpointslices"))?;
        Api::<Node>::all(client.clone()).list_metadata(&one).await.map_err(|e| classify(e, url, "nodes"))?;
        Ok(())
    };
    tokio::time::timeout(timeout, lists)
        .await
        .unwrap_or_else(|_| Err(AccessError::Timeout { url: url.to_owned(), seconds: timeout.as_secs() }))
}
