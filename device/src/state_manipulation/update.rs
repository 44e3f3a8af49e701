//! Update (digest §3.3, C-082..C-096).

use super::table::ObjectTable;
use super::{check_tree, OpError};
use chimney_abi::{
    BlockResult, CachedState, DeviceHandle, Layer, NdisStatus, Reason, Tree, UpdateBlock,
};
use std::collections::HashSet;
use std::convert::Infallible;

impl ObjectTable {
    /// Apply the cached structures of the tree to the referenced objects (C-083) and
    /// re-point path objects listed under a neighbor reference to that neighbor (C-084).
    /// Only cached state can reach this function: the ABI's `UpdateBlock` has no place for
    /// const or delegated variables, and the decoder refuses such blocks on the ring
    /// (Reason::ConstUpdateRefused / DelegatedUpdateRefused, C-023/C-025).
    ///
    /// Refused as a whole: unknown/stale handles, an object referenced twice (C-094: at most
    /// one update per object), an invalidated object (C-094: the host never updates one).
    /// TCP→path links never change (C-095): a TCP block under some other path's reference
    /// is updated but not moved.
    pub fn update(
        &mut self,
        tree: &Tree<UpdateBlock>,
    ) -> Result<Vec<BlockResult<Infallible>>, OpError> {
        check_tree(tree)?;
        let mut seen = HashSet::new();
        for (i, b) in tree.blocks.iter().enumerate() {
            let i = i as u32;
            if let UpdateBlock::Object { handle, cached } = b.body {
                let layer = b.state_type.layer();
                self.check_ref(i, layer, handle)?;
                if !seen.insert(handle) {
                    return Err(OpError::at(i, "handle", Reason::DuplicateReference));
                }
                if self.is_invalid(handle) {
                    return Err(OpError::at(i, "handle", Reason::ObjectInvalidated));
                }
                if cached.is_some_and(|c| c.layer() != layer) {
                    return Err(OpError::at(i, "state_type", Reason::InvalidValue));
                }
            }
        }
        // Relinks: path references whose list hangs under a neighbor reference.
        let parents = tree.parents();
        let mut relinks: Vec<(DeviceHandle, DeviceHandle)> = Vec::new();
        for (i, b) in tree.blocks.iter().enumerate() {
            let UpdateBlock::Object { handle, .. } = b.body else {
                continue;
            };
            if handle.layer() != Some(Layer::Path) {
                continue;
            }
            let parent = parents[i].map(|p| &tree.blocks[p as usize].body);
            if let Some(UpdateBlock::Object { handle: nh, .. }) = parent {
                relinks.push((handle, *nh));
            }
        }

        for b in &tree.blocks {
            let UpdateBlock::Object {
                handle,
                cached: Some(c),
            } = b.body
            else {
                continue;
            };
            match c {
                CachedState::Neighbor(c) => {
                    if let Some(o) = self.neighbors.get_mut(handle) {
                        o.apply_update(c);
                    }
                }
                CachedState::Path(c) => {
                    if let Some(o) = self.paths.get_mut(handle) {
                        o.apply_update(c);
                    }
                }
                CachedState::Tcp(c) => {
                    if let Some(o) = self.tcp.get_mut(handle) {
                        o.apply_update(c);
                    }
                }
            }
        }
        for (path, neighbor) in relinks {
            let Some(old) = self.paths.get(path).map(|p| p.neighbor) else {
                continue;
            };
            if old == neighbor {
                continue;
            }
            if let Some(n) = self.neighbors.get_mut(old) {
                n.dependents = n.dependents.saturating_sub(1);
            }
            if let Some(n) = self.neighbors.get_mut(neighbor) {
                n.dependents += 1;
            }
            if let Some(p) = self.paths.get_mut(path) {
                p.neighbor = neighbor;
            }
        }
        Ok(tree
            .blocks
            .iter()
            .map(|b| BlockResult {
                state_type: b.state_type,
                status: NdisStatus::SUCCESS,
                handle: None,
                state: None,
            })
            .collect())
    }
}
