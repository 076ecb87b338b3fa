//! End-to-end tests against a 3-node cluster of real `ringkv` processes: data spread and read-back,
//! bad input and misuse, and the command-line tool.

mod bad_input;
mod cli;
mod spread;
