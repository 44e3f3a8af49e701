//! NDIS shapes of the portable core without a device: block-list traversal order (C-035),
//! poisoning of completed trees (C-034), NET_BUFFER data windows.

use chimney_abi::{NdisStatus, OffloadStateType};
use chimney_miniport::ndis::blocklist::{BlockList, BlockListRef, BlockTree, POISON};
use chimney_miniport::ndis::nbl::{Mdl, NetBuffer};

/// The documented tree: Neighbor1{Path1{TCP1,TCP2},Path2{TCP3}}, Neighbor2{Path3{TCP4,TCP5}}.
fn documented_tree() -> BlockTree {
    use OffloadStateType as T;
    // index: 0 N1, 1 P1, 2 T1, 3 T2, 4 P2, 5 T3, 6 N2, 7 P3, 8 T4, 9 T5 — stored shuffled
    // below so the order cannot come from the array order.
    let types = [
        T::Neighbor,
        T::Ip4,
        T::Tcp,
        T::Tcp,
        T::Ip4,
        T::Tcp,
        T::Neighbor,
        T::Ip4,
        T::Tcp,
        T::Tcp,
    ];
    let links: [(Option<usize>, Option<usize>); 10] = [
        (Some(6), Some(1)), // N1: next N2, dep P1
        (Some(4), Some(2)), // P1: next P2, dep T1
        (Some(3), None),    // T1 → T2
        (None, None),
        (None, Some(5)), // P2: dep T3
        (None, None),
        (None, Some(7)), // N2: dep P3
        (None, Some(8)), // P3: dep T4
        (Some(9), None),
        (None, None),
    ];
    // Permutation: logical i is stored at perm[i]; the root stays at 0.
    let perm = [0usize, 9, 3, 7, 1, 8, 2, 5, 4, 6];
    let mut blocks = vec![BlockList::new(OffloadStateType::Neighbor); 10];
    for i in 0..10 {
        let mut b = BlockList::new(types[i]);
        b.next_block = links[i].0.map(|j| perm[j]);
        b.dependent_block_list = links[i].1.map(|j| perm[j]);
        b.ndis_offload_handle = i as u64;
        blocks[perm[i]] = b;
    }
    BlockTree { blocks }
}

#[test]
fn traversal_is_depth_first_breadth_next_as_documented_c035() {
    let t = documented_tree();
    let (order, ok) = t.traversal();
    assert!(ok);
    let logical: Vec<u64> = order
        .iter()
        .map(|&i| t.blocks[i].ndis_offload_handle)
        .collect();
    // N1, P1, T1, T2, P2, T3, N2, P3, T4, T5
    assert_eq!(logical, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn traversal_reports_cycles_and_unreachable_blocks_without_looping() {
    let mut t = documented_tree();
    t.blocks[0].next_block = Some(0); // root's next is itself
    assert!(!t.traversal().1, "cycle must be reported");
    let mut t = documented_tree();
    t.blocks.push(BlockList::new(OffloadStateType::Tcp));
    assert!(!t.traversal().1, "unreachable block must be reported");
    let mut t = documented_tree();
    t.blocks[0].dependent_block_list = Some(1000);
    assert!(!t.traversal().1, "link out of range must be reported");
}

#[test]
fn poisoned_tree_counts_and_traps_late_access_c034() {
    let host = BlockListRef::new(documented_tree());
    let miniport_copy = host.clone();
    miniport_copy.write().blocks[0].status = NdisStatus::OFFLOAD_PARTIAL_SUCCESS;
    let seen = host.take_and_poison();
    assert_eq!(
        seen.blocks[0].status,
        NdisStatus::OFFLOAD_PARTIAL_SUCCESS,
        "host got the result"
    );
    assert!(host.is_poisoned());
    assert_eq!(host.violations(), 0);
    assert_eq!(host.references(), 2, "the miniport's stale copy is visible");
    // A late access by the miniport: counted, poisoned contents, and (debug) a panic.
    let late = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        miniport_copy.read().blocks[0].ndis_offload_handle
    }));
    assert_eq!(host.violations(), 1);
    if cfg!(debug_assertions) {
        assert!(late.is_err(), "debug builds trap the access");
    } else {
        assert_eq!(late.ok(), Some(POISON));
    }
}

#[test]
fn net_buffer_data_window_spans_mdls_and_advances() {
    let mut nb = NetBuffer {
        mdls: vec![
            Mdl {
                data: b"xxhello ".to_vec(),
            },
            Mdl {
                data: b"world".to_vec(),
            },
        ],
        data_offset: 2,
        data_length: 11,
    };
    assert_eq!(nb.data(), b"hello world");
    nb.advance_data_start(6);
    assert_eq!(nb.data(), b"world");
    nb.advance_data_start(100);
    assert_eq!((nb.data_length, nb.data()), (0, Vec::new()));
}

#[test]
fn state_structures_after_a_block_decode_with_the_abi_decoders() {
    use chimney_abi::{NeighborCached, NeighborConst, NeighborDelegated, QueriedState};
    use chimney_miniport::ndis::blocklist::decode_state;
    let mut dst = [0u8; 32];
    dst[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    let q = QueriedState::Neighbor {
        konst: Some(NeighborConst {
            dl_source_address: [0; 32],
            vlan_id: 7,
        }),
        cached: Some(NeighborCached {
            dl_destination_address: dst,
            host_reachability_delta: 1234,
        }),
        delegated: Some(NeighborDelegated {
            nic_reachability_delta: 99,
        }),
    };
    let mut bytes = Vec::new();
    q.emit(&mut bytes);
    assert_eq!(decode_state(OffloadStateType::Neighbor, &bytes), Some(q));
    // One byte short, or a Length field that lies: refused, not misread.
    assert_eq!(
        decode_state(OffloadStateType::Neighbor, &bytes[..bytes.len() - 1]),
        None
    );
    let mut lying = bytes.clone();
    lying[0] = 0x30;
    assert_eq!(decode_state(OffloadStateType::Neighbor, &lying), None);
}
