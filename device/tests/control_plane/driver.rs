//! Test-only driver side of the control queue pair over real guest memory
//! (`GuestMemoryMmap`): writes descriptor tables and avail rings itself, reads used rings,
//! posts rx buffers and reassembles rx records with chimney-abi's `Reassembler`. The
//! device side is virtio-queue's `Queue` driven by `ControlRing::process`. (virtio-queue's
//! MockSplitQueue is not used: its used ring overlaps the avail ring at size 256.)
#![allow(dead_code)]

use chimney_abi::{Completion, CompletionBody, Event, Reassembler, Request, RxRecord};
use chimney_device::control_ring::{ControlRing, RingActivity};
use chimney_device::state_manipulation::ObjectLimits;
use std::collections::HashMap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const QUEUE_SIZE: u16 = 256;
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const MEM_SIZE: u64 = 128 << 20;
const RX_POOL: u64 = 0x0010_0000;
pub const RX_BUF_SIZE: u32 = 4096;
const DATA_START: u64 = 0x0100_0000;

/// Driver view of one split virtqueue.
pub struct DriverQueue {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
    chains: HashMap<u16, Vec<u16>>,
}

impl DriverQueue {
    /// Lay the rings out at `base` and return the driver view plus the device-side Queue.
    pub fn new(base: u64) -> (Self, Queue) {
        let dq = DriverQueue {
            desc: GuestAddress(base),
            avail: GuestAddress(base + 0x1000),
            used: GuestAddress(base + 0x2000),
            free: (0..QUEUE_SIZE).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
            chains: HashMap::new(),
        };
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(QUEUE_SIZE);
        q.try_set_desc_table_address(dq.desc).expect("desc");
        q.try_set_avail_ring_address(dq.avail).expect("avail");
        q.try_set_used_ring_address(dq.used).expect("used");
        q.set_ready(true);
        (dq, q)
    }

    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let a = self.desc.0 + u64::from(i) * 16;
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(a)).expect("desc write");
    }

    /// Make a chain of (addr, len, device-writable) buffers available. Returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let ids: Vec<u16> = (0..bufs.len())
            .map(|_| self.free.pop().expect("free descriptors"))
            .collect();
        for (k, (addr, len, w)) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let mut flags = if *w { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(
                mem,
                ids[k],
                *addr,
                *len,
                flags,
                if last { 0 } else { ids[k + 1] },
            );
        }
        self.chains.insert(ids[0], ids.clone());
        self.publish(mem, ids[0]);
        ids[0]
    }

    /// Put `head` into the avail ring (for hand-made descriptor tables too).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail.0 + 4 + u64::from(self.avail_idx % QUEUE_SIZE) * 2;
        mem.write_obj(head.to_le(), GuestAddress(slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail.0 + 2))
            .expect("avail idx");
    }

    /// Take descriptors out of the free list for a hand-made chain.
    pub fn take_descs(&mut self, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| self.free.pop().expect("free descriptors"))
            .collect()
    }
    pub fn remember(&mut self, head: u16, ids: Vec<u16>) {
        self.chains.insert(head, ids);
    }

    /// Next used element (id, len), freeing its descriptors.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used.0 + 2))
            .expect("used idx");
        if idx == self.used_seen {
            return None;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let e = self.used.0 + 4 + u64::from(self.used_seen % QUEUE_SIZE) * 8;
        let id: u32 = mem.read_obj(GuestAddress(e)).expect("used id");
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).expect("used len");
        self.used_seen = self.used_seen.wrapping_add(1);
        let id = id as u16;
        if let Some(ids) = self.chains.remove(&id) {
            self.free.extend(ids);
        }
        Some((id, len))
    }
}

/// Guest memory + both control queues + the device's ControlRing.
pub struct Rig {
    pub mem: GuestMemoryMmap,
    pub tx: DriverQueue,
    pub rx: DriverQueue,
    pub txq: Queue,
    pub rxq: Queue,
    pub ring: ControlRing,
    data_next: u64,
    pub rx_bufs: HashMap<u16, u64>,
    rx_free_slots: Vec<u64>,
    reasm: Reassembler,
    /// Records received, in order (completions and events).
    pub inbox: Vec<RxRecord>,
    pub tx_used: Vec<(u16, u32)>,
    pub rx_used_empty: usize,
    /// Repost rx buffers automatically after they are used.
    pub auto_repost: bool,
}

impl Rig {
    pub fn new(limits: ObjectLimits) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("guest memory");
        let (tx, txq) = DriverQueue::new(0);
        let (rx, rxq) = DriverQueue::new(0x1_0000);
        let mut rig = Rig {
            mem,
            tx,
            rx,
            txq,
            rxq,
            ring: ControlRing::new(limits),
            data_next: DATA_START,
            rx_bufs: HashMap::new(),
            rx_free_slots: (0..128)
                .map(|i| RX_POOL + i * u64::from(RX_BUF_SIZE))
                .collect(),
            reasm: Reassembler::new(64 << 20),
            inbox: Vec::new(),
            tx_used: Vec::new(),
            rx_used_empty: 0,
            auto_repost: true,
        };
        rig.post_rx(128);
        rig
    }

    /// Post `n` rx buffers of RX_BUF_SIZE from the pool.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let Some(addr) = self.rx_free_slots.pop() else {
                return;
            };
            let head = self.rx.add_chain(&self.mem, &[(addr, RX_BUF_SIZE, true)]);
            self.rx_bufs.insert(head, addr);
        }
    }

    /// Bump-allocate request memory (wraps; tests are synchronous so old requests are done).
    pub fn alloc(&mut self, len: usize) -> u64 {
        let len = (len as u64 + 63) & !63;
        if self.data_next + len > MEM_SIZE {
            self.data_next = DATA_START;
        }
        let a = self.data_next;
        self.data_next += len;
        a
    }

    /// Send a record as a chain of readable descriptors of at most `piece` bytes each.
    pub fn send_bytes(&mut self, bytes: &[u8], piece: usize) -> u16 {
        let addr = self.alloc(bytes.len().max(1));
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("request write");
        let mut bufs = Vec::new();
        let mut off = 0;
        while off < bytes.len() {
            let n = piece.min(bytes.len() - off);
            bufs.push((addr + off as u64, n as u32, false));
            off += n;
        }
        if bufs.is_empty() {
            bufs.push((addr, 0, false));
        }
        self.tx.add_chain(&self.mem, &bufs)
    }

    /// Run the device and collect everything it produced.
    pub fn run(&mut self) -> RingActivity {
        let act = self.ring.process(&self.mem, &mut self.txq, &mut self.rxq);
        while let Some(u) = self.tx.pop_used(&self.mem) {
            self.tx_used.push(u);
        }
        let mut repost = 0;
        while let Some((id, len)) = self.rx.pop_used(&self.mem) {
            let addr = self.rx_bufs.remove(&id).expect("used rx id was posted");
            if (RX_POOL..RX_POOL + 128 * u64::from(RX_BUF_SIZE)).contains(&addr) {
                self.rx_free_slots.push(addr);
                repost += 1;
            }
            if len == 0 {
                self.rx_used_empty += 1;
                continue;
            }
            let mut buf = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut buf, GuestAddress(addr))
                .expect("rx read");
            if let Some(rec) = self.reasm.push(&buf).expect("device framing is valid") {
                self.inbox
                    .push(RxRecord::decode(&rec).expect("device records decode"));
            }
        }
        if self.auto_repost && repost > 0 {
            self.post_rx(repost);
            // More rx buffers may let queued records out.
            let more = self.run();
            return RingActivity {
                tx_used: act.tx_used || more.tx_used,
                rx_used: act.rx_used || more.rx_used,
            };
        }
        act
    }

    /// Take the completion for `request_id` (and any events before/after it) out of the inbox.
    pub fn take_completion(&mut self, request_id: u64) -> Completion {
        let pos = self
            .inbox
            .iter()
            .position(|r| matches!(r, RxRecord::Completion(c) if c.request_id == request_id))
            .unwrap_or_else(|| {
                panic!(
                    "no completion for request {request_id}; inbox: {} records",
                    self.inbox.len()
                )
            });
        match self.inbox.remove(pos) {
            RxRecord::Completion(c) => c,
            RxRecord::Event(_) => unreachable!(),
        }
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        let mut ev = Vec::new();
        self.inbox.retain(|r| match r {
            RxRecord::Event(e) => {
                ev.push(e.clone());
                false
            }
            _ => true,
        });
        ev
    }

    /// Send a request, run the device, return its completion.
    pub fn call(&mut self, req: &Request) -> Completion {
        let bytes = req.encode();
        let head = self.send_bytes(&bytes, 4096);
        self.run();
        let c = self.take_completion(req.request_id);
        assert_eq!(c.tx_head, head, "completion echoes the tx chain head");
        c
    }

    /// Send raw bytes as one request; return the (single) completion by tx head.
    pub fn call_raw(&mut self, bytes: &[u8]) -> Completion {
        let head = self.send_bytes(bytes, 4096);
        self.run();
        self.take_by_head(head)
    }

    pub fn take_by_head(&mut self, head: u16) -> Completion {
        let pos = self
            .inbox
            .iter()
            .position(|r| matches!(r, RxRecord::Completion(c) if c.tx_head == head))
            .unwrap_or_else(|| panic!("no completion for tx head {head}"));
        match self.inbox.remove(pos) {
            RxRecord::Completion(c) => c,
            RxRecord::Event(_) => unreachable!(),
        }
    }
}

/// Body of an ERROR completion, or a panic naming what came instead.
pub fn error_of(c: &Completion) -> &chimney_abi::ErrorInfo {
    match &c.body {
        CompletionBody::Error(e) => e,
        other => panic!(
            "expected an ERROR completion, got {other:?} (status {:?})",
            c.status
        ),
    }
}

/// Deterministic PRNG for test data (splitmix64); the seed is printed by the tests.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }
    pub fn u8(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Seed from CHIMNEY_TEST_SEED or a fixed default; printed so a run can be repeated.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("CHIMNEY_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x00C0_FFEE);
    println!("{test}: seed {s} (set CHIMNEY_TEST_SEED to repeat)");
    s
}
