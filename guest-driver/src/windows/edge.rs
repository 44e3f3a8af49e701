//! The edge between ndis.sys and the portable core.
//!
//! Inbound, a C block-list tree is copied into a [`BlockTree`] (links become indices, the
//! value behind `MiniportOffloadContext` is read, the state structures after a block are
//! decoded with chimney-abi's decoders: their layout is the x64 one, docs/ring-abi.md §8).
//! Outbound, on the core's completion, statuses, contexts and returned state are written
//! back into the C blocks and the matching `NdisM*Complete` is called with the original
//! root pointer (C-033). After that call the binding forgets every pointer of the tree
//! (C-034): the in-flight entry is removed before NDIS is called.
//!
//! Which blocks carry state (§2.11), decided per operation: initiate — new offloads
//! (`*MiniportOffloadContext == NULL`); update — blocks whose Type is a CACHED type;
//! terminate — blocks whose Type is a DELEGATED type (the host asks for it back); query —
//! none inbound, filled outbound; invalidate — none.

use alloc::vec::Vec;
use core::ptr;

use chimney_abi::{NdisStatus, OffloadStateType, QueriedState, StateClass};

use crate::ndis::blocklist::decode_state;

use super::ffi::*;
use crate::miniport::OpKind;
use crate::ndis::blocklist::{BlockList, BlockListRef, BlockTree};
use crate::ndis::NdisObjectHeader;

/// Upper bound on blocks read from one NDIS tree (the ABI's tree limit).
pub const MAX_BLOCKS: usize = chimney_abi::tree::MAX_TREE_BLOCKS as usize;
/// Upper bound on one state structure's Length.
const MAX_STATE_LEN: u32 = 0x400;

/// Why a C tree could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeError {
    TooManyBlocks,
    Cycle,
    BadState { block: usize },
}

/// A tree NDIS handed down, with the C pointer of every block (index = BlockTree index).
pub struct InFlight {
    pub kind: OpKind,
    pub root: BlockListRef,
    pub c_root: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    pub c_blocks: Vec<*mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST>,
}

fn state_follows(kind: OpKind, b: &BlockList) -> bool {
    let class = b.state_type().and_then(|t| t.class());
    match kind {
        OpKind::Initiate => b.miniport_offload_context == Some(0),
        OpKind::Update => class == Some(StateClass::Cached),
        OpKind::Terminate => class == Some(StateClass::Delegated),
        OpKind::Query | OpKind::Invalidate => false,
    }
}

/// Read the state structures after block `b` (count by Type class), bounded.
///
/// # Safety
/// `b` points at a live block list followed by the structures its Type names, as NDIS
/// guarantees for the blocks `state_follows` selects.
unsafe fn read_state(
    b: *const NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    ty: OffloadStateType,
) -> Option<(QueriedState, usize)> {
    let n = if ty.class()? == StateClass::All { 3 } else { 1 };
    let mut p = b.add(1).cast::<u8>();
    let mut bytes = Vec::new();
    for _ in 0..n {
        let h = ptr::read_unaligned(p.cast::<OFFLOAD_STATE_HEADER>());
        if h.Length < 8 || h.Length > MAX_STATE_LEN {
            return None;
        }
        let s = core::slice::from_raw_parts(p, h.Length as usize);
        bytes.extend_from_slice(s);
        p = p.add(h.Length as usize);
    }
    Some((decode_state(ty, &bytes)?, bytes.len()))
}

/// Copy the C tree at `root` into the core's form.
///
/// # Safety
/// `root` is the block list NDIS passed to a handler: valid until its completion.
pub unsafe fn read_tree(
    kind: OpKind,
    root: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
) -> Result<(BlockTree, Vec<*mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST>), EdgeError> {
    let mut ptrs: Vec<*mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST> = Vec::new();
    // Collect every block depth-first (C-035 order is re-derived by the core).
    let mut stack = alloc::vec![root];
    while let Some(p) = stack.pop() {
        if p.is_null() {
            continue;
        }
        if ptrs.contains(&p) {
            return Err(EdgeError::Cycle);
        }
        if ptrs.len() >= MAX_BLOCKS {
            return Err(EdgeError::TooManyBlocks);
        }
        ptrs.push(p);
        stack.push((*p).NextBlock);
        stack.push((*p).DependentBlockList);
    }
    let index = |p: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST| {
        (!p.is_null())
            .then(|| ptrs.iter().position(|q| *q == p))
            .flatten()
    };
    let mut blocks = Vec::with_capacity(ptrs.len());
    for (i, &p) in ptrs.iter().enumerate() {
        let c = &*p;
        let mut b = BlockList::new(OffloadStateType::Neighbor);
        b.header = NdisObjectHeader {
            object_type: c.Header.Type,
            revision: c.Header.Revision,
            size: c.Header.Size,
        };
        b.next_block = index(c.NextBlock);
        b.dependent_block_list = index(c.DependentBlockList);
        b.status = NdisStatus(c.Status as u32);
        b.miniport_offload_context =
            (!c.MiniportOffloadContext.is_null()).then(|| *c.MiniportOffloadContext as u64);
        b.ndis_offload_handle = c.NdisOffloadHandle as u64;
        b.port_number = c.PortNumber;
        if state_follows(kind, &b) {
            let ty = b.state_type().ok_or(EdgeError::BadState { block: i })?;
            let (s, _) = read_state(p, ty).ok_or(EdgeError::BadState { block: i })?;
            b.state = Some(s);
        }
        blocks.push(b);
    }
    Ok((BlockTree { blocks }, ptrs))
}

/// Write the core's results back into the C blocks: Status of every block (C-041), the
/// context behind `MiniportOffloadContext` when the core wrote one (C-040), and the
/// structures a query / terminate returns, each bounded by the Length the host declared.
///
/// # Safety
/// `ptrs` are the blocks `read_tree` returned for this tree, not yet completed.
pub unsafe fn write_back(
    kind: OpKind,
    tree: &BlockTree,
    ptrs: &[*mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST],
) {
    for (b, &p) in tree.blocks.iter().zip(ptrs) {
        let c = &mut *p;
        c.Status = b.status.0 as i32;
        if let (Some(v), false) = (
            b.miniport_offload_context,
            c.MiniportOffloadContext.is_null(),
        ) {
            *c.MiniportOffloadContext = v as PVOID;
        }
        let returns_state = matches!(kind, OpKind::Query | OpKind::Terminate)
            && b.miniport_offload_context.is_some_and(|v| v != 0);
        if let (true, Some(s)) = (returns_state, b.state.as_ref()) {
            let mut bytes = Vec::new();
            s.emit(&mut bytes);
            // Copy structure by structure, never past the host's declared Length.
            let mut src = 0usize;
            let mut dst = p.add(1).cast::<u8>();
            while src + 8 <= bytes.len() {
                let h = ptr::read_unaligned(dst.cast::<OFFLOAD_STATE_HEADER>());
                let ours = u32::from_le_bytes([
                    bytes[src],
                    bytes[src + 1],
                    bytes[src + 2],
                    bytes[src + 3],
                ]) as usize;
                let n = ours.min(h.Length as usize).min(bytes.len() - src);
                // Keep the host's header; fill the body.
                if n > 8 {
                    ptr::copy_nonoverlapping(bytes.as_ptr().add(src + 8), dst.add(8), n - 8);
                }
                src += ours.max(8);
                dst = dst.add((h.Length as usize).max(8));
            }
        }
    }
}
