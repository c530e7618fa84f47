//! The metrics read from the kernel at scrape time: `lb_datapath_events_total` (`LB_STATS`),
//! `lb_service_connections_total` (`LB_SERVICE_STATS` joined with the names in `LB_SERVICES`),
//! and `lb_map_entries` / `lb_map_capacity` (the service maps from what the last sync
//! programmed, the LRU maps the programs fill by counting their keys).
//!
//! Each scrape opens the pins under `--bpffs` afresh (a few syscalls), so the collector holds no
//! map handle (aya's maps are not `Sync`) and follows a `cleanup` or a reload. Cost per scrape: one
//! lookup per datapath counter, one per backend group (per-CPU values) plus one per group for its
//! name. Counting the LRU maps (`LB_CONNTRACK`, default capacity 524288; `LB_REVNAT_V4`/`_V6`,
//! 262144 each; `LB_AFFINITY`, 65536) costs one `BPF_MAP_GET_NEXT_KEY` per entry: measured on a
//! test VM, 1.2 µs each when idle (0.6 s for a full default conntrack map, 1.3 s for all four) and
//! up to 6 µs under load (nothing deletes their entries, so a busy node's maps fill up and stay
//! full). So a count is reused until ten times the time it took has passed (`LruCounts`): counting
//! takes at most about a tenth of one CPU whatever the scrape rate, and a node with small maps gets
//! a fresh count at every scrape. All of it runs on a blocking thread, never in the sync loop.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock, PoisonError},
    time::Instant,
};

use lb_common::{ServiceName, map_names, service_stats};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        gauge::ConstGauge,
    },
};
use tracing::warn;

use crate::{
    kernel::{
        maps::{MapsError, PinnedMaps},
        pinned::{self, PinnedError},
    },
    layout::names::ServiceLabel,
};

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabel {
    counter: &'static str,
}

/// A label value read from a map, escaped as the text format requires (`\\`, `\"`, `\n`):
/// prometheus-client 0.24 writes label values as they are. Kubernetes names never hold these
/// characters, but the maps hold whatever bytes were written.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelText(pub String);

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

impl PartialEq<&str> for LabelText {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The labels of one per-service counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ServiceCounterLabel {
    pub namespace: LabelText,
    pub service: LabelText,
    /// The Service port's name (empty for an unnamed port).
    pub port: LabelText,
    pub protocol: LabelText,
    /// `IPv4` or `IPv6` (a dual-stack Service port has one backend group per family).
    pub family: &'static str,
    /// `cluster` or `external`.
    pub scope: &'static str,
    /// `socket`, `tc` or `xdp`.
    pub path: &'static str,
    /// `translated`, `no_backend`, `source_denied`, `nat_failed`.
    pub verdict: &'static str,
}

/// What one scrape read from the kernel; a part that could not be read is `None`.
#[derive(Debug, Default)]
pub struct KernelSnapshot {
    pub events: Option<Vec<(&'static str, u64)>>,
    pub connections: Option<BTreeMap<ServiceCounterLabel, u64>>,
    pub lru: Vec<MapFill>,
}

/// Reads the kernel's counters and LRU map fill at every scrape (see the module doc).
#[derive(Debug)]
pub struct KernelCollector {
    /// Set once the maps are loaded and pinned.
    bpffs: OnceLock<PathBuf>,
    /// The service maps, as of the last applied sync.
    programmed: Mutex<Vec<MapFill>>,
    /// `lb_errors_total{kind="map_read"}`: a scrape that could not read a map counts there.
    read_errors: Counter,
    /// The last count of the LRU maps, reused for a while (see the module doc).
    lru: Mutex<LruCounts>,
}

/// The LRU maps' fill as last counted, and when to count again.
#[derive(Debug, Default)]
struct LruCounts {
    fills: Vec<MapFill>,
    next: Option<Instant>,
}

/// A count of the LRU maps is reused for this many times the time it took.
const LRU_RECOUNT_FACTOR: u32 = 10;

impl LruCounts {
    /// The fills, counted anew by `count` when the last count is old enough.
    fn get(&mut self, now: Instant, count: impl FnOnce() -> Vec<MapFill>) -> Vec<MapFill> {
        if self.next.is_none_or(|next| now >= next) {
            self.fills = count();
            let took = now.elapsed();
            self.next = Some(now + took + took * LRU_RECOUNT_FACTOR);
        }
        self.fills.clone()
    }

    #[cfg(test)]
    fn reuse_until(&self) -> Option<Instant> {
        self.next
    }
}

impl KernelCollector {
    pub fn new(read_errors: Counter) -> Self {
        Self {
            bpffs: OnceLock::new(),
            programmed: Mutex::new(Vec::new()),
            read_errors,
            lru: Mutex::new(LruCounts::default()),
        }
    }

    pub fn set_bpffs(&self, bpffs: &Path) {
        let _ = self.bpffs.set(bpffs.to_path_buf());
    }

    pub fn set_programmed(&self, fills: Vec<MapFill>) {
        *self.programmed.lock().unwrap_or_else(PoisonError::into_inner) = fills;
    }

    /// Reads everything from the pins under the `--bpffs` directory, if it is known yet.
    fn read(&self) -> KernelSnapshot {
        let Some(dir) = self.bpffs.get() else { return KernelSnapshot::default() };
        let failed = |what: &str, e: &MapsError| {
            warn!(error = %e, "metrics: cannot read {what}");
            self.read_errors.inc();
        };
        let mut snapshot = KernelSnapshot::default();
        match PinnedMaps::open(dir) {
            Ok(maps) => {
                snapshot.events = maps.stats().map_err(|e| failed("the datapath counters", &e)).ok();
                snapshot.connections =
                    connections(&maps).map_err(|e| failed("the per-service counters", &e)).ok();
            }
            Err(e) => failed("the pinned maps", &e),
        }
        let mut lru = self.lru.lock().unwrap_or_else(PoisonError::into_inner);
        snapshot.lru = lru.get(Instant::now(), || {
            [
                count(dir, map_names::CONNTRACK),
                count(dir, map_names::REVNAT_V4),
                count(dir, map_names::REVNAT_V6),
                count(dir, map_names::AFFINITY),
            ]
            .into_iter()
            .filter_map(|fill| {
                fill.map_err(|e| {
                    warn!(error = %e, "metrics: cannot count an LRU map");
                    self.read_errors.inc();
                })
                .ok()
            })
            .collect()
        });
        snapshot
    }
}

/// The per-service counters, labelled with their Service port; groups without a name (a
/// failed apply's leftovers) are left out, and the (momentary) duplicates of a Service port
/// that moved to another group id are summed. Counters at zero are left out: each group has ten
/// (three paths, four verdicts), most of which never move (a ClusterIP is rarely reached at XDP),
/// and a node of a 10,000-Service cluster would otherwise export 100,000 series of zeros.
fn connections(maps: &PinnedMaps) -> Result<BTreeMap<ServiceCounterLabel, u64>, MapsError> {
    let counters = maps.service_stats()?;
    let names = maps.service_names()?;
    Ok(label_connections(&counters, &names))
}

/// `connections` on values already read (pure, tested).
pub fn label_connections(
    counters: &BTreeMap<u32, [u64; service_stats::COUNT as usize]>,
    names: &BTreeMap<u32, ServiceName>,
) -> BTreeMap<ServiceCounterLabel, u64> {
    let mut out = BTreeMap::new();
    for (group, values) in counters {
        let Some(name) = names.get(group) else { continue };
        let label = ServiceLabel::decode(name);
        let family = if name.family == 6 { "IPv6" } else { "IPv4" };
        for (&(path, verdict), &value) in service_stats::LABELS.iter().zip(values) {
            if value == 0 {
                continue;
            }
            let key = ServiceCounterLabel {
                namespace: LabelText(label.namespace.clone()),
                service: LabelText(label.name.clone()),
                port: LabelText(label.port.clone()),
                protocol: LabelText(label.protocol.clone()),
                family,
                scope: label.scope,
                path,
                verdict,
            };
            *out.entry(key).or_default() += value;
        }
    }
    out
}

/// Counts the keys of the pinned LRU hash map `name` (bounded by its capacity: a key evicted
/// while being walked restarts the kernel's walk, which could otherwise count keys twice).
fn count(dir: &Path, name: &'static str) -> Result<MapFill, PinnedError> {
    let row = pinned::map(dir, name)?;
    Ok(MapFill { map: name, entries: row.entries, capacity: u64::from(row.capacity) })
}

impl KernelCollector {
    /// Encodes the programmed map fill and `snapshot` (split from `Collector::encode` for tests).
    pub fn encode_snapshot(
        &self,
        snapshot: &KernelSnapshot,
        mut encoder: DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut fills = self.programmed.lock().unwrap_or_else(PoisonError::into_inner).clone();
        fills.extend(snapshot.lru.iter().cloned());
        {
            let help = "Entries in each map: the service maps as of the last applied sync, the LRU \
                        maps counted at scrape time";
            let mut metric = encoder.encode_descriptor("map_entries", help, None, MetricType::Gauge)?;
            for f in &fills {
                ConstGauge::new(f.entries).encode(metric.encode_family(&MapLabel { map: f.map })?)?;
            }
        }
        {
            let help = "Capacity of each map (max_entries)";
            let mut metric = encoder.encode_descriptor("map_capacity", help, None, MetricType::Gauge)?;
            for f in &fills {
                ConstGauge::new(f.capacity).encode(metric.encode_family(&MapLabel { map: f.map })?)?;
            }
        }
        if let Some(events) = &snapshot.events {
            let help = "Datapath counters (LB_STATS, summed over CPUs), as `lb-agent inspect stats`";
            let mut metric = encoder.encode_descriptor("datapath_events", help, None, MetricType::Counter)?;
            for &(counter, value) in events {
                ConstCounter::new(value).encode(metric.encode_family(&CounterLabel { counter })?)?;
            }
        }
        if let Some(connections) = &snapshot.connections {
            let help = "Connections (new flows at TC/XDP, connects and sends at the socket hooks) to \
                        each Service port by path and verdict (LB_SERVICE_STATS); reset when the \
                        Service port gets a new group";
            let mut metric =
                encoder.encode_descriptor("service_connections", help, None, MetricType::Counter)?;
            for (labels, value) in connections {
                ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for KernelCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_snapshot(&self.read(), encoder)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn lru_counts_are_reused_for_ten_times_the_time_they_took() {
        let mut counts = LruCounts::default();
        let fill = |entries| vec![MapFill { map: map_names::CONNTRACK, entries, capacity: 8 }];
        let t0 = Instant::now();
        assert_eq!(
            counts.get(t0, || {
                std::thread::sleep(Duration::from_millis(20));
                fill(1)
            }),
            fill(1)
        );
        let until = counts.reuse_until().expect("counted");
        assert!(until >= t0 + Duration::from_millis(220), "{:?}", until - t0);
        // Within that time the count is reused; after it, counted anew.
        assert_eq!(counts.get(until - Duration::from_millis(1), || fill(2)), fill(1));
        assert_eq!(counts.get(until, || fill(3)), fill(3));
    }
}
