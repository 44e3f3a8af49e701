//! Data I/O, the second chimney interface (digest §3.6–§3.12; DESIGN.md rule 1): the records
//! on the data queue pairs (pair `p ≥ 2`: rx `2p`, tx `2p + 1`). A connection's records all go
//! to the pair [`data_pair_for`] picks from its handle, so per-connection order is ring order.
//!
//! Data tx (driver → device), one record per descriptor chain (device-readable buffers):
//! ```text
//! 0  u16 opcode      DataOpcode
//! 2  u16 flags       DISCONNECT: bit 0 ABORTIVE; all others 0
//! 4  u32 length      whole record incl. header
//! 8  u64 handle      device handle of the TCP object
//! 16 u64 request_id  driver's id, echoed in the completion; RECEIVE_RETURN: indication id
//! 24 u32 value       SEND/FORWARD: data length (= length − 32); POST_RECEIVE: buffer size;
//!                    RECEIVE_RETURN, DISCONNECT: 0
//! 28 u32 reserved    0
//! 32 ..  data        SEND/FORWARD only
//! ```
//! Data rx (device → driver): records split over posted rx buffers with the control ring's
//! framing ([`crate::framing`]):
//! ```text
//! 0  u16 kind        DataRxKind
//! 2  u16 flags       RECEIVE_*: bit 0 PUSH (data ended with PSH or the push timer fired)
//! 4  u32 length      whole record incl. header
//! 8  u64 handle
//! 16 u64 request_id  completions: echo; RECEIVE_INDICATE: indication id (for RECEIVE_RETURN)
//! 24 u32 status      NDIS_STATUS
//! 28 u32 bytes       SEND_COMPLETE: bytes acknowledged (C-item: completed only when
//!                    acknowledged); RECEIVE_*: data length following; ERROR: Reason code
//! 32 ..  data        RECEIVE_COMPLETE / RECEIVE_INDICATE only
//! ```

use crate::error::{DecodeError, Field};
use crate::handle::DeviceHandle;
use crate::status::NdisStatus;
use crate::wire::{Rd, Wr};
use alloc::vec::Vec;

pub const DATA_HEADER_LEN: usize = 32;
/// Largest data a single SEND/FORWARD record may carry.
pub const MAX_SEND_DATA: usize = 1 << 20;
/// Largest buffer a POST_RECEIVE may describe.
pub const MAX_RECEIVE_BUFFER: u32 = 1 << 20;
pub const FLAG_ABORTIVE: u16 = 0x1;
pub const FLAG_PUSH: u16 = 0x1;

/// Which data pair (index among the `data_pairs` pairs, 0-based; queue pair
/// `FIRST_DATA_PAIR + index`) serves a connection: a hash of its handle, so connections
/// spread over the pairs and one connection stays on one pair.
pub fn data_pair_for(handle: DeviceHandle, data_pairs: u16) -> u16 {
    if data_pairs == 0 {
        return 0;
    }
    let mut x = handle.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    (x % u64::from(data_pairs)) as u16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DataOpcode {
    /// TcpOffloadSendHandler (§3.6).
    Send = 1,
    /// TcpOffloadReceiveHandler: a posted receive buffer (§3.7).
    PostReceive = 2,
    /// TcpOffloadReceiveReturnHandler (§3.9): an indication handed back.
    ReceiveReturn = 3,
    /// TcpOffloadDisconnectHandler (§3.10), graceful or abortive.
    Disconnect = 4,
    /// TcpOffloadForwardHandler (§3.11): segments received during terminate, given back.
    Forward = 5,
}

impl DataOpcode {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => DataOpcode::Send,
            2 => DataOpcode::PostReceive,
            3 => DataOpcode::ReceiveReturn,
            4 => DataOpcode::Disconnect,
            5 => DataOpcode::Forward,
            _ => return None,
        })
    }
}

/// A data tx record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataRequest {
    Send {
        handle: DeviceHandle,
        request_id: u64,
        data: Vec<u8>,
    },
    PostReceive {
        handle: DeviceHandle,
        request_id: u64,
        capacity: u32,
    },
    ReceiveReturn {
        handle: DeviceHandle,
        indication_id: u64,
    },
    Disconnect {
        handle: DeviceHandle,
        request_id: u64,
        abortive: bool,
    },
    Forward {
        handle: DeviceHandle,
        request_id: u64,
        data: Vec<u8>,
    },
}

impl DataRequest {
    pub fn handle(&self) -> DeviceHandle {
        match self {
            DataRequest::Send { handle, .. }
            | DataRequest::PostReceive { handle, .. }
            | DataRequest::ReceiveReturn { handle, .. }
            | DataRequest::Disconnect { handle, .. }
            | DataRequest::Forward { handle, .. } => *handle,
        }
    }

    pub fn opcode(&self) -> DataOpcode {
        match self {
            DataRequest::Send { .. } => DataOpcode::Send,
            DataRequest::PostReceive { .. } => DataOpcode::PostReceive,
            DataRequest::ReceiveReturn { .. } => DataOpcode::ReceiveReturn,
            DataRequest::Disconnect { .. } => DataOpcode::Disconnect,
            DataRequest::Forward { .. } => DataOpcode::Forward,
        }
    }

    /// The request id a completion echoes (the indication id for RECEIVE_RETURN).
    pub fn request_id(&self) -> u64 {
        match self {
            DataRequest::Send { request_id, .. }
            | DataRequest::PostReceive { request_id, .. }
            | DataRequest::Disconnect { request_id, .. }
            | DataRequest::Forward { request_id, .. } => *request_id,
            DataRequest::ReceiveReturn { indication_id, .. } => *indication_id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (flags, value, data): (u16, u32, &[u8]) = match self {
            DataRequest::Send { data, .. } | DataRequest::Forward { data, .. } => {
                (0, data.len() as u32, data)
            }
            DataRequest::PostReceive { capacity, .. } => (0, *capacity, &[]),
            DataRequest::ReceiveReturn { .. } => (0, 0, &[]),
            DataRequest::Disconnect { abortive, .. } => (u16::from(*abortive), 0, &[]),
        };
        let mut w = Vec::with_capacity(DATA_HEADER_LEN + data.len());
        w.u16(self.opcode() as u16);
        w.u16(flags);
        w.u32((DATA_HEADER_LEN + data.len()) as u32);
        w.u64(self.handle().0);
        w.u64(self.request_id());
        w.u32(value);
        w.u32(0);
        w.extend_from_slice(data);
        w
    }

    /// Decode one whole record (exactly `length` bytes; extra bytes after it are refused).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Rd::new(bytes);
        let op = r.u16("data.opcode")?;
        let opcode = DataOpcode::from_u16(op).ok_or(DecodeError::UnknownOpcode {
            field: Field::new("data.opcode"),
            opcode: op,
        })?;
        let flags = r.u16("data.flags")?;
        let length = r.u32("data.length")?;
        if length as usize != bytes.len() {
            return Err(DecodeError::LengthMismatch {
                field: Field::new("data.length"),
                declared: u64::from(length),
                actual: bytes.len() as u64,
            });
        }
        let raw_handle = r.u64("data.handle")?;
        if raw_handle == 0 {
            return Err(r.invalid("data.handle", 0));
        }
        let handle = DeviceHandle(raw_handle);
        let request_id = r.u64("data.request_id")?;
        let value = r.u32("data.value")?;
        r.zero(4, "data.reserved")?;
        let allowed_flags = if opcode == DataOpcode::Disconnect {
            FLAG_ABORTIVE
        } else {
            0
        };
        if flags & !allowed_flags != 0 {
            return Err(r.invalid("data.flags", u64::from(flags)));
        }
        let req = match opcode {
            DataOpcode::Send | DataOpcode::Forward => {
                if value as usize > MAX_SEND_DATA {
                    return Err(r.invalid("data.value", u64::from(value)));
                }
                let data = r.take(value as usize, "data.data")?.to_vec();
                if opcode == DataOpcode::Send {
                    DataRequest::Send {
                        handle,
                        request_id,
                        data,
                    }
                } else {
                    DataRequest::Forward {
                        handle,
                        request_id,
                        data,
                    }
                }
            }
            DataOpcode::PostReceive => {
                if value == 0 || value > MAX_RECEIVE_BUFFER {
                    return Err(r.invalid("data.value", u64::from(value)));
                }
                DataRequest::PostReceive {
                    handle,
                    request_id,
                    capacity: value,
                }
            }
            DataOpcode::ReceiveReturn | DataOpcode::Disconnect => {
                if value != 0 {
                    return Err(r.invalid("data.value", u64::from(value)));
                }
                if opcode == DataOpcode::ReceiveReturn {
                    DataRequest::ReceiveReturn {
                        handle,
                        indication_id: request_id,
                    }
                } else {
                    DataRequest::Disconnect {
                        handle,
                        request_id,
                        abortive: flags & FLAG_ABORTIVE != 0,
                    }
                }
            }
        };
        r.finish("data.length")?;
        Ok(req)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DataRxKind {
    SendComplete = 1,
    ReceiveComplete = 2,
    ReceiveIndicate = 3,
    DisconnectComplete = 4,
    ForwardComplete = 5,
    /// A data tx record the device refused (undecodable, unknown handle); `bytes` = Reason.
    Error = 6,
}

impl DataRxKind {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => DataRxKind::SendComplete,
            2 => DataRxKind::ReceiveComplete,
            3 => DataRxKind::ReceiveIndicate,
            4 => DataRxKind::DisconnectComplete,
            5 => DataRxKind::ForwardComplete,
            6 => DataRxKind::Error,
            _ => return None,
        })
    }
}

/// A data rx record (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRecord {
    pub kind: DataRxKind,
    pub flags: u16,
    /// `None` only in ERROR records for requests whose handle was unreadable.
    pub handle: Option<DeviceHandle>,
    pub request_id: u64,
    pub status: NdisStatus,
    /// SEND_COMPLETE: bytes; ERROR: reason code; RECEIVE_*: `data.len()`.
    pub bytes: u32,
    pub data: Vec<u8>,
}

impl DataRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(DATA_HEADER_LEN + self.data.len());
        self.encode_into(&mut w);
        w
    }

    /// Append the record to `w` (the device reuses one buffer).
    pub fn encode_into(&self, w: &mut Vec<u8>) {
        w.u16(self.kind as u16);
        w.u16(self.flags);
        w.u32((DATA_HEADER_LEN + self.data.len()) as u32);
        w.u64(self.handle.map_or(0, |h| h.0));
        w.u64(self.request_id);
        w.u32(self.status.0);
        let bytes = if self.carries_data() {
            self.data.len() as u32
        } else {
            self.bytes
        };
        w.u32(bytes);
        w.extend_from_slice(&self.data);
    }

    fn carries_data(&self) -> bool {
        matches!(
            self.kind,
            DataRxKind::ReceiveComplete | DataRxKind::ReceiveIndicate
        )
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Rd::new(bytes);
        let k = r.u16("data_rx.kind")?;
        let kind =
            DataRxKind::from_u16(k).ok_or_else(|| r.invalid("data_rx.kind", u64::from(k)))?;
        let flags = r.u16("data_rx.flags")?;
        let length = r.u32("data_rx.length")?;
        if length as usize != bytes.len() {
            return Err(DecodeError::LengthMismatch {
                field: Field::new("data_rx.length"),
                declared: u64::from(length),
                actual: bytes.len() as u64,
            });
        }
        let h = r.u64("data_rx.handle")?;
        let request_id = r.u64("data_rx.request_id")?;
        let status = NdisStatus(r.u32("data_rx.status")?);
        let n = r.u32("data_rx.bytes")?;
        let mut rec = DataRecord {
            kind,
            flags,
            handle: (h != 0).then_some(DeviceHandle(h)),
            request_id,
            status,
            bytes: n,
            data: Vec::new(),
        };
        if rec.carries_data() {
            rec.data = r.take(n as usize, "data_rx.data")?.to_vec();
        } else if flags != 0 {
            return Err(r.invalid("data_rx.flags", u64::from(flags)));
        }
        r.finish("data_rx.length")?;
        Ok(rec)
    }
}

// ------------------------------------------------------------ data travelling with the
// state: initiate trailer (host → device) and the UPLOAD_DATA event (device → host).

/// Magic of the initiate data trailer ("DATA", little-endian).
pub const DATA_TRAILER_MAGIC: u32 = 0x4154_4144;

/// Send data (from SndUna: unacknowledged, then unsent, C-057..C-059) and buffered receive
/// data (in order, ending at RcvNxt, C-054/C-056) of one TCP block of an initiate tree, or
/// of one terminated connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpData {
    /// Index of the TCP block in the initiate tree (terminate: unused, 0).
    pub block: u32,
    pub send: Vec<u8>,
    pub buffered: Vec<u8>,
}

/// Append the initiate data trailer: `u32 magic, u32 count`, `count` × `{u32 block, u32
/// send_len, u32 buffered_len, u32 reserved}`, then each entry's send bytes then buffered
/// bytes, in entry order. Nothing is appended when `data` is empty.
pub fn emit_trailer(w: &mut Vec<u8>, data: &[TcpData]) {
    if data.is_empty() {
        return;
    }
    w.u32(DATA_TRAILER_MAGIC);
    w.u32(data.len() as u32);
    for d in data {
        w.u32(d.block);
        w.u32(d.send.len() as u32);
        w.u32(d.buffered.len() as u32);
        w.u32(0);
    }
    for d in data {
        w.extend_from_slice(&d.send);
        w.extend_from_slice(&d.buffered);
    }
}

/// Parse a trailer that makes up all of `bytes`. `is_tcp_new(block)` says whether a block
/// index names a new TCP offload in the tree; anything else is refused, as are duplicates.
pub fn parse_trailer(
    bytes: &[u8],
    is_tcp_new: impl Fn(u32) -> bool,
) -> Result<Vec<TcpData>, DecodeError> {
    let mut r = Rd::new(bytes);
    let magic = r.u32("trailer.magic")?;
    if magic != DATA_TRAILER_MAGIC {
        return Err(r.invalid("trailer.magic", u64::from(magic)));
    }
    let count = r.u32("trailer.count")?;
    // Each entry takes 16 bytes: a count beyond what is there is refused before allocating.
    if count as usize > r.remaining() / 16 {
        return Err(r.invalid("trailer.count", u64::from(count)));
    }
    let mut heads = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let block = r.u32("trailer.block")?;
        let s = r.u32("trailer.send_length")?;
        let b = r.u32("trailer.buffered_length")?;
        r.zero(4, "trailer.reserved")?;
        if !is_tcp_new(block) {
            return Err(r.invalid("trailer.block", u64::from(block)));
        }
        if heads.iter().any(|(x, _, _)| *x == block) {
            return Err(r.invalid("trailer.block", u64::from(block)));
        }
        heads.push((block, s, b));
    }
    let mut out = Vec::with_capacity(heads.len());
    for (block, s, b) in heads {
        let send = r.take(s as usize, "trailer.send_data")?.to_vec();
        let buffered = r.take(b as usize, "trailer.buffered_data")?.to_vec();
        out.push(TcpData {
            block,
            send,
            buffered,
        });
    }
    r.finish("trailer")?;
    Ok(out)
}

/// Payload of the `tcp_event::UPLOAD_DATA` event: `u32 send_len, u32 buffered_len`, bytes.
pub fn emit_upload_data(d: &TcpData) -> Vec<u8> {
    let mut w = Vec::with_capacity(8 + d.send.len() + d.buffered.len());
    w.u32(d.send.len() as u32);
    w.u32(d.buffered.len() as u32);
    w.extend_from_slice(&d.send);
    w.extend_from_slice(&d.buffered);
    w
}

pub fn parse_upload_data(payload: &[u8]) -> Result<TcpData, DecodeError> {
    let mut r = Rd::new(payload);
    let s = r.u32("upload_data.send_length")?;
    let b = r.u32("upload_data.buffered_length")?;
    let send = r.take(s as usize, "upload_data.send_data")?.to_vec();
    let buffered = r.take(b as usize, "upload_data.buffered_data")?.to_vec();
    r.finish("upload_data")?;
    Ok(TcpData {
        block: 0,
        send,
        buffered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn send_request_round_trips_and_refuses_trailing_bytes() {
        let req = DataRequest::Send {
            handle: DeviceHandle(7),
            request_id: 9,
            data: vec![1, 2, 3],
        };
        let mut b = req.encode();
        assert_eq!(b.len(), DATA_HEADER_LEN + 3);
        assert_eq!(DataRequest::decode(&b), Ok(req));
        b.push(0);
        assert!(matches!(
            DataRequest::decode(&b),
            Err(DecodeError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn disconnect_flags_and_zero_handle_are_checked() {
        let req = DataRequest::Disconnect {
            handle: DeviceHandle(1),
            request_id: 2,
            abortive: true,
        };
        let b = req.encode();
        assert_eq!(DataRequest::decode(&b), Ok(req));
        let mut bad = b.clone();
        bad[2] = 2; // unknown flag
        assert_eq!(
            DataRequest::decode(&bad).map_err(|e| e.field().name),
            Err("data.flags")
        );
        let mut zero = b;
        zero[8..16].fill(0);
        assert_eq!(
            DataRequest::decode(&zero).map_err(|e| e.field().name),
            Err("data.handle")
        );
    }

    #[test]
    fn post_receive_of_zero_bytes_is_refused() {
        let b = DataRequest::PostReceive {
            handle: DeviceHandle(1),
            request_id: 2,
            capacity: 0,
        }
        .encode();
        assert_eq!(
            DataRequest::decode(&b).map_err(|e| e.field().name),
            Err("data.value")
        );
    }

    #[test]
    fn rx_record_round_trips() {
        let rec = DataRecord {
            kind: DataRxKind::ReceiveIndicate,
            flags: FLAG_PUSH,
            handle: Some(DeviceHandle(3)),
            request_id: 44,
            status: NdisStatus::SUCCESS,
            bytes: 5,
            data: vec![9; 5],
        };
        assert_eq!(DataRecord::decode(&rec.encode()), Ok(rec));
    }

    #[test]
    fn trailer_round_trips_and_refuses_unknown_blocks_and_duplicates() {
        let data = vec![TcpData {
            block: 2,
            send: vec![1; 10],
            buffered: vec![2; 3],
        }];
        let mut w = Vec::new();
        emit_trailer(&mut w, &data);
        assert_eq!(parse_trailer(&w, |b| b == 2), Ok(data.clone()));
        assert_eq!(
            parse_trailer(&w, |b| b == 1).map_err(|e| e.field().name),
            Err("trailer.block")
        );
        let mut dup = Vec::new();
        emit_trailer(&mut dup, &[data[0].clone(), data[0].clone()]);
        assert_eq!(
            parse_trailer(&dup, |_| true).map_err(|e| e.field().name),
            Err("trailer.block")
        );
        // A huge count is refused before any allocation.
        let mut huge = w.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse_trailer(&huge, |_| true).map_err(|e| e.field().name),
            Err("trailer.count")
        );
    }

    #[test]
    fn data_pair_choice_is_stable_and_in_range() {
        for h in 1..1000u64 {
            let p = data_pair_for(DeviceHandle(h), 3);
            assert!(p < 3, "handle {h}: pair {p}");
            assert_eq!(p, data_pair_for(DeviceHandle(h), 3));
        }
        assert_eq!(data_pair_for(DeviceHandle(5), 0), 0);
    }
}
