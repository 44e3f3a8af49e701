//! Bad input from the guest never crashes or wedges the control ring: each case gets an
//! ERROR completion naming the reason (and the field), and a following valid request on
//! the same ring succeeds (DESIGN.md rule 3; digest §7.1 item 21 decided as an ERROR
//! completion).

#[path = "control_plane/driver.rs"]
mod driver;

use chimney_abi::request::REQUEST_HEADER_LEN;
use chimney_abi::*;
use chimney_device::state_manipulation::ObjectLimits;
use driver::{error_of, Rig, MEM_SIZE, QUEUE_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

fn negotiate(id: u64) -> Request {
    Request {
        request_id: id,
        body: RequestBody::Negotiate(Negotiate {
            min_version: 1,
            max_version: 1,
        }),
    }
}

fn ready_rig(limits: ObjectLimits) -> Rig {
    let mut rig = Rig::new(limits);
    assert_eq!(rig.call(&negotiate(1)).status, NdisStatus::SUCCESS);
    let c = rig.call(&Request {
        request_id: 2,
        body: RequestBody::SetParameters(OffloadParameters::default()),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
    rig
}

fn neighbor() -> NeighborState {
    let mut mac = [0u8; 32];
    mac[..6].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
    NeighborState {
        konst: NeighborConst {
            dl_source_address: [0; 32],
            vlan_id: 0,
        },
        cached: NeighborCached {
            dl_destination_address: mac,
            host_reachability_delta: 0,
        },
        delegated: NeighborDelegated {
            nic_reachability_delta: 0,
        },
    }
}

fn path() -> PathState {
    PathState {
        konst: PathConst::V4 {
            source: "192.0.2.2".parse().unwrap(),
            destination: "192.0.2.1".parse().unwrap(),
        },
        cached: PathCached { path_mtu: 1500 },
        delegated: PathDelegated,
    }
}

fn tcp(port: u16) -> TcpState {
    TcpState {
        konst: TcpConst {
            flags: 0,
            remote_port: 80,
            local_port: port,
            snd_wind_scale: 0,
            rcv_wind_scale: 0,
            remote_mss: 1460,
            hash_value: 0,
        },
        cached: TcpCached {
            flags: 0,
            initial_rcv_wnd: 65535,
            rcv_indication_size: 0,
            ka_probe_count: 0,
            ka_timeout: 0,
            ka_interval: 0,
            max_rt: 0,
            flow_label: 0,
            ttl_or_hop_limit: 64,
            tos_or_traffic_class: 0,
            user_priority: 0,
        },
        delegated: TcpDelegated {
            state: TcpConnectionState::Established,
            flags: 0,
            rcv_nxt: 1,
            rcv_wnd: 65535,
            snd_una: 1,
            snd_nxt: 1,
            snd_max: 1,
            snd_wnd: 65535,
            max_snd_wnd: 65535,
            send_wl1: 1,
            cwnd: 14600,
            ssthresh: 65535,
            srtt: 8,
            rttvar: 4,
            ts_recent: 0,
            ts_recent_age: 0,
            ts_time: 0,
            total_rt: 0,
            dup_ack_count: 0,
            snd_wnd_probe_count: 0,
            keepalive: TcpTimer {
                count: 0,
                timeout_delta: TIMEOUT_NOT_RUNNING,
            },
            retransmit: TcpTimer {
                count: 0,
                timeout_delta: TIMEOUT_NOT_RUNNING,
            },
            send_backlog_size: 0,
            receive_backlog_size: 0,
            dwnd: 0,
        },
    }
}

/// A valid initiate of neighbor → path → one TCP; returns the handles.
fn offload(rig: &mut Rig, id: u64, port: u16) -> (DeviceHandle, DeviceHandle, DeviceHandle) {
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor()));
    let p = b.new_dependent(0, 2, ObjectState::Path(path()));
    b.new_dependent(p, 3, ObjectState::Tcp(tcp(port)));
    let c = rig.call(&Request {
        request_id: id,
        body: RequestBody::Initiate(b.build()),
    });
    assert_eq!(
        c.status,
        NdisStatus::SUCCESS,
        "valid initiate after bad input: {:?}",
        c.body
    );
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    (
        r[0].handle.unwrap(),
        r[1].handle.unwrap(),
        r[2].handle.unwrap(),
    )
}

/// The ring still works: a valid request right after the bad one succeeds.
fn still_serves(rig: &mut Rig, id: u64) {
    let c = rig.call(&negotiate(id));
    assert_eq!(
        c.status,
        NdisStatus::SUCCESS,
        "a valid request after bad input must succeed"
    );
}

fn assert_error(c: &Completion, reason: Reason, field: &str) {
    let e = error_of(c);
    assert_eq!(
        (e.reason, e.field.as_str()),
        (reason, field),
        "expected ERROR {reason:?} naming {field}, got {e:?}"
    );
}

#[test]
fn requests_before_negotiation_and_parameters_are_refused() {
    let mut rig = Rig::new(ObjectLimits::default());
    let q = TreeBuilder::new(OffloadStateType::Tcp, 0, RefBlock::Placeholder).build();
    let c = rig.call(&Request {
        request_id: 7,
        body: RequestBody::Query(q.clone()),
    });
    assert_error(&c, Reason::NotNegotiated, "header.opcode");
    assert_eq!((c.status, c.request_id), (NdisStatus::INVALID_STATE, 7));
    assert!(error_of(&c).header_valid);
    assert_eq!(rig.call(&negotiate(8)).status, NdisStatus::SUCCESS);
    let c = rig.call(&Request {
        request_id: 9,
        body: RequestBody::Query(q.clone()),
    });
    assert_error(&c, Reason::ParametersNotSet, "header.opcode");
    let c = rig.call(&Request {
        request_id: 10,
        body: RequestBody::SetParameters(OffloadParameters::default()),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
    let c = rig.call(&Request {
        request_id: 11,
        body: RequestBody::Query(q),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
}

#[test]
fn negotiation_without_common_version_reports_the_device_range() {
    let mut rig = Rig::new(ObjectLimits::default());
    let c = rig.call(&Request {
        request_id: 3,
        body: RequestBody::Negotiate(Negotiate {
            min_version: 7,
            max_version: 9,
        }),
    });
    assert_eq!(c.status, NdisStatus::NOT_SUPPORTED);
    let CompletionBody::Negotiate(n) = c.body else {
        panic!("{:?}", c.body)
    };
    assert_eq!(
        (n.version, n.device_min_version, n.device_max_version),
        (0, ABI_MIN_VERSION, ABI_VERSION)
    );
    still_serves(&mut rig, 4);
}

#[test]
fn descriptor_outside_guest_memory_gets_error_completion() {
    let mut rig = ready_rig(ObjectLimits::default());
    let head = rig
        .tx
        .add_chain(&rig.mem, &[(MEM_SIZE + 0x1000, 64, false)]);
    rig.run();
    let c = rig.take_by_head(head);
    assert_error(&c, Reason::DescriptorOutOfMemory, "chain.descriptor.addr");
    assert!(!error_of(&c).header_valid);
    assert_eq!(c.request_id, 0, "header unreadable: correlate by tx_head");
    // Straddling the end of guest memory is outside too.
    let head = rig.tx.add_chain(&rig.mem, &[(MEM_SIZE - 8, 64, false)]);
    rig.run();
    assert_error(
        &rig.take_by_head(head),
        Reason::DescriptorOutOfMemory,
        "chain.descriptor.addr",
    );
    offload(&mut rig, 20, 1);
}

#[test]
fn chains_too_short_get_error_completions() {
    let mut rig = ready_rig(ObjectLimits::default());
    // Shorter than the request header.
    let c = rig.call_raw(&[1, 0, 0, 0, 8, 0, 0, 0]);
    assert_error(&c, Reason::ChainTooShort, "chain.length");
    // Header claims more bytes than the chain holds.
    let mut bytes = negotiate(30).encode();
    bytes[4..8].copy_from_slice(&500u32.to_le_bytes());
    let c = rig.call_raw(&bytes);
    assert_error(&c, Reason::ChainTooShort, "header.length");
    assert_eq!(c.request_id, 30, "header was readable: request id echoed");
    // A zero-length chain.
    let head = rig.tx.add_chain(&rig.mem, &[(0x0100_0000, 0, false)]);
    rig.run();
    assert_error(
        &rig.take_by_head(head),
        Reason::ChainTooShort,
        "chain.length",
    );
    offload(&mut rig, 31, 1);
}

#[test]
fn writable_descriptor_in_request_gets_error_completion() {
    let mut rig = ready_rig(ObjectLimits::default());
    let bytes = negotiate(40).encode();
    let a = rig.alloc(bytes.len());
    rig.mem.write_slice(&bytes, GuestAddress(a)).unwrap();
    let head = rig.tx.add_chain(&rig.mem, &[(a, bytes.len() as u32, true)]);
    rig.run();
    assert_error(
        &rig.take_by_head(head),
        Reason::WritableDescriptor,
        "chain.descriptor.flags",
    );
    offload(&mut rig, 41, 1);
}

#[test]
fn chain_longer_than_the_maximum_gets_error_completion() {
    let mut rig = ready_rig(ObjectLimits::default());
    let max = chimney_device::control_ring::MAX_REQUEST_LEN as u32;
    let a = rig.alloc(max as usize + 4096);
    let head = rig
        .tx
        .add_chain(&rig.mem, &[(a, max, false), (a, 4096, false)]);
    rig.run();
    assert_error(
        &rig.take_by_head(head),
        Reason::ChainTooLong,
        "chain.length",
    );
    offload(&mut rig, 50, 1);
}

#[test]
fn malformed_chains_get_error_completions_and_the_ring_continues() {
    let mut rig = ready_rig(ObjectLimits::default());
    let bytes = negotiate(60).encode();
    let a = rig.alloc(bytes.len());
    rig.mem.write_slice(&bytes, GuestAddress(a)).unwrap();
    // next index beyond the queue size
    let ids = rig.tx.take_descs(1);
    rig.tx.write_desc(
        &rig.mem,
        ids[0],
        a,
        bytes.len() as u32,
        VRING_DESC_F_NEXT,
        QUEUE_SIZE + 10,
    );
    rig.tx.remember(ids[0], ids.clone());
    rig.tx.publish(&rig.mem, ids[0]);
    rig.run();
    assert_error(
        &rig.take_by_head(ids[0]),
        Reason::MalformedChain,
        "chain.descriptor.next",
    );
    // a descriptor that links to itself (loop)
    let ids = rig.tx.take_descs(1);
    rig.tx
        .write_desc(&rig.mem, ids[0], a, 4, VRING_DESC_F_NEXT, ids[0]);
    rig.tx.remember(ids[0], ids.clone());
    rig.tx.publish(&rig.mem, ids[0]);
    rig.run();
    assert_error(
        &rig.take_by_head(ids[0]),
        Reason::MalformedChain,
        "chain.descriptor.next",
    );
    offload(&mut rig, 61, 1);
}

#[test]
fn unknown_opcode_gets_error_completion_echoing_the_header() {
    let mut rig = ready_rig(ObjectLimits::default());
    let mut bytes = negotiate(70).encode();
    bytes[0..2].copy_from_slice(&0x77u16.to_le_bytes());
    let c = rig.call_raw(&bytes);
    assert_error(&c, Reason::UnknownOpcode, "header.opcode");
    assert_eq!(
        (c.request_id, c.opcode, c.status),
        (70, 0x77, NdisStatus::NOT_SUPPORTED)
    );
    offload(&mut rig, 71, 1);
}

#[test]
fn truncated_records_get_error_completions() {
    let mut rig = ready_rig(ObjectLimits::default());
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor()));
    b.new_dependent(0, 2, ObjectState::Path(path()));
    let full = Request {
        request_id: 80,
        body: RequestBody::Initiate(b.build()),
    }
    .encode();
    // Cut inside the path's state structures, fixing up the header length so only the
    // record (not the chain) is short.
    let mut cut = full[..full.len() - 6].to_vec();
    let n = cut.len() as u32;
    cut[4..8].copy_from_slice(&n.to_le_bytes());
    let c = rig.call_raw(&cut);
    let e = error_of(&c);
    assert_eq!(
        (e.reason, e.block, e.field.as_str()),
        (Reason::Truncated, Some(1), "state.length")
    );
    // Cut inside the block array.
    let mut cut = full[..REQUEST_HEADER_LEN + 8 + 40].to_vec();
    let n = cut.len() as u32;
    cut[4..8].copy_from_slice(&n.to_le_bytes());
    assert_error(&rig.call_raw(&cut), Reason::Truncated, "tree.blocks");
    assert_eq!(
        rig.ring.plane().table().counts(),
        (0, 0, 0),
        "refused requests change nothing"
    );
    offload(&mut rig, 81, 1);
}

/// A view of block `i` of an encoded tree request, for patching links.
fn block(bytes: &mut [u8], i: usize) -> view::BlockView<&mut [u8]> {
    view::BlockView::new_unchecked(&mut bytes[view::request_block_offset(i)..])
}

#[test]
fn trees_with_cycles_dangling_links_or_wrong_layer_order_get_error_completions() {
    let mut rig = ready_rig(ObjectLimits::default());
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor()));
    let p = b.new_dependent(0, 2, ObjectState::Path(path()));
    b.new_dependent(p, 3, ObjectState::Tcp(tcp(1)));
    b.new_dependent(p, 4, ObjectState::Tcp(tcp(2)));
    let good = Request {
        request_id: 90,
        body: RequestBody::Initiate(b.build()),
    }
    .encode();

    // cycle: TCP block 3's next → TCP block 2
    let mut bad = good.clone();
    block(&mut bad, 3).set_next(2);
    let c = rig.call_raw(&bad);
    let e = error_of(&c);
    assert_eq!(
        (e.reason, e.block, e.field.as_str()),
        (Reason::LinkCycle, Some(3), "next")
    );

    // dangling: path's dependent → block 99
    let mut bad = good.clone();
    block(&mut bad, 1).set_dependent(99);
    let e = error_of(&rig.call_raw(&bad)).clone();
    assert_eq!(
        (e.reason, e.block, e.field.as_str()),
        (Reason::LinkOutOfRange, Some(1), "dependent")
    );

    // wrong layer order: neighbor's dependent → a TCP block
    let mut bad = good.clone();
    block(&mut bad, 0).set_dependent(2);
    let e = error_of(&rig.call_raw(&bad)).clone();
    assert_eq!(
        (e.reason, e.block, e.field.as_str()),
        (Reason::LayerOrder, Some(0), "dependent")
    );

    // unreachable block: path's dependent → none, TCPs float
    let mut bad = good.clone();
    block(&mut bad, 1).set_dependent(tree::LINK_NONE);
    assert_eq!(
        error_of(&rig.call_raw(&bad)).reason,
        Reason::UnreachableBlock
    );

    assert_eq!(
        rig.ring.plane().table().counts(),
        (0, 0, 0),
        "refused trees offload nothing"
    );
    let c = rig.call_raw(&good);
    assert_eq!(
        c.status,
        NdisStatus::SUCCESS,
        "the untouched tree succeeds: {:?}",
        c.body
    );
}

#[test]
fn unknown_stale_and_wrong_layer_handles_get_error_completions() {
    let mut rig = ready_rig(ObjectLimits::default());
    let (n, p, t) = offload(&mut rig, 100, 1);
    let query = |h: DeviceHandle, ty| Request {
        request_id: 101,
        body: RequestBody::Query(TreeBuilder::new(ty, 0, RefBlock::Object(h)).build()),
    };
    // never issued
    let bogus = DeviceHandle::new(Layer::Tcp, 4000, 1);
    assert_error(
        &rig.call(&query(bogus, OffloadStateType::Tcp)),
        Reason::UnknownHandle,
        "handle",
    );
    assert_error(
        &rig.call(&query(DeviceHandle(0x1234), OffloadStateType::Tcp)),
        Reason::UnknownHandle,
        "handle",
    );
    // a path handle in a TCP block
    assert_error(
        &rig.call(&query(p, OffloadStateType::Tcp)),
        Reason::HandleLayerMismatch,
        "handle",
    );
    // terminate the TCP, then use its handle again
    let term = |id, h| Request {
        request_id: id,
        body: RequestBody::Terminate(
            TreeBuilder::new(
                OffloadStateType::Tcp,
                0,
                TerminateBlock::Object {
                    handle: h,
                    return_delegated: true,
                },
            )
            .build(),
        ),
    };
    assert_eq!(rig.call(&term(102, t)).status, NdisStatus::SUCCESS);
    assert_error(&rig.call(&term(103, t)), Reason::StaleHandle, "handle");
    assert_error(
        &rig.call(&query(t, OffloadStateType::Tcp)),
        Reason::StaleHandle,
        "handle",
    );
    // a new object reusing the slot gets a new generation; the old handle stays stale
    let (_, _, t2) = offload(&mut rig, 104, 2);
    assert_eq!(t2.slot(), t.slot(), "slot reused");
    assert_ne!(t2, t);
    assert_error(
        &rig.call(&query(t, OffloadStateType::Tcp)),
        Reason::StaleHandle,
        "handle",
    );
    // linker to a stale handle refuses the initiate
    let mut b = TreeBuilder::new(OffloadStateType::Ip4, 0, InitiateBlock::Linker(t));
    b.new_dependent(0, 1, ObjectState::Tcp(tcp(9)));
    // (a TCP handle in a path block: layer mismatch is found before staleness)
    assert_error(
        &rig.call(&Request {
            request_id: 105,
            body: RequestBody::Initiate(b.build()),
        }),
        Reason::HandleLayerMismatch,
        "handle",
    );
    let c = rig.call(&query(n, OffloadStateType::Neighbor));
    assert_eq!(c.status, NdisStatus::SUCCESS);
}

#[test]
fn limits_exceeded_fail_with_the_specific_entries_statuses() {
    let mut rig = ready_rig(ObjectLimits {
        neighbors: 1,
        paths: 1,
        tcp: 1,
    });
    offload(&mut rig, 110, 1);
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor()));
    let p = b.new_dependent(0, 2, ObjectState::Path(path()));
    b.new_dependent(p, 3, ObjectState::Tcp(tcp(2)));
    let c = rig.call(&Request {
        request_id: 111,
        body: RequestBody::Initiate(b.build()),
    });
    let CompletionBody::Initiate(r) = &c.body else {
        panic!()
    };
    assert_eq!(r[0].status, NdisStatus::OFFLOAD_NEIGHBOR_ENTRIES, "C-044");
    assert_eq!(c.status, NdisStatus::OFFLOAD_NEIGHBOR_ENTRIES);
    // Under the existing neighbor (linker): path limit, then TCP limit.
    let (n0, p0) = {
        let t = rig.ring.plane().table();
        let h = t.tcp_handles()[0];
        let p = t.tcp(h).unwrap().path();
        (t.path(p).unwrap().neighbor(), p)
    };
    let mut b = TreeBuilder::new(OffloadStateType::Neighbor, 0, InitiateBlock::Linker(n0));
    b.new_dependent(0, 2, ObjectState::Path(path()));
    let c = rig.call(&Request {
        request_id: 112,
        body: RequestBody::Initiate(b.build()),
    });
    let CompletionBody::Initiate(r) = &c.body else {
        panic!()
    };
    assert_eq!(
        (r[0].status, r[1].status),
        (NdisStatus::FAILURE, NdisStatus::OFFLOAD_PATH_ENTRIES)
    );
    let mut b = TreeBuilder::new(OffloadStateType::Ip4, 0, InitiateBlock::Linker(p0));
    b.new_dependent(0, 2, ObjectState::Tcp(tcp(3)));
    let c = rig.call(&Request {
        request_id: 113,
        body: RequestBody::Initiate(b.build()),
    });
    let CompletionBody::Initiate(r) = &c.body else {
        panic!()
    };
    assert_eq!(r[1].status, NdisStatus::OFFLOAD_TCP_ENTRIES);
    assert_eq!(rig.ring.plane().table().counts(), (1, 1, 1));
    still_serves(&mut rig, 114);
}

#[test]
fn completions_wait_for_rx_buffers_and_are_never_lost() {
    let mut rig = ready_rig(ObjectLimits::default());
    rig.auto_repost = false;
    // Use up every posted rx buffer with requests, then send more.
    for id in 200..330u64 {
        rig.send_bytes(&negotiate(id).encode(), 4096);
    }
    rig.run();
    let delivered = rig.inbox.len();
    assert!(
        delivered < 130,
        "only as many records as posted buffers: {delivered}"
    );
    assert!(
        rig.ring.pending_records() > 0,
        "the rest waits in the outbox"
    );
    // Small buffers are returned unused and lose nothing.
    let small = rig.alloc(64);
    let head = rig.rx.add_chain(&rig.mem, &[(small, 64, true)]);
    rig.rx_bufs.insert(head, small);
    // A buffer outside guest memory likewise.
    let head = rig.rx.add_chain(&rig.mem, &[(MEM_SIZE + 4096, 4096, true)]);
    rig.rx_bufs.insert(head, MEM_SIZE + 4096);
    rig.run();
    assert_eq!(
        rig.rx_used_empty, 2,
        "both bad rx buffers returned with length 0"
    );
    rig.auto_repost = true;
    rig.post_rx(128);
    rig.run();
    let ids: Vec<u64> = rig
        .inbox
        .iter()
        .map(|r| match r {
            RxRecord::Completion(c) => c.request_id,
            RxRecord::Event(e) => panic!("unexpected event {e:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        (200..330).collect::<Vec<_>>(),
        "every completion, in order"
    );
    assert_eq!(rig.ring.pending_records(), 0);
}

/// A record larger than one rx buffer spans several (query of many objects).
#[test]
fn large_completion_spans_several_rx_buffers() {
    let mut rig = ready_rig(ObjectLimits::default());
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor()));
    let p = b.new_dependent(0, 2, ObjectState::Path(path()));
    for i in 0..100 {
        b.new_dependent(p, 3, ObjectState::Tcp(tcp(1000 + i)));
    }
    let c = rig.call(&Request {
        request_id: 300,
        body: RequestBody::Initiate(b.build()),
    });
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    let mut q = TreeBuilder::new(
        OffloadStateType::Ip4,
        0,
        RefBlock::Object(r[1].handle.unwrap()),
    );
    for b in &r[2..] {
        q.dependent(
            0,
            OffloadStateType::Tcp,
            0,
            RefBlock::Object(b.handle.unwrap()),
        );
    }
    let used_before = rig.rx_used_empty;
    let c = rig.call(&Request {
        request_id: 301,
        body: RequestBody::Query(q.build()),
    });
    let CompletionBody::Query(r) = c.body else {
        panic!()
    };
    assert_eq!(r.len(), 101);
    assert!(r[1..].iter().all(|b| matches!(
        b.state,
        Some(QueriedState::Tcp {
            konst: Some(_),
            cached: Some(_),
            delegated: Some(_)
        })
    )));
    assert_eq!(rig.rx_used_empty, used_before);
}

/// Descriptor lengths that do not follow the record structure still reassemble: a request
/// split into 7-byte descriptors.
#[test]
fn request_split_over_many_small_descriptors_is_read_whole() {
    let mut rig = ready_rig(ObjectLimits::default());
    let bytes = negotiate(400).encode();
    let head = rig.send_bytes(&bytes, 7);
    rig.run();
    let c = rig.take_by_head(head);
    assert_eq!((c.request_id, c.status), (400, NdisStatus::SUCCESS));
    let _ = VRING_DESC_F_WRITE;
}

/// An avail index more than a queue size ahead is a driver bug virtio-queue refuses; the
/// device must return (no spinning), and serve again once the index is sane.
#[test]
fn broken_avail_index_does_not_hang_the_device() {
    let mut rig = ready_rig(ObjectLimits::default());
    let avail_idx_addr = GuestAddress(0x1000 + 2); // tx avail ring at 0x1000, idx at +2
    let sane: u16 = rig.mem.read_obj(avail_idx_addr).unwrap();
    rig.mem
        .write_obj(sane.wrapping_add(1000), avail_idx_addr)
        .unwrap();
    rig.run();
    assert_eq!(rig.ring.pending_records(), 0);
    rig.mem.write_obj(sane, avail_idx_addr).unwrap();
    still_serves(&mut rig, 500);
}

/// With EVENT_IDX the device re-arms avail_event after serving, so the driver kicks again.
#[test]
fn event_idx_notifications_are_rearmed_after_processing() {
    let mut rig = ready_rig(ObjectLimits::default());
    rig.txq.set_event_idx(true);
    rig.rxq.set_event_idx(true);
    still_serves(&mut rig, 600);
    // avail_event lives after the used ring entries: used + 4 + 8 * size.
    let avail_event: u16 = rig
        .mem
        .read_obj(GuestAddress(0x2000 + 4 + 8 * u64::from(QUEUE_SIZE)))
        .unwrap();
    let consumed: u16 = rig.mem.read_obj(GuestAddress(0x1000 + 2)).unwrap();
    assert_eq!(avail_event, consumed, "tx avail_event = next request slot");
}
