//! The maps, sized by their `lb_common::capacity` defaults; the agent sets the real sizes at load
//! time and pins them by name under its `--bpffs` directory.
//!
//! The service maps are written only by the agent and are not preallocated: kernel memory follows
//! what is programmed, not the capacity. The LRU reverse-NAT maps must be preallocated.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use lb_common::{
    AgentStatus, Backend, CtKey, CtValue, Frontend4Key, Frontend6Key, FrontendValue, RevNat4Key,
    RevNat4Value, RevNat6Key, RevNat6Value, ServiceName, ServiceStats, SlotKey, SlotValue, capacity, stats,
};

#[map]
pub static LB_FRONTENDS_V4: HashMap<Frontend4Key, FrontendValue> =
    HashMap::pinned(capacity::FRONTENDS, BPF_F_NO_PREALLOC);

#[map]
pub static LB_FRONTENDS_V6: HashMap<Frontend6Key, FrontendValue> =
    HashMap::pinned(capacity::FRONTENDS, BPF_F_NO_PREALLOC);

#[map]
pub static LB_SLOTS: HashMap<SlotKey, SlotValue> = HashMap::pinned(capacity::SLOTS, BPF_F_NO_PREALLOC);

#[map]
pub static LB_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(capacity::BACKENDS, BPF_F_NO_PREALLOC);

#[map]
pub static LB_REVNAT_V4: LruHashMap<RevNat4Key, RevNat4Value> = LruHashMap::pinned(capacity::REVNAT, 0);

#[map]
pub static LB_REVNAT_V6: LruHashMap<RevNat6Key, RevNat6Value> = LruHashMap::pinned(capacity::REVNAT, 0);

#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);

/// Conntrack of the TC programs: preallocated LRU, so a flood of new flows evicts the oldest
/// instead of failing.
#[map]
pub static LB_CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(capacity::CONNTRACK, 0);

/// Session affinity (`sessionAffinity: ClientIP`): `(group, client)` → the backend last chosen
/// (see `lb::resolve`). Written by the programs only; a preallocated LRU, so a full map evicts the
/// least recently used client instead of failing.
#[map]
pub static LB_AFFINITY: LruHashMap<lb_common::AffinityKey, lb_common::AffinityValue> =
    LruHashMap::pinned(capacity::AFFINITY, 0);

/// `loadBalancerSourceRanges`: `(group, prefix)` → 1 (see `lb_common::SourceRangeKey`). Written
/// only by the agent; an LPM trie must be created with `BPF_F_NO_PREALLOC` (aya-ebpf adds it).
#[map]
pub static LB_SOURCE_RANGES: aya_ebpf::maps::LpmTrie<lb_common::SourceRangeKey, u8> =
    aya_ebpf::maps::LpmTrie::pinned(capacity::SOURCE_RANGES, 0);

const _: () = assert!(
    core::mem::size_of::<aya_ebpf::maps::lpm_trie::Key<lb_common::SourceRangeKey>>()
        == 4 + core::mem::size_of::<lb_common::SourceRangeKey>()
);

/// Backend group id → the Service port it serves. Written by the agent for the CLI; no program
/// reads it.
#[map]
pub static LB_SERVICES: HashMap<u32, ServiceName> = HashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);

/// Backend group id → per-CPU counters of its new connections and flows by path and verdict
/// (`lb_common::service_stats`). The agent creates and deletes the entries; the programs count
/// only into an existing one.
#[map]
pub static LB_SERVICE_STATS: PerCpuHashMap<u32, ServiceStats> =
    PerCpuHashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);

/// The agent's own record (`lb_common::AgentStatus`), for `lb-agent status`. No program reads it.
#[map]
pub static LB_AGENT: Array<AgentStatus> = Array::pinned(1, 0);

/// `--socket-lb-scope` (`lb_common::socket_scope`): 0, or the host's network namespace cookie
/// when only host sockets are translated. Written by the agent before it attaches the programs;
/// not pinned (each agent's programs get their own).
#[map]
pub static LB_SOCKET_SCOPE: Array<u64> = Array::with_max_entries(1, 0);

/// Map name → the layout of its key and value (`lb_common::MapLayout`), written by the agent
/// that created the maps so a later one can convert them. No program reads it.
#[map]
pub static LB_META: HashMap<lb_common::MetaKey, lb_common::MapLayout> = HashMap::pinned(32, 0);
