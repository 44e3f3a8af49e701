//! Issue 4, "Invalidate and update take effect on live connections": cached updates of an
//! offloaded connection change what the device puts on the wire (C-083, C-091, C-218,
//! C-087, C-086). The device applies the host's UPDATE to the running engine; the frames are
//! judged on the Linux peer's TAP (raw capture in the namespace) and by the peer's socket.
//! Needs root.

mod datapath_rig;

use std::time::Duration;

use chimney_abi::NdisStatus;
use datapath_rig::{pattern, tcp_view, Capture, Captured, Rig, RigOptions};

/// Data segments the device sent on the rig's connection, in capture order: (TTL/hop
/// limit, payload bytes).
fn device_data_segments(rig: &Rig, captured: &[Captured]) -> Vec<(u8, usize)> {
    let port = rig.export.tcp.const_.local_port;
    captured
        .iter()
        .filter(|c| c.from_device)
        .filter_map(|c| tcp_view(&c.frame))
        .filter(|t| t.src_port == port && t.payload > 0)
        .map(|t| (t.ttl, t.payload))
        .collect()
}

fn ttl_update_changes_the_frames_on_the_wire(v6: bool) {
    let mut rig = Rig::start(RigOptions {
        v6,
        ..RigOptions::default()
    });
    let cap = Capture::start(&rig.bed);
    let seed = 0x7711 + u64::from(v6);
    println!("seed {seed:#x}");
    let first = pattern(seed, 200_000);
    assert!(
        rig.send_and_peer_reads(&first, 50_000) == first,
        "first part"
    );
    let old_ttl = rig.tcp_state.cached.ttl_or_hop_limit;
    let mut cached = rig.tcp_state.cached;
    cached.ttl_or_hop_limit = 17;
    assert_eq!(rig.update_tcp(cached), NdisStatus::SUCCESS, "update status");
    let second = pattern(seed + 1, 300_000);
    assert!(
        rig.send_and_peer_reads(&second, 50_000) == second,
        "second part"
    );
    // The last frames may still be on their way into the capture.
    let want = first.len() + second.len();
    let started = std::time::Instant::now();
    while device_data_segments(&rig, &cap.frames())
        .iter()
        .map(|s| s.1)
        .sum::<usize>()
        < want
        && started.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    // No gap and no duplicate in the device's sequence space on the wire.
    let captured = cap.finish();
    let report = rig.check_sent_stream(&captured, 0, want as u64);
    assert!(report.clean(0), "sequence space on the TAP: {report:?}");
    let segs = device_data_segments(&rig, &captured);
    // C-091: before the update every data frame had the offloaded TTL, after it 17, and
    // they split exactly at the update (no loss here, so no retransmission blurs it).
    let before: usize = segs
        .iter()
        .take_while(|s| s.0 == old_ttl)
        .map(|s| s.1)
        .sum();
    let after: Vec<(u8, usize)> = segs
        .iter()
        .copied()
        .skip_while(|s| s.0 == old_ttl)
        .collect();
    assert_eq!(
        before,
        first.len(),
        "bytes sent with the old TTL {old_ttl} (v6 {v6})"
    );
    assert!(
        after.iter().all(|s| s.0 == 17),
        "after the update every frame has TTL 17, seen {:?}",
        after
            .iter()
            .map(|s| s.0)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(
        after.iter().map(|s| s.1).sum::<usize>(),
        second.len(),
        "bytes sent with TTL 17"
    );
}

#[test]
fn ttl_update_changes_ipv4_ttl_of_subsequent_frames_c091() {
    ttl_update_changes_the_frames_on_the_wire(false);
}

#[test]
fn hop_limit_update_changes_ipv6_hop_limit_of_subsequent_frames_c091() {
    ttl_update_changes_the_frames_on_the_wire(true);
}

/// Keepalive probes of the device on the capture: segments from the device without
/// payload whose sequence number is one below what it sent last (RFC 1122 probe).
fn keepalive_probes(rig: &Rig, cap: &Capture, snd_nxt: u32) -> usize {
    let port = rig.export.tcp.const_.local_port;
    cap.frames()
        .iter()
        .filter(|c| c.from_device)
        .filter_map(|c| tcp_view(&c.frame))
        .filter(|t| t.src_port == port && t.seq == snd_nxt.wrapping_sub(1))
        .count()
}

#[test]
fn keepalive_switched_on_and_off_by_update_probes_only_while_on_c218_c087() {
    let mut rig = Rig::start(RigOptions::default());
    let cap = Capture::start(&rig.bed);
    // Some data first, so SND.NXT is known: ISS + 1 + bytes.
    let d = pattern(0x4a11, 10_000);
    assert!(rig.send_and_peer_reads(&d, 10_000) == d);
    let snd_nxt = rig
        .export
        .tcp
        .delegated
        .snd_nxt
        .wrapping_add(d.len() as u32);
    // Idle with keepalive off (as offloaded): no probe.
    let idle = |rig: &mut Rig, ms: u64| {
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(ms) {
            rig.pump(Duration::from_millis(10));
        }
    };
    idle(&mut rig, 400);
    assert_eq!(
        keepalive_probes(&rig, &cap, snd_nxt),
        0,
        "probes while keepalive is off"
    );
    // On: first probe after KaTimeout (100 ticks = 100 ms), then every KaInterval (C-218);
    // KEEP_ALIVE_RESTART starts the timer from zero (C-087). The peer answers each probe,
    // so the connection stays up.
    let mut cached = rig.tcp_state.cached;
    cached.flags |= chimney_abi::TCP_FLAG_KEEP_ALIVE_ENABLED | 0x04;
    cached.ka_timeout = 100;
    cached.ka_interval = 100;
    cached.ka_probe_count = 5;
    assert_eq!(rig.update_tcp(cached), NdisStatus::SUCCESS);
    rig.until("three keepalive probes", Duration::from_secs(10), |r| {
        keepalive_probes(r, &cap, snd_nxt) >= 3
    });
    // Off again: probing stops (at most one probe already on its way).
    cached.flags &= !(chimney_abi::TCP_FLAG_KEEP_ALIVE_ENABLED | 0x04);
    assert_eq!(rig.update_tcp(cached), NdisStatus::SUCCESS);
    idle(&mut rig, 50);
    let at_off = keepalive_probes(&rig, &cap, snd_nxt);
    idle(&mut rig, 600);
    assert_eq!(
        keepalive_probes(&rig, &cap, snd_nxt),
        at_off,
        "probes after keepalive was switched off (interval 100 ms, waited 600 ms)"
    );
    // The connection still works afterwards (the probes were answered).
    let e = pattern(0x4a12, 5000);
    assert!(rig.send_and_peer_reads(&e, 5000) == e);
}

#[test]
fn initial_rcv_wnd_update_with_update_rcv_wnd_advertises_the_new_window_at_once_c086() {
    let mut rig = Rig::start(RigOptions::default());
    let cap = Capture::start(&rig.bed);
    // Some traffic from the peer first, so the device has advertised its window.
    let inb = pattern(0x3d, 64 << 10);
    assert!(rig.peer_writes(&inb) == inb);
    let scale = u32::from(rig.tcp_state.konst.rcv_wind_scale);
    let port = rig.export.tcp.const_.local_port;
    let windows = |frames: &[Captured]| -> Vec<u64> {
        frames
            .iter()
            .filter(|c| c.from_device)
            .filter_map(|c| tcp_view(&c.frame))
            .filter(|t| t.src_port == port)
            .map(|t| u64::from(t.window) << scale)
            .collect()
    };
    let before = windows(&cap.frames());
    assert!(!before.is_empty(), "no ACK of the peer's data captured");
    // Twice the largest window advertised so far, within what the scale can express.
    let max_before = before.iter().copied().max().unwrap_or(0);
    let new_wnd = (max_before * 2).min(65_535 << scale) as u32;
    println!("scale {scale}, largest window so far {max_before}, new InitialRcvWnd {new_wnd}");
    assert!(
        u64::from(new_wnd) > max_before + (1 << scale),
        "no room to grow the window"
    );
    let mut cached = rig.tcp_state.cached;
    cached.initial_rcv_wnd = new_wnd;
    cached.flags |= chimney_abi::TCP_FLAG_UPDATE_RCV_WND;
    assert_eq!(rig.update_tcp(cached), NdisStatus::SUCCESS);
    // C-086: the new window is advertised without waiting for data.
    let n = before.len();
    rig.until(
        "an ACK advertising the new window",
        Duration::from_secs(5),
        |_| {
            windows(&cap.frames())[n..]
                .iter()
                .any(|w| *w + (1 << scale) > u64::from(new_wnd))
        },
    );
    let after = windows(&cap.frames());
    assert!(
        after[n..].iter().all(|w| *w <= u64::from(new_wnd)),
        "window beyond InitialRcvWnd: {:?}",
        &after[n..]
    );
}

#[test]
fn max_rt_update_bounds_retransmission_time_then_retrieve_timeout_c090_c088() {
    let mut rig = Rig::start(RigOptions::default());
    let d = pattern(0x3a7, 20_000);
    assert!(rig.send_and_peer_reads(&d, 10_000) == d);
    // The peer vanishes: its side of the TAP goes down, so nothing the device sends
    // arrives and nothing comes back.
    let tap = chimney_harness::TestBedConfig::default().topology.tap_name;
    rig.bed
        .ns
        .ip(&["link", "set", "dev", &tap, "down"])
        .expect("link down");
    // MaxRT 300 ticks (300 ms) with MAX_RT_RESTART (C-088, C-090): retransmission of one
    // segment is bounded by time. Without it the default limit (15 retransmissions with
    // exponential backoff) takes minutes, far beyond this test's bound.
    let mut cached = rig.tcp_state.cached;
    cached.max_rt = 300;
    cached.flags |= 0x08;
    assert_eq!(rig.update_tcp(cached), NdisStatus::SUCCESS);
    rig.send(&pattern(0x3a8, 5_000), 5_000);
    let tcp = rig.tcp();
    rig.until(
        "TcpIndicateRetrieve / TimeoutExpiration",
        Duration::from_secs(15),
        |r| {
            r.events.iter().any(|e| {
                e.handle == Some(tcp)
                    && e.code == chimney_abi::event::tcp_event::RETRIEVE
                    && e.info == chimney_abi::event::upload_reason::TIMEOUT_EXPIRATION
            })
        },
    );
}
