//! Where this agent's objects come from, what changed since the last sync, and who this node is.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::SystemTime,
};

use k8s_openapi::api::core::v1::Node;
use lb_common::source_state;
use tracing::warn;

use crate::{
    model::{NodeContext, Problem, ServiceKey, ServiceObjects, group_objects},
    nodeport_addresses::{self, NodePortAddresses},
    source::{
        self, SourceError,
        kubernetes::KubeSource,
        store::{ChangeCounts, changed_keys},
    },
};

/// Where this agent's objects come from.
pub enum Source {
    /// A file or directory, read whole at each change; `last` is the last good load, by key.
    File {
        path: PathBuf,
        _watcher: notify::RecommendedWatcher,
        last: BTreeMap<ServiceKey, ServiceObjects>,
        nodes: Vec<Arc<Node>>,
        /// kube-proxy's change counts, from each load compared with the last.
        counts: ChangeCounts,
    },
    Kubernetes(KubeSource),
}

/// What changed since the last sync.
#[derive(Debug, Default)]
pub struct Changes {
    /// The Service keys whose objects changed.
    pub dirty: BTreeSet<ServiceKey>,
    /// Problems of the source itself (objects it could not read or tie to a Service).
    pub problems: Vec<Problem>,
    /// `last-change-trigger-time`s of the EndpointSlice changes (Kubernetes source).
    pub triggers: Vec<SystemTime>,
}

impl Source {
    /// A file source, not read yet.
    pub fn file(path: PathBuf, watcher: notify::RecommendedWatcher) -> Self {
        Self::File {
            path,
            _watcher: watcher,
            last: BTreeMap::new(),
            nodes: Vec::new(),
            counts: ChangeCounts::default(),
        }
    }

    /// `lb_common::source_state` now.
    pub fn state(&self) -> u8 {
        match self {
            Self::File { .. } => source_state::FILE,
            Self::Kubernetes(kube) if kube.reconnecting() => source_state::RECONNECTING,
            Self::Kubernetes(_) => source_state::WATCHING,
        }
    }

    /// What changed since the last call. The file source reads its files again and compares
    /// them with the last good load, by content; a load that fails changes nothing.
    pub fn changes(&mut self) -> Result<Changes, SourceError> {
        match self {
            Self::File { path, last, nodes, counts, .. } => {
                let (objects, mut problems) = source::file::load(path)?;
                let (grouped, more) = group_objects(&objects);
                problems.extend(more);
                let dirty = changed_keys(last, &grouped);
                let none = ServiceObjects::default();
                for key in &dirty {
                    let (old, new) = (last.get(key).unwrap_or(&none), grouped.get(key).unwrap_or(&none));
                    counts.service_total += u64::from(!old.same_services(new));
                    counts.endpoint_total += u64::from(!old.same_slices(new));
                }
                *last = grouped;
                *nodes = objects.nodes.iter().map(|n| Arc::clone(&n.object)).collect();
                Ok(Changes { dirty, problems, triggers: Vec::new() })
            }
            Self::Kubernetes(kube) => {
                let taken = kube.take_changes();
                Ok(Changes { dirty: taken.dirty, problems: Vec::new(), triggers: taken.triggers })
            }
        }
    }

    /// The objects of `key` now.
    pub fn objects(&self, key: &ServiceKey) -> Option<ServiceObjects> {
        match self {
            Self::File { last, .. } => last.get(key).cloned(),
            Self::Kubernetes(kube) => kube.objects(key),
        }
    }

    /// Every Service key with objects now.
    pub fn keys(&self) -> BTreeSet<ServiceKey> {
        match self {
            Self::File { last, .. } => last.keys().cloned().collect(),
            Self::Kubernetes(kube) => kube.keys(),
        }
    }

    /// kube-proxy's change counts so far (the file source has nothing pending between loads).
    pub fn change_counts(&self) -> ChangeCounts {
        match self {
            Self::File { counts, .. } => *counts,
            Self::Kubernetes(kube) => kube.change_counts(),
        }
    }

    /// The Node objects (the one named like this node gives its zone and addresses).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        match self {
            Self::File { nodes, .. } => nodes.clone(),
            Self::Kubernetes(kube) => kube.node().into_iter().collect(),
        }
    }

    /// Services and EndpointSlices held (for the log).
    pub fn counts(&self) -> (usize, usize) {
        match self {
            Self::File { last, .. } => {
                last.values().fold((0, 0), |(s, e), o| (s + o.services.len(), e + o.slices.len()))
            }
            Self::Kubernetes(kube) => kube.counts(),
        }
    }
}

/// Who this node is: its name, and from its Node object and interfaces, its zone and the
/// addresses NodePorts answer on.
pub struct NodeIdentity {
    pub name: String,
    pub nodeport_addresses: NodePortAddresses,
}

impl NodeIdentity {
    /// Whether this node may take load-balancer traffic (`/healthz`'s `nodeEligible`): true
    /// without a Node object of its name.
    pub fn eligible(&self, nodes: &[Arc<Node>]) -> bool {
        nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.name.as_str()))
            .is_none_or(|n| crate::health::probes::node_eligible(n))
    }

    pub fn context(&self, nodes: &[Arc<Node>]) -> NodeContext {
        let mut node = NodeContext::from_nodes(&self.name, nodes.iter().map(|n| &**n));
        let interfaces = nodeport_addresses::interface_addresses().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list this node's interface addresses");
            Vec::new()
        });
        node.addresses = self.nodeport_addresses.select(&node.addresses, &interfaces);
        node
    }
}
