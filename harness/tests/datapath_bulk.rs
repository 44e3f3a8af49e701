//! Issue 4, "Must show" 4 (first part): 1024 connections offloaded in one bulk tree (the
//! Windows logo requirement; C-035, C-039), each moving data both ways concurrently through
//! the data rings against the Linux peer, then a neighbor invalidate that stops all of them
//! at once (C-094, C-100), then terminate-all in one tree with every connection's live
//! delegated state returned (C-111, C-112); for IPv4 and for IPv6. Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant as StdInstant};

use chimney_abi::data_io::{DataRequest, DataRxKind};
use chimney_abi::{
    Block, CompletionBody, DelegatedState, NdisStatus, OffloadStateType, RequestBody,
    TerminateBlock, Tree,
};
use chimney_harness::control_session::ControlSession;
use chimney_harness::device_process::DeviceOptions;
use chimney_harness::host_stack::HostStack;
use chimney_harness::{TestBed, TestBedConfig, VmmConfig};
use chimney_miniport::data::{DataChannel, DataConfig, DataError};
use chimney_miniport::NicQueues;
use chimney_netstack::EngineConfig;
use chimney_wire::{GUEST_IPV4, GUEST_IPV6, PEER_IPV4, PEER_IPV6};

const N: usize = 1024;
const PORT: u16 = 5301;
const EACH: usize = 16 << 10;

fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn bulk_tree_of_1024_connections_moves_data_then_terminate_all_returns_every_state() {
    bulk(false);
}

#[test]
fn bulk_tree_of_1024_ipv6_connections_moves_data_then_terminate_all_returns_every_state() {
    bulk(true);
}

fn bulk(v6: bool) {
    let peer_ip: std::net::IpAddr = if v6 {
        PEER_IPV6.into()
    } else {
        PEER_IPV4.into()
    };
    let cfg = TestBedConfig {
        device: DeviceOptions {
            queue_pairs: 3,
            ..DeviceOptions::default()
        },
        vmm: VmmConfig {
            ram_bytes: 128 << 20,
            queue_pairs: 3,
            event_idx: true,
        },
        ..TestBedConfig::default()
    };
    let mut bed = TestBed::start(&cfg).expect("namespace + device + VMM");
    let platform = bed.vmm.platform().clone();
    let rx = bed.vmm.create_queue(0, 256).expect("rx 0");
    let tx = bed.vmm.create_queue(1, 256).expect("tx 1");
    let nic = NicQueues::new(&*platform, rx, tx, 2048).expect("pair 0");
    let mac = chimney_device::DeviceConfig::default().mac;
    let mut stack = HostStack::new(
        platform.clone(),
        nic,
        EngineConfig::new(mac, Some(GUEST_IPV4), Some(GUEST_IPV6)),
    )
    .expect("host stack");
    let (mut session, _) = ControlSession::ready(&mut bed.vmm, 256).expect("control");
    let drx = bed.vmm.create_queue(4, 256).expect("rx 4");
    let dtx = bed.vmm.create_queue(5, 256).expect("tx 5");
    let mut data = DataChannel::new(&*platform, drx, dtx, DataConfig::default()).expect("data");

    // The peer: accept N connections, send each its 16 KiB, then check what each received.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let peer = bed
        .ns
        .spawn("bulk-peer", move || -> std::io::Result<()> {
            let l = TcpListener::bind(SocketAddr::new(peer_ip, PORT))?;
            // SAFETY: listen(2) on the listener's own descriptor, to raise the backlog std
            // leaves at 128 (1024 SYNs arrive at once).
            unsafe { libc::listen(l.as_raw_fd(), 4096) };
            let _ = ready_tx.send(());
            let mut socks = Vec::new();
            for _ in 0..N {
                let (s, a) = l.accept()?;
                s.set_read_timeout(Some(Duration::from_secs(60)))?;
                socks.push((a.port(), s));
            }
            socks.sort_by_key(|(p, _)| *p);
            for (p, s) in &mut socks {
                s.write_all(&pattern(u64::from(*p), EACH))?;
            }
            let mut bad = Vec::new();
            for (p, s) in &mut socks {
                let mut buf = vec![0u8; EACH];
                s.read_exact(&mut buf)?;
                if buf != pattern(u64::from(*p) + 100_000, EACH) {
                    bad.push(usize::from(*p));
                }
            }
            let _ = result_tx.send(bad);
            // Keep the connections open (no FIN) until the test has terminated them.
            let _ = done_rx.recv();
            Ok(())
        })
        .expect("peer thread");
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("peer listening");
    let started = StdInstant::now();

    // N active opens from the host stack on pair 0.
    let now = stack.now();
    let conns: Vec<_> = (0..N)
        .map(|_| {
            stack
                .engine
                .connect(now, SocketAddr::new(peer_ip, PORT), None)
                .expect("connect")
        })
        .collect();
    while conns.iter().any(|c| {
        stack.engine.state(*c).ok() != Some(chimney_netstack::TcpConnectionState::Established)
    }) {
        stack.poll(Duration::from_millis(5)).expect("poll");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "connections not established"
        );
    }
    let ports: Vec<u16> = conns
        .iter()
        .map(|c| stack.engine.tuple(*c).expect("tuple").local.port())
        .collect();

    // One bulk tree: neighbor → path → 1024 TCP blocks.
    let (tcp, [path, neighbor], exports) = stack
        .offload_many(&mut session, &conns, 0x1000)
        .expect("bulk offload");
    assert_eq!(tcp.len(), N);
    println!(
        "{N} connections offloaded in one tree after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every connection: one posted receive and one send of 16 KiB, all at once.
    let mut reqs = Vec::new();
    for (i, h) in tcp.iter().enumerate() {
        reqs.push(DataRequest::PostReceive {
            handle: *h,
            request_id: (1 << 32) | i as u64,
            capacity: EACH as u32,
        });
        reqs.push(DataRequest::Send {
            handle: *h,
            request_id: i as u64,
            data: pattern(u64::from(ports[i]) + 100_000, EACH),
        });
    }
    let mut received: Vec<Vec<u8>> = vec![Vec::new(); N];
    let mut sends_done = 0;
    let mut next = reqs.into_iter().peekable();
    while sends_done < N || received.iter().any(|r| r.len() < EACH) {
        while let Some(r) = next.peek() {
            match data.submit(&*platform, r) {
                Ok(()) => {
                    next.next();
                }
                Err(DataError::NoFreeSlot(_)) => break,
                Err(e) => panic!("submit: {e}"),
            }
        }
        data.poll(&*platform).expect("data poll");
        if !data.has_records() {
            data.wait(&*platform, Duration::from_millis(10))
                .expect("wait");
            data.poll(&*platform).expect("data poll");
        }
        while let Some(r) = data.next_record() {
            match r.kind {
                DataRxKind::SendComplete => {
                    assert_eq!(r.status, NdisStatus::SUCCESS, "send {}", r.request_id);
                    assert_eq!(r.bytes as usize, EACH);
                    sends_done += 1;
                }
                DataRxKind::ReceiveComplete | DataRxKind::ReceiveIndicate => {
                    assert_eq!(r.status, NdisStatus::SUCCESS);
                    let i = tcp
                        .iter()
                        .position(|h| Some(*h) == r.handle)
                        .expect("record names an offloaded connection");
                    received[i].extend_from_slice(&r.data);
                    if r.kind == DataRxKind::ReceiveIndicate {
                        next = std::iter::once(DataRequest::ReceiveReturn {
                            handle: tcp[i],
                            indication_id: r.request_id,
                        })
                        .chain(next.collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                        .into_iter()
                        .peekable();
                    }
                }
                other => panic!("unexpected record {other:?}"),
            }
        }
        stack.poll(Duration::ZERO).expect("poll");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "bulk transfer stalled: {sends_done} sends done"
        );
    }
    for (i, r) in received.iter().enumerate() {
        assert!(
            *r == pattern(u64::from(ports[i]), EACH),
            "connection {i} (port {}) received wrong bytes",
            ports[i]
        );
    }
    let bad = result_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("peer result");
    assert!(bad.is_empty(), "peer saw wrong bytes on ports {bad:?}");

    // Invalidate the neighbor: every dependent connection stops transmitting at once
    // (C-094, C-100). Then 4 KiB more is sent on each: none of it may reach the wire, so
    // the states returned below still have SndMax where the first 16 KiB left it.
    let c = session
        .call(RequestBody::Invalidate(Tree {
            blocks: vec![Block {
                state_type: OffloadStateType::Neighbor,
                next: None,
                dependent: None,
                host_context: 0,
                body: chimney_abi::RefBlock::Object(neighbor),
            }],
        }))
        .expect("invalidate neighbor");
    assert_eq!(c.status, NdisStatus::SUCCESS, "invalidate: {c:?}");
    for (i, h) in tcp.iter().enumerate() {
        let req = DataRequest::Send {
            handle: *h,
            request_id: (2 << 32) | i as u64,
            data: vec![0xEE; 4096],
        };
        loop {
            match data.submit(&*platform, &req) {
                Ok(()) => break,
                Err(DataError::NoFreeSlot(_)) => {
                    data.poll(&*platform).expect("data poll");
                    if let Some(r) = data.next_record() {
                        panic!("a send completed while the neighbor is invalid: {r:?}");
                    }
                }
                Err(e) => panic!("submit: {e}"),
            }
        }
    }

    // Terminate everything in one tree; every TCP block returns its live state.
    let term = |h, st| Block {
        state_type: st,
        next: None,
        dependent: None,
        host_context: 0,
        body: TerminateBlock::Object {
            handle: h,
            return_delegated: true,
        },
    };
    let mut blocks = vec![
        term(neighbor, OffloadStateType::Neighbor),
        term(
            path,
            if v6 {
                OffloadStateType::Ip6
            } else {
                OffloadStateType::Ip4
            },
        ),
    ];
    blocks[0].dependent = Some(1);
    blocks[1].dependent = Some(2);
    for (i, h) in tcp.iter().enumerate() {
        let mut b = term(*h, OffloadStateType::Tcp);
        if i + 1 < N {
            b.next = Some(3 + i as u32);
        }
        blocks.push(b);
    }
    let c = session
        .call(RequestBody::Terminate(Tree { blocks }))
        .expect("terminate all");
    let CompletionBody::Terminate(results) = &c.body else {
        panic!("unexpected completion {c:?}");
    };
    assert_eq!(results.len(), N + 2);
    for (i, e) in exports.iter().enumerate() {
        let r = &results[2 + i];
        assert_eq!(r.status, NdisStatus::SUCCESS, "TCP block {i}");
        let Some(DelegatedState::Tcp(d)) = r.state else {
            panic!("TCP block {i}: no delegated state: {r:?}");
        };
        let moved = e.tcp.delegated.snd_una.wrapping_add(EACH as u32);
        assert_eq!(
            (d.state, d.snd_una, d.snd_max, d.rcv_nxt),
            (
                chimney_abi::TcpConnectionState::Established,
                moved,
                moved,
                e.tcp.delegated.rcv_nxt.wrapping_add(EACH as u32)
            ),
            "connection {i}: live state after 16 KiB each way, nothing sent after invalidate"
        );
    }
    let _ = done_tx.send(());
    peer.join().expect("peer").expect("peer I/O");
    println!(
        "{N} connections: offload, 16 KiB each way, terminate-all in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
