//! `sparq encode` on one machine: the coordinator that leases a job's shards to worker
//! processes over pipes, the worker process loop, their protocol, and progress.

pub mod coordinator;
pub mod pool;
pub mod progress;
pub mod protocol;
pub mod worker;
