//! The Cluster service: the shard map (with this node's leader hints; followed with `WatchMap`,
//! changed with `ProposeMap`), this node's status, cluster formation (`Hello`), the replica check
//! (`CheckShard` proposes a digest on the leader, `ReplicaDigest` reads one replica's result), and
//! replica moves (`MoveReplica` begins one, `ChangeReplicas` is one step on a shard's leader), and
//! `Join` and `DecommissionNode`.

use ringkv_proto::FromProto;
use ringkv_proto::ToProto;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use ringkv_engine::{NodeId, ReplicaId, ShardId};
use ringkv_map::{MapChange, Replica};
use ringkv_proto::pb::{self, cluster_server::Cluster};

use super::kv::client_budget;
use crate::error::ServiceError;
use crate::node::NodeSlot;

pub struct ClusterService {
    slot: Arc<NodeSlot>,
}

impl ClusterService {
    pub fn new(slot: Arc<NodeSlot>) -> Self {
        ClusterService { slot }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn get_shard_map(
        &self,
        request: Request<pb::GetShardMapRequest>,
    ) -> Result<Response<pb::ShardMap>, Status> {
        let node = self.slot.require()?;
        if !request.get_ref().linearizable {
            return Ok(Response::new(node.shard_map().to_proto()));
        }
        let budget = node.budget(client_budget(&request)?);
        Ok(Response::new(node.confirmed_map(budget).await?.to_proto()))
    }

    type WatchMapStream = ReceiverStream<Result<pb::ShardMap, Status>>;

    async fn watch_map(
        &self,
        request: Request<pb::WatchMapRequest>,
    ) -> Result<Response<Self::WatchMapStream>, Status> {
        let node = self.slot.require()?;
        Ok(Response::new(node.watch_map(request.into_inner().from_epoch)))
    }

    async fn change_map(
        &self,
        request: Request<pb::ChangeMapRequest>,
    ) -> Result<Response<pb::ChangeMapResponse>, Status> {
        let node = self.slot.require()?;
        let budget = node.budget(client_budget(&request)?);
        let request = request.into_inner();
        let change = request
            .change
            .as_ref()
            .ok_or_else(|| "the request names no change".to_string())
            .and_then(MapChange::from_proto)
            .map_err(|error| ServiceError::InvalidArgument(format!("ChangeMap: {error}")))?;
        let map = node
            .request_map_change(&change, request.forwarded, budget)
            .await?;
        Ok(Response::new(pb::ChangeMapResponse {
            map: Some(map.to_proto()),
        }))
    }

    async fn set_read_replicas(
        &self,
        request: Request<pb::SetReadReplicasRequest>,
    ) -> Result<Response<pb::SetReadReplicasResponse>, Status> {
        let node = self.slot.require()?;
        let budget = node.budget(client_budget(&request)?);
        let change = MapChange::SetReadReplicas {
            count: request.into_inner().read_replicas,
        };
        let map = node.request_map_change(&change, false, budget).await?;
        Ok(Response::new(pb::SetReadReplicasResponse {
            map: Some(map.to_proto()),
        }))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.slot.status()?))
    }

    async fn hello(&self, _: Request<pb::HelloRequest>) -> Result<Response<pb::HelloResponse>, Status> {
        Ok(Response::new(self.slot.hello()))
    }

    async fn check_shard(
        &self,
        request: Request<pb::CheckShardRequest>,
    ) -> Result<Response<pb::CheckShardResponse>, Status> {
        let node = self.slot.require()?;
        let index = node
            .propose_digest(ShardId(request.into_inner().shard_id))
            .await?;
        Ok(Response::new(pb::CheckShardResponse { index }))
    }

    async fn move_replica(
        &self,
        request: Request<pb::MoveReplicaRequest>,
    ) -> Result<Response<pb::MoveReplicaResponse>, Status> {
        let node = self.slot.require()?;
        let budget = node.budget(client_budget(&request)?);
        let request = request.into_inner();
        let map = node
            .begin_move(
                ShardId(request.shard_id),
                NodeId(request.from_node),
                NodeId(request.to_node),
                "requested by an operator",
                budget,
            )
            .await?;
        Ok(Response::new(pb::MoveReplicaResponse {
            map: Some(map.to_proto()),
        }))
    }

    async fn split_shard(
        &self,
        request: Request<pb::SplitShardRequest>,
    ) -> Result<Response<pb::SplitShardResponse>, Status> {
        let node = self.slot.require()?;
        let budget = node.budget(client_budget(&request)?);
        let request = request.into_inner();
        let map = node
            .begin_split(ShardId(request.shard_id), "requested by an operator", budget)
            .await?;
        Ok(Response::new(pb::SplitShardResponse {
            map: Some(map.to_proto()),
        }))
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let node = self.slot.require()?;
        let budget = node.budget(client_budget(&request)?);
        let request = request.into_inner();
        let wanted = (request.node_id != 0).then_some(NodeId(request.node_id));
        let (node_id, map) = node
            .join_node(wanted, &request.addr, request.incarnation, request.role(), budget)
            .await?;
        Ok(Response::new(pb::JoinResponse {
            node_id: node_id.0,
            map: Some(map.to_proto()),
            params: Some(node.params().to_proto()),
        }))
    }

    async fn decommission_node(
        &self,
        request: Request<pb::DecommissionNodeRequest>,
    ) -> Result<Response<pb::DecommissionNodeResponse>, Status> {
        let node = self.slot.require()?;
        let budget = node.budget(client_budget(&request)?);
        let map = node
            .decommission_node(NodeId(request.into_inner().node_id), budget)
            .await?;
        Ok(Response::new(pb::DecommissionNodeResponse {
            map: Some(map.to_proto()),
        }))
    }

    async fn change_replicas(
        &self,
        request: Request<pb::ChangeReplicasRequest>,
    ) -> Result<Response<pb::ChangeReplicasResponse>, Status> {
        let node = self.slot.require()?;
        let budget = node.budget(client_budget(&request)?);
        let request = request.into_inner();
        let action = pb::ChangeReplicasAction::try_from(request.action).map_err(|_| {
            ServiceError::InvalidArgument(format!("unknown ChangeReplicas action {}", request.action))
        })?;
        let add = request.add.map(|add| Replica {
            replica_id: ReplicaId(add.replica_id),
            node_id: NodeId(add.node_id),
        });
        let response = node
            .change_replicas(
                ShardId(request.shard_id),
                action,
                add,
                ReplicaId(request.remove_replica_id),
                budget,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn replica_digest(
        &self,
        request: Request<pb::ReplicaDigestRequest>,
    ) -> Result<Response<pb::ReplicaDigestResponse>, Status> {
        let request = request.into_inner();
        let node = self.slot.require()?;
        Ok(Response::new(
            node.replica_digest(ShardId(request.shard_id), request.index),
        ))
    }
}
