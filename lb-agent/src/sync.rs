//! The sync: desired state → map layout (keeping programmed ids) → ordered diff → map writes.
//! Like kube-proxy's `syncProxyRules`, it is single-flight (one `&mut self`) and, after a failed
//! apply, re-reads what the kernel really holds before the next attempt (`need_full_sync`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::{debug, field::Empty, info, info_span};

use crate::{
    kernel::maps::{Capacity, LbMaps, MapsError, Occupancy, check_capacity},
    layout::{
        diff::{MapOp, apply_in_memory, diff, diff_read_back, leftovers},
        incremental::{LayoutIndex, Parts},
        state::{FrontendKey, LayoutOptions, MapState, Placement, Reserved, layout_groups},
    },
    model::{
        BackendGroup, DesiredState, NodeContext, Problem, ServiceKey, ServiceObjects,
        incremental::{Changed, Translator},
        node_addresses,
    },
};

/// What one sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub written: usize,
    pub removed: usize,
    pub frontends: usize,
    pub backends: usize,
    /// Every Service laid out and diffed (not only those a change touched).
    pub full: bool,
    /// Service keys translated again.
    pub translated: usize,
    /// Service keys laid out again.
    pub relaid: usize,
}

/// Where the last sync's time went (logged with "sync applied"; the bench reads it).
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncTimes {
    /// Translating the Services (of a change, or all).
    pub translate: Duration,
    /// Laying the desired state out as map entries (`layout_reserving`) and checking capacity.
    pub layout: Duration,
    /// Ordering the writes (`diff`) and the quarantine bookkeeping.
    pub diff: Duration,
    /// The map writes.
    pub writes: Duration,
}

pub struct Syncer<M: LbMaps> {
    maps: M,
    /// Where the last sync's time went.
    times: SyncTimes,
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
    /// No sync has applied yet: the first one may be the whole cluster (progress says "initial").
    initial: bool,
    /// The backends' epoch must be raised (`raise_epoch`): backends were removed, or a
    /// write may have removed some, since the last raise that succeeded.
    epoch_pending: bool,
    /// The translation and layout of what is programmed, by Service key, after a sync from
    /// Service objects (`sync_all`) applied; `None` after a failure: the next sync is full.
    engine: Option<Engine>,
    /// The problems of the Services the last sync translated or settled.
    problems: Vec<Problem>,
    /// What the last incremental sync replaced and with what (for the UDP socket cleanup).
    parts: Option<Parts>,
}

/// The incremental state: each Service key's translation, and where its groups are laid out.
#[derive(Debug)]
struct Engine {
    translator: Translator,
    layout: LayoutIndex,
}

/// Why an incremental sync handed over to a full one.
enum Fallback {
    /// Not fitting the maps: the full sync refuses it whole, with the map named.
    Full,
    Failed(MapsError),
}

/// How long a freed id stays unused (far longer than any program run).
const QUARANTINE: Duration = Duration::from_secs(5);

/// An apply of more map writes than this logs its progress (the initial sync of a large cluster
/// takes seconds).
const PROGRESS_MIN_OPS: usize = 10_000;
/// A full apply takes its writes from the diff this many at a time.
const APPLY_CHUNK: usize = 4096;
/// How often a long apply logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The clock is read once per this many writes, so progress costs nothing per write.
const PROGRESS_CHECK_OPS: usize = 1024;

/// When a long apply logs "initial sync: 40000 of 110000 map writes".
#[derive(Debug)]
struct Progress {
    total: usize,
    next: Instant,
    /// The clock is read again once this many writes are done.
    next_check: usize,
}

impl Progress {
    /// `None` for an apply too short to report on.
    fn new(total: usize, now: Instant) -> Option<Self> {
        (total > PROGRESS_MIN_OPS).then_some(Self {
            total,
            next: now + PROGRESS_EVERY,
            next_check: PROGRESS_CHECK_OPS,
        })
    }

    /// Whether a line is due after `done` writes (`done` grows by one write or by a batch);
    /// `now` is read only once per `PROGRESS_CHECK_OPS` writes.
    fn due(&mut self, done: usize, now: impl FnOnce() -> Instant) -> bool {
        if done < self.next_check || done >= self.total {
            return false;
        }
        self.next_check = done + PROGRESS_CHECK_OPS;
        let now = now();
        if now < self.next {
            return false;
        }
        self.next = now + PROGRESS_EVERY;
        true
    }
}

#[derive(Clone, Copy, Debug)]
enum Freed {
    Group(u32),
    Backend(u32),
}

/// Raises the backends' epoch (`lb_common::backend_epoch`) after writes that `removed` backends,
/// or when an earlier raise is still due (`pending`: at the start, or after a failure), so
/// tracked flows check their backend again. A failure leaves it pending. (The maps and the flag
/// alone: callers hold the rest of the `Syncer` borrowed.)
fn raise_epoch<M: LbMaps>(maps: &mut M, pending: &mut bool, removed: bool) -> Result<(), MapsError> {
    *pending |= removed;
    if *pending {
        maps.raise_backend_epoch()?;
        *pending = false;
    }
    Ok(())
}

impl<M: LbMaps> Syncer<M> {
    /// The ids freed less than `QUARANTINE` ago (older ones leave the quarantine), which no
    /// layout may hand out again yet.
    fn quarantined(&mut self, now: Instant) -> Reserved {
        self.freed.retain(|(at, _)| now.duration_since(*at) < QUARANTINE);
        let mut reserved = Reserved::default();
        for (_, id) in &self.freed {
            match id {
                Freed::Group(g) => reserved.groups.insert(*g),
                Freed::Backend(b) => reserved.backends.insert(*b),
            };
        }
        reserved
    }

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
        let mut syncer = Self {
            maps,
            times: SyncTimes::default(),
            programmed,
            need_full_sync: false,
            freed: Vec::new(),
            options,
            initial: true,
            // The maps may hold entries an earlier agent checked against a backend it then
            // removed, and it may have stopped before raising the epoch: raised before anything.
            epoch_pending: true,
            engine: None,
            problems: Vec::new(),
            parts: None,
        };
        // A failure is retried after the next apply.
        let _ = raise_epoch(&mut syncer.maps, &mut syncer.epoch_pending, false);
        Ok(syncer)
    }

    /// Where the last sync's time went.
    pub fn times(&self) -> SyncTimes {
        self.times
    }

    pub fn programmed(&self) -> &MapState {
        &self.programmed
    }

    /// The maps, for writes outside the service state (the agent's own record).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Capacity of the service maps (for the metrics).
    pub fn capacity(&self) -> Capacity {
        self.maps.capacity()
    }

    /// Makes the maps equal to `desired`. On error nothing visible is half-built (see `diff`) and
    /// the next call starts from a fresh read of the maps.
    #[cfg_attr(not(test), allow(dead_code, reason = "`run` passes the object count to `sync_objects`"))]
    pub fn sync(&mut self, desired: &DesiredState) -> Result<SyncReport, MapsError> {
        self.sync_objects(desired, None)
    }

    /// As `sync`; `objects` (Services, EndpointSlices and Nodes seen in the source) goes on the
    /// `sync` span with the groups, the writes and removals made (also of a failed apply) and
    /// the time taken, for structured logs and tracing backends.
    pub fn sync_objects(
        &mut self,
        desired: &DesiredState,
        objects: Option<usize>,
    ) -> Result<SyncReport, MapsError> {
        let span = info_span!(
            "sync",
            groups = desired.groups.len(),
            objects = Empty,
            written = Empty,
            removed = Empty,
            elapsed_us = Empty,
        );
        let _entered = span.enter();
        if let Some(objects) = objects {
            span.record("objects", objects);
        }
        let started = Instant::now();
        let mut report = SyncReport { full: true, ..SyncReport::default() };
        self.engine = None;
        self.parts = None;
        let groups: Vec<&BackendGroup> = desired.groups.iter().collect();
        let result = self.apply(&groups, &desired.node_addresses, &mut report).map(drop);
        span.record("written", report.written);
        span.record("removed", report.removed);
        span.record("elapsed_us", u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        if result.is_ok() {
            self.initial = false;
        }
        result.map(|()| report)
    }

    /// The body of `sync`, counting what it writes into `report` as it goes; where each group
    /// went.
    fn apply(
        &mut self,
        groups: &[&BackendGroup],
        node_addresses: &[IpAddr],
        report: &mut SyncReport,
    ) -> Result<Vec<Placement>, MapsError> {
        // What is programmed came from the maps (an earlier agent's, or after a failed apply):
        // it may hold entries no frontend reaches.
        let read_back = self.initial || self.need_full_sync;
        if self.need_full_sync {
            self.programmed = self.maps.read()?;
            self.need_full_sync = false;
        }
        let now = Instant::now();
        let reserved = self.quarantined(now);
        self.times = SyncTimes { translate: self.times.translate, ..SyncTimes::default() };
        let (target, placements) =
            layout_groups(groups, node_addresses, &self.programmed, &reserved, &self.options);
        let laid_out = Instant::now();
        self.times.layout = laid_out - now;
        let first = if read_back { leftovers(&self.programmed, &target) } else { MapState::default() };
        // The writes are made as they are applied, a chunk at a time (never all held at once); a
        // first pass counts them, for the capacity check and the progress lines.
        let (peak, total) = Occupancy::peak(
            &self.programmed,
            frontends_v4(&self.programmed),
            &first,
            diff_read_back(&self.programmed, &target, &first),
        );
        check_capacity(peak, &target, self.maps.capacity(), &self.options)?;
        // The counters of the new groups (all of them at the initial sync) are made on another
        // thread while the backends and slots are written: each is a per-CPU allocation in the
        // kernel, as long as ten other writes. Only groups no programmed frontend names.
        let named: BTreeSet<u32> = self.programmed.frontends.values().map(|f| f.group).collect();
        let new_groups: Vec<u32> = target
            .services
            .keys()
            .filter(|g| !self.programmed.services.contains_key(g) && !named.contains(g))
            .copied()
            .collect();
        self.maps.zero_counters_ahead(new_groups);
        let diffed = Instant::now();
        self.times.diff = diffed - laid_out;
        report.frontends = target.frontends.len();
        report.backends = target.backends.len();
        let mut progress = Progress::new(total, now);
        let what = if self.initial { "initial sync" } else { "sync" };
        let mut done = 0;
        let mut removed_backends = false;
        let mut ops = diff_read_back(&self.programmed, &target, &first);
        let mut chunk: Vec<MapOp> = Vec::with_capacity(total.min(APPLY_CHUNK));
        loop {
            chunk.clear();
            chunk.extend(ops.by_ref().take(APPLY_CHUNK));
            if chunk.is_empty() {
                break;
            }
            let mut at = 0;
            while at < chunk.len() {
                if let Some(p) = &mut progress
                    && p.due(done, Instant::now)
                {
                    info!(done, total = p.total, "{what}: {done} of {} map writes", p.total);
                }
                // Runs of puts into one map go in one command where the maps allow (the full
                // sync of a large cluster), still in the diff's order.
                let applied = match self.maps.apply_prefix(&chunk[at..]) {
                    Ok(n) => n,
                    Err(e) => {
                        self.need_full_sync = true;
                        self.maps.settle_counters();
                        // Some of the run may be written, removals included.
                        let _ = raise_epoch(&mut self.maps, &mut self.epoch_pending, true);
                        return Err(e);
                    }
                };
                for op in &chunk[at..at + applied] {
                    debug!(%op, "map write");
                    removed_backends |= matches!(op, MapOp::DeleteBackend(_));
                    match op {
                        MapOp::PutBackend(..)
                        | MapOp::PutSlot(..)
                        | MapOp::PutSourceRange(..)
                        | MapOp::PutService(..)
                        | MapOp::PutFrontend(..) => report.written += 1,
                        _ => report.removed += 1,
                    }
                }
                at += applied;
                done += applied;
            }
            // A large apply takes a while: flows leave removed backends chunk by chunk, not
            // only at its end.
            if removed_backends {
                // A failure stays pending, retried below.
                let _ = raise_epoch(&mut self.maps, &mut self.epoch_pending, true);
                removed_backends = false;
            }
        }
        drop((ops, chunk));
        self.maps.settle_counters();
        if let Err(e) = raise_epoch(&mut self.maps, &mut self.epoch_pending, false) {
            self.need_full_sync = true;
            return Err(e);
        }
        let written = Instant::now();
        self.times.writes = written - diffed;
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
        self.times.diff += written.elapsed();
        Ok(placements)
    }

    /// Raises the backends' epoch now (after an upgrade's switch: the old programs may have
    /// checked entries against backends the new maps no longer hold).
    pub fn invalidate_backend_checks(&mut self) -> Result<(), MapsError> {
        raise_epoch(&mut self.maps, &mut self.epoch_pending, true)
    }

    /// The problems of the Services the last sync from objects translated or settled again
    /// (every Service after a full one).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// What the last sync replaced and with what, when it was incremental: the entries of the
    /// groups it laid out again (with the backends their slots name) before and after.
    pub fn last_parts(&self) -> Option<&Parts> {
        self.parts.as_ref()
    }

    /// The groups of the Services with a `healthCheckNodePort`, as programmed (sync from
    /// objects only).
    pub fn health_state(&self) -> Option<DesiredState> {
        self.engine.as_ref().map(|e| e.translator.health_state())
    }

    /// The Service ports (groups) whose Local traffic policy finds no local endpoint while others
    /// exist (they drop), as (internal, external): kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total`.
    pub fn no_local_endpoints(&self) -> (usize, usize) {
        self.engine.as_ref().map_or((0, 0), |e| e.translator.no_local_endpoints())
    }

    /// The whole desired state last applied from objects (a copy; for tests and tools).
    pub fn desired(&self) -> Option<DesiredState> {
        self.engine.as_ref().map(|e| e.translator.desired())
    }

    /// Makes the maps equal to the translation of `objects` (every Service key), for `node`, and
    /// keeps what it needs for later incremental syncs.
    pub fn sync_all(
        &mut self,
        objects: &BTreeMap<ServiceKey, ServiceObjects>,
        node: &NodeContext,
    ) -> Result<SyncReport, MapsError> {
        self.sync_keys(objects.keys().cloned().collect(), node, &|key| objects.get(key).cloned())
    }

    /// As `sync_all`, for every key of `keys`, with their objects from `objects` (asked for one
    /// key at a time, so a source needs never hold every object's translation input at once).
    pub fn sync_keys(
        &mut self,
        keys: BTreeSet<ServiceKey>,
        node: &NodeContext,
        objects: &dyn Fn(&ServiceKey) -> Option<ServiceObjects>,
    ) -> Result<SyncReport, MapsError> {
        let started = Instant::now();
        let (translator, update) = Translator::from_keys(keys, node, objects);
        self.times.translate = started.elapsed();
        self.problems = update.problems;
        // The groups stay in the translator: laid out from there, not copied.
        let groups: Vec<&BackendGroup> = translator.all_groups().map(|(_, g)| g).collect();
        let node_addresses = node_addresses(node);
        let span = info_span!(
            "sync",
            groups = groups.len(),
            objects = Empty,
            written = Empty,
            removed = Empty,
            elapsed_us = Empty
        );
        let _entered = span.enter();
        let mut report = SyncReport { full: true, translated: update.translated, ..SyncReport::default() };
        report.relaid = translator.len();
        self.engine = None;
        self.parts = None;
        let result = self.apply(&groups, &node_addresses, &mut report);
        drop(groups);
        span.record("written", report.written);
        span.record("removed", report.removed);
        span.record("elapsed_us", u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        let placements = result?;
        self.initial = false;
        let layout = LayoutIndex::new(translator.all_groups(), placements, &self.programmed, node_addresses);
        self.engine = Some(Engine { translator, layout });
        Ok(report)
    }

    /// Whether `sync_changes` with `node` would be incremental (short of a change that does not
    /// fit the maps): there is incremental state, no failure since, and the node's addresses
    /// are those laid out.
    pub fn incremental_ready(&self, node: &NodeContext) -> bool {
        !self.need_full_sync
            && self.engine.as_ref().is_some_and(|e| e.layout.node_addresses() == node_addresses(node))
    }

    /// Brings the maps up to date with a change to the Service keys `dirty` (their objects now
    /// from `objects`; `None`: gone): only those Services (and the ones sharing a frontend with
    /// them) are translated, laid out and diffed again, and the same ordered writes as a full
    /// sync's are applied. A full sync instead (`all` gives every object) when there is no
    /// incremental state (first sync, or one failed since), when the node's addresses changed,
    /// or when the change does not fit the maps (the full sync refuses it whole). `keys` gives
    /// every Service key of the source, for a full sync.
    pub fn sync_changes(
        &mut self,
        dirty: BTreeSet<ServiceKey>,
        node: &NodeContext,
        objects: &dyn Fn(&ServiceKey) -> Option<ServiceObjects>,
        keys: &dyn Fn() -> BTreeSet<ServiceKey>,
    ) -> Result<SyncReport, MapsError> {
        if !self.incremental_ready(node) {
            return self.sync_keys(keys(), node, objects);
        }
        let Some(engine) = self.engine.take() else { return self.sync_keys(keys(), node, objects) };
        let started = Instant::now();
        let span = info_span!(
            "sync",
            groups = Empty,
            objects = Empty,
            written = Empty,
            removed = Empty,
            elapsed_us = Empty
        );
        let _entered = span.enter();
        let mut report = SyncReport::default();
        match self.apply_changes(engine, dirty, node, objects, &mut report) {
            Ok(()) => {
                span.record("written", report.written);
                span.record("removed", report.removed);
                span.record("elapsed_us", u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                Ok(report)
            }
            Err(Fallback::Full) => self.sync_keys(keys(), node, objects),
            Err(Fallback::Failed(e)) => Err(e),
        }
    }

    /// The body of `sync_changes`; puts the engine back when it applied.
    fn apply_changes(
        &mut self,
        mut engine: Engine,
        dirty: BTreeSet<ServiceKey>,
        node: &NodeContext,
        objects: &dyn Fn(&ServiceKey) -> Option<ServiceObjects>,
        report: &mut SyncReport,
    ) -> Result<(), Fallback> {
        let now = Instant::now();
        let update = engine.translator.update(dirty, node, objects);
        let translated = Instant::now();
        self.times = SyncTimes { translate: translated - now, ..SyncTimes::default() };
        self.problems = update.problems;
        report.translated = update.translated;
        let reserved = self.quarantined(now);
        let changed: Vec<Changed> = update.changed;
        // IPv4 frontends programmed now (the index's count, before it takes the change).
        let programmed_v4 = engine.layout.frontends_v4();
        let parts =
            engine.layout.update(&changed, &engine.translator, &self.programmed, &reserved, &self.options);
        report.relaid = parts.relaid;
        let laid_out = Instant::now();
        self.times.layout = laid_out - translated;
        let ops = diff(&parts.before, &parts.after);
        let (peak, _) =
            Occupancy::peak(&self.programmed, programmed_v4, &MapState::default(), ops.iter().copied());
        if check_capacity(peak, &parts.after, self.maps.capacity(), &self.options).is_err() {
            return Err(Fallback::Full);
        }
        let diffed = Instant::now();
        self.times.diff = diffed - laid_out;
        for op in &ops {
            debug!(%op, "map write");
            if let Err(e) = self.maps.apply(op) {
                self.need_full_sync = true;
                self.parts = None;
                // Earlier writes may have removed backends.
                let _ = raise_epoch(&mut self.maps, &mut self.epoch_pending, true);
                return Err(Fallback::Failed(e));
            }
            apply_in_memory(&mut self.programmed, op);
            match op {
                MapOp::DeleteService(g) => {
                    self.freed.push((now, Freed::Group(*g)));
                    report.removed += 1;
                }
                MapOp::DeleteBackend(b) => {
                    self.freed.push((now, Freed::Backend(*b)));
                    report.removed += 1;
                }
                MapOp::DeleteFrontend(_) | MapOp::DeleteSourceRange(_) | MapOp::DeleteSlot(_) => {
                    report.removed += 1
                }
                _ => report.written += 1,
            }
        }
        let removed_backends = ops.iter().any(|op| matches!(op, MapOp::DeleteBackend(_)));
        if let Err(e) = raise_epoch(&mut self.maps, &mut self.epoch_pending, removed_backends) {
            self.need_full_sync = true;
            self.parts = None;
            return Err(Fallback::Failed(e));
        }
        self.times.writes = diffed.elapsed();
        report.frontends = self.programmed.frontends.len();
        report.backends = self.programmed.backends.len();
        self.parts = Some(parts);
        self.engine = Some(engine);
        self.initial = false;
        Ok(())
    }
}

/// The IPv4 frontends of `state` (they sort before the IPv6 ones).
fn frontends_v4(state: &MapState) -> usize {
    state.frontends.keys().take_while(|k| matches!(k, FrontendKey::V4(_))).count()
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn short_applies_report_nothing() {
        assert!(Progress::new(PROGRESS_MIN_OPS, Instant::now()).is_none());
        assert!(Progress::new(PROGRESS_MIN_OPS + 1, Instant::now()).is_some());
    }

    #[test]
    fn long_applies_report_about_once_a_second_and_read_the_clock_rarely() {
        let t0 = Instant::now();
        let mut p = Progress::new(100_000, t0).expect("long");
        let mut clock_reads = 0;
        let mut due_at = Vec::new();
        // A simulated apply taking 100 µs per write.
        for done in 0..100_000 {
            let at = t0 + Duration::from_micros(100 * done as u64);
            if p.due(done, || {
                clock_reads += 1;
                at
            }) {
                due_at.push(done);
            }
        }
        assert_eq!(
            clock_reads,
            100_000 / PROGRESS_CHECK_OPS,
            "the clock is read once per {PROGRESS_CHECK_OPS} writes"
        );
        // 100,000 writes at 100 µs = 10 s: a line about every second (10,000 writes), none at 0.
        assert!((8..=10).contains(&due_at.len()), "{due_at:?}");
        assert!(due_at.windows(2).all(|w| w[1] - w[0] >= 10_000 - PROGRESS_CHECK_OPS), "{due_at:?}");
        assert!(due_at[0] >= 10_000 - PROGRESS_CHECK_OPS, "{due_at:?}");
    }
}
