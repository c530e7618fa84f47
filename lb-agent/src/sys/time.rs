//! The kernel's clocks, as the programs read them.

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: what `bpf_ktime_get_coarse_ns` gives the programs
/// (session affinity's and conntrack's `last_used`/`last_seen`).
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
