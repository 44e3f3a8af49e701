//! Malformed frames from the wire never panic (a proptest corpus run by `cargo test`):
//! random bytes, truncated and bit-flipped valid frames, bad length fields, bad checksums and
//! TCP option soup, through the parser and through a live engine (listener + an imported,
//! established connection).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chimney_netstack::frame::{self, ChecksumMode, Csum, IpParams, L2};
use chimney_netstack::tcp::tcb::OutSegment;
use chimney_netstack::*;
use proptest::prelude::*;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

fn engine_with_conn(v6: bool) -> (Engine, u32, u32) {
    let now = Instant::from_micros(1_000_000_000);
    let mut e = Engine::new(EngineConfig::new(MAC, Some(V4), Some(V6)), now).expect("engine");
    e.listen(80);
    let (s, d): (IpAddr, IpAddr) = if v6 {
        (
            V6.into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        )
    } else {
        (V4.into(), Ipv4Addr::new(192, 0, 2, 1).into())
    };
    let mut dst = [0u8; 32];
    dst[..6].copy_from_slice(&PEER_MAC);
    let st = ConnectionExport {
        neighbor: NeighborState {
            const_: NeighborConst {
                dl_source_address: [0; 32],
                vlan_id: 0,
            },
            cached: NeighborCached {
                dl_destination_address: dst,
                host_reachability_delta: 0,
            },
            delegated: NeighborDelegated {
                nic_reachability_delta: 0,
            },
        },
        path: PathState {
            const_: PathConst {
                source_address: s,
                destination_address: d,
            },
            cached: PathCached { path_mtu: 1500 },
        },
        tcp: TcpOffloadState {
            const_: TcpConst {
                flags: TCP_FLAG_TIMESTAMP_ENABLED
                    | TCP_FLAG_SACK_ENABLED
                    | TCP_FLAG_WINDOW_SCALING_ENABLED,
                remote_port: 4000,
                local_port: 5000,
                snd_wind_scale: 7,
                rcv_wind_scale: 7,
                remote_mss: 1460,
                hash_value: 0,
            },
            cached: TcpCached {
                flags: TCP_FLAG_NAGLING_ENABLED,
                initial_rcv_wnd: 65536,
                rcv_indication_size: 0,
                ka_probe_count: 3,
                ka_timeout: 1000,
                ka_interval: 100,
                max_rt: 0,
                flow_label: 0,
                ttl_or_hop_limit: 64,
                tos_or_traffic_class: 0,
                user_priority: 0,
            },
            delegated: TcpDelegated {
                state: TcpConnectionState::Established,
                flags: 0,
                rcv_nxt: 1000,
                rcv_wnd: 65536,
                snd_una: 5000,
                snd_nxt: 5100,
                snd_max: 5100,
                snd_wnd: 65536,
                max_snd_wnd: 65536,
                send_wl1: 1000,
                c_wnd: 14600,
                ss_thresh: u32::MAX,
                s_rtt: 8,
                rtt_var: 4,
                ts_recent: 1,
                ts_recent_age: 0,
                ts_time: 77,
                total_rt: 0,
                dup_ack_count: 0,
                snd_wnd_probe_count: 0,
                keep_alive: KeepAliveTimer {
                    probe_count: 0,
                    timeout_delta: TIMER_STOPPED,
                },
                retransmit: RetransmitTimer {
                    count: 0,
                    timeout_delta: 20,
                },
                d_wnd: 0,
            },
            send_data: vec![9; 300],
            buffered_data: vec![],
        },
    };
    e.import(now, &st).expect("import");
    (e, 1000, 5100)
}

/// A valid TCP frame from the peer to the imported connection.
fn valid_frame(v6: bool, seq: u32, ack: u32, payload: &[u8], sack: bool) -> Vec<u8> {
    let (s, d): (IpAddr, IpAddr) = if v6 {
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            V6.into(),
        )
    } else {
        (Ipv4Addr::new(192, 0, 2, 1).into(), V4.into())
    };
    let seg = OutSegment {
        seq,
        ack: Some(ack),
        window: 512,
        ts: Some((5, 77)),
        sack: if sack {
            [Some((ack, ack + 10)), None, None]
        } else {
            [None; 3]
        },
        data_len: payload.len(),
        ..OutSegment::default()
    };
    let mut buf = vec![0u8; 200 + payload.len()];
    let (len, _) = frame::emit_tcp(
        &mut buf,
        &L2 {
            src: PEER_MAC,
            dst: MAC,
            vlan_tci: None,
        },
        (s, 4000),
        (d, 5000),
        &IpParams {
            ttl: 64,
            tos: 0,
            flow_label: 0,
            ident: 0x8001,
        },
        &seg,
        (payload, &[]),
        ChecksumMode::Full,
    );
    buf.truncate(len);
    buf
}

fn feed(v6: bool, f: &[u8]) {
    let _ = frame::parse_frame(f, true);
    let _ = frame::parse_frame(f, false);
    let (mut e, _, _) = engine_with_conn(v6);
    let now = Instant::from_micros(1_000_001_000);
    let _ = e.handle_frame(now, f);
    let _ = e.handle_frame_with(now, f, false);
    while e.poll_transmit(now).is_some() {}
    e.handle_timeout(Instant::from_micros(1_010_000_000));
    while e.poll_transmit(now).is_some() {}
}

/// Recompute IPv4 header and TCP checksums so a mutated frame reaches the TCP option parser.
fn fix_checksums_v4(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if ihl < 20 || f.len() < 14 + ihl + 20 {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let mut c = Csum::default();
    c.add(&f[14..14 + ihl]);
    let cs = !c.folded();
    f[24..26].copy_from_slice(&cs.to_be_bytes());
    let l4 = 14 + ihl;
    let tcp_len = f.len() - l4;
    f[l4 + 16] = 0;
    f[l4 + 17] = 0;
    let mut c = Csum::default();
    c.add(&f[26..34]);
    c.add(&[0, 6]);
    c.add(&(tcp_len as u16).to_be_bytes());
    c.add(&f[l4..]);
    let cs = !c.folded();
    f[l4 + 16..l4 + 18].copy_from_slice(&cs.to_be_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), v6 in any::<bool>()) {
        feed(v6, &bytes);
    }

    #[test]
    fn truncated_valid_frames_are_refused_not_panicked(
        v6 in any::<bool>(), cut in 0usize..200, payload in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let f = valid_frame(v6, 1000, 5100, &payload, true);
        let cut = cut.min(f.len());
        if cut < f.len() {
            // A cut frame never parses as TCP with the full payload.
            if let Ok(p) = frame::parse_frame(&f[..cut], true) {
                if let frame::Packet::Tcp { seg, .. } = p.packet {
                    prop_assert!(seg.payload.len() < payload.len() || payload.is_empty());
                }
            }
        }
        feed(v6, &f[..cut]);
    }

    #[test]
    fn bit_flips_are_caught_by_checksums_or_harmless(
        v6 in any::<bool>(), flips in proptest::collection::vec((0usize..400, 0u8..8), 1..4),
        payload in proptest::collection::vec(any::<u8>(), 1..100),
    ) {
        let mut f = valid_frame(v6, 1000, 5100, &payload, false);
        let n = f.len();
        for (i, b) in &flips {
            let i = 14 + i % (n - 14);
            f[i] ^= 1 << b;
        }
        feed(v6, &f);
    }

    #[test]
    fn tcp_option_soup_and_bad_lengths_never_panic(
        opts in proptest::collection::vec(any::<u8>(), 0..40),
        doff in 0u8..16, total_len in any::<u16>(), fix_len in any::<bool>(),
    ) {
        let mut f = valid_frame(false, 1000, 5100, b"data", true);
        // Replace the options area with arbitrary bytes and a chosen data offset.
        let l4 = 34;
        let mut opts = opts;
        while opts.len() % 4 != 0 { opts.push(1); }
        let payload = f[l4 + usize::from(f[l4 + 12] >> 4) * 4..].to_vec();
        f.truncate(l4 + 20);
        f.extend_from_slice(&opts);
        f.extend_from_slice(&payload);
        f[l4 + 12] = doff << 4;
        let ip_len = if fix_len { (f.len() - 14) as u16 } else { total_len };
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        fix_checksums_v4(&mut f);
        feed(false, &f);
    }
}

#[test]
fn checksum_errors_are_named() {
    let mut f = valid_frame(false, 1000, 5100, b"abc", false);
    let n = f.len();
    f[n - 1] ^= 0xff;
    assert_eq!(
        frame::parse_frame(&f, true).err(),
        Some(FrameError::TcpChecksum)
    );
    let mut f = valid_frame(false, 1000, 5100, b"abc", false);
    f[22] ^= 1; // TTL
    assert_eq!(
        frame::parse_frame(&f, true).err(),
        Some(FrameError::Ipv4Checksum)
    );
    assert_eq!(
        frame::parse_frame(&f[..10], true).err(),
        Some(FrameError::EthernetTruncated { len: 10 })
    );
}
