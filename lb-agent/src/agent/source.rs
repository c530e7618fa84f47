//! Where this agent's objects come from, and who this node is.
use std::path::PathBuf;

use lb_common::source_state;
use tracing::warn;

use crate::{
    model::{NodeContext, Objects, Problem},
    nodeport_addresses::{self, NodePortAddresses},
    source::{self, SourceError, kubernetes::KubeSource},
};

/// Where this agent's objects come from.
pub enum Source {
    File { path: PathBuf, _watcher: notify::RecommendedWatcher },
    Kubernetes(KubeSource),
}

impl Source {
    /// `lb_common::source_state` now.
    pub fn state(&self) -> u8 {
        match self {
            Self::File { .. } => source_state::FILE,
            Self::Kubernetes(kube) if kube.reconnecting() => source_state::RECONNECTING,
            Self::Kubernetes(_) => source_state::WATCHING,
        }
    }

    pub fn load(&self) -> Result<(Objects, Vec<Problem>), SourceError> {
        match self {
            Self::File { path, .. } => source::file::load(path),
            Self::Kubernetes(kube) => Ok((kube.snapshot(), Vec::new())),
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
    pub fn context(&self, objects: &Objects) -> NodeContext {
        let mut node = NodeContext::from_nodes(&self.name, objects.nodes.iter().map(|n| &*n.object));
        let interfaces = nodeport_addresses::interface_addresses().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list this node's interface addresses");
            Vec::new()
        });
        node.addresses = self.nodeport_addresses.select(&node.addresses, &interfaces);
        node
    }
}
