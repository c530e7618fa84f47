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

/// The conntrack gate (`lb_common::ct_gate`): destinations an original-direction conntrack entry
/// may exist for. Set by the programs, the ready flag by the agent.
#[map]
pub static LB_CT_GATE: Array<u8> = Array::pinned(lb_common::ct_gate::ENTRIES, 0);

/// The backends' epoch (`lb_common::backend_epoch`), written by the agent.
#[map]
pub static LB_BACKEND_EPOCH: Array<u32> = Array::pinned(1, 0);

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

/// A socket-local storage map (`BPF_MAP_TYPE_SK_STORAGE`) in BTF form, as aya-ebpf's
/// `btf_maps::SkStorage` lays it out, plus the `pinning` member (by name), which that type lacks:
/// the storage must be pinned so an upgraded agent's programs read what the old ones stored on
/// live sockets. The kernel requires the BTF key and value types of such a map, hence the `.maps`
/// section rather than a legacy `#[map]`. The fields are never read: they only carry types.
#[repr(C)]
pub struct SockStorage<T> {
    r#type: *const [i32; aya_ebpf::bindings::bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    /// `LIBBPF_PIN_BY_NAME`.
    pinning: *const [i32; 1],
}

// Safety: the fields are null placeholders, never dereferenced; the kernel owns the map.
unsafe impl<T> Sync for SockStorage<T> {}

impl<T> SockStorage<T> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
            pinning: core::ptr::null(),
        }
    }

    /// This socket's value, created zeroed when `create` and it has none; `None` when it has
    /// none (or the kernel could not allocate one).
    #[inline(always)]
    pub fn get(&self, ctx: &aya_ebpf::programs::SockAddrContext, create: bool) -> Option<*mut T> {
        let flags = if create { u64::from(aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE) } else { 0 };
        // Safety: `ctx.sock_addr` is the kernel's context, valid for the program run; its `sk` is
        // the socket the hook runs for (a full socket in every sock_addr hook), which
        // bpf_sk_storage_get accepts. The map pointer names this map (relocated at load), and
        // a null initial value asks for a zeroed one.
        let ptr = unsafe {
            let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
            aya_ebpf::helpers::bpf_sk_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                sk.cast(),
                core::ptr::null_mut(),
                flags,
            )
        };
        if ptr.is_null() { None } else { Some(ptr.cast()) }
    }
}

/// The socket hooks' translations, kept with each socket (`lb_common::SockRevNat`) and freed with
/// it; `LB_REVNAT_V4/V6` hold only what does not fit (and what older programs wrote).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "LB_SOCK_REVNAT")]
pub static LB_SOCK_REVNAT: SockStorage<lb_common::SockRevNat> = SockStorage::new();
