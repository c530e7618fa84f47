//! `explain` over map states laid out by `state::layout` from model groups, as the agent writes
//! them: one row per reason the kernel has for its decision.
use std::{collections::BTreeMap, net::SocketAddr};

use lb_common::{
    AffinityKey, AffinityValue, CtKey, CtValue, SlotKey, affinity_kind, ct_dir, ct_flags, flow_hash,
};
use serde_json::Value;

use super::*;
use crate::{
    layout::{
        maglev,
        state::{LayoutOptions, LbAlgorithm, Reserved, layout, layout_reserving},
        tests::{desired, group, sock, with_nodes},
    },
    model::{BackendGroup, Cidr, DesiredState, EndpointState, WhenEmpty},
};

const SEC: u64 = 1_000_000_000;
const CLIENT: &str = "198.51.100.7";
/// A Maglev table small enough to reason about (prime).
const TABLE: u32 = 13;

/// The live tables of a test: what the programs would have written.
#[derive(Default)]
struct Fake {
    affinity: BTreeMap<AffinityKey, AffinityValue>,
    flows: BTreeMap<CtKey, CtValue>,
    /// `LB_CT_GATE`'s non-zero entries; `None`: no gate (every packet looked up).
    gate: Option<BTreeMap<u32, u8>>,
}

impl LiveTables for Fake {
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
        self.affinity.get(key).copied()
    }
    fn flow(&self, key: &CtKey) -> Option<CtValue> {
        self.flows.get(key).copied()
    }
    fn gate(&self, index: u32) -> Option<u8> {
        self.gate.as_ref().map(|g| g.get(&index).copied().unwrap_or(0))
    }
}

fn maglev_layout(d: &DesiredState) -> MapState {
    let options = LayoutOptions { algorithm: LbAlgorithm::Maglev, maglev_size: TABLE };
    layout_reserving(d, &MapState::default(), &Reserved::default(), &options)
}

/// ClusterIP 10.96.0.10:80/TCP of `default/web:http` with three ready backends.
fn web() -> BackendGroup {
    group(
        "default/web:http",
        Protocol::Tcp,
        &["10.96.0.10:80"],
        &["10.244.1.2:8080", "10.244.2.2:8080", "10.244.3.2:8080"],
    )
}

/// externalIP 203.0.113.10:80 with three backends.
fn external() -> BackendGroup {
    group(
        "default/ext:http",
        Protocol::Tcp,
        &["ext 203.0.113.10:80"],
        &["10.244.1.2:8080", "10.244.2.2:8080", "10.244.3.2:8080"],
    )
}

/// NodePort 30080 on node address 192.168.1.10 with `externalTrafficPolicy: Local`: backend
/// 10.244.1.2 runs on this node, the other two elsewhere; `local_ready` says whether the local
/// one is in the Local set at all.
fn local_policy(local_ready: bool) -> DesiredState {
    let mut g = group(
        "default/np:http",
        Protocol::Tcp,
        &["np4 30080"],
        &["10.244.1.2:8080", "10.244.2.2:8080", "10.244.3.2:8080"],
    );
    g.backends[0].local = true;
    g.eligible = if local_ready { [sock("10.244.1.2:8080")].into() } else { [].into() };
    if !local_ready {
        g.when_empty = WhenEmpty::Drop;
    }
    with_nodes(desired(vec![g]), &["192.168.1.10"])
}

/// LoadBalancer 203.0.113.20:80 admitting 198.51.100.0/24 only, with `backends`.
fn guarded(backends: &[&str]) -> DesiredState {
    let mut g = group("default/lb:http", Protocol::Tcp, &["lb 203.0.113.20:80"], backends);
    g.source_ranges = vec![Cidr::parse("198.51.100.0/24").expect("cidr")];
    if backends.is_empty() {
        g.when_empty = WhenEmpty::Reject;
    }
    desired(vec![g])
}

/// The backend the kernel picks for a new flow from `client` to a frontend of `g` (maglev with
/// `TABLE` entries, one range), computed from the model rather than the maps: the flow hash with
/// both ports in network byte order, as `nat::new_flow` passes them from the packet.
fn maglev_pick(g: &BackendGroup, client: &str, to: &str) -> (u32, SocketAddr) {
    let (client, to): (SocketAddr, SocketAddr) = (sock(client), sock(to));
    let src = match client.ip() {
        IpAddr::V4(a) => [ip4_word(a), 0, 0, 0],
        IpAddr::V6(a) => ip6_words(a),
    };
    let hash = flow_hash(&src, client.port().to_be(), to.port().to_be(), lb_common::proto::TCP);
    let slot = hash % TABLE + 1;
    let table = maglev::table(&g.from_node, TABLE);
    (slot, g.from_node[table[(slot - 1) as usize]])
}

/// An affinity key of an IPv4 client of `group`.
fn affinity_key(state: &MapState, client: &str) -> AffinityKey {
    let group = state.frontends.values().next().expect("a frontend").group;
    let client = [ip4_word(client.parse().expect("ip")), 0, 0, 0];
    AffinityKey { group, client, kind: affinity_kind::IPV4, pad: [0; 3] }
}

/// One question and what the answer must say.
struct Case {
    name: &'static str,
    state: MapState,
    to: &'static str,
    from: Option<String>,
    path: Option<Path>,
    live: Fake,
    now: u64,
    /// `verdict.action` in the JSON.
    action: &'static str,
    /// `verdict.choice` for a translation.
    choice: Option<&'static str>,
    /// `verdict.backend.address`, when the backend is known.
    backend: Option<String>,
    /// `verdict.slot`.
    slot: Option<u32>,
    /// Eligible backend addresses, sorted.
    eligible: Vec<&'static str>,
    /// Not-eligible backend address → a piece of its reason.
    not_eligible: Vec<(&'static str, &'static str)>,
    /// Pieces of text that must appear in the summary, the verdict's reason or a note.
    says: Vec<&'static str>,
}

impl Case {
    fn new(name: &'static str, state: MapState, to: &'static str, action: &'static str) -> Self {
        Self {
            name,
            state,
            to,
            from: None,
            path: None,
            live: Fake::default(),
            now: 100 * SEC,
            action,
            choice: None,
            backend: None,
            slot: None,
            eligible: vec![],
            not_eligible: vec![],
            says: vec![],
        }
    }
}

fn check(case: &Case) {
    let name = case.name;
    let from = case.from.as_deref().map(|f| f.parse::<Source>().expect("test source"));
    let query = Query::new(case.to.parse().expect("test target"), from, case.path).expect("test query");
    let e = explain(&case.state, &query, &case.live, case.now);
    let json: Value = serde_json::to_value(&e).expect("serializable");
    let verdict = &json["verdict"];
    assert_eq!(verdict["action"], case.action, "{name}: {json:#}");
    if let Some(choice) = case.choice {
        assert_eq!(verdict["choice"], choice, "{name}: {json:#}");
    }
    if let Some(backend) = &case.backend {
        assert_eq!(verdict["backend"]["address"], backend.as_str(), "{name}: {json:#}");
    }
    if let Some(slot) = case.slot {
        assert_eq!(verdict["slot"], slot, "{name}: {json:#}");
    }
    let eligible: Vec<String> = e.eligible.iter().map(|b| b.backend.address.to_string()).collect();
    assert_eq!(eligible, case.eligible, "{name}: eligible");
    let not_eligible: Vec<(String, String)> =
        e.not_eligible.iter().map(|n| (n.backend.address.to_string(), n.reason.clone())).collect();
    assert_eq!(not_eligible.len(), case.not_eligible.len(), "{name}: not eligible {not_eligible:?}");
    for ((addr, reason), (want_addr, want_reason)) in not_eligible.iter().zip(&case.not_eligible) {
        assert_eq!(addr, want_addr, "{name}");
        assert!(reason.contains(want_reason), "{name}: {addr}: {reason:?} lacks {want_reason:?}");
    }
    let text = format!("{}\n{}\n{}", e.summary, verdict["reason"].as_str().unwrap_or(""), e.notes.join("\n"));
    for piece in &case.says {
        assert!(text.contains(piece), "{name}: {piece:?} missing from:\n{text}");
    }
    if !e.eligible.is_empty() {
        let total: f64 = e.eligible.iter().map(|b| b.share_percent).sum();
        assert!((total - 100.0).abs() < 1e-9, "{name}: shares add up to {total}");
    }
}

#[test]
fn explains_each_reason_as_the_kernel_decides() {
    let web_state = layout(&desired(vec![web()]), &MapState::default());
    let ext = external();
    let ext_state = maglev_layout(&desired(vec![ext.clone()]));
    let client = format!("{CLIENT}:40000");
    let (slot, pick) = maglev_pick(&ext, &client, "203.0.113.10:80");

    // Affinity: the client was last sent through a slot naming another backend than its hash would.
    let mut sticky = ext.clone();
    sticky.affinity_timeout = Some(60);
    let sticky_state = maglev_layout(&desired(vec![sticky.clone()]));
    let gid = sticky_state.frontends.values().next().expect("frontend").group;
    let (kept_slot, kept) = (1..=TABLE)
        .map(|s| (s, sticky_state.slots[&SlotKey { group: gid, slot: s }].backend))
        .find(|(_, id)| backend_addr(&sticky_state.backends[id]) != pick)
        .expect("a slot of another backend");
    let kept_addr = backend_addr(&sticky_state.backends[&kept]).to_string();
    let entry = AffinityValue { backend: kept, slot: kept_slot, last_used: 95 * SEC };
    let sticky_live = |entry| Fake {
        affinity: BTreeMap::from([(affinity_key(&sticky_state, CLIENT), entry)]),
        ..Fake::default()
    };

    let mut terminating = web();
    for b in &mut terminating.backends {
        b.state = EndpointState::Terminating;
    }
    let mut internal_local = web();
    internal_local.eligible = [].into();
    internal_local.from_node = [].into();
    internal_local.when_empty = WhenEmpty::Drop;

    let all = ["10.244.1.2:8080", "10.244.2.2:8080", "10.244.3.2:8080"];
    let cases = vec![
        Case {
            choice: Some("random"),
            eligible: all.to_vec(),
            says: vec!["one of 3 backends, a random slot per connection"],
            ..Case::new("translate, random", web_state.clone(), "10.96.0.10:80/TCP", "translate")
        },
        Case {
            from: Some(client.clone()),
            choice: Some("flow_hash"),
            backend: Some(pick.to_string()),
            slot: Some(slot),
            eligible: all.to_vec(),
            says: vec!["Maglev table of 13 entries over 3 backends", "by flow hash"],
            ..Case::new(
                "translate, maglev, exact slot",
                ext_state.clone(),
                "203.0.113.10:80/TCP",
                "translate",
            )
        },
        Case {
            from: Some(CLIENT.to_owned()),
            choice: Some("flow_hash"),
            eligible: all.to_vec(),
            says: vec!["give --from ADDR:PORT"],
            ..Case::new(
                "translate, maglev, no client port",
                ext_state.clone(),
                "203.0.113.10:80/TCP",
                "translate",
            )
        },
        Case {
            eligible: all.to_vec(),
            says: vec!["terminating fallback is in use"],
            ..Case::new(
                "terminating fallback",
                layout(&desired(vec![terminating]), &MapState::default()),
                "10.96.0.10:80/TCP",
                "translate",
            )
        },
        Case {
            from: Some(client.clone()),
            choice: Some("flow_hash"),
            backend: Some("10.244.1.2:8080".to_owned()),
            eligible: vec!["10.244.1.2:8080"],
            not_eligible: vec![("10.244.2.2:8080", "not local"), ("10.244.3.2:8080", "not local")],
            says: vec!["DNAT only", "two slot ranges"],
            ..Case::new(
                "not local on the packet path",
                layout(&local_policy(true), &MapState::default()),
                "192.168.1.10:30080/TCP",
                "translate",
            )
        },
        Case {
            eligible: all.to_vec(),
            ..Case::new(
                "every backend at the socket with a Local policy",
                layout(&local_policy(true), &MapState::default()),
                "192.168.1.10:30080/TCP",
                "translate",
            )
        },
        Case {
            from: Some(client.clone()),
            not_eligible: vec![
                ("10.244.1.2:8080", "not in the set for packets from outside"),
                ("10.244.2.2:8080", "not local"),
                ("10.244.3.2:8080", "not local"),
            ],
            says: vec![
                "drop: endpoints exist but none local",
                "tc_dropped",
                "slots 1..=3 for this node's own connections, no slot for packets from outside",
            ],
            ..Case::new(
                "no local endpoint on the packet path",
                layout(&local_policy(false), &MapState::default()),
                "192.168.1.10:30080/TCP",
                "drop",
            )
        },
        Case {
            says: vec!["reject: no endpoints", "ECONNREFUSED"],
            ..Case::new(
                "no endpoints, socket",
                layout(
                    &desired(vec![group("default/none:http", Protocol::Tcp, &["10.96.0.30:80"], &[])]),
                    &MapState::default(),
                ),
                "10.96.0.30:80/TCP",
                "reject",
            )
        },
        Case {
            from: Some(client.clone()),
            says: vec!["reject: no endpoints", "ICMP port unreachable", "dropped (tc_dropped)"],
            ..Case::new(
                "no endpoints, packet",
                layout(
                    &desired(vec![group("default/none:http", Protocol::Tcp, &["10.96.0.30:80"], &[])]),
                    &MapState::default(),
                ),
                "10.96.0.30:80/TCP",
                "reject",
            )
        },
        Case {
            says: vec!["drop: endpoints exist", "EHOSTUNREACH"],
            ..Case::new(
                "drop when empty",
                layout(&desired(vec![internal_local]), &MapState::default()),
                "10.96.0.10:80/TCP",
                "drop",
            )
        },
        Case {
            from: Some("192.0.2.9:1234".to_owned()),
            eligible: vec!["10.244.1.2:8080"],
            says: vec!["not in loadBalancerSourceRanges (198.51.100.0/24)", "tc_source_denied"],
            ..Case::new(
                "source denied",
                layout(&guarded(&["10.244.1.2:8080"]), &MapState::default()),
                "203.0.113.20:80/TCP",
                "source_denied",
            )
        },
        Case {
            from: Some("192.0.2.9:1234".to_owned()),
            says: vec!["before any backend is chosen"],
            ..Case::new(
                "source denied before the empty check",
                layout(&guarded(&[]), &MapState::default()),
                "203.0.113.20:80/TCP",
                "source_denied",
            )
        },
        Case {
            from: Some(client.clone()),
            backend: Some("10.244.1.2:8080".to_owned()),
            eligible: vec!["10.244.1.2:8080"],
            says: vec!["inside loadBalancerSourceRanges 198.51.100.0/24: admitted", "runs on another node"],
            ..Case::new(
                "source allowed",
                layout(&guarded(&["10.244.1.2:8080"]), &MapState::default()),
                "203.0.113.20:80/TCP",
                "translate",
            )
        },
        Case {
            from: Some("192.0.2.9".to_owned()),
            path: Some(Path::Socket),
            eligible: vec!["10.244.1.2:8080"],
            says: vec!["not checked by the socket hooks", "is not used on the socket path"],
            ..Case::new(
                "source ranges are not checked at the socket",
                layout(&guarded(&["10.244.1.2:8080"]), &MapState::default()),
                "203.0.113.20:80/TCP",
                "translate",
            )
        },
        Case {
            from: Some(client.clone()),
            live: sticky_live(entry),
            choice: Some("affinity"),
            backend: Some(kept_addr.clone()),
            slot: Some(kept_slot),
            eligible: all.to_vec(),
            says: vec!["affinity holds", "kept by session affinity", "timeout 60 s"],
            ..Case::new("affinity kept", sticky_state.clone(), "203.0.113.10:80/TCP", "translate")
        },
        Case {
            from: Some(client.clone()),
            live: sticky_live(entry),
            now: 95 * SEC + 60 * SEC + 1,
            choice: Some("flow_hash"),
            backend: Some(pick.to_string()),
            slot: Some(slot),
            eligible: all.to_vec(),
            says: vec!["does not hold (expired"],
            ..Case::new("affinity expired", sticky_state.clone(), "203.0.113.10:80/TCP", "translate")
        },
        Case {
            from: Some(client.clone()),
            live: sticky_live(AffinityValue { slot: kept_slot + TABLE, ..entry }),
            choice: Some("flow_hash"),
            backend: Some(pick.to_string()),
            eligible: all.to_vec(),
            says: vec!["outside this path's range"],
            ..Case::new(
                "affinity slot out of range",
                sticky_state.clone(),
                "203.0.113.10:80/TCP",
                "translate",
            )
        },
        Case {
            says: vec!["not a frontend: passed through untouched"],
            ..Case::new("not a frontend", web_state.clone(), "10.96.0.99:80/TCP", "not_a_frontend")
        },
        Case {
            says: vec!["10.96.0.10 is a frontend on 10.96.0.10:80/TCP only"],
            ..Case::new(
                "another port of a frontend address",
                web_state.clone(),
                "10.96.0.10:81/TCP",
                "not_a_frontend",
            )
        },
        Case {
            from: Some(client.clone()),
            says: vec!["parse TCP and UDP only"],
            ..Case::new(
                "SCTP at TC",
                layout(
                    &desired(vec![group(
                        "default/s:sctp",
                        Protocol::Sctp,
                        &["10.96.0.40:9"],
                        &["10.244.1.2:9"],
                    )]),
                    &MapState::default(),
                ),
                "10.96.0.40:9/SCTP",
                "untouched",
            )
        },
        Case {
            path: Some(Path::Socket),
            eligible: all.to_vec(),
            says: vec!["is v4-mapped"],
            ..Case::new(
                "v4-mapped at the socket",
                web_state.clone(),
                "[::ffff:10.96.0.10]:80/TCP",
                "translate",
            )
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn a_tracked_flow_is_named_with_its_backend() {
    let state = layout(&desired(vec![web()]), &MapState::default());
    let w = |s: &str| [ip4_word(s.parse().expect("ip")), 0, 0, 0];
    let backend =
        *state.backends.iter().find(|(_, b)| backend_addr(b) == sock("10.244.2.2:8080")).expect("b").0;
    let key = CtKey {
        src: w(CLIENT),
        dst: w("10.96.0.10"),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: lb_common::proto::TCP,
        family: 4,
        dir: ct_dir::ORIGINAL,
        pad: 0,
    };
    let value = CtValue {
        src: w(CLIENT),
        dst: w("10.244.2.2"),
        sport: 40000u16.to_be(),
        dport: 8080u16.to_be(),
        flags: ct_flags::SEEN_REPLY,
        pad: 0,
        backend,
        epoch: 0,
        last_seen: 90 * SEC,
    };
    let live = Fake { flows: BTreeMap::from([(key, value)]), ..Fake::default() };
    let query = Query::new(
        "10.96.0.10:80/TCP".parse().expect("target"),
        Some(format!("{CLIENT}:40000").parse().expect("source")),
        None,
    )
    .expect("query");
    let e = explain(&state, &query, &live, 100 * SEC);
    let tracked = e.tracked.as_ref().expect("tracked");
    assert_eq!(
        (tracked.backend, tracked.live, tracked.backend_programmed),
        (sock("10.244.2.2:8080"), true, true)
    );
    assert!(
        e.notes.iter().any(|n| n.contains("already tracked: its packets go to 10.244.2.2:8080")),
        "{e:#?}"
    );
    // Gone from the maps: the next packet starts a new flow.
    let mut gone = state.clone();
    gone.backends.remove(&backend);
    let e = explain(&gone, &query, &live, 100 * SEC);
    assert!(e.notes.iter().any(|n| n.contains("no longer programmed")), "{e:#?}");
}

#[test]
fn the_flow_hash_is_the_kernels_on_ipv6_too() {
    let g = group(
        "default/v6:http",
        Protocol::Tcp,
        &["ext [2001:db8:e::10]:80"],
        &["[fd00::1]:8080", "[fd00::2]:8080", "[fd00::3]:8080"],
    );
    let state = maglev_layout(&desired(vec![g.clone()]));
    for port in [1024u16, 40000, 65535] {
        let client = format!("[2001:db8:c::7]:{port}");
        let (slot, pick) = maglev_pick(&g, &client, "[2001:db8:e::10]:80");
        let query = Query::new(
            "[2001:db8:e::10]:80/tcp".parse().expect("target"),
            Some(client.parse().expect("source")),
            None,
        )
        .expect("query");
        let e = explain(&state, &query, &Fake::default(), 0);
        match e.verdict {
            Verdict::Translate { slot: Some(s), backend: Some(b), choice: Choice::FlowHash, .. } => {
                assert_eq!((s, b.address), (slot, pick), "{client}");
            }
            other => panic!("{client}: {other:?}"),
        }
    }
}

/// The packet path's conntrack gate, as `lb-ebpf`'s `conntrack::may_track` reads it: no gate or a
/// gate not ready looks every packet up; a ready gate passes a destination whose slot is shut,
/// even a frontend's (which only a damaged gate can do, and which `explain` must then say).
#[test]
fn the_conntrack_gate_decides_before_any_lookup() {
    let state = layout(&desired(vec![external()]), &MapState::default());
    let frontend = FrontendKey::new("203.0.113.10".parse().expect("ip"), 80, Protocol::Tcp);
    let open =
        |slots: &[u32]| Fake { gate: Some(slots.iter().map(|&s| (s, 1)).collect()), ..Fake::default() };
    let ready_open = open(&[ct_gate::READY, frontend.gate_slot()]);
    let cases = [
        ("no gate", Fake::default(), "translate", "no conntrack gate: every packet is looked up"),
        ("gate not ready", open(&[]), "translate", "not ready"),
        ("slot open", ready_open, "translate", "is open: packets to 203.0.113.10:80 are looked up"),
        ("slot shut", open(&[ct_gate::READY]), "untouched", "is a frontend, but its conntrack gate slot"),
    ];
    for (name, live, action, says) in cases {
        let mut case = Case::new(name, state.clone(), "203.0.113.10:80/TCP", action);
        case.from = Some(format!("{CLIENT}:40000"));
        case.live = live;
        case.says = vec![says];
        if action == "translate" {
            case.eligible = vec!["10.244.1.2:8080", "10.244.2.2:8080", "10.244.3.2:8080"];
        }
        check(&case);
    }
    // A destination that is no frontend, its slot shut: passed, and said so.
    let mut case = Case::new("no frontend", state.clone(), "203.0.113.99:80/TCP", "not_a_frontend");
    case.from = Some(format!("{CLIENT}:40000"));
    case.live = open(&[ct_gate::READY]);
    case.says = vec!["no frontend or tracked flow has this destination"];
    check(&case);
}
