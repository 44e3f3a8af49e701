//! Connection behaviour against the Linux kernel's TCP on a TAP in a private namespace:
//! persist (zero window), keepalive and a vanished peer, every close order, RST from the peer,
//! and the RFC 5961 blind-attack mitigations of spec digest §3.18.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use chimney_netstack::frame::{self, ChecksumMode, IpParams, Packet, L2};
use chimney_netstack::impair::ImpairConfig;
use chimney_netstack::tcp::tcb::OutSegment;
use chimney_netstack::{ConnHandle, Event, TcpConnectionState as S};
use support::*;

const PORT: u16 = 5002;

fn connect(rig: &mut Rig, v6: bool) -> ConnHandle {
    let now = rig.now();
    let c = rig
        .engine
        .connect(now, SocketAddr::new(peer_ip(v6), PORT), None)
        .expect("connect");
    rig.run_until(Duration::from_secs(10), "active open", |r| {
        r.engine.state(c) == Ok(S::Established)
    });
    rig.flush_pending(); // the handshake's final ACK
    c
}

/// Our TCP frames in a pcap: (seq, payload length, window) of each.
fn our_tcp_frames(path: &std::path::Path) -> Vec<(u32, usize, u16, bool)> {
    read_pcap(path)
        .iter()
        .filter(|f| f[6..12] == OUR_MAC)
        .filter_map(|f| match frame::parse_frame(f, true).ok()?.packet {
            Packet::Tcp { seg, .. } => Some((seg.seq, seg.payload.len(), seg.window, seg.rst)),
            _ => None,
        })
        .collect()
}

fn kernel_windows(path: &std::path::Path) -> Vec<u16> {
    read_pcap(path)
        .iter()
        .filter(|f| f[6..12] != OUR_MAC)
        .filter_map(|f| match frame::parse_frame(f, true).ok()?.packet {
            Packet::Tcp { seg, .. } => Some(seg.window),
            _ => None,
        })
        .collect()
}

#[test]
fn persist_probes_while_peer_stops_reading_then_transfer_completes() {
    let seed = seed_from_env(0x7001);
    println!("seed {seed:#x}");
    let mut rig = Rig::new(
        "persist",
        seed,
        ImpairConfig::default(),
        test_engine_config(seed),
    )
    .with_pcap("persist");
    let len = 8 << 20;
    let peer = kernel_accept(&rig, false, PORT, |s| {
        // The peer stops reading for several seconds: its window closes.
        std::thread::sleep(Duration::from_secs(3));
        kernel_sink(s)
    });
    let c = connect(&mut rig, false);
    let mut tx = Sender::new(c, seed, len);
    let mut max_probes = 0;
    rig.run_until(Duration::from_secs(60), "zero-window transfer", |r| {
        tx.feed(&mut r.engine);
        if let Ok(s) = r.engine.conn_stats(c) {
            max_probes = max_probes.max(s.persist_probes);
        }
        peer.is_finished()
    });
    let (n, sha) = peer.join().expect("peer");
    assert_eq!(
        (n, hex(&sha)),
        (len, hex(&expected_sha(seed, len))),
        "kernel got all data"
    );
    drop(rig.pcap.take());
    let path = rig.pcap_path.clone().expect("pcap");
    let kw = kernel_windows(&path);
    println!(
        "pcap {}: {} kernel TCP frames, min window {:?}",
        path.display(),
        kw.len(),
        kw.iter().min()
    );
    let zero_windows = kw.iter().filter(|w| **w == 0).count();
    let probes = our_tcp_frames(&path).iter().filter(|f| f.1 == 1).count();
    println!("zero-window ACKs from the kernel {zero_windows}, our 1-byte probes {probes}, persist timer expiries {max_probes}");
    assert!(zero_windows >= 1, "the kernel advertised a zero window");
    assert!(
        max_probes >= 3,
        "persist timer fired repeatedly over 3 s, saw {max_probes}"
    );
    assert!(
        probes >= 3,
        "window probes visible in the pcap {}: saw {probes}",
        path.display()
    );
}

#[test]
fn keepalive_probes_after_ka_timeout_and_dead_peer_reported() {
    let seed = seed_from_env(0x7002);
    println!("seed {seed:#x}");
    let mut cfg = test_engine_config(seed);
    // KaTimeout 1 s, KaInterval 200 ms, KaProbeCount 3 (C-014 ticks at 1000/s).
    cfg.tcp.keepalive = Some((Duration::from_secs(1), Duration::from_millis(200), 3));
    let mut rig = Rig::new("keepal", seed, ImpairConfig::default(), cfg).with_pcap("keepalive");
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let peer = kernel_accept(&rig, true, PORT, move |s| {
        let _ = stop_rx.recv();
        drop(s);
    });
    let c = connect(&mut rig, true);
    // Idle for 2.5 s: probes start after 1 s, the kernel answers each.
    let t0 = std::time::Instant::now();
    rig.run_until(Duration::from_secs(5), "idle", |_| {
        t0.elapsed() >= Duration::from_millis(2500)
    });
    let st = rig.engine.conn_stats(c).expect("conn");
    assert_eq!(
        rig.engine.state(c),
        Ok(S::Established),
        "answered keepalives keep it up"
    );
    // Each answered probe resets the count: about one probe per KaTimeout of idleness.
    assert!(
        st.keepalive_probes >= 1,
        "keepalive probes after KaTimeout idle, each answered: saw {}",
        st.keepalive_probes
    );
    let una = rig.engine.tcb(c).expect("tcb").snd_una;
    // Now the peer vanishes.
    rig.blackhole = true;
    let t1 = std::time::Instant::now();
    rig.run_until(Duration::from_secs(10), "dead peer detection", |r| {
        r.saw(|e| matches!(e, Event::TimedOut(h) if *h == c))
    });
    let took = t1.elapsed();
    let st2 = rig.engine.conn_stats(c).expect("conn");
    println!("dead after {took:?}, probes {}", st2.keepalive_probes);
    assert_eq!(
        st2.keepalive_probes - st.keepalive_probes,
        3,
        "KaProbeCount probes unanswered before the peer is declared dead"
    );
    assert_eq!(rig.engine.state(c), Ok(S::Closed));
    stop_tx.send(()).ok();
    peer.join().expect("peer");
    drop(rig.pcap.take());
    let path = rig.pcap_path.clone().expect("pcap");
    let probes = our_tcp_frames(&path)
        .iter()
        .filter(|f| f.1 == 0 && f.0 == una.wrapping_sub(1))
        .count();
    assert!(
        probes >= 2,
        "keepalive probes (SEG.SEQ = SND.UNA − 1) visible in the pcap, saw {probes}"
    );
}

/// Pump while recording every state the connection passes through.
fn run_recording(
    rig: &mut Rig,
    c: ConnHandle,
    limit: Duration,
    what: &str,
    hist: &mut Vec<S>,
    done: impl Fn(&Rig, &[S]) -> bool,
) {
    rig.run_until(limit, what, |r| {
        if let Ok(s) = r.engine.state(c) {
            if hist.last() != Some(&s) {
                hist.push(s);
            }
        }
        done(r, hist)
    });
}

#[test]
fn peer_closes_first_close_wait_then_last_ack_to_closed() {
    let seed = seed_from_env(0x7003);
    let mut rig = Rig::new(
        "pclose",
        seed,
        ImpairConfig::default(),
        test_engine_config(seed),
    );
    let peer = kernel_accept(&rig, false, PORT, |mut s| {
        s.write_all(b"hello").expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = vec![];
        s.read_to_end(&mut rest).expect("read to EOF");
        rest
    });
    let c = connect(&mut rig, false);
    let mut hist = vec![S::Established];
    run_recording(
        &mut rig,
        c,
        Duration::from_secs(10),
        "peer FIN",
        &mut hist,
        |r, _| r.saw(|e| matches!(e, Event::PeerClosed(_))),
    );
    assert_eq!(rig.engine.state(c), Ok(S::CloseWait));
    let mut buf = [0u8; 16];
    let n = rig.engine.recv(c, &mut buf).expect("recv");
    assert_eq!(&buf[..n], b"hello");
    rig.engine.send(c, b"bye").expect("send");
    rig.engine.close(c).expect("close");
    run_recording(
        &mut rig,
        c,
        Duration::from_secs(10),
        "last ack",
        &mut hist,
        |r, _| r.saw(|e| matches!(e, Event::Closed(_))),
    );
    assert_eq!(
        hist,
        vec![S::Established, S::CloseWait, S::LastAck, S::Closed]
    );
    assert_eq!(peer.join().expect("peer"), b"bye");
}

#[test]
fn we_close_first_fin_wait_then_time_wait_then_closed() {
    let seed = seed_from_env(0x7004);
    let mut rig = Rig::new(
        "wclose",
        seed,
        ImpairConfig::default(),
        test_engine_config(seed),
    );
    let peer = kernel_accept(&rig, true, PORT, |mut s| {
        let mut got = vec![];
        s.read_to_end(&mut got).expect("read to EOF");
        std::thread::sleep(Duration::from_millis(200)); // we sit in FIN_WAIT_2 meanwhile
        drop(s);
        got
    });
    let c = connect(&mut rig, true);
    rig.engine.send(c, b"goodbye").expect("send");
    rig.engine.close(c).expect("close");
    let mut hist = vec![S::Established];
    run_recording(
        &mut rig,
        c,
        Duration::from_secs(10),
        "our close",
        &mut hist,
        |r, _| r.saw(|e| matches!(e, Event::Closed(_))),
    );
    assert_eq!(
        hist,
        vec![
            S::Established,
            S::FinWait1,
            S::FinWait2,
            S::TimeWait,
            S::Closed
        ],
        "active close path"
    );
    assert!(rig.saw(|e| matches!(e, Event::PeerClosed(_))));
    assert_eq!(peer.join().expect("peer"), b"goodbye");
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let seed = seed_from_env(0x7005);
    // 30 ms each way, so both FINs are in flight at once.
    let imp = ImpairConfig {
        delay: Duration::from_millis(30),
        ..Default::default()
    };
    let mut rig = Rig::new("simclo", seed, imp, test_engine_config(seed));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let peer = kernel_accept(&rig, false, PORT, move |mut s| {
        go_rx.recv().expect("go");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = vec![];
        s.read_to_end(&mut rest).expect("read to EOF");
        rest.len()
    });
    let c = connect(&mut rig, false);
    go_tx.send(()).expect("go");
    std::thread::sleep(Duration::from_millis(2));
    rig.engine.close(c).expect("close");
    let mut hist = vec![S::Established];
    run_recording(
        &mut rig,
        c,
        Duration::from_secs(10),
        "simultaneous close",
        &mut hist,
        |r, _| r.saw(|e| matches!(e, Event::Closed(_))),
    );
    assert_eq!(
        hist,
        vec![
            S::Established,
            S::FinWait1,
            S::Closing,
            S::TimeWait,
            S::Closed
        ],
        "FINs crossed: FIN_WAIT_1 → CLOSING → TIME_WAIT"
    );
    assert_eq!(peer.join().expect("peer"), 0);
}

#[test]
fn peer_reset_reports_abort_and_closes() {
    let seed = seed_from_env(0x7006);
    let mut rig = Rig::new(
        "prst",
        seed,
        ImpairConfig::default(),
        test_engine_config(seed),
    );
    let peer = kernel_accept(&rig, true, PORT, |s| {
        // Closing with unread data makes Linux send RST (RFC 2525 §2.17).
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
    });
    let c = connect(&mut rig, true);
    rig.engine.send(c, &[7u8; 100]).expect("send");
    rig.run_until(Duration::from_secs(10), "peer RST", |r| {
        r.saw(|e| matches!(e, Event::Reset(_)))
    });
    assert_eq!(rig.engine.state(c), Ok(S::Closed));
    peer.join().expect("peer");
}

/// Build a frame as if from the kernel peer for connection `c`.
fn forged(rig: &Rig, c: ConnHandle, seq: u32, ack: Option<u32>, syn: bool, rst: bool) -> Vec<u8> {
    let t = rig.engine.tuple(c).expect("tuple");
    let seg = OutSegment {
        seq,
        ack,
        syn,
        rst,
        window: 1000,
        ..OutSegment::default()
    };
    let mut buf = vec![0u8; 200];
    let (len, _) = frame::emit_tcp(
        &mut buf,
        &L2 {
            src: [0x02, 0, 0, 0, 0, 0x99],
            dst: OUR_MAC,
            vlan_tci: None,
        },
        (t.remote.ip(), t.remote.port()),
        (t.local.ip(), t.local.port()),
        &IpParams {
            ttl: 64,
            tos: 0,
            flow_label: 0,
            ident: 0x9000,
        },
        &seg,
        (&[], &[]),
        ChecksumMode::Full,
    );
    buf.truncate(len);
    buf
}

#[test]
fn rfc5961_in_window_rst_and_syn_get_challenge_ack_and_connection_survives() {
    let seed = seed_from_env(0x7007);
    println!("seed {seed:#x}");
    let mut rig = Rig::new(
        "r5961",
        seed,
        ImpairConfig::default(),
        test_engine_config(seed),
    )
    .with_pcap("rfc5961");
    let len = 1 << 20;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let peer = kernel_accept(&rig, false, PORT, move |s| {
        go_rx.recv().expect("go");
        let r = s.try_clone().expect("clone");
        let sink = std::thread::spawn(move || kernel_sink(r));
        kernel_source(s, 0xabc, len);
        sink.join().expect("sink")
    });
    let c = connect(&mut rig, false);
    let (rcv_nxt, snd_nxt) = {
        let t = rig.engine.tcb(c).expect("tcb");
        (t.rcv_nxt, t.snd_nxt)
    };
    let challenges = |r: &Rig| {
        r.events
            .iter()
            .filter(|e| matches!(e, Event::ChallengeAck(_)))
            .count()
    };

    // 1. RST in the window but not at RCV.NXT: challenge ACK, no abort (§3.18).
    let now = rig.now();
    let f = forged(&rig, c, rcv_nxt.wrapping_add(1000), None, false, true);
    rig.engine.handle_frame(now, &f).expect("forged RST parses");
    rig.pump(Duration::from_millis(1));
    assert_eq!(challenges(&rig), 1, "in-window RST → one challenge ACK");
    assert_eq!(
        rig.engine.state(c),
        Ok(S::Established),
        "connection survives the RST"
    );
    // A second one in the same RST-validation period gets none.
    let f = forged(&rig, c, rcv_nxt.wrapping_add(2000), None, false, true);
    rig.engine.handle_frame(rig.now(), &f).expect("parse");
    rig.pump(Duration::from_millis(1));
    assert_eq!(
        challenges(&rig),
        1,
        "one challenge ACK per RST-validation period"
    );

    // 2. RST outside the window: dropped silently.
    let f = forged(
        &rig,
        c,
        rcv_nxt.wrapping_add(0x4000_0000),
        None,
        false,
        true,
    );
    rig.engine.handle_frame(rig.now(), &f).expect("parse");
    rig.pump(Duration::from_millis(1));
    assert_eq!(challenges(&rig), 1, "out-of-window RST is ignored");

    // 3. SYN on the established connection (in window): challenge ACK, survives.
    let f = forged(&rig, c, rcv_nxt.wrapping_add(10), None, true, false);
    rig.engine.handle_frame(rig.now(), &f).expect("parse");
    rig.pump(Duration::from_millis(1));
    assert_eq!(
        challenges(&rig),
        2,
        "SYN on an established connection → challenge ACK"
    );
    assert_eq!(rig.engine.state(c), Ok(S::Established));

    // 4. ACK acknowledging data never sent: challenge ACK, dropped (RFC 5961 §5).
    let f = forged(
        &rig,
        c,
        rcv_nxt,
        Some(snd_nxt.wrapping_add(100_000)),
        false,
        false,
    );
    rig.engine.handle_frame(rig.now(), &f).expect("parse");
    rig.pump(Duration::from_millis(1));
    assert_eq!(challenges(&rig), 3, "ACK beyond SND.MAX → challenge ACK");

    // The challenge ACKs are on the wire: ACKs with SEG.SEQ = SND.NXT, SEG.ACK = RCV.NXT.
    drop(rig.pcap.take());
    let path = rig.pcap_path.clone().expect("pcap");
    let acks = our_tcp_frames(&path)
        .iter()
        .filter(|f| f.0 == snd_nxt && f.1 == 0 && !f.3)
        .count();
    assert!(
        acks >= 4,
        "handshake ACK + 3 challenge ACKs in the pcap, saw {acks}"
    );

    // And the connection still carries data both ways.
    go_tx.send(()).expect("go");
    let mut tx = Sender::new(c, seed, len);
    let mut rx = Receiver::new(c);
    rig.run_until(Duration::from_secs(30), "transfer after challenges", |r| {
        tx.feed(&mut r.engine);
        rx.drain(&mut r.engine);
        peer.is_finished() && rx.n == len
    });
    let (n, sha) = peer.join().expect("peer");
    assert_eq!((n, hex(&sha)), (len, hex(&expected_sha(seed, len))));
    assert_eq!(hex(&rx.sha()), hex(&expected_sha(0xabc, len)));
}
