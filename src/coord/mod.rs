//! `sparq encode` on one machine: the coordinator that leases a job's shards to worker
//! processes over pipes, the worker process loop, their protocol, and progress.

pub mod coordinator;
pub(crate) mod pool;
pub(crate) mod progress;
pub(crate) mod protocol;
pub mod runner;
pub mod worker;
