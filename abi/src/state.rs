//! The offload state objects (digest §2.3–§2.6): neighbor, path and TCP, each split into
//! const, cached and delegated structures. The split is the ownership rule (DESIGN.md
//! rule 2, C-023..C-025): const structures are only ever *sent* at initiate and *read*
//! back by query; an update carries only cached structures; query and terminate return
//! delegated structures. The request/completion types in this crate use exactly those
//! types, so the wrong class cannot be put in the wrong place.
//!
//! Layout on the ring: every structure starts with the 8-byte `OFFLOAD_STATE_HEADER`
//! (`u32 length` = size of the structure incl. header, `u32 recognized_options` =
//! reserved, must be 0). Field offsets follow the spec's x64 offsets wherever the field is
//! not a pointer; all integers are little-endian (decision for digest §7.1 item 16, ports
//! included: a port is the numeric value, e.g. 80 = `50 00`). IP addresses are in network
//! byte order (C-032), inline instead of behind a pointer.

use crate::error::DecodeError;
use crate::wire::{Rd, Wr};
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};

/// `OFFLOAD_STATE_TYPE` (digest §2.8): the Type byte of a block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OffloadStateType {
    NeighborConst = 1,
    NeighborCached = 2,
    NeighborDelegated = 3,
    Neighbor = 4,
    Ip4Const = 5,
    Ip4Cached = 6,
    Ip4Delegated = 7,
    Ip4 = 8,
    Ip6Const = 9,
    Ip6Cached = 10,
    Ip6Delegated = 11,
    Ip6 = 12,
    TcpConst = 13,
    TcpCached = 14,
    TcpDelegated = 15,
    /// Defined by the header as reserved/unused: refused by the decoder.
    TcpResource = 16,
    Tcp = 17,
}

/// Which structures a Type names (for query: which ones the device returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateClass {
    Const,
    Cached,
    Delegated,
    /// const + cached + delegated, in that order.
    All,
}

/// The three layers of the state tree (digest §2.1), bottom to top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Layer {
    Neighbor = 1,
    Path = 2,
    Tcp = 3,
}

/// IP version of a path (and of the TCP connections depending on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

impl OffloadStateType {
    pub fn from_u8(v: u8) -> Option<Self> {
        use OffloadStateType::*;
        Some(match v {
            1 => NeighborConst,
            2 => NeighborCached,
            3 => NeighborDelegated,
            4 => Neighbor,
            5 => Ip4Const,
            6 => Ip4Cached,
            7 => Ip4Delegated,
            8 => Ip4,
            9 => Ip6Const,
            10 => Ip6Cached,
            11 => Ip6Delegated,
            12 => Ip6,
            13 => TcpConst,
            14 => TcpCached,
            15 => TcpDelegated,
            16 => TcpResource,
            17 => Tcp,
            _ => return None,
        })
    }
    pub fn layer(self) -> Layer {
        match self as u8 {
            1..=4 => Layer::Neighbor,
            5..=12 => Layer::Path,
            _ => Layer::Tcp,
        }
    }
    /// IP version for path types; `None` for neighbor and TCP types.
    pub fn ip_version(self) -> Option<IpVersion> {
        match self as u8 {
            5..=8 => Some(IpVersion::V4),
            9..=12 => Some(IpVersion::V6),
            _ => None,
        }
    }
    /// `None` for the reserved `TcpOffloadResourceState`.
    pub fn class(self) -> Option<StateClass> {
        use OffloadStateType::*;
        Some(match self {
            NeighborConst | Ip4Const | Ip6Const | TcpConst => StateClass::Const,
            NeighborCached | Ip4Cached | Ip6Cached | TcpCached => StateClass::Cached,
            NeighborDelegated | Ip4Delegated | Ip6Delegated | TcpDelegated => StateClass::Delegated,
            Neighbor | Ip4 | Ip6 | Tcp => StateClass::All,
            TcpResource => return None,
        })
    }
    /// The type for `layer`/`class` (path types need the IP version).
    pub fn of(layer: Layer, ip: IpVersion, class: StateClass) -> Self {
        let base = match (layer, ip) {
            (Layer::Neighbor, _) => 1,
            (Layer::Path, IpVersion::V4) => 5,
            (Layer::Path, IpVersion::V6) => 9,
            (Layer::Tcp, _) => 13,
        };
        let off = match class {
            StateClass::Const => 0,
            StateClass::Cached => 1,
            StateClass::Delegated => 2,
            StateClass::All => {
                if layer == Layer::Tcp {
                    4
                } else {
                    3
                }
            }
        };
        // The table above only produces defined values.
        Self::from_u8(base + off).unwrap_or(OffloadStateType::Neighbor)
    }
}

/// OFFLOAD_STATE_HEADER size.
pub const STATE_HEADER_LEN: usize = 8;

pub const NEIGHBOR_CONST_LEN: usize = 0x2C;
pub const NEIGHBOR_CACHED_LEN: usize = 0x2C;
pub const NEIGHBOR_DELEGATED_LEN: usize = 0x0C;
pub const PATH4_CONST_LEN: usize = 0x10;
pub const PATH6_CONST_LEN: usize = 0x28;
pub const PATH_CACHED_LEN: usize = 0x0C;
pub const PATH_DELEGATED_LEN: usize = 0x08;
pub const TCP_CONST_LEN: usize = 0x18;
pub const TCP_CACHED_LEN: usize = 0x2C;
pub const TCP_DELEGATED_LEN: usize = 0x78;

fn read_header(r: &mut Rd<'_>, expect: usize) -> Result<(), DecodeError> {
    let len = r.u32("state.length")?;
    if len as usize != expect {
        return Err(DecodeError::LengthMismatch {
            field: r.field("state.length"),
            declared: u64::from(len),
            actual: expect as u64,
        });
    }
    // RecognizedOptions is reserved (ddi:ns-ndischimney-_offload_state_header.md).
    r.zero(4, "state.recognized_options")
}

fn write_header(w: &mut Vec<u8>, len: usize) {
    w.u32(len as u32);
    w.u32(0);
}

// ---------------------------------------------------------------- neighbor (§2.4)

/// `NEIGHBOR_OFFLOAD_STATE_CONST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighborConst {
    /// Source MAC; all-zero = use the interface MAC (C-047). 32 bytes as in the spec; only
    /// the first 6 matter for Ethernet (§7.1 item 15).
    pub dl_source_address: [u8; 32],
    /// 12-bit 802.1Q VLAN ID; 0 = not significant.
    pub vlan_id: u16,
}

/// `NEIGHBOR_OFFLOAD_STATE_CACHED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighborCached {
    /// MAC of the next hop.
    pub dl_destination_address: [u8; 32],
    /// HostReachabilityDelta (ticks).
    pub host_reachability_delta: u32,
}

/// `NEIGHBOR_OFFLOAD_STATE_DELEGATED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NeighborDelegated {
    /// NicReachabilityDelta (ticks).
    pub nic_reachability_delta: u32,
}

impl NeighborConst {
    pub fn emit(&self, w: &mut Vec<u8>) {
        write_header(w, NEIGHBOR_CONST_LEN);
        w.extend_from_slice(&self.dl_source_address);
        w.u32(u32::from(self.vlan_id));
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        read_header(r, NEIGHBOR_CONST_LEN)?;
        let dl_source_address = r.arr("neighbor_const.dl_source_address")?;
        let vlan = r.u32("neighbor_const.vlan_id")?;
        if vlan > 0xFFF {
            return Err(r.invalid("neighbor_const.vlan_id", u64::from(vlan)));
        }
        Ok(Self {
            dl_source_address,
            vlan_id: vlan as u16,
        })
    }
}

impl NeighborCached {
    pub fn emit(&self, w: &mut Vec<u8>) {
        write_header(w, NEIGHBOR_CACHED_LEN);
        w.extend_from_slice(&self.dl_destination_address);
        w.u32(self.host_reachability_delta);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        read_header(r, NEIGHBOR_CACHED_LEN)?;
        Ok(Self {
            dl_destination_address: r.arr("neighbor_cached.dl_destination_address")?,
            host_reachability_delta: r.u32("neighbor_cached.host_reachability_delta")?,
        })
    }
}

impl NeighborDelegated {
    pub fn emit(&self, w: &mut Vec<u8>) {
        write_header(w, NEIGHBOR_DELEGATED_LEN);
        w.u32(self.nic_reachability_delta);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        read_header(r, NEIGHBOR_DELEGATED_LEN)?;
        Ok(Self {
            nic_reachability_delta: r.u32("neighbor_delegated.nic_reachability_delta")?,
        })
    }
}

// ---------------------------------------------------------------- path (§2.5)

/// `PATH_OFFLOAD_STATE_CONST`: source and destination IP. The version is the block's Type
/// (`Ip4…`/`Ip6…`); on the ring the addresses are inline (4+4 or 16+16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathConst {
    V4 {
        source: Ipv4Addr,
        destination: Ipv4Addr,
    },
    V6 {
        source: Ipv6Addr,
        destination: Ipv6Addr,
    },
}

/// `PATH_OFFLOAD_STATE_CACHED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathCached {
    pub path_mtu: u32,
}

/// `PATH_OFFLOAD_STATE_DELEGATED`: header only, there are no delegated path variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PathDelegated;

impl PathConst {
    pub fn ip_version(&self) -> IpVersion {
        match self {
            PathConst::V4 { .. } => IpVersion::V4,
            PathConst::V6 { .. } => IpVersion::V6,
        }
    }
    pub fn emit(&self, w: &mut Vec<u8>) {
        match self {
            PathConst::V4 {
                source,
                destination,
            } => {
                write_header(w, PATH4_CONST_LEN);
                w.extend_from_slice(&source.octets());
                w.extend_from_slice(&destination.octets());
            }
            PathConst::V6 {
                source,
                destination,
            } => {
                write_header(w, PATH6_CONST_LEN);
                w.extend_from_slice(&source.octets());
                w.extend_from_slice(&destination.octets());
            }
        }
    }
    pub(crate) fn parse(r: &mut Rd<'_>, ip: IpVersion) -> Result<Self, DecodeError> {
        Ok(match ip {
            IpVersion::V4 => {
                read_header(r, PATH4_CONST_LEN)?;
                PathConst::V4 {
                    source: Ipv4Addr::from(r.arr::<4>("path_const.source_address")?),
                    destination: Ipv4Addr::from(r.arr::<4>("path_const.destination_address")?),
                }
            }
            IpVersion::V6 => {
                read_header(r, PATH6_CONST_LEN)?;
                PathConst::V6 {
                    source: Ipv6Addr::from(r.arr::<16>("path_const.source_address")?),
                    destination: Ipv6Addr::from(r.arr::<16>("path_const.destination_address")?),
                }
            }
        })
    }
}

impl PathCached {
    pub fn emit(&self, w: &mut Vec<u8>) {
        write_header(w, PATH_CACHED_LEN);
        w.u32(self.path_mtu);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        read_header(r, PATH_CACHED_LEN)?;
        Ok(Self {
            path_mtu: r.u32("path_cached.path_mtu")?,
        })
    }
}

impl PathDelegated {
    pub fn emit(&self, w: &mut Vec<u8>) {
        write_header(w, PATH_DELEGATED_LEN);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        read_header(r, PATH_DELEGATED_LEN)?;
        Ok(PathDelegated)
    }
}

// ---------------------------------------------------------------- TCP (§2.6)

pub const TCP_FLAG_TIMESTAMP_ENABLED: u16 = 0x01;
pub const TCP_FLAG_SACK_ENABLED: u16 = 0x02;
pub const TCP_FLAG_WINDOW_SCALING_ENABLED: u16 = 0x04;
const TCP_CONST_FLAGS_ALL: u16 = 0x07;

pub const TCP_FLAG_KEEP_ALIVE_ENABLED: u16 = 0x01;
pub const TCP_FLAG_NAGLING_ENABLED: u16 = 0x02;
pub const TCP_FLAG_KEEP_ALIVE_RESTART: u16 = 0x04;
pub const TCP_FLAG_MAX_RT_RESTART: u16 = 0x08;
pub const TCP_FLAG_UPDATE_RCV_WND: u16 = 0x10;
const TCP_CACHED_FLAGS_ALL: u16 = 0x1F;

/// `TCP_OFFLOAD_STATE_CONST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpConst {
    /// `TCP_FLAG_TIMESTAMP_ENABLED | TCP_FLAG_SACK_ENABLED | TCP_FLAG_WINDOW_SCALING_ENABLED`.
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

/// `TCP_OFFLOAD_STATE_CACHED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpCached {
    /// `TCP_FLAG_KEEP_ALIVE_ENABLED` … `TCP_FLAG_UPDATE_RCV_WND`.
    pub flags: u16,
    pub initial_rcv_wnd: u32,
    pub rcv_indication_size: u32,
    pub ka_probe_count: u8,
    pub ka_timeout: u32,
    pub ka_interval: u32,
    pub max_rt: u32,
    /// 20 bits, IPv6 only.
    pub flow_label: u32,
    pub ttl_or_hop_limit: u8,
    pub tos_or_traffic_class: u8,
    /// 3 bits (802.1p).
    pub user_priority: u8,
}

/// `TCP_OFFLOAD_CONNECTION_STATE`.
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
    /// C-070: states the host may offload in.
    pub fn offloadable(self) -> bool {
        !matches!(
            self,
            TcpConnectionState::Closed
                | TcpConnectionState::Listen
                | TcpConnectionState::SynSent
                | TcpConnectionState::SynRcvd
                | TcpConnectionState::TimeWait
        )
    }
}

/// A TCP timer carried in the delegated state: count + time to next expiry
/// (`TIMEOUT_NOT_RUNNING` = −1 = not running, C-061/C-078).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpTimer {
    pub count: u8,
    pub timeout_delta: u32,
}

pub const TIMEOUT_NOT_RUNNING: u32 = 0xFFFF_FFFF;
/// SendBacklogSize/ReceiveBacklogSize value for "unsupported" (C-079).
pub const BACKLOG_UNSUPPORTED: u32 = 0xFFFF_FFFF;

/// `TCP_OFFLOAD_STATE_DELEGATED`. The pointer union at 0x60..0x78 of the x64 layout is
/// replaced by plain numbers: the backlog sizes (meaningful on query, C-079), DWnd, and two
/// lengths of send / buffered-receive data that travel with initiate/terminate (must be 0
/// in ABI version 1; data I/O arrives in a later version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    pub cwnd: u32,
    pub ssthresh: u32,
    /// 8 × SRTT (C-031).
    pub srtt: u16,
    /// 4 × RTTVAR (C-031).
    pub rttvar: u16,
    pub ts_recent: u32,
    pub ts_recent_age: u32,
    pub ts_time: u32,
    pub total_rt: u32,
    pub dup_ack_count: u8,
    pub snd_wnd_probe_count: u8,
    /// KeepAlive.ProbeCount / KeepAlive.TimeoutDelta.
    pub keepalive: TcpTimer,
    /// Retransmit.Count / Retransmit.TimeoutDelta.
    pub retransmit: TcpTimer,
    pub send_backlog_size: u32,
    pub receive_backlog_size: u32,
    pub dwnd: u32,
}

impl TcpConst {
    pub fn emit(&self, w: &mut Vec<u8>) {
        write_header(w, TCP_CONST_LEN);
        w.u16(self.flags);
        w.u16(self.remote_port);
        w.u16(self.local_port);
        w.u8((self.snd_wind_scale & 0xF) | (self.rcv_wind_scale << 4));
        w.u8(0);
        w.u16(self.remote_mss);
        w.u16(0);
        w.u32(self.hash_value);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        read_header(r, TCP_CONST_LEN)?;
        let flags = r.u16("tcp_const.flags")?;
        if flags & !TCP_CONST_FLAGS_ALL != 0 {
            return Err(r.invalid("tcp_const.flags", u64::from(flags)));
        }
        let remote_port = r.u16("tcp_const.remote_port")?;
        let local_port = r.u16("tcp_const.local_port")?;
        let scales = r.u8("tcp_const.wind_scale")?;
        let (snd, rcv) = (scales & 0xF, scales >> 4);
        // RFC 7323: shift at most 14.
        if snd > 14 {
            return Err(r.invalid("tcp_const.snd_wind_scale", u64::from(snd)));
        }
        if rcv > 14 {
            return Err(r.invalid("tcp_const.rcv_wind_scale", u64::from(rcv)));
        }
        r.zero(1, "tcp_const.reserved0")?;
        let remote_mss = r.u16("tcp_const.remote_mss")?;
        r.zero(2, "tcp_const.reserved1")?;
        let hash_value = r.u32("tcp_const.hash_value")?;
        Ok(Self {
            flags,
            remote_port,
            local_port,
            snd_wind_scale: snd,
            rcv_wind_scale: rcv,
            remote_mss,
            hash_value,
        })
    }
}

impl TcpCached {
    pub fn emit(&self, w: &mut Vec<u8>) {
        write_header(w, TCP_CACHED_LEN);
        w.u16(self.flags);
        w.u16(0);
        w.u32(self.initial_rcv_wnd);
        w.u32(self.rcv_indication_size);
        w.u8(self.ka_probe_count);
        w.zeros(3);
        w.u32(self.ka_timeout);
        w.u32(self.ka_interval);
        w.u32(self.max_rt);
        w.u32(self.flow_label);
        w.u8(self.ttl_or_hop_limit);
        w.u8(self.tos_or_traffic_class);
        w.u8(self.user_priority);
        w.u8(0);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        read_header(r, TCP_CACHED_LEN)?;
        let flags = r.u16("tcp_cached.flags")?;
        if flags & !TCP_CACHED_FLAGS_ALL != 0 {
            return Err(r.invalid("tcp_cached.flags", u64::from(flags)));
        }
        r.zero(2, "tcp_cached.reserved0")?;
        let initial_rcv_wnd = r.u32("tcp_cached.initial_rcv_wnd")?;
        let rcv_indication_size = r.u32("tcp_cached.rcv_indication_size")?;
        let ka_probe_count = r.u8("tcp_cached.ka_probe_count")?;
        r.zero(3, "tcp_cached.reserved1")?;
        let ka_timeout = r.u32("tcp_cached.ka_timeout")?;
        let ka_interval = r.u32("tcp_cached.ka_interval")?;
        let max_rt = r.u32("tcp_cached.max_rt")?;
        let flow_label = r.u32("tcp_cached.flow_label")?;
        if flow_label > 0xF_FFFF {
            return Err(r.invalid("tcp_cached.flow_label", u64::from(flow_label)));
        }
        let ttl_or_hop_limit = r.u8("tcp_cached.ttl_or_hop_limit")?;
        let tos_or_traffic_class = r.u8("tcp_cached.tos_or_traffic_class")?;
        let user_priority = r.u8("tcp_cached.user_priority")?;
        if user_priority > 7 {
            return Err(r.invalid("tcp_cached.user_priority", u64::from(user_priority)));
        }
        r.zero(1, "tcp_cached.reserved2")?;
        Ok(Self {
            flags,
            initial_rcv_wnd,
            rcv_indication_size,
            ka_probe_count,
            ka_timeout,
            ka_interval,
            max_rt,
            flow_label,
            ttl_or_hop_limit,
            tos_or_traffic_class,
            user_priority,
        })
    }
}

impl TcpDelegated {
    pub fn emit(&self, w: &mut Vec<u8>) {
        write_header(w, TCP_DELEGATED_LEN);
        w.u32(self.state as u32);
        w.u16(self.flags);
        w.u16(0);
        for v in [
            self.rcv_nxt,
            self.rcv_wnd,
            self.snd_una,
            self.snd_nxt,
            self.snd_max,
            self.snd_wnd,
            self.max_snd_wnd,
            self.send_wl1,
            self.cwnd,
            self.ssthresh,
        ] {
            w.u32(v);
        }
        w.u16(self.srtt);
        w.u16(self.rttvar);
        w.u32(self.ts_recent);
        w.u32(self.ts_recent_age);
        w.u32(self.ts_time);
        w.u32(self.total_rt);
        w.u8(self.dup_ack_count);
        w.u8(self.snd_wnd_probe_count);
        w.u16(0);
        w.u8(self.keepalive.count);
        w.zeros(3);
        w.u32(self.keepalive.timeout_delta);
        w.u8(self.retransmit.count);
        w.zeros(3);
        w.u32(self.retransmit.timeout_delta);
        w.u32(self.send_backlog_size);
        w.u32(self.receive_backlog_size);
        w.u32(self.dwnd);
        w.u32(0); // send_data_length
        w.u32(0); // buffered_data_length
        w.u32(0); // reserved
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        read_header(r, TCP_DELEGATED_LEN)?;
        let st = r.u32("tcp_delegated.state")?;
        let state = TcpConnectionState::from_u32(st)
            .ok_or_else(|| r.invalid("tcp_delegated.state", u64::from(st)))?;
        let flags = r.u16("tcp_delegated.flags")?;
        r.zero(2, "tcp_delegated.reserved0")?;
        let rcv_nxt = r.u32("tcp_delegated.rcv_nxt")?;
        let rcv_wnd = r.u32("tcp_delegated.rcv_wnd")?;
        let snd_una = r.u32("tcp_delegated.snd_una")?;
        let snd_nxt = r.u32("tcp_delegated.snd_nxt")?;
        let snd_max = r.u32("tcp_delegated.snd_max")?;
        let snd_wnd = r.u32("tcp_delegated.snd_wnd")?;
        let max_snd_wnd = r.u32("tcp_delegated.max_snd_wnd")?;
        let send_wl1 = r.u32("tcp_delegated.send_wl1")?;
        let cwnd = r.u32("tcp_delegated.cwnd")?;
        let ssthresh = r.u32("tcp_delegated.ssthresh")?;
        let srtt = r.u16("tcp_delegated.srtt")?;
        let rttvar = r.u16("tcp_delegated.rttvar")?;
        let ts_recent = r.u32("tcp_delegated.ts_recent")?;
        let ts_recent_age = r.u32("tcp_delegated.ts_recent_age")?;
        let ts_time = r.u32("tcp_delegated.ts_time")?;
        let total_rt = r.u32("tcp_delegated.total_rt")?;
        let dup_ack_count = r.u8("tcp_delegated.dup_ack_count")?;
        let snd_wnd_probe_count = r.u8("tcp_delegated.snd_wnd_probe_count")?;
        r.zero(2, "tcp_delegated.reserved1")?;
        let ka_count = r.u8("tcp_delegated.keepalive.probe_count")?;
        r.zero(3, "tcp_delegated.reserved2")?;
        let ka_delta = r.u32("tcp_delegated.keepalive.timeout_delta")?;
        let rt_count = r.u8("tcp_delegated.retransmit.count")?;
        r.zero(3, "tcp_delegated.reserved3")?;
        let rt_delta = r.u32("tcp_delegated.retransmit.timeout_delta")?;
        let send_backlog_size = r.u32("tcp_delegated.send_backlog_size")?;
        let receive_backlog_size = r.u32("tcp_delegated.receive_backlog_size")?;
        let dwnd = r.u32("tcp_delegated.dwnd")?;
        let sdl = r.u32("tcp_delegated.send_data_length")?;
        if sdl != 0 {
            return Err(DecodeError::Unsupported {
                field: r.field("tcp_delegated.send_data_length"),
            });
        }
        let bdl = r.u32("tcp_delegated.buffered_data_length")?;
        if bdl != 0 {
            return Err(DecodeError::Unsupported {
                field: r.field("tcp_delegated.buffered_data_length"),
            });
        }
        r.zero(4, "tcp_delegated.reserved4")?;
        Ok(Self {
            state,
            flags,
            rcv_nxt,
            rcv_wnd,
            snd_una,
            snd_nxt,
            snd_max,
            snd_wnd,
            max_snd_wnd,
            send_wl1,
            cwnd,
            ssthresh,
            srtt,
            rttvar,
            ts_recent,
            ts_recent_age,
            ts_time,
            total_rt,
            dup_ack_count,
            snd_wnd_probe_count,
            keepalive: TcpTimer {
                count: ka_count,
                timeout_delta: ka_delta,
            },
            retransmit: TcpTimer {
                count: rt_count,
                timeout_delta: rt_delta,
            },
            send_backlog_size,
            receive_backlog_size,
            dwnd,
        })
    }
}

// ---------------------------------------------------------------- whole objects

/// A complete neighbor state object (`NeighborOffloadState` = const, cached, delegated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighborState {
    pub konst: NeighborConst,
    pub cached: NeighborCached,
    pub delegated: NeighborDelegated,
}

/// A complete path state object (`Ip4OffloadState` / `Ip6OffloadState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathState {
    pub konst: PathConst,
    pub cached: PathCached,
    pub delegated: PathDelegated,
}

/// A complete TCP state object (`TcpOffloadState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpState {
    pub konst: TcpConst,
    pub cached: TcpCached,
    pub delegated: TcpDelegated,
}

/// A new object to offload (initiate), by layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectState {
    Neighbor(NeighborState),
    Path(PathState),
    Tcp(TcpState),
}

impl ObjectState {
    pub fn layer(&self) -> Layer {
        match self {
            ObjectState::Neighbor(_) => Layer::Neighbor,
            ObjectState::Path(_) => Layer::Path,
            ObjectState::Tcp(_) => Layer::Tcp,
        }
    }
    /// The full-state Type of this object (`NeighborOffloadState`, `Ip4/Ip6OffloadState`,
    /// `TcpOffloadState`).
    pub fn state_type(&self) -> OffloadStateType {
        match self {
            ObjectState::Neighbor(_) => OffloadStateType::Neighbor,
            ObjectState::Path(p) => match p.konst.ip_version() {
                IpVersion::V4 => OffloadStateType::Ip4,
                IpVersion::V6 => OffloadStateType::Ip6,
            },
            ObjectState::Tcp(_) => OffloadStateType::Tcp,
        }
    }
    pub fn emit(&self, w: &mut Vec<u8>) {
        match self {
            ObjectState::Neighbor(n) => {
                n.konst.emit(w);
                n.cached.emit(w);
                n.delegated.emit(w);
            }
            ObjectState::Path(p) => {
                p.konst.emit(w);
                p.cached.emit(w);
                p.delegated.emit(w);
            }
            ObjectState::Tcp(t) => {
                t.konst.emit(w);
                t.cached.emit(w);
                t.delegated.emit(w);
            }
        }
    }
    pub(crate) fn parse(r: &mut Rd<'_>, ty: OffloadStateType) -> Result<Self, DecodeError> {
        Ok(match (ty.layer(), ty.ip_version()) {
            (Layer::Neighbor, _) => ObjectState::Neighbor(NeighborState {
                konst: NeighborConst::parse(r)?,
                cached: NeighborCached::parse(r)?,
                delegated: NeighborDelegated::parse(r)?,
            }),
            (Layer::Path, ip) => ObjectState::Path(PathState {
                konst: PathConst::parse(r, ip.unwrap_or(IpVersion::V4))?,
                cached: PathCached::parse(r)?,
                delegated: PathDelegated::parse(r)?,
            }),
            (Layer::Tcp, _) => ObjectState::Tcp(TcpState {
                konst: TcpConst::parse(r)?,
                cached: TcpCached::parse(r)?,
                delegated: TcpDelegated::parse(r)?,
            }),
        })
    }
}

/// Cached variables of one object: the only thing an update carries (C-083).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CachedState {
    Neighbor(NeighborCached),
    Path(PathCached),
    Tcp(TcpCached),
}

impl CachedState {
    pub fn layer(&self) -> Layer {
        match self {
            CachedState::Neighbor(_) => Layer::Neighbor,
            CachedState::Path(_) => Layer::Path,
            CachedState::Tcp(_) => Layer::Tcp,
        }
    }
    pub fn emit(&self, w: &mut Vec<u8>) {
        match self {
            CachedState::Neighbor(c) => c.emit(w),
            CachedState::Path(c) => c.emit(w),
            CachedState::Tcp(c) => c.emit(w),
        }
    }
    pub(crate) fn parse(r: &mut Rd<'_>, layer: Layer) -> Result<Self, DecodeError> {
        Ok(match layer {
            Layer::Neighbor => CachedState::Neighbor(NeighborCached::parse(r)?),
            Layer::Path => CachedState::Path(PathCached::parse(r)?),
            Layer::Tcp => CachedState::Tcp(TcpCached::parse(r)?),
        })
    }
}

/// Delegated variables of one object: what terminate (and query) hand back (C-111).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DelegatedState {
    Neighbor(NeighborDelegated),
    Path(PathDelegated),
    Tcp(TcpDelegated),
}

impl DelegatedState {
    pub fn emit(&self, w: &mut Vec<u8>) {
        match self {
            DelegatedState::Neighbor(d) => d.emit(w),
            DelegatedState::Path(d) => d.emit(w),
            DelegatedState::Tcp(d) => d.emit(w),
        }
    }
    pub(crate) fn parse(r: &mut Rd<'_>, layer: Layer) -> Result<Self, DecodeError> {
        Ok(match layer {
            Layer::Neighbor => DelegatedState::Neighbor(NeighborDelegated::parse(r)?),
            Layer::Path => DelegatedState::Path(PathDelegated::parse(r)?),
            Layer::Tcp => DelegatedState::Tcp(TcpDelegated::parse(r)?),
        })
    }
}

/// What a query returns for one block: the structures its Type named, current values
/// (C-076). Fields not named by the Type are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueriedState {
    Neighbor {
        konst: Option<NeighborConst>,
        cached: Option<NeighborCached>,
        delegated: Option<NeighborDelegated>,
    },
    Path {
        konst: Option<PathConst>,
        cached: Option<PathCached>,
        delegated: Option<PathDelegated>,
    },
    Tcp {
        konst: Option<TcpConst>,
        cached: Option<TcpCached>,
        delegated: Option<TcpDelegated>,
    },
}

fn wants(class: StateClass) -> (bool, bool, bool) {
    match class {
        StateClass::Const => (true, false, false),
        StateClass::Cached => (false, true, false),
        StateClass::Delegated => (false, false, true),
        StateClass::All => (true, true, true),
    }
}

impl QueriedState {
    /// Build the answer for a query block of Type `ty` from an object's full state.
    pub fn select(ty: OffloadStateType, full: &ObjectState) -> Self {
        let (c, k, d) = wants(ty.class().unwrap_or(StateClass::All));
        match full {
            ObjectState::Neighbor(n) => QueriedState::Neighbor {
                konst: c.then_some(n.konst),
                cached: k.then_some(n.cached),
                delegated: d.then_some(n.delegated),
            },
            ObjectState::Path(p) => QueriedState::Path {
                konst: c.then_some(p.konst),
                cached: k.then_some(p.cached),
                delegated: d.then_some(p.delegated),
            },
            ObjectState::Tcp(t) => QueriedState::Tcp {
                konst: c.then_some(t.konst),
                cached: k.then_some(t.cached),
                delegated: d.then_some(t.delegated),
            },
        }
    }
    pub fn emit(&self, w: &mut Vec<u8>) {
        match self {
            QueriedState::Neighbor {
                konst,
                cached,
                delegated,
            } => {
                konst.iter().for_each(|s| s.emit(w));
                cached.iter().for_each(|s| s.emit(w));
                delegated.iter().for_each(|s| s.emit(w));
            }
            QueriedState::Path {
                konst,
                cached,
                delegated,
            } => {
                konst.iter().for_each(|s| s.emit(w));
                cached.iter().for_each(|s| s.emit(w));
                delegated.iter().for_each(|s| s.emit(w));
            }
            QueriedState::Tcp {
                konst,
                cached,
                delegated,
            } => {
                konst.iter().for_each(|s| s.emit(w));
                cached.iter().for_each(|s| s.emit(w));
                delegated.iter().for_each(|s| s.emit(w));
            }
        }
    }
    pub(crate) fn parse(r: &mut Rd<'_>, ty: OffloadStateType) -> Result<Self, DecodeError> {
        let (c, k, d) = wants(ty.class().unwrap_or(StateClass::All));
        Ok(match ty.layer() {
            Layer::Neighbor => QueriedState::Neighbor {
                konst: if c {
                    Some(NeighborConst::parse(r)?)
                } else {
                    None
                },
                cached: if k {
                    Some(NeighborCached::parse(r)?)
                } else {
                    None
                },
                delegated: if d {
                    Some(NeighborDelegated::parse(r)?)
                } else {
                    None
                },
            },
            Layer::Path => QueriedState::Path {
                konst: if c {
                    Some(PathConst::parse(
                        r,
                        ty.ip_version().unwrap_or(IpVersion::V4),
                    )?)
                } else {
                    None
                },
                cached: if k { Some(PathCached::parse(r)?) } else { None },
                delegated: if d {
                    Some(PathDelegated::parse(r)?)
                } else {
                    None
                },
            },
            Layer::Tcp => QueriedState::Tcp {
                konst: if c { Some(TcpConst::parse(r)?) } else { None },
                cached: if k { Some(TcpCached::parse(r)?) } else { None },
                delegated: if d {
                    Some(TcpDelegated::parse(r)?)
                } else {
                    None
                },
            },
        })
    }
}
