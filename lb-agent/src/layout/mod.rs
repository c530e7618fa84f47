//! The pure half of the datapath: how a `model::DesiredState` becomes map entries, and how the
//! kernel gets from one set of entries to the next. Nothing here touches the kernel.
//!
//! - `state`: the map layout of a desired state (`MapState`), with ids kept stable across syncs;
//! - `maglev`: the consistent-hashing tables of external frontends (`--lb-algorithm maglev`);
//! - `names`: which Service port a backend group serves (`LB_SERVICES`);
//! - `diff`: the ordered, make-before-break list of map writes between two layouts.
pub mod diff;
pub mod incremental;
pub mod maglev;
pub mod names;
pub mod state;

#[cfg(test)]
pub(crate) mod tests;
