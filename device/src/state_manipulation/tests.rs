//! Sans-io unit tests of the object table (no rings): handle generations, update side
//! effects, invalidate events, terminate rules.

use super::*;
use chimney_abi::*;

fn neighbor() -> NeighborState {
    NeighborState {
        konst: NeighborConst {
            dl_source_address: [0; 32],
            vlan_id: 5,
        },
        cached: NeighborCached {
            dl_destination_address: [2; 32],
            host_reachability_delta: 1,
        },
        delegated: NeighborDelegated {
            nic_reachability_delta: 1,
        },
    }
}

fn path() -> PathState {
    PathState {
        konst: PathConst::V6 {
            source: "2001:db8::2".parse().unwrap(),
            destination: "2001:db8::1".parse().unwrap(),
        },
        cached: PathCached { path_mtu: 1280 },
        delegated: PathDelegated,
    }
}

fn tcp(port: u16) -> TcpState {
    TcpState {
        konst: TcpConst {
            flags: 0,
            remote_port: 443,
            local_port: port,
            snd_wind_scale: 2,
            rcv_wind_scale: 3,
            remote_mss: 1220,
            hash_value: 7,
        },
        cached: TcpCached {
            flags: TCP_FLAG_KEEP_ALIVE_ENABLED,
            initial_rcv_wnd: 65535,
            rcv_indication_size: 0,
            ka_probe_count: 5,
            ka_timeout: 1000,
            ka_interval: 100,
            max_rt: 0,
            flow_label: 0x12345,
            ttl_or_hop_limit: 64,
            tos_or_traffic_class: 0,
            user_priority: 0,
        },
        delegated: TcpDelegated {
            state: TcpConnectionState::Established,
            flags: 0,
            rcv_nxt: 10,
            rcv_wnd: 65535,
            snd_una: 20,
            snd_nxt: 30,
            snd_max: 30,
            snd_wnd: 1000,
            max_snd_wnd: 1000,
            send_wl1: 10,
            cwnd: 2440,
            ssthresh: 65535,
            srtt: 80,
            rttvar: 40,
            ts_recent: 0,
            ts_recent_age: 0,
            ts_time: 0,
            total_rt: 77,
            dup_ack_count: 0,
            snd_wnd_probe_count: 0,
            keepalive: TcpTimer {
                count: 3,
                timeout_delta: 500,
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

/// neighbor → path → n TCPs; returns (neighbor, path, tcps).
fn offload(t: &mut ObjectTable, n: u16) -> (DeviceHandle, DeviceHandle, Vec<DeviceHandle>) {
    let mut b = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor()));
    let p = b.new_dependent(0, 2, ObjectState::Path(path()));
    for i in 0..n {
        b.new_dependent(p, 100 + u64::from(i), ObjectState::Tcp(tcp(1000 + i)));
    }
    let r = t.initiate(&b.build()).expect("valid tree");
    assert!(r.iter().all(|b| b.status == NdisStatus::SUCCESS), "{r:?}");
    (
        r[0].handle.unwrap(),
        r[1].handle.unwrap(),
        r[2..].iter().map(|b| b.handle.unwrap()).collect(),
    )
}

fn update_tcp(t: &mut ObjectTable, h: DeviceHandle, c: TcpCached) {
    let tree = TreeBuilder::new(
        OffloadStateType::TcpCached,
        0,
        UpdateBlock::Object {
            handle: h,
            cached: Some(CachedState::Tcp(c)),
        },
    )
    .build();
    t.update(&tree).expect("update");
}

#[test]
fn handles_of_terminated_objects_are_stale_even_after_slot_reuse_c029() {
    let mut t = ObjectTable::new(ObjectLimits::default());
    let (_, _, tcps) = offload(&mut t, 1);
    let term = TreeBuilder::new(
        OffloadStateType::Tcp,
        0,
        TerminateBlock::Object {
            handle: tcps[0],
            return_delegated: false,
        },
    )
    .build();
    t.terminate(&term).unwrap();
    assert!(t.tcp(tcps[0]).is_none());
    let e = t.terminate(&term).unwrap_err();
    assert_eq!(e.reason, Reason::StaleHandle);
    // reuse the slot
    let (_, _, again) = offload(&mut t, 1);
    assert_eq!(again[0].slot(), tcps[0].slot());
    assert_eq!(again[0].generation(), tcps[0].generation() + 1);
    assert_eq!(t.terminate(&term).unwrap_err().reason, Reason::StaleHandle);
}

#[test]
fn keepalive_restart_restarts_the_keepalive_timer_c087() {
    let mut t = ObjectTable::new(ObjectLimits::default());
    let (_, _, tcps) = offload(&mut t, 1);
    let mut c = tcp(1000).cached;
    c.flags |= TCP_FLAG_KEEP_ALIVE_RESTART;
    c.ka_timeout = 9000;
    update_tcp(&mut t, tcps[0], c);
    let d = t.tcp(tcps[0]).unwrap().delegated();
    assert_eq!(
        (d.keepalive.count, d.keepalive.timeout_delta, d.total_rt),
        (0, 9000, 77),
        "TotalRT untouched without MAX_RT_RESTART"
    );
    assert_eq!(
        t.tcp(tcps[0]).unwrap().cached(),
        &c,
        "cached copied (C-083)"
    );
    assert_eq!(
        t.tcp(tcps[0]).unwrap().konst(),
        &tcp(1000).konst,
        "const untouched (C-023)"
    );
}

#[test]
fn max_rt_restart_resets_total_rt_and_keepalive_as_written_c088_c089() {
    let mut t = ObjectTable::new(ObjectLimits::default());
    let (_, _, tcps) = offload(&mut t, 2);
    // MAX_RT_RESTART alone, no keepalive change: only TotalRT resets.
    let mut c = tcp(1000).cached;
    c.flags |= TCP_FLAG_MAX_RT_RESTART;
    c.max_rt = 3000;
    update_tcp(&mut t, tcps[0], c);
    let d = *t.tcp(tcps[0]).unwrap().delegated();
    assert_eq!(
        (d.total_rt, d.keepalive.count, d.keepalive.timeout_delta),
        (0, 3, 500)
    );
    // With MAX_RT_RESTART, a changed KaProbeCount resets ProbeCount, a changed KaInterval
    // resets TimeoutDelta (C-089).
    let mut c = tcp(1001).cached;
    c.flags |= TCP_FLAG_MAX_RT_RESTART;
    c.ka_probe_count = 9;
    c.ka_interval = 250;
    update_tcp(&mut t, tcps[1], c);
    let d = *t.tcp(tcps[1]).unwrap().delegated();
    assert_eq!(
        (d.total_rt, d.keepalive.count, d.keepalive.timeout_delta),
        (0, 0, 1000)
    );
}

#[test]
fn invalidating_a_path_requests_each_upload_once_c101() {
    let mut t = ObjectTable::new(ObjectLimits::default());
    let (n, p, tcps) = offload(&mut t, 3);
    let inv = |h| {
        TreeBuilder::new(
            if h == n {
                OffloadStateType::Neighbor
            } else {
                OffloadStateType::Ip6
            },
            0,
            RefBlock::Object(h),
        )
        .build()
    };
    let (r, ev) = t.invalidate(&inv(p)).unwrap();
    assert_eq!(r[0].status, NdisStatus::SUCCESS);
    let mut ctx: Vec<u64> = ev.iter().map(|e| e.host_context).collect();
    ctx.sort_unstable();
    assert_eq!(ctx, vec![100, 101, 102]);
    assert!(tcps.iter().all(|h| !t.tcp_may_send(*h)));
    // The neighbor next: its connections already have an upload request pending.
    let (_, ev) = t.invalidate(&inv(n)).unwrap();
    assert!(ev.is_empty(), "no second request per connection: {ev:?}");
}

#[test]
fn terminating_a_path_with_remaining_dependents_is_refused_c110() {
    let mut t = ObjectTable::new(ObjectLimits::default());
    let (_, p, tcps) = offload(&mut t, 2);
    // path + only one of its two TCPs
    let mut b = TreeBuilder::new(
        OffloadStateType::Ip6,
        0,
        TerminateBlock::Object {
            handle: p,
            return_delegated: true,
        },
    );
    b.dependent(
        0,
        OffloadStateType::Tcp,
        0,
        TerminateBlock::Object {
            handle: tcps[0],
            return_delegated: true,
        },
    );
    let e = t.terminate(&b.build()).unwrap_err();
    assert_eq!((e.reason, e.field.block), (Reason::HasDependents, Some(0)));
    assert_eq!(t.counts(), (1, 1, 2), "refused request changed nothing");
    // naming one TCP twice
    let mut b = TreeBuilder::new(
        OffloadStateType::Tcp,
        0,
        TerminateBlock::Object {
            handle: tcps[0],
            return_delegated: true,
        },
    );
    b.next(
        0,
        OffloadStateType::Tcp,
        0,
        TerminateBlock::Object {
            handle: tcps[0],
            return_delegated: true,
        },
    );
    assert_eq!(
        t.terminate(&b.build()).unwrap_err().reason,
        Reason::DuplicateReference
    );
}

#[test]
fn a_second_connection_with_the_same_four_tuple_fails() {
    let mut t = ObjectTable::new(ObjectLimits::default());
    let (_, p, tcps) = offload(&mut t, 1);
    let tuple = t.tcp(tcps[0]).unwrap().tuple();
    assert_eq!(t.tcp_by_tuple(&tuple), Some(tcps[0]));
    let mut b = TreeBuilder::new(OffloadStateType::Ip6, 0, InitiateBlock::Linker(p));
    b.new_dependent(0, 9, ObjectState::Tcp(tcp(1000)));
    let r = t.initiate(&b.build()).unwrap();
    assert_eq!(
        (r[0].status, r[1].status),
        (NdisStatus::FAILURE, NdisStatus::FAILURE)
    );
}

#[test]
fn linker_with_the_wrong_ip_version_is_refused() {
    let mut t = ObjectTable::new(ObjectLimits::default());
    let (_, p, _) = offload(&mut t, 0);
    let mut b = TreeBuilder::new(OffloadStateType::Ip4, 0, InitiateBlock::Linker(p));
    b.new_dependent(0, 9, ObjectState::Tcp(tcp(5)));
    let e = t.initiate(&b.build()).unwrap_err();
    assert_eq!(
        (e.reason, e.field.name),
        (Reason::InvalidValue, "state_type")
    );
}

/// Trees handed in directly (not decoded from the ring) are link-checked too: no panic on
/// an out-of-range index.
#[test]
fn malformed_in_memory_tree_is_refused_not_a_panic() {
    let mut t = ObjectTable::new(ObjectLimits::default());
    let mut tree = TreeBuilder::new_object(1, ObjectState::Neighbor(neighbor())).build();
    tree.blocks[0].dependent = Some(42);
    let e = t.initiate(&tree).unwrap_err();
    assert_eq!(
        (e.reason, e.field.name),
        (Reason::LinkOutOfRange, "dependent")
    );
    let empty: Tree<RefBlock> = Tree { blocks: Vec::new() };
    assert_eq!(t.query(&empty).unwrap_err().reason, Reason::InvalidValue);
}
