//! Terminate offload (digest §3.5, C-104..C-137).

use super::table::ObjectTable;
use super::{check_tree, OpError};
use chimney_abi::{
    BlockResult, DelegatedState, DeviceHandle, Layer, NdisStatus, Reason, TerminateBlock, Tree,
};
use std::collections::{HashMap, HashSet};

impl ObjectTable {
    /// Upload the referenced objects: write the delegated structure where the block asks for
    /// it (C-111: delegated only, no const or cached), status SUCCESS per block (C-112), then
    /// free them (C-124). Handles of terminated objects become stale.
    ///
    /// Without an engine (later issue) a TCP object's delegated state is the one offloaded,
    /// changed only by update side effects (C-087/C-088); no send data or buffered data
    /// travels back (C-116: none).
    ///
    /// Refused as a whole: unknown/stale handles, an object named twice, and a path or
    /// neighbor that keeps dependents not terminated in the same tree (C-110).
    pub fn terminate(
        &mut self,
        tree: &Tree<TerminateBlock>,
    ) -> Result<Vec<BlockResult<DelegatedState>>, OpError> {
        check_tree(tree)?;
        let mut set = HashSet::new();
        for (i, b) in tree.blocks.iter().enumerate() {
            if let TerminateBlock::Object { handle, .. } = b.body {
                self.check_ref(i as u32, b.state_type.layer(), handle)?;
                if !set.insert(handle) {
                    return Err(OpError::at(i as u32, "handle", Reason::DuplicateReference));
                }
            }
        }
        // C-110: dependents terminated in this tree, per path / neighbor.
        let mut leaving: HashMap<DeviceHandle, u32> = HashMap::new();
        for h in &set {
            let parent = match h.layer() {
                Some(Layer::Tcp) => self.tcp.get(*h).map(|t| t.path()),
                Some(Layer::Path) => self.paths.get(*h).map(|p| p.neighbor),
                _ => None,
            };
            if let Some(p) = parent {
                *leaving.entry(p).or_default() += 1;
            }
        }
        for (i, b) in tree.blocks.iter().enumerate() {
            let TerminateBlock::Object { handle, .. } = b.body else {
                continue;
            };
            let dependents = match handle.layer() {
                Some(Layer::Neighbor) => self.neighbors.get(handle).map_or(0, |n| n.dependents),
                Some(Layer::Path) => self.paths.get(handle).map_or(0, |p| p.dependents),
                _ => 0,
            };
            if dependents > leaving.get(&handle).copied().unwrap_or(0) {
                return Err(OpError::at(i as u32, "handle", Reason::HasDependents));
            }
        }

        let mut results = Vec::with_capacity(tree.blocks.len());
        for b in &tree.blocks {
            let state = match b.body {
                TerminateBlock::Placeholder => None,
                TerminateBlock::Object {
                    handle,
                    return_delegated,
                } => self.remove_object(handle).filter(|_| return_delegated),
            };
            results.push(BlockResult {
                state_type: b.state_type,
                status: NdisStatus::SUCCESS,
                handle: None,
                state,
            });
        }
        Ok(results)
    }

    /// Remove one object, fixing its parent's dependent count; returns its delegated state.
    fn remove_object(&mut self, h: DeviceHandle) -> Option<DelegatedState> {
        match h.layer()? {
            Layer::Tcp => {
                let t = self.tcp.remove(h)?;
                self.by_tuple.remove(&t.tuple());
                if let Some(p) = self.paths.get_mut(t.path()) {
                    p.dependents = p.dependents.saturating_sub(1);
                }
                Some(DelegatedState::Tcp(*t.delegated()))
            }
            Layer::Path => {
                let p = self.paths.remove(h)?;
                if let Some(n) = self.neighbors.get_mut(p.neighbor) {
                    n.dependents = n.dependents.saturating_sub(1);
                }
                Some(DelegatedState::Path(*p.delegated()))
            }
            Layer::Neighbor => {
                let n = self.neighbors.remove(h)?;
                Some(DelegatedState::Neighbor(*n.delegated()))
            }
        }
    }
}
