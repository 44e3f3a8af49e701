//! Chimney statistics of offloaded traffic (digest §3.11): per address family
//! `IP_OFFLOAD_STATS` and `TCP_OFFLOAD_STATS` (C-018), counters wrapping at their maximum
//! (C-020). The data path counts every frame an engine sends and every switched frame it
//! receives; a TSO super-frame counts as the segments the kernel cuts it into, so the
//! numbers are the ones a hardware target would see on the wire.

use chimney_abi::{IpOffloadStats, StatsFamily, TcpOffloadStats};

/// One family's counters. `out_total` counts every TCP segment sent; OutSegments excludes
/// retransmissions (RFC 1156), so it is `out_total − retransmitted` when read.
#[derive(Debug, Default, Clone, Copy)]
pub struct FamilyCounters {
    pub ip: IpOffloadStats,
    pub tcp: TcpOffloadStats,
    out_total: u64,
}

/// Counters of both families.
#[derive(Debug, Default, Clone, Copy)]
pub struct OffloadCounters {
    pub v4: FamilyCounters,
    pub v6: FamilyCounters,
}

/// What the counters need to know about one frame: family, header sizes, payload, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameShape {
    pub family: StatsFamily,
    /// IP header + TCP header bytes of each segment.
    pub headers: usize,
    pub payload: usize,
    pub rst: bool,
}

/// Parse an Ethernet frame (optionally 802.1Q-tagged) carrying TCP over IPv4/IPv6.
pub fn frame_shape(f: &[u8]) -> Option<FrameShape> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    if et == 0x8100 {
        off += 4;
        et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    }
    let ip = f.get(off + 2..)?;
    let (family, ip_hdr, ip_len) = match et {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            (StatsFamily::Ipv4, ihl, total.min(ip.len()))
        }
        0x86DD => {
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            (StatsFamily::Ipv6, 40, (40 + plen).min(ip.len()))
        }
        _ => return None,
    };
    let tcp = ip.get(ip_hdr..ip_len)?;
    let tcp_hdr = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    Some(FrameShape {
        family,
        headers: ip_hdr + tcp_hdr,
        payload: tcp.len().saturating_sub(tcp_hdr),
        rst: flags & 0x04 != 0,
    })
}

/// Segments a frame stands for: 1, or for a GSO super-frame the number of `mss`-sized
/// pieces its payload is cut into.
pub fn segments(payload: usize, gso_mss: Option<u16>) -> u64 {
    match gso_mss {
        Some(m) if m > 0 && payload > usize::from(m) => payload.div_ceil(usize::from(m)) as u64,
        _ => 1,
    }
}

impl OffloadCounters {
    pub fn family(&mut self, f: StatsFamily) -> &mut FamilyCounters {
        match f {
            StatsFamily::Ipv4 => &mut self.v4,
            StatsFamily::Ipv6 => &mut self.v6,
        }
    }

    /// A frame an engine sent (`gso_mss`: the super-frame's segment size).
    pub fn count_out(&mut self, s: &FrameShape, gso_mss: Option<u16>) {
        let n = segments(s.payload, gso_mss);
        let c = self.family(s.family);
        c.ip.out_requests = c.ip.out_requests.wrapping_add(n);
        c.ip.out_octets =
            c.ip.out_octets
                .wrapping_add((s.payload as u64).wrapping_add(n * s.headers as u64));
        c.out_total = c.out_total.wrapping_add(n);
        if s.rst {
            c.tcp.out_resets = c.tcp.out_resets.wrapping_add(1);
        }
    }

    /// A switched frame given to an engine: `delivered` = the engine took it, otherwise it
    /// failed TCP validation (counted as InErrors: C-021's "drop and count" alternative, since
    /// the switch already decided the frame is the connection's).
    pub fn count_in(&mut self, s: &FrameShape, gso_mss: Option<u16>, delivered: bool) {
        let n = segments(s.payload, gso_mss);
        let c = self.family(s.family);
        c.ip.in_receives = c.ip.in_receives.wrapping_add(n);
        c.ip.in_octets =
            c.ip.in_octets
                .wrapping_add((s.payload as u64).wrapping_add(n * s.headers as u64));
        c.tcp.in_segments = c.tcp.in_segments.wrapping_add(n);
        if delivered {
            c.ip.in_delivers = c.ip.in_delivers.wrapping_add(n);
        } else {
            c.tcp.in_errors = c.tcp.in_errors.wrapping_add(1);
        }
    }

    /// A frame dropped before the engine (wrong VLAN, §3.16): InDiscards.
    pub fn count_discard(&mut self, s: &FrameShape) {
        let c = self.family(s.family);
        c.ip.in_discards = c.ip.in_discards.wrapping_add(1);
    }

    pub fn count_retransmits(&mut self, f: StatsFamily, n: u64) {
        let c = self.family(f);
        c.tcp.retransmitted_segments = c.tcp.retransmitted_segments.wrapping_add(n as u32);
    }

    pub fn count_reset_established(&mut self, f: StatsFamily) {
        let c = self.family(f);
        c.tcp.reset_established = c.tcp.reset_established.wrapping_add(1);
    }

    /// The family's counters as reported; `established`: connections in ESTABLISHED or
    /// CLOSE-WAIT now (a gauge, not reset).
    pub fn snapshot(
        &mut self,
        f: StatsFamily,
        established: u32,
    ) -> (IpOffloadStats, TcpOffloadStats) {
        let c = self.family(f);
        let mut tcp = c.tcp;
        tcp.out_segments = c
            .out_total
            .wrapping_sub(u64::from(c.tcp.retransmitted_segments));
        tcp.currently_established = established;
        (c.ip, tcp)
    }

    /// Zero one family (the OID set, C-019).
    pub fn reset(&mut self, f: StatsFamily) {
        *self.family(f) = FamilyCounters::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_frames_count_as_the_segments_the_kernel_cuts() {
        assert_eq!(segments(1448 * 3 + 1, Some(1448)), 4);
        assert_eq!(segments(1448, Some(1448)), 1);
        assert_eq!(segments(0, None), 1);
        let mut c = OffloadCounters::default();
        let s = FrameShape {
            family: StatsFamily::Ipv4,
            headers: 52,
            payload: 1448 * 2,
            rst: false,
        };
        c.count_out(&s, Some(1448));
        c.count_retransmits(StatsFamily::Ipv4, 1);
        let (ip, tcp) = c.snapshot(StatsFamily::Ipv4, 1);
        assert_eq!((ip.out_requests, ip.out_octets), (2, 2 * 1448 + 2 * 52));
        assert_eq!((tcp.out_segments, tcp.retransmitted_segments), (1, 1));
        assert_eq!(
            c.snapshot(StatsFamily::Ipv6, 0).0,
            IpOffloadStats::default()
        );
        c.reset(StatsFamily::Ipv4);
        assert_eq!(
            c.snapshot(StatsFamily::Ipv4, 0).1,
            TcpOffloadStats::default()
        );
    }

    #[test]
    fn counters_wrap_at_their_maximum() {
        // C-020
        let mut c = OffloadCounters::default();
        c.v4.tcp.out_resets = u32::MAX;
        c.v4.ip.out_requests = u64::MAX;
        let s = FrameShape {
            family: StatsFamily::Ipv4,
            headers: 40,
            payload: 0,
            rst: true,
        };
        c.count_out(&s, None);
        assert_eq!((c.v4.tcp.out_resets, c.v4.ip.out_requests), (0, 0));
    }
}
