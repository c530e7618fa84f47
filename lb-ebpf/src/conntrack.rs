//! The TC programs' connection tracking (`LB_CONNTRACK`, an LRU hash): two entries per flow, one
//! per direction, each holding the tuple its packets are rewritten to. Either entry's value, with
//! source and destination swapped and the direction flipped, is the key of the other.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{CtKey, CtValue, ct_dir, ct_flags, ct_gate, ct_lifetime};

use crate::{
    maps::{LB_CONNTRACK, LB_CT_GATE},
    packet::Flow,
};

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of every timestamp in the maps (conntrack
/// `last_seen`, affinity `last_used`). Its tick (a few ms) is far below any lifetime it measures,
/// and it costs a memory read where the precise clock can cost hundreds of nanoseconds (a
/// virtual machine's clock source), paid by every packet that reaches the program.
#[inline(always)]
pub fn now() -> u64 {
    // Safety: bpf_ktime_get_coarse_ns has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Whether `flow`'s destination may be a frontend or have an original-direction entry: false
/// only when the gate is ready and the destination's slot was never opened
/// (`lb_common::ct_gate`). Two array reads: a packet to no frontend then costs no hash lookup.
#[inline(always)]
pub fn may_track(flow: &Flow) -> bool {
    if !matches!(LB_CT_GATE.get(ct_gate::READY), Some(ready) if *ready != 0) {
        return true;
    }
    let slot = ct_gate::slot(&flow.dst, flow.dport, flow.proto);
    !matches!(LB_CT_GATE.get(slot), Some(open) if *open == 0)
}

/// Opens the gate for `flow`'s destination; called before an original-direction entry for it is
/// stored. `Err`: the slot cannot be written, and the entry must not be stored.
#[inline(always)]
pub fn open_gate(flow: &Flow) -> Result<(), ()> {
    let slot = ct_gate::slot(&flow.dst, flow.dport, flow.proto);
    let open = LB_CT_GATE.get_ptr_mut(slot).ok_or(())?;
    // Safety: the pointer is to the slot's array element, valid for the program run. A plain
    // one-byte store (no read-modify-write), so concurrent writers cannot undo each other; it is
    // skipped when already set, to leave the cache line clean.
    unsafe {
        if *open == 0 {
            *open = 1;
        }
    }
    Ok(())
}

/// The key of `flow` in direction `dir`.
#[inline(always)]
pub fn key(flow: &Flow, dir: u8) -> CtKey {
    CtKey {
        src: flow.src,
        dst: flow.dst,
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        family: flow.family,
        dir,
        pad: 0,
    }
}

/// The key of the other direction's entry, from this entry's value.
#[inline(always)]
pub fn peer_key(key: &CtKey, value: &CtValue) -> CtKey {
    CtKey {
        src: value.dst,
        dst: value.src,
        sport: value.dport,
        dport: value.sport,
        proto: key.proto,
        family: key.family,
        dir: if key.dir == ct_dir::ORIGINAL { ct_dir::REPLY } else { ct_dir::ORIGINAL },
        pad: 0,
    }
}

#[inline(always)]
fn expired(proto: u8, value: &CtValue, now: u64) -> bool {
    now.wrapping_sub(value.last_seen) > ct_lifetime(proto, value.flags)
}

/// The live entry for `key` (expired entries count as absent), in place in the map (no copy: the
/// programs' stack is 512 bytes): read it through `Entry::value`, refresh it with `touch`.
#[inline(always)]
pub fn lookup(key: &CtKey, now: u64) -> Option<Entry> {
    let ptr = LB_CONNTRACK.get_ptr_mut(key)?;
    let entry = Entry(ptr);
    if expired(key.proto, entry.value(), now) { None } else { Some(entry) }
}

/// A conntrack entry found by `lookup`, in place in the map.
#[derive(Clone, Copy)]
pub struct Entry(*mut CtValue);

impl Entry {
    /// The entry's value.
    #[inline(always)]
    pub fn value(&self) -> &'static CtValue {
        // Safety: the pointer is to a map element, valid for this program run (an LRU eviction
        // or delete frees it only after the run). A concurrent update can at worst mix the
        // fields of two writes of the same flow, which carry the same addresses, and an eviction
        // racing with us makes this one packet go to a stale tuple, as in Cilium. The reference
        // is not held across `touch`, the only write.
        unsafe { &*self.0 }
    }

    /// Records that the entry's backend was found programmed at backend epoch `epoch`.
    #[inline(always)]
    pub fn set_epoch(&self, epoch: u32) {
        // Safety: as in `value`; a plain store of one field (a racing writer stores the same
        // epoch, or one that only makes the next packet check again).
        unsafe { (*self.0).epoch = epoch };
    }
}

/// How long after its last refresh an entry is refreshed again by a packet that changes no
/// TCP state: a sixteenth of its lifetime (0.6 s for a closing TCP flow, 3.75 s for a new one or
/// UDP, 22 min for an established TCP flow). A packet then writes nothing, and only this entry
/// is looked up: its peer (the other direction's entry, another lookup and more cold memory) is
/// refreshed with it. An entry's `last_seen` is thus at most 1/16 of its lifetime behind the
/// flow's last packet, and a flow idle for its whole lifetime expires at most that much early.
#[inline(always)]
fn refresh_after(proto: u8, flags: u16) -> u64 {
    ct_lifetime(proto, flags) >> 4
}

/// Marks a packet of a tracked flow (`entry`, found under `key`): records the TCP state in both
/// entries (`reply`: the packet came from the backend) and refreshes both timestamps, when the
/// state changes or the timestamp is older than `refresh_after`; otherwise writes nothing.
#[inline(always)]
pub fn touch(key: &CtKey, entry: Entry, tcp_flags: u8, reply: bool, now: u64) {
    let value = entry.value();
    let mut set = 0;
    if reply {
        set |= ct_flags::SEEN_REPLY;
    }
    // One FIN only half-closes (the other side may stream on for long): the short lifetime
    // starts with the second FIN, or with a RST.
    let fin = if reply { ct_flags::FIN_REPLY } else { ct_flags::FIN_ORIGINAL };
    if tcp_flags & crate::packet::TCP_RST != 0
        || (tcp_flags & crate::packet::TCP_FIN != 0
            && value.flags & !fin & (ct_flags::FIN_ORIGINAL | ct_flags::FIN_REPLY) != 0)
    {
        set |= ct_flags::CLOSING;
    }
    if tcp_flags & crate::packet::TCP_FIN != 0 {
        set |= fin;
    }
    // A new SYN on a closing entry is the client reusing its port: the flow starts over.
    let reopen = tcp_flags & crate::packet::TCP_SYN != 0 && tcp_flags & crate::packet::TCP_RST == 0 && !reply;
    let clear = if reopen { ct_flags::CLOSING | ct_flags::FIN_ORIGINAL | ct_flags::FIN_REPLY } else { 0 };
    let flags = value.flags;
    // Both entries' flags move together (updated alike), so when this one's would not change,
    // neither would the peer's, unless two CPUs raced on them and one lost a bit: a SYN, FIN or
    // RST always writes both, which makes them equal again (a reopened port must not find its
    // reply entry still closing).
    let control = tcp_flags & (crate::packet::TCP_SYN | crate::packet::TCP_FIN | crate::packet::TCP_RST) != 0;
    if !control
        && (flags & !clear) | set == flags
        && now.wrapping_sub(value.last_seen) < refresh_after(key.proto, flags)
    {
        return;
    }
    let peer = peer_key(key, value);
    mark(entry.0, set, clear, now);
    if let Some(other) = LB_CONNTRACK.get_ptr_mut(peer) {
        mark(other, set, clear, now);
    }
}

/// Refreshes one entry and updates its flags.
#[inline(always)]
fn mark(entry: *mut CtValue, set: u16, clear: u16, now: u64) {
    // Safety: `entry` points into a map element for this program run; the writes are plain
    // stores of a timestamp and flag bits (a racing writer can only lose a bit of TCP state,
    // which the next SYN, FIN or RST, or the next refresh, writes again into both entries).
    unsafe {
        (*entry).last_seen = now;
        (*entry).flags = ((*entry).flags & !clear) | set;
    }
}

/// Claims `key` for a new entry: only if it is absent, expired (then deleted first), or a live
/// entry of this same flow (its original entry was evicted: the reply entry already says the
/// same), and only if no other CPU claims it between the check and the insert (`BPF_NOEXIST`).
#[inline(always)]
pub fn claim(key: &CtKey, value: &CtValue, now: u64) -> Result<(), ()> {
    // Safety: plain-old-data value read in place.
    if let Some(old) = unsafe { LB_CONNTRACK.get(key) } {
        if !expired(key.proto, old, now) && !same_tuple(old, value) {
            return Err(());
        }
        let _ = LB_CONNTRACK.remove(key);
    }
    LB_CONNTRACK.insert(key, value, u64::from(aya_ebpf::bindings::BPF_NOEXIST)).map_err(|_| ())
}

/// Whether `key` holds a live entry of this same flow (as `claim` compares them).
#[inline(always)]
pub fn holds(key: &CtKey, value: &CtValue, now: u64) -> bool {
    // Safety: plain-old-data value read in place.
    match unsafe { LB_CONNTRACK.get(key) } {
        Some(old) => !expired(key.proto, old, now) && same_tuple(old, value),
        None => false,
    }
}

#[inline(always)]
fn same_tuple(a: &CtValue, b: &CtValue) -> bool {
    a.src == b.src && a.dst == b.dst && a.sport == b.sport && a.dport == b.dport
}

/// Stores an entry (replacing an expired one).
#[inline(always)]
pub fn store(key: &CtKey, value: &CtValue) -> Result<(), ()> {
    LB_CONNTRACK.insert(key, value, 0).map_err(|_| ())
}
