//! Queue pair 0 through the real device: the guest-driver's NIC path on the in-process VMM,
//! `chimney-device` on a TAP in a private namespace, the Linux kernel as the peer.
//! Needs root (netns, TAP).

use std::time::Duration;

use chimney_harness::frames::{self, GUEST_MAC};
use chimney_harness::{TestBed, TestBedConfig};
use chimney_miniport::NicQueues;
use chimney_wire::{GUEST_IPV4, PEER_IPV4};

/// Generous bound so a broken device fails the test instead of hanging it (not a timing
/// assertion: a healthy run answers in milliseconds).
const WAIT: Duration = Duration::from_secs(10);
const MAX_FRAMES: usize = 64;

fn start() -> (TestBed, NicQueues) {
    let mut bed = TestBed::start(&TestBedConfig::default()).expect("namespace + device + VMM");
    let rx = bed.vmm.create_queue(0, 256).expect("rx queue 0");
    let tx = bed.vmm.create_queue(1, 256).expect("tx queue 1");
    let nic = NicQueues::new(&**bed.vmm.platform(), rx, tx, 2048).expect("NIC queues");
    (bed, nic)
}

/// Receive frames until `want` accepts one (the kernel also sends IPv6 ND/MLD frames).
fn recv_until<T>(bed: &TestBed, nic: &mut NicQueues, want: impl Fn(&[u8]) -> Option<T>) -> T {
    let mut seen = Vec::new();
    for _ in 0..MAX_FRAMES {
        match nic.recv(&**bed.vmm.platform(), WAIT).expect("rx") {
            Some(f) => {
                if let Some(t) = want(&f) {
                    return t;
                }
                seen.push(f.len());
            }
            None => break,
        }
    }
    panic!("expected frame never arrived; other frames seen (lengths): {seen:?}");
}

#[test]
fn arp_request_on_queue_pair_0_gets_the_linux_peers_reply_in_an_rx_buffer() {
    let (bed, mut nic) = start();
    let peer_mac = bed.peer_mac("tap0").expect("peer MAC");
    let req = frames::arp_request(GUEST_MAC, GUEST_IPV4, PEER_IPV4);
    nic.send(&**bed.vmm.platform(), &req).expect("tx");
    let reply = recv_until(&bed, &mut nic, frames::parse_arp_reply);
    assert_eq!(
        reply,
        frames::ArpReply {
            eth_dst: GUEST_MAC,
            sender_mac: peer_mac,
            sender_ip: PEER_IPV4,
            target_mac: GUEST_MAC,
            target_ip: GUEST_IPV4,
        }
    );
}

#[test]
fn icmp_echo_payload_comes_back_byte_exact_from_the_linux_peer() {
    let (bed, mut nic) = start();
    let peer_mac = bed.peer_mac("tap0").expect("peer MAC");
    // Resolve first so the kernel knows our MAC for the reply.
    nic.send(
        &**bed.vmm.platform(),
        &frames::arp_request(GUEST_MAC, GUEST_IPV4, PEER_IPV4),
    )
    .expect("tx arp");
    recv_until(&bed, &mut nic, frames::parse_arp_reply);
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    for seq in 1..=3u16 {
        let req = frames::icmp_echo_request(
            GUEST_MAC, peer_mac, GUEST_IPV4, PEER_IPV4, 0x4321, seq, &payload,
        );
        nic.send(&**bed.vmm.platform(), &req).expect("tx echo");
        let (src, id, rseq, data) = recv_until(&bed, &mut nic, frames::parse_icmp_echo_reply);
        assert_eq!((src, id, rseq), (PEER_IPV4, 0x4321, seq));
        assert_eq!(data, payload, "echo payload differs (seq {seq})");
    }
}
