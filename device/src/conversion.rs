//! Conversion between chimney-abi's state objects (the ring's view, §2.4–§2.6) and
//! chimney-netstack's export structs (the engine's view). Both name the fields as the digest
//! does, so this is a field-for-field copy; the only shapes that differ are the path (an enum
//! by IP version in the ABI, `IpAddr`s in netstack) and the data, which travels beside the
//! ABI structures (initiate trailer / UPLOAD_DATA event, ring-abi.md §16.4).
//!
//! Used by the device at initiate (import) and terminate (export), and by the harness's host
//! stack to build initiate trees from a connection it exports.

use chimney_abi as abi;
use chimney_netstack as ns;
use std::net::IpAddr;

/// ABI neighbor + path + TCP (+ data) → one netstack connection export.
pub fn to_export(
    n: &abi::NeighborState,
    p: &abi::PathState,
    t: &abi::TcpState,
    data: &abi::TcpData,
) -> ns::ConnectionExport {
    let (src, dst): (IpAddr, IpAddr) = match p.konst {
        abi::PathConst::V4 {
            source,
            destination,
        } => (source.into(), destination.into()),
        abi::PathConst::V6 {
            source,
            destination,
        } => (source.into(), destination.into()),
    };
    let d = &t.delegated;
    ns::ConnectionExport {
        neighbor: ns::NeighborState {
            const_: ns::NeighborConst {
                dl_source_address: n.konst.dl_source_address,
                vlan_id: n.konst.vlan_id,
            },
            cached: ns::NeighborCached {
                dl_destination_address: n.cached.dl_destination_address,
                host_reachability_delta: n.cached.host_reachability_delta,
            },
            delegated: ns::NeighborDelegated {
                nic_reachability_delta: n.delegated.nic_reachability_delta,
            },
        },
        path: ns::PathState {
            const_: ns::PathConst {
                source_address: src,
                destination_address: dst,
            },
            cached: ns::PathCached {
                path_mtu: p.cached.path_mtu,
            },
        },
        tcp: ns::TcpOffloadState {
            const_: ns::TcpConst {
                flags: t.konst.flags,
                remote_port: t.konst.remote_port,
                local_port: t.konst.local_port,
                snd_wind_scale: t.konst.snd_wind_scale,
                rcv_wind_scale: t.konst.rcv_wind_scale,
                remote_mss: t.konst.remote_mss,
                hash_value: t.konst.hash_value,
            },
            cached: tcp_cached_to_ns(&t.cached),
            delegated: ns::TcpDelegated {
                state: state_to_ns(d.state),
                flags: d.flags,
                rcv_nxt: d.rcv_nxt,
                rcv_wnd: d.rcv_wnd,
                snd_una: d.snd_una,
                snd_nxt: d.snd_nxt,
                snd_max: d.snd_max,
                snd_wnd: d.snd_wnd,
                max_snd_wnd: d.max_snd_wnd,
                send_wl1: d.send_wl1,
                c_wnd: d.cwnd,
                ss_thresh: d.ssthresh,
                s_rtt: d.srtt,
                rtt_var: d.rttvar,
                ts_recent: d.ts_recent,
                ts_recent_age: d.ts_recent_age,
                ts_time: d.ts_time,
                total_rt: d.total_rt,
                dup_ack_count: d.dup_ack_count,
                snd_wnd_probe_count: d.snd_wnd_probe_count,
                keep_alive: ns::KeepAliveTimer {
                    probe_count: d.keepalive.count,
                    timeout_delta: d.keepalive.timeout_delta,
                },
                retransmit: ns::RetransmitTimer {
                    count: d.retransmit.count,
                    timeout_delta: d.retransmit.timeout_delta,
                },
                d_wnd: d.dwnd,
            },
            send_data: data.send.clone(),
            buffered_data: data.buffered.clone(),
        },
    }
}

pub fn tcp_cached_to_ns(c: &abi::TcpCached) -> ns::TcpCached {
    ns::TcpCached {
        flags: c.flags,
        initial_rcv_wnd: c.initial_rcv_wnd,
        rcv_indication_size: c.rcv_indication_size,
        ka_probe_count: c.ka_probe_count,
        ka_timeout: c.ka_timeout,
        ka_interval: c.ka_interval,
        max_rt: c.max_rt,
        flow_label: c.flow_label,
        ttl_or_hop_limit: c.ttl_or_hop_limit,
        tos_or_traffic_class: c.tos_or_traffic_class,
        user_priority: c.user_priority,
    }
}

pub fn tcp_cached_from_ns(c: &ns::TcpCached) -> abi::TcpCached {
    abi::TcpCached {
        flags: c.flags,
        initial_rcv_wnd: c.initial_rcv_wnd,
        rcv_indication_size: c.rcv_indication_size,
        ka_probe_count: c.ka_probe_count,
        ka_timeout: c.ka_timeout,
        ka_interval: c.ka_interval,
        max_rt: c.max_rt,
        flow_label: c.flow_label,
        ttl_or_hop_limit: c.ttl_or_hop_limit,
        tos_or_traffic_class: c.tos_or_traffic_class,
        user_priority: c.user_priority,
    }
}

fn state_to_ns(s: abi::TcpConnectionState) -> ns::TcpConnectionState {
    // Same numbering (TCP_OFFLOAD_CONNECTION_STATE) on both sides.
    ns::TcpConnectionState::from_u32(s as u32).unwrap_or(ns::TcpConnectionState::Closed)
}

fn state_from_ns(s: ns::TcpConnectionState) -> abi::TcpConnectionState {
    abi::TcpConnectionState::from_u32(s as u32).unwrap_or(abi::TcpConnectionState::Closed)
}

/// The delegated TCP variables of an export, as the ABI carries them (terminate, query).
/// Backlog sizes are what the device reports (C-079).
pub fn tcp_delegated_from_ns(
    d: &ns::TcpDelegated,
    send_backlog_size: u32,
    receive_backlog_size: u32,
) -> abi::TcpDelegated {
    abi::TcpDelegated {
        state: state_from_ns(d.state),
        flags: d.flags,
        rcv_nxt: d.rcv_nxt,
        rcv_wnd: d.rcv_wnd,
        snd_una: d.snd_una,
        snd_nxt: d.snd_nxt,
        snd_max: d.snd_max,
        snd_wnd: d.snd_wnd,
        max_snd_wnd: d.max_snd_wnd,
        send_wl1: d.send_wl1,
        cwnd: d.c_wnd,
        ssthresh: d.ss_thresh,
        srtt: d.s_rtt,
        rttvar: d.rtt_var,
        ts_recent: d.ts_recent,
        ts_recent_age: d.ts_recent_age,
        ts_time: d.ts_time,
        total_rt: d.total_rt,
        dup_ack_count: d.dup_ack_count,
        snd_wnd_probe_count: d.snd_wnd_probe_count,
        keepalive: abi::TcpTimer {
            count: d.keep_alive.probe_count,
            timeout_delta: d.keep_alive.timeout_delta,
        },
        retransmit: abi::TcpTimer {
            count: d.retransmit.count,
            timeout_delta: d.retransmit.timeout_delta,
        },
        send_backlog_size,
        receive_backlog_size,
        dwnd: d.d_wnd,
    }
}

/// A whole netstack export → ABI neighbor, path and TCP state objects plus the data (what
/// the host stack puts in an initiate tree and its data trailer).
pub fn from_export(
    e: &ns::ConnectionExport,
) -> (
    abi::NeighborState,
    abi::PathState,
    abi::TcpState,
    abi::TcpData,
) {
    let n = abi::NeighborState {
        konst: abi::NeighborConst {
            dl_source_address: e.neighbor.const_.dl_source_address,
            vlan_id: e.neighbor.const_.vlan_id,
        },
        cached: abi::NeighborCached {
            dl_destination_address: e.neighbor.cached.dl_destination_address,
            host_reachability_delta: e.neighbor.cached.host_reachability_delta,
        },
        delegated: abi::NeighborDelegated {
            nic_reachability_delta: e.neighbor.delegated.nic_reachability_delta,
        },
    };
    let konst = match (
        e.path.const_.source_address,
        e.path.const_.destination_address,
    ) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => abi::PathConst::V4 {
            source,
            destination,
        },
        (IpAddr::V6(source), IpAddr::V6(destination)) => abi::PathConst::V6 {
            source,
            destination,
        },
        // netstack never exports mixed families; map the pair onto IPv6 rather than panic.
        (s, d) => abi::PathConst::V6 {
            source: to_v6(s),
            destination: to_v6(d),
        },
    };
    let p = abi::PathState {
        konst,
        cached: abi::PathCached {
            path_mtu: e.path.cached.path_mtu,
        },
        delegated: abi::PathDelegated,
    };
    let c = &e.tcp.const_;
    let t = abi::TcpState {
        konst: abi::TcpConst {
            flags: c.flags,
            remote_port: c.remote_port,
            local_port: c.local_port,
            snd_wind_scale: c.snd_wind_scale,
            rcv_wind_scale: c.rcv_wind_scale,
            remote_mss: c.remote_mss,
            hash_value: c.hash_value,
        },
        cached: tcp_cached_from_ns(&e.tcp.cached),
        delegated: tcp_delegated_from_ns(
            &e.tcp.delegated,
            abi::state::BACKLOG_UNSUPPORTED,
            abi::state::BACKLOG_UNSUPPORTED,
        ),
    };
    let data = abi::TcpData {
        block: 0,
        send: e.tcp.send_data.clone(),
        buffered: e.tcp.buffered_data.clone(),
    };
    (n, p, t, data)
}

fn to_v6(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
