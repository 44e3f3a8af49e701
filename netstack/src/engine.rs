//! The engine: many connections behind one MAC and IP pair, driven sans-io.
//!
//! Drive it from any event loop:
//! ```text
//! engine.handle_frame(now, frame)          // every frame from the wire
//! while let Some(tx) = engine.poll_transmit(now) { wire.send(tx) }
//! engine.handle_timeout(now)               // when now >= engine.poll_timeout()
//! while let Some(ev) = engine.poll_event() { ... }
//! ```
//! Connections are found by hash of their 4-tuple; timers live in a wheel; transmit work is a
//! queue of connections with something to send. Nothing allocates per segment once buffers and
//! queues have grown to their working size.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use smoltcp::wire::{ArpOperation, ArpRepr};

use crate::frame::{self, ChecksumMode, FrameError, IpParams, Mac, Packet, L2};
use crate::state::*;
use crate::tcp::tcb::{ev, OutSegment, Segment, SegmentVerdict, Tcb, TcbConfig, TcbStats};
use crate::time::{Instant, Tick, TickClock};
use crate::timer::TimerWheel;

/// Errors of the socket-ish API and of import.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("ticks_per_second {0} is not 10, 100 or 1000 (C-014)")]
    TicksPerSecond(u32),
    #[error("connection handle is stale or unknown")]
    UnknownConnection,
    #[error("no local address of the family of {0}")]
    NoLocalAddress(IpAddr),
    #[error("4-tuple already in use")]
    TupleInUse,
    #[error("no free ephemeral port")]
    NoPort,
    #[error(
        "connection in state {0:?} cannot be exported (only synchronized states before TIME_WAIT)"
    )]
    NotExportable(TcpConnectionState),
    #[error("import refused: {field} {reason}")]
    Import {
        field: &'static str,
        reason: &'static str,
    },
    #[error("cached update refused: {field} {reason}")]
    Update {
        field: &'static str,
        reason: &'static str,
    },
}

/// Largest receive window a host may ask for (RFC 7323: 2^30 with scaling).
pub const MAX_RCV_WINDOW: u32 = 1 << 30;

/// TCP parameters of new connections.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    pub send_buffer: usize,
    pub recv_buffer: usize,
    pub initial_rto: Duration,
    pub min_rto: Duration,
    pub max_rto: Duration,
    pub delayed_ack: Duration,
    pub ack_frequency: u32,
    pub max_retransmissions: u8,
    pub fin_wait_2: Duration,
    pub time_wait: Duration,
    pub window_scaling: bool,
    pub sack: bool,
    pub timestamps: bool,
    pub nagle: bool,
    /// Keepalive: (idle before first probe, interval, probe count); None = off.
    pub keepalive: Option<(Duration, Duration, u8)>,
    pub ttl: u8,
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            delayed_ack: Duration::from_millis(40),
            ack_frequency: 2,
            max_retransmissions: 15,
            fin_wait_2: Duration::from_secs(120),
            time_wait: Duration::from_secs(60),
            window_scaling: true,
            sack: true,
            timestamps: true,
            nagle: true,
            keepalive: None,
            ttl: 64,
        }
    }
}

/// Segmentation/checksum offload of the device the frames go to (virtio-net header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// Emit TCP segments larger than the MSS for the device to cut (TSO / GSO).
    pub tso: bool,
    /// Leave the TCP checksum to the device.
    pub checksum: bool,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mtu: u16,
    /// Chimney TicksPerSecond (C-014): 10, 100 or 1000.
    pub ticks_per_second: u32,
    /// Seed for ISNs and ephemeral ports (DESIGN rule 8).
    pub seed: u64,
    /// 802.1Q VLAN of every frame (0 = untagged, §3.16).
    pub vlan_id: u16,
    pub tcp: TcpSettings,
    pub offload: TxOffload,
}

impl EngineConfig {
    pub fn new(mac: Mac, ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> Self {
        EngineConfig {
            mac,
            ipv4,
            ipv6,
            mtu: 1500,
            ticks_per_second: 1000,
            seed: 0,
            vlan_id: 0,
            tcp: TcpSettings::default(),
            offload: TxOffload::default(),
        }
    }
}

/// A connection, as the application holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnHandle {
    idx: u32,
    gen: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourTuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What the application should hear about. Names follow the chimney indications where one
/// exists (§4.1): `PeerClosed` ~ TcpIndicateDisconnect, `Reset` ~ TcpIndicateAbort,
/// `TimedOut` ~ TcpIndicateRetrieve(TimeoutExpiration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Active open completed.
    Connected(ConnHandle),
    /// A listener took a new connection (already established).
    Accepted {
        port: u16,
        conn: ConnHandle,
    },
    Readable(ConnHandle),
    Writable(ConnHandle),
    PeerClosed(ConnHandle),
    Reset(ConnHandle),
    TimedOut(ConnHandle),
    TimeWait(ConnHandle),
    /// A challenge ACK went out (RFC 5961, §3.18).
    ChallengeAck(ConnHandle),
    /// Fully closed; the handle stays valid until the application closes or aborts it.
    Closed(ConnHandle),
}

/// A frame to put on the wire, with what a virtio-net header needs.
#[derive(Debug)]
pub struct Transmit<'a> {
    pub frame: &'a [u8],
    /// TSO: segment size and header length (Ethernet+IP+TCP), IPv6 or not.
    pub gso: Option<Gso>,
    /// Checksum left to the device: (csum_start, csum_offset).
    pub csum_partial: Option<(u16, u16)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    pub mss: u16,
    pub header_len: u16,
    pub ipv6: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub frames_in: u64,
    pub frames_dropped: u64,
    pub frames_out: u64,
    pub resets_sent: u64,
}

struct Slot {
    gen: u32,
    live: bool,
    tuple: FourTuple,
    tcb: Option<Tcb>,
    in_ready: bool,
    scheduled: Option<Tick>,
    accepted_on: Option<u16>,
    announced: bool,
    path_mtu: u32,
    removed_from_table: bool,
}

#[derive(Debug, Clone, Copy)]
struct Neighbor {
    mac: Option<Mac>,
    confirmed: Tick,
    last_request: Option<Tick>,
}

#[derive(Clone, Copy)]
struct SmallFrame {
    len: usize,
    buf: [u8; 128],
}

pub struct Engine {
    cfg: EngineConfig,
    clock: TickClock,
    tcb_cfg: TcbConfig,
    slots: Vec<Slot>,
    free: Vec<u32>,
    table: HashMap<FourTuple, u32>,
    listeners: HashSet<u16>,
    wheel: TimerWheel,
    ready: VecDeque<u32>,
    ctrl: VecDeque<SmallFrame>,
    events: VecDeque<Event>,
    neighbors: HashMap<IpAddr, Neighbor>,
    waiting: Vec<(IpAddr, u32)>,
    due: Vec<u32>,
    scratch: Vec<u8>,
    ip_ident: u16,
    counter: u64,
    now: Tick,
    stats: EngineStats,
}

/// The tracing span of one connection: slot index and 4-tuple (formatted only when enabled).
fn conn_span(idx: u32, tuple: &FourTuple) -> tracing::Span {
    tracing::debug_span!("conn", idx, local = %tuple.local, remote = %tuple.remote)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const TSO_MAX: usize = 65_000;
/// Wheel key of the neighbor-resolution retry timer.
const NEIGHBOR_RETRY: u32 = u32::MAX;

impl Engine {
    pub fn new(cfg: EngineConfig, now: Instant) -> Result<Engine, EngineError> {
        let clock = TickClock::new(cfg.ticks_per_second)
            .ok_or(EngineError::TicksPerSecond(cfg.ticks_per_second))?;
        let t = &cfg.tcp;
        let ticks = |d: Duration| clock.ticks_ceil(d, 1);
        let mut cached_flags = 0;
        if t.nagle {
            cached_flags |= TCP_FLAG_NAGLING_ENABLED;
        }
        let (ka_timeout, ka_interval, ka_count) = match t.keepalive {
            Some((idle, int, n)) => {
                cached_flags |= TCP_FLAG_KEEP_ALIVE_ENABLED;
                (ticks(idle), ticks(int), n)
            }
            None => (
                ticks(Duration::from_secs(7200)),
                ticks(Duration::from_secs(1)),
                10,
            ),
        };
        let tcb_cfg = TcbConfig {
            local_mss: cfg.mtu.saturating_sub(40),
            send_buffer: t.send_buffer,
            recv_buffer: t.recv_buffer,
            initial_rto: ticks(t.initial_rto),
            min_rto: ticks(t.min_rto),
            max_rto: ticks(t.max_rto),
            delayed_ack: ticks(t.delayed_ack),
            ack_frequency: t.ack_frequency,
            max_retransmissions: t.max_retransmissions,
            fin_wait_2: ticks(t.fin_wait_2),
            time_wait: ticks(t.time_wait),
            syn_challenge_interval: ticks(Duration::from_secs(3)),
            mitigation_keepalive: ticks(Duration::from_secs(300)),
            ticks_per_second: u64::from(cfg.ticks_per_second),
            window_scaling: t.window_scaling,
            sack: t.sack,
            timestamps: t.timestamps,
            cached: TcpCached {
                flags: cached_flags,
                initial_rcv_wnd: t.recv_buffer.min(u32::MAX as usize) as u32,
                rcv_indication_size: 0,
                ka_probe_count: ka_count,
                ka_timeout: ka_timeout.min(u64::from(u32::MAX - 1)) as u32,
                ka_interval: ka_interval.min(u64::from(u32::MAX - 1)) as u32,
                max_rt: 0,
                flow_label: 0,
                ttl_or_hop_limit: t.ttl,
                tos_or_traffic_class: 0,
                user_priority: 0,
            },
        };
        let now_tick = clock.tick(now);
        Ok(Engine {
            clock,
            tcb_cfg,
            slots: Vec::new(),
            free: Vec::new(),
            table: HashMap::new(),
            listeners: HashSet::new(),
            wheel: TimerWheel::new(now_tick),
            ready: VecDeque::new(),
            ctrl: VecDeque::new(),
            events: VecDeque::new(),
            neighbors: HashMap::new(),
            waiting: Vec::new(),
            due: Vec::new(),
            scratch: vec![0; TSO_MAX + 256],
            ip_ident: 0x8000,
            counter: 0,
            now: now_tick,
            stats: EngineStats::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    pub fn stats(&self) -> EngineStats {
        self.stats
    }
    pub fn clock(&self) -> TickClock {
        self.clock
    }

    fn tick(&mut self, now: Instant) -> Tick {
        let t = self.clock.tick(now);
        if t > self.now {
            self.now = t;
        }
        self.now
    }

    fn l2(&self, dst: Mac) -> L2 {
        L2 {
            src: self.cfg.mac,
            dst,
            vlan_tci: (self.cfg.vlan_id != 0).then_some(self.cfg.vlan_id & 0x0fff),
        }
    }

    fn local_ip_for(&self, remote: IpAddr) -> Option<IpAddr> {
        match remote {
            IpAddr::V4(_) => self.cfg.ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => self.cfg.ipv6.map(IpAddr::V6),
        }
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        Some(ip) == self.local_ip_for(ip)
    }

    // ---- Socket-ish API --------------------------------------------------------------

    pub fn listen(&mut self, port: u16) {
        self.listeners.insert(port);
    }

    pub fn unlisten(&mut self, port: u16) {
        self.listeners.remove(&port);
    }

    /// Active open to `remote`; the SYN goes out on the next `poll_transmit`.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_port: Option<u16>,
    ) -> Result<ConnHandle, EngineError> {
        let now = self.tick(now);
        let lip = self
            .local_ip_for(remote.ip())
            .ok_or(EngineError::NoLocalAddress(remote.ip()))?;
        let port = match local_port {
            Some(p) => p,
            None => self.ephemeral_port(lip, remote)?,
        };
        let tuple = FourTuple {
            local: SocketAddr::new(lip, port),
            remote,
        };
        if self.table.contains_key(&tuple) {
            return Err(EngineError::TupleInUse);
        }
        let iss = self.next_isn();
        let tcb = Tcb::connect(&self.tcb_cfg, iss, now);
        let h = self.insert(tuple, tcb, None);
        self.touch(h.idx);
        Ok(h)
    }

    fn next_isn(&mut self) -> u32 {
        self.counter += 1;
        splitmix(self.cfg.seed ^ self.counter.wrapping_mul(0x1000_0001)) as u32
    }

    fn ephemeral_port(&mut self, lip: IpAddr, remote: SocketAddr) -> Result<u16, EngineError> {
        for _ in 0..64 {
            self.counter += 1;
            let p = 49152 + (splitmix(self.cfg.seed.rotate_left(17) ^ self.counter) % 16384) as u16;
            let t = FourTuple {
                local: SocketAddr::new(lip, p),
                remote,
            };
            if !self.table.contains_key(&t) {
                return Ok(p);
            }
        }
        Err(EngineError::NoPort)
    }

    fn insert(&mut self, tuple: FourTuple, tcb: Tcb, accepted_on: Option<u16>) -> ConnHandle {
        let slot = Slot {
            gen: 0,
            live: true,
            tuple,
            tcb: Some(tcb),
            in_ready: false,
            scheduled: None,
            accepted_on,
            announced: false,
            path_mtu: u32::from(self.cfg.mtu),
            removed_from_table: false,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                let g = self.slots[i as usize].gen.wrapping_add(1);
                self.slots[i as usize] = Slot { gen: g, ..slot };
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.table.insert(tuple, idx);
        ConnHandle {
            idx,
            gen: self.slots[idx as usize].gen,
        }
    }

    fn slot_idx(&self, h: ConnHandle) -> Result<usize, EngineError> {
        match self.slots.get(h.idx as usize) {
            Some(s) if s.live && s.gen == h.gen => Ok(h.idx as usize),
            _ => Err(EngineError::UnknownConnection),
        }
    }

    fn tcb_mut(&mut self, h: ConnHandle) -> Result<&mut Tcb, EngineError> {
        let i = self.slot_idx(h)?;
        self.slots[i]
            .tcb
            .as_mut()
            .ok_or(EngineError::UnknownConnection)
    }

    pub fn tcb(&self, h: ConnHandle) -> Result<&Tcb, EngineError> {
        let i = self.slot_idx(h)?;
        self.slots[i]
            .tcb
            .as_ref()
            .ok_or(EngineError::UnknownConnection)
    }

    pub fn state(&self, h: ConnHandle) -> Result<TcpConnectionState, EngineError> {
        Ok(self.tcb(h)?.state)
    }

    pub fn tuple(&self, h: ConnHandle) -> Result<FourTuple, EngineError> {
        Ok(self.slots[self.slot_idx(h)?].tuple)
    }

    pub fn conn_stats(&self, h: ConnHandle) -> Result<TcbStats, EngineError> {
        Ok(self.tcb(h)?.stats)
    }

    /// Queue data to send; returns the bytes taken (0 = buffer full, wait for `Writable`).
    pub fn send(&mut self, h: ConnHandle, data: &[u8]) -> Result<usize, EngineError> {
        let n = self.tcb_mut(h)?.send_data(data);
        if n > 0 {
            self.touch(h.idx);
        }
        Ok(n)
    }

    /// Free space in the send buffer.
    pub fn send_capacity(&self, h: ConnHandle) -> Result<usize, EngineError> {
        Ok(self.tcb(h)?.send.free())
    }

    /// Read received in-order data.
    pub fn recv(&mut self, h: ConnHandle, out: &mut [u8]) -> Result<usize, EngineError> {
        let n = self.tcb_mut(h)?.recv_data(out);
        if n > 0 {
            self.touch(h.idx);
        }
        Ok(n)
    }

    /// Graceful close (FIN after queued data). A closed connection's handle is released.
    pub fn close(&mut self, h: ConnHandle) -> Result<(), EngineError> {
        let t = self.tcb_mut(h)?;
        if t.state == TcpConnectionState::Closed {
            self.release(h.idx);
            return Ok(());
        }
        t.close();
        self.touch(h.idx);
        Ok(())
    }

    /// Abortive close: RST, handle released.
    pub fn abort(&mut self, h: ConnHandle) -> Result<(), EngineError> {
        self.tcb_mut(h)?.abort();
        self.touch(h.idx);
        // The RST is sent from the slot; release after it is out (see poll_transmit).
        Ok(())
    }

    /// Release a closed connection's slot.
    fn release(&mut self, idx: u32) {
        let s = &mut self.slots[idx as usize];
        if !s.live {
            return;
        }
        if !s.removed_from_table {
            self.table.remove(&s.tuple);
        }
        s.live = false;
        s.tcb = None;
        self.free.push(idx);
    }

    // ---- Bookkeeping after any change to a connection ---------------------------------

    fn touch(&mut self, idx: u32) {
        self.touch_with(idx, true);
    }

    /// `may_queue` = false after the connection just said it has nothing to send.
    fn touch_with(&mut self, idx: u32, may_queue: bool) {
        let s = &mut self.slots[idx as usize];
        let Some(t) = s.tcb.as_mut() else { return };
        let h = ConnHandle { idx, gen: s.gen };
        let bits = std::mem::take(&mut t.events);
        if bits != 0 {
            let _span = conn_span(idx, &s.tuple).entered();
            tracing::debug!(events = bits, state = ?t.state, "connection events");
            let push = |e: &mut VecDeque<Event>, b: u16, ev: Event| {
                if bits & b != 0 {
                    e.push_back(ev);
                }
            };
            if bits & ev::CONNECTED != 0 {
                match s.accepted_on {
                    Some(port) => self.events.push_back(Event::Accepted { port, conn: h }),
                    None => self.events.push_back(Event::Connected(h)),
                }
                s.announced = true;
            }
            let e = &mut self.events;
            push(e, ev::CHALLENGE_ACK, Event::ChallengeAck(h));
            if s.announced || s.accepted_on.is_none() {
                push(e, ev::READABLE, Event::Readable(h));
                push(e, ev::WRITABLE, Event::Writable(h));
                push(e, ev::PEER_CLOSED, Event::PeerClosed(h));
                push(e, ev::RESET, Event::Reset(h));
                push(e, ev::TIMED_OUT, Event::TimedOut(h));
                push(e, ev::TIME_WAIT, Event::TimeWait(h));
                push(e, ev::CLOSED, Event::Closed(h));
            }
        }
        let closed = t.state == TcpConnectionState::Closed;
        if closed && !s.removed_from_table {
            self.table.remove(&s.tuple);
            s.removed_from_table = true;
        }
        if may_queue && t.wants_output() && !s.in_ready {
            s.in_ready = true;
            self.ready.push_back(idx);
        }
        let d = t.next_deadline();
        if d.is_some() && d != s.scheduled {
            s.scheduled = d;
            if let Some(d) = d {
                self.wheel.insert(d, idx);
            }
        } else if d.is_none() {
            s.scheduled = None;
        }
        // A passive connection that died before being accepted is nobody's: free it.
        if closed && !s.in_ready && (!s.announced && s.accepted_on.is_some()) {
            self.release(idx);
        }
    }

    // ---- Input -----------------------------------------------------------------------

    /// Process one frame from the wire. Errors name what was malformed; the frame is dropped.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), FrameError> {
        self.handle_frame_with(now, frame, true)
    }

    /// As [`Engine::handle_frame`], with `verify_checksums` = false when the device already
    /// checked them (virtio `DATA_VALID` / `NEEDS_CSUM` from a TAP with offloads).
    pub fn handle_frame_with(
        &mut self,
        now: Instant,
        frame: &[u8],
        verify_checksums: bool,
    ) -> Result<(), FrameError> {
        let now = self.tick(now);
        self.stats.frames_in += 1;
        let parsed = match frame::parse_frame(frame, verify_checksums) {
            Ok(p) => p,
            Err(e) => {
                self.stats.frames_dropped += 1;
                return Err(e);
            }
        };
        // §3.16 receive filtering: VLAN 0 accepts all; otherwise only frames of our VID.
        if self.cfg.vlan_id != 0 && parsed.vlan_tci.map(|t| t & 0x0fff) != Some(self.cfg.vlan_id) {
            self.stats.frames_dropped += 1;
            return Ok(());
        }
        if parsed.dst != self.cfg.mac && parsed.dst[0] & 1 == 0 {
            self.stats.frames_dropped += 1;
            return Ok(());
        }
        match parsed.packet {
            Packet::Arp(a) => self.on_arp(now, a),
            Packet::NeighborSolicit {
                src,
                target,
                lladdr,
            } => self.on_ns(now, parsed.src, src, target, lladdr),
            Packet::NeighborAdvert { target, lladdr } => {
                if let Some(m) = lladdr {
                    self.learn(now, IpAddr::V6(target), m, true);
                }
            }
            Packet::Tcp { src, dst, seg } => self.on_tcp(now, parsed.src, src, dst, &seg),
            Packet::Ignored => {}
        }
        Ok(())
    }

    fn on_arp(&mut self, now: Tick, a: ArpRepr) {
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = a
        else {
            return;
        };
        let Some(me) = self.cfg.ipv4 else { return };
        if target_protocol_addr != me {
            return;
        }
        let sha = source_hardware_addr.0;
        self.learn(now, IpAddr::V4(source_protocol_addr), sha, true);
        if operation == ArpOperation::Request {
            let mut f = SmallFrame {
                len: 0,
                buf: [0; 128],
            };
            f.len = frame::emit_arp(
                &mut f.buf,
                &self.l2(sha),
                ArpOperation::Reply,
                self.cfg.mac,
                me,
                sha,
                source_protocol_addr,
            );
            self.ctrl.push_back(f);
        }
    }

    fn on_ns(&mut self, now: Tick, eth_src: Mac, src: Ipv6Addr, target: Ipv6Addr, ll: Option<Mac>) {
        if Some(target) != self.cfg.ipv6 {
            return;
        }
        let mac = ll.unwrap_or(eth_src);
        if !src.is_unspecified() {
            self.learn(now, IpAddr::V6(src), mac, false);
        }
        let mut f = SmallFrame {
            len: 0,
            buf: [0; 128],
        };
        let dst = if src.is_unspecified() {
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
        } else {
            src
        };
        f.len = frame::emit_ndisc(&mut f.buf, &self.l2(mac), target, dst, target, false);
        self.ctrl.push_back(f);
    }

    fn learn(&mut self, now: Tick, ip: IpAddr, mac: Mac, confirmed: bool) {
        let n = self.neighbors.entry(ip).or_insert(Neighbor {
            mac: None,
            confirmed: now,
            last_request: None,
        });
        let was_unknown = n.mac.is_none();
        n.mac = Some(mac);
        if confirmed || was_unknown {
            n.confirmed = now;
        }
        if was_unknown {
            // Wake connections that waited for this neighbor.
            let mut i = 0;
            while i < self.waiting.len() {
                if self.waiting[i].0 == ip {
                    let (_, idx) = self.waiting.swap_remove(i);
                    if let Some(s) = self.slots.get_mut(idx as usize) {
                        if s.live && !s.in_ready {
                            s.in_ready = true;
                            self.ready.push_back(idx);
                        }
                    }
                } else {
                    i += 1;
                }
            }
        }
    }

    fn on_tcp(&mut self, now: Tick, eth_src: Mac, src: IpAddr, dst: IpAddr, seg: &Segment) {
        if !self.is_local(dst) {
            self.stats.frames_dropped += 1;
            return;
        }
        let tuple = FourTuple {
            local: SocketAddr::new(dst, seg.dst_port),
            remote: SocketAddr::new(src, seg.src_port),
        };
        if let Some(&idx) = self.table.get(&tuple) {
            let Some(tcb) = self.slots[idx as usize].tcb.as_mut() else {
                return;
            };
            // Per-connection span (cheap when the level is off: the callsite is disabled once).
            let _span = conn_span(idx, &tuple).entered();
            tracing::trace!(
                seq = seg.seq,
                ack = ?seg.ack,
                len = seg.payload.len(),
                syn = seg.syn,
                fin = seg.fin,
                rst = seg.rst,
                "segment in"
            );
            if tcb.on_segment(now, seg) == SegmentVerdict::SendReset {
                self.reset_reply(eth_src, &tuple, seg);
            }
            self.touch(idx);
            return;
        }
        if seg.rst {
            return;
        }
        if seg.syn && seg.ack.is_none() && self.listeners.contains(&seg.dst_port) {
            // Learn the on-link peer's MAC from its SYN if we have none (saves a round trip).
            if self.neighbors.get(&src).and_then(|n| n.mac).is_none() {
                self.learn(now, src, eth_src, false);
            }
            let iss = self.next_isn();
            let tcb = Tcb::accept(&self.tcb_cfg, iss, now, seg);
            let h = self.insert(tuple, tcb, Some(seg.dst_port));
            self.touch(h.idx);
            return;
        }
        self.reset_reply(eth_src, &tuple, seg);
    }

    /// RST for a segment that belongs to no connection (RFC 9293 §3.10.7.1).
    fn reset_reply(&mut self, mac: Mac, tuple: &FourTuple, seg: &Segment) {
        let out = match seg.ack {
            Some(a) => OutSegment {
                seq: a,
                rst: true,
                ..OutSegment::default()
            },
            None => OutSegment {
                seq: 0,
                ack: Some(seg.seq.wrapping_add(seg.seq_len())),
                rst: true,
                ..OutSegment::default()
            },
        };
        let mut f = SmallFrame {
            len: 0,
            buf: [0; 128],
        };
        let ip = IpParams {
            ttl: self.cfg.tcp.ttl,
            tos: 0,
            flow_label: 0,
            ident: 0x8000,
        };
        let (len, _) = frame::emit_tcp(
            &mut f.buf,
            &self.l2(mac),
            (tuple.local.ip(), tuple.local.port()),
            (tuple.remote.ip(), tuple.remote.port()),
            &ip,
            &out,
            (&[], &[]),
            ChecksumMode::Full,
        );
        f.len = len;
        self.stats.resets_sent += 1;
        self.ctrl.push_back(f);
    }

    // ---- Output ----------------------------------------------------------------------

    /// The next frame to send, if any. Call until it returns None after every input.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<'_>> {
        let now = self.tick(now);
        if let Some(f) = self.ctrl.pop_front() {
            self.scratch[..f.len].copy_from_slice(&f.buf[..f.len]);
            self.stats.frames_out += 1;
            return Some(Transmit {
                frame: &self.scratch[..f.len],
                gso: None,
                csum_partial: None,
            });
        }
        while let Some(&idx) = self.ready.front() {
            let slot = &mut self.slots[idx as usize];
            let Some(tcb) = slot.tcb.as_mut() else {
                self.ready.pop_front();
                continue;
            };
            let remote = slot.tuple.remote.ip();
            let mac = self.neighbors.get(&remote).and_then(|n| n.mac);
            let Some(mac) = mac else {
                self.ready.pop_front();
                slot.in_ready = false;
                self.waiting.push((remote, idx));
                self.solicit(now, remote);
                if let Some(f) = self.ctrl.pop_front() {
                    self.scratch[..f.len].copy_from_slice(&f.buf[..f.len]);
                    self.stats.frames_out += 1;
                    return Some(Transmit {
                        frame: &self.scratch[..f.len],
                        gso: None,
                        csum_partial: None,
                    });
                }
                continue;
            };
            let max_payload = if self.cfg.offload.tso {
                TSO_MAX - 200
            } else {
                usize::from(tcb.eff_mss())
            };
            match tcb.poll_segment(now, max_payload) {
                Some(seg) => {
                    let _span = conn_span(idx, &slot.tuple).entered();
                    tracing::trace!(
                        seq = seg.seq,
                        ack = ?seg.ack,
                        len = seg.data_len,
                        window = seg.window,
                        syn = seg.syn,
                        fin = seg.fin,
                        rst = seg.rst,
                        "segment out"
                    );
                    let len = self.emit(idx, mac, &seg);
                    return Some(len);
                }
                None => {
                    self.ready.pop_front();
                    self.slots[idx as usize].in_ready = false;
                    self.touch_with(idx, false);
                    let s = &self.slots[idx as usize];
                    if let Some(t) = s.tcb.as_ref() {
                        if t.state == TcpConnectionState::Closed && !s.in_ready {
                            // Fully closed and nothing more to send.
                            if s.accepted_on.is_some() && !s.announced {
                                self.release(idx);
                            }
                        }
                    }
                }
            }
        }
        None
    }

    fn emit(&mut self, idx: u32, mac: Mac, seg: &OutSegment) -> Transmit<'_> {
        let mut l2 = self.l2(mac);
        let slot = &self.slots[idx as usize];
        let Some(tcb) = slot.tcb.as_ref() else {
            return Transmit {
                frame: &[],
                gso: None,
                csum_partial: None,
            };
        };
        // §3.16: VlanId 0 + UserPriority 0 → untagged; otherwise tag VID (maybe 0) + priority.
        let prio = u16::from(tcb.cached.user_priority & 7);
        if prio != 0 {
            l2.vlan_tci = Some(l2.vlan_tci.unwrap_or(0) | (prio << 13));
        }
        self.ip_ident = self.ip_ident.wrapping_add(1) | 0x8000; // upper half only (§3.15)
        let ip = IpParams {
            ttl: tcb.cached.ttl_or_hop_limit,
            tos: tcb.cached.tos_or_traffic_class,
            flow_label: tcb.cached.flow_label,
            ident: self.ip_ident,
        };
        let payload = tcb.send.slices(seg.data_off, seg.data_len);
        let mss = tcb.eff_mss();
        let mode = if self.cfg.offload.checksum
            || (self.cfg.offload.tso && seg.data_len > usize::from(mss))
        {
            ChecksumMode::Partial
        } else {
            ChecksumMode::Full
        };
        let (len, layout) = frame::emit_tcp(
            &mut self.scratch,
            &l2,
            (slot.tuple.local.ip(), slot.tuple.local.port()),
            (slot.tuple.remote.ip(), slot.tuple.remote.port()),
            &ip,
            seg,
            payload,
            mode,
        );
        if seg.rst {
            self.stats.resets_sent += 1;
        }
        self.stats.frames_out += 1;
        let gso = (seg.data_len > usize::from(mss)).then_some(Gso {
            mss,
            header_len: layout.header_len as u16,
            ipv6: slot.tuple.local.is_ipv6(),
        });
        let csum_partial =
            (mode == ChecksumMode::Partial).then_some((layout.l4_offset as u16, 16u16));
        // Reschedule the connection's timers after sending (it may have armed one).
        if let Some(t) = slot.tcb.as_ref() {
            let d = t.next_deadline();
            let s = &mut self.slots[idx as usize];
            if d.is_some() && d != s.scheduled {
                s.scheduled = d;
                if let Some(d) = d {
                    self.wheel.insert(d, idx);
                }
            }
        }
        Transmit {
            frame: &self.scratch[..len],
            gso,
            csum_partial,
        }
    }

    fn solicit(&mut self, now: Tick, ip: IpAddr) {
        let tps = u64::from(self.cfg.ticks_per_second);
        let n = self.neighbors.entry(ip).or_insert(Neighbor {
            mac: None,
            confirmed: now,
            last_request: None,
        });
        if n.last_request.is_some_and(|t| now < t + tps) {
            return;
        }
        n.last_request = Some(now);
        self.wheel.insert(now + tps, NEIGHBOR_RETRY);
        let mut f = SmallFrame {
            len: 0,
            buf: [0; 128],
        };
        match (ip, self.cfg.ipv4, self.cfg.ipv6) {
            (IpAddr::V4(t), Some(me), _) => {
                f.len = frame::emit_arp(
                    &mut f.buf,
                    &self.l2(frame::BROADCAST),
                    ArpOperation::Request,
                    self.cfg.mac,
                    me,
                    [0; 6],
                    t,
                );
            }
            (IpAddr::V6(t), _, Some(me)) => {
                let (group, gmac) = frame::solicited_node(t);
                f.len = frame::emit_ndisc(&mut f.buf, &self.l2(gmac), me, group, t, true);
            }
            _ => return,
        }
        self.ctrl.push_back(f);
    }

    // ---- Time ------------------------------------------------------------------------

    /// When `handle_timeout` should next be called (None: no timer running).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wheel.next_tick().map(|t| self.clock.instant(t))
    }

    /// Run the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(now, |e| due.push(e.key));
        for &idx in &due {
            if idx == NEIGHBOR_RETRY {
                // Neighbor retry: requeue waiters so they solicit again.
                for (_, w) in std::mem::take(&mut self.waiting) {
                    if let Some(s) = self.slots.get_mut(w as usize) {
                        if s.live && !s.in_ready {
                            s.in_ready = true;
                            self.ready.push_back(w);
                        }
                    }
                }
                continue;
            }
            let Some(s) = self.slots.get_mut(idx as usize) else {
                continue;
            };
            if !s.live {
                continue;
            }
            let Some(t) = s.tcb.as_mut() else { continue };
            match t.next_deadline() {
                Some(d) if d <= now => {
                    s.scheduled = None;
                    let _span = conn_span(idx, &s.tuple).entered();
                    tracing::trace!(now, "timers due");
                    t.on_timer(now);
                    self.touch(idx);
                }
                Some(d) => {
                    // A stale entry (the deadline moved later): keep one entry for `d`.
                    if s.scheduled != Some(d) {
                        s.scheduled = Some(d);
                        self.wheel.insert(d, idx);
                    }
                }
                None => s.scheduled = None,
            }
        }
        due.clear();
        self.due = due;
    }

    // ---- Export / import (DESIGN rule 5, spec digest §2.4–2.6) -------------------------

    /// Take a connection out of this engine as chimney state (neighbor, path, TCP with its
    /// unacknowledged/unsent send data and undelivered receive data). An owed ACK is queued
    /// for `poll_transmit` first. The handle is released.
    pub fn export(&mut self, now: Instant, h: ConnHandle) -> Result<ConnectionExport, EngineError> {
        let now = self.tick(now);
        let i = self.slot_idx(h)?;
        let tuple = self.slots[i].tuple;
        let st = self.tcb(h)?.state;
        use TcpConnectionState as S;
        if matches!(
            st,
            S::Closed | S::Listen | S::SynSent | S::SynRcvd | S::TimeWait
        ) {
            return Err(EngineError::NotExportable(st));
        }
        let mac = self.neighbors.get(&tuple.remote.ip()).and_then(|n| n.mac);
        if let (Some(mac), Some(t)) = (mac, self.slots[i].tcb.as_mut()) {
            if let Some(seg) = t.poll_owed_ack(now) {
                let mut f = SmallFrame {
                    len: 0,
                    buf: [0; 128],
                };
                let ip = IpParams {
                    ttl: t.cached.ttl_or_hop_limit,
                    tos: t.cached.tos_or_traffic_class,
                    flow_label: t.cached.flow_label,
                    ident: 0x8000,
                };
                let (len, _) = frame::emit_tcp(
                    &mut f.buf,
                    &self.l2(mac),
                    (tuple.local.ip(), tuple.local.port()),
                    (tuple.remote.ip(), tuple.remote.port()),
                    &ip,
                    &seg,
                    (&[], &[]),
                    ChecksumMode::Full,
                );
                f.len = len;
                self.ctrl.push_back(f);
            }
        }
        let t = self.tcb(h)?;
        let mut tcp = t.export(now);
        tcp.const_.local_port = tuple.local.port();
        tcp.const_.remote_port = tuple.remote.port();
        let n = self.neighbors.get(&tuple.remote.ip()).copied();
        let mut src = [0u8; 32];
        src[..6].copy_from_slice(&self.cfg.mac);
        let mut dstm = [0u8; 32];
        if let Some(m) = n.and_then(|n| n.mac) {
            dstm[..6].copy_from_slice(&m);
        }
        let nrd = n.map_or(0, |n| {
            now.saturating_sub(n.confirmed).min(u64::from(u32::MAX)) as u32
        });
        let out = ConnectionExport {
            neighbor: NeighborState {
                const_: NeighborConst {
                    dl_source_address: src,
                    vlan_id: self.cfg.vlan_id,
                },
                cached: NeighborCached {
                    dl_destination_address: dstm,
                    host_reachability_delta: nrd,
                },
                delegated: NeighborDelegated {
                    nic_reachability_delta: nrd,
                },
            },
            path: PathState {
                const_: PathConst {
                    source_address: tuple.local.ip(),
                    destination_address: tuple.remote.ip(),
                },
                cached: PathCached {
                    path_mtu: self.slots[i].path_mtu,
                },
            },
            tcp,
        };
        self.release(h.idx);
        Ok(out)
    }

    /// Continue an exported connection in this engine.
    pub fn import(
        &mut self,
        now: Instant,
        st: &ConnectionExport,
    ) -> Result<ConnHandle, EngineError> {
        let now = self.tick(now);
        validate_import(&st.tcp)?;
        let err = |field, reason| EngineError::Import { field, reason };
        let local_ip = st.path.const_.source_address;
        let remote_ip = st.path.const_.destination_address;
        if local_ip.is_ipv4() != remote_ip.is_ipv4() {
            return Err(err(
                "Path.DestinationAddress",
                "is not of the source's IP version",
            ));
        }
        if !self.is_local(local_ip) {
            return Err(err(
                "Path.SourceAddress",
                "is not an address of this engine",
            ));
        }
        let tuple = FourTuple {
            local: SocketAddr::new(local_ip, st.tcp.const_.local_port),
            remote: SocketAddr::new(remote_ip, st.tcp.const_.remote_port),
        };
        if self.table.contains_key(&tuple) {
            return Err(EngineError::TupleInUse);
        }
        let mac: Mac = st.neighbor.cached.dl_destination_address[..6]
            .try_into()
            .map_err(|_| err("Neighbor.DlDestinationAddress", "is short"))?;
        if mac != [0; 6] {
            self.learn(now, remote_ip, mac, true);
            if let Some(n) = self.neighbors.get_mut(&remote_ip) {
                n.confirmed =
                    now.saturating_sub(u64::from(st.neighbor.delegated.nic_reachability_delta));
            }
        }
        let mut cfg = self.tcb_cfg.clone();
        let hdr = if local_ip.is_ipv4() { 40 } else { 60 };
        cfg.local_mss = (st.path.cached.path_mtu.min(65535) as u16)
            .saturating_sub(hdr)
            .max(64);
        let tcb = Tcb::import(&cfg, &st.tcp, now);
        let h = self.insert(tuple, tcb, None);
        self.slots[h.idx as usize].path_mtu = st.path.cached.path_mtu;
        self.touch(h.idx);
        Ok(h)
    }

    /// Apply a host update of a live connection's cached TCP variables (§3.3; C-024,
    /// C-083..C-091). The structure replaces the connection's cached block; behaviour follows
    /// at once: TTL/hop limit, TOS/traffic class, FlowLabel and UserPriority (802.1p, §3.16)
    /// on the next frame; Nagle on the next send decision; keepalive switched on (armed with
    /// KaTimeout) or off (stopped), `TCP_FLAG_KEEP_ALIVE_RESTART` restarts it from zero;
    /// MaxRT and `TCP_FLAG_MAX_RT_RESTART` restart TotalRT (C-088/C-090; with the restart
    /// flag a new KaProbeCount resets the probe count and new KaTimeout/KaInterval re-arm the
    /// timer, C-089); a changed InitialRcvWnd (0 = the engine's default buffer) resizes the
    /// receive buffer (never taking back window already advertised), and with
    /// `TCP_FLAG_UPDATE_RCV_WND` the new window is advertised at once when it differs from
    /// RcvWnd (C-085, C-086). Values are checked first; a refused update changes nothing.
    pub fn update_cached(
        &mut self,
        now: Instant,
        h: ConnHandle,
        cached: &TcpCached,
    ) -> Result<(), EngineError> {
        let err = |field, reason| Err(EngineError::Update { field, reason });
        if cached.initial_rcv_wnd > MAX_RCV_WINDOW {
            return err("TcpCached.InitialRcvWnd", "exceeds 2^30 (RFC 7323)");
        }
        if cached.flow_label > 0x000F_FFFF {
            return err("TcpCached.FlowLabel", "exceeds 20 bits");
        }
        if cached.user_priority > 7 {
            return err("TcpCached.UserPriority", "exceeds 3 bits");
        }
        let now = self.tick(now);
        let default_buf = self.tcb_cfg.recv_buffer;
        let t = self.tcb_mut(h)?;
        let resize = cached.initial_rcv_wnd != t.cached.initial_rcv_wnd
            || cached.flags & TCP_FLAG_UPDATE_RCV_WND != 0;
        let cap = resize.then_some(match cached.initial_rcv_wnd {
            0 => default_buf,
            w => w as usize,
        });
        t.update_cached(now, cached, cap);
        self.touch(h.idx);
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// Check an imported TCP state for what the engine relies on; errors name the field.
pub fn validate_import(st: &TcpOffloadState) -> Result<(), EngineError> {
    use crate::seq;
    use TcpConnectionState as S;
    let err = |field, reason| Err(EngineError::Import { field, reason });
    let d = &st.delegated;
    if matches!(
        d.state,
        S::Closed | S::Listen | S::SynSent | S::SynRcvd | S::TimeWait
    ) {
        return err("TcpDelegated.State", "is not an offloadable state");
    }
    if st.const_.local_port == 0 || st.const_.remote_port == 0 {
        return err("TcpConst.LocalPort/RemotePort", "is zero");
    }
    if st.const_.snd_wind_scale > 14 || st.const_.rcv_wind_scale > 14 {
        return err(
            "TcpConst.SndWindScale/RcvWindScale",
            "exceeds 14 (RFC 7323)",
        );
    }
    if st.const_.remote_mss < 64 {
        return err("TcpConst.RemoteMss", "is below 64");
    }
    if !(seq::le(d.snd_una, d.snd_nxt) && seq::le(d.snd_nxt, d.snd_max)) {
        return err("TcpDelegated.SndNxt", "is not within [SndUna, SndMax]");
    }
    let fin = u32::from(matches!(
        d.state,
        S::FinWait1 | S::Closing | S::LastAck | S::FinWait2
    ));
    if seq::dist(d.snd_una, d.snd_max) > st.send_data.len() as u32 + fin {
        return err(
            "SendData",
            "is shorter than the data in flight (SndMax − SndUna)",
        );
    }
    if st.send_data.len() > 1 << 30 || st.buffered_data.len() > 1 << 30 {
        return err("SendData/BufferedData", "exceeds 1 GiB");
    }
    if st.cached.initial_rcv_wnd > MAX_RCV_WINDOW {
        return err("TcpCached.InitialRcvWnd", "exceeds 2^30 (RFC 7323)");
    }
    if d.rcv_wnd > 1 << 30 {
        return err("TcpDelegated.RcvWnd", "exceeds 2^30 (RFC 7323)");
    }
    Ok(())
}
