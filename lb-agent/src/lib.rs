//! lb-agent as a library: everything the node agent (`lb-agent run`) and the operator CLI do, so
//! the kernel tests and the bench use the same code the binary runs.
//!
//! The flow, in module names:
//!
//! - Kubernetes objects: `source` (the API server's watches, or YAML files) → `model::Objects`;
//! - pure translation: `model::translate` → `model::DesiredState` (kube-proxy's semantics);
//! - layout: `layout::state` lays a desired state out as map entries (`MapState`, Maglev tables
//!   from `layout::maglev`), keeping programmed ids;
//! - diff: `layout::diff` orders the writes between two layouts, make before break;
//! - ordered map writes: `sync::Syncer` applies them through `kernel::maps` (the pinned maps);
//! - the running agent: `agent` (startup order, the sync loop, its status record), with `health`
//!   and `metrics` beside it;
//! - operators: `readback` (inspect, explain, the tables the programs write) and `cli` (the
//!   commands, which parse, call the library and print);
//! - `kernel` loads, attaches, pins and migrates the programs and maps; `sys` is the one layer of
//!   raw kernel calls (bpf(2), netlink, sock_diag, namespaces, interface addresses) under it.
pub mod agent;
pub mod cli;
pub mod health;
pub mod kernel;
pub mod kube_proxy_cleanup;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod nodeport_addresses;
pub mod readback;
pub mod snat_ports;
pub mod source;
pub mod sync;
pub mod sys;

/// Test builds count their allocations (`sys::counting_alloc`), for the memory measurements.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: sys::counting_alloc::Counting = sys::counting_alloc::Counting;
