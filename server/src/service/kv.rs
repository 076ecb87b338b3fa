//! The Kv service: validates each request, routes it to the local replica of the key's shard, and
//! either proposes a command (writes, with the client's request id so retries apply once) or
//! waits for what the read's consistency level needs (`node::reads`) and reads the engine. Every
//! answer carries a log index a session keeps as its token for the shard. Every wait is bounded by the
//! request's budget (`ringkv-budget-ms` on a unary call, `budget_ms` on a command of the
//! `Commands` stream, served in `kv_commands`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use ringkv_engine::{BatchOp, Command, CommandResult, Expect, Proposal, RequestId, Versioned, now_ms};
use ringkv_proto::pb::{self, kv_server::Kv};
use ringkv_proto::{check_batch, check_key, check_scan, check_value};

use super::kv_commands::ReplyStream;
use crate::error::ServiceError;
use crate::node::{Applied, Node, NodeSlot, ReadLevel};

/// Most keys one multi-get may name (a client splits larger reads).
pub const MAX_MULTI_GET_KEYS: usize = 1_000;
/// Largest page a scan returns, whatever the client asks for.
const MAX_SCAN_LIMIT: usize = 10_000;
/// Page size when the client leaves `limit` at 0.
const DEFAULT_SCAN_LIMIT: usize = 100;
/// The metadata entry carrying how long the node may work on a request, in milliseconds.
pub const BUDGET_HEADER: &str = "ringkv-budget-ms";

#[derive(Clone)]
pub struct KvService {
    pub(super) slot: Arc<NodeSlot>,
    /// Becomes true when the node stops serving: long-lived `Commands` streams end then, so the
    /// server's graceful shutdown does not wait on them.
    pub(super) stopping: watch::Receiver<bool>,
}

impl KvService {
    pub fn new(slot: Arc<NodeSlot>, stopping: watch::Receiver<bool>) -> Self {
        KvService { slot, stopping }
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

/// The client's budget for this request, if it sent one.
pub(super) fn client_budget<T>(request: &Request<T>) -> Result<Option<Duration>, ServiceError> {
    let Some(value) = request.metadata().get(BUDGET_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .map(|millis| Some(Duration::from_millis(millis)))
        .ok_or_else(|| {
            ServiceError::InvalidArgument(format!("{BUDGET_HEADER} must be a number of milliseconds"))
        })
}

/// Wraps `command` with the client's request id (checked) and this leader's clock.
fn proposal(request_id: Option<pb::RequestId>, command: Command) -> Result<Proposal, ServiceError> {
    let (request, client_floor) = match request_id {
        None => (None, 0),
        Some(id) => {
            if id.seq == 0 || id.first_incomplete > id.seq {
                return Err(ServiceError::InvalidArgument(format!(
                    "request id is malformed: seq must be at least 1 and first_incomplete at most seq \
                     (got seq {}, first_incomplete {})",
                    id.seq, id.first_incomplete
                )));
            }
            let request = RequestId {
                client: id.client_id,
                seq: id.seq,
            };
            (Some(request), id.first_incomplete)
        }
    };
    Ok(Proposal {
        request,
        client_floor,
        proposed_at_ms: now_ms(),
        command,
    })
}

impl KvService {
    fn node(&self) -> Result<Arc<Node>, ServiceError> {
        self.slot.require()
    }

    pub(super) async fn get(
        &self,
        budget: Option<Duration>,
        request: pb::GetRequest,
    ) -> Result<pb::GetResponse, ServiceError> {
        let node = self.node()?;
        let budget = node.budget(budget);
        let level = ReadLevel::from_wire(request.level.as_ref())?;
        let replica = node.route(request.route.as_ref(), &request.key)?;
        node.read_barrier(&replica, level, budget).await?;
        // Checked once the replica has applied what the barrier asked for: a split applied by
        // then gave the key to another shard, whose replica here may be behind.
        if !replica.range.get().holds_key(&request.key) {
            return Err(node.moved_by_split(replica.shard_id));
        }
        let value = node.read_key(&replica, request.key.to_vec()).await?;
        Ok(pb::GetResponse {
            value: value.map(versioned),
            // Loaded after the read: at or above the state it saw.
            index: replica.applied_bound.get(),
            node_id: node.node_id().0,
            replica_id: replica.replica_id.0,
        })
    }

    /// Reads many keys of one shard at one level: one barrier, then every key.
    pub(super) async fn multi_get(
        &self,
        budget: Option<Duration>,
        request: pb::MultiGetRequest,
    ) -> Result<pb::MultiGetResponse, ServiceError> {
        let node = self.node()?;
        let budget = node.budget(budget);
        let level = ReadLevel::from_wire(request.level.as_ref())?;
        let Some(first) = request.keys.first() else {
            return Err(ServiceError::InvalidArgument(
                "a multi-get needs at least one key".into(),
            ));
        };
        if request.keys.len() > MAX_MULTI_GET_KEYS {
            return Err(ServiceError::InvalidArgument(format!(
                "a multi-get names at most {MAX_MULTI_GET_KEYS} keys (got {})",
                request.keys.len()
            )));
        }
        let replica = node.route(request.route.as_ref(), first)?;
        for (index, key) in request.keys.iter().enumerate().skip(1) {
            check_key(key).map_err(|e| ServiceError::InvalidArgument(format!("key {index}: {e}")))?;
            let shard = node.route(request.route.as_ref(), key).map(|r| r.shard_id);
            if shard.as_ref().ok() != Some(&replica.shard_id) {
                return Err(shard.err().unwrap_or_else(|| {
                    ServiceError::InvalidArgument(format!(
                        "a multi-get reads one shard; key {index} is not in shard {}",
                        replica.shard_id
                    ))
                }));
            }
        }
        node.read_barrier(&replica, level, budget).await?;
        let range = replica.range.get();
        if request.keys.iter().any(|key| !range.holds_key(key)) {
            return Err(node.moved_by_split(replica.shard_id));
        }
        let mut values = Vec::with_capacity(request.keys.len());
        for key in &request.keys {
            let value = node.read_key(&replica, key.to_vec()).await?;
            values.push(pb::MaybeValue {
                value: value.map(versioned),
            });
        }
        Ok(pb::MultiGetResponse {
            values,
            index: replica.applied_bound.get(),
            node_id: node.node_id().0,
        })
    }

    pub(super) async fn put(
        &self,
        budget: Option<Duration>,
        request: pb::PutRequest,
    ) -> Result<pb::PutResponse, ServiceError> {
        let node = self.node()?;
        let budget = node.budget(budget);
        check_value(&request.value)?;
        let replica = node.route(request.route.as_ref(), &request.key)?;
        let command = Command::Put {
            key: request.key.to_vec(),
            value: request.value.to_vec(),
        };
        match node
            .write(&replica, proposal(request.request_id, command)?, budget)
            .await?
        {
            Applied {
                result: CommandResult::Put { version },
                index,
            } => Ok(pb::PutResponse { version, index }),
            other => Err(unexpected(other.result)),
        }
    }

    pub(super) async fn delete(
        &self,
        budget: Option<Duration>,
        request: pb::DeleteRequest,
    ) -> Result<pb::DeleteResponse, ServiceError> {
        let node = self.node()?;
        let budget = node.budget(budget);
        let replica = node.route(request.route.as_ref(), &request.key)?;
        let command = Command::Delete {
            key: request.key.to_vec(),
        };
        match node
            .write(&replica, proposal(request.request_id, command)?, budget)
            .await?
        {
            Applied {
                result: CommandResult::Delete { existed },
                index,
            } => Ok(pb::DeleteResponse { existed, index }),
            other => Err(unexpected(other.result)),
        }
    }

    pub(super) async fn compare_and_swap(
        &self,
        budget: Option<Duration>,
        request: pb::CasRequest,
    ) -> Result<pb::CasResponse, ServiceError> {
        use pb::cas_request::Expect as WireExpect;
        let node = self.node()?;
        let budget = node.budget(budget);
        let expect = match request.expect {
            Some(WireExpect::ExpectValue(value)) => {
                check_value(&value)
                    .map_err(|e| ServiceError::InvalidArgument(format!("the expected value: {e}")))?;
                Expect::Value(value.to_vec())
            }
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
        let replica = node.route(request.route.as_ref(), &request.key)?;
        let command = Command::Cas {
            key: request.key.to_vec(),
            expect,
            new_value,
        };
        match node
            .write(&replica, proposal(request.request_id, command)?, budget)
            .await?
        {
            Applied {
                result:
                    CommandResult::Cas {
                        succeeded,
                        version,
                        current,
                    },
                index,
            } => Ok(pb::CasResponse {
                succeeded,
                version,
                current: current.map(versioned),
                index,
            }),
            other => Err(unexpected(other.result)),
        }
    }

    pub(super) async fn batch(
        &self,
        budget: Option<Duration>,
        request: pb::BatchRequest,
    ) -> Result<pb::BatchResponse, ServiceError> {
        let node = self.node()?;
        let budget = node.budget(budget);
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
        let replica = node.route(request.route.as_ref(), &request.ops[0].key)?;
        for op in &request.ops[1..] {
            match node.route(request.route.as_ref(), &op.key) {
                Ok(other) if other.shard_id == replica.shard_id => {}
                // The caller's map is older than this node's: a split since it split the batch
                // may have spread the part's keys over two shards. It refreshes and splits again.
                Err(error @ ServiceError::WrongShard { map_epoch, .. })
                    if request
                        .route
                        .as_ref()
                        .is_some_and(|route| route.map_epoch < map_epoch) =>
                {
                    return Err(error);
                }
                _ => {
                    return Err(ServiceError::InvalidArgument(format!(
                        "an atomic batch must stay within one shard (give its keys one hash tag, like \
                         {{user42}}:a); keys span shard {} and another shard",
                        replica.shard_id
                    )));
                }
            }
        }
        match node
            .write(
                &replica,
                proposal(request.request_id, Command::Batch { ops })?,
                budget,
            )
            .await?
        {
            Applied {
                result: CommandResult::Batch { version },
                index,
            } => Ok(pb::BatchResponse { version, index }),
            other => Err(unexpected(other.result)),
        }
    }

    pub(super) async fn scan(
        &self,
        budget: Option<Duration>,
        request: pb::ScanRequest,
    ) -> Result<pb::ScanResponse, ServiceError> {
        let node = self.node()?;
        let budget = node.budget(budget);
        let level = ReadLevel::from_wire(request.level.as_ref())?;
        check_scan(&request.prefix, &request.cursor)?;
        let replica = node.route_shard(request.route.as_ref())?;
        let limit = match request.limit as usize {
            0 => DEFAULT_SCAN_LIMIT,
            n => n.min(MAX_SCAN_LIMIT),
        };
        node.read_barrier(&replica, level, budget).await?;
        let range = replica.range.get();
        // A cursor names the hash it stopped at: a split may have given that hash to another
        // shard since, which goes on from there.
        if let Some(hash) = request.cursor.get(..8)
            && !range.contains(u64::from_be_bytes(hash.try_into().expect("8 bytes")))
        {
            return Err(node.moved_by_split(replica.shard_id));
        }
        let page = node
            .scan(
                &replica,
                range,
                request.cursor.to_vec(),
                request.prefix.to_vec(),
                limit,
            )
            .await?;
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
            range_end: Some(range.end),
            index: replica.applied_bound.get(),
            node_id: node.node_id().0,
        })
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    type CommandsStream = ReplyStream;

    async fn commands(
        &self,
        request: Request<Streaming<pb::KvCommands>>,
    ) -> Result<Response<ReplyStream>, Status> {
        Ok(Response::new(self.serve_commands(request.into_inner())))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Ok(Response::new(
            KvService::get(self, client_budget(&request)?, request.into_inner()).await?,
        ))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Ok(Response::new(
            KvService::put(self, client_budget(&request)?, request.into_inner()).await?,
        ))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Ok(Response::new(
            KvService::delete(self, client_budget(&request)?, request.into_inner()).await?,
        ))
    }

    async fn compare_and_swap(
        &self,
        request: Request<pb::CasRequest>,
    ) -> Result<Response<pb::CasResponse>, Status> {
        Ok(Response::new(
            KvService::compare_and_swap(self, client_budget(&request)?, request.into_inner()).await?,
        ))
    }

    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        Ok(Response::new(
            KvService::batch(self, client_budget(&request)?, request.into_inner()).await?,
        ))
    }

    async fn scan(&self, request: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        Ok(Response::new(
            KvService::scan(self, client_budget(&request)?, request.into_inner()).await?,
        ))
    }

    async fn multi_get(
        &self,
        request: Request<pb::MultiGetRequest>,
    ) -> Result<Response<pb::MultiGetResponse>, Status> {
        Ok(Response::new(
            KvService::multi_get(self, client_budget(&request)?, request.into_inner()).await?,
        ))
    }
}
