//! Harness for kernel tests and the demo: guard types that create a network namespace, a cgroup
//! and a bpffs directory and remove them (pins included) on every exit path, in-process backend
//! servers living inside the namespace, the agent as a child process, and the probe client that
//! runs inside the test cgroup and namespace.
//!
//! Everything is named `lbt-<pid>-<n>`; leftovers of a crashed earlier run (whose pid is gone) are
//! removed the first time a guard is made.
pub mod agent;
pub mod apiserver;
pub mod cni;
pub mod flows;
pub mod guard;
pub mod metrics;
pub mod node;
pub mod observer;
pub mod packet;
pub mod parity;
pub mod probe;
pub mod servers;
pub mod topology;
pub mod yaml;

use std::path::PathBuf;

/// Fails loudly when the tests cannot run for real (they never skip).
pub fn require_root() {
    // Safety: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kernel tests need root (BPF, network namespaces, cgroups): run `cargo xtask test` as root"
    );
}

/// A binary built next to the running one (`target/<profile>/NAME`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build it first (`cargo xtask test` does)", path.display());
    path
}

/// The agent binary: `LB_AGENT_BIN`, or the one built next to this one.
pub fn agent_bin() -> PathBuf {
    match std::env::var_os("LB_AGENT_BIN") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.exists(), "LB_AGENT_BIN={} does not exist", p.display());
            p
        }
        None => sibling_bin("lb-agent"),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: `lb-probe`'s request stamps and the tests' own readings.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
