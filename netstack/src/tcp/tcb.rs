//! One TCP connection: the RFC 9293 state machine with the extensions the chimney needs
//! (spec digest §3.13, §3.14, §3.18, §3.19). Pure: segments and ticks in, segments out.

use super::rtt::RttEstimator;
use super::scoreboard::Scoreboard;
use crate::buffer::{RecvBuffer, SendBuffer};
use crate::seq;
use crate::state::*;
use crate::time::Tick;

/// Per-connection settings fixed by the engine (all timer values in ticks).
#[derive(Debug, Clone)]
pub struct TcbConfig {
    /// MSS we advertise (path MTU minus IP and TCP headers).
    pub local_mss: u16,
    pub send_buffer: usize,
    pub recv_buffer: usize,
    pub initial_rto: Tick,
    pub min_rto: Tick,
    pub max_rto: Tick,
    pub delayed_ack: Tick,
    /// Acknowledge at least every this many full segments (TcpAckFrequency).
    pub ack_frequency: u32,
    /// TcpMaximumRetransmissions: retransmissions of one segment before giving up (MaxRT = 0).
    pub max_retransmissions: u8,
    pub fin_wait_2: Tick,
    pub time_wait: Tick,
    /// Challenge-ACK spacing for in-window SYNs (§3.18: at most one per 3 s).
    pub syn_challenge_interval: Tick,
    /// Keepalive arm time during blind-reset mitigation (§3.18: 5 minutes).
    pub mitigation_keepalive: Tick,
    pub ticks_per_second: u64,
    pub window_scaling: bool,
    pub sack: bool,
    pub timestamps: bool,
    /// Cached variables a new connection starts with.
    pub cached: TcpCached,
}

/// A parsed incoming TCP segment.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    pub sack: [Option<(u32, u32)>; 3],
    pub ts: Option<(u32, u32)>,
    pub payload: &'a [u8],
}

impl Segment<'_> {
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.syn) + u32::from(self.fin)
    }
}

/// A segment the connection wants sent; payload is `send_buffer[data_off .. data_off+data_len]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutSegment {
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    pub sack: [Option<(u32, u32)>; 3],
    pub ts: Option<(u32, u32)>,
    pub data_off: usize,
    pub data_len: usize,
}

/// Things the application should hear about; collected by the engine.
pub mod ev {
    pub const CONNECTED: u16 = 1;
    pub const READABLE: u16 = 2;
    pub const WRITABLE: u16 = 4;
    pub const PEER_CLOSED: u16 = 8;
    pub const RESET: u16 = 16;
    pub const TIMED_OUT: u16 = 32;
    pub const CLOSED: u16 = 64;
    pub const TIME_WAIT: u16 = 128;
    pub const CHALLENGE_ACK: u16 = 256;
}

pub type State = TcpConnectionState;

/// What became of an incoming segment the connection could not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentVerdict {
    Accepted,
    /// The connection is gone and the segment should be answered with a RST (RFC 9293).
    SendReset,
}

#[derive(Debug, Clone)]
pub struct Tcb {
    pub state: State,
    // Const (§2.6).
    pub ts_enabled: bool,
    pub sack_enabled: bool,
    pub ws_enabled: bool,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub remote_mss: u16,
    pub hash_value: u32,
    pub cached: TcpCached,
    cfg: TcbConfig,
    // Sequence space.
    iss: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub snd_max: u32,
    pub snd_wnd: u32,
    pub max_snd_wnd: u32,
    pub snd_wl1: u32,
    snd_wl2: u32,
    pub cwnd: u32,
    pub ssthresh: u32,
    pub rcv_nxt: u32,
    /// Right edge of the window we advertised (never moves left).
    rcv_adv: u32,
    last_ack_sent: u32,
    /// Sequence number of send-buffer byte 0.
    send_base: u32,
    /// Sequence number of our FIN once the application closed.
    fin_seq: Option<u32>,
    // Timing.
    rtt: RttEstimator,
    /// RTT measurement without timestamps (Karn): (sequence, tick sent).
    timing: Option<(u32, Tick)>,
    ts_offset: u32,
    pub ts_recent: u32,
    ts_recent_tick: Tick,
    rtx_count: u8,
    rtx_deadline: Option<Tick>,
    rtx_start: Option<Tick>,
    persist: bool,
    probe_pending: bool,
    snd_wnd_probe_count: u8,
    ka_probe_count: u8,
    ka_deadline: Option<Tick>,
    ka_probe_pending: bool,
    /// Keepalive was started by blind-reset mitigation (§3.18), not by the cached flag.
    mitigation_ka: bool,
    rst_challenge_sent: bool,
    last_syn_challenge: Option<Tick>,
    delack_deadline: Option<Tick>,
    segs_unacked: u32,
    ack_now: bool,
    time_wait_deadline: Option<Tick>,
    // Loss recovery.
    dup_acks: u8,
    in_recovery: bool,
    recover: u32,
    high_rxt: u32,
    rexmit_una: bool,
    /// SND.MAX when the current retransmission pass started: SACKs well beyond it while holes
    /// we retransmitted are still open mean those retransmissions were lost too.
    rxt_mark: Option<u32>,
    ca_acked: u32,
    sb: Scoreboard,
    last_rto_una: Option<u32>,
    /// Starts of the latest out-of-order segments, newest first: SACK reports their blocks
    /// first (RFC 2018 §4), so a block is repeated in the next ACKs and one lost ACK does not
    /// hide it until it is among the lowest. (A block SACKed seconds late gave the kernel
    /// RTT samples of seconds: its RTO reached 120 s in the 20 % loss cells.)
    recent_sacks: [Option<u32>; 3],
    send_rst: bool,
    /// Receive-buffer size a host update shrinks to once the promised window has drained.
    recv_target: Option<usize>,
    pub send: SendBuffer,
    pub recv: RecvBuffer,
    // Reserved delegated fields carried unchanged.
    deleg_flags: u16,
    d_wnd: u32,
    pub events: u16,
    pub stats: TcbStats,
}

/// Counters, for tests and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcbStats {
    pub segs_out: u64,
    pub retransmits: u64,
    pub fast_recoveries: u64,
    pub timeouts: u64,
    pub persist_probes: u64,
    pub keepalive_probes: u64,
    pub challenge_acks: u64,
    pub dup_acks_in: u64,
}

fn ticks32(t: Tick) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX - 1)
}

impl Tcb {
    fn blank(cfg: &TcbConfig, iss: u32, now: Tick) -> Tcb {
        Tcb {
            state: State::Closed,
            ts_enabled: false,
            sack_enabled: false,
            ws_enabled: false,
            snd_wscale: 0,
            rcv_wscale: 0,
            remote_mss: 536,
            hash_value: 0,
            cached: cfg.cached.clone(),
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: 0,
            snd_wl2: 0,
            cwnd: 0,
            ssthresh: u32::MAX,
            rcv_nxt: 0,
            rcv_adv: 0,
            last_ack_sent: 0,
            send_base: iss.wrapping_add(1),
            fin_seq: None,
            rtt: RttEstimator::new(),
            timing: None,
            ts_offset: (iss ^ 0x5a5a_5a5a).wrapping_sub(now as u32),
            ts_recent: 0,
            ts_recent_tick: now,
            rtx_count: 0,
            rtx_deadline: None,
            rtx_start: None,
            persist: false,
            probe_pending: false,
            snd_wnd_probe_count: 0,
            ka_probe_count: 0,
            ka_deadline: None,
            ka_probe_pending: false,
            mitigation_ka: false,
            rst_challenge_sent: false,
            last_syn_challenge: None,
            delack_deadline: None,
            segs_unacked: 0,
            ack_now: false,
            time_wait_deadline: None,
            dup_acks: 0,
            in_recovery: false,
            recover: iss,
            high_rxt: iss,
            rexmit_una: false,
            rxt_mark: None,
            ca_acked: 0,
            sb: Scoreboard::new(),
            last_rto_una: None,
            recent_sacks: [None; 3],
            send_rst: false,
            recv_target: None,
            send: SendBuffer::new(cfg.send_buffer),
            recv: RecvBuffer::new(cfg.recv_buffer),
            deleg_flags: 0,
            d_wnd: 0,
            events: 0,
            stats: TcbStats::default(),
            cfg: cfg.clone(),
        }
    }

    /// Active open: SYN_SENT, the SYN goes out on the next poll.
    pub fn connect(cfg: &TcbConfig, iss: u32, now: Tick) -> Tcb {
        let mut t = Tcb::blank(cfg, iss, now);
        t.state = State::SynSent;
        t.rcv_wscale = if cfg.window_scaling {
            wscale_for(cfg.recv_buffer)
        } else {
            0
        };
        t
    }

    /// Passive open from a SYN that matched a listener: SYN_RCVD, SYN-ACK on the next poll.
    pub fn accept(cfg: &TcbConfig, iss: u32, now: Tick, syn: &Segment) -> Tcb {
        let mut t = Tcb::blank(cfg, iss, now);
        t.state = State::SynRcvd;
        t.take_syn_options(syn, now);
        t.rcv_nxt = syn.seq.wrapping_add(1);
        t.rcv_adv = t.rcv_nxt;
        t.snd_wnd = u32::from(syn.window); // SYN windows are never scaled (RFC 7323 §2.2)
        t.max_snd_wnd = t.snd_wnd;
        t.snd_wl1 = syn.seq;
        t
    }

    fn take_syn_options(&mut self, syn: &Segment, now: Tick) {
        self.remote_mss = syn.mss.unwrap_or(536).max(64);
        self.ws_enabled = self.cfg.window_scaling && syn.wscale.is_some();
        if self.ws_enabled {
            self.snd_wscale = syn.wscale.unwrap_or(0).min(14);
            self.rcv_wscale = wscale_for(self.cfg.recv_buffer);
        } else {
            self.snd_wscale = 0;
            self.rcv_wscale = 0;
        }
        self.sack_enabled = self.cfg.sack && syn.sack_permitted;
        self.ts_enabled = self.cfg.timestamps && syn.ts.is_some();
        if let Some((val, _)) = syn.ts {
            self.ts_recent = val;
            self.ts_recent_tick = now;
        }
        // RFC 5681 (3): IW = 2–4 segments by SMSS; use min(4·SMSS, max(2·SMSS, 4380)).
        let smss = u32::from(self.eff_mss());
        self.cwnd = (4 * smss).min((2 * smss).max(4380));
    }

    /// Largest payload per segment: the peer's MSS capped by ours, minus the timestamp option.
    pub fn eff_mss(&self) -> u16 {
        let base = self.remote_mss.min(self.cfg.local_mss);
        let opt = if self.ts_enabled { 12 } else { 0 };
        base.saturating_sub(opt).max(16)
    }

    fn ts_val(&self, now: Tick) -> u32 {
        (now as u32).wrapping_add(self.ts_offset)
    }

    pub fn is_synchronized(&self) -> bool {
        !matches!(
            self.state,
            State::Closed | State::Listen | State::SynSent | State::SynRcvd
        )
    }

    fn flight(&self) -> u32 {
        seq::dist(self.snd_una, self.snd_max)
    }

    fn rto(&self) -> Tick {
        self.rtt
            .rto(self.cfg.initial_rto, self.cfg.min_rto, self.cfg.max_rto)
    }

    fn backed_off_rto(&self) -> Tick {
        let shift = u32::from(self.rtx_count).min(16);
        (self.rto() << shift).min(self.cfg.max_rto)
    }

    fn arm_rtx(&mut self, now: Tick) {
        self.rtx_deadline = Some(now + self.backed_off_rto());
    }

    fn keepalive_enabled(&self) -> bool {
        self.cached.flags & TCP_FLAG_KEEP_ALIVE_ENABLED != 0
    }

    fn restart_keepalive(&mut self, now: Tick) {
        self.ka_probe_count = 0;
        if self.mitigation_ka {
            // An acceptable segment ends mitigation (§3.18): stop the timer if it started it.
            self.mitigation_ka = false;
            self.ka_deadline = None;
        }
        if self.keepalive_enabled() && self.is_synchronized() {
            self.ka_deadline = Some(now + u64::from(self.cached.ka_timeout.max(1)));
        }
    }

    /// The earliest tick this connection needs `on_timer`.
    pub fn next_deadline(&self) -> Option<Tick> {
        [
            self.rtx_deadline,
            self.delack_deadline,
            self.ka_deadline,
            self.time_wait_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- Application side ------------------------------------------------------------

    /// Queue data; returns how much was taken (0 when the buffer is full or after close).
    pub fn send_data(&mut self, data: &[u8]) -> usize {
        if self.fin_seq.is_some()
            || !matches!(
                self.state,
                State::SynSent | State::SynRcvd | State::Established | State::CloseWait
            )
        {
            return 0;
        }
        self.send.push(data)
    }

    /// Read in-order data; opens the window (receiver SWS avoidance, RFC 1122 4.2.3.3).
    pub fn recv_data(&mut self, out: &mut [u8]) -> usize {
        let before = self.advertisable_window();
        let n = self.recv.read(out);
        if let Some(t) = self.recv_target {
            if self.recv_promised() <= t {
                self.recv.resize(self.rcv_nxt, t);
                self.recv_target = None;
            }
        }
        if n > 0 {
            let after = self.advertisable_window();
            let threshold = (u32::from(self.eff_mss()) * 2).min(self.recv.capacity() as u32 / 2);
            let adv = seq::dist(self.rcv_nxt, self.rcv_adv);
            if after.saturating_sub(adv) >= threshold || (adv == 0 && after > before) {
                self.ack_now = true;
            }
        }
        n
    }

    /// Graceful close: a FIN follows the queued data.
    pub fn close(&mut self) {
        match self.state {
            State::SynSent if !self.send.is_empty() => {
                // RFC 9293 §3.10.4: queue the close until the connection is established.
                self.fin_seq = Some(self.send_base.wrapping_add(self.send.len() as u32));
            }
            State::SynSent | State::Listen => {
                self.state = State::Closed;
                self.events |= ev::CLOSED;
            }
            State::SynRcvd | State::Established => {
                self.fin_seq = Some(self.send_base.wrapping_add(self.send.len() as u32));
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.fin_seq = Some(self.send_base.wrapping_add(self.send.len() as u32));
                self.state = State::LastAck;
            }
            _ => {}
        }
    }

    /// Abortive close: RST now, connection gone.
    pub fn abort(&mut self) {
        if self.is_synchronized() || self.state == State::SynRcvd {
            self.send_rst = true;
        }
        self.enter_closed(0);
    }

    fn enter_closed(&mut self, event: u16) {
        self.state = State::Closed;
        self.rtx_deadline = None;
        self.delack_deadline = None;
        self.ka_deadline = None;
        self.time_wait_deadline = None;
        self.events |= event | ev::CLOSED;
    }

    // ---- Incoming segments -----------------------------------------------------------

    /// Process one segment addressed to this connection.
    pub fn on_segment(&mut self, now: Tick, seg: &Segment) -> SegmentVerdict {
        match self.state {
            State::Closed | State::Listen => return SegmentVerdict::SendReset,
            State::SynSent => return self.on_segment_syn_sent(now, seg),
            _ => {}
        }
        // PAWS (RFC 7323 §5): an old timestamp means an old duplicate.
        if self.ts_enabled && !seg.rst {
            if let Some((val, _)) = seg.ts {
                if seq::lt(val, self.ts_recent)
                    && now.saturating_sub(self.ts_recent_tick) < 24 * 86_400 * self.tps()
                {
                    self.ack_now = true;
                    return SegmentVerdict::Accepted;
                }
            }
        }
        if self.state == State::TimeWait {
            // Retransmitted FIN or anything else: re-ACK and restart 2MSL.
            if !seg.rst {
                self.ack_now = true;
                if seg.fin {
                    self.time_wait_deadline = Some(now + self.cfg.time_wait);
                }
            }
            return SegmentVerdict::Accepted;
        }

        // Sequence acceptability (RFC 9293 §3.10.7.4).
        // RCV.WND: what we advertised, or what the buffer takes now if that is more (the
        // handshake's ACK may not have gone out yet when the first segment arrives).
        let wnd = seq::dist(self.rcv_nxt, self.rcv_adv).max(self.advertisable_window());
        let len = seg.seq_len();
        let in_wnd = |x: u32| seq::in_range(x, self.rcv_nxt, self.rcv_nxt.wrapping_add(wnd));
        let acceptable = match (len, wnd) {
            (0, 0) => seg.seq == self.rcv_nxt,
            (0, _) => in_wnd(seg.seq),
            (_, 0) => false,
            (_, _) => in_wnd(seg.seq) || in_wnd(seg.seq.wrapping_add(len - 1)),
        };
        if !acceptable {
            if seg.rst {
                return SegmentVerdict::Accepted; // §3.18: out-of-window RST dropped silently
            }
            if seg.syn {
                // §3.18: SYN outside the window gets an ACK, no throttling.
                self.ack_now = true;
                return SegmentVerdict::Accepted;
            }
            self.ack_now = true;
            // A retransmission of data we already have (our ACK was lost) proves the peer is
            // alive: restart the FIN_WAIT_2 timer as an acceptable segment would, or a peer in
            // a long RTO backoff is timed out between its retransmissions.
            let old_dup = len > 0 && seq::le(seg.seq.wrapping_add(len), self.rcv_nxt);
            if self.state == State::FinWait2 && old_dup {
                self.rtx_deadline = Some(now + self.cfg.fin_wait_2);
            }
            // Zero window: still take the ACK information (RFC 9293 allowance).
            if wnd == 0 && seg.seq == self.rcv_nxt {
                if let Some(ack) = seg.ack {
                    self.process_ack(now, seg, ack);
                }
            }
            return SegmentVerdict::Accepted;
        }

        // RST (RFC 5961 §3, digest §3.18, C-item for blind reset).
        if seg.rst {
            if seg.seq == self.rcv_nxt {
                if self.state == State::SynRcvd {
                    self.enter_closed(0);
                } else {
                    self.enter_closed(ev::RESET);
                }
            } else if !self.rst_challenge_sent {
                self.rst_challenge_sent = true;
                self.challenge_ack(now);
            }
            return SegmentVerdict::Accepted;
        }
        // SYN in a synchronized state (RFC 5961 §4, digest §3.18): challenge ACK, at most one
        // per interval; the connection is kept.
        if seg.syn {
            if self.state == State::SynRcvd && seg.seq.wrapping_add(1) == self.rcv_nxt {
                // Retransmitted SYN: resend the SYN-ACK.
                self.snd_nxt = self.iss;
                return SegmentVerdict::Accepted;
            }
            let due = self
                .last_syn_challenge
                .is_none_or(|t| now >= t + self.cfg.syn_challenge_interval);
            if due {
                self.last_syn_challenge = Some(now);
                self.challenge_ack(now);
            }
            return SegmentVerdict::Accepted;
        }
        let Some(ack) = seg.ack else {
            return SegmentVerdict::Accepted; // RFC 9293: no ACK bit → drop
        };
        // An acceptable segment ends the RST-validation period (§3.18).
        self.rst_challenge_sent = false;

        if self.state == State::SynRcvd {
            if seq::le(ack, self.snd_una) || seq::gt(ack, self.snd_max) {
                return SegmentVerdict::SendReset;
            }
            self.state = State::Established;
            self.events |= ev::CONNECTED;
            self.snd_wnd = u32::from(seg.window) << self.snd_wscale;
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = ack;
            if self.fin_seq.is_some() {
                self.state = State::FinWait1;
            }
        }
        if !self.process_ack(now, seg, ack) {
            return SegmentVerdict::Accepted;
        }
        if self.state == State::Closed {
            return SegmentVerdict::Accepted;
        }
        // Timestamps: remember the peer's clock (RFC 7323 §4.3).
        if let Some((val, _)) = seg.ts {
            if seq::le(seg.seq, self.last_ack_sent) && seq::ge(val, self.ts_recent) {
                self.ts_recent = val;
                self.ts_recent_tick = now;
            }
        }
        self.restart_keepalive(now);
        if self.state == State::FinWait2 {
            self.rtx_deadline = Some(now + self.cfg.fin_wait_2);
        }

        // Data.
        if !seg.payload.is_empty() {
            if matches!(
                self.state,
                State::Established | State::FinWait1 | State::FinWait2
            ) {
                self.take_data(now, seg);
            } else {
                self.ack_now = true;
            }
        }
        // FIN, once everything before it has arrived.
        if seg.fin {
            let fin_at = seg.seq.wrapping_add(seg.payload.len() as u32);
            if fin_at == self.rcv_nxt {
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                self.ack_now = true;
                self.events |= ev::PEER_CLOSED;
                match self.state {
                    State::SynRcvd | State::Established => self.state = State::CloseWait,
                    State::FinWait1 => self.state = State::Closing,
                    State::FinWait2 => self.enter_time_wait(now),
                    _ => {}
                }
            } else {
                self.ack_now = true;
            }
        }
        SegmentVerdict::Accepted
    }

    fn tps(&self) -> u64 {
        self.cfg.ticks_per_second
    }

    fn challenge_ack(&mut self, now: Tick) {
        tracing::debug!("challenge ACK (RFC 5961)");
        self.ack_now = true;
        self.stats.challenge_acks += 1;
        self.events |= ev::CHALLENGE_ACK;
        // §3.18: arm keepalive to fire within 5 minutes.
        let at = now + self.cfg.mitigation_keepalive;
        match self.ka_deadline {
            None => {
                self.ka_deadline = Some(at);
                self.mitigation_ka = true;
            }
            Some(d) if d > at => self.ka_deadline = Some(at),
            _ => {}
        }
    }

    fn enter_time_wait(&mut self, now: Tick) {
        self.state = State::TimeWait;
        self.rtx_deadline = None;
        self.ka_deadline = None;
        self.time_wait_deadline = Some(now + self.cfg.time_wait);
        self.events |= ev::TIME_WAIT;
    }

    fn on_segment_syn_sent(&mut self, now: Tick, seg: &Segment) -> SegmentVerdict {
        if let Some(ack) = seg.ack {
            if seq::le(ack, self.iss) || seq::gt(ack, self.snd_max) {
                return if seg.rst {
                    SegmentVerdict::Accepted
                } else {
                    SegmentVerdict::SendReset
                };
            }
            if seg.rst {
                self.enter_closed(ev::RESET);
                return SegmentVerdict::Accepted;
            }
        } else if seg.rst {
            return SegmentVerdict::Accepted;
        }
        if !seg.syn {
            return SegmentVerdict::Accepted;
        }
        self.take_syn_options(seg, now);
        self.rcv_nxt = seg.seq.wrapping_add(1);
        self.rcv_adv = self.rcv_nxt;
        self.snd_wnd = u32::from(seg.window);
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = seg.seq;
        self.ack_now = true;
        if let Some(ack) = seg.ack {
            self.snd_wl2 = ack;
            self.on_new_ack(now, seg, ack);
            self.state = if self.fin_seq.is_some() {
                State::FinWait1
            } else {
                State::Established
            };
            self.events |= ev::CONNECTED;
            self.restart_keepalive(now);
        } else {
            // Simultaneous open: answer with SYN-ACK.
            self.state = State::SynRcvd;
            self.snd_nxt = self.iss;
        }
        SegmentVerdict::Accepted
    }

    /// ACK processing; false if the segment must be dropped.
    fn process_ack(&mut self, now: Tick, seg: &Segment, ack: u32) -> bool {
        // RFC 5961 §5: ACK outside [SND.UNA − MAX.SND.WND, SND.MAX] → challenge ACK, drop.
        let lower = self.snd_una.wrapping_sub(self.max_snd_wnd.max(1));
        if seq::gt(ack, self.snd_max) || seq::lt(ack, lower) {
            self.challenge_ack(now);
            return false;
        }
        // Window update (RFC 9293 §3.10.7.4).
        let new_wnd = u32::from(seg.window) << self.snd_wscale;
        let window_changed = new_wnd != self.snd_wnd;
        if seq::lt(self.snd_wl1, seg.seq) || (self.snd_wl1 == seg.seq && seq::le(self.snd_wl2, ack))
        {
            self.snd_wnd = new_wnd;
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = ack;
            self.max_snd_wnd = self.max_snd_wnd.max(new_wnd);
        }
        let mut new_sack = false;
        if self.sack_enabled {
            for (s, e) in seg.sack.iter().flatten() {
                new_sack |= self.sb.add(*s, *e, ack, self.snd_max);
            }
        }
        if seq::gt(ack, self.snd_una) {
            self.on_new_ack(now, seg, ack);
        } else if ack == self.snd_una
            && seg.payload.is_empty()
            && !seg.syn
            && !seg.fin
            && self.snd_una != self.snd_max
            && (!window_changed || new_sack)
        {
            self.on_dup_ack(now);
        }
        self.sack_loss_checks();
        // Persist: a zero window with data waiting and nothing in flight (§3.13).
        self.update_persist(now, true);
        true
    }

    fn unsent(&self) -> u32 {
        let sent_data = seq::dist(self.send_base, self.snd_nxt).min(self.send.len() as u32);
        self.send.len() as u32 - sent_data
    }

    /// The peer's window is closed, or too small to send into without silly-window
    /// syndrome (RFC 9293 §3.8.6.2.1): the persist timer runs (§3.13).
    fn persist_blocked(&self) -> bool {
        let smss = u32::from(self.eff_mss());
        let pending = seq::dist(self.snd_una, self.send_end());
        if pending == 0 || !seq::lt(self.snd_una, self.send_end()) {
            return false;
        }
        let w = self.snd_wnd;
        w == 0 || (w < smss && w < pending && w < self.max_snd_wnd / 2)
    }

    /// Persist algorithm of §3.13. `on_ack`: called for an incoming ACK.
    fn update_persist(&mut self, now: Tick, on_ack: bool) {
        let blocked = self.persist_blocked();
        if !self.persist {
            if blocked && self.snd_nxt == self.snd_una {
                // Zero-window segment: SndWndProbeCount = 0, Retransmit.Count = 0,
                // persist = RTO << SndWndProbeCount.
                self.persist = true;
                self.snd_wnd_probe_count = 0;
                self.rtx_count = 0;
                self.rtx_deadline = Some(now + self.rto());
            }
        } else if !blocked {
            // A usable window ends the algorithm; sending resumes.
            self.persist = false;
            self.snd_wnd_probe_count = 0;
            self.rtx_count = 0;
            self.rtx_deadline = (self.flight() > 0).then(|| now + self.rto());
        } else if on_ack {
            // A zero-window ACK starts the next round.
            self.snd_wnd_probe_count = self.snd_wnd_probe_count.saturating_add(1);
            self.rtx_count = 0;
            let shift = u32::from(self.snd_wnd_probe_count).min(16);
            self.rtx_deadline = Some(now + (self.rto() << shift).min(self.cfg.max_rto));
        }
    }

    fn on_new_ack(&mut self, now: Tick, seg: &Segment, ack: u32) {
        let acked = seq::dist(self.snd_una, ack);
        // RTT sample: timestamps (RFC 7323 §4.1) or Karn-timed segment (RFC 6298 §3).
        if self.ts_enabled {
            if let Some((_, ecr)) = seg.ts {
                if ecr != 0 && self.rtx_count == 0 {
                    self.rtt
                        .sample(u64::from(self.ts_val(now).wrapping_sub(ecr)).min(60_000));
                }
            }
        } else if let Some((s, t)) = self.timing {
            if seq::gt(ack, s) {
                if self.rtx_count == 0 {
                    self.rtt.sample(now.saturating_sub(t));
                }
                self.timing = None;
            }
        }
        // Free acknowledged data; account for SYN and FIN.
        let data_acked = seq::dist(self.send_base, ack).min(self.send.len() as u32);
        if seq::gt(ack, self.send_base) {
            self.send.advance(data_acked as usize);
            self.send_base = self.send_base.wrapping_add(data_acked);
            if data_acked > 0 {
                self.events |= ev::WRITABLE;
            }
        }
        self.snd_una = ack;
        if seq::lt(self.snd_nxt, ack) {
            self.snd_nxt = ack;
        }
        self.sb.remove_below(ack);
        self.rtx_count = 0;
        self.rtx_start = None;
        self.last_rto_una = None;
        self.rtx_deadline = if self.flight() > 0 {
            Some(now + self.rto())
        } else {
            None
        };
        if seq::lt(self.high_rxt, ack) {
            self.high_rxt = ack;
        }
        // Congestion control (RFC 5681, RFC 6582, RFC 6675).
        let smss = u32::from(self.eff_mss());
        if self.in_recovery {
            if seq::ge(ack, self.recover) {
                self.in_recovery = false;
                self.cwnd = if self.sack_enabled {
                    self.ssthresh
                } else {
                    self.ssthresh.min(self.flight() + smss)
                };
            } else if !self.sack_enabled {
                // NewReno partial ACK: retransmit the next hole, deflate.
                self.rexmit_una = true;
                self.cwnd = self.cwnd.saturating_sub(acked) + smss;
            } else if self.sb.is_empty() {
                self.rexmit_una = true;
            }
        } else if self.cwnd < self.ssthresh {
            self.cwnd = self.cwnd.saturating_add(acked.min(2 * smss));
        } else {
            self.ca_acked = self.ca_acked.saturating_add(acked);
            if self.ca_acked >= self.cwnd {
                self.ca_acked -= self.cwnd;
                self.cwnd = self.cwnd.saturating_add(smss);
            }
        }
        self.dup_acks = 0;
        // Our FIN acknowledged?
        if let Some(f) = self.fin_seq {
            if ack == f.wrapping_add(1) {
                match self.state {
                    State::FinWait1 => {
                        self.state = State::FinWait2;
                        self.rtx_deadline = Some(now + self.cfg.fin_wait_2);
                    }
                    State::Closing => self.enter_time_wait(now),
                    State::LastAck => self.enter_closed(0),
                    _ => {}
                }
            }
        }
    }

    fn on_dup_ack(&mut self, _now: Tick) {
        self.stats.dup_acks_in += 1;
        self.dup_acks = self.dup_acks.saturating_add(1);
        let smss = u32::from(self.eff_mss());
        if self.in_recovery {
            if !self.sack_enabled {
                self.cwnd = self.cwnd.saturating_add(smss); // NewReno inflation
            }
            return;
        }
        let lost_by_sack = false; // checked for every ACK in sack_loss_checks
                                  // RFC 6582 §3.2: only a "high" ACK (beyond `recover`) starts a new recovery.
        let high = seq::gt(self.snd_una, self.recover) || self.recover == self.snd_una;
        if (self.dup_acks >= 3 || lost_by_sack) && (high || self.sack_enabled) {
            self.enter_recovery();
        }
    }

    /// Fast retransmit / fast recovery entry (RFC 5681 §3.2, RFC 6582, RFC 6675 §5).
    fn enter_recovery(&mut self) {
        let smss = u32::from(self.eff_mss());
        tracing::debug!(
            snd_una = self.snd_una,
            snd_max = self.snd_max,
            cwnd = self.cwnd,
            "fast recovery"
        );
        self.in_recovery = true;
        self.stats.fast_recoveries += 1;
        self.recover = self.snd_max;
        self.ssthresh = (self.flight() / 2).max(2 * smss);
        self.cwnd = if self.sack_enabled {
            self.ssthresh
        } else {
            self.ssthresh + 3 * smss
        };
        self.high_rxt = self.snd_una;
        self.rxt_mark = Some(self.snd_max);
        self.rexmit_una = true;
        self.timing = None;
    }

    /// SACK-based checks after every ACK: start recovery when the scoreboard shows loss
    /// (RFC 6675 IsLost, also on ACKs that advance SND.UNA), and detect lost retransmissions.
    fn sack_loss_checks(&mut self) {
        if !self.sack_enabled || self.snd_una == self.snd_max {
            return;
        }
        let smss = u32::from(self.eff_mss());
        if !self.in_recovery {
            if self.sb.lost_boundary(3 * smss).is_some() && seq::ge(self.snd_una, self.recover) {
                self.enter_recovery();
            }
            return;
        }
        if let (Some(mark), Some(top)) = (self.rxt_mark, self.sb.highest()) {
            let beyond: u32 = self
                .sb
                .ranges()
                .iter()
                .filter(|r| seq::gt(r.1, mark))
                .map(|&(s, e)| seq::dist(seq::max(s, mark), e))
                .sum();
            let hole_retransmitted = self.sb.next_hole(self.snd_una, self.high_rxt).is_some();
            if beyond >= 3 * smss && seq::gt(top, mark) && hole_retransmitted {
                // Lost retransmission: a new pass over the holes, one more reduction.
                self.high_rxt = self.snd_una;
                self.rxt_mark = Some(self.snd_max);
                self.ssthresh = (self.cwnd / 2).max(2 * smss);
                self.cwnd = self.ssthresh;
                self.stats.fast_recoveries += 1;
            }
        }
    }

    fn take_data(&mut self, now: Tick, seg: &Segment) {
        let data_seq = if seg.syn {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        let in_order = data_seq == self.rcv_nxt || seq::lt(data_seq, self.rcv_nxt);
        let had_ooo = !self.recv.ooo_ranges().is_empty();
        let adv = self.recv.write(self.rcv_nxt, data_seq, seg.payload);
        if adv > 0 {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(adv);
            self.events |= ev::READABLE;
        }
        if !in_order || had_ooo {
            // Out of order, or filling a hole: ACK at once (RFC 5681 §4.2) with SACK.
            if !in_order {
                self.recent_sacks.rotate_right(1);
                self.recent_sacks[0] = Some(data_seq);
            }
            self.ack_now = true;
            return;
        }
        // Delayed ACK and ACK frequency (RFC 1122 4.2.3.2, §3.13).
        if seg.payload.len() >= usize::from(self.eff_mss()) {
            self.segs_unacked += (seg.payload.len() / usize::from(self.eff_mss())) as u32;
        } else {
            self.segs_unacked += 1;
        }
        if self.segs_unacked >= self.cfg.ack_frequency.max(1) {
            self.ack_now = true;
        } else if self.delack_deadline.is_none() {
            self.delack_deadline = Some(now + self.cfg.delayed_ack.max(1));
        }
    }

    // ---- Timers ----------------------------------------------------------------------

    /// Run every timer due at `now`.
    pub fn on_timer(&mut self, now: Tick) {
        if self.delack_deadline.is_some_and(|d| d <= now) {
            self.delack_deadline = None;
            self.ack_now = true;
        }
        if self.time_wait_deadline.is_some_and(|d| d <= now) {
            self.time_wait_deadline = None;
            self.enter_closed(0);
            return;
        }
        if self.ka_deadline.is_some_and(|d| d <= now) {
            self.on_keepalive_timer(now);
        }
        if self.rtx_deadline.is_some_and(|d| d <= now) {
            self.rtx_deadline = None;
            self.on_rtx_timer(now);
        }
    }

    fn on_keepalive_timer(&mut self, now: Tick) {
        let limit = match self.cached.ka_probe_count {
            0 => 10,
            n => n,
        };
        if self.ka_probe_count >= limit {
            self.stats.timeouts += 1;
            self.enter_closed(ev::TIMED_OUT);
            return;
        }
        self.ka_probe_count += 1;
        tracing::debug!(probe = self.ka_probe_count, "keepalive probe");
        self.ka_probe_pending = true;
        self.stats.keepalive_probes += 1;
        let interval = match self.cached.ka_interval {
            0 => self.tps(),
            n => u64::from(n),
        };
        self.ka_deadline = Some(now + interval);
    }

    fn retransmit_limit_hit(&self, now: Tick) -> bool {
        match self.cached.max_rt {
            0 => self.rtx_count >= self.cfg.max_retransmissions,
            u32::MAX => false,
            max => self
                .rtx_start
                .is_some_and(|s| now.saturating_sub(s) >= u64::from(max)),
        }
    }

    fn on_rtx_timer(&mut self, now: Tick) {
        match self.state {
            State::FinWait2 => {
                // The retransmit timer doubles as the FIN_WAIT_2 timer (§3.13).
                self.enter_closed(ev::TIMED_OUT);
                return;
            }
            State::Closed | State::TimeWait | State::Listen => return,
            _ => {}
        }
        if self.retransmit_limit_hit(now) {
            tracing::debug!(
                rtx_count = self.rtx_count,
                "retransmission limit: connection timed out"
            );
            self.stats.timeouts += 1;
            self.enter_closed(ev::TIMED_OUT);
            return;
        }
        if self.rtx_start.is_none() {
            self.rtx_start = Some(now);
        }
        if self.persist {
            // Persist timer or probe retransmit expired: send a window probe, back off.
            tracing::debug!(snd_wnd = self.snd_wnd, "persist probe");
            self.probe_pending = true;
            self.stats.persist_probes += 1;
            self.rtx_deadline =
                Some(now + (self.rto() << u32::from(self.rtx_count).min(16)).min(self.cfg.max_rto));
            self.rtx_count = self.rtx_count.saturating_add(1);
            return;
        }
        if self.flight() == 0 {
            return;
        }
        // RTO (RFC 6298 §5, RFC 5681 (4)): collapse cwnd, go back to SND.UNA.
        self.stats.timeouts += 1;
        tracing::debug!(
            snd_una = self.snd_una,
            snd_max = self.snd_max,
            rtx_count = self.rtx_count,
            rto = self.backed_off_rto(),
            "retransmission timeout"
        );
        let smss = u32::from(self.eff_mss());
        if self.rtx_count == 0 {
            self.ssthresh = (self.flight() / 2).max(2 * smss);
        }
        if self.last_rto_una == Some(self.snd_una) {
            // Second timeout on the same data: the SACK information may be stale (reneging).
            self.sb.clear();
        }
        self.last_rto_una = Some(self.snd_una);
        self.cwnd = smss;
        self.ca_acked = 0;
        self.in_recovery = false;
        self.recover = self.snd_max;
        self.dup_acks = 0;
        self.snd_nxt = self.snd_una;
        self.high_rxt = self.snd_una;
        self.rexmit_una = false;
        self.timing = None;
        self.rtx_count = self.rtx_count.saturating_add(1);
        self.arm_rtx(now);
    }

    // ---- Output ----------------------------------------------------------------------

    fn window_field(&mut self) -> u16 {
        let wnd = self.advertisable_window();
        // Never shrink the window (RFC 9293 §3.8.6.2.2).
        let right = self.rcv_nxt.wrapping_add(wnd);
        if seq::gt(right, self.rcv_adv) {
            self.rcv_adv = right;
        }
        let shift = if self.state == State::SynSent || self.state == State::SynRcvd {
            0
        } else {
            self.rcv_wscale
        };
        let w = seq::dist(self.rcv_nxt, self.rcv_adv) >> shift;
        w.min(0xffff) as u16
    }

    fn advertisable_window(&self) -> u32 {
        let max = 0xffffu32 << self.rcv_wscale;
        let room = match self.recv_target {
            // A shrink is pending (InitialRcvWnd update): the edge does not grow past it.
            Some(t) => self
                .recv
                .window()
                .min(t.saturating_sub(self.recv.readable())),
            None => self.recv.window(),
        };
        let w = (room as u32).min(max);
        // Round down to the scale granularity so the advertised edge is exact.
        w & !((1u32 << self.rcv_wscale) - 1)
    }

    fn sack_blocks(&self) -> [Option<(u32, u32)>; 3] {
        let mut out = [None; 3];
        if !self.sack_enabled {
            return out;
        }
        let ranges = self.recv.ooo_ranges();
        let mut n = 0;
        // RFC 2018 §4: the block holding the most recent segment first, then the blocks of
        // the segments before it (repeated for ACK loss), then the lowest others.
        let recent = self
            .recent_sacks
            .iter()
            .flatten()
            .filter_map(|&rs| ranges.iter().find(|&&(s, e)| seq::in_range(rs, s, e)));
        for &r in recent.chain(ranges.iter()) {
            if n >= 3 {
                break;
            }
            if !out[..n].contains(&Some(r)) {
                out[n] = Some(r);
                n += 1;
            }
        }
        out
    }

    fn base_segment(&mut self, now: Tick, seq_no: u32) -> OutSegment {
        let window = self.window_field();
        OutSegment {
            seq: seq_no,
            ack: Some(self.rcv_nxt),
            window,
            ts: self.ts_enabled.then(|| (self.ts_val(now), self.ts_recent)),
            sack: self.sack_blocks(),
            ..OutSegment::default()
        }
    }

    fn after_ack_sent(&mut self) {
        self.ack_now = false;
        self.delack_deadline = None;
        self.segs_unacked = 0;
        self.last_ack_sent = self.rcv_nxt;
    }

    /// The next segment to send, if any. `max_payload` lets the engine ask for TSO-sized
    /// segments; it is rounded down to whole MSS.
    pub fn poll_segment(&mut self, now: Tick, max_payload: usize) -> Option<OutSegment> {
        if self.send_rst {
            self.send_rst = false;
            return Some(OutSegment {
                seq: self.snd_max,
                rst: true,
                ack: Some(self.rcv_nxt),
                ..OutSegment::default()
            });
        }
        match self.state {
            State::Closed | State::Listen => return None,
            State::SynSent | State::SynRcvd => return self.poll_syn(now),
            _ => {}
        }
        if let Some(s) = self.poll_data(now, max_payload) {
            self.stats.segs_out += 1;
            self.after_ack_sent();
            return Some(s);
        }
        if self.ka_probe_pending {
            // Keepalive probe: SEG.SEQ = SND.NXT − 1, no data (RFC 1122 4.2.3.6).
            self.ka_probe_pending = false;
            let s = self.base_segment(now, self.snd_una.wrapping_sub(1));
            self.after_ack_sent();
            return Some(s);
        }
        if self.ack_now {
            // Pure ACKs carry SND.MAX, not SND.NXT: after a timeout SND.NXT steps back, and an
            // ACK with an old sequence number is unacceptable to the peer, which would then
            // ignore its acknowledgment (two engines in go-back-N once deadlocked this way).
            let s = self.base_segment(now, self.snd_max);
            self.after_ack_sent();
            return Some(s);
        }
        None
    }

    fn poll_syn(&mut self, now: Tick) -> Option<OutSegment> {
        if self.snd_nxt != self.iss && !self.ack_now {
            return None;
        }
        if self.snd_nxt != self.iss {
            // Just an ACK (e.g. a challenge) while the handshake is pending: resend SYN(-ACK).
            self.ack_now = false;
        }
        let syn_ack = self.state == State::SynRcvd;
        let mut s = OutSegment {
            seq: self.iss,
            syn: true,
            ack: syn_ack.then_some(self.rcv_nxt),
            window: self.window_field(),
            mss: Some(self.cfg.local_mss),
            ..OutSegment::default()
        };
        if !syn_ack {
            s.wscale = self.cfg.window_scaling.then_some(self.rcv_wscale);
            s.sack_permitted = self.cfg.sack;
            s.ts = self.cfg.timestamps.then(|| (self.ts_val(now), 0));
        } else {
            s.wscale = self.ws_enabled.then_some(self.rcv_wscale);
            s.sack_permitted = self.sack_enabled;
            s.ts = self.ts_enabled.then(|| (self.ts_val(now), self.ts_recent));
        }
        self.snd_nxt = self.iss.wrapping_add(1);
        if seq::gt(self.snd_nxt, self.snd_max) {
            self.snd_max = self.snd_nxt;
        }
        if self.rtx_deadline.is_none() {
            self.arm_rtx(now);
        }
        if self.rtx_count == 0 && !self.ts_enabled {
            self.timing = Some((self.iss, now));
        }
        if syn_ack {
            self.after_ack_sent();
        }
        self.stats.segs_out += 1;
        Some(s)
    }

    fn data_segment(&mut self, now: Tick, seq_no: u32, len: u32, fin: bool) -> OutSegment {
        let mut s = self.base_segment(now, seq_no);
        s.data_off = seq::dist(self.send_base, seq_no) as usize;
        s.data_len = len as usize;
        s.fin = fin;
        s.psh = len > 0 && seq_no.wrapping_add(len) == self.send_end();
        if self.rtx_deadline.is_none() {
            self.arm_rtx(now);
        }
        s
    }

    fn send_end(&self) -> u32 {
        self.send_base.wrapping_add(self.send.len() as u32)
    }

    fn poll_data(&mut self, now: Tick, max_payload: usize) -> Option<OutSegment> {
        let smss = u32::from(self.eff_mss());
        let seg_max = ((max_payload as u32 / smss).max(1)) * smss;
        // 1. Window probe (persist, §3.13): one byte beyond a zero window, or what a too-small
        //    window takes (the SWS override).
        if self.probe_pending {
            self.probe_pending = false;
            let pending = seq::dist(self.snd_una, self.send_end());
            if pending > 0 && seq::lt(self.snd_una, self.send_end()) {
                let len = self.snd_wnd.max(1).min(smss).min(pending);
                let s = self.data_segment(now, self.snd_una, len, false);
                let end = self.snd_una.wrapping_add(len);
                if seq::gt(end, self.snd_max) {
                    self.snd_max = end;
                }
                return Some(s);
            }
        }
        if self.persist {
            return None;
        }
        // 2. Loss recovery retransmissions (RFC 6582 / RFC 6675 NextSeg).
        if self.in_recovery || self.rexmit_una {
            if let Some(s) = self.next_retransmission(now, smss) {
                return Some(s);
            }
        }
        // 3. New data (or go-back-N resend after an RTO) from SND.NXT.
        while let Some(end) = self.sb.sacked_end(self.snd_nxt) {
            self.snd_nxt = end;
        }
        let send_end = self.send_end();
        let avail = if seq::lt(self.snd_nxt, send_end) {
            seq::dist(self.snd_nxt, send_end)
        } else {
            0
        };
        let fin_pending = self.fin_seq.is_some_and(|f| seq::le(self.snd_nxt, f));
        if avail == 0 && !fin_pending {
            return None;
        }
        let cwnd = if self.in_recovery {
            // RFC 6675: send while pipe < cwnd.
            let pipe = self.pipe(smss);
            self.cwnd.saturating_sub(pipe)
        } else {
            let limited = if self.dup_acks > 0 && self.dup_acks < 3 {
                u32::from(self.dup_acks) * smss // RFC 3042 limited transmit
            } else {
                0
            };
            let in_flight = seq::dist(self.snd_una, self.snd_nxt);
            (self.cwnd + limited).saturating_sub(in_flight)
        };
        let wnd_room = seq::dist(
            self.snd_nxt,
            seq::max(self.snd_nxt, self.snd_una.wrapping_add(self.snd_wnd)),
        );
        let room = cwnd.min(wnd_room);
        let mut len = avail.min(room).min(seg_max);
        if len < avail && len < smss {
            // Sender SWS avoidance (RFC 9293 §3.8.6.2.1): wait for a full segment unless the
            // window is small in general.
            if len == 0 || len < self.max_snd_wnd / 2 {
                len = 0;
            }
        }
        if len > 0 && len < smss && len == avail {
            // Nagle (RFC 896): a small last segment waits while data is unacknowledged,
            // unless a FIN follows it.
            let nagle = self.cached.flags & TCP_FLAG_NAGLING_ENABLED != 0;
            if nagle && self.snd_nxt != self.snd_una && self.fin_seq.is_none() {
                len = 0;
            }
        }
        let fin = fin_pending
            && self
                .fin_seq
                .is_some_and(|f| self.snd_nxt.wrapping_add(len) == f)
            && (len > 0 || avail == 0);
        if len == 0 && !fin {
            if avail > 0 {
                self.update_persist(now, false);
            }
            return None;
        }
        let seq_no = self.snd_nxt;
        let s = self.data_segment(now, seq_no, len, fin);
        let end = seq_no.wrapping_add(len + u32::from(fin));
        if seq::lt(seq_no, self.snd_max) {
            self.stats.retransmits += 1;
        } else if self.timing.is_none() && !self.ts_enabled && self.rtx_count == 0 {
            self.timing = Some((seq_no, now));
        }
        self.snd_nxt = end;
        if seq::gt(end, self.snd_max) {
            self.snd_max = end;
        }
        Some(s)
    }

    /// RFC 6675 pipe: bytes believed in the network.
    fn pipe(&self, smss: u32) -> u32 {
        let lost = self.sb.lost_boundary(3 * smss);
        let mut pipe = 0u32;
        let mut x = self.snd_una;
        let top = self.snd_max;
        for &(s, e) in self.sb.ranges().iter().chain(core::iter::once(&(top, top))) {
            if seq::lt(x, s) {
                // Hole [x, s): count what is not lost, plus what we retransmitted.
                let hole_end = seq::min(s, top);
                let lost_end = lost.map_or(x, |l| seq::max(x, seq::min(l, hole_end)));
                pipe += seq::dist(lost_end, hole_end);
                let rx_end = seq::min(self.high_rxt, lost_end);
                if seq::gt(rx_end, x) {
                    pipe += seq::dist(x, rx_end);
                }
            }
            x = seq::max(x, e);
        }
        pipe
    }

    fn next_retransmission(&mut self, now: Tick, smss: u32) -> Option<OutSegment> {
        let (start, end) = if self.rexmit_una {
            self.rexmit_una = false;
            let end = self
                .sb
                .next_hole(self.snd_una, self.snd_max)
                .map_or(self.snd_max, |h| h.1);
            (self.snd_una, end)
        } else if self.sack_enabled {
            if self.pipe(smss) >= self.cwnd {
                return None;
            }
            let lost = self.sb.lost_boundary(3 * smss)?;
            let from = seq::max(self.high_rxt, self.snd_una);
            let (s, e) = self.sb.next_hole(from, lost)?;
            (s, e)
        } else {
            return None;
        };
        let fin_at = self.fin_seq;
        let data_end = self.send_end();
        let mut len = seq::dist(start, seq::min(end, data_end)).min(smss);
        let fin = len < smss
            && fin_at.is_some_and(|f| start.wrapping_add(len) == f)
            && seq::gt(self.snd_max, fin_at.unwrap_or(start));
        if len == 0 && !fin {
            // Only the FIN is outstanding.
            if fin_at == Some(start) && seq::gt(self.snd_max, start) {
                len = 0;
            } else {
                return None;
            }
        }
        let s = self.data_segment(now, start, len, fin || (len == 0 && fin_at == Some(start)));
        let e = start.wrapping_add(len + u32::from(s.fin));
        if seq::gt(e, self.high_rxt) {
            self.high_rxt = e;
        }
        if seq::gt(e, self.snd_nxt) {
            self.snd_nxt = e;
        }
        self.stats.retransmits += 1;
        if self.rtx_start.is_none() {
            self.rtx_start = Some(now);
        }
        Some(s)
    }

    /// A pure ACK if one is owed (delayed ACK pending): used before export so the owed ACK
    /// is not lost with the connection (§3.13: the OT flushes ACKs before upload).
    pub fn poll_owed_ack(&mut self, now: Tick) -> Option<OutSegment> {
        if !(self.ack_now || self.delack_deadline.is_some()) || !self.is_synchronized() {
            return None;
        }
        let s = self.base_segment(now, self.snd_max);
        self.after_ack_sent();
        Some(s)
    }

    /// Whether there may be something to send now (cheap check for the engine's ready list).
    /// Must be true whenever `poll_segment` could return a segment: a FIN waiting at SND.NXT
    /// after a timeout counts (a lost FIN once went unretransmitted until the connection
    /// timed out).
    pub fn wants_output(&self) -> bool {
        self.send_rst
            || self.ack_now
            || self.probe_pending
            || self.ka_probe_pending
            || { matches!(self.state, State::SynSent | State::SynRcvd) && self.snd_nxt == self.iss }
            || (self.is_synchronized()
                && (self.unsent() > 0
                    || self.in_recovery
                    || self.rexmit_una
                    || self.fin_seq.is_some_and(|f| seq::le(self.snd_nxt, f))))
    }

    // ---- Cached-variable update (§3.3) -----------------------------------------------

    /// Apply a host update of the cached variables (§3.3, C-024, C-083..C-091). The whole
    /// structure is copied in (C-083); what changes behaviour takes effect at once:
    /// TTL/hop limit, TOS/traffic class, flow label and UserPriority on the next frame (the
    /// engine reads them per frame, C-091), Nagle on the next send decision, keepalive on/off
    /// and the restart flags on the timers, MaxRT on the running retransmission, and
    /// InitialRcvWnd on the receive buffer. `recv_capacity` is the receive-buffer size the
    /// engine chose for the new InitialRcvWnd (None = leave the buffer as it is).
    pub fn update_cached(&mut self, now: Tick, new: &TcpCached, recv_capacity: Option<usize>) {
        let old = std::mem::replace(&mut self.cached, new.clone());
        let restart_flag = new.flags & TCP_FLAG_MAX_RT_RESTART != 0;
        // Keepalive (C-087, C-089, RFC 1122 4.2.3.6).
        let was_on = old.flags & TCP_FLAG_KEEP_ALIVE_ENABLED != 0;
        let on = self.keepalive_enabled();
        if !on && was_on && !self.mitigation_ka {
            self.ka_deadline = None;
            self.ka_probe_count = 0;
            self.ka_probe_pending = false;
        }
        if restart_flag && new.ka_probe_count != old.ka_probe_count {
            self.ka_probe_count = 0; // C-089
        }
        let ka_times_changed =
            new.ka_timeout != old.ka_timeout || new.ka_interval != old.ka_interval;
        if on && self.is_synchronized() && self.state != State::TimeWait {
            let restart = new.flags & TCP_FLAG_KEEP_ALIVE_RESTART != 0
                || !was_on
                || (restart_flag && ka_times_changed);
            if restart {
                // C-087: the timer starts again from zero with the current values.
                self.mitigation_ka = false;
                self.ka_probe_pending = false;
                let ticks = if self.ka_probe_count == 0 {
                    self.cached.ka_timeout.max(1)
                } else {
                    self.cached.ka_interval.max(1)
                };
                self.ka_deadline = Some(now + u64::from(ticks));
            }
        }
        // MaxRT (C-088, C-090): TotalRT restarts from zero.
        let max_rt_changed = new.max_rt != old.max_rt && new.max_rt != 0;
        if (restart_flag || max_rt_changed) && self.rtx_start.is_some() {
            self.rtx_start = Some(now);
        }
        // InitialRcvWnd (C-085, C-086). Growing takes effect at once; shrinking never takes
        // back window already advertised (RFC 9293 §3.8.6.2.2): the right edge stops moving
        // until the application has read down to the new size, then the buffer shrinks.
        if let Some(cap) = recv_capacity {
            self.recv_target = None;
            if cap >= self.recv.capacity() || self.recv_promised() <= cap {
                self.recv.resize(self.rcv_nxt, cap);
            } else {
                self.recv_target = Some(cap);
            }
        }
        if new.flags & TCP_FLAG_UPDATE_RCV_WND != 0
            && self.is_synchronized()
            && new.initial_rcv_wnd != seq::dist(self.rcv_nxt, self.rcv_adv)
        {
            self.ack_now = true; // advertise the new window (C-086)
        }
    }

    /// Receive-buffer bytes spoken for: unread data plus the window advertised.
    fn recv_promised(&self) -> usize {
        self.recv.readable() + seq::dist(self.rcv_nxt, self.rcv_adv) as usize
    }

    /// The receive window we last advertised (RcvWnd, bytes).
    pub fn rcv_wnd(&self) -> u32 {
        seq::dist(self.rcv_nxt, self.rcv_adv)
    }

    // ---- Export / import (§2.6) -------------------------------------------------------

    /// The chimney TCP state of this connection at `now` (ticks).
    pub fn export(&self, now: Tick) -> TcpOffloadState {
        let delta = |d: Option<Tick>| d.map_or(TIMER_STOPPED, |d| ticks32(d.saturating_sub(now)));
        let mut flags = 0;
        if self.ts_enabled {
            flags |= TCP_FLAG_TIMESTAMP_ENABLED;
        }
        if self.sack_enabled {
            flags |= TCP_FLAG_SACK_ENABLED;
        }
        if self.ws_enabled {
            flags |= TCP_FLAG_WINDOW_SCALING_ENABLED;
        }
        TcpOffloadState {
            const_: TcpConst {
                flags,
                remote_port: 0,
                local_port: 0,
                snd_wind_scale: self.snd_wscale,
                rcv_wind_scale: self.rcv_wscale,
                remote_mss: self.remote_mss,
                hash_value: self.hash_value,
            },
            cached: self.cached.clone(),
            delegated: TcpDelegated {
                state: self.state,
                flags: self.deleg_flags,
                rcv_nxt: self.rcv_nxt,
                rcv_wnd: seq::dist(self.rcv_nxt, self.rcv_adv),
                snd_una: self.snd_una,
                snd_nxt: self.snd_nxt,
                snd_max: self.snd_max,
                snd_wnd: self.snd_wnd,
                max_snd_wnd: self.max_snd_wnd,
                send_wl1: self.snd_wl1,
                c_wnd: self.cwnd,
                ss_thresh: self.ssthresh,
                s_rtt: self.rtt.srtt8,
                rtt_var: self.rtt.rttvar4,
                ts_recent: self.ts_recent,
                ts_recent_age: ticks32(now.saturating_sub(self.ts_recent_tick)),
                ts_time: self.ts_val(now),
                total_rt: self.rtx_start.map_or(0, |s| ticks32(now.saturating_sub(s))),
                dup_ack_count: self.dup_acks,
                snd_wnd_probe_count: self.snd_wnd_probe_count,
                keep_alive: KeepAliveTimer {
                    probe_count: self.ka_probe_count,
                    timeout_delta: delta(self.ka_deadline),
                },
                retransmit: RetransmitTimer {
                    count: self.rtx_count,
                    timeout_delta: delta(self.rtx_deadline),
                },
                d_wnd: self.d_wnd,
            },
            send_data: self.send.to_vec(),
            buffered_data: self.recv.readable_to_vec(),
        }
    }

    /// Rebuild a connection from exported state at `now` (ticks). The caller has validated
    /// the state (see [`validate_import`]).
    pub fn import(cfg: &TcbConfig, st: &TcpOffloadState, now: Tick) -> Tcb {
        let d = &st.delegated;
        let mut c = cfg.clone();
        c.send_buffer = cfg.send_buffer.max(st.send_data.len());
        c.recv_buffer = cfg
            .recv_buffer
            .max(st.cached.initial_rcv_wnd as usize)
            .max(st.buffered_data.len() + d.rcv_wnd as usize);
        let mut t = Tcb::blank(&c, d.snd_una, now);
        t.cached = st.cached.clone();
        t.state = d.state;
        t.ts_enabled = st.const_.flags & TCP_FLAG_TIMESTAMP_ENABLED != 0;
        t.sack_enabled = st.const_.flags & TCP_FLAG_SACK_ENABLED != 0;
        t.ws_enabled = st.const_.flags & TCP_FLAG_WINDOW_SCALING_ENABLED != 0;
        t.snd_wscale = st.const_.snd_wind_scale;
        t.rcv_wscale = st.const_.rcv_wind_scale;
        t.remote_mss = st.const_.remote_mss;
        t.hash_value = st.const_.hash_value;
        t.deleg_flags = d.flags;
        t.d_wnd = d.d_wnd;
        t.iss = d.snd_una.wrapping_sub(1);
        t.snd_una = d.snd_una;
        t.snd_nxt = d.snd_nxt;
        t.snd_max = d.snd_max;
        t.snd_wnd = d.snd_wnd;
        t.max_snd_wnd = d.max_snd_wnd;
        t.snd_wl1 = d.send_wl1;
        t.snd_wl2 = d.snd_una;
        t.cwnd = d.c_wnd;
        t.ssthresh = d.ss_thresh;
        t.recover = d.snd_una;
        t.high_rxt = d.snd_una;
        t.rcv_nxt = d.rcv_nxt;
        t.rcv_adv = d.rcv_nxt.wrapping_add(d.rcv_wnd);
        t.last_ack_sent = d.rcv_nxt;
        t.rtt = RttEstimator {
            srtt8: d.s_rtt,
            rttvar4: d.rtt_var,
            sampled: d.s_rtt != 0 || d.rtt_var != 0,
        };
        t.ts_recent = d.ts_recent;
        t.ts_recent_tick = now.saturating_sub(u64::from(d.ts_recent_age));
        t.ts_offset = d.ts_time.wrapping_sub(now as u32);
        t.rtx_start = (d.total_rt != 0).then(|| now.saturating_sub(u64::from(d.total_rt)));
        t.dup_acks = d.dup_ack_count;
        t.snd_wnd_probe_count = d.snd_wnd_probe_count;
        t.ka_probe_count = d.keep_alive.probe_count;
        let at = |delta: u32| (delta != TIMER_STOPPED).then(|| now + u64::from(delta));
        t.ka_deadline = at(d.keep_alive.timeout_delta);
        t.rtx_count = d.retransmit.count;
        t.rtx_deadline = at(d.retransmit.timeout_delta);
        t.send_base = d.snd_una;
        t.send.push(&st.send_data);
        t.recv.write(
            d.rcv_nxt.wrapping_sub(st.buffered_data.len() as u32),
            d.rcv_nxt.wrapping_sub(st.buffered_data.len() as u32),
            &st.buffered_data,
        );
        t.fin_seq = match d.state {
            State::FinWait1 | State::Closing | State::LastAck => {
                Some(d.snd_una.wrapping_add(st.send_data.len() as u32))
            }
            State::FinWait2 | State::TimeWait => {
                t.send_base = d.snd_una.wrapping_sub(1);
                Some(d.snd_una.wrapping_sub(1))
            }
            _ => None,
        };
        t.persist = t.persist_blocked() && t.snd_nxt == t.snd_una && t.rtx_deadline.is_some();
        t
    }

    /// Every protocol variable (not the buffers' bytes) in one line, for stall reports.
    pub fn debug_summary(&self) -> String {
        format!(
            "state {:?} snd_una {:#x} snd_nxt {:#x} snd_max {:#x} snd_wnd {} max_snd_wnd {} \
             wl1 {:#x} wl2 {:#x} cwnd {} ssthresh {} send_len {} send_base {:#x} fin_seq {:?} | \
             rcv_nxt {:#x} rcv_adv {:#x} last_ack_sent {:#x} readable {} rcv_window {} ooo {:?} \
             recent_sacks {:?} | ts {} ts_recent {:#x} ts_recent_tick {} srtt8 {} rttvar4 {} \
             rtx_count {} rtx_deadline {:?} rtx_start {:?} persist {} delack {:?} ack_now {} \
             ka {:?} | recovery {} recover {:#x} high_rxt {:#x} rxt_mark {:?} dup_acks {} \
             sacked {:?} | stats {:?}",
            self.state,
            self.snd_una,
            self.snd_nxt,
            self.snd_max,
            self.snd_wnd,
            self.max_snd_wnd,
            self.snd_wl1,
            self.snd_wl2,
            self.cwnd,
            self.ssthresh,
            self.send.len(),
            self.send_base,
            self.fin_seq,
            self.rcv_nxt,
            self.rcv_adv,
            self.last_ack_sent,
            self.recv.readable(),
            self.recv.window(),
            self.recv.ooo_ranges(),
            self.recent_sacks,
            self.ts_enabled,
            self.ts_recent,
            self.ts_recent_tick,
            self.rtt.srtt8,
            self.rtt.rttvar4,
            self.rtx_count,
            self.rtx_deadline,
            self.rtx_start,
            self.persist,
            self.delack_deadline,
            self.ack_now,
            self.ka_deadline,
            self.in_recovery,
            self.recover,
            self.high_rxt,
            self.rxt_mark,
            self.dup_acks,
            self.sb.ranges(),
            self.stats
        )
    }

    pub fn retransmit_count(&self) -> u8 {
        self.rtx_count
    }
    pub fn in_persist(&self) -> bool {
        self.persist
    }
}

/// Window scale that lets the whole receive buffer be advertised (RFC 7323 §2.3).
fn wscale_for(buf: usize) -> u8 {
    let mut s = 0u8;
    while s < 14 && (0xffffusize << s) < buf {
        s += 1;
    }
    s
}
