//! Sequence-space check of one direction of a TCP connection as seen on the wire (a capture
//! or the device's `--pcap`): every byte of the expected range delivered (no gap) and no
//! byte carried twice beyond what retransmissions explain (issue 4, "no sequence gap or
//! duplicate in the pcap"). Used by the data-path tests; sans-io, works on frame bytes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// One TCP segment's place in the sequence space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub len: u32,
}

/// What the check found. `gaps` and `beyond` are byte ranges relative to the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Bytes of [0, len) that no segment carried.
    pub gaps: Vec<(u64, u64)>,
    /// Bytes carried more than once, and the segments that carried any of them.
    pub duplicate_bytes: u64,
    pub duplicate_segments: u64,
    /// Bytes outside [0, len) (before the start or after the end).
    pub outside_bytes: u64,
}

impl StreamReport {
    /// No gap, nothing outside the range, and at most `retransmitted` segments repeating
    /// data (0 on a clean link; the device's RetransmittedSegments plus the impairment's
    /// duplicates under impairment).
    pub fn clean(&self, retransmitted: u64) -> bool {
        self.gaps.is_empty() && self.outside_bytes == 0 && self.duplicate_segments <= retransmitted
    }
}

/// Check `segments` (any order) against the byte range that starts at sequence number
/// `start` and is `len` bytes long. Sequence numbers wrap modulo 2^32; ranges up to 2 GiB.
pub fn check(segments: &[Segment], start: u32, len: u64) -> StreamReport {
    let mut covered: BTreeMap<u64, u64> = BTreeMap::new(); // start → end, disjoint
    let mut r = StreamReport::default();
    for s in segments.iter().filter(|s| s.len > 0) {
        let off = u64::from(s.seq.wrapping_sub(start));
        // A segment starting "before" the start shows up as a huge offset: count it outside.
        if off >= 1 << 31 {
            r.outside_bytes += u64::from(s.len);
            continue;
        }
        let (a, b) = (off, off + u64::from(s.len));
        if b > len {
            r.outside_bytes += b - len.max(a);
        }
        let b = b.min(len);
        if a >= b {
            continue;
        }
        // Ranges overlapping or touching [a, b): ends decrease with starts (disjoint).
        let near: Vec<(u64, u64)> = covered
            .range(..=b)
            .rev()
            .take_while(|(_, e)| **e >= a)
            .map(|(s, e)| (*s, *e))
            .collect();
        let (mut lo, mut hi, mut dup) = (a, b, 0);
        for (s, e) in near {
            dup += e.min(b).saturating_sub(s.max(a));
            lo = lo.min(s);
            hi = hi.max(e);
            covered.remove(&s);
        }
        covered.insert(lo, hi);
        if dup > 0 {
            r.duplicate_bytes += dup;
            r.duplicate_segments += 1;
        }
    }
    // Merge adjacent ranges and list the holes.
    let mut at = 0;
    for (s, e) in &covered {
        if *s > at {
            r.gaps.push((at, *s));
        }
        at = at.max(*e);
    }
    if at < len {
        r.gaps.push((at, len));
    }
    r
}

/// The data segments of one direction (`from` → `to`) in Ethernet frames (optionally
/// 802.1Q-tagged) carrying TCP over IPv4/IPv6.
pub fn segments_of(frames: &[Vec<u8>], from: SocketAddr, to: SocketAddr) -> Vec<Segment> {
    frames
        .iter()
        .filter_map(|f| parse(f))
        .filter(|(src, dst, _)| *src == from && *dst == to)
        .map(|(_, _, s)| s)
        .collect()
}

fn parse(f: &[u8]) -> Option<(SocketAddr, SocketAddr, Segment)> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    if et == 0x8100 {
        off += 4;
        et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    }
    let ip = f.get(off + 2..)?;
    let (src, dst, l4): (IpAddr, IpAddr, &[u8]) = match et {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            if *ip.get(9)? != 6 {
                return None;
            }
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (s.into(), d.into(), ip.get(ihl..total.min(ip.len()))?)
        }
        0x86DD => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (s.into(), d.into(), ip.get(40..(40 + plen).min(ip.len()))?)
        }
        _ => return None,
    };
    let sp = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dp = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    let seq = u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?);
    let doff = usize::from(l4.get(12)? >> 4) * 4;
    let len = l4.len().checked_sub(doff)? as u32;
    Some((
        SocketAddr::new(src, sp),
        SocketAddr::new(dst, dp),
        Segment { seq, len },
    ))
}

/// Why a pcap file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("pcap: {0}")]
    Format(&'static str),
}

/// The frames of a classic pcap file (both byte orders, any link type read as Ethernet).
pub fn read_pcap(bytes: &[u8]) -> Result<Vec<Vec<u8>>, PcapError> {
    let magic = bytes
        .get(..4)
        .ok_or(PcapError::Format("shorter than its magic number"))?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(PcapError::Format("not a pcap magic number")),
    };
    let u32_at = |b: &[u8], o: usize| -> Option<u32> {
        let a: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let mut at = 24;
    let mut out = Vec::new();
    while at < bytes.len() {
        let incl = u32_at(bytes, at + 8).ok_or(PcapError::Format("truncated record header"))?;
        let start = at + 16;
        let end = start
            .checked_add(incl as usize)
            .filter(|e| *e <= bytes.len())
            .ok_or(PcapError::Format("record runs past the end of the file"))?;
        out.push(bytes[start..end].to_vec());
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, len: u32) -> Segment {
        Segment { seq, len }
    }

    #[test]
    fn in_order_stream_is_clean_and_wraps_modulo_2_32() {
        let start = u32::MAX - 1000;
        let segs: Vec<_> = (0..10)
            .map(|i| seg(start.wrapping_add(i * 500), 500))
            .collect();
        let r = check(&segs, start, 5000);
        assert_eq!(r, StreamReport::default());
        assert!(r.clean(0));
    }

    #[test]
    fn gaps_duplicates_and_bytes_outside_are_found() {
        let segs = [seg(100, 100), seg(300, 100), seg(150, 100), seg(500, 50)];
        let r = check(&segs, 100, 420);
        assert_eq!(r.gaps, vec![(150, 200), (300, 400)]);
        assert_eq!((r.duplicate_bytes, r.duplicate_segments), (50, 1));
        assert_eq!(r.outside_bytes, 30);
        assert!(!r.clean(5));
        // A retransmission explains a duplicate, not a gap.
        let segs = [seg(0, 100), seg(100, 100), seg(100, 100)];
        let r = check(&segs, 0, 200);
        assert!(r.clean(1) && !r.clean(0), "{r:?}");
    }

    #[test]
    fn pcap_reader_refuses_garbage_and_reads_records() {
        assert!(read_pcap(b"nope").is_err());
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1];
        f.extend_from_slice(&[0; 20]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&[1, 2, 3]);
        assert_eq!(read_pcap(&f).unwrap(), vec![vec![1, 2, 3]]);
        f.truncate(f.len() - 1);
        assert!(read_pcap(&f).is_err());
    }
}
