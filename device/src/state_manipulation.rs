//! State manipulation, one of the three chimney interfaces (DESIGN.md rule 1): the
//! offloaded-object table and the five operations of digest §3.0–§3.5 (checklist
//! §6.3–§6.7), sans-io. Input is a decoded, link-validated tree from chimney-abi; output is
//! the per-block results of the completion (plus event indications the operation raises),
//! or an [`OpError`] that becomes an ERROR completion.
//!
//! Every operation first validates every reference in the tree and only then changes the
//! table, so a refused request changes nothing (digest §7.1 item 21: invalid references are
//! not specified; this device answers them with an ERROR completion).

mod initiate;
mod invalidate;
mod objects;
mod query;
mod table;
mod terminate;
mod update;

pub use objects::{FourTuple, NeighborObject, PathObject, TcpObject};
pub use table::ObjectTable;

use chimney_abi::{Field, Reason};

/// Per-guest limits on offloaded objects (OFFLOAD_*_ENTRIES when exceeded, C-044).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLimits {
    pub neighbors: u32,
    pub paths: u32,
    pub tcp: u32,
}

impl Default for ObjectLimits {
    fn default() -> Self {
        Self {
            neighbors: 1024,
            paths: 4096,
            tcp: 65536,
        }
    }
}

/// Largest path MTU the device accepts (C-050: larger → OFFLOAD_PATH_MTU).
pub const MAX_PATH_MTU: u32 = 65535;
/// Largest InitialRcvWnd the device accepts (C-049: larger → OFFLOAD_TCP_RCV_WINDOW):
/// 2^30, the largest window RFC 7323 scaling can express.
pub const MAX_RCV_WINDOW: u32 = 1 << 30;

/// A request the device refuses as a whole (ERROR completion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason:?}")]
pub struct OpError {
    pub reason: Reason,
    pub field: Field,
}

/// Link rules of §2.9 for trees handed in directly (not through `Request::decode`).
pub(crate) fn check_tree<B: chimney_abi::tree::BlockBody>(
    tree: &chimney_abi::Tree<B>,
) -> Result<(), OpError> {
    tree.check().map_err(|e| OpError {
        reason: e.reason(),
        field: e.field(),
    })
}

impl OpError {
    pub(crate) fn at(block: u32, name: &'static str, reason: Reason) -> Self {
        Self {
            reason,
            field: Field::in_block(block, name),
        }
    }
}

#[cfg(test)]
mod tests;
