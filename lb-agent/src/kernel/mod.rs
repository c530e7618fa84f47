//! The kernel side of the datapath: the pinned maps and the programs, over `sys` (the raw calls).
//!
//! - `maps`: the map writers (`LbMaps`: the pinned maps, and an in-memory twin for tests);
//! - `loader`: loading the embedded object, pinning, attaching to the cgroup, TC and XDP hooks;
//! - `migrate`: upgrades that change a map's capacity or layout, under traffic;
//! - `pinned`, `attached`: what is pinned and attached, as the kernel reports it;
//! - `pod_interfaces`, `socket_scope`: `--pod-interfaces` and `--socket-lb-scope`;
//! - `udp_sockets`, `sock_destroy`: connected UDP sockets whose backend left, found and closed;
//! - `test_run`: a program run on frames with `BPF_PROG_TEST_RUN` against the pinned maps (`trace`).
pub mod attached;
pub mod ct_gate;
pub mod loader;
pub mod maps;
pub mod migrate;
pub mod pinned;
pub mod pod_interfaces;
pub mod sock_destroy;
pub mod socket_scope;
pub mod test_run;
pub mod udp_sockets;
