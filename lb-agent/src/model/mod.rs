//! The desired load-balancer state, in Kubernetes terms, and the pure translation that produces it.
//!
//! Nothing in here touches the kernel: `translate` turns objects into a `DesiredState`, which
//! `layout::state` then lays out as map entries.
pub mod incremental;
mod translate;
mod types;

pub use translate::{
    Claim, EndpointVerdict, Located, NodeContext, Objects, SERVICE_NAME, SERVICE_PROXY_NAME, ServiceKey,
    ServiceObjects, ServiceTranslation, SliceTie, endpoint_verdicts, group_objects, node_addresses, settle,
    translate, translate_service, unlabelled_slice,
};
pub use types::*;

#[cfg(test)]
mod tests;
