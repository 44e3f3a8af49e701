//! Property tests: encode → decode is the identity for every record, and arbitrary bytes
//! never panic a decoder. Each test prints its seed; PROPTEST_RNG_SEED repeats a run.

use chimney_abi::completion::ErrorInfo;
use chimney_abi::*;
use core::convert::Infallible;
use core::net::{Ipv4Addr, Ipv6Addr};
use proptest::prelude::*;

fn mac32() -> impl Strategy<Value = [u8; 32]> {
    prop::array::uniform32(any::<u8>())
}

prop_compose! {
    fn neighbor()(src in mac32(), vlan in 0u16..0x1000, dst in mac32(), hrd: u32, nrd: u32) -> NeighborState {
        NeighborState {
            konst: NeighborConst { dl_source_address: src, vlan_id: vlan },
            cached: NeighborCached { dl_destination_address: dst, host_reachability_delta: hrd },
            delegated: NeighborDelegated { nic_reachability_delta: nrd },
        }
    }
}

fn path_const() -> impl Strategy<Value = PathConst> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| PathConst::V4 {
            source: Ipv4Addr::from(s),
            destination: Ipv4Addr::from(d)
        }),
        (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, d)| PathConst::V6 {
            source: Ipv6Addr::from(s),
            destination: Ipv6Addr::from(d)
        }),
    ]
}

prop_compose! {
    fn path()(konst in path_const(), mtu: u32) -> PathState {
        PathState { konst, cached: PathCached { path_mtu: mtu }, delegated: PathDelegated }
    }
}

prop_compose! {
    fn tcp_const()(flags in 0u16..8, rp: u16, lp: u16, s in 0u8..15, r in 0u8..15, mss: u16, hash: u32) -> TcpConst {
        TcpConst { flags, remote_port: rp, local_port: lp, snd_wind_scale: s, rcv_wind_scale: r, remote_mss: mss, hash_value: hash }
    }
}

prop_compose! {
    fn tcp_cached()(flags in 0u16..0x20, w: u32, ris: u32, kpc: u8, kt: u32, ki: u32, mrt: u32,
                    fl in 0u32..0x10_0000, ttl: u8, tos: u8, up in 0u8..8) -> TcpCached {
        TcpCached { flags, initial_rcv_wnd: w, rcv_indication_size: ris, ka_probe_count: kpc, ka_timeout: kt,
            ka_interval: ki, max_rt: mrt, flow_label: fl, ttl_or_hop_limit: ttl, tos_or_traffic_class: tos, user_priority: up }
    }
}

prop_compose! {
    fn tcp_delegated()(st in 0u32..11, flags: u16, a in any::<[u32; 10]>(), srtt: u16, rttvar: u16,
                       b in any::<[u32; 4]>(), dup: u8, probe: u8, kc: u8, kd: u32, rc: u8, rd: u32,
                       c in any::<[u32; 3]>()) -> TcpDelegated {
        TcpDelegated {
            state: TcpConnectionState::from_u32(st).unwrap(), flags,
            rcv_nxt: a[0], rcv_wnd: a[1], snd_una: a[2], snd_nxt: a[3], snd_max: a[4], snd_wnd: a[5],
            max_snd_wnd: a[6], send_wl1: a[7], cwnd: a[8], ssthresh: a[9], srtt, rttvar,
            ts_recent: b[0], ts_recent_age: b[1], ts_time: b[2], total_rt: b[3],
            dup_ack_count: dup, snd_wnd_probe_count: probe,
            keepalive: TcpTimer { count: kc, timeout_delta: kd },
            retransmit: TcpTimer { count: rc, timeout_delta: rd },
            send_backlog_size: c[0], receive_backlog_size: c[1], dwnd: c[2],
        }
    }
}

prop_compose! {
    fn tcp()(konst in tcp_const(), cached in tcp_cached(), delegated in tcp_delegated()) -> TcpState {
        TcpState { konst, cached, delegated }
    }
}

fn handle() -> impl Strategy<Value = DeviceHandle> {
    (1u8..4, any::<u32>(), 1u32..0x3FFF_FFFF).prop_map(|(l, s, g)| {
        let layer = [Layer::Neighbor, Layer::Path, Layer::Tcp][l as usize - 1];
        DeviceHandle::new(layer, s, g)
    })
}

/// A well-formed initiate tree: neighbors (new or linker/placeholder) → paths → TCPs.
fn initiate_tree() -> impl Strategy<Value = Tree<InitiateBlock>> {
    (
        prop_oneof![neighbor().prop_map(Some), Just(None)],
        handle(),
        prop::collection::vec((path(), prop::collection::vec(tcp(), 0..4)), 0..4),
        any::<u64>(),
    )
        .prop_map(|(n, h, paths, ctx)| {
            let mut b = match n {
                Some(n) => TreeBuilder::new_object(ctx, ObjectState::Neighbor(n)),
                None => TreeBuilder::new(OffloadStateType::Neighbor, ctx, InitiateBlock::Linker(h)),
            };
            for (p, tcps) in paths {
                let pi = b.new_dependent(0, ctx ^ 1, ObjectState::Path(p));
                for t in tcps {
                    b.new_dependent(pi, ctx ^ 2, ObjectState::Tcp(t));
                }
            }
            b.build()
        })
}

fn ref_tree() -> impl Strategy<Value = Tree<RefBlock>> {
    (handle(), prop::collection::vec(handle(), 0..5)).prop_map(|(p, ts)| {
        let mut b = TreeBuilder::new(OffloadStateType::Ip6, 7, RefBlock::Object(p));
        for t in ts {
            b.dependent(0, OffloadStateType::TcpDelegated, 9, RefBlock::Object(t));
        }
        b.build()
    })
}

fn update_tree() -> impl Strategy<Value = Tree<UpdateBlock>> {
    (handle(), tcp_cached(), prop::option::of(any::<u32>())).prop_map(|(h, c, mtu)| {
        let mut b = TreeBuilder::new(
            OffloadStateType::Ip4Cached,
            0,
            UpdateBlock::Object {
                handle: h,
                cached: mtu.map(|m| CachedState::Path(PathCached { path_mtu: m })),
            },
        );
        b.dependent(
            0,
            OffloadStateType::TcpCached,
            0,
            UpdateBlock::Object {
                handle: h,
                cached: Some(CachedState::Tcp(c)),
            },
        );
        b.dependent(0, OffloadStateType::Tcp, 0, UpdateBlock::Placeholder);
        b.build()
    })
}

fn terminate_tree() -> impl Strategy<Value = Tree<TerminateBlock>> {
    prop::collection::vec((handle(), any::<bool>()), 1..6).prop_map(|v| {
        let mut b = TreeBuilder::new(
            OffloadStateType::Tcp,
            0,
            TerminateBlock::Object {
                handle: v[0].0,
                return_delegated: v[0].1,
            },
        );
        for (h, r) in &v[1..] {
            b.next(
                0,
                OffloadStateType::Tcp,
                1,
                TerminateBlock::Object {
                    handle: *h,
                    return_delegated: *r,
                },
            );
        }
        b.build()
    })
}

fn params() -> impl Strategy<Value = OffloadParameters> {
    (
        prop::sample::select(vec![10u32, 100, 1000]),
        any::<[u8; 4]>(),
        any::<[u32; 5]>(),
    )
        .prop_map(|(t, b, v)| OffloadParameters {
            ticks_per_second: t,
            tcp_ack_frequency: b[0],
            tcp_delayed_ack_ticks: b[1],
            tcp_maximum_retransmissions: b[2],
            tcp_doubt_reachability_retransmissions: b[3],
            tcp_sws_prevention_ticks: v[0],
            tcp_duplicate_ack_threshold: v[1],
            tcp_push_ticks: v[2],
            nce_stale_ticks: v[3],
            congestion_algorithm: 0,
            ..OffloadParameters::default()
        })
}

fn request() -> impl Strategy<Value = Request> {
    let body = prop_oneof![
        (1u16..3, 3u16..9).prop_map(|(a, b)| RequestBody::Negotiate(Negotiate {
            min_version: a,
            max_version: b
        })),
        params().prop_map(RequestBody::SetParameters),
        initiate_tree().prop_map(RequestBody::Initiate),
        ref_tree().prop_map(RequestBody::Query),
        update_tree().prop_map(RequestBody::Update),
        ref_tree().prop_map(RequestBody::Invalidate),
        terminate_tree().prop_map(RequestBody::Terminate),
        (any::<bool>(), any::<bool>()).prop_map(|(v6, reset)| RequestBody::Statistics(
            chimney_abi::StatsRequest {
                family: if v6 {
                    chimney_abi::StatsFamily::Ipv6
                } else {
                    chimney_abi::StatsFamily::Ipv4
                },
                reset,
            }
        )),
        (1u64.., any::<u32>()).prop_map(|(h, hrd)| RequestBody::ReachabilityAnswer(
            chimney_abi::ReachabilityAnswer {
                handle: chimney_abi::DeviceHandle(h),
                host_reachability_delta: hrd,
            }
        )),
    ];
    (any::<u64>(), body).prop_map(|(request_id, body)| Request { request_id, body })
}

fn status() -> impl Strategy<Value = NdisStatus> {
    prop_oneof![
        Just(NdisStatus::SUCCESS),
        Just(NdisStatus::FAILURE),
        Just(NdisStatus::OFFLOAD_PARTIAL_SUCCESS),
        Just(NdisStatus::OFFLOAD_TCP_ENTRIES),
        any::<u32>().prop_map(NdisStatus)
    ]
}

fn completion() -> impl Strategy<Value = Completion> {
    let plain = || {
        (status(), prop::option::of(handle())).prop_map(|(s, h)| BlockResult::<Infallible> {
            state_type: OffloadStateType::Tcp,
            status: s,
            handle: h,
            state: None,
        })
    };
    let body = prop_oneof![
        prop::collection::vec(plain(), 0..5).prop_map(CompletionBody::Initiate),
        prop::collection::vec(plain(), 0..5).prop_map(CompletionBody::Update),
        prop::collection::vec(plain(), 0..5).prop_map(CompletionBody::Invalidate),
        prop::collection::vec((tcp(), status(), 0u8..4), 0..5).prop_map(|v| CompletionBody::Query(
            v.into_iter()
                .map(|(t, s, c)| {
                    let ty = [
                        OffloadStateType::Tcp,
                        OffloadStateType::TcpConst,
                        OffloadStateType::TcpCached,
                        OffloadStateType::TcpDelegated,
                    ][c as usize];
                    BlockResult {
                        state_type: ty,
                        status: s,
                        handle: None,
                        state: Some(QueriedState::select(ty, &ObjectState::Tcp(t))),
                    }
                })
                .collect()
        )),
        prop::collection::vec((tcp_delegated(), any::<bool>(), any::<u32>()), 0..5).prop_map(|v| {
            CompletionBody::Terminate(
                v.into_iter()
                    .map(|(d, some, nrd)| BlockResult {
                        state_type: if some {
                            OffloadStateType::Tcp
                        } else {
                            OffloadStateType::Neighbor
                        },
                        status: NdisStatus::SUCCESS,
                        handle: None,
                        state: Some(if some {
                            DelegatedState::Tcp(d)
                        } else {
                            DelegatedState::Neighbor(NeighborDelegated {
                                nic_reachability_delta: nrd,
                            })
                        }),
                    })
                    .collect(),
            )
        }),
        Just(CompletionBody::SetParameters),
        Just(CompletionBody::ReachabilityAnswer),
        (any::<[u64; 7]>(), any::<[u32; 10]>(), any::<bool>()).prop_map(|(a, b, v6)| {
            CompletionBody::Statistics(chimney_abi::StatsResult {
                family: if v6 {
                    chimney_abi::StatsFamily::Ipv6
                } else {
                    chimney_abi::StatsFamily::Ipv4
                },
                ip: chimney_abi::IpOffloadStats {
                    in_receives: a[0],
                    in_octets: a[1],
                    in_delivers: a[2],
                    out_requests: a[3],
                    out_octets: a[4],
                    in_header_errors: b[0],
                    in_truncated_packets: b[1],
                    in_discards: b[2],
                    out_discards: b[3],
                    out_no_routes: b[4],
                },
                tcp: chimney_abi::TcpOffloadStats {
                    in_segments: a[5],
                    out_segments: a[6],
                    currently_established: b[5],
                    reset_established: b[6],
                    retransmitted_segments: b[7],
                    in_errors: b[8],
                    out_resets: b[9],
                },
            })
        }),
        (1u16..3, any::<u32>()).prop_map(|(v, cap)| CompletionBody::Negotiate(NegotiateResult {
            version: v,
            device_min_version: 1,
            device_max_version: 2,
            max_request_length: 1 << 22,
            min_rx_buffer: 256,
            max_tree_blocks: 65536,
            capabilities: TcpConnectionOffload {
                encapsulation: 2,
                support_ipv4: 1,
                support_ipv6: 1,
                support_ipv6_extension_headers: 0,
                support_sack: 0,
                congestion_algorithm: 0,
                tcp_connection_offload_capacity: cap,
                flags: 0
            },
            max_neighbors: 1,
            max_paths: 2,
            max_tcp: 3,
        })),
        (
            0usize..Reason::ALL.len(),
            prop::option::of(any::<u32>().prop_filter("not NONE", |b| *b != u32::MAX)),
            "[a-z_.]{0,64}",
            any::<bool>()
        )
            .prop_map(|(r, block, field, hv)| CompletionBody::Error(ErrorInfo {
                header_valid: hv,
                reason: Reason::ALL[r],
                block,
                field
            })),
    ];
    (any::<u64>(), any::<u16>(), status(), body).prop_map(|(id, head, st, body)| {
        let opcode = match &body {
            CompletionBody::Negotiate(_) => 1,
            CompletionBody::SetParameters => 2,
            CompletionBody::Initiate(_) => 3,
            CompletionBody::Query(_) => 4,
            CompletionBody::Update(_) => 5,
            CompletionBody::Invalidate(_) => 6,
            CompletionBody::Terminate(_) => 7,
            CompletionBody::Statistics(_) => 8,
            CompletionBody::ReachabilityAnswer => 9,
            CompletionBody::Error(_) => 10,
        };
        Completion {
            request_id: id,
            opcode,
            tx_head: head,
            status: st,
            body,
        }
    })
}

/// Fixed seed per run, printed so a failure can be repeated with PROPTEST_RNG_SEED=<seed>.
fn config() -> ProptestConfig {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("proptest seed {seed} (repeat with PROPTEST_RNG_SEED={seed})");
    ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        cases: 1024,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_encode_decode_is_identity(req in request()) {
        let bytes = req.encode();
        prop_assert_eq!(Request::decode(&bytes), Ok(req));
    }

    #[test]
    fn completion_encode_decode_is_identity(c in completion()) {
        let bytes = c.encode();
        prop_assert_eq!(Completion::decode(&bytes), Ok(c));
    }

    #[test]
    fn event_encode_decode_is_identity(seq: u64, class in 1u16..4, h in prop::option::of(handle()), ctx: u64, code: u32, info: u32, payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let e = Event { sequence: seq, class: EventClass::from_u16(class).unwrap(), status: NdisStatus::SUCCESS, handle: h, host_context: ctx, code, info, payload };
        prop_assert_eq!(RxRecord::decode(&e.encode()), Ok(RxRecord::Event(e)));
    }

    #[test]
    fn fragments_reassemble_to_the_record(c in completion(), cap in 256usize..600, seq: u32) {
        let rec = c.encode();
        let mut re = Reassembler::new(1 << 20);
        let mut off = 0;
        let mut out = None;
        while let Some((buf, n)) = chimney_abi::framing::fragment(&rec, seq, off, cap) {
            prop_assert!(buf.len() <= cap);
            off += n;
            out = re.push(&buf).unwrap();
        }
        prop_assert_eq!(out, Some(rec));
    }

    #[test]
    fn arbitrary_bytes_never_panic_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Request::decode(&bytes);
        let _ = RequestHeader::decode(&bytes);
        let _ = RxRecord::decode(&bytes);
        let _ = Reassembler::new(4096).push(&bytes);
    }

    /// Valid header + random body: exercises the deeper decoders, not only the header check.
    #[test]
    fn random_bodies_behind_valid_headers_never_panic(op in 0u16..9, body in prop::collection::vec(any::<u8>(), 0..700)) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&op.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&((16 + body.len()) as u32).to_le_bytes());
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&body);
        let _ = Request::decode(&bytes);
        let mut rx = Vec::new();
        rx.extend_from_slice(&(op % 4).to_le_bytes());
        rx.extend_from_slice(&op.to_le_bytes());
        rx.extend_from_slice(&((32 + body.len()) as u32).to_le_bytes());
        rx.extend_from_slice(&[0u8; 24]);
        rx.extend_from_slice(&body);
        let _ = RxRecord::decode(&rx);
    }

    /// Mutating one byte of a valid request yields Ok or a typed error, never a panic.
    #[test]
    fn mutated_valid_requests_never_panic(req in request(), pos: usize, val: u8) {
        let mut bytes = req.encode();
        let i = pos % bytes.len();
        bytes[i] = val;
        let _ = Request::decode(&bytes);
    }
}
