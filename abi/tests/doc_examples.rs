//! The worked examples of docs/ring-abi.md §14, byte for byte.

use chimney_abi::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

#[test]
fn negotiate_request_example_matches_the_doc() {
    let req = Request {
        request_id: 1,
        body: RequestBody::Negotiate(Negotiate {
            min_version: 1,
            max_version: 1,
        }),
    };
    let want = hex("01 00 00 00 18 00 00 00 01 00 00 00 00 00 00 00 01 00 01 00 00 00 00 00");
    assert_eq!(req.encode(), want);
    assert_eq!(Request::decode(&want), Ok(req));
}

#[test]
fn negotiate_completion_example_matches_the_doc() {
    let c = Completion {
        request_id: 1,
        opcode: 1,
        tx_head: 0,
        status: NdisStatus::SUCCESS,
        body: CompletionBody::Negotiate(NegotiateResult {
            version: 1,
            device_min_version: 1,
            device_max_version: 1,
            max_request_length: 4 << 20,
            min_rx_buffer: 256,
            max_tree_blocks: 65536,
            capabilities: TcpConnectionOffload {
                encapsulation: caps::NDIS_ENCAPSULATION_IEEE_802_3,
                support_ipv4: 1,
                support_ipv6: 1,
                support_ipv6_extension_headers: 0,
                support_sack: 0,
                congestion_algorithm: 0,
                tcp_connection_offload_capacity: 65536,
                flags: 0,
            },
            max_neighbors: 1024,
            max_paths: 4096,
            max_tcp: 65536,
        }),
    };
    let want = hex("01 00 01 00 58 00 00 00  01 00 00 00 00 00 00 00
         00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00
         01 00 01 00 01 00 00 00  00 00 40 00 00 01 00 00
         00 00 01 00 00 00 00 00
         80 01 14 00 02 00 00 00  05 00 00 00 00 00 01 00
         00 00 00 00
         00 04 00 00 00 10 00 00  00 00 01 00");
    assert_eq!(c.encode(), want);
    let (frag, n) = framing::fragment(&want, 0, 0, 4096).unwrap();
    assert_eq!(n, 88);
    assert_eq!(
        &frag[..16],
        &hex("00 00 00 00 58 00 00 00 00 00 00 00 58 00 00 00")[..]
    );
    assert_eq!(frag.len(), 104, "used length");
}

#[test]
fn bulk_initiate_example_is_664_bytes() {
    let n = NeighborState {
        konst: NeighborConst {
            dl_source_address: [0; 32],
            vlan_id: 0,
        },
        cached: NeighborCached {
            dl_destination_address: [0; 32],
            host_reachability_delta: 0,
        },
        delegated: NeighborDelegated {
            nic_reachability_delta: 0,
        },
    };
    let p = PathState {
        konst: PathConst::V4 {
            source: [192, 0, 2, 2].into(),
            destination: [192, 0, 2, 1].into(),
        },
        cached: PathCached { path_mtu: 1500 },
        delegated: PathDelegated,
    };
    let t = TcpState {
        konst: TcpConst {
            flags: 0,
            remote_port: 80,
            local_port: 1,
            snd_wind_scale: 0,
            rcv_wind_scale: 0,
            remote_mss: 1460,
            hash_value: 0,
        },
        cached: TcpCached {
            flags: 0,
            initial_rcv_wnd: 0,
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
            rcv_nxt: 0,
            rcv_wnd: 0,
            snd_una: 0,
            snd_nxt: 0,
            snd_max: 0,
            snd_wnd: 0,
            max_snd_wnd: 0,
            send_wl1: 0,
            cwnd: 0,
            ssthresh: 0,
            srtt: 0,
            rttvar: 0,
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
    };
    let mut b = TreeBuilder::new_object(0, ObjectState::Neighbor(n));
    let pi = b.new_dependent(0, 0, ObjectState::Path(p));
    b.new_dependent(pi, 0, ObjectState::Tcp(t));
    b.new_dependent(pi, 0, ObjectState::Tcp(t));
    let tree = b.build();
    let links: Vec<_> = tree.blocks.iter().map(|b| (b.next, b.dependent)).collect();
    assert_eq!(
        links,
        vec![
            (None, Some(1)),
            (None, Some(2)),
            (Some(3), None),
            (None, None)
        ],
        "doc table §14.2"
    );
    let bytes = Request {
        request_id: 5,
        body: RequestBody::Initiate(tree),
    }
    .encode();
    assert_eq!(bytes.len(), 664);
}

#[test]
fn error_completion_example_matches_the_doc() {
    let c = Completion::error(
        7,
        Opcode::Query as u16,
        true,
        3,
        NdisStatus::INVALID_STATE,
        Reason::NotNegotiated,
        Field::new("header.opcode"),
    );
    let want = hex("02 00 04 00 38 00 00 00  07 00 00 00 00 00 00 00
         03 00 01 00 84 01 00 c0  00 00 00 00 00 00 00 00
         06 00 0d 00 ff ff ff ff
         68 65 61 64 65 72 2e 6f  70 63 6f 64 65 00 00 00");
    assert_eq!(c.encode(), want);
    assert_eq!(Completion::decode(&want), Ok(c));
}
