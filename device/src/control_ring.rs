//! The control queue pair (rx 2 / tx 3): request chains in on tx, completions and
//! event indications out on rx. Record formats: chimney-abi, docs/ring-abi.md.
//!
//! INTERFACE CONTRACT (used by the vhost-user backend in `backend.rs`):
//! `ControlRing::new(limits)`, then `process(mem, tx, rx)` whenever either control queue
//! is kicked; it pops every available request chain on `tx`, answers on `rx` as buffers
//! allow, adds used entries, and says which queues got used entries so the caller can
//! signal them (respecting event index via `Queue::needs_notification`).

use crate::state_manipulation::ObjectLimits;
use virtio_queue::Queue;
use vm_memory::GuestMemory;

/// Which control queues got new used entries during `process`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingActivity {
    pub tx_used: bool,
    pub rx_used: bool,
}

pub struct ControlRing {
    _limits: ObjectLimits,
}

impl ControlRing {
    pub fn new(limits: ObjectLimits) -> Self {
        Self { _limits: limits }
    }

    /// Serve the control pair: `tx` is queue 3 (driver → device), `rx` is queue 2.
    pub fn process<M: GuestMemory>(
        &mut self,
        _mem: &M,
        _tx: &mut Queue,
        _rx: &mut Queue,
    ) -> RingActivity {
        RingActivity::default()
    }
}
