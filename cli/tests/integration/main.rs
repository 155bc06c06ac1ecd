//! The `linkgate` command's integration tests, one binary: the real binary on loopback, real
//! python3, real peers.

mod support;

mod balancer;
mod cli;
mod faults;
mod mux;
mod operations;
mod probe;
mod python;
mod sealed;
