//! Device handles: the ABI's `MiniportOffloadContext` (digest §2.7, C-029, C-040).
//!
//! A handle is a `u64` the device writes into the completion of a successful offload and
//! the driver quotes in later requests. Layout (little-endian like everything else):
//! bits 0..32 slot index, bits 32..62 generation (never 0), bits 62..64 layer
//! (1 neighbor, 2 path, 3 TCP). Value 0 is never a handle. The generation changes every
//! time a slot is reused, so a handle of a terminated object is detected as stale instead
//! of silently naming a newer object.

use crate::state::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceHandle(pub u64);

pub const GENERATION_MASK: u32 = 0x3FFF_FFFF;

impl DeviceHandle {
    pub fn new(layer: Layer, slot: u32, generation: u32) -> Self {
        let g = u64::from(generation & GENERATION_MASK);
        DeviceHandle((layer as u64) << 62 | g << 32 | u64::from(slot))
    }
    pub fn slot(self) -> u32 {
        self.0 as u32
    }
    pub fn generation(self) -> u32 {
        ((self.0 >> 32) as u32) & GENERATION_MASK
    }
    /// `None` for a value that cannot be a handle (layer bits 0).
    pub fn layer(self) -> Option<Layer> {
        match self.0 >> 62 {
            1 => Some(Layer::Neighbor),
            2 => Some(Layer::Path),
            3 => Some(Layer::Tcp),
            _ => None,
        }
    }
}
