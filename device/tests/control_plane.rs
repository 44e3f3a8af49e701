//! Control plane over real guest memory: the main offload scenario (1 neighbor → 2 paths
//! → 1000 TCP, IPv4 and IPv6), query field by field, update (const change refused),
//! invalidate, terminate with delegated state compared, and placeholder/linker/partial
//! rules C-036..C-043. Requests are written by a test-only driver into a
//! `GuestMemoryMmap`; the device side is virtio-queue's `Queue` + `ControlRing`.

#[path = "control_plane/driver.rs"]
mod driver;

use chimney_abi::*;
use chimney_device::state_manipulation::ObjectLimits;
use driver::{error_of, seed, Rig, Rng};

const NEIGHBOR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const TCP_COUNT: usize = 1000;

fn mac32(mac: [u8; 6]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a[..6].copy_from_slice(&mac);
    a
}

fn neighbor_state(rng: &mut Rng) -> NeighborState {
    let delta = rng.u32() % 10_000;
    NeighborState {
        konst: NeighborConst {
            dl_source_address: [0; 32],
            vlan_id: 0,
        },
        cached: NeighborCached {
            dl_destination_address: mac32(NEIGHBOR_MAC),
            host_reachability_delta: delta,
        },
        delegated: NeighborDelegated {
            nic_reachability_delta: delta,
        },
    }
}

fn path_v4() -> PathState {
    PathState {
        konst: PathConst::V4 {
            source: "192.0.2.2".parse().unwrap(),
            destination: "192.0.2.1".parse().unwrap(),
        },
        cached: PathCached { path_mtu: 1500 },
        delegated: PathDelegated,
    }
}

fn path_v6() -> PathState {
    PathState {
        konst: PathConst::V6 {
            source: "2001:db8::2".parse().unwrap(),
            destination: "2001:db8::1".parse().unwrap(),
        },
        cached: PathCached { path_mtu: 1500 },
        delegated: PathDelegated,
    }
}

fn tcp_state(rng: &mut Rng, local_port: u16) -> TcpState {
    let una = rng.u32();
    TcpState {
        konst: TcpConst {
            flags: rng.u16() & 0x7,
            remote_port: 5001,
            local_port,
            snd_wind_scale: rng.u8() % 15,
            rcv_wind_scale: rng.u8() % 15,
            remote_mss: 1460,
            hash_value: rng.u32(),
        },
        cached: TcpCached {
            flags: TCP_FLAG_KEEP_ALIVE_ENABLED | TCP_FLAG_NAGLING_ENABLED,
            initial_rcv_wnd: rng.u32() % (1 << 30),
            rcv_indication_size: rng.u32() % 4096,
            ka_probe_count: 10,
            ka_timeout: 7_200_000,
            ka_interval: 1000,
            max_rt: rng.u32(),
            flow_label: rng.u32() & 0xF_FFFF,
            ttl_or_hop_limit: 64,
            tos_or_traffic_class: rng.u8(),
            user_priority: rng.u8() & 7,
        },
        delegated: TcpDelegated {
            state: TcpConnectionState::Established,
            flags: 0,
            rcv_nxt: rng.u32(),
            rcv_wnd: rng.u32() % 65536,
            snd_una: una,
            snd_nxt: una.wrapping_add(rng.u32() % 1000),
            snd_max: una.wrapping_add(1000),
            snd_wnd: rng.u32() % 65536,
            max_snd_wnd: 65535,
            send_wl1: rng.u32(),
            cwnd: rng.u32() % 100_000,
            ssthresh: rng.u32(),
            srtt: rng.u16(),
            rttvar: rng.u16(),
            ts_recent: rng.u32(),
            ts_recent_age: rng.u32() % 1000,
            ts_time: rng.u32(),
            total_rt: rng.u32() % 100,
            dup_ack_count: rng.u8() % 3,
            snd_wnd_probe_count: 0,
            keepalive: TcpTimer {
                count: 0,
                timeout_delta: rng.u32() % 7_200_000,
            },
            retransmit: TcpTimer {
                count: 0,
                timeout_delta: TIMEOUT_NOT_RUNNING,
            },
            send_backlog_size: 0,
            receive_backlog_size: 0,
            dwnd: rng.u32(),
        },
    }
}

fn negotiated_rig(limits: ObjectLimits) -> Rig {
    let mut rig = Rig::new(limits);
    let c = rig.call(&Request {
        request_id: 1,
        body: RequestBody::Negotiate(Negotiate {
            min_version: 1,
            max_version: 5,
        }),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
    let CompletionBody::Negotiate(n) = c.body else {
        panic!("expected a NEGOTIATE completion, got {:?}", c.body)
    };
    assert_eq!(n.version, ABI_VERSION, "highest common version");
    assert_eq!(
        n.capabilities.tcp_connection_offload_capacity, limits.tcp,
        "C-009"
    );
    assert_ne!(
        n.capabilities.encapsulation & caps::NDIS_ENCAPSULATION_IEEE_802_3,
        0,
        "C-007"
    );
    assert_eq!(
        (n.max_neighbors, n.max_paths, n.max_tcp),
        (limits.neighbors, limits.paths, limits.tcp)
    );
    let c = rig.call(&Request {
        request_id: 2,
        body: RequestBody::SetParameters(OffloadParameters::default()),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS, "C-011 parameters set");
    rig
}

struct Offloaded {
    neighbor: NeighborState,
    paths: [PathState; 2],
    tcp: Vec<TcpState>,
    neighbor_h: DeviceHandle,
    path_h: [DeviceHandle; 2],
    tcp_h: Vec<DeviceHandle>,
    /// Index i of `tcp` sits under path `tcp_path[i]`.
    tcp_path: Vec<usize>,
}

/// Offload 1 neighbor → {IPv4 path, IPv6 path} → 1000 TCP (500 each) in one bulk tree.
fn offload_main_tree(rig: &mut Rig, rng: &mut Rng) -> Offloaded {
    let neighbor = neighbor_state(rng);
    let paths = [path_v4(), path_v6()];
    let mut b = TreeBuilder::new_object(0x100, ObjectState::Neighbor(neighbor));
    let p = [
        b.new_dependent(0, 0x200, ObjectState::Path(paths[0])),
        b.new_dependent(0, 0x201, ObjectState::Path(paths[1])),
    ];
    let mut tcp = Vec::new();
    let mut tcp_block = Vec::new();
    let mut tcp_path = Vec::new();
    for i in 0..TCP_COUNT {
        let which = i % 2;
        let t = tcp_state(rng, 40000 + i as u16);
        tcp_block.push(b.new_dependent(p[which], 0x1_0000 + i as u64, ObjectState::Tcp(t)));
        tcp.push(t);
        tcp_path.push(which);
    }
    let tree = b.build();
    let c = rig.call(&Request {
        request_id: 10,
        body: RequestBody::Initiate(tree),
    });
    assert_eq!(
        c.status,
        NdisStatus::SUCCESS,
        "root status = overall status"
    );
    let CompletionBody::Initiate(r) = c.body else {
        panic!("expected INITIATE completion, got {:?}", c.body)
    };
    assert_eq!(r.len(), TCP_COUNT + 3, "one result per block (C-041)");
    for (i, b) in r.iter().enumerate() {
        assert_eq!(b.status, NdisStatus::SUCCESS, "block {i}");
        assert!(
            b.handle.is_some(),
            "block {i}: new offload gets a handle (C-040)"
        );
    }
    let h = |i: u32| r[i as usize].handle.unwrap();
    Offloaded {
        neighbor,
        paths,
        neighbor_h: h(0),
        path_h: [h(p[0]), h(p[1])],
        tcp_h: tcp_block.iter().map(|i| h(*i)).collect(),
        tcp,
        tcp_path,
    }
}

/// Reference tree neighbor → paths → TCPs over the offloaded objects, for query.
fn query_all(o: &Offloaded, ty: [OffloadStateType; 3]) -> Tree<RefBlock> {
    let mut b = TreeBuilder::new(ty[0], 0, RefBlock::Object(o.neighbor_h));
    let p = [
        b.dependent(0, OffloadStateType::Ip4, 0, RefBlock::Object(o.path_h[0])),
        b.dependent(0, OffloadStateType::Ip6, 0, RefBlock::Object(o.path_h[1])),
    ];
    for (i, h) in o.tcp_h.iter().enumerate() {
        b.dependent(p[o.tcp_path[i]], ty[2], 0, RefBlock::Object(*h));
    }
    b.build()
}

fn expected_query_tcp(t: &TcpState) -> TcpState {
    let mut e = *t;
    e.delegated.send_backlog_size = BACKLOG_UNSUPPORTED; // C-079
    e.delegated.receive_backlog_size = BACKLOG_UNSUPPORTED;
    e
}

fn query_results(rig: &mut Rig, id: u64, tree: Tree<RefBlock>) -> Vec<BlockResult<QueriedState>> {
    let c = rig.call(&Request {
        request_id: id,
        body: RequestBody::Query(tree),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
    match c.body {
        CompletionBody::Query(r) => r,
        other => panic!("expected QUERY completion, got {other:?}"),
    }
}

/// Walk the query answer in block order: neighbor, path v4, path v6, then TCPs in the
/// builder's order (the block array order is the driver's, results are per block).
fn check_full_query(rig: &mut Rig, o: &Offloaded, id: u64) {
    let tree = query_all(
        o,
        [
            OffloadStateType::Neighbor,
            OffloadStateType::Ip4,
            OffloadStateType::Tcp,
        ],
    );
    let r = query_results(rig, id, tree);
    assert_eq!(r.len(), TCP_COUNT + 3);
    let n = o.neighbor;
    assert_eq!(
        r[0].state,
        Some(QueriedState::Neighbor {
            konst: Some(n.konst),
            cached: Some(n.cached),
            delegated: Some(n.delegated)
        }),
        "neighbor: every variable (C-076)"
    );
    for (k, p) in o.paths.iter().enumerate() {
        assert_eq!(
            r[1 + k].state,
            Some(QueriedState::Path {
                konst: Some(p.konst),
                cached: Some(p.cached),
                delegated: Some(p.delegated)
            }),
            "path {k}"
        );
    }
    for (i, t) in o.tcp.iter().enumerate() {
        let e = expected_query_tcp(t);
        let Some(QueriedState::Tcp {
            konst,
            cached,
            delegated,
        }) = r[3 + i].state
        else {
            panic!("TCP {i}: expected TCP state, got {:?}", r[3 + i].state)
        };
        assert_eq!(r[3 + i].status, NdisStatus::SUCCESS, "C-077");
        assert_eq!(konst, Some(e.konst), "TCP {i} const");
        assert_eq!(cached, Some(e.cached), "TCP {i} cached");
        assert_eq!(delegated, Some(e.delegated), "TCP {i} delegated");
    }
}

#[test]
fn bulk_offload_query_update_invalidate_terminate_1000_tcp_ipv4_and_ipv6() {
    let mut rng = Rng(seed("bulk_offload"));
    let mut rig = negotiated_rig(ObjectLimits::default());
    let mut o = offload_main_tree(&mut rig, &mut rng);
    assert_eq!(rig.ring.plane().table().counts(), (1, 2, TCP_COUNT));

    // --- query, every layer and class, field by field (C-076, C-079)
    check_full_query(&mut rig, &o, 20);
    // Class-selective queries: Type names the structures returned (§2.11).
    for (id, ty) in [
        (21, OffloadStateType::TcpConst),
        (22, OffloadStateType::TcpCached),
        (23, OffloadStateType::TcpDelegated),
    ] {
        let r = query_results(
            &mut rig,
            id,
            query_all(
                &o,
                [
                    OffloadStateType::NeighborDelegated,
                    OffloadStateType::Ip4,
                    ty,
                ],
            ),
        );
        let e = expected_query_tcp(&o.tcp[7]);
        let want = QueriedState::select(ty, &ObjectState::Tcp(e));
        assert_eq!(r[3 + 7].state, Some(want), "query with Type {ty:?}");
        assert_eq!(
            r[0].state,
            Some(QueriedState::Neighbor {
                konst: None,
                cached: None,
                delegated: Some(o.neighbor.delegated)
            }),
            "NeighborDelegated query returns NRD only"
        );
    }

    // --- update cached variables (C-083, C-087, C-088, C-091)
    let mut new_cached = o.tcp[3].cached;
    new_cached.ka_timeout = 60_000;
    new_cached.initial_rcv_wnd = 131072;
    new_cached.ttl_or_hop_limit = 32;
    new_cached.flags |= TCP_FLAG_KEEP_ALIVE_RESTART | TCP_FLAG_MAX_RT_RESTART;
    let new_mtu = PathCached { path_mtu: 1400 };
    let new_mac = NeighborCached {
        dl_destination_address: mac32([0x02, 0, 0, 0, 0, 0x99]),
        host_reachability_delta: 5,
    };
    let mut b = TreeBuilder::new(
        OffloadStateType::NeighborCached,
        0,
        UpdateBlock::Object {
            handle: o.neighbor_h,
            cached: Some(CachedState::Neighbor(new_mac)),
        },
    );
    let p = b.dependent(
        0,
        OffloadStateType::Ip4Cached,
        0,
        UpdateBlock::Object {
            handle: o.path_h[0],
            cached: Some(CachedState::Path(new_mtu)),
        },
    );
    b.dependent(
        p,
        OffloadStateType::TcpCached,
        0,
        UpdateBlock::Object {
            handle: o.tcp_h[4],
            cached: None,
        },
    );
    let ph = b.dependent(0, OffloadStateType::Ip6, 0, UpdateBlock::Placeholder);
    b.dependent(
        ph,
        OffloadStateType::TcpCached,
        0,
        UpdateBlock::Object {
            handle: o.tcp_h[3],
            cached: Some(CachedState::Tcp(new_cached)),
        },
    );
    let c = rig.call(&Request {
        request_id: 30,
        body: RequestBody::Update(b.build()),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS, "update: {:?}", c.body);
    o.neighbor.cached = new_mac;
    o.paths[0].cached = new_mtu;
    o.tcp[3].cached = new_cached;
    o.tcp[3].delegated.keepalive = TcpTimer {
        count: 0,
        timeout_delta: 60_000,
    }; // C-087
    o.tcp[3].delegated.total_rt = 0; // C-088

    // An attempt to change const variables: same update with the Type naming const state.
    // The typed API cannot express it (UpdateBlock carries CachedState only); on the ring a
    // driver can, and the device refuses the whole request (C-023).
    let sneaky = TreeBuilder::new(
        OffloadStateType::TcpCached,
        0,
        UpdateBlock::Object {
            handle: o.tcp_h[5],
            cached: Some(CachedState::Tcp(new_cached)),
        },
    )
    .build();
    let mut bytes = Request {
        request_id: 31,
        body: RequestBody::Update(sneaky),
    }
    .encode();
    view::BlockView::new_unchecked(&mut bytes[view::request_block_offset(0)..])
        .set_state_type(OffloadStateType::TcpConst as u8);
    let c = rig.call_raw(&bytes);
    let e = error_of(&c);
    assert_eq!(
        (c.request_id, e.reason, e.block, e.field.as_str()),
        (31, Reason::ConstUpdateRefused, Some(0), "state_type")
    );
    assert_eq!(c.status, NdisStatus::FAILURE);
    // Nothing changed by the refused request, everything changed by the accepted one.
    check_full_query(&mut rig, &o, 32);

    // --- invalidate the neighbor (C-099..C-103)
    let inv = TreeBuilder::new(
        OffloadStateType::Neighbor,
        0,
        RefBlock::Object(o.neighbor_h),
    )
    .build();
    let c = rig.call(&Request {
        request_id: 40,
        body: RequestBody::Invalidate(inv),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
    let events = rig.take_events();
    assert_eq!(
        events.len(),
        TCP_COUNT,
        "one upload request per dependent connection (C-101)"
    );
    let mut ctx: Vec<u64> = events
        .iter()
        .map(|e| {
            assert_eq!(
                (e.class, e.code, e.info),
                (
                    EventClass::TcpEvent,
                    event::tcp_event::RETRIEVE,
                    event::upload_reason::INVALID_STATE
                )
            );
            e.host_context
        })
        .collect();
    ctx.sort_unstable();
    assert_eq!(
        ctx,
        (0..TCP_COUNT as u64)
            .map(|i| 0x1_0000 + i)
            .collect::<Vec<_>>(),
        "events carry each connection's host context (C-028)"
    );
    let table = rig.ring.plane().table();
    assert!(
        o.tcp_h.iter().all(|h| !table.tcp_may_send(*h)),
        "no sending through an invalid neighbor (C-100)"
    );
    assert!(
        table.neighbor(o.neighbor_h).is_some_and(|n| n.is_invalid()),
        "kept until terminated (C-102)"
    );
    // The host never updates an invalidated object (C-094); the device refuses it.
    let upd = TreeBuilder::new(
        OffloadStateType::NeighborCached,
        0,
        UpdateBlock::Object {
            handle: o.neighbor_h,
            cached: Some(CachedState::Neighbor(new_mac)),
        },
    )
    .build();
    let c = rig.call(&Request {
        request_id: 41,
        body: RequestBody::Update(upd),
    });
    assert_eq!(error_of(&c).reason, Reason::ObjectInvalidated);

    // --- terminate: a neighbor with dependents alone is refused (C-110)
    let t = TreeBuilder::new(
        OffloadStateType::Neighbor,
        0,
        TerminateBlock::Object {
            handle: o.neighbor_h,
            return_delegated: true,
        },
    )
    .build();
    let c = rig.call(&Request {
        request_id: 50,
        body: RequestBody::Terminate(t),
    });
    assert_eq!(
        (error_of(&c).reason, error_of(&c).block),
        (Reason::HasDependents, Some(0))
    );

    // --- terminate everything in one tree, delegated state returned (C-111, C-112)
    let mut b = TreeBuilder::new(
        OffloadStateType::NeighborDelegated,
        0,
        TerminateBlock::Object {
            handle: o.neighbor_h,
            return_delegated: true,
        },
    );
    let p = [
        b.dependent(
            0,
            OffloadStateType::Ip4Delegated,
            0,
            TerminateBlock::Object {
                handle: o.path_h[0],
                return_delegated: true,
            },
        ),
        b.dependent(
            0,
            OffloadStateType::Ip6Delegated,
            0,
            TerminateBlock::Object {
                handle: o.path_h[1],
                return_delegated: true,
            },
        ),
    ];
    for (i, h) in o.tcp_h.iter().enumerate() {
        b.dependent(
            p[o.tcp_path[i]],
            OffloadStateType::TcpDelegated,
            0,
            TerminateBlock::Object {
                handle: *h,
                return_delegated: true,
            },
        );
    }
    let c = rig.call(&Request {
        request_id: 51,
        body: RequestBody::Terminate(b.build()),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
    let CompletionBody::Terminate(r) = c.body else {
        panic!("expected TERMINATE completion, got {:?}", c.body)
    };
    assert_eq!(
        r[0].state,
        Some(DelegatedState::Neighbor(o.neighbor.delegated)),
        "neighbor NRD"
    );
    assert_eq!(r[1].state, Some(DelegatedState::Path(PathDelegated)));
    assert_eq!(r[2].state, Some(DelegatedState::Path(PathDelegated)));
    for (i, t) in o.tcp.iter().enumerate() {
        assert_eq!(r[3 + i].status, NdisStatus::SUCCESS);
        assert_eq!(
            r[3 + i].state,
            Some(DelegatedState::Tcp(t.delegated)),
            "TCP {i}: delegated state as offloaded (+ update effects)"
        );
    }
    assert_eq!(
        rig.ring.plane().table().counts(),
        (0, 0, 0),
        "all resources freed (C-124)"
    );

    // Terminated handles are stale now.
    let q = TreeBuilder::new(OffloadStateType::Tcp, 0, RefBlock::Object(o.tcp_h[0])).build();
    let c = rig.call(&Request {
        request_id: 60,
        body: RequestBody::Query(q),
    });
    assert_eq!(error_of(&c).reason, Reason::StaleHandle);
    assert_eq!(rig.ring.pending_records(), 0, "every record delivered");
}

/// C-036: a placeholder is SUCCESS, also without dependents; it offloads nothing.
#[test]
fn placeholder_without_dependents_succeeds_c036() {
    let mut rig = negotiated_rig(ObjectLimits::default());
    let t = TreeBuilder::new(OffloadStateType::Neighbor, 0, InitiateBlock::Placeholder).build();
    let c = rig.call(&Request {
        request_id: 5,
        body: RequestBody::Initiate(t),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    assert_eq!(
        (r.len(), r[0].status, r[0].handle),
        (1, NdisStatus::SUCCESS, None)
    );
    assert_eq!(rig.ring.plane().table().counts(), (0, 0, 0));
}

/// C-037/C-038: placeholder neighbor → linker (existing path) → new TCPs: the new
/// connections hang on the referenced path; the linker's status summarises its dependents.
#[test]
fn linker_attaches_new_connections_and_summarises_their_status_c037_c038() {
    let mut rng = Rng(seed("linker"));
    let mut rig = negotiated_rig(ObjectLimits {
        neighbors: 4,
        paths: 4,
        tcp: 3,
    });
    // neighbor → path, nothing else
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor_state(&mut rng)));
    b.new_dependent(0, 2, ObjectState::Path(path_v6()));
    let c = rig.call(&Request {
        request_id: 5,
        body: RequestBody::Initiate(b.build()),
    });
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    let path_h = r[1].handle.expect("path offloaded");

    let linker_tree = |rng: &mut Rng, n: u16, port0: u16| {
        let mut b = TreeBuilder::new(OffloadStateType::Neighbor, 0, InitiateBlock::Placeholder);
        let l = b.dependent(0, OffloadStateType::Ip6, 0, InitiateBlock::Linker(path_h));
        for i in 0..n {
            b.new_dependent(
                l,
                100 + u64::from(i),
                ObjectState::Tcp(tcp_state(rng, port0 + i)),
            );
        }
        b.build()
    };
    // 2 TCPs, both fit: linker SUCCESS
    let c = rig.call(&Request {
        request_id: 6,
        body: RequestBody::Initiate(linker_tree(&mut rng, 2, 1000)),
    });
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    let st: Vec<_> = r.iter().map(|b| b.status).collect();
    assert_eq!(
        st,
        vec![NdisStatus::SUCCESS; 4],
        "placeholder, linker, 2 TCP"
    );
    assert_eq!(r[1].handle, None, "a linker gets no new handle");
    let table = rig.ring.plane().table();
    for b in &r[2..] {
        assert_eq!(
            table.tcp(b.handle.unwrap()).map(|t| t.path()),
            Some(path_h),
            "C-037: linked to the referenced path"
        );
    }
    assert_eq!(table.path(path_h).map(|p| p.dependents()), Some(2));
    // 2 more with room for 1: linker PARTIAL_SUCCESS, second TCP OFFLOAD_TCP_ENTRIES
    let c = rig.call(&Request {
        request_id: 7,
        body: RequestBody::Initiate(linker_tree(&mut rng, 2, 2000)),
    });
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    let st: Vec<_> = r.iter().map(|b| b.status).collect();
    assert_eq!(
        st,
        vec![
            NdisStatus::SUCCESS,
            NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
            NdisStatus::SUCCESS,
            NdisStatus::OFFLOAD_TCP_ENTRIES
        ],
        "C-038 partial; C-044 specific code; placeholder stays SUCCESS (§7.1 item 30)"
    );
    assert_eq!(
        c.status,
        NdisStatus::SUCCESS,
        "overall = root (placeholder) status"
    );
    // 1 more, none fit: linker FAILURE
    let c = rig.call(&Request {
        request_id: 8,
        body: RequestBody::Initiate(linker_tree(&mut rng, 1, 3000)),
    });
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    let st: Vec<_> = r.iter().map(|b| b.status).collect();
    assert_eq!(
        st,
        vec![
            NdisStatus::SUCCESS,
            NdisStatus::FAILURE,
            NdisStatus::OFFLOAD_TCP_ENTRIES
        ],
        "C-038 all failed"
    );
}

/// The documented partial-offload example (§3.1.2, C-041, C-042): Neighbor1 → {Path1 →
/// {TCP1 ok, TCP2 resource failure}, Path2 failed → {TCP3 not attempted}}.
#[test]
fn partial_offload_follows_the_documented_example_c041_c042() {
    let mut rng = Rng(seed("partial"));
    let mut rig = negotiated_rig(ObjectLimits {
        neighbors: 1,
        paths: 2,
        tcp: 1,
    });
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor_state(&mut rng)));
    let p1 = b.new_dependent(0, 2, ObjectState::Path(path_v4()));
    b.new_dependent(p1, 3, ObjectState::Tcp(tcp_state(&mut rng, 1)));
    b.new_dependent(p1, 4, ObjectState::Tcp(tcp_state(&mut rng, 2)));
    let mut big = path_v6();
    big.cached.path_mtu = 70_000; // above what the device supports (C-050)
    let p2 = b.new_dependent(0, 5, ObjectState::Path(big));
    b.new_dependent(p2, 6, ObjectState::Tcp(tcp_state(&mut rng, 3)));
    let c = rig.call(&Request {
        request_id: 5,
        body: RequestBody::Initiate(b.build()),
    });
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    let st: Vec<_> = r.iter().map(|b| b.status).collect();
    assert_eq!(
        st,
        vec![
            NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
            NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
            NdisStatus::SUCCESS,
            NdisStatus::OFFLOAD_TCP_ENTRIES,
            NdisStatus::OFFLOAD_PATH_MTU,
            NdisStatus::FAILURE,
        ]
    );
    assert_eq!(c.status, NdisStatus::OFFLOAD_PARTIAL_SUCCESS);
    assert!(
        r[3].handle.is_none() && r[4].handle.is_none() && r[5].handle.is_none(),
        "C-040: no context for failed blocks"
    );
    assert_eq!(rig.ring.plane().table().counts(), (1, 1, 1));
}

/// C-043: the root's own state fails → traversal stops, every other block FAILURE.
#[test]
fn failed_root_stops_traversal_c043() {
    let mut rng = Rng(seed("root_fails"));
    let mut rig = negotiated_rig(ObjectLimits::default());
    let mut n = neighbor_state(&mut rng);
    n.konst.dl_source_address = mac32([0x02, 9, 9, 9, 9, 9]); // no configurable MAC (C-046)
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(n));
    let p = b.new_dependent(0, 2, ObjectState::Path(path_v4()));
    b.new_dependent(p, 3, ObjectState::Tcp(tcp_state(&mut rng, 1)));
    b.next(
        0,
        OffloadStateType::Neighbor,
        4,
        InitiateBlock::New(ObjectState::Neighbor(neighbor_state(&mut rng))),
    );
    let c = rig.call(&Request {
        request_id: 5,
        body: RequestBody::Initiate(b.build()),
    });
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    let st: Vec<_> = r.iter().map(|b| b.status).collect();
    assert_eq!(
        st,
        vec![
            NdisStatus::OFFLOAD_HW_ADDRESS_ENTRIES,
            NdisStatus::FAILURE,
            NdisStatus::FAILURE,
            NdisStatus::FAILURE
        ]
    );
    assert_eq!(
        rig.ring.plane().table().counts(),
        (0, 0, 0),
        "nothing offloaded"
    );
}

/// C-084: an update whose root references a neighbor re-points the path blocks under it.
#[test]
fn update_relinks_paths_to_a_new_neighbor_c084() {
    let mut rng = Rng(seed("relink"));
    let mut rig = negotiated_rig(ObjectLimits::default());
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor_state(&mut rng)));
    let p = b.new_dependent(0, 2, ObjectState::Path(path_v4()));
    b.new_dependent(p, 3, ObjectState::Tcp(tcp_state(&mut rng, 1)));
    b.next(
        0,
        OffloadStateType::Neighbor,
        4,
        InitiateBlock::New(ObjectState::Neighbor(neighbor_state(&mut rng))),
    );
    let c = rig.call(&Request {
        request_id: 5,
        body: RequestBody::Initiate(b.build()),
    });
    let CompletionBody::Initiate(r) = c.body else {
        panic!()
    };
    let (old_n, path_h, new_n) = (
        r[0].handle.unwrap(),
        r[1].handle.unwrap(),
        r[3].handle.unwrap(),
    );
    let mut u = TreeBuilder::new(
        OffloadStateType::Neighbor,
        0,
        UpdateBlock::Object {
            handle: new_n,
            cached: None,
        },
    );
    u.dependent(
        0,
        OffloadStateType::Ip4,
        0,
        UpdateBlock::Object {
            handle: path_h,
            cached: None,
        },
    );
    let c = rig.call(&Request {
        request_id: 6,
        body: RequestBody::Update(u.build()),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS);
    let table = rig.ring.plane().table();
    assert_eq!(table.path(path_h).map(|p| p.neighbor()), Some(new_n));
    assert_eq!(
        (
            table.neighbor(old_n).unwrap().dependents(),
            table.neighbor(new_n).unwrap().dependents()
        ),
        (0, 1)
    );
    // The old neighbor has no dependents now and can be terminated alone (C-096 last step).
    let t = TreeBuilder::new(
        OffloadStateType::Neighbor,
        0,
        TerminateBlock::Object {
            handle: old_n,
            return_delegated: false,
        },
    )
    .build();
    let c = rig.call(&Request {
        request_id: 7,
        body: RequestBody::Terminate(t),
    });
    assert_eq!(c.status, NdisStatus::SUCCESS, "{:?}", c.body);
}
