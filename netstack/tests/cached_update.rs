//! `Engine::update_cached` (spec digest §3.3, C-083..C-091): a host update of a live
//! connection's cached TCP variables changes what goes on the wire. Two engines back to back in
//! virtual time (deterministic); every frame engine A sends is captured and decoded here, so
//! the assertions are on bytes on the wire, not on internal state.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use chimney_netstack::{
    ConnHandle, Engine, EngineConfig, EngineError, Event, Instant, TcpCached,
    TCP_FLAG_KEEP_ALIVE_ENABLED, TCP_FLAG_KEEP_ALIVE_RESTART, TCP_FLAG_MAX_RT_RESTART,
    TCP_FLAG_NAGLING_ENABLED, TCP_FLAG_UPDATE_RCV_WND,
};

const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// What the test reads from one TCP frame of A.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    at_ms: u64,
    vlan_tci: Option<u16>,
    ttl: u8,
    tos: u8,
    flow_label: u32,
    seq: u32,
    ack: u32,
    window: u16,
    payload: usize,
    syn: bool,
}

fn decode(frame: &[u8], at_ms: u64) -> Option<Seen> {
    let (vlan_tci, l3) = if frame[12..14] == [0x81, 0x00] {
        (Some(u16::from_be_bytes([frame[14], frame[15]])), 18)
    } else {
        (None, 14)
    };
    let et = u16::from_be_bytes([frame[l3 - 2], frame[l3 - 1]]);
    let ip = &frame[l3..];
    let (ttl, tos, flow_label, tcp, tcp_len) = match et {
        0x0800 if ip[9] == 6 => {
            let ihl = usize::from(ip[0] & 15) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            (ip[8], ip[1], 0, &ip[ihl..], total - ihl)
        }
        0x86dd if ip[6] == 6 => {
            let tc = (ip[0] & 15) << 4 | ip[1] >> 4;
            let fl = u32::from(ip[1] & 15) << 16 | u32::from(ip[2]) << 8 | u32::from(ip[3]);
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            (ip[7], tc, fl, &ip[40..], plen)
        }
        _ => return None, // ARP / neighbor discovery
    };
    let doff = usize::from(tcp[12] >> 4) * 4;
    Some(Seen {
        at_ms,
        vlan_tci,
        ttl,
        tos,
        flow_label,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        payload: tcp_len - doff,
        syn: tcp[13] & 2 != 0,
    })
}

struct Pair {
    now_ms: u64,
    a: Engine,
    b: Engine,
    ca: ConnHandle,
    cb: ConnHandle,
    /// TCP frames A sent, decoded, in order.
    a_out: Vec<Seen>,
    a_events: Vec<(u64, Event)>,
    drop_a_to_b: bool,
    drop_b_to_a: bool,
    /// B's application reads what arrives.
    b_reads: bool,
    a_reads: bool,
}

fn config(mac_last: u8, v6: bool, seed: u64) -> EngineConfig {
    let (ip4, ip6) = match (v6, mac_last) {
        (false, 2) => (Some(A4), None),
        (false, _) => (Some(B4), None),
        (true, 2) => (None, Some(A6)),
        (true, _) => (None, Some(B6)),
    };
    let mut c = EngineConfig::new([2, 0, 0, 0, 0, mac_last], ip4, ip6);
    c.seed = seed;
    c.ticks_per_second = 1000;
    c.tcp.delayed_ack = Duration::from_millis(5);
    c
}

impl Pair {
    fn new(v6: bool, tune_a: impl FnOnce(&mut EngineConfig)) -> Pair {
        let now = Instant::from_millis(1);
        let mut ca = config(2, v6, 7);
        tune_a(&mut ca);
        let mut a = Engine::new(ca, now).expect("engine A");
        let mut b = Engine::new(config(1, v6, 8), now).expect("engine B");
        b.listen(80);
        let remote = if v6 { IpAddr::V6(B6) } else { IpAddr::V4(B4) };
        let ca = a
            .connect(now, SocketAddr::new(remote, 80), None)
            .expect("connect");
        let mut p = Pair {
            now_ms: 1,
            a,
            b,
            ca,
            cb: ca,
            a_out: Vec::new(),
            a_events: Vec::new(),
            drop_a_to_b: false,
            drop_b_to_a: false,
            b_reads: true,
            a_reads: true,
        };
        let mut accepted = None;
        for _ in 0..50 {
            p.step();
            for (_, e) in &p.b_events() {
                if let Event::Accepted { conn, .. } = e {
                    accepted = Some(*conn);
                }
            }
            if accepted.is_some()
                && p.a_events
                    .iter()
                    .any(|e| matches!(e.1, Event::Connected(_)))
            {
                break;
            }
        }
        p.cb = accepted.expect("B accepted the connection within 50 ms");
        p.pump(20); // let the handshake's ACKs settle
        p.a_out.clear();
        p
    }

    fn b_events(&mut self) -> Vec<(u64, Event)> {
        let mut v = Vec::new();
        while let Some(e) = self.b.poll_event() {
            v.push((self.now_ms, e));
        }
        v
    }

    /// Exchange frames at the current millisecond, run due timers, then advance 1 ms.
    fn step(&mut self) {
        let now = Instant::from_millis(self.now_ms);
        for _ in 0..8 {
            let mut moved = false;
            if self.a.poll_timeout().is_some_and(|t| t <= now) {
                self.a.handle_timeout(now);
            }
            if self.b.poll_timeout().is_some_and(|t| t <= now) {
                self.b.handle_timeout(now);
            }
            let mut to_b = Vec::new();
            while let Some(t) = self.a.poll_transmit(now) {
                if let Some(s) = decode(t.frame, self.now_ms) {
                    self.a_out.push(s);
                }
                if !self.drop_a_to_b {
                    to_b.push(t.frame.to_vec());
                }
            }
            for f in to_b {
                moved = true;
                let _ = self.b.handle_frame(now, &f);
            }
            let mut to_a = Vec::new();
            while let Some(t) = self.b.poll_transmit(now) {
                if !self.drop_b_to_a {
                    to_a.push(t.frame.to_vec());
                }
            }
            for f in to_a {
                moved = true;
                let _ = self.a.handle_frame(now, &f);
            }
            while let Some(e) = self.a.poll_event() {
                self.a_events.push((self.now_ms, e));
            }
            let mut buf = [0u8; 65536];
            if self.b_reads && self.cb != self.ca {
                while self.b.recv(self.cb, &mut buf).unwrap_or(0) > 0 {
                    moved = true;
                }
            }
            if self.a_reads {
                while self.a.recv(self.ca, &mut buf).unwrap_or(0) > 0 {
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        self.now_ms += 1;
    }

    fn pump(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    fn cached(&self) -> TcpCached {
        self.a.tcb(self.ca).expect("A's connection").cached.clone()
    }

    fn update(&mut self, c: &TcpCached) {
        self.a
            .update_cached(Instant::from_millis(self.now_ms), self.ca, c)
            .expect("update accepted");
    }

    fn send_a(&mut self, data: &[u8]) {
        assert_eq!(self.a.send(self.ca, data), Ok(data.len()));
    }
}

#[test]
fn ttl_tos_and_user_priority_update_change_the_next_ipv4_segments() {
    let mut p = Pair::new(false, |_| {});
    p.send_a(b"before");
    p.pump(20); // sent and ACKed (B's delayed ACK), so Nagle holds nothing back below
    let first = p.a_out.iter().find(|s| s.payload == 6).cloned();
    let first = first.expect("A sent its 6 bytes");
    assert_eq!((first.ttl, first.tos, first.vlan_tci), (64, 0, None));

    let mut c = p.cached();
    c.ttl_or_hop_limit = 7;
    c.tos_or_traffic_class = 0x28;
    c.user_priority = 5;
    p.update(&c);
    p.a_out.clear();
    p.send_a(b"after!!");
    p.pump(20);
    let next = p.a_out.iter().find(|s| s.payload == 7).cloned();
    let next = next.expect("A sent its 7 bytes");
    assert_eq!(
        (next.ttl, next.tos, next.vlan_tci),
        (7, 0x28, Some(5 << 13)),
        "C-091 TTL/TOS and §3.16 802.1p tag (VID 0, priority 5) expected; seen {next:?}"
    );
}

#[test]
fn hop_limit_traffic_class_and_flow_label_update_change_the_next_ipv6_segments() {
    let mut p = Pair::new(true, |_| {});
    let mut c = p.cached();
    c.ttl_or_hop_limit = 3;
    c.tos_or_traffic_class = 0xb8;
    c.flow_label = 0xabcde;
    p.update(&c);
    p.send_a(b"hello");
    p.pump(2);
    let s = p.a_out.iter().find(|s| s.payload == 5).cloned();
    let s = s.expect("A sent its 5 bytes");
    assert_eq!(
        (s.ttl, s.tos, s.flow_label, s.vlan_tci),
        (3, 0xb8, 0xabcde, None),
        "C-091 hop limit / traffic class / flow label expected; seen {s:?}"
    );
}

#[test]
fn update_refuses_out_of_range_values_naming_the_field_and_changes_nothing() {
    let mut p = Pair::new(false, |_| {});
    let before = p.cached();
    for (mut c, field) in [
        (before.clone(), "TcpCached.FlowLabel"),
        (before.clone(), "TcpCached.UserPriority"),
        (before.clone(), "TcpCached.InitialRcvWnd"),
    ] {
        c.ttl_or_hop_limit = 1;
        match field {
            "TcpCached.FlowLabel" => c.flow_label = 1 << 20,
            "TcpCached.UserPriority" => c.user_priority = 8,
            _ => c.initial_rcv_wnd = (1 << 30) + 1,
        }
        let got = p.a.update_cached(Instant::from_millis(p.now_ms), p.ca, &c);
        match got {
            Err(EngineError::Update { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected Update error naming {field}, got {other:?}"),
        }
        assert_eq!(p.cached(), before, "a refused update must change nothing");
    }
}

/// Keepalive probes from A: zero-length segments with SEG.SEQ = SND.NXT − 1 (RFC 1122).
fn probes(p: &Pair) -> Vec<u64> {
    p.a_out
        .iter()
        .filter(|s| s.payload == 0 && !s.syn)
        .filter(|s| {
            let una = p.a.tcb(p.ca).map(|t| t.snd_una).unwrap_or(0);
            s.seq == una.wrapping_sub(1)
        })
        .map(|s| s.at_ms)
        .collect()
}

#[test]
fn keepalive_switched_on_by_update_probes_after_ka_timeout_and_off_stops_it() {
    let mut p = Pair::new(false, |_| {});
    p.pump(500);
    assert!(probes(&p).is_empty(), "keepalive is off at first");
    let t0 = p.now_ms;
    let mut c = p.cached();
    c.flags |= TCP_FLAG_KEEP_ALIVE_ENABLED;
    c.ka_timeout = 200;
    c.ka_interval = 50;
    c.ka_probe_count = 3;
    p.update(&c);
    p.pump(450);
    let seen = probes(&p);
    // B answers each probe, which restarts the idle timer: one probe per KaTimeout.
    assert_eq!(
        seen,
        vec![t0 + 200, t0 + 400],
        "probes at KaTimeout after the update and after each answer (C-087)"
    );
    c.flags &= !TCP_FLAG_KEEP_ALIVE_ENABLED;
    p.update(&c);
    p.a_out.clear();
    p.pump(1000);
    assert_eq!(probes(&p), Vec::<u64>::new(), "keepalive switched off");
}

#[test]
fn keepalive_restart_flag_restarts_the_timer_from_zero() {
    let mut p = Pair::new(false, |_| {});
    let t0 = p.now_ms;
    let mut c = p.cached();
    c.flags |= TCP_FLAG_KEEP_ALIVE_ENABLED;
    c.ka_timeout = 200;
    c.ka_interval = 50;
    p.update(&c);
    p.pump(150);
    c.flags |= TCP_FLAG_KEEP_ALIVE_RESTART;
    p.update(&c);
    p.pump(250);
    assert_eq!(
        probes(&p),
        vec![t0 + 350],
        "C-087: restarted at t0+150, so the first probe is 200 ms later, not at t0+200"
    );
}

#[test]
fn keepalive_probe_count_from_update_declares_a_vanished_peer_dead() {
    let mut p = Pair::new(false, |_| {});
    let t0 = p.now_ms;
    let mut c = p.cached();
    c.flags |= TCP_FLAG_KEEP_ALIVE_ENABLED;
    c.ka_timeout = 100;
    c.ka_interval = 20;
    c.ka_probe_count = 2;
    p.update(&c);
    p.drop_b_to_a = true;
    p.pump(300);
    assert_eq!(probes(&p), vec![t0 + 100, t0 + 120]);
    let dead: Vec<_> = p
        .a_events
        .iter()
        .filter(|e| matches!(e.1, Event::TimedOut(_)))
        .map(|e| e.0)
        .collect();
    assert_eq!(dead, vec![t0 + 140], "2 unanswered probes, then TimedOut");
}

#[test]
fn nagle_switched_by_update_holds_or_releases_small_segments() {
    // Nagle off at first: two small writes both go out while the first is unacknowledged.
    let mut p = Pair::new(false, |c| c.tcp.nagle = false);
    p.drop_b_to_a = true; // no ACKs come back: the first byte stays in flight
    p.send_a(b"a");
    p.pump(1);
    p.send_a(b"b");
    p.pump(1);
    let small: Vec<usize> = p.a_out.iter().map(|s| s.payload).collect();
    assert_eq!(small, vec![1, 1], "Nagle off: both 1-byte segments sent");

    // Nagle on by update: the next small write waits for the ACK...
    let mut c = p.cached();
    c.flags |= TCP_FLAG_NAGLING_ENABLED;
    p.update(&c);
    p.a_out.clear();
    p.send_a(b"c");
    p.pump(3);
    assert!(
        p.a_out.iter().all(|s| s.payload == 0),
        "Nagle on: 'c' must wait while data is unacknowledged; seen {:?}",
        p.a_out
    );
    // ... and Nagle off by update releases it at once.
    c.flags &= !TCP_FLAG_NAGLING_ENABLED;
    p.update(&c);
    p.pump(1);
    let una = p.a.tcb(p.ca).expect("conn").snd_una;
    let c_seg = p.a_out.iter().find(|s| s.payload == 1).cloned();
    let c_seg = c_seg.expect("'c' sent right after Nagle was switched off");
    assert_eq!(c_seg.seq, una.wrapping_add(2), "'c' follows 'a' and 'b'");
}

fn timed_out_at(p: &Pair) -> Option<u64> {
    p.a_events
        .iter()
        .find(|e| matches!(e.1, Event::TimedOut(_)))
        .map(|e| e.0)
}

#[test]
fn max_rt_update_limits_retransmission_time_and_restart_flag_resets_total_rt() {
    // The peer vanishes; data retransmits at RTO = 200 ms (min), then 400, 800 ms backoff.
    let run = |restart_at: Option<u64>| {
        let mut p = Pair::new(false, |_| {});
        let mut c = p.cached();
        c.max_rt = 500; // ticks = ms: give up 500 ms after the first retransmission
        p.update(&c);
        p.drop_a_to_b = true;
        let t0 = p.now_ms;
        p.send_a(&[7u8; 100]);
        for _ in 0..4000 {
            if Some(p.now_ms - t0) == restart_at {
                let mut c = p.cached();
                c.flags |= TCP_FLAG_MAX_RT_RESTART;
                p.update(&c);
            }
            p.step();
            if timed_out_at(&p).is_some() {
                break;
            }
        }
        let sends: Vec<u64> = p
            .a_out
            .iter()
            .filter(|s| s.payload == 100)
            .map(|s| s.at_ms - t0)
            .collect();
        (sends, timed_out_at(&p).map(|t| t - t0))
    };
    // First retransmission at +200 starts TotalRT; at +600 TotalRT = 400 < 500: again; at
    // +1400 TotalRT = 1200 ≥ MaxRT: TimedOut (C-090). Without MaxRT it would retransmit 15×.
    let (sends, dead) = run(None);
    assert_eq!(sends, vec![0, 200, 600], "original + 2 retransmissions");
    assert_eq!(dead, Some(1400), "TimedOut when TotalRT ≥ MaxRT");
    // MAX_RT_RESTART at +1000 resets TotalRT (C-088): +1400 sees 400 < 500 and retransmits
    // (backoff 1600 ms), +3000 sees 2000: TimedOut.
    let (sends, dead) = run(Some(1000));
    assert_eq!(sends, vec![0, 200, 600, 1400]);
    assert_eq!(dead, Some(3000));
}

/// Right edge A advertised in a segment (window scale 1 for a 64 KiB buffer).
fn right_edge(s: &Seen, wscale: u8) -> u32 {
    s.ack.wrapping_add(u32::from(s.window) << wscale)
}

#[test]
fn initial_rcv_wnd_update_advertises_the_new_window_and_never_shrinks_the_edge() {
    let mut p = Pair::new(false, |c| c.tcp.recv_buffer = 65536);
    let wscale = p.a.tcb(p.ca).expect("conn").rcv_wscale;
    assert_eq!(wscale, 1, "64 KiB buffer: window scale 1");
    // Grow: the new window goes out at once in a pure ACK (C-086).
    let mut c = p.cached();
    c.initial_rcv_wnd = 131_070;
    c.flags |= TCP_FLAG_UPDATE_RCV_WND;
    p.update(&c);
    p.step();
    let ack = p
        .a_out
        .last()
        .cloned()
        .expect("A advertised the new window");
    assert_eq!(ack.window, 65535, "131070 bytes >> 1; seen {ack:?}");

    // Shrink to 16 KiB: A must not take back what it advertised; B fills the window, A
    // reads, and the window settles at 16 KiB.
    c.initial_rcv_wnd = 16_384;
    p.update(&c);
    p.a_reads = false;
    let data = vec![0x5au8; 300_000];
    let mut sent = 0;
    for _ in 0..200 {
        sent += p.b.send(p.cb, &data[sent..]).expect("B sends");
        p.step();
    }
    p.a_reads = true;
    for _ in 0..3000 {
        sent += p.b.send(p.cb, &data[sent..]).expect("B sends");
        p.step();
    }
    assert_eq!(
        sent,
        data.len(),
        "B's 300 000 bytes all went into its buffer"
    );
    p.pump(100);
    let got = p.a.tcb(p.ca).expect("conn").rcv_nxt;
    let edges: Vec<u32> = p.a_out.iter().map(|s| right_edge(s, wscale)).collect();
    for w in edges.windows(2) {
        assert!(
            w[1].wrapping_sub(w[0]) < 1 << 31,
            "advertised right edge moved left: {} then {}",
            w[0],
            w[1]
        );
    }
    let last = p.a_out.last().cloned().expect("A ACKed");
    assert_eq!(last.ack, got);
    assert_eq!(
        u32::from(last.window) << wscale,
        16_384,
        "window settles at the updated InitialRcvWnd"
    );
    let first_edge = edges[0];
    assert!(edges.iter().all(|&e| e.wrapping_sub(first_edge) < 1 << 31));
}
