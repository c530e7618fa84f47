//! The sync: desired state → map layout (keeping programmed ids) → ordered diff → map writes.
//! Like kube-proxy's `syncProxyRules`, it is single-flight (one `&mut self`) and, after a failed
//! apply, re-reads what the kernel really holds before the next attempt (`need_full_sync`).
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tracing::{debug, info_span};

use crate::{
    datapath::{
        diff::{MapOp, diff},
        maps::{LbMaps, MapsError, check_capacity},
        state::{LayoutOptions, MapState, Reserved, layout_reserving},
    },
    model::DesiredState,
};

/// What one sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub written: usize,
    pub removed: usize,
    pub frontends: usize,
    pub backends: usize,
}

pub struct Syncer<M: LbMaps> {
    maps: M,
    /// What the maps hold, as far as this agent knows.
    programmed: MapState,
    /// The last apply failed part-way: read the maps back before diffing again.
    need_full_sync: bool,
    /// Group and backend ids freed by recent syncs, with when; not reused until `QUARANTINE` has
    /// passed, so a program that read a frontend just before a change never finds another
    /// Service's slots or backend under the id it read.
    freed: Vec<(Instant, Freed)>,
    /// How slots are filled (`--lb-algorithm`, `--maglev-table-size`).
    options: LayoutOptions,
}

/// How long a freed id stays unused (far longer than any program run).
const QUARANTINE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Freed {
    Group(u32),
    Backend(u32),
}

impl<M: LbMaps> Syncer<M> {
    /// Adopts whatever is already programmed (pinned maps of an earlier agent): nothing is flushed.
    /// Default layout options (random backend choice).
    #[cfg_attr(not(test), allow(dead_code, reason = "`run` passes its options to `with_options`"))]
    pub fn new(maps: M) -> Result<Self, MapsError> {
        Self::with_options(maps, LayoutOptions::default())
    }

    /// As `new`, laying slots out with `options`. Programmed slots of another layout (an agent
    /// restarted with another `--lb-algorithm`) are rewritten by the first sync, make before break.
    pub fn with_options(maps: M, options: LayoutOptions) -> Result<Self, MapsError> {
        let programmed = maps.read()?;
        Ok(Self { maps, programmed, need_full_sync: false, freed: Vec::new(), options })
    }

    pub fn programmed(&self) -> &MapState {
        &self.programmed
    }

    /// The maps, for writes outside the service state (the agent's own record).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Makes the maps equal to `desired`. On error nothing visible is half-built (see `diff`) and
    /// the next call starts from a fresh read of the maps.
    pub fn sync(&mut self, desired: &DesiredState) -> Result<SyncReport, MapsError> {
        let _span = info_span!("sync", groups = desired.groups.len()).entered();
        if self.need_full_sync {
            self.programmed = self.maps.read()?;
            self.need_full_sync = false;
        }
        let now = Instant::now();
        self.freed.retain(|(at, _)| now.duration_since(*at) < QUARANTINE);
        let mut reserved = Reserved::default();
        for (_, id) in &self.freed {
            match id {
                Freed::Group(g) => reserved.groups.insert(*g),
                Freed::Backend(b) => reserved.backends.insert(*b),
            };
        }
        let target = layout_reserving(desired, &self.programmed, &reserved, &self.options);
        check_capacity(&target, self.maps.capacity(), &self.options)?;
        let ops = diff(&self.programmed, &target);
        let mut report = SyncReport {
            frontends: target.frontends.len(),
            backends: target.backends.len(),
            ..Default::default()
        };
        for op in &ops {
            debug!(%op, "map write");
            if let Err(e) = self.maps.apply(op) {
                self.need_full_sync = true;
                return Err(e);
            }
            match op {
                MapOp::PutBackend(..)
                | MapOp::PutSlot(..)
                | MapOp::PutSourceRange(..)
                | MapOp::PutService(..)
                | MapOp::PutFrontend(..) => report.written += 1,
                _ => report.removed += 1,
            }
        }
        // Ids in use before this sync and not after it: quarantined (see `QUARANTINE`).
        // (A group's source ranges and counters count too: a stale frontend copy may still use
        // them.)
        let groups = |s: &MapState| -> BTreeSet<u32> {
            let ranges = s.source_ranges.iter().map(|r| r.group);
            s.slots.keys().map(|k| k.group).chain(ranges).chain(s.services.keys().copied()).collect()
        };
        let (groups_before, groups_after) = (groups(&self.programmed), groups(&target));
        self.freed.extend(groups_before.difference(&groups_after).map(|g| (now, Freed::Group(*g))));
        let backends_freed = self.programmed.backends.keys().filter(|b| !target.backends.contains_key(b));
        self.freed.extend(backends_freed.map(|b| (now, Freed::Backend(*b))));
        self.programmed = target;
        Ok(report)
    }
}
