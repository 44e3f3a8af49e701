//! The data-pair layer (`DataChannel`) against a device side made of virtio-queue's real
//! `Queue` and chimney-abi's data records: requests byte-exact as the ABI encodes them,
//! records reassembled across rx buffers, slot exhaustion and reuse, bad records reported
//! with the ring still serving.

mod common;

use chimney_abi::data_io::{DataRecord, DataRequest, DataRxKind};
use chimney_abi::framing::fragment;
use chimney_abi::{DeviceHandle, NdisStatus};
use chimney_miniport::data::{DataChannel, DataConfig, DataError};
use chimney_miniport::Virtqueue;
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
    assert!(q.is_valid(&p.mem));
    q
}

struct Sim {
    tx: Queue,
    rx: Queue,
    seq: u32,
}

impl Sim {
    fn pop(&mut self, p: &TestPlatform, complete: bool) -> Option<Vec<u8>> {
        let chain = self.tx.pop_descriptor_chain(&p.mem)?;
        let head = chain.head_index();
        let mut bytes = Vec::new();
        for d in chain {
            let mut b = vec![0u8; d.len() as usize];
            p.mem.read_slice(&mut b, d.addr()).expect("request buffer");
            bytes.extend_from_slice(&b);
        }
        if complete {
            self.tx.add_used(&p.mem, head, 0).expect("tx used");
        }
        Some(bytes)
    }
    fn send(&mut self, p: &TestPlatform, record: &[u8]) {
        let mut off = 0;
        while off < record.len() {
            let chain = self.rx.pop_descriptor_chain(&p.mem).expect("rx posted");
            let head = chain.head_index();
            let d = chain.into_iter().next().expect("one descriptor");
            let (buf, n) = fragment(record, self.seq, off, d.len() as usize).expect("fits");
            p.mem.write_slice(&buf, d.addr()).expect("rx write");
            self.rx
                .add_used(&p.mem, head, buf.len() as u32)
                .expect("rx used");
            off += n;
        }
        self.seq = self.seq.wrapping_add(1);
    }
}

fn setup(tx_slots: usize) -> (TestPlatform, DataChannel, Sim) {
    let p = TestPlatform::new();
    let rx = Virtqueue::new(&p, 4, 64, false).expect("rx");
    let tx = Virtqueue::new(&p, 5, 64, false).expect("tx");
    let sim = Sim {
        rx: device_queue(&p, &rx),
        tx: device_queue(&p, &tx),
        seq: 0,
    };
    let cfg = DataConfig {
        rx_buffers: 32,
        rx_buffer_len: 1024,
        tx_slots,
        tx_slot_len: 8 << 10,
        max_record_len: 64 << 10,
    };
    let ch = DataChannel::new(&p, rx, tx, cfg).expect("data channel");
    (p, ch, sim)
}

const H: DeviceHandle = DeviceHandle(3 << 62 | 1 << 32 | 7);

#[test]
fn requests_reach_the_device_byte_exact_and_in_order() {
    let (p, mut ch, mut sim) = setup(8);
    let reqs = vec![
        DataRequest::Send {
            handle: H,
            request_id: 1,
            data: (0..5000u32).map(|i| (i * 7) as u8).collect(),
        },
        DataRequest::PostReceive {
            handle: H,
            request_id: 2,
            capacity: 65536,
        },
        DataRequest::Disconnect {
            handle: H,
            request_id: 3,
            abortive: false,
        },
        DataRequest::ReceiveReturn {
            handle: H,
            indication_id: 9,
        },
    ];
    for r in &reqs {
        ch.submit(&p, r).expect("submit");
    }
    for r in &reqs {
        let bytes = sim.pop(&p, true).expect("request on the ring");
        assert_eq!(bytes, r.encode(), "bytes of {r:?}");
        assert_eq!(&DataRequest::decode(&bytes).expect("decodes"), r);
    }
    assert!(sim.pop(&p, true).is_none());
    assert!(p.notifications(5) >= 1, "tx kicked");
}

#[test]
fn records_spanning_rx_buffers_are_reassembled_in_order() {
    let (p, mut ch, mut sim) = setup(4);
    let data: Vec<u8> = (0..3000u32).map(|i| (i ^ 0x5a) as u8).collect();
    let recs = vec![
        DataRecord {
            kind: DataRxKind::SendComplete,
            flags: 0,
            handle: Some(H),
            request_id: 1,
            status: NdisStatus::SUCCESS,
            bytes: 5000,
            data: vec![],
        },
        DataRecord {
            kind: DataRxKind::ReceiveIndicate,
            flags: chimney_abi::data_io::FLAG_PUSH,
            handle: Some(H),
            request_id: 77,
            status: NdisStatus::SUCCESS,
            bytes: data.len() as u32,
            data: data.clone(),
        },
        DataRecord {
            kind: DataRxKind::DisconnectComplete,
            flags: 0,
            handle: Some(H),
            request_id: 3,
            status: NdisStatus::REQUEST_ABORTED,
            bytes: 0,
            data: vec![],
        },
    ];
    for r in &recs {
        sim.send(&p, &r.encode());
    }
    ch.poll(&p).expect("poll");
    for r in &recs {
        assert_eq!(ch.next_record().as_ref(), Some(r));
    }
    assert_eq!(ch.next_record(), None);
}

#[test]
fn slots_run_out_and_come_back_when_the_device_returns_chains() {
    let (p, mut ch, mut sim) = setup(2);
    let r = |id| DataRequest::PostReceive {
        handle: H,
        request_id: id,
        capacity: 100,
    };
    ch.submit(&p, &r(1)).unwrap();
    ch.submit(&p, &r(2)).unwrap();
    assert_eq!(ch.submit(&p, &r(3)), Err(DataError::NoFreeSlot(2)));
    sim.pop(&p, true).expect("first");
    ch.submit(&p, &r(3))
        .expect("slot reused after the device returned one");
    // Too long for a slot: refused before touching the ring.
    let big = DataRequest::Send {
        handle: H,
        request_id: 4,
        data: vec![0; 9000],
    };
    assert!(matches!(
        ch.submit(&p, &big),
        Err(DataError::TooLong { .. })
    ));
    assert_eq!(ch.max_data(), (8 << 10) - 32);
}

#[test]
fn bad_record_is_reported_and_the_next_one_still_arrives() {
    let (p, mut ch, mut sim) = setup(2);
    let mut bad = DataRecord {
        kind: DataRxKind::SendComplete,
        flags: 0,
        handle: Some(H),
        request_id: 1,
        status: NdisStatus::SUCCESS,
        bytes: 1,
        data: vec![],
    }
    .encode();
    bad[0] = 0x7F; // unknown kind
    sim.send(&p, &bad);
    let good = DataRecord {
        kind: DataRxKind::ForwardComplete,
        flags: 0,
        handle: Some(H),
        request_id: 2,
        status: NdisStatus::SUCCESS,
        bytes: 0,
        data: vec![],
    };
    sim.send(&p, &good.encode());
    assert!(matches!(ch.poll(&p), Err(DataError::BadRecord(_))));
    ch.poll(&p).expect("second poll");
    assert_eq!(ch.next_record(), Some(good));
}
