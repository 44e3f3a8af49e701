//! Property: export → import → export is the identity over generated chimney TCP states
//! (spec digest §2.4–2.6: every field, SRtt×8 / RttVar×4, TimeoutDelta −1 for stopped timers,
//! ticks per C-014), for every allowed TicksPerSecond.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chimney_netstack::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

fn timer() -> impl Strategy<Value = u32> {
    prop_oneof![Just(TIMER_STOPPED), 0u32..10_000_000]
}

fn state() -> impl Strategy<Value = TcpConnectionState> {
    use TcpConnectionState::*;
    prop_oneof![
        Just(Established),
        Just(FinWait1),
        Just(FinWait2),
        Just(CloseWait),
        Just(Closing),
        Just(LastAck)
    ]
}

prop_compose! {
    fn tcp_state()(
        st in state(),
        flags in 0u16..8,
        ports in (1u16.., 1u16..),
        scales in (0u8..=14, 0u8..=14),
        remote_mss in 64u16..9000,
        hash_value in any::<u32>(),
        cached_flags in 0u16..32,
        rcv_wnd_init in 0u32..(1 << 22),
        ka in (any::<u8>(), any::<u32>(), any::<u32>(), any::<u32>()),
        ip in (0u32..(1 << 20), any::<u8>(), any::<u8>(), 0u8..8),
        send_len in 0usize..3000,
        buffered_len in 0usize..3000,
        snd_una in any::<u32>(),
        inflight_frac in 0.0f64..=1.0,
        nxt_frac in 0.0f64..=1.0,
        rcv in (any::<u32>(), 0u32..(1 << 24)),
        wnds in (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        rtt in (any::<u16>(), any::<u16>()),
        // Ages (TsRecentAge, TotalRT) cannot predate the engine clock's origin.
        ts in (any::<u32>(), 0u32..40_000_000, any::<u32>(), 0u32..40_000_000),
        counts in (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
        timers in (timer(), timer()),
        extra in (any::<u16>(), any::<u32>()),
        fill in any::<u8>(),
    ) -> TcpOffloadState {
        use TcpConnectionState::*;
        let send_len = if st == FinWait2 { 0 } else { send_len };
        let fin = u32::from(matches!(st, FinWait1 | Closing | LastAck));
        let max_inflight = send_len as u32 + fin;
        let inflight = (f64::from(max_inflight) * inflight_frac) as u32;
        let nxt = (f64::from(inflight) * nxt_frac) as u32;
        TcpOffloadState {
            const_: TcpConst {
                flags,
                remote_port: ports.0,
                local_port: ports.1,
                snd_wind_scale: scales.0,
                rcv_wind_scale: scales.1,
                remote_mss,
                hash_value,
            },
            cached: TcpCached {
                flags: cached_flags,
                initial_rcv_wnd: rcv_wnd_init,
                rcv_indication_size: extra.1,
                ka_probe_count: ka.0,
                ka_timeout: ka.1,
                ka_interval: ka.2,
                max_rt: ka.3,
                flow_label: ip.0,
                ttl_or_hop_limit: ip.1,
                tos_or_traffic_class: ip.2,
                user_priority: ip.3,
            },
            delegated: TcpDelegated {
                state: st,
                flags: extra.0,
                rcv_nxt: rcv.0,
                rcv_wnd: rcv.1,
                snd_una,
                snd_nxt: snd_una.wrapping_add(nxt),
                snd_max: snd_una.wrapping_add(inflight),
                snd_wnd: wnds.0,
                max_snd_wnd: wnds.1,
                send_wl1: wnds.2,
                c_wnd: wnds.3,
                ss_thresh: wnds.4,
                s_rtt: rtt.0,
                rtt_var: rtt.1,
                ts_recent: ts.0,
                ts_recent_age: ts.1,
                ts_time: ts.2,
                total_rt: ts.3,
                dup_ack_count: counts.0,
                snd_wnd_probe_count: counts.1,
                keep_alive: KeepAliveTimer { probe_count: counts.2, timeout_delta: timers.0 },
                retransmit: RetransmitTimer { count: counts.3, timeout_delta: timers.1 },
                d_wnd: extra.1 ^ 0x5555,
            },
            send_data: (0..send_len).map(|i| (i as u8).wrapping_mul(31) ^ fill).collect(),
            buffered_data: (0..buffered_len).map(|i| (i as u8).wrapping_add(fill)).collect(),
        }
    }
}

fn export_of(
    tps: u32,
    v6: bool,
    now_us: u64,
    tcp: TcpOffloadState,
    mac: [u8; 6],
    nrd: u32,
    mtu: u32,
) -> ConnectionExport {
    let mut src = [0u8; 32];
    src[..6].copy_from_slice(&MAC);
    let mut dst = [0u8; 32];
    dst[..6].copy_from_slice(&mac);
    let (s, d): (IpAddr, IpAddr) = if v6 {
        (
            V6.into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        )
    } else {
        (V4.into(), Ipv4Addr::new(192, 0, 2, 1).into())
    };
    let _ = (tps, now_us);
    ConnectionExport {
        neighbor: NeighborState {
            const_: NeighborConst {
                dl_source_address: src,
                vlan_id: 0,
            },
            cached: NeighborCached {
                dl_destination_address: dst,
                host_reachability_delta: nrd,
            },
            delegated: NeighborDelegated {
                nic_reachability_delta: nrd,
            },
        },
        path: PathState {
            const_: PathConst {
                source_address: s,
                destination_address: d,
            },
            cached: PathCached { path_mtu: mtu },
        },
        tcp,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn export_import_export_is_identity(
        tcp in tcp_state(),
        tps in prop_oneof![Just(10u32), Just(100), Just(1000)],
        v6 in any::<bool>(),
        // Far from the origin, so ages and TotalRT up to 2^32 ticks fit before "now".
        now_s in 5_000_000u64..6_000_000,
        mac in any::<[u8; 6]>().prop_filter("non-zero MAC", |m| *m != [0; 6]),
        nrd in 0u32..1_000_000,
        mtu in 1280u32..9000,
    ) {
        let now = Instant::from_micros(now_s * 1_000_000);
        let mut cfg = EngineConfig::new(MAC, Some(V4), Some(V6));
        cfg.ticks_per_second = tps;
        let want = export_of(tps, v6, now.micros(), tcp, mac, nrd, mtu);
        let mut e = Engine::new(cfg, now).expect("engine");
        let h = e.import(now, &want).expect("import of a valid state");
        let got = e.export(now, h).expect("export");
        prop_assert_eq!(&got.tcp.const_, &want.tcp.const_);
        prop_assert_eq!(&got.tcp.cached, &want.tcp.cached);
        prop_assert_eq!(&got.tcp.delegated, &want.tcp.delegated);
        prop_assert_eq!(&got.tcp.send_data, &want.tcp.send_data);
        prop_assert_eq!(&got.tcp.buffered_data, &want.tcp.buffered_data);
        prop_assert_eq!(&got.path, &want.path);
        prop_assert_eq!(&got.neighbor, &want.neighbor);
    }
}

#[test]
fn import_refuses_invalid_states_naming_the_field() {
    let now = Instant::from_micros(10_000_000_000);
    let mut e = Engine::new(EngineConfig::new(MAC, Some(V4), Some(V6)), now).expect("engine");
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let tcp = tcp_state().new_tree(&mut runner).expect("tree").current();
    let base = export_of(1000, false, 0, tcp, [2, 0, 0, 0, 0, 1], 0, 1500);

    let mut bad = base.clone();
    bad.tcp.delegated.state = TcpConnectionState::SynSent;
    assert!(matches!(
        e.import(now, &bad),
        Err(EngineError::Import {
            field: "TcpDelegated.State",
            ..
        })
    ));

    let mut bad = base.clone();
    bad.tcp.delegated.snd_nxt = bad.tcp.delegated.snd_max.wrapping_add(1);
    assert!(matches!(
        e.import(now, &bad),
        Err(EngineError::Import {
            field: "TcpDelegated.SndNxt",
            ..
        })
    ));

    let mut bad = base.clone();
    bad.tcp.const_.snd_wind_scale = 15;
    assert!(matches!(
        e.import(now, &bad),
        Err(EngineError::Import { .. })
    ));

    let mut bad = base.clone();
    bad.tcp.delegated.snd_max = bad
        .tcp
        .delegated
        .snd_una
        .wrapping_add(bad.tcp.send_data.len() as u32 + 2);
    bad.tcp.delegated.snd_nxt = bad.tcp.delegated.snd_una;
    assert!(matches!(
        e.import(now, &bad),
        Err(EngineError::Import {
            field: "SendData",
            ..
        })
    ));

    let mut bad = base.clone();
    bad.path.const_.source_address = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
    assert!(matches!(
        e.import(now, &bad),
        Err(EngineError::Import {
            field: "Path.SourceAddress",
            ..
        })
    ));
}
