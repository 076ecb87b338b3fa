//! Fault tests against real `ringkv` processes: failover under concurrent load with a
//! linearizability check, a restart of the whole cluster (with writes in flight too), the loss of
//! a majority, a node that lost its disk, a rolling restart with SIGTERM, and deadlines with nodes
//! stopped or frozen. Every test ends with the replica check. (The CPU-hog test is in its own
//! binary, `starvation`, so no other cluster competes with it.)

mod deadlines;
mod failover;
mod identity;
mod majority_loss;
mod restart;
mod rolling_restart;
