//! The data path without rings: a host netstack engine opens a connection to a peer engine
//! (frames passed in memory), exports it with unacknowledged send data and buffered receive
//! data, the device's `DataPath` imports it (through the ABI structures and back, as the ring
//! carries them), data moves both ways through data requests, the device terminates it in
//! the middle of the transfer, the host imports it again and finishes. Byte-exact streams at
//! both ends. C-054, C-056..C-059, C-115, C-117, C-140, C-142, C-158, C-191.

use chimney_abi::data_io::{DataRecord, DataRequest, DataRxKind};
use chimney_abi::{DeviceHandle, NdisStatus};
use chimney_device::conversion;
use chimney_device::data_path::DataPath;
use chimney_netstack::{ConnHandle, Engine, EngineConfig, Event, Instant, TxOffload};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PORT: u16 = 5001;
const H: DeviceHandle = DeviceHandle(0x0003_0000_0000_0001);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Rig {
    now: Instant,
    host: Engine,
    peer: Engine,
    dp: DataPath,
    to_peer: Arc<Mutex<VecDeque<Vec<u8>>>>,
    records: Vec<DataRecord>,
    events: Vec<chimney_abi::Event>,
    backlog: Vec<chimney_abi::Event>,
}

impl Rig {
    fn new() -> Rig {
        let now = Instant::from_millis(1);
        let host = Engine::new(EngineConfig::new(HOST_MAC, Some(HOST_IP), None), now).unwrap();
        let mut pc = EngineConfig::new(PEER_MAC, Some(PEER_IP), None);
        pc.seed = 99;
        let mut peer = Engine::new(pc, now).unwrap();
        peer.listen(PORT);
        let to_peer = Arc::new(Mutex::new(VecDeque::new()));
        let q = to_peer.clone();
        let dp = DataPath::new(
            HOST_MAC,
            1,
            TxOffload::default(),
            Box::new(move |t| q.lock().unwrap().push_back(t.frame.to_vec())),
        );
        Rig {
            now,
            host,
            peer,
            dp,
            to_peer,
            records: Vec::new(),
            events: Vec::new(),
            backlog: Vec::new(),
        }
    }

    /// Move frames until nothing moves, 1 ms of virtual time per round.
    fn pump(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.now = self.now + std::time::Duration::from_millis(1);
            let now = self.now;
            let mut moved = false;
            while let Some(t) = self.host.poll_transmit(now) {
                let f = t.frame.to_vec();
                self.to_peer.lock().unwrap().push_back(f);
            }
            self.dp.flush(now);
            let frames: Vec<Vec<u8>> = self.to_peer.lock().unwrap().drain(..).collect();
            for f in frames {
                moved = true;
                let _ = self.peer.handle_frame(now, &f);
            }
            while let Some(t) = self.peer.poll_transmit(now) {
                moved = true;
                let f = t.frame.to_vec();
                match self.dp.classify(&f) {
                    Some(h) => self.dp.handle_frame(now, h, &f, false),
                    None => {
                        let _ = self.host.handle_frame(now, &f);
                    }
                }
            }
            if self.host.poll_timeout().is_some_and(|t| t <= now) {
                self.host.handle_timeout(now);
            }
            if self.peer.poll_timeout().is_some_and(|t| t <= now) {
                self.peer.handle_timeout(now);
            }
            self.dp.handle_timeout(now);
            self.dp.flush(now);
            if let Some(q) = self.dp.take_records(0) {
                self.records.extend(q.drain(..));
            }
            // Send-backlog changes (§4.1) come with any transfer; these tests look at the
            // other events, so they are kept apart.
            for e in self.dp.take_events() {
                if e.code == chimney_abi::event::tcp_event::SEND_BACKLOG_CHANGE {
                    self.backlog.push(e);
                } else {
                    self.events.push(e);
                }
            }
            if !moved && rounds > 1 && self.to_peer.lock().unwrap().is_empty() {
                // keep time moving for timers, but stop early when fully idle
                if self.dp.poll_timeout().is_none() {
                    break;
                }
            }
        }
    }
}

fn accept(rig: &mut Rig) -> ConnHandle {
    while let Some(e) = rig.peer.poll_event() {
        if let Event::Accepted { conn, .. } = e {
            return conn;
        }
    }
    panic!("peer accepted nothing");
}

fn drain(e: &mut Engine, c: ConnHandle, out: &mut Vec<u8>) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = e.recv(c, &mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn offload_with_unacked_send_and_buffered_receive_data_then_terminate_mid_transfer_is_byte_exact() {
    let mut rig = Rig::new();
    let hc = rig
        .host
        .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
        .unwrap();
    rig.pump(20);
    let pc = accept(&mut rig);

    let host_out = pattern(1, 3 << 20);
    let peer_out = pattern(2, 3 << 20);
    let mut host_in = Vec::new();
    let mut peer_in = Vec::new();

    // Before offload: the peer sends 100 KB the host does not read (buffered receive data),
    // the host sends 200 KB whose frames are still on the wire (unacknowledged send data).
    let mut p_sent = rig.peer.send(pc, &peer_out[..100_000]).unwrap();
    rig.pump(30);
    let mut h_sent = rig.host.send(hc, &host_out[..200_000]).unwrap();
    assert_eq!(h_sent, 200_000);
    while let Some(t) = rig.host.poll_transmit(rig.now) {
        let f = t.frame.to_vec();
        rig.to_peer.lock().unwrap().push_back(f);
    }
    let export = rig.host.export(rig.now, hc).unwrap();
    assert!(
        !export.tcp.buffered_data.is_empty(),
        "expected buffered receive data at offload"
    );
    assert!(
        export.tcp.delegated.snd_una != export.tcp.delegated.snd_max,
        "expected unacknowledged data at offload"
    );
    // Through the ABI shapes and back, as the ring carries them.
    let (n, p, t, data) = conversion::from_export(&export);
    let back = conversion::to_export(&n, &p, &t, &data);
    assert_eq!(back, export, "abi round trip changed the state");
    rig.dp.offload(H, 77, &back, rig.now).unwrap();

    // Post receive buffers; send the next 1 MB through the data path in 64 KiB requests.
    for i in 0..8 {
        rig.dp.data_request(
            rig.now,
            DataRequest::PostReceive {
                handle: H,
                request_id: 1000 + i,
                capacity: 65536,
            },
        );
    }
    let mut completed_sends = 0;
    let mut rid = 1;
    while h_sent < 1_200_000 {
        let end = (h_sent + 65536).min(1_200_000);
        rig.dp.data_request(
            rig.now,
            DataRequest::Send {
                handle: H,
                request_id: rid,
                data: host_out[h_sent..end].to_vec(),
            },
        );
        rid += 1;
        h_sent = end;
    }
    p_sent += rig.peer.send(pc, &peer_out[p_sent..1_000_000]).unwrap();
    for _ in 0..200 {
        rig.pump(1);
        drain(&mut rig.peer, pc, &mut peer_in);
        if p_sent < 1_000_000 {
            p_sent += rig.peer.send(pc, &peer_out[p_sent..1_000_000]).unwrap();
        }
        // Indications are returned right away; completed posted buffers are re-posted.
        let recs: Vec<DataRecord> = rig.records.drain(..).collect();
        for r in recs {
            match r.kind {
                DataRxKind::ReceiveIndicate => {
                    host_in.extend_from_slice(&r.data);
                    rig.dp.data_request(
                        rig.now,
                        DataRequest::ReceiveReturn {
                            handle: H,
                            indication_id: r.request_id,
                        },
                    );
                }
                DataRxKind::ReceiveComplete => {
                    assert_eq!(r.status, NdisStatus::SUCCESS);
                    host_in.extend_from_slice(&r.data);
                    rig.dp.data_request(
                        rig.now,
                        DataRequest::PostReceive {
                            handle: H,
                            request_id: r.request_id + 100,
                            capacity: 65536,
                        },
                    );
                }
                DataRxKind::SendComplete => {
                    // C-142: a send completes only once all of it is acknowledged: the peer
                    // must already hold every byte up to this request's end.
                    assert_eq!(r.status, NdisStatus::SUCCESS, "send {}", r.request_id);
                    let end = (200_000 + r.request_id as usize * 65536).min(1_200_000);
                    let unread = rig.peer.tcb(pc).map(|t| t.recv.readable()).unwrap_or(0);
                    assert!(
                        peer_in.len() + unread >= end,
                        "send {} completed before its data reached the peer: peer has {} of {}",
                        r.request_id,
                        peer_in.len() + unread,
                        end
                    );
                    completed_sends += 1;
                }
                other => panic!("unexpected record {other:?}"),
            }
        }
        if p_sent >= 1_000_000 && host_in.len() > 600_000 && peer_in.len() > 700_000 {
            break;
        }
    }
    assert!(completed_sends > 0, "no send completed while offloaded");
    // Mid-transfer: terminate. Outstanding sends complete UPLOAD_IN_PROGRESS; their data is
    // in the returned send data (C-115).
    let (ex, data) = rig
        .dp
        .terminate(rig.now, H)
        .unwrap()
        .live()
        .expect("live connection");
    for r in rig.dp.take_records(0).unwrap().drain(..) {
        match r.kind {
            DataRxKind::SendComplete | DataRxKind::ReceiveComplete => {
                if r.status == NdisStatus::SUCCESS {
                    host_in.extend_from_slice(&r.data);
                } else {
                    assert_eq!(r.status, NdisStatus::UPLOAD_IN_PROGRESS);
                }
            }
            DataRxKind::ReceiveIndicate => host_in.extend_from_slice(&r.data),
            other => panic!("unexpected record at terminate {other:?}"),
        }
    }
    assert_eq!(ex.tcp.send_data, data.send);
    assert_eq!(ex.tcp.buffered_data, data.buffered);
    let hc = rig.host.import(rig.now, &ex).unwrap();
    drain(&mut rig.host, hc, &mut host_in);
    // Finish in the host stack: the rest of both streams, then close.
    let mut h_rest = h_sent;
    for _ in 0..3000 {
        if h_rest < host_out.len() {
            h_rest += rig.host.send(hc, &host_out[h_rest..]).unwrap();
        }
        if p_sent < peer_out.len() {
            p_sent += rig.peer.send(pc, &peer_out[p_sent..]).unwrap();
        }
        rig.pump(1);
        drain(&mut rig.host, hc, &mut host_in);
        drain(&mut rig.peer, pc, &mut peer_in);
        if host_in.len() == peer_out.len() && peer_in.len() == host_out.len() {
            break;
        }
    }
    assert_eq!(peer_in.len(), host_out.len(), "peer received length");
    assert_eq!(host_in.len(), peer_out.len(), "host received length");
    assert!(
        peer_in == host_out,
        "peer stream differs from what the host sent"
    );
    assert!(
        host_in == peer_out,
        "host stream differs from what the peer sent"
    );
    assert!(
        rig.events.is_empty(),
        "no events expected, saw {:?}",
        rig.events
    );
}

#[test]
fn peer_fin_is_indicated_after_the_data_before_it_c191() {
    let mut rig = Rig::new();
    let hc = rig
        .host
        .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
        .unwrap();
    rig.pump(20);
    let pc = accept(&mut rig);
    let export = rig.host.export(rig.now, hc).unwrap();
    rig.dp.offload(H, 5, &export, rig.now).unwrap();
    let msg = pattern(3, 5000);
    rig.peer.send(pc, &msg).unwrap();
    rig.peer.close(pc).unwrap();
    rig.pump(50);
    let mut got = Vec::new();
    let mut saw_event_after = false;
    for r in &rig.records {
        assert_eq!(r.kind, DataRxKind::ReceiveIndicate);
        got.extend_from_slice(&r.data);
    }
    assert_eq!(got, msg, "indicated data");
    for e in &rig.events {
        assert_eq!(e.handle, Some(H));
        assert_eq!(e.host_context, 5);
        assert_eq!(e.code, chimney_abi::event::tcp_event::DISCONNECT);
        saw_event_after = true;
    }
    assert!(
        saw_event_after,
        "no TcpIndicateDisconnect after the peer's FIN"
    );
}

#[test]
fn peer_reset_raises_abort_and_fails_outstanding_sends_c192() {
    let mut rig = Rig::new();
    let hc = rig
        .host
        .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
        .unwrap();
    rig.pump(20);
    let pc = accept(&mut rig);
    let export = rig.host.export(rig.now, hc).unwrap();
    rig.dp.offload(H, 6, &export, rig.now).unwrap();
    // The peer stops reading: a big send cannot be acknowledged fully before the RST.
    rig.dp.data_request(
        rig.now,
        DataRequest::Send {
            handle: H,
            request_id: 9,
            data: pattern(4, 1 << 20),
        },
    );
    rig.pump(3);
    rig.peer.abort(pc).unwrap();
    rig.pump(20);
    let aborts: Vec<_> = rig
        .events
        .iter()
        .filter(|e| e.code == chimney_abi::event::tcp_event::ABORT)
        .collect();
    assert_eq!(aborts.len(), 1, "events {:?}", rig.events);
    assert_eq!(aborts[0].host_context, 6);
    let send = rig
        .records
        .iter()
        .find(|r| r.kind == DataRxKind::SendComplete && r.request_id == 9)
        .expect("send completion");
    assert_eq!(send.status, NdisStatus::REQUEST_ABORTED);
}

/// Connect, offload into the rig's data path with `policy`, return the peer's handle.
fn offloaded_with_policy(rig: &mut Rig, policy: &str) -> ConnHandle {
    let p = chimney_device::policy::FilePolicy::parse(policy).expect("policy");
    rig.dp.set_policy(Box::new(p));
    let hc = rig
        .host
        .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
        .unwrap();
    rig.pump(20);
    let pc = accept(rig);
    let export = rig.host.export(rig.now, hc).unwrap();
    rig.dp.offload(H, 42, &export, rig.now).unwrap();
    pc
}

/// The conformance rule of C-142 as a harness checks it: when a send completes, the peer
/// holds every byte of it. Returns the violations seen.
fn sends_completed_before_the_peer_had_them(rig: &mut Rig, pc: ConnHandle) -> Vec<u64> {
    let mut violations = Vec::new();
    let mut end = 0usize;
    let mut ends = std::collections::HashMap::new();
    for i in 1..=8u64 {
        end += 65536;
        ends.insert(i, end);
        rig.dp.data_request(
            rig.now,
            DataRequest::Send {
                handle: H,
                request_id: i,
                data: pattern(i, 65536),
            },
        );
    }
    let mut peer_in = Vec::new();
    for _ in 0..200 {
        // Records are checked before the peer gets to read what arrived this round.
        rig.dp.flush(rig.now);
        if let Some(q) = rig.dp.take_records(0) {
            rig.records.extend(q.drain(..));
        }
        for r in rig.records.drain(..) {
            if r.kind == DataRxKind::SendComplete && r.status == NdisStatus::SUCCESS {
                let unread = rig.peer.tcb(pc).map(|t| t.recv.readable()).unwrap_or(0);
                if peer_in.len() + unread < ends[&r.request_id] {
                    violations.push(r.request_id);
                }
            }
        }
        rig.pump(1);
        drain(&mut rig.peer, pc, &mut peer_in);
    }
    assert_eq!(peer_in.len(), end, "the data itself still arrives");
    violations
}

#[test]
fn correct_target_completes_sends_only_after_their_ack_c142() {
    let mut rig = Rig::new();
    let pc = offloaded_with_policy(&mut rig, "");
    let v = sends_completed_before_the_peer_had_them(&mut rig, pc);
    assert!(v.is_empty(), "sends completed early: {v:?}");
}

#[test]
fn deliberate_bug_send_complete_before_ack_is_caught_c142() {
    let mut rig = Rig::new();
    let pc = offloaded_with_policy(&mut rig, "[bugs]\nsend_complete_before_ack = true\n");
    let v = sends_completed_before_the_peer_had_them(&mut rig, pc);
    assert!(
        !v.is_empty(),
        "the C-142 check must catch sends completed before their ACK"
    );
}

#[test]
fn policy_retrieve_after_n_bytes_carries_handle_context_and_reason() {
    let mut rig = Rig::new();
    let pc = offloaded_with_policy(
        &mut rig,
        "[[event]]\nkind = \"retrieve\"\nreason = \"LowActivity\"\nafter_bytes = 100000\n",
    );
    rig.peer.send(pc, &pattern(9, 150_000)).unwrap();
    rig.pump(50);
    let ev: Vec<_> = rig
        .events
        .iter()
        .map(|e| (e.handle, e.host_context, e.code, e.info))
        .collect();
    assert_eq!(
        ev,
        vec![(
            Some(H),
            42,
            chimney_abi::event::tcp_event::RETRIEVE,
            chimney_abi::event::upload_reason::LOW_ACTIVITY
        )]
    );
}

#[test]
fn deliberate_bug_event_after_terminate_is_caught_c114() {
    for bug in [false, true] {
        let mut rig = Rig::new();
        let policy = if bug {
            "[bugs]\nevent_after_terminate = true\n"
        } else {
            ""
        };
        offloaded_with_policy(&mut rig, policy);
        rig.pump(5);
        rig.events.clear();
        rig.dp.terminate(rig.now, H).unwrap();
        // The conformance rule: nothing about H once its terminate completed.
        let after: Vec<_> = rig
            .dp
            .take_events()
            .filter(|e| e.handle == Some(H))
            .collect();
        assert_eq!(
            !after.is_empty(),
            bug,
            "bug {bug}: events after terminate {after:?}"
        );
    }
}

/// Send completions of two connections with the policy's seeded completion delay: each
/// connection's completions in request order (C-140), the interleaving across the two
/// decided by the seed (reproducible with it, different with another).
fn completion_order(seed: u64) -> Vec<(DeviceHandle, u64)> {
    const H2: DeviceHandle = DeviceHandle(0xC000_0001_0000_0002);
    let mut rig = Rig::new();
    let policy = format!("seed = {seed}\n[completion]\nsend_delay_ms = 1\njitter_ms = 30\n");
    rig.dp.set_policy(Box::new(
        chimney_device::policy::FilePolicy::parse(&policy).expect("policy"),
    ));
    let mut peers = Vec::new();
    for h in [H, H2] {
        let hc = rig
            .host
            .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
            .unwrap();
        rig.pump(20);
        peers.push(accept(&mut rig));
        let export = rig.host.export(rig.now, hc).unwrap();
        rig.dp.offload(h, 7, &export, rig.now).unwrap();
    }
    for i in 0..10u64 {
        for (k, h) in [H, H2].into_iter().enumerate() {
            rig.dp.data_request(
                rig.now,
                DataRequest::Send {
                    handle: h,
                    request_id: 100 * k as u64 + i,
                    data: pattern(i, 3000),
                },
            );
        }
        rig.pump(2);
    }
    for _ in 0..20 {
        rig.pump(50);
        for pc in &peers {
            let mut sink = Vec::new();
            drain(&mut rig.peer, *pc, &mut sink);
        }
    }
    rig.records
        .iter()
        .filter(|r| r.kind == DataRxKind::SendComplete)
        .map(|r| {
            assert_eq!(r.status, NdisStatus::SUCCESS, "{r:?}");
            (r.handle.unwrap(), r.request_id)
        })
        .collect()
}

#[test]
fn policy_completion_delays_reorder_across_connections_but_never_within_one_c140() {
    let a = completion_order(1);
    assert_eq!(a.len(), 20, "every send completed: {a:?}");
    for h in [a[0].0, a.iter().find(|x| x.0 != a[0].0).unwrap().0] {
        let ids: Vec<u64> = a.iter().filter(|x| x.0 == h).map(|x| x.1).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "completions of one connection out of order: {ids:?}"
        );
    }
    assert_eq!(completion_order(1), a, "same seed, same order");
    let differs = (2..12).any(|s| completion_order(s) != a);
    assert!(
        differs,
        "the seed never changed the order across connections"
    );
}

/// An Ethernet frame with an 802.1Q tag (VID `vid`, PCP 0) inserted.
fn tagged(f: &[u8], vid: u16) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&[0x81, 0x00]);
    t.extend_from_slice(&vid.to_be_bytes());
    t.extend_from_slice(&f[12..]);
    t
}

#[test]
fn neighbor_vlan_filters_received_frames_by_vid_c178() {
    let mut rig = Rig::new();
    let hc = rig
        .host
        .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
        .unwrap();
    rig.pump(20);
    let pc = accept(&mut rig);
    let mut export = rig.host.export(rig.now, hc).unwrap();
    export.neighbor.const_.vlan_id = 7;
    rig.dp.offload(H, 1, &export, rig.now).unwrap();
    // Three copies of one peer data segment: untagged, VID 8, VID 7. Only the last is
    // the connection's (§3.16: a neighbor with VlanId 7 accepts only VID 7).
    rig.peer.send(pc, b"tagged data").unwrap();
    let now = rig.now + std::time::Duration::from_millis(1);
    let seg = rig
        .peer
        .poll_transmit(now)
        .expect("peer segment")
        .frame
        .to_vec();
    for f in [seg.clone(), tagged(&seg, 8), tagged(&seg, 7)] {
        let h = rig.dp.classify(&f).expect("the switch finds the 4-tuple");
        rig.dp.handle_frame(now, h, &f, false);
    }
    rig.dp.flush(now);
    let recs: Vec<DataRecord> = rig.dp.take_records(0).unwrap().drain(..).collect();
    let got: Vec<u8> = recs.iter().flat_map(|r| r.data.clone()).collect();
    assert_eq!(got, b"tagged data", "delivered once, from the VID 7 copy");
    let (ip, tcp) = rig.dp.statistics(chimney_abi::StatsFamily::Ipv4, false);
    assert_eq!(
        (ip.in_discards, ip.in_receives, tcp.in_segments),
        (2, 1, 1),
        "two copies discarded by the VLAN filter, one received"
    );
    // And the device's own frames carry VID 7 (C-152): its data and the ACK it owes.
    rig.dp.data_request(
        now,
        DataRequest::Send {
            handle: H,
            request_id: 1,
            data: b"reply".to_vec(),
        },
    );
    rig.dp.flush(now);
    let out = rig.to_peer.lock().unwrap().drain(..).collect::<Vec<_>>();
    assert!(!out.is_empty(), "the device sent nothing");
    for f in &out {
        assert_eq!(
            &f[12..16],
            &[0x81, 0x00, 0x00, 0x07],
            "tag of a device frame"
        );
    }
}

/// C-231: after the policy's OFFLOAD_PAUSE the device still accepts an initiate that was
/// already on its way, and keeps the first connection running.
#[test]
fn initiate_after_policy_pause_is_still_accepted_c231() {
    use chimney_abi::{
        CompletionBody, EventClass, Negotiate, ObjectState, OffloadParameters, Request,
        RequestBody, RxRecord, TreeBuilder,
    };
    use chimney_device::control_ring::ControlPlane;
    use chimney_device::state_manipulation::ObjectLimits;
    let mut rig = Rig::new();
    let policy = chimney_device::policy::FilePolicy::parse("[adapter]\npause_after_offloads = 1\n")
        .expect("policy");
    let dp = Arc::new(Mutex::new(std::mem::replace(
        &mut rig.dp,
        DataPath::new(HOST_MAC, 1, TxOffload::default(), Box::new(|_| {})),
    )));
    dp.lock().unwrap().set_policy(Box::new(policy));
    let mut plane = ControlPlane::with_data_path(ObjectLimits::default(), dp.clone());
    let call =
        |plane: &mut ControlPlane, id: u64, body: RequestBody, data: &[chimney_abi::TcpData]| {
            plane.handle(
                &Request {
                    request_id: id,
                    body,
                }
                .encode_with_data(data),
                0,
            )
        };
    call(
        &mut plane,
        1,
        RequestBody::Negotiate(Negotiate {
            min_version: 1,
            max_version: 1,
        }),
        &[],
    );
    call(
        &mut plane,
        2,
        RequestBody::SetParameters(OffloadParameters::default()),
        &[],
    );
    let mut statuses = Vec::new();
    let mut adapter = Vec::new();
    for i in 0..2u64 {
        let hc = rig
            .host
            .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
            .unwrap();
        rig.pump(20);
        accept(&mut rig);
        let export = rig.host.export(rig.now, hc).unwrap();
        let (n, p, t, mut d) = conversion::from_export(&export);
        let mut n = n;
        n.konst.dl_source_address = [0; 32];
        let mut b = TreeBuilder::new_object(10 * i, ObjectState::Neighbor(n));
        let pb = b.new_dependent(0, 10 * i + 1, ObjectState::Path(p));
        let tb = b.new_dependent(pb, 10 * i + 2, ObjectState::Tcp(t));
        d.block = tb;
        for r in call(&mut plane, 10 + i, RequestBody::Initiate(b.build()), &[d]) {
            match r {
                RxRecord::Completion(c) => {
                    if let CompletionBody::Initiate(r) = c.body {
                        statuses.push(r.iter().map(|b| b.status).collect::<Vec<_>>());
                    }
                }
                RxRecord::Event(e) if e.class == EventClass::StatusIndication => {
                    adapter.push((i, e.status))
                }
                RxRecord::Event(_) => {}
            }
        }
    }
    assert_eq!(
        adapter,
        vec![(0, NdisStatus::OFFLOAD_PAUSE)],
        "one PAUSE, after the first offload"
    );
    assert_eq!(
        statuses,
        vec![vec![NdisStatus::SUCCESS; 3]; 2],
        "both initiates succeed, the second after the pause"
    );
    assert_eq!(dp.lock().unwrap().len(), 2, "both connections run");
}

/// Offload `export` (with `data` as the initiate trailer of its TCP block) through the object
/// table and the glue, as the control ring does: neighbor → path → TCP. Returns the table and
/// the block results.
fn initiate_through_glue(
    rig: &mut Rig,
    export: &chimney_netstack::ConnectionExport,
    send: Vec<u8>,
) -> (
    chimney_device::state_manipulation::ObjectTable,
    Vec<chimney_abi::BlockResult<std::convert::Infallible>>,
) {
    use chimney_abi::tree::TreeBuilder;
    use chimney_abi::ObjectState;
    let (mut n, p, t, data) = conversion::from_export(export);
    // The interface MAC, not a configured one (the device has none: C-046).
    n.konst.dl_source_address = [0; 32];
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(n));
    let path = b.new_dependent(0, 2, ObjectState::Path(p));
    let tcp = b.new_dependent(path, 3, ObjectState::Tcp(t));
    let tree = b.build();
    let trailer = vec![chimney_abi::TcpData {
        block: tcp,
        send,
        buffered: data.buffered,
    }];
    let mut table = chimney_device::state_manipulation::ObjectTable::new(Default::default());
    let mut results = table.initiate(&tree).expect("tree accepted");
    chimney_device::offload_glue::after_initiate(
        &mut table,
        &mut rig.dp,
        &tree,
        &trailer,
        &mut results,
    );
    (table, results)
}

/// A connection with bytes in flight (SndMax > SndUna) exported from the host engine.
fn export_with_data_in_flight(rig: &mut Rig) -> chimney_netstack::ConnectionExport {
    let hc = rig
        .host
        .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
        .unwrap();
    rig.pump(20);
    let _pc = accept(rig);
    rig.host.send(hc, &pattern(5, 20_000)).unwrap();
    // The frames leave the host but never reach the peer: unacknowledged.
    while rig.host.poll_transmit(rig.now).is_some() {}
    let export = rig.host.export(rig.now, hc).unwrap();
    assert_ne!(
        export.tcp.delegated.snd_una, export.tcp.delegated.snd_max,
        "expected data in flight at offload"
    );
    export
}

#[test]
fn engine_refusing_a_connection_makes_its_path_partial_success_c042() {
    let mut rig = Rig::new();
    let export = export_with_data_in_flight(&mut rig);
    // C-054: SndMax − SndUna bytes in flight but no send data → the engine refuses the TCP
    // block; the path's own state offloaded, its only dependent failed → PARTIAL_SUCCESS.
    let (table, r) = initiate_through_glue(&mut rig, &export, Vec::new());
    let seen: Vec<NdisStatus> = r.iter().map(|b| b.status).collect();
    assert_eq!(
        seen,
        vec![
            NdisStatus::SUCCESS,
            NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
            NdisStatus::FAILURE
        ],
        "neighbor, path, tcp statuses: expected left, seen right"
    );
    assert!(r[2].handle.is_none(), "refused TCP block got a handle");
    assert!(r[1].handle.is_some(), "offloaded path lost its handle");
    assert_eq!(
        table.tcp_handles().len(),
        0,
        "refused TCP object left in the table"
    );
    assert!(
        rig.dp.is_empty(),
        "refused connection left in the data path"
    );
}

#[test]
fn terminate_after_retransmit_timeout_returns_the_last_live_state_not_the_offload_state() {
    use chimney_abi::{TcpConnectionState, TerminateBlock};
    let mut rig = Rig::new();
    let hc = rig
        .host
        .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
        .unwrap();
    rig.pump(20);
    let pc = accept(&mut rig);
    let export = rig.host.export(rig.now, hc).unwrap();
    let offload_una = export.tcp.delegated.snd_una;
    let (table, r) = initiate_through_glue(&mut rig, &export, export.tcp.send_data.clone());
    let h = r[2].handle.expect("tcp offloaded");
    // 100 000 bytes go through and are acknowledged: SndUna moves on.
    let data = pattern(9, 100_000);
    rig.dp.data_request(
        rig.now,
        DataRequest::Send {
            handle: h,
            request_id: 1,
            data: data.clone(),
        },
    );
    let mut got = Vec::new();
    for _ in 0..2000 {
        rig.pump(1);
        drain(&mut rig.peer, pc, &mut got);
        if got.len() == data.len() {
            break;
        }
    }
    assert_eq!(got, data, "peer did not receive the 100 000 bytes");
    rig.pump(50);
    let live_una = export.tcp.delegated.snd_una.wrapping_add(100_000);
    // The peer vanishes: more data is retransmitted until the engine gives up.
    rig.dp.data_request(
        rig.now,
        DataRequest::Send {
            handle: h,
            request_id: 2,
            data: pattern(10, 5_000),
        },
    );
    let mut timed_out = false;
    for _ in 0..10_000 {
        rig.dp.flush(rig.now);
        rig.to_peer.lock().unwrap().clear();
        rig.events.extend(rig.dp.take_events());
        if rig.events.iter().any(|e| {
            e.code == chimney_abi::event::tcp_event::RETRIEVE
                && e.info == chimney_abi::event::upload_reason::TIMEOUT_EXPIRATION
        }) {
            timed_out = true;
            break;
        }
        let Some(t) = rig.dp.poll_timeout() else {
            break;
        };
        rig.now = rig.now.max(t);
        rig.dp.handle_timeout(rig.now);
    }
    assert!(timed_out, "no RETRIEVE(TIMEOUT_EXPIRATION) event");
    let tree = chimney_abi::tree::TreeBuilder::new(
        chimney_abi::OffloadStateType::Tcp,
        0,
        TerminateBlock::Object {
            handle: h,
            return_delegated: true,
        },
    )
    .build();
    let (states, upload) =
        chimney_device::offload_glue::before_terminate(&table, &mut rig.dp, &tree);
    let Some((_, d)) = states.iter().find(|(x, _)| *x == h) else {
        panic!("no state returned for the closed connection");
    };
    assert_eq!(d.state, TcpConnectionState::Closed);
    assert_ne!(live_una, offload_una, "test needs SndUna to move");
    assert_eq!(
        d.snd_una, live_una,
        "SndUna: expected the live value {live_una}, seen {} (offload time: {offload_una})",
        d.snd_una
    );
    let in_flight = d.snd_max.wrapping_sub(live_una);
    assert!(
        (1..=5_000).contains(&in_flight),
        "SndMax − SndUna: expected 1..=5000 unacknowledged bytes, seen {in_flight}"
    );
    // The 5 000 bytes never acknowledged come back from SndUna (ring-abi.md §16.4): the
    // send completed UPLOAD_IN_PROGRESS, so the host relies on them.
    let ev = upload
        .iter()
        .find(|e| e.code == chimney_abi::event::tcp_event::UPLOAD_DATA)
        .expect("UPLOAD_DATA event for the timed-out connection");
    let mut want = 5_000u32.to_le_bytes().to_vec();
    want.extend_from_slice(&0u32.to_le_bytes());
    want.extend_from_slice(&pattern(10, 5_000));
    assert!(
        ev.payload == want,
        "UPLOAD_DATA payload: expected 5000 send bytes of pattern 10 and no buffered data, seen {} bytes",
        ev.payload.len()
    );
}

#[test]
fn sends_beyond_the_held_send_data_cap_complete_resources_and_terminate_stays_under_64_mib() {
    use chimney_device::data_path::MAX_SEND_HELD;
    let mut rig = Rig::new();
    let _pc = offloaded_with_policy(&mut rig, "");
    rig.pump(5);
    rig.dp.take_records(0).unwrap().clear();
    // No frame reaches the peer from here on: nothing is acknowledged, everything is held.
    let chunk = 1usize << 20;
    let fits = (MAX_SEND_HELD as usize) / chunk;
    for i in 0..fits as u64 + 2 {
        // The last one is small: it would fit, but the stream already has a hole.
        let len = if i == fits as u64 + 1 { 100 } else { chunk };
        rig.dp.data_request(
            rig.now,
            DataRequest::Send {
                handle: H,
                request_id: i,
                data: pattern(i, len),
            },
        );
        rig.to_peer.lock().unwrap().clear();
    }
    let refused: Vec<(u64, NdisStatus)> = rig
        .dp
        .take_records(0)
        .unwrap()
        .drain(..)
        .filter(|r| r.kind == DataRxKind::SendComplete)
        .map(|r| (r.request_id, r.status))
        .collect();
    assert_eq!(
        refused,
        vec![
            (fits as u64, NdisStatus::RESOURCES),
            (fits as u64 + 1, NdisStatus::RESOURCES)
        ],
        "send completions before terminate: expected left, seen right"
    );
    let (_, data) = rig
        .dp
        .terminate(rig.now, H)
        .unwrap()
        .live()
        .expect("live connection");
    assert_eq!(
        data.send.len() as u64,
        MAX_SEND_HELD,
        "returned send data: expected exactly the cap"
    );
    let payload = chimney_abi::data_io::emit_upload_data(&data);
    assert!(
        payload.len() < 64 << 20,
        "UPLOAD_DATA payload {} bytes, driver limit 64 MiB",
        payload.len()
    );
}

#[test]
fn initiate_with_send_data_beyond_the_cap_fails_the_tcp_block_xmit_buffer_c044() {
    let mut rig = Rig::new();
    let hc = rig
        .host
        .connect(rig.now, SocketAddr::new(PEER_IP.into(), PORT), None)
        .unwrap();
    rig.pump(20);
    let _pc = accept(&mut rig);
    let export = rig.host.export(rig.now, hc).unwrap();
    let too_much = vec![7u8; (chimney_device::data_path::MAX_SEND_HELD + 1) as usize];
    let (_, r) = initiate_through_glue(&mut rig, &export, too_much);
    let seen: Vec<NdisStatus> = r.iter().map(|b| b.status).collect();
    assert_eq!(
        seen,
        vec![
            NdisStatus::SUCCESS,
            NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
            NdisStatus::OFFLOAD_TCP_XMIT_BUFFER
        ],
        "neighbor, path, tcp statuses: expected left, seen right"
    );
    assert!(
        rig.dp.is_empty(),
        "refused connection left in the data path"
    );
}
