//! The control layer against a device side made of virtio-queue's real `Queue` and the
//! chimney-abi encoders (the same pieces the real device uses), in one thread: framing,
//! reassembly across rx buffers, correlation by request id and by tx head, events, and
//! recovery after a bad record.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use chimney_abi::completion::BlockResult;
use chimney_abi::framing::fragment;
use chimney_abi::{
    Completion, CompletionBody, DeviceHandle, Event, EventClass, Field, NdisStatus, Negotiate,
    OffloadStateType, Reason, Request, RequestBody, RequestHeader, RxRecord,
};
use chimney_miniport::{ControlChannel, ControlConfig, ControlError, Virtqueue};
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

/// The simulated device: control tx (3) and rx (2).
struct SimDevice {
    tx: Queue,
    rx: Queue,
    sequence: u32,
}

impl SimDevice {
    /// Pop one request chain: (tx head, concatenated readable bytes).
    fn pop_request(&mut self, p: &TestPlatform) -> Option<(u16, Vec<u8>)> {
        let chain = self.tx.pop_descriptor_chain(&p.mem)?;
        let head = chain.head_index();
        let mut bytes = Vec::new();
        for d in chain {
            let mut b = vec![0u8; d.len() as usize];
            p.mem.read_slice(&mut b, d.addr()).expect("request buffer");
            bytes.extend_from_slice(&b);
        }
        self.tx.add_used(&p.mem, head, 0).expect("tx used");
        Some((head, bytes))
    }

    /// Write one record into as many rx buffers as it takes.
    fn send_record(&mut self, p: &TestPlatform, record: &[u8]) {
        let mut offset = 0;
        while offset < record.len() {
            let chain = self
                .rx
                .pop_descriptor_chain(&p.mem)
                .expect("driver keeps rx buffers posted");
            let head = chain.head_index();
            let d = chain.into_iter().next().expect("one descriptor");
            let (buf, n) = fragment(record, self.sequence, offset, d.len() as usize)
                .expect("rx buffer large enough");
            p.mem.write_slice(&buf, d.addr()).expect("rx write");
            self.rx
                .add_used(&p.mem, head, buf.len() as u32)
                .expect("rx used");
            offset += n;
        }
        self.sequence = self.sequence.wrapping_add(1);
    }

    /// Return one rx buffer carrying `raw` bytes as-is (a broken device).
    fn send_raw(&mut self, p: &TestPlatform, raw: &[u8]) {
        let chain = self.rx.pop_descriptor_chain(&p.mem).expect("rx buffer");
        let head = chain.head_index();
        let d = chain.into_iter().next().expect("one descriptor");
        p.mem.write_slice(raw, d.addr()).expect("rx write");
        self.rx
            .add_used(&p.mem, head, raw.len() as u32)
            .expect("rx used");
    }
}

fn setup(rx_buffer_len: usize) -> (TestPlatform, ControlChannel, SimDevice) {
    let p = TestPlatform::new();
    let rx = Virtqueue::new(&p, 2, 64, false).expect("rx");
    let tx = Virtqueue::new(&p, 3, 16, false).expect("tx");
    let dev_rx = device_queue(&p, &rx);
    let dev_tx = device_queue(&p, &tx);
    let cfg = ControlConfig {
        rx_buffers: 32,
        rx_buffer_len,
        request_slots: 4,
        max_request_len: 64 << 10,
        max_record_len: 1 << 20,
    };
    let ch = ControlChannel::new(&p, rx, tx, cfg).expect("control channel");
    (
        p,
        ch,
        SimDevice {
            tx: dev_tx,
            rx: dev_rx,
            sequence: 0,
        },
    )
}

fn initiate_completion(request_id: u64, tx_head: u16, blocks: usize) -> Completion {
    let results: Vec<BlockResult<Infallible>> = (0..blocks)
        .map(|i| BlockResult {
            state_type: OffloadStateType::Tcp,
            status: NdisStatus::SUCCESS,
            handle: Some(DeviceHandle(0xC000_0001_0000_0000 | i as u64)),
            state: None,
        })
        .collect();
    Completion {
        request_id,
        opcode: chimney_abi::Opcode::Initiate as u16,
        tx_head,
        status: NdisStatus::SUCCESS,
        body: CompletionBody::Initiate(results),
    }
}

const NEGOTIATE: RequestBody = RequestBody::Negotiate(Negotiate {
    min_version: 1,
    max_version: 1,
});

#[test]
fn request_reaches_the_device_byte_exact_as_the_abi_encodes_it() {
    let (p, mut ch, mut dev) = setup(256);
    let id = ch.submit(&p, NEGOTIATE).expect("submit");
    assert_eq!(p.notifications(3), 1, "tx kicked once");
    let (_, bytes) = dev.pop_request(&p).expect("request on tx");
    assert_eq!(
        Request::decode(&bytes),
        Ok(Request {
            request_id: id,
            body: NEGOTIATE
        })
    );
}

#[test]
fn completion_spanning_many_rx_buffers_is_reassembled_and_matched() {
    let (p, mut ch, mut dev) = setup(256);
    let id = ch.submit(&p, NEGOTIATE).expect("submit");
    let (head, _) = dev.pop_request(&p).expect("request");
    // 200 block results = 32 + 3200 bytes: 14 fragments of <= 240 bytes.
    let c = initiate_completion(id, head, 200);
    dev.send_record(&p, &c.encode());
    ch.poll(&p).expect("poll");
    assert_eq!(ch.take_completion(id), Some(c));
    assert_eq!(ch.outstanding(), 0);
    assert!(ch.unmatched().is_empty());
}

#[test]
fn completions_out_of_order_and_an_event_in_between_are_each_delivered() {
    let (p, mut ch, mut dev) = setup(512);
    let a = ch.submit(&p, NEGOTIATE).unwrap();
    let b = ch.submit(&p, NEGOTIATE).unwrap();
    let (ha, _) = dev.pop_request(&p).unwrap();
    let (hb, _) = dev.pop_request(&p).unwrap();
    let cb = initiate_completion(b, hb, 3);
    let ca = initiate_completion(a, ha, 40);
    let ev = Event {
        sequence: 9,
        class: EventClass::TcpEvent,
        status: NdisStatus::SUCCESS,
        handle: Some(DeviceHandle(0xC000_0002_0000_0005)),
        host_context: 77,
        code: chimney_abi::event::tcp_event::DISCONNECT,
        info: 0,
        payload: vec![1, 2, 3],
    };
    dev.send_record(&p, &cb.encode());
    dev.send_record(&p, &RxRecord::Event(ev.clone()).encode());
    dev.send_record(&p, &ca.encode());
    ch.poll(&p).expect("poll");
    assert_eq!(ch.take_completion(a), Some(ca));
    assert_eq!(ch.take_completion(b), Some(cb));
    assert_eq!(ch.next_event(), Some(ev));
    assert_eq!(ch.next_event(), None);
}

#[test]
fn error_completion_with_unreadable_header_is_matched_by_tx_head() {
    let (p, mut ch, mut dev) = setup(256);
    let id = ch.allocate_request_id();
    // A 3-byte "request": the device cannot even read a header.
    ch.submit_bytes(&p, id, &[1, 0, 0], &[]).unwrap();
    let (head, bytes) = dev.pop_request(&p).unwrap();
    let err = RequestHeader::decode(&bytes).expect_err("3 bytes is no header");
    let c = Completion::error(
        0,
        0,
        false,
        head,
        NdisStatus::FAILURE,
        err.reason(),
        err.field(),
    );
    dev.send_record(&p, &c.encode());
    ch.poll(&p).unwrap();
    let got = ch.take_completion(id).expect("matched by tx head");
    assert_eq!(got.tx_head, head);
    match got.body {
        CompletionBody::Error(e) => {
            assert!(!e.header_valid);
            assert_eq!(e.reason, Reason::Truncated);
            assert!(e.field.starts_with("header"), "field {:?}", e.field);
        }
        other => panic!("expected ERROR completion, got {other:?}"),
    }
}

#[test]
fn request_split_over_several_descriptors_arrives_whole() {
    let (p, mut ch, mut dev) = setup(256);
    let id = ch.allocate_request_id();
    let bytes = Request {
        request_id: id,
        body: NEGOTIATE,
    }
    .encode();
    ch.submit_bytes(&p, id, &bytes, &[3, 10, 17]).unwrap();
    let (_, got) = dev.pop_request(&p).unwrap();
    assert_eq!(got, bytes);
}

#[test]
fn bad_record_is_reported_and_the_next_completion_still_arrives() {
    let (p, mut ch, mut dev) = setup(256);
    let id = ch.submit(&p, NEGOTIATE).unwrap();
    let (head, _) = dev.pop_request(&p).unwrap();
    // Fragment header says 20 payload bytes, buffer has 4.
    let mut raw = Vec::new();
    for v in [0u32, 20, 0, 20] {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    raw.extend_from_slice(&[0; 4]);
    dev.send_raw(&p, &raw);
    match ch.poll(&p) {
        Err(ControlError::BadRecord(e)) => {
            assert_eq!(e.field(), Field::new("fragment.fragment_length"))
        }
        other => panic!("expected BadRecord, got {other:?}"),
    }
    let c = initiate_completion(id, head, 1);
    dev.send_record(&p, &c.encode());
    ch.poll(&p).expect("recovered");
    assert_eq!(ch.take_completion(id), Some(c));
}

#[test]
fn quiet_device_times_out_instead_of_hanging() {
    let (p, mut ch, _dev) = setup(256);
    let id = ch.submit(&p, NEGOTIATE).unwrap();
    assert_eq!(
        ch.wait_completion(&p, id, Duration::from_millis(1)),
        Err(ControlError::TimedOut { request_id: id })
    );
    // Slots stay taken while the request is outstanding.
    for _ in 0..3 {
        ch.submit(&p, NEGOTIATE).unwrap();
    }
    assert_eq!(ch.submit(&p, NEGOTIATE), Err(ControlError::NoFreeSlot(4)));
}

#[test]
fn rx_buffer_returned_with_impossible_length_is_reported_and_posted_again() {
    let (p, mut ch, mut dev) = setup(256);
    let chain = dev.rx.pop_descriptor_chain(&p.mem).expect("rx buffer");
    dev.rx
        .add_used(&p.mem, chain.head_index(), 100_000)
        .expect("rx used");
    assert!(matches!(
        ch.poll(&p),
        Err(ControlError::Queue {
            queue: 2,
            source: chimney_miniport::VirtqueueError::UsedLenTooLarge { len: 100_000, .. }
        })
    ));
    // All 32 buffers are posted again.
    for i in 0..32 {
        assert!(
            dev.rx.pop_descriptor_chain(&p.mem).is_some(),
            "rx buffer {i} of 32 missing"
        );
    }
}
