//! The ringkv server: runs a node (config, identity, Raft transport, shard hosting, gRPC services)
//! and the command-line tool that talks to a cluster through ringkv-client. `main.rs` only calls
//! `cli`.

pub mod cli;
pub mod config;
pub mod error;
pub mod identity;
pub mod node;
pub mod security;
pub mod server;
mod service;
pub mod transport;
mod wire;

pub use config::NodeConfig;
pub use server::{RunningNode, StartOptions, start, start_with};
