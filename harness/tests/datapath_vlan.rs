//! Issue 4, "802.1Q / 802.1p on offloaded traffic" (digest §3.16), with the Linux peer on
//! the TAP and a raw capture of the frames there. This kernel has no 8021q module, so the
//! peer's own traffic is untagged; what it can judge:
//! * neighbor VlanId 0, UserPriority 5: every device frame is priority-tagged (VID 0,
//!   PCP 5, CFI 0), the kernel takes them (priority tags need no VLAN device) and answers
//!   untagged, which the device accepts (VID 0 = no filtering): data both ways byte-exact;
//!   an update to priority 0 makes later frames untagged (C-152, C-178, C-091);
//! * neighbor VlanId 7: the device tags VID 7 / PCP = UserPriority, and discards the peer's
//!   untagged frames (C-178), counted as InDiscards (§3.11).
//!
//! Needs root.

mod datapath_rig;

use std::time::Duration;

use chimney_abi::data_io::DataRxKind;
use chimney_abi::{CompletionBody, NdisStatus, RequestBody, StatsFamily, StatsRequest};
use datapath_rig::{pattern, tcp_view, Capture, Rig, RigOptions};
use std::io::Write;

/// (802.1Q TCI as the kernel saw it, payload bytes) of every frame the device sent on the
/// rig's connection, in capture order.
fn device_frames(rig: &Rig, cap: &Capture) -> Vec<(Option<u16>, usize)> {
    let port = rig.export.tcp.const_.local_port;
    cap.frames()
        .iter()
        .filter(|c| c.from_device)
        .filter_map(|c| tcp_view(&c.frame).map(|t| (c.vlan_tci, t)))
        .filter(|(_, t)| t.src_port == port)
        .map(|(tci, t)| (tci, t.payload))
        .collect()
}

#[test]
fn user_priority_tags_vid0_frames_and_an_update_to_zero_untags_them_c152_c178() {
    let mut rig = Rig::start(RigOptions {
        tweak: Some(|_, t| t.cached.user_priority = 5),
        ..RigOptions::default()
    });
    let cap = Capture::start(&rig.bed);
    let seed = 0x7a9;
    println!("seed {seed:#x}");
    let out = pattern(seed, 1 << 20);
    assert!(
        rig.send_and_peer_reads(&out, 64 << 10) == out,
        "device → peer"
    );
    let inb = pattern(seed + 1, 512 << 10);
    assert!(
        rig.peer_writes(&inb) == inb,
        "peer → device (untagged, accepted)"
    );
    let mut cached = rig.tcp_state.cached;
    cached.user_priority = 0;
    assert_eq!(rig.update_tcp(cached), NdisStatus::SUCCESS);
    let more = pattern(seed + 2, 256 << 10);
    assert!(rig.send_and_peer_reads(&more, 64 << 10) == more);
    std::thread::sleep(Duration::from_millis(100));
    let frames = device_frames(&rig, &cap);
    // VID 0, PCP 5, CFI 0 until the update, untagged after it.
    let tagged: usize = frames
        .iter()
        .take_while(|(t, _)| *t == Some(5 << 13))
        .map(|(_, n)| n)
        .sum();
    let rest: Vec<_> = frames
        .iter()
        .skip_while(|(t, _)| *t == Some(5 << 13))
        .collect();
    assert!(
        rest.iter().all(|(t, _)| t.is_none()),
        "after the update to priority 0 every frame is untagged: {:?}",
        rest.iter()
            .map(|r| r.0)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(tagged, out.len(), "payload bytes tagged VID 0 PCP 5");
    assert_eq!(
        rest.iter().map(|(_, n)| *n).sum::<usize>(),
        more.len(),
        "payload bytes sent untagged"
    );
}

#[test]
fn neighbor_vlan_id_tags_frames_and_untagged_frames_are_discarded_c152_c178() {
    let mut rig = Rig::start(RigOptions {
        tweak: Some(|n, t| {
            n.konst.vlan_id = 7;
            t.cached.user_priority = 3;
        }),
        ..RigOptions::default()
    });
    let cap = Capture::start(&rig.bed);
    // The device's data goes out tagged VID 7 / PCP 3 (the kernel here cannot take VLAN
    // 7, so it is never acknowledged: only the tag is judged).
    rig.send(&pattern(0x707, 4000), 4000);
    // The peer's data comes untagged: the device must not take it.
    rig.peer.write_all(b"untagged data").expect("peer write");
    let discards = |rig: &mut Rig| {
        let c = rig
            .session
            .call(RequestBody::Statistics(StatsRequest {
                family: StatsFamily::Ipv4,
                reset: false,
            }))
            .expect("statistics");
        match c.body {
            CompletionBody::Statistics(s) => s,
            other => panic!("statistics: {other:?}"),
        }
    };
    let started = std::time::Instant::now();
    loop {
        rig.pump(Duration::from_millis(10));
        let s = discards(&mut rig);
        let frames = device_frames(&rig, &cap);
        if s.ip.in_discards > 0 && frames.iter().any(|f| f.1 > 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for a discard and a data frame: stats {s:?}, frames {frames:?}"
        );
    }
    let frames = device_frames(&rig, &cap);
    assert!(
        frames.iter().all(|(t, _)| *t == Some(3 << 13 | 7)),
        "every device frame tagged VID 7 PCP 3: {frames:?}"
    );
    let s = discards(&mut rig);
    assert_eq!(
        (s.tcp.in_segments, s.ip.in_receives),
        (0, 0),
        "no untagged frame reached the connection"
    );
    assert!(
        !rig.records
            .iter()
            .any(|r| r.kind == DataRxKind::ReceiveIndicate),
        "untagged data was delivered"
    );
}
