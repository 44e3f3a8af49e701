//! Query (digest §3.2, C-075..C-081).

use super::table::ObjectTable;
use super::{check_tree, OpError};
use chimney_abi::{
    BlockResult, DeviceHandle, Layer, NdisStatus, NeighborState, ObjectState, PathState,
    QueriedState, Reason, RefBlock, TcpState, Tree, BACKLOG_UNSUPPORTED,
};

impl ObjectTable {
    /// Fill, for every referencing block, the structures its Type names with current
    /// values (C-076). Status SUCCESS per block (C-077; FAILURE would mean corrupt hardware,
    /// which an emulated device does not have). Without a running engine the backlog
    /// sizes are reported as unsupported, 0xFFFFFFFF (C-079).
    pub fn query(&self, tree: &Tree<RefBlock>) -> Result<Vec<BlockResult<QueriedState>>, OpError> {
        check_tree(tree)?;
        for (i, b) in tree.blocks.iter().enumerate() {
            if let RefBlock::Object(h) = b.body {
                self.check_ref(i as u32, b.state_type.layer(), h)?;
                if let (Some(ip), Some(p)) = (b.state_type.ip_version(), self.paths.get(h)) {
                    if p.konst().ip_version() != ip {
                        return Err(OpError::at(i as u32, "state_type", Reason::InvalidValue));
                    }
                }
            }
        }
        Ok(tree
            .blocks
            .iter()
            .map(|b| BlockResult {
                state_type: b.state_type,
                status: NdisStatus::SUCCESS,
                handle: None,
                state: match b.body {
                    RefBlock::Placeholder => None,
                    RefBlock::Object(h) => self
                        .full_state(h)
                        .map(|s| QueriedState::select(b.state_type, &s)),
                },
            })
            .collect())
    }

    /// Current const + cached + delegated state of an object, as query reports it.
    pub fn full_state(&self, h: DeviceHandle) -> Option<ObjectState> {
        Some(match h.layer()? {
            Layer::Neighbor => {
                let n = self.neighbors.get(h)?;
                ObjectState::Neighbor(NeighborState {
                    konst: *n.konst(),
                    cached: *n.cached(),
                    delegated: *n.delegated(),
                })
            }
            Layer::Path => {
                let p = self.paths.get(h)?;
                ObjectState::Path(PathState {
                    konst: *p.konst(),
                    cached: *p.cached(),
                    delegated: *p.delegated(),
                })
            }
            Layer::Tcp => {
                let t = self.tcp.get(h)?;
                let mut delegated = *t.delegated();
                delegated.send_backlog_size = BACKLOG_UNSUPPORTED;
                delegated.receive_backlog_size = BACKLOG_UNSUPPORTED;
                ObjectState::Tcp(TcpState {
                    konst: *t.konst(),
                    cached: *t.cached(),
                    delegated,
                })
            }
        })
    }
}
