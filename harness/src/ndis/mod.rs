//! The NDIS model: the host side of the miniport, as NDIS and the TCP/IP stack would be.
//!
//! - The miniport registers its handler tables in `MiniportSetOptions`; [`NdisModel`]
//!   stores them and every host call goes through them (no side doors): [`Ndis::initiate`]
//!   calls `generic.initiate_offload_handler`, [`Ndis::send`] calls
//!   `tcp.tcp_offload_send_handler`, and so on.
//! - The miniport calls back through [`NdisMiniportServices`] (completions, status
//!   indications) and through the `NDIS_TCP_OFFLOAD_EVENT_HANDLERS` table the model hands out
//!   from `NdisMGetOffloadHandlers`. Every callback is appended to [`NdisModel::log`] in
//!   the order it happened.
//! - C-034: a completed tree is poisoned inside the completion callback, after the model
//!   copied the results out; any later access by the miniport is counted and panics in
//!   debug builds. [`Ndis::wait_completion`] also checks that the miniport kept no copy of
//!   the root pointer.

use std::sync::Arc;
use std::time::Duration;

use chimney_abi::queues::{CONTROL_RX, CONTROL_TX};
use chimney_abi::{InitiateBlock, OffloadParameters, QueriedState, Tree};
use chimney_miniport::miniport::OpKind;
use chimney_miniport::ndis::blocklist::{BlockList, BlockListRef, BlockTree};
use chimney_miniport::ndis::chars::{
    MiniportAdapterOffloadAttributes, NdisMiniportServices, OidRequest, OidResult,
    ProviderChimneyOffloadGenericCharacteristics, ProviderChimneyOffloadTcpCharacteristics,
    StatusIndication, TcpOffloadEventHandlers,
};
use chimney_miniport::ndis::nbl::NetBufferList;
use chimney_miniport::ndis::{
    chimney_type, oid, NdisHandle, NdisObjectHeader, NdisStatus, NDIS_OBJECT_TCP_OFFLOAD_REVISION_1,
};
use chimney_miniport::{ChimneyMiniport, MiniportConfig};

use crate::error::{HarnessError, Result};
use crate::frontend::Vmm;
use crate::vmm_platform::VmmPlatform;

/// The miniport as the harness runs it: over the in-process VMM, called by [`NdisModel`].
pub type Adapter = ChimneyMiniport<Arc<VmmPlatform>, NdisModel>;

/// The `NdisMiniportHandle` the model gives the adapter.
pub const MINIPORT_HANDLE: NdisHandle = 0x4E44_4953; // "NDIS"

/// One callback from the miniport, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback {
    /// `NdisMXxxOffloadComplete`: the operation, the root (by its position in
    /// [`NdisModel::roots`]) and the tree as it was when completed.
    OffloadComplete {
        kind: OpKind,
        root: usize,
        tree: BlockTree,
    },
    /// `NdisTcpOffloadEventHandler(NdisOffloadHandle, EventType, EventSpecificInformation)`.
    TcpEvent {
        ndis_offload_handle: NdisHandle,
        event_type: u32,
        info: u32,
    },
    /// `NdisMOffloadEventIndicate`.
    OffloadEvent {
        code: u32,
        block_list: Option<BlockTree>,
    },
    /// `NdisMIndicateStatusEx`.
    Status(StatusIndication),
    /// `NdisTcpOffloadReceiveHandler(NdisOffloadHandle, NBL, Status, &BytesConsumed)`: what
    /// the miniport indicated and how the model answered (C-170, C-171).
    ReceiveIndication {
        ndis_offload_handle: NdisHandle,
        nbl_id: u64,
        /// NET_BUFFERs on the indicated NBL (C-170: one NBL; the model takes all its NBs).
        net_buffers: usize,
        /// The `Status` argument (C-170: SUCCESS, never RESOURCES).
        status: NdisStatus,
        /// The bytes the host took (all of them when it answered SUCCESS).
        taken: Vec<u8>,
        /// All bytes indicated.
        indicated: usize,
        /// The model's return value.
        answer: NdisStatus,
    },
    SendComplete(Vec<NetBufferList>),
    ReceiveComplete(Vec<NetBufferList>),
    DisconnectComplete(NetBufferList),
    ForwardComplete(Vec<NetBufferList>),
}

/// How the model's `NdisTcpOffloadReceiveHandler` answers an indication (the TCP/IP
/// stack's choice, §3.7: it may take all, some or none of the data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndicationPolicy {
    /// OFFLOAD_DATA_NOT_ACCEPTED, BytesConsumed 0: the miniport keeps the data for the next
    /// posted buffer (C-171, C-172). The default: data reaches the host by posting.
    #[default]
    Refuse,
    /// SUCCESS: the host owns the NBL until it returns it with
    /// `MiniportTcpOffloadReceiveReturn` ([`Ndis::return_indications`]).
    Accept,
    /// OFFLOAD_DATA_PARTIALLY_ACCEPTED with BytesConsumed = at most this many bytes of
    /// each indication (the rest stays with the miniport; C-171). 0 acts as Refuse.
    Partial(u32),
}

/// How the model misbehaves on purpose (tests of the miniport's checks).
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelFaults {
    /// Header returned by `NdisMGetOffloadHandlers` instead of the correct one (C-004).
    pub event_handlers_header: Option<NdisObjectHeader>,
    /// `NdisMGetOffloadHandlers` fails with this status (C-003).
    pub get_offload_handlers: Option<NdisStatus>,
}

/// NDIS + host stack side: what the miniport registered and what it called back.
#[derive(Default)]
pub struct NdisModel {
    pub generic: Option<ProviderChimneyOffloadGenericCharacteristics<Adapter>>,
    pub tcp: Option<ProviderChimneyOffloadTcpCharacteristics<Adapter>>,
    pub attributes: Option<MiniportAdapterOffloadAttributes>,
    /// Calls of `NdisMGetOffloadHandlers`, by chimney type.
    pub get_offload_handlers_calls: Vec<u32>,
    pub log: Vec<Callback>,
    /// Every root handed to the miniport, in order (index = `Callback::OffloadComplete::root`).
    pub roots: Vec<BlockListRef>,
    /// Completion seen for a root that the model never handed out (must stay 0).
    pub foreign_completions: u32,
    /// Completions seen more than once for the same root (must stay 0).
    pub double_completions: u32,
    completed: Vec<bool>,
    pub faults: ModelFaults,
    /// How receive indications are answered.
    pub indications: IndicationPolicy,
    /// Indicated NBLs the host accepted (SUCCESS) and has not yet returned (C-171).
    pub held: Vec<NetBufferList>,
    /// The HRD the host writes back into a NeighborReachabilityQuery's block (C-226; 0 =
    /// its NCE is stale, C-227).
    pub reachability_hrd: u32,
    /// Rules the miniport broke that only the host side can see: (C-item, what was seen).
    /// The scenario runner drains them into its conformance monitor.
    pub host_checks: Vec<(u16, String)>,
}

impl std::fmt::Debug for NdisModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NdisModel")
            .field("registered_generic", &self.generic.is_some())
            .field("registered_tcp", &self.tcp.is_some())
            .field("callbacks", &self.log.len())
            .finish()
    }
}

impl NdisModel {
    fn on_complete(&mut self, kind: OpKind, root: BlockListRef) {
        match self.roots.iter().position(|r| r.same_root(&root)) {
            Some(i) => {
                if std::mem::replace(&mut self.completed[i], true) {
                    self.double_completions += 1;
                }
                // The host reads its results, then the tree is dead for the miniport.
                let tree = root.take_and_poison();
                self.log.push(Callback::OffloadComplete {
                    kind,
                    root: i,
                    tree,
                });
            }
            None => self.foreign_completions += 1,
        }
    }

    /// C-225: a NeighborReachabilityQuery's block list is one Neighbor block, no
    /// dependents, Status SUCCESS, followed by CONST, CACHED and DELEGATED.
    fn check_reachability_query(&mut self, t: &BlockTree) {
        let b = match t.blocks.as_slice() {
            [b] => b,
            other => {
                self.host_checks.push((
                    225,
                    format!("reachability query with {} blocks, expected 1", other.len()),
                ));
                return;
            }
        };
        let complete = matches!(
            b.state,
            Some(chimney_abi::QueriedState::Neighbor {
                konst: Some(_),
                cached: Some(_),
                delegated: Some(_),
            })
        );
        if b.state_type() != Some(chimney_abi::OffloadStateType::Neighbor)
            || b.dependent_block_list.is_some()
            || b.next_block.is_some()
            || b.status != NdisStatus::SUCCESS
            || !complete
        {
            self.host_checks.push((
                225,
                format!(
                    "reachability query block: type {:?}, dependent {:?}, next {:?}, status {}, \
                     const+cached+delegated present {complete}",
                    b.state_type(),
                    b.dependent_block_list,
                    b.next_block,
                    b.status
                ),
            ));
        }
    }

    fn ev_tcp(&mut self, h: NdisHandle, event_type: u32, info: u32) {
        self.log.push(Callback::TcpEvent {
            ndis_offload_handle: h,
            event_type,
            info,
        });
    }
    fn ev_receive(
        &mut self,
        h: NdisHandle,
        nbl: &mut NetBufferList,
        status: NdisStatus,
        consumed: &mut u32,
    ) -> NdisStatus {
        let data: Vec<u8> = nbl.net_buffers.iter().flat_map(|nb| nb.data()).collect();
        let (answer, take) = match self.indications {
            IndicationPolicy::Refuse | IndicationPolicy::Partial(0) => {
                (NdisStatus::OFFLOAD_DATA_NOT_ACCEPTED, 0)
            }
            IndicationPolicy::Accept => (NdisStatus::SUCCESS, data.len()),
            IndicationPolicy::Partial(n) if n as usize >= data.len() => {
                (NdisStatus::SUCCESS, data.len())
            }
            IndicationPolicy::Partial(n) => {
                (NdisStatus::OFFLOAD_DATA_PARTIALLY_ACCEPTED, n as usize)
            }
        };
        *consumed = if answer == NdisStatus::SUCCESS {
            0
        } else {
            take as u32
        };
        if answer == NdisStatus::SUCCESS {
            // The host owns the NBL now; it copies the data and returns the NBL later.
            self.held.push(nbl.clone());
        }
        self.log.push(Callback::ReceiveIndication {
            ndis_offload_handle: h,
            nbl_id: nbl.id,
            net_buffers: nbl.net_buffers.len(),
            status,
            taken: data[..take].to_vec(),
            indicated: data.len(),
            answer,
        });
        answer
    }
    fn ev_send_complete(&mut self, _h: NdisHandle, n: Vec<NetBufferList>) {
        self.log.push(Callback::SendComplete(n));
    }
    fn ev_receive_complete(&mut self, _h: NdisHandle, n: Vec<NetBufferList>) {
        self.log.push(Callback::ReceiveComplete(n));
    }
    fn ev_disconnect_complete(&mut self, _h: NdisHandle, n: NetBufferList) {
        self.log.push(Callback::DisconnectComplete(n));
    }
    fn ev_forward_complete(&mut self, _h: NdisHandle, n: Vec<NetBufferList>) {
        self.log.push(Callback::ForwardComplete(n));
    }
}

impl NdisMiniportServices<Adapter> for NdisModel {
    fn set_optional_handlers_generic(
        &mut self,
        chars: ProviderChimneyOffloadGenericCharacteristics<Adapter>,
    ) -> NdisStatus {
        self.generic = Some(chars);
        NdisStatus::SUCCESS
    }
    fn set_optional_handlers_tcp(
        &mut self,
        chars: ProviderChimneyOffloadTcpCharacteristics<Adapter>,
    ) -> NdisStatus {
        if chars.offload_type != chimney_type::TCP {
            return NdisStatus::NOT_SUPPORTED;
        }
        self.tcp = Some(chars);
        NdisStatus::SUCCESS
    }
    fn set_miniport_attributes(&mut self, attrs: &MiniportAdapterOffloadAttributes) -> NdisStatus {
        self.attributes = Some(*attrs);
        NdisStatus::SUCCESS
    }
    fn get_offload_handlers(
        &mut self,
        chimney: u32,
    ) -> std::result::Result<TcpOffloadEventHandlers<Self>, NdisStatus> {
        self.get_offload_handlers_calls.push(chimney);
        if let Some(s) = self.faults.get_offload_handlers {
            return Err(s);
        }
        if chimney != chimney_type::TCP {
            return Err(NdisStatus::NOT_SUPPORTED);
        }
        Ok(TcpOffloadEventHandlers {
            header: self
                .faults
                .event_handlers_header
                .unwrap_or(NdisObjectHeader {
                    object_type: chimney_type::TCP as u8,
                    revision: NDIS_OBJECT_TCP_OFFLOAD_REVISION_1,
                    size: chimney_miniport::miniport::SIZEOF_TCP_OFFLOAD_EVENT_HANDLERS,
                }),
            event_handler: NdisModel::ev_tcp,
            receive_handler: NdisModel::ev_receive,
            send_complete: NdisModel::ev_send_complete,
            receive_complete: NdisModel::ev_receive_complete,
            disconnect_complete: NdisModel::ev_disconnect_complete,
            forward_complete: NdisModel::ev_forward_complete,
        })
    }
    fn initiate_offload_complete(&mut self, root: BlockListRef) {
        self.on_complete(OpKind::Initiate, root)
    }
    fn terminate_offload_complete(&mut self, root: BlockListRef) {
        self.on_complete(OpKind::Terminate, root)
    }
    fn update_offload_complete(&mut self, root: BlockListRef) {
        self.on_complete(OpKind::Update, root)
    }
    fn invalidate_offload_complete(&mut self, root: BlockListRef) {
        self.on_complete(OpKind::Invalidate, root)
    }
    fn query_offload_state_complete(&mut self, root: BlockListRef) {
        self.on_complete(OpKind::Query, root)
    }
    fn offload_event_indicate(&mut self, block_list: Option<BlockListRef>, code: u32) {
        // The block list is the miniport's (it reads the host's answer after the call):
        // the host writes into it and keeps a copy, nothing is poisoned.
        let tree = block_list.map(|b| {
            if code == chimney_abi::event::offload_event::NEIGHBOR_REACHABILITY_QUERY {
                let mut t = b.write();
                self.check_reachability_query(&t);
                // C-226/C-227: the host's HRD goes into the block's CACHED structure.
                if let Some(chimney_abi::QueriedState::Neighbor {
                    cached: Some(c), ..
                }) = t.blocks.first_mut().and_then(|b| b.state.as_mut())
                {
                    c.host_reachability_delta = self.reachability_hrd;
                }
            }
            b.read().clone()
        });
        self.log.push(Callback::OffloadEvent {
            code,
            block_list: tree,
        });
    }
    fn indicate_status_ex(&mut self, indication: &StatusIndication) {
        self.log.push(Callback::Status(indication.clone()));
    }
    fn miniport_handle(&self) -> NdisHandle {
        MINIPORT_HANDLE
    }
}

/// The NDIS model and the adapter it drives.
pub struct Ndis {
    pub model: NdisModel,
    pub adapter: Adapter,
}

impl std::fmt::Debug for Ndis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ndis")
            .field("model", &self.model)
            .field("adapter", &self.adapter)
            .finish()
    }
}

/// A finished state operation as the host sees it.
#[derive(Debug, Clone)]
pub struct Completed {
    pub kind: OpKind,
    /// The tree as the miniport completed it (statuses, contexts, returned state).
    pub tree: BlockTree,
}

impl Ndis {
    /// `MiniportSetOptions` then `MiniportInitializeEx` over control queues of
    /// `queue_size` entries on `vmm`, with `model` (faults, if any) as NDIS.
    pub fn initialize(vmm: &mut Vmm, queue_size: u16, mut model: NdisModel) -> Result<Ndis> {
        let s = Adapter::set_options(&mut model);
        if s != NdisStatus::SUCCESS {
            return Err(HarnessError::Protocol(format!("MiniportSetOptions: {s}")));
        }
        let rx = vmm.create_queue(CONTROL_RX, queue_size)?;
        let tx = vmm.create_queue(CONTROL_TX, queue_size)?;
        let platform = vmm.platform().clone();
        let adapter = Adapter::initialize(&mut model, platform, rx, tx, MiniportConfig::default())
            .map_err(|e| HarnessError::Protocol(format!("MiniportInitializeEx: {e}")))?;
        Ok(Ndis { model, adapter })
    }

    /// Initialize, then set `OID_TCP_CONNECTION_OFFLOAD_PARAMETERS` (C-011) as the stack does.
    pub fn start(vmm: &mut Vmm, params: &OffloadParameters) -> Result<Ndis> {
        let mut ndis = Ndis::initialize(vmm, 256, NdisModel::default())?;
        let r = ndis.oid(&OidRequest::Set {
            oid: oid::TCP_CONNECTION_OFFLOAD_PARAMETERS,
            buffer: parameters_bytes(params),
        });
        if r.status != NdisStatus::SUCCESS {
            return Err(HarnessError::Protocol(format!(
                "OID_TCP_CONNECTION_OFFLOAD_PARAMETERS set: {}",
                r.status
            )));
        }
        Ok(ndis)
    }

    fn generic(&self) -> Result<ProviderChimneyOffloadGenericCharacteristics<Adapter>> {
        self.model
            .generic
            .ok_or_else(|| HarnessError::Protocol("no generic chimney handlers registered".into()))
    }
    fn tcp(&self) -> Result<ProviderChimneyOffloadTcpCharacteristics<Adapter>> {
        self.model
            .tcp
            .ok_or_else(|| HarnessError::Protocol("no TCP chimney handlers registered".into()))
    }

    /// Hand `tree` to the miniport through the registered handler of `kind`; returns the
    /// root index to wait on. The handler only records it (C-033).
    pub fn submit(&mut self, kind: OpKind, tree: BlockTree) -> Result<usize> {
        let g = self.generic()?;
        let root = BlockListRef::new(tree);
        self.model.roots.push(root.clone());
        self.model.completed.push(false);
        let handler = match kind {
            OpKind::Initiate => g.initiate_offload_handler,
            OpKind::Query => g.query_offload_handler,
            OpKind::Update => g.update_offload_handler,
            OpKind::Invalidate => g.invalidate_offload_handler,
            OpKind::Terminate => g.terminate_offload_handler,
        };
        handler(&mut self.adapter, root);
        Ok(self.model.roots.len() - 1)
    }

    /// Has root `i` been completed?
    pub fn is_completed(&self, i: usize) -> bool {
        self.model.completed.get(i).copied().unwrap_or(false)
    }

    /// Run the miniport's DPC until root `i` completes; return what the host got back.
    /// Checks C-034 on the way: the miniport keeps no copy of the root and never touched
    /// the tree after completing it.
    pub fn wait_completion(&mut self, i: usize) -> Result<Completed> {
        while !self.is_completed(i) {
            let progressed = self
                .adapter
                .poll_device(&mut self.model, Duration::from_secs(20))
                .map_err(|e| HarnessError::Protocol(format!("miniport DPC: {e}")))?;
            if !progressed && !self.is_completed(i) && self.adapter.outstanding() == 0 {
                return Err(HarnessError::Protocol(format!(
                    "root {i} was never completed and the miniport has nothing outstanding"
                )));
            }
        }
        let root = &self.model.roots[i];
        if root.violations() != 0 || root.references() != 1 {
            return Err(HarnessError::Protocol(format!(
                "C-034: after completing root {i} the miniport touched it {} times and holds {} \
                 extra references (expected 0 and 0)",
                root.violations(),
                root.references() - 1
            )));
        }
        self.model
            .log
            .iter()
            .rev()
            .find_map(|c| match c {
                Callback::OffloadComplete { kind, root, tree } if *root == i => Some(Completed {
                    kind: *kind,
                    tree: tree.clone(),
                }),
                _ => None,
            })
            .ok_or_else(|| HarnessError::Protocol(format!("no completion logged for root {i}")))
    }

    /// Submit and wait.
    pub fn call(&mut self, kind: OpKind, tree: BlockTree) -> Result<Completed> {
        let i = self.submit(kind, tree)?;
        self.wait_completion(i)
    }

    /// `NdisOffloadTcpSend` → the registered send handler (must return PENDING).
    pub fn send(&mut self, ctx: u64, nbls: Vec<NetBufferList>) -> Result<NdisStatus> {
        Ok((self.tcp()?.tcp_offload_send_handler)(
            &mut self.adapter,
            ctx,
            nbls,
        ))
    }
    /// `NdisOffloadTcpReceive` (post receive buffers).
    pub fn receive(&mut self, ctx: u64, nbls: Vec<NetBufferList>) -> Result<NdisStatus> {
        Ok((self.tcp()?.tcp_offload_receive_handler)(
            &mut self.adapter,
            ctx,
            nbls,
        ))
    }
    /// `NdisOffloadTcpDisconnect`.
    pub fn disconnect(&mut self, ctx: u64, nbl: NetBufferList, flags: u32) -> Result<NdisStatus> {
        Ok((self.tcp()?.tcp_offload_disconnect_handler)(
            &mut self.adapter,
            ctx,
            nbl,
            flags,
        ))
    }
    /// `NdisOffloadTcpForward`.
    pub fn forward(&mut self, ctx: u64, nbls: Vec<NetBufferList>) -> Result<NdisStatus> {
        Ok((self.tcp()?.tcp_offload_forward_handler)(
            &mut self.adapter,
            ctx,
            nbls,
        ))
    }
    /// `NdisOffloadTcpReceiveReturn`.
    pub fn receive_return(&mut self, nbls: Vec<NetBufferList>) -> Result<NdisStatus> {
        Ok((self.tcp()?.tcp_offload_receive_return_handler)(
            &mut self.adapter,
            nbls,
        ))
    }

    /// `NdisOffloadTcpReceiveReturn` of every indicated NBL the host holds, in one chain
    /// (C-175: the chain may mix several indications). Returns the handler's status and
    /// how many NBLs went back.
    pub fn return_indications(&mut self) -> Result<(NdisStatus, usize)> {
        let held = std::mem::take(&mut self.model.held);
        if held.is_empty() {
            return Ok((NdisStatus::SUCCESS, 0));
        }
        let n = held.len();
        Ok((self.receive_return(held)?, n))
    }

    /// An OID request to the miniport.
    pub fn oid(&mut self, req: &OidRequest) -> OidResult {
        self.adapter.oid_request(req)
    }

    /// Run the DPC until the log has grown by `n` callbacks or `timeout` passes quietly.
    pub fn pump(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let target = self.model.log.len() + n;
        while self.model.log.len() < target {
            let progressed = self
                .adapter
                .poll_device(&mut self.model, timeout)
                .map_err(|e| HarnessError::Protocol(format!("miniport DPC: {e}")))?;
            if !progressed {
                return Err(HarnessError::Protocol(format!(
                    "expected {n} more callbacks, {} arrived",
                    n + self.model.log.len() - target
                )));
            }
        }
        Ok(())
    }
}

/// `NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS` as the OID buffer (x64 layout = ring layout).
pub fn parameters_bytes(p: &OffloadParameters) -> Vec<u8> {
    let mut w = Vec::new();
    p.emit(&mut w);
    w
}

/// The host's form of an initiate tree from a chimney-abi one (e.g. the fixtures of
/// [`crate::objects`]): new offloads get `*MiniportOffloadContext` = 0 and their complete
/// state after the block; `ndis_offload_handle(i)` gives block i's NdisOffloadHandle.
pub fn initiate_blocks(
    tree: &Tree<InitiateBlock>,
    ndis_offload_handle: impl Fn(usize) -> NdisHandle,
) -> BlockTree {
    BlockTree {
        blocks: tree
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut bl = BlockList::new(b.state_type);
                bl.next_block = b.next.map(|n| n as usize);
                bl.dependent_block_list = b.dependent.map(|n| n as usize);
                bl.ndis_offload_handle = ndis_offload_handle(i);
                match &b.body {
                    InitiateBlock::Placeholder => bl.miniport_offload_context = None,
                    InitiateBlock::Linker(_) => bl.miniport_offload_context = Some(u64::MAX),
                    InitiateBlock::New(s) => {
                        bl.miniport_offload_context = Some(0);
                        bl.state = Some(QueriedState::select(s.state_type(), s));
                    }
                }
                bl
            })
            .collect(),
    }
}

/// A tree of the same shape as `like` whose blocks reference the objects in `contexts`
/// (the `MiniportOffloadContext` values the host got back), Type and following state
/// from `per_block(i, block)`.
pub fn reference_blocks(
    like: &BlockTree,
    contexts: &[Option<u64>],
    mut per_block: impl FnMut(usize, &mut BlockList),
) -> BlockTree {
    BlockTree {
        blocks: like
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut bl = BlockList::new(
                    b.state_type()
                        .unwrap_or(chimney_abi::OffloadStateType::Neighbor),
                );
                bl.next_block = b.next_block;
                bl.dependent_block_list = b.dependent_block_list;
                bl.ndis_offload_handle = b.ndis_offload_handle;
                bl.miniport_offload_context = contexts.get(i).copied().flatten();
                per_block(i, &mut bl);
                bl
            })
            .collect(),
    }
}
