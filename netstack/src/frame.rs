//! Frames on the wire: parsing (checked, via smoltcp's wire views) into representations the
//! engine works with, and emission of the frames the engine sends.
//!
//! Every parse error names the layer and field that was wrong; nothing here panics on any
//! input (the proptest corpus in `tests/frame_fuzz.rs` runs this over malformed frames).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, NdiscRepr, TcpPacket,
    TcpRepr,
};

use crate::tcp::tcb::{OutSegment, Segment};

pub type Mac = [u8; 6];
pub const BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_VLAN: u16 = 0x8100;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("Ethernet header truncated ({len} bytes)")]
    EthernetTruncated { len: usize },
    #[error("802.1Q tag truncated")]
    VlanTruncated,
    #[error("ARP packet malformed or not Ethernet/IPv4")]
    ArpMalformed,
    #[error("IPv4 header malformed (version, IHL, total length or fragment)")]
    Ipv4Malformed,
    #[error("IPv4 header checksum wrong")]
    Ipv4Checksum,
    #[error("IPv6 header malformed (version or payload length)")]
    Ipv6Malformed,
    #[error("IPv6 extension header {next_header} not supported")]
    Ipv6ExtensionHeader { next_header: u8 },
    #[error("ICMPv6 message malformed or checksum wrong")]
    Icmpv6Malformed,
    #[error("TCP header malformed (data offset, ports, flag combination or options)")]
    TcpMalformed,
    #[error("TCP checksum wrong")]
    TcpChecksum,
}

/// What a frame carried, as far as the engine cares.
#[derive(Debug, Clone, Copy)]
pub enum Packet<'a> {
    Arp(ArpRepr),
    NeighborSolicit {
        src: Ipv6Addr,
        target: Ipv6Addr,
        lladdr: Option<Mac>,
    },
    NeighborAdvert {
        target: Ipv6Addr,
        lladdr: Option<Mac>,
    },
    Tcp {
        src: IpAddr,
        dst: IpAddr,
        seg: Segment<'a>,
    },
    /// Well-formed but of no interest (other ethertypes, UDP, other ICMP).
    Ignored,
}

#[derive(Debug, Clone, Copy)]
pub struct ParsedFrame<'a> {
    pub src: Mac,
    pub dst: Mac,
    /// 802.1Q TCI if the frame was tagged.
    pub vlan_tci: Option<u16>,
    pub packet: Packet<'a>,
}

fn caps(verify: bool) -> ChecksumCapabilities {
    if verify {
        ChecksumCapabilities::default()
    } else {
        ChecksumCapabilities::ignored()
    }
}

/// Parse an Ethernet II frame (optionally 802.1Q-tagged). `verify_checksums` = false when the
/// device already validated them (virtio `DATA_VALID`/`NEEDS_CSUM` from the TAP).
pub fn parse_frame(frame: &[u8], verify_checksums: bool) -> Result<ParsedFrame<'_>, FrameError> {
    let eth = EthernetFrame::new_checked(frame)
        .map_err(|_| FrameError::EthernetTruncated { len: frame.len() })?;
    let src = eth.src_addr().0;
    let dst = eth.dst_addr().0;
    let mut ethertype = u16::from(eth.ethertype());
    let mut payload = eth.payload();
    let mut vlan_tci = None;
    if ethertype == ETHERTYPE_VLAN {
        if payload.len() < 4 {
            return Err(FrameError::VlanTruncated);
        }
        vlan_tci = Some(u16::from_be_bytes([payload[0], payload[1]]));
        ethertype = u16::from_be_bytes([payload[2], payload[3]]);
        payload = &payload[4..];
    }
    let packet = match EthernetProtocol::from(ethertype) {
        EthernetProtocol::Arp => {
            let p = ArpPacket::new_checked(payload).map_err(|_| FrameError::ArpMalformed)?;
            Packet::Arp(ArpRepr::parse(&p).map_err(|_| FrameError::ArpMalformed)?)
        }
        EthernetProtocol::Ipv4 => parse_ipv4(payload, verify_checksums)?,
        EthernetProtocol::Ipv6 => parse_ipv6(payload, verify_checksums)?,
        _ => Packet::Ignored,
    };
    Ok(ParsedFrame {
        src,
        dst,
        vlan_tci,
        packet,
    })
}

fn parse_ipv4(buf: &[u8], verify: bool) -> Result<Packet<'_>, FrameError> {
    let ip = Ipv4Packet::new_checked(buf).map_err(|_| FrameError::Ipv4Malformed)?;
    if ip.version() != 4 || ip.more_frags() || ip.frag_offset() != 0 {
        return Err(FrameError::Ipv4Malformed);
    }
    if verify && !ip.verify_checksum() {
        return Err(FrameError::Ipv4Checksum);
    }
    if ip.next_header() != IpProtocol::Tcp {
        return Ok(Packet::Ignored);
    }
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    // The payload ends at the IPv4 total length (Ethernet padding is cut off).
    let hl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let payload = buf.get(hl..total).ok_or(FrameError::Ipv4Malformed)?;
    let seg = parse_tcp(payload, IpAddress::Ipv4(s), IpAddress::Ipv4(d), verify)?;
    Ok(Packet::Tcp {
        src: IpAddr::V4(s),
        dst: IpAddr::V4(d),
        seg,
    })
}

fn parse_ipv6(buf: &[u8], verify: bool) -> Result<Packet<'_>, FrameError> {
    let ip = Ipv6Packet::new_checked(buf).map_err(|_| FrameError::Ipv6Malformed)?;
    if ip.version() != 6 {
        return Err(FrameError::Ipv6Malformed);
    }
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    let len = usize::from(ip.payload_len());
    let payload = buf.get(40..40 + len).ok_or(FrameError::Ipv6Malformed)?;
    match ip.next_header() {
        IpProtocol::Tcp => {
            let seg = parse_tcp(payload, IpAddress::Ipv6(s), IpAddress::Ipv6(d), verify)?;
            Ok(Packet::Tcp {
                src: IpAddr::V6(s),
                dst: IpAddr::V6(d),
                seg,
            })
        }
        IpProtocol::Icmpv6 => {
            let p = Icmpv6Packet::new_checked(payload).map_err(|_| FrameError::Icmpv6Malformed)?;
            // Neighbor discovery must arrive with hop limit 255 (RFC 4861 §7.1).
            let repr = Icmpv6Repr::parse(&s, &d, &p, &caps(verify))
                .map_err(|_| FrameError::Icmpv6Malformed)?;
            let mac = |l: Option<smoltcp::wire::RawHardwareAddress>| {
                l.and_then(|l| <[u8; 6]>::try_from(l.as_bytes()).ok())
            };
            Ok(match repr {
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                    target_addr,
                    lladdr,
                }) if ip.hop_limit() == 255 => Packet::NeighborSolicit {
                    src: s,
                    target: target_addr,
                    lladdr: mac(lladdr),
                },
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                    target_addr,
                    lladdr,
                    ..
                }) if ip.hop_limit() == 255 => Packet::NeighborAdvert {
                    target: target_addr,
                    lladdr: mac(lladdr),
                },
                _ => Packet::Ignored,
            })
        }
        IpProtocol::HopByHop
        | IpProtocol::Ipv6Route
        | IpProtocol::Ipv6Frag
        | IpProtocol::Ipv6Opts => Err(FrameError::Ipv6ExtensionHeader {
            next_header: u8::from(ip.next_header()),
        }),
        _ => Ok(Packet::Ignored),
    }
}

fn parse_tcp(
    buf: &[u8],
    src: IpAddress,
    dst: IpAddress,
    verify: bool,
) -> Result<Segment<'_>, FrameError> {
    let p = TcpPacket::new_checked(buf).map_err(|_| FrameError::TcpMalformed)?;
    if verify && !p.verify_checksum(&src, &dst) {
        return Err(FrameError::TcpChecksum);
    }
    let r = TcpRepr::parse(&p, &src, &dst, &ChecksumCapabilities::ignored())
        .map_err(|_| FrameError::TcpMalformed)?;
    // smoltcp folds flags into one `control`; FIN and SYN come back from the raw header.
    Ok(Segment {
        src_port: r.src_port,
        dst_port: r.dst_port,
        seq: r.seq_number.0 as u32,
        ack: r.ack_number.map(|a| a.0 as u32),
        syn: p.syn(),
        fin: p.fin(),
        rst: p.rst(),
        window: r.window_len,
        mss: r.max_seg_size,
        wscale: r.window_scale,
        sack_permitted: r.sack_permitted,
        sack: r.sack_ranges,
        ts: r.timestamp.map(|t| (t.tsval, t.tsecr)),
        payload: r.payload,
    })
}

// ---- Emission ----------------------------------------------------------------------

/// Layer-2 addressing of an outgoing frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2 {
    pub src: Mac,
    pub dst: Mac,
    /// 802.1Q TCI to tag with (§3.16), or untagged.
    pub vlan_tci: Option<u16>,
}

/// IP header parameters from the cached TCP state (§2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpParams {
    pub ttl: u8,
    pub tos: u8,
    pub flow_label: u32,
    pub ident: u16,
}

/// How the TCP checksum is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Computed in full here.
    Full,
    /// Pseudo-header sum only; the device finishes it (virtio `NEEDS_CSUM`).
    Partial,
}

fn emit_l2(buf: &mut [u8], l2: &L2, ethertype: u16) -> usize {
    buf[0..6].copy_from_slice(&l2.dst);
    buf[6..12].copy_from_slice(&l2.src);
    let mut off = 12;
    if let Some(tci) = l2.vlan_tci {
        buf[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        buf[14..16].copy_from_slice(&tci.to_be_bytes());
        off = 16;
    }
    buf[off..off + 2].copy_from_slice(&ethertype.to_be_bytes());
    off + 2
}

/// Internet checksum accumulation that works across slices of any length.
#[derive(Debug, Clone, Copy, Default)]
pub struct Csum {
    sum: u64,
    odd: bool,
}

impl Csum {
    pub fn add(&mut self, data: &[u8]) {
        let mut s: u64 = 0;
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            s += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [b] = chunks.remainder() {
            s += u64::from(u16::from_be_bytes([*b, 0]));
        }
        let folded = fold(s);
        // Data starting at an odd offset contributes byte-swapped (RFC 1071 §2(B)).
        self.sum += u64::from(if self.odd {
            folded.swap_bytes()
        } else {
            folded
        });
        if data.len() % 2 == 1 {
            self.odd = !self.odd;
        }
    }
    pub fn folded(&self) -> u16 {
        fold(self.sum)
    }
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo_header(src: IpAddr, dst: IpAddr, len: usize) -> Csum {
    let mut c = Csum::default();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            c.add(&s.octets());
            c.add(&d.octets());
            c.add(&[0, 6]);
            c.add(&(len as u16).to_be_bytes());
        }
        (s, d) => {
            c.add(&ip6(s).octets());
            c.add(&ip6(d).octets());
            c.add(&(len as u32).to_be_bytes());
            c.add(&[0, 0, 0, 6]);
        }
    }
    c
}

fn ip6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// Offsets a virtio header needs for checksum and segmentation offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLayout {
    /// Offset of the TCP header in the frame (virtio `csum_start`).
    pub l4_offset: usize,
    /// Ethernet + IP + TCP header bytes (virtio `hdr_len`).
    pub header_len: usize,
}

/// Longest TCP header we emit (20 + 40 bytes of options).
pub const MAX_TCP_HEADER: usize = 60;
/// Longest Ethernet + 802.1Q + IPv6 header.
pub const MAX_L2_L3_HEADER: usize = 18 + 40;

/// Write one TCP segment as a whole frame into `buf` (which must hold headers + payload).
#[allow(clippy::too_many_arguments)]
pub fn emit_tcp(
    buf: &mut [u8],
    l2: &L2,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    ip: &IpParams,
    seg: &OutSegment,
    payload: (&[u8], &[u8]),
    mode: ChecksumMode,
) -> (usize, TcpLayout) {
    let v4 = matches!(src.0, IpAddr::V4(_));
    let l3 = emit_l2(buf, l2, if v4 { 0x0800 } else { 0x86dd });
    let ip_hdr = if v4 { 20 } else { 40 };
    let l4 = l3 + ip_hdr;
    let tcp_hdr = write_tcp_header(&mut buf[l4..], src.1, dst.1, seg);
    let plen = payload.0.len() + payload.1.len();
    let p0 = l4 + tcp_hdr;
    buf[p0..p0 + payload.0.len()].copy_from_slice(payload.0);
    buf[p0 + payload.0.len()..p0 + plen].copy_from_slice(payload.1);
    let tcp_len = tcp_hdr + plen;
    match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => write_ipv4(&mut buf[l3..l4], s, d, ip, tcp_len),
        (s, d) => write_ipv6(&mut buf[l3..l4], ip6(s), ip6(d), ip, tcp_len),
    }
    let mut c = pseudo_header(src.0, dst.0, tcp_len);
    let csum = match mode {
        ChecksumMode::Full => {
            c.add(&buf[l4..p0]);
            c.add(payload.0);
            c.add(payload.1);
            !c.folded()
        }
        ChecksumMode::Partial => c.folded(),
    };
    buf[l4 + 16..l4 + 18].copy_from_slice(&csum.to_be_bytes());
    (
        p0 + plen,
        TcpLayout {
            l4_offset: l4,
            header_len: p0,
        },
    )
}

fn write_ipv4(b: &mut [u8], s: Ipv4Addr, d: Ipv4Addr, ip: &IpParams, payload: usize) {
    b[0] = 0x45;
    b[1] = ip.tos;
    b[2..4].copy_from_slice(&((20 + payload).min(0xffff) as u16).to_be_bytes());
    b[4..6].copy_from_slice(&ip.ident.to_be_bytes());
    b[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF (§3.19)
    b[8] = ip.ttl;
    b[9] = 6;
    b[10..12].fill(0);
    b[12..16].copy_from_slice(&s.octets());
    b[16..20].copy_from_slice(&d.octets());
    let mut c = Csum::default();
    c.add(&b[..20]);
    let cs = !c.folded();
    b[10..12].copy_from_slice(&cs.to_be_bytes());
}

fn write_ipv6(b: &mut [u8], s: Ipv6Addr, d: Ipv6Addr, ip: &IpParams, payload: usize) {
    let w = (6u32 << 28) | (u32::from(ip.tos) << 20) | (ip.flow_label & 0xfffff);
    b[0..4].copy_from_slice(&w.to_be_bytes());
    b[4..6].copy_from_slice(&(payload.min(0xffff) as u16).to_be_bytes());
    b[6] = 6;
    b[7] = ip.ttl;
    b[8..24].copy_from_slice(&s.octets());
    b[24..40].copy_from_slice(&d.octets());
}

fn write_tcp_header(b: &mut [u8], sport: u16, dport: u16, s: &OutSegment) -> usize {
    b[0..2].copy_from_slice(&sport.to_be_bytes());
    b[2..4].copy_from_slice(&dport.to_be_bytes());
    b[4..8].copy_from_slice(&s.seq.to_be_bytes());
    b[8..12].copy_from_slice(&s.ack.unwrap_or(0).to_be_bytes());
    let mut flags = 0u8;
    if s.fin {
        flags |= 0x01;
    }
    if s.syn {
        flags |= 0x02;
    }
    if s.rst {
        flags |= 0x04;
    }
    if s.psh {
        flags |= 0x08;
    }
    if s.ack.is_some() {
        flags |= 0x10;
    }
    b[13] = flags;
    b[14..16].copy_from_slice(&s.window.to_be_bytes());
    b[16..20].fill(0); // checksum, urgent pointer
    let mut o = 20;
    let mut put = |bytes: &[u8], o: &mut usize| {
        b[*o..*o + bytes.len()].copy_from_slice(bytes);
        *o += bytes.len();
    };
    if let Some(mss) = s.mss {
        let m = mss.to_be_bytes();
        put(&[2, 4, m[0], m[1]], &mut o);
    }
    match (s.sack_permitted, s.ts) {
        (sp, Some((val, ecr))) => {
            put(if sp { &[4, 2] } else { &[1, 1] }, &mut o);
            put(&[8, 10], &mut o);
            put(&val.to_be_bytes(), &mut o);
            put(&ecr.to_be_bytes(), &mut o);
        }
        (true, None) => put(&[1, 1, 4, 2], &mut o),
        (false, None) => {}
    }
    if let Some(ws) = s.wscale {
        put(&[1, 3, 3, ws], &mut o);
    }
    let n = s.sack.iter().flatten().count();
    if n > 0 && !s.syn {
        put(&[1, 1, 5, (2 + 8 * n) as u8], &mut o);
        for (l, r) in s.sack.iter().flatten() {
            put(&l.to_be_bytes(), &mut o);
            put(&r.to_be_bytes(), &mut o);
        }
    }
    b[12] = ((o / 4) as u8) << 4;
    o
}

/// ARP request or reply (Ethernet/IPv4).
pub fn emit_arp(
    buf: &mut [u8],
    l2: &L2,
    op: ArpOperation,
    sha: Mac,
    spa: Ipv4Addr,
    tha: Mac,
    tpa: Ipv4Addr,
) -> usize {
    let off = emit_l2(buf, l2, 0x0806);
    let repr = ArpRepr::EthernetIpv4 {
        operation: op,
        source_hardware_addr: EthernetAddress(sha),
        source_protocol_addr: spa,
        target_hardware_addr: EthernetAddress(tha),
        target_protocol_addr: tpa,
    };
    let mut p = ArpPacket::new_unchecked(&mut buf[off..off + 28]);
    repr.emit(&mut p);
    off + 28
}

/// Neighbor solicitation (`solicit`) or solicited advertisement, with our link-layer address.
pub fn emit_ndisc(
    buf: &mut [u8],
    l2: &L2,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    solicit: bool,
) -> usize {
    let off = emit_l2(buf, l2, 0x86dd);
    let lladdr = Some(smoltcp::wire::RawHardwareAddress::from_bytes(&l2.src));
    let nd = if solicit {
        NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr,
        }
    } else {
        NdiscRepr::NeighborAdvert {
            flags: smoltcp::wire::NdiscNeighborFlags::SOLICITED
                | smoltcp::wire::NdiscNeighborFlags::OVERRIDE,
            target_addr: target,
            lladdr,
        }
    };
    let icmp = Icmpv6Repr::Ndisc(nd);
    let len = icmp.buffer_len();
    write_ipv6(
        &mut buf[off..off + 40],
        src,
        dst,
        &IpParams {
            ttl: 255,
            tos: 0,
            flow_label: 0,
            ident: 0,
        },
        len,
    );
    buf[off + 6] = 58; // ICMPv6
    let mut p = Icmpv6Packet::new_unchecked(&mut buf[off + 40..off + 40 + len]);
    icmp.emit(&src, &dst, &mut p, &ChecksumCapabilities::default());
    off + 40 + len
}

/// The solicited-node multicast address of `a` and its Ethernet mapping (RFC 4291, RFC 2464).
pub fn solicited_node(a: Ipv6Addr) -> (Ipv6Addr, Mac) {
    let o = a.octets();
    let ip = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    let m = ip.octets();
    (ip, [0x33, 0x33, m[12], m[13], m[14], m[15]])
}
