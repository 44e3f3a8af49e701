//! The chimney miniport (digest §3, §4, §5): lifecycle, the handler tables it registers,
//! the five state-manipulation handlers turned into control-ring requests, completions and
//! events turned into the host's callbacks, OIDs, and the TCP data handlers.
//!
//! Shape (STYLE.md "protocol logic without I/O" as far as a driver can): handlers only
//! record their argument and return (C-033); [`ChimneyMiniport::service`] — the DPC — does
//! the ring work and calls NDIS back. The host never sees a completion from inside a
//! handler call: every completion is asynchronous.

mod contexts;
#[cfg(test)]
mod receive_tests;
mod translate;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use chimney_abi::event::{offload_event, tcp_event};
use chimney_abi::{
    Completion, CompletionBody, EventClass, NdisStatus, Negotiate, NegotiateResult,
    OffloadParameters, OffloadStateType, QueriedState, Request, RequestBody, TcpConnectionOffload,
    ABI_MIN_VERSION, ABI_VERSION,
};

use contexts::Contexts;
pub use contexts::ObjState;
pub use translate::{OpKind, Refusal};

use crate::control::{ControlChannel, ControlConfig, ControlError};
use crate::data::{DataChannel, DataConfig, DataError};
use crate::ndis::blocklist::{BlockList, BlockListRef, BlockTree};
use crate::ndis::chars::{
    MiniportAdapterOffloadAttributes, NdisMiniportServices, OidRequest, OidResult,
    ProviderChimneyOffloadGenericCharacteristics, ProviderChimneyOffloadTcpCharacteristics,
    StatusIndication, TcpOffloadEventHandlers,
};
use crate::ndis::nbl::{NetBuffer, NetBufferList};
use crate::ndis::{
    chimney_type, object_type, oid, NdisObjectHeader, NDIS_OBJECT_TCP_OFFLOAD_REVISION_1,
};
use crate::platform::Platform;
use crate::virtqueue::Virtqueue;
use alloc::collections::BTreeMap;
use chimney_abi::data_io::{data_pair_for, DataRecord, DataRequest, DataRxKind};
use chimney_abi::DeviceHandle;

/// NDIS status codes the OID path needs beyond the chimney list (ndis.h values).
pub mod status {
    use chimney_abi::NdisStatus;
    pub const INVALID_LENGTH: NdisStatus = NdisStatus(0xC001_0014);
    pub const INVALID_DATA: NdisStatus = NdisStatus(0xC001_0015);
    pub const BUFFER_TOO_SHORT: NdisStatus = NdisStatus(0xC001_0016);
    pub const INVALID_OID: NdisStatus = NdisStatus(0xC001_0017);
}

/// `sizeof(TCP_OFFLOAD_STATS)` and `sizeof(IP_OFFLOAD_STATS)` (digest §3.11, x64).
pub const TCP_OFFLOAD_STATS_LEN: usize = 0x28;
pub const IP_OFFLOAD_STATS_LEN: usize = 0x40;
/// `sizeof(NDIS_TCP_OFFLOAD_EVENT_HANDLERS)` on x64: header + six pointers.
pub const SIZEOF_TCP_OFFLOAD_EVENT_HANDLERS: u16 = 8 + 6 * 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MiniportError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("NEGOTIATE refused: {0}")]
    Negotiate(NdisStatus),
    #[error("NEGOTIATE completion had no negotiate body")]
    NegotiateBody,
    #[error("NdisMGetOffloadHandlers failed: {0}")]
    GetOffloadHandlers(NdisStatus),
    #[error(
        "NDIS_TCP_OFFLOAD_EVENT_HANDLERS header {field} is {seen}, expected {expected} (C-004)"
    )]
    EventHandlersHeader {
        field: &'static str,
        seen: u32,
        expected: u32,
    },
    #[error("NdisMSetMiniportAttributes failed: {0}")]
    SetAttributes(NdisStatus),
    #[error("the adapter is halted")]
    Halted,
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Default [`MiniportConfig::held_receive_limit`]: a few windows' worth.
pub const DEFAULT_HELD_RECEIVE_LIMIT: usize = 256 << 10;

/// Initialization knobs.
#[derive(Debug, Clone, Copy)]
pub struct MiniportConfig {
    pub control: ControlConfig,
    /// Bound on one synchronous wait (initialize, OID set).
    pub timeout: Duration,
    /// Refused receive data (C-171, C-172) the miniport holds per connection before it
    /// stops handing indication buffers back to the device: past it the device's window
    /// closes instead of the miniport buffering without limit.
    pub held_receive_limit: usize,
}

impl Default for MiniportConfig {
    fn default() -> Self {
        Self {
            control: ControlConfig::default(),
            timeout: Duration::from_secs(20),
            held_receive_limit: DEFAULT_HELD_RECEIVE_LIMIT,
        }
    }
}

/// `MiniportPause` / `MiniportRestart` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

/// Counters of things the host did that the spec forbids (they got the status named in
/// the docs; the counters let tests see that the miniport noticed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostViolations {
    /// I/O or state operations naming a context this miniport never gave out / freed.
    pub unknown_context: u32,
    /// Terminate of an object already being terminated.
    pub double_terminate: u32,
    /// Receive-return of NBLs the miniport never indicated.
    pub unexpected_return: u32,
}

#[derive(Debug)]
struct Recorded {
    kind: OpKind,
    root: BlockListRef,
}

#[derive(Debug)]
struct Pending {
    kind: OpKind,
    root: BlockListRef,
    request_id: u64,
    plan: translate::Plan,
}

/// A TCP I/O completion waiting for the DPC.
#[derive(Debug)]
enum IoDone {
    Send(Vec<NetBufferList>),
    Receive(Vec<NetBufferList>),
    Disconnect(NetBufferList),
    Forward(Vec<NetBufferList>),
}

/// Which TCP I/O handler an NBL came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoKind {
    Send,
    Receive,
    Disconnect,
    Forward,
}

/// An NBL the miniport owns until it completes it.
#[derive(Debug)]
struct PendingNbl {
    kind: IoKind,
    ctx: u64,
    nbl: NetBufferList,
    /// Ring requests still outstanding for it (a large send is split).
    pieces_left: u32,
    status: NdisStatus,
    bytes: u32,
    /// Disconnect: user bytes that went out as a SEND first.
    disconnect_data: u32,
    /// Send data handed over at initiate (no ring request: acknowledged when a later send
    /// or a graceful disconnect completes, or accounted at upload; C-060).
    initial: bool,
}

/// Data-I/O state: the data pairs and the NBLs in flight on them.
#[derive(Debug, Default)]
struct DataIo {
    channels: Vec<DataChannel>,
    /// (pair index, request) not yet on a ring (no free slot).
    backlog: VecDeque<(usize, DataRequest)>,
    /// Ring request id → NBL key (None: a request whose answer needs no NBL).
    requests: BTreeMap<u64, Option<u64>>,
    nbls: BTreeMap<u64, PendingNbl>,
    next_id: u64,
    /// Indications the host kept (SUCCESS): indication id → (pair, handle).
    indicated: BTreeMap<u64, (usize, DeviceHandle)>,
    /// Data the host refused (C-171/C-172), per context: goes into the next posted buffers.
    leftovers: BTreeMap<u64, Vec<u8>>,
    /// BufferedData NBLs handed back at terminate, until the host returns them.
    returned_buffered: alloc::collections::BTreeSet<u64>,
    /// Contexts whose host completed a posting since it last refused data: what is still
    /// held for them may be indicated again (C-172 allows it once the host posted), else
    /// a host that posted once and then waits for indications would never get it.
    reindicate: alloc::collections::BTreeSet<u64>,
    /// Indications the miniport made from held data (no device indication behind them):
    /// the host's receive-return of these ends there.
    local_indicated: alloc::collections::BTreeSet<u64>,
    /// Per context: RECEIVE_RETURNs (pair, indication id) of refused indications held back
    /// while the context's refused data exceeds the limit; sent once it is at or below.
    withheld: BTreeMap<u64, VecDeque<(usize, DataRequest)>>,
}

impl DataIo {
    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }
}

/// Write `data` into a posted buffer's MDLs from its data start (after bytes the host
/// already placed, §2.12 TcpReceiveBytesTransferred); returns the bytes placed.
fn fill_nb(nb: &mut NetBuffer, skip: usize, data: &[u8]) -> usize {
    let room = nb.data_length.saturating_sub(skip);
    let n = data.len().min(room);
    let mut pos = nb.data_offset + skip;
    let mut src = 0;
    for m in nb.mdls.iter_mut() {
        if src == n {
            break;
        }
        if pos >= m.data.len() {
            pos -= m.data.len();
            continue;
        }
        let k = (m.data.len() - pos).min(n - src);
        m.data[pos..pos + k].copy_from_slice(&data[src..src + k]);
        src += k;
        pos = 0;
    }
    src
}

/// The adapter (`MiniportAdapterContext`).
pub struct ChimneyMiniport<P: Platform, H> {
    platform: P,
    control: ControlChannel,
    negotiated: NegotiateResult,
    attributes: MiniportAdapterOffloadAttributes,
    handlers: TcpOffloadEventHandlers<H>,
    parameters: Option<OffloadParameters>,
    contexts: Contexts,
    recorded: VecDeque<Recorded>,
    pending: Vec<Pending>,
    io_done: VecDeque<IoDone>,
    io: DataIo,
    run_state: RunState,
    violations: HostViolations,
    /// REACHABILITY_ANSWER requests in flight (C-226); their completions are dropped.
    answers: Vec<u64>,
    /// Answers the device refused or that could not be sent.
    pub reachability_answers_failed: u32,
    timeout: Duration,
    /// [`MiniportConfig::held_receive_limit`].
    held_limit: usize,
}

impl<P: Platform, H> core::fmt::Debug for ChimneyMiniport<P, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChimneyMiniport")
            .field("offloaded", &self.contexts.live_count())
            .field("recorded", &self.recorded.len())
            .field("pending", &self.pending.len())
            .field("run_state", &self.run_state)
            .finish()
    }
}

impl<P, H> ChimneyMiniport<P, H>
where
    P: Platform,
    H: NdisMiniportServices<ChimneyMiniport<P, H>>,
{
    /// `MiniportSetOptions`: register the generic (C-001) and TCP (C-002) chimney tables
    /// with `NdisSetOptionalHandlers`. Returns the first failure, else SUCCESS.
    pub fn set_options(ndis: &mut H) -> NdisStatus {
        let generic = ProviderChimneyOffloadGenericCharacteristics::<Self> {
            header: NdisObjectHeader {
                object_type: object_type::PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS,
                revision: 1,
                size: 8 + 8 + 5 * 8,
            },
            flags: 0,
            initiate_offload_handler: Self::initiate_offload,
            terminate_offload_handler: Self::terminate_offload,
            update_offload_handler: Self::update_offload,
            invalidate_offload_handler: Self::invalidate_offload,
            query_offload_handler: Self::query_offload,
        };
        let s = ndis.set_optional_handlers_generic(generic);
        if s != NdisStatus::SUCCESS {
            return s;
        }
        let tcp = ProviderChimneyOffloadTcpCharacteristics::<Self> {
            header: NdisObjectHeader {
                object_type: object_type::PROVIDER_CHIMNEY_OFFLOAD_CHARACTERISTICS,
                revision: 1,
                size: 8 + 8 + 5 * 8,
            },
            flags: 0,
            offload_type: chimney_type::TCP,
            tcp_offload_send_handler: Self::tcp_offload_send,
            tcp_offload_receive_handler: Self::tcp_offload_receive,
            tcp_offload_disconnect_handler: Self::tcp_offload_disconnect,
            tcp_offload_forward_handler: Self::tcp_offload_forward,
            tcp_offload_receive_return_handler: Self::tcp_offload_receive_return,
        };
        ndis.set_optional_handlers_tcp(tcp)
    }

    /// `MiniportInitializeEx`: take over the control queues, read version and capabilities
    /// in-band (NEGOTIATE), get the host's chimney entry points (C-003, C-004) and report
    /// the connection offload attributes (C-005..C-010).
    pub fn initialize(
        ndis: &mut H,
        platform: P,
        control_rx: Virtqueue,
        control_tx: Virtqueue,
        cfg: MiniportConfig,
    ) -> Result<Self, MiniportError> {
        let mut control = ControlChannel::new(&platform, control_rx, control_tx, cfg.control)?;
        let c = control.call(
            &platform,
            RequestBody::Negotiate(Negotiate {
                min_version: ABI_MIN_VERSION,
                max_version: ABI_VERSION,
            }),
            cfg.timeout,
        )?;
        if c.status != NdisStatus::SUCCESS {
            return Err(MiniportError::Negotiate(c.status));
        }
        let CompletionBody::Negotiate(negotiated) = c.body else {
            return Err(MiniportError::NegotiateBody);
        };
        // C-003: once per supported chimney type, only TCP; proceed only on SUCCESS.
        let handlers = ndis
            .get_offload_handlers(chimney_type::TCP)
            .map_err(MiniportError::GetOffloadHandlers)?;
        // C-004: check Type, Revision, Size before using the table.
        let h = handlers.header;
        for (field, seen, expected) in [
            ("Type", u32::from(h.object_type), chimney_type::TCP),
            (
                "Revision",
                u32::from(h.revision),
                u32::from(NDIS_OBJECT_TCP_OFFLOAD_REVISION_1),
            ),
        ] {
            if seen != expected {
                return Err(MiniportError::EventHandlersHeader {
                    field,
                    seen,
                    expected,
                });
            }
        }
        if h.size < SIZEOF_TCP_OFFLOAD_EVENT_HANDLERS {
            return Err(MiniportError::EventHandlersHeader {
                field: "Size",
                seen: u32::from(h.size),
                expected: u32::from(SIZEOF_TCP_OFFLOAD_EVENT_HANDLERS),
            });
        }
        let attributes = Self::attributes_from(&negotiated);
        let s = ndis.set_miniport_attributes(&attributes);
        if s != NdisStatus::SUCCESS {
            return Err(MiniportError::SetAttributes(s));
        }
        Ok(ChimneyMiniport {
            platform,
            control,
            negotiated,
            attributes,
            handlers,
            parameters: None,
            contexts: Contexts::default(),
            recorded: VecDeque::new(),
            pending: Vec::new(),
            io_done: VecDeque::new(),
            io: DataIo::default(),
            run_state: RunState::Running,
            violations: HostViolations::default(),
            answers: Vec::new(),
            reachability_answers_failed: 0,
            timeout: cfg.timeout,
            held_limit: cfg.held_receive_limit,
        })
    }

    /// C-005..C-010: current configuration and hardware capabilities. The device reports
    /// what it can do; no registry keyword disables anything here, so both are equal
    /// (C-006: the hardware form would include disabled capabilities). Capacity (C-009)
    /// is bounded by the device's TCP object limit.
    fn attributes_from(n: &NegotiateResult) -> MiniportAdapterOffloadAttributes {
        let mut caps: TcpConnectionOffload = n.capabilities;
        caps.tcp_connection_offload_capacity = caps.tcp_connection_offload_capacity.min(n.max_tcp);
        MiniportAdapterOffloadAttributes {
            header: NdisObjectHeader {
                object_type: object_type::MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES,
                revision: 1,
                size: 0x18,
            },
            default_tcp_connection_offload_configuration: caps,
            tcp_connection_offload_hardware_capabilities: caps,
        }
    }

    pub fn negotiated(&self) -> &NegotiateResult {
        &self.negotiated
    }
    pub fn attributes(&self) -> &MiniportAdapterOffloadAttributes {
        &self.attributes
    }
    pub fn parameters(&self) -> Option<&OffloadParameters> {
        self.parameters.as_ref()
    }
    pub fn run_state(&self) -> RunState {
        self.run_state
    }
    pub fn violations(&self) -> HostViolations {
        self.violations
    }
    /// Objects currently offloaded.
    pub fn offloaded(&self) -> usize {
        self.contexts.live_count()
    }
    /// State operations recorded or in flight.
    pub fn outstanding(&self) -> usize {
        self.recorded.len() + self.pending.len()
    }
    /// Receive-side state of TCP context `ctx`, for diagnostics: (refused bytes held for
    /// the next posting, postings at the device, indications the host still holds).
    pub fn receive_state(&self, ctx: u64) -> (Option<usize>, usize, usize) {
        let h = self.contexts.get(ctx).and_then(|c| c.device);
        (
            self.io.leftovers.get(&ctx).map(Vec::len),
            self.io
                .nbls
                .values()
                .filter(|p| p.ctx == ctx && p.kind == IoKind::Receive)
                .count(),
            self.io
                .indicated
                .values()
                .filter(|(_, dh)| Some(*dh) == h)
                .count(),
        )
    }

    /// The context state of `MiniportOffloadContext` `ctx` (None: unknown / terminated).
    pub fn object_state(&self, ctx: u64) -> Option<ObjState> {
        self.contexts.get(ctx).map(|c| c.state)
    }

    // ------------------------------------------------------------ generic handlers

    fn record(&mut self, kind: OpKind, root: BlockListRef) {
        self.recorded.push_back(Recorded { kind, root });
    }
    /// `MiniportInitiateOffload` (C-033): record and return.
    pub fn initiate_offload(&mut self, root: BlockListRef) {
        self.record(OpKind::Initiate, root);
    }
    /// `MiniportTerminateOffload`.
    pub fn terminate_offload(&mut self, root: BlockListRef) {
        self.record(OpKind::Terminate, root);
    }
    /// `MiniportUpdateOffload` (C-082).
    pub fn update_offload(&mut self, root: BlockListRef) {
        self.record(OpKind::Update, root);
    }
    /// `MiniportInvalidateOffload` (C-097).
    pub fn invalidate_offload(&mut self, root: BlockListRef) {
        self.record(OpKind::Invalidate, root);
    }
    /// `MiniportQueryOffload` (C-075).
    pub fn query_offload(&mut self, root: BlockListRef) {
        self.record(OpKind::Query, root);
    }

    // ------------------------------------------------------------ TCP handlers

    /// Attach the data queue pairs (pair `FIRST_DATA_PAIR + i` = `pairs[i]`, rx then tx),
    /// all the device has: connections are spread over them by `data_pair_for`.
    pub fn attach_data_pairs(
        &mut self,
        pairs: Vec<(Virtqueue, Virtqueue)>,
        cfg: DataConfig,
    ) -> Result<(), MiniportError> {
        for (rx, tx) in pairs {
            let ch = DataChannel::new(&self.platform, rx, tx, cfg)?;
            self.io.channels.push(ch);
        }
        Ok(())
    }

    /// Data pairs attached.
    pub fn data_pairs(&self) -> usize {
        self.io.channels.len()
    }

    /// Where I/O naming `ctx` goes: the connection's device handle, or the status the docs
    /// name for the object's state.
    fn io_target(&mut self, ctx: u64) -> Result<DeviceHandle, NdisStatus> {
        match self.contexts.get(ctx).copied() {
            None
            | Some(contexts::ObjCtx {
                state: ObjState::Reserved,
                ..
            }) => {
                // Unknown / terminated connection: the host broke C-069 / §3.5.2.
                self.violations.unknown_context += 1;
                Err(NdisStatus::INVALID_STATE)
            }
            Some(c) if c.layer != chimney_abi::Layer::Tcp => {
                self.violations.unknown_context += 1;
                Err(NdisStatus::INVALID_STATE)
            }
            // §3.5.4 / §3.5.10: I/O while an upload is under way.
            Some(contexts::ObjCtx {
                state: ObjState::Terminating,
                ..
            }) => Err(NdisStatus::UPLOAD_IN_PROGRESS),
            // No data pairs attached: this adapter has no data path.
            Some(_) if self.io.channels.is_empty() => Err(NdisStatus::NOT_SUPPORTED),
            Some(c) => c.device.ok_or(NdisStatus::INVALID_STATE),
        }
    }

    fn fail_all(nbls: &mut [NetBufferList], status: NdisStatus) {
        for n in nbls {
            n.status = status;
            n.info.tcp_offload_bytes_transferred = 0;
        }
    }

    fn pair_of(&self, h: DeviceHandle) -> usize {
        usize::from(data_pair_for(h, self.io.channels.len() as u16))
    }

    fn track(&mut self, kind: IoKind, ctx: u64, nbl: NetBufferList, pieces: u32) -> u64 {
        let key = self.io.id();
        self.io.nbls.insert(
            key,
            PendingNbl {
                kind,
                ctx,
                nbl,
                pieces_left: pieces,
                status: NdisStatus::SUCCESS,
                bytes: 0,
                disconnect_data: 0,
                initial: false,
            },
        );
        key
    }

    fn queue(&mut self, h: DeviceHandle, key: Option<u64>, make: impl FnOnce(u64) -> DataRequest) {
        let id = self.io.id();
        self.io.requests.insert(id, key);
        let pair = self.pair_of(h);
        self.io.backlog.push_back((pair, make(id)));
    }

    /// `MiniportTcpOffloadSend` (§3.6): always PENDING. Each NBL's data goes out as SEND
    /// records (split at the slot size), in order; the NBL completes when the device says
    /// every byte was acknowledged (C-143 in spirit: SUCCESS = sent and acked).
    pub fn tcp_offload_send(&mut self, ctx: u64, mut nbls: Vec<NetBufferList>) -> NdisStatus {
        let h = match self.io_target(ctx) {
            Ok(h) => h,
            Err(s) => {
                Self::fail_all(&mut nbls, s);
                self.io_done.push_back(IoDone::Send(nbls));
                return NdisStatus::PENDING;
            }
        };
        let max = self.io.channels.first().map_or(1, |c| c.max_data()).max(1);
        for nbl in nbls {
            let data: Vec<u8> = nbl.net_buffers.iter().flat_map(|nb| nb.data()).collect();
            if data.is_empty() {
                let mut nbl = nbl;
                nbl.status = NdisStatus::SUCCESS;
                nbl.info.tcp_offload_bytes_transferred = 0;
                self.io_done.push_back(IoDone::Send(alloc::vec![nbl]));
                continue;
            }
            let pieces = data.len().div_ceil(max) as u32;
            let key = self.track(IoKind::Send, ctx, nbl, pieces);
            for chunk in data.chunks(max) {
                let chunk = chunk.to_vec();
                self.queue(h, Some(key), |request_id| DataRequest::Send {
                    handle: h,
                    request_id,
                    data: chunk,
                });
            }
        }
        NdisStatus::PENDING
    }

    /// `MiniportTcpOffloadReceive` (§3.7.1): always PENDING; every request completed
    /// (C-166). Data the host refused earlier fills the buffer first (C-172).
    pub fn tcp_offload_receive(&mut self, ctx: u64, mut nbls: Vec<NetBufferList>) -> NdisStatus {
        let h = match self.io_target(ctx) {
            Ok(h) => h,
            Err(s) => {
                Self::fail_all(&mut nbls, s);
                self.io_done.push_back(IoDone::Receive(nbls));
                return NdisStatus::PENDING;
            }
        };
        for mut nbl in nbls {
            let skip = nbl.info.tcp_receive_bytes_transferred as usize;
            let capacity = nbl
                .net_buffers
                .first()
                .map_or(0, |nb| nb.data_length.saturating_sub(skip));
            // Refused data is served here (earlier postings already took their share
            // when it was refused, see `serve_leftovers`).
            let left = self.io.leftovers.remove(&ctx).unwrap_or_default();
            if !left.is_empty() || capacity == 0 {
                // Served here: from the refused data, or a zero-byte posting that only
                // re-enables indications (C-172).
                let n = match nbl.net_buffers.first_mut() {
                    Some(nb) => fill_nb(nb, skip, &left),
                    None => 0,
                };
                if n < left.len() {
                    self.io.leftovers.insert(ctx, left[n..].to_vec());
                }
                nbl.status = NdisStatus::SUCCESS;
                nbl.info.tcp_offload_bytes_transferred = n as u32;
                if let Some(nb) = nbl.net_buffers.first_mut() {
                    nb.advance_data_start(skip + n);
                }
                self.io_done.push_back(IoDone::Receive(alloc::vec![nbl]));
                self.io.reindicate.insert(ctx);
                continue;
            }
            let capacity = capacity.min(chimney_abi::data_io::MAX_RECEIVE_BUFFER as usize) as u32;
            let key = self.track(IoKind::Receive, ctx, nbl, 1);
            self.queue(h, Some(key), |request_id| DataRequest::PostReceive {
                handle: h,
                request_id,
                capacity,
            });
        }
        NdisStatus::PENDING
    }

    /// `MiniportTcpOffloadDisconnect` (C-180): PENDING, completion returns only this NBL.
    /// Data in the disconnect NB goes out as a SEND before the DISCONNECT (C-184).
    pub fn tcp_offload_disconnect(
        &mut self,
        ctx: u64,
        mut nbl: NetBufferList,
        flags: u32,
    ) -> NdisStatus {
        let h = match self.io_target(ctx) {
            Ok(h) => h,
            Err(s) => {
                Self::fail_all(core::slice::from_mut(&mut nbl), s);
                self.io_done.push_back(IoDone::Disconnect(nbl));
                return NdisStatus::PENDING;
            }
        };
        let abortive = flags & crate::ndis::TCP_DISCONNECT_ABORTIVE_CLOSE != 0;
        let data: Vec<u8> = nbl.net_buffers.iter().flat_map(|nb| nb.data()).collect();
        let key = self.track(IoKind::Disconnect, ctx, nbl, 1);
        if !abortive && !data.is_empty() {
            if let Some(p) = self.io.nbls.get_mut(&key) {
                p.disconnect_data = data.len() as u32;
            }
            self.queue(h, None, |request_id| DataRequest::Send {
                handle: h,
                request_id,
                data,
            });
        }
        self.queue(h, Some(key), |request_id| DataRequest::Disconnect {
            handle: h,
            request_id,
            abortive,
        });
        NdisStatus::PENDING
    }

    /// `MiniportTcpOffloadForward` (C-195): PENDING; one FORWARD per NBL.
    pub fn tcp_offload_forward(&mut self, ctx: u64, mut nbls: Vec<NetBufferList>) -> NdisStatus {
        let h = match self.io_target(ctx) {
            Ok(h) => h,
            Err(s) => {
                Self::fail_all(&mut nbls, s);
                self.io_done.push_back(IoDone::Forward(nbls));
                return NdisStatus::PENDING;
            }
        };
        for nbl in nbls {
            let data: Vec<u8> = nbl.net_buffers.iter().flat_map(|nb| nb.data()).collect();
            let key = self.track(IoKind::Forward, ctx, nbl, 1);
            self.queue(h, Some(key), |request_id| DataRequest::Forward {
                handle: h,
                request_id,
                data,
            });
        }
        NdisStatus::PENDING
    }

    /// `MiniportTcpOffloadReceiveReturn` (C-175): synchronous, always SUCCESS. Each NBL the
    /// host kept from an indication goes back to the device (RECEIVE_RETURN reopens the
    /// window); anything else is counted as a host violation.
    pub fn tcp_offload_receive_return(&mut self, nbls: Vec<NetBufferList>) -> NdisStatus {
        for n in nbls {
            if self.io.returned_buffered.remove(&n.id) {
                continue; // BufferedData of a terminate, copied by the host (§3.5.5)
            }
            if self.io.local_indicated.remove(&n.id) {
                continue; // an indication of held data: the device already had it back
            }
            match self.io.indicated.remove(&n.id) {
                Some((pair, handle)) => self.io.backlog.push_back((
                    pair,
                    DataRequest::ReceiveReturn {
                        handle,
                        indication_id: n.id,
                    },
                )),
                None => self.violations.unexpected_return += 1,
            }
        }
        NdisStatus::SUCCESS
    }

    /// Send queued data requests while slots are free (per-connection order is kept: a
    /// connection always uses one pair and the backlog is FIFO).
    fn drain_data_backlog(&mut self) -> Result<bool, MiniportError> {
        self.release_withheld();
        let mut progress = false;
        while let Some((pair, req)) = self.io.backlog.pop_front() {
            let Some(ch) = self.io.channels.get_mut(pair) else {
                continue;
            };
            match ch.submit(&self.platform, &req) {
                Ok(()) => progress = true,
                Err(DataError::NoFreeSlot(_)) => {
                    self.io.backlog.push_front((pair, req));
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(progress)
    }

    /// One data rx record → the NBL it completes or the indication it makes.
    fn data_record(&mut self, ndis: &mut H, pair: usize, rec: DataRecord) {
        if rec.kind == DataRxKind::ReceiveIndicate {
            self.indicate(ndis, pair, rec);
            return;
        }
        let Some(key) = self.io.requests.remove(&rec.request_id) else {
            return; // late answer for an NBL already completed (e.g. handed back at upload)
        };
        let Some(key) = key else { return };
        // In-order acknowledgement: a later send (or a graceful disconnect) that completed
        // with SUCCESS means the data handed over at initiate was acknowledged first.
        let acked_all = rec.status == NdisStatus::SUCCESS
            && matches!(
                rec.kind,
                DataRxKind::SendComplete | DataRxKind::DisconnectComplete
            );
        if acked_all {
            if let Some(ctx) = self.io.nbls.get(&key).map(|p| p.ctx) {
                self.complete_initial(ctx);
            }
        }
        let Some(p) = self.io.nbls.get_mut(&key) else {
            // A posting the miniport already completed from refused data: what the device
            // put in it is newer than anything delivered so far; it queues for the next
            // posting.
            if rec.kind == DataRxKind::ReceiveComplete && !rec.data.is_empty() {
                if let Some((ctx, c)) = rec.handle.and_then(|h| self.contexts.find_device(h)) {
                    let held = self.io.leftovers.get(&ctx).is_some_and(|l| !l.is_empty());
                    let posted = self
                        .io
                        .nbls
                        .values()
                        .any(|p| p.ctx == ctx && p.kind == IoKind::Receive);
                    if !held && !posted {
                        // Nothing older waits and no posting can take it: the host gets
                        // it as an indication, as if no buffer had been posted (C-169).
                        self.indicate_local(ndis, ctx, c.ndis_offload_handle, rec.data);
                        return;
                    }
                    self.io
                        .leftovers
                        .entry(ctx)
                        .or_default()
                        .extend_from_slice(&rec.data);
                    // Into the postings still at the device now: no later completion or
                    // indication may come to drain it (the device holds no more data),
                    // so waiting for a new posting stalled them (issue 4).
                    self.serve_leftovers(ctx);
                }
            }
            return;
        };
        let status = if rec.kind == DataRxKind::Error {
            NdisStatus::INVALID_STATE
        } else {
            rec.status
        };
        if p.status == NdisStatus::SUCCESS {
            p.status = status;
        }
        match rec.kind {
            DataRxKind::SendComplete => p.bytes = p.bytes.saturating_add(rec.bytes),
            DataRxKind::ReceiveComplete => {
                let skip = p.nbl.info.tcp_receive_bytes_transferred as usize;
                // Data the host refused earlier is older than this completion's: it goes
                // first and this data queues behind it (arrival order, C-177).
                let data = match self.io.leftovers.remove(&p.ctx) {
                    Some(mut older) => {
                        older.extend_from_slice(&rec.data);
                        older
                    }
                    None => rec.data,
                };
                let placed = match p.nbl.net_buffers.first_mut() {
                    Some(nb) => fill_nb(nb, skip, &data),
                    None => 0,
                };
                p.bytes = placed as u32;
                if placed < data.len() {
                    self.io.leftovers.insert(p.ctx, data[placed..].to_vec());
                }
            }
            DataRxKind::DisconnectComplete if status == NdisStatus::SUCCESS => {
                p.bytes = p.disconnect_data;
            }
            _ => {}
        }
        let ctx = p.ctx;
        p.pieces_left = p.pieces_left.saturating_sub(1);
        if p.pieces_left == 0 {
            if let Some(p) = self.io.nbls.remove(&key) {
                self.finish(p);
            }
        }
        if rec.kind == DataRxKind::ReceiveComplete {
            // What did not fit goes into the next postings at the device (issue 4).
            self.serve_leftovers(ctx);
        }
    }

    /// Complete an NBL: status, TcpOffloadBytesTransferred and the NB data start advanced
    /// by the bytes transferred (C-165 and the send/disconnect equivalents).
    fn finish(&mut self, p: PendingNbl) {
        if p.kind == IoKind::Receive {
            self.io.reindicate.insert(p.ctx);
        }
        let mut nbl = p.nbl;
        nbl.status = p.status;
        nbl.info.tcp_offload_bytes_transferred = p.bytes;
        let mut left = p.bytes as usize;
        if p.kind == IoKind::Receive {
            left += nbl.info.tcp_receive_bytes_transferred as usize;
        }
        for nb in nbl.net_buffers.iter_mut() {
            let n = left.min(nb.data_length);
            nb.advance_data_start(n);
            left -= n;
        }
        self.io_done.push_back(match p.kind {
            IoKind::Send => IoDone::Send(alloc::vec![nbl]),
            IoKind::Receive => IoDone::Receive(alloc::vec![nbl]),
            IoKind::Disconnect => IoDone::Disconnect(nbl),
            IoKind::Forward => IoDone::Forward(alloc::vec![nbl]),
        });
    }

    /// RECEIVE_INDICATE → `NdisTcpOffloadReceiveHandler` with one NBL (C-170), Status
    /// SUCCESS; refused data stays with the miniport for the next posting (C-171, C-172).
    fn indicate(&mut self, ndis: &mut H, pair: usize, rec: DataRecord) {
        let Some(h) = rec.handle else { return };
        let Some((ctx, c)) = self.contexts.find_device(h) else {
            return;
        };
        let ret = DataRequest::ReceiveReturn {
            handle: h,
            indication_id: rec.request_id,
        };
        if rec.data.is_empty() {
            self.io.backlog.push_back((pair, ret));
            return;
        }
        if let Some(left) = self.io.leftovers.get_mut(&ctx).filter(|l| !l.is_empty()) {
            // Not again until the host posts (C-172): keep it, hand the buffer back
            // (unless too much is held already).
            left.extend_from_slice(&rec.data);
            self.give_back_refused(ctx, pair, ret);
            return;
        }
        // Postings completed from older data reach the host before newer data is
        // indicated (C-172: a normal posting completes before any new indication; C-177).
        self.flush_io(ndis);
        let mut nbl = NetBufferList::with_data(rec.request_id, &rec.data);
        let mut consumed = 0u32;
        let r = (self.handlers.receive_handler)(
            ndis,
            c.ndis_offload_handle,
            &mut nbl,
            NdisStatus::SUCCESS,
            &mut consumed,
        );
        if r == NdisStatus::SUCCESS {
            self.io.indicated.insert(rec.request_id, (pair, h));
        } else {
            let taken = if r == NdisStatus::OFFLOAD_DATA_PARTIALLY_ACCEPTED {
                (consumed as usize).min(rec.data.len())
            } else {
                0
            };
            if taken < rec.data.len() {
                self.io.leftovers.insert(ctx, rec.data[taken..].to_vec());
                // Held until the host posts again (C-172): earlier postings do not count.
                self.io.reindicate.remove(&ctx);
            }
            self.give_back_refused(ctx, pair, ret);
            self.serve_leftovers(ctx);
        }
    }

    /// Hand a refused indication's buffer back to the device (RECEIVE_RETURN reopens its
    /// window), unless the connection's held data is past the limit: then the return waits
    /// (`release_withheld`) and the device's window closes, so a host that keeps refusing
    /// cannot make the miniport buffer without bound. Returns stay in arrival order.
    fn give_back_refused(&mut self, ctx: u64, pair: usize, ret: DataRequest) {
        let held = self.io.leftovers.get(&ctx).map_or(0, Vec::len);
        let waiting = self.io.withheld.get(&ctx).is_some_and(|w| !w.is_empty());
        if held > self.held_limit || waiting {
            self.io
                .withheld
                .entry(ctx)
                .or_default()
                .push_back((pair, ret));
        } else {
            self.io.backlog.push_back((pair, ret));
        }
    }

    /// Send the withheld RECEIVE_RETURNs of connections whose held data is at or below the
    /// limit again (the host posted or took indications since).
    fn release_withheld(&mut self) {
        let limit = self.held_limit;
        let leftovers = &self.io.leftovers;
        let ready: Vec<u64> = self
            .io
            .withheld
            .keys()
            .copied()
            .filter(|ctx| leftovers.get(ctx).map_or(0, Vec::len) <= limit)
            .collect();
        for ctx in ready {
            if let Some(w) = self.io.withheld.remove(&ctx) {
                self.io.backlog.extend(w);
            }
        }
    }

    /// Held (refused) data of a connection whose host completed a posting since the refusal
    /// and has none outstanding: indicate it again (C-172 forbids that only until the host
    /// posts; C-170: one NBL, Status SUCCESS). A refusal holds the rest again.
    fn reindicate_held(&mut self, ndis: &mut H) -> bool {
        let mut any = false;
        let ready: Vec<u64> = core::mem::take(&mut self.io.reindicate)
            .into_iter()
            .collect();
        for ctx in ready {
            let posted = self
                .io
                .nbls
                .values()
                .any(|p| p.ctx == ctx && p.kind == IoKind::Receive);
            let Some(c) = self.contexts.get(ctx).copied() else {
                continue;
            };
            if posted || c.device.is_none() {
                continue;
            }
            let Some(held) = self.io.leftovers.remove(&ctx).filter(|l| !l.is_empty()) else {
                continue;
            };
            self.indicate_local(ndis, ctx, c.ndis_offload_handle, held);
            any = true;
        }
        any
    }

    /// Indicate data the miniport holds (no device indication behind it) to the host; what
    /// the host does not take stays held for the next posting (C-171, C-172).
    fn indicate_local(&mut self, ndis: &mut H, ctx: u64, nh: u64, held: Vec<u8>) {
        self.flush_io(ndis);
        let id = self.io.id();
        let mut nbl = NetBufferList::with_data(id, &held);
        let mut consumed = 0u32;
        let r =
            (self.handlers.receive_handler)(ndis, nh, &mut nbl, NdisStatus::SUCCESS, &mut consumed);
        if r == NdisStatus::SUCCESS {
            self.io.local_indicated.insert(id);
        } else {
            let taken = if r == NdisStatus::OFFLOAD_DATA_PARTIALLY_ACCEPTED {
                (consumed as usize).min(held.len())
            } else {
                0
            };
            if taken < held.len() {
                self.io.leftovers.insert(ctx, held[taken..].to_vec());
                self.io.reindicate.remove(&ctx);
            }
        }
    }

    /// Refused data goes into the connection's postings that are still at the device, in
    /// posting order, completing them now (C-172: a normal posting is filled before any
    /// new indication). The device's later completion of such a posting carries newer data,
    /// which queues behind (see `data_record`).
    fn serve_leftovers(&mut self, ctx: u64) {
        let keys: Vec<u64> = self
            .io
            .nbls
            .iter()
            .filter(|(_, p)| p.ctx == ctx && p.kind == IoKind::Receive)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let Some(left) = self.io.leftovers.remove(&ctx).filter(|l| !l.is_empty()) else {
                return;
            };
            let Some(mut p) = self.io.nbls.remove(&k) else {
                continue;
            };
            let skip = p.nbl.info.tcp_receive_bytes_transferred as usize;
            let n = match p.nbl.net_buffers.first_mut() {
                Some(nb) => fill_nb(nb, skip, &left),
                None => 0,
            };
            if n < left.len() {
                self.io.leftovers.insert(ctx, left[n..].to_vec());
            }
            p.status = NdisStatus::SUCCESS;
            p.bytes = n as u32;
            self.finish(p);
        }
    }

    /// Complete the send data handed over at initiate for `ctx` as acknowledged.
    fn complete_initial(&mut self, ctx: u64) {
        let keys: Vec<u64> = self
            .io
            .nbls
            .iter()
            .filter(|(_, p)| p.ctx == ctx && p.initial)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(mut p) = self.io.nbls.remove(&k) {
                p.bytes = p.nbl.data_length() as u32;
                self.finish(p);
            }
        }
    }

    /// At a successful terminate of TCP context `ctx` (device handle `h`), with the
    /// device's unacknowledged send bytes `unacked` (UPLOAD_DATA; 0 without one): send
    /// NBLs whose data was all acknowledged complete with SUCCESS; the rest go back to the
    /// host in the block's `NetBufferListChain`, in posting order, the first advanced to
    /// SndUna (§3.5.4, C-057); receives, disconnects and forwards complete with
    /// UPLOAD_IN_PROGRESS — all before the terminate completes (§3.5.6).
    fn upload_io(&mut self, ctx: u64, h: DeviceHandle, unacked: usize) -> Vec<NetBufferList> {
        // Requests the device never saw: their bytes are unacknowledged too.
        let mut unsubmitted = 0usize;
        self.io.backlog.retain(|(_, r)| {
            if r.handle() != h {
                return true;
            }
            if let DataRequest::Send { data, .. } = r {
                unsubmitted += data.len();
            }
            false
        });
        let keys: Vec<u64> = self
            .io
            .nbls
            .iter()
            .filter(|(_, p)| p.ctx == ctx)
            .map(|(k, _)| *k)
            .collect();
        let mut sends = Vec::new();
        let mut others = Vec::new();
        for k in keys {
            if let Some(p) = self.io.nbls.remove(&k) {
                self.io.requests.retain(|_, v| *v != Some(k));
                if p.kind == IoKind::Send {
                    sends.push(p);
                } else {
                    others.push(p);
                }
            }
        }
        let total: usize = sends.iter().map(|p| p.nbl.data_length()).sum();
        let mut acked = total.saturating_sub(unacked.saturating_add(unsubmitted));
        let mut back = Vec::new();
        for mut p in sends {
            let len = p.nbl.data_length();
            if len > 0 && acked >= len {
                acked -= len;
                p.status = NdisStatus::SUCCESS;
                p.bytes = len as u32;
                self.finish(p);
                continue;
            }
            // Partly acknowledged: the returned chain starts at SndUna.
            let mut skip = core::mem::take(&mut acked);
            for nb in p.nbl.net_buffers.iter_mut() {
                let n = skip.min(nb.data_length);
                nb.advance_data_start(n);
                skip -= n;
            }
            p.nbl.status = NdisStatus::UPLOAD_IN_PROGRESS;
            back.push(p.nbl);
        }
        for mut p in others {
            p.status = NdisStatus::UPLOAD_IN_PROGRESS;
            p.bytes = 0;
            self.finish(p);
        }
        self.io.leftovers.remove(&ctx);
        self.io.withheld.remove(&ctx);
        back
    }

    // ------------------------------------------------------------ OIDs, pause, halt

    /// `MiniportOidRequest` for the connection offload OIDs: the parameters set (C-011,
    /// sent to the device as SET_PARAMETERS) and the statistics (C-019).
    pub fn oid_request(&mut self, req: &OidRequest) -> OidResult {
        let done = |status, data: Vec<u8>, bytes_needed| OidResult {
            status,
            data,
            bytes_needed,
        };
        match req {
            OidRequest::Set { oid, buffer } if *oid == oid::TCP_CONNECTION_OFFLOAD_PARAMETERS => {
                let need = chimney_abi::caps::OFFLOAD_PARAMETERS_LEN;
                if buffer.len() < need {
                    return done(status::INVALID_LENGTH, Vec::new(), need);
                }
                // Validate with the ABI's decoder: a SET_PARAMETERS record around the buffer.
                let mut rec = Vec::with_capacity(16 + need);
                rec.extend_from_slice(&(chimney_abi::Opcode::SetParameters as u16).to_le_bytes());
                rec.extend_from_slice(&0u16.to_le_bytes());
                rec.extend_from_slice(&((16 + need) as u32).to_le_bytes());
                rec.extend_from_slice(&0u64.to_le_bytes());
                rec.extend_from_slice(&buffer[..need]);
                let params = match Request::decode(&rec) {
                    Ok(Request {
                        body: RequestBody::SetParameters(p),
                        ..
                    }) => p,
                    _ => return done(status::INVALID_DATA, Vec::new(), 0),
                };
                match self.control.call(
                    &self.platform,
                    RequestBody::SetParameters(params),
                    self.timeout,
                ) {
                    Ok(c) if c.status == NdisStatus::SUCCESS => {
                        self.parameters = Some(params);
                        done(NdisStatus::SUCCESS, Vec::new(), 0)
                    }
                    Ok(c) => done(c.status, Vec::new(), 0),
                    Err(_) => done(NdisStatus::FAILURE, Vec::new(), 0),
                }
            }
            // C-019: the statistics live in the device (it counts offloaded traffic only,
            // C-018): a query reads the family, a set resets it (the buffer need not be
            // examined). The device keeps one counter set per address family, so a set of
            // the IPv4 TCP OID also zeroes the IPv4 IP counters (and likewise for IPv6).
            OidRequest::Set { oid, .. } => match stats_oid(*oid) {
                Some((family, _)) => match self.device_stats(family, true) {
                    Ok(_) => done(NdisStatus::SUCCESS, Vec::new(), 0),
                    Err(st) => done(st, Vec::new(), 0),
                },
                None => done(NdisStatus::NOT_SUPPORTED, Vec::new(), 0),
            },
            OidRequest::Query { oid, buffer_length } => match stats_oid(*oid) {
                Some((_, len)) if *buffer_length < len => {
                    done(status::BUFFER_TOO_SHORT, Vec::new(), len)
                }
                Some((family, len)) => match self.device_stats(family, false) {
                    Ok(r) => {
                        let mut data = Vec::with_capacity(len);
                        if len == TCP_OFFLOAD_STATS_LEN {
                            r.tcp.emit(&mut data);
                        } else {
                            r.ip.emit(&mut data);
                        }
                        done(NdisStatus::SUCCESS, data, 0)
                    }
                    Err(st) => done(st, Vec::new(), 0),
                },
                None => done(NdisStatus::NOT_SUPPORTED, Vec::new(), 0),
            },
        }
    }

    /// Read (and with `reset` zero) one family's statistics in the device (STATISTICS,
    /// ring-abi.md §17). A device error or an unexpected completion is the OID's failure
    /// status.
    fn device_stats(
        &mut self,
        family: chimney_abi::StatsFamily,
        reset: bool,
    ) -> Result<chimney_abi::StatsResult, NdisStatus> {
        let body = RequestBody::Statistics(chimney_abi::StatsRequest { family, reset });
        match self.control.call(&self.platform, body, self.timeout) {
            Ok(c) if c.status != NdisStatus::SUCCESS => Err(c.status),
            Ok(c) => match c.body {
                CompletionBody::Statistics(r) if r.family == family => Ok(r),
                _ => Err(NdisStatus::FAILURE),
            },
            Err(_) => Err(NdisStatus::FAILURE),
        }
    }

    /// `MiniportPause`: offloaded connections stay offloaded and keep being served; state
    /// operations keep being accepted (C-231). Completes at once.
    pub fn pause(&mut self) -> NdisStatus {
        self.run_state = RunState::Paused;
        NdisStatus::SUCCESS
    }
    /// `MiniportRestart`.
    pub fn restart(&mut self) -> NdisStatus {
        self.run_state = RunState::Running;
        NdisStatus::SUCCESS
    }
    /// `MiniportHaltEx`: finish what is in flight (the host gets its completions), then
    /// release the adapter. Returns how many objects were still offloaded (the host should
    /// have terminated them; the device frees them when the connection goes away).
    pub fn halt(mut self, ndis: &mut H) -> Result<usize, MiniportError> {
        while self.outstanding() > 0 || !self.io_done.is_empty() {
            if !self.service(ndis)? {
                self.control.wait_activity(&self.platform, self.timeout)?;
                if !self.control.has_queued() && !self.pending.is_empty() {
                    return Err(MiniportError::Control(ControlError::TimedOut {
                        request_id: self.pending[0].request_id,
                    }));
                }
            }
        }
        Ok(self.contexts.live_count())
    }

    // ------------------------------------------------------------ the DPC

    /// Do the deferred work: send recorded operations, complete finished ones, deliver
    /// I/O completions and events. Returns whether anything happened.
    pub fn service(&mut self, ndis: &mut H) -> Result<bool, MiniportError> {
        let mut progress = false;
        // 1. Recorded operations → ring requests (or local refusal).
        while let Some(r) = self.recorded.pop_front() {
            let plan = {
                let tree = r.root.read();
                translate::translate(r.kind, &tree, &mut self.contexts)
            };
            match plan {
                Err(why) => {
                    if matches!(why, Refusal::UnknownContext { .. }) {
                        self.violations.unknown_context += 1;
                    }
                    if matches!(why, Refusal::AlreadyTerminating { .. }) {
                        self.violations.double_terminate += 1;
                    }
                    Self::write_all(&r.root, NdisStatus::FAILURE);
                    self.complete(ndis, r.kind, r.root);
                    progress = true;
                }
                Ok(plan) => match if plan.data.is_empty() {
                    self.control.submit(&self.platform, plan.body.clone())
                } else {
                    self.control
                        .submit_with_data(&self.platform, plan.body.clone(), &plan.data)
                } {
                    Ok(request_id) => {
                        self.pending.push(Pending {
                            kind: r.kind,
                            root: r.root,
                            request_id,
                            plan,
                        });
                        progress = true;
                    }
                    Err(ControlError::NoFreeSlot(_)) => {
                        translate::rollback(&plan, &mut self.contexts);
                        self.recorded.push_front(r);
                        break;
                    }
                    Err(e) => {
                        translate::rollback(&plan, &mut self.contexts);
                        Self::write_all(&r.root, NdisStatus::FAILURE);
                        self.complete(ndis, r.kind, r.root);
                        return Err(e.into());
                    }
                },
            }
        }
        // 2. Completions from the device.
        self.control.poll(&self.platform)?;
        let mut k = 0;
        while k < self.answers.len() {
            match self.control.take_completion(self.answers[k]) {
                Some(c) => {
                    if c.status != NdisStatus::SUCCESS {
                        self.reachability_answers_failed += 1;
                    }
                    self.answers.swap_remove(k);
                }
                None => k += 1,
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let id = self.pending[i].request_id;
            match self.control.take_completion(id) {
                Some(c) => {
                    let p = self.pending.remove(i);
                    self.apply(&p, c);
                    // §3.5.6: I/O of terminated connections completes before the terminate.
                    self.flush_io(ndis);
                    self.complete(ndis, p.kind, p.root);
                    progress = true;
                }
                None => i += 1,
            }
        }
        // 3. Data I/O: requests onto the rings, records off them. Nothing is indicated
        //    while an initiate is in flight (C-066, C-067).
        let initiating = self.pending.iter().any(|p| p.kind == OpKind::Initiate)
            || self.recorded.iter().any(|r| r.kind == OpKind::Initiate);
        progress |= self.drain_data_backlog()?;
        if !initiating {
            for pair in 0..self.io.channels.len() {
                self.io.channels[pair].poll(&self.platform)?;
                while let Some(rec) = self.io.channels[pair].next_record() {
                    self.data_record(ndis, pair, rec);
                    progress = true;
                }
            }
            progress |= self.drain_data_backlog()?;
        }
        // 4. TCP I/O completions (never inside the handler call), then held data of
        //    connections whose host posted since refusing it.
        progress |= self.flush_io(ndis);
        progress |= self.reindicate_held(ndis);
        // 5. Events, but not while an initiate is in progress (C-067, §4.4).
        if !initiating {
            while let Some(e) = self.control.next_event() {
                self.deliver_event(ndis, e);
                progress = true;
            }
        }
        Ok(progress)
    }

    /// Service until no state operation is outstanding; wait for the device in between.
    /// A device that stays quiet for the configured timeout ends it with `TimedOut`.
    pub fn run_until_idle(&mut self, ndis: &mut H) -> Result<(), MiniportError> {
        loop {
            let progress = self.service(ndis)?;
            if self.outstanding() == 0 && self.io_done.is_empty() {
                // Deliver events that are already here.
                self.control.poll(&self.platform)?;
                if !self.control.has_queued() {
                    return Ok(());
                }
                continue;
            }
            if !progress && !self.control.wait_activity(&self.platform, self.timeout)? {
                if let Some(p) = self.pending.first() {
                    return Err(ControlError::TimedOut {
                        request_id: p.request_id,
                    }
                    .into());
                }
            }
        }
    }

    /// Wait up to `timeout` for device activity, then service. Returns whether anything
    /// happened (use it to wait for events such as upload requests).
    pub fn poll_device(&mut self, ndis: &mut H, timeout: Duration) -> Result<bool, MiniportError> {
        if self.service(ndis)? {
            return Ok(true);
        }
        self.wait_any(timeout)?;
        self.service(ndis)
    }

    /// Deliver finished TCP I/O to the host's completion entry points.
    fn flush_io(&mut self, ndis: &mut H) -> bool {
        let mut any = false;
        while let Some(d) = self.io_done.pop_front() {
            let mh = ndis.miniport_handle();
            match d {
                IoDone::Send(n) => (self.handlers.send_complete)(ndis, mh, n),
                IoDone::Receive(n) => (self.handlers.receive_complete)(ndis, mh, n),
                IoDone::Disconnect(n) => (self.handlers.disconnect_complete)(ndis, mh, n),
                IoDone::Forward(n) => (self.handlers.forward_complete)(ndis, mh, n),
            }
            any = true;
        }
        any
    }

    /// NBLs the miniport holds (posted to the device or waiting for a ring slot).
    pub fn io_outstanding(&self) -> usize {
        self.io.nbls.len()
    }

    /// Wait until the control ring or a data ring has something, or `timeout` passes.
    /// The `Platform` waits per queue, so with data pairs attached the queues are
    /// checked in short slices.
    fn wait_any(&mut self, timeout: Duration) -> Result<(), MiniportError> {
        if self.io.channels.is_empty() {
            self.control.wait_activity(&self.platform, timeout)?;
            return Ok(());
        }
        let slice = Duration::from_millis(2);
        let mut waited = Duration::ZERO;
        while waited < timeout {
            if self.control.wait_activity(&self.platform, slice)? {
                return Ok(());
            }
            for ch in self.io.channels.iter_mut() {
                ch.poll(&self.platform)?;
                if ch.has_records() {
                    return Ok(());
                }
            }
            waited += slice;
        }
        Ok(())
    }

    fn write_all(root: &BlockListRef, status: NdisStatus) {
        for b in root.write().blocks.iter_mut() {
            b.status = status;
        }
    }

    /// Call the completion function of `kind` with the root the handler got (C-033).
    /// After it returns the miniport holds no reference to the tree (C-034).
    fn complete(&mut self, ndis: &mut H, kind: OpKind, root: BlockListRef) {
        match kind {
            OpKind::Initiate => ndis.initiate_offload_complete(root),
            OpKind::Query => ndis.query_offload_state_complete(root),
            OpKind::Update => ndis.update_offload_complete(root),
            OpKind::Invalidate => ndis.invalidate_offload_complete(root),
            OpKind::Terminate => ndis.terminate_offload_complete(root),
        }
    }

    /// Write the device's results into the host's tree: a status into every block
    /// (C-041), the context into `*MiniportOffloadContext` of each new object that
    /// offloaded (C-040), queried structures (C-076), returned delegated state (C-111).
    fn apply(&mut self, p: &Pending, c: Completion) {
        let mut tree = p.root.write();
        let n = p.plan.order.len();
        let results: Option<Vec<BlockOutcome>> = match c.body {
            CompletionBody::Initiate(r) if p.kind == OpKind::Initiate && r.len() == n => {
                Some(r.into_iter().map(|b| (b.status, b.handle, None)).collect())
            }
            CompletionBody::Query(r) if p.kind == OpKind::Query && r.len() == n => {
                Some(r.into_iter().map(|b| (b.status, None, b.state)).collect())
            }
            CompletionBody::Update(r) if p.kind == OpKind::Update && r.len() == n => {
                Some(r.into_iter().map(|b| (b.status, None, None)).collect())
            }
            CompletionBody::Invalidate(r) if p.kind == OpKind::Invalidate && r.len() == n => {
                Some(r.into_iter().map(|b| (b.status, None, None)).collect())
            }
            CompletionBody::Terminate(r) if p.kind == OpKind::Terminate && r.len() == n => Some(
                r.into_iter()
                    .map(|b| (b.status, None, b.state.map(delegated_as_queried)))
                    .collect(),
            ),
            // ERROR completion or a body that does not fit: the request failed whole.
            _ => None,
        };
        let Some(results) = results else {
            translate::rollback(&p.plan, &mut self.contexts);
            for b in tree.blocks.iter_mut() {
                b.status = NdisStatus::FAILURE;
            }
            return;
        };
        for (k, (status, handle, state)) in results.into_iter().enumerate() {
            let hi = p.plan.order[k];
            let Some(b) = tree.blocks.get_mut(hi) else {
                continue;
            };
            b.status = status;
            let ctx = b.miniport_offload_context.filter(|v| *v != 0);
            match p.kind {
                OpKind::Initiate => {
                    if let Some(id) = p.plan.reserved[k] {
                        match handle {
                            Some(h) if h.layer() == Some(self.ctx_layer(id)) => {
                                if let Some(cx) = self.contexts.get_mut(id) {
                                    cx.device = Some(h);
                                    cx.state = ObjState::Live;
                                }
                                b.miniport_offload_context = Some(id);
                                // The send data is the OT's now, until acknowledged or
                                // returned at upload (C-060); on failure it stays (C-045).
                                for nbl in core::mem::take(&mut b.net_buffer_list_chain) {
                                    let key = self.track(IoKind::Send, id, nbl, 0);
                                    if let Some(p) = self.io.nbls.get_mut(&key) {
                                        p.initial = true;
                                    }
                                }
                            }
                            // Failed (or a device handle that cannot be right): leave the
                            // host's location untouched (C-040).
                            _ => {
                                self.contexts.release(id);
                                if status == NdisStatus::SUCCESS
                                    || status == NdisStatus::OFFLOAD_PARTIAL_SUCCESS
                                {
                                    b.status = NdisStatus::FAILURE;
                                }
                            }
                        }
                    }
                }
                OpKind::Query => {
                    if ctx.is_some() && status == NdisStatus::SUCCESS {
                        b.state = state;
                    }
                }
                OpKind::Invalidate => {
                    if let Some(cx) = ctx.and_then(|v| self.contexts.get_mut(v)) {
                        if status == NdisStatus::SUCCESS {
                            cx.state = ObjState::Invalidated;
                        }
                    }
                }
                OpKind::Terminate => {
                    if let Some(v) = ctx {
                        if status == NdisStatus::SUCCESS {
                            // A connection the device closed (retransmissions timed out)
                            // exports no send data: nothing outstanding was acknowledged.
                            let dev_closed = matches!(
                                &state,
                                Some(QueriedState::Tcp { delegated: Some(d), .. })
                                    if d.state == chimney_abi::TcpConnectionState::Closed
                            );
                            if let (Some(s), Some(_)) = (state, b.state.as_ref()) {
                                b.state = Some(s);
                            }
                            let tcp = self.contexts.get(v).map(|c| c.layer)
                                == Some(chimney_abi::Layer::Tcp);
                            let device = self.contexts.get(v).and_then(|c| c.device);
                            if let (true, Some(h)) = (tcp, device) {
                                let up = self.control.take_events_where(|e| {
                                    e.class == EventClass::TcpEvent
                                        && e.code == tcp_event::UPLOAD_DATA
                                        && e.handle == Some(h)
                                });
                                let upload = up
                                    .iter()
                                    .rev()
                                    .find_map(|e| {
                                        chimney_abi::data_io::parse_upload_data(&e.payload).ok()
                                    })
                                    .unwrap_or_default();
                                // Undelivered data: what the host refused earlier (older),
                                // then what the device still held (§3.5.5).
                                let mut buffered = self.io.leftovers.remove(&v).unwrap_or_default();
                                self.io.withheld.remove(&v);
                                buffered.extend_from_slice(&upload.buffered);
                                // Closed without UPLOAD_DATA: every outstanding send goes
                                // back unacknowledged (C-142: SUCCESS only after an ACK).
                                let unacked = if dev_closed && upload.send.is_empty() {
                                    usize::MAX
                                } else {
                                    upload.send.len()
                                };
                                let sends = self.upload_io(v, h, unacked);
                                if !sends.is_empty() {
                                    b.net_buffer_list_chain = sends;
                                }
                                if !buffered.is_empty() {
                                    let id = self.io.id();
                                    self.io.returned_buffered.insert(id);
                                    b.buffered_data =
                                        alloc::vec![NetBufferList::with_data(id, &buffered)];
                                }
                            }
                            self.contexts.release(v);
                        } else if let Some(cx) = self.contexts.get_mut(v) {
                            cx.state = cx.before_terminate;
                        }
                    }
                }
                OpKind::Update => {}
            }
        }
    }

    fn ctx_layer(&self, id: u64) -> chimney_abi::Layer {
        self.contexts
            .get(id)
            .map_or(chimney_abi::Layer::Tcp, |c| c.layer)
    }

    /// Device event → the NDIS indication it models (§4).
    fn deliver_event(&mut self, ndis: &mut H, e: chimney_abi::Event) {
        // The ring's host_context is our context id; the device handle must agree.
        let ctx = self
            .contexts
            .get(e.host_context)
            .filter(|c| c.device.is_some() && c.device == e.handle)
            .copied();
        match e.class {
            EventClass::TcpEvent => {
                let Some(c) = ctx else { return };
                if c.layer != chimney_abi::Layer::Tcp {
                    return; // C-105: upload requests are for TCP objects only.
                }
                if e.code < tcp_event::SEND_BACKLOG_CHANGE || e.code > tcp_event::ABORT {
                    return;
                }
                // C-028: the stored NdisOffloadHandle.
                (self.handlers.event_handler)(ndis, c.ndis_offload_handle, e.code, e.info);
            }
            EventClass::OffloadEvent => {
                if e.code == offload_event::NEIGHBOR_REACHABILITY_QUERY {
                    let Some(c) = ctx.filter(|c| c.layer == chimney_abi::Layer::Neighbor) else {
                        return;
                    };
                    // C-225: one block, Type NeighborOffloadState, no dependents, SUCCESS.
                    let mut b = BlockList::new(OffloadStateType::Neighbor);
                    b.ndis_offload_handle = c.ndis_offload_handle;
                    b.status = NdisStatus::SUCCESS;
                    // CONST, CACHED (current HRD), DELEGATED (current NRD) from the payload.
                    b.state = crate::ndis::blocklist::decode_state(
                        OffloadStateType::Neighbor,
                        &e.payload,
                    );
                    let root = BlockListRef::new(BlockTree {
                        blocks: alloc::vec![b],
                    });
                    ndis.offload_event_indicate(Some(root.clone()), e.code);
                    // C-226: the host wrote its HRD into the block's CACHED structure; the
                    // device sets HRT = NCT − HRD with it.
                    let hrd = match root.read().blocks.first().and_then(|b| b.state) {
                        Some(QueriedState::Neighbor {
                            cached: Some(c), ..
                        }) => Some(c.host_reachability_delta),
                        _ => None,
                    };
                    if let (Some(hrd), Some(h)) = (hrd, c.device) {
                        match self.control.submit(
                            &self.platform,
                            RequestBody::ReachabilityAnswer(chimney_abi::ReachabilityAnswer {
                                handle: h,
                                host_reachability_delta: hrd,
                            }),
                        ) {
                            Ok(id) => self.answers.push(id),
                            Err(_) => self.reachability_answers_failed += 1,
                        }
                    }
                } else {
                    // C-229: NULL block list for every other code.
                    ndis.offload_event_indicate(None, e.code);
                }
            }
            EventClass::StatusIndication => {
                let status_buffer = if e.status == NdisStatus::OFFLOAD_RESUME {
                    parse_connection_offload(&e.payload)
                } else {
                    None
                };
                ndis.indicate_status_ex(&StatusIndication {
                    status_code: e.status,
                    status_buffer,
                });
            }
        }
    }
}

/// One block's result: status, new device handle (initiate), returned structures.
type BlockOutcome = (
    NdisStatus,
    Option<chimney_abi::DeviceHandle>,
    Option<QueriedState>,
);

fn delegated_as_queried(d: chimney_abi::DelegatedState) -> QueriedState {
    use chimney_abi::DelegatedState as D;
    match d {
        D::Neighbor(x) => QueriedState::Neighbor {
            konst: None,
            cached: None,
            delegated: Some(x),
        },
        D::Path(x) => QueriedState::Path {
            konst: None,
            cached: None,
            delegated: Some(x),
        },
        D::Tcp(x) => QueriedState::Tcp {
            konst: None,
            cached: None,
            delegated: Some(x),
        },
    }
}

/// `NDIS_TCP_CONNECTION_OFFLOAD` from an OFFLOAD_RESUME payload (20 bytes, §5.3).
fn parse_connection_offload(b: &[u8]) -> Option<TcpConnectionOffload> {
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if b.len() < 20 || b[0] != object_type::DEFAULT {
        return None;
    }
    let bits = u32_at(8)?;
    Some(TcpConnectionOffload {
        encapsulation: u32_at(4)?,
        support_ipv4: (bits & 3) as u8,
        support_ipv6: (bits >> 2 & 3) as u8,
        support_ipv6_extension_headers: (bits >> 4 & 3) as u8,
        support_sack: (bits >> 6 & 3) as u8,
        congestion_algorithm: (bits >> 8 & 0xF) as u8,
        tcp_connection_offload_capacity: u32_at(12)?,
        flags: u32_at(16)?,
    })
}

/// The device family and the answer's length of a statistics OID (C-019).
fn stats_oid(o: u32) -> Option<(chimney_abi::StatsFamily, usize)> {
    use chimney_abi::StatsFamily::{Ipv4, Ipv6};
    match o {
        oid::TCP4_OFFLOAD_STATS => Some((Ipv4, TCP_OFFLOAD_STATS_LEN)),
        oid::TCP6_OFFLOAD_STATS => Some((Ipv6, TCP_OFFLOAD_STATS_LEN)),
        oid::IP4_OFFLOAD_STATS => Some((Ipv4, IP_OFFLOAD_STATS_LEN)),
        oid::IP6_OFFLOAD_STATS => Some((Ipv6, IP_OFFLOAD_STATS_LEN)),
        _ => None,
    }
}
