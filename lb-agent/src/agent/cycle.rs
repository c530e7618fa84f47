//! One sync of the running agent: source snapshot → translate → layout → diff → ordered map
//! writes, then the connected UDP sockets the sync left without their backend.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    time::Instant,
};

use tracing::{error, info, warn};

use super::{
    record::Outcome,
    source::{NodeIdentity, Source},
};
use crate::{
    kernel::{
        maps::{MapsError, PinnedMaps},
        sock_destroy, udp_sockets,
    },
    layout::state::MapState,
    metrics::{ErrorKind, Metrics, SyncResult},
    model::{DesiredState, translate},
    sync::Syncer,
};

/// frontend no longer offers are destroyed, so their applications reconnect to a live one
/// (`kernel::udp_sockets`). Failures are logged and counted; the sync stands.
fn close_stale_udp(
    bpffs: &Path,
    before: &BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
    after: &MapState,
    metrics: &Metrics,
) {
    let after = udp_sockets::udp_targets(after);
    if before.iter().all(|(f, b)| after.get(f).is_some_and(|a| b.is_subset(a))) {
        return; // no UDP frontend lost a backend
    }
    let (translated, untracked) = match udp_sockets::translated(bpffs) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "cannot read the socket cookie maps; connected UDP sockets are left alone");
            metrics.record_errors(ErrorKind::MapRead, 1);
            return;
        }
    };
    if untracked {
        warn!(
            "the socket cookie maps are full: connected UDP sockets to removed backends are found by address"
        );
        metrics.record_errors(ErrorKind::UdpSocketsUntracked, 1);
    }
    let targets = udp_sockets::plan(&translated, before, &after, untracked);
    match sock_destroy::destroy_connected_udp(&targets) {
        Ok(0) => {}
        Ok(n) => {
            info!(sockets = n, "destroyed connected UDP sockets to backends their Service no longer offers");
            metrics.record_udp_sockets_destroyed(n as u64);
        }
        Err(e) => {
            warn!(error = %e, "cannot destroy connected UDP sockets to removed backends");
            metrics.record_errors(ErrorKind::SockDestroy, 1);
        }
    }
}

/// One sync: source snapshot → translate → diff → ordered map writes. The desired state comes
/// back when it was applied.
pub fn sync_once(
    source: &Source,
    identity: &NodeIdentity,
    syncer: &mut Syncer<PinnedMaps>,
    metrics: &Metrics,
    bpffs: &Path,
) -> (Outcome, Option<DesiredState>) {
    let started = Instant::now();
    let (objects, mut problems) = match source.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            error!(error = %e, "source is invalid; keeping what is programmed");
            metrics.record_errors(ErrorKind::SourceInvalid, 1);
            metrics.record_sync(SyncResult::SourceInvalid, started.elapsed());
            return (Outcome::SourceInvalid, None);
        }
    };
    let loaded = Instant::now();
    let node = identity.context(&objects);
    let (desired, more) = translate(&objects, &node);
    let translated = Instant::now();
    problems.extend(more);
    for p in &problems {
        warn!(object = %p.object, reason = %p.reason, "skipped");
    }
    metrics.record_errors(ErrorKind::ObjectSkipped, problems.len() as u64);
    let seen = objects.services.len() + objects.slices.len() + objects.nodes.len();
    let udp_before = udp_sockets::udp_targets(syncer.programmed());
    match syncer.sync_objects(&desired, Some(seen)) {
        Ok(report) => {
            close_stale_udp(bpffs, &udp_before, syncer.programmed(), metrics);
            metrics.record_sync(SyncResult::Applied, started.elapsed());
            metrics.record_programmed(syncer.programmed(), syncer.capacity());
            info!(
                services = objects.services.len(),
                slices = objects.slices.len(),
                frontends = report.frontends,
                backends = report.backends,
                written = report.written,
                removed = report.removed,
                skipped = problems.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                source_us = (loaded - started).as_micros() as u64,
                translate_us = (translated - loaded).as_micros() as u64,
                layout_us = syncer.times().layout.as_micros() as u64,
                diff_us = syncer.times().diff.as_micros() as u64,
                write_us = syncer.times().writes.as_micros() as u64,
                "sync applied"
            );
            (Outcome::Applied, Some(desired))
        }
        Err(e) => {
            error!(error = %e, "sync failed; nothing half-applied is visible, will retry");
            metrics.record_errors(ErrorKind::of(&e), 1);
            metrics.record_sync(SyncResult::MapsFailed, started.elapsed());
            let full = matches!(e, MapsError::Full { .. } | MapsError::MaglevFull { .. });
            (if full { Outcome::MapsFull } else { Outcome::MapsFailed }, None)
        }
    }
}
