//! `loadBalancerSourceRanges` in the layout, the diff and the syncer: which frontends are gated,
//! what `LB_SOURCE_RANGES` holds, and the write order around it.
use super::*;
use lb_common::frontend_flags::{LOAD_BALANCER, NODE_PORT, SOURCE_RANGES};

fn cidrs(ranges: &[&str]) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = ranges.iter().map(|r| Cidr::parse(r).expect("test range")).collect();
    out.sort();
    out
}

/// ns/lb: a LoadBalancer Service (ClusterIP 10.96.0.10, LB IP 192.0.2.80, NodePort 30080 on
/// node address 10.0.1.1, externalIP 198.51.100.1) over two pods, with `ranges`.
fn lb(ranges: &[&str]) -> DesiredState {
    let pods = ["10.244.1.1:8080", "10.244.1.2:8080"];
    let mut internal = group("ns/lb:http", Protocol::Tcp, &["10.96.0.10:80"], &pods);
    let mut external =
        group("ns/lb:http", Protocol::Tcp, &["ext 198.51.100.1:80", "lb 192.0.2.80:80", "np4 30080"], &pods);
    internal.source_ranges = cidrs(ranges);
    external.source_ranges = cidrs(ranges);
    with_nodes(desired(vec![internal, external]), &["10.0.1.1"])
}

fn flags_of(state: &MapState, f: &str) -> u32 {
    state.frontends[&key(f, Protocol::Tcp)].flags
}

fn ranges_of(state: &MapState) -> Vec<String> {
    state.source_ranges.iter().map(|r| format!("{} for group {}", r.cidr, r.group)).collect()
}

#[test]
fn only_load_balancer_frontends_are_gated() {
    let new = lb(&["10.0.1.2/32", "10.9.9.0/24"]);
    let state = layout(&new, &MapState::default());
    check_transition(&MapState::default(), &state, &new).expect("transition");
    assert_eq!(flags_of(&state, "192.0.2.80:80"), LOAD_BALANCER | SOURCE_RANGES);
    // kube-proxy rule 10: NodePorts and externalIPs (and ClusterIPs) are not subject to them.
    assert_eq!(flags_of(&state, "10.0.1.1:30080"), NODE_PORT);
    assert_eq!(flags_of(&state, "198.51.100.1:80") & SOURCE_RANGES, 0);
    assert_eq!(flags_of(&state, "10.96.0.10:80") & SOURCE_RANGES, 0);
    // Under the External group's id only (the Internal group has no LoadBalancer frontend).
    let external = state.frontends[&key("192.0.2.80:80", Protocol::Tcp)].group;
    assert_eq!(
        ranges_of(&state),
        [format!("10.0.1.2/32 for group {external}"), format!("10.9.9.0/24 for group {external}")]
    );

    // No ranges, or ranges but no LB IP (a NodePort Service, an LB not provisioned yet): nothing.
    let state = layout(&lb(&[]), &MapState::default());
    assert!(state.source_ranges.is_empty());
    assert_eq!(flags_of(&state, "192.0.2.80:80"), LOAD_BALANCER);
    let mut no_vip = lb(&["10.9.9.0/24"]);
    no_vip.groups[1].frontends.retain(|f| f.kind != FrontendKind::LoadBalancer);
    let state = layout(&no_vip, &MapState::default());
    check_transition(&MapState::default(), &state, &no_vip).expect("transition");
    assert!(state.source_ranges.is_empty());
}

#[test]
fn golden_diff_writes_ranges_before_and_removes_them_after_the_frontend() {
    let programmed = layout(&lb(&[]), &MapState::default());
    let with = layout(&lb(&["10.0.1.2/32"]), &programmed);
    assert_eq!(
        lines(&diff(&programmed, &with)),
        [
            "put source range 10.0.1.2/32 for group 2",
            "put frontend 192.0.2.80:80/6 = group 2 count 2 source-ranges"
        ]
    );
    // Replacing the range: the new one first, the frontend is untouched, the old one last.
    let replaced = layout(&lb(&["10.9.9.0/24"]), &with);
    assert_eq!(
        lines(&diff(&with, &replaced)),
        ["put source range 10.9.9.0/24 for group 2", "delete source range 10.0.1.2/32 for group 2"]
    );
    // Removing them: the flag goes first, then the range.
    let cleared = layout(&lb(&[]), &replaced);
    assert_eq!(
        lines(&diff(&replaced, &cleared)),
        ["put frontend 192.0.2.80:80/6 = group 2 count 2", "delete source range 10.9.9.0/24 for group 2"]
    );
    // The Service goes: frontends, then ranges, then slots and backends.
    let gone = layout(&DesiredState::default(), &replaced);
    let ops = lines(&diff(&replaced, &gone));
    let at = |line: &str| ops.iter().position(|l| l == line).unwrap_or_else(|| panic!("{line} in {ops:?}"));
    assert!(at("delete frontend 192.0.2.80:80/6") < at("delete source range 10.9.9.0/24 for group 2"));
    assert!(at("delete source range 10.9.9.0/24 for group 2") < at("delete slot 2/1"));
    for (from, to, new) in [
        (&programmed, &with, lb(&["10.0.1.2/32"])),
        (&with, &replaced, lb(&["10.9.9.0/24"])),
        (&replaced, &cleared, lb(&[])),
        (&replaced, &gone, DesiredState::default()),
    ] {
        check_transition(from, to, &new).expect("transition");
    }
}

#[test]
fn the_checker_catches_a_flag_before_its_ranges_and_a_range_removed_too_early() {
    let programmed = layout(&lb(&[]), &MapState::default());
    let with = layout(&lb(&["10.0.1.2/32"]), &programmed);
    let mut frontend_first = diff(&programmed, &with);
    frontend_first.reverse();
    let err = apply_checked(&programmed, &frontend_first).expect_err("flag before its range");
    assert!(err.contains("192.0.2.80:80 group 2: source ranges flagged, none present"), "{err}");

    // 10.0.1.0/24 → 10.0.1.0/25: 10.0.1.2 is allowed before and after. Deleting the /24 before
    // the /25 is written turns it away for a moment.
    let wide = layout(&lb(&["10.0.1.0/24", "10.9.9.0/24"]), &MapState::default());
    let narrow = layout(&lb(&["10.0.1.0/25", "10.9.9.0/24"]), &wide);
    let mut delete_first = diff(&wide, &narrow);
    assert_eq!(lines(&delete_first).len(), 2, "{delete_first:?}");
    apply_checked(&wide, &delete_first).expect("put, then delete");
    delete_first.reverse();
    let err = apply_checked(&wide, &delete_first).expect_err("delete, then put");
    assert!(err.contains("192.0.2.80:80 turns away 10.0.1.0"), "{err}");

    // Dropping every range: deleting them while the flag is still set turns everyone away.
    let cleared = layout(&lb(&[]), &wide);
    let mut ranges_first = diff(&wide, &cleared);
    ranges_first.sort_by_key(|op| !matches!(op, MapOp::DeleteSourceRange(..)));
    let err = apply_checked(&wide, &ranges_first).expect_err("ranges deleted under the flag");
    assert!(err.contains("after op 0 (delete source range 10.0.1.0/24 for group 2)"), "{err}");
    assert!(err.contains("192.0.2.80:80 turns away 10.0.1.0"), "{err}");
}

#[test]
fn node_address_in_a_range_lets_the_vip_in_too() {
    // kube-proxy: when the node IP is inside a range, packets from the LB IP are allowed as well.
    let inside = lb(&["10.0.1.0/24"]);
    let state = layout(&inside, &MapState::default());
    check_transition(&MapState::default(), &state, &inside).expect("transition");
    assert_eq!(ranges_of(&state), ["10.0.1.0/24 for group 2", "192.0.2.80/32 for group 2"]);
    // Not otherwise.
    let state = layout(&lb(&["10.0.2.0/24"]), &MapState::default());
    assert_eq!(ranges_of(&state), ["10.0.2.0/24 for group 2"]);
}

#[test]
fn ipv6_ranges_gate_the_ipv6_group() {
    let mut v6 = group("ns/lb:http", Protocol::Tcp, &["lb [2001:db8::80]:80"], &["[fd00::1]:8080"]);
    v6.source_ranges = cidrs(&["fd00:1::/64"]);
    let mut v4 = group("ns/lb:http", Protocol::Tcp, &["lb 192.0.2.80:80"], &["10.244.1.1:8080"]);
    v4.source_ranges = vec![];
    let new = desired(vec![v4, v6]);
    let state = layout(&new, &MapState::default());
    check_transition(&MapState::default(), &state, &new).expect("transition");
    assert_eq!(flags_of(&state, "192.0.2.80:80"), LOAD_BALANCER, "no IPv4 range: IPv4 is open");
    assert_eq!(flags_of(&state, "[2001:db8::80]:80"), LOAD_BALANCER | SOURCE_RANGES);
    let v6_group = state.frontends[&key("[2001:db8::80]:80", Protocol::Tcp)].group;
    assert_eq!(ranges_of(&state), [format!("fd00:1::/64 for group {v6_group}")]);
}

#[test]
fn a_frontend_moving_to_another_group_keeps_admitting_its_clients() {
    // 192.0.2.80 moves from ns/a (10.0.0.0/8) to ns/b (10.0.1.0/24): 10.0.1.x is allowed
    // throughout; the checker follows every op.
    let svc = |name: &str, vips: &[&str], ranges: &[&str]| {
        let mut g = group(&format!("ns/{name}:http"), Protocol::Tcp, vips, &["10.244.1.1:8080"]);
        g.source_ranges = cidrs(ranges);
        g
    };
    let old = desired(vec![
        svc("a", &["lb 192.0.2.80:80", "lb 192.0.2.81:80"], &["10.0.0.0/8"]),
        svc("b", &["lb 192.0.2.82:80"], &["10.0.1.0/24"]),
    ]);
    let new = desired(vec![
        svc("a", &["lb 192.0.2.81:80"], &["10.0.0.0/8"]),
        svc("b", &["lb 192.0.2.80:80", "lb 192.0.2.82:80"], &["10.0.1.0/24"]),
    ]);
    let programmed = layout(&old, &MapState::default());
    let target = layout(&new, &programmed);
    check_transition(&programmed, &target, &new).expect("transition");
}

#[test]
fn over_capacity_of_the_range_map_fails_before_writing() {
    let maps = Shared::with(MemoryMaps {
        capacity: Some(Capacity { frontends: 10, slots: 10, backends: 10, source_ranges: 1, services: 100 }),
        ..Default::default()
    });
    let mut syncer = Syncer::new(maps.clone()).expect("read");
    match syncer.sync(&lb(&["10.0.1.2/32", "10.9.9.0/24"])) {
        Err(MapsError::Full { name, needed: 2, capacity: 1 }) => {
            assert_eq!(name, lb_common::map_names::SOURCE_RANGES);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(maps.log_len(), 0);
    syncer.sync(&lb(&["10.0.1.2/32"])).expect("one range fits");
}

#[test]
fn syncer_converges_with_ranges_after_a_failure_anywhere() {
    let steps = [
        lb(&[]),
        lb(&["10.0.1.2/32"]),
        lb(&["10.9.9.0/24", "10.0.1.0/24"]),
        lb(&[]),
        DesiredState::default(),
    ];
    for window in steps.windows(2) {
        let ops = {
            let programmed = layout(&window[0], &MapState::default());
            diff(&programmed, &layout(&window[1], &programmed)).len()
        };
        for k in 0..ops {
            let maps = Shared::default();
            let mut syncer = Syncer::new(maps.clone()).expect("read");
            syncer.sync(&window[0]).expect("first sync");
            let first = maps.log_len();
            maps.0.borrow_mut().fail_at = Some(first + k);
            assert!(syncer.sync(&window[1]).is_err());
            maps.state().check().unwrap_or_else(|e| panic!("failure at op {k}: {e}"));
            maps.0.borrow_mut().fail_at = None;
            syncer.sync(&window[1]).expect("converges");
            assert_eq!(&maps.state(), syncer.programmed());
            assert_eq!(served(&maps.state()), expected_service(&window[1]));
            assert_eq!(layout(&window[1], &maps.state()), maps.state(), "converged");
        }
    }
}
