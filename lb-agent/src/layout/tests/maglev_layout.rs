//! Maglev groups in the layout, the diff and the syncer: what the slot map holds, how few slots a
//! backend change rewrites, and that make-before-break holds for tables too.
use super::*;
use crate::layout::state::LbAlgorithm;

fn maglev(size: u32) -> LayoutOptions {
    LayoutOptions { algorithm: LbAlgorithm::Maglev, maglev_size: size }
}

/// Pod `i` of the test Services.
fn pod(i: usize) -> String {
    format!("10.244.1.{i}:8080")
}

/// ns/web with a ClusterIP (Internal) and an externalIP plus a NodePort (External), both over
/// pods `pods`, on a node with address 192.168.0.1.
fn web(pods: &[usize]) -> DesiredState {
    let pods: Vec<String> = pods.iter().map(|&i| pod(i)).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    with_nodes(
        desired(vec![
            group("ns/web:http", Protocol::Tcp, &["10.96.0.10:80"], &pods),
            group("ns/web:http", Protocol::Tcp, &["ext 192.168.0.9:80", "np4 30080"], &pods),
        ]),
        &["192.168.0.1"],
    )
}

fn count_of(state: &MapState, f: &str) -> u32 {
    state.frontends[&key(f, Protocol::Tcp)].count
}

#[test]
fn only_external_groups_get_a_table() {
    let options = maglev(13);
    let new = web(&[1, 2, 3]);
    let target = layout_reserving(&new, &MapState::default(), &Reserved::default(), &options);
    check_transition_with(&MapState::default(), &target, &new, &options).expect("transition");
    assert_eq!(count_of(&target, "10.96.0.10:80"), 3, "ClusterIP: one slot per backend");
    assert_eq!(count_of(&target, "192.168.0.9:80"), 13, "externalIP: the table");
    assert_eq!(count_of(&target, "192.168.0.1:30080"), 13, "NodePort: the same table");
    assert_eq!(target.slots.len(), 3 + 13);
    // Random (the default) is unchanged: one slot per backend everywhere.
    assert_eq!(count_of(&layout(&new, &MapState::default()), "192.168.0.9:80"), 3);

    // No backend: count 0 and no slots, with the drop flag where the policy says so.
    let mut empty = web(&[]);
    empty.groups[1].when_empty = WhenEmpty::Drop;
    let gone = layout_reserving(&empty, &target, &Reserved::default(), &options);
    check_transition_with(&target, &gone, &empty, &options).expect("transition");
    assert!(gone.slots.is_empty());
    let np = gone.frontends[&key("192.168.0.1:30080", Protocol::Tcp)];
    assert_eq!((np.count, np.flags & lb_common::frontend_flags::DROP_WHEN_EMPTY != 0), (0, true));
}

#[test]
fn every_node_lays_out_the_same_table() {
    // Node B programmed other Services first, so the same pods have other backend ids there, and
    // its source listed the pods in another order: the table still names the same pods.
    let options = maglev(maglev::DEFAULT_SIZE);
    let node_a = web(&[1, 2, 3, 4, 5]);
    let mut node_b = web(&[5, 4, 3, 2, 1]);
    for g in &mut node_b.groups {
        g.from_node = g.from_node.iter().rev().copied().collect();
    }
    let others = desired(vec![group("ns/db:sql", Protocol::Tcp, &["10.96.0.50:5432"], &["10.244.9.9:5432"])]);
    let b_before = layout(&others, &MapState::default());
    let mut both = node_b.clone();
    both.groups.extend(others.groups);
    let a = layout_reserving(&node_a, &MapState::default(), &Reserved::default(), &options);
    let b = layout_reserving(&both, &b_before, &Reserved::default(), &options);
    let ext = "192.168.0.9:80/6";
    assert_ne!(a.backends, b.backends, "the nodes number the backends differently");
    assert_eq!(served(&a)[ext], served(&b)[ext]);
}

#[test]
fn removing_one_of_five_backends_rewrites_about_a_fifth_of_the_slots() {
    let m = maglev::DEFAULT_SIZE;
    let maps = Shared::default();
    let mut syncer = Syncer::with_options(maps.clone(), maglev(m)).expect("read");
    syncer.sync(&web(&[1, 2, 3, 4, 5])).expect("sync");
    let programmed = maps.state();
    let start = maps.log_len();

    let fewer = web(&[1, 2, 4, 5]);
    syncer.sync(&fewer).expect("sync");
    let ops: Vec<MapOp> = maps.0.borrow().log[start..].to_vec();
    let count = |f: fn(&MapOp) -> bool| ops.iter().filter(|op| f(op)).count();
    let slot_writes = count(|op| matches!(op, MapOp::PutSlot(..)));
    let bound = f64::from(m) / 5.0 + 0.03 * f64::from(m);
    eprintln!("remove 1 of 5, M = {m}: {slot_writes} slot writes (M/N = {})", m / 5);
    // The ClusterIP group loses its last slot and rewrites two (one slot per backend, in order).
    assert!((slot_writes as f64) < bound, "{slot_writes} slot writes, bound {bound}");
    assert_eq!(count(|op| matches!(op, MapOp::DeleteSlot(..))), 1, "only the ClusterIP's last slot");
    assert_eq!(count(|op| matches!(op, MapOp::DeleteBackend(..))), 1);
    // The externalIP and NodePort keep count M: only the ClusterIP frontend is rewritten.
    assert_eq!(count(|op| matches!(op, MapOp::PutFrontend(..))), 1);
    assert_eq!(served(&maps.state()), expected_service_with(&fewer, &maglev(m)));

    // The backend comes back (under a new id: its old one is quarantined): the same table as
    // before, about M/N writes again.
    let start = maps.log_len();
    syncer.sync(&web(&[1, 2, 3, 4, 5])).expect("sync");
    assert_eq!(served(&maps.state()), served(&programmed));
    let slot_writes = |from: usize| {
        maps.0.borrow().log[from..].iter().filter(|op| matches!(op, MapOp::PutSlot(..))).count()
    };
    eprintln!("the 5th back, M = {m}: {} slot writes", slot_writes(start));
    assert!((slot_writes(start) as f64) < bound, "{} slot writes back", slot_writes(start));

    // A sixth backend takes about a sixth of the slots.
    let start = maps.log_len();
    syncer.sync(&web(&[1, 2, 3, 4, 5, 6])).expect("sync");
    let added = slot_writes(start);
    eprintln!("add a 6th to 5, M = {m}: {added} slot writes (M/(N+1) = {})", m / 6);
    let sixth = f64::from(m) / 6.0;
    assert!(
        (added as f64 - sixth).abs() < 0.03 * f64::from(m),
        "{added} slot writes, about {sixth} expected"
    );
}

#[test]
fn removing_and_adding_backends_is_make_before_break() {
    // `check_transition` checks every frontend's slots after every op: a smaller table keeps it
    // quick (the op order does not depend on the size).
    let options = maglev(1021);
    let lay = |d: &DesiredState, p: &MapState| layout_reserving(d, p, &Reserved::default(), &options);
    let mut programmed = MapState::default();
    for pods in [&[1, 2, 3, 4, 5][..], &[1, 2, 4, 5], &[1, 2, 4, 5, 6, 7], &[7], &[], &[1, 2]] {
        let new = web(pods);
        let target = lay(&new, &programmed);
        check_transition_with(&programmed, &target, &new, &options)
            .unwrap_or_else(|e| panic!("{pods:?}: {e}"));
        programmed = target;
    }
}

#[test]
fn switching_the_algorithm_is_a_checked_transition() {
    // An agent restarted with another --lb-algorithm adopts the maps and rewrites the tables.
    let (random, table) = (LayoutOptions::default(), maglev(251));
    let new = web(&[1, 2, 3]);
    let plain = layout(&new, &MapState::default());
    let tables = layout_reserving(&new, &plain, &Reserved::default(), &table);
    check_transition_with(&plain, &tables, &new, &table).expect("random → maglev");
    let back = layout_reserving(&new, &tables, &Reserved::default(), &random);
    check_transition_with(&tables, &back, &new, &random).expect("maglev → random");
    assert_eq!(back, plain);
    // Another table size too.
    let bigger = layout_reserving(&new, &tables, &Reserved::default(), &maglev(1021));
    check_transition_with(&tables, &bigger, &new, &maglev(1021)).expect("251 → 1021");
}

#[test]
fn over_capacity_names_the_maglev_table_when_it_is_the_cause() {
    let capacity =
        |slots| Some(Capacity { frontends: 100, slots, backends: 100, source_ranges: 100, services: 100 });
    // Two external groups (ns/web, ns/api) of 251 slots and two ClusterIP groups (3 and 2 slots):
    // 507 slots; one slot per backend would need 10.
    let mut two = web(&[1, 2, 3]);
    two.groups.extend([
        group("ns/api:http", Protocol::Tcp, &["10.96.0.11:80"], &["10.244.2.1:80", "10.244.2.2:80"]),
        group("ns/api:http", Protocol::Tcp, &["lb 203.0.113.1:80"], &["10.244.2.1:80", "10.244.2.2:80"]),
    ]);
    let two = desired(two.groups);
    for (slots, options, maglev_full) in [
        (300, maglev(251), true),
        (10, maglev(251), true),
        (9, maglev(251), false),
        (9, LayoutOptions::default(), false),
    ] {
        let maps = Shared::with(MemoryMaps { capacity: capacity(slots), ..Default::default() });
        let mut syncer = Syncer::with_options(maps.clone(), options).expect("read");
        let err = syncer.sync(&two).expect_err("does not fit");
        assert_eq!(maps.log_len(), 0, "nothing written");
        if maglev_full {
            assert!(
                matches!(err, MapsError::MaglevFull { needed: 507, groups: 2, size: 251, .. }),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "map LB_SLOTS is full: 507 entries needed, capacity {slots}, because 2 external groups \
                     take a Maglev table of 251 slots each: raise --max-slots, lower --maglev-table-size \
                     or use --lb-algorithm random"
                )
            );
        } else {
            assert!(matches!(err, MapsError::Full { name: lb_common::map_names::SLOTS, .. }), "{err:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The random transitions of `every_transition_keeps_the_datapath_consistent`, with Maglev
    /// tables (13 slots: more than the 5 pods, so tables repeat backends).
    #[test]
    fn every_maglev_transition_keeps_the_datapath_consistent((start, batches) in scenario()) {
        let options = maglev(13);
        let mut world = start;
        let mut programmed = MapState::default();
        let mut states = vec![world_state(&world)];
        for batch in &batches {
            for c in batch {
                apply_change(&mut world, *c);
            }
            states.push(world_state(&world));
        }
        states.push(DesiredState::default());
        for (step, new) in states.iter().enumerate() {
            let target = layout_reserving(new, &programmed, &Reserved::default(), &options);
            if let Err(e) = check_transition_with(&programmed, &target, new, &options) {
                return Err(TestCaseError::fail(format!("step {step}: {e}")));
            }
            programmed = target;
        }
        prop_assert_eq!(programmed, MapState::default());
    }
}
