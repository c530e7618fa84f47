//! Reading the TC programs' conntrack table (`LB_CONNTRACK`) for `lb-agent inspect conntrack`:
//! one row per flow (its original-direction entry), with what it was translated to.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap, MapData};
use lb_common::{CtKey, CtValue, ct_dir, ct_flags, ct_lifetime, map_names};
use serde::Serialize;

use crate::{
    kernel::maps::MapsError,
    layout::state::{word_ip4, words_ip6},
};

/// One tracked flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    pub protocol: u8,
    /// The client, as it sent the packets.
    pub client: SocketAddr,
    /// The frontend it addressed.
    pub frontend: SocketAddr,
    /// The backend the flow goes to.
    pub backend: SocketAddr,
    /// The source the backend sees, when not the client's: SNATed (backend on another node), or
    /// the client's address from another port (the client's port was taken towards that backend).
    pub snat: Option<SocketAddr>,
    /// `syn`, `established` or `closing` for TCP; `-` otherwise.
    pub state: &'static str,
    /// Seconds since the last packet.
    pub idle_seconds: u64,
    /// Still live (not past its lifetime; an expired entry is reused by the next packet).
    pub live: bool,
}

fn addr(family: u8, words: &[u32; 4], port: u16) -> SocketAddr {
    let ip = if family == 4 { IpAddr::V4(word_ip4(words[0])) } else { IpAddr::V6(words_ip6(*words)) };
    SocketAddr::new(ip, u16::from_be(port))
}

/// Whether an original-direction entry rewrites the source: SNAT, or the client's port alone.
pub fn translated_source(key: &CtKey, value: &CtValue) -> bool {
    value.flags & ct_flags::SNAT != 0 || value.src != key.src || value.sport != key.sport
}

/// The row of one original-direction entry, at time `now` (ns).
pub fn row(key: &CtKey, value: &CtValue, now: u64) -> FlowRow {
    let tcp = key.proto == lb_common::proto::TCP;
    let state = match (tcp, value.flags) {
        (false, _) => "-",
        (true, f) if f & ct_flags::CLOSING != 0 => "closing",
        (true, f) if f & ct_flags::SEEN_REPLY != 0 => "established",
        (true, _) => "syn",
    };
    let idle = now.saturating_sub(value.last_seen);
    FlowRow {
        protocol: key.proto,
        client: addr(key.family, &key.src, key.sport),
        frontend: addr(key.family, &key.dst, key.dport),
        backend: addr(key.family, &value.dst, value.dport),
        snat: translated_source(key, value).then(|| addr(key.family, &value.src, value.sport)),
        state,
        idle_seconds: idle / 1_000_000_000,
        live: idle <= ct_lifetime(key.proto, value.flags),
    }
}

/// The pinned conntrack map under `bpffs`.
pub fn open(bpffs: &Path) -> Result<HashMap<MapData, CtKey, CtValue>, MapsError> {
    let path = bpffs.join(map_names::CONNTRACK);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open { path: path.clone(), source })?;
    HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(|source| MapsError::Open { path, source })
}

/// Every flow in the pinned conntrack map under `bpffs`, sorted.
pub fn flows(bpffs: &Path) -> Result<Vec<FlowRow>, MapsError> {
    let map = open(bpffs)?;
    let now = super::affinity::monotonic_ns();
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (key, value) = entry.map_err(|source| MapsError::Read { name: map_names::CONNTRACK, source })?;
        if key.dir == ct_dir::ORIGINAL {
            rows.push(row(&key, &value, now));
        }
    }
    rows.sort_by_key(|r| (r.frontend, r.client, r.protocol));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::state::ip4_word;

    #[test]
    fn rows_name_client_frontend_backend_and_snat() {
        let w = |s: &str| [ip4_word(s.parse().expect("ip")), 0, 0, 0];
        let key = CtKey {
            src: w("10.0.1.2"),
            dst: w("10.0.1.1"),
            sport: 40000u16.to_be(),
            dport: 30080u16.to_be(),
            proto: 6,
            family: 4,
            dir: ct_dir::ORIGINAL,
            pad: 0,
        };
        let value = CtValue {
            src: w("10.0.2.1"),
            dst: w("10.244.2.2"),
            sport: 61000u16.to_be(),
            dport: 8080u16.to_be(),
            flags: ct_flags::SNAT | ct_flags::SEEN_REPLY,
            pad: 0,
            backend: 0,
            epoch: 0,
            last_seen: 1_000_000_000,
        };
        let r = row(&key, &value, 3_500_000_000);
        assert_eq!(r.client.to_string(), "10.0.1.2:40000");
        assert_eq!(r.frontend.to_string(), "10.0.1.1:30080");
        assert_eq!(r.backend.to_string(), "10.244.2.2:8080");
        assert_eq!(r.snat.map(|s| s.to_string()).as_deref(), Some("10.0.2.1:61000"));
        assert_eq!((r.state, r.idle_seconds, r.live), ("established", 2, true));
        let closing = CtValue { flags: ct_flags::CLOSING, ..value };
        // Not SNAT: no source shown, unless the client's port was replaced.
        let direct = CtValue { src: key.src, sport: key.sport, flags: 0, ..value };
        assert_eq!(row(&key, &direct, 3_500_000_000).snat, None);
        let remapped = CtValue { sport: 61005u16.to_be(), ..direct };
        assert_eq!(
            row(&key, &remapped, 3_500_000_000).snat.map(|s| s.to_string()).as_deref(),
            Some("10.0.1.2:61005")
        );
        assert!(!row(&key, &closing, 20_000_000_000).live, "10 s after FIN the entry is expired");
    }
}
