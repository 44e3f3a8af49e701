//! Real namespace + TAP tests (root required; they run for real, never skip).

use chimney_wire::{
    NetNs, PcapWriter, Topology, TopologyConfig, VnetHeader, PEER_IPV4, VNET_HDR_LEN,
};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

const OUR_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// An ARP request "who has `target`? tell OUR_IP", built byte by byte.
fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&OUR_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Read frames until one satisfies `pred`, ignoring others (IPv6 router solicitations etc.).
/// Bounded by a frame count and a per-read limit so a broken kernel path fails, not hangs.
fn read_until(tap: &chimney_wire::Tap, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65_550];
    for _ in 0..100 {
        match tap
            .read_raw_timeout(&mut buf, Duration::from_secs(5))
            .expect("read from TAP")
        {
            Some(n) if pred(&buf[VNET_HDR_LEN..n]) => return buf[..n].to_vec(),
            Some(_) => continue,
            None => break,
        }
    }
    panic!("no matching frame from the kernel side of the TAP");
}

#[test]
fn arp_request_written_to_tap_gets_kernel_arp_reply() {
    let topo = Topology::new(&TopologyConfig::default()).expect("topology");
    let sent = topo
        .tap
        .write_frame(&VnetHeader::default(), &arp_request(PEER_IPV4))
        .expect("write ARP request");
    assert!(sent, "TAP queue full on first write");

    let raw = read_until(&topo.tap, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0x00, 0x02]
    });
    let hdr = VnetHeader::parse(&raw).expect("vnet header");
    assert_eq!(
        hdr.gso_type,
        VnetHeader::GSO_NONE,
        "ARP reply must not be GSO"
    );
    let f = &raw[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &OUR_MAC, "reply destination MAC");
    assert_eq!(&f[32..38], &OUR_MAC, "reply target hardware address");
    assert_eq!(
        &f[28..32],
        &PEER_IPV4.octets(),
        "reply sender IP is the peer"
    );
    assert_eq!(&f[38..42], &OUR_IP.octets(), "reply target IP is ours");
    assert_eq!(
        &f[6..12],
        &f[22..28],
        "Ethernet source equals ARP sender MAC"
    );
}

#[test]
fn netns_is_deleted_on_drop_even_after_panic() {
    let ns = NetNs::create("chimney-droptest").expect("create netns");
    let name = ns.name().to_string();
    assert!(
        netns_exists(&name),
        "netns {name} should exist after create"
    );
    let result = std::panic::catch_unwind(move || {
        let _owned = ns;
        panic!("test panic while the namespace is alive");
    });
    assert!(result.is_err());
    assert!(!netns_exists(&name), "netns {name} still exists after drop");
}

#[test]
fn threads_in_netns_see_only_its_interfaces() {
    let topo = Topology::new(&TopologyConfig {
        tap_name: "tapx".into(),
        ..TopologyConfig::default()
    })
    .expect("topology");
    // /proc/thread-self/net shows the calling thread's network namespace.
    let has_tapx = || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
            .expect("read /proc/thread-self/net/dev")
            .lines()
            .any(|l| l.trim_start().starts_with("tapx:"))
    };
    let inside = topo.ns.run(has_tapx).expect("run in netns");
    assert!(inside, "tapx must be visible inside the namespace");
    assert!(
        !has_tapx(),
        "tapx must not be visible outside the namespace"
    );
    // A TCP listener on the peer address binds inside the namespace (that address exists only there).
    let handle = topo
        .ns
        .spawn("listener", || {
            std::net::TcpListener::bind((PEER_IPV4, 0)).map(|l| l.local_addr().is_ok())
        })
        .expect("spawn in netns");
    assert!(
        matches!(handle.join(), Ok(Ok(true))),
        "bind to 192.0.2.1 must work inside the namespace"
    );
    // IPv6 peer address is usable at once (nodad: not tentative, so bind succeeds).
    let v6 = topo
        .ns
        .run(|| std::net::TcpListener::bind((chimney_wire::PEER_IPV6, 0)).map(|_| ()))
        .expect("run in netns");
    assert!(
        v6.is_ok(),
        "bind to [2001:db8::1] inside the namespace: {v6:?}"
    );
    let outside = std::net::TcpListener::bind((PEER_IPV4, 0));
    assert!(
        outside.is_err(),
        "192.0.2.1 must not exist outside the namespace"
    );
    let out = topo
        .ns
        .command("ip")
        .args(["-o", "link", "show", "tapx"])
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "ip netns exec failed: {out:?}");
}

#[test]
fn pcap_file_holds_recorded_frames_byte_exact() {
    let dir = std::env::temp_dir().join(format!("chimney-wire-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("t.pcap");
    let frames: Vec<Vec<u8>> = vec![arp_request(PEER_IPV4), vec![0xab; 1514], vec![7; 60]];
    {
        let w = PcapWriter::create(&path).expect("create pcap");
        for f in &frames {
            w.record(f).expect("record");
        }
    } // dropped: flushed
    let data = std::fs::read(&path).expect("read pcap");
    let mut reader = pcap_file::pcap::PcapReader::new(&data[..]).expect("pcap header");
    assert_eq!(reader.header().datalink, pcap_file::DataLink::ETHERNET);
    let mut seen = Vec::new();
    while let Some(p) = reader.next_packet() {
        seen.push(p.expect("packet").data.into_owned());
    }
    assert_eq!(seen, frames, "frames read back from pcap differ");
    let _ = std::fs::remove_dir_all(&dir);
}
