//! Chimney statistics (digest §3.11): `IP_OFFLOAD_STATS` and `TCP_OFFLOAD_STATS` per address
//! family, kept by the offload target for offloaded traffic only (C-018), wrapping at their
//! maximum (C-020). Read with the STATISTICS request (opcode 8, ring-abi.md §17); the
//! request's RESET flag models the OID set that zeroes a family (C-019).
//!
//! Layouts are the NDIS x64 layouts (little-endian):
//! ```text
//! IP_OFFLOAD_STATS (0x40)                 TCP_OFFLOAD_STATS (0x28)
//! 0x00 u64 InReceives                     0x00 u64 InSegments
//! 0x08 u64 InOctets                       0x08 u64 OutSegments
//! 0x10 u64 InDelivers                     0x10 u32 CurrentlyEstablished
//! 0x18 u64 OutRequests                    0x14 u32 ResetEstablished
//! 0x20 u64 OutOctets                      0x18 u32 RetransmittedSegments
//! 0x28 u32 InHeaderErrors                 0x1C u32 InErrors
//! 0x2C u32 InTruncatedPackets             0x20 u32 OutResets
//! 0x30 u32 InDiscards                     0x24 u32 (padding, 0)
//! 0x34 u32 OutDiscards
//! 0x38 u32 OutNoRoutes
//! 0x3C u32 (padding, 0)
//! ```

use crate::error::DecodeError;
use crate::wire::{Rd, Wr};
use alloc::vec::Vec;

pub const IP_OFFLOAD_STATS_LEN: usize = 0x40;
pub const TCP_OFFLOAD_STATS_LEN: usize = 0x28;
/// STATISTICS request body: u16 family, u16 flags, u32 reserved.
pub const STATS_REQUEST_LEN: usize = 8;
/// STATISTICS completion body: u16 family, u16 reserved, u32 reserved, IP, TCP.
pub const STATS_RESULT_LEN: usize = 8 + IP_OFFLOAD_STATS_LEN + TCP_OFFLOAD_STATS_LEN;
/// Request flag: zero the family's counters after reading them (the OID set, C-019).
pub const STATS_FLAG_RESET: u16 = 0x1;

/// Address family of a statistics request (the OID pairs `OID_IP4/TCP4_…`, `OID_IP6/TCP6_…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum StatsFamily {
    Ipv4 = 4,
    Ipv6 = 6,
}

impl StatsFamily {
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            4 => Some(StatsFamily::Ipv4),
            6 => Some(StatsFamily::Ipv6),
            _ => None,
        }
    }
}

/// `IP_OFFLOAD_STATS` (MIB-II semantics, RFC 2011).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct IpOffloadStats {
    pub in_receives: u64,
    /// IP header + payload of received datagrams.
    pub in_octets: u64,
    pub in_delivers: u64,
    pub out_requests: u64,
    pub out_octets: u64,
    pub in_header_errors: u32,
    pub in_truncated_packets: u32,
    pub in_discards: u32,
    pub out_discards: u32,
    pub out_no_routes: u32,
}

/// `TCP_OFFLOAD_STATS` (RFC 1156 semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TcpOffloadStats {
    /// Segments received, including errored ones.
    pub in_segments: u64,
    /// Segments sent, excluding those that only retransmit.
    pub out_segments: u64,
    /// Connections in ESTABLISHED or CLOSE-WAIT now.
    pub currently_established: u32,
    /// Direct ESTABLISHED/CLOSE-WAIT → CLOSED transitions (resets).
    pub reset_established: u32,
    pub retransmitted_segments: u32,
    pub in_errors: u32,
    /// Segments sent with RST.
    pub out_resets: u32,
}

impl IpOffloadStats {
    pub fn emit(&self, w: &mut Vec<u8>) {
        for v in [
            self.in_receives,
            self.in_octets,
            self.in_delivers,
            self.out_requests,
            self.out_octets,
        ] {
            w.u64(v);
        }
        for v in [
            self.in_header_errors,
            self.in_truncated_packets,
            self.in_discards,
            self.out_discards,
            self.out_no_routes,
        ] {
            w.u32(v);
        }
        w.u32(0);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let s = Self {
            in_receives: r.u64("ip_stats.in_receives")?,
            in_octets: r.u64("ip_stats.in_octets")?,
            in_delivers: r.u64("ip_stats.in_delivers")?,
            out_requests: r.u64("ip_stats.out_requests")?,
            out_octets: r.u64("ip_stats.out_octets")?,
            in_header_errors: r.u32("ip_stats.in_header_errors")?,
            in_truncated_packets: r.u32("ip_stats.in_truncated_packets")?,
            in_discards: r.u32("ip_stats.in_discards")?,
            out_discards: r.u32("ip_stats.out_discards")?,
            out_no_routes: r.u32("ip_stats.out_no_routes")?,
        };
        r.zero(4, "ip_stats.padding")?;
        Ok(s)
    }
}

impl TcpOffloadStats {
    pub fn emit(&self, w: &mut Vec<u8>) {
        w.u64(self.in_segments);
        w.u64(self.out_segments);
        for v in [
            self.currently_established,
            self.reset_established,
            self.retransmitted_segments,
            self.in_errors,
            self.out_resets,
        ] {
            w.u32(v);
        }
        w.u32(0);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let s = Self {
            in_segments: r.u64("tcp_stats.in_segments")?,
            out_segments: r.u64("tcp_stats.out_segments")?,
            currently_established: r.u32("tcp_stats.currently_established")?,
            reset_established: r.u32("tcp_stats.reset_established")?,
            retransmitted_segments: r.u32("tcp_stats.retransmitted_segments")?,
            in_errors: r.u32("tcp_stats.in_errors")?,
            out_resets: r.u32("tcp_stats.out_resets")?,
        };
        r.zero(4, "tcp_stats.padding")?;
        Ok(s)
    }
}

/// STATISTICS request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsRequest {
    pub family: StatsFamily,
    /// Zero the family's counters after reading them (C-019).
    pub reset: bool,
}

impl StatsRequest {
    pub(crate) fn emit(&self, w: &mut Vec<u8>) {
        w.u16(self.family as u16);
        w.u16(if self.reset { STATS_FLAG_RESET } else { 0 });
        w.u32(0);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let f = r.u16("stats.family")?;
        let family =
            StatsFamily::from_u16(f).ok_or_else(|| r.invalid("stats.family", u64::from(f)))?;
        let flags = r.u16("stats.flags")?;
        if flags & !STATS_FLAG_RESET != 0 {
            return Err(r.invalid("stats.flags", u64::from(flags)));
        }
        r.zero(4, "stats.reserved")?;
        Ok(Self {
            family,
            reset: flags & STATS_FLAG_RESET != 0,
        })
    }
}

/// STATISTICS completion body: the family's counters as they were when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsResult {
    pub family: StatsFamily,
    pub ip: IpOffloadStats,
    pub tcp: TcpOffloadStats,
}

impl StatsResult {
    pub(crate) fn emit(&self, w: &mut Vec<u8>) {
        w.u16(self.family as u16);
        w.u16(0);
        w.u32(0);
        self.ip.emit(w);
        self.tcp.emit(w);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let f = r.u16("stats.family")?;
        let family =
            StatsFamily::from_u16(f).ok_or_else(|| r.invalid("stats.family", u64::from(f)))?;
        r.zero(6, "stats.reserved")?;
        Ok(Self {
            family,
            ip: IpOffloadStats::parse(r)?,
            tcp: TcpOffloadStats::parse(r)?,
        })
    }
}

/// REACHABILITY_ANSWER request body (opcode 9, ring-abi.md §18): the host's answer to a
/// NeighborReachabilityQuery indication (C-226): the neighbor and the HostReachabilityDelta
/// the host writes back (0 when its NCE is stale, C-227).
/// ```text
/// 0 u64 handle   the neighbor's device handle (from the indication)
/// 8 u32 host_reachability_delta (ticks)
/// 12 u32 reserved 0
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachabilityAnswer {
    pub handle: crate::DeviceHandle,
    pub host_reachability_delta: u32,
}

pub const REACHABILITY_ANSWER_LEN: usize = 16;

impl ReachabilityAnswer {
    pub(crate) fn emit(&self, w: &mut Vec<u8>) {
        w.u64(self.handle.0);
        w.u32(self.host_reachability_delta);
        w.u32(0);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let h = r.u64("reachability.handle")?;
        if h == 0 {
            return Err(r.invalid("reachability.handle", 0));
        }
        let host_reachability_delta = r.u32("reachability.host_reachability_delta")?;
        r.zero(4, "reachability.reserved")?;
        Ok(Self {
            handle: crate::DeviceHandle(h),
            host_reachability_delta,
        })
    }
}
