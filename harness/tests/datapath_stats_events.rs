//! Issue 4: statistics, neighbor reachability, adapter-wide status indications and the
//! send-backlog event of the offload target, each provoked through the real device with
//! the Linux peer on a TAP (ring-abi.md §17, §18, §19). Needs root.
//!
//! * STATISTICS (C-018..C-020): counts of a known transfer, exact against the kernel's own
//!   counters in the namespace (the kernel's ACKs are the device's input) and against the
//!   bytes sent; the other family stays zero; RESET zeroes; an abortive disconnect counts
//!   OutResets and ResetEstablished.
//! * NeighborReachabilityQuery (C-223..C-226): an idle connection's neighbor goes stale; the
//!   next send raises one query with the neighbor's handle, context and state; the host's
//!   answer (REACHABILITY_ANSWER) is taken; a query of the neighbor returns the live NRD.
//! * OFFLOAD_PAUSE / UPLOAD_ALL / OFFLOAD_RESUME raised by the vendor policy (§4.3, C-231,
//!   C-015) and TcpIndicateSendBacklogChange with its throttle (C-155).

mod datapath_rig;

use std::collections::HashMap;
use std::time::Duration;

use chimney_abi::data_io::{DataRequest, DataRxKind};
use chimney_abi::event::{offload_event, tcp_event};
use chimney_abi::{
    CompletionBody, EventClass, NdisStatus, OffloadParameters, ReachabilityAnswer, RequestBody,
    StatsFamily, StatsRequest, StatsResult,
};
use datapath_rig::{pattern, Capture, Rig, RigOptions, CONTEXT};

fn stats(rig: &mut Rig, family: StatsFamily, reset: bool) -> StatsResult {
    let c = rig
        .session
        .call(RequestBody::Statistics(StatsRequest { family, reset }))
        .expect("statistics");
    assert_eq!(c.status, NdisStatus::SUCCESS);
    match c.body {
        CompletionBody::Statistics(s) => {
            assert_eq!(s.family, family);
            s
        }
        other => panic!("statistics: unexpected completion {other:?}"),
    }
}

/// The kernel's IPv4 and TCP MIB counters of the namespace (/proc/net/snmp, netstat).
fn kernel_counters(rig: &Rig) -> HashMap<String, u64> {
    let read = |f: &'static str| {
        rig.bed
            .ns
            .run(move || std::fs::read_to_string(format!("/proc/thread-self/net/{f}")))
            .expect("netns")
            .expect("read counters")
    };
    let mut out = HashMap::new();
    for text in [read("snmp"), read("netstat")] {
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut n = names.split_whitespace();
            let mut v = values.split_whitespace();
            let prefix = n.next().unwrap_or("").trim_end_matches(':').to_string();
            v.next();
            for (name, value) in n.zip(v) {
                if let Ok(x) = value.parse::<u64>() {
                    out.insert(format!("{prefix}.{name}"), x);
                }
            }
        }
    }
    out
}

fn delta(a: &HashMap<String, u64>, b: &HashMap<String, u64>, k: &str) -> u64 {
    b.get(k).copied().unwrap_or(0) - a.get(k).copied().unwrap_or(0)
}

#[test]
fn statistics_count_a_known_transfer_exactly_per_family_c018_c019() {
    let mut rig = Rig::start(RigOptions::default());
    let cap = Capture::start(&rig.bed);
    // Start from zero (C-019: the set resets the family) and from the kernel's numbers now.
    stats(&mut rig, StatsFamily::Ipv4, true);
    let k0 = kernel_counters(&rig);
    let seed = 0x57a7;
    println!("seed {seed:#x}");
    const N: usize = 3 << 20;
    let data = pattern(seed, N);
    assert!(rig.send_and_peer_reads(&data, 64 << 10) == data, "data");
    // Every kernel segment of this connection is input of the device: wait until the
    // device has counted all the kernel sent (the last window update may still travel).
    let mut s = stats(&mut rig, StatsFamily::Ipv4, false);
    let mut k1 = kernel_counters(&rig);
    let started = std::time::Instant::now();
    while s.tcp.in_segments != delta(&k0, &k1, "Tcp.OutSegs")
        && started.elapsed() < Duration::from_secs(10)
    {
        rig.pump(Duration::from_millis(20));
        s = stats(&mut rig, StatsFamily::Ipv4, false);
        k1 = kernel_counters(&rig);
    }
    // Input side: exactly what the kernel sent.
    assert_eq!(
        s.tcp.in_segments,
        delta(&k0, &k1, "Tcp.OutSegs"),
        "InSegments vs kernel OutSegs"
    );
    assert_eq!(
        s.ip.in_receives,
        delta(&k0, &k1, "Ip.OutRequests"),
        "InReceives vs kernel Ip OutRequests"
    );
    assert_eq!(
        s.ip.in_octets,
        delta(&k0, &k1, "IpExt.OutOctets"),
        "InOctets (IP header + payload) vs kernel IpExt OutOctets"
    );
    assert_eq!(s.ip.in_delivers, s.ip.in_receives, "InDelivers");
    // Output side: N payload bytes exactly, each segment with a 20-byte IPv4 and a 32-byte
    // TCP header (timestamps), no retransmission on this clean link.
    assert_eq!(s.tcp.retransmitted_segments, 0, "RetransmittedSegments");
    assert_eq!(
        s.ip.out_octets - 52 * s.ip.out_requests,
        N as u64,
        "payload bytes counted in OutOctets (segments {})",
        s.ip.out_requests
    );
    assert_eq!(s.tcp.out_segments, s.ip.out_requests, "OutSegments");
    assert!(
        s.tcp.out_segments >= N.div_ceil(1448) as u64,
        "at least ceil(N / MSS) segments, saw {}",
        s.tcp.out_segments
    );
    assert_eq!(
        (s.tcp.currently_established, s.tcp.reset_established),
        (1, 0)
    );
    assert_eq!(
        (s.tcp.in_errors, s.tcp.out_resets, s.ip.in_discards),
        (0, 0, 0)
    );
    // The wire agrees: the N bytes from SND.NXT at offload, no gap, no byte twice (no
    // retransmission to explain one).
    std::thread::sleep(Duration::from_millis(100));
    let report = rig.check_sent_stream(&cap.finish(), 0, N as u64);
    assert!(
        report.clean(u64::from(s.tcp.retransmitted_segments)) && report.duplicate_bytes == 0,
        "sequence space on the TAP: {report:?}"
    );
    // C-018: the IPv6 family saw nothing.
    let v6 = stats(&mut rig, StatsFamily::Ipv6, false);
    assert_eq!(v6.ip, Default::default(), "IPv6 IP counters");
    assert_eq!(v6.tcp, Default::default(), "IPv6 TCP counters");
    // C-019: RESET returns the counters, then zeroes them (the gauge stays).
    let before = stats(&mut rig, StatsFamily::Ipv4, true);
    assert!(before.tcp.in_segments >= s.tcp.in_segments);
    let after = stats(&mut rig, StatsFamily::Ipv4, false);
    assert_eq!(
        (after.ip.in_receives, after.tcp.out_segments),
        (0, 0),
        "after reset"
    );
    assert_eq!(after.tcp.currently_established, 1);
    // An abortive disconnect from ESTABLISHED: one RST out, one ResetEstablished.
    let req = DataRequest::Disconnect {
        handle: rig.tcp(),
        request_id: 0xd15c,
        abortive: true,
    };
    rig.data.submit(&*rig.platform, &req).expect("disconnect");
    rig.until("disconnect completion", Duration::from_secs(10), |r| {
        r.records
            .iter()
            .any(|d| d.kind == DataRxKind::DisconnectComplete)
    });
    let s = stats(&mut rig, StatsFamily::Ipv4, false);
    assert_eq!(
        (
            s.tcp.out_resets,
            s.tcp.reset_established,
            s.tcp.currently_established
        ),
        (1, 1, 0),
        "OutResets, ResetEstablished, CurrentlyEstablished after the RST"
    );
}

#[test]
fn stale_neighbor_raises_one_reachability_query_and_takes_the_answer_c223_c226() {
    // NceStaleTicks 300 ms (1000 ticks/s).
    let params = OffloadParameters {
        nce_stale_ticks: 300,
        ..OffloadParameters::default()
    };
    let mut rig = Rig::start(RigOptions {
        parameters: Some(params),
        ..RigOptions::default()
    });
    let neighbor = rig.handles[2];
    let queries = |r: &Rig| {
        r.events
            .iter()
            .filter(|e| {
                e.class == EventClass::OffloadEvent
                    && e.code == offload_event::NEIGHBOR_REACHABILITY_QUERY
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    // Fresh after the offload (HRD = NRD = 0): a send now raises nothing.
    let d = pattern(1, 20_000);
    assert!(rig.send_and_peer_reads(&d, 5_000) == d);
    assert!(queries(&rig).is_empty(), "query on a fresh neighbor");
    // Idle longer than NceStaleTicks: no forward progress, host confirmed nothing.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_millis(700) {
        rig.pump(Duration::from_millis(20));
    }
    // Three sends in a row: one query (C-224), before the data goes out, and the data
    // still flows.
    let d = pattern(2, 30_000);
    assert!(rig.send_and_peer_reads(&d, 10_000) == d);
    let q = queries(&rig);
    assert_eq!(q.len(), 1, "one query for the stale neighbor: {q:?}");
    let e = &q[0];
    assert_eq!(
        (e.handle, e.host_context),
        (Some(neighbor), CONTEXT),
        "query names the neighbor by handle and context (C-028)"
    );
    // C-225: the neighbor's const, cached (HRD) and delegated (NRD) structures.
    let st = e.neighbor_state().expect("neighbor state in the query");
    assert_eq!(st.konst.vlan_id, 0);
    assert!(
        st.delegated.nic_reachability_delta >= 300 && st.cached.host_reachability_delta >= 300,
        "NRD and HRD exceed NceStaleTicks: {st:?}"
    );
    // The host's answer (C-226/C-227: HRD 0 = its NCE is stale); an unknown handle is
    // refused naming the field.
    let c = rig
        .session
        .call(RequestBody::ReachabilityAnswer(ReachabilityAnswer {
            handle: neighbor,
            host_reachability_delta: 0,
        }))
        .expect("answer");
    assert_eq!(
        (c.status, &c.body),
        (NdisStatus::SUCCESS, &CompletionBody::ReachabilityAnswer)
    );
    let c = rig
        .session
        .call(RequestBody::ReachabilityAnswer(ReachabilityAnswer {
            handle: chimney_abi::DeviceHandle(neighbor.0 ^ 0xff),
            host_reachability_delta: 0,
        }))
        .expect("answer");
    match &c.body {
        CompletionBody::Error(e) => assert_eq!(e.field, "handle", "{e:?}"),
        other => panic!("unknown neighbor accepted: {other:?}"),
    }
    // C-228: a query of the neighbor returns the live NRD: the sends were just
    // acknowledged (forward progress, C-223), so it is below NceStaleTicks now.
    let tree = chimney_abi::Tree {
        blocks: vec![chimney_abi::Block {
            state_type: chimney_abi::OffloadStateType::Neighbor,
            next: None,
            dependent: None,
            host_context: 0,
            body: chimney_abi::RefBlock::Object(neighbor),
        }],
    };
    let c = rig.session.call(RequestBody::Query(tree)).expect("query");
    let CompletionBody::Query(r) = &c.body else {
        panic!("query: {c:?}");
    };
    match r.first().and_then(|b| b.state) {
        Some(chimney_abi::QueriedState::Neighbor {
            cached: Some(cached),
            delegated: Some(delegated),
            ..
        }) => {
            assert!(
                delegated.nic_reachability_delta < 300,
                "NRD after progress: {delegated:?}"
            );
            assert_eq!(cached.host_reachability_delta, 0, "HRD the host answered");
        }
        other => panic!("neighbor query: {other:?}"),
    }
    // Active traffic keeps the neighbor fresh: no further query.
    let d = pattern(3, 20_000);
    assert!(rig.send_and_peer_reads(&d, 5_000) == d);
    assert_eq!(queries(&rig).len(), 1, "queries while traffic flows");
}

#[test]
fn policy_pause_upload_all_resume_and_throttled_backlog_change_c231_c015_c155() {
    let policy = "[adapter]\npause_after_offloads = 1\nupload_all_after_bytes = 1048576\n\
                  [backlog]\nthrottle_ms = 600000\n";
    let mut rig = Rig::start(RigOptions {
        policy: Some(policy.into()),
        ..RigOptions::default()
    });
    let status_events = |r: &Rig| {
        r.events
            .iter()
            .filter(|e| e.class == EventClass::StatusIndication)
            .map(|e| e.status)
            .collect::<Vec<_>>()
    };
    rig.until("OFFLOAD_PAUSE", Duration::from_secs(5), |r| {
        !status_events(r).is_empty()
    });
    assert_eq!(status_events(&rig), vec![NdisStatus::OFFLOAD_PAUSE]);
    // Paused: the offloaded connection keeps running (C-231) and moves 2 MiB.
    let d = pattern(0xa11, 2 << 20);
    assert!(
        rig.send_and_peer_reads(&d, 64 << 10) == d,
        "data while paused"
    );
    rig.until("UPLOAD_ALL", Duration::from_secs(5), |r| {
        status_events(r).len() >= 2
    });
    assert_eq!(
        status_events(&rig),
        vec![NdisStatus::OFFLOAD_PAUSE, NdisStatus::UPLOAD_ALL]
    );
    for e in rig
        .events
        .iter()
        .filter(|e| e.class == EventClass::StatusIndication)
    {
        assert_eq!((e.handle, e.host_context), (None, 0), "adapter-wide: {e:?}");
    }
    // C-155 with a 10-minute throttle: exactly one backlog event, a multiple of 16 KiB,
    // with the connection's handle and context.
    let backlog: Vec<_> = rig
        .events
        .iter()
        .filter(|e| e.class == EventClass::TcpEvent && e.code == tcp_event::SEND_BACKLOG_CHANGE)
        .collect();
    assert_eq!(backlog.len(), 1, "throttled backlog events: {backlog:?}");
    assert_eq!(
        (backlog[0].handle, backlog[0].host_context),
        (Some(rig.tcp()), CONTEXT + 2)
    );
    assert!(backlog[0].info >= 16 << 10 && backlog[0].info % (16 << 10) == 0);
    // The host answers UPLOAD_ALL by terminating everything (C-129); then the device
    // resumes with its capabilities (C-015, C-016): after the terminate completion.
    let (_, others) = rig
        .stack
        .upload(&mut rig.session, rig.handles, &rig.export)
        .expect("terminate all");
    rig.events.extend(others);
    rig.until("OFFLOAD_RESUME", Duration::from_secs(5), |r| {
        status_events(r).len() >= 3
    });
    assert_eq!(
        status_events(&rig),
        vec![
            NdisStatus::OFFLOAD_PAUSE,
            NdisStatus::UPLOAD_ALL,
            NdisStatus::OFFLOAD_RESUME
        ]
    );
    let resume = rig
        .events
        .iter()
        .find(|e| e.status == NdisStatus::OFFLOAD_RESUME)
        .expect("resume");
    let caps = resume.resume_capabilities().expect("capabilities");
    assert_eq!(caps.support_ipv4, chimney_abi::caps::NDIS_OFFLOAD_SUPPORTED);
    assert!(caps.tcp_connection_offload_capacity > 0);
}

#[test]
fn backlog_changes_are_raised_as_the_window_grows_without_throttle_c155() {
    let policy = "[backlog]\nthrottle_ms = 0\n";
    let mut rig = Rig::start(RigOptions {
        policy: Some(policy.into()),
        ..RigOptions::default()
    });
    let d = pattern(0xb4c, 8 << 20);
    assert!(rig.send_and_peer_reads(&d, 64 << 10) == d);
    let values: Vec<u32> = rig
        .events
        .iter()
        .filter(|e| e.code == tcp_event::SEND_BACKLOG_CHANGE)
        .map(|e| e.info)
        .collect();
    assert!(
        values.len() >= 2,
        "slow start grows the window: several backlog changes expected, saw {values:?}"
    );
    // Each change is material (≥ 1/4 of the previous value): small ones are skipped.
    for w in values.windows(2) {
        assert!(
            w[0].abs_diff(w[1]) >= w[0] / 4,
            "immaterial change indicated: {values:?}"
        );
    }
}
