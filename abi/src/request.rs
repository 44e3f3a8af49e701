//! Requests on the control tx queue (driver → device). One request = one descriptor
//! chain of driver-written (device-readable) buffers, concatenated.
//!
//! Request header (16 bytes):
//! ```text
//! 0 u16 opcode      Opcode
//! 2 u16 flags       0
//! 4 u32 length      whole record incl. header
//! 8 u64 request_id  chosen by the driver, echoed in the completion
//! ```

use crate::caps::OffloadParameters;
use crate::data_io::{emit_trailer, parse_trailer, TcpData};
use crate::error::{DecodeError, Field};
use crate::state::ObjectState;
use crate::stats::{ReachabilityAnswer, StatsRequest};
use crate::tree::{InitiateBlock, RefBlock, TerminateBlock, Tree, UpdateBlock};
use crate::view::RequestHeaderView;
use crate::wire::{Rd, Wr};
use alloc::vec::Vec;

pub const REQUEST_HEADER_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    Negotiate = 1,
    SetParameters = 2,
    Initiate = 3,
    Query = 4,
    Update = 5,
    Invalidate = 6,
    Terminate = 7,
    /// Read (and optionally reset) one family's chimney statistics (§3.11, ring-abi §17).
    Statistics = 8,
    /// The host's answer to a NeighborReachabilityQuery (§4.2, C-226, ring-abi §18).
    ReachabilityAnswer = 9,
}

impl Opcode {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Opcode::Negotiate,
            2 => Opcode::SetParameters,
            3 => Opcode::Initiate,
            4 => Opcode::Query,
            5 => Opcode::Update,
            6 => Opcode::Invalidate,
            7 => Opcode::Terminate,
            8 => Opcode::Statistics,
            9 => Opcode::ReachabilityAnswer,
            _ => return None,
        })
    }
}

/// The decoded request header. `opcode` is raw so an unknown opcode can still be echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub opcode: u16,
    pub length: u32,
    pub request_id: u64,
}

impl RequestHeader {
    /// Decode only the header (the device does this first, to bound the record).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let v = RequestHeaderView::new_checked(bytes)?;
        if v.flags() != 0 {
            return Err(DecodeError::InvalidValue {
                field: Field::new("header.flags"),
                value: u64::from(v.flags()),
            });
        }
        if (v.length() as usize) < REQUEST_HEADER_LEN {
            return Err(DecodeError::InvalidValue {
                field: Field::new("header.length"),
                value: u64::from(v.length()),
            });
        }
        Ok(Self {
            opcode: v.opcode(),
            length: v.length(),
            request_id: v.request_id(),
        })
    }
}

/// NEGOTIATE body: the ABI versions the driver implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiate {
    pub min_version: u16,
    pub max_version: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    Negotiate(Negotiate),
    SetParameters(OffloadParameters),
    Initiate(Tree<InitiateBlock>),
    Query(Tree<RefBlock>),
    Update(Tree<UpdateBlock>),
    Invalidate(Tree<RefBlock>),
    Terminate(Tree<TerminateBlock>),
    Statistics(StatsRequest),
    ReachabilityAnswer(ReachabilityAnswer),
}

impl RequestBody {
    pub fn opcode(&self) -> Opcode {
        match self {
            RequestBody::Negotiate(_) => Opcode::Negotiate,
            RequestBody::SetParameters(_) => Opcode::SetParameters,
            RequestBody::Initiate(_) => Opcode::Initiate,
            RequestBody::Query(_) => Opcode::Query,
            RequestBody::Update(_) => Opcode::Update,
            RequestBody::Invalidate(_) => Opcode::Invalidate,
            RequestBody::Terminate(_) => Opcode::Terminate,
            RequestBody::Statistics(_) => Opcode::Statistics,
            RequestBody::ReachabilityAnswer(_) => Opcode::ReachabilityAnswer,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: u64,
    pub body: RequestBody,
}

/// A request that failed to decode; `header` is set when the header itself was readable
/// so the ERROR completion can echo opcode and request id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct RequestError {
    pub header: Option<RequestHeader>,
    pub error: DecodeError,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.u16(self.body.opcode() as u16);
        w.u16(0);
        w.u32(0); // patched below
        w.u64(self.request_id);
        match &self.body {
            RequestBody::Negotiate(n) => {
                w.u16(n.min_version);
                w.u16(n.max_version);
                w.u32(0);
            }
            RequestBody::SetParameters(p) => p.emit(&mut w),
            RequestBody::Initiate(t) => t.emit(&mut w),
            RequestBody::Query(t) => t.emit(&mut w),
            RequestBody::Update(t) => t.emit(&mut w),
            RequestBody::Invalidate(t) => t.emit(&mut w),
            RequestBody::Terminate(t) => t.emit(&mut w),
            RequestBody::Statistics(q) => q.emit(&mut w),
            RequestBody::ReachabilityAnswer(a) => a.emit(&mut w),
        }
        let len = w.len() as u32;
        w[4..8].copy_from_slice(&len.to_le_bytes());
        w
    }

    /// Encode an INITIATE whose TCP blocks carry send and buffered receive data in the
    /// data trailer after the tree ([`crate::data_io::emit_trailer`], C-054..C-059). Other
    /// requests, and an empty `data`, encode as [`Request::encode`].
    pub fn encode_with_data(&self, data: &[TcpData]) -> Vec<u8> {
        let mut w = self.encode();
        if matches!(self.body, RequestBody::Initiate(_)) && !data.is_empty() {
            emit_trailer(&mut w, data);
            let len = w.len() as u32;
            w[4..8].copy_from_slice(&len.to_le_bytes());
        }
        w
    }

    /// As [`Request::decode`], but an INITIATE may end with a data trailer naming its new
    /// TCP blocks; the trailer's entries are returned beside the request.
    pub fn decode_with_data(bytes: &[u8]) -> Result<(Self, Vec<TcpData>), RequestError> {
        Self::decode_inner(bytes, true)
    }

    /// Decode and validate a whole request record (exactly `header.length` bytes; the
    /// buffer may not be shorter, and bytes after the record are refused).
    pub fn decode(bytes: &[u8]) -> Result<Self, RequestError> {
        Self::decode_inner(bytes, false).map(|(r, _)| r)
    }

    fn decode_inner(bytes: &[u8], with_data: bool) -> Result<(Self, Vec<TcpData>), RequestError> {
        let header = RequestHeader::decode(bytes).map_err(|error| RequestError {
            header: None,
            error,
        })?;
        let fail = |error| RequestError {
            header: Some(header),
            error,
        };
        if header.length as usize != bytes.len() {
            return Err(fail(DecodeError::LengthMismatch {
                field: Field::new("header.length"),
                declared: u64::from(header.length),
                actual: bytes.len() as u64,
            }));
        }
        let opcode = Opcode::from_u16(header.opcode).ok_or_else(|| {
            fail(DecodeError::UnknownOpcode {
                field: Field::new("header.opcode"),
                opcode: header.opcode,
            })
        })?;
        let mut r = Rd::new(&bytes[REQUEST_HEADER_LEN..]);
        let body = (|| -> Result<(RequestBody, Vec<TcpData>), DecodeError> {
            let body = match opcode {
                Opcode::Negotiate => {
                    let min_version = r.u16("negotiate.min_version")?;
                    let max_version = r.u16("negotiate.max_version")?;
                    r.zero(4, "negotiate.reserved")?;
                    if min_version > max_version {
                        return Err(r.invalid("negotiate.min_version", u64::from(min_version)));
                    }
                    RequestBody::Negotiate(Negotiate {
                        min_version,
                        max_version,
                    })
                }
                Opcode::SetParameters => {
                    RequestBody::SetParameters(OffloadParameters::parse(&mut r)?)
                }
                Opcode::Initiate => RequestBody::Initiate(Tree::parse(&mut r)?),
                Opcode::Query => RequestBody::Query(Tree::parse(&mut r)?),
                Opcode::Update => RequestBody::Update(Tree::parse(&mut r)?),
                Opcode::Invalidate => RequestBody::Invalidate(Tree::parse(&mut r)?),
                Opcode::Terminate => RequestBody::Terminate(Tree::parse(&mut r)?),
                Opcode::Statistics => RequestBody::Statistics(StatsRequest::parse(&mut r)?),
                Opcode::ReachabilityAnswer => {
                    RequestBody::ReachabilityAnswer(ReachabilityAnswer::parse(&mut r)?)
                }
            };
            if let (true, RequestBody::Initiate(t)) = (with_data && r.remaining() > 0, &body) {
                let rest = r.take(r.remaining(), "trailer")?;
                let is_tcp_new = |b: u32| {
                    matches!(
                        t.blocks.get(b as usize).map(|b| &b.body),
                        Some(InitiateBlock::New(ObjectState::Tcp(_)))
                    )
                };
                let data = parse_trailer(rest, is_tcp_new)?;
                return Ok((body, data));
            }
            r.finish("header.length")?;
            Ok((body, Vec::new()))
        })()
        .map_err(fail)?;
        Ok((
            Request {
                request_id: header.request_id,
                body: body.0,
            },
            body.1,
        ))
    }
}
