//! The placement policy, played out on maps: every step taken at once, or moves finishing in an
//! order a seed picks.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use ringkv_map::{NodeInfo, NodeRole, Shard};

fn cluster(nodes: u64, shards: u32) -> ShardMap {
    ShardMap::bootstrap(9, &nodes_up(nodes), shards, 3).expect("bootstrap")
}

/// Plays the controller: takes every step, finishing each move at once. Returns the moves made.
fn settle(map: &mut ShardMap) -> usize {
    let mut moves = 0;
    for _ in 0..1_000 {
        let Some(step) = map.next_placement_step(1) else {
            return moves;
        };
        map.apply_placement_step(&step, 0)
            .expect("a step the map accepts");
        match step {
            PlacementStep::Move { shard, .. } => {
                moves += 1;
                map.finish_move(shard, 0);
            }
            PlacementStep::AddVoter { shard, .. }
            | PlacementStep::RemoveVoter { shard, .. }
            | PlacementStep::AddReadReplica { shard, .. }
            | PlacementStep::RemoveReadReplica { shard, .. } => {
                map.finish_move(shard, 0);
            }
            _ => {}
        }
        map.epoch += 1;
        map.validate().expect("valid after each step");
    }
    panic!("the placement never settled");
}

fn spread(counts: &BTreeMap<NodeId, usize>) -> usize {
    counts.values().max().unwrap() - counts.values().min().unwrap()
}

#[test]
fn a_bootstrapped_cluster_needs_no_step() {
    assert_eq!(cluster(5, 16).next_placement_step(2), None);
}

#[test]
fn new_nodes_fill_with_the_minimum_number_of_moves() {
    // Three nodes hold 16 shards × 3 replicas; two empty nodes join.
    let mut map = cluster(3, 16);
    for id in [4, 5] {
        let info = NodeInfo {
            addr: format!("127.0.0.1:{}", 7000 + id),
            incarnation: 100 + id,
            state: NodeState::Up,
            role: Default::default(),
        };
        map.nodes.insert(NodeId(id), info);
    }
    let moves = settle(&mut map);
    let counts = map.replica_counts();
    assert!(spread(&counts) <= 1, "replicas per node: {counts:?}");
    assert!(
        spread(&map.preferred_leader_counts()) <= 1,
        "leaders: {:?}",
        map.preferred_leader_counts()
    );
    // 48 replicas over 5 nodes: the two new ones need 9 each at least (48 / 5 rounded down).
    assert_eq!(moves, 18, "moves made (the minimum is 18)");
}

/// Plays the controller as it runs: up to two moves at once, finishing in an order `seed`
/// picks, and a node that may join while moves run. Returns once nothing is left to do.
fn settle_concurrently(map: &mut ShardMap, seed: u64, mut join_after: Option<(usize, NodeId)>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for step_count in 0..1_000 {
        if let Some((after, node)) = join_after
            && step_count >= after
        {
            map.add_node(
                Some(node),
                &format!("127.0.0.1:{}", 7000 + node.0),
                100 + node.0,
                0,
            )
            .expect("added");
            map.epoch += 1;
            join_after = None;
        }
        // Either take the next step, or finish one of the moves in progress.
        let step = map.next_placement_step(2);
        let finish = !map.moves.is_empty() && (step.is_none() || next() % 2 == 0);
        if finish {
            let shard = map.moves[(next() % map.moves.len() as u64) as usize].shard;
            map.finish_move(shard, 0);
        } else if let Some(step) = step {
            map.apply_placement_step(&step, 0)
                .expect("a step the map accepts");
        } else if join_after.is_none() {
            return;
        }
        map.epoch += 1;
        map.validate().expect("valid after each step");
    }
    panic!("the placement never settled (seed {seed})");
}

#[test]
fn growing_balances_replicas_and_leaders_whatever_order_moves_finish_in() {
    for seed in 0..500 {
        for shards in [4, 8, 16] {
            let mut map = cluster(3, shards);
            map.add_node(Some(NodeId(4)), "127.0.0.1:7004", 104, 0)
                .expect("added");
            let join_5_after = (seed % 7) as usize;
            settle_concurrently(&mut map, seed, Some((join_5_after, NodeId(5))));
            let counts = map.replica_counts();
            assert!(
                spread(&counts) <= 1,
                "seed {seed}, {shards} shards: replicas {counts:?}"
            );
            let leaders = map.preferred_leader_counts();
            assert!(
                spread(&leaders) <= 1,
                "seed {seed}, {shards} shards: preferred leaders {leaders:?}"
            );
        }
    }
}

#[test]
fn read_replicas_go_to_read_replica_nodes_and_voter_nodes_as_the_setting_asks() {
    let mut map = cluster(3, 4);
    for id in [4, 5] {
        map.add_node(Some(NodeId(id)), &format!("127.0.0.1:{}", 7000 + id), 100 + id, 0)
            .expect("added");
        map.nodes.get_mut(&NodeId(id)).expect("added").role = NodeRole::ReadReplica;
    }
    settle(&mut map);
    let on = |map: &ShardMap, shard: &Shard| -> BTreeSet<NodeId> {
        map.read_replicas_of(shard.id).iter().map(|r| r.node_id).collect()
    };
    for shard in &map.shards {
        assert_eq!(
            on(&map, shard),
            BTreeSet::from([NodeId(4), NodeId(5)]),
            "shard {}",
            shard.id
        );
        assert!(
            shard.voters.iter().all(|v| v.node_id.0 <= 3),
            "no voter on a read-replica node: {shard:?}"
        );
    }
    assert!(
        map.meta.voters.iter().all(|v| v.node_id.0 <= 3),
        "nor a metadata voter"
    );
    assert_eq!(map.replica_counts().len(), 3, "read-replica nodes hold no voters");

    // A fourth voter node, and read_replicas 3: one more per shard, on a voter node holding
    // no replica of the shard (node 4 is the only one).
    map.add_node(Some(NodeId(6)), "127.0.0.1:7006", 106, 0)
        .expect("added");
    map.read_replicas = 3;
    settle(&mut map);
    for shard in &map.shards {
        let nodes = on(&map, shard);
        assert_eq!(nodes.len(), 3, "shard {}: {nodes:?}", shard.id);
        let extra: Vec<&NodeId> = nodes.iter().filter(|n| n.0 != 4 && n.0 != 5).collect();
        assert!(
            extra
                .iter()
                .all(|n| shard.voters.iter().all(|v| v.node_id != **n)),
            "the extra read replica is not on a node voting in the shard: {shard:?}"
        );
    }
    // Read-replica node 5 goes down: its read replicas are removed; lowering the setting
    // removes the extra ones on voter nodes.
    map.read_replicas = 0;
    map.nodes.get_mut(&NodeId(5)).expect("node 5").state = NodeState::Down;
    settle(&mut map);
    for shard in &map.shards {
        assert_eq!(on(&map, shard), BTreeSet::from([NodeId(4)]), "shard {}", shard.id);
    }
    map.validate().expect("valid");
}

#[test]
fn a_new_node_is_joining_until_it_holds_its_share() {
    // 8 shards × 3 voters over 4 up nodes: a share of 6.
    let mut map = cluster(3, 8);
    map.add_node(Some(NodeId(4)), "127.0.0.1:7004", 104, 0)
        .expect("added");
    assert!(map.is_joining(NodeId(4)), "an empty new node is joining");
    assert!(!map.is_joining(NodeId(1)), "a full old node is not");
    let mut steps = 0;
    while let Some(step) = map.next_placement_step(1) {
        map.apply_placement_step(&step, 0)
            .expect("a step the map accepts");
        if let PlacementStep::Move { shard, .. } = step {
            map.finish_move(shard, 0);
        }
        map.epoch += 1;
        let held = map
            .shards
            .iter()
            .filter(|s| s.voters.iter().any(|v| v.node_id == NodeId(4)))
            .count();
        assert_eq!(map.is_joining(NodeId(4)), held < 6, "node 4 holds {held}");
        steps += 1;
        assert!(steps < 100, "the placement never settled");
    }
    assert!(
        map.nodes.keys().all(|node| !map.is_joining(*node)),
        "balanced: nobody joins"
    );
    // Down and removed nodes are not joining, whatever they hold.
    map.nodes.get_mut(&NodeId(4)).expect("node 4").state = NodeState::Down;
    assert!(!map.is_joining(NodeId(4)));
}

#[test]
fn the_metadata_group_grows_to_five_voters_and_shrinks_back_to_three() {
    let mut map = cluster(3, 4);
    for id in [4, 5] {
        map.add_node(Some(NodeId(id)), &format!("127.0.0.1:{}", 7000 + id), 100 + id, 0)
            .expect("added");
    }
    settle(&mut map);
    let meta_nodes =
        |map: &ShardMap| -> BTreeSet<NodeId> { map.meta.voters.iter().map(|v| v.node_id).collect() };
    assert_eq!(
        meta_nodes(&map).len(),
        5,
        "five voters on five nodes: {:?}",
        map.meta.voters
    );
    assert!(
        map.decisions
            .iter()
            .any(|d| d.text.starts_with("begin adding a voter to shard meta"))
    );
    map.decommission(NodeId(5), 0).expect("decommission");
    settle(&mut map);
    let nodes = meta_nodes(&map);
    assert_eq!(
        nodes.len(),
        3,
        "three voters once four nodes are up: {:?}",
        map.meta.voters
    );
    assert!(!nodes.contains(&NodeId(5)));
    assert_eq!(map.nodes[&NodeId(5)].state, NodeState::Removed);
}

#[test]
fn a_down_node_is_replaced_then_can_be_removed_for_good() {
    let mut map = cluster(4, 8);
    map.set_node_state(NodeId(3), NodeState::Down, "test", 0);
    map.epoch += 1;
    settle(&mut map);
    assert!(map.groups().all(|g| g.replica_on(NodeId(3)).is_none()));
    assert_eq!(
        map.nodes[&NodeId(3)].state,
        NodeState::Down,
        "down stays down until heard"
    );
    // `ringkv node remove`: a down node may be decommissioned; it is removed at once.
    map.decommission(NodeId(3), 0)
        .expect("a down node can be removed");
    map.epoch += 1;
    settle(&mut map);
    assert_eq!(map.nodes[&NodeId(3)].state, NodeState::Removed);
}

#[test]
fn a_decommissioned_node_is_drained_then_removed() {
    let mut map = cluster(4, 8);
    let refused = cluster(3, 8)
        .decommission(NodeId(1), 0)
        .expect_err("3 nodes, 3 replicas");
    assert!(refused.contains("fewer than the 3 replicas"), "{refused}");
    map.decommission(NodeId(2), 0).expect("decommission");
    assert_eq!(
        map.decommission(NodeId(2), 0).unwrap_err(),
        "node 2 is decommissioning already"
    );
    map.epoch += 1;
    settle(&mut map);
    assert_eq!(map.nodes[&NodeId(2)].state, NodeState::Removed);
    assert!(map.groups().all(|g| g.replica_on(NodeId(2)).is_none()));
    let counts = map.replica_counts();
    assert_eq!(counts.len(), 3);
    assert!(
        counts.values().all(|&c| c == 8),
        "every shard on every remaining node: {counts:?}"
    );
}

/// Nodes 1..=n, up, at 127.0.0.1:7001..
fn nodes_up(n: u64) -> BTreeMap<NodeId, NodeInfo> {
    (1..=n)
        .map(|id| {
            let info = NodeInfo {
                addr: format!("127.0.0.1:{}", 7000 + id),
                incarnation: 100 + id,
                state: NodeState::Up,
                role: NodeRole::Voter,
            };
            (NodeId(id), info)
        })
        .collect()
}
