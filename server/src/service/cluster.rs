//! The Cluster service: the shard map (with this node's leader hints), this node's status, cluster
//! formation (`Hello`), and the replica check (`CheckShard` proposes a digest on the leader,
//! `ReplicaDigest` reads one replica's result).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use ringkv_engine::ShardId;
use ringkv_proto::pb::{self, cluster_server::Cluster};

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
        _: Request<pb::GetShardMapRequest>,
    ) -> Result<Response<pb::ShardMap>, Status> {
        Ok(Response::new(self.slot.require()?.shard_map().to_proto()))
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
