//! Data I/O (DESIGN.md rule 1, digest §3.6–§3.12) and the offloaded connections' TCP, sans-io.
//!
//! Each offloaded TCP object runs in its own chimney-netstack [`Engine`], imported at initiate
//! from the ABI state plus the send and buffered receive data (C-054..C-059) and exported again
//! at terminate. The [`DataPath`] is also the logical switch: [`DataPath::classify`] tells the
//! NIC which received frames belong to an offloaded 4-tuple; everything else goes to the guest
//! on queue pair 0.
//!
//! Interface (the I/O loop drives it; time is an argument, nothing here blocks):
//! * `offload(handle, host_context, export, now)` / `terminate(handle, now)`;
//! * `handle_frame(now, handle, frame)` for switched frames, `data_request(now, req)` for data
//!   tx records, `handle_timeout(now)` when `poll_timeout()` is due;
//! * then `flush(now, wire)` hands frames to the wire and moves completions, receive data and
//!   events into the outboxes: `take_records(pair)` (data rx records per data pair) and
//!   `take_events()` (control-ring events).

use crate::conversion;
use crate::policy::{DefaultPolicy, VendorPolicy};
use crate::statistics::{frame_shape, OffloadCounters};
use chimney_abi::data_io::{data_pair_for, DataRecord, DataRequest, DataRxKind, FLAG_PUSH};
use chimney_abi::event::{tcp_event, upload_reason};
use chimney_abi::{
    DeviceHandle, Event, IpOffloadStats, NdisStatus, NeighborState, StatsFamily, TcpData,
    TcpOffloadStats,
};
use chimney_netstack::{
    ConnHandle, ConnectionExport, Engine, EngineConfig, EngineError, Event as NsEvent, Instant,
    TcpConnectionState, Transmit, TxOffload,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// Indicated but not yet returned bytes per connection above which the device stops reading
/// from the connection's receive buffer (the window then closes: real back-pressure).
pub const MAX_OUTSTANDING_INDICATED: usize = 1 << 20;
/// Send data one connection may hold (unacknowledged + not yet sent, initiate send data
/// included): 32 MiB, twice the largest preferred send backlog the device indicates (16 MiB,
/// C-155), so a host that follows SendBacklogSize never reaches it. It bounds what comes
/// back at terminate in one UPLOAD_DATA record (the driver caps control records at 64 MiB;
/// ring-abi.md §16.5). A SEND that would go beyond it completes with RESOURCES, and so does
/// every later SEND of the connection: the stream has a hole, the host must upload it.
pub const MAX_SEND_HELD: u64 = 32 << 20;
/// Buffered receive data accepted at initiate (its receive buffer is sized from it): 8 MiB.
/// More fails the TCP block with OFFLOAD_TCP_RCV_BUFFER (C-044).
pub const MAX_BUFFERED_IMPORT: usize = 8 << 20;
/// Default indication size when the host's RcvIndicationSize is 0 ("as much as possible").
const DEFAULT_INDICATION: usize = 256 << 10;

/// A 4-tuple as the switch sees it, from the device's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SwitchKey {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Errors of offload/terminate (the control plane turns them into block statuses).
#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("4-tuple already offloaded")]
    TupleInUse,
    #[error("unknown TCP handle")]
    UnknownHandle,
    #[error("send data of {0} bytes is more than the device holds ({MAX_SEND_HELD})")]
    SendDataTooLarge(usize),
    #[error("buffered data of {0} bytes is more than the device takes ({MAX_BUFFERED_IMPORT})")]
    BufferedDataTooLarge(usize),
}

impl DataPathError {
    /// The initiate block status for a connection refused with this error (C-044).
    pub fn initiate_status(&self) -> NdisStatus {
        match self {
            DataPathError::SendDataTooLarge(_) => NdisStatus::OFFLOAD_TCP_XMIT_BUFFER,
            DataPathError::BufferedDataTooLarge(_) => NdisStatus::OFFLOAD_TCP_RCV_BUFFER,
            _ => NdisStatus::FAILURE,
        }
    }
}

/// What a terminate took out of the data path.
#[derive(Debug)]
pub enum Terminated {
    /// A live connection: its export and the data that travels back (C-111, C-115..C-117).
    Live(Box<ConnectionExport>, TcpData),
    /// A connection the engine had already closed (retransmit/keepalive/FIN_WAIT_2 timeout,
    /// reset): nothing to export, but its last delegated state (State CLOSED, the live
    /// SndUna/SndMax/RcvNxt of its last moment) is what the host gets back, not the state
    /// from offload time. `None` only if the engine never showed a TCB (not expected).
    /// After a timeout the data travels back as for a live connection (its outstanding
    /// sends completed UPLOAD_IN_PROGRESS, ring-abi.md §16.4); after a reset there is none
    /// (its sends completed REQUEST_ABORTED, C-192).
    Closed(Option<chimney_netstack::TcpDelegated>, TcpData),
}

impl Terminated {
    /// The export of a live connection, `None` for a closed one.
    pub fn live(self) -> Option<(ConnectionExport, TcpData)> {
        match self {
            Terminated::Live(e, d) => Some((*e, d)),
            Terminated::Closed(..) => None,
        }
    }
}

struct PendingSend {
    request_id: u64,
    /// Cumulative byte offset (since offload) at which this request's data ends.
    end: u64,
    len: u32,
}

struct Posted {
    request_id: u64,
    capacity: usize,
    data: Vec<u8>,
}

struct Conn {
    engine: Engine,
    ch: ConnHandle,
    host_context: u64,
    key: SwitchKey,
    pair: u16,
    /// Bytes handed to us (host sends + initial unsent data) not yet in the engine.
    unsent: VecDeque<u8>,
    /// Cumulative bytes accepted from the host (offset 0 = SndUna at offload).
    queued: u64,
    /// Cumulative bytes acknowledged by the peer, and the SndUna that corresponds.
    acked: u64,
    snd_una: u32,
    sends: VecDeque<PendingSend>,
    posted: VecDeque<Posted>,
    indicated_outstanding: HashMap<u64, usize>,
    rcv_indication_size: usize,
    /// Received bytes read out of the engine but not yet delivered (indication batch).
    rx_hold: Vec<u8>,
    /// Bytes delivered to the host (posted buffers + indications).
    received: u64,
    peer_fin: bool,
    disconnect_indicated: bool,
    aborted: bool,
    disconnect: Option<u64>,
    /// Transmission stopped by an invalidate (C-100).
    blocked: bool,
    scratch: Vec<u8>,
    family: StatsFamily,
    /// The neighbor object this connection sends through (reachability, §4.2).
    neighbor: Option<DeviceHandle>,
    /// 802.1Q: the neighbor's VlanId (receive filter, C-178).
    vlan_id: u16,
    /// Engine retransmissions already counted in the statistics.
    retrans_seen: u64,
    /// State after the last step (ResetEstablished needs the state before the RST).
    last_state: TcpConnectionState,
    /// A SEND went beyond MAX_SEND_HELD: this and every later SEND complete RESOURCES.
    send_refused: bool,
    /// Delegated state taken when the engine closed the connection (timeout, reset), kept
    /// for terminate in case the engine releases it.
    closed_state: Option<chimney_netstack::TcpOffloadState>,
    /// `acked + received` at the last step (forward progress, bytes moved).
    moved_seen: u64,
    /// Last TcpIndicateSendBacklogChange value and when it went out (C-155).
    backlog_indicated: Option<u32>,
    backlog_at: Option<Instant>,
    /// The deadline this connection has in the timer heap.
    scheduled: Option<Instant>,
    /// Send completions held by the policy's completion delay, and the latest due time
    /// among them (a connection's completions stay in order, C-140).
    held_sends: u32,
    held_until: Instant,
}

/// Neighbor reachability bookkeeping (digest §4.2): times in microseconds of [`now`]
/// (signed, so that `NCT − HRD` may lie before the device started).
struct Reach {
    host_context: u64,
    state: NeighborState,
    /// HostReachabilityTime and NICReachabilityTime.
    hrt: i64,
    nrt: i64,
    /// A NeighborReachabilityQuery is out and not answered yet.
    pending: bool,
    refs: u32,
}

/// Host parameters the data path needs (SET_PARAMETERS, digest §5.4).
#[derive(Debug, Clone, Copy)]
pub struct DataParameters {
    pub ticks_per_second: u32,
    /// NceStaleTicks (0 = reachability queries off).
    pub nce_stale_ticks: u32,
}

impl Default for DataParameters {
    fn default() -> Self {
        DataParameters {
            ticks_per_second: 1000,
            nce_stale_ticks: 0,
        }
    }
}

/// The offloaded connections; see the module docs.
pub struct DataPath {
    mac: [u8; 6],
    data_pairs: u16,
    conns: HashMap<DeviceHandle, Conn>,
    by_key: HashMap<SwitchKey, DeviceHandle>,
    records: Vec<VecDeque<DataRecord>>,
    events: VecDeque<Event>,
    next_indication: u64,
    tx_offload: TxOffload,
    /// Connections with work for `flush` (received frames, requests, timers).
    dirty: Vec<DeviceHandle>,
    /// Handles terminated recently: their late data requests complete UPLOAD_IN_PROGRESS
    /// (C-145: the host re-sends them on the host stack) instead of ERROR.
    terminated: VecDeque<DeviceHandle>,
    wire: WireSink,
    /// The vendor's decisions (docs/vendor-guide.md); the correct target by default.
    policy: Box<dyn VendorPolicy>,
    counters: OffloadCounters,
    neighbors: HashMap<DeviceHandle, Reach>,
    params: DataParameters,
    /// Bytes moved by all connections so far (acknowledged sends + delivered receives).
    moved_total: u64,
    /// Connections by their next engine deadline; stale entries (deadline changed) are
    /// skipped when popped, so each event costs O(log n) (DESIGN.md rule 7).
    timers: BinaryHeap<Reverse<(Instant, DeviceHandle)>>,
    /// Send completions held back by the vendor policy (completion delays), by due time.
    held: std::collections::BTreeMap<(Instant, u64), (u16, DeviceHandle, DataRecord)>,
    held_seq: u64,
}

/// Where the engines' frames go (the TAP in the device, a queue in tests).
pub type WireSink = Box<dyn FnMut(&Transmit<'_>) + Send>;

/// Monotonic time for the engines: microseconds since the first call in this process.
pub fn now() -> Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let o = ORIGIN.get_or_init(std::time::Instant::now);
    Instant::from_micros(o.elapsed().as_micros() as u64)
}

impl DataPath {
    /// `mac`: the NIC's address (used when the neighbor's source MAC is zero, C-047).
    /// `data_pairs`: how many data queue pairs there are (0 = records go to list 0).
    pub fn new(mac: [u8; 6], data_pairs: u16, tx_offload: TxOffload, wire: WireSink) -> Self {
        DataPath {
            mac,
            data_pairs,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            records: (0..data_pairs.max(1)).map(|_| VecDeque::new()).collect(),
            events: VecDeque::new(),
            next_indication: 1,
            tx_offload,
            dirty: Vec::new(),
            terminated: VecDeque::new(),
            wire,
            policy: Box::new(DefaultPolicy),
            counters: OffloadCounters::default(),
            neighbors: HashMap::new(),
            params: DataParameters::default(),
            moved_total: 0,
            timers: BinaryHeap::new(),
            held: std::collections::BTreeMap::new(),
            held_seq: 0,
        }
    }

    /// Move the send completions of `h` appended to its pair's outbox from index `from` into
    /// the held set when the policy delays them (or when earlier ones of `h` are still held:
    /// the order within a connection is kept, C-140).
    fn hold_sends(&mut self, now: Instant, h: DeviceHandle, pair: u16, from: usize) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        let Some(out) = self.records.get_mut(usize::from(pair)) else {
            return;
        };
        if from >= out.len() {
            return;
        }
        let tail: Vec<DataRecord> = out.drain(from..).collect();
        for r in tail {
            if r.kind != DataRxKind::SendComplete || r.handle != Some(h) {
                out.push_back(r);
                continue;
            }
            let d = self.policy.send_completion_delay(h);
            if d.is_zero() && c.held_sends == 0 {
                out.push_back(r);
                continue;
            }
            let due = (now + d).max(c.held_until);
            c.held_until = due;
            c.held_sends += 1;
            self.held_seq += 1;
            self.held.insert((due, self.held_seq), (pair, h, r));
        }
    }

    /// Held completions that are due (or all of `only`'s, at its terminate) go out.
    fn release_held(&mut self, now: Instant, only: Option<DeviceHandle>) {
        let keys: Vec<(Instant, u64)> = match only {
            None => self
                .held
                .range(..=(now, u64::MAX))
                .map(|(k, _)| *k)
                .collect(),
            Some(h) => self
                .held
                .iter()
                .filter(|(_, v)| v.1 == h)
                .map(|(k, _)| *k)
                .collect(),
        };
        for k in keys {
            if let Some((pair, h, r)) = self.held.remove(&k) {
                if let Some(c) = self.conns.get_mut(&h) {
                    c.held_sends = c.held_sends.saturating_sub(1);
                }
                if let Some(out) = self.records.get_mut(usize::from(pair)) {
                    out.push_back(r);
                }
            }
        }
    }

    /// Host parameters (SET_PARAMETERS): tick rate and NceStaleTicks.
    pub fn set_parameters(&mut self, p: DataParameters) {
        self.params = p;
    }

    fn ticks_to_micros(&self, ticks: u32) -> i64 {
        let tps = i64::from(self.params.ticks_per_second.max(1));
        i64::from(ticks) * 1_000_000 / tps
    }

    fn micros_to_ticks(&self, micros: i64) -> u32 {
        let tps = i64::from(self.params.ticks_per_second.max(1));
        (micros.max(0) * tps / 1_000_000).min(i64::from(u32::MAX)) as u32
    }

    /// One family's statistics (C-018, C-019); `reset` zeroes them after reading.
    pub fn statistics(
        &mut self,
        family: StatsFamily,
        reset: bool,
    ) -> (IpOffloadStats, TcpOffloadStats) {
        let established = self
            .conns
            .values()
            .filter(|c| {
                c.family == family
                    && matches!(
                        c.engine.state(c.ch),
                        Ok(TcpConnectionState::Established | TcpConnectionState::CloseWait)
                    )
            })
            .count() as u32;
        let snap = self.counters.snapshot(family, established);
        if reset {
            self.counters.reset(family);
        }
        snap
    }

    /// Bytes moved by all offloaded connections so far (policy triggers).
    pub fn moved_total(&self) -> u64 {
        self.moved_total
    }

    /// Register the neighbor a freshly offloaded connection sends through (§4.2): at the
    /// first connection HRT = NCT − HRD and NRT = NCT − NRD (C-014: host ticks).
    pub fn attach_neighbor(
        &mut self,
        h: DeviceHandle,
        neighbor: DeviceHandle,
        host_context: u64,
        state: NeighborState,
        now: Instant,
    ) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        c.neighbor = Some(neighbor);
        let nct = now.micros() as i64;
        let hrd = self.ticks_to_micros(state.cached.host_reachability_delta);
        let nrd = self.ticks_to_micros(state.delegated.nic_reachability_delta);
        let r = self.neighbors.entry(neighbor).or_insert(Reach {
            host_context,
            state,
            hrt: nct - hrd,
            nrt: nct - nrd,
            pending: false,
            refs: 0,
        });
        r.refs += 1;
    }

    /// The host's answer to a NeighborReachabilityQuery (C-226): HRT = NCT − HRD. False
    /// when no offloaded connection uses that neighbor.
    pub fn reachability_answer(&mut self, neighbor: DeviceHandle, hrd: u32, now: Instant) -> bool {
        let hrd_us = self.ticks_to_micros(hrd);
        let Some(r) = self.neighbors.get_mut(&neighbor) else {
            return false;
        };
        r.hrt = now.micros() as i64 - hrd_us;
        r.state.cached.host_reachability_delta = hrd;
        r.pending = false;
        true
    }

    /// Current NicReachabilityDelta of a neighbor (query, C-228): NCT − NRT in host ticks.
    pub fn nic_reachability_delta(&self, neighbor: DeviceHandle, now: Instant) -> Option<u32> {
        let r = self.neighbors.get(&neighbor)?;
        Some(self.micros_to_ticks(now.micros() as i64 - r.nrt))
    }

    /// Apply a cached update of a neighbor's HRD and DlDestinationAddress to the
    /// reachability record (the host confirmed reachability: HRT = NCT − HRD).
    pub fn neighbor_updated(
        &mut self,
        neighbor: DeviceHandle,
        cached: chimney_abi::NeighborCached,
        now: Instant,
    ) {
        let hrd_us = self.ticks_to_micros(cached.host_reachability_delta);
        if let Some(r) = self.neighbors.get_mut(&neighbor) {
            r.state.cached = cached;
            r.hrt = now.micros() as i64 - hrd_us;
        }
    }

    /// A host update of `h`'s cached TCP variables on the live engine (C-083..C-091):
    /// TTL/TOS/flow label/UserPriority on the next frame, Nagle, keepalive, MaxRT,
    /// InitialRcvWnd with UPDATE_RCV_WND. Results go out at the next `flush`.
    pub fn update_cached(
        &mut self,
        now: Instant,
        h: DeviceHandle,
        cached: &chimney_abi::TcpCached,
    ) -> Result<(), DataPathError> {
        let c = self.conns.get_mut(&h).ok_or(DataPathError::UnknownHandle)?;
        let ns = conversion::tcp_cached_to_ns(cached);
        c.engine.update_cached(now, c.ch, &ns)?;
        if cached.rcv_indication_size != 0 {
            c.rcv_indication_size = cached.rcv_indication_size as usize;
        } else {
            c.rcv_indication_size = DEFAULT_INDICATION;
        }
        self.dirty.push(h);
        Ok(())
    }

    /// Hand the target's decisions to a vendor policy (file or code).
    pub fn set_policy(&mut self, policy: Box<dyn VendorPolicy>) {
        self.policy = policy;
    }

    pub fn policy_mut(&mut self) -> &mut dyn VendorPolicy {
        &mut *self.policy
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn contains(&self, h: DeviceHandle) -> bool {
        self.conns.contains_key(&h)
    }

    /// Which data pair (0-based among data pairs) serves `h`.
    pub fn pair_of(&self, h: DeviceHandle) -> u16 {
        data_pair_for(h, self.data_pairs)
    }

    /// Import a connection (initiate). Send data is mapped from SndUna (C-057): bytes up to
    /// SndMax are in flight and retransmitted as needed (C-058), the rest goes out after them
    /// (C-059); buffered receive data is delivered before anything received later (C-056).
    pub fn offload(
        &mut self,
        handle: DeviceHandle,
        host_context: u64,
        export: &ConnectionExport,
        now: Instant,
    ) -> Result<(), DataPathError> {
        let key = SwitchKey {
            local: SocketAddr::new(
                export.path.const_.source_address,
                export.tcp.const_.local_port,
            ),
            remote: SocketAddr::new(
                export.path.const_.destination_address,
                export.tcp.const_.remote_port,
            ),
        };
        if self.by_key.contains_key(&key) {
            return Err(DataPathError::TupleInUse);
        }
        if export.tcp.send_data.len() as u64 > MAX_SEND_HELD {
            return Err(DataPathError::SendDataTooLarge(export.tcp.send_data.len()));
        }
        if export.tcp.buffered_data.len() > MAX_BUFFERED_IMPORT {
            return Err(DataPathError::BufferedDataTooLarge(
                export.tcp.buffered_data.len(),
            ));
        }
        let src = &export.neighbor.const_.dl_source_address;
        let mut mac = self.mac;
        if src[..6] != [0; 6] {
            mac.copy_from_slice(&src[..6]);
        }
        let (v4, v6) = match key.local.ip() {
            IpAddr::V4(a) => (Some(a), None),
            IpAddr::V6(a) => (None, Some(a)),
        };
        let mut cfg = EngineConfig::new(mac, v4, v6);
        // 802.1Q/p (§3.16): the engine tags every frame with VID = the neighbor's VlanId and
        // PCP = the connection's UserPriority (C-152, also after updates: C-091).
        let vlan_id = export.neighbor.const_.vlan_id & 0x0fff;
        cfg.vlan_id = vlan_id;
        cfg.offload = self.tx_offload;
        cfg.mtu = export.path.cached.path_mtu.clamp(576, 65535) as u16;
        cfg.seed = handle.0;
        self.policy.tune(&mut cfg);
        // Room for the imported data plus a window's worth of new sends.
        let sd = export.tcp.send_data.len();
        // Room for the imported data plus 512 KiB (windows scale; thousands of connections
        // must fit in memory).
        cfg.tcp.send_buffer = (sd + (512 << 10)).next_power_of_two();
        cfg.tcp.recv_buffer = (export.tcp.buffered_data.len() + (512 << 10)).next_power_of_two();
        let mut engine = Engine::new(cfg, now)?;
        let mut import = export.clone();
        // The engine keeps the in-flight part (SndUna..SndMax) itself; the rest of the send
        // data is fed through `unsent` so the send buffer bound holds.
        let in_flight =
            chimney_netstack::seq::dist(export.tcp.delegated.snd_una, export.tcp.delegated.snd_max)
                as usize;
        let in_flight = in_flight.min(sd);
        let rest = import.tcp.send_data.split_off(in_flight);
        import.tcp.buffered_data = Vec::new();
        let ch = engine.import(now, &import)?;
        let pair = self.pair_of(handle);
        let mut c = Conn {
            engine,
            ch,
            host_context,
            key,
            pair,
            unsent: rest.into(),
            queued: sd as u64,
            acked: 0,
            snd_una: export.tcp.delegated.snd_una,
            sends: VecDeque::new(),
            posted: VecDeque::new(),
            indicated_outstanding: HashMap::new(),
            rcv_indication_size: match export.tcp.cached.rcv_indication_size as usize {
                0 => DEFAULT_INDICATION,
                n => n,
            },
            rx_hold: export.tcp.buffered_data.clone(),
            received: 0,
            peer_fin: false,
            disconnect_indicated: false,
            aborted: false,
            disconnect: None,
            blocked: false,
            scratch: vec![0; 16 << 10],
            family: match key.local.ip() {
                IpAddr::V4(_) => StatsFamily::Ipv4,
                IpAddr::V6(_) => StatsFamily::Ipv6,
            },
            neighbor: None,
            vlan_id,
            retrans_seen: 0,
            last_state: export.tcp.delegated.state,
            closed_state: None,
            send_refused: false,
            moved_seen: 0,
            backlog_indicated: None,
            backlog_at: None,
            scheduled: None,
            held_sends: 0,
            held_until: now,
        };
        c.retrans_seen = c.engine.conn_stats(c.ch).map_or(0, |s| s.retransmits);
        c.feed();
        self.by_key.insert(key, handle);
        self.policy.offloaded(handle);
        self.conns.insert(handle, c);
        self.dirty.push(handle);
        Ok(())
    }

    /// The logical switch: the offloaded connection a received frame belongs to.
    pub fn classify(&self, frame: &[u8]) -> Option<DeviceHandle> {
        if self.by_key.is_empty() {
            return None;
        }
        let key = parse_key(frame)?;
        self.by_key.get(&key).copied()
    }

    /// A frame the switch gave to `h`. `checked`: the TAP already verified checksums.
    pub fn handle_frame(&mut self, now: Instant, h: DeviceHandle, frame: &[u8], checked: bool) {
        self.handle_frame_gso(now, h, frame, checked, None);
    }

    /// As [`DataPath::handle_frame`] for a frame that may be a GSO super-frame of
    /// `gso_mss`-sized segments (large receive from the TAP): counted as its segments.
    pub fn handle_frame_gso(
        &mut self,
        now: Instant,
        h: DeviceHandle,
        frame: &[u8],
        checked: bool,
        gso_mss: Option<u16>,
    ) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        let shape = frame_shape(frame);
        // §3.16 receive rule (C-178): neighbor VlanId 0 accepts any tag or none; otherwise
        // only frames tagged with that VID.
        if c.vlan_id != 0 && frame_vid(frame) != Some(c.vlan_id) {
            if let Some(s) = &shape {
                self.counters.count_discard(s);
            }
            return;
        }
        let ok = match c.engine.handle_frame_with(now, frame, !checked) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(handle = h.0, error = %e, "offloaded frame dropped");
                false
            }
        };
        if let Some(s) = &shape {
            self.counters.count_in(s, gso_mss, ok);
        }
        self.dirty.push(h);
    }

    /// A data tx record (already decoded). Results come out of `flush`.
    pub fn data_request(&mut self, now: Instant, req: DataRequest) {
        let h = req.handle();
        let pair = self.pair_of(h);
        let from = self.records[usize::from(pair)].len();
        let Some(c) = self.conns.get_mut(&h) else {
            let out = &mut self.records[usize::from(pair)];
            let kind = match req {
                DataRequest::Send { .. } => DataRxKind::SendComplete,
                DataRequest::PostReceive { .. } => DataRxKind::ReceiveComplete,
                DataRequest::Disconnect { .. } => DataRxKind::DisconnectComplete,
                DataRequest::Forward { .. } => DataRxKind::ForwardComplete,
                DataRequest::ReceiveReturn { .. } => return,
            };
            if self.terminated.contains(&h) {
                out.push_back(DataRecord {
                    kind,
                    flags: 0,
                    handle: Some(h),
                    request_id: req.request_id(),
                    status: NdisStatus::UPLOAD_IN_PROGRESS,
                    bytes: 0,
                    data: Vec::new(),
                });
            } else {
                out.push_back(DataRecord {
                    kind: DataRxKind::Error,
                    flags: 0,
                    handle: Some(h),
                    request_id: req.request_id(),
                    status: NdisStatus::INVALID_STATE,
                    bytes: chimney_abi::Reason::UnknownHandle as u32,
                    data: Vec::new(),
                });
            }
            return;
        };
        let out = &mut self.records[usize::from(c.pair)];
        let complete = |kind, request_id, status, bytes| DataRecord {
            kind,
            flags: 0,
            handle: Some(h),
            request_id,
            status,
            bytes,
            data: Vec::new(),
        };
        match req {
            DataRequest::Send {
                request_id, data, ..
            } => {
                c.account_acks();
                let held = c.queued - c.acked;
                if let Some(st) = self.policy.send(h, data.len()) {
                    out.push_back(complete(DataRxKind::SendComplete, request_id, st, 0));
                } else if self.policy.send_complete_before_ack() {
                    // Deliberate firmware bug (breaks C-142): completed before its ACK.
                    let n = data.len() as u32;
                    c.queued += data.len() as u64;
                    c.unsent.extend(data);
                    c.feed();
                    out.push_back(complete(
                        DataRxKind::SendComplete,
                        request_id,
                        NdisStatus::SUCCESS,
                        n,
                    ));
                } else if c.aborted {
                    // C-145 / C-192: after an RST the host discards.
                    out.push_back(complete(
                        DataRxKind::SendComplete,
                        request_id,
                        NdisStatus::REQUEST_ABORTED,
                        0,
                    ));
                } else if c.disconnect.is_some() {
                    out.push_back(complete(
                        DataRxKind::SendComplete,
                        request_id,
                        NdisStatus::INVALID_STATE,
                        0,
                    ));
                } else if c.send_refused || held + data.len() as u64 > MAX_SEND_HELD {
                    // The cap on held send data (MAX_SEND_HELD, ring-abi.md §16.5); sticky,
                    // so no later byte goes out after the refused ones (C-140, C-144).
                    c.send_refused = true;
                    tracing::info!(handle = h.0, held, len = data.len(), "send refused: cap");
                    out.push_back(complete(
                        DataRxKind::SendComplete,
                        request_id,
                        NdisStatus::RESOURCES,
                        0,
                    ));
                } else {
                    c.queued += data.len() as u64;
                    c.sends.push_back(PendingSend {
                        request_id,
                        end: c.queued,
                        len: data.len() as u32,
                    });
                    c.unsent.extend(data);
                    c.feed();
                }
            }
            DataRequest::PostReceive {
                request_id,
                capacity,
                ..
            } => {
                if c.aborted || c.disconnect_indicated {
                    // C-164: INVALID_STATE for buffers posted after a disconnect indication.
                    let status = if c.aborted {
                        NdisStatus::REQUEST_ABORTED
                    } else {
                        NdisStatus::INVALID_STATE
                    };
                    out.push_back(complete(DataRxKind::ReceiveComplete, request_id, status, 0));
                } else {
                    c.posted.push_back(Posted {
                        request_id,
                        capacity: capacity as usize,
                        data: Vec::new(),
                    });
                }
            }
            DataRequest::ReceiveReturn { indication_id, .. } => {
                // The window reopens for the returned bytes (see MAX_OUTSTANDING_INDICATED).
                c.indicated_outstanding.remove(&indication_id);
            }
            DataRequest::Disconnect {
                request_id,
                abortive,
                ..
            } => {
                if abortive {
                    // C-181..C-183: RST now; sends complete REQUEST_ABORTED first.
                    if matches!(
                        c.engine.state(c.ch),
                        Ok(TcpConnectionState::Established | TcpConnectionState::CloseWait)
                    ) && !c.aborted
                    {
                        self.counters.count_reset_established(c.family);
                    }
                    let _ = c.engine.abort(c.ch);
                    c.aborted = true;
                    for s in c.sends.drain(..) {
                        out.push_back(complete(
                            DataRxKind::SendComplete,
                            s.request_id,
                            NdisStatus::REQUEST_ABORTED,
                            0,
                        ));
                    }
                    out.push_back(complete(
                        DataRxKind::DisconnectComplete,
                        request_id,
                        NdisStatus::SUCCESS,
                        0,
                    ));
                } else if c.aborted || c.disconnect.is_some() {
                    out.push_back(complete(
                        DataRxKind::DisconnectComplete,
                        request_id,
                        NdisStatus::INVALID_STATE,
                        0,
                    ));
                } else {
                    // C-184: FIN after all queued data (sent once `unsent` drains).
                    c.disconnect = Some(request_id);
                    c.feed();
                }
            }
            DataRequest::Forward {
                request_id, data, ..
            } => {
                // C-198: a forwarded segment (TCP header on) is processed like a received one.
                let status = match c.synthesize_frame(&data) {
                    Some(frame) => {
                        let _ = c.engine.handle_frame_with(now, &frame, false);
                        NdisStatus::SUCCESS
                    }
                    None => NdisStatus::FAILURE,
                };
                out.push_back(complete(DataRxKind::ForwardComplete, request_id, status, 0));
            }
        }
        self.dirty.push(h);
        self.hold_sends(now, h, pair, from);
    }

    /// Earliest timer of any connection: the top of the timer heap after dropping stale
    /// entries (C-213 timers; O(log n) per change, DESIGN.md rule 7).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let held = self.held.keys().next().map(|k| k.0);
        let mut engine = None;
        while let Some(Reverse((t, h))) = self.timers.peek().copied() {
            if self.conns.get(&h).is_some_and(|c| c.scheduled == Some(t)) {
                engine = Some(t);
                break;
            }
            self.timers.pop();
        }
        match (engine, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Run the timers that are due; only the connections whose deadline passed are touched.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.release_held(now, None);
        while let Some(Reverse((t, h))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&h) else {
                continue;
            };
            if c.scheduled != Some(t) {
                continue;
            }
            c.scheduled = None;
            c.engine.handle_timeout(now);
            self.dirty.push(h);
        }
    }

    /// Put `h`'s current engine deadline into the heap if it changed.
    fn reschedule(&mut self, h: DeviceHandle) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        let next = c.engine.poll_timeout();
        if next != c.scheduled {
            c.scheduled = next;
            if let Some(t) = next {
                self.timers.push(Reverse((t, h)));
            }
        }
    }

    /// Move frames to `wire` and results into the outboxes for every connection with work.
    pub fn flush(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable_by_key(|h| h.0);
        dirty.dedup();
        for h in dirty.drain(..) {
            let Some(c) = self.conns.get_mut(&h) else {
                continue;
            };
            let from = self.records[usize::from(c.pair)].len();
            let pair = c.pair;
            let mut out = Out {
                wire: &mut self.wire,
                counters: &mut self.counters,
                neighbors: &mut self.neighbors,
                events: &mut self.events,
                stale_us: i64::from(self.params.nce_stale_ticks) * 1_000_000
                    / i64::from(self.params.ticks_per_second.max(1)),
                tps: self.params.ticks_per_second,
            };
            c.step(
                now,
                h,
                &mut out,
                &mut self.records[usize::from(c.pair)],
                &mut self.next_indication,
            );
            let moved = c.acked + c.received;
            self.moved_total = self
                .moved_total
                .wrapping_add(moved.saturating_sub(c.moved_seen));
            c.moved_seen = c.moved_seen.max(moved);
            if let Some((code, info)) = self.policy.spontaneous_event(h, moved) {
                self.events
                    .push_back(Event::tcp(h, c.host_context, code, info));
            }
            // TcpIndicateSendBacklogChange (§4.1, C-155): the preferred backlog changed
            // materially and the throttle interval has passed since the last one.
            let throttle = self.policy.send_backlog_throttle();
            if let (Some(throttle), Some(b)) = (throttle, c.preferred_backlog()) {
                let material = c.backlog_indicated.is_none_or(|old| {
                    let d = b.abs_diff(old);
                    d >= old / 4 && d > 0
                });
                let due = c
                    .backlog_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= throttle);
                if material && due && !c.aborted {
                    c.backlog_indicated = Some(b);
                    c.backlog_at = Some(now);
                    self.events.push_back(Event::tcp(
                        h,
                        c.host_context,
                        tcp_event::SEND_BACKLOG_CHANGE,
                        b,
                    ));
                }
            }
            self.reschedule(h);
            self.hold_sends(now, h, pair, from);
        }
        self.dirty = dirty;
    }

    /// Data rx records waiting for data pair `pair` (0-based among the data pairs).
    pub fn take_records(&mut self, pair: u16) -> Option<&mut VecDeque<DataRecord>> {
        self.records.get_mut(usize::from(pair))
    }

    /// The oldest record waiting for data pair `pair`. The ring takes records one at a time,
    /// as rx buffers allow, so a terminate can still take back undelivered receive data.
    pub fn pop_record(&mut self, pair: u16) -> Option<DataRecord> {
        self.records.get_mut(usize::from(pair))?.pop_front()
    }

    /// Events for the control ring.
    pub fn take_events(&mut self) -> impl Iterator<Item = Event> + '_ {
        self.events.drain(..)
    }

    /// Terminate: pending delayed ACK goes out (through `wire`), then the live state is
    /// exported with its unacknowledged send data and undelivered receive data; outstanding
    /// sends and posted receives complete with UPLOAD_IN_PROGRESS (C-145, C-164). A
    /// connection that can no longer be exported (closed by a timeout or reset) gives its
    /// last delegated state instead ([`Terminated::Closed`], C-111).
    pub fn terminate(
        &mut self,
        now: Instant,
        h: DeviceHandle,
    ) -> Result<Terminated, DataPathError> {
        // Completions the policy still holds go out before anything of the terminate.
        self.release_held(now, Some(h));
        let Some(mut c) = self.conns.remove(&h) else {
            return Err(DataPathError::UnknownHandle);
        };
        self.by_key.remove(&c.key);
        self.terminated.push_back(h);
        if let Some(n) = c.neighbor {
            if let Some(r) = self.neighbors.get_mut(&n) {
                r.refs = r.refs.saturating_sub(1);
                if r.refs == 0 {
                    self.neighbors.remove(&n);
                }
            }
        }
        if self.policy.event_after_terminate() {
            // Deliberate firmware bug (breaks C-114): this event goes out after the
            // terminate completion.
            self.events.push_back(Event::tcp(
                h,
                c.host_context,
                tcp_event::RETRIEVE,
                upload_reason::UPLOAD_REQUESTED,
            ));
        }
        if self.terminated.len() > 4096 {
            self.terminated.pop_front();
        }
        let wire = &mut self.wire;
        let counters = &mut self.counters;
        // Account for what the peer acknowledged so far.
        c.account_acks();
        let out = &mut self.records[usize::from(c.pair)];
        // Receive data not yet handed to the ring goes back in BufferedData (C-117), oldest
        // first; the posted buffers it filled complete with UPLOAD_IN_PROGRESS instead.
        let mut reclaimed = Vec::new();
        let mut kept = VecDeque::with_capacity(out.len());
        for r in out.drain(..) {
            let ours = r.handle == Some(h) && r.status == NdisStatus::SUCCESS;
            match r.kind {
                DataRxKind::ReceiveIndicate if ours => reclaimed.extend_from_slice(&r.data),
                DataRxKind::ReceiveComplete if ours => {
                    reclaimed.extend_from_slice(&r.data);
                    kept.push_back(DataRecord {
                        status: NdisStatus::UPLOAD_IN_PROGRESS,
                        bytes: 0,
                        flags: 0,
                        data: Vec::new(),
                        ..r
                    });
                }
                _ => kept.push_back(r),
            }
        }
        *out = kept;
        // Closed connections: the engine still holds the closed TCB (its last state), or
        // the snapshot taken when it closed.
        let last = c
            .engine
            .tcb(c.ch)
            .ok()
            .map(|t| t.export(c.engine.clock().tick(now)))
            .or(c.closed_state.take());
        let result = match c.engine.export(now, c.ch) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::debug!(handle = h.0, error = %e, "terminate: nothing to export");
                None
            }
        };
        // The owed ACK goes out first (C-118), unless transmission is stopped (C-100).
        while !c.blocked {
            let Some(t) = c.engine.poll_transmit(now) else {
                break;
            };
            emit_frame(wire, counters, &t);
        }
        // Undelivered received data: what posted buffers hold (not completed), then what the
        // device held back for an indication, then the engine's buffer (in the export).
        let mut buffered = reclaimed;
        for p in c.posted.drain(..) {
            buffered.extend_from_slice(&p.data);
            out.push_back(DataRecord {
                kind: DataRxKind::ReceiveComplete,
                flags: 0,
                handle: Some(h),
                request_id: p.request_id,
                status: NdisStatus::UPLOAD_IN_PROGRESS,
                bytes: 0,
                data: Vec::new(),
            });
        }
        buffered.extend_from_slice(&c.rx_hold);
        for s in c.sends.drain(..) {
            out.push_back(DataRecord {
                kind: DataRxKind::SendComplete,
                flags: 0,
                handle: Some(h),
                request_id: s.request_id,
                status: NdisStatus::UPLOAD_IN_PROGRESS,
                bytes: 0,
                data: Vec::new(),
            });
        }
        if let Some(rid) = c.disconnect.take() {
            out.push_back(DataRecord {
                kind: DataRxKind::DisconnectComplete,
                flags: 0,
                handle: Some(h),
                request_id: rid,
                status: NdisStatus::UPLOAD_IN_PROGRESS,
                bytes: 0,
                data: Vec::new(),
            });
        }
        let Some(mut e) = result else {
            let mut data = TcpData::default();
            if !c.aborted {
                if let Some(st) = &last {
                    data.send = st.send_data.clone();
                    data.send.extend(c.unsent.iter().copied());
                    buffered.extend_from_slice(&st.buffered_data);
                    data.buffered = buffered;
                }
            }
            let last = last.map(|st| {
                let mut d = st.delegated;
                d.state = TcpConnectionState::Closed;
                d
            });
            return Ok(Terminated::Closed(last, data));
        };
        buffered.extend_from_slice(&e.tcp.buffered_data);
        e.tcp.buffered_data = buffered.clone();
        // The engine's send data from SndUna, then what never reached the engine.
        e.tcp.send_data.extend(c.unsent.iter().copied());
        let data = TcpData {
            block: 0,
            send: e.tcp.send_data.clone(),
            buffered,
        };
        Ok(Terminated::Live(Box::new(e), data))
    }

    /// Stop (true) or allow (false) transmission of `h`: an invalidated neighbor or path
    /// stops every dependent connection at once (C-100). Frames stay in the engine, which
    /// retransmits when allowed again.
    pub fn set_blocked(&mut self, h: DeviceHandle, blocked: bool) {
        if let Some(c) = self.conns.get_mut(&h) {
            if c.blocked != blocked {
                c.blocked = blocked;
                self.dirty.push(h);
            }
        }
    }

    /// Queued send bytes and held receive bytes of a connection (query backlog, stats).
    pub fn backlog(&self, h: DeviceHandle) -> Option<(u64, usize)> {
        self.conns
            .get(&h)
            .map(|c| (c.queued - c.acked, c.rx_hold.len()))
    }

    /// Current delegated TCP state of `h` (query, C-076), without removing it.
    pub fn delegated(&self, now: Instant, h: DeviceHandle) -> Option<chimney_abi::TcpDelegated> {
        let c = self.conns.get(&h)?;
        let t = c.engine.tcb(c.ch).ok()?;
        let st = t.export(c.engine.clock().tick(now));
        // SendBacklogSize: the preferred backlog, independent of what is queued (C-155,
        // C-079); ReceiveBacklogSize: received bytes held in the device.
        Some(conversion::tcp_delegated_from_ns(
            &st.delegated,
            c.preferred_backlog().unwrap_or(u32::MAX),
            c.rx_hold.len() as u32,
        ))
    }
}

impl Conn {
    /// Move `unsent` into the engine as its send buffer allows; close when a graceful
    /// disconnect is pending and everything is in.
    fn feed(&mut self) {
        while !self.unsent.is_empty() {
            let (a, _) = self.unsent.as_slices();
            let n = self.engine.send(self.ch, a).unwrap_or(0);
            if n == 0 {
                break;
            }
            self.unsent.drain(..n);
        }
        // A closed connection is not closed again: the engine would release it and its
        // last state (returned at terminate) with it.
        if self.unsent.is_empty()
            && self.disconnect.is_some()
            && !matches!(
                self.engine.state(self.ch),
                Ok(TcpConnectionState::Closed) | Err(_)
            )
        {
            let _ = self.engine.close(self.ch);
        }
    }

    fn account_acks(&mut self) {
        if let Ok(t) = self.engine.tcb(self.ch) {
            let una = t.snd_una;
            let d = una.wrapping_sub(self.snd_una);
            if d < 1 << 31 {
                // A FIN's sequence number counts in SndUna but is not data.
                self.acked = (self.acked + u64::from(d)).min(self.queued);
                self.snd_una = una;
            }
        }
    }

    /// Preferred send backlog (TcpIndicateSendBacklogChange, query's SendBacklogSize):
    /// twice what the connection can have in flight, min(cwnd, largest send window), in
    /// 16 KiB steps between 16 KiB and 16 MiB. It depends on the path, never on how many
    /// bytes the host has queued (C-155).
    fn preferred_backlog(&self) -> Option<u32> {
        let t = self.engine.tcb(self.ch).ok()?;
        let in_flight = t.cwnd.min(t.max_snd_wnd.max(t.snd_wnd));
        let b = (u64::from(in_flight) * 2).div_ceil(16 << 10) * (16 << 10);
        Some(b.clamp(16 << 10, 16 << 20) as u32)
    }

    fn step(
        &mut self,
        now: Instant,
        h: DeviceHandle,
        o: &mut Out<'_>,
        out: &mut VecDeque<DataRecord>,
        next_indication: &mut u64,
    ) {
        let events = &mut *o.events;
        let rec = |kind, request_id, status, bytes, flags, data| DataRecord {
            kind,
            flags,
            handle: Some(h),
            request_id,
            status,
            bytes,
            data,
        };
        while let Some(e) = self.engine.poll_event() {
            if matches!(
                e,
                NsEvent::TimedOut(_) | NsEvent::Reset(_) | NsEvent::Closed(_)
            ) && self.closed_state.is_none()
            {
                if let Ok(t) = self.engine.tcb(self.ch) {
                    self.closed_state = Some(t.export(self.engine.clock().tick(now)));
                }
            }
            match e {
                NsEvent::PeerClosed(_) => self.peer_fin = true,
                NsEvent::Reset(_) if !self.aborted => {
                    // C-192: abort indication, outstanding requests REQUEST_ABORTED.
                    self.aborted = true;
                    if matches!(
                        self.last_state,
                        TcpConnectionState::Established | TcpConnectionState::CloseWait
                    ) {
                        o.counters.count_reset_established(self.family);
                    }
                    events.push_back(Event::tcp(h, self.host_context, tcp_event::ABORT, 0));
                    for s in self.sends.drain(..) {
                        out.push_back(rec(
                            DataRxKind::SendComplete,
                            s.request_id,
                            NdisStatus::REQUEST_ABORTED,
                            0,
                            0,
                            Vec::new(),
                        ));
                    }
                    for p in self.posted.drain(..) {
                        let n = p.data.len() as u32;
                        out.push_back(rec(
                            DataRxKind::ReceiveComplete,
                            p.request_id,
                            NdisStatus::REQUEST_ABORTED,
                            n,
                            0,
                            p.data,
                        ));
                    }
                }
                NsEvent::TimedOut(_) => events.push_back(Event::tcp(
                    h,
                    self.host_context,
                    tcp_event::RETRIEVE,
                    upload_reason::TIMEOUT_EXPIRATION,
                )),
                NsEvent::TimeWait(_) => {
                    // C-133: ask for the upload on entering TIME_WAIT (reason: digest §7.1 8).
                    events.push_back(Event::tcp(
                        h,
                        self.host_context,
                        tcp_event::RETRIEVE,
                        upload_reason::UPLOAD_REQUESTED,
                    ))
                }
                _ => {}
            }
        }
        self.feed();
        // Sends complete in order once every byte of them is acknowledged (C-142, C-140).
        self.account_acks();
        while let Some(s) = self.sends.front() {
            if s.end > self.acked {
                break;
            }
            let len = s.len;
            let rid = s.request_id;
            self.sends.pop_front();
            out.push_back(rec(
                DataRxKind::SendComplete,
                rid,
                NdisStatus::SUCCESS,
                len,
                0,
                Vec::new(),
            ));
        }
        if let Some(rid) = self.disconnect {
            let closed_ok = self
                .engine
                .tcb(self.ch)
                .map(|t| {
                    t.snd_una == t.snd_max
                        && t.send.is_empty()
                        && matches!(
                            self.engine.state(self.ch),
                            Ok(TcpConnectionState::FinWait2
                                | TcpConnectionState::TimeWait
                                | TcpConnectionState::Closed
                                | TcpConnectionState::Closing
                                | TcpConnectionState::LastAck)
                        )
                })
                .unwrap_or(true);
            if closed_ok && self.unsent.is_empty() && self.sends.is_empty() {
                // C-186: the FIN and all data are acknowledged.
                let fin_acked = self
                    .engine
                    .tcb(self.ch)
                    .map(|t| t.snd_una == t.snd_max)
                    .unwrap_or(true);
                if fin_acked {
                    self.disconnect = None;
                    out.push_back(rec(
                        DataRxKind::DisconnectComplete,
                        rid,
                        NdisStatus::SUCCESS,
                        0,
                        0,
                        Vec::new(),
                    ));
                }
            }
        }
        self.deliver(h, out, next_indication);
        // C-191: the peer's FIN is indicated only after all earlier data was delivered.
        if self.peer_fin
            && !self.disconnect_indicated
            && !self.aborted
            && self.rx_hold.is_empty()
            && !out.iter().any(|r| {
                r.handle == Some(h)
                    && matches!(
                        r.kind,
                        DataRxKind::ReceiveComplete | DataRxKind::ReceiveIndicate
                    )
            })
            && self.posted.iter().all(|p| p.data.is_empty())
            && self
                .engine
                .tcb(self.ch)
                .map(|t| t.recv.readable())
                .unwrap_or(0)
                == 0
        {
            self.disconnect_indicated = true;
            events.push_back(Event::tcp(h, self.host_context, tcp_event::DISCONNECT, 0));
        }
        // Forward progress through the neighbor (C-223): data of ours acknowledged or new
        // data from the peer.
        let nct = now.micros() as i64;
        let progressed = self.acked + self.received > self.moved_seen;
        let mut reach = self
            .neighbor
            .and_then(|n| o.neighbors.get_mut(&n).map(|r| (n, r)));
        if progressed {
            if let Some((_, r)) = reach.as_mut() {
                r.nrt = nct;
            }
        }
        let mut first = true;
        while !self.blocked {
            let Some(t) = self.engine.poll_transmit(now) else {
                break;
            };
            if first {
                first = false;
                // C-224: before sending through a stale neighbor, ask the host.
                if let Some((n, r)) = reach.as_mut() {
                    if o.stale_us > 0
                        && !r.pending
                        && nct - r.nrt > o.stale_us
                        && nct - r.hrt > o.stale_us
                    {
                        r.pending = true;
                        let tps = i64::from(o.tps.max(1));
                        let mut st = r.state;
                        st.delegated.nic_reachability_delta =
                            ((nct - r.nrt) * tps / 1_000_000).min(i64::from(u32::MAX)) as u32;
                        st.cached.host_reachability_delta =
                            ((nct - r.hrt) * tps / 1_000_000).min(i64::from(u32::MAX)) as u32;
                        o.events.push_back(Event::neighbor_reachability_query(
                            *n,
                            r.host_context,
                            &st,
                        ));
                    }
                }
            }
            emit_frame(o.wire, o.counters, &t);
        }
        if let Ok(st) = self.engine.conn_stats(self.ch) {
            let d = st.retransmits.saturating_sub(self.retrans_seen);
            if d > 0 {
                o.counters.count_retransmits(self.family, d);
                self.retrans_seen = st.retransmits;
            }
        }
        if let Ok(s) = self.engine.state(self.ch) {
            self.last_state = s;
        }
    }

    /// Receive delivery (C-158..C-173): posted buffers first, in posting order, each
    /// completed when full or when the data ran out (push); with none posted, indicate up to
    /// RcvIndicationSize per record while fewer than MAX_OUTSTANDING_INDICATED bytes are out.
    fn deliver(&mut self, h: DeviceHandle, out: &mut VecDeque<DataRecord>, next: &mut u64) {
        loop {
            if self.rx_hold.is_empty() {
                let outstanding: usize = self.indicated_outstanding.values().sum();
                if self.posted.is_empty() && outstanding >= MAX_OUTSTANDING_INDICATED {
                    break;
                }
                let n = self.engine.recv(self.ch, &mut self.scratch).unwrap_or(0);
                if n == 0 {
                    break;
                }
                self.rx_hold.extend_from_slice(&self.scratch[..n]);
            }
            if let Some(p) = self.posted.front_mut() {
                let k = (p.capacity - p.data.len()).min(self.rx_hold.len());
                p.data.extend(self.rx_hold.drain(..k));
                self.received += k as u64;
                if p.data.len() == p.capacity {
                    if let Some(p) = self.posted.pop_front() {
                        out.push_back(completed(h, p, 0));
                    }
                }
                continue;
            }
            let k = self.rx_hold.len().min(self.rcv_indication_size);
            let data: Vec<u8> = self.rx_hold.drain(..k).collect();
            self.received += k as u64;
            let id = *next;
            *next += 1;
            self.indicated_outstanding.insert(id, data.len());
            out.push_back(DataRecord {
                kind: DataRxKind::ReceiveIndicate,
                flags: FLAG_PUSH,
                handle: Some(h),
                request_id: id,
                status: NdisStatus::SUCCESS,
                bytes: data.len() as u32,
                data,
            });
        }
        // Push: a partly filled buffer completes when no more data is waiting (C-161).
        if let Some(p) = self.posted.front() {
            if !p.data.is_empty() && self.rx_hold.is_empty() {
                if let Some(p) = self.posted.pop_front() {
                    out.push_back(completed(h, p, FLAG_PUSH));
                }
            }
        }
    }

    /// An Ethernet + IP header around a forwarded TCP segment (C-196: no IP header given).
    fn synthesize_frame(&self, tcp: &[u8]) -> Option<Vec<u8>> {
        if tcp.len() < 20 || tcp.len() > 65_000 {
            return None;
        }
        let cfg = self.engine.config();
        let mut f = Vec::with_capacity(14 + 40 + tcp.len());
        f.extend_from_slice(&cfg.mac);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xfe]);
        match (self.key.remote.ip(), self.key.local.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = (20 + tcp.len()) as u16;
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[6] = 0x40;
                ip[8] = 64;
                ip[9] = 6;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let ck = ip_checksum(&ip);
                ip[10..12].copy_from_slice(&ck.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86DDu16.to_be_bytes());
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
                ip[6] = 6;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                f.extend_from_slice(&ip);
            }
            _ => return None,
        }
        f.extend_from_slice(tcp);
        Some(f)
    }
}

fn completed(h: DeviceHandle, p: Posted, flags: u16) -> DataRecord {
    DataRecord {
        kind: DataRxKind::ReceiveComplete,
        flags,
        handle: Some(h),
        request_id: p.request_id,
        status: NdisStatus::SUCCESS,
        bytes: p.data.len() as u32,
        data: p.data,
    }
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in h.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The TCP segment (from the TCP header on) of an Ethernet frame carrying TCP over IPv4 or
/// IPv6 (no extension headers): what a FORWARD request carries (C-196).
pub fn tcp_segment(f: &[u8]) -> Option<&[u8]> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    if et == 0x8100 {
        off += 4;
        et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    }
    let ip = f.get(off + 2..)?;
    match et {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            ip.get(ihl..total.min(ip.len()))
        }
        0x86DD => {
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            ip.get(40..(40 + plen).min(ip.len()))
        }
        _ => None,
    }
}

/// The switch key of a received Ethernet frame (optionally 802.1Q-tagged) carrying TCP over
/// IPv4 (no fragments) or IPv6 (no extension headers): local = destination.
pub fn parse_key(f: &[u8]) -> Option<SwitchKey> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    if et == 0x8100 {
        off += 4;
        et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    }
    let ip = f.get(off + 2..)?;
    let (src, dst, l4): (IpAddr, IpAddr, &[u8]) = match et {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if ip.first()? >> 4 != 4 || ihl < 20 || *ip.get(9)? != 6 {
                return None;
            }
            // Fragments go up the normal path (no reassembly, §3.5/C-179).
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            if frag & 0x3fff != 0 {
                return None;
            }
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (s.into(), d.into(), ip.get(ihl..)?)
        }
        0x86DD => {
            if ip.first()? >> 4 != 6 || *ip.get(6)? != 6 {
                return None;
            }
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (s.into(), d.into(), ip.get(40..)?)
        }
        _ => return None,
    };
    let sp = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dp = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    Some(SwitchKey {
        local: SocketAddr::new(dst, dp),
        remote: SocketAddr::new(src, sp),
    })
}

/// What a connection's step writes besides its own records.
struct Out<'a> {
    wire: &'a mut WireSink,
    counters: &'a mut OffloadCounters,
    neighbors: &'a mut HashMap<DeviceHandle, Reach>,
    events: &'a mut VecDeque<Event>,
    /// NceStaleTicks in microseconds (0 = off).
    stale_us: i64,
    tps: u32,
}

/// The VID of an 802.1Q-tagged frame, `None` for an untagged one.
fn frame_vid(f: &[u8]) -> Option<u16> {
    match f.get(12..16)? {
        [0x81, 0x00, a, b] => Some(u16::from_be_bytes([*a, *b]) & 0x0fff),
        _ => None,
    }
}

/// Count an engine frame (statistics, C-018) and hand it to the wire.
fn emit_frame(wire: &mut WireSink, counters: &mut OffloadCounters, t: &Transmit<'_>) {
    if let Some(s) = frame_shape(t.frame) {
        counters.count_out(&s, t.gso.map(|g| g.mss));
    }
    wire(t);
}
