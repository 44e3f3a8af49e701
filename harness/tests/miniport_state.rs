//! The miniport driven the way NDIS drives it: the host (harness `ndis::NdisModel`) calls
//! only the handler tables the miniport registered, against the real chimney-device over
//! the in-process VMM, and checks every callback: order, the root it names, handles,
//! statuses, and that a completed tree is never touched again (C-034).

use std::time::Duration;

use chimney_abi::event::{tcp_event, upload_reason};
use chimney_abi::{NdisStatus, OffloadParameters, OffloadStateType, QueriedState};
use chimney_harness::device_process::DeviceOptions;
use chimney_harness::ndis::{
    initiate_blocks, parameters_bytes, reference_blocks, Callback, Ndis, NdisModel,
};
use chimney_harness::objects::OffloadSet;
use chimney_harness::{TestBed, TestBedConfig};
use chimney_miniport::miniport::{status, OpKind, TCP_OFFLOAD_STATS_LEN};
use chimney_miniport::ndis::blocklist::BlockTree;
use chimney_miniport::ndis::chars::OidRequest;
use chimney_miniport::ndis::nbl::{NetBuffer, NetBufferList};
use chimney_miniport::ndis::{chimney_type, object_type, oid, NdisObjectHeader};

fn seed() -> u64 {
    let seed = std::env::var("CHIMNEY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with CHIMNEY_SEED={seed})");
    seed
}

fn bed(extra: &[&str]) -> TestBed {
    TestBed::start(&TestBedConfig {
        device: DeviceOptions {
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..DeviceOptions::default()
        },
        ..TestBedConfig::default()
    })
    .expect("namespace + device + VMM")
}

/// NdisOffloadHandle the host gives block i (distinct, recognisable).
fn nh(i: usize) -> u64 {
    0x0A00_0000 + i as u64
}

/// The host's view of an offloaded set: tree shape and the contexts it got back.
struct Offloaded {
    set: OffloadSet,
    tree: BlockTree,
    contexts: Vec<Option<u64>>,
}

fn offload(ndis: &mut Ndis, set: OffloadSet) -> Offloaded {
    let (abi_tree, _) = set.initiate_tree();
    let tree = initiate_blocks(&abi_tree, nh);
    let done = ndis.call(OpKind::Initiate, tree.clone()).expect("initiate");
    assert_eq!(done.kind, OpKind::Initiate);
    let mut contexts = Vec::new();
    for (i, b) in done.tree.blocks.iter().enumerate() {
        assert_eq!(b.status, NdisStatus::SUCCESS, "block {i} status");
        let ctx = b
            .miniport_offload_context
            .expect("new offload has a context location");
        assert_ne!(ctx, 0, "C-040: block {i} context written after success");
        assert_eq!(
            b.ndis_offload_handle,
            nh(i),
            "NdisOffloadHandle of block {i} untouched"
        );
        contexts.push(Some(ctx));
    }
    let mut distinct = contexts.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        contexts.len(),
        "C-026: one context per object"
    );
    Offloaded {
        set,
        tree,
        contexts,
    }
}

fn tcp_blocks(o: &Offloaded) -> Vec<usize> {
    (0..o.tree.blocks.len())
        .filter(|&i| o.tree.blocks[i].state_type() == Some(OffloadStateType::Tcp))
        .collect()
}

fn full_ref_tree(o: &Offloaded) -> BlockTree {
    reference_blocks(&o.tree, &o.contexts, |_, _| {})
}

fn started(bed: &mut TestBed) -> Ndis {
    Ndis::start(&mut bed.vmm, &OffloadParameters::default()).expect("initialize + parameters")
}

#[test]
fn set_options_registers_both_tables_and_initialize_reports_device_capabilities() {
    let mut bed = bed(&["--max-tcp", "7"]);
    let ndis = started(&mut bed);
    // C-001 / C-002: both tables, with their object types and the TCP chimney type.
    let g = ndis.model.generic.expect("generic table registered");
    assert_eq!(
        g.header.object_type,
        object_type::PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS
    );
    let t = ndis.model.tcp.expect("TCP table registered");
    assert_eq!(
        t.header.object_type,
        object_type::PROVIDER_CHIMNEY_OFFLOAD_CHARACTERISTICS
    );
    assert_eq!(t.offload_type, chimney_type::TCP);
    // C-003: NdisMGetOffloadHandlers once, for the TCP chimney.
    assert_eq!(
        ndis.model.get_offload_handlers_calls,
        vec![chimney_type::TCP]
    );
    // C-005..C-009: attributes from the in-band capabilities.
    let a = ndis.model.attributes.expect("offload attributes set");
    let n = *ndis.adapter.negotiated();
    assert_eq!(
        a.header.object_type,
        object_type::MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES
    );
    assert_eq!(
        a.default_tcp_connection_offload_configuration,
        a.tcp_connection_offload_hardware_capabilities,
        "C-006: nothing disabled by keywords, so current = hardware"
    );
    let caps = a.tcp_connection_offload_hardware_capabilities;
    assert_ne!(
        caps.encapsulation & chimney_abi::caps::NDIS_ENCAPSULATION_IEEE_802_3,
        0,
        "C-007"
    );
    assert!(caps.support_ipv4 == 1 || caps.support_ipv6 == 1, "C-008");
    assert_eq!(n.max_tcp, 7, "device limit from --max-tcp");
    assert_eq!(
        caps.tcp_connection_offload_capacity, 7,
        "C-009: bounded by the TCP limit"
    );
    assert_eq!(
        ndis.adapter.parameters(),
        Some(&OffloadParameters::default()),
        "C-011: parameters set through the OID reached the device"
    );
}

#[test]
fn event_handler_table_with_a_wrong_header_or_a_failed_get_stops_initialize() {
    let mut bed = bed(&[]);
    let mut model = NdisModel::default();
    model.faults.event_handlers_header = Some(NdisObjectHeader {
        object_type: chimney_type::TCP as u8,
        revision: 2,
        size: 64,
    });
    let e = Ndis::initialize(&mut bed.vmm, 64, model).expect_err("revision 2 must be refused");
    assert!(
        e.to_string().contains("Revision is 2, expected 1"),
        "C-004: {e}"
    );

    let mut bed = self::bed(&[]);
    let mut model = NdisModel::default();
    model.faults.get_offload_handlers = Some(NdisStatus::NOT_SUPPORTED);
    let e = Ndis::initialize(&mut bed.vmm, 64, model).expect_err("failed get must stop");
    assert!(
        e.to_string().contains("NdisMGetOffloadHandlers failed"),
        "C-003: {e}"
    );
}

#[test]
fn handlers_only_record_and_completions_arrive_later_with_the_same_root() {
    let mut bed = bed(&[]);
    let mut ndis = started(&mut bed);
    let set = OffloadSet::foundation(seed(), 6, bed.peer_mac("tap0").expect("peer MAC"));
    let (abi_tree, _) = set.initiate_tree();
    let root = ndis
        .submit(OpKind::Initiate, initiate_blocks(&abi_tree, nh))
        .expect("initiate handler");
    // C-033: nothing completed inside the handler call, nothing sent yet.
    assert!(
        !ndis.is_completed(root),
        "completion inside the handler call"
    );
    assert!(
        ndis.model.log.is_empty(),
        "callbacks before the DPC ran: {:?}",
        ndis.model.log
    );
    // Two queries back to back: completed in submission order, each with its own root.
    let done = ndis.wait_completion(root).expect("initiate completes");
    let contexts: Vec<_> = done
        .tree
        .blocks
        .iter()
        .map(|b| b.miniport_offload_context)
        .collect();
    let o = Offloaded {
        set,
        tree: initiate_blocks(&abi_tree, nh),
        contexts,
    };
    let q1 = ndis
        .submit(OpKind::Query, full_ref_tree(&o))
        .expect("query 1");
    let q2 = ndis
        .submit(OpKind::Query, full_ref_tree(&o))
        .expect("query 2");
    ndis.wait_completion(q2).expect("query 2 completes");
    ndis.wait_completion(q1).expect("query 1 completes");
    let order: Vec<usize> = ndis
        .model
        .log
        .iter()
        .filter_map(|c| match c {
            Callback::OffloadComplete { root, .. } => Some(*root),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![root, q1, q2], "completion order by root");
    assert_eq!(
        ndis.model.foreign_completions, 0,
        "completion of a root NDIS never gave"
    );
    assert_eq!(ndis.model.double_completions, 0, "a root completed twice");
    // C-034: every completed tree is poisoned and was not touched afterwards.
    for r in [root, q1, q2] {
        assert!(ndis.model.roots[r].is_poisoned());
        assert_eq!(
            ndis.model.roots[r].violations(),
            0,
            "root {r} touched after completion"
        );
    }
}

#[test]
fn query_update_invalidate_terminate_through_the_tables_against_the_device() {
    let mut bed = bed(&[]);
    let mut ndis = started(&mut bed);
    let seed = seed();
    let o = offload(
        &mut ndis,
        OffloadSet::foundation(seed, 20, bed.peer_mac("tap0").expect("peer MAC")),
    );
    assert_eq!(ndis.adapter.offloaded(), 1 + 2 + 20);

    // Query everything (C-076): the structures after each block come back equal to what
    // was offloaded (the device has no TCP engine in ABI v1, so nothing moved).
    let q = ndis.call(OpKind::Query, full_ref_tree(&o)).expect("query");
    let (abi_tree, _) = o.set.initiate_tree();
    for (i, b) in q.tree.blocks.iter().enumerate() {
        assert_eq!(b.status, NdisStatus::SUCCESS, "query block {i}");
        let chimney_abi::InitiateBlock::New(s) = &abi_tree.blocks[i].body else {
            unreachable!()
        };
        assert_eq!(
            b.state,
            Some(QueriedState::select(s.state_type(), s)),
            "queried state of block {i} (seed {seed})"
        );
    }

    // Update the cached state of the first TCP connection (C-083), then query it alone.
    let t0 = tcp_blocks(&o)[0];
    let chimney_abi::InitiateBlock::New(chimney_abi::ObjectState::Tcp(tcp0)) =
        &abi_tree.blocks[t0].body
    else {
        unreachable!()
    };
    let mut cached = tcp0.cached;
    cached.ttl_or_hop_limit = cached.ttl_or_hop_limit.wrapping_add(1);
    cached.ka_interval = cached.ka_interval.wrapping_add(1000);
    let mut upd = chimney_miniport::ndis::blocklist::BlockList::new(OffloadStateType::Tcp);
    upd.header.object_type = OffloadStateType::TcpCached as u8;
    upd.miniport_offload_context = o.contexts[t0];
    upd.state = Some(QueriedState::Tcp {
        konst: None,
        cached: Some(cached),
        delegated: None,
    });
    let u = ndis
        .call(OpKind::Update, BlockTree { blocks: vec![upd] })
        .expect("update");
    assert_eq!(
        u.tree.blocks[0].status,
        NdisStatus::SUCCESS,
        "update status"
    );
    let mut qb = chimney_miniport::ndis::blocklist::BlockList::new(OffloadStateType::TcpCached);
    qb.miniport_offload_context = o.contexts[t0];
    let q = ndis
        .call(OpKind::Query, BlockTree { blocks: vec![qb] })
        .expect("query cached");
    assert_eq!(
        q.tree.blocks[0].state,
        Some(QueriedState::Tcp {
            konst: None,
            cached: Some(cached),
            delegated: None
        }),
        "cached state after update"
    );

    // Invalidate the neighbor (C-097..C-101): the completion, then one
    // TcpIndicateRetrieve/InvalidState per connection with that connection's
    // NdisOffloadHandle (C-028), after the completion.
    let mut inv = chimney_miniport::ndis::blocklist::BlockList::new(OffloadStateType::Neighbor);
    inv.miniport_offload_context = o.contexts[0];
    let log_start = ndis.model.log.len();
    let i = ndis
        .call(OpKind::Invalidate, BlockTree { blocks: vec![inv] })
        .expect("invalidate");
    assert_eq!(i.tree.blocks[0].status, NdisStatus::SUCCESS);
    let tcps = tcp_blocks(&o);
    let already = ndis.model.log.len() - log_start - 1;
    ndis.pump(tcps.len() - already, Duration::from_secs(20))
        .expect("upload requests");
    let after: Vec<&Callback> = ndis.model.log[log_start..].iter().collect();
    assert!(
        matches!(
            after[0],
            Callback::OffloadComplete {
                kind: OpKind::Invalidate,
                ..
            }
        ),
        "first callback is the invalidate completion, seen {:?}",
        after[0]
    );
    let mut handles: Vec<u64> = after[1..]
        .iter()
        .map(|c| match c {
            Callback::TcpEvent {
                ndis_offload_handle,
                event_type,
                info,
            } => {
                assert_eq!(*event_type, tcp_event::RETRIEVE);
                assert_eq!(*info, upload_reason::INVALID_STATE);
                *ndis_offload_handle
            }
            other => panic!("expected TcpEvent, seen {other:?}"),
        })
        .collect();
    handles.sort();
    let expected: Vec<u64> = tcps.iter().map(|&i| nh(i)).collect();
    assert_eq!(
        handles, expected,
        "C-101/C-028: one upload request per connection"
    );

    // Terminate everything, asking for the delegated state (C-111).
    let term = reference_blocks(&o.tree, &o.contexts, |i, b| {
        // A delegated structure to fill, deliberately holding wrong values: only the
        // miniport writing the device's answer makes the comparison below pass.
        b.state = match &abi_tree.blocks[i].body {
            chimney_abi::InitiateBlock::New(chimney_abi::ObjectState::Tcp(s)) => {
                let mut garbage = s.delegated;
                garbage.rcv_nxt = !garbage.rcv_nxt;
                garbage.snd_una = !garbage.snd_una;
                Some(QueriedState::Tcp {
                    konst: None,
                    cached: None,
                    delegated: Some(garbage),
                })
            }
            _ => None,
        };
    });
    let t = ndis.call(OpKind::Terminate, term).expect("terminate");
    for (i, b) in t.tree.blocks.iter().enumerate() {
        assert_eq!(b.status, NdisStatus::SUCCESS, "terminate block {i}");
        if let chimney_abi::InitiateBlock::New(chimney_abi::ObjectState::Tcp(s)) =
            &abi_tree.blocks[i].body
        {
            let Some(QueriedState::Tcp {
                delegated: Some(d), ..
            }) = b.state
            else {
                panic!("block {i}: no delegated state returned: {:?}", b.state)
            };
            if i != t0 {
                assert_eq!(d, s.delegated, "delegated state of block {i} (seed {seed})");
            }
        }
    }
    assert_eq!(
        ndis.adapter.offloaded(),
        0,
        "all contexts freed (C-029 ends)"
    );
}

#[test]
fn misbehaving_host_calls_get_the_documented_statuses_not_a_panic() {
    let mut bed = bed(&[]);
    let mut ndis = started(&mut bed);
    let o = offload(
        &mut ndis,
        OffloadSet::foundation(seed(), 2, bed.peer_mac("tap0").expect("peer MAC")),
    );
    let t = tcp_blocks(&o)[0];
    let ctx = o.contexts[t].expect("tcp context");
    let mut term = chimney_miniport::ndis::blocklist::BlockList::new(OffloadStateType::Tcp);
    term.miniport_offload_context = Some(ctx);
    // Two terminates of one connection in flight at once: the second is refused (FAILURE,
    // the only failure status terminate allows, C-112) without reaching the device.
    let r1 = ndis
        .submit(
            OpKind::Terminate,
            BlockTree {
                blocks: vec![term.clone()],
            },
        )
        .expect("terminate 1");
    let r2 = ndis
        .submit(
            OpKind::Terminate,
            BlockTree {
                blocks: vec![term.clone()],
            },
        )
        .expect("terminate 2");
    let c1 = ndis.wait_completion(r1).expect("terminate 1 completes");
    let c2 = ndis.wait_completion(r2).expect("terminate 2 completes");
    assert_eq!(
        c1.tree.blocks[0].status,
        NdisStatus::SUCCESS,
        "first terminate"
    );
    assert_eq!(
        c2.tree.blocks[0].status,
        NdisStatus::FAILURE,
        "double terminate"
    );
    assert_eq!(ndis.adapter.violations().double_terminate, 1);
    // And once more after it completed: the context is stale now.
    let c3 = ndis
        .call(OpKind::Terminate, BlockTree { blocks: vec![term] })
        .expect("terminate 3");
    assert_eq!(
        c3.tree.blocks[0].status,
        NdisStatus::FAILURE,
        "terminate of a terminated object"
    );

    // Data I/O on the terminated connection and on a handle never given out: the handler
    // returns PENDING (the only allowed return) and the completion carries INVALID_STATE.
    let before = ndis.model.log.len();
    assert_eq!(
        ndis.send(ctx, vec![NetBufferList::with_data(1, b"late data")])
            .unwrap(),
        NdisStatus::PENDING
    );
    let post = NetBufferList {
        id: 2,
        net_buffers: vec![NetBuffer::with_capacity(4096)],
        ..Default::default()
    };
    assert_eq!(
        ndis.receive(0xBAD0_0001, vec![post]).unwrap(),
        NdisStatus::PENDING
    );
    assert_eq!(
        ndis.disconnect(
            ctx,
            NetBufferList::with_data(3, b""),
            chimney_miniport::ndis::TCP_DISCONNECT_GRACEFUL_CLOSE
        )
        .unwrap(),
        NdisStatus::PENDING
    );
    assert_eq!(
        ndis.forward(0, vec![NetBufferList::with_data(4, &[0u8; 20])])
            .unwrap(),
        NdisStatus::PENDING
    );
    assert_eq!(
        ndis.model.log.len(),
        before,
        "I/O completed inside the handler call"
    );
    ndis.pump(4, Duration::from_secs(5))
        .expect("four I/O completions");
    let got: Vec<(u64, NdisStatus)> = ndis.model.log[before..]
        .iter()
        .flat_map(|c| match c {
            Callback::SendComplete(n)
            | Callback::ReceiveComplete(n)
            | Callback::ForwardComplete(n) => {
                n.iter().map(|x| (x.id, x.status)).collect::<Vec<_>>()
            }
            Callback::DisconnectComplete(x) => vec![(x.id, x.status)],
            other => panic!("unexpected callback {other:?}"),
        })
        .collect();
    let s = NdisStatus::INVALID_STATE;
    assert_eq!(got, vec![(1, s), (2, s), (3, s), (4, s)]);
    assert!(matches!(ndis.model.log[before], Callback::SendComplete(_)));
    assert!(matches!(
        ndis.model.log[before + 1],
        Callback::ReceiveComplete(_)
    ));
    assert!(matches!(
        ndis.model.log[before + 2],
        Callback::DisconnectComplete(_)
    ));
    assert!(matches!(
        ndis.model.log[before + 3],
        Callback::ForwardComplete(_)
    ));
    // Receive-return is synchronous and always SUCCESS (C-175), even for NBLs never indicated.
    assert_eq!(
        ndis.receive_return(vec![NetBufferList::with_data(5, b"x")])
            .unwrap(),
        NdisStatus::SUCCESS
    );
    let v = ndis.adapter.violations();
    assert_eq!((v.unknown_context, v.unexpected_return), (5, 1), "{v:?}");

    // A query naming the terminated context fails whole, nothing reaches the device.
    let mut q = chimney_miniport::ndis::blocklist::BlockList::new(OffloadStateType::Tcp);
    q.miniport_offload_context = Some(ctx);
    let c = ndis
        .call(OpKind::Query, BlockTree { blocks: vec![q] })
        .expect("query");
    assert_eq!(c.tree.blocks[0].status, NdisStatus::FAILURE);
}

#[test]
fn offload_limit_failures_leave_the_context_location_untouched() {
    let mut bed = bed(&["--max-tcp", "3"]);
    let mut ndis = started(&mut bed);
    let set = OffloadSet::foundation(seed(), 5, bed.peer_mac("tap0").expect("peer MAC"));
    let (abi_tree, _) = set.initiate_tree();
    let done = ndis
        .call(OpKind::Initiate, initiate_blocks(&abi_tree, nh))
        .expect("initiate");
    // Blocks: N, P0, P1, T0..T4; traversal N, P0, T0, T2, T4, P1, T1, T3 (C-035).
    use NdisStatus as S;
    let statuses: Vec<S> = done.tree.blocks.iter().map(|b| b.status).collect();
    assert_eq!(
        statuses,
        vec![
            S::SUCCESS,
            S::SUCCESS,
            S::OFFLOAD_PARTIAL_SUCCESS,
            S::SUCCESS,
            S::OFFLOAD_TCP_ENTRIES,
            S::SUCCESS,
            S::OFFLOAD_TCP_ENTRIES,
            S::SUCCESS
        ]
    );
    for (i, b) in done.tree.blocks.iter().enumerate() {
        let ctx = b.miniport_offload_context.expect("location");
        if b.status == S::OFFLOAD_TCP_ENTRIES {
            assert_eq!(ctx, 0, "C-040: failed block {i} location untouched");
        } else {
            assert_ne!(ctx, 0, "block {i} got a context");
        }
    }
    assert_eq!(ndis.adapter.offloaded(), 6);
}

#[test]
fn oids_for_parameters_and_statistics() {
    let mut bed = bed(&[]);
    let mut ndis = Ndis::initialize(&mut bed.vmm, 64, NdisModel::default()).expect("initialize");
    // Before the parameters are set the device refuses tree operations: the whole tree
    // completes with FAILURE.
    let set = OffloadSet::foundation(seed(), 1, bed.peer_mac("tap0").expect("peer MAC"));
    let (abi_tree, _) = set.initiate_tree();
    let c = ndis
        .call(OpKind::Initiate, initiate_blocks(&abi_tree, nh))
        .expect("initiate");
    assert!(c
        .tree
        .blocks
        .iter()
        .all(|b| b.status == NdisStatus::FAILURE));
    assert!(
        c.tree
            .blocks
            .iter()
            .all(|b| b.miniport_offload_context == Some(0)),
        "C-040: nothing written on failure"
    );
    // Parameters: short buffer, bad TicksPerSecond, then a good one (C-011, C-014).
    let p = OffloadParameters::default();
    let r = ndis.oid(&OidRequest::Set {
        oid: oid::TCP_CONNECTION_OFFLOAD_PARAMETERS,
        buffer: parameters_bytes(&p)[..0x20].to_vec(),
    });
    assert_eq!((r.status, r.bytes_needed), (status::INVALID_LENGTH, 0x3C));
    let bad = OffloadParameters {
        ticks_per_second: 999,
        ..p
    };
    let r = ndis.oid(&OidRequest::Set {
        oid: oid::TCP_CONNECTION_OFFLOAD_PARAMETERS,
        buffer: parameters_bytes(&bad),
    });
    assert_eq!(r.status, status::INVALID_DATA);
    assert_eq!(ndis.adapter.parameters(), None);
    let r = ndis.oid(&OidRequest::Set {
        oid: oid::TCP_CONNECTION_OFFLOAD_PARAMETERS,
        buffer: parameters_bytes(&p),
    });
    assert_eq!(r.status, NdisStatus::SUCCESS);
    // Statistics (C-019): sizes, too-short buffers, reset by set.
    for (o, len) in [
        (oid::TCP4_OFFLOAD_STATS, TCP_OFFLOAD_STATS_LEN),
        (oid::TCP6_OFFLOAD_STATS, TCP_OFFLOAD_STATS_LEN),
        (oid::IP4_OFFLOAD_STATS, 0x40),
        (oid::IP6_OFFLOAD_STATS, 0x40),
    ] {
        let r = ndis.oid(&OidRequest::Query {
            oid: o,
            buffer_length: len - 1,
        });
        assert_eq!(
            (r.status, r.bytes_needed),
            (status::BUFFER_TOO_SHORT, len),
            "{o:#x}"
        );
        let r = ndis.oid(&OidRequest::Query {
            oid: o,
            buffer_length: len,
        });
        assert_eq!(
            (r.status, r.data.len()),
            (NdisStatus::SUCCESS, len),
            "{o:#x}"
        );
        assert!(r.data.iter().all(|b| *b == 0), "no offloaded traffic yet");
        let r = ndis.oid(&OidRequest::Set {
            oid: o,
            buffer: vec![],
        });
        assert_eq!(r.status, NdisStatus::SUCCESS, "set resets {o:#x}");
    }
    let r = ndis.oid(&OidRequest::Query {
        oid: 0x0001_0101,
        buffer_length: 64,
    });
    assert_eq!(r.status, NdisStatus::NOT_SUPPORTED);
    // Now the initiate goes through.
    let c = ndis
        .call(OpKind::Initiate, initiate_blocks(&abi_tree, nh))
        .expect("initiate");
    assert!(c
        .tree
        .blocks
        .iter()
        .all(|b| b.status == NdisStatus::SUCCESS));
}

#[test]
fn pause_and_restart_keep_offloaded_connections_and_halt_drains() {
    let mut bed = bed(&[]);
    let mut ndis = started(&mut bed);
    let o = offload(
        &mut ndis,
        OffloadSet::foundation(seed(), 4, bed.peer_mac("tap0").expect("peer MAC")),
    );
    assert_eq!(ndis.adapter.pause(), NdisStatus::SUCCESS);
    // Offloads stay and are served while paused (C-231).
    let q = ndis
        .call(OpKind::Query, full_ref_tree(&o))
        .expect("query while paused");
    assert!(q
        .tree
        .blocks
        .iter()
        .all(|b| b.status == NdisStatus::SUCCESS));
    assert_eq!(ndis.adapter.offloaded(), 7);
    assert_eq!(ndis.adapter.restart(), NdisStatus::SUCCESS);
    // A terminate submitted but not yet serviced is completed by halt.
    let r = ndis
        .submit(OpKind::Terminate, full_ref_tree(&o))
        .expect("terminate");
    let Ndis { mut model, adapter } = ndis;
    let left = adapter.halt(&mut model).expect("halt");
    assert_eq!(left, 0, "everything terminated before halt returned");
    assert!(
        model.roots[r].is_poisoned(),
        "terminate completed during halt"
    );
    assert!(model.log.iter().any(|c| matches!(
        c,
        Callback::OffloadComplete { kind: OpKind::Terminate, tree, .. }
            if tree.blocks.iter().all(|b| b.status == NdisStatus::SUCCESS)
    )));
}

#[test]
fn send_data_at_initiate_is_taken_only_from_blocks_that_offloaded_c045() {
    // --max-tcp 1: of two TCP blocks carrying send data, the second fails with
    // OFFLOAD_TCP_ENTRIES. C-045: its NBLs keep their status, stay in its block and are
    // never completed; the first block's NBLs now belong to the miniport (C-060).
    let mut bed = TestBed::start(&TestBedConfig {
        device: DeviceOptions {
            extra_args: vec!["--max-tcp".into(), "1".into()],
            ..DeviceOptions::default()
        },
        vmm: chimney_harness::VmmConfig {
            queue_pairs: 3,
            ..Default::default()
        },
        ..TestBedConfig::default()
    })
    .expect("namespace + device + VMM");
    let mut ndis = started(&mut bed);
    let set = OffloadSet::foundation(seed(), 2, bed.peer_mac("tap0").expect("peer MAC"));
    let (abi_tree, _) = set.initiate_tree();
    let mut tree = initiate_blocks(&abi_tree, nh);
    let tcps: Vec<usize> = (0..tree.blocks.len())
        .filter(|&i| tree.blocks[i].state_type() == Some(OffloadStateType::Tcp))
        .collect();
    for (n, &t) in tcps.iter().enumerate() {
        // All of it unsent: SndNxt = SndMax = SndUna (C-057).
        if let Some(QueriedState::Tcp {
            delegated: Some(d), ..
        }) = tree.blocks[t].state.as_mut()
        {
            d.snd_nxt = d.snd_una;
            d.snd_max = d.snd_una;
        }
        let mut nbl = NetBufferList::with_data(90 + n as u64, b"unsent data");
        nbl.status = NdisStatus(0x1234_5678);
        tree.blocks[t].net_buffer_list_chain = vec![nbl];
    }
    let done = ndis.call(OpKind::Initiate, tree.clone()).expect("initiate");
    let (ok, failed): (Vec<usize>, Vec<usize>) = tcps
        .iter()
        .partition(|&&t| done.tree.blocks[t].status == NdisStatus::SUCCESS);
    assert_eq!(
        (ok.len(), failed.len()),
        (1, 1),
        "one TCP in, one over the limit: {:?}",
        done.tree
            .blocks
            .iter()
            .map(|b| b.status)
            .collect::<Vec<_>>()
    );
    let f = failed[0];
    assert_eq!(done.tree.blocks[f].status, NdisStatus::OFFLOAD_TCP_ENTRIES);
    assert_eq!(
        done.tree.blocks[f].net_buffer_list_chain, tree.blocks[f].net_buffer_list_chain,
        "C-045: the failed block's NBLs untouched"
    );
    assert!(
        done.tree.blocks[ok[0]].net_buffer_list_chain.is_empty(),
        "the offloaded block's send data was taken over"
    );
    let failed_id = tree.blocks[f].net_buffer_list_chain[0].id;
    assert!(
        !ndis.model.log.iter().any(|c| matches!(
            c,
            Callback::SendComplete(v) if v.iter().any(|n| n.id == failed_id)
        )),
        "C-045: no send completion for a failed offload"
    );
}
