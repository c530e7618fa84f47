//! `loadBalancerSourceRanges` on the packet path (kube-proxy rule 10): a new flow to a
//! LoadBalancer frontend flagged `SOURCE_RANGES` starts only from a source inside one of its
//! Service's ranges, looked up in `LB_SOURCE_RANGES` under the frontend's group. NodePorts,
//! externalIPs and ClusterIPs are never flagged. The socket hooks do not check: a node's own
//! connections (host and local pods) are not filtered, as with Cilium's socket LB.
use core::cell::Cell;

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{FrontendValue, SOURCE_RANGE_GROUP_BITS, SourceRangeKey, frontend_flags};

use crate::maps::LB_SOURCE_RANGES;

/// Whether a packet from `src` (family 4 or 6, IPv4 in `src[0]`) may start a flow to `frontend`.
#[inline(always)]
pub fn allowed(frontend: &FrontendValue, family: u8, src: &[u32; 4]) -> bool {
    if frontend.flags & frontend_flags::SOURCE_RANGES == 0 {
        return true;
    }
    let bits = if family == 4 { 32 } else { 128 };
    let key = Key::new(SOURCE_RANGE_GROUP_BITS + bits, SourceRangeKey { group: frontend.group, addr: *src });
    LB_SOURCE_RANGES.get(&key).is_some()
}

/// The frontend `lookup` reads (a fresh copy per call), unless `src` may not reach it: then
/// `None` with `denied` set to the frontend's group (never 0), so the caller tells "denied" from
/// "not a frontend". A denial is
/// checked once against a fresh read: the agent clears the flag (or moves the frontend to another
/// group) before it deletes the ranges, so a value read just before that must not deny.
#[inline(always)]
pub fn admitted(
    lookup: impl Fn() -> Option<FrontendValue>,
    family: u8,
    src: &[u32; 4],
    denied: &Cell<u32>,
) -> Option<FrontendValue> {
    let frontend = lookup()?;
    if allowed(&frontend, family, src) {
        return Some(frontend);
    }
    let again = lookup()?;
    if (again.group, again.flags) != (frontend.group, frontend.flags) && allowed(&again, family, src) {
        return Some(again);
    }
    // Never 0, the "not denied" value (the agent never hands out group 0; `u32::MAX` names no
    // counters entry).
    denied.set(if again.group == 0 { u32::MAX } else { again.group });
    None
}
