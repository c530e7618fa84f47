//! The ordered list of map writes that takes the kernel from one `MapState` to another without
//! ever showing a connect a half-built service ("make before break"):
//!
//! 1. new or changed backends;
//! 2. new or changed slots;
//! 3. new source ranges;
//! 4. new or changed service names (with zeroed per-service counters, when the group is new);
//! 5. new or changed frontends (their `count` now covers only written slots, and a frontend
//!    flagged `SOURCE_RANGES` finds its group's ranges written);
//! 6. removed frontends;
//! 7. removed source ranges (no frontend flagged for their group needs them any more);
//! 8. removed slots (no frontend's `count` reaches them any more);
//! 9. removed service names and counters (no frontend names their group any more);
//! 10. removed backends (no slot names them any more).
//!
//! Maps read back from the kernel (at start, or after a failed apply) may also hold entries no
//! frontend reaches, written ahead of their frontends by an apply that failed part-way: their
//! removals come before everything else (`leftovers`, `diff_read_back`).
//!
//! Every prefix of the list leaves `MapState::check` true, so an apply that fails half-way leaves
//! a consistent datapath, and applying the list again is harmless. For source ranges, every
//! prefix admits, at each frontend, every source both the old and the new state admit, and none
//! that neither admits: ranges are added before and removed after the frontends change, so a
//! change of ranges briefly admits their union, and clearing the flag precedes the removal.
use std::fmt;

use lb_common::{Backend, FrontendValue, ServiceName, SlotKey, SlotValue};

use super::{
    names::ServiceLabel,
    state::{FrontendKey, MapState, SourceRange, backend_addr},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, Backend),
    PutSlot(SlotKey, SlotValue),
    PutSourceRange(SourceRange),
    PutService(u32, ServiceName),
    PutFrontend(FrontendKey, FrontendValue),
    DeleteFrontend(FrontendKey),
    DeleteSourceRange(SourceRange),
    DeleteSlot(SlotKey),
    DeleteService(u32),
    DeleteBackend(u32),
}

impl fmt::Display for MapOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PutBackend(id, b) => write!(f, "put backend {id} = {} state {}", backend_addr(b), b.state),
            Self::PutSlot(k, v) => write!(f, "put slot {}/{} = backend {}", k.group, k.slot, v.backend),
            Self::PutSourceRange(r) => write!(f, "put source range {} for group {}", r.cidr, r.group),
            Self::PutService(g, n) => write!(f, "put service {g} = {}", ServiceLabel::decode(n)),
            Self::PutFrontend(k, v) => {
                write!(f, "put frontend {}/{} = group {} count {}", k.addr(), k.proto(), v.group, v.count)?;
                if (v.ext_offset, v.ext_count) != (0, v.count) {
                    write!(f, " external {}+{}", v.ext_offset, v.ext_count)?;
                }
                if v.flags & lb_common::frontend_flags::SOURCE_RANGES != 0 {
                    write!(f, " source-ranges")?;
                }
                Ok(())
            }
            Self::DeleteFrontend(k) => write!(f, "delete frontend {}/{}", k.addr(), k.proto()),
            Self::DeleteSourceRange(r) => write!(f, "delete source range {} for group {}", r.cidr, r.group),
            Self::DeleteSlot(k) => write!(f, "delete slot {}/{}", k.group, k.slot),
            Self::DeleteService(g) => write!(f, "delete service {g}"),
            Self::DeleteBackend(id) => write!(f, "delete backend {id}"),
        }
    }
}

/// The ordered writes from `old` to `new`.
pub fn diff(old: &MapState, new: &MapState) -> Vec<MapOp> {
    diff_iter(old, new).collect()
}

/// The writes of `diff`, in the same order, made as they are taken (a full sync of a large
/// cluster writes them in chunks, never holding them all).
pub fn diff_iter<'a>(old: &'a MapState, new: &'a MapState) -> impl Iterator<Item = MapOp> + 'a {
    let backends = new.backends.iter().filter(|(id, b)| old.backends.get(id) != Some(b));
    let slots = new.slots.iter().filter(|(k, v)| old.slots.get(k) != Some(v));
    let services = new.services.iter().filter(|(g, n)| old.services.get(g) != Some(n));
    let frontends = new.frontends.iter().filter(|(k, v)| old.frontends.get(k) != Some(v));
    backends
        .map(|(id, b)| MapOp::PutBackend(*id, *b))
        .chain(slots.map(|(k, v)| MapOp::PutSlot(*k, *v)))
        .chain(new.source_ranges.difference(&old.source_ranges).map(|r| MapOp::PutSourceRange(*r)))
        .chain(services.map(|(g, n)| MapOp::PutService(*g, *n)))
        .chain(frontends.map(|(k, v)| MapOp::PutFrontend(*k, *v)))
        .chain(
            old.frontends
                .keys()
                .filter(|k| !new.frontends.contains_key(k))
                .map(|k| MapOp::DeleteFrontend(*k)),
        )
        .chain(old.source_ranges.difference(&new.source_ranges).map(|r| MapOp::DeleteSourceRange(*r)))
        .chain(old.slots.keys().filter(|k| !new.slots.contains_key(k)).map(|k| MapOp::DeleteSlot(*k)))
        .chain(
            old.services.keys().filter(|g| !new.services.contains_key(g)).map(|g| MapOp::DeleteService(*g)),
        )
        .chain(
            old.backends.keys().filter(|k| !new.backends.contains_key(k)).map(|k| MapOp::DeleteBackend(*k)),
        )
}

/// Of maps read back from the kernel, the entries no frontend reaches (an apply that failed
/// part-way wrote them ahead of the frontends that were to use them) that `new` does not keep:
/// `diff_read_back` removes them first, so they never take room the change needs.
pub fn leftovers(old: &MapState, new: &MapState) -> MapState {
    let mut first = old.unreachable();
    first.slots.retain(|k, _| !new.slots.contains_key(k));
    first.backends.retain(|id, _| !new.backends.contains_key(id));
    first.services.retain(|g, _| !new.services.contains_key(g));
    first.source_ranges.retain(|r| !new.source_ranges.contains(r));
    first
}

/// The writes of `diff_iter`, with the removals of `first` (`leftovers`) before all the others.
pub fn diff_read_back<'a>(
    old: &'a MapState,
    new: &'a MapState,
    first: &'a MapState,
) -> impl Iterator<Item = MapOp> + 'a {
    let removals = first
        .source_ranges
        .iter()
        .map(|r| MapOp::DeleteSourceRange(*r))
        .chain(first.slots.keys().map(|k| MapOp::DeleteSlot(*k)))
        .chain(first.services.keys().map(|g| MapOp::DeleteService(*g)))
        .chain(first.backends.keys().map(|id| MapOp::DeleteBackend(*id)));
    let removed_first = |op: &MapOp| match op {
        MapOp::DeleteSourceRange(r) => first.source_ranges.contains(r),
        MapOp::DeleteSlot(k) => first.slots.contains_key(k),
        MapOp::DeleteService(g) => first.services.contains_key(g),
        MapOp::DeleteBackend(id) => first.backends.contains_key(id),
        _ => false,
    };
    removals.chain(diff_iter(old, new).filter(move |op| !removed_first(op)))
}

/// Applies one op to an in-memory state (what the syncer knows is programmed after a write;
/// the fake map writer and the tests).
pub fn apply_in_memory(state: &mut MapState, op: &MapOp) {
    match *op {
        MapOp::PutBackend(id, b) => {
            state.backends.insert(id, b);
        }
        MapOp::PutSlot(k, v) => {
            state.slots.insert(k, v);
        }
        MapOp::PutSourceRange(r) => {
            state.source_ranges.insert(r);
        }
        MapOp::PutService(g, n) => {
            state.services.insert(g, n);
        }
        MapOp::PutFrontend(k, v) => {
            state.frontends.insert(k, v);
        }
        MapOp::DeleteFrontend(k) => {
            state.frontends.remove(&k);
        }
        MapOp::DeleteSourceRange(r) => {
            state.source_ranges.remove(&r);
        }
        MapOp::DeleteSlot(k) => {
            state.slots.remove(&k);
        }
        MapOp::DeleteService(g) => {
            state.services.remove(&g);
        }
        MapOp::DeleteBackend(id) => {
            state.backends.remove(&id);
        }
    }
}
