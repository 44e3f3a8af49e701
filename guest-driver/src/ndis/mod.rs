//! NDIS's shapes in portable Rust (digest §2.7, §2.12, §5): the objects the miniport and
//! the host exchange through the handler tables. The Windows binding converts between these
//! and the C structures at its edge; the in-process NDIS model (harness) uses them as is.
//!
//! - [`blocklist`]: `NDIS_MINIPORT_OFFLOAD_BLOCK_LIST` trees, handed to the miniport by
//!   reference and poisoned when completed (C-034);
//! - [`nbl`]: `NET_BUFFER_LIST` / `NET_BUFFER` / MDL chains;
//! - [`chars`]: the characteristics structures (handler tables) both sides register.

pub mod blocklist;
pub mod chars;
pub mod nbl;

pub use chimney_abi::NdisStatus;

/// `NDIS_OBJECT_HEADER`: Type, Revision, Size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NdisObjectHeader {
    pub object_type: u8,
    pub revision: u8,
    pub size: u16,
}

/// An opaque NDIS handle (`NdisMiniportHandle`, `NdisOffloadHandle`, …): pointer-sized.
pub type NdisHandle = u64;

/// `NDIS_OBJECT_TYPE_*` values used by the chimney (digest §5.1).
pub mod object_type {
    pub const DEFAULT: u8 = 0x80;
    pub const MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES: u8 = 0xA0;
    pub const CLIENT_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS: u8 = 0x8E;
    pub const PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS: u8 = 0x8F;
    pub const CLIENT_CHIMNEY_OFFLOAD_CHARACTERISTICS: u8 = 0x93;
    pub const PROVIDER_CHIMNEY_OFFLOAD_CHARACTERISTICS: u8 = 0x94;
}

/// `NDIS_CHIMNEY_OFFLOAD_TYPE` (digest §2.8).
pub mod chimney_type {
    pub const TCP: u32 = 1;
    pub const IPSEC: u32 = 2;
    pub const RDMA: u32 = 3;
}

/// `NDIS_OBJECT_TCP_OFFLOAD_REVISION_1` (digest §5.2).
pub const NDIS_OBJECT_TCP_OFFLOAD_REVISION_1: u8 = 1;

/// OIDs of the connection offload (digest §5.5).
pub mod oid {
    pub const TCP4_OFFLOAD_STATS: u32 = 0xFC01_0207;
    pub const TCP6_OFFLOAD_STATS: u32 = 0xFC01_0208;
    pub const IP4_OFFLOAD_STATS: u32 = 0xFC01_0209;
    pub const IP6_OFFLOAD_STATS: u32 = 0xFC01_020A;
    pub const TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG: u32 = 0xFC01_020E;
    pub const TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES: u32 = 0xFC01_020F;
    pub const TCP_CONNECTION_OFFLOAD_PARAMETERS: u32 = 0xFC03_0201;
}

/// `TCP_DISCONNECT_*` flags (digest §2.8).
pub const TCP_DISCONNECT_GRACEFUL_CLOSE: u32 = 0x01;
pub const TCP_DISCONNECT_ABORTIVE_CLOSE: u32 = 0x02;
