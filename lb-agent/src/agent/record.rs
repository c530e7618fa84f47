//! The agent's record in the pinned `LB_AGENT` map (what `lb-agent status` shows), and the
//! outcome of one sync it records.
use std::time::Duration;

use lb_common::{AgentStatus, SCHEMA_VERSION, source_state, sync_result};
use tracing::warn;

use crate::kernel::maps::PinnedMaps;

/// Result of one attempt to bring the maps in line with the source.
pub enum Outcome {
    Applied,
    /// The source cannot be read; wait for it to change.
    SourceInvalid,
    /// The maps refused a write; retry later.
    MapsFailed,
    /// The desired state does not fit the maps: nothing was written (retried all the same, in
    /// case the source shrank).
    MapsFull,
}

/// The agent's record in the pinned `LB_AGENT` map, rewritten after every sync so
/// `lb-agent status` can tell how the node is doing, while the agent is down too.
pub struct Record(pub AgentStatus);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Record {
    pub fn new() -> Self {
        Self(AgentStatus {
            schema: SCHEMA_VERSION,
            pid: std::process::id(),
            started_ms: unix_ms(),
            last_sync_ms: 0,
            last_applied_ms: 0,
            last_sync_us: 0,
            syncs: 0,
            failed_syncs: 0,
            last_result: sync_result::NONE,
            source: source_state::UNKNOWN,
            ready: 0,
            pad: [0; 5],
        })
    }

    /// Records a sync that took `elapsed` and writes the record (a failed write is logged:
    /// the record is for operators, the datapath does not need it).
    pub fn sync(&mut self, maps: &mut PinnedMaps, outcome: &Outcome, elapsed: Duration, source: u8) {
        let now = unix_ms();
        let r = &mut self.0;
        r.last_sync_ms = now;
        r.last_sync_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        r.syncs += 1;
        r.source = source;
        r.last_result = match outcome {
            Outcome::Applied => {
                r.last_applied_ms = now;
                sync_result::APPLIED
            }
            Outcome::SourceInvalid => sync_result::SOURCE_INVALID,
            Outcome::MapsFailed => sync_result::MAPS_FAILED,
            Outcome::MapsFull => sync_result::MAPS_FULL,
        };
        if !matches!(outcome, Outcome::Applied) {
            r.failed_syncs += 1;
        }
        self.write(maps);
    }

    pub fn write(&self, maps: &mut PinnedMaps) {
        if let Err(e) = maps.set_agent_status(&self.0) {
            warn!(error = %e, "cannot write the agent record for `lb-agent status`");
        }
    }
}
