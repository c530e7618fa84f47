//! One sync of the running agent: the source's changes → translate → layout → diff → ordered
//! map writes, then the connected UDP sockets the sync left without their backend.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    time::{Instant, SystemTime},
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
    model::DesiredState,
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

/// One sync: the Service keys that changed in the source → their translation → layout → diff →
/// ordered map writes (a full sync of every Service the first time, after a failure, or when
/// the node's addresses changed). The groups the health-check servers need come back when it
/// applied.
pub fn sync_once(
    source: &mut Source,
    identity: &NodeIdentity,
    syncer: &mut Syncer<PinnedMaps>,
    metrics: &Metrics,
    bpffs: &Path,
) -> (Outcome, Option<DesiredState>) {
    let started = Instant::now();
    let changes = match source.changes() {
        Ok(changes) => changes,
        Err(e) => {
            error!(error = %e, "source is invalid; keeping what is programmed");
            metrics.record_errors(ErrorKind::SourceInvalid, 1);
            metrics.record_sync(SyncResult::SourceInvalid, started.elapsed());
            return (Outcome::SourceInvalid, None);
        }
    };
    let loaded = Instant::now();
    let node = identity.context(&source.nodes());
    let dirty = changes.dirty.len();
    // A full sync compares every UDP frontend's backends before and after; an incremental one
    // only those of the groups it laid out again.
    let udp_before =
        (!syncer.incremental_ready(&node)).then(|| udp_sockets::udp_targets(syncer.programmed()));
    let result = syncer.sync_changes(changes.dirty, &node, &|key| source.objects(key), &|| source.keys());
    let problems = changes.problems.len() + syncer.problems().len();
    for p in changes.problems.iter().chain(syncer.problems()) {
        warn!(object = %p.object, reason = %p.reason, "skipped");
    }
    metrics.record_errors(ErrorKind::ObjectSkipped, problems as u64);
    let (services, slices) = source.counts();
    metrics.record_changes(source.change_counts());
    match result {
        Ok(report) => {
            let (internal, external) = syncer.no_local_endpoints();
            metrics.record_applied(internal, external);
            match (syncer.last_parts(), udp_before) {
                (Some(parts), _) if !report.full => {
                    close_stale_udp(bpffs, &udp_sockets::udp_targets(&parts.before), &parts.after, metrics);
                }
                (_, Some(before)) => close_stale_udp(bpffs, &before, syncer.programmed(), metrics),
                _ => {}
            }
            metrics.record_sync(SyncResult::Applied, started.elapsed());
            let now = SystemTime::now();
            for t in &changes.triggers {
                metrics.record_network_programming(now.duration_since(*t).unwrap_or_default());
            }
            metrics.record_programmed(syncer.programmed(), syncer.capacity());
            let times = syncer.times();
            info!(
                services,
                slices,
                full = report.full,
                dirty,
                translated = report.translated,
                relaid = report.relaid,
                frontends = report.frontends,
                backends = report.backends,
                written = report.written,
                removed = report.removed,
                skipped = problems,
                elapsed_us = started.elapsed().as_micros() as u64,
                source_us = (loaded - started).as_micros() as u64,
                translate_us = times.translate.as_micros() as u64,
                layout_us = times.layout.as_micros() as u64,
                diff_us = times.diff.as_micros() as u64,
                write_us = times.writes.as_micros() as u64,
                "sync applied"
            );
            (Outcome::Applied, syncer.health_state())
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
