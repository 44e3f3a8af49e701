//! Deterministic offload fixtures: a neighbor, an IPv4 and an IPv6 path under it, and TCP
//! objects alternating between the two paths, every field derived from a seed so a failing
//! run can be replayed. Plus the trees that reference them for the five operations.

use std::net::{Ipv4Addr, Ipv6Addr};

use chimney_abi::{
    Block, DeviceHandle, InitiateBlock, NeighborCached, NeighborConst, NeighborDelegated,
    NeighborState, ObjectState, OffloadStateType, PathCached, PathConst, PathDelegated, PathState,
    RefBlock, TcpCached, TcpConnectionState, TcpConst, TcpDelegated, TcpState, TcpTimer,
    TerminateBlock, Tree, TreeBuilder, BACKLOG_UNSUPPORTED, TCP_FLAG_KEEP_ALIVE_ENABLED,
    TCP_FLAG_NAGLING_ENABLED, TCP_FLAG_SACK_ENABLED, TCP_FLAG_TIMESTAMP_ENABLED,
    TCP_FLAG_WINDOW_SCALING_ENABLED, TIMEOUT_NOT_RUNNING,
};
use chimney_wire::{GUEST_IPV4, GUEST_IPV6, PEER_IPV4, PEER_IPV6};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which object of an [`OffloadSet`] a tree block stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectRef {
    Neighbor,
    Path(usize),
    Tcp(usize),
}

/// One neighbor → paths → TCP objects, as the host would offload them.
#[derive(Debug, Clone)]
pub struct OffloadSet {
    pub seed: u64,
    pub neighbor: NeighborState,
    pub paths: Vec<PathState>,
    /// (index of the path it depends on, state).
    pub tcp: Vec<(usize, TcpState)>,
}

/// host_context values: distinct per object so events and completions can be traced.
pub fn host_context(r: ObjectRef) -> u64 {
    match r {
        ObjectRef::Neighbor => 0x1000_0000,
        ObjectRef::Path(i) => 0x2000_0000 + i as u64,
        ObjectRef::Tcp(i) => 0x3000_0000 + i as u64,
    }
}

/// Largest `tcp_count` with distinct local ports per path.
pub const MAX_TCP_OBJECTS: usize = 2 * (65_535 - 1024);

impl OffloadSet {
    /// 1 neighbor, an IPv4 and an IPv6 path, `tcp_count` connections (even ones on the
    /// IPv4 path, odd ones on the IPv6 path), all values from `seed`. At most
    /// [`MAX_TCP_OBJECTS`] (local ports stay unique per path).
    pub fn foundation(seed: u64, tcp_count: usize, peer_mac: [u8; 6]) -> OffloadSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut dl_dst = [0u8; 32];
        dl_dst[..6].copy_from_slice(&peer_mac);
        let neighbor = NeighborState {
            konst: NeighborConst {
                dl_source_address: [0; 32], // interface MAC (C-047)
                vlan_id: 0,
            },
            cached: NeighborCached {
                dl_destination_address: dl_dst,
                host_reachability_delta: rng.gen_range(0..10_000),
            },
            delegated: NeighborDelegated {
                nic_reachability_delta: rng.gen_range(0..10_000),
            },
        };
        let paths = vec![
            PathState {
                konst: PathConst::V4 {
                    source: GUEST_IPV4,
                    destination: PEER_IPV4,
                },
                cached: PathCached { path_mtu: 1500 },
                delegated: PathDelegated,
            },
            PathState {
                konst: PathConst::V6 {
                    source: GUEST_IPV6,
                    destination: PEER_IPV6,
                },
                cached: PathCached { path_mtu: 1500 },
                delegated: PathDelegated,
            },
        ];
        let tcp = (0..tcp_count.min(MAX_TCP_OBJECTS))
            .map(|i| (i % 2, random_tcp(&mut rng, i, i % 2 == 1)))
            .collect();
        OffloadSet {
            seed,
            neighbor,
            paths,
            tcp,
        }
    }

    pub fn object(&self, r: ObjectRef) -> ObjectState {
        match r {
            ObjectRef::Neighbor => ObjectState::Neighbor(self.neighbor),
            ObjectRef::Path(i) => ObjectState::Path(self.paths[i]),
            ObjectRef::Tcp(i) => ObjectState::Tcp(self.tcp[i].1),
        }
    }

    /// Full state type of an object (`Neighbor`, `Ip4`/`Ip6`, `Tcp`).
    pub fn full_type(&self, r: ObjectRef) -> OffloadStateType {
        self.object(r).state_type()
    }

    /// The initiate tree: neighbor root → paths → TCP objects, and what each block is.
    pub fn initiate_tree(&self) -> (Tree<InitiateBlock>, Vec<ObjectRef>) {
        let mut b = TreeBuilder::new_object(
            host_context(ObjectRef::Neighbor),
            self.object(ObjectRef::Neighbor),
        );
        let mut refs = vec![ObjectRef::Neighbor];
        let mut path_blocks = Vec::new();
        for i in 0..self.paths.len() {
            let r = ObjectRef::Path(i);
            path_blocks.push(b.new_dependent(0, host_context(r), self.object(r)));
            refs.push(r);
        }
        for (i, (p, _)) in self.tcp.iter().enumerate() {
            let r = ObjectRef::Tcp(i);
            b.new_dependent(path_blocks[*p], host_context(r), self.object(r));
            refs.push(r);
        }
        (b.build(), refs)
    }
}

fn random_tcp(rng: &mut ChaCha8Rng, i: usize, v6: bool) -> TcpState {
    let isn_snd: u32 = rng.gen();
    let isn_rcv: u32 = rng.gen();
    let in_flight: u32 = rng.gen_range(0..65_536);
    TcpState {
        konst: TcpConst {
            flags: TCP_FLAG_TIMESTAMP_ENABLED
                | TCP_FLAG_SACK_ENABLED
                | TCP_FLAG_WINDOW_SCALING_ENABLED,
            remote_port: 5001,
            // Connections alternate between the two paths: i / 2 is unique per path.
            local_port: 1024 + (i / 2) as u16,
            snd_wind_scale: rng.gen_range(0..=14),
            rcv_wind_scale: rng.gen_range(0..=14),
            remote_mss: if v6 { 1440 } else { 1460 },
            hash_value: rng.gen(),
        },
        cached: TcpCached {
            flags: TCP_FLAG_KEEP_ALIVE_ENABLED | TCP_FLAG_NAGLING_ENABLED,
            initial_rcv_wnd: 65_535,
            rcv_indication_size: rng.gen_range(0..65_536),
            ka_probe_count: 10,
            ka_timeout: 7_200_000,
            ka_interval: 1_000,
            max_rt: rng.gen_range(1..60_000),
            flow_label: if v6 { rng.gen_range(0..1 << 20) } else { 0 },
            ttl_or_hop_limit: 64,
            tos_or_traffic_class: 0,
            user_priority: 0,
        },
        delegated: TcpDelegated {
            state: TcpConnectionState::Established,
            flags: 0,
            rcv_nxt: isn_rcv,
            rcv_wnd: 65_535,
            snd_una: isn_snd,
            snd_nxt: isn_snd.wrapping_add(in_flight),
            snd_max: isn_snd.wrapping_add(in_flight),
            snd_wnd: rng.gen_range(1..1 << 20),
            max_snd_wnd: 1 << 20,
            send_wl1: isn_rcv,
            cwnd: rng.gen_range(1460..1 << 20),
            ssthresh: 0xFFFF,
            srtt: rng.gen_range(8..800),
            rttvar: rng.gen_range(4..400),
            ts_recent: rng.gen(),
            ts_recent_age: rng.gen_range(0..1000),
            ts_time: rng.gen(),
            total_rt: 0,
            dup_ack_count: 0,
            snd_wnd_probe_count: 0,
            keepalive: TcpTimer {
                count: 0,
                timeout_delta: rng.gen_range(0..7_200_000),
            },
            retransmit: TcpTimer {
                count: 0,
                timeout_delta: TIMEOUT_NOT_RUNNING,
            },
            send_backlog_size: BACKLOG_UNSUPPORTED,
            receive_backlog_size: BACKLOG_UNSUPPORTED,
            dwnd: 0,
        },
    }
}

/// A tree with the same shape as the initiate tree, referencing the offloaded objects by
/// `handles[i]` (block i), with a per-block body from `body`.
pub fn reference_tree<B>(
    initiate: &Tree<InitiateBlock>,
    handles: &[DeviceHandle],
    mut body: impl FnMut(usize, DeviceHandle) -> (OffloadStateType, B),
) -> Tree<B> {
    Tree {
        blocks: initiate
            .blocks
            .iter()
            .zip(handles)
            .enumerate()
            .map(|(i, (b, h))| {
                let (state_type, body) = body(i, *h);
                Block {
                    state_type,
                    next: b.next,
                    dependent: b.dependent,
                    host_context: b.host_context,
                    body,
                }
            })
            .collect(),
    }
}

/// Query tree over everything, asking for the full state of each object.
pub fn query_all(initiate: &Tree<InitiateBlock>, handles: &[DeviceHandle]) -> Tree<RefBlock> {
    reference_tree(initiate, handles, |i, h| {
        (initiate.blocks[i].state_type, RefBlock::Object(h))
    })
}

/// Terminate tree over everything, asking for delegated state back.
pub fn terminate_all(
    initiate: &Tree<InitiateBlock>,
    handles: &[DeviceHandle],
) -> Tree<TerminateBlock> {
    reference_tree(initiate, handles, |i, h| {
        (
            initiate.blocks[i].state_type,
            TerminateBlock::Object {
                handle: h,
                return_delegated: true,
            },
        )
    })
}

/// Addresses are fixed by the test topology; re-exported for callers building frames.
pub const ADDRESSES: (Ipv4Addr, Ipv6Addr) = (GUEST_IPV4, GUEST_IPV6);
