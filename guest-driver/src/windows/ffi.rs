//! Our own declarations of the NDIS 6 chimney ABI (digest §2.7, §5.1, §5.2, Appendix A),
//! x64 layout. Offsets are checked at compile time against the digest's PDB-confirmed
//! table (`NDIS_MINIPORT_OFFLOAD_BLOCK_LIST` is 0x98 bytes on x64).

#![allow(non_snake_case, non_camel_case_types)]

use core::ffi::c_void;

pub type NDIS_HANDLE = *mut c_void;
pub type NDIS_STATUS = i32;
pub type PVOID = *mut c_void;
pub type ULONG = u32;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NDIS_OBJECT_HEADER {
    pub Type: u8,
    pub Revision: u8,
    pub Size: u16,
}

/// Only the chain link is declared (offset 0, `NET_BUFFER_LIST_HEADER.Next`): the binding
/// passes NBLs through without touching their data (data I/O is not in ABI v1).
#[repr(C)]
pub struct NET_BUFFER_LIST {
    pub Next: *mut NET_BUFFER_LIST,
}

#[repr(C)]
pub struct NDIS_MINIPORT_OFFLOAD_BLOCK_LIST {
    pub Header: NDIS_OBJECT_HEADER,
    pub NextBlock: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    pub DependentBlockList: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    pub Status: NDIS_STATUS,
    pub NdisReserved: [PVOID; 2],
    pub MiniportOffloadContext: *mut PVOID,
    pub NdisOffloadHandle: NDIS_HANDLE,
    pub ProtocolReserved: [PVOID; 2],
    pub MiniportReserved: [PVOID; 2],
    pub ImReserved: [PVOID; 2],
    pub Scratch: [PVOID; 2],
    pub SourceHandle: PVOID,
    pub PortNumber: ULONG,
    pub NetBufferListChain: *mut NET_BUFFER_LIST,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    use core::mem::{offset_of, size_of};
    type B = NDIS_MINIPORT_OFFLOAD_BLOCK_LIST;
    assert!(size_of::<B>() == 0x98);
    assert!(offset_of!(B, NextBlock) == 0x08);
    assert!(offset_of!(B, DependentBlockList) == 0x10);
    assert!(offset_of!(B, Status) == 0x18);
    assert!(offset_of!(B, NdisReserved) == 0x20);
    assert!(offset_of!(B, MiniportOffloadContext) == 0x30);
    assert!(offset_of!(B, NdisOffloadHandle) == 0x38);
    assert!(offset_of!(B, ProtocolReserved) == 0x40);
    assert!(offset_of!(B, MiniportReserved) == 0x50);
    assert!(offset_of!(B, ImReserved) == 0x60);
    assert!(offset_of!(B, Scratch) == 0x70);
    assert!(offset_of!(B, SourceHandle) == 0x80);
    assert!(offset_of!(B, PortNumber) == 0x88);
    assert!(offset_of!(B, NetBufferListChain) == 0x90);
};

/// `OFFLOAD_STATE_HEADER`: every state structure starts with it (§2.3).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OFFLOAD_STATE_HEADER {
    pub Length: ULONG,
    pub RecognizedOptions: ULONG,
}

pub type W_OFFLOAD_HANDLER =
    unsafe extern "system" fn(NDIS_HANDLE, *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST);
pub type W_TCP_OFFLOAD_IO_HANDLER =
    unsafe extern "system" fn(NDIS_HANDLE, PVOID, *mut NET_BUFFER_LIST) -> NDIS_STATUS;
pub type W_TCP_OFFLOAD_DISCONNECT_HANDLER =
    unsafe extern "system" fn(NDIS_HANDLE, PVOID, *mut NET_BUFFER_LIST, ULONG) -> NDIS_STATUS;
pub type W_TCP_OFFLOAD_RECEIVE_RETURN_HANDLER =
    unsafe extern "system" fn(NDIS_HANDLE, *mut NET_BUFFER_LIST) -> NDIS_STATUS;

#[repr(C)]
pub struct NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS {
    pub Header: NDIS_OBJECT_HEADER,
    pub Flags: ULONG,
    pub InitiateOffloadHandler: W_OFFLOAD_HANDLER,
    pub TerminateOffloadHandler: W_OFFLOAD_HANDLER,
    pub UpdateOffloadHandler: W_OFFLOAD_HANDLER,
    pub InvalidateOffloadHandler: W_OFFLOAD_HANDLER,
    pub QueryOffloadHandler: W_OFFLOAD_HANDLER,
}

#[repr(C)]
pub struct NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS {
    pub Header: NDIS_OBJECT_HEADER,
    pub Flags: ULONG,
    pub OffloadType: ULONG,
    pub TcpOffloadSendHandler: W_TCP_OFFLOAD_IO_HANDLER,
    pub TcpOffloadReceiveHandler: W_TCP_OFFLOAD_IO_HANDLER,
    pub TcpOffloadDisconnectHandler: W_TCP_OFFLOAD_DISCONNECT_HANDLER,
    pub TcpOffloadForwardHandler: W_TCP_OFFLOAD_IO_HANDLER,
    pub TcpOffloadReceiveReturnHandler: W_TCP_OFFLOAD_RECEIVE_RETURN_HANDLER,
}

/// `NDIS_TCP_OFFLOAD_EVENT_HANDLERS` (§5.2).
#[repr(C)]
pub struct NDIS_TCP_OFFLOAD_EVENT_HANDLERS {
    pub Header: NDIS_OBJECT_HEADER,
    pub NdisTcpOffloadEventHandler: unsafe extern "system" fn(NDIS_HANDLE, ULONG, ULONG),
    pub NdisTcpOffloadReceiveHandler: unsafe extern "system" fn(
        NDIS_HANDLE,
        *mut NET_BUFFER_LIST,
        NDIS_STATUS,
        *mut ULONG,
    ) -> NDIS_STATUS,
    pub NdisTcpOffloadSendComplete: unsafe extern "system" fn(NDIS_HANDLE, *mut NET_BUFFER_LIST),
    pub NdisTcpOffloadReceiveComplete: unsafe extern "system" fn(NDIS_HANDLE, *mut NET_BUFFER_LIST),
    pub NdisTcpOffloadDisconnectComplete:
        unsafe extern "system" fn(NDIS_HANDLE, *mut NET_BUFFER_LIST),
    pub NdisTcpOffloadForwardComplete: unsafe extern "system" fn(NDIS_HANDLE, *mut NET_BUFFER_LIST),
}

/// `NDIS_TCP_CONNECTION_OFFLOAD` (§5.3), 20 bytes; the support bit fields as one ULONG.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NDIS_TCP_CONNECTION_OFFLOAD {
    pub Header: NDIS_OBJECT_HEADER,
    pub Encapsulation: ULONG,
    pub SupportBits: ULONG,
    pub TcpConnectionOffloadCapacity: ULONG,
    pub Flags: ULONG,
}

/// `NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES`: task-offload pointers (not used by the
/// chimney binding, NULL) and the two connection-offload pointers.
#[repr(C)]
pub struct NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES {
    pub Header: NDIS_OBJECT_HEADER,
    pub DefaultOffloadConfiguration: PVOID,
    pub HardwareOffloadCapabilities: PVOID,
    pub DefaultTcpConnectionOffloadConfiguration: *mut NDIS_TCP_CONNECTION_OFFLOAD,
    pub TcpConnectionOffloadHardwareCapabilities: *mut NDIS_TCP_CONNECTION_OFFLOAD,
}

/// `NDIS_STATUS_INDICATION`, the fields the chimney fills.
#[repr(C)]
pub struct NDIS_STATUS_INDICATION {
    pub Header: NDIS_OBJECT_HEADER,
    pub SourceHandle: NDIS_HANDLE,
    pub PortNumber: ULONG,
    pub StatusCode: NDIS_STATUS,
    pub Flags: ULONG,
    pub DestinationHandle: NDIS_HANDLE,
    pub RequestId: PVOID,
    pub StatusBuffer: PVOID,
    pub StatusBufferSize: ULONG,
    pub Guid: [u8; 16],
    pub NdisReserved: [PVOID; 4],
}

#[cfg_attr(feature = "wdk", link(name = "ndis"))]
unsafe extern "system" {
    pub fn NdisSetOptionalHandlers(
        NdisHandle: NDIS_HANDLE,
        OptionalHandlers: *mut NDIS_OBJECT_HEADER,
    ) -> NDIS_STATUS;
    pub fn NdisMSetMiniportAttributes(
        NdisMiniportHandle: NDIS_HANDLE,
        MiniportAttributes: *mut NDIS_OBJECT_HEADER,
    ) -> NDIS_STATUS;
    pub fn NdisMGetOffloadHandlers(
        NdisMiniportHandle: NDIS_HANDLE,
        ChimneyType: ULONG,
        OffloadHandlers: *mut *mut NDIS_OBJECT_HEADER,
    ) -> NDIS_STATUS;
    pub fn NdisMInitiateOffloadComplete(h: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST);
    pub fn NdisMTerminateOffloadComplete(h: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST);
    pub fn NdisMUpdateOffloadComplete(h: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST);
    pub fn NdisMInvalidateOffloadComplete(h: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST);
    pub fn NdisMQueryOffloadStateComplete(h: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST);
    pub fn NdisMOffloadEventIndicate(
        h: NDIS_HANDLE,
        b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
        IndicationCode: ULONG,
    );
    pub fn NdisMIndicateStatusEx(h: NDIS_HANDLE, StatusIndication: *mut NDIS_STATUS_INDICATION);
    pub fn NdisMAllocateSharedMemory(
        h: NDIS_HANDLE,
        Length: ULONG,
        Cached: u8,
        VirtualAddress: *mut PVOID,
        PhysicalAddress: *mut i64,
    );
}
