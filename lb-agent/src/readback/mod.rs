//! Operator read-backs: what the kernel holds, read from the pinned maps and put in Kubernetes
//! terms for `inspect` and `explain` (they work while the agent is down).
//!
//! - `explain`: the kernel's decision for one connection or packet, walked over the maps;
//! - `inspect`: the rows `inspect` shows (services, backends, per-Service counters, Maglev tables);
//! - `affinity`, `conntrack`: the tables the programs write, one row per entry;
//! - `frame`: Ethernet frames decoded and checked, and program verdicts named (`trace`).
pub mod affinity;
pub mod conntrack;
pub mod explain;
pub mod frame;
pub mod inspect;
