//! Ballast's fault-injection harness: real `ballast` processes on 127.0.0.1 with faults
//! between and inside them, client histories checked for linearizability, watchers checked
//! against the store, and the scenarios that put it all together.
//!
//! * [`cluster`]: processes, restarts, pauses, membership changes, convergence (HashKV).
//! * [`proxy`]: the peer-link fault proxy (partitions, one-way cuts, delay, loss).
//! * [`history`], [`workload`]: clients that record every operation, ambiguous ones included.
//! * [`leases`]: the lease scenario's keep-alive client and expiry observer.
//! * [`linearize`]: the linearizability checker for the register model.
//! * [`watchcheck`]: watchers and the watch guarantees.
//! * [`scenario`]: the scenarios and the figures each one reports.

pub mod cluster;
pub mod history;
pub mod leases;
pub mod linearize;
pub mod proxy;
pub mod scenario;
pub mod watchcheck;
pub mod workload;
