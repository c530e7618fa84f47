//! An EndpointSlice as the object store keeps it for the agent's lifetime: what translation
//! and the endpoint verdicts read, nothing else. A k8s-openapi `Endpoint` is 352 bytes before
//! any of its strings, most of them fields the agent never reads (`targetRef`, `hostname`,
//! `zone`, `deprecatedTopology`); a kept one is a fifth of that.
use std::sync::Arc;

use k8s_openapi::{
    api::discovery::v1::{Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::kubernetes::LAST_CHANGE_TRIGGER_TIME;

/// The kept part of an EndpointSlice; `to_slice` gives it back as one (without what was
/// dropped). Equal when everything the agent reads is equal.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSlice {
    /// Name, namespace, labels and the `last-change-trigger-time` annotation only.
    metadata: Box<ObjectMeta>,
    address_type: Box<str>,
    ports: Box<[EndpointPort]>,
    endpoints: Box<[StoredEndpoint]>,
}

/// The kept part of one endpoint.
#[derive(Clone, Debug, PartialEq)]
struct StoredEndpoint {
    addresses: Box<[Box<str>]>,
    conditions: Option<EndpointConditions>,
    hints: Option<Box<EndpointHints>>,
    node_name: Option<Box<str>>,
}

impl From<&EndpointSlice> for StoredSlice {
    fn from(slice: &EndpointSlice) -> Self {
        let meta = &slice.metadata;
        let annotations = meta.annotations.as_ref().and_then(|a| {
            let kept: std::collections::BTreeMap<String, String> = a
                .iter()
                .filter(|(k, _)| *k == LAST_CHANGE_TRIGGER_TIME)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (!kept.is_empty()).then_some(kept)
        });
        Self {
            metadata: Box::new(ObjectMeta {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                labels: meta.labels.clone(),
                annotations,
                ..ObjectMeta::default()
            }),
            address_type: slice.address_type.as_str().into(),
            ports: slice.ports.clone().unwrap_or_default().into(),
            endpoints: slice
                .endpoints
                .iter()
                .map(|e| StoredEndpoint {
                    addresses: e.addresses.iter().map(|a| a.as_str().into()).collect(),
                    conditions: e.conditions.clone(),
                    hints: e.hints.clone().map(Box::new),
                    node_name: e.node_name.as_deref().map(Into::into),
                })
                .collect(),
        }
    }
}

impl StoredSlice {
    /// The slice again, with only the kept fields (a Kubernetes object for translation).
    pub fn to_slice(&self) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: (*self.metadata).clone(),
            address_type: self.address_type.to_string(),
            ports: (!self.ports.is_empty()).then(|| self.ports.to_vec()),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    addresses: e.addresses.iter().map(|a| a.to_string()).collect(),
                    conditions: e.conditions.clone(),
                    hints: e.hints.as_deref().cloned(),
                    node_name: e.node_name.as_deref().map(str::to_owned),
                    ..Endpoint::default()
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_slice_keeps_what_translation_reads_and_drops_the_rest() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                         "labels": {"kubernetes.io/service-name": "web"},
                         "annotations": {(LAST_CHANGE_TRIGGER_TIME): "2026-12-07T00:00:01Z", "other": "x"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node-1", "zone": "a", "hostname": "h",
                           "conditions": {"ready": false, "serving": true, "terminating": true},
                           "hints": {"forZones": [{"name": "a"}]},
                           "targetRef": {"kind": "Pod", "name": "web-abc", "namespace": "shop"}}],
        }))
        .expect("slice");
        let back = StoredSlice::from(&slice).to_slice();
        let mut expected = slice.clone();
        expected.metadata = ObjectMeta {
            name: slice.metadata.name.clone(),
            namespace: slice.metadata.namespace.clone(),
            labels: slice.metadata.labels.clone(),
            annotations: Some(
                [(LAST_CHANGE_TRIGGER_TIME.to_owned(), "2026-12-07T00:00:01Z".to_owned())].into(),
            ),
            ..ObjectMeta::default()
        };
        for e in &mut expected.endpoints {
            (e.zone, e.hostname, e.target_ref) = (None, None, None);
        }
        assert_eq!(*back, expected);
        // What translation never reads does not make two slices differ.
        let mut moved = slice.clone();
        moved.endpoints[0].target_ref = None;
        moved.metadata.resource_version = Some("8".into());
        assert_eq!(StoredSlice::from(&moved), StoredSlice::from(&slice));
        let mut not_ready = slice;
        not_ready.endpoints[0].conditions.as_mut().expect("conditions").serving = Some(false);
        assert_ne!(StoredSlice::from(&not_ready), StoredSlice::from(&moved));
    }
}
