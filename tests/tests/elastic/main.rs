//! The elastic cluster against real `ringkv` processes: the shard map as replicated metadata,
//! replicas moving between nodes, and decommissioning a node.
//! Every test ends with the replica check, which covers the metadata group too.

mod dead_node;
mod decommission;
mod grow;
mod metadata;
mod moves;
