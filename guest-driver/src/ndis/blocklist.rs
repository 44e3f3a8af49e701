//! `NDIS_MINIPORT_OFFLOAD_BLOCK_LIST` trees (digest §2.7, §2.9, §2.11).
//!
//! The host owns a tree; NDIS passes the miniport a pointer to its root and gets the same
//! pointer back in the completion (C-033). Here the tree lives in a [`BlockListRef`], a
//! shared reference to host-owned memory: the blocks form an arena, `next_block` and
//! `dependent_block_list` are arena indices standing in for the two pointers, and the
//! structures that follow a block in memory are [`BlockList::state`].
//!
//! C-034 (never touch a tree after completing it): the host side calls
//! [`BlockListRef::poison`] right after a completion returns. Every later access through
//! any copy of the reference the miniport may have kept is counted as a violation
//! ([`BlockListRef::violations`]) and sees poisoned contents; in builds with
//! `debug_assertions` it also panics, so a test fails at the offending access.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, Ref, RefCell, RefMut};

use chimney_abi::{NdisStatus, OffloadStateType, QueriedState, RxRecord};

use super::nbl::NetBufferList;
use super::{NdisHandle, NdisObjectHeader};

/// Written into every field of a poisoned tree (recognisable in a dump).
pub const POISON: u64 = 0xDEAD_C034_DEAD_C034;

/// One `NDIS_MINIPORT_OFFLOAD_BLOCK_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    /// Type = `OFFLOAD_STATE_TYPE` of the state that follows; Revision; Size.
    pub header: NdisObjectHeader,
    /// Next block at the same layer (`NextBlock`).
    pub next_block: Option<usize>,
    /// First block of the dependent layer (`DependentBlockList`).
    pub dependent_block_list: Option<usize>,
    /// Written by the miniport for every block before completing (C-041).
    pub status: NdisStatus,
    pub ndis_reserved: [u64; 2],
    /// `MiniportOffloadContext`: `None` = NULL pointer (placeholder); `Some(v)` = the host
    /// location the pointer names, holding `v`: 0 = new offload, non-zero = the miniport's
    /// context of an already offloaded object. The miniport writes its context here after
    /// a successful offload (C-040).
    pub miniport_offload_context: Option<u64>,
    /// The handle the miniport stores and passes to the event / receive handlers (C-027).
    pub ndis_offload_handle: NdisHandle,
    pub protocol_reserved: [u64; 2],
    pub miniport_reserved: [u64; 2],
    pub im_reserved: [u64; 2],
    pub scratch: [u64; 2],
    pub source_handle: u64,
    pub port_number: u32,
    /// Send data travelling with the operation (`NetBufferListChain`).
    pub net_buffer_list_chain: Vec<NetBufferList>,
    /// TCP terminate: `TCP_OFFLOAD_STATE_DELEGATED.BufferedData` — received, acknowledged,
    /// undelivered data the OT hands back (§3.5.5). The delegated structure of
    /// chimney-abi carries no pointers, so the chain lives here. The host returns these NBLs
    /// with `MiniportTcpOffloadReceiveReturn` after copying them.
    pub buffered_data: Vec<NetBufferList>,
    /// The structures that follow the block in memory (§2.11): which of const / cached /
    /// delegated are present is what the host put there (query: filled by the miniport).
    pub state: Option<QueriedState>,
}

impl BlockList {
    /// A block of `state_type` with every other field zero / empty.
    pub fn new(state_type: OffloadStateType) -> Self {
        BlockList {
            header: NdisObjectHeader {
                object_type: state_type as u8,
                revision: 1,
                size: 0x98,
            },
            next_block: None,
            dependent_block_list: None,
            status: NdisStatus::SUCCESS,
            ndis_reserved: [0; 2],
            miniport_offload_context: None,
            ndis_offload_handle: 0,
            protocol_reserved: [0; 2],
            miniport_reserved: [0; 2],
            im_reserved: [0; 2],
            scratch: [0; 2],
            source_handle: 0,
            port_number: 0,
            net_buffer_list_chain: Vec::new(),
            buffered_data: Vec::new(),
            state: None,
        }
    }

    /// The block's Type, if it is a known `OFFLOAD_STATE_TYPE`.
    pub fn state_type(&self) -> Option<OffloadStateType> {
        OffloadStateType::from_u8(self.header.object_type)
    }

    fn poison(&mut self) {
        let p = POISON;
        self.header = NdisObjectHeader {
            object_type: 0xDD,
            revision: 0xDD,
            size: 0xDDDD,
        };
        self.next_block = Some(p as usize);
        self.dependent_block_list = Some(p as usize);
        self.status = NdisStatus(p as u32);
        self.miniport_offload_context = Some(p);
        self.ndis_offload_handle = p;
        self.miniport_reserved = [p; 2];
        self.scratch = [p; 2];
        self.net_buffer_list_chain.clear();
        self.buffered_data.clear();
        self.state = None;
    }
}

/// A whole tree: `blocks[0]` is the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockTree {
    pub blocks: Vec<BlockList>,
}

impl BlockTree {
    /// Depth-first/breadth-next order from the root (C-035): a block, its dependent list,
    /// then its next block. Stops at links out of range or seen twice (never loops); the
    /// second value says whether the links formed a proper tree covering every block.
    pub fn traversal(&self) -> (Vec<usize>, bool) {
        let n = self.blocks.len();
        let mut seen = alloc::vec![false; n];
        let mut order = Vec::with_capacity(n);
        let mut ok = n > 0;
        let mut stack = alloc::vec![0usize];
        while let Some(i) = stack.pop() {
            if i >= n || seen[i] {
                ok = false;
                continue;
            }
            seen[i] = true;
            order.push(i);
            let b = &self.blocks[i];
            if let Some(nx) = b.next_block {
                stack.push(nx);
            }
            if let Some(d) = b.dependent_block_list {
                stack.push(d);
            }
        }
        if order.len() != n {
            ok = false;
        }
        (order, ok)
    }
}

#[derive(Debug)]
struct Shared {
    tree: RefCell<BlockTree>,
    poisoned: Cell<bool>,
    violations: Cell<u32>,
}

/// The pointer to a tree's root that NDIS hands the miniport. Cloning it is copying the
/// pointer; [`BlockListRef::same_root`] is pointer equality.
#[derive(Debug, Clone)]
pub struct BlockListRef(Rc<Shared>);

impl BlockListRef {
    pub fn new(tree: BlockTree) -> Self {
        BlockListRef(Rc::new(Shared {
            tree: RefCell::new(tree),
            poisoned: Cell::new(false),
            violations: Cell::new(0),
        }))
    }

    /// Do both references name the same root (the "same pointer" of C-033)?
    pub fn same_root(&self, other: &BlockListRef) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    fn check(&self) {
        if self.0.poisoned.get() {
            self.0
                .violations
                .set(self.0.violations.get().saturating_add(1));
            debug_assert!(
                false,
                "C-034: block list touched after its completion (poisoned tree)"
            );
        }
    }

    /// Read the tree (counted as a violation once poisoned).
    pub fn read(&self) -> Ref<'_, BlockTree> {
        self.check();
        self.0.tree.borrow()
    }

    /// Write the tree (counted as a violation once poisoned).
    pub fn write(&self) -> RefMut<'_, BlockTree> {
        self.check();
        self.0.tree.borrow_mut()
    }

    /// Host side, after reading the results of a completion: overwrite every block with
    /// [`POISON`] and mark the tree completed. Returns the tree as it was, for the host.
    pub fn take_and_poison(&self) -> BlockTree {
        let out = self.0.tree.borrow().clone();
        for b in self.0.tree.borrow_mut().blocks.iter_mut() {
            b.poison();
        }
        self.0.poisoned.set(true);
        out
    }

    /// Host side: has the tree been completed and poisoned?
    pub fn is_poisoned(&self) -> bool {
        self.0.poisoned.get()
    }

    /// Accesses after poisoning.
    pub fn violations(&self) -> u32 {
        self.0.violations.get()
    }

    /// How many references to this tree exist (the host's own included). After a
    /// completion, 1 proves the miniport kept no copy of the pointer.
    pub fn references(&self) -> usize {
        Rc::strong_count(&self.0)
    }
}

/// Decode the state structures a Type names (the bytes that follow a block, x64 layout =
/// ring layout, docs/ring-abi.md §8) with chimney-abi's validating decoders: they are
/// wrapped in a one-block QUERY completion record. `None` if they do not decode.
pub fn decode_state(ty: OffloadStateType, bytes: &[u8]) -> Option<QueriedState> {
    let len = 32 + 16 + bytes.len();
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&chimney_abi::completion::KIND_COMPLETION.to_le_bytes());
    r.extend_from_slice(&(chimney_abi::Opcode::Query as u16).to_le_bytes());
    r.extend_from_slice(&u32::try_from(len).ok()?.to_le_bytes());
    r.extend_from_slice(&0u64.to_le_bytes()); // request id
    r.extend_from_slice(&0u16.to_le_bytes()); // tx_head
    r.extend_from_slice(&0u16.to_le_bytes()); // flags
    r.extend_from_slice(&0u32.to_le_bytes()); // status
    r.extend_from_slice(&1u32.to_le_bytes()); // count
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&[ty as u8, chimney_abi::tree::FLAG_STATE_FOLLOWS, 0, 0]);
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&0u64.to_le_bytes());
    r.extend_from_slice(bytes);
    match RxRecord::decode(&r).ok()? {
        RxRecord::Completion(chimney_abi::Completion {
            body: chimney_abi::CompletionBody::Query(mut v),
            ..
        }) => v.pop()?.state,
        _ => None,
    }
}
