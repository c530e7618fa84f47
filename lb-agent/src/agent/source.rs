//! Where this agent's objects come from, what changed since the last sync, and who this node is.
use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::SystemTime};

use k8s_openapi::api::core::v1::Node;
use lb_common::source_state;
use tracing::warn;

use crate::{
    model::{NodeContext, Problem, ServiceKey, ServiceObjects},
    nodeport_addresses::{self, NodePortAddresses},
    source::{SourceError, file_store::FileStore, kubernetes::KubeSource, store::ChangeCounts},
};

/// Where this agent's objects come from.
pub enum Source {
    /// A file or directory, read again at each change; `store` holds the last good load
    /// (only the documents whose text changed are parsed again).
    File {
        path: PathBuf,
        _watcher: notify::RecommendedWatcher,
        store: FileStore,
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
        Self::File { path, _watcher: watcher, store: FileStore::default() }
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
    /// them with the last good load, by content (`FileStore::load`); a load that fails changes
    /// nothing.
    pub fn changes(&mut self) -> Result<Changes, SourceError> {
        match self {
            Self::File { path, store, .. } => {
                let loaded = store.load(path)?;
                Ok(Changes { dirty: loaded.dirty, problems: loaded.problems, triggers: Vec::new() })
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
            Self::File { store, .. } => store.objects(key),
            Self::Kubernetes(kube) => kube.objects(key),
        }
    }

    /// Every Service key with objects now.
    pub fn keys(&self) -> BTreeSet<ServiceKey> {
        match self {
            Self::File { store, .. } => store.keys(),
            Self::Kubernetes(kube) => kube.keys(),
        }
    }

    /// kube-proxy's change counts so far (the file source has nothing pending between loads).
    pub fn change_counts(&self) -> ChangeCounts {
        match self {
            Self::File { store, .. } => store.change_counts(),
            Self::Kubernetes(kube) => kube.change_counts(),
        }
    }

    /// The Node objects (the one named like this node gives its zone and addresses).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        match self {
            Self::File { store, .. } => store.nodes(),
            Self::Kubernetes(kube) => kube.node().into_iter().collect(),
        }
    }

    /// Services and EndpointSlices held (for the log).
    pub fn counts(&self) -> (usize, usize) {
        match self {
            Self::File { store, .. } => store.counts(),
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
