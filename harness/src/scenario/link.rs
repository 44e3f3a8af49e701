//! How the runner reaches the offload target: through the miniport's registered handler
//! tables (the NDIS model, `crate::ndis`, the default — the way Windows' stack does it) or
//! directly on the control ring (`driver = "ring"`: for the device's own input validation,
//! which an NDIS host cannot express — malformed records, raw ERROR completions).
//!
//! Both produce the same `Completion`/`Event` shapes so the steps and the conformance
//! monitor do not care which one ran; with the NDIS model, a block's "handle" is the
//! `MiniportOffloadContext` the miniport wrote (C-040) and events are identified by the
//! `NdisOffloadHandle` the host gave (C-027/C-028), which the runner uses as host context.

use std::time::{Duration, Instant};

use chimney_abi::{
    BlockResult, Completion, CompletionBody, DelegatedState, DeviceHandle, Event, EventClass,
    InitiateBlock, NdisStatus, QueriedState, RefBlock, RequestBody, TerminateBlock, Tree,
    UpdateBlock,
};
use chimney_miniport::miniport::OpKind;
use chimney_miniport::ndis::blocklist::{BlockList, BlockTree};

use crate::control_session::ControlSession;
use crate::ndis::{Callback, Ndis};

/// The runner's connection to the offload target.
pub enum Link<'a> {
    Ring(&'a mut ControlSession),
    Ndis {
        ndis: Box<Ndis>,
        /// Next log entry not yet turned into an event.
        cursor: usize,
    },
}

/// The handler-level rule of each operation: record the tree, return, complete later
/// through NDIS with the same root.
pub fn async_item(kind: OpKind) -> u16 {
    match kind {
        OpKind::Initiate => 33,
        OpKind::Query => 75,
        OpKind::Update => 82,
        OpKind::Invalidate => 97,
        OpKind::Terminate => 108,
    }
}

/// What a call through the link produced.
pub struct Called {
    pub completion: Completion,
    /// Events that came before the completion.
    pub events: Vec<Event>,
    /// NDIS only: the handler completed the tree before returning (`async_item` broken).
    pub synchronous: Option<OpKind>,
    /// NDIS only: blocks whose ProtocolReserved / ImReserved / SourceHandle came back
    /// changed (C-030).
    pub host_fields_changed: Vec<String>,
    /// NDIS terminate only: per block, the send data handed back in its
    /// `NetBufferListChain` (unacknowledged, from SndUna, §3.5.4) and the received,
    /// undelivered `BufferedData` (§3.5.5), which the host copied and returned with the
    /// receive-return handler.
    pub returned: Vec<Returned>,
}

/// Data a terminate handed back for one block.
#[derive(Debug, Clone, Default)]
pub struct Returned {
    pub block: usize,
    pub send: Vec<u8>,
    pub buffered: Vec<u8>,
    /// Status of the receive-return of the BufferedData NBLs (C-175: SUCCESS).
    pub return_status: Option<NdisStatus>,
    /// Status of each NBL in the returned send chain (C-145/C-154: UPLOAD_IN_PROGRESS).
    pub send_statuses: Vec<NdisStatus>,
}

/// ProtocolReserved, ImReserved and SourceHandle the host puts in a block (from its
/// NdisOffloadHandle, so each block's values differ).
fn host_fields(h: u64) -> ([u64; 2], [u64; 2], u64) {
    (
        [h ^ 0x5052_4f54_4f43_4f4c, !h],
        [h ^ 0x494d_5245_5345_5256, h.rotate_left(17)],
        h ^ 0x534f_5552_4345,
    )
}

fn block<B>(b: &chimney_abi::Block<B>) -> BlockList {
    let mut bl = BlockList::new(b.state_type);
    bl.next_block = b.next.map(|n| n as usize);
    bl.dependent_block_list = b.dependent.map(|n| n as usize);
    bl.ndis_offload_handle = b.host_context;
    // The host's own fields (C-030: the miniport must leave them alone).
    (bl.protocol_reserved, bl.im_reserved, bl.source_handle) = host_fields(b.host_context);
    bl
}

/// The host's block list for a request tree (NDIS form).
fn to_blocks(body: &RequestBody) -> Option<(OpKind, BlockTree)> {
    let (kind, blocks): (OpKind, Vec<BlockList>) = match body {
        RequestBody::Initiate(t) => (
            OpKind::Initiate,
            t.blocks
                .iter()
                .map(|b| {
                    let mut bl = block(b);
                    match &b.body {
                        InitiateBlock::Placeholder => bl.miniport_offload_context = None,
                        InitiateBlock::Linker(h) => bl.miniport_offload_context = Some(h.0),
                        InitiateBlock::New(s) => {
                            bl.miniport_offload_context = Some(0);
                            bl.state = Some(QueriedState::select(s.state_type(), s));
                        }
                    }
                    bl
                })
                .collect(),
        ),
        RequestBody::Query(t) | RequestBody::Invalidate(t) => (
            if matches!(body, RequestBody::Query(_)) {
                OpKind::Query
            } else {
                OpKind::Invalidate
            },
            ref_blocks(t),
        ),
        RequestBody::Update(t) => (
            OpKind::Update,
            t.blocks
                .iter()
                .map(|b| {
                    let mut bl = block(b);
                    if let UpdateBlock::Object { handle, cached } = &b.body {
                        bl.miniport_offload_context = Some(handle.0);
                        bl.state = cached.as_ref().map(|c| match c {
                            chimney_abi::CachedState::Neighbor(n) => QueriedState::Neighbor {
                                konst: None,
                                cached: Some(*n),
                                delegated: None,
                            },
                            chimney_abi::CachedState::Path(p) => QueriedState::Path {
                                konst: None,
                                cached: Some(*p),
                                delegated: None,
                            },
                            chimney_abi::CachedState::Tcp(t) => QueriedState::Tcp {
                                konst: None,
                                cached: Some(*t),
                                delegated: None,
                            },
                        });
                    }
                    bl
                })
                .collect(),
        ),
        RequestBody::Terminate(t) => (
            OpKind::Terminate,
            t.blocks
                .iter()
                .map(|b| {
                    let mut bl = block(b);
                    if let TerminateBlock::Object {
                        handle,
                        return_delegated,
                    } = &b.body
                    {
                        bl.miniport_offload_context = Some(handle.0);
                        // A structure after the block = "return the delegated state here".
                        if *return_delegated {
                            bl.state = Some(empty_state(b.state_type));
                        }
                    }
                    bl
                })
                .collect(),
        ),
        _ => return None,
    };
    Some((kind, BlockTree { blocks }))
}

fn empty_state(ty: chimney_abi::OffloadStateType) -> QueriedState {
    match ty.layer() {
        chimney_abi::Layer::Neighbor => QueriedState::Neighbor {
            konst: None,
            cached: None,
            delegated: None,
        },
        chimney_abi::Layer::Path => QueriedState::Path {
            konst: None,
            cached: None,
            delegated: None,
        },
        chimney_abi::Layer::Tcp => QueriedState::Tcp {
            konst: None,
            cached: None,
            delegated: None,
        },
    }
}

fn ref_blocks(t: &Tree<RefBlock>) -> Vec<BlockList> {
    t.blocks
        .iter()
        .map(|b| {
            let mut bl = block(b);
            bl.miniport_offload_context = match b.body {
                RefBlock::Placeholder => None,
                RefBlock::Object(h) => Some(h.0),
            };
            bl
        })
        .collect()
}

fn delegated_of(q: &QueriedState) -> Option<DelegatedState> {
    match q {
        QueriedState::Neighbor {
            delegated: Some(d), ..
        } => Some(DelegatedState::Neighbor(*d)),
        QueriedState::Path {
            delegated: Some(d), ..
        } => Some(DelegatedState::Path(*d)),
        QueriedState::Tcp {
            delegated: Some(d), ..
        } => Some(DelegatedState::Tcp(*d)),
        _ => None,
    }
}

/// The host's view of a completed tree, in the ring's completion shape.
fn to_completion(body: &RequestBody, done: &BlockTree) -> Completion {
    let status = done
        .blocks
        .first()
        .map_or(NdisStatus::FAILURE, |b| b.status);
    let ty = |i: usize, b: &BlockList| {
        b.state_type().unwrap_or_else(|| match body {
            RequestBody::Initiate(t) => t.blocks[i].state_type,
            _ => chimney_abi::OffloadStateType::Neighbor,
        })
    };
    let plain = |with_handle: &dyn Fn(usize, &BlockList) -> Option<DeviceHandle>| {
        done.blocks
            .iter()
            .enumerate()
            .map(|(i, b)| BlockResult {
                state_type: ty(i, b),
                status: b.status,
                handle: with_handle(i, b),
                state: None,
            })
            .collect::<Vec<_>>()
    };
    let body = match body {
        RequestBody::Initiate(t) => CompletionBody::Initiate(plain(&|i, b| {
            match t.blocks.get(i).map(|x| &x.body) {
                // A new offload's location: the context written on success (C-040).
                Some(InitiateBlock::New(_)) => b
                    .miniport_offload_context
                    .filter(|v| *v != 0)
                    .map(DeviceHandle),
                // A linker's location must stay as it was; a change shows as a handle.
                Some(InitiateBlock::Linker(h)) => b
                    .miniport_offload_context
                    .filter(|v| *v != h.0)
                    .map(DeviceHandle),
                _ => b.miniport_offload_context.map(DeviceHandle),
            }
        })),
        RequestBody::Query(_) => CompletionBody::Query(
            done.blocks
                .iter()
                .enumerate()
                .map(|(i, b)| BlockResult {
                    state_type: ty(i, b),
                    status: b.status,
                    handle: None,
                    state: b.state,
                })
                .collect(),
        ),
        RequestBody::Update(_) => CompletionBody::Update(plain(&|_, _| None)),
        RequestBody::Invalidate(_) => CompletionBody::Invalidate(plain(&|_, _| None)),
        RequestBody::Terminate(_) => CompletionBody::Terminate(
            done.blocks
                .iter()
                .enumerate()
                .map(|(i, b)| BlockResult {
                    state_type: ty(i, b),
                    status: b.status,
                    handle: None,
                    state: b.state.as_ref().and_then(delegated_of),
                })
                .collect(),
        ),
        _ => CompletionBody::SetParameters,
    };
    Completion {
        request_id: 0,
        opcode: 0,
        tx_head: 0,
        status,
        body,
    }
}

/// One NDIS callback as a ring-style event (None for completions of other kinds).
/// `handle_of(ndis_offload_handle)` finds the object the host gave that handle.
fn to_event(c: &Callback, seq: u64, handle_of: &dyn Fn(u64) -> Option<u64>) -> Option<Event> {
    Some(match c {
        Callback::TcpEvent {
            ndis_offload_handle,
            event_type,
            info,
        } => Event {
            sequence: seq,
            class: EventClass::TcpEvent,
            status: NdisStatus::SUCCESS,
            handle: handle_of(*ndis_offload_handle).map(DeviceHandle),
            host_context: *ndis_offload_handle,
            code: *event_type,
            info: *info,
            payload: Vec::new(),
        },
        Callback::OffloadEvent { code, block_list } => Event {
            sequence: seq,
            class: EventClass::OffloadEvent,
            status: NdisStatus::SUCCESS,
            // A reachability query names its neighbor by the block's NdisOffloadHandle;
            // `info` carries the HRD the host wrote back (C-226).
            handle: block_list
                .as_ref()
                .and_then(|t| t.blocks.first())
                .and_then(|b| handle_of(b.ndis_offload_handle))
                .map(DeviceHandle),
            host_context: block_list
                .as_ref()
                .and_then(|t| t.blocks.first())
                .map_or(0, |b| b.ndis_offload_handle),
            code: *code,
            info: match block_list
                .as_ref()
                .and_then(|t| t.blocks.first())
                .and_then(|b| b.state)
            {
                Some(QueriedState::Neighbor {
                    cached: Some(c), ..
                }) => c.host_reachability_delta,
                _ => 0,
            },
            // Only whether a block list came matters to the checks (C-229).
            payload: if block_list.is_some() {
                vec![1]
            } else {
                Vec::new()
            },
        },
        Callback::Status(s) => Event {
            sequence: seq,
            class: EventClass::StatusIndication,
            status: s.status_code,
            handle: None,
            host_context: 0,
            code: 0,
            info: 0,
            payload: Vec::new(),
        },
        _ => return None,
    })
}

impl Link<'_> {
    pub fn is_ndis(&self) -> bool {
        matches!(self, Link::Ndis { .. })
    }

    /// Run one state operation; returns its completion and the events that came before it
    /// (NDIS: logged before the completion; ring: read together with it).
    pub fn call(
        &mut self,
        body: RequestBody,
        handle_of: &dyn Fn(u64) -> Option<u64>,
    ) -> Result<Called, String> {
        match self {
            Link::Ring(s) => {
                let c = s.call(body).map_err(|e| e.to_string())?;
                // Only what the driver read while waiting for the completion came before
                // it; anything read by a later poll came after (judged after the step).
                let mut evs = Vec::new();
                while let Some(e) = s.channel.next_event() {
                    evs.push(e);
                }
                Ok(Called {
                    completion: c,
                    events: evs,
                    synchronous: None,
                    returned: Vec::new(),
                    host_fields_changed: Vec::new(),
                })
            }
            Link::Ndis { ndis, cursor } => {
                let (kind, tree) = to_blocks(&body).ok_or("not a state operation")?;
                let root = ndis.submit(kind, tree).map_err(|e| e.to_string())?;
                // The handler returned: it must not have completed the tree already.
                let synchronous = ndis.is_completed(root).then_some(kind);
                let done = ndis.wait_completion(root).map_err(|e| e.to_string())?;
                // Events logged before this completion came before it.
                let at = ndis
                    .model
                    .log
                    .iter()
                    .enumerate()
                    .skip(*cursor)
                    .find(|(_, c)| {
                        matches!(c, Callback::OffloadComplete { root: r, .. } if *r == root)
                    })
                    .map_or(ndis.model.log.len(), |(i, _)| i);
                let mut evs = Vec::new();
                for i in *cursor..at {
                    if let Some(e) = to_event(&ndis.model.log[i], i as u64, handle_of) {
                        evs.push(e);
                    }
                }
                *cursor = at + 1;
                let mut returned = Vec::new();
                if kind == OpKind::Terminate {
                    for (i, b) in done.tree.blocks.iter().enumerate() {
                        if b.net_buffer_list_chain.is_empty() && b.buffered_data.is_empty() {
                            continue;
                        }
                        let data = |v: &[chimney_miniport::ndis::nbl::NetBufferList]| {
                            v.iter()
                                .flat_map(|n| n.net_buffers.iter().flat_map(|nb| nb.data()))
                                .collect::<Vec<u8>>()
                        };
                        let mut r = Returned {
                            block: i,
                            send: data(&b.net_buffer_list_chain),
                            buffered: data(&b.buffered_data),
                            return_status: None,
                            send_statuses: b
                                .net_buffer_list_chain
                                .iter()
                                .map(|n| n.status)
                                .collect(),
                        };
                        if !b.buffered_data.is_empty() {
                            // Copied: the NBLs go back to the miniport (§3.5.5).
                            r.return_status = Some(
                                ndis.receive_return(b.buffered_data.clone())
                                    .map_err(|e| e.to_string())?,
                            );
                        }
                        returned.push(r);
                    }
                }
                let host_fields_changed = done
                    .tree
                    .blocks
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| {
                        (b.protocol_reserved, b.im_reserved, b.source_handle)
                            != host_fields(b.ndis_offload_handle)
                    })
                    .map(|(i, b)| {
                        format!(
                            "{kind:?} block {i}: ProtocolReserved {:x?} ImReserved {:x?} \
                             SourceHandle {:#x}, expected {:x?}",
                            b.protocol_reserved,
                            b.im_reserved,
                            b.source_handle,
                            host_fields(b.ndis_offload_handle)
                        )
                    })
                    .collect();
                Ok(Called {
                    completion: to_completion(&body, &done.tree),
                    events: evs,
                    synchronous,
                    returned,
                    host_fields_changed,
                })
            }
        }
    }

    /// Events that arrived, waiting up to `wait` for the first one.
    pub fn events(
        &mut self,
        wait: Duration,
        handle_of: &dyn Fn(u64) -> Option<u64>,
    ) -> Result<Vec<Event>, String> {
        match self {
            Link::Ring(s) => {
                let p = s.platform_arc();
                s.channel.poll(&*p).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                while let Some(e) = s.channel.next_event() {
                    out.push(e);
                }
                if out.is_empty() && !wait.is_zero() {
                    if let Ok(e) = s.channel.wait_event(&*p, wait) {
                        out.push(e);
                    }
                }
                Ok(out)
            }
            Link::Ndis { ndis, cursor } => {
                let until = Instant::now() + wait;
                loop {
                    let _ = ndis
                        .adapter
                        .poll_device(&mut ndis.model, Duration::from_millis(1))
                        .map_err(|e| format!("miniport DPC: {e}"))?;
                    let mut out = Vec::new();
                    while *cursor < ndis.model.log.len() {
                        if let Some(e) =
                            to_event(&ndis.model.log[*cursor], *cursor as u64, handle_of)
                        {
                            out.push(e);
                        }
                        *cursor += 1;
                    }
                    if !out.is_empty() || Instant::now() >= until {
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// NDIS: the HRD the host answers NeighborReachabilityQuery indications with (C-226).
    pub fn set_reachability_hrd(&mut self, hrd: u32) -> bool {
        match self {
            Link::Ndis { ndis, .. } => {
                ndis.model.reachability_hrd = hrd;
                true
            }
            Link::Ring(_) => false,
        }
    }

    /// Rules broken that the NDIS model saw (C-item, what), taken.
    pub fn host_checks(&mut self) -> Vec<(u16, String)> {
        match self {
            Link::Ndis { ndis, .. } => std::mem::take(&mut ndis.model.host_checks),
            Link::Ring(_) => Vec::new(),
        }
    }

    /// The ring session (raw requests); `None` through the NDIS model.
    pub fn ring(&mut self) -> Option<&mut ControlSession> {
        match self {
            Link::Ring(s) => Some(s),
            Link::Ndis { .. } => None,
        }
    }
}

/// One send completion: NBL id, status, TcpOffloadBytesTransferred.
pub type SendCompletion = (u64, NdisStatus, usize);

/// How long one data operation through the miniport may take (a bound against hangs).
const DATA_LIMIT: Duration = Duration::from_secs(30);

impl Link<'_> {
    /// Attach data pair 2 (queues 4/5) to the miniport, when the device has it.
    pub fn attach_data_pair(&mut self, vmm: &mut crate::frontend::Vmm) -> Result<(), String> {
        let Link::Ndis { ndis, .. } = self else {
            return Ok(());
        };
        let rx = vmm
            .create_queue(4, 256)
            .map_err(|e| format!("data rx: {e}"))?;
        let tx = vmm
            .create_queue(5, 256)
            .map_err(|e| format!("data tx: {e}"))?;
        ndis.adapter
            .attach_data_pairs(
                vec![(rx, tx)],
                chimney_miniport::data::DataConfig::default(),
            )
            .map_err(|e| format!("attach data pair: {e}"))
    }

    /// Run the miniport's DPC until `done` sees the log from `from` on.
    fn dpc_until(
        ndis: &mut Ndis,
        what: &str,
        from: usize,
        mut done: impl FnMut(&[Callback]) -> bool,
    ) -> Result<(), String> {
        let limit = Instant::now() + DATA_LIMIT;
        while !done(&ndis.model.log[from..]) {
            if Instant::now() > limit {
                return Err(format!("{what}: not completed within {DATA_LIMIT:?}"));
            }
            ndis.adapter
                .poll_device(&mut ndis.model, Duration::from_millis(20))
                .map_err(|e| format!("{what}: miniport DPC: {e}"))?;
        }
        Ok(())
    }

    /// `NdisOffloadTcpSend` of `data` in NBLs of at most 64 KiB (ids from `first_id`);
    /// waits for every send completion. Returns (handler status, completion statuses in
    /// completion order with their ids and bytes transferred).
    pub fn send_data(
        &mut self,
        ctx: u64,
        data: &[u8],
        first_id: u64,
    ) -> Result<(NdisStatus, Vec<SendCompletion>), String> {
        let Link::Ndis { ndis, .. } = self else {
            return Err("data through the miniport needs the NDIS driver".into());
        };
        let nbls: Vec<_> = data
            .chunks(64 << 10)
            .enumerate()
            .map(|(i, c)| {
                chimney_miniport::ndis::nbl::NetBufferList::with_data(first_id + i as u64, c)
            })
            .collect();
        let want = nbls.len();
        let from = ndis.model.log.len();
        let st = ndis.send(ctx, nbls).map_err(|e| e.to_string())?;
        let count = |log: &[Callback]| {
            log.iter()
                .map(|c| match c {
                    Callback::SendComplete(v) => v.len(),
                    _ => 0,
                })
                .sum::<usize>()
        };
        Self::dpc_until(ndis, "send completions", from, |log| count(log) >= want)?;
        let done = ndis.model.log[from..]
            .iter()
            .flat_map(|c| match c {
                Callback::SendComplete(v) => v
                    .iter()
                    .map(|n| {
                        (
                            n.id,
                            n.status,
                            n.info.tcp_offload_bytes_transferred as usize,
                        )
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        Ok((st, done))
    }

    /// `NdisOffloadTcpSend` of `data` in NBLs of at most 64 KiB without waiting; returns the
    /// handler's status and the NBL ids.
    pub fn send_nowait(
        &mut self,
        ctx: u64,
        data: &[u8],
        first_id: u64,
    ) -> Result<(NdisStatus, Vec<u64>), String> {
        let Link::Ndis { ndis, .. } = self else {
            return Err("data through the miniport needs the NDIS driver".into());
        };
        let nbls: Vec<_> = data
            .chunks(64 << 10)
            .enumerate()
            .map(|(i, c)| {
                chimney_miniport::ndis::nbl::NetBufferList::with_data(first_id + i as u64, c)
            })
            .collect();
        let ids = nbls.iter().map(|n| n.id).collect();
        let st = ndis.send(ctx, nbls).map_err(|e| e.to_string())?;
        Ok((st, ids))
    }

    /// The send completions of NBLs `ids` in log order (id, status), and whether each came
    /// before the completion of the disconnect NBL `disconnect_id`.
    pub fn send_completions_vs_disconnect(
        &self,
        ids: &[u64],
        disconnect_id: u64,
    ) -> Vec<(u64, NdisStatus, bool)> {
        let Link::Ndis { ndis, .. } = self else {
            return Vec::new();
        };
        let mut before = true;
        let mut out = Vec::new();
        for c in &ndis.model.log {
            match c {
                Callback::DisconnectComplete(n) if n.id == disconnect_id => before = false,
                Callback::SendComplete(v) => {
                    for n in v.iter().filter(|n| ids.contains(&n.id)) {
                        out.push((n.id, n.status, before));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Completion statuses of the NBLs `ids` so far.
    pub fn send_statuses(&self, ids: &[u64]) -> Vec<(u64, NdisStatus)> {
        let Link::Ndis { ndis, .. } = self else {
            return Vec::new();
        };
        ndis.model
            .log
            .iter()
            .flat_map(|c| match c {
                Callback::SendComplete(v) => v.as_slice(),
                _ => &[],
            })
            .filter(|n| ids.contains(&n.id))
            .map(|n| (n.id, n.status))
            .collect()
    }

    /// Bytes of the NBLs `ids` that completed with SUCCESS so far (a prefix, C-140).
    pub fn sends_completed(&self, ids: &[u64]) -> usize {
        let Link::Ndis { ndis, .. } = self else {
            return 0;
        };
        ndis.model
            .log
            .iter()
            .flat_map(|c| match c {
                Callback::SendComplete(v) => v.as_slice(),
                _ => &[],
            })
            .filter(|n| ids.contains(&n.id) && n.status == NdisStatus::SUCCESS)
            .map(|n| n.info.tcp_offload_bytes_transferred as usize)
            .sum()
    }

    /// `NdisOffloadTcpDisconnect` (graceful or abortive); waits for its completion.
    pub fn disconnect(
        &mut self,
        ctx: u64,
        graceful: bool,
        id: u64,
    ) -> Result<(NdisStatus, NdisStatus), String> {
        let Link::Ndis { ndis, .. } = self else {
            return Err("data through the miniport needs the NDIS driver".into());
        };
        let from = ndis.model.log.len();
        let flags = if graceful {
            chimney_miniport::ndis::TCP_DISCONNECT_GRACEFUL_CLOSE
        } else {
            chimney_miniport::ndis::TCP_DISCONNECT_ABORTIVE_CLOSE
        };
        let nbl = chimney_miniport::ndis::nbl::NetBufferList::with_data(id, b"");
        let st = ndis
            .disconnect(ctx, nbl, flags)
            .map_err(|e| e.to_string())?;
        Self::dpc_until(ndis, "disconnect completion", from, |log| {
            log.iter()
                .any(|c| matches!(c, Callback::DisconnectComplete(_)))
        })?;
        let done = ndis.model.log[from..]
            .iter()
            .find_map(|c| match c {
                Callback::DisconnectComplete(n) => Some(n.status),
                _ => None,
            })
            .unwrap_or(NdisStatus::FAILURE);
        Ok((st, done))
    }
}

/// Receive buffers kept posted (64 KiB each); a step that does not get its data fails
/// after `DATA_LIMIT` (docs/scenarios.md: the posted-receive stall, fixed in the miniport).
const MAX_POSTED: usize = 8;

/// What a posted receive produced: the bytes (in completion order) and any NBL that
/// completed with a status other than SUCCESS (id, status).
pub struct Received {
    pub data: Vec<u8>,
    pub nbls: usize,
    pub failed: Vec<(u64, NdisStatus)>,
    /// C-165: an NBL whose data start did not move past the bytes placed (id, offset, bytes).
    pub offset_mismatch: Vec<(u64, usize, usize)>,
}

impl Link<'_> {
    /// `NdisOffloadTcpReceive`: post buffers of at most 64 KiB (ids from `first_id`, up to
    /// `MAX_POSTED` outstanding) until `bytes` bytes arrived; a buffer that completes partly filled
    /// (push) is replaced. The posted capacity never exceeds what is still missing, so no
    /// buffer stays posted after the step.
    ///
    /// `start` runs once the first buffers are posted (it tells the peer to write), so the
    /// data finds buffers waiting.
    pub fn receive_data(
        &mut self,
        ctx: u64,
        bytes: usize,
        first_id: u64,
        start: impl FnOnce() -> Result<(), String>,
    ) -> Result<Received, String> {
        let mut start = Some(start);
        use chimney_miniport::ndis::nbl::{NetBuffer, NetBufferList};
        let Link::Ndis { ndis, .. } = self else {
            return Err("data through the miniport needs the NDIS driver".into());
        };
        let mut out = Received {
            data: Vec::with_capacity(bytes),
            nbls: 0,
            failed: Vec::new(),
            offset_mismatch: Vec::new(),
        };
        let mut open: Vec<(u64, usize)> = Vec::new();
        let mut next = first_id;
        let mut from = ndis.model.log.len();
        let limit = Instant::now() + DATA_LIMIT;
        while out.data.len() < bytes {
            let posted: usize = open.iter().map(|(_, c)| c).sum();
            let mut missing = bytes - out.data.len() - posted;
            while missing > 0 && open.len() < MAX_POSTED {
                let cap = missing.min(64 << 10);
                let nbl = NetBufferList {
                    id: next,
                    net_buffers: vec![NetBuffer::with_capacity(cap)],
                    ..Default::default()
                };
                let st = ndis.receive(ctx, vec![nbl]).map_err(|e| e.to_string())?;
                if st != NdisStatus::PENDING {
                    return Err(format!(
                        "the receive handler returned {st} for NBL {next:#x}, expected PENDING"
                    ));
                }
                open.push((next, cap));
                next += 1;
                missing -= cap;
            }
            if let Some(f) = start.take() {
                f()?;
            }
            if Instant::now() > limit {
                return Err(format!(
                    "posted receive: {} of {bytes} bytes arrived within {DATA_LIMIT:?}",
                    out.data.len()
                ));
            }
            ndis.adapter
                .poll_device(&mut ndis.model, Duration::from_millis(20))
                .map_err(|e| format!("receive: miniport DPC: {e}"))?;
            let log_len = ndis.model.log.len();
            for c in &ndis.model.log[from..log_len] {
                let Callback::ReceiveComplete(v) = c else {
                    continue;
                };
                for n in v {
                    open.retain(|(id, _)| *id != n.id);
                    out.nbls += 1;
                    if n.status != NdisStatus::SUCCESS {
                        out.failed.push((n.id, n.status));
                        continue;
                    }
                    let k = n.info.tcp_offload_bytes_transferred as usize;
                    let Some(nb) = n.net_buffers.first() else {
                        continue;
                    };
                    if nb.data_offset != k {
                        out.offset_mismatch.push((n.id, nb.data_offset, k));
                    }
                    let mut left = k;
                    for m in &nb.mdls {
                        let take = left.min(m.data.len());
                        out.data.extend_from_slice(&m.data[..take]);
                        left -= take;
                    }
                }
            }
            from = log_len;
            if !out.failed.is_empty() {
                break;
            }
        }
        Ok(out)
    }
}

/// What a receive in indicated mode produced.
#[derive(Debug, Default)]
pub struct Indicated {
    /// The bytes the host got, in arrival order: what it took of each indication and what
    /// the postings after a partial refusal carried.
    pub data: Vec<u8>,
    pub indications: usize,
    /// Indications answered OFFLOAD_DATA_PARTIALLY_ACCEPTED.
    pub partial: usize,
    /// Buffers posted to take what a partial refusal left with the miniport.
    pub postings: usize,
    /// Indicated NBLs handed back with the receive-return handler.
    pub returned: usize,
    /// Posted NBLs that completed with a status other than SUCCESS (id, status).
    pub failed: Vec<(u64, NdisStatus)>,
    /// Rules broken on the way: (C-item number, what was seen).
    pub violations: Vec<(u16, String)>,
}

impl Link<'_> {
    /// Receive `bytes` on an offloaded connection by indication: the NDIS model answers the
    /// miniport's `NdisTcpOffloadReceiveHandler` with SUCCESS (`accept` None) or takes at
    /// most `accept` bytes of each indication (PARTIALLY_ACCEPTED). Every accepted NBL goes
    /// back through the receive-return handler after the DPC that indicated it (C-175).
    /// After a partial refusal the data left with the miniport must not be indicated again
    /// before the host posts (C-172); the host posts one buffer (ids from `first_id`) and
    /// that data must come in it, in order.
    pub fn receive_indicated(
        &mut self,
        ctx: u64,
        ndis_handle: u64,
        bytes: usize,
        accept: Option<u32>,
        first_id: u64,
        start: impl FnOnce() -> Result<(), String>,
    ) -> Result<Indicated, String> {
        use crate::ndis::IndicationPolicy;
        use chimney_miniport::ndis::nbl::{NetBuffer, NetBufferList};
        let Link::Ndis { ndis, .. } = self else {
            return Err("data through the miniport needs the NDIS driver".into());
        };
        ndis.model.indications = accept.map_or(IndicationPolicy::Accept, IndicationPolicy::Partial);
        let mut out = Indicated::default();
        let mut from = ndis.model.log.len();
        let r = (|| {
            start()?;
            let limit = Instant::now() + DATA_LIMIT;
            let mut refused_pending = false;
            // The miniport may still hold refused data: a posting that came back full
            // says so (it serves refused data before anything new, C-172).
            let mut more_left = false;
            let mut open: Vec<(u64, usize)> = Vec::new();
            let mut next = first_id;
            while out.data.len() < bytes {
                if Instant::now() > limit {
                    let (held, posted, kept) = ndis.adapter.receive_state(ctx);
                    return Err(format!(
                        "indicated receive: {} of {bytes} bytes arrived within {DATA_LIMIT:?} \
                         ({} indications, {} postings; miniport: refused bytes held {held:?}, \
                         postings at the device {posted}, indications not returned {kept})",
                        out.data.len(),
                        out.indications,
                        out.postings
                    ));
                }
                ndis.adapter
                    .poll_device(&mut ndis.model, Duration::from_millis(20))
                    .map_err(|e| format!("receive: miniport DPC: {e}"))?;
                let log_len = ndis.model.log.len();
                for c in &ndis.model.log[from..log_len] {
                    match c {
                        Callback::ReceiveIndication {
                            ndis_offload_handle,
                            nbl_id,
                            net_buffers,
                            status,
                            taken,
                            indicated,
                            answer,
                        } if *ndis_offload_handle == ndis_handle => {
                            out.indications += 1;
                            if *net_buffers != 1 {
                                out.violations.push((
                                    170,
                                    format!(
                                        "indication NBL {nbl_id:#x} has {net_buffers} NET_BUFFERs"
                                    ),
                                ));
                            }
                            if *status != NdisStatus::SUCCESS {
                                out.violations.push((
                                    170,
                                    format!("indication NBL {nbl_id:#x} with Status {status}, only SUCCESS"),
                                ));
                            }
                            if refused_pending {
                                out.violations.push((
                                    172,
                                    format!(
                                        "indication NBL {nbl_id:#x} ({indicated} bytes) after the host \
                                         refused data and before it posted a buffer"
                                    ),
                                ));
                            }
                            out.data.extend_from_slice(taken);
                            if *answer != NdisStatus::SUCCESS {
                                out.partial += 1;
                                refused_pending = true;
                                more_left = true;
                            }
                        }
                        Callback::ReceiveComplete(v) => {
                            for n in v {
                                let Some(cap) =
                                    open.iter().find(|(id, _)| *id == n.id).map(|(_, c)| *c)
                                else {
                                    continue;
                                };
                                open.retain(|(id, _)| *id != n.id);
                                refused_pending = false;
                                more_left = n.info.tcp_offload_bytes_transferred as usize == cap;
                                if n.status != NdisStatus::SUCCESS {
                                    out.failed.push((n.id, n.status));
                                    continue;
                                }
                                let mut left = n.info.tcp_offload_bytes_transferred as usize;
                                if let Some(nb) = n.net_buffers.first() {
                                    for m in &nb.mdls {
                                        let take = left.min(m.data.len());
                                        out.data.extend_from_slice(&m.data[..take]);
                                        left -= take;
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
                from = log_len;
                // The stack copied the data out: every accepted NBL goes back now.
                let (st, n) = ndis.return_indications().map_err(|e| e.to_string())?;
                out.returned += n;
                if st != NdisStatus::SUCCESS {
                    out.violations.push((
                        175,
                        format!("the receive-return handler returned {st} for {n} NBLs"),
                    ));
                }
                if !out.failed.is_empty() {
                    break;
                }
                // What the host refused waits in the miniport for a posting (C-172).
                let missing = bytes.saturating_sub(out.data.len());
                if more_left && open.is_empty() && missing > 0 {
                    let cap = missing.min(64 << 10);
                    let nbl = NetBufferList {
                        id: next,
                        net_buffers: vec![NetBuffer::with_capacity(cap)],
                        ..Default::default()
                    };
                    let st = ndis.receive(ctx, vec![nbl]).map_err(|e| e.to_string())?;
                    if st != NdisStatus::PENDING {
                        return Err(format!(
                            "the receive handler returned {st} for NBL {next:#x}, expected PENDING"
                        ));
                    }
                    open.push((next, cap));
                    next += 1;
                    out.postings += 1;
                }
            }
            Ok(())
        })();
        ndis.model.indications = IndicationPolicy::Refuse;
        let back = ndis.return_indications().map(|(_, n)| n).unwrap_or(0);
        out.returned += back;
        r.map(|()| out)
    }
}
