//! In-band capability exchange (DESIGN.md: QEMU strips private feature bits, so version,
//! capabilities and parameters travel as the first records on the control ring).
//! `NDIS_TCP_CONNECTION_OFFLOAD` (digest §5.3, C-005..C-010) and
//! `NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS` (§5.4, C-011..C-014), same offsets as the
//! spec, little-endian.

use crate::error::DecodeError;
use crate::wire::{Rd, Wr};
use alloc::vec::Vec;

pub const NDIS_OBJECT_TYPE_DEFAULT: u8 = 0x80;
pub const NDIS_TCP_CONNECTION_OFFLOAD_REVISION_1: u8 = 1;
pub const NDIS_SIZEOF_TCP_CONNECTION_OFFLOAD_REVISION_1: u16 = 20;
pub const NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS_REVISION_1: u8 = 1;
pub const NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS_REVISION_2: u8 = 2;
pub const OFFLOAD_PARAMETERS_LEN: usize = 0x3C;

pub const NDIS_ENCAPSULATION_NOT_SUPPORTED: u32 = 0;
pub const NDIS_ENCAPSULATION_NULL: u32 = 0x1;
pub const NDIS_ENCAPSULATION_IEEE_802_3: u32 = 0x2;
pub const NDIS_ENCAPSULATION_IEEE_802_3_P_AND_Q: u32 = 0x4;
pub const NDIS_ENCAPSULATION_IEEE_802_3_P_AND_Q_IN_OOB: u32 = 0x8;
pub const NDIS_ENCAPSULATION_IEEE_LLC_SNAP_ROUTED: u32 = 0x10;

pub const NDIS_OFFLOAD_NOT_SUPPORTED: u8 = 0;
pub const NDIS_OFFLOAD_SUPPORTED: u8 = 1;

/// `NDIS_TCP_CONNECTION_OFFLOAD` (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpConnectionOffload {
    /// Must include 802_3 and/or LLC_SNAP_ROUTED (C-007).
    pub encapsulation: u32,
    /// 2-bit fields.
    pub support_ipv4: u8,
    pub support_ipv6: u8,
    pub support_ipv6_extension_headers: u8,
    pub support_sack: u8,
    /// 4 bits, reserved.
    pub congestion_algorithm: u8,
    /// Max simultaneously offloaded TCP connections, IPv4 + IPv6 (C-009).
    pub tcp_connection_offload_capacity: u32,
    pub flags: u32,
}

impl TcpConnectionOffload {
    pub const LEN: usize = 20;
    pub fn emit(&self, w: &mut Vec<u8>) {
        w.u8(NDIS_OBJECT_TYPE_DEFAULT);
        w.u8(NDIS_TCP_CONNECTION_OFFLOAD_REVISION_1);
        w.u16(NDIS_SIZEOF_TCP_CONNECTION_OFFLOAD_REVISION_1);
        w.u32(self.encapsulation);
        w.u32(
            u32::from(self.support_ipv4 & 3)
                | u32::from(self.support_ipv6 & 3) << 2
                | u32::from(self.support_ipv6_extension_headers & 3) << 4
                | u32::from(self.support_sack & 3) << 6
                | u32::from(self.congestion_algorithm & 0xF) << 8,
        );
        w.u32(self.tcp_connection_offload_capacity);
        w.u32(self.flags);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let ty = r.u8("capabilities.header.type")?;
        if ty != NDIS_OBJECT_TYPE_DEFAULT {
            return Err(r.invalid("capabilities.header.type", u64::from(ty)));
        }
        let _revision = r.u8("capabilities.header.revision")?;
        let size = r.u16("capabilities.header.size")?;
        if size != NDIS_SIZEOF_TCP_CONNECTION_OFFLOAD_REVISION_1 {
            return Err(r.invalid("capabilities.header.size", u64::from(size)));
        }
        let encapsulation = r.u32("capabilities.encapsulation")?;
        let bits = r.u32("capabilities.support")?;
        if bits >> 12 != 0 {
            return Err(r.invalid("capabilities.support", u64::from(bits)));
        }
        Ok(Self {
            encapsulation,
            support_ipv4: (bits & 3) as u8,
            support_ipv6: (bits >> 2 & 3) as u8,
            support_ipv6_extension_headers: (bits >> 4 & 3) as u8,
            support_sack: (bits >> 6 & 3) as u8,
            congestion_algorithm: (bits >> 8 & 0xF) as u8,
            tcp_connection_offload_capacity: r
                .u32("capabilities.tcp_connection_offload_capacity")?,
            flags: r.u32("capabilities.flags")?,
        })
    }
}

/// One half (IPv4 or IPv6) of `NDIS_OFFLOAD_ENCAPSULATION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EncapsulationInfo {
    pub enabled: u32,
    pub encapsulation_type: u32,
    pub header_size: u32,
}

/// `NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS` (0x3C bytes on the ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffloadParameters {
    /// Header revision: 1 or 2 (2 = NDIS 6.1, adds CongestionAlgorithm). The ring always
    /// carries the 0x3C-byte form; with revision 1 `congestion_algorithm` must be 0.
    pub revision: u8,
    /// `NDIS_OFFLOAD_ENCAPSULATION.Header`, carried as is.
    pub encapsulation_header: u32,
    pub encapsulation_ipv4: EncapsulationInfo,
    pub encapsulation_ipv6: EncapsulationInfo,
    /// 10, 100 or 1000 (C-014); the unit of every "ticks" field.
    pub ticks_per_second: u32,
    pub tcp_ack_frequency: u8,
    pub tcp_delayed_ack_ticks: u8,
    pub tcp_maximum_retransmissions: u8,
    pub tcp_doubt_reachability_retransmissions: u8,
    pub tcp_sws_prevention_ticks: u32,
    pub tcp_duplicate_ack_threshold: u32,
    pub tcp_push_ticks: u32,
    pub nce_stale_ticks: u32,
    pub congestion_algorithm: u32,
}

impl OffloadParameters {
    pub fn emit(&self, w: &mut Vec<u8>) {
        w.u8(NDIS_OBJECT_TYPE_DEFAULT);
        w.u8(self.revision);
        w.u16(OFFLOAD_PARAMETERS_LEN as u16);
        w.u32(self.encapsulation_header);
        for e in [self.encapsulation_ipv4, self.encapsulation_ipv6] {
            w.u32(e.enabled);
            w.u32(e.encapsulation_type);
            w.u32(e.header_size);
        }
        w.u32(self.ticks_per_second);
        w.u8(self.tcp_ack_frequency);
        w.u8(self.tcp_delayed_ack_ticks);
        w.u8(self.tcp_maximum_retransmissions);
        w.u8(self.tcp_doubt_reachability_retransmissions);
        w.u32(self.tcp_sws_prevention_ticks);
        w.u32(self.tcp_duplicate_ack_threshold);
        w.u32(self.tcp_push_ticks);
        w.u32(self.nce_stale_ticks);
        w.u32(self.congestion_algorithm);
    }
    pub(crate) fn parse(r: &mut Rd<'_>) -> Result<Self, DecodeError> {
        let ty = r.u8("parameters.header.type")?;
        if ty != NDIS_OBJECT_TYPE_DEFAULT {
            return Err(r.invalid("parameters.header.type", u64::from(ty)));
        }
        let revision = r.u8("parameters.header.revision")?;
        if !(1..=2).contains(&revision) {
            return Err(r.invalid("parameters.header.revision", u64::from(revision)));
        }
        let size = r.u16("parameters.header.size")?;
        if usize::from(size) != OFFLOAD_PARAMETERS_LEN {
            return Err(r.invalid("parameters.header.size", u64::from(size)));
        }
        let encapsulation_header = r.u32("parameters.encapsulation.header")?;
        let mut enc = [EncapsulationInfo::default(); 2];
        for e in enc.iter_mut() {
            e.enabled = r.u32("parameters.encapsulation.enabled")?;
            e.encapsulation_type = r.u32("parameters.encapsulation.encapsulation_type")?;
            e.header_size = r.u32("parameters.encapsulation.header_size")?;
        }
        let ticks_per_second = r.u32("parameters.ticks_per_second")?;
        if ![10, 100, 1000].contains(&ticks_per_second) {
            return Err(r.invalid("parameters.ticks_per_second", u64::from(ticks_per_second)));
        }
        let p = Self {
            revision,
            encapsulation_header,
            encapsulation_ipv4: enc[0],
            encapsulation_ipv6: enc[1],
            ticks_per_second,
            tcp_ack_frequency: r.u8("parameters.tcp_ack_frequency")?,
            tcp_delayed_ack_ticks: r.u8("parameters.tcp_delayed_ack_ticks")?,
            tcp_maximum_retransmissions: r.u8("parameters.tcp_maximum_retransmissions")?,
            tcp_doubt_reachability_retransmissions: r
                .u8("parameters.tcp_doubt_reachability_retransmissions")?,
            tcp_sws_prevention_ticks: r.u32("parameters.tcp_sws_prevention_ticks")?,
            tcp_duplicate_ack_threshold: r.u32("parameters.tcp_duplicate_ack_threshold")?,
            tcp_push_ticks: r.u32("parameters.tcp_push_ticks")?,
            nce_stale_ticks: r.u32("parameters.nce_stale_ticks")?,
            congestion_algorithm: r.u32("parameters.congestion_algorithm")?,
        };
        if p.revision == 1 && p.congestion_algorithm != 0 {
            return Err(r.invalid(
                "parameters.congestion_algorithm",
                u64::from(p.congestion_algorithm),
            ));
        }
        Ok(p)
    }
}

impl Default for OffloadParameters {
    /// Windows defaults: 1000 ticks/s, ACK every 2nd segment, 200 ms delayed ACK, ...
    fn default() -> Self {
        Self {
            revision: 1,
            encapsulation_header: 0,
            encapsulation_ipv4: EncapsulationInfo {
                enabled: 1,
                encapsulation_type: NDIS_ENCAPSULATION_IEEE_802_3,
                header_size: 14,
            },
            encapsulation_ipv6: EncapsulationInfo {
                enabled: 1,
                encapsulation_type: NDIS_ENCAPSULATION_IEEE_802_3,
                header_size: 14,
            },
            ticks_per_second: 1000,
            tcp_ack_frequency: 2,
            tcp_delayed_ack_ticks: 200,
            tcp_maximum_retransmissions: 5,
            tcp_doubt_reachability_retransmissions: 3,
            tcp_sws_prevention_ticks: 1000,
            tcp_duplicate_ack_threshold: 3,
            tcp_push_ticks: 500,
            nce_stale_ticks: 30_000,
            congestion_algorithm: 0,
        }
    }
}
