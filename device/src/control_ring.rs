//! The control queue pair (rx 2 / tx 3): request chains in on tx, completions and
//! event indications out on rx. Record formats: chimney-abi, docs/ring-abi.md.
//!
//! INTERFACE CONTRACT (used by the vhost-user backend in `backend.rs`):
//! `ControlRing::new(limits)`, then `process(mem, tx, rx)` whenever either control queue
//! is kicked; it pops every available request chain on `tx`, answers on `rx` as buffers
//! allow, adds used entries, and says which queues got used entries so the caller can
//! signal them (respecting event index via `Queue::needs_notification`).
//!
//! Two layers: [`ControlPlane`] is sans-io (request bytes in, rx records out: negotiation,
//! parameters, dispatch to `state_manipulation`); [`ControlRing`] moves bytes between guest
//! memory and the plane, only through vm-memory's checked accessors (DESIGN.md rule 3).
//! Records that find no rx buffer wait in an outbox, in order, and go out when the driver
//! posts buffers: nothing is dropped. While the outbox holds more than
//! [`MAX_PENDING_BYTES`], new requests stay in the avail ring (back-pressure, not loss).

use crate::data_path::DataPath;
use crate::offload_glue;
use crate::state_manipulation::{ObjectLimits, ObjectTable, OpError};
use chimney_abi::caps::{NDIS_ENCAPSULATION_IEEE_802_3, NDIS_OFFLOAD_SUPPORTED};
use chimney_abi::framing::{fragment, MIN_RX_BUFFER};
use chimney_abi::request::REQUEST_HEADER_LEN;
use chimney_abi::{
    Completion, CompletionBody, Event, Field, NdisStatus, NegotiateResult, Reason, Request,
    RequestBody, RequestHeader, RxRecord, TcpConnectionOffload, ABI_MIN_VERSION, ABI_VERSION,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Largest request record (and chain) the device reads.
pub const MAX_REQUEST_LEN: usize = 4 << 20;
/// Largest tree the device accepts in one request.
pub const MAX_TREE_BLOCKS: u32 = 65536;
/// Outbox size above which new requests are left in the avail ring.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// Bytes the device writes into one rx buffer at most (larger buffers are used partly).
const MAX_FRAGMENT: usize = 1 << 20;

/// Which control queues got new used entries during `process`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingActivity {
    pub tx_used: bool,
    pub rx_used: bool,
}

/// Sans-io control plane: negotiation state, host parameters and the object table.
pub struct ControlPlane {
    table: ObjectTable,
    version: Option<u16>,
    event_sequence: u64,
    /// The offloaded connections' engines (None: state operations only, as in issue 2).
    data: Option<SharedDataPath>,
    /// Adapter-wide state of §4.3 (policy-raised PAUSE / UPLOAD_ALL / RESUME).
    tcp_offloads: u64,
    paused: bool,
    upload_all: bool,
}

/// The data path, shared by the NIC thread (switched frames) and the ring thread.
pub type SharedDataPath = Arc<Mutex<DataPath>>;

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("table", &self.table)
            .field("version", &self.version)
            .field("event_sequence", &self.event_sequence)
            .field("data_path", &self.data.is_some())
            .finish()
    }
}

fn lock_dp(d: &SharedDataPath) -> MutexGuard<'_, DataPath> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

fn error_status(reason: Reason) -> NdisStatus {
    match reason {
        Reason::NotNegotiated | Reason::ParametersNotSet => NdisStatus::INVALID_STATE,
        Reason::UnknownOpcode | Reason::UnsupportedVersion | Reason::Unsupported => {
            NdisStatus::NOT_SUPPORTED
        }
        _ => NdisStatus::FAILURE,
    }
}

/// An ERROR completion for a request whose header may or may not have been readable.
pub fn refusal(
    header: Option<RequestHeader>,
    tx_head: u16,
    reason: Reason,
    field: Field,
) -> Completion {
    Completion::error(
        header.map_or(0, |h| h.request_id),
        header.map_or(0, |h| h.opcode),
        header.is_some(),
        tx_head,
        error_status(reason),
        reason,
        field,
    )
}

impl ControlPlane {
    pub fn new(limits: ObjectLimits) -> Self {
        Self {
            table: ObjectTable::new(limits),
            version: None,
            event_sequence: 0,
            data: None,
            tcp_offloads: 0,
            paused: false,
            upload_all: false,
        }
    }

    /// A control plane whose state operations act on live connections in `data`.
    pub fn with_data_path(limits: ObjectLimits, data: SharedDataPath) -> Self {
        Self {
            data: Some(data),
            ..Self::new(limits)
        }
    }

    /// Events the data path raised (disconnect, abort, retrieve, …), sequenced, for rx.
    pub fn data_events(&mut self) -> Vec<RxRecord> {
        let Some(d) = self.data.clone() else {
            return Vec::new();
        };
        let mut evs: Vec<Event> = lock_dp(&d).take_events().collect();
        evs.extend(self.adapter_events());
        evs.into_iter()
            .map(|e| RxRecord::Event(self.sequenced(e)))
            .collect()
    }

    /// Adapter-wide status indications the vendor policy raises now (§4.3). After
    /// OFFLOAD_PAUSE / UPLOAD_ALL the device keeps running offloaded connections and still
    /// accepts initiates already under way (C-231); OFFLOAD_RESUME carries the current
    /// capabilities (C-015, C-016).
    fn adapter_events(&mut self) -> Vec<Event> {
        let Some(d) = self.data.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let (n, p, t) = self.table.counts();
        let mut dp = lock_dp(&d);
        for _ in 0..3 {
            let activity = crate::policy::AdapterActivity {
                tcp_offloads: self.tcp_offloads,
                objects_live: (n + p + t) as u64,
                bytes_moved: dp.moved_total(),
                paused: self.paused,
                upload_all: self.upload_all,
            };
            let Some(status) = dp.policy_mut().adapter_status(&activity) else {
                break;
            };
            let payload = if status == NdisStatus::OFFLOAD_RESUME {
                self.paused = false;
                self.upload_all = false;
                let mut w = Vec::new();
                capabilities(self.table.limits()).emit(&mut w);
                w
            } else if status == NdisStatus::UPLOAD_ALL {
                self.paused = true;
                self.upload_all = true;
                Vec::new()
            } else if status == NdisStatus::OFFLOAD_PAUSE {
                self.paused = true;
                Vec::new()
            } else {
                tracing::warn!(%status, "policy: not an adapter status indication; ignored");
                continue;
            };
            tracing::info!(%status, "adapter status indication");
            out.push(Event::status(status, payload));
        }
        out
    }

    pub fn table(&self) -> &ObjectTable {
        &self.table
    }

    /// The negotiated ABI version, once NEGOTIATE succeeded.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// Handle one request record; returns the completion followed by any events the
    /// operation raised.
    pub fn handle(&mut self, record: &[u8], tx_head: u16) -> Vec<RxRecord> {
        let (req, tcp_data) = match Request::decode_with_data(record) {
            Ok(r) => r,
            Err(e) => {
                debug!(tx_head, error = %e.error, "request refused");
                return vec![RxRecord::Completion(refusal(
                    e.header,
                    tx_head,
                    e.error.reason(),
                    e.error.field(),
                ))];
            }
        };
        let header = RequestHeader {
            opcode: req.body.opcode() as u16,
            length: record.len() as u32,
            request_id: req.request_id,
        };
        let refuse = |reason, field| {
            vec![RxRecord::Completion(refusal(
                Some(header),
                tx_head,
                reason,
                field,
            ))]
        };
        let done = |status, body| Completion {
            request_id: req.request_id,
            opcode: header.opcode,
            tx_head,
            status,
            body,
        };
        // In-band capability exchange first (DESIGN.md: QEMU strips private feature bits).
        if !matches!(req.body, RequestBody::Negotiate(_)) && self.version.is_none() {
            return refuse(Reason::NotNegotiated, Field::new("header.opcode"));
        }
        let is_tree_op = !matches!(
            req.body,
            RequestBody::Negotiate(_) | RequestBody::SetParameters(_)
        );
        if is_tree_op && self.table.parameters().is_none() {
            return refuse(Reason::ParametersNotSet, Field::new("header.opcode"));
        }
        let blocks = match &req.body {
            RequestBody::Initiate(t) => t.blocks.len(),
            RequestBody::Query(t) | RequestBody::Invalidate(t) => t.blocks.len(),
            RequestBody::Update(t) => t.blocks.len(),
            RequestBody::Terminate(t) => t.blocks.len(),
            _ => 0,
        };
        if blocks > MAX_TREE_BLOCKS as usize {
            return refuse(Reason::TooManyBlocks, Field::new("tree.block_count"));
        }
        let op_err = |e: OpError| refuse(e.reason, e.field);
        let mut events = Vec::new();
        // Events the data path raised earlier go out before this completion (so none can
        // follow the terminate completion of its connection).
        let mut pre: Vec<Event> = match &self.data {
            Some(d) => lock_dp(d).take_events().collect(),
            None => Vec::new(),
        };
        let dp = self.data.clone();
        let completion = match &req.body {
            RequestBody::Negotiate(n) => {
                let lo = n.min_version.max(ABI_MIN_VERSION);
                let hi = n.max_version.min(ABI_VERSION);
                let (version, status) = if lo <= hi {
                    self.version = Some(hi);
                    (hi, NdisStatus::SUCCESS)
                } else {
                    (0, NdisStatus::NOT_SUPPORTED)
                };
                let limits = self.table.limits();
                done(
                    status,
                    CompletionBody::Negotiate(NegotiateResult {
                        version,
                        device_min_version: ABI_MIN_VERSION,
                        device_max_version: ABI_VERSION,
                        max_request_length: MAX_REQUEST_LEN as u32,
                        min_rx_buffer: MIN_RX_BUFFER as u32,
                        max_tree_blocks: MAX_TREE_BLOCKS,
                        capabilities: capabilities(limits),
                        max_neighbors: limits.neighbors,
                        max_paths: limits.paths,
                        max_tcp: limits.tcp,
                    }),
                )
            }
            RequestBody::SetParameters(p) => {
                self.table.set_parameters(*p);
                if let Some(d) = &dp {
                    lock_dp(d).set_parameters(crate::data_path::DataParameters {
                        ticks_per_second: p.ticks_per_second,
                        nce_stale_ticks: p.nce_stale_ticks,
                    });
                }
                done(NdisStatus::SUCCESS, CompletionBody::SetParameters)
            }
            RequestBody::Initiate(t) => match self.table.initiate(t) {
                Ok(mut r) => {
                    if let Some(d) = &dp {
                        offload_glue::after_initiate(
                            &mut self.table,
                            &mut lock_dp(d),
                            t,
                            &tcp_data,
                            &mut r,
                        );
                    }
                    self.tcp_offloads += r
                        .iter()
                        .filter(|b| {
                            b.handle.and_then(|h| h.layer()) == Some(chimney_abi::Layer::Tcp)
                        })
                        .count() as u64;
                    // Overall status = the root block's status.
                    let status = r.first().map_or(NdisStatus::FAILURE, |b| b.status);
                    done(status, CompletionBody::Initiate(r))
                }
                Err(e) => return op_err(e),
            },
            RequestBody::Query(t) => match self.refresh_for_query(t).query(t) {
                Ok(r) => done(NdisStatus::SUCCESS, CompletionBody::Query(r)),
                Err(e) => return op_err(e),
            },
            RequestBody::Update(t) => match self.table.update(t) {
                Ok(mut r) => {
                    if let Some(d) = &dp {
                        let mut g = lock_dp(d);
                        offload_glue::after_update(&mut g, t, &mut r);
                        offload_glue::refresh_blocking(&self.table, &mut g);
                    }
                    done(NdisStatus::SUCCESS, CompletionBody::Update(r))
                }
                Err(e) => return op_err(e),
            },
            RequestBody::Invalidate(t) => match self.table.invalidate(t) {
                Ok((r, ev)) => {
                    events = ev;
                    if let Some(d) = &dp {
                        offload_glue::refresh_blocking(&self.table, &mut lock_dp(d));
                    }
                    done(NdisStatus::SUCCESS, CompletionBody::Invalidate(r))
                }
                Err(e) => return op_err(e),
            },
            RequestBody::Statistics(q) => {
                // C-018/C-019: one family's counters, zeroed after reading on RESET.
                let (ip, tcp) = match &dp {
                    Some(d) => lock_dp(d).statistics(q.family, q.reset),
                    None => Default::default(),
                };
                done(
                    NdisStatus::SUCCESS,
                    CompletionBody::Statistics(chimney_abi::StatsResult {
                        family: q.family,
                        ip,
                        tcp,
                    }),
                )
            }
            RequestBody::ReachabilityAnswer(a) => {
                // C-226: HRT = NCT − HRD with the host's HRD; the HRD is also the neighbor's
                // cached value now.
                if let Err(e) = self
                    .table
                    .check_ref(0, chimney_abi::Layer::Neighbor, a.handle)
                {
                    return op_err(e);
                }
                self.table
                    .set_neighbor_hrd(a.handle, a.host_reachability_delta);
                if let Some(d) = &dp {
                    lock_dp(d).reachability_answer(
                        a.handle,
                        a.host_reachability_delta,
                        crate::data_path::now(),
                    );
                }
                done(NdisStatus::SUCCESS, CompletionBody::ReachabilityAnswer)
            }
            RequestBody::Terminate(t) => {
                // Validate first (a refused tree changes nothing), then export live
                // connections, then let the table free the objects.
                let mut probe = self.table.clone();
                if let Err(e) = probe.terminate(t) {
                    return op_err(e);
                }
                let live = match &dp {
                    Some(d) => {
                        let (states, upload) =
                            offload_glue::before_terminate(&self.table, &mut lock_dp(d), t);
                        pre.extend(upload);
                        states
                    }
                    None => Vec::new(),
                };
                match self.table.terminate(t) {
                    Ok(mut r) => {
                        if let Some(d) = &dp {
                            offload_glue::patch_terminate(t, &mut r, &live, &mut lock_dp(d));
                        }
                        done(NdisStatus::SUCCESS, CompletionBody::Terminate(r))
                    }
                    Err(e) => return op_err(e),
                }
            }
        };
        debug!(
            request_id = completion.request_id,
            opcode = completion.opcode,
            tx_head,
            status = %completion.status,
            events = events.len(),
            "request completed"
        );
        let mut out: Vec<RxRecord> = pre
            .into_iter()
            .map(|e| RxRecord::Event(self.sequenced(e)))
            .collect();
        out.push(RxRecord::Completion(completion));
        events.extend(self.adapter_events());
        out.extend(
            events
                .into_iter()
                .map(|e| RxRecord::Event(self.sequenced(e))),
        );
        out
    }

    /// Live delegated state into the table before a query (C-076); returns the table.
    fn refresh_for_query(&mut self, t: &chimney_abi::Tree<chimney_abi::RefBlock>) -> &ObjectTable {
        if let Some(d) = &self.data {
            offload_glue::before_query(&mut self.table, &lock_dp(d), t);
        }
        &self.table
    }

    fn sequenced(&mut self, mut e: Event) -> Event {
        e.sequence = self.event_sequence;
        self.event_sequence = self.event_sequence.wrapping_add(1);
        e
    }
}

/// `NDIS_TCP_CONNECTION_OFFLOAD` this device reports (C-005..C-010): Ethernet
/// encapsulation (C-007), IPv4 and IPv6 (C-008), no SACK yet (C-010), capacity = the TCP
/// limit (C-009).
pub fn capabilities(limits: ObjectLimits) -> TcpConnectionOffload {
    TcpConnectionOffload {
        encapsulation: NDIS_ENCAPSULATION_IEEE_802_3,
        support_ipv4: NDIS_OFFLOAD_SUPPORTED,
        support_ipv6: NDIS_OFFLOAD_SUPPORTED,
        support_ipv6_extension_headers: 0,
        support_sack: 0,
        congestion_algorithm: 0,
        tcp_connection_offload_capacity: limits.tcp,
        flags: 0,
    }
}

/// Why a request chain could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainError {
    pub(crate) reason: Reason,
    pub(crate) field: &'static str,
}

fn chain_err(reason: Reason, field: &'static str) -> ChainError {
    ChainError { reason, field }
}

/// The control pair's I/O: see the module docs.
#[derive(Debug)]
pub struct ControlRing {
    plane: ControlPlane,
    outbox: VecDeque<Vec<u8>>,
    /// Bytes of `outbox.front()` already written to rx buffers.
    sent: usize,
    pending_bytes: usize,
    /// Fragment sequence number of `outbox.front()`.
    rx_sequence: u32,
    /// Chains consumed so far (tx requests + rx buffers), to detect progress.
    served: u64,
    /// The data plane whose connections the operations act on (None: issue-2 behaviour).
    data_plane: Option<Arc<crate::data_plane::DataPlane>>,
}

impl ControlRing {
    pub fn new(limits: ObjectLimits) -> Self {
        Self::with_plane(ControlPlane::new(limits))
    }

    /// A control ring whose operations act on the live connections of `data`.
    pub fn with_data_path(limits: ObjectLimits, data: SharedDataPath) -> Self {
        Self::with_plane(ControlPlane::with_data_path(limits, data))
    }

    /// A control ring for a device with a data plane (the daemon's normal case).
    pub fn with_data_plane(limits: ObjectLimits, dp: Arc<crate::data_plane::DataPlane>) -> Self {
        let mut r = Self::with_data_path(limits, dp.shared());
        r.data_plane = Some(dp);
        r
    }

    pub fn data_plane(&self) -> Option<Arc<crate::data_plane::DataPlane>> {
        self.data_plane.clone()
    }

    fn with_plane(plane: ControlPlane) -> Self {
        Self {
            data_plane: None,
            plane,
            outbox: VecDeque::new(),
            sent: 0,
            pending_bytes: 0,
            rx_sequence: 0,
            served: 0,
        }
    }

    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// Deliver events the data path raised (no request needed): call after the data path
    /// had work (switched frames, timers).
    pub fn pump_events<M: GuestMemory>(&mut self, mem: &M, rx: &mut Queue) -> RingActivity {
        let mut act = RingActivity::default();
        for r in self.plane.data_events() {
            let bytes = r.encode();
            self.pending_bytes += bytes.len();
            self.outbox.push_back(bytes);
        }
        self.deliver(mem, rx, &mut act);
        if !self.outbox.is_empty() && rx.enable_notification(mem).unwrap_or(false) {
            self.deliver(mem, rx, &mut act);
        }
        act
    }

    /// Records waiting for rx buffers.
    pub fn pending_records(&self) -> usize {
        self.outbox.len()
    }

    /// Serve the control pair: `tx` is queue 3 (driver → device), `rx` is queue 2.
    ///
    /// Re-arms notifications before returning (with EVENT_IDX the avail_event fields are
    /// what make the driver kick again): tx always unless back-pressured, rx while records
    /// wait for buffers. Work that slipped in while re-arming is served in the same call.
    pub fn process<M: GuestMemory>(
        &mut self,
        mem: &M,
        tx: &mut Queue,
        rx: &mut Queue,
    ) -> RingActivity {
        let mut act = RingActivity::default();
        let mut idle_rounds = 0;
        loop {
            let before = self.served;
            self.serve_tx(mem, tx, rx, &mut act);
            self.deliver(mem, rx, &mut act);
            let mut again = false;
            if self.pending_bytes <= MAX_PENDING_BYTES {
                again |= tx.enable_notification(mem).unwrap_or(false);
            }
            if !self.outbox.is_empty() {
                again |= rx.enable_notification(mem).unwrap_or(false);
            }
            // A broken avail index makes "more available" true forever while nothing can
            // be popped; never spin on it.
            if self.served == before {
                idle_rounds += 1;
            }
            if !again || idle_rounds > 1 {
                return act;
            }
        }
    }

    fn serve_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        tx: &mut Queue,
        rx: &mut Queue,
        act: &mut RingActivity,
    ) {
        while self.pending_bytes <= MAX_PENDING_BYTES {
            let Some(chain) = tx.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let records = match read_chain(mem, chain) {
                Ok(bytes) => self.handle_bytes(&bytes, head),
                Err((header, e)) => {
                    debug!(head, reason = ?e.reason, field = e.field, "bad request chain");
                    vec![RxRecord::Completion(refusal(
                        header,
                        head,
                        e.reason,
                        Field::new(e.field),
                    ))]
                }
            };
            for r in records {
                let bytes = r.encode();
                self.pending_bytes += bytes.len();
                self.outbox.push_back(bytes);
            }
            // Requests are device-readable only: nothing written, used length 0.
            if let Err(e) = tx.add_used(mem, head, 0) {
                warn!(head, error = %e, "control tx: add_used failed");
            }
            act.tx_used = true;
            self.served += 1;
            // Deliver as we go so a long run of requests cannot starve rx.
            self.deliver(mem, rx, act);
        }
    }

    fn handle_bytes(&mut self, bytes: &[u8], head: u16) -> Vec<RxRecord> {
        let header = match RequestHeader::decode(bytes) {
            Ok(h) => h,
            Err(e) => {
                return vec![RxRecord::Completion(refusal(
                    None,
                    head,
                    e.reason(),
                    e.field(),
                ))]
            }
        };
        let len = header.length as usize;
        if len > bytes.len() {
            // The chain ends before the record the header declares.
            return vec![RxRecord::Completion(refusal(
                Some(header),
                head,
                Reason::ChainTooShort,
                Field::new("header.length"),
            ))];
        }
        // Bytes after the record (buffers rounded up by the driver) are ignored.
        self.plane.handle(&bytes[..len], head)
    }

    /// Write outbox records into posted rx buffers.
    fn deliver<M: GuestMemory>(&mut self, mem: &M, rx: &mut Queue, act: &mut RingActivity) {
        while let Some(front) = self.outbox.front() {
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                return;
            };
            let head = chain.head_index();
            let descs: Vec<(GuestAddress, usize)> = chain
                .writable()
                .map(|d| (d.addr(), d.len() as usize))
                .collect();
            let cap = descs
                .iter()
                .fold(0usize, |a, d| a.saturating_add(d.1))
                .min(MAX_FRAGMENT);
            let mut used = 0u32;
            if let Some((frag, n)) = fragment(front, self.rx_sequence, self.sent, cap) {
                if write_scattered(mem, &descs, &frag) {
                    used = frag.len() as u32;
                    self.sent += n;
                    if self.sent == front.len() {
                        self.pending_bytes -= front.len();
                        self.outbox.pop_front();
                        self.sent = 0;
                        self.rx_sequence = self.rx_sequence.wrapping_add(1);
                    }
                } else {
                    warn!(
                        head,
                        "control rx: buffer outside guest memory, returned unused"
                    );
                }
            } else {
                debug!(
                    head,
                    cap, "control rx: buffer below MIN_RX_BUFFER, returned unused"
                );
            }
            if let Err(e) = rx.add_used(mem, head, used) {
                warn!(head, error = %e, "control rx: add_used failed");
            }
            act.rx_used = true;
            self.served += 1;
        }
    }
}

/// Write `data` across the writable descriptors, in order. False if any part lies outside
/// guest memory (the buffer is then returned unused and the fragment goes to the next one).
pub(crate) fn write_scattered<M: GuestMemory>(
    mem: &M,
    descs: &[(GuestAddress, usize)],
    data: &[u8],
) -> bool {
    let mut rest = data;
    for (addr, len) in descs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(*len);
        if mem.write_slice(&rest[..n], *addr).is_err() {
            return false;
        }
        rest = &rest[n..];
    }
    rest.is_empty()
}

/// Copy a request chain out of guest memory (checked accessors only). On failure, the
/// request header is returned too when the bytes read so far contain a valid one.
pub(crate) fn read_chain<M: GuestMemory>(
    mem: &M,
    chain: virtio_queue::DescriptorChain<&M>,
) -> Result<Vec<u8>, (Option<RequestHeader>, ChainError)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut count = 0usize;
    let mut last_has_next = false;
    let header_of = |b: &[u8]| RequestHeader::decode(b).ok();
    for desc in chain {
        count += 1;
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            return Err((
                header_of(&buf),
                chain_err(Reason::WritableDescriptor, "chain.descriptor.flags"),
            ));
        }
        let len = desc.len() as usize;
        if buf.len().saturating_add(len) > MAX_REQUEST_LEN {
            return Err((
                header_of(&buf),
                chain_err(Reason::ChainTooLong, "chain.length"),
            ));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        if mem.read_slice(&mut buf[start..], desc.addr()).is_err() {
            buf.truncate(start);
            return Err((
                header_of(&buf),
                chain_err(Reason::DescriptorOutOfMemory, "chain.descriptor.addr"),
            ));
        }
    }
    // The iterator stops early on a bad `next` index, a loop (its TTL) or an unreadable
    // descriptor table; the last descriptor then still says "next".
    if count == 0 || last_has_next {
        return Err((
            header_of(&buf),
            chain_err(Reason::MalformedChain, "chain.descriptor.next"),
        ));
    }
    if buf.len() < REQUEST_HEADER_LEN {
        return Err((None, chain_err(Reason::ChainTooShort, "chain.length")));
    }
    Ok(buf)
}
