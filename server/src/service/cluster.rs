//! The Cluster service: the shard map (with this node's leader hints) and this node's status.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use ringkv_proto::pb::{self, cluster_server::Cluster};

use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn get_shard_map(
        &self,
        _: Request<pb::GetShardMapRequest>,
    ) -> Result<Response<pb::ShardMap>, Status> {
        Ok(Response::new(self.node.shard_map().to_proto()))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.node.status()))
    }
}
