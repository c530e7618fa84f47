//! Everything that touches the kernel: the map layout of a `DesiredState` (`state`, with Maglev
//! tables from `maglev`), the ordered diff between two layouts (`diff`), the map writers (`maps`),
//! loading/attaching (`loader`), and the kernel's decision for one connection walked over the
//! maps read back (`explain`).
pub mod affinity;
pub mod attached;
pub mod conntrack;
pub mod diff;
pub mod explain;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod migrate;
pub mod names;
pub mod pinned;
pub mod pod_interfaces;
pub mod socket_scope;
pub mod state;
pub mod udp_sockets;

#[cfg(test)]
mod tests;
