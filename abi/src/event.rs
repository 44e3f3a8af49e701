//! Event indications on control rx (device → driver), digest §4. Version 1 defines the
//! record shape and the code enumerations; the device starts raising them with the data
//! path (later issues).
//!
//! Body after the record header (kind 3; opcode slot = [`EventClass`]; request_id slot =
//! event sequence number; status slot = the NDIS status for `StatusIndication`, else 0):
//! ```text
//! 0  u64 handle        device handle of the object (0 = adapter-wide)
//! 8  u64 host_context  the host_context stored at offload (C-027/C-028)
//! 16 u32 code          TcpEvent: TCP_OFFLOAD_EVENT_TYPE; OffloadEvent: INDICATE_OFFLOAD_EVENT
//! 20 u32 info          EventSpecificInformation (e.g. TCP_UPLOAD_REASON)
//! 24 ..  payload       class-specific (NeighborReachabilityQuery: neighbor const, cached,
//!                      delegated; OFFLOAD_RESUME: NDIS_TCP_CONNECTION_OFFLOAD)
//! ```

use crate::completion::{RecordHeader, KIND_EVENT, RECORD_HEADER_LEN, TX_HEAD_NONE};
use crate::error::DecodeError;
use crate::handle::DeviceHandle;
use crate::status::NdisStatus;
use crate::wire::{Rd, Wr};
use alloc::vec::Vec;

/// Which NDIS indication path an event models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum EventClass {
    /// `NdisTcpOffloadEventHandler` (§4.1).
    TcpEvent = 1,
    /// `NdisMOffloadEventIndicate` (§4.2).
    OffloadEvent = 2,
    /// `NdisMIndicateStatusEx` (§4.3).
    StatusIndication = 3,
}

impl EventClass {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => EventClass::TcpEvent,
            2 => EventClass::OffloadEvent,
            3 => EventClass::StatusIndication,
            _ => return None,
        })
    }
}

/// `TCP_OFFLOAD_EVENT_TYPE`.
pub mod tcp_event {
    pub const SEND_BACKLOG_CHANGE: u32 = 1;
    pub const DISCONNECT: u32 = 2;
    pub const RETRIEVE: u32 = 3;
    pub const ABORT: u32 = 4;
    /// Device-private (not an NDIS event type): the send data not yet acknowledged and the
    /// buffered receive data of a TCP object being terminated, raised just before the
    /// terminate completion (payload: [`crate::data_io::emit_upload_data`]). The driver
    /// hands it to the host stack with the returned delegated state (C-112, C-116).
    pub const UPLOAD_DATA: u32 = 0x8000_0001;
}

/// `TCP_UPLOAD_REASON`.
pub mod upload_reason {
    pub const LOW_ACTIVITY: u32 = 1;
    pub const HIGH_DROP_RATE: u32 = 2;
    pub const SMALL_IO: u32 = 3;
    pub const NO_BUFFER_PREPOSTING: u32 = 4;
    pub const RECEIVED_URGENT_DATA: u32 = 5;
    pub const HIGH_FRAGMENTATION: u32 = 6;
    pub const HIGH_OUT_OF_ORDER_PACKETS: u32 = 7;
    pub const TIMEOUT_EXPIRATION: u32 = 8;
    pub const INVALID_STATE: u32 = 9;
    pub const UPLOAD_REQUESTED: u32 = 10;
    pub const HARDWARE_FAILURE: u32 = 11;
}

/// `INDICATE_OFFLOAD_EVENT`.
pub mod offload_event {
    pub const NEIGHBOR_REACHABILITY_IN_DOUBT: u32 = 1;
    pub const NEIGHBOR_REACHABILITY_QUERY: u32 = 2;
}

pub const EVENT_BODY_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub sequence: u64,
    pub class: EventClass,
    pub status: NdisStatus,
    pub handle: Option<DeviceHandle>,
    pub host_context: u64,
    pub code: u32,
    pub info: u32,
    pub payload: Vec<u8>,
}

impl Event {
    /// A TCP object's event (`NdisTcpOffloadEventHandler`, §4.1); sequence set by the ring.
    pub fn tcp(handle: DeviceHandle, host_context: u64, code: u32, info: u32) -> Event {
        Event {
            sequence: 0,
            class: EventClass::TcpEvent,
            status: NdisStatus::SUCCESS,
            handle: Some(handle),
            host_context,
            code,
            info,
            payload: Vec::new(),
        }
    }

    /// An adapter-wide status indication (§4.3): UPLOAD_ALL, OFFLOAD_PAUSE, OFFLOAD_RESUME
    /// (payload: `NDIS_TCP_CONNECTION_OFFLOAD` for RESUME).
    pub fn status(status: NdisStatus, payload: Vec<u8>) -> Event {
        Event {
            sequence: 0,
            class: EventClass::StatusIndication,
            status,
            handle: None,
            host_context: 0,
            code: 0,
            info: 0,
            payload,
        }
    }

    /// NeighborReachabilityQuery (§4.2, C-224/C-225): the neighbor's handle and context, the
    /// payload its CONST, CACHED (current HRD) and DELEGATED (current NRD) structures.
    pub fn neighbor_reachability_query(
        handle: DeviceHandle,
        host_context: u64,
        state: &crate::state::NeighborState,
    ) -> Event {
        let mut payload = Vec::new();
        crate::state::ObjectState::Neighbor(*state).emit(&mut payload);
        Event {
            sequence: 0,
            class: EventClass::OffloadEvent,
            status: NdisStatus::SUCCESS,
            handle: Some(handle),
            host_context,
            code: offload_event::NEIGHBOR_REACHABILITY_QUERY,
            info: 0,
            payload,
        }
    }

    /// The neighbor state a NeighborReachabilityQuery carries (driver side).
    pub fn neighbor_state(&self) -> Result<crate::state::NeighborState, DecodeError> {
        let mut r = Rd::new(&self.payload);
        let st =
            crate::state::ObjectState::parse(&mut r, crate::state::OffloadStateType::Neighbor)?;
        r.finish("event.payload")?;
        match st {
            crate::state::ObjectState::Neighbor(n) => Ok(n),
            _ => Err(r.invalid("event.payload", 0)),
        }
    }

    /// The `NDIS_TCP_CONNECTION_OFFLOAD` an OFFLOAD_RESUME indication carries (§4.3).
    pub fn resume_capabilities(&self) -> Result<crate::caps::TcpConnectionOffload, DecodeError> {
        let mut r = Rd::new(&self.payload);
        let c = crate::caps::TcpConnectionOffload::parse(&mut r)?;
        r.finish("event.payload")?;
        Ok(c)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        RecordHeader {
            kind: KIND_EVENT,
            opcode: self.class as u16,
            length: (RECORD_HEADER_LEN + EVENT_BODY_LEN + self.payload.len()) as u32,
            request_id: self.sequence,
            tx_head: TX_HEAD_NONE,
            flags: 0,
            status: self.status,
            count: 0,
        }
        .emit(&mut w);
        w.u64(self.handle.map_or(0, |h| h.0));
        w.u64(self.host_context);
        w.u32(self.code);
        w.u32(self.info);
        w.extend_from_slice(&self.payload);
        w
    }

    pub(crate) fn parse(h: &RecordHeader, r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let class = EventClass::from_u16(h.opcode)
            .ok_or_else(|| r.invalid("record.opcode", u64::from(h.opcode)))?;
        if h.tx_head != TX_HEAD_NONE {
            return Err(r.invalid("record.tx_head", u64::from(h.tx_head)));
        }
        if h.flags != 0 {
            return Err(r.invalid("record.flags", u64::from(h.flags)));
        }
        if h.count != 0 {
            return Err(r.invalid("record.count", u64::from(h.count)));
        }
        let handle = r.u64("event.handle")?;
        let host_context = r.u64("event.host_context")?;
        let code = r.u32("event.code")?;
        let info = r.u32("event.info")?;
        let payload = r.take(r.remaining(), "event.payload")?.to_vec();
        Ok(Event {
            sequence: h.request_id,
            class,
            status: h.status,
            handle: (handle != 0).then_some(DeviceHandle(handle)),
            host_context,
            code,
            info,
            payload,
        })
    }
}
