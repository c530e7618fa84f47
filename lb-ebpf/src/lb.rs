//! Service lookup → slot choice → backend fetch, shared by every hook.
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

/// Which slot range of a frontend a hook uses (see `FrontendValue`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The socket hooks: this node's own connections.
    Socket,
    /// TC/XDP: packets from outside.
    Packet,
}

/// Looks a frontend up with `lookup` (which copies the value out at once) and picks the backend in
/// slot `hash % count + 1` of `path`'s range (a random number at the socket, the flow hash at
/// TC). `None`: not a frontend. A slot or backend miss means the agent changed the service
/// between our reads (it shrank the slots, or an element was recycled): look the frontend up
/// again, once.
#[inline(always)]
pub fn resolve(lookup: impl Fn() -> Option<FrontendValue>, hash: u32, path: Path) -> Option<Verdict> {
    for _ in 0..2 {
        let frontend = lookup()?;
        if let Some(verdict) = select(&frontend, hash, path) {
            return Some(verdict);
        }
    }
    // Two misses in a row: the service is being rewritten under us. Count it; refuse.
    bump(stats::LOOKUP_MISS);
    Some(Verdict::Reject)
}

/// Picks a backend of `frontend`; `None` when its slot or backend is missing.
#[inline(always)]
fn select(frontend: &FrontendValue, hash: u32, path: Path) -> Option<Verdict> {
    let (offset, count) = match path {
        Path::Socket => (0, frontend.count),
        Path::Packet => (frontend.ext_offset, frontend.ext_count),
    };
    if count == 0 {
        if frontend.flags & frontend_flags::DROP_WHEN_EMPTY != 0 {
            return Some(Verdict::Unreachable);
        }
        return Some(Verdict::Reject);
    }
    // Slots are 1-based; slot 0 is reserved and never written.
    let backend = backend_at(frontend.group, offset.wrapping_add(hash % count + 1))?;
    Some(Verdict::Backend(backend))
}

#[inline(always)]
fn backend_at(group: u32, slot: u32) -> Option<Backend> {
    let key = SlotKey { group, slot };
    // Safety: the values are plain old data copied out at once. A concurrent delete can make an
    // element be reused for another key while we read it (non-preallocated hash maps recycle
    // elements); the agent's write order and id quarantine make that window harmless in
    // practice, and a miss is retried by `resolve`.
    let backend_id = unsafe { maps::LB_SLOTS.get(&key) }?.backend;
    unsafe { maps::LB_BACKENDS.get(&backend_id) }.copied()
}
