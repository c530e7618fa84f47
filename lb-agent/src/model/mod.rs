//! The desired load-balancer state, in Kubernetes terms, and the pure translation that produces it.
//!
//! Nothing in here touches the kernel: `translate` turns objects into a `DesiredState`, which
//! `layout::state` then lays out as map entries.
mod translate;
mod types;

pub use translate::{Located, NodeContext, Objects, translate};
pub use types::*;

#[cfg(test)]
mod tests;
