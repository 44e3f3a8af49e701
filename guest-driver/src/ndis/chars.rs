//! The handler tables both sides exchange (digest §5.1, §5.2, Appendix A), and the NDIS
//! functions a miniport calls ([`NdisMiniportServices`]).
//!
//! `A` is the miniport adapter type (`MiniportAdapterContext` is `&mut A`), `H` the NDIS
//! implementation (the harness model, or the Windows binding's shim over ndis.sys).

use alloc::vec::Vec;

use chimney_abi::TcpConnectionOffload;

use super::blocklist::BlockListRef;
use super::nbl::NetBufferList;
use super::{NdisHandle, NdisObjectHeader, NdisStatus};

/// `W_INITIATE_OFFLOAD_HANDLER` and its four siblings: record the tree, return (C-033).
pub type OffloadHandler<A> = fn(&mut A, BlockListRef);
/// `W_TCP_OFFLOAD_SEND_HANDLER` / RECEIVE / FORWARD: (adapter, MiniportOffloadContext, NBLs).
pub type TcpIoHandler<A> = fn(&mut A, u64, Vec<NetBufferList>) -> NdisStatus;
/// `W_TCP_OFFLOAD_DISCONNECT_HANDLER`: one NBL plus `TCP_DISCONNECT_*` flags.
pub type TcpDisconnectHandler<A> = fn(&mut A, u64, NetBufferList, u32) -> NdisStatus;
/// `W_TCP_OFFLOAD_RECEIVE_RETURN_HANDLER`: synchronous, always SUCCESS (C-175).
pub type TcpReceiveReturnHandler<A> = fn(&mut A, Vec<NetBufferList>) -> NdisStatus;

/// `NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS` (C-001).
pub struct ProviderChimneyOffloadGenericCharacteristics<A> {
    pub header: NdisObjectHeader,
    pub flags: u32,
    pub initiate_offload_handler: OffloadHandler<A>,
    pub terminate_offload_handler: OffloadHandler<A>,
    pub update_offload_handler: OffloadHandler<A>,
    pub invalidate_offload_handler: OffloadHandler<A>,
    pub query_offload_handler: OffloadHandler<A>,
}

/// `NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS` (C-002).
pub struct ProviderChimneyOffloadTcpCharacteristics<A> {
    pub header: NdisObjectHeader,
    pub flags: u32,
    /// `NdisTcpChimneyOffload` (1), the only allowed value.
    pub offload_type: u32,
    pub tcp_offload_send_handler: TcpIoHandler<A>,
    pub tcp_offload_receive_handler: TcpIoHandler<A>,
    pub tcp_offload_disconnect_handler: TcpDisconnectHandler<A>,
    pub tcp_offload_forward_handler: TcpIoHandler<A>,
    pub tcp_offload_receive_return_handler: TcpReceiveReturnHandler<A>,
}

// fn pointers are Copy whatever A is; derive would demand A: Clone.
impl<A> Clone for ProviderChimneyOffloadGenericCharacteristics<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for ProviderChimneyOffloadGenericCharacteristics<A> {}
impl<A> Clone for ProviderChimneyOffloadTcpCharacteristics<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for ProviderChimneyOffloadTcpCharacteristics<A> {}

/// `NDIS_TCP_OFFLOAD_EVENT_HANDLERS` (§5.2): what `NdisMGetOffloadHandlers` returns. The
/// miniport checks the header (C-004) and copies the six entry points.
pub struct TcpOffloadEventHandlers<H: ?Sized> {
    pub header: NdisObjectHeader,
    /// `NdisTcpOffloadEventHandler(NdisOffloadHandle, EventType, EventSpecificInformation)`.
    pub event_handler: fn(&mut H, NdisHandle, u32, u32),
    /// `NdisTcpOffloadReceiveHandler(NdisOffloadHandle, NBL, Status, &BytesConsumed)`.
    pub receive_handler:
        fn(&mut H, NdisHandle, &mut NetBufferList, NdisStatus, &mut u32) -> NdisStatus,
    pub send_complete: fn(&mut H, NdisHandle, Vec<NetBufferList>),
    pub receive_complete: fn(&mut H, NdisHandle, Vec<NetBufferList>),
    pub disconnect_complete: fn(&mut H, NdisHandle, NetBufferList),
    pub forward_complete: fn(&mut H, NdisHandle, Vec<NetBufferList>),
}

impl<H: ?Sized> Clone for TcpOffloadEventHandlers<H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<H: ?Sized> Copy for TcpOffloadEventHandlers<H> {}

/// `NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES`, connection-offload part (§5.3, C-005).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiniportAdapterOffloadAttributes {
    pub header: NdisObjectHeader,
    /// `DefaultTcpConnectionOffloadConfiguration`: what is enabled now.
    pub default_tcp_connection_offload_configuration: TcpConnectionOffload,
    /// `TcpConnectionOffloadHardwareCapabilities`: everything the hardware can do (C-006).
    pub tcp_connection_offload_hardware_capabilities: TcpConnectionOffload,
}

/// `NDIS_STATUS_INDICATION` as far as the chimney uses it (§4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusIndication {
    pub status_code: NdisStatus,
    /// OFFLOAD_RESUME: the new `NDIS_TCP_CONNECTION_OFFLOAD`.
    pub status_buffer: Option<TcpConnectionOffload>,
}

/// An OID request as the miniport sees it (`NDIS_OID_REQUEST`, reduced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidRequest {
    Set { oid: u32, buffer: Vec<u8> },
    Query { oid: u32, buffer_length: usize },
}

/// The answer to an OID request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidResult {
    pub status: NdisStatus,
    /// Query: the bytes written (`BytesWritten`); set: empty.
    pub data: Vec<u8>,
    /// `BytesNeeded` when the buffer was too short.
    pub bytes_needed: usize,
}

/// The NDIS functions the miniport calls (Appendix A, "NDIS functions the OT calls"),
/// plus the registration calls of §5.1–5.3.
pub trait NdisMiniportServices<A> {
    /// `NdisSetOptionalHandlers` with the generic table (from `MiniportSetOptions`).
    fn set_optional_handlers_generic(
        &mut self,
        chars: ProviderChimneyOffloadGenericCharacteristics<A>,
    ) -> NdisStatus;
    /// `NdisSetOptionalHandlers` with the TCP table.
    fn set_optional_handlers_tcp(
        &mut self,
        chars: ProviderChimneyOffloadTcpCharacteristics<A>,
    ) -> NdisStatus;
    /// `NdisMSetMiniportAttributes` with the offload attributes.
    fn set_miniport_attributes(&mut self, attrs: &MiniportAdapterOffloadAttributes) -> NdisStatus;
    /// `NdisMGetOffloadHandlers(handle, ChimneyType)`.
    fn get_offload_handlers(
        &mut self,
        chimney_type: u32,
    ) -> Result<TcpOffloadEventHandlers<Self>, NdisStatus>;
    /// `NdisMInitiateOffloadComplete` …: the same root the handler got.
    fn initiate_offload_complete(&mut self, root: BlockListRef);
    fn terminate_offload_complete(&mut self, root: BlockListRef);
    fn update_offload_complete(&mut self, root: BlockListRef);
    fn invalidate_offload_complete(&mut self, root: BlockListRef);
    fn query_offload_state_complete(&mut self, root: BlockListRef);
    /// `NdisMOffloadEventIndicate` (NULL block list except for NeighborReachabilityQuery).
    fn offload_event_indicate(&mut self, block_list: Option<BlockListRef>, indication_code: u32);
    /// `NdisMIndicateStatusEx`.
    fn indicate_status_ex(&mut self, indication: &StatusIndication);
    /// `NdisMMiniportHandle` of this adapter (passed back to the completion functions).
    fn miniport_handle(&self) -> NdisHandle;
}
