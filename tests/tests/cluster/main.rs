//! End-to-end tests of a working cluster: data spread and read-back over a 3-node cluster, bad
//! input and misuse, the command-line tool and the load generator, `ringkv start` with defaults
//! (real processes), and a replica taken out of service on corruption (in-process nodes, to
//! damage one's files).

mod bad_input;
mod bench;
mod cli;
mod commands;
mod defaults;
mod frozen_client;
mod spread;
mod storage_fault;
mod tagged_scan;
