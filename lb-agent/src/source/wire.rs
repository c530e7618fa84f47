//! Services and EndpointSlices as the watches decode them: only the fields the agent reads, so
//! `managedFields`, other annotations, an endpoint's `targetRef`, `zone`, `hostname` and
//! `deprecatedTopology` are skipped by the parser instead of being built and dropped (a page of
//! a list is decoded at once, and a whole list of 10,000 k8s-openapi slices of 10 endpoints would
//! be about 50 MB). Each is turned into the k8s-openapi object with only those fields (the strings
//! moved, not copied) as the watch hands it over.
use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServiceSpec, ServiceStatus},
        discovery::v1::{Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Resource;
use serde::{Deserialize, Deserializer};

use super::kubernetes::LAST_CHANGE_TRIGGER_TIME;

/// The metadata the agent reads (and kube's watcher: `resourceVersion`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "trigger_only")]
    annotations: Option<BTreeMap<String, String>>,
}

/// Of the annotations, only `last-change-trigger-time` (others, such as kubectl's
/// `last-applied-configuration`, are skipped unread).
fn trigger_only<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("annotations")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == LAST_CHANGE_TRIGGER_TIME {
                    kept.insert(key.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(Some(kept))
        }
    }
    d.deserialize_option(Visitor)
}

fn object_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations,
        ..ObjectMeta::default()
    })
}

/// A Service as decoded: metadata without annotations, spec and status whole.
#[derive(Clone, Debug, Deserialize)]
pub struct WireService {
    #[serde(deserialize_with = "object_meta")]
    metadata: ObjectMeta,
    spec: Option<ServiceSpec>,
    status: Option<ServiceStatus>,
}

impl From<WireService> for Service {
    fn from(w: WireService) -> Self {
        Self { metadata: ObjectMeta { annotations: None, ..w.metadata }, spec: w.spec, status: w.status }
    }
}

/// An endpoint as decoded.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEndpoint {
    #[serde(default, deserialize_with = "null_as_default")]
    addresses: Vec<String>,
    conditions: Option<EndpointConditions>,
    hints: Option<EndpointHints>,
    node_name: Option<String>,
}

/// An EndpointSlice as decoded.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireSlice {
    #[serde(deserialize_with = "object_meta")]
    metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    address_type: String,
    ports: Option<Vec<EndpointPort>>,
    #[serde(default, deserialize_with = "null_as_default")]
    endpoints: Vec<WireEndpoint>,
}

/// An absent or `null` field as its default, as k8s-openapi decodes one (e.g. `endpoints: null`,
/// an empty slice as some servers send it). A required field a server left out (`addressType`,
/// an endpoint's `addresses`) then fails translation of its slice alone, with a problem naming
/// it, instead of failing the decoding of the whole list page it came in.
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl From<WireSlice> for EndpointSlice {
    fn from(w: WireSlice) -> Self {
        Self {
            metadata: w.metadata,
            address_type: w.address_type,
            ports: w.ports,
            endpoints: w
                .endpoints
                .into_iter()
                .map(|e| Endpoint {
                    addresses: e.addresses,
                    conditions: e.conditions,
                    hints: e.hints,
                    node_name: e.node_name,
                    ..Endpoint::default()
                })
                .collect(),
        }
    }
}

/// The API resource of `$wire` is `$k8s`'s.
macro_rules! resource_of {
    ($wire:ty, $k8s:ty) => {
        impl Resource for $wire {
            type DynamicType = ();
            type Scope = <$k8s as Resource>::Scope;
            fn kind(dt: &()) -> Cow<'_, str> {
                <$k8s as Resource>::kind(dt)
            }
            fn group(dt: &()) -> Cow<'_, str> {
                <$k8s as Resource>::group(dt)
            }
            fn version(dt: &()) -> Cow<'_, str> {
                <$k8s as Resource>::version(dt)
            }
            fn plural(dt: &()) -> Cow<'_, str> {
                <$k8s as Resource>::plural(dt)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
resource_of!(WireService, Service);
resource_of!(WireSlice, EndpointSlice);

#[cfg(test)]
mod tests {
    use super::*;

    /// A Service and a slice as an API server sends them, with what the agent never reads.
    fn wire() -> (serde_json::Value, serde_json::Value) {
        let meta = |name: &str| {
            serde_json::json!({
                "name": name, "namespace": "shop", "uid": "u", "resourceVersion": "7",
                "creationTimestamp": "2026-12-07T00:00:00Z",
                "labels": {"kubernetes.io/service-name": "web", "app": "web"},
                "annotations": {(LAST_CHANGE_TRIGGER_TIME): "2026-12-07T00:00:01Z",
                                "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": 1}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {"f:ports": {}}}}],
            })
        };
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": meta("web"),
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ipFamilies": ["IPv4"], "selector": {"app": "web"}, "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}},
        });
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta("web-1"),
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node-1", "zone": "a", "hostname": "h",
                           "conditions": {"ready": false, "serving": true, "terminating": true},
                           "hints": {"forZones": [{"name": "a"}]},
                           "targetRef": {"kind": "Pod", "name": "web-abc", "namespace": "shop"}}],
        });
        (service, slice)
    }

    #[test]
    fn decoded_lean_objects_are_the_full_ones_without_what_the_agent_never_reads() {
        let (service, slice) = wire();
        let lean = Service::from(serde_json::from_value::<WireService>(service.clone()).expect("service"));
        let mut full: Service = serde_json::from_value(service).expect("service");
        full.metadata = ObjectMeta {
            name: full.metadata.name.take(),
            namespace: full.metadata.namespace.take(),
            resource_version: full.metadata.resource_version.take(),
            labels: full.metadata.labels.take(),
            ..ObjectMeta::default()
        };
        assert_eq!(lean, full);

        let lean = EndpointSlice::from(serde_json::from_value::<WireSlice>(slice.clone()).expect("slice"));
        let mut full: EndpointSlice = serde_json::from_value(slice).expect("slice");
        let trigger =
            full.metadata.annotations.as_ref().and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME)).cloned();
        full.metadata = ObjectMeta {
            name: full.metadata.name.take(),
            namespace: full.metadata.namespace.take(),
            resource_version: full.metadata.resource_version.take(),
            labels: full.metadata.labels.take(),
            annotations: trigger.map(|t| BTreeMap::from([(LAST_CHANGE_TRIGGER_TIME.to_owned(), t)])),
            ..ObjectMeta::default()
        };
        for e in &mut full.endpoints {
            (e.zone, e.hostname, e.target_ref) = (None, None, None);
        }
        assert_eq!(lean, full);
        assert_eq!(WireSlice::kind(&()), "EndpointSlice");
        assert_eq!(WireSlice::url_path(&(), None), "/apis/discovery.k8s.io/v1/endpointslices");
        assert_eq!(WireService::url_path(&(), None), "/api/v1/services");
    }

    #[test]
    fn absent_or_null_optional_fields_decode() {
        let slice: WireSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "annotations": null}, "addressType": "IPv4", "endpoints": null,
        }))
        .expect("slice");
        let slice = EndpointSlice::from(slice);
        assert!(slice.endpoints.is_empty() && slice.metadata.annotations.is_none());
        // Required fields left out or null decode as k8s-openapi decodes them (empty), so one
        // such slice does not fail its whole list page.
        let slice: WireSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"}, "endpoints": [{"addresses": null}, {"nodeName": "n"}],
        }))
        .expect("slice without addressType or addresses");
        let slice = EndpointSlice::from(slice);
        assert_eq!(slice.address_type, "");
        assert_eq!(slice.endpoints.len(), 2);
        assert!(slice.endpoints.iter().all(|e| e.addresses.is_empty()));
        let service: WireService =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s"}})).expect("service");
        assert!(Service::from(service).spec.is_none());
    }
}
