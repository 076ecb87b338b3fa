//! The Kv service: validates each request, routes it to the local replica of the key's shard, and
//! either proposes a command (writes) or waits for a linearizable read barrier and reads the engine.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use ringkv_engine::{BatchOp, Command, CommandResult, Expect, Versioned};
use ringkv_proto::pb::{self, kv_server::Kv};
use ringkv_proto::{check_batch, check_key, check_value};

use crate::error::ServiceError;
use crate::node::Node;

/// Largest page a scan returns, whatever the client asks for.
const MAX_SCAN_LIMIT: usize = 10_000;
/// Page size when the client leaves `limit` at 0.
const DEFAULT_SCAN_LIMIT: usize = 100;

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }
}

fn versioned(value: Versioned) -> pb::VersionedValue {
    pb::VersionedValue {
        value: value.value.into(),
        version: value.version,
    }
}

fn unexpected(result: CommandResult) -> ServiceError {
    ServiceError::Internal(format!(
        "state machine answered with an unexpected result {result:?}"
    ))
}

impl KvService {
    async fn get(&self, request: pb::GetRequest) -> Result<pb::GetResponse, ServiceError> {
        let replica = self.node.route(request.route.as_ref(), &request.key)?;
        self.node.linearizable_barrier(&replica).await?;
        let value = self.node.engine().get(&request.key)?;
        Ok(pb::GetResponse {
            value: value.map(versioned),
        })
    }

    async fn put(&self, request: pb::PutRequest) -> Result<pb::PutResponse, ServiceError> {
        check_value(&request.value)?;
        let replica = self.node.route(request.route.as_ref(), &request.key)?;
        let command = Command::Put {
            key: request.key.to_vec(),
            value: request.value.to_vec(),
        };
        match self.node.write(&replica, command).await? {
            CommandResult::Put { version } => Ok(pb::PutResponse { version }),
            other => Err(unexpected(other)),
        }
    }

    async fn delete(&self, request: pb::DeleteRequest) -> Result<pb::DeleteResponse, ServiceError> {
        let replica = self.node.route(request.route.as_ref(), &request.key)?;
        match self
            .node
            .write(
                &replica,
                Command::Delete {
                    key: request.key.to_vec(),
                },
            )
            .await?
        {
            CommandResult::Delete { existed } => Ok(pb::DeleteResponse { existed }),
            other => Err(unexpected(other)),
        }
    }

    async fn compare_and_swap(&self, request: pb::CasRequest) -> Result<pb::CasResponse, ServiceError> {
        use pb::cas_request::Expect as WireExpect;
        let expect = match request.expect {
            Some(WireExpect::ExpectValue(value)) => Expect::Value(value.to_vec()),
            Some(WireExpect::ExpectVersion(version)) => Expect::Version(version),
            Some(WireExpect::ExpectAbsent(_)) => Expect::Absent,
            None => {
                return Err(ServiceError::InvalidArgument(
                    "compare-and-swap needs an expectation: a value, a version, or absent".into(),
                ));
            }
        };
        let new_value = if request.delete {
            None
        } else {
            check_value(&request.new_value)?;
            Some(request.new_value.to_vec())
        };
        let replica = self.node.route(request.route.as_ref(), &request.key)?;
        let command = Command::Cas {
            key: request.key.to_vec(),
            expect,
            new_value,
        };
        match self.node.write(&replica, command).await? {
            CommandResult::Cas {
                succeeded,
                version,
                current,
            } => Ok(pb::CasResponse {
                succeeded,
                version,
                current: current.map(versioned),
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn batch(&self, request: pb::BatchRequest) -> Result<pb::BatchResponse, ServiceError> {
        let mut total_bytes = 0;
        let mut ops = Vec::with_capacity(request.ops.len());
        for (index, op) in request.ops.iter().enumerate() {
            check_key(&op.key)
                .map_err(|e| ServiceError::InvalidArgument(format!("operation {index}: {e}")))?;
            total_bytes += op.key.len();
            ops.push(match &op.op {
                Some(pb::batch_op::Op::Put(value)) => {
                    check_value(value)
                        .map_err(|e| ServiceError::InvalidArgument(format!("operation {index}: {e}")))?;
                    total_bytes += value.len();
                    BatchOp::Put {
                        key: op.key.to_vec(),
                        value: value.to_vec(),
                    }
                }
                Some(pb::batch_op::Op::Delete(_)) => BatchOp::Delete { key: op.key.to_vec() },
                None => {
                    return Err(ServiceError::InvalidArgument(format!(
                        "operation {index} is neither a put nor a delete"
                    )));
                }
            });
        }
        check_batch(ops.len(), total_bytes)?;
        let replica = self.node.route(request.route.as_ref(), &request.ops[0].key)?;
        for op in &request.ops[1..] {
            let other = self.node.route(request.route.as_ref(), &op.key);
            if other.as_ref().map(|r| r.shard_id).ok() != Some(replica.shard_id) {
                return Err(ServiceError::InvalidArgument(format!(
                    "an atomic batch must stay within one shard (give its keys one hash tag, like {{user42}}:a); \
                     keys span shard {} and another shard",
                    replica.shard_id
                )));
            }
        }
        match self.node.write(&replica, Command::Batch { ops }).await? {
            CommandResult::Batch { version } => Ok(pb::BatchResponse { version }),
            other => Err(unexpected(other)),
        }
    }

    async fn scan(&self, request: pb::ScanRequest) -> Result<pb::ScanResponse, ServiceError> {
        let replica = self.node.route_shard(request.route.as_ref())?;
        let limit = match request.limit as usize {
            0 => DEFAULT_SCAN_LIMIT,
            n => n.min(MAX_SCAN_LIMIT),
        };
        self.node.linearizable_barrier(&replica).await?;
        let page = self
            .node
            .engine()
            .scan(replica.range, &request.cursor, &request.prefix, limit)?;
        Ok(pb::ScanResponse {
            entries: page
                .entries
                .into_iter()
                .map(|(key, value)| pb::KeyValue {
                    key: key.into(),
                    value: value.value.into(),
                    version: value.version,
                })
                .collect(),
            next_cursor: page.next_cursor.into(),
        })
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Ok(Response::new(KvService::get(self, request.into_inner()).await?))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Ok(Response::new(KvService::put(self, request.into_inner()).await?))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Ok(Response::new(
            KvService::delete(self, request.into_inner()).await?,
        ))
    }

    async fn compare_and_swap(
        &self,
        request: Request<pb::CasRequest>,
    ) -> Result<Response<pb::CasResponse>, Status> {
        Ok(Response::new(
            KvService::compare_and_swap(self, request.into_inner()).await?,
        ))
    }

    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        Ok(Response::new(KvService::batch(self, request.into_inner()).await?))
    }

    async fn scan(&self, request: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        Ok(Response::new(KvService::scan(self, request.into_inner()).await?))
    }
}
