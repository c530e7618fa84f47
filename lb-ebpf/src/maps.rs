//! The maps, sized by their `lb_common::capacity` defaults; the agent sets the real sizes at load
//! time and pins them by name under its `--bpffs` directory.
//!
//! The service maps are written only by the agent and are not preallocated: kernel memory follows
//! what is programmed, not the capacity. The LRU reverse-NAT maps must be preallocated.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, CtKey, CtValue, Frontend4Key, Frontend6Key, FrontendValue, RevNat4Key, RevNat4Value, RevNat6Key,
    RevNat6Value, SlotKey, SlotValue, capacity, stats,
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
