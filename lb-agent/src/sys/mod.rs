//! The one layer of raw kernel calls, as aya's `sys/`: every bpf(2) command aya does not offer,
//! netlink (rtnetlink, sock_diag), namespaces, interfaces and addresses, filesystem and clock
//! facts. Everything above it (`kernel`, `readback`, `agent`, `health`) uses these typed
//! functions; `unsafe` outside the kernel programs lives here, each block with its invariant.
pub mod async_fd;
pub mod bpf;
#[cfg(test)]
pub mod counting_alloc;
pub mod fs;
pub mod malloc;
pub mod net;
pub mod netlink;
pub mod rtnetlink;
pub mod sock_diag;
pub mod time;
