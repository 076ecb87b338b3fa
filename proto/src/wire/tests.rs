//! The wire form round-trips every map and change the map's transitions make, and refuses, saying
//! why, messages that break the map's invariants.

use std::collections::BTreeMap;

use ringkv_core::{NodeId, ShardId};
use ringkv_map::{MapChange, MapError, NodeInfo, NodeRole, ShardMap};

use super::{FromProto, ToProto};
use crate::pb;

fn nodes(n: u64) -> BTreeMap<NodeId, NodeInfo> {
    (1..=n)
        .map(|id| {
            let info = NodeInfo {
                addr: format!("127.0.0.1:{}", 7000 + id),
                incarnation: 100 + id,
                state: Default::default(),
                role: Default::default(),
            };
            (NodeId(id), info)
        })
        .collect()
}

fn round_trip(map: &ShardMap) {
    assert_eq!(&ShardMap::from_proto(&map.to_proto()).expect("round trip"), map);
}

#[test]
fn maps_round_trip_through_every_transition() {
    let mut map = ShardMap::bootstrap(9, &nodes(4), 4, 3).expect("bootstrap");
    round_trip(&map);
    let group = map.shard(ShardId(2)).expect("shard 2").clone();
    let empty = map
        .nodes
        .keys()
        .copied()
        .find(|&n| group.replica_on(n).is_none())
        .expect("a node without shard 2");
    map.begin_move(ShardId(2), group.voters[0].node_id, empty, 1, "test")
        .expect("move");
    round_trip(&map);
    map.finish_move(ShardId(2), 2);
    map.begin_split(ShardId(1), 3, "test").expect("split");
    round_trip(&map);
    map.finish_split(ShardId(1), 40, 4);
    round_trip(&map);
    for epoch in 2..200 {
        map.record_decision(epoch, 0, format!("decision {epoch}"));
    }
    round_trip(&map);
}

#[test]
fn a_map_without_its_metadata_group_or_with_a_hole_or_shared_replica_ids_is_refused() {
    let map = ShardMap::bootstrap(9, &nodes(3), 4, 3).expect("bootstrap");
    let mut wire = map.to_proto();
    wire.meta = None;
    assert!(matches!(ShardMap::from_proto(&wire), Err(MapError::Malformed(_))));
    let mut wire = map.to_proto();
    wire.meta.as_mut().unwrap().voters[0].replica_id = wire.shards[0].voters[0].replica_id;
    assert!(matches!(ShardMap::from_proto(&wire), Err(MapError::Malformed(_))));
    let mut wire = map.to_proto();
    wire.meta.as_mut().unwrap().arc_end = 7;
    assert!(matches!(ShardMap::from_proto(&wire), Err(MapError::Malformed(_))));
    let mut wire = map.to_proto();
    wire.shards[1].arc_end -= 1;
    assert!(matches!(ShardMap::from_proto(&wire), Err(MapError::Malformed(_))));
    let mut wire = map.to_proto();
    wire.shards[2].voters[0].node_id = 99;
    assert!(ShardMap::from_proto(&wire).is_err());
}

#[test]
fn every_map_change_round_trips_and_an_empty_one_is_refused() {
    let changes = [
        MapChange::SetReadReplicas { count: 2 },
        MapChange::MoveReplica {
            shard: ShardId(1),
            from: NodeId(1),
            to: NodeId(4),
            reason: "test".into(),
        },
        MapChange::SplitShard {
            shard: ShardId(1),
            reason: "test".into(),
        },
        MapChange::DecommissionNode { node: NodeId(4) },
        MapChange::Join {
            node: None,
            addr: "127.0.0.1:9000".into(),
            incarnation: 77,
            role: NodeRole::ReadReplica,
        },
    ];
    for change in &changes {
        assert_eq!(&MapChange::from_proto(&change.to_proto()).unwrap(), change);
    }
    assert!(MapChange::from_proto(&pb::MapChange { change: None }).is_err());
}
