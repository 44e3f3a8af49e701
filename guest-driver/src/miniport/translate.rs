//! Block lists (host form, digest §2.7) → ring trees (chimney-abi), per operation (§2.11).
//!
//! The miniport copies what it needs out of the host's tree when it sends the request;
//! `order[k]` remembers which host block became ring block `k`, so results go back to the
//! right block. Anything the miniport cannot express or that names no live object of its
//! own is refused before the device sees it ([`Refusal`]); the whole tree then completes
//! with FAILURE in every block (§7.1 item 21 leaves invalid references open; the ABI's
//! device refuses such trees whole too, docs/ring-abi.md §10).

use alloc::vec;
use alloc::vec::Vec;

use chimney_abi::{
    Block, CachedState, InitiateBlock, NeighborState, ObjectState, OffloadStateType, PathState,
    QueriedState, RefBlock, RequestBody, StateClass, TcpState, TerminateBlock, Tree, UpdateBlock,
};

use super::contexts::{Contexts, ObjState};
use crate::ndis::blocklist::BlockTree;

/// The five state-manipulation operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Initiate,
    Query,
    Update,
    Invalidate,
    Terminate,
}

/// Why a tree was refused before reaching the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The links do not form a tree (out of range, cycle, unreachable block).
    Links,
    /// A block's Type is not a known `OFFLOAD_STATE_TYPE`, or not allowed here.
    Type { block: usize },
    /// The structures after a block do not fit its Type / the operation.
    State { block: usize },
    /// `*MiniportOffloadContext` names no object of this miniport (unknown or terminated).
    UnknownContext { block: usize },
    /// The object is already being terminated (double terminate).
    AlreadyTerminating { block: usize },
    /// Send data (`NetBufferListChain`) on a block that is not a new TCP offload.
    SendDataUnsupported { block: usize },
    /// The ring tree violates the ABI's layer rules.
    LayerOrder,
}

/// A translated request and how to map its results back.
#[derive(Debug)]
pub struct Plan {
    pub body: RequestBody,
    /// Host block index of ring block k.
    pub order: Vec<usize>,
    /// Contexts reserved for new offloads, by ring block (initiate).
    pub reserved: Vec<Option<u64>>,
    /// Contexts marked Terminating (terminate), to commit or roll back.
    pub terminating: Vec<u64>,
    /// Initiate: send data of new TCP blocks for the ring's data trailer (§16.4):
    /// the bytes from SndUna on, i.e. the NBL chain's data in order (C-057).
    pub data: Vec<chimney_abi::data_io::TcpData>,
}

fn full_state(q: &QueriedState) -> Option<ObjectState> {
    Some(match *q {
        QueriedState::Neighbor {
            konst: Some(konst),
            cached: Some(cached),
            delegated: Some(delegated),
        } => ObjectState::Neighbor(NeighborState {
            konst,
            cached,
            delegated,
        }),
        QueriedState::Path {
            konst: Some(konst),
            cached: Some(cached),
            delegated: Some(delegated),
        } => ObjectState::Path(PathState {
            konst,
            cached,
            delegated,
        }),
        QueriedState::Tcp {
            konst: Some(konst),
            cached: Some(cached),
            delegated: Some(delegated),
        } => ObjectState::Tcp(TcpState {
            konst,
            cached,
            delegated,
        }),
        _ => return None,
    })
}

fn cached_only(q: &QueriedState) -> Option<CachedState> {
    match *q {
        QueriedState::Neighbor {
            konst: None,
            cached: Some(c),
            delegated: None,
        } => Some(CachedState::Neighbor(c)),
        QueriedState::Path {
            konst: None,
            cached: Some(c),
            delegated: None,
        } => Some(CachedState::Path(c)),
        QueriedState::Tcp {
            konst: None,
            cached: Some(c),
            delegated: None,
        } => Some(CachedState::Tcp(c)),
        _ => None,
    }
}

/// Translate `tree` for `kind`. On success contexts may have been reserved / marked; the
/// caller commits or rolls them back with the results.
pub fn translate(kind: OpKind, tree: &BlockTree, ctxs: &mut Contexts) -> Result<Plan, Refusal> {
    let (order, ok) = tree.traversal();
    if !ok {
        return Err(Refusal::Links);
    }
    let mut ring_index = vec![usize::MAX; tree.blocks.len()];
    for (k, &i) in order.iter().enumerate() {
        ring_index[i] = k;
    }
    let link = |l: Option<usize>| l.map(|i| ring_index[i] as u32);
    let mut plan = Plan {
        body: RequestBody::Invalidate(Tree { blocks: Vec::new() }),
        order: order.clone(),
        reserved: vec![None; order.len()],
        terminating: Vec::new(),
        data: Vec::new(),
    };
    // Checks first, so a refusal leaves no context changed.
    for &i in &order {
        let b = &tree.blocks[i];
        let ty = b.state_type().ok_or(Refusal::Type { block: i })?;
        if ty == OffloadStateType::TcpResource {
            return Err(Refusal::Type { block: i });
        }
        if let Some(v) = b.miniport_offload_context.filter(|v| *v != 0) {
            let ctx = ctxs.get(v).ok_or(Refusal::UnknownContext { block: i })?;
            if ctx.layer != ty.layer() || ctx.state == ObjState::Reserved {
                return Err(Refusal::UnknownContext { block: i });
            }
            if kind == OpKind::Terminate && ctx.state == ObjState::Terminating {
                return Err(Refusal::AlreadyTerminating { block: i });
            }
        }
        match (kind, b.miniport_offload_context) {
            (OpKind::Initiate, Some(0)) => {
                // Send data travels only with a new TCP object (§3.1.5).
                if !b.net_buffer_list_chain.is_empty() && ty != OffloadStateType::Tcp {
                    return Err(Refusal::SendDataUnsupported { block: i });
                }
                let s = b
                    .state
                    .as_ref()
                    .and_then(full_state)
                    .ok_or(Refusal::State { block: i })?;
                if ty.class() != Some(StateClass::All) || s.state_type() != ty {
                    return Err(Refusal::State { block: i });
                }
            }
            (_, Some(0)) => return Err(Refusal::UnknownContext { block: i }),
            (OpKind::Update, Some(_)) => {
                if let Some(q) = &b.state {
                    let c = cached_only(q).ok_or(Refusal::State { block: i })?;
                    if c.layer() != ty.layer() {
                        return Err(Refusal::State { block: i });
                    }
                }
            }
            _ => {}
        }
    }
    // Build.
    macro_rules! blocks {
        ($body:expr) => {
            order
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let b = &tree.blocks[i];
                    Block {
                        state_type: b.state_type().unwrap_or(OffloadStateType::Neighbor),
                        next: link(b.next_block),
                        dependent: link(b.dependent_block_list),
                        host_context: 0,
                        body: $body(k, b),
                    }
                })
                .collect::<Vec<_>>()
        };
    }
    let device = |ctxs: &Contexts, v: u64| ctxs.get(v).and_then(|c| c.device);
    match kind {
        OpKind::Initiate => {
            let mut blocks = Vec::with_capacity(order.len());
            for (k, &i) in order.iter().enumerate() {
                let b = &tree.blocks[i];
                let ty = b.state_type().unwrap_or(OffloadStateType::Neighbor);
                let (body, host_context) = match b.miniport_offload_context {
                    None => (InitiateBlock::Placeholder, 0),
                    Some(0) => {
                        let s = b.state.as_ref().and_then(full_state);
                        let id = ctxs.reserve(ty.layer(), b.ndis_offload_handle);
                        plan.reserved[k] = Some(id);
                        if !b.net_buffer_list_chain.is_empty() {
                            let send: Vec<u8> = b
                                .net_buffer_list_chain
                                .iter()
                                .flat_map(|n| n.net_buffers.iter().flat_map(|nb| nb.data()))
                                .collect();
                            plan.data.push(chimney_abi::data_io::TcpData {
                                block: k as u32,
                                send,
                                buffered: Vec::new(),
                            });
                        }
                        match s {
                            Some(s) => (InitiateBlock::New(s), id),
                            None => return Err(Refusal::State { block: i }),
                        }
                    }
                    Some(v) => match device(ctxs, v) {
                        Some(h) => (InitiateBlock::Linker(h), v),
                        None => return Err(Refusal::UnknownContext { block: i }),
                    },
                };
                blocks.push(Block {
                    state_type: ty,
                    next: link(b.next_block),
                    dependent: link(b.dependent_block_list),
                    // The device echoes it in events: our context id (C-028 via the context).
                    host_context,
                    body,
                });
            }
            plan.body = RequestBody::Initiate(Tree { blocks });
        }
        OpKind::Query | OpKind::Invalidate => {
            let blocks = blocks!(|_k, b: &crate::ndis::blocklist::BlockList| match b
                .miniport_offload_context
                .and_then(|v| device(ctxs, v))
            {
                Some(h) => RefBlock::Object(h),
                None => RefBlock::Placeholder,
            });
            plan.body = if kind == OpKind::Query {
                RequestBody::Query(Tree { blocks })
            } else {
                RequestBody::Invalidate(Tree { blocks })
            };
        }
        OpKind::Update => {
            let blocks = blocks!(|_k, b: &crate::ndis::blocklist::BlockList| match b
                .miniport_offload_context
                .and_then(|v| device(ctxs, v))
            {
                Some(handle) => UpdateBlock::Object {
                    handle,
                    cached: b.state.as_ref().and_then(cached_only),
                },
                None => UpdateBlock::Placeholder,
            });
            plan.body = RequestBody::Update(Tree { blocks });
        }
        OpKind::Terminate => {
            let blocks = blocks!(|_k, b: &crate::ndis::blocklist::BlockList| match b
                .miniport_offload_context
                .and_then(|v| device(ctxs, v))
            {
                Some(handle) => TerminateBlock::Object {
                    handle,
                    return_delegated: b.state.is_some(),
                },
                None => TerminateBlock::Placeholder,
            });
            for &i in &order {
                if let Some(v) = tree.blocks[i].miniport_offload_context {
                    if let Some(c) = ctxs.get_mut(v).filter(|c| c.state != ObjState::Terminating) {
                        c.before_terminate = c.state;
                        c.state = ObjState::Terminating;
                        plan.terminating.push(v);
                    }
                }
            }
            plan.body = RequestBody::Terminate(Tree { blocks });
        }
    }
    let checked = match &plan.body {
        RequestBody::Initiate(t) => t.check(),
        RequestBody::Query(t) | RequestBody::Invalidate(t) => t.check(),
        RequestBody::Update(t) => t.check(),
        RequestBody::Terminate(t) => t.check(),
        _ => Ok(()),
    };
    if checked.is_err() {
        rollback(&plan, ctxs);
        return Err(Refusal::LayerOrder);
    }
    Ok(plan)
}

/// Undo what `translate` did to the contexts (the request failed as a whole).
pub fn rollback(plan: &Plan, ctxs: &mut Contexts) {
    for id in plan.reserved.iter().flatten() {
        ctxs.release(*id);
    }
    for &id in &plan.terminating {
        if let Some(c) = ctxs.get_mut(id) {
            c.state = c.before_terminate;
        }
    }
}
