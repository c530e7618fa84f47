//! The agent's side of the conntrack gate (`lb_common::ct_gate`): the programs open a
//! destination's slot before they store an original-direction conntrack entry to it, but entries
//! made by another agent's programs (an earlier run, an older version that had no gate, an
//! upgrade's copy) may have no open slot. So the gate is closed for business (`READY` 0: every
//! packet looks conntrack up) from before this agent's programs attach until, once they are the
//! only writers, the slot of every entry in the map is open.
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

/// Makes every packet look conntrack up (before this agent's programs attach).
pub fn close(bpffs: &Path) -> anyhow::Result<()> {
    open(bpffs)?.set(ct_gate::READY, 0, 0).context("closing the conntrack gate")
}

/// Opens the slot of every original-direction entry in `LB_CONNTRACK`, then lets packets to
/// other destinations skip the lookup. Call once this agent's programs are the only writers.
/// Returns the entries seen. On an error the gate stays closed (every packet looks up).
pub fn fill(bpffs: &Path) -> anyhow::Result<usize> {
    let mut gate = open(bpffs)?;
    let ct = crate::readback::conntrack::open(bpffs).context("opening the conntrack map")?;
    // Keys deleted while we list them can make the listing start over: bounded (the map holds
    // at most a few million entries).
    let limit = 1 << 26;
    let mut seen = 0;
    for key in ct.keys() {
        let Ok(key) = key else { continue };
        seen += 1;
        if seen > limit {
            anyhow::bail!("listing the conntrack map did not end after {limit} keys");
        }
        if key.dir == ct_dir::ORIGINAL {
            gate.set(ct_gate::slot(&key.dst, key.dport, key.proto), 1, 0).context("opening a gate slot")?;
        }
    }
    gate.set(ct_gate::READY, 1, 0).context("marking the conntrack gate ready")?;
    Ok(seen)
}

/// `fill`, logged; a failure leaves the gate closed (slower, never wrong).
pub fn fill_logged(bpffs: &Path) {
    match fill(bpffs) {
        Ok(entries) => info!(entries, "conntrack gate ready"),
        Err(e) => warn!(error = %e, "conntrack gate left closed: every packet looks conntrack up"),
    }
}
