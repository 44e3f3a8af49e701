//! Initiate offload (digest §3.1, C-033..C-054): single objects and bulk trees.

use super::objects::{FourTuple, NeighborObject, PathObject, TcpObject};
use super::table::ObjectTable;
use super::{check_tree, OpError, MAX_PATH_MTU, MAX_RCV_WINDOW};
use chimney_abi::{
    BlockResult, DeviceHandle, InitiateBlock, Layer, NdisStatus, ObjectState, Reason, Tree,
};
use std::convert::Infallible;

/// Status counts as "offloaded" for the parent's SUCCESS/PARTIAL decision.
fn offloaded(s: NdisStatus) -> bool {
    s == NdisStatus::SUCCESS || s == NdisStatus::OFFLOAD_PARTIAL_SUCCESS
}

impl ObjectTable {
    /// Run an initiate tree. Linkers must name live, valid objects of their block's layer
    /// (else the whole request is refused, nothing changes). Then the tree is walked
    /// depth-first/breadth-next (C-035) and every block gets a status (C-041):
    /// * placeholder: SUCCESS, also without dependents (C-036);
    /// * linker: new dependents are linked to the referenced object (C-037); SUCCESS if
    ///   every dependent offloaded, PARTIAL_SUCCESS if some failed, FAILURE if all failed
    ///   (C-038, digest §7.1 item 30);
    /// * new offload: its own state is validated and stored (C-039); SUCCESS if it and all
    ///   immediately dependent blocks offloaded, PARTIAL_SUCCESS if only some dependents
    ///   failed (C-042), else the specific failure code (C-044). Blocks under a failed block
    ///   are not attempted and get FAILURE (§3.1.2 example). If the root's own state fails,
    ///   traversal stops (C-043).
    ///
    /// The returned handle of a new block is the context the driver quotes later (C-040);
    /// failed blocks get none.
    pub fn initiate(
        &mut self,
        tree: &Tree<InitiateBlock>,
    ) -> Result<Vec<BlockResult<Infallible>>, OpError> {
        check_tree(tree)?;
        for (i, b) in tree.blocks.iter().enumerate() {
            if let InitiateBlock::Linker(h) = b.body {
                let i = i as u32;
                let layer = b.state_type.layer();
                self.check_ref(i, layer, h)?;
                if self.is_invalid(h) {
                    // An invalidated object is only kept until the host terminates it
                    // (C-102); nothing new may be attached to it.
                    return Err(OpError::at(i, "handle", Reason::ObjectInvalidated));
                }
                if let (Some(ip), Some(p)) = (b.state_type.ip_version(), self.paths.get(h)) {
                    if p.konst().ip_version() != ip {
                        return Err(OpError::at(i, "state_type", Reason::InvalidValue));
                    }
                }
            }
        }

        let n = tree.blocks.len();
        let parents = tree.parents();
        let order = tree.traversal_order();
        let mut object: Vec<Option<DeviceHandle>> = vec![None; n];
        let mut own: Vec<Option<NdisStatus>> = vec![None; n];
        let mut stopped = false;
        for &i in &order {
            let i = i as usize;
            let b = &tree.blocks[i];
            match &b.body {
                InitiateBlock::Placeholder => {}
                InitiateBlock::Linker(h) => object[i] = Some(*h),
                InitiateBlock::New(state) => {
                    if stopped {
                        continue;
                    }
                    let parent = parents[i].and_then(|p| object[p as usize]);
                    match self.offload_one(state, b.host_context, parent) {
                        Ok(h) => {
                            object[i] = Some(h);
                            own[i] = Some(NdisStatus::SUCCESS);
                        }
                        Err(s) => {
                            own[i] = Some(s);
                            if i == 0 {
                                stopped = true; // C-043
                            }
                        }
                    }
                }
            }
        }

        let mut results: Vec<BlockResult<Infallible>> = tree
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| BlockResult {
                state_type: b.state_type,
                // A new block's own status; settle_statuses adds the dependents' part.
                status: own[i].unwrap_or(NdisStatus::FAILURE),
                handle: match b.body {
                    InitiateBlock::New(_) => object[i],
                    _ => None,
                },
                state: None,
            })
            .collect();
        Self::settle_statuses(tree, &mut results);
        Ok(results)
    }

    /// Block statuses bottom-up from which blocks got an object (C-038, C-042): a new block
    /// with a handle offloaded its own state, so it is SUCCESS or, if some immediately
    /// dependent block failed, PARTIAL_SUCCESS; a new block without one keeps its failure
    /// code. Called again after the data path refused connections the table had accepted
    /// (offload_glue::after_initiate), so their parents stop reporting SUCCESS.
    pub fn settle_statuses(tree: &Tree<InitiateBlock>, results: &mut [BlockResult<Infallible>]) {
        // Dependents come after their parent in traversal order.
        for &i in tree.traversal_order().iter().rev() {
            let deps = tree.dependents(i);
            let status = |d: &u32| {
                results
                    .get(*d as usize)
                    .map_or(NdisStatus::FAILURE, |r| r.status)
            };
            let failed = deps.iter().filter(|d| !offloaded(status(d))).count();
            let Some(r) = results.get_mut(i as usize) else {
                continue;
            };
            r.status = match &tree.blocks[i as usize].body {
                InitiateBlock::Placeholder => NdisStatus::SUCCESS,
                InitiateBlock::Linker(_) => {
                    if failed == 0 {
                        NdisStatus::SUCCESS
                    } else if failed == deps.len() {
                        NdisStatus::FAILURE
                    } else {
                        NdisStatus::OFFLOAD_PARTIAL_SUCCESS
                    }
                }
                InitiateBlock::New(_) => match r.handle {
                    None if offloaded(r.status) => NdisStatus::FAILURE,
                    None => r.status,
                    Some(_) if failed > 0 => NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
                    Some(_) => NdisStatus::SUCCESS,
                },
            };
        }
    }

    /// Offload one object under `parent` (the object of the block whose dependent list it
    /// is in). Err = the block's failure status.
    fn offload_one(
        &mut self,
        state: &ObjectState,
        host_context: u64,
        parent: Option<DeviceHandle>,
    ) -> Result<DeviceHandle, NdisStatus> {
        match state {
            ObjectState::Neighbor(n) => {
                if self.neighbors.len() >= self.limits.neighbors as usize {
                    return Err(NdisStatus::OFFLOAD_NEIGHBOR_ENTRIES);
                }
                // No software-configurable source MAC (C-046, C-047).
                if n.konst.dl_source_address.iter().any(|b| *b != 0) {
                    return Err(NdisStatus::OFFLOAD_HW_ADDRESS_ENTRIES);
                }
                // The interface has no VLAN IDs configured, so VlanId never fails (C-052).
                Ok(self.neighbors.insert(NeighborObject::new(
                    n.konst,
                    n.cached,
                    n.delegated,
                    host_context,
                )))
            }
            ObjectState::Path(p) => {
                // A path needs a neighbor object to send through.
                let Some(nh) = parent.filter(|h| h.layer() == Some(Layer::Neighbor)) else {
                    return Err(NdisStatus::FAILURE);
                };
                if self.paths.len() >= self.limits.paths as usize {
                    return Err(NdisStatus::OFFLOAD_PATH_ENTRIES);
                }
                if p.cached.path_mtu > MAX_PATH_MTU {
                    return Err(NdisStatus::OFFLOAD_PATH_MTU); // C-050
                }
                let neighbor = self.neighbors.get_mut(nh).ok_or(NdisStatus::FAILURE)?;
                neighbor.dependents += 1;
                Ok(self.paths.insert(PathObject::new(
                    p.konst,
                    p.cached,
                    p.delegated,
                    host_context,
                    nh,
                )))
            }
            ObjectState::Tcp(t) => {
                let Some(ph) = parent.filter(|h| h.layer() == Some(Layer::Path)) else {
                    return Err(NdisStatus::FAILURE);
                };
                if self.tcp.len() >= self.limits.tcp as usize {
                    return Err(NdisStatus::OFFLOAD_TCP_ENTRIES);
                }
                if t.cached.initial_rcv_wnd > MAX_RCV_WINDOW {
                    return Err(NdisStatus::OFFLOAD_TCP_RCV_WINDOW); // C-049
                }
                // C-070 is a host rule; a host breaking it gets FAILURE rather than an
                // engine started in a state it cannot run.
                if !t.delegated.state.offloadable() {
                    return Err(NdisStatus::FAILURE);
                }
                let path = self.paths.get(ph).ok_or(NdisStatus::FAILURE)?;
                let tuple = FourTuple::new(path.konst(), &t.konst);
                // One object per connection: the receive path looks connections up by
                // 4-tuple.
                if self.by_tuple.contains_key(&tuple) {
                    return Err(NdisStatus::FAILURE);
                }
                let h = self.tcp.insert(TcpObject::new(
                    t.konst,
                    t.cached,
                    t.delegated,
                    host_context,
                    ph,
                    tuple,
                ));
                self.by_tuple.insert(tuple, h);
                if let Some(p) = self.paths.get_mut(ph) {
                    p.dependents += 1;
                }
                Ok(h)
            }
        }
    }
}
