//! Fault tests against real `ringkv` processes killed with SIGKILL: failover under concurrent
//! load with a linearizability check, and a restart of the whole cluster.

mod failover;
mod restart;
