//! How a node finds its cluster when its data directory holds none: it never creates replicas of a
//! cluster that already exists. `join_cluster` is the other way in: joining a running cluster.
//!
//! Process overview (a node whose data directory has a node record but no cluster):
//! 1. Ask every peer in `--peers` who it is (`Cluster.Hello`), over and over, until one of the
//!    steps below ends the wait. A peer that is down is simply asked again later.
//! 2. A peer that belongs to a cluster sends its shard map. If the map lists this node with this
//!    data directory's incarnation, the node adopts the map (it was created with this node's
//!    answer). If the map lists this node with another incarnation, this data directory replaced
//!    the one that held its replicas: the node refuses to start (it could vote with an empty log
//!    and erase committed writes). If the map does not list this node, or the cluster was created
//!    with other settings, it refuses too, naming the difference.
//! 3. A peer that is waiting too sends its incarnation and settings; different settings are
//!    refused, naming the difference.
//! 4. The lowest-numbered node creates the cluster (a random cluster id, the bootstrap shard map
//!    with every node's incarnation) once every peer has answered that it is waiting. Since a
//!    member never answers "waiting", a node whose disk was lost can never create a new cluster
//!    while any of its peers still holds the old one.

use ringkv_proto::FromProto;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use tracing::info;

use ringkv_engine::{Engine, NodeId};
use ringkv_map::ShardMap;
use ringkv_proto::limits::MAX_MESSAGE_BYTES;
use ringkv_proto::pb::{self, cluster_client::ClusterClient};

use crate::identity::{self, BootstrapParams, NodeRecord, random_nonzero};

/// How long one Hello to a peer may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between rounds of Hellos.
const ROUND_PAUSE: Duration = Duration::from_millis(300);
/// How often the wait is reported in the log.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// How long the member may take to record a joining node in the map.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a peer said about itself.
enum PeerState {
    Waiting { incarnation: u64 },
    Member { map: Box<ShardMap> },
}

/// Forms the cluster with the peers, or adopts the one they formed; returns its shard map.
/// Waits as long as peers are missing: the caller (or the operator's Ctrl-C) bounds it.
pub async fn join_or_form(
    me: NodeRecord,
    params: &BootstrapParams,
    data_dir: &str,
) -> anyhow::Result<ShardMap> {
    let creator = *params
        .peers
        .keys()
        .next()
        .expect("validated: peers include this node");
    let peers: BTreeMap<NodeId, String> = params
        .peers
        .iter()
        .filter(|(node, _)| **node != me.node_id)
        .map(|(node, addr)| (*node, addr.clone()))
        .collect();
    let mut incarnations = BTreeMap::from([(me.node_id, me.incarnation)]);
    let mut last_report = Instant::now();
    let mut unreachable: BTreeMap<NodeId, String> = BTreeMap::new();
    loop {
        for (&peer, addr) in &peers {
            let state = match hello(addr, me, params).await {
                Ok(response) => check_peer(me, params, data_dir, peer, addr, response)?,
                Err(error) => {
                    unreachable.insert(peer, error);
                    continue;
                }
            };
            unreachable.remove(&peer);
            match state {
                PeerState::Member { map } => {
                    info!(
                        cluster_id = format_args!("{:016x}", map.cluster_id),
                        from_node = %peer,
                        "joined the cluster its peers formed"
                    );
                    return Ok(*map);
                }
                PeerState::Waiting { incarnation } => {
                    incarnations.insert(peer, incarnation);
                }
            }
        }
        if me.node_id == creator && incarnations.len() == params.peers.len() {
            let cluster_id = random_nonzero();
            let map = ShardMap::bootstrap(
                cluster_id,
                &params.nodes(&incarnations),
                params.shards,
                params.replication as usize,
            )?;
            info!(
                cluster_id = format_args!("{cluster_id:016x}"),
                nodes = params.peers.len(),
                shards = params.shards,
                "created a new cluster"
            );
            return Ok(map);
        }
        if last_report.elapsed() >= REPORT_INTERVAL {
            last_report = Instant::now();
            let waiting_for: Vec<String> = peers
                .keys()
                .filter(|peer| !incarnations.contains_key(peer))
                .map(|peer| match unreachable.get(peer) {
                    Some(error) => format!("node {peer} ({error})"),
                    None => format!("node {peer}"),
                })
                .collect();
            info!(
                creator = %creator,
                "waiting for the cluster to form: every node listed in --peers must be started; \
                 not heard from yet: {}",
                if waiting_for.is_empty() { "none (waiting for the creator)".into() } else { waiting_for.join(", ") }
            );
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

async fn hello(addr: &str, me: NodeRecord, params: &BootstrapParams) -> Result<pb::HelloResponse, String> {
    let request = pb::HelloRequest {
        node_id: me.node_id.0,
        incarnation: me.incarnation,
        params: Some(params.to_proto()),
    };
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(HELLO_TIMEOUT)
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut client = ClusterClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        client
            .hello(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| status.message().to_owned())
    };
    tokio::time::timeout(HELLO_TIMEOUT * 2, call)
        .await
        .map_err(|_| "no answer".to_owned())?
}

/// What a peer's answer means for this node: refuses to go on when it must (see the module
/// header).
fn check_peer(
    me: NodeRecord,
    params: &BootstrapParams,
    data_dir: &str,
    peer: NodeId,
    addr: &str,
    response: pb::HelloResponse,
) -> anyhow::Result<PeerState> {
    if response.node_id != peer.0 {
        bail!(
            "--peers gives {addr} to node {peer}, but the node answering there is node {}; give every \
             node its own address in --peers",
            response.node_id
        );
    }
    let their_params = BootstrapParams::from_proto(&response.params.unwrap_or_default());
    let Some(map) = response.map else {
        let differences = params.differences(&their_params, &format!("node {peer} at {addr}"));
        if !differences.is_empty() {
            bail!(
                "node {peer} at {addr} is forming a cluster with other settings: {}. Start every node of a \
                 new cluster with the same --shards, --replication and --peers",
                differences.join("; ")
            );
        }
        return Ok(PeerState::Waiting {
            incarnation: response.incarnation,
        });
    };
    let map = ShardMap::from_proto(&map)?;
    let cluster = format!(
        "cluster {:016x} (node {peer} at {addr} belongs to it)",
        map.cluster_id
    );
    let differences = params.differences(&their_params, &cluster);
    if !differences.is_empty() {
        bail!(
            "this node's settings differ from those of the existing {cluster}: {}. Start it with the \
             cluster's settings",
            differences.join("; ")
        );
    }
    match map.nodes.get(&me.node_id) {
        None => bail!(
            "node {} is not a member of the existing {cluster}; check --node-id and --peers",
            me.node_id
        ),
        Some(info) if info.incarnation != me.incarnation => bail!(
            "node {node} refuses to start: its data directory {data_dir} is new (incarnation {new:016x}), but \
             node {node} is already a member of the existing {cluster} with another data directory \
             (incarnation {old:016x}), whose replicas held data that is now gone. Starting it as the same \
             node could let it vote with an empty log and erase committed writes. Restore node {node}'s \
             original data directory, or replace the lost node: `ringkv node remove {node}`, then start \
             this machine with --join and no --node-id (it joins as a new node)",
            node = me.node_id,
            new = me.incarnation,
            old = info.incarnation,
        ),
        Some(_) => Ok(PeerState::Member { map: Box::new(map) }),
    }
}

/// Joins a running cluster through the member at `join` (`ringkv start --join`): asks it to add
/// this node (`Cluster.Join`), then records the node, the cluster's settings and the map in the
/// data directory. With an id given (`node_id` not 0), the node record is written before asking,
/// so a node that crashes before the answer asks again as the same node (`existing`). Waits as
/// long as the member does not answer; a refusal ends it with the member's reason.
pub async fn join_cluster(
    engine: &Engine,
    join: &str,
    node_id: NodeId,
    addr: &str,
    role: pb::NodeRole,
    existing: Option<NodeRecord>,
) -> anyhow::Result<(NodeRecord, (BootstrapParams, ShardMap))> {
    let incarnation = existing.map_or_else(random_nonzero, |record| record.incarnation);
    if existing.is_none() && node_id.0 != 0 {
        let record = NodeRecord { node_id, incarnation };
        engine
            .run_blocking(move |engine| identity::save_node(engine, record))
            .await?;
    }
    let mut last_report = Instant::now();
    loop {
        let request = pb::JoinRequest {
            node_id: node_id.0,
            addr: addr.to_owned(),
            incarnation,
            role: role.into(),
        };
        match ask_to_join(join, request).await {
            Ok(response) => {
                let map =
                    ShardMap::from_proto(&response.map.ok_or_else(|| {
                        anyhow::anyhow!("the node at {join} answered the join without a map")
                    })?)?;
                let params = BootstrapParams::from_proto(&response.params.unwrap_or_default());
                let record = NodeRecord {
                    node_id: NodeId(response.node_id),
                    incarnation,
                };
                let (saved_params, saved_map) = (params.clone(), map.clone());
                engine
                    .run_blocking(move |engine| -> anyhow::Result<()> {
                        identity::save_node(engine, record)?;
                        identity::save_cluster(engine, &saved_params, &saved_map)
                    })
                    .await?;
                info!(
                    node_id = %record.node_id,
                    cluster_id = format_args!("{:016x}", map.cluster_id),
                    via = join,
                    "joined a running cluster; the controller moves replicas here"
                );
                return Ok((record, (params, map)));
            }
            Err(Ok(refusal)) => bail!("the cluster at {join} refused this node: {refusal}"),
            Err(Err(unreachable)) => {
                if last_report.elapsed() >= REPORT_INTERVAL {
                    last_report = Instant::now();
                    info!(via = join, error = %unreachable, "waiting to join the cluster: the node to join through does not answer");
                }
                tokio::time::sleep(ROUND_PAUSE).await;
            }
        }
    }
}

/// One `Join` call. `Err(Ok(reason))`: refused; `Err(Err(error))`: no answer, ask again.
async fn ask_to_join(
    addr: &str,
    request: pb::JoinRequest,
) -> Result<pb::JoinResponse, Result<String, String>> {
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Ok(e.to_string()))?
            .connect_timeout(HELLO_TIMEOUT)
            .connect()
            .await
            .map_err(|e| Err(format!("cannot connect: {e}")))?;
        let mut client = ClusterClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut request = tonic::Request::new(request);
        request.set_timeout(JOIN_TIMEOUT);
        client
            .join(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                if status.code() == tonic::Code::InvalidArgument {
                    Ok(status.message().to_owned())
                } else {
                    Err(status.message().to_owned())
                }
            })
    };
    tokio::time::timeout(JOIN_TIMEOUT + HELLO_TIMEOUT, call)
        .await
        .map_err(|_| Err("no answer".to_owned()))?
}
