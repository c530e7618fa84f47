//! Service lookup → slot choice → backend fetch, shared by every hook.
pub use lb_common::select::Path;
use lb_common::{
    AffinityKey, AffinityValue, Backend, FrontendValue, SlotKey,
    select::{WhenEmpty, slot_of},
    stats,
};

use crate::{maps, stats::bump};

/// What a lookup decided for one connect/send.
pub enum Verdict {
    /// Rewrite the destination to this backend (with its id).
    Backend(u32, Backend),
    /// The address is a frontend with no usable backend anywhere: refuse (kube-proxy's REJECT).
    Reject,
    /// Endpoints exist, but none this frontend's Local traffic policy may use (kube-proxy's DROP).
    Unreachable,
}

/// A `Verdict` and the backend group of the frontend that gave it (for per-service counters).
pub struct Resolved {
    pub group: u32,
    pub verdict: Verdict,
}

/// Who a new connection comes from, for session affinity (`lb_common::AffinityKey`).
pub struct Client {
    /// `AffinityKey::client`.
    pub id: [u32; 4],
    /// `lb_common::affinity_kind::*`.
    pub kind: u8,
}

/// Looks a frontend up with `lookup` (which copies the value out at once) and picks the backend in
/// slot `hash() % count + 1` of `path`'s range (a random number at the socket, the flow hash at
/// TC, asked for only once a frontend is found; the rules are `lb_common::select`'s). With session affinity on the frontend, the backend `client()` got last time is kept while
/// it is still in the range and the client came back within the timeout (`affine`); `client` is
/// called only then. `None`: not a frontend. A slot or backend miss means the agent changed the
/// service between our reads (it shrank the slots, or an element was recycled): look the
/// frontend up again, once.
#[inline(always)]
pub fn resolve(
    lookup: impl Fn() -> Option<FrontendValue>,
    hash: impl Fn() -> u32,
    path: Path,
    client: impl Fn() -> Client,
) -> Option<Resolved> {
    let mut group = 0;
    // Computed only for a frontend (a packet to none pays no hash), once.
    let mut hashed = None;
    for _ in 0..2 {
        let frontend = lookup()?;
        group = frontend.group;
        let hash = match hashed {
            Some(h) => h,
            None => {
                let h = hash();
                hashed = Some(h);
                h
            }
        };
        if let Some(verdict) = select(&frontend, hash, path, &client) {
            return Some(Resolved { group, verdict });
        }
    }
    // Two misses in a row: the service is being rewritten under us. Count it; refuse.
    bump(stats::LOOKUP_MISS);
    Some(Resolved { group, verdict: Verdict::Reject })
}

/// Picks a backend of `frontend`; `None` when its slot or backend is missing.
#[inline(always)]
fn select(frontend: &FrontendValue, hash: u32, path: Path, client: &impl Fn() -> Client) -> Option<Verdict> {
    let (offset, count) = frontend.slot_range(path);
    if count == 0 {
        return Some(match frontend.when_empty() {
            WhenEmpty::Drop => Verdict::Unreachable,
            WhenEmpty::Reject => Verdict::Reject,
        });
    }
    if frontend.affinity_timeout != 0 {
        return affine(frontend, offset, count, hash, client()).map(|(id, b)| Verdict::Backend(id, b));
    }
    // Slots are 1-based; slot 0 is reserved and never written.
    let (id, backend) = backend_at(frontend.group, slot_of(hash, offset, count)?)?;
    Some(Verdict::Backend(id, backend))
}

/// Session affinity (kube-proxy's `recent` match): the client's entry in `LB_AFFINITY` names a
/// backend and the slot it was found in. It is kept when the client's last new connection is at
/// most `affinity_timeout` seconds old, the slot is in this path's range `offset+1..=offset+count`
/// and still names that backend, so a backend removed from this group (even if it lives on for
/// another Service, or its id was given out again) is never reused. Then only `last_used` is
/// refreshed. Otherwise the slot of `hash` is taken and recorded.
#[inline(always)]
fn affine(
    frontend: &FrontendValue,
    offset: u32,
    count: u32,
    hash: u32,
    client: Client,
) -> Option<(u32, Backend)> {
    let key = AffinityKey { group: frontend.group, client: client.id, kind: client.kind, pad: [0; 3] };
    let now = crate::conntrack::now();
    if let Some(entry) = maps::LB_AFFINITY.get_ptr_mut(key) {
        // Safety: `entry` points into the map element for this program run. The fields are read
        // once each; a concurrent writer (another connection of the same client) stores a choice
        // that is as valid as ours, and a torn read fails the slot check or picks anew.
        let held = unsafe {
            AffinityValue { backend: (*entry).backend, slot: (*entry).slot, last_used: (*entry).last_used }
        };
        let (id, slot) = (held.backend, held.slot);
        if held.holds(now, frontend.affinity_timeout_ns(), offset, count)
            && let Some((found, backend)) = backend_at(frontend.group, slot)
            && found == id
        {
            // Safety: as above; a plain store of a timestamp.
            unsafe { (*entry).last_used = now };
            return Some((id, backend));
        }
    }
    let slot = slot_of(hash, offset, count)?;
    let (id, backend) = backend_at(frontend.group, slot)?;
    // A full LRU evicts its least recently used entry; an error only loses the affinity.
    let _ = maps::LB_AFFINITY.insert(key, AffinityValue { backend: id, slot, last_used: now }, 0);
    Some((id, backend))
}

/// The backend id in slot `slot` of `group`, and the backend.
#[inline(always)]
fn backend_at(group: u32, slot: u32) -> Option<(u32, Backend)> {
    let key = SlotKey { group, slot };
    // Safety: the values are plain old data copied out at once. A concurrent delete can make an
    // element be reused for another key while we read it (non-preallocated hash maps recycle
    // elements); the agent's write order and id quarantine make that window harmless in
    // practice, and a miss is retried by `resolve`.
    let backend_id = unsafe { maps::LB_SLOTS.get(key) }?.backend;
    let backend = unsafe { maps::LB_BACKENDS.get(backend_id) }.copied()?;
    Some((backend_id, backend))
}
