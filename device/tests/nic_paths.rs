//! Queue pair 0 logic (`nic::Nic`) driven directly on a virtio-queue `Queue` over memfd guest
//! memory, with a real TAP in a namespace: the feature combinations QEMU's order does not
//! cover (legacy 10-byte header, no MRG_RXBUF).

mod common;

use chimney_device::features::NegotiatedNet;
use chimney_device::nic::{Nic, NicStats};
use chimney_wire::{Topology, TopologyConfig};
use common::*;
use std::net::UdpSocket;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

fn device_queue(r: &Ring) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(QUEUE_SIZE);
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (l, h) = split(r.desc);
    q.set_desc_table_address(l, h);
    let (l, h) = split(r.avail);
    q.set_avail_ring_address(l, h);
    let (l, h) = split(r.used);
    q.set_used_ring_address(l, h);
    q.set_ready(true);
    q
}

/// Call `process_rx` until `n` used entries appear (bounded: a hang guard).
fn rx_until(
    nic: &mut Nic,
    fe_ring: &mut Ring,
    q: &mut Queue,
    ram: &GuestRam,
    n: usize,
) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    for _ in 0..2000 {
        nic.process_rx(&ram.mem, q);
        got.extend(fe_ring.take_used(&ram.mem));
        if got.len() >= n {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("expected {n} used rx entries, saw {got:?}");
}

// The TAP must carry only this test's frames: a clean-clone CI run once saw another kernel
// frame (IPv6 autoconf) take the small buffer. So IPv6 is disabled on the TAP, multicast is
// off, the neighbor entry is permanent (no ARP), and whatever the kernel queued before that
// is drained; each stage then waits for its own datagram (by UDP port) and skips others.
#[test]
fn legacy_header_without_mrg_rxbuf_is_10_bytes_both_ways_and_too_big_frames_return_the_buffer_unused(
) {
    let topo = Topology::new(&TopologyConfig {
        ns_prefix: "chimney-dev-nic".into(),
        ..TopologyConfig::default()
    })
    .expect("topology");
    topo.ns
        .ip(&[
            "neigh",
            "add",
            "192.0.2.2",
            "lladdr",
            "52:54:00:12:34:56",
            "dev",
            "tap0",
            "nud",
            "permanent",
        ])
        .expect("neighbor");
    // Keep IPv6 chatter (router solicitations, MLD, DAD) off this TAP so every frame is ours.
    topo.ns
        .ip(&["link", "set", "dev", "tap0", "multicast", "off"])
        .expect("multicast off");
    topo.ns
        .run(|| std::fs::write("/proc/sys/net/ipv6/conf/tap0/disable_ipv6", "1"))
        .expect("netns")
        .expect("disable IPv6 on tap0");
    // Frames the kernel queued before that (read straight from the TAP, not the ring).
    let mut scratch = vec![0u8; 65_600];
    while let Ok(Some(_)) = topo
        .tap
        .read_raw_timeout(&mut scratch, std::time::Duration::from_millis(200))
    {}
    let ram = GuestRam::new();
    let stats = Arc::new(NicStats::default());
    let mut nic = Nic::new(
        Some(Arc::new(topo.tap.try_clone().unwrap())),
        None,
        stats.clone(),
    );
    nic.set_negotiated(NegotiatedNet::from_acked(0)); // legacy: 10-byte header, no MRG_RXBUF
    let mut ring = Ring::new(0);
    let mut q = device_queue(&ring);

    let send = |port: u16, data: Vec<u8>| {
        topo.ns
            .run(move || {
                let s = UdpSocket::bind(("192.0.2.1", 0)).unwrap();
                s.send_to(&data, ("192.0.2.2", port)).unwrap();
            })
            .unwrap()
    };

    // A 64-byte buffer cannot hold a 10 + 542-byte frame: frame dropped, buffer returned
    // with length 0 (a small buffer must not block the ring).
    let small = ring.add_chain(&ram.mem, &[(RX_BUF_BASE, 64, VRING_DESC_F_WRITE)]);
    send(7100, vec![1u8; 500]);
    let used = rx_until(&mut nic, &mut ring, &mut q, &ram, 1);
    assert_eq!(
        used,
        vec![(u32::from(small), 0)],
        "small buffer returned unused"
    );
    assert_eq!(
        stats.snapshot().rx_dropped_too_big,
        1,
        "{:?}",
        stats.snapshot()
    );

    // A big enough buffer gets the next frame with the 10-byte legacy header.
    let big = ring.add_chain(
        &ram.mem,
        &[(RX_BUF_BASE + 0x1000, 2048, VRING_DESC_F_WRITE)],
    );
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    send(7101, data.clone());
    let used = rx_until(&mut nic, &mut ring, &mut q, &ram, 1);
    let frame_len = 14 + 20 + 8 + data.len();
    assert_eq!(
        used,
        vec![(u32::from(big), (10 + frame_len) as u32)],
        "used length = 10-byte header + frame"
    );
    let mut buf = vec![0u8; 10 + frame_len];
    ram.mem
        .read_slice(&mut buf, GuestAddress(RX_BUF_BASE + 0x1000))
        .unwrap();
    assert_eq!(
        &buf[10..16],
        &GUEST_MAC,
        "frame starts right after 10 header bytes"
    );
    assert_eq!(&buf[10 + 42..], &data[..], "datagram bytes");

    // tx with the legacy header: 10 header bytes then the frame reach the peer.
    let mut txr = Ring::new(1);
    let mut txq = device_queue(&txr);
    let peer = topo
        .ns
        .spawn("peer", || {
            let s = UdpSocket::bind(("192.0.2.1", 7200)).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            let mut b = vec![0u8; 2048];
            let n = s.recv(&mut b).expect("peer recv");
            b.truncate(n);
            b
        })
        .unwrap();
    let peer_mac = {
        let out = topo
            .ns
            .command("cat")
            .arg("/sys/class/net/tap0/address")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut m = [0u8; 6];
        for (i, p) in text.trim().split(':').enumerate() {
            m[i] = u8::from_str_radix(p, 16).unwrap();
        }
        m
    };
    let payload = vec![0x5a; 400];
    let mut chain = vec![0u8; 10];
    chain.extend_from_slice(&udp_frame(peer_mac, 7200, 4000, &payload));
    ram.mem
        .write_slice(&chain, GuestAddress(TX_BUF_BASE))
        .unwrap();
    txr.add_chain(&ram.mem, &[(TX_BUF_BASE, chain.len() as u32, 0)]);
    assert!(nic.process_tx(&ram.mem, &mut txq), "tx used entry added");
    assert_eq!(txr.take_used(&ram.mem).len(), 1);
    assert_eq!(peer.join().unwrap(), payload, "peer got the datagram");
}
