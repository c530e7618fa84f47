//! Per-CPU counters, global (`lb_common::stats`) and per backend group (`service_stats`), summed
//! by the agent.
use crate::maps::{LB_SERVICE_STATS, LB_STATS};

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = LB_STATS.get_ptr_mut(index) {
        // Safety: the pointer is to this CPU's slot of a per-CPU array; BPF programs are not
        // preempted by another program on the same CPU for this map type, so the add is not torn.
        unsafe { *counter += 1 };
    }
}

/// Counts one new connection or flow of backend group `group` under `lb_common::service_stats`
/// index `index` (a constant at every call site).
#[inline(always)]
pub fn bump_service(group: u32, index: u32) {
    if index >= lb_common::service_stats::COUNT {
        return;
    }
    if let Some(entry) = LB_SERVICE_STATS.get_ptr_mut(group) {
        // Safety: this CPU's value of the group's entry, valid for this program run (an entry the
        // agent deletes meanwhile is freed only after the run); `index` is in bounds (checked
        // above), and as for `bump` the add is not torn.
        unsafe {
            let counter = (*entry).counters.as_mut_ptr().add(index as usize);
            *counter += 1;
        }
    }
}
