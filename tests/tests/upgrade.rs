//! Upgrades that change map shapes, in a real kernel: an agent restarted with other capacities
//! (or, through the harness, over maps of an older layout) migrates the pinned maps while a
//! client connects in a loop, a TCP connection is held open, a client has session affinity and
//! a TC flow is tracked: no connection fails, the held one keeps working, the client keeps its
//! backend, the tracked flow its conntrack entry; the old maps are gone.
use std::{path::Path, time::Duration};

use lb_agent::sys::bpf::{self, RawMap, bytes_of, read_pod};
use lb_common::{AffinityValue, FieldLayout, MapLayout, MetaKey, SCHEMA_VERSION};
use lb_tests::{
    agent::cli_json,
    flows::{Load, web_node},
    node::Node,
};

const SMALL: [&str; 6] = ["--max-frontends", "16", "--max-affinity", "32", "--max-conntrack", "64"];
const LARGE: [&str; 6] = ["--max-frontends", "64", "--max-affinity", "128", "--max-conntrack", "256"];

/// `status`'s capacity of each map, by name.
fn capacities(node: &Node) -> serde_json::Map<String, serde_json::Value> {
    let status = cli_json(&["status"], &node.bpffs.path).expect("status");
    status["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .map(|m| (m["name"].as_str().expect("name").to_owned(), m["capacity"].clone()))
        .collect()
}

#[test]
fn an_agent_restarted_with_larger_maps_migrates_them_without_dropping_a_flow() {
    let mut node = web_node(&SMALL);
    let before = capacities(&node);
    assert_eq!(before["LB_AFFINITY"], 32, "{before:?}");
    let mut load = Load::start(&node, 4000);

    node.agent.take().expect("agent").stop().expect("clean stop");
    node.start_agent_with(&LARGE);
    load.still_running();
    let log = node.agent().log().join("\n");
    for map in ["LB_FRONTENDS_V4", "LB_FRONTENDS_V6", "LB_AFFINITY", "LB_CONNTRACK"] {
        assert!(
            log.lines().any(|l| l.contains("migrating it") && l.contains(map)),
            "{map} is migrated:\n{log}"
        );
    }
    assert!(log.contains("upgrade done"), "{log}");
    load.check(&node);

    let after = capacities(&node);
    assert_eq!(after["LB_FRONTENDS_V4"], 64, "{after:?}");
    assert_eq!(after["LB_AFFINITY"], 128, "{after:?}");
    assert_eq!(after["LB_CONNTRACK"], 256, "{after:?}");
    assert_eq!(after["LB_SLOTS"], before["LB_SLOTS"], "an unchanged map is adopted: {after:?}");
    let status = cli_json(&["status"], &node.bpffs.path).expect("status");
    assert_eq!(status["agent"]["schema"], status["agent"]["cli_schema"], "{status}");
    assert!(!node.bpffs.path.join("migrate").exists(), "the staging pins are gone");

    // The same flags again: every map is adopted as it is.
    node.agent.take().expect("agent").stop().expect("clean stop");
    node.start_agent_with(&LARGE);
    let log = node.agent().log().join("\n");
    assert!(!log.contains("migrating it"), "nothing to migrate:\n{log}");
}

/// The layout an "older agent" used for `LB_AFFINITY`'s value in the test: the same fields as
/// today's `AffinityValue`, in another order, with padding and a field this agent does not know
/// (24 bytes instead of 16).
fn old_affinity_fields() -> [(&'static str, u16, u16); 6] {
    [
        ("slot", 0, 4),
        ("pad", 4, 4),
        ("last_used", 8, 8),
        ("backend", 16, 4),
        ("weight", 20, 2),
        ("pad2", 22, 2),
    ]
}

fn field(name: &str, offset: u16, size: u16) -> FieldLayout {
    let mut n = [0u8; 20];
    n[..name.len()].copy_from_slice(name.as_bytes());
    FieldLayout { name: n, offset, size }
}

/// Plays the older agent: replaces the pinned `LB_AFFINITY` by a map of the old value layout
/// holding the same entries, records that layout in `LB_META` and schema N-1 in `LB_AGENT`.
/// Returns the old map's kernel id.
fn pin_old_affinity_layout(bpffs: &Path) -> u32 {
    let current = RawMap::open(&bpffs.join("LB_AFFINITY")).expect("LB_AFFINITY");
    let old = RawMap::create(
        "LB_AFFINITY",
        current.info.map_type,
        current.info.key_size,
        24,
        current.info.max_entries,
        0,
    )
    .expect("create");
    let mut copied = 0;
    for key in current.keys().expect("keys") {
        let Some(v) = current.lookup(&key).expect("lookup") else { continue };
        let v: AffinityValue = read_pod(&v).expect("a whole value");
        let mut value = vec![0u8; 24];
        value[0..4].copy_from_slice(&v.slot.to_ne_bytes());
        value[8..16].copy_from_slice(&v.last_used.to_ne_bytes());
        value[16..20].copy_from_slice(&v.backend.to_ne_bytes());
        value[20..22].copy_from_slice(&100u16.to_ne_bytes());
        old.update(&key, &value).expect("update");
        copied += 1;
    }
    assert!(copied >= 1, "an affinity entry to convert");
    let staged = bpffs.join("LB_AFFINITY_old");
    old.pin(&staged).expect("pin");
    std::fs::rename(&staged, bpffs.join("LB_AFFINITY")).expect("rename over LB_AFFINITY");

    let meta = RawMap::open(&bpffs.join("LB_META")).expect("LB_META");
    let mut key = MetaKey { name: [0; 24] };
    key.name[..11].copy_from_slice(b"LB_AFFINITY");
    let record = meta.lookup(&bytes_of(&key)).expect("lookup").expect("LB_AFFINITY's record");
    let mut record: MapLayout = read_pod(&record).expect("a whole record");
    record.schema = SCHEMA_VERSION - 1;
    record.value_size = 24;
    let fields = old_affinity_fields();
    record.value_fields = fields.len() as u16;
    for (slot, (name, offset, size)) in record.value.iter_mut().zip(fields) {
        *slot = field(name, offset, size);
    }
    meta.update(&bytes_of(&key), &bytes_of(&record)).expect("record the old layout");

    let agent = RawMap::open(&bpffs.join("LB_AGENT")).expect("LB_AGENT");
    let mut status = agent.lookup(&0u32.to_ne_bytes()).expect("lookup").expect("record");
    status[0..4].copy_from_slice(&(SCHEMA_VERSION - 1).to_ne_bytes());
    agent.update(&0u32.to_ne_bytes(), &status).expect("schema N-1");
    old.info.id
}

/// Records `LB_CONNTRACK`'s layout as schema 3 had it: the value's `epoch` was padding, `pad2`
/// (a rename the agent reads through: nothing to migrate).
fn record_schema_3_conntrack(bpffs: &Path) {
    let meta = RawMap::open(&bpffs.join("LB_META")).expect("LB_META");
    let mut key = MetaKey { name: [0; 24] };
    key.name[..12].copy_from_slice(b"LB_CONNTRACK");
    let record = meta.lookup(&bytes_of(&key)).expect("lookup").expect("LB_CONNTRACK's record");
    let mut record: MapLayout = read_pod(&record).expect("a whole record");
    record.schema = 3;
    let fields = usize::from(record.value_fields);
    let slot = record.value[..fields].iter_mut().find(|f| f.name.starts_with(b"epoch\0")).expect("epoch");
    *slot = field("pad2", slot.offset, slot.size);
    meta.update(&bytes_of(&key), &bytes_of(&record)).expect("record the schema 3 layout");
}

#[test]
fn an_agent_over_maps_of_an_older_layout_converts_them_without_dropping_a_flow() {
    let mut node = web_node(&SMALL);
    let mut load = Load::start(&node, 4000);
    node.agent.take().expect("agent").stop().expect("clean stop");
    let old_id = pin_old_affinity_layout(&node.bpffs.path);
    record_schema_3_conntrack(&node.bpffs.path);
    let status = cli_json(&["status"], &node.bpffs.path).expect("status");
    assert_eq!(status["agent"]["schema"], SCHEMA_VERSION - 1, "{status}");

    node.start_agent_with(&SMALL);
    load.still_running();
    let log = node.agent().log().join("\n");
    let migrated: Vec<&str> = log.lines().filter(|l| l.contains("migrating it")).collect();
    assert_eq!(migrated.len(), 1, "only the affinity map changed (conntrack's pad2 is its epoch):\n{log}");
    assert!(migrated[0].contains("LB_AFFINITY") && migrated[0].contains("field layout"), "{log}");
    assert!(log.lines().any(|l| l.contains("LB_AFFINITY") && l.contains("converted=true")), "{log}");
    load.check(&node);

    let affinity = RawMap::open(&node.bpffs.path.join("LB_AFFINITY")).expect("LB_AFFINITY");
    assert_eq!(affinity.info.value_size, 16, "today's layout");
    assert_ne!(affinity.info.id, old_id);
    let status = cli_json(&["status"], &node.bpffs.path).expect("status");
    assert_eq!(status["agent"]["schema"], SCHEMA_VERSION, "{status}");
    let schema_of = |name: &str| {
        status["maps"].as_array().expect("maps").iter().find(|m| m["name"] == name).expect("map")["schema"]
            .clone()
    };
    assert_eq!(schema_of("LB_AFFINITY"), SCHEMA_VERSION, "{status}");
    // The old map is freed once nothing holds it (its pin is gone; no program used it).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bpf::map_exists(old_id) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!bpf::map_exists(old_id), "the old LB_AFFINITY is freed");
}

#[test]
fn a_migration_that_cannot_fit_keeps_the_old_datapath_serving_and_says_why() {
    let mut node = web_node(&SMALL);
    node.agent.take().expect("agent").stop().expect("clean stop");
    // Two IPv4 frontends (the ClusterIP and the external IP) do not fit a map of one.
    let source = node.source();
    let args: Vec<&std::ffi::OsStr> =
        ["--source".as_ref(), source.as_os_str(), "--max-frontends".as_ref(), "1".as_ref()].to_vec();
    let agent =
        lb_tests::agent::Agent::spawn(&args, &node.cgroup.path, &node.bpffs.path, true).expect("agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent.count("holds more entries than its new capacity 1") == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = agent.log().join("\n");
    assert!(log.contains("LB_FRONTENDS_V4 holds more entries than its new capacity 1"), "{log}");
    assert!(agent.stop().is_ok_and(|s| !s.success()), "the agent refuses to start:\n{log}");
    assert_eq!(capacities(&node)["LB_FRONTENDS_V4"], 16, "the old map is still pinned");
    assert!(!node.bpffs.path.join("migrate").exists(), "the new maps were removed");
    let lines = node.probe(&["tcp", "10.96.0.10:80", "3"]);
    assert!(lines.iter().all(|l| l.starts_with("ok 10.244.1.")), "the old datapath serves: {lines:?}");
}
