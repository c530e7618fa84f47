//! Map writers: the kernel's pinned maps, and an in-memory fake with the same interface for tests.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    util::nr_cpus,
};
use lb_common::{
    AgentStatus, Backend, Frontend4Key, Frontend6Key, FrontendValue, SOURCE_RANGE_GROUP_BITS, ServiceName,
    ServiceStats, SlotKey, SlotValue, SourceRangeKey, backend_epoch, ct_gate, frontend_flags, map_names,
    service_stats, stats,
};
use thiserror::Error;

use crate::layout::{
    diff::MapOp,
    state::{
        FrontendKey, LayoutOptions, LbAlgorithm, MapState, SourceRange, backend_addr, ip4_word, ip6_words,
        word_ip4, words_ip6,
    },
};
use crate::{
    model::Cidr,
    sys::bpf::{RawMap, extend_bytes},
};

#[derive(Debug, Error)]
pub enum MapsError {
    #[error("cannot open pinned map {path}: {source} (is the agent installed with this --bpffs?)")]
    Open { path: PathBuf, source: MapError },
    #[error("cannot read map {name}: {source}")]
    Read { name: &'static str, source: MapError },
    #[error("map write failed ({op}): {source}")]
    Write { op: String, source: MapError },
    #[error("map {name} is full: {needed} entries needed, capacity {capacity}")]
    Full { name: &'static str, needed: usize, capacity: u32 },
    /// The slot map would fit with one slot per backend: the Maglev tables are what overflow it.
    #[error(
        "map {} is full: {needed} entries needed, capacity {capacity}, because {groups} external \
         groups take a Maglev table of {size} slots each: raise --max-slots, lower \
         --maglev-table-size or use --lb-algorithm random",
        map_names::SLOTS
    )]
    MaglevFull { needed: usize, capacity: u32, groups: usize, size: u32 },
}

/// Capacity of each service map, as created in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub frontends: u32,
    pub slots: u32,
    pub backends: u32,
    pub source_ranges: u32,
    /// Backend groups (`LB_SERVICES`, `LB_SERVICE_STATS`).
    pub services: u32,
}

/// What the sync needs from the maps.
pub trait LbMaps {
    /// Reads back what is programmed.
    fn read(&self) -> Result<MapState, MapsError>;
    /// Applies one write; deleting an absent entry is not an error.
    fn apply(&mut self, op: &MapOp) -> Result<(), MapsError>;
    /// Applies the first writes of `ops` (at least one, unless `ops` is empty), in their order,
    /// and says how many: maps that can write many entries in one command take a run of puts
    /// into one map at once. After an error some of the run may be written (a prefix of it).
    fn apply_prefix(&mut self, ops: &[MapOp]) -> Result<usize, MapsError> {
        let Some(first) = ops.first() else { return Ok(0) };
        self.apply(first).map(|()| 1)
    }
    fn capacity(&self) -> Capacity;
    /// Starts making the per-service counters of `groups` (new groups no frontend names yet:
    /// nothing reads their counters) on another thread, while the writes before their names are
    /// applied; the puts of their names then find them made. Called once the apply is known to
    /// fit the maps.
    fn zero_counters_ahead(&mut self, _groups: Vec<u32>) {}
    /// Ends what `zero_counters_ahead` started: waits for it, and removes the counters of groups
    /// whose names were not written (an apply that failed before them).
    fn settle_counters(&mut self) {}
    /// Raises the backends' epoch (`lb_common::backend_epoch`): tracked flows then check that
    /// their backend is still programmed. Called after writes that removed backends.
    fn raise_backend_epoch(&mut self) -> Result<(), MapsError>;
}

/// How many entries each service map holds at the fullest point of an apply: every put into a
/// map comes before its removals (`diff`), so that is what is there plus the keys written anew.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub frontends_v4: usize,
    pub frontends_v6: usize,
    pub slots: usize,
    pub backends: usize,
    pub source_ranges: usize,
    pub services: usize,
}

impl Occupancy {
    /// At the fullest point of applying `ops` (a `diff`, puts of a map before its removals) to
    /// `programmed` (with `programmed_v4` IPv4 frontends: an incremental sync knows it without a
    /// count), once `removed_first` (entries the apply removes before any put) are gone; and how
    /// many writes `ops` holds.
    pub fn peak(
        programmed: &MapState,
        programmed_v4: usize,
        removed_first: &MapState,
        ops: impl IntoIterator<Item = MapOp>,
    ) -> (Self, usize) {
        let now_v4 = programmed_v4;
        let gone_v4 = removed_first.frontends.keys().filter(|k| matches!(k, FrontendKey::V4(_))).count();
        let mut peak = Self {
            frontends_v4: now_v4 - gone_v4,
            frontends_v6: (programmed.frontends.len() - now_v4) - (removed_first.frontends.len() - gone_v4),
            slots: programmed.slots.len() - removed_first.slots.len(),
            backends: programmed.backends.len() - removed_first.backends.len(),
            source_ranges: programmed.source_ranges.len() - removed_first.source_ranges.len(),
            services: programmed.services.len() - removed_first.services.len(),
        };
        let mut writes = 0;
        for op in ops {
            writes += 1;
            let (count, new) = match &op {
                MapOp::PutFrontend(k @ FrontendKey::V4(_), _) => {
                    (&mut peak.frontends_v4, !programmed.frontends.contains_key(k))
                }
                MapOp::PutFrontend(k, _) => (&mut peak.frontends_v6, !programmed.frontends.contains_key(k)),
                MapOp::PutSlot(k, _) => (&mut peak.slots, !programmed.slots.contains_key(k)),
                MapOp::PutBackend(id, _) => (&mut peak.backends, !programmed.backends.contains_key(id)),
                MapOp::PutSourceRange(r) => (&mut peak.source_ranges, !programmed.source_ranges.contains(r)),
                MapOp::PutService(g, _) => (&mut peak.services, !programmed.services.contains_key(g)),
                _ => continue,
            };
            *count += usize::from(new);
        }
        (peak, writes)
    }
}

/// Fails, before anything is written, when an apply of `target` would at any point hold more
/// entries in a map than it can (`peak`, see `Occupancy`; `target` laid out with `options`).
pub fn check_capacity(
    peak: Occupancy,
    target: &MapState,
    cap: Capacity,
    options: &LayoutOptions,
) -> Result<(), MapsError> {
    for (name, needed, capacity) in [
        (map_names::FRONTENDS_V4, peak.frontends_v4, cap.frontends),
        (map_names::FRONTENDS_V6, peak.frontends_v6, cap.frontends),
        (map_names::SLOTS, peak.slots, cap.slots),
        (map_names::BACKENDS, peak.backends, cap.backends),
        (map_names::SOURCE_RANGES, peak.source_ranges, cap.source_ranges),
        (map_names::SERVICES, peak.services, cap.services),
    ] {
        if needed > capacity as usize {
            if name == map_names::SLOTS
                && let Some(e) = maglev_overflow(target, capacity, options)
            {
                return Err(e);
            }
            return Err(MapsError::Full { name, needed, capacity });
        }
    }
    Ok(())
}

/// The slot map of `target` overflows `capacity`: `MaglevFull` if one slot per backend in place
/// of each Maglev table would fit, so the operator is told which knob to turn.
fn maglev_overflow(target: &MapState, capacity: u32, options: &LayoutOptions) -> Option<MapsError> {
    if options.algorithm != LbAlgorithm::Maglev {
        return None;
    }
    // A Maglev group: external frontends with a full table (`LayoutOptions::maglev`).
    let external = frontend_flags::EXTERNAL_IP | frontend_flags::LOAD_BALANCER | frontend_flags::NODE_PORT;
    let groups: BTreeSet<u32> = target
        .frontends
        .values()
        .filter(|v| v.flags & external != 0 && v.count == options.maglev_size)
        .map(|v| v.group)
        .collect();
    let mut backends: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for (k, v) in target.slots.iter().filter(|(k, _)| groups.contains(&k.group)) {
        backends.entry(k.group).or_default().insert(v.backend);
    }
    let tables = groups.len() * options.maglev_size as usize;
    let plain = target.slots.len() - tables + backends.values().map(BTreeSet::len).sum::<usize>();
    (!groups.is_empty() && plain <= capacity as usize).then_some(MapsError::MaglevFull {
        needed: target.slots.len(),
        capacity,
        groups: groups.len(),
        size: options.maglev_size,
    })
}

/// The agent's maps, opened from their pins under `--bpffs`.
pub struct PinnedMaps {
    frontends4: HashMap<MapData, Frontend4Key, FrontendValue>,
    frontends6: HashMap<MapData, Frontend6Key, FrontendValue>,
    slots: HashMap<MapData, SlotKey, SlotValue>,
    backends: HashMap<MapData, u32, Backend>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    stats: PerCpuArray<MapData, u64>,
    services: HashMap<MapData, u32, ServiceName>,
    service_stats: PerCpuHashMap<MapData, u32, ServiceStats>,
    agent: Array<MapData, AgentStatus>,
    /// `LB_LOG`: the group the programs log; cleared when that group goes (its id may be handed
    /// to another Service later).
    log: Array<MapData, u32>,
    /// `LB_CT_GATE`: a frontend's slot is opened before the frontend is written (the programs
    /// take a packet whose slot is shut for no frontend's). `None`: programs from before the gate.
    gate: Option<Array<MapData, u8>>,
    /// `LB_BACKEND_EPOCH`. `None`: programs from before it (which check every tracked packet).
    epoch: Option<Array<MapData, u32>>,
    /// The slots this agent opened, a bit each (nothing shuts one).
    opened: Vec<u64>,
    capacity: Capacity,
    /// The same maps as raw descriptors, for batched writes; `None` once the kernel refused a
    /// batch (then every write goes one by one).
    batch: Option<BatchMaps>,
    /// Another descriptor of `LB_SERVICE_STATS`, for `zero_counters_ahead`'s thread (which
    /// holds it meanwhile).
    stats_ahead: Option<RawMap>,
    /// The thread zeroing counters ahead, with the groups it was given.
    ahead: Option<(ZeroingAhead, Vec<u32>)>,
    /// Groups whose counters were zeroed ahead and whose names are not written yet.
    zeroed: BTreeSet<u32>,
}

/// A thread zeroing counters (`zero_counters`): it gives back its map and how many it zeroed.
type ZeroingAhead = std::thread::JoinHandle<(RawMap, usize)>;

/// The value of every `LB_SOURCE_RANGES` entry (only a match matters).
const SOURCE_RANGE_MARK: u8 = 1;

/// The trie key of a source range: the group's bits, then the prefix's.
fn source_range_key(r: &SourceRange) -> LpmKey<SourceRangeKey> {
    let addr = match r.cidr.addr {
        IpAddr::V4(a) => [ip4_word(a), 0, 0, 0],
        IpAddr::V6(a) => ip6_words(a),
    };
    LpmKey::new(SOURCE_RANGE_GROUP_BITS + u32::from(r.cidr.prefix), SourceRangeKey { group: r.group, addr })
}

/// A trie key read back. The key does not say its family: a group's frontends do (`v6_groups`);
/// a range whose group has no frontend (left by a failed apply) is taken as IPv4 when it fits,
/// which names the same key either way.
fn source_range_of(key: &LpmKey<SourceRangeKey>, v6_groups: &BTreeSet<u32>) -> SourceRange {
    let (data, bits) = (key.data(), key.prefix_len().saturating_sub(SOURCE_RANGE_GROUP_BITS));
    let v4 = !v6_groups.contains(&data.group) && bits <= 32 && data.addr[1..] == [0, 0, 0];
    let (addr, max) =
        if v4 { (IpAddr::V4(word_ip4(data.addr[0])), 32) } else { (IpAddr::V6(words_ip6(data.addr)), 128) };
    let prefix = u8::try_from(bits.min(max)).unwrap_or(0);
    SourceRange { group: data.group, cidr: Cidr { addr, prefix } }
}

fn open(path_of: &dyn Fn(&'static str) -> PathBuf, name: &'static str) -> Result<(Map, u32), MapsError> {
    let path = path_of(name);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open { path: path.clone(), source })?;
    let max = data.info().map_err(|source| MapsError::Open { path: path.clone(), source })?.max_entries();
    let map = Map::from_map_data(data).map_err(|source| MapsError::Open { path, source })?;
    Ok((map, max))
}

impl PinnedMaps {
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        Self::open_with(&|name| dir.join(name))
    }

    /// Opens each map from the pin `path_of(name)` (during an upgrade some maps are new and
    /// pinned elsewhere until the switch: `kernel::migrate`).
    pub fn open_with(path_of: &dyn Fn(&'static str) -> PathBuf) -> Result<Self, MapsError> {
        let dir = path_of;
        let conv = |name: &'static str| move |source| MapsError::Open { path: path_of(name), source };
        let (m, frontends) = open(dir, map_names::FRONTENDS_V4)?;
        let frontends4 = HashMap::try_from(m).map_err(conv(map_names::FRONTENDS_V4))?;
        let (m, _) = open(dir, map_names::FRONTENDS_V6)?;
        let frontends6 = HashMap::try_from(m).map_err(conv(map_names::FRONTENDS_V6))?;
        let (m, slots_cap) = open(dir, map_names::SLOTS)?;
        let slots = HashMap::try_from(m).map_err(conv(map_names::SLOTS))?;
        let (m, backends_cap) = open(dir, map_names::BACKENDS)?;
        let backends = HashMap::try_from(m).map_err(conv(map_names::BACKENDS))?;
        let (m, source_ranges_cap) = open(dir, map_names::SOURCE_RANGES)?;
        let source_ranges = LpmTrie::try_from(m).map_err(conv(map_names::SOURCE_RANGES))?;
        let (m, _) = open(dir, map_names::STATS)?;
        let stats = PerCpuArray::try_from(m).map_err(conv(map_names::STATS))?;
        let (m, services_cap) = open(dir, map_names::SERVICES)?;
        let services = HashMap::try_from(m).map_err(conv(map_names::SERVICES))?;
        let (m, _) = open(dir, map_names::SERVICE_STATS)?;
        let service_stats = PerCpuHashMap::try_from(m).map_err(conv(map_names::SERVICE_STATS))?;
        let (m, _) = open(dir, map_names::AGENT)?;
        let agent = Array::try_from(m).map_err(conv(map_names::AGENT))?;
        let (m, _) = open(dir, map_names::LOG)?;
        let log = Array::try_from(m).map_err(conv(map_names::LOG))?;
        // A datapath from before the gate has none (the operator tools still read its maps); the
        // agent makes sure of it before any write (`kernel::ct_gate::close`).
        let gate = if path_of(map_names::CT_GATE).exists() {
            let (m, _) = open(dir, map_names::CT_GATE)?;
            Some(Array::try_from(m).map_err(conv(map_names::CT_GATE))?)
        } else {
            None
        };
        let epoch = if path_of(map_names::BACKEND_EPOCH).exists() {
            let (m, _) = open(dir, map_names::BACKEND_EPOCH)?;
            Some(Array::try_from(m).map_err(conv(map_names::BACKEND_EPOCH))?)
        } else {
            None
        };
        Ok(Self {
            frontends4,
            frontends6,
            slots,
            backends,
            source_ranges,
            stats,
            services,
            service_stats,
            agent,
            log,
            gate,
            epoch,
            opened: vec![0; ct_gate::SLOTS as usize / 64],
            capacity: Capacity {
                frontends,
                slots: slots_cap,
                backends: backends_cap,
                source_ranges: source_ranges_cap,
                services: services_cap,
            },
            batch: Some(BatchMaps::open(path_of)?),
            stats_ahead: RawMap::open(&path_of(map_names::SERVICE_STATS)).ok(),
            ahead: None,
            zeroed: BTreeSet::new(),
        })
    }

    /// The backends in the socket path's slots of one frontend, as the kernel walks them
    /// (frontend → slots `1..=count` → backend), without reading the whole maps: `None` when
    /// `key` is not a frontend. For watching one Service change reach the kernel.
    pub fn frontend_backends(&self, key: &FrontendKey) -> Result<Option<Vec<SocketAddr>>, MapsError> {
        let found = match key {
            FrontendKey::V4(k) => self.frontends4.get(k, 0),
            FrontendKey::V6(k) => self.frontends6.get(k, 0),
        };
        let frontend = match found {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => return Err(MapsError::Read { name: map_names::FRONTENDS_V4, source }),
        };
        let mut out = Vec::new();
        for slot in 1..=frontend.count {
            let backend = self
                .slots
                .get(&SlotKey { group: frontend.group, slot }, 0)
                .and_then(|s| self.backends.get(&s.backend, 0));
            match backend {
                Ok(b) => out.push(backend_addr(&b)),
                // Rewritten under us: the caller asks again.
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(MapsError::Read { name: map_names::SLOTS, source }),
            }
        }
        Ok(Some(out))
    }

    /// The datapath counters, summed over CPUs, by `lb_common::stats` index.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        // A map pinned by an older agent may have fewer counters: read those it has (the newer
        // ones stay uncounted until `lb-agent cleanup` lets the map be made anew).
        let pinned = self.stats.len().min(stats::COUNT);
        (0..pinned)
            .map(|i| {
                let values = self
                    .stats
                    .get(&i, 0)
                    .map_err(|source| MapsError::Read { name: map_names::STATS, source })?;
                Ok((stats::NAMES[i as usize], values.iter().sum()))
            })
            .collect()
    }

    /// The per-service counters, summed over CPUs, by backend group id.
    pub fn service_stats(&self) -> Result<BTreeMap<u32, [u64; service_stats::COUNT as usize]>, MapsError> {
        let read = |source| MapsError::Read { name: map_names::SERVICE_STATS, source };
        let mut out = BTreeMap::new();
        for entry in self.service_stats.iter() {
            let (group, values) = entry.map_err(read)?;
            let mut sum = [0u64; service_stats::COUNT as usize];
            for cpu in values.iter() {
                for (total, v) in sum.iter_mut().zip(cpu.counters) {
                    *total += v;
                }
            }
            out.insert(group, sum);
        }
        Ok(out)
    }

    /// The Service port of every backend group in `LB_SERVICES` (one lookup per group, for the
    /// metrics; `read` reads every map).
    pub fn service_names(&self) -> Result<BTreeMap<u32, ServiceName>, MapsError> {
        Ok(read_all(map_names::SERVICES, &self.services)?.into_iter().collect())
    }

    /// What the agent last recorded about itself (all zero before any agent wrote it).
    pub fn agent_status(&self) -> Result<AgentStatus, MapsError> {
        self.agent.get(&0, 0).map_err(|source| MapsError::Read { name: map_names::AGENT, source })
    }

    pub fn set_agent_status(&mut self, status: &AgentStatus) -> Result<(), MapsError> {
        self.agent
            .set(0, status, 0)
            .map_err(|source| MapsError::Write { op: "agent status".to_owned(), source })
    }
}

/// The number of possible CPUs, read once (`nr_cpus` reads a sysfs file each time, which the
/// initial sync of a large cluster did once per Service port).
fn possible_cpus() -> Result<usize, MapError> {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(n) = CPUS.get() {
        return Ok(*n);
    }
    let n = nr_cpus().map_err(|(_, io_error)| {
        MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error })
    })?;
    Ok(*CPUS.get_or_init(|| n))
}

/// A zeroed per-service counter value for every possible CPU.
fn zeroed_service_stats() -> Result<PerCpuValues<ServiceStats>, MapError> {
    let cpus = possible_cpus()?;
    let zero = ServiceStats { counters: [0; service_stats::COUNT as usize] };
    PerCpuValues::try_from(vec![zero; cpus]).map_err(|io_error| {
        MapError::SyscallError(aya::sys::SyscallError { call: "per-cpu values", io_error })
    })
}

fn read_all<K: aya::Pod + Ord, V: aya::Pod>(
    name: &'static str,
    map: &HashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>, MapsError> {
    map.iter().map(|r| r.map_err(|source| MapsError::Read { name, source })).collect()
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// The maps a full sync fills with many entries, for `BPF_MAP_UPDATE_BATCH`.
struct BatchMaps {
    frontends4: RawMap,
    frontends6: RawMap,
    slots: RawMap,
    backends: RawMap,
    services: RawMap,
    service_stats: RawMap,
}

impl BatchMaps {
    fn open(path_of: &dyn Fn(&'static str) -> PathBuf) -> Result<Self, MapsError> {
        let open = |name: &'static str| {
            let path = path_of(name);
            RawMap::open(&path).map_err(|io_error| MapsError::Open {
                path,
                source: MapError::SyscallError(aya::sys::SyscallError { call: "bpf_obj_get", io_error }),
            })
        };
        Ok(Self {
            frontends4: open(map_names::FRONTENDS_V4)?,
            frontends6: open(map_names::FRONTENDS_V6)?,
            slots: open(map_names::SLOTS)?,
            backends: open(map_names::BACKENDS)?,
            services: open(map_names::SERVICES)?,
            service_stats: open(map_names::SERVICE_STATS)?,
        })
    }
}

/// Writes that go in one batch when they follow one another.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Backend,
    Slot,
    Service,
    Frontend4,
    Frontend6,
}

fn batch_kind(op: &MapOp) -> Option<BatchKind> {
    match op {
        MapOp::PutBackend(..) => Some(BatchKind::Backend),
        MapOp::PutSlot(..) => Some(BatchKind::Slot),
        MapOp::PutService(..) => Some(BatchKind::Service),
        MapOp::PutFrontend(FrontendKey::V4(_), _) => Some(BatchKind::Frontend4),
        MapOp::PutFrontend(FrontendKey::V6(_), _) => Some(BatchKind::Frontend6),
        _ => None,
    }
}

/// Runs shorter than this go one by one; longer ones in batches of at most `BATCH_MAX`.
const BATCH_MIN: usize = 4;
const BATCH_MAX: usize = 4096;

/// The keys and values of a run of puts of one kind, back to back.
fn encode(run: &[MapOp]) -> (Vec<u8>, Vec<u8>) {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for op in run {
        match op {
            MapOp::PutBackend(id, b) => {
                extend_bytes(&mut keys, id);
                extend_bytes(&mut values, b);
            }
            MapOp::PutSlot(k, v) => {
                extend_bytes(&mut keys, k);
                extend_bytes(&mut values, v);
            }
            MapOp::PutService(g, n) => {
                extend_bytes(&mut keys, g);
                extend_bytes(&mut values, n);
            }
            MapOp::PutFrontend(FrontendKey::V4(k), v) => {
                extend_bytes(&mut keys, k);
                extend_bytes(&mut values, v);
            }
            MapOp::PutFrontend(FrontendKey::V6(k), v) => {
                extend_bytes(&mut keys, k);
                extend_bytes(&mut values, v);
            }
            _ => {}
        }
    }
    (keys, values)
}

impl PinnedMaps {
    /// Writes `run` (puts of one kind, in order) in batches: a Service's counters are zeroed
    /// before its name is written, as `apply` does, the whole run's counters first.
    fn apply_run(
        &self,
        batch: &BatchMaps,
        kind: BatchKind,
        run: &[MapOp],
    ) -> Result<(), (usize, std::io::Error)> {
        let (keys, values) = encode(run);
        match kind {
            BatchKind::Backend => batch.backends.update_batch(&keys, &values),
            BatchKind::Slot => batch.slots.update_batch(&keys, &values),
            BatchKind::Frontend4 => batch.frontends4.update_batch(&keys, &values),
            BatchKind::Frontend6 => batch.frontends6.update_batch(&keys, &values),
            BatchKind::Service => {
                // The per-CPU counters one by one: the kernel allocates per-CPU memory for a
                // non-preallocated map without sleeping, which a long batch soon exhausts
                // (`ENOMEM` after a few thousand entries at 100,000 Services). Then the names of
                // the Services whose counters were zeroed, in one batch.
                let zeros = vec![0u8; batch.service_stats.value_bytes];
                let key_size = keys.len() / run.len();
                let mut zeroed = Ok(());
                for (i, (key, op)) in keys.chunks(key_size).zip(run).enumerate() {
                    if matches!(op, MapOp::PutService(g, _) if self.zeroed.contains(g)) {
                        continue;
                    }
                    if let Err(e) = batch.service_stats.update(key, &zeros) {
                        zeroed = Err((i, e));
                        break;
                    }
                }
                let done = zeroed.as_ref().map_or_else(|(done, _)| *done, |()| run.len());
                let value_size = values.len() / run.len();
                batch.services.update_batch(&keys[..done * key_size], &values[..done * value_size])?;
                zeroed
            }
        }
    }
}

/// How often, and how long apart, a write refused for want of kernel memory is tried again.
const ENOMEM_TRIES: u32 = 50;
const ENOMEM_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

fn out_of_memory(e: &MapsError) -> bool {
    matches!(e, MapsError::Write { source: MapError::SyscallError(s), .. }
        if s.io_error.raw_os_error() == Some(libc::ENOMEM))
}

impl PinnedMaps {
    /// One write. The maps are not preallocated: the kernel takes each new entry (per-CPU
    /// counters especially) from memory it allocates without sleeping and refills from a
    /// worker, so after many writes in a row a write can find none (`ENOMEM`, seen at 100,000
    /// Services × 10 endpoints). It is tried again after a short wait, for up to half a second.
    fn apply_one(&mut self, op: &MapOp) -> Result<usize, MapsError> {
        let mut tries = 1;
        loop {
            match self.apply(op) {
                Err(e) if out_of_memory(&e) && tries < ENOMEM_TRIES => {
                    if tries == 1 {
                        tracing::info!(%op, "kernel memory for map entries ran short; waiting for it");
                    }
                    tries += 1;
                    std::thread::sleep(ENOMEM_WAIT);
                }
                result => return result.map(|()| 1),
            }
        }
    }
}

impl PinnedMaps {
    /// Waits for the thread zeroing counters ahead, if one runs: the groups it zeroed are
    /// noted, the others get theirs with their names as usual.
    fn join_ahead(&mut self) {
        let Some((thread, groups)) = self.ahead.take() else { return };
        match thread.join() {
            Ok((map, done)) => {
                self.stats_ahead = Some(map);
                self.zeroed.extend(&groups[..done.min(groups.len())]);
            }
            // Nothing was noted as zeroed: every name's counters are written with it.
            Err(_) => {
                tracing::warn!("zeroing per-service counters ahead failed; they are written with the names")
            }
        }
    }
}

/// Zeroes the per-CPU counters of `groups` in order, each tried again for a while when the
/// kernel is short of memory for it (as `PinnedMaps::apply_one`); how many were zeroed.
fn zero_counters(map: &RawMap, groups: &[u32]) -> usize {
    let zeros = vec![0u8; map.value_bytes];
    for (i, g) in groups.iter().enumerate() {
        let mut tries = 1;
        loop {
            match map.update(&g.to_ne_bytes(), &zeros) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && tries < ENOMEM_TRIES => {
                    tries += 1;
                    std::thread::sleep(ENOMEM_WAIT);
                }
                Err(_) => return i,
            }
        }
    }
    groups.len()
}

impl PinnedMaps {
    /// Every frontend's key, read from the maps (for the conntrack gate's fill).
    pub fn frontend_keys(&self) -> Result<Vec<FrontendKey>, MapsError> {
        let mut out = Vec::new();
        for k in self.frontends4.keys() {
            out.push(FrontendKey::V4(
                k.map_err(|source| MapsError::Read { name: map_names::FRONTENDS_V4, source })?,
            ));
        }
        for k in self.frontends6.keys() {
            out.push(FrontendKey::V6(
                k.map_err(|source| MapsError::Read { name: map_names::FRONTENDS_V6, source })?,
            ));
        }
        Ok(out)
    }

    /// Opens the conntrack gate's slot of a frontend (`lb_common::ct_gate`) before it is written.
    fn open_gate(&mut self, key: &FrontendKey) -> Result<(), MapError> {
        let slot = key.gate_slot();
        if let Some(gate) = &mut self.gate
            && self.opened[slot as usize / 64] & (1 << (slot % 64)) == 0
        {
            gate.set(slot, 1, 0)?;
            self.opened[slot as usize / 64] |= 1 << (slot % 64);
        }
        Ok(())
    }
}

impl LbMaps for PinnedMaps {
    fn read(&self) -> Result<MapState, MapsError> {
        let mut state = MapState::default();
        for (k, v) in read_all(map_names::FRONTENDS_V4, &self.frontends4)? {
            state.frontends.insert(FrontendKey::V4(k), v);
        }
        for (k, v) in read_all(map_names::FRONTENDS_V6, &self.frontends6)? {
            state.frontends.insert(FrontendKey::V6(k), v);
        }
        state.slots.extend(read_all(map_names::SLOTS, &self.slots)?);
        state.backends.extend(read_all(map_names::BACKENDS, &self.backends)?);
        state.services.extend(read_all(map_names::SERVICES, &self.services)?);
        let v6_groups: BTreeSet<u32> = state
            .frontends
            .iter()
            .filter(|(k, _)| matches!(k, FrontendKey::V6(_)))
            .map(|(_, v)| v.group)
            .collect();
        for key in self.source_ranges.keys() {
            let key = key.map_err(|source| MapsError::Read { name: map_names::SOURCE_RANGES, source })?;
            state.source_ranges.insert(source_range_of(&key, &v6_groups));
        }
        Ok(state)
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), MapsError> {
        if let MapOp::PutFrontend(key, _) = op {
            self.open_gate(key).map_err(|source| MapsError::Write { op: op.to_string(), source })?;
        }
        let result = match op {
            MapOp::PutBackend(id, b) => self.backends.insert(id, b, 0),
            MapOp::PutSlot(k, v) => self.slots.insert(k, v, 0),
            MapOp::PutSourceRange(r) => self.source_ranges.insert(&source_range_key(r), SOURCE_RANGE_MARK, 0),
            // A new group, or a group id that now serves another Service port (`diff` puts only
            // those): its counters start from zero.
            MapOp::PutService(g, n) => {
                self.join_ahead();
                let zeroed = if self.zeroed.contains(g) {
                    Ok(())
                } else {
                    zeroed_service_stats().and_then(|zero| self.service_stats.insert(g, zero, 0))
                };
                let put = zeroed.and_then(|()| self.services.insert(g, n, 0));
                if put.is_ok() {
                    self.zeroed.remove(g);
                }
                put
            }
            MapOp::PutFrontend(FrontendKey::V4(k), v) => self.frontends4.insert(k, v, 0),
            MapOp::PutFrontend(FrontendKey::V6(k), v) => self.frontends6.insert(k, v, 0),
            MapOp::DeleteFrontend(FrontendKey::V4(k)) => ignore_missing(self.frontends4.remove(k)),
            MapOp::DeleteFrontend(FrontendKey::V6(k)) => ignore_missing(self.frontends6.remove(k)),
            MapOp::DeleteSlot(k) => ignore_missing(self.slots.remove(k)),
            MapOp::DeleteSourceRange(r) => ignore_missing(self.source_ranges.remove(&source_range_key(r))),
            MapOp::DeleteService(g) => ignore_missing(self.service_stats.remove(g))
                .and_then(|()| ignore_missing(self.services.remove(g)))
                .and_then(|()| match self.log.get(&0, 0) {
                    Ok(logged) if logged == *g => self.log.set(0, 0, 0),
                    _ => Ok(()),
                }),
            MapOp::DeleteBackend(id) => ignore_missing(self.backends.remove(id)),
        };
        result.map_err(|source| MapsError::Write { op: op.to_string(), source })
    }

    fn apply_prefix(&mut self, ops: &[MapOp]) -> Result<usize, MapsError> {
        let Some(first) = ops.first() else { return Ok(0) };
        let run = batch_kind(first).filter(|_| self.batch.is_some()).map_or(0, |kind| {
            ops.iter().take(BATCH_MAX).take_while(|op| batch_kind(op) == Some(kind)).count()
        });
        if run >= BATCH_MIN {
            // The frontends' gate slots first, as `apply` does for one.
            for op in &ops[..run] {
                if let MapOp::PutFrontend(key, _) = op {
                    self.open_gate(key).map_err(|source| MapsError::Write { op: op.to_string(), source })?;
                }
            }
        }
        if matches!(first, MapOp::PutService(..)) {
            self.join_ahead();
        }
        let (Some(kind), Some(batch)) = (batch_kind(first), &self.batch) else {
            return self.apply_one(first);
        };
        if run < BATCH_MIN {
            return self.apply_one(first);
        }
        let result = self.apply_run(batch, kind, &ops[..run]);
        if kind == BatchKind::Service {
            let written = result.as_ref().map_or_else(|(done, _)| *done, |()| run);
            for op in &ops[..written] {
                if let MapOp::PutService(g, _) = op {
                    self.zeroed.remove(g);
                }
            }
        }
        match result {
            Ok(()) => Ok(run),
            // Written up to an entry that failed: that one is the first of the next call. (A map
            // without preallocation takes its entries from a cache the kernel refills between
            // commands: a long batch can find it empty, `ENOMEM`, where single writes succeed.)
            Err((done, _)) if done > 0 => Ok(done),
            // A kernel without batched writes for this map: one by one from now on.
            Err((_, e)) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)) => {
                tracing::info!(error = %e, "batched map writes refused; writing entries one by one");
                self.batch = None;
                self.apply_one(first)
            }
            // The first entry failed in the batch: written alone, it succeeds or names the error.
            Err(_) => self.apply_one(first),
        }
    }

    fn raise_backend_epoch(&mut self) -> Result<(), MapsError> {
        let Some(map) = &mut self.epoch else { return Ok(()) };
        let read = |source| MapsError::Read { name: map_names::BACKEND_EPOCH, source };
        let epoch = backend_epoch::next(map.get(&0, 0).map_err(read)?);
        map.set(0, epoch, 0)
            .map_err(|source| MapsError::Write { op: format!("backend epoch {epoch}"), source })
    }

    fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn zero_counters_ahead(&mut self, groups: Vec<u32>) {
        self.join_ahead();
        if groups.is_empty() {
            return;
        }
        let Some(map) = self.stats_ahead.take() else { return };
        let given = groups.clone();
        let spawned = std::thread::Builder::new().name("lb-counters".into()).spawn(move || {
            let done = zero_counters(&map, &given);
            (map, done)
        });
        match spawned {
            Ok(thread) => self.ahead = Some((thread, groups)),
            // No thread: every name's counters are written with it, as without this.
            Err(e) => tracing::warn!(error = %e, "cannot start a thread to zero per-service counters ahead"),
        }
    }

    fn settle_counters(&mut self) {
        self.join_ahead();
        for g in std::mem::take(&mut self.zeroed) {
            // Best effort: a counter left without its name is harmless, and read by no one.
            let _ = ignore_missing(self.service_stats.remove(&g));
        }
    }
}

/// The kernel's own "operation not supported" (`ENOTSUPP`, not in libc).
const ENOTSUPP: i32 = 524;

#[cfg(test)]
/// In-memory maps for tests: applies ops to a `MapState` and keeps a log of them.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    pub state: MapState,
    pub log: Vec<MapOp>,
    pub capacity: Option<Capacity>,
    /// Fail the n-th apply (0-based), to test partial applies.
    pub fail_at: Option<usize>,
    /// `LB_BACKEND_EPOCH`.
    pub epoch: u32,
    /// Fail every raise of the epoch.
    pub fail_epoch: bool,
}

#[cfg(test)]
impl MemoryMaps {
    /// Whether `op` puts a new key into a map that holds `cap`'s count already.
    fn would_overflow(&self, op: &MapOp, cap: Capacity) -> bool {
        let s = &self.state;
        let full = |len: usize, capacity: u32| len >= capacity as usize;
        match op {
            MapOp::PutBackend(id, _) => !s.backends.contains_key(id) && full(s.backends.len(), cap.backends),
            MapOp::PutSlot(k, _) => !s.slots.contains_key(k) && full(s.slots.len(), cap.slots),
            MapOp::PutSourceRange(r) => {
                !s.source_ranges.contains(r) && full(s.source_ranges.len(), cap.source_ranges)
            }
            MapOp::PutService(g, _) => !s.services.contains_key(g) && full(s.services.len(), cap.services),
            MapOp::PutFrontend(k, _) => {
                let v4 = matches!(k, FrontendKey::V4(_));
                let family = s.frontends.keys().filter(|f| matches!(f, FrontendKey::V4(_)) == v4).count();
                !s.frontends.contains_key(k) && full(family, cap.frontends)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
impl LbMaps for MemoryMaps {
    fn read(&self) -> Result<MapState, MapsError> {
        Ok(self.state.clone())
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), MapsError> {
        if self.fail_at == Some(self.log.len()) {
            return Err(MapsError::Write { op: op.to_string(), source: MapError::KeyNotFound });
        }
        if let Some(cap) = self.capacity
            && self.would_overflow(op, cap)
        {
            // What the kernel answers a new key in a full hash map (or LPM trie).
            let io_error = std::io::Error::from_raw_os_error(libc::E2BIG);
            let source =
                MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_update_elem", io_error });
            return Err(MapsError::Write { op: op.to_string(), source });
        }
        crate::layout::diff::apply_in_memory(&mut self.state, op);
        self.log.push(*op);
        Ok(())
    }

    fn raise_backend_epoch(&mut self) -> Result<(), MapsError> {
        if self.fail_epoch {
            return Err(MapsError::Write { op: "backend epoch".to_owned(), source: MapError::KeyNotFound });
        }
        self.epoch = backend_epoch::next(self.epoch);
        Ok(())
    }

    fn capacity(&self) -> Capacity {
        self.capacity.unwrap_or(Capacity {
            frontends: u32::MAX,
            slots: u32::MAX,
            backends: u32::MAX,
            source_ranges: u32::MAX,
            services: u32::MAX,
        })
    }
}
