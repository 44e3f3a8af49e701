//! The offload state tree on the ring (digest §2.9, C-035..C-043).
//!
//! A tree is a flat array of 32-byte blocks; block 0 is the root. `next` and `dependent`
//! are block indices (`LINK_NONE` = none) standing in for the `NextBlock` and
//! `DependentBlockList` pointers. Because they are plain numbers a driver can write any
//! graph, so the decoder checks that the links form a tree: indices in range
//! (`LinkOutOfRange`), no block reached twice (`LinkCycle`, which also catches shared
//! blocks), every block reachable from the root (`UnreachableBlock`), and the layer order
//! neighbor → path → TCP with `next` staying on one layer (`LayerOrder`).
//!
//! Block layout (little-endian):
//! ```text
//! 0  u8  state_type   OFFLOAD_STATE_TYPE (§2.8); required for every block, placeholders too
//! 1  u8  role         0 placeholder, 1 reference (linker / existing object), 2 new offload
//! 2  u8  flags        bit 0 STATE_FOLLOWS (meaning per operation, docs/ring-abi.md §6)
//! 3  u8  revision     1 (other values accepted, digest §7.1 item 29)
//! 4  u32 next
//! 8  u32 dependent
//! 12 u32 reserved     0
//! 16 u64 handle       device handle of the referenced object (role 1), else 0
//! 24 u64 host_context the driver's NdisOffloadHandle for this object (C-027); echoed in events
//! ```

use crate::error::{DecodeError, Field};
use crate::handle::DeviceHandle;
use crate::state::{CachedState, Layer, ObjectState, OffloadStateType, StateClass};
use crate::view::BlockView;
use crate::wire::{Rd, Wr};
use alloc::vec;
use alloc::vec::Vec;

pub const BLOCK_LEN: usize = 32;
pub const LINK_NONE: u32 = 0xFFFF_FFFF;
/// Largest tree the decoder accepts (the device may advertise less).
pub const MAX_TREE_BLOCKS: u32 = 1 << 20;
pub const BLOCK_REVISION: u8 = 1;

pub const ROLE_PLACEHOLDER: u8 = 0;
pub const ROLE_REFERENCE: u8 = 1;
pub const ROLE_NEW: u8 = 2;
pub const FLAG_STATE_FOLLOWS: u8 = 0x01;

/// One block of a tree; `B` is the per-operation content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<B> {
    pub state_type: OffloadStateType,
    pub next: Option<u32>,
    pub dependent: Option<u32>,
    /// The driver's per-object handle (NdisOffloadHandle, C-027/C-028).
    pub host_context: u64,
    pub body: B,
}

/// A state tree: `blocks[0]` is the root. Fields are public so tests can build broken
/// trees on purpose; [`TreeBuilder`] builds well-formed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree<B> {
    pub blocks: Vec<Block<B>>,
}

/// Initiate: placeholder, linker or new offload (§2.9 table, C-036..C-039).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiateBlock {
    Placeholder,
    Linker(DeviceHandle),
    New(ObjectState),
}

/// Query and invalidate: a placeholder or a reference to an offloaded object. For query
/// the block's Type selects the structures returned (C-076).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefBlock {
    Placeholder,
    Object(DeviceHandle),
}

/// Update: a reference with new cached variables, or a bare reference (relinking, C-084).
/// Only cached state can be expressed (C-083).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateBlock {
    Placeholder,
    Object {
        handle: DeviceHandle,
        cached: Option<CachedState>,
    },
}

/// Terminate: a reference, optionally asking for the delegated state back (C-111).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminateBlock {
    Placeholder,
    Object {
        handle: DeviceHandle,
        return_delegated: bool,
    },
}

/// What the generic tree code needs to know about a block body (sealed: the four body
/// types of this module are the only ones).
pub trait BlockBody: sealed::Parse {
    /// (role, flags, handle) as written on the ring.
    fn wire(&self) -> (u8, u8, u64);
    /// Append the state structures that follow the block (request direction).
    fn emit_state(&self, w: &mut Vec<u8>);
}

mod sealed {
    use super::*;
    pub trait Parse: Sized {
        /// Decode the body from role/flags/handle and the state area.
        fn parse(
            r: &mut Rd<'_>,
            ty: OffloadStateType,
            role: u8,
            flags: u8,
            handle: u64,
        ) -> Result<Self, DecodeError>;
    }
}

fn handle_of(r: &Rd<'_>, handle: u64) -> Result<DeviceHandle, DecodeError> {
    if handle == 0 {
        return Err(r.invalid("handle", 0));
    }
    Ok(DeviceHandle(handle))
}

fn no_handle(r: &Rd<'_>, handle: u64) -> Result<(), DecodeError> {
    if handle != 0 {
        return Err(r.invalid("handle", handle));
    }
    Ok(())
}

fn role_state(r: &Rd<'_>) -> DecodeError {
    DecodeError::RoleState {
        field: r.field("flags"),
    }
}

impl BlockBody for InitiateBlock {
    fn wire(&self) -> (u8, u8, u64) {
        match self {
            InitiateBlock::Placeholder => (ROLE_PLACEHOLDER, 0, 0),
            InitiateBlock::Linker(h) => (ROLE_REFERENCE, 0, h.0),
            InitiateBlock::New(_) => (ROLE_NEW, FLAG_STATE_FOLLOWS, 0),
        }
    }
    fn emit_state(&self, w: &mut Vec<u8>) {
        if let InitiateBlock::New(s) = self {
            s.emit(w);
        }
    }
}

impl sealed::Parse for InitiateBlock {
    fn parse(
        r: &mut Rd<'_>,
        ty: OffloadStateType,
        role: u8,
        flags: u8,
        handle: u64,
    ) -> Result<Self, DecodeError> {
        match (role, flags) {
            (ROLE_PLACEHOLDER, 0) => no_handle(r, handle).map(|_| InitiateBlock::Placeholder),
            (ROLE_REFERENCE, 0) => handle_of(r, handle).map(InitiateBlock::Linker),
            (ROLE_NEW, FLAG_STATE_FOLLOWS) => {
                no_handle(r, handle)?;
                // Decision (§2.11 leaves it open): a new offload carries the complete
                // object, i.e. Type NeighborOffloadState / Ip4|Ip6OffloadState /
                // TcpOffloadState followed by CONST, CACHED, DELEGATED.
                if ty.class() != Some(StateClass::All) {
                    return Err(r.invalid("state_type", ty as u64));
                }
                Ok(InitiateBlock::New(ObjectState::parse(r, ty)?))
            }
            _ => Err(role_state(r)),
        }
    }
}

impl BlockBody for RefBlock {
    fn wire(&self) -> (u8, u8, u64) {
        match self {
            RefBlock::Placeholder => (ROLE_PLACEHOLDER, 0, 0),
            RefBlock::Object(h) => (ROLE_REFERENCE, 0, h.0),
        }
    }
    fn emit_state(&self, _w: &mut Vec<u8>) {}
}

impl sealed::Parse for RefBlock {
    fn parse(
        r: &mut Rd<'_>,
        _ty: OffloadStateType,
        role: u8,
        flags: u8,
        handle: u64,
    ) -> Result<Self, DecodeError> {
        match (role, flags) {
            (ROLE_PLACEHOLDER, 0) => no_handle(r, handle).map(|_| RefBlock::Placeholder),
            (ROLE_REFERENCE, 0) => handle_of(r, handle).map(RefBlock::Object),
            _ => Err(role_state(r)),
        }
    }
}

impl BlockBody for UpdateBlock {
    fn wire(&self) -> (u8, u8, u64) {
        match self {
            UpdateBlock::Placeholder => (ROLE_PLACEHOLDER, 0, 0),
            UpdateBlock::Object { handle, cached } => (
                ROLE_REFERENCE,
                if cached.is_some() {
                    FLAG_STATE_FOLLOWS
                } else {
                    0
                },
                handle.0,
            ),
        }
    }
    fn emit_state(&self, w: &mut Vec<u8>) {
        if let UpdateBlock::Object {
            cached: Some(c), ..
        } = self
        {
            c.emit(w);
        }
    }
}

impl sealed::Parse for UpdateBlock {
    fn parse(
        r: &mut Rd<'_>,
        ty: OffloadStateType,
        role: u8,
        flags: u8,
        handle: u64,
    ) -> Result<Self, DecodeError> {
        match (role, flags) {
            (ROLE_PLACEHOLDER, 0) => no_handle(r, handle).map(|_| UpdateBlock::Placeholder),
            (ROLE_REFERENCE, 0) => Ok(UpdateBlock::Object {
                handle: handle_of(r, handle)?,
                cached: None,
            }),
            (ROLE_REFERENCE, FLAG_STATE_FOLLOWS) => {
                let handle = handle_of(r, handle)?;
                // Ownership on the ring (C-023, C-025, C-083): an update block may only be
                // followed by a CACHED structure. A Type naming const (or the complete
                // object) is an attempt to change constant variables; a delegated Type an
                // attempt to change OT-owned variables. Both refuse the whole request.
                match ty.class() {
                    Some(StateClass::Cached) => Ok(UpdateBlock::Object {
                        handle,
                        cached: Some(CachedState::parse(r, ty.layer())?),
                    }),
                    Some(StateClass::Delegated) => Err(DecodeError::DelegatedUpdate {
                        field: r.field("state_type"),
                    }),
                    _ => Err(DecodeError::ConstUpdate {
                        field: r.field("state_type"),
                    }),
                }
            }
            _ => Err(role_state(r)),
        }
    }
}

impl BlockBody for TerminateBlock {
    fn wire(&self) -> (u8, u8, u64) {
        match self {
            TerminateBlock::Placeholder => (ROLE_PLACEHOLDER, 0, 0),
            TerminateBlock::Object {
                handle,
                return_delegated,
            } => (
                ROLE_REFERENCE,
                if *return_delegated {
                    FLAG_STATE_FOLLOWS
                } else {
                    0
                },
                handle.0,
            ),
        }
    }
    fn emit_state(&self, _w: &mut Vec<u8>) {}
}

impl sealed::Parse for TerminateBlock {
    fn parse(
        r: &mut Rd<'_>,
        _ty: OffloadStateType,
        role: u8,
        flags: u8,
        handle: u64,
    ) -> Result<Self, DecodeError> {
        match (role, flags) {
            (ROLE_PLACEHOLDER, 0) => no_handle(r, handle).map(|_| TerminateBlock::Placeholder),
            (ROLE_REFERENCE, 0 | FLAG_STATE_FOLLOWS) => Ok(TerminateBlock::Object {
                handle: handle_of(r, handle)?,
                return_delegated: flags == FLAG_STATE_FOLLOWS,
            }),
            _ => Err(role_state(r)),
        }
    }
}

fn link(v: Option<u32>) -> u32 {
    v.unwrap_or(LINK_NONE)
}

impl<B: BlockBody> Tree<B> {
    /// Encode as `u32 block_count, u32 reserved, blocks…, state area`.
    pub fn emit(&self, w: &mut Vec<u8>) {
        w.u32(self.blocks.len() as u32);
        w.u32(0);
        for b in &self.blocks {
            let (role, flags, handle) = b.body.wire();
            w.u8(b.state_type as u8);
            w.u8(role);
            w.u8(flags);
            w.u8(BLOCK_REVISION);
            w.u32(link(b.next));
            w.u32(link(b.dependent));
            w.u32(0);
            w.u64(handle);
            w.u64(b.host_context);
        }
        for b in &self.blocks {
            b.body.emit_state(w);
        }
    }

    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let count = r.u32("tree.block_count")?;
        r.zero(4, "tree.reserved")?;
        if count == 0 {
            return Err(r.invalid("tree.block_count", 0));
        }
        if count > MAX_TREE_BLOCKS {
            return Err(DecodeError::TooManyBlocks {
                field: r.field("tree.block_count"),
                count: u64::from(count),
                max: u64::from(MAX_TREE_BLOCKS),
            });
        }
        // Bound the allocation by the bytes actually present before reserving.
        let need = (count as usize).saturating_mul(BLOCK_LEN);
        if r.remaining() < need {
            return Err(DecodeError::Truncated {
                field: r.field("tree.blocks"),
                need: r.pos().saturating_add(need),
                have: r.pos() + r.remaining(),
            });
        }
        let mut heads = Vec::with_capacity(count as usize);
        for i in 0..count {
            r.set_block(Some(i));
            let v = BlockView::new_checked(r.take(BLOCK_LEN, "tree.blocks")?)?;
            let bad = |name, value| DecodeError::InvalidValue {
                field: Field::in_block(i, name),
                value,
            };
            let ty = OffloadStateType::from_u8(v.state_type())
                .filter(|t| *t != OffloadStateType::TcpResource)
                .ok_or_else(|| bad("state_type", u64::from(v.state_type())))?;
            if v.role() > ROLE_NEW {
                return Err(bad("role", u64::from(v.role())));
            }
            if v.flags() & !FLAG_STATE_FOLLOWS != 0 {
                return Err(bad("flags", u64::from(v.flags())));
            }
            if v.reserved() != 0 {
                return Err(bad("reserved", u64::from(v.reserved())));
            }
            // Revision: 1 is sent; other values are accepted (digest §7.1 item 29).
            heads.push((
                ty,
                v.role(),
                v.flags(),
                v.next(),
                v.dependent(),
                v.handle(),
                v.host_context(),
            ));
        }
        let links: Vec<_> = heads.iter().map(|h| (h.0.layer(), h.3, h.4)).collect();
        check_links(&links)?;
        let mut blocks = Vec::with_capacity(heads.len());
        for (i, (ty, role, flags, next, dep, handle, host_context)) in heads.into_iter().enumerate()
        {
            r.set_block(Some(i as u32));
            let body = B::parse(r, ty, role, flags, handle)?;
            blocks.push(Block {
                state_type: ty,
                next: (next != LINK_NONE).then_some(next),
                dependent: (dep != LINK_NONE).then_some(dep),
                host_context,
                body,
            });
        }
        r.set_block(None);
        Ok(Tree { blocks })
    }

    /// Check the link structure of an in-memory tree with the same rules the decoder
    /// applies (indices in range, no block twice, all reachable, layer order). Trees from
    /// `Request::decode` already passed it.
    pub fn check(&self) -> Result<(), DecodeError> {
        if self.blocks.is_empty() {
            return Err(DecodeError::InvalidValue {
                field: Field::new("tree.block_count"),
                value: 0,
            });
        }
        let links: Vec<_> = self
            .blocks
            .iter()
            .map(|b| (b.state_type.layer(), link(b.next), link(b.dependent)))
            .collect();
        check_links(&links)
    }

    /// Depth-first/breadth-next order (C-035): a block, then its dependent list
    /// (recursively), then its next block. Only meaningful on a validated tree; on a
    /// malformed one it stops at the first bad link instead of looping.
    pub fn traversal_order(&self) -> Vec<u32> {
        let n = self.blocks.len();
        let mut seen = vec![false; n];
        let mut order = Vec::with_capacity(n);
        let mut stack = vec![0u32];
        while let Some(i) = stack.pop() {
            let Some(b) = self.blocks.get(i as usize) else {
                continue;
            };
            if core::mem::replace(&mut seen[i as usize], true) {
                continue;
            }
            order.push(i);
            if let Some(nx) = b.next {
                stack.push(nx);
            }
            if let Some(d) = b.dependent {
                stack.push(d);
            }
        }
        order
    }

    /// Indices of the blocks in the dependent list of `i` (its "immediately dependent
    /// blocks", §3.1.2).
    pub fn dependents(&self, i: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = self.blocks.get(i as usize).and_then(|b| b.dependent);
        while let Some(c) = cur {
            if out.len() > self.blocks.len() {
                break; // malformed tree: never loop
            }
            out.push(c);
            cur = self.blocks.get(c as usize).and_then(|b| b.next);
        }
        out
    }

    /// The block whose dependent list contains each block (None for the root's level).
    pub fn parents(&self) -> Vec<Option<u32>> {
        let mut parents = vec![None; self.blocks.len()];
        for i in 0..self.blocks.len() as u32 {
            for d in self.dependents(i) {
                if let Some(p) = parents.get_mut(d as usize) {
                    *p = Some(i);
                }
            }
        }
        parents
    }
}

/// Validate the link structure: (layer, next, dependent) per block.
pub fn check_links(blocks: &[(Layer, u32, u32)]) -> Result<(), DecodeError> {
    let n = blocks.len();
    let mut seen = vec![false; n];
    // (block, linked-from block, field name)
    let mut stack: Vec<(u32, Option<(u32, &'static str)>)> = vec![(0, None)];
    while let Some((i, from)) = stack.pop() {
        let here = |f: Option<(u32, &'static str)>| match f {
            Some((b, name)) => Field::in_block(b, name),
            None => Field::new("tree.root"),
        };
        if seen[i as usize] {
            return Err(DecodeError::LinkCycle {
                field: here(from),
                target: i,
            });
        }
        seen[i as usize] = true;
        let (layer, next, dep) = blocks[i as usize];
        for (target, name) in [(next, "next"), (dep, "dependent")] {
            if target == LINK_NONE {
                continue;
            }
            let field = Field::in_block(i, name);
            if target as usize >= n {
                return Err(DecodeError::LinkOutOfRange { field, target });
            }
            let tl = blocks[target as usize].0;
            let ok = if name == "next" {
                tl == layer
            } else {
                (tl as u8) == (layer as u8) + 1
            };
            if !ok {
                return Err(DecodeError::LayerOrder { field });
            }
        }
        if next != LINK_NONE {
            stack.push((next, Some((i, "next"))));
        }
        if dep != LINK_NONE {
            stack.push((dep, Some((i, "dependent"))));
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(DecodeError::Unreachable {
            field: Field::in_block(i as u32, "next"),
        });
    }
    Ok(())
}

/// Builds well-formed trees: `new`/`new_object` make the root, `dependent(parent, …)`
/// appends to the end of a block's dependent list, `next(sibling, …)` appends to the end
/// of the list `sibling` is in. The returned numbers are block indices.
#[derive(Debug, Clone)]
pub struct TreeBuilder<B> {
    blocks: Vec<Block<B>>,
    /// A known member of each block's dependent list near its end (O(1) amortised appends).
    last_dep: Vec<Option<u32>>,
}

impl<B> TreeBuilder<B> {
    pub fn new(state_type: OffloadStateType, host_context: u64, body: B) -> Self {
        Self {
            blocks: vec![Block {
                state_type,
                next: None,
                dependent: None,
                host_context,
                body,
            }],
            last_dep: vec![None],
        }
    }

    fn push(&mut self, state_type: OffloadStateType, host_context: u64, body: B) -> u32 {
        let i = self.blocks.len() as u32;
        self.blocks.push(Block {
            state_type,
            next: None,
            dependent: None,
            host_context,
            body,
        });
        self.last_dep.push(None);
        i
    }

    fn list_end(&self, mut i: u32) -> u32 {
        while let Some(n) = self.blocks[i as usize].next {
            i = n;
        }
        i
    }

    /// Append a block to `parent`'s dependent list. Panics if `parent` is not a block of
    /// this builder (a programming error of the caller, not input data).
    pub fn dependent(
        &mut self,
        parent: u32,
        state_type: OffloadStateType,
        host_context: u64,
        body: B,
    ) -> u32 {
        let i = self.push(state_type, host_context, body);
        match self.last_dep[parent as usize] {
            None => self.blocks[parent as usize].dependent = Some(i),
            Some(known) => {
                let end = self.list_end(known);
                self.blocks[end as usize].next = Some(i);
            }
        }
        self.last_dep[parent as usize] = Some(i);
        i
    }

    /// Append a block at the end of the list `sibling` is in (root level included).
    pub fn next(
        &mut self,
        sibling: u32,
        state_type: OffloadStateType,
        host_context: u64,
        body: B,
    ) -> u32 {
        let end = self.list_end(sibling);
        let i = self.push(state_type, host_context, body);
        self.blocks[end as usize].next = Some(i);
        i
    }

    pub fn build(self) -> Tree<B> {
        Tree {
            blocks: self.blocks,
        }
    }
}

impl TreeBuilder<InitiateBlock> {
    /// Root block offloading a new object.
    pub fn new_object(host_context: u64, state: ObjectState) -> Self {
        Self::new(state.state_type(), host_context, InitiateBlock::New(state))
    }
    /// Append a new object under `parent`.
    pub fn new_dependent(&mut self, parent: u32, host_context: u64, state: ObjectState) -> u32 {
        self.dependent(
            parent,
            state.state_type(),
            host_context,
            InitiateBlock::New(state),
        )
    }
}
