//! chimney-device: the vhost-user backend emulating a TCP-chimney NIC.
//!
//! The three chimney interfaces stay visible as modules (DESIGN.md rule 1):
//! `state_manipulation` (initiate/query/update/invalidate/terminate on the object table),
//! data I/O and event indication (later issues). `control_ring` moves records between
//! the control queue pair and `state_manipulation`.
//!
//! The vhost-user side: `daemon` (life cycle, one daemon per frontend connection), `relay`
//! (QEMU's early SET_VRING_ENABLE, DESIGN.md), `backend` (the `VhostUserBackend` glue),
//! `nic` (queue pair 0 ↔ TAP), `features` (what is offered and what acks mean).

pub mod backend;
pub mod control_ring;
pub mod conversion;
pub mod daemon;
pub mod data_path;
pub mod data_plane;
pub mod data_ring;
mod error;
pub mod features;
pub mod nic;
pub mod offload_glue;
pub mod policy;
pub mod relay;
pub mod seqcheck;
pub mod state_manipulation;
pub mod statistics;
pub mod sys;

pub use daemon::{Device, DeviceConfig, RunningDevice};
pub use error::DeviceError;
pub use nic::{NicStats, NicStatsSnapshot};
