//! The contract between the kernel programs (`lb-ebpf`) and the agent (`lb-agent`): every BPF map's
//! name, key, value and default capacity, defined once and used by both sides.
//!
//! Rules for everything in here: `#[repr(C)]`, explicit padding fields (no implicit holes, no
//! `bool`, no `Option`, no enums), and a compile-time size check per type. Addresses and ports are
//! stored in **network byte order**, exactly as the cgroup `sock_addr` context presents them
//! (`user_ip4`, `user_ip6`, `user_port`), so the kernel side never swaps bytes on its hot path.
#![no_std]

use core::mem::size_of;

/// IANA protocol numbers as they appear in `bpf_sock_addr.protocol` and in IP headers.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Map names, as pinned under the agent's `--bpffs` directory.
pub mod map_names {
    pub const FRONTENDS_V4: &str = "LB_FRONTENDS_V4";
    pub const FRONTENDS_V6: &str = "LB_FRONTENDS_V6";
    pub const SLOTS: &str = "LB_SLOTS";
    pub const BACKENDS: &str = "LB_BACKENDS";
    pub const REVNAT_V4: &str = "LB_REVNAT_V4";
    pub const REVNAT_V6: &str = "LB_REVNAT_V6";
    pub const STATS: &str = "LB_STATS";
    pub const CONNTRACK: &str = "LB_CONNTRACK";
    pub const SOURCE_RANGES: &str = "LB_SOURCE_RANGES";
    pub const AFFINITY: &str = "LB_AFFINITY";
    pub const SERVICES: &str = "LB_SERVICES";
    pub const SERVICE_STATS: &str = "LB_SERVICE_STATS";
    pub const AGENT: &str = "LB_AGENT";
    pub const LOG: &str = "LB_LOG";
    pub const META: &str = "LB_META";
    /// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`) of the socket hooks' translations.
    pub const SOCK_REVNAT: &str = "LB_SOCK_REVNAT";
    /// The conntrack gate (`crate::ct_gate`).
    pub const CT_GATE: &str = "LB_CT_GATE";
    /// The backends' epoch (`crate::backend_epoch`).
    pub const BACKEND_EPOCH: &str = "LB_BACKEND_EPOCH";
    pub const ALL: [&str; 18] = [
        FRONTENDS_V4,
        FRONTENDS_V6,
        SLOTS,
        BACKENDS,
        REVNAT_V4,
        REVNAT_V6,
        STATS,
        CONNTRACK,
        SOURCE_RANGES,
        AFFINITY,
        SERVICES,
        SERVICE_STATS,
        AGENT,
        LOG,
        META,
        SOCK_REVNAT,
        CT_GATE,
        BACKEND_EPOCH,
    ];
}

/// Default capacities; the agent overrides them at load time (`--max-frontends` and friends).
/// Designed for 100k frontends and 1M backends.
pub mod capacity {
    pub const FRONTENDS: u32 = 131_072;
    pub const SLOTS: u32 = 1_048_576;
    pub const BACKENDS: u32 = 1_048_576;
    pub const REVNAT: u32 = 262_144;
    /// Two entries per flow (original and reply direction).
    pub const CONNTRACK: u32 = 524_288;
    /// `loadBalancerSourceRanges` entries, all Services and both families together.
    pub const SOURCE_RANGES: u32 = 65_536;
    /// Session-affinity entries (one per client and Service port with `sessionAffinity: ClientIP`).
    pub const AFFINITY: u32 = 65_536;
    /// Backend groups (one per Service port, family and traffic scope): the size of
    /// `LB_SERVICES` and `LB_SERVICE_STATS`. Twice `FRONTENDS`: every group has a frontend in
    /// one of the two frontend maps.
    pub const SERVICES: u32 = 262_144;
}

/// `--socket-lb-scope`: which sockets the cgroup hooks translate. `MAP` is a one-entry `ARRAY` of
/// `u64`, kernel-internal (not pinned: each agent writes it when it loads its programs, before
/// attaching them): `0` translates every socket (`all`); any other value is the network namespace
/// cookie of the host (`host`: the node's own processes and hostNetwork pods), and sockets in any
/// other namespace (pods) are left to the TC programs on the pod interfaces.
pub mod socket_scope {
    pub const MAP: &str = "LB_SOCKET_SCOPE";
    /// The value for `all`.
    pub const ALL: u64 = 0;
}

/// Version of the layout of the pinned maps (keys, values, which maps exist), recorded in
/// `LB_AGENT` so a later agent and the CLI can tell what they read. The layouts themselves are
/// described field by field in `LB_META` (since 2), which is what an upgrade converts by.
///
/// 1: the maps as first released. 2: `LB_META` added (no key or value changed). 3:
/// `LB_SOCK_REVNAT` (socket storage) added; the socket hooks write `LB_REVNAT_V4/V6` only for
/// what a socket's storage does not hold. 4: `LB_BACKEND_EPOCH` added (and `LB_CT_GATE`, which
/// came without a number); `CtValue`'s `pad2` (always 0) became `epoch`.
pub const SCHEMA_VERSION: u32 = 4;

/// Key of `LB_FRONTENDS_V4`: a ClusterIP (or other VIP), its port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend4Key {
    /// IPv4 address, network byte order (as `bpf_sock_addr.user_ip4`).
    pub addr: u32,
    /// Port, network byte order in the low 16 bits (as `bpf_sock_addr.user_port`).
    pub port: u16,
    /// `proto::TCP`, `proto::UDP` or `proto::SCTP`.
    pub proto: u8,
    pub pad: u8,
}

/// Key of `LB_FRONTENDS_V6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend6Key {
    /// IPv6 address as four `u32` words, each in network byte order (as `bpf_sock_addr.user_ip6`).
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// Value of both frontend maps: which backend group serves this frontend, and which of its slots
/// each path may use.
///
/// Two slot ranges, because kube-proxy treats a node's own connections and traffic from outside
/// differently for an external frontend with `externalTrafficPolicy: Local` (its own connections
/// may use every endpoint, outside traffic only this node's): the socket hooks use slots
/// `1..=count`, the TC/XDP programs slots `ext_offset+1..=ext_offset+ext_count`. When both sets
/// are equal the ranges are the same (`ext_offset == 0`, `ext_count == count`).
/// `count == 0` / `ext_count == 0`: no usable endpoint on that path.
///
/// Invariant kept by the agent's write order: every slot of both ranges exists whenever this
/// value is visible, and every backend they name exists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendValue {
    /// Backend group id (never 0).
    pub group: u32,
    /// Number of slots for the socket hooks, `1..=count`.
    pub count: u32,
    /// `frontend_flags::*` bits.
    pub flags: u32,
    /// Session-affinity timeout in seconds (0: no affinity).
    pub affinity_timeout: u32,
    /// Slots for packets from outside start after this one.
    pub ext_offset: u32,
    /// Number of slots for packets from outside.
    pub ext_count: u32,
}

pub mod frontend_flags {
    /// The frontend is a ClusterIP.
    pub const CLUSTER_IP: u32 = 1 << 0;
    /// The frontend is an external IP.
    pub const EXTERNAL_IP: u32 = 1 << 1;
    /// The frontend is a LoadBalancer ingress IP.
    pub const LOAD_BALANCER: u32 = 1 << 2;
    /// The frontend is a NodePort.
    pub const NODE_PORT: u32 = 1 << 3;
    /// With `count == 0`: endpoints exist, but none in this frontend's Local policy set, so
    /// kube-proxy drops (EHOSTUNREACH at the socket) rather than rejects (ECONNREFUSED).
    pub const DROP_WHEN_EMPTY: u32 = 1 << 4;
    /// A LoadBalancer frontend of a Service with `loadBalancerSourceRanges`: packets from outside
    /// start a flow only from a source in `LB_SOURCE_RANGES` under the frontend's group.
    pub const SOURCE_RANGES: u32 = 1 << 5;
}

/// The data of an `LB_SOURCE_RANGES` key: the LPM trie key is `{prefix_len: u32, data: this}`,
/// aya's `lpm_trie::Key<SourceRangeKey>` on both sides (24 bytes). `prefix_len` counts the
/// group's 32 bits plus the prefix's (`SOURCE_RANGE_GROUP_BITS + prefix`), so a lookup with
/// `SOURCE_RANGE_GROUP_BITS + 32` (IPv4) or `+ 128` (IPv6) matches a range of that group only.
/// A group id belongs to one family, so both families share the map. The value is a `u8` marker
/// (1): a match allows the source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    /// Backend group id of the LoadBalancer frontends the range applies to. Always matched whole,
    /// so its byte order does not matter.
    pub group: u32,
    /// As in `Backend::addr`: IPv4 in `addr[0]` (the rest 0), network byte order.
    pub addr: [u32; 4],
}

/// Bits of `SourceRangeKey::group` at the front of every `LB_SOURCE_RANGES` prefix.
pub const SOURCE_RANGE_GROUP_BITS: u32 = 32;

/// Key of `LB_SLOTS`: slot `slot` (1-based; 0 is reserved and never written) of backend group `group`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub group: u32,
    pub slot: u32,
}

/// Value of `LB_SLOTS`: a backend id (never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotValue {
    pub backend: u32,
}

/// Value of `LB_BACKENDS` (key: backend id `u32`, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// IPv4: `addr[0]` in network byte order, the rest 0. IPv6: four words in network byte order.
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// `backend_state::*`.
    pub state: u8,
    /// `backend_flags::*` bits.
    pub flags: u8,
    pub pad: [u8; 2],
}

pub mod backend_flags {
    /// The endpoint runs on this node: packets from outside reach it without SNAT (its reply is
    /// routed back through this node anyway), so the client's address is preserved.
    pub const LOCAL: u8 = 1 << 0;
}

pub mod backend_state {
    /// Eligible for new connections.
    pub const ACTIVE: u8 = 0;
    /// Terminating: used only when a service has no ready endpoint (kube-proxy's fallback).
    pub const TERMINATING: u8 = 1;
}

/// Key of `LB_REVNAT_V4`: a socket (by cookie) and the backend it was sent to.
/// Filled at connect/sendmsg, read at recvmsg/getpeername to show the frontend to the application.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNat4Key {
    pub cookie: u64,
    pub backend_addr: u32,
    pub backend_port: u16,
    pub pad: u16,
}

/// Value of `LB_REVNAT_V4`: the frontend the application addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNat4Value {
    pub frontend_addr: u32,
    pub frontend_port: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNat6Key {
    pub cookie: u64,
    pub backend_addr: [u32; 4],
    pub backend_port: u16,
    pub pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNat6Value {
    pub frontend_addr: [u32; 4],
    pub frontend_port: u16,
    pub pad: u16,
}

/// One translation a socket made, in its `LB_SOCK_REVNAT` storage: the backend the socket was
/// sent to and the frontend it addressed (addresses and ports in network byte order; an IPv4
/// address, also one used v4-mapped through an IPv6 socket, in `[0]` with `family` 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevNatEntry {
    pub backend_addr: [u32; 4],
    pub frontend_addr: [u32; 4],
    pub backend_port: u16,
    pub frontend_port: u16,
    /// 0: unused, 4 or 6.
    pub family: u8,
    pub pad: [u8; 3],
}

/// How many translations one socket keeps in its storage: a connected socket makes one; an
/// unconnected UDP socket sending to several frontends keeps the last `SOCK_REVNAT_ENTRIES`
/// backends, and an older one that is pushed out goes to `LB_REVNAT_V4/V6` (the LRU).
pub const SOCK_REVNAT_ENTRIES: usize = 4;

/// Value of `LB_SOCK_REVNAT` (socket-local storage, `BPF_MAP_TYPE_SK_STORAGE`): the socket's
/// translations, freed by the kernel with the socket, so no capacity evicts a live socket's.
/// `next` is where the next new backend goes (round robin over `entries`).
///
/// Its layout is frozen: socket storage cannot be listed, so an upgrade cannot convert it; a
/// change needs a map of another name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevNat {
    pub entries: [SockRevNatEntry; SOCK_REVNAT_ENTRIES],
    pub next: u32,
    pub pad: u32,
}

/// Key of `LB_AFFINITY`: a client of a backend group with `sessionAffinity: ClientIP`
/// (`FrontendValue::affinity_timeout != 0`). The TC programs know the client by its source
/// address; the socket hooks run before a source address exists, so they use the socket's network
/// namespace (every process of a pod shares it, as they share the pod's IP), as Cilium does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    /// Backend group id.
    pub group: u32,
    /// `affinity_kind::IPV4`: the address in `[0]` (as `Backend::addr`); `IPV6`: four words;
    /// `NETNS`: the netns cookie, low 32 bits in `[0]`, high in `[1]`. The rest 0.
    pub client: [u32; 4],
    /// `affinity_kind::*`.
    pub kind: u8,
    pub pad: [u8; 3],
}

pub mod affinity_kind {
    /// The TC path: an IPv4 source address (equal to `CtKey::family` 4).
    pub const IPV4: u8 = 4;
    /// The TC path: an IPv6 source address.
    pub const IPV6: u8 = 6;
    /// The socket hooks: a network namespace cookie (`bpf_get_netns_cookie`).
    pub const NETNS: u8 = 1;
}

/// Value of `LB_AFFINITY`: the backend the client was last sent to, and through which slot.
/// The choice holds while `slot` is in the path's slot range and `LB_SLOTS[(group, slot)]` still
/// names `backend`, and the client connected within the timeout (`last_used`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityValue {
    /// Backend id.
    pub backend: u32,
    /// The slot (of `AffinityKey::group`) `backend` was found in.
    pub slot: u32,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the client's last new connection.
    pub last_used: u64,
}

/// Key of `LB_CONNTRACK`: a flow's 5-tuple as it appears on the wire in one direction, for packets
/// the TC programs translate (NodePort, LoadBalancer, external IP, ClusterIP from outside).
/// Addresses as in `Backend::addr` (IPv4 in `[0]`); ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// `ct_dir::*`.
    pub dir: u8,
    pub pad: u8,
}

pub mod ct_dir {
    /// Client → frontend, as the client sent it.
    pub const ORIGINAL: u8 = 0;
    /// Backend → client (or → the SNAT address), as the backend sent it.
    pub const REPLY: u8 = 1;
}

/// Value of `LB_CONNTRACK`: the tuple a packet matching the key is rewritten to. For `ORIGINAL`:
/// destination = the backend, source = the SNAT address and port (or the client, unchanged). For
/// `REPLY`: source = the frontend, destination = the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtValue {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// `ct_flags::*`.
    pub flags: u16,
    pub pad: u16,
    /// Backend id chosen for the flow (0 on REPLY entries).
    pub backend: u32,
    /// `LB_BACKEND_EPOCH` when the flow's backend was last found programmed (0: not yet): while
    /// the two are equal, no backend has been removed since, and the check is skipped.
    pub epoch: u32,
    /// `bpf_ktime_get_coarse_ns` of the last packet in either direction.
    pub last_seen: u64,
}

pub mod ct_flags {
    /// The entry rewrites the source too (SNAT to this node's address, backend on another node).
    pub const SNAT: u16 = 1 << 0;
    /// A reply was seen (TCP: the handshake went through).
    pub const SEEN_REPLY: u16 = 1 << 1;
    /// TCP FIN seen from both sides, or RST: the entry expires soon.
    pub const CLOSING: u16 = 1 << 2;
    /// TCP FIN seen from the client (half-closed; the server may still send for a long time).
    pub const FIN_ORIGINAL: u16 = 1 << 3;
    /// TCP FIN seen from the backend.
    pub const FIN_REPLY: u16 = 1 << 4;
}

/// Conntrack lifetimes since the last packet, in nanoseconds (Cilium's defaults).
pub mod ct_timeout {
    const SEC: u64 = 1_000_000_000;
    /// TCP before a reply was seen.
    pub const TCP_SYN: u64 = 60 * SEC;
    pub const TCP_ESTABLISHED: u64 = 21_600 * SEC;
    /// TCP after a FIN from each side, or a RST.
    pub const TCP_CLOSING: u64 = 10 * SEC;
    pub const OTHER: u64 = 60 * SEC;
}

/// Lifetime of a conntrack entry with `flags` for protocol `proto`, in nanoseconds.
pub const fn ct_lifetime(proto: u8, flags: u16) -> u64 {
    if proto != proto::TCP {
        ct_timeout::OTHER
    } else if flags & ct_flags::CLOSING != 0 {
        ct_timeout::TCP_CLOSING
    } else if flags & ct_flags::SEEN_REPLY != 0 {
        ct_timeout::TCP_ESTABLISHED
    } else {
        ct_timeout::TCP_SYN
    }
}

/// Ports the TC programs pick SNAT source ports from (host order, inclusive), outside Linux's
/// default ephemeral range (32768–60999) so they never collide with the node's own sockets.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// The backends' epoch (`LB_BACKEND_EPOCH`, an array of one `u32`). A tracked flow whose backend
/// is no longer programmed starts over (kube-proxy clears the conntrack entries of removed
/// endpoints); checking that costs a hash lookup per packet. The agent raises the epoch when it
/// opens the maps (so it is not 0 once an agent runs) and after writes that removed a backend; a
/// flow's entry records the epoch at which its backend was last found programmed, and while the
/// two are equal no backend has gone since: no lookup. 0 means not known: checked.
pub mod backend_epoch {
    /// The epoch after `epoch`, never 0.
    #[inline(always)]
    pub const fn next(epoch: u32) -> u32 {
        match epoch.wrapping_add(1) {
            0 => 1,
            e => e,
        }
    }
}

/// The conntrack gate (`LB_CT_GATE`, an array of `u8`): the destinations (address, port,
/// protocol) that may be a frontend or have an original-direction conntrack entry, so that a
/// packet to any other destination skips both lookups. Slot `slot(...)` is set to 1 by the agent
/// before it writes a frontend, and by the programs before they store an original-direction
/// entry; nothing clears one (another destination sharing the slot only costs its packets the
/// lookups). Slot `READY` holds 1 once the agent has opened the slots of every frontend and
/// conntrack entry the maps held when its programs took over (`lb-agent`'s `kernel::ct_gate`);
/// until then no lookup is skipped.
pub mod ct_gate {
    /// Slots; a power of two. 4 MiB: at 100,000 Services the frontends and flows' destinations
    /// (a few hundred thousand) open a few percent of them (with 65,536 slots nearly every slot
    /// was open, and packets to no frontend paid both lookups again).
    pub const SLOTS: u32 = 1 << 22;
    /// Index of the ready flag, after the slots.
    pub const READY: u32 = SLOTS;
    /// Entries of the map.
    pub const ENTRIES: u32 = SLOTS + 1;

    /// The slot of a destination (`dst` as in `CtKey::dst`, port in network byte order).
    #[inline(always)]
    pub const fn slot(dst: &[u32; 4], dport: u16, proto: u8) -> u32 {
        let x = dst[0] ^ dst[1] ^ dst[2] ^ dst[3] ^ ((dport as u32) << 8) ^ proto as u32;
        x.wrapping_mul(0x9e37_79b1) >> (32 - SLOTS.trailing_zeros())
    }
}

/// Hash of a flow's client side and service port, the same on every node and in the agent (used
/// to pick a slot: with a Maglev table every node picks the same backend for a flow). The
/// destination address is left out so a NodePort flow hashes alike whichever node it reaches.
/// `src` as in `Backend::addr`; ports in network byte order.
#[inline(always)]
pub const fn flow_hash(src: &[u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x9e37_79b9 ^ proto as u32;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, (sport as u32) << 16 | dport as u32);
    fmix(h)
}

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// How a frontend's backend is chosen: the rules the kernel programs follow (`lb-ebpf`'s
/// `lb::resolve`) and the agent's read-backs (`explain`, `inspect`) restate, written once. Every
/// function is `#[inline(always)]` and panic-free (no division by zero) so the verifier sees the
/// same code as if it were written in place.
pub mod select {
    use super::{AffinityValue, FrontendValue, frontend_flags};
    use core::ops::RangeInclusive;

    /// Which slot range of a frontend a hook uses (see `FrontendValue`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Path {
        /// The socket hooks: this node's own connections, slots `1..=count`.
        Socket,
        /// TC/XDP: packets from outside, slots `ext_offset+1..=ext_offset+ext_count`.
        Packet,
    }

    impl Path {
        /// The path whose affinity entries have `kind` (`affinity_kind::*`): the socket hooks
        /// key clients by network namespace, the packet path by source address.
        #[inline(always)]
        pub const fn of_affinity_kind(kind: u8) -> Self {
            if kind == super::affinity_kind::NETNS { Self::Socket } else { Self::Packet }
        }
    }

    /// What a path does with a new connection or flow when its slot range is empty.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum WhenEmpty {
        /// No endpoint at all: refuse (kube-proxy's REJECT; ECONNREFUSED at the socket).
        Reject,
        /// Endpoints exist, none this frontend's Local traffic policy may use (kube-proxy's DROP;
        /// EHOSTUNREACH at the socket): `frontend_flags::DROP_WHEN_EMPTY`.
        Drop,
    }

    impl FrontendValue {
        /// The slot range `path` uses, as `(offset, count)`: slots `offset+1..=offset+count`.
        #[inline(always)]
        pub const fn slot_range(&self, path: Path) -> (u32, u32) {
            match path {
                Path::Socket => (0, self.count),
                Path::Packet => (self.ext_offset, self.ext_count),
            }
        }

        /// What an empty slot range means for this frontend.
        #[inline(always)]
        pub const fn when_empty(&self) -> WhenEmpty {
            if self.flags & frontend_flags::DROP_WHEN_EMPTY != 0 {
                WhenEmpty::Drop
            } else {
                WhenEmpty::Reject
            }
        }

        /// The session-affinity timeout in nanoseconds (the clock of `AffinityValue::last_used`);
        /// 0: no affinity.
        #[inline(always)]
        pub const fn affinity_timeout_ns(&self) -> u64 {
            self.affinity_timeout as u64 * 1_000_000_000
        }
    }

    /// The slots `offset+1..=offset+count` (slots are 1-based; slot 0 is never written). Empty
    /// when `count == 0`.
    #[inline(always)]
    pub const fn slots(offset: u32, count: u32) -> RangeInclusive<u32> {
        offset.saturating_add(1)..=offset.saturating_add(count)
    }

    /// The slot `hash` picks in the range `(offset, count)`: `offset + hash % count + 1`.
    /// `None` when the range is empty.
    #[inline(always)]
    pub const fn slot_of(hash: u32, offset: u32, count: u32) -> Option<u32> {
        if count == 0 {
            return None;
        }
        Some(offset.wrapping_add(hash % count + 1))
    }

    /// Whether `slot` lies in the range `(offset, count)`.
    #[inline(always)]
    pub const fn in_range(slot: u32, offset: u32, count: u32) -> bool {
        slot > offset && slot - offset <= count
    }

    impl AffinityValue {
        /// The client came back within the timeout: at most `timeout_ns` since `last_used`.
        #[inline(always)]
        pub const fn fresh(&self, now: u64, timeout_ns: u64) -> bool {
            now.saturating_sub(self.last_used) <= timeout_ns
        }

        /// The entry still holds for a new connection at `now` on the path with slot range
        /// `(offset, count)`: fresh, and its slot in the range. The caller checks too that the
        /// slot still names `backend` (a map lookup).
        #[inline(always)]
        pub const fn holds(&self, now: u64, timeout_ns: u64, offset: u32, count: u32) -> bool {
            self.fresh(now, timeout_ns) && in_range(self.slot, offset, count)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn frontend() -> FrontendValue {
            FrontendValue { group: 7, count: 4, flags: 0, affinity_timeout: 10, ext_offset: 4, ext_count: 2 }
        }

        #[test]
        fn each_path_has_its_range() {
            let f = frontend();
            assert_eq!(f.slot_range(Path::Socket), (0, 4));
            assert_eq!(f.slot_range(Path::Packet), (4, 2));
            assert_eq!(slots(0, 4), 1..=4);
            assert_eq!(slots(4, 2), 5..=6);
            assert!(slots(4, 0).is_empty());
            assert_eq!(Path::of_affinity_kind(super::super::affinity_kind::NETNS), Path::Socket);
            assert_eq!(Path::of_affinity_kind(super::super::affinity_kind::IPV4), Path::Packet);
            assert_eq!(Path::of_affinity_kind(super::super::affinity_kind::IPV6), Path::Packet);
        }

        #[test]
        fn the_hash_picks_a_one_based_slot_in_the_range() {
            assert_eq!(slot_of(0, 0, 4), Some(1));
            assert_eq!(slot_of(3, 0, 4), Some(4));
            assert_eq!(slot_of(4, 0, 4), Some(1));
            assert_eq!(slot_of(u32::MAX, 4, 2), Some(6), "u32::MAX % 2 == 1");
            assert_eq!(slot_of(7, 4, 0), None, "an empty range names no slot");
            for hash in [0, 1, 2, 99, u32::MAX] {
                let slot = slot_of(hash, 4, 2).expect("slot");
                assert!(in_range(slot, 4, 2), "{slot}");
            }
        }

        #[test]
        fn an_empty_range_rejects_unless_the_frontend_drops() {
            let mut f = frontend();
            assert_eq!(f.when_empty(), WhenEmpty::Reject);
            f.flags = frontend_flags::DROP_WHEN_EMPTY | frontend_flags::NODE_PORT;
            assert_eq!(f.when_empty(), WhenEmpty::Drop);
        }

        #[test]
        fn an_affinity_entry_holds_while_fresh_and_in_range() {
            const SEC: u64 = 1_000_000_000;
            let f = frontend();
            let timeout = f.affinity_timeout_ns();
            assert_eq!(timeout, 10 * SEC);
            let entry = AffinityValue { backend: 3, slot: 5, last_used: 5 * SEC };
            let (offset, count) = f.slot_range(Path::Packet);
            assert!(entry.holds(15 * SEC, timeout, offset, count), "exactly the timeout: kept");
            assert!(!entry.holds(15 * SEC + 1, timeout, offset, count), "expired");
            assert!(entry.holds(0, timeout, offset, count), "a clock behind the entry: idle 0");
            let (offset, count) = f.slot_range(Path::Socket);
            assert!(entry.fresh(6 * SEC, timeout));
            assert!(!entry.holds(6 * SEC, timeout, offset, count), "slot 5 is outside the socket range");
            assert!(!in_range(4, 4, 2) && in_range(5, 4, 2) && in_range(6, 4, 2) && !in_range(7, 4, 2));
            assert!(!in_range(0, 0, 4), "slot 0 is never in a range");
        }
    }
}

/// Indexes of the per-CPU counters in `LB_STATS` (a `PERCPU_ARRAY` of `u64`).
pub mod stats {
    /// Connects/sends to a frontend rewritten to a backend.
    pub const TRANSLATED: u32 = 0;
    /// Connects/sends to a frontend with no usable backend, refused with ECONNREFUSED.
    pub const NO_BACKEND: u32 = 1;
    /// A slot or backend lookup missed (must stay 0: the write order forbids it).
    pub const LOOKUP_MISS: u32 = 2;
    /// Replies whose source was rewritten back to the frontend (recvmsg/getpeername).
    pub const REVNAT: u32 = 3;
    /// Packets to a frontend translated at TC (new flows and flows in the conntrack table).
    pub const TC_TRANSLATED: u32 = 4;
    /// Reply packets translated back at TC.
    pub const TC_REVNAT: u32 = 5;
    /// New flows at TC: a backend was chosen and conntrack entries were made.
    pub const TC_NEW_FLOW: u32 = 6;
    /// Packets to a frontend without a usable backend, dropped at TC.
    pub const TC_DROPPED: u32 = 7;
    /// New flows dropped at TC because no SNAT port or route was found.
    pub const TC_NAT_FAILED: u32 = 8;
    /// Translated packets sent out by redirect (after a FIB lookup) rather than the stack.
    pub const TC_REDIRECTED: u32 = 9;
    /// New flows to a LoadBalancer frontend from a source outside its `loadBalancerSourceRanges`,
    /// dropped at TC.
    pub const TC_SOURCE_DENIED: u32 = 10;
    /// The same seven at XDP (`--xdp`), which handles only flows to remote backends whole
    /// (translated and sent out again without the stack).
    pub const XDP_TRANSLATED: u32 = 11;
    pub const XDP_REVNAT: u32 = 12;
    pub const XDP_NEW_FLOW: u32 = 13;
    pub const XDP_DROPPED: u32 = 14;
    pub const XDP_NAT_FAILED: u32 = 15;
    /// Sent out by XDP_TX (same device) or XDP_REDIRECT.
    pub const XDP_REDIRECTED: u32 = 16;
    pub const XDP_SOURCE_DENIED: u32 = 17;
    /// Packets of a frontend or a tracked flow that XDP left, untouched, to TC: a local backend,
    /// an unresolved next hop, or an output device without XDP.
    pub const XDP_DEFERRED: u32 = 18;
    pub const COUNT: u32 = 19;
    pub const NAMES: [&str; COUNT as usize] = [
        "translated",
        "no_backend",
        "lookup_miss",
        "revnat",
        "tc_translated",
        "tc_revnat",
        "tc_new_flow",
        "tc_dropped",
        "tc_nat_failed",
        "tc_redirected",
        "tc_source_denied",
        "xdp_translated",
        "xdp_revnat",
        "xdp_new_flow",
        "xdp_dropped",
        "xdp_nat_failed",
        "xdp_redirected",
        "xdp_source_denied",
        "xdp_deferred",
    ];
}

/// Value of `LB_SERVICES` (key: backend group id `u32`): the Service port a group serves, so
/// the CLI can print `default/web:http` next to a frontend. Written by the agent only (the
/// programs never read it). Strings are UTF-8, NUL-padded; Kubernetes limits namespaces and
/// names to 63 bytes and port names to 15.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: [u8; 64],
    pub name: [u8; 64],
    pub port: [u8; 16],
    /// IANA protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// `service_scope::*`.
    pub scope: u8,
    pub pad: [u8; 5],
}

pub mod service_scope {
    /// ClusterIP and traffic from this node: the Service's internal traffic policy.
    pub const CLUSTER: u8 = 0;
    /// NodePort, LoadBalancer and external IPs: the external traffic policy.
    pub const EXTERNAL: u8 = 1;
}

/// Value of `LB_SERVICE_STATS`, a per-CPU hash keyed by backend group id: what happened to new
/// connections and flows of one group, by path and verdict (`service_stats::*` indexes). The
/// agent creates a zeroed entry with the group's name and deletes it with the group, so a
/// recycled id starts from zero; the programs only count into an entry that exists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceStats {
    pub counters: [u64; service_stats::COUNT as usize],
}

/// Indexes in `ServiceStats::counters`.
pub mod service_stats {
    /// Connects/sends from this node rewritten to a backend (socket hooks).
    pub const SOCKET_TRANSLATED: u32 = 0;
    /// Connects/sends refused (no endpoint: ECONNREFUSED; none local: EHOSTUNREACH).
    pub const SOCKET_NO_BACKEND: u32 = 1;
    /// TC: new flows translated, dropped for lack of a backend, dropped by
    /// `loadBalancerSourceRanges`, dropped for lack of an SNAT port or route.
    pub const TC_NEW_FLOW: u32 = 2;
    pub const TC_NO_BACKEND: u32 = 3;
    pub const TC_SOURCE_DENIED: u32 = 4;
    pub const TC_NAT_FAILED: u32 = 5;
    /// The same four at XDP (flows it finished itself).
    pub const XDP_NEW_FLOW: u32 = 6;
    pub const XDP_NO_BACKEND: u32 = 7;
    pub const XDP_SOURCE_DENIED: u32 = 8;
    pub const XDP_NAT_FAILED: u32 = 9;
    pub const COUNT: u32 = 10;
    /// Offsets from `TC_NEW_FLOW` / `XDP_NEW_FLOW` (the packet hooks count alike).
    pub const NEW_FLOW: u32 = 0;
    pub const NO_BACKEND: u32 = 1;
    pub const SOURCE_DENIED: u32 = 2;
    pub const NAT_FAILED: u32 = 3;
    /// `(path, verdict)` of each index, as the agent's metrics label them.
    pub const LABELS: [(&str, &str); COUNT as usize] = [
        ("socket", "translated"),
        ("socket", "no_backend"),
        ("tc", "translated"),
        ("tc", "no_backend"),
        ("tc", "source_denied"),
        ("tc", "nat_failed"),
        ("xdp", "translated"),
        ("xdp", "no_backend"),
        ("xdp", "source_denied"),
        ("xdp", "nat_failed"),
    ];
}

/// Value of `LB_AGENT`, an array of one entry the agent rewrites after every sync: what
/// `lb-agent status` shows while the agent is down too. The programs never read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentStatus {
    /// `SCHEMA_VERSION` of the agent that last wrote the maps.
    pub schema: u32,
    /// Process id of that agent.
    pub pid: u32,
    /// Wall-clock times, milliseconds since the Unix epoch (0: never).
    pub started_ms: u64,
    pub last_sync_ms: u64,
    /// Last sync that left the maps equal to the source.
    pub last_applied_ms: u64,
    /// How long the last sync took, in microseconds.
    pub last_sync_us: u64,
    pub syncs: u64,
    pub failed_syncs: u64,
    /// `sync_result::*` of the last sync.
    pub last_result: u8,
    /// `source_state::*`.
    pub source: u8,
    /// 1 once the first full sync is in the maps and the programs are attached.
    pub ready: u8,
    pub pad: [u8; 5],
}

pub mod sync_result {
    pub const NONE: u8 = 0;
    pub const APPLIED: u8 = 1;
    /// The source could not be read: the last good state stays programmed.
    pub const SOURCE_INVALID: u8 = 2;
    /// A map write failed: nothing half-applied is visible; retried.
    pub const MAPS_FAILED: u8 = 3;
    /// The desired state does not fit a map's capacity: nothing was written; it stays so until
    /// the source shrinks or the agent gets larger maps.
    pub const MAPS_FULL: u8 = 4;
}

pub mod source_state {
    pub const UNKNOWN: u8 = 0;
    /// A YAML file or directory.
    pub const FILE: u8 = 1;
    /// Kubernetes: the initial list is not complete yet.
    pub const LISTING: u8 = 2;
    /// Kubernetes: every watch is running.
    pub const WATCHING: u8 = 3;
    /// Kubernetes: a watch failed and is being retried; the last state stays programmed.
    pub const RECONNECTING: u8 = 4;
}

/// Fields a `MapLayout` describes per key or value.
pub const LAYOUT_FIELDS: usize = 16;

/// One field of a map's key or value, as `LB_META` records it: a name (UTF-8, NUL-padded), its
/// byte offset and size. Fields are matched by name when an upgrade converts a map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldLayout {
    pub name: [u8; 20],
    pub offset: u16,
    pub size: u16,
}

/// Key of `LB_META`: a map's name (as in `map_names`), NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetaKey {
    pub name: [u8; 24],
}

/// Value of `LB_META`, a hash of one entry per pinned map written by the agent that created the
/// maps (the programs never read it): the layout of the map's key and value, so a later agent
/// with other types can convert the entries field by field (`datapath/migrate.rs`). A map with
/// no entry has schema 1's layout. This type and `LB_META`'s shape never change (a new layout
/// record would be a new map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapLayout {
    /// `SCHEMA_VERSION` of the agent that created the map.
    pub schema: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// Fields used in `key` and `value`.
    pub key_fields: u16,
    pub value_fields: u16,
    pub key: [FieldLayout; LAYOUT_FIELDS],
    pub value: [FieldLayout; LAYOUT_FIELDS],
}

const _: () = assert!(size_of::<FieldLayout>() == 24);
const _: () = assert!(size_of::<MapLayout>() == 784);
const _: () = assert!(size_of::<Frontend4Key>() == 8);
const _: () = assert!(size_of::<Frontend6Key>() == 20);
const _: () = assert!(size_of::<FrontendValue>() == 24);
const _: () = assert!(size_of::<SlotKey>() == 8);
const _: () = assert!(size_of::<SlotValue>() == 4);
const _: () = assert!(size_of::<Backend>() == 24);
const _: () = assert!(size_of::<RevNat4Key>() == 16);
const _: () = assert!(size_of::<RevNat4Value>() == 8);
const _: () = assert!(size_of::<RevNat6Key>() == 32);
const _: () = assert!(size_of::<RevNat6Value>() == 20);
const _: () = assert!(size_of::<SockRevNatEntry>() == 40);
const _: () = assert!(size_of::<SockRevNat>() == 168);
const _: () = assert!(size_of::<CtKey>() == 40);
const _: () = assert!(size_of::<CtValue>() == 56);
const _: () = assert!(size_of::<SourceRangeKey>() == 20);
const _: () = assert!(size_of::<AffinityKey>() == 24);
const _: () = assert!(size_of::<AffinityValue>() == 16);
const _: () = assert!(size_of::<ServiceName>() == 152);
const _: () = assert!(size_of::<ServiceStats>() == 80);
const _: () = assert!(size_of::<AgentStatus>() == 64);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // Safety: every type below is `#[repr(C)]`, `Copy`, made only of integers with explicit padding
    // fields (checked by the size assertions above), so any bit pattern is a valid value.
    unsafe impl aya::Pod for Frontend4Key {}
    unsafe impl aya::Pod for Frontend6Key {}
    unsafe impl aya::Pod for FrontendValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for SlotValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat4Key {}
    unsafe impl aya::Pod for RevNat4Value {}
    unsafe impl aya::Pod for RevNat6Key {}
    unsafe impl aya::Pod for RevNat6Value {}
    unsafe impl aya::Pod for SockRevNatEntry {}
    unsafe impl aya::Pod for SockRevNat {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for AgentStatus {}
    unsafe impl aya::Pod for FieldLayout {}
    unsafe impl aya::Pod for MetaKey {}
    unsafe impl aya::Pod for MapLayout {}
}
