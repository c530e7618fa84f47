//! Per-CPU counters (`lb_common::stats`), summed by the agent. No logging on the hot path.
use crate::maps::LB_STATS;

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = LB_STATS.get_ptr_mut(index) {
        // Safety: the pointer is to this CPU's slot of a per-CPU array; BPF programs are not
        // preempted by another program on the same CPU for this map type, so the add is not torn.
        unsafe { *counter += 1 };
    }
}
