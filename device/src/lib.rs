//! chimney-device: the vhost-user backend emulating a TCP-chimney NIC.
//!
//! The three chimney interfaces stay visible as modules (DESIGN.md rule 1):
//! `state_manipulation` (initiate/query/update/invalidate/terminate on the object table),
//! data I/O and event indication (later issues). `control_ring` moves records between
//! the control queue pair and `state_manipulation`.

pub mod control_ring;
pub mod state_manipulation;
