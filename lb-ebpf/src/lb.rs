//! Service lookup → slot choice → backend fetch, shared by every hook.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{Backend, FrontendValue, SlotKey, frontend_flags, stats};

use crate::{maps, stats::bump};

/// What a lookup decided for one connect/send.
pub enum Verdict {
    /// Rewrite the destination to this backend.
    Backend(Backend),
    /// The address is a frontend with no usable backend anywhere: refuse (kube-proxy's REJECT).
    Reject,
    /// Endpoints exist, but none this frontend's Local traffic policy may use (kube-proxy's DROP).
    Unreachable,
}

/// Picks a backend of `frontend` (already found in a frontend map).
#[inline(always)]
pub fn select(frontend: &FrontendValue) -> Verdict {
    let count = frontend.count;
    if count == 0 {
        bump(stats::NO_BACKEND);
        if frontend.flags & frontend_flags::DROP_WHEN_EMPTY != 0 {
            return Verdict::Unreachable;
        }
        return Verdict::Reject;
    }
    // Slots are 1-based; slot 0 is reserved and never written.
    // Safety (of the helper call): bpf_get_prandom_u32 has no preconditions.
    let slot = unsafe { bpf_get_prandom_u32() } % count + 1;
    match backend_at(frontend.group, slot) {
        Some(backend) => {
            bump(stats::TRANSLATED);
            Verdict::Backend(backend)
        }
        None => {
            // The agent's write order makes this impossible; count it so a bug is visible.
            bump(stats::LOOKUP_MISS);
            Verdict::Reject
        }
    }
}

#[inline(always)]
fn backend_at(group: u32, slot: u32) -> Option<Backend> {
    let key = SlotKey { group, slot };
    // Safety: both maps are BPF_F_NO_PREALLOC, so an element deleted concurrently is freed only
    // after an RCU grace period: the reference stays valid for this program run. The values are
    // plain old data, copied out at once.
    let backend_id = unsafe { maps::LB_SLOTS.get(&key) }?.backend;
    unsafe { maps::LB_BACKENDS.get(&backend_id) }.copied()
}
