//! The NDIS-facing adapter: [`WindowsNdis`] implements the core's
//! [`NdisMiniportServices`] over the real `NdisM*` exports, and the `extern "system"`
//! trampolines ndis.sys calls forward to the handler tables the core registered.
//!
//! Concurrency: ndis.sys may call handlers on several CPUs and concurrently with the DPC.
//! The binding must hold one adapter spin lock around every trampoline and the DPC
//! (`NdisAcquireSpinLock`, a WDK macro: with the `wdk` feature it comes from wdk-sys; see
//! docs/windows.md). The core itself never locks (platform.rs contract).

use alloc::vec::Vec;
use core::ptr;

use chimney_abi::NdisStatus;

use super::edge::{read_tree, write_back, InFlight};
use super::ffi::*;
use super::platform::WindowsPlatform;
use crate::miniport::{ChimneyMiniport, OpKind};
use crate::ndis::blocklist::{BlockList, BlockListRef, BlockTree};
use crate::ndis::chars::{
    MiniportAdapterOffloadAttributes, NdisMiniportServices,
    ProviderChimneyOffloadGenericCharacteristics, ProviderChimneyOffloadTcpCharacteristics,
    StatusIndication, TcpOffloadEventHandlers,
};
use crate::ndis::nbl::NetBufferList;
use crate::ndis::{object_type, NdisHandle, NdisObjectHeader};

pub type Adapter = ChimneyMiniport<WindowsPlatform, WindowsNdis>;

/// What the binding keeps per adapter besides the core.
pub struct WindowsNdis {
    /// NdisDriverHandle in MiniportSetOptions, NdisMiniportHandle afterwards.
    pub handle: NDIS_HANDLE,
    generic: Option<ProviderChimneyOffloadGenericCharacteristics<Adapter>>,
    tcp: Option<ProviderChimneyOffloadTcpCharacteristics<Adapter>>,
    in_flight: Vec<InFlight>,
    events: *const NDIS_TCP_OFFLOAD_EVENT_HANDLERS,
}

/// `MiniportAdapterContext`.
pub struct WindowsAdapter {
    pub ndis: WindowsNdis,
    pub miniport: Option<Adapter>,
}

impl WindowsNdis {
    pub fn new(handle: NDIS_HANDLE) -> Self {
        WindowsNdis {
            handle,
            generic: None,
            tcp: None,
            in_flight: Vec::new(),
            events: ptr::null(),
        }
    }

    fn complete(&mut self, root: BlockListRef) {
        let Some(i) = self.in_flight.iter().position(|f| f.root.same_root(&root)) else {
            return;
        };
        // Forget the tree before NDIS gets it back (C-034).
        let f = self.in_flight.swap_remove(i);
        // SAFETY: c_blocks belong to this not-yet-completed tree.
        unsafe {
            write_back(f.kind, &root.read(), &f.c_blocks);
        }
        drop(root);
        let h = self.handle;
        // SAFETY: the root NDIS passed to the handler, completed exactly once.
        unsafe {
            match f.kind {
                OpKind::Initiate => NdisMInitiateOffloadComplete(h, f.c_root),
                OpKind::Terminate => NdisMTerminateOffloadComplete(h, f.c_root),
                OpKind::Update => NdisMUpdateOffloadComplete(h, f.c_root),
                OpKind::Invalidate => NdisMInvalidateOffloadComplete(h, f.c_root),
                OpKind::Query => NdisMQueryOffloadStateComplete(h, f.c_root),
            }
        }
    }

    fn ev(&mut self) -> Option<&NDIS_TCP_OFFLOAD_EVENT_HANDLERS> {
        // SAFETY: returned by NdisMGetOffloadHandlers, valid while the adapter lives.
        unsafe { self.events.as_ref() }
    }

    fn c_chain(nbls: &[NetBufferList]) -> *mut NET_BUFFER_LIST {
        // The portable NBLs carry the C pointers as ids; relink them in order.
        let mut head: *mut NET_BUFFER_LIST = ptr::null_mut();
        for n in nbls.iter().rev() {
            let p = n.id as *mut NET_BUFFER_LIST;
            if !p.is_null() {
                // SAFETY: an NBL NDIS gave the miniport, owned by it until completed.
                unsafe { (*p).Next = head };
                head = p;
            }
        }
        head
    }

    fn ev_tcp(&mut self, h: NdisHandle, t: u32, info: u32) {
        if let Some(e) = self.ev() {
            // SAFETY: NDIS entry point, called with the stored NdisOffloadHandle (C-028).
            unsafe { (e.NdisTcpOffloadEventHandler)(h as NDIS_HANDLE, t, info) }
        }
    }
    fn ev_receive(
        &mut self,
        _h: NdisHandle,
        _n: &mut NetBufferList,
        _s: NdisStatus,
        consumed: &mut u32,
    ) -> NdisStatus {
        // No receive indications until the data rings exist (ABI v1).
        *consumed = 0;
        NdisStatus::OFFLOAD_DATA_NOT_ACCEPTED
    }
    fn ev_send_complete(&mut self, _h: NdisHandle, n: Vec<NetBufferList>) {
        let c = Self::c_chain(&n);
        let h = self.handle;
        if let Some(e) = self.ev() {
            // SAFETY: NBLs the host gave the send handler.
            unsafe { (e.NdisTcpOffloadSendComplete)(h, c) }
        }
    }
    fn ev_receive_complete(&mut self, _h: NdisHandle, n: Vec<NetBufferList>) {
        let c = Self::c_chain(&n);
        let h = self.handle;
        if let Some(e) = self.ev() {
            // SAFETY: as above.
            unsafe { (e.NdisTcpOffloadReceiveComplete)(h, c) }
        }
    }
    fn ev_disconnect_complete(&mut self, _h: NdisHandle, n: NetBufferList) {
        let c = Self::c_chain(core::slice::from_ref(&n));
        let h = self.handle;
        if let Some(e) = self.ev() {
            // SAFETY: as above.
            unsafe { (e.NdisTcpOffloadDisconnectComplete)(h, c) }
        }
    }
    fn ev_forward_complete(&mut self, _h: NdisHandle, n: Vec<NetBufferList>) {
        let c = Self::c_chain(&n);
        let h = self.handle;
        if let Some(e) = self.ev() {
            // SAFETY: as above.
            unsafe { (e.NdisTcpOffloadForwardComplete)(h, c) }
        }
    }
}

fn to_c(t: &chimney_abi::TcpConnectionOffload) -> NDIS_TCP_CONNECTION_OFFLOAD {
    NDIS_TCP_CONNECTION_OFFLOAD {
        Header: NDIS_OBJECT_HEADER {
            Type: object_type::DEFAULT,
            Revision: chimney_abi::caps::NDIS_TCP_CONNECTION_OFFLOAD_REVISION_1,
            Size: chimney_abi::caps::NDIS_SIZEOF_TCP_CONNECTION_OFFLOAD_REVISION_1,
        },
        Encapsulation: t.encapsulation,
        SupportBits: u32::from(t.support_ipv4 & 3)
            | u32::from(t.support_ipv6 & 3) << 2
            | u32::from(t.support_ipv6_extension_headers & 3) << 4
            | u32::from(t.support_sack & 3) << 6
            | u32::from(t.congestion_algorithm & 0xF) << 8,
        TcpConnectionOffloadCapacity: t.tcp_connection_offload_capacity,
        Flags: t.flags,
    }
}

impl NdisMiniportServices<Adapter> for WindowsNdis {
    fn set_optional_handlers_generic(
        &mut self,
        chars: ProviderChimneyOffloadGenericCharacteristics<Adapter>,
    ) -> NdisStatus {
        self.generic = Some(chars);
        let mut c = NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS {
            Header: NDIS_OBJECT_HEADER {
                Type: chars.header.object_type,
                Revision: chars.header.revision,
                Size: core::mem::size_of::<NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS>()
                    as u16,
            },
            Flags: 0,
            InitiateOffloadHandler: t_initiate,
            TerminateOffloadHandler: t_terminate,
            UpdateOffloadHandler: t_update,
            InvalidateOffloadHandler: t_invalidate,
            QueryOffloadHandler: t_query,
        };
        // SAFETY: a correctly laid out characteristics structure (C-001).
        NdisStatus(
            unsafe { NdisSetOptionalHandlers(self.handle, ptr::addr_of_mut!(c).cast()) } as u32,
        )
    }

    fn set_optional_handlers_tcp(
        &mut self,
        chars: ProviderChimneyOffloadTcpCharacteristics<Adapter>,
    ) -> NdisStatus {
        self.tcp = Some(chars);
        let mut c = NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS {
            Header: NDIS_OBJECT_HEADER {
                Type: chars.header.object_type,
                Revision: chars.header.revision,
                Size: core::mem::size_of::<NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS>()
                    as u16,
            },
            Flags: 0,
            OffloadType: chars.offload_type,
            TcpOffloadSendHandler: t_send,
            TcpOffloadReceiveHandler: t_receive,
            TcpOffloadDisconnectHandler: t_disconnect,
            TcpOffloadForwardHandler: t_forward,
            TcpOffloadReceiveReturnHandler: t_receive_return,
        };
        // SAFETY: as above (C-002).
        NdisStatus(
            unsafe { NdisSetOptionalHandlers(self.handle, ptr::addr_of_mut!(c).cast()) } as u32,
        )
    }

    fn set_miniport_attributes(&mut self, a: &MiniportAdapterOffloadAttributes) -> NdisStatus {
        let mut current = to_c(&a.default_tcp_connection_offload_configuration);
        let mut hardware = to_c(&a.tcp_connection_offload_hardware_capabilities);
        let mut attrs = NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES {
            Header: NDIS_OBJECT_HEADER {
                Type: a.header.object_type,
                Revision: a.header.revision,
                Size: core::mem::size_of::<NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES>() as u16,
            },
            DefaultOffloadConfiguration: ptr::null_mut(),
            HardwareOffloadCapabilities: ptr::null_mut(),
            DefaultTcpConnectionOffloadConfiguration: &mut current,
            TcpConnectionOffloadHardwareCapabilities: &mut hardware,
        };
        // SAFETY: attributes and the two structures live across the call (C-005).
        NdisStatus(unsafe {
            NdisMSetMiniportAttributes(self.handle, ptr::addr_of_mut!(attrs).cast())
        } as u32)
    }

    fn get_offload_handlers(
        &mut self,
        chimney_type: u32,
    ) -> Result<TcpOffloadEventHandlers<Self>, NdisStatus> {
        let mut p: *mut NDIS_OBJECT_HEADER = ptr::null_mut();
        // SAFETY: out-pointer to a local (C-003).
        let s = unsafe { NdisMGetOffloadHandlers(self.handle, chimney_type, &mut p) };
        if s != 0 || p.is_null() {
            return Err(NdisStatus(s as u32));
        }
        // SAFETY: NDIS returned a table starting with an NDIS_OBJECT_HEADER; the core
        // checks Type/Revision/Size (C-004) before any entry point is used.
        let h = unsafe { *p };
        self.events = p.cast();
        Ok(TcpOffloadEventHandlers {
            header: NdisObjectHeader {
                object_type: h.Type,
                revision: h.Revision,
                size: h.Size,
            },
            event_handler: WindowsNdis::ev_tcp,
            receive_handler: WindowsNdis::ev_receive,
            send_complete: WindowsNdis::ev_send_complete,
            receive_complete: WindowsNdis::ev_receive_complete,
            disconnect_complete: WindowsNdis::ev_disconnect_complete,
            forward_complete: WindowsNdis::ev_forward_complete,
        })
    }

    fn initiate_offload_complete(&mut self, root: BlockListRef) {
        self.complete(root)
    }
    fn terminate_offload_complete(&mut self, root: BlockListRef) {
        self.complete(root)
    }
    fn update_offload_complete(&mut self, root: BlockListRef) {
        self.complete(root)
    }
    fn invalidate_offload_complete(&mut self, root: BlockListRef) {
        self.complete(root)
    }
    fn query_offload_state_complete(&mut self, root: BlockListRef) {
        self.complete(root)
    }

    fn offload_event_indicate(&mut self, block_list: Option<BlockListRef>, code: u32) {
        let b = block_list.map(|r| r.read().blocks.first().cloned());
        let mut c = b
            .flatten()
            .map(|b: BlockList| NDIS_MINIPORT_OFFLOAD_BLOCK_LIST {
                Header: NDIS_OBJECT_HEADER {
                    Type: b.header.object_type,
                    Revision: b.header.revision,
                    Size: core::mem::size_of::<NDIS_MINIPORT_OFFLOAD_BLOCK_LIST>() as u16,
                },
                NextBlock: ptr::null_mut(),
                DependentBlockList: ptr::null_mut(),
                Status: b.status.0 as i32,
                NdisReserved: [ptr::null_mut(); 2],
                MiniportOffloadContext: ptr::null_mut(),
                NdisOffloadHandle: b.ndis_offload_handle as NDIS_HANDLE,
                ProtocolReserved: [ptr::null_mut(); 2],
                MiniportReserved: [ptr::null_mut(); 2],
                ImReserved: [ptr::null_mut(); 2],
                Scratch: [ptr::null_mut(); 2],
                SourceHandle: ptr::null_mut(),
                PortNumber: 0,
                NetBufferListChain: ptr::null_mut(),
            });
        let p = c.as_mut().map_or(ptr::null_mut(), |c| c as *mut _);
        // SAFETY: a block list on our stack or NULL (C-229), valid during the call.
        unsafe { NdisMOffloadEventIndicate(self.handle, p, code) }
    }

    fn indicate_status_ex(&mut self, i: &StatusIndication) {
        let mut buf = i.status_buffer.as_ref().map(to_c);
        let (sb, len) = match buf.as_mut() {
            Some(b) => (
                b as *mut NDIS_TCP_CONNECTION_OFFLOAD as PVOID,
                core::mem::size_of::<NDIS_TCP_CONNECTION_OFFLOAD>() as u32,
            ),
            None => (ptr::null_mut(), 0),
        };
        let mut s = NDIS_STATUS_INDICATION {
            Header: NDIS_OBJECT_HEADER {
                Type: 0x98, // NDIS_OBJECT_TYPE_STATUS_INDICATION
                Revision: 1,
                Size: core::mem::size_of::<NDIS_STATUS_INDICATION>() as u16,
            },
            SourceHandle: self.handle,
            PortNumber: 0,
            StatusCode: i.status_code.0 as i32,
            Flags: 0,
            DestinationHandle: ptr::null_mut(),
            RequestId: ptr::null_mut(),
            StatusBuffer: sb,
            StatusBufferSize: len,
            Guid: [0; 16],
            NdisReserved: [ptr::null_mut(); 4],
        };
        // SAFETY: indication and its buffer live across the call.
        unsafe { NdisMIndicateStatusEx(self.handle, &mut s) }
    }

    fn miniport_handle(&self) -> NdisHandle {
        self.handle as NdisHandle
    }
}

/// # Safety
/// `ctx` is the `WindowsAdapter` registered as MiniportAdapterContext.
unsafe fn adapter<'a>(ctx: NDIS_HANDLE) -> Option<&'a mut WindowsAdapter> {
    ctx.cast::<WindowsAdapter>().as_mut()
}

unsafe fn dispatch(ctx: NDIS_HANDLE, kind: OpKind, bl: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST) {
    let Some(a) = adapter(ctx) else { return };
    let (Some(m), Some(g)) = (a.miniport.as_mut(), a.ndis.generic) else {
        return;
    };
    let handler = match kind {
        OpKind::Initiate => g.initiate_offload_handler,
        OpKind::Terminate => g.terminate_offload_handler,
        OpKind::Update => g.update_offload_handler,
        OpKind::Invalidate => g.invalidate_offload_handler,
        OpKind::Query => g.query_offload_handler,
    };
    let (tree, c_blocks) = match read_tree(kind, bl) {
        Ok(t) => t,
        // A tree the edge cannot read: hand the core a single-block tree that names no
        // object, so it completes (asynchronously) with FAILURE written by write_back.
        Err(_) => {
            let mut b = BlockList::new(chimney_abi::OffloadStateType::Neighbor);
            b.header.object_type = 0;
            (
                BlockTree {
                    blocks: alloc::vec![b],
                },
                alloc::vec![bl],
            )
        }
    };
    let root = BlockListRef::new(tree);
    a.ndis.in_flight.push(InFlight {
        kind,
        root: root.clone(),
        c_root: bl,
        c_blocks,
    });
    handler(m, root);
}

unsafe extern "system" fn t_initiate(c: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST) {
    dispatch(c, OpKind::Initiate, b)
}
unsafe extern "system" fn t_terminate(c: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST) {
    dispatch(c, OpKind::Terminate, b)
}
unsafe extern "system" fn t_update(c: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST) {
    dispatch(c, OpKind::Update, b)
}
unsafe extern "system" fn t_invalidate(c: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST) {
    dispatch(c, OpKind::Invalidate, b)
}
unsafe extern "system" fn t_query(c: NDIS_HANDLE, b: *mut NDIS_MINIPORT_OFFLOAD_BLOCK_LIST) {
    dispatch(c, OpKind::Query, b)
}

/// The C NBL chain as portable NBLs (ids = pointers; data is not copied).
unsafe fn portable(mut p: *mut NET_BUFFER_LIST) -> Vec<NetBufferList> {
    let mut v = Vec::new();
    while !p.is_null() {
        v.push(NetBufferList {
            id: p as u64,
            ..Default::default()
        });
        p = (*p).Next;
    }
    v
}

unsafe extern "system" fn t_send(c: NDIS_HANDLE, o: PVOID, n: *mut NET_BUFFER_LIST) -> NDIS_STATUS {
    match adapter(c) {
        Some(WindowsAdapter {
            ndis,
            miniport: Some(m),
        }) => match ndis.tcp {
            Some(t) => (t.tcp_offload_send_handler)(m, o as u64, portable(n)).0 as i32,
            None => NdisStatus::FAILURE.0 as i32,
        },
        _ => NdisStatus::FAILURE.0 as i32,
    }
}
unsafe extern "system" fn t_receive(
    c: NDIS_HANDLE,
    o: PVOID,
    n: *mut NET_BUFFER_LIST,
) -> NDIS_STATUS {
    match adapter(c) {
        Some(WindowsAdapter {
            ndis,
            miniport: Some(m),
        }) => match ndis.tcp {
            Some(t) => (t.tcp_offload_receive_handler)(m, o as u64, portable(n)).0 as i32,
            None => NdisStatus::FAILURE.0 as i32,
        },
        _ => NdisStatus::FAILURE.0 as i32,
    }
}
unsafe extern "system" fn t_forward(
    c: NDIS_HANDLE,
    o: PVOID,
    n: *mut NET_BUFFER_LIST,
) -> NDIS_STATUS {
    match adapter(c) {
        Some(WindowsAdapter {
            ndis,
            miniport: Some(m),
        }) => match ndis.tcp {
            Some(t) => (t.tcp_offload_forward_handler)(m, o as u64, portable(n)).0 as i32,
            None => NdisStatus::FAILURE.0 as i32,
        },
        _ => NdisStatus::FAILURE.0 as i32,
    }
}
unsafe extern "system" fn t_disconnect(
    c: NDIS_HANDLE,
    o: PVOID,
    n: *mut NET_BUFFER_LIST,
    flags: ULONG,
) -> NDIS_STATUS {
    match adapter(c) {
        Some(WindowsAdapter {
            ndis,
            miniport: Some(m),
        }) => match ndis.tcp {
            Some(t) => {
                let nbl = NetBufferList {
                    id: n as u64,
                    ..Default::default()
                };
                (t.tcp_offload_disconnect_handler)(m, o as u64, nbl, flags).0 as i32
            }
            None => NdisStatus::FAILURE.0 as i32,
        },
        _ => NdisStatus::FAILURE.0 as i32,
    }
}
unsafe extern "system" fn t_receive_return(c: NDIS_HANDLE, n: *mut NET_BUFFER_LIST) -> NDIS_STATUS {
    match adapter(c) {
        Some(WindowsAdapter {
            ndis,
            miniport: Some(m),
        }) => match ndis.tcp {
            Some(t) => (t.tcp_offload_receive_return_handler)(m, portable(n)).0 as i32,
            None => NdisStatus::SUCCESS.0 as i32,
        },
        _ => NdisStatus::SUCCESS.0 as i32,
    }
}

/// The DPC (MiniportInterruptDPC / a timer DPC): let the core finish what the device did.
///
/// # Safety
/// `ctx` is the MiniportAdapterContext; called under the adapter lock.
pub unsafe fn dpc(ctx: NDIS_HANDLE) {
    if let Some(WindowsAdapter {
        ndis,
        miniport: Some(m),
    }) = adapter(ctx)
    {
        let _ = m.service(ndis);
    }
}
