//! The miniport's offload context areas (C-026, C-029): one per offloaded object, named by
//! the `MiniportOffloadContext` PVOID the miniport writes into the host's location (C-040).
//!
//! A context id is `generation << 32 | (slot + 1)`: never 0 (0 means "new offload" in the
//! host's location), and a reused slot gets a new generation, so a stale id from the host
//! (double terminate, I/O after terminate) is recognised instead of naming another object.

use alloc::vec::Vec;

use chimney_abi::{DeviceHandle, Layer};

use crate::ndis::NdisHandle;

/// Where an object is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjState {
    /// Allocated for a new offload still in flight; no device handle yet.
    Reserved,
    Live,
    /// Invalidated (C-099); kept until terminated (C-102).
    Invalidated,
    /// A terminate naming it is in flight.
    Terminating,
}

/// One context area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjCtx {
    pub layer: Layer,
    pub device: Option<DeviceHandle>,
    /// The block's `NdisOffloadHandle`, used in every indication for this object (C-027, C-028).
    pub ndis_offload_handle: NdisHandle,
    pub state: ObjState,
    /// State before a terminate started (restored if the terminate fails).
    pub before_terminate: ObjState,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    ctx: Option<ObjCtx>,
}

#[derive(Debug, Default)]
pub struct Contexts {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

impl Contexts {
    fn split(id: u64) -> Option<(usize, u32)> {
        let low = (id & 0xFFFF_FFFF) as usize;
        let slot = low.checked_sub(1)?;
        Some((slot, (id >> 32) as u32))
    }

    pub fn reserve(&mut self, layer: Layer, ndis_offload_handle: NdisHandle) -> u64 {
        let ctx = ObjCtx {
            layer,
            device: None,
            ndis_offload_handle,
            state: ObjState::Reserved,
            before_terminate: ObjState::Reserved,
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1).max(1);
        s.ctx = Some(ctx);
        (u64::from(s.generation) << 32) | (slot as u64 + 1)
    }

    pub fn get(&self, id: u64) -> Option<&ObjCtx> {
        let (slot, generation) = Self::split(id)?;
        let s = self.slots.get(slot)?;
        if s.generation != generation {
            return None;
        }
        s.ctx.as_ref()
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut ObjCtx> {
        let (slot, generation) = Self::split(id)?;
        let s = self.slots.get_mut(slot)?;
        if s.generation != generation {
            return None;
        }
        s.ctx.as_mut()
    }

    /// Free a context (terminated, or a new offload that failed). Its id becomes stale.
    pub fn release(&mut self, id: u64) {
        if let Some((slot, generation)) = Self::split(id) {
            if let Some(s) = self.slots.get_mut(slot) {
                if s.generation == generation && s.ctx.take().is_some() {
                    self.free.push(slot);
                }
            }
        }
    }

    /// Objects offloaded (reserved ones excluded).
    pub fn live_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.ctx, Some(c) if c.state != ObjState::Reserved))
            .count()
    }
}

impl Contexts {
    /// The context of a live object by its device handle (data records name handles).
    pub fn find_device(&self, h: chimney_abi::DeviceHandle) -> Option<(u64, ObjCtx)> {
        self.slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| match s.ctx {
                Some(c) if c.device == Some(h) => {
                    Some(((u64::from(s.generation) << 32) | (i as u64 + 1), c))
                }
                _ => None,
            })
    }
}
