//! Operator read-backs: what the kernel holds, read from the pinned maps and put in Kubernetes
//! terms for `inspect` and `explain` (they work while the agent is down).
//!
//! - `explain`: the kernel's decision for one connection or packet, walked over the maps;
//! - `affinity`, `conntrack`: the tables the programs write, one row per entry.
pub mod affinity;
pub mod conntrack;
pub mod explain;
