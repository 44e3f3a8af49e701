//! chimney-bench: what offload buys, measured against the host stack and the kernel in one
//! run (issue 8). Each module is one measurement; `main.rs` runs them in order and prints
//! the table (docs/benchmarks.md).

pub mod bulk;
pub mod control;
pub mod error;
pub mod peer;
pub mod progress;
pub mod pump;
pub mod report;
pub mod rig;
pub mod scaling;
pub mod small_ops;
pub mod sys;
pub mod veth;

pub use error::{BenchError, Result};
