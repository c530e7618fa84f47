//! Reading the session-affinity table (`LB_AFFINITY`, written by the kernel programs only) for
//! `lb-agent inspect affinity`: one row per client and backend group, with whether the kernel
//! would still keep the client on its backend.
use std::{net::IpAddr, path::Path};

use aya::maps::{HashMap, MapData};
use lb_common::{AffinityKey, AffinityValue, SlotKey, affinity_kind, map_names, select::Path as SlotPath};
use serde::Serialize;

use crate::{
    kernel::maps::MapsError,
    layout::state::{MapState, backend_addr, word_ip4, words_ip6},
};

/// One client's affinity to a backend of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityRow {
    pub group: u32,
    /// The client: its address (packets from outside, TC) or `netns:<cookie>` (the node's own
    /// sockets, by network namespace).
    pub client: String,
    /// The backend id the client is kept on.
    pub backend_id: u32,
    /// Its address, while the backend exists.
    pub backend: Option<String>,
    /// The slot of `group` the backend was found in.
    pub slot: u32,
    /// Milliseconds since the client's last new connection.
    pub idle_ms: u64,
    /// The group's affinity timeout in seconds, from its frontends (`None`: no frontend of the
    /// group has affinity on now).
    pub timeout_seconds: Option<u32>,
    /// `active`: the next connection keeps this backend; `expired`: idle longer than the timeout
    /// (or affinity is off); `stale`: the slot no longer names the backend (the set changed).
    /// Either way the next connection picks anew and replaces the entry.
    pub state: &'static str,
}

fn client(key: &AffinityKey) -> String {
    match key.kind {
        affinity_kind::IPV4 => IpAddr::V4(word_ip4(key.client[0])).to_string(),
        affinity_kind::IPV6 => IpAddr::V6(words_ip6(key.client)).to_string(),
        affinity_kind::NETNS => {
            format!("netns:{}", u64::from(key.client[0]) | (u64::from(key.client[1]) << 32))
        }
        other => format!("kind {other}"),
    }
}

/// Nanoseconds on the clock the programs stamp the conntrack and affinity entries with
/// (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE).
pub fn monotonic_ns() -> u64 {
    crate::sys::time::monotonic_coarse_ns()
}

/// The row of one entry at time `now` (ns), judged against the programmed `state` as the kernel
/// judges it (`lb-ebpf/src/lb.rs`, `affine`, by `lb_common::select`): the socket hooks (`NETNS`)
/// use slots `1..=count`, the TC programs `ext_offset+1..=ext_offset+ext_count`.
pub fn row(key: &AffinityKey, value: &AffinityValue, state: &MapState, now: u64) -> AffinityRow {
    let frontend = state.frontends.values().find(|f| f.group == key.group);
    let timeout = frontend.map(|f| f.affinity_timeout).filter(|t| *t != 0);
    let idle = now.saturating_sub(value.last_used);
    let (offset, count) = frontend.map_or((0, 0), |f| f.slot_range(SlotPath::of_affinity_kind(key.kind)));
    let same = state.slots.get(&SlotKey { group: key.group, slot: value.slot }).map(|s| s.backend)
        == Some(value.backend);
    let state_name = match frontend.filter(|_| timeout.is_some()) {
        Some(f) if value.fresh(now, f.affinity_timeout_ns()) => {
            if value.holds(now, f.affinity_timeout_ns(), offset, count) && same { "active" } else { "stale" }
        }
        _ => "expired",
    };
    AffinityRow {
        group: key.group,
        client: client(key),
        backend_id: value.backend,
        backend: state.backends.get(&value.backend).map(|b| backend_addr(b).to_string()),
        slot: value.slot,
        idle_ms: idle / 1_000_000,
        timeout_seconds: timeout,
        state: state_name,
    }
}

/// The pinned affinity map under `bpffs`.
pub fn open(bpffs: &Path) -> Result<HashMap<MapData, AffinityKey, AffinityValue>, MapsError> {
    let path = bpffs.join(map_names::AFFINITY);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open { path: path.clone(), source })?;
    HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(|source| MapsError::Open { path, source })
}

/// Every entry of the pinned affinity map under `bpffs`, sorted by group and client.
pub fn entries(bpffs: &Path, state: &MapState) -> Result<Vec<AffinityRow>, MapsError> {
    let map = open(bpffs)?;
    let now = monotonic_ns();
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (key, value) = entry.map_err(|source| MapsError::Read { name: map_names::AFFINITY, source })?;
        rows.push(row(&key, &value, state, now));
    }
    rows.sort_by(|a, b| (a.group, &a.client).cmp(&(b.group, &b.client)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use lb_common::{FrontendValue, SlotValue, frontend_flags};

    use super::*;
    use crate::{
        layout::state::{FrontendKey, ip4_word},
        model::Protocol,
    };

    const SEC: u64 = 1_000_000_000;

    /// Group 7: socket slots 1..=2 (backends 1, 2), TC slots 3..=3 (backend 2), timeout 10 s.
    fn state() -> MapState {
        let mut s = MapState::default();
        let key = FrontendKey::new("10.96.0.10".parse().expect("ip"), 80, Protocol::Tcp);
        let value = FrontendValue {
            group: 7,
            count: 2,
            flags: frontend_flags::NODE_PORT,
            affinity_timeout: 10,
            ext_offset: 2,
            ext_count: 1,
        };
        s.frontends.insert(key, value);
        for (slot, backend) in [(1, 1), (2, 2), (3, 2)] {
            s.slots.insert(SlotKey { group: 7, slot }, SlotValue { backend });
        }
        s
    }

    fn netns(cookie: u64) -> AffinityKey {
        AffinityKey {
            group: 7,
            client: [cookie as u32, (cookie >> 32) as u32, 0, 0],
            kind: affinity_kind::NETNS,
            pad: [0; 3],
        }
    }

    #[test]
    fn entries_are_judged_as_the_kernel_judges_them() {
        let s = state();
        let v = |backend, slot, last_used| AffinityValue { backend, slot, last_used };
        let at = |key: &AffinityKey, value: AffinityValue, now| row(key, &value, &s, now).state;
        let ns = netns(0x1_0000_0002);
        assert_eq!(row(&ns, &v(2, 2, 0), &s, 0).client, "netns:4294967298");
        assert_eq!(at(&ns, v(2, 2, 5 * SEC), 15 * SEC), "active", "exactly the timeout: kept");
        assert_eq!(at(&ns, v(2, 2, 5 * SEC), 15 * SEC + 1), "expired");
        assert_eq!(at(&ns, v(1, 2, 5 * SEC), 6 * SEC), "stale", "slot 2 names another backend now");
        assert_eq!(at(&ns, v(2, 3, 5 * SEC), 6 * SEC), "stale", "slot 3 is outside the socket range");
        let ip = AffinityKey {
            group: 7,
            client: [ip4_word("10.0.1.2".parse().expect("ip")), 0, 0, 0],
            kind: affinity_kind::IPV4,
            pad: [0; 3],
        };
        assert_eq!(row(&ip, &v(2, 3, 0), &s, 0).client, "10.0.1.2");
        assert_eq!(at(&ip, v(2, 3, 5 * SEC), 6 * SEC), "active");
        assert_eq!(at(&ip, v(2, 2, 5 * SEC), 6 * SEC), "stale", "slot 2 is outside the TC range");
        let mut off = state();
        off.frontends.values_mut().for_each(|f| f.affinity_timeout = 0);
        assert_eq!(row(&ns, &v(2, 2, 5 * SEC), &off, 6 * SEC).state, "expired", "affinity turned off");
    }
}
