#![no_std]
#![forbid(unsafe_code)]
//! chimney-abi: the device/driver contract, written like a hardware manual
//! (docs/ring-abi.md is the prose version).
//!
//! * Byte order: every multi-byte integer on the rings is **little-endian**; IP addresses
//!   are in network byte order and MAC addresses in transmission order (digest §7.1 item
//!   16 decided this way).
//! * Queue map ([`queues`]), ABI version ([`ABI_VERSION`]).
//! * Requests ([`request`]) on control tx, completions / ERROR completions / events
//!   ([`completion`], [`event`]) on control rx, framed by [`framing`].
//! * State objects ([`state`]) and state trees ([`tree`]) as the spec digest §2 describes.
//! * NDIS status codes with their real values ([`NdisStatus`]), reason codes ([`Reason`]).
//!
//! Every decoder takes bytes already copied out of guest memory, validates everything and
//! returns a [`DecodeError`] naming the field; none of them panics on any input.

extern crate alloc;

pub mod caps;
pub mod completion;
pub mod data_io;
pub mod error;
pub mod event;
pub mod framing;
pub mod handle;
pub mod request;
pub mod state;
pub mod stats;
pub mod status;
pub mod tree;
pub mod view;
mod wire;

pub use caps::{OffloadParameters, TcpConnectionOffload};
pub use completion::{
    BlockResult, Completion, CompletionBody, ErrorInfo, NegotiateResult, RxRecord,
};
pub use data_io::{DataRecord, DataRequest, DataRxKind, TcpData};
pub use error::{DecodeError, Field};
pub use event::{Event, EventClass};
pub use framing::{Reassembler, MIN_RX_BUFFER};
pub use handle::DeviceHandle;
pub use request::{Negotiate, Opcode, Request, RequestBody, RequestError, RequestHeader};
pub use state::*;
pub use stats::{
    IpOffloadStats, ReachabilityAnswer, StatsFamily, StatsRequest, StatsResult, TcpOffloadStats,
};
pub use status::{NdisStatus, Reason};
pub use tree::{Block, InitiateBlock, RefBlock, TerminateBlock, Tree, TreeBuilder, UpdateBlock};

/// The ABI version this crate implements. Negotiated in-band (NEGOTIATE request).
pub const ABI_VERSION: u16 = 1;
/// Oldest version this crate can speak.
pub const ABI_MIN_VERSION: u16 = 1;

/// Virtqueue numbers (virtio-net multiqueue layout, DESIGN.md "Queue map").
pub mod queues {
    /// Pair 0: plain NIC (Ethernet frames with the virtio-net header).
    pub const NIC_RX: u16 = 0;
    pub const NIC_TX: u16 = 1;
    /// Pair 1: control ring. Requests on tx, completions and events on rx.
    pub const CONTROL_RX: u16 = 2;
    pub const CONTROL_TX: u16 = 3;
    /// Pairs 2..: data I/O; pair `p` is rx `2p`, tx `2p + 1`.
    pub const FIRST_DATA_PAIR: u16 = 2;
    pub const fn data_rx(pair: u16) -> u16 {
        2 * pair
    }
    pub const fn data_tx(pair: u16) -> u16 {
        2 * pair + 1
    }
}
