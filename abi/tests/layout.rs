//! Unit tests of layouts, tree validation and ownership rules on the ring.

use chimney_abi::tree::{check_links, LINK_NONE};
use chimney_abi::*;

fn tcp_cached() -> TcpCached {
    TcpCached {
        flags: TCP_FLAG_NAGLING_ENABLED,
        initial_rcv_wnd: 65535,
        rcv_indication_size: 0,
        ka_probe_count: 3,
        ka_timeout: 7_200_000,
        ka_interval: 1000,
        max_rt: 0,
        flow_label: 0,
        ttl_or_hop_limit: 64,
        tos_or_traffic_class: 0,
        user_priority: 0,
    }
}

#[test]
fn status_codes_have_the_ndis_values() {
    // digest §5.5
    assert_eq!(NdisStatus::SUCCESS.0, 0);
    assert_eq!(NdisStatus::FAILURE.0, 0xC000_0001);
    assert_eq!(NdisStatus::RESOURCES.0, 0xC000_009A);
    assert_eq!(NdisStatus::OFFLOAD_PARTIAL_SUCCESS.0, 0x4002_0004);
    assert_eq!(NdisStatus::OFFLOAD_TCP_ENTRIES.0, 0xC023_1004);
    assert_eq!(NdisStatus::OFFLOAD_PATH_ENTRIES.0, 0xC023_1005);
    assert_eq!(NdisStatus::OFFLOAD_NEIGHBOR_ENTRIES.0, 0xC023_1006);
    assert_eq!(NdisStatus::UPLOAD_IN_PROGRESS.0, 0xC023_1001);
    assert_eq!(NdisStatus::OFFLOAD_CONNECTION_REJECTED.0, 0xC023_1012);
    assert_eq!(
        format!("{:?}", NdisStatus::OFFLOAD_TCP_ENTRIES),
        "NDIS_STATUS_OFFLOAD_TCP_ENTRIES(0xc0231004)"
    );
}

#[test]
fn state_structures_have_the_documented_sizes() {
    let mut w = Vec::new();
    TcpCached::emit(&tcp_cached(), &mut w);
    assert_eq!(w.len(), 0x2C);
    assert_eq!(
        &w[0..4],
        &[0x2C, 0, 0, 0],
        "OFFLOAD_STATE_HEADER.Length, little-endian"
    );
    assert_eq!(w[0x28], 64, "TtlOrHopLimit at 0x28 as in the spec");
    let mut w = Vec::new();
    PathConst::V6 {
        source: "2001:db8::2".parse().unwrap(),
        destination: "2001:db8::1".parse().unwrap(),
    }
    .emit(&mut w);
    assert_eq!(w.len(), 0x28);
    assert_eq!(
        &w[8..10],
        &[0x20, 0x01],
        "IP addresses in network byte order (C-032)"
    );
    let c = TcpConst {
        flags: TCP_FLAG_TIMESTAMP_ENABLED,
        remote_port: 80,
        local_port: 0x1234,
        snd_wind_scale: 7,
        rcv_wind_scale: 9,
        remote_mss: 1460,
        hash_value: 0xAABBCCDD,
    };
    let mut w = Vec::new();
    c.emit(&mut w);
    assert_eq!(w.len(), 0x18);
    assert_eq!(
        &w[0x0A..0x0E],
        &[80, 0, 0x34, 0x12],
        "ports little-endian (§7.1 item 16)"
    );
    assert_eq!(
        w[0x0E], 0x97,
        "SndWindScale low nibble, RcvWindScale high nibble"
    );
}

/// The documented example tree of `traversing-a-state-tree.md` (digest §2.9, C-035):
/// Neighbor1{Path1{TCP1,TCP2}, Path2{TCP3}}, Neighbor2{Path3{TCP4,TCP5}}.
#[test]
fn traversal_is_depth_first_breadth_next_c035() {
    use OffloadStateType as T;
    let mut b = TreeBuilder::new(T::Neighbor, 1, RefBlock::Placeholder); // 0 N1
    let p1 = b.dependent(0, T::Ip4, 2, RefBlock::Placeholder); // 1
    b.dependent(p1, T::Tcp, 3, RefBlock::Placeholder); // 2 TCP1
    b.dependent(p1, T::Tcp, 4, RefBlock::Placeholder); // 3 TCP2
    let p2 = b.dependent(0, T::Ip4, 5, RefBlock::Placeholder); // 4
    b.dependent(p2, T::Tcp, 6, RefBlock::Placeholder); // 5 TCP3
    let n2 = b.next(0, T::Neighbor, 7, RefBlock::Placeholder); // 6
    let p3 = b.dependent(n2, T::Ip6, 8, RefBlock::Placeholder); // 7
    b.dependent(p3, T::Tcp, 9, RefBlock::Placeholder); // 8 TCP4
    b.dependent(p3, T::Tcp, 10, RefBlock::Placeholder); // 9 TCP5
    let tree = b.build();
    let ctx: Vec<u64> = tree
        .traversal_order()
        .iter()
        .map(|i| tree.blocks[*i as usize].host_context)
        .collect();
    assert_eq!(ctx, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // and it survives the ring
    let req = Request {
        request_id: 1,
        body: RequestBody::Query(tree.clone()),
    };
    assert_eq!(
        Request::decode(&req.encode()).map(|r| r.body),
        Ok(RequestBody::Query(tree))
    );
}

fn links_err(blocks: &[(Layer, u32, u32)]) -> DecodeError {
    check_links(blocks).expect_err("malformed tree must be refused")
}

#[test]
fn tree_with_a_cycle_is_refused_naming_the_link() {
    use Layer::*;
    // 0 N -dep-> 1 P -next-> 2 P -next-> 1
    let e = links_err(&[
        (Neighbor, LINK_NONE, 1),
        (Path, 2, LINK_NONE),
        (Path, 1, LINK_NONE),
    ]);
    assert_eq!(e.reason(), Reason::LinkCycle);
    assert_eq!(e.field().to_string(), "block[2].next");
}

#[test]
fn tree_with_a_dangling_link_is_refused() {
    use Layer::*;
    let e = links_err(&[(Neighbor, LINK_NONE, 5)]);
    assert_eq!(e.reason(), Reason::LinkOutOfRange);
    assert_eq!(e.field().to_string(), "block[0].dependent");
}

#[test]
fn tree_with_wrong_layer_order_is_refused() {
    use Layer::*;
    // neighbor → TCP (skips path)
    let e = links_err(&[(Neighbor, LINK_NONE, 1), (Tcp, LINK_NONE, LINK_NONE)]);
    assert_eq!(e.reason(), Reason::LayerOrder);
    assert_eq!(e.field().to_string(), "block[0].dependent");
    // TCP → path (upside down)
    let e = links_err(&[(Tcp, LINK_NONE, 1), (Path, LINK_NONE, LINK_NONE)]);
    assert_eq!(e.reason(), Reason::LayerOrder);
    // next across layers
    let e = links_err(&[(Path, 1, LINK_NONE), (Neighbor, LINK_NONE, LINK_NONE)]);
    assert_eq!(e.reason(), Reason::LayerOrder);
    assert_eq!(e.field().to_string(), "block[0].next");
}

#[test]
fn unreachable_blocks_are_refused() {
    use Layer::*;
    let e = links_err(&[
        (Neighbor, LINK_NONE, LINK_NONE),
        (Path, LINK_NONE, LINK_NONE),
    ]);
    assert_eq!(e.reason(), Reason::UnreachableBlock);
    assert_eq!(e.field().block, Some(1));
}

#[test]
fn shared_dependent_is_refused_as_cycle() {
    use Layer::*;
    // two paths both pointing at TCP 3
    let e = links_err(&[
        (Neighbor, LINK_NONE, 1),
        (Path, 2, 3),
        (Path, LINK_NONE, 3),
        (Tcp, LINK_NONE, LINK_NONE),
    ]);
    assert_eq!(e.reason(), Reason::LinkCycle);
}

/// C-023/C-083: an update block whose Type names const state is refused on the ring.
#[test]
fn update_naming_const_state_is_refused_c023() {
    let h = DeviceHandle::new(Layer::Tcp, 3, 1);
    let tree = TreeBuilder::new(
        OffloadStateType::TcpCached,
        0,
        UpdateBlock::Object {
            handle: h,
            cached: Some(CachedState::Tcp(tcp_cached())),
        },
    )
    .build();
    let mut bytes = Request {
        request_id: 9,
        body: RequestBody::Update(tree),
    }
    .encode();
    // block 0 starts after 16-byte header + 8-byte tree header; Type byte first.
    bytes[24] = OffloadStateType::TcpConst as u8;
    let e = Request::decode(&bytes).expect_err("const update must be refused");
    assert_eq!(e.header.map(|h| h.request_id), Some(9));
    assert_eq!(e.error.reason(), Reason::ConstUpdateRefused);
    assert_eq!(e.error.field().to_string(), "block[0].state_type");
    bytes[24] = OffloadStateType::TcpDelegated as u8;
    let e = Request::decode(&bytes).expect_err("delegated update must be refused");
    assert_eq!(e.error.reason(), Reason::DelegatedUpdateRefused);
}

#[test]
fn truncated_request_names_the_field() {
    let tree = TreeBuilder::new(
        OffloadStateType::Tcp,
        0,
        RefBlock::Object(DeviceHandle::new(Layer::Tcp, 1, 1)),
    )
    .build();
    let mut bytes = Request {
        request_id: 4,
        body: RequestBody::Query(tree),
    }
    .encode();
    bytes.truncate(30);
    let n = bytes.len() as u32;
    bytes[4..8].copy_from_slice(&n.to_le_bytes());
    let e = Request::decode(&bytes).unwrap_err();
    assert_eq!(e.error.reason(), Reason::Truncated);
    assert_eq!(e.error.field().to_string(), "tree.blocks");
}

#[test]
fn handles_carry_layer_slot_and_generation() {
    let h = DeviceHandle::new(Layer::Path, 77, 5);
    assert_eq!(
        (h.layer(), h.slot(), h.generation()),
        (Some(Layer::Path), 77, 5)
    );
    assert_eq!(DeviceHandle(0).layer(), None);
}

#[test]
fn views_read_and_patch_encoded_records() {
    use chimney_abi::view::*;
    let mut bytes = Request {
        request_id: 0x1122_3344_5566_7788,
        body: RequestBody::Negotiate(Negotiate {
            min_version: 1,
            max_version: 1,
        }),
    }
    .encode();
    let mut h = RequestHeaderView::new_checked(&mut bytes[..]).unwrap();
    assert_eq!(
        (h.opcode(), h.length(), h.request_id()),
        (1, 24, 0x1122_3344_5566_7788)
    );
    h.set_opcode(99);
    assert_eq!(RequestHeader::decode(&bytes).map(|h| h.opcode), Ok(99));
    let e = RequestHeaderView::new_checked(&bytes[..15]).unwrap_err();
    assert_eq!((e.reason(), e.field().name), (Reason::Truncated, "header"));
    assert_eq!(BlockView::<&[u8]>::LEN, 32);
    assert_eq!(request_block_offset(2), 88);
}
