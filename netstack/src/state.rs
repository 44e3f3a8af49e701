//! Export/import format of a connection: netstack's own plain mirror of the chimney state
//! objects (spec digest §2.4–2.6), field for field and named as the digest names them, so the
//! ring ABI (chimney-abi) can map them 1:1 without netstack depending on it.
//!
//! Units and encodings are those of the chimney (C-014: timers in ticks of the engine's
//! `TicksPerSecond`): `SRtt` is carried as 8 × SRTT and `RttVar` as 4 × RTTVAR (§2.6), and a
//! `TimeoutDelta` of [`TIMER_STOPPED`] (0xFFFFFFFF, "−1") means the timer is not running (§3.13).

use std::net::IpAddr;

/// `TimeoutDelta` value of a timer that is not running (§3.13 handoff values).
pub const TIMER_STOPPED: u32 = 0xFFFF_FFFF;

/// `NEIGHBOR_OFFLOAD_STATE_CONST` (§2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborConst {
    /// Source MAC; all zero = the interface's MAC. The chimney field is 32 bytes; a MAC uses
    /// the first 6.
    pub dl_source_address: [u8; 32],
    /// 802.1Q VLAN ID (12 bits); 0 = untagged / not significant (§3.16).
    pub vlan_id: u16,
}

/// `NEIGHBOR_OFFLOAD_STATE_CACHED` (§2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborCached {
    /// MAC of the next hop (first 6 of 32 bytes).
    pub dl_destination_address: [u8; 32],
    /// HostReachabilityDelta, ticks.
    pub host_reachability_delta: u32,
}

/// `NEIGHBOR_OFFLOAD_STATE_DELEGATED` (§2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborDelegated {
    /// NicReachabilityDelta, ticks: now − NRD = last time forward reachability was confirmed.
    pub nic_reachability_delta: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborState {
    pub const_: NeighborConst,
    pub cached: NeighborCached,
    pub delegated: NeighborDelegated,
}

/// `PATH_OFFLOAD_STATE_CONST` (§2.5). The IP version follows from the addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathConst {
    pub source_address: IpAddr,
    pub destination_address: IpAddr,
}

/// `PATH_OFFLOAD_STATE_CACHED` (§2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCached {
    pub path_mtu: u32,
}

/// Path state; `PATH_OFFLOAD_STATE_DELEGATED` is header-only, so there is no delegated part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    pub const_: PathConst,
    pub cached: PathCached,
}

/// `TCP_OFFLOAD_STATE_CONST` flags (§2.8).
pub const TCP_FLAG_TIMESTAMP_ENABLED: u16 = 0x01;
pub const TCP_FLAG_SACK_ENABLED: u16 = 0x02;
pub const TCP_FLAG_WINDOW_SCALING_ENABLED: u16 = 0x04;

/// `TCP_OFFLOAD_STATE_CONST` (§2.6). Ports in host byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConst {
    pub flags: u16,
    pub remote_port: u16,
    pub local_port: u16,
    /// 4 bits.
    pub snd_wind_scale: u8,
    /// 4 bits.
    pub rcv_wind_scale: u8,
    pub remote_mss: u16,
    pub hash_value: u32,
}

/// `TCP_OFFLOAD_STATE_CACHED` flags (§2.8).
pub const TCP_FLAG_KEEP_ALIVE_ENABLED: u16 = 0x01;
pub const TCP_FLAG_NAGLING_ENABLED: u16 = 0x02;
pub const TCP_FLAG_KEEP_ALIVE_RESTART: u16 = 0x04;
pub const TCP_FLAG_MAX_RT_RESTART: u16 = 0x08;
pub const TCP_FLAG_UPDATE_RCV_WND: u16 = 0x10;

/// `TCP_OFFLOAD_STATE_CACHED` (§2.6). Timer values in ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCached {
    pub flags: u16,
    pub initial_rcv_wnd: u32,
    pub rcv_indication_size: u32,
    pub ka_probe_count: u8,
    pub ka_timeout: u32,
    pub ka_interval: u32,
    /// 0 = use the retransmission count limit; 0xFFFFFFFF = unlimited.
    pub max_rt: u32,
    /// 20 bits.
    pub flow_label: u32,
    pub ttl_or_hop_limit: u8,
    pub tos_or_traffic_class: u8,
    /// 3 bits.
    pub user_priority: u8,
}

/// `TCP_OFFLOAD_CONNECTION_STATE` (§2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TcpConnectionState {
    Closed = 0,
    Listen = 1,
    SynSent = 2,
    SynRcvd = 3,
    Established = 4,
    FinWait1 = 5,
    FinWait2 = 6,
    CloseWait = 7,
    Closing = 8,
    LastAck = 9,
    TimeWait = 10,
}

impl TcpConnectionState {
    pub fn from_u32(v: u32) -> Option<Self> {
        use TcpConnectionState::*;
        Some(match v {
            0 => Closed,
            1 => Listen,
            2 => SynSent,
            3 => SynRcvd,
            4 => Established,
            5 => FinWait1,
            6 => FinWait2,
            7 => CloseWait,
            8 => Closing,
            9 => LastAck,
            10 => TimeWait,
            _ => return None,
        })
    }
}

/// `KeepAlive` sub-structure of the delegated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveTimer {
    pub probe_count: u8,
    /// Ticks to the next keepalive timeout, or [`TIMER_STOPPED`].
    pub timeout_delta: u32,
}

/// `Retransmit` sub-structure of the delegated state (also persist and FIN_WAIT_2, §3.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitTimer {
    pub count: u8,
    /// Ticks to the next retransmit/persist/FIN_WAIT_2 timeout, or [`TIMER_STOPPED`].
    pub timeout_delta: u32,
}

/// `TCP_OFFLOAD_STATE_DELEGATED` (§2.6). The NBL-chain union (SendDataHead/Tail,
/// BufferedData) travels as [`TcpOffloadState::send_data`] / [`TcpOffloadState::buffered_data`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpDelegated {
    pub state: TcpConnectionState,
    /// Reserved for system use; carried unchanged.
    pub flags: u16,
    pub rcv_nxt: u32,
    pub rcv_wnd: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub snd_max: u32,
    pub snd_wnd: u32,
    pub max_snd_wnd: u32,
    pub send_wl1: u32,
    pub c_wnd: u32,
    pub ss_thresh: u32,
    /// 8 × SRTT, ticks.
    pub s_rtt: u16,
    /// 4 × RTTVAR, ticks.
    pub rtt_var: u16,
    pub ts_recent: u32,
    /// Ticks since TsRecent was set.
    pub ts_recent_age: u32,
    /// Current adjusted timestamp clock of the side giving up the connection (§3.14).
    pub ts_time: u32,
    /// Ticks spent retransmitting the current segment.
    pub total_rt: u32,
    pub dup_ack_count: u8,
    pub snd_wnd_probe_count: u8,
    pub keep_alive: KeepAliveTimer,
    pub retransmit: RetransmitTimer,
    /// NDIS 6.1 `DWnd`; undocumented, carried unchanged.
    pub d_wnd: u32,
}

/// A whole TCP connection state object plus its data (§2.6, §3.1.5, §3.5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOffloadState {
    pub const_: TcpConst,
    pub cached: TcpCached,
    pub delegated: TcpDelegated,
    /// Send data from SndUna on: unacknowledged, then unsent bytes. A FIN is not part of it.
    pub send_data: Vec<u8>,
    /// Received in-order data not yet delivered to the application (ends at RcvNxt).
    pub buffered_data: Vec<u8>,
}

/// Everything one connection needs to continue elsewhere: the three layers of §2.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionExport {
    pub neighbor: NeighborState,
    pub path: PathState,
    pub tcp: TcpOffloadState,
}
