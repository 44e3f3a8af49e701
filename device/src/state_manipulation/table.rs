//! The offloaded-object table: one generation-checked slab per layer (C-026, C-029) and a
//! 4-tuple index for connection lookup (DESIGN.md rule 7).

use super::objects::{FourTuple, NeighborObject, PathObject, TcpObject};
use super::{ObjectLimits, OpError};
use chimney_abi::handle::GENERATION_MASK;
use chimney_abi::{DeviceHandle, Layer, OffloadParameters, Reason};
use std::collections::HashMap;

#[derive(Debug, Clone)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Objects of one layer. A handle names (layer, slot, generation); removing an object
/// bumps the slot's generation, so an old handle is recognised as stale (C-029).
#[derive(Debug, Clone)]
pub(crate) struct Slab<T> {
    layer: Layer,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    fn new(layer: Layer) -> Self {
        Self {
            layer,
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, value: T) -> DeviceHandle {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot as usize];
            s.value = Some(value);
            return DeviceHandle::new(self.layer, slot, s.generation);
        }
        let slot = self.slots.len() as u32;
        self.slots.push(Slot {
            generation: 1,
            value: Some(value),
        });
        DeviceHandle::new(self.layer, slot, 1)
    }

    /// Why `h` does not name a live object of this layer, if it does not.
    pub(crate) fn check(&self, h: DeviceHandle) -> Result<(), Reason> {
        match h.layer() {
            None => return Err(Reason::UnknownHandle),
            Some(l) if l != self.layer => return Err(Reason::HandleLayerMismatch),
            Some(_) => {}
        }
        let Some(s) = self.slots.get(h.slot() as usize) else {
            return Err(Reason::UnknownHandle);
        };
        if h.generation() == 0 || h.generation() > s.generation {
            return Err(Reason::UnknownHandle);
        }
        if h.generation() < s.generation || s.value.is_none() {
            return Err(Reason::StaleHandle);
        }
        Ok(())
    }

    pub(crate) fn get(&self, h: DeviceHandle) -> Option<&T> {
        self.check(h).ok()?;
        self.slots.get(h.slot() as usize)?.value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, h: DeviceHandle) -> Option<&mut T> {
        self.check(h).ok()?;
        self.slots.get_mut(h.slot() as usize)?.value.as_mut()
    }

    pub(crate) fn remove(&mut self, h: DeviceHandle) -> Option<T> {
        self.check(h).ok()?;
        let s = self.slots.get_mut(h.slot() as usize)?;
        let v = s.value.take()?;
        // Next generation, skipping 0 (never a valid handle).
        s.generation = (s.generation + 1) & GENERATION_MASK;
        if s.generation == 0 {
            s.generation = 1;
        }
        self.free.push(h.slot());
        self.len -= 1;
        Some(v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (DeviceHandle, &T)> {
        let layer = self.layer;
        self.slots.iter().enumerate().filter_map(move |(i, s)| {
            s.value
                .as_ref()
                .map(|v| (DeviceHandle::new(layer, i as u32, s.generation), v))
        })
    }
}

/// All objects offloaded by one guest, plus the host parameters (C-011).
#[derive(Debug, Clone)]
pub struct ObjectTable {
    pub(crate) limits: ObjectLimits,
    pub(crate) neighbors: Slab<NeighborObject>,
    pub(crate) paths: Slab<PathObject>,
    pub(crate) tcp: Slab<TcpObject>,
    pub(crate) by_tuple: HashMap<FourTuple, DeviceHandle>,
    parameters: Option<OffloadParameters>,
}

impl ObjectTable {
    pub fn new(limits: ObjectLimits) -> Self {
        Self {
            limits,
            neighbors: Slab::new(Layer::Neighbor),
            paths: Slab::new(Layer::Path),
            tcp: Slab::new(Layer::Tcp),
            by_tuple: HashMap::new(),
            parameters: None,
        }
    }

    pub fn limits(&self) -> ObjectLimits {
        self.limits
    }

    /// `OID_TCP_CONNECTION_OFFLOAD_PARAMETERS` set (C-011); values kept for the engine
    /// (C-012, C-013).
    pub fn set_parameters(&mut self, p: OffloadParameters) {
        self.parameters = Some(p);
    }

    pub fn parameters(&self) -> Option<&OffloadParameters> {
        self.parameters.as_ref()
    }

    pub fn neighbor(&self, h: DeviceHandle) -> Option<&NeighborObject> {
        self.neighbors.get(h)
    }
    pub fn path(&self, h: DeviceHandle) -> Option<&PathObject> {
        self.paths.get(h)
    }
    pub fn tcp(&self, h: DeviceHandle) -> Option<&TcpObject> {
        self.tcp.get(h)
    }
    pub fn tcp_by_tuple(&self, t: &FourTuple) -> Option<DeviceHandle> {
        self.by_tuple.get(t).copied()
    }
    /// (neighbors, paths, TCP connections) currently offloaded.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.neighbors.len(), self.paths.len(), self.tcp.len())
    }
    pub fn tcp_handles(&self) -> Vec<DeviceHandle> {
        self.tcp.iter().map(|(h, _)| h).collect()
    }

    /// A TCP connection may not send if it, its path or its neighbor is invalidated (C-100).
    pub fn tcp_may_send(&self, h: DeviceHandle) -> bool {
        let Some(t) = self.tcp.get(h) else {
            return false;
        };
        let Some(p) = self.paths.get(t.path()) else {
            return false;
        };
        let n_invalid = self.neighbors.get(p.neighbor).is_none_or(|n| n.invalid);
        !(t.invalid || p.invalid || n_invalid)
    }

    /// Check that `h` names a live object of `layer`; the error names the block's handle.
    pub(crate) fn check_ref(
        &self,
        block: u32,
        layer: Layer,
        h: DeviceHandle,
    ) -> Result<(), OpError> {
        if h.layer() != Some(layer) {
            let reason = if h.layer().is_none() {
                Reason::UnknownHandle
            } else {
                Reason::HandleLayerMismatch
            };
            return Err(OpError::at(block, "handle", reason));
        }
        let r = match layer {
            Layer::Neighbor => self.neighbors.check(h),
            Layer::Path => self.paths.check(h),
            Layer::Tcp => self.tcp.check(h),
        };
        r.map_err(|reason| OpError::at(block, "handle", reason))
    }

    /// Remove a TCP object the data path refused right after initiate.
    pub(crate) fn remove_tcp(&mut self, h: DeviceHandle) {
        if let Some(t) = self.tcp.remove(h) {
            self.by_tuple.remove(&t.tuple());
            if let Some(p) = self.paths.get_mut(t.path()) {
                p.dependents = p.dependents.saturating_sub(1);
            }
        }
    }

    /// Live NicReachabilityDelta from the data path (query, C-228).
    pub(crate) fn set_neighbor_nrd(&mut self, h: DeviceHandle, nrd: u32) {
        if let Some(n) = self.neighbors.get_mut(h) {
            n.delegated.nic_reachability_delta = nrd;
        }
    }

    /// The host's reachability answer (C-226): its HRD into the neighbor's cached state.
    pub(crate) fn set_neighbor_hrd(&mut self, h: DeviceHandle, hrd: u32) {
        if let Some(n) = self.neighbors.get_mut(h) {
            n.cached.host_reachability_delta = hrd;
        }
    }

    /// Live delegated TCP state from the data path (query, C-076).
    pub(crate) fn set_tcp_delegated(&mut self, h: DeviceHandle, d: chimney_abi::TcpDelegated) {
        if let Some(t) = self.tcp.get_mut(h) {
            t.delegated = d;
        }
    }

    pub(crate) fn is_invalid(&self, h: DeviceHandle) -> bool {
        match h.layer() {
            Some(Layer::Neighbor) => self.neighbors.get(h).is_some_and(|o| o.invalid),
            Some(Layer::Path) => self.paths.get(h).is_some_and(|o| o.invalid),
            Some(Layer::Tcp) => self.tcp.get(h).is_some_and(|o| o.invalid),
            None => false,
        }
    }
}
