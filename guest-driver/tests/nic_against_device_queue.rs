//! Queue pair 0 (NicQueues) against virtio-queue's device-side `Queue`: the virtio-net
//! header in front of every frame, rx buffers kept posted, bad lengths as errors.

mod common;

use std::time::Duration;

use chimney_miniport::{NicError, NicQueues, Virtqueue, VirtqueueError, VNET_HDR_LEN};
use common::TestPlatform;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

fn device_queue(p: &TestPlatform, vq: &Virtqueue) -> Queue {
    let mut q = Queue::new(vq.size()).expect("device queue");
    q.set_size(vq.size());
    let a = vq.addresses();
    q.set_desc_table_address(Some(a.desc_table as u32), Some((a.desc_table >> 32) as u32));
    q.set_avail_ring_address(Some(a.avail_ring as u32), Some((a.avail_ring >> 32) as u32));
    q.set_used_ring_address(Some(a.used_ring as u32), Some((a.used_ring >> 32) as u32));
    q.set_ready(true);
    assert!(q.is_valid(&p.mem), "device rejects the ring layout");
    q
}

fn setup() -> (TestPlatform, NicQueues, Queue, Queue) {
    let p = TestPlatform::new();
    let rx = Virtqueue::new(&p, 0, 8, false).unwrap();
    let tx = Virtqueue::new(&p, 1, 8, false).unwrap();
    let drx = device_queue(&p, &rx);
    let dtx = device_queue(&p, &tx);
    let nic = NicQueues::new(&p, rx, tx, 256).expect("nic");
    (p, nic, drx, dtx)
}

/// Device: put `bytes` into the next rx buffer and report `len` as used.
fn deliver(p: &TestPlatform, drx: &mut Queue, bytes: &[u8], len: u32) {
    let chain = drx.pop_descriptor_chain(&p.mem).expect("posted rx buffer");
    let head = chain.head_index();
    let d = chain.into_iter().next().expect("descriptor");
    assert!(d.is_write_only(), "rx buffers must be device-writable");
    p.mem.write_slice(bytes, d.addr()).unwrap();
    drx.add_used(&p.mem, head, len).unwrap();
}

#[test]
fn sent_frame_has_a_zero_virtio_net_header_then_the_frame() {
    let (p, mut nic, _drx, mut dtx) = setup();
    let frame: Vec<u8> = (0..60u8).collect();
    nic.send(&p, &frame).expect("send");
    let chain = dtx.pop_descriptor_chain(&p.mem).expect("tx chain");
    let mut seen = Vec::new();
    for d in chain {
        assert!(!d.is_write_only());
        let mut b = vec![0u8; d.len() as usize];
        p.mem.read_slice(&mut b, d.addr()).unwrap();
        seen.extend_from_slice(&b);
    }
    let mut expected = vec![0u8; VNET_HDR_LEN];
    expected.extend_from_slice(&frame);
    assert_eq!(seen, expected);
}

#[test]
fn received_frame_is_returned_without_header_and_the_buffer_is_reposted() {
    let (p, mut nic, mut drx, _dtx) = setup();
    for round in 0..20u8 {
        let mut bytes = vec![0u8; VNET_HDR_LEN];
        bytes.extend((0..64u8).map(|b| b ^ round));
        deliver(&p, &mut drx, &bytes, bytes.len() as u32);
        let f = nic
            .recv(&p, Duration::from_millis(1))
            .expect("recv")
            .expect("a frame");
        assert_eq!(f, bytes[VNET_HDR_LEN..], "round {round}");
    }
    // 20 frames through an 8-entry queue: buffers were reposted every time.
}

#[test]
fn rx_shorter_than_header_or_longer_than_buffer_is_an_error_and_rx_continues() {
    let (p, mut nic, mut drx, _dtx) = setup();
    deliver(&p, &mut drx, &[0u8; 4], 4);
    assert_eq!(
        nic.recv(&p, Duration::from_millis(1)),
        Err(NicError::RxTooShort { len: 4 })
    );
    deliver(&p, &mut drx, &[0u8; 4], 257);
    assert!(matches!(
        nic.recv(&p, Duration::from_millis(1)),
        Err(NicError::Rx {
            source: VirtqueueError::UsedLenTooLarge {
                len: 257,
                capacity: 256,
                ..
            },
            ..
        })
    ));
    // All 8 rx buffers are posted again: the device can fill 8 in a row.
    for i in 0..8u8 {
        let mut ok = vec![0u8; VNET_HDR_LEN];
        ok.extend_from_slice(b"still working");
        ok.push(i);
        deliver(&p, &mut drx, &ok, ok.len() as u32);
    }
    for i in 0..8u8 {
        let f = nic.recv(&p, Duration::from_millis(1)).unwrap();
        assert_eq!(f.as_deref().map(|f| f[f.len() - 1]), Some(i));
    }
}

#[test]
fn oversized_frame_and_tiny_buffers_are_refused() {
    let (p, mut nic, _drx, _dtx) = setup();
    assert_eq!(
        nic.send(&p, &[0u8; 300]),
        Err(NicError::FrameTooLong {
            len: 300,
            max: 256 - VNET_HDR_LEN
        })
    );
    let rx = Virtqueue::new(&p, 2, 4, false).unwrap();
    let tx = Virtqueue::new(&p, 3, 4, false).unwrap();
    assert_eq!(
        NicQueues::new(&p, rx, tx, 8).err(),
        Some(NicError::BadBufferLength(8))
    );
}
