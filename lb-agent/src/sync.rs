//! The sync: desired state → map layout (keeping programmed ids) → ordered diff → map writes.
//! Like kube-proxy's `syncProxyRules`, it is single-flight (one `&mut self`) and, after a failed
//! apply, re-reads what the kernel really holds before the next attempt (`need_full_sync`).
use tracing::{debug, info_span};

use crate::{
    datapath::{
        diff::{MapOp, diff},
        maps::{LbMaps, MapsError, check_capacity},
        state::{MapState, layout},
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
}

impl<M: LbMaps> Syncer<M> {
    /// Adopts whatever is already programmed (pinned maps of an earlier agent): nothing is flushed.
    pub fn new(maps: M) -> Result<Self, MapsError> {
        let programmed = maps.read()?;
        Ok(Self { maps, programmed, need_full_sync: false })
    }

    pub fn programmed(&self) -> &MapState {
        &self.programmed
    }

    /// Makes the maps equal to `desired`. On error nothing visible is half-built (see `diff`) and
    /// the next call starts from a fresh read of the maps.
    pub fn sync(&mut self, desired: &DesiredState) -> Result<SyncReport, MapsError> {
        let _span = info_span!("sync", groups = desired.groups.len()).entered();
        if self.need_full_sync {
            self.programmed = self.maps.read()?;
            self.need_full_sync = false;
        }
        let target = layout(desired, &self.programmed);
        check_capacity(&target, self.maps.capacity())?;
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
                MapOp::PutBackend(..) | MapOp::PutSlot(..) | MapOp::PutFrontend(..) => report.written += 1,
                _ => report.removed += 1,
            }
        }
        self.programmed = target;
        Ok(report)
    }
}
