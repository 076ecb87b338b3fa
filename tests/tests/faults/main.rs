//! Fault tests against real `ringkv` processes killed with SIGKILL: failover under concurrent
//! load with a linearizability check, a restart of the whole cluster, and the loss of a majority.

mod failover;
mod majority_loss;
mod restart;
