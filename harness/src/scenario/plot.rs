//! Time-sequence plots (SVG, hand-written: no plotting dependency for a few polylines):
//! one file per TCP connection found in a scenario's pcap, sequence numbers of data sent in
//! each direction and the ACKs over time, with the offload / terminate moments of the run
//! marked as vertical lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One TCP segment seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub t: Duration,
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub seq: u32,
    pub ack: Option<u32>,
    pub len: u32,
    pub flags: u8,
}

/// Parse an Ethernet frame into a TCP segment (IPv4 or IPv6, no extension headers).
pub fn parse_tcp(t: Duration, frame: &[u8]) -> Option<Segment> {
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut off = 14;
    if ethertype == 0x8100 {
        ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        off = 18;
    }
    let ip = frame.get(off..)?;
    let (src, dst, l4, payload_end) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 6 || ihl < 20 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ihl, total.min(ip.len()))
        }
        0x86dd => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                IpAddr::from(s),
                IpAddr::from(d),
                40,
                (40 + plen).min(ip.len()),
            )
        }
        _ => return None,
    };
    let tcp = ip.get(l4..payload_end)?;
    let doff = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    let len = tcp.len().checked_sub(doff)? as u32;
    Some(Segment {
        t,
        src: (src, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: (dst, u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
        ack: (flags & 0x10 != 0).then(|| u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]])),
        len,
        flags,
    })
}

/// Read every TCP segment of a pcap file, times relative to the first packet (whose
/// absolute timestamp is returned too).
pub fn read_segments(pcap: &Path) -> Result<(Vec<Segment>, Duration), String> {
    let file = std::fs::File::open(pcap).map_err(|e| format!("{}: {e}", pcap.display()))?;
    // A device that saw no frame may not have written even the header.
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok((Vec::new(), Duration::ZERO));
    }
    let mut reader = pcap_file::pcap::PcapReader::new(file)
        .map_err(|e| format!("{}: not a pcap file: {e}", pcap.display()))?;
    let mut out = Vec::new();
    let mut first = None;
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.map_err(|e| format!("{}: {e}", pcap.display()))?;
        let t0 = *first.get_or_insert(pkt.timestamp);
        if let Some(s) = parse_tcp(pkt.timestamp.saturating_sub(t0), &pkt.data) {
            out.push(s);
        }
    }
    Ok((out, first.unwrap_or_default()))
}

type Key = ((IpAddr, u16), (IpAddr, u16));

fn conn_key(s: &Segment) -> Key {
    if s.src <= s.dst {
        (s.src, s.dst)
    } else {
        (s.dst, s.src)
    }
}

/// Write one SVG per TCP connection of `pcap` into `dir`; returns the files written.
pub fn plot_pcap(
    pcap: &Path,
    dir: &Path,
    scenario: &str,
    marks: &[(Duration, String)],
) -> Result<Vec<PathBuf>, String> {
    let (segs, t0) = read_segments(pcap)?;
    // Marks are wall-clock times; the plot's x axis starts at the first packet.
    let marks: Vec<(Duration, String)> = marks
        .iter()
        .filter(|(t, _)| *t >= t0)
        .map(|(t, l)| (t.saturating_sub(t0), l.clone()))
        .collect();
    let mut conns: BTreeMap<Key, Vec<Segment>> = BTreeMap::new();
    for s in segs {
        conns.entry(conn_key(&s)).or_default().push(s);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for (n, (key, segs)) in conns.iter().enumerate() {
        let svg = render(key, segs, &marks);
        let path = dir.join(format!("{scenario}-conn{n}.svg"));
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

/// The SVG for one connection: x = time, y = bytes relative to each direction's first seq.
pub fn render(key: &Key, segs: &[Segment], marks: &[(Duration, String)]) -> String {
    let (w, h, m) = (900.0_f64, 500.0_f64, 60.0_f64);
    let a = key.0;
    let base = |from: (IpAddr, u16)| segs.iter().find(|s| s.src == from).map(|s| s.seq);
    let (base_a, base_b) = (base(key.0), base(key.1));
    let rel = |v: u32, b: Option<u32>| f64::from(v.wrapping_sub(b.unwrap_or(v)));
    // (time, y) series: data sent A→B, data B→A, ACKs from B (of A's data), ACKs from A.
    let mut series: [Vec<(f64, f64)>; 4] = Default::default();
    for s in segs {
        let t = s.t.as_secs_f64();
        let from_a = s.src == a;
        if s.len > 0 || s.flags & 0x03 != 0 {
            let b = if from_a { base_a } else { base_b };
            series[usize::from(!from_a)].push((t, rel(s.seq.wrapping_add(s.len), b)));
        }
        if let Some(ack) = s.ack {
            let b = if from_a { base_b } else { base_a };
            series[2 + usize::from(!from_a)].push((t, rel(ack, b)));
        }
    }
    let tmax = segs
        .iter()
        .map(|s| s.t.as_secs_f64())
        .chain(marks.iter().map(|m| m.0.as_secs_f64()))
        .fold(1e-3, f64::max);
    let ymax = series.iter().flatten().map(|p| p.1).fold(1.0, f64::max);
    let x = |t: f64| m + (t / tmax) * (w - 2.0 * m);
    let y = |v: f64| h - m - (v / ymax) * (h - 2.0 * m);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="monospace" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{m}" y="20">{}:{} ⇄ {}:{} — sequence / ACK over time ({} segments)</text>"#,
        key.0 .0,
        key.0 .1,
        key.1 .0,
        key.1 .1,
        segs.len()
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#,
        h - m,
        w - m,
        h - m,
        h - m
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}">{tmax:.3} s</text><text x="4" y="{}">{ymax:.0} B</text>"#,
        w - m - 40.0,
        h - m + 20.0,
        m
    );
    for (t, label) in marks {
        let xx = x(t.as_secs_f64());
        let _ = writeln!(
            svg,
            r#"<line x1="{xx:.1}" y1="{m}" x2="{xx:.1}" y2="{}" stroke="orange" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="orange">{label}</text>"#,
            h - m,
            xx + 3.0,
            m + 12.0
        );
    }
    let colours = ["#1f77b4", "#d62728", "#7fb7e4", "#f2a0a0"];
    let names = ["data →", "data ←", "ACK of →", "ACK of ←"];
    for (i, pts) in series.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" fill="{}">{}</text>"#,
            w - m - 80.0,
            m + 14.0 * i as f64,
            colours[i],
            names[i]
        );
        if pts.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (t, v) in pts {
            let _ = write!(d, "{:.1},{:.1} ", x(*t), y(*v));
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.2" points="{}"/>"#,
            colours[i],
            d.trim_end()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_v4(seq: u32, ack: u32, len: usize, from_guest: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let total = 20 + 20 + len;
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ];
        let (a, b) = ([192, 0, 2, 2], [192, 0, 2, 1]);
        let (s, d) = if from_guest { (a, b) } else { (b, a) };
        ip.extend_from_slice(&s);
        ip.extend_from_slice(&d);
        f.extend_from_slice(&ip);
        let (sp, dp) = if from_guest {
            (40000u16, 5001u16)
        } else {
            (5001, 40000)
        };
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&sp.to_be_bytes());
        tcp.extend_from_slice(&dp.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(&tcp);
        f.extend(std::iter::repeat_n(0xab, len));
        f
    }

    #[test]
    fn parse_tcp_reads_seq_ack_and_payload_length_of_an_ipv4_segment() {
        let f = frame_v4(1000, 77, 100, true);
        let s = parse_tcp(Duration::from_millis(5), &f).expect("a TCP segment");
        assert_eq!((s.seq, s.ack, s.len), (1000, Some(77), 100), "seen {s:?}");
        assert_eq!(s.src.1, 40000);
        assert_eq!(s.dst.1, 5001);
    }

    #[test]
    fn render_draws_both_directions_and_the_marks() {
        let segs: Vec<Segment> = (0..10)
            .map(|i| {
                parse_tcp(
                    Duration::from_millis(i),
                    &frame_v4(1000 + 100 * i as u32, 1, 100, i % 2 == 0),
                )
                .expect("segment")
            })
            .collect();
        let key = conn_key(&segs[0]);
        let svg = render(&key, &segs, &[(Duration::from_millis(3), "offload".into())]);
        assert!(
            svg.starts_with("<svg"),
            "not an SVG: {}",
            &svg[..40.min(svg.len())]
        );
        assert_eq!(
            svg.matches("<polyline").count(),
            4,
            "expected 4 series in {svg}"
        );
        assert!(svg.contains(">offload</text>"), "offload mark missing");
    }
}
