//! Records on the control rx queue (device → driver): completions, ERROR completions and
//! event indications, all behind one 32-byte record header. A record may span several rx
//! buffers (see [`crate::framing`]); these types work on the reassembled record.
//!
//! Record header (32 bytes):
//! ```text
//! 0  u16 kind        1 completion, 2 error, 3 event
//! 2  u16 opcode      completion/error: the request's opcode (error: 0 if unreadable);
//!                    event: EventClass
//! 4  u32 length      whole record incl. header
//! 8  u64 request_id  completion/error: echo (error: 0 if unreadable); event: sequence
//! 16 u16 tx_head     completion/error: head index of the request's tx descriptor chain;
//!                    event: 0xFFFF
//! 18 u16 flags       error: bit 0 REQUEST_HEADER_VALID; otherwise 0
//! 20 u32 status      NDIS_STATUS of the whole operation
//! 24 u32 count       tree completions: number of block results; otherwise 0
//! 28 u32 reserved    0
//! ```

use crate::caps::TcpConnectionOffload;
use crate::error::{DecodeError, Field};
use crate::event::Event;
use crate::handle::DeviceHandle;
use crate::request::Opcode;
use crate::state::{DelegatedState, OffloadStateType, QueriedState};
use crate::stats::StatsResult;
use crate::status::{NdisStatus, Reason};
use crate::tree::{FLAG_STATE_FOLLOWS, MAX_TREE_BLOCKS};
use crate::view::RecordHeaderView;
use crate::wire::{Rd, Wr};
use alloc::string::String;
use alloc::vec::Vec;
use core::convert::Infallible;

pub const RECORD_HEADER_LEN: usize = 32;
pub const KIND_COMPLETION: u16 = 1;
pub const KIND_ERROR: u16 = 2;
pub const KIND_EVENT: u16 = 3;
pub const FLAG_REQUEST_HEADER_VALID: u16 = 0x1;
pub const TX_HEAD_NONE: u16 = 0xFFFF;
pub const BLOCK_RESULT_LEN: usize = 16;
pub const MAX_FIELD_NAME_LEN: usize = 64;
pub const NEGOTIATE_RESULT_LEN: usize = 56;

/// The common record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u16,
    pub opcode: u16,
    pub length: u32,
    pub request_id: u64,
    pub tx_head: u16,
    pub flags: u16,
    pub status: NdisStatus,
    pub count: u32,
}

impl RecordHeader {
    pub fn emit(&self, w: &mut Vec<u8>) {
        w.u16(self.kind);
        w.u16(self.opcode);
        w.u32(self.length);
        w.u64(self.request_id);
        w.u16(self.tx_head);
        w.u16(self.flags);
        w.u32(self.status.0);
        w.u32(self.count);
        w.u32(0);
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let v = RecordHeaderView::new_checked(bytes)?;
        if v.reserved() != 0 {
            return Err(DecodeError::InvalidValue {
                field: Field::new("record.reserved"),
                value: u64::from(v.reserved()),
            });
        }
        let h = Self {
            kind: v.kind(),
            opcode: v.opcode(),
            length: v.length(),
            request_id: v.request_id(),
            tx_head: v.tx_head(),
            flags: v.flags(),
            status: NdisStatus(v.status()),
            count: v.count(),
        };
        if h.length as usize != bytes.len() {
            return Err(DecodeError::LengthMismatch {
                field: Field::new("record.length"),
                declared: u64::from(h.length),
                actual: bytes.len() as u64,
            });
        }
        Ok(h)
    }
}

/// NEGOTIATE completion body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateResult {
    /// Chosen ABI version; 0 when there is none in common (status NOT_SUPPORTED).
    pub version: u16,
    pub device_min_version: u16,
    pub device_max_version: u16,
    /// Largest request record the device accepts.
    pub max_request_length: u32,
    /// Smallest rx buffer the device uses (smaller ones are returned with length 0).
    pub min_rx_buffer: u32,
    pub max_tree_blocks: u32,
    /// `NDIS_TCP_CONNECTION_OFFLOAD` (digest §5.3).
    pub capabilities: TcpConnectionOffload,
    /// Per-guest object limits (OFFLOAD_*_ENTRIES beyond them).
    pub max_neighbors: u32,
    pub max_paths: u32,
    pub max_tcp: u32,
}

/// Result of one block of a tree operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockResult<S> {
    /// Echo of the block's Type.
    pub state_type: OffloadStateType,
    pub status: NdisStatus,
    /// Initiate: the new object's handle for a new offload that succeeded (C-040),
    /// otherwise `None`. Other operations: `None`.
    pub handle: Option<DeviceHandle>,
    /// Query: the structures named by Type (C-076); terminate: the delegated structure if
    /// the block asked for it (C-111).
    pub state: Option<S>,
}

/// ERROR completion body: why the request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// The request header was readable (opcode and request id in the record are echoes).
    pub header_valid: bool,
    pub reason: Reason,
    /// Block index the problem is in, if any.
    pub block: Option<u32>,
    /// Offending field, e.g. `block[3].dependent` without the block prefix: `dependent`.
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionBody {
    Negotiate(NegotiateResult),
    SetParameters,
    Initiate(Vec<BlockResult<Infallible>>),
    Query(Vec<BlockResult<QueriedState>>),
    Update(Vec<BlockResult<Infallible>>),
    Invalidate(Vec<BlockResult<Infallible>>),
    Terminate(Vec<BlockResult<DelegatedState>>),
    /// STATISTICS: the family's counters when read (ring-abi §17).
    Statistics(StatsResult),
    /// REACHABILITY_ANSWER: no body; the status says whether the neighbor was known.
    ReachabilityAnswer,
    Error(ErrorInfo),
}

/// A completion (or ERROR completion) of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Echo of the request id (0 for an ERROR completion whose header was unreadable).
    pub request_id: u64,
    /// Raw echo of the request opcode (0 if unreadable).
    pub opcode: u16,
    /// Head index of the request's descriptor chain on control tx: lets the driver match
    /// even when the header was unreadable.
    pub tx_head: u16,
    /// Overall status: initiate = the root block's status; negotiate/parameters = result;
    /// query/update/invalidate/terminate = SUCCESS or FAILURE (C-077, C-092, C-103, C-112);
    /// error = FAILURE / INVALID_STATE / NOT_SUPPORTED.
    pub status: NdisStatus,
    pub body: CompletionBody,
}

impl Completion {
    /// Build an ERROR completion for a decode error.
    pub fn error(
        request_id: u64,
        opcode: u16,
        header_valid: bool,
        tx_head: u16,
        status: NdisStatus,
        reason: Reason,
        field: Field,
    ) -> Self {
        Completion {
            request_id,
            opcode,
            tx_head,
            status,
            body: CompletionBody::Error(ErrorInfo {
                header_valid,
                reason,
                block: field.block,
                field: String::from(field.name),
            }),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        let (kind, count, flags) = match &self.body {
            CompletionBody::Error(e) => (
                KIND_ERROR,
                0,
                if e.header_valid {
                    FLAG_REQUEST_HEADER_VALID
                } else {
                    0
                },
            ),
            CompletionBody::Initiate(v)
            | CompletionBody::Update(v)
            | CompletionBody::Invalidate(v) => (KIND_COMPLETION, v.len() as u32, 0),
            CompletionBody::Query(v) => (KIND_COMPLETION, v.len() as u32, 0),
            CompletionBody::Terminate(v) => (KIND_COMPLETION, v.len() as u32, 0),
            _ => (KIND_COMPLETION, 0, 0),
        };
        RecordHeader {
            kind,
            opcode: self.opcode,
            length: 0,
            request_id: self.request_id,
            tx_head: self.tx_head,
            flags,
            status: self.status,
            count,
        }
        .emit(&mut w);
        match &self.body {
            CompletionBody::Negotiate(n) => {
                w.u16(n.version);
                w.u16(n.device_min_version);
                w.u16(n.device_max_version);
                w.u16(0);
                w.u32(n.max_request_length);
                w.u32(n.min_rx_buffer);
                w.u32(n.max_tree_blocks);
                w.u32(0);
                n.capabilities.emit(&mut w);
                w.u32(n.max_neighbors);
                w.u32(n.max_paths);
                w.u32(n.max_tcp);
            }
            CompletionBody::SetParameters | CompletionBody::ReachabilityAnswer => {}
            CompletionBody::Statistics(st) => st.emit(&mut w),
            CompletionBody::Initiate(v)
            | CompletionBody::Update(v)
            | CompletionBody::Invalidate(v) => emit_results(&mut w, v, |_: &Infallible, _| {}),
            CompletionBody::Query(v) => emit_results(&mut w, v, |s, w| s.emit(w)),
            CompletionBody::Terminate(v) => emit_results(&mut w, v, |s, w| s.emit(w)),
            CompletionBody::Error(e) => {
                let name = e.field.as_bytes();
                let name = &name[..name.len().min(MAX_FIELD_NAME_LEN)];
                w.u16(e.reason as u16);
                w.u16(name.len() as u16);
                w.u32(e.block.unwrap_or(u32::MAX));
                w.extend_from_slice(name);
                while w.len() % 8 != 0 {
                    w.push(0);
                }
            }
        }
        let len = w.len() as u32;
        w[4..8].copy_from_slice(&len.to_le_bytes());
        w
    }

    /// Decode a completion or ERROR completion record (reassembled).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match RxRecord::decode(bytes)? {
            RxRecord::Completion(c) => Ok(c),
            RxRecord::Event(_) => Err(DecodeError::InvalidValue {
                field: Field::new("record.kind"),
                value: u64::from(KIND_EVENT),
            }),
        }
    }
}

fn emit_results<S>(w: &mut Vec<u8>, v: &[BlockResult<S>], emit: impl Fn(&S, &mut Vec<u8>)) {
    for b in v {
        w.u8(b.state_type as u8);
        w.u8(if b.state.is_some() {
            FLAG_STATE_FOLLOWS
        } else {
            0
        });
        w.u16(0);
        w.u32(b.status.0);
        w.u64(b.handle.map_or(0, |h| h.0));
    }
    for b in v {
        if let Some(s) = &b.state {
            emit(s, w);
        }
    }
}

type Heads = Vec<(OffloadStateType, bool, NdisStatus, u64)>;

fn parse_heads(r: &mut Rd<'_>, count: u32) -> Result<Heads, DecodeError> {
    if count > MAX_TREE_BLOCKS {
        return Err(DecodeError::TooManyBlocks {
            field: Field::new("record.count"),
            count: u64::from(count),
            max: u64::from(MAX_TREE_BLOCKS),
        });
    }
    let need = (count as usize).saturating_mul(BLOCK_RESULT_LEN);
    if r.remaining() < need {
        return Err(DecodeError::Truncated {
            field: Field::new("results"),
            need: r.pos().saturating_add(need),
            have: r.pos() + r.remaining(),
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        r.set_block(Some(i));
        let t = r.u8("result.state_type")?;
        let ty = OffloadStateType::from_u8(t)
            .ok_or_else(|| r.invalid("result.state_type", u64::from(t)))?;
        let flags = r.u8("result.flags")?;
        if flags & !FLAG_STATE_FOLLOWS != 0 {
            return Err(r.invalid("result.flags", u64::from(flags)));
        }
        r.zero(2, "result.reserved")?;
        let status = NdisStatus(r.u32("result.status")?);
        let handle = r.u64("result.handle")?;
        out.push((ty, flags != 0, status, handle));
    }
    r.set_block(None);
    Ok(out)
}

fn parse_results<S>(
    r: &mut Rd<'_>,
    count: u32,
    mut state: impl FnMut(&mut Rd<'_>, OffloadStateType) -> Result<Option<S>, DecodeError>,
) -> Result<Vec<BlockResult<S>>, DecodeError> {
    let heads = parse_heads(r, count)?;
    let mut out = Vec::with_capacity(heads.len());
    for (i, (ty, has_state, status, handle)) in heads.into_iter().enumerate() {
        r.set_block(Some(i as u32));
        let s = if has_state { state(r, ty)? } else { None };
        if has_state && s.is_none() {
            return Err(r.invalid("result.flags", 1));
        }
        out.push(BlockResult {
            state_type: ty,
            status,
            handle: (handle != 0).then_some(DeviceHandle(handle)),
            state: s,
        });
    }
    r.set_block(None);
    Ok(out)
}

/// Any record on control rx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxRecord {
    Completion(Completion),
    Event(Event),
}

impl RxRecord {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RxRecord::Completion(c) => c.encode(),
            RxRecord::Event(e) => e.encode(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let h = RecordHeader::decode(bytes)?;
        let mut r = Rd::new(&bytes[RECORD_HEADER_LEN..]);
        if h.kind == KIND_EVENT {
            return Event::parse(&h, &mut r).map(RxRecord::Event);
        }
        let body = match h.kind {
            KIND_ERROR => {
                if h.flags & !FLAG_REQUEST_HEADER_VALID != 0 {
                    return Err(r.invalid("record.flags", u64::from(h.flags)));
                }
                let reason_raw = r.u16("error.reason")?;
                let reason = Reason::from_u16(reason_raw)
                    .ok_or_else(|| r.invalid("error.reason", u64::from(reason_raw)))?;
                let len = usize::from(r.u16("error.field_length")?);
                if len > MAX_FIELD_NAME_LEN {
                    return Err(r.invalid("error.field_length", len as u64));
                }
                let block = r.u32("error.block")?;
                let name = r.take(len, "error.field")?;
                if !name.iter().all(|c| c.is_ascii_graphic()) {
                    return Err(r.invalid("error.field", 0));
                }
                let pad = (8 - (RECORD_HEADER_LEN + 8 + len) % 8) % 8;
                r.zero(pad, "error.padding")?;
                let field = name.iter().map(|c| *c as char).collect();
                CompletionBody::Error(ErrorInfo {
                    header_valid: h.flags & FLAG_REQUEST_HEADER_VALID != 0,
                    reason,
                    block: (block != u32::MAX).then_some(block),
                    field,
                })
            }
            KIND_COMPLETION => {
                if h.flags != 0 {
                    return Err(r.invalid("record.flags", u64::from(h.flags)));
                }
                let op = Opcode::from_u16(h.opcode)
                    .ok_or_else(|| r.invalid("record.opcode", u64::from(h.opcode)))?;
                let none = |_: &mut Rd<'_>, _| Ok(None::<Infallible>);
                match op {
                    Opcode::Negotiate => {
                        let version = r.u16("negotiate.version")?;
                        let device_min_version = r.u16("negotiate.device_min_version")?;
                        let device_max_version = r.u16("negotiate.device_max_version")?;
                        r.zero(2, "negotiate.reserved0")?;
                        let max_request_length = r.u32("negotiate.max_request_length")?;
                        let min_rx_buffer = r.u32("negotiate.min_rx_buffer")?;
                        let max_tree_blocks = r.u32("negotiate.max_tree_blocks")?;
                        r.zero(4, "negotiate.reserved1")?;
                        CompletionBody::Negotiate(NegotiateResult {
                            version,
                            device_min_version,
                            device_max_version,
                            max_request_length,
                            min_rx_buffer,
                            max_tree_blocks,
                            capabilities: TcpConnectionOffload::parse(&mut r)?,
                            max_neighbors: r.u32("negotiate.max_neighbors")?,
                            max_paths: r.u32("negotiate.max_paths")?,
                            max_tcp: r.u32("negotiate.max_tcp")?,
                        })
                    }
                    Opcode::SetParameters => CompletionBody::SetParameters,
                    Opcode::Statistics => CompletionBody::Statistics(StatsResult::parse(&mut r)?),
                    Opcode::ReachabilityAnswer => CompletionBody::ReachabilityAnswer,
                    Opcode::Initiate => {
                        CompletionBody::Initiate(parse_results(&mut r, h.count, none)?)
                    }
                    Opcode::Update => CompletionBody::Update(parse_results(&mut r, h.count, none)?),
                    Opcode::Invalidate => {
                        CompletionBody::Invalidate(parse_results(&mut r, h.count, none)?)
                    }
                    Opcode::Query => {
                        CompletionBody::Query(parse_results(&mut r, h.count, |r, ty| {
                            QueriedState::parse(r, ty).map(Some)
                        })?)
                    }
                    Opcode::Terminate => {
                        CompletionBody::Terminate(parse_results(&mut r, h.count, |r, ty| {
                            DelegatedState::parse(r, ty.layer()).map(Some)
                        })?)
                    }
                }
            }
            other => return Err(r.invalid("record.kind", u64::from(other))),
        };
        if !matches!(
            body,
            CompletionBody::Initiate(_)
                | CompletionBody::Query(_)
                | CompletionBody::Update(_)
                | CompletionBody::Invalidate(_)
                | CompletionBody::Terminate(_)
        ) && h.count != 0
        {
            return Err(r.invalid("record.count", u64::from(h.count)));
        }
        r.finish("record.length")?;
        Ok(RxRecord::Completion(Completion {
            request_id: h.request_id,
            opcode: h.opcode,
            tx_head: h.tx_head,
            status: h.status,
            body,
        }))
    }
}
