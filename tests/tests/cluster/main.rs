//! End-to-end tests against real `ringkv` processes: data spread and read-back over a 3-node
//! cluster, bad input and misuse, the command-line tool, and `ringkv start` with defaults.

mod bad_input;
mod cli;
mod defaults;
mod spread;
