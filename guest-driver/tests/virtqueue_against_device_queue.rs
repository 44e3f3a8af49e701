//! Our split-virtqueue driver against virtio-queue's real device-side `Queue` (the one the
//! vhost-user backend uses), both over the same vm-memory guest memory.

mod common;

use std::sync::atomic::Ordering;

use chimney_miniport::{Buffer, Platform, UsedBuffer, Virtqueue, VirtqueueError};
use common::TestPlatform;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

fn device_queue(p: &TestPlatform, vq: &Virtqueue, event_idx: bool) -> Queue {
    let mut q = Queue::new(vq.size()).expect("device queue");
    q.set_size(vq.size());
    let a = vq.addresses();
    q.set_desc_table_address(Some(a.desc_table as u32), Some((a.desc_table >> 32) as u32));
    q.set_avail_ring_address(Some(a.avail_ring as u32), Some((a.avail_ring >> 32) as u32));
    q.set_used_ring_address(Some(a.used_ring as u32), Some((a.used_ring >> 32) as u32));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(
        q.is_valid(&p.mem),
        "device rejects our ring layout: {a:?}, size {}",
        vq.size()
    );
    q
}

fn buffer(p: &TestPlatform, len: u32) -> Buffer {
    let r = p.alloc_dma(len as usize, 8).expect("test dma buffer");
    Buffer { addr: r.addr, len }
}

/// A chain as the device sees it: (head, readable bytes, writable (addr, len) descriptors).
type DeviceChain = (u16, Vec<u8>, Vec<(u64, u32)>);

fn device_pop(p: &TestPlatform, q: &mut Queue) -> Option<DeviceChain> {
    let chain = q.pop_descriptor_chain(&p.mem)?;
    let head = chain.head_index();
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for d in chain {
        if d.is_write_only() {
            writable.push((d.addr().0, d.len()));
        } else {
            assert!(
                writable.is_empty(),
                "readable descriptor after a writable one in chain {head}"
            );
            let mut b = vec![0u8; d.len() as usize];
            p.mem.read_slice(&mut b, d.addr()).expect("readable buffer");
            readable.extend_from_slice(&b);
        }
    }
    Some((head, readable, writable))
}

/// Device writes `data` across the writable descriptors.
fn device_fill(p: &TestPlatform, writable: &[(u64, u32)], data: &[u8]) {
    let mut rest = data;
    for (addr, len) in writable {
        let n = rest.len().min(*len as usize);
        p.mem
            .write_slice(&rest[..n], GuestAddress(*addr))
            .expect("writable buffer");
        rest = &rest[n..];
    }
    assert!(
        rest.is_empty(),
        "test wrote more than the writable part holds"
    );
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn chain_with_readable_and_writable_parts_round_trips_byte_exact() {
    let p = TestPlatform::new();
    let mut vq = Virtqueue::new(&p, 3, 16, false).expect("queue");
    let mut dq = device_queue(&p, &vq, false);

    let out = pattern(300, 7);
    let r1 = buffer(&p, 100);
    let r2 = buffer(&p, 200);
    p.write(r1.addr, &out[..100]).unwrap();
    p.write(r2.addr, &out[100..]).unwrap();
    let w1 = buffer(&p, 128);
    let w2 = buffer(&p, 128);
    let head = vq.add(&p, &[r1, r2], &[w1, w2], 0xabc).expect("add");
    assert_eq!(vq.free_descriptors(), 12);
    assert!(vq.kick(&p).expect("kick"), "first kick must notify");
    assert_eq!(p.notifications(3), 1);

    let (dhead, readable, writable) = device_pop(&p, &mut dq).expect("device sees the chain");
    assert_eq!(dhead, head);
    assert_eq!(
        readable, out,
        "device read different bytes than the driver wrote"
    );
    assert_eq!(writable, vec![(w1.addr, 128), (w2.addr, 128)]);
    let reply = pattern(150, 99);
    device_fill(&p, &writable, &reply);
    dq.add_used(&p.mem, dhead, 150).expect("add_used");

    let used = vq.pop_used(&p).expect("pop").expect("a used chain");
    assert_eq!(
        used,
        UsedBuffer {
            token: 0xabc,
            len: 150,
            head
        }
    );
    let mut back = vec![0u8; 150];
    p.read(w1.addr, &mut back[..128]).unwrap();
    p.read(w2.addr, &mut back[128..]).unwrap();
    assert_eq!(back, reply);
    assert_eq!(vq.free_descriptors(), 16);
    assert_eq!(vq.pop_used(&p), Ok(None));
}

#[test]
fn indices_wrap_past_u16_max_with_random_batches_and_out_of_order_completion() {
    let seed: u64 = std::env::var("CHIMNEY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with CHIMNEY_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let p = TestPlatform::new();
    let size = 8u16;
    let mut vq = Virtqueue::new(&p, 0, size, true).expect("queue");
    let mut dq = device_queue(&p, &vq, true);
    // Per-descriptor-slot buffers reused across rounds: 8 readable, 8 writable.
    let rbufs: Vec<Buffer> = (0..size).map(|_| buffer(&p, 8)).collect();
    let wbufs: Vec<Buffer> = (0..size).map(|_| buffer(&p, 8)).collect();

    let mut token = 0u64;
    let mut completed = 0u64;
    while completed < 70_000 {
        // Fill the ring with chains of 1..=3 descriptors (1 readable, 0..=2 writable).
        let mut used_bufs = 0usize;
        let mut outstanding = Vec::new();
        loop {
            let writable = rng.gen_range(0..=2usize);
            if used_bufs + 1 + writable > usize::from(vq.free_descriptors()) {
                break;
            }
            let r = rbufs[used_bufs];
            p.write(r.addr, &token.to_le_bytes()).unwrap();
            let w = &wbufs[used_bufs..used_bufs + writable];
            used_bufs += 1 + writable;
            vq.add(&p, &[r], w, token).expect("add within free count");
            outstanding.push((token, writable as u32 * 8));
            token += 1;
        }
        vq.kick(&p).expect("kick");
        // Device: pop all, complete in a random order.
        let mut chains = Vec::new();
        while let Some(c) = device_pop(&p, &mut dq) {
            chains.push(c);
        }
        assert_eq!(
            chains.len(),
            outstanding.len(),
            "device saw a different count"
        );
        let mut order: Vec<usize> = (0..chains.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        for &i in &order {
            let (head, readable, writable) = &chains[i];
            let t = u64::from_le_bytes(readable[..8].try_into().unwrap());
            let cap: u32 = writable.iter().map(|w| w.1).sum();
            let reply = (!t).to_le_bytes();
            let n = (cap as usize).min(8);
            device_fill(&p, writable, &reply[..n]);
            dq.add_used(&p.mem, *head, n as u32).expect("add_used");
        }
        // Driver: everything comes back with the right token and length.
        let mut back = Vec::new();
        while let Some(u) = vq.pop_used(&p).expect("valid used entries") {
            back.push((u.token, u.len));
        }
        back.sort();
        let expected: Vec<(u64, u32)> =
            outstanding.iter().map(|(t, c)| (*t, (*c).min(8))).collect();
        assert_eq!(back, expected, "seed {seed}");
        completed += back.len() as u64;
        assert_eq!(
            vq.free_descriptors(),
            size,
            "descriptors leaked, seed {seed}"
        );
    }
    // Both 16-bit indices wrapped at least once.
    let used_idx: u16 = p
        .mem
        .load(
            GuestAddress(vq.addresses().used_ring + 2),
            Ordering::Acquire,
        )
        .unwrap();
    assert_eq!(u64::from(used_idx), completed % 65536);
}

#[test]
fn full_ring_refuses_chains_until_the_device_returns_descriptors() {
    let p = TestPlatform::new();
    let mut vq = Virtqueue::new(&p, 1, 4, false).expect("queue");
    let mut dq = device_queue(&p, &vq, false);
    let b = buffer(&p, 64);
    for t in 0..4 {
        vq.add(&p, &[b], &[], t)
            .expect("room for 4 single-descriptor chains");
    }
    assert_eq!(
        vq.add(&p, &[b], &[], 4),
        Err(VirtqueueError::Full { needed: 1, free: 0 })
    );
    let (head, _, _) = device_pop(&p, &mut dq).expect("chain");
    dq.add_used(&p.mem, head, 0).expect("add_used");
    let u = vq.pop_used(&p).expect("pop").expect("used");
    assert_eq!(u.token, 0);
    assert_eq!(
        vq.add(&p, &[b, b], &[], 5),
        Err(VirtqueueError::Full { needed: 2, free: 1 })
    );
    vq.add(&p, &[b], &[], 5).expect("one descriptor free again");
    assert_eq!(vq.add(&p, &[], &[], 6), Err(VirtqueueError::EmptyChain));
}

#[test]
fn queue_size_must_be_power_of_two() {
    let p = TestPlatform::new();
    for bad in [0u16, 3, 100, 65535] {
        assert_eq!(
            Virtqueue::new(&p, 0, bad, false).err(),
            Some(VirtqueueError::BadSize(bad))
        );
    }
}

#[test]
fn event_idx_suppresses_kicks_until_device_moves_avail_event() {
    let p = TestPlatform::new();
    let mut vq = Virtqueue::new(&p, 5, 8, true).expect("queue");
    let mut dq = device_queue(&p, &vq, true);
    let b = buffer(&p, 16);
    assert!(!dq.enable_notification(&p.mem).expect("enable"));

    vq.add(&p, &[b], &[], 1).unwrap();
    assert!(vq.kick(&p).unwrap(), "avail_event 0 crossed by idx 1");
    vq.add(&p, &[b], &[], 2).unwrap();
    assert!(
        !vq.kick(&p).unwrap(),
        "device did not move avail_event, no kick"
    );
    assert_eq!(p.notifications(5), 1);

    assert!(device_pop(&p, &mut dq).is_some());
    assert!(device_pop(&p, &mut dq).is_some());
    assert!(!dq.enable_notification(&p.mem).expect("enable"));
    vq.add(&p, &[b], &[], 3).unwrap();
    assert!(vq.kick(&p).unwrap(), "device asked again at avail_event 2");
    assert_eq!(p.notifications(5), 2);
    assert!(!vq.kick(&p).unwrap(), "nothing new published, no kick");
}

#[test]
fn event_idx_used_event_controls_device_interrupts() {
    let p = TestPlatform::new();
    let mut vq = Virtqueue::new(&p, 0, 8, true).expect("queue");
    let mut dq = device_queue(&p, &vq, true);
    let w = buffer(&p, 16);
    for t in 0..6 {
        vq.add(&p, &[], &[w], t).unwrap();
    }
    let heads: Vec<u16> = (0..6)
        .map(|_| device_pop(&p, &mut dq).expect("chain").0)
        .collect();
    assert!(!vq.enable_callbacks(&p).unwrap(), "nothing used yet");

    dq.add_used(&p.mem, heads[0], 0).unwrap();
    assert!(
        dq.needs_notification(&p.mem).unwrap(),
        "used_event 0 crossed"
    );
    dq.add_used(&p.mem, heads[1], 0).unwrap();
    assert!(
        !dq.needs_notification(&p.mem).unwrap(),
        "driver has not consumed: used_event still 0"
    );
    assert_eq!(vq.pop_used(&p).unwrap().map(|u| u.token), Some(0));
    assert_eq!(vq.pop_used(&p).unwrap().map(|u| u.token), Some(1));
    dq.add_used(&p.mem, heads[2], 0).unwrap();
    assert!(
        dq.needs_notification(&p.mem).unwrap(),
        "used_event moved to 2"
    );

    vq.disable_callbacks(&p).unwrap();
    assert_eq!(vq.pop_used(&p).unwrap().map(|u| u.token), Some(2));
    dq.add_used(&p.mem, heads[3], 0).unwrap();
    assert!(
        !dq.needs_notification(&p.mem).unwrap(),
        "callbacks disabled: no interrupt"
    );
    assert!(
        vq.enable_callbacks(&p).unwrap(),
        "enable_callbacks reports the entry that arrived while disabled"
    );
}

#[test]
fn without_event_idx_used_flags_suppress_kicks_and_avail_flags_suppress_interrupts() {
    let p = TestPlatform::new();
    let mut vq = Virtqueue::new(&p, 1, 8, false).expect("queue");
    let mut dq = device_queue(&p, &vq, false);
    let b = buffer(&p, 16);
    dq.disable_notification(&p.mem).unwrap();
    vq.add(&p, &[b], &[], 1).unwrap();
    assert!(!vq.kick(&p).unwrap(), "VRING_USED_F_NO_NOTIFY set");
    assert!(dq.enable_notification(&p.mem).unwrap(), "pending chain");
    vq.add(&p, &[b], &[], 2).unwrap();
    assert!(vq.kick(&p).unwrap(), "flag cleared");

    let avail_ring = vq.addresses().avail_ring;
    let avail_flags = |p: &TestPlatform| -> u16 {
        p.mem
            .load(GuestAddress(avail_ring), Ordering::Acquire)
            .unwrap()
    };
    vq.disable_callbacks(&p).unwrap();
    assert_eq!(avail_flags(&p), 1, "VRING_AVAIL_F_NO_INTERRUPT");
    vq.enable_callbacks(&p).unwrap();
    assert_eq!(avail_flags(&p), 0);
}

/// Write a used entry by hand, as a broken or hostile device would.
fn forge_used(p: &TestPlatform, vq: &Virtqueue, slot: u16, id: u32, len: u32, idx: u16) {
    let used = vq.addresses().used_ring;
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&id.to_le_bytes());
    e[4..].copy_from_slice(&len.to_le_bytes());
    p.mem
        .write_slice(&e, GuestAddress(used + 4 + 8 * u64::from(slot % vq.size())))
        .unwrap();
    p.mem
        .store(idx.to_le(), GuestAddress(used + 2), Ordering::Release)
        .unwrap();
}

#[test]
fn bad_used_entries_are_errors_and_the_queue_keeps_working() {
    let p = TestPlatform::new();
    let mut vq = Virtqueue::new(&p, 2, 8, false).expect("queue");
    let w = buffer(&p, 64);
    let head = vq.add(&p, &[], &[w], 7).unwrap();

    forge_used(&p, &vq, 0, 9, 0, 1);
    assert_eq!(
        vq.pop_used(&p),
        Err(VirtqueueError::UsedIdOutOfRange { id: 9, size: 8 })
    );
    let not_ours = (head + 3) % 8;
    forge_used(&p, &vq, 1, u32::from(not_ours), 0, 2);
    assert_eq!(
        vq.pop_used(&p),
        Err(VirtqueueError::UsedIdNotInFlight {
            id: u32::from(not_ours)
        })
    );
    forge_used(&p, &vq, 2, u32::from(head), 65, 3);
    assert_eq!(
        vq.pop_used(&p),
        Err(VirtqueueError::UsedLenTooLarge {
            head,
            token: 7,
            len: 65,
            capacity: 64
        })
    );
    assert_eq!(vq.free_descriptors(), 8, "the chain is freed all the same");

    // A read-only chain has no writable capacity.
    let r = buffer(&p, 32);
    let h2 = vq.add(&p, &[r], &[], 8).unwrap();
    forge_used(&p, &vq, 3, u32::from(h2), 1, 4);
    assert!(matches!(
        vq.pop_used(&p),
        Err(VirtqueueError::UsedLenTooLarge { capacity: 0, .. })
    ));

    // A valid entry after all that is accepted.
    let h3 = vq.add(&p, &[], &[w], 9).unwrap();
    forge_used(&p, &vq, 4, u32::from(h3), 64, 5);
    assert_eq!(
        vq.pop_used(&p),
        Ok(Some(UsedBuffer {
            token: 9,
            len: 64,
            head: h3
        }))
    );

    // used.idx running more than a ring ahead is refused without consuming anything.
    forge_used(&p, &vq, 5, 0, 0, 5 + 9);
    assert_eq!(
        vq.pop_used(&p),
        Err(VirtqueueError::UsedIndexJump {
            last: 5,
            seen: 14,
            size: 8
        })
    );
}

#[test]
fn unpublished_chains_stay_invisible_until_publish_then_arrive_in_order() {
    let p = TestPlatform::new();
    let mut vq = Virtqueue::new(&p, 0, 8, false).expect("queue");
    let mut dq = device_queue(&p, &vq, false);
    let b = buffer(&p, 16);
    let h1 = vq.add_unpublished(&p, &[b], &[], 1).unwrap();
    let h2 = vq.add_unpublished(&p, &[b], &[], 2).unwrap();
    assert!(
        device_pop(&p, &mut dq).is_none(),
        "device saw a chain before publish"
    );
    vq.publish(&p).unwrap();
    assert_eq!(device_pop(&p, &mut dq).map(|c| c.0), Some(h1));
    assert_eq!(device_pop(&p, &mut dq).map(|c| c.0), Some(h2));
    assert!(vq.kick(&p).unwrap(), "one kick for the batch");
}
