//! The agent's side of the conntrack gate (`lb_common::ct_gate`): the agent opens a frontend's
//! slot before it writes the frontend (`kernel::maps::PinnedMaps`), the programs open a
//! destination's slot before they store an original-direction conntrack entry to it. But
//! frontends and entries another agent wrote (an earlier run, an older version that had no gate,
//! an upgrade's copy) may have no open slot. So the gate is closed for business (`READY` 0: every
//! packet looks its destination up) from before this agent's programs attach until, once they are
//! the only writers, the slot of every frontend and every entry in the maps is open.
use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData};
use lb_common::{ct_dir, ct_gate, map_names};
use tracing::{info, warn};

fn open(bpffs: &Path) -> anyhow::Result<Array<MapData, u8>> {
    let path = bpffs.join(map_names::CT_GATE);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Array::try_from(Map::Array(data)).context("LB_CT_GATE is not an array")
}

/// The gate's map, or `None` for a datapath from before it (read-only tools still read those).
pub fn open_if_pinned(bpffs: &Path) -> anyhow::Result<Option<Array<MapData, u8>>> {
    if bpffs.join(map_names::CT_GATE).exists() { open(bpffs).map(Some) } else { Ok(None) }
}

/// Makes every packet be looked up (before this agent writes or attaches anything).
pub fn close(bpffs: &Path) -> anyhow::Result<()> {
    open(bpffs)?.set(ct_gate::READY, 0, 0).context("closing the conntrack gate")
}

/// Opens the slot of every original-direction entry in `LB_CONNTRACK` and of every frontend, then
/// lets packets to other destinations skip the lookups. Call once this agent's programs are the only writers.
/// Returns the entries seen. On an error the gate stays closed (every packet looks up).
pub fn fill(bpffs: &Path) -> anyhow::Result<usize> {
    let mut gate = open(bpffs)?;
    let ct = crate::readback::conntrack::open(bpffs).context("opening the conntrack map")?;
    // Keys deleted while we list them can make the listing start over: bounded (the map holds
    // at most a few million entries).
    let limit = 1 << 26;
    let mut seen = 0;
    for key in ct.keys() {
        // A listing error ends the listing (aya's `MapKeys` yields nothing after it): the gate
        // must then stay closed, or an entry not yet seen would have its slot shut.
        let key = key.context("listing the conntrack map")?;
        seen += 1;
        if seen > limit {
            anyhow::bail!("listing the conntrack map did not end after {limit} keys");
        }
        if key.dir == ct_dir::ORIGINAL {
            gate.set(ct_gate::slot(&key.dst, key.dport, key.proto), 1, 0).context("opening a gate slot")?;
        }
    }
    // Every frontend's slot too (the maps of an earlier agent, adopted: this agent opens the slot
    // of each frontend it writes, before writing it).
    let maps = crate::kernel::maps::PinnedMaps::open(bpffs).context("opening the service maps")?;
    for key in maps.frontend_keys().context("listing the frontends")? {
        gate.set(key.gate_slot(), 1, 0).context("opening a frontend's gate slot")?;
    }
    gate.set(ct_gate::READY, 1, 0).context("marking the conntrack gate ready")?;
    Ok(seen)
}

/// `fill`, logged; a failure leaves the gate closed (slower, never wrong).
pub fn fill_logged(bpffs: &Path) {
    match fill(bpffs) {
        Ok(entries) => info!(entries, "conntrack gate ready"),
        Err(e) => warn!(error = %e, "conntrack gate left closed: every packet is looked up"),
    }
}
