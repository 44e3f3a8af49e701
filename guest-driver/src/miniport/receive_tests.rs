//! Posted receives against refused indications (issue 4, C-158, C-166, C-172): data the
//! device puts into a posting the miniport already completed from refused data must reach
//! the postings still at the device at once; nothing else would ever drain it.

use super::*;
use crate::ndis::chars::ProviderChimneyOffloadGenericCharacteristics as Generic;
use crate::ndis::chars::ProviderChimneyOffloadTcpCharacteristics as Tcp;
use crate::ndis::NdisHandle;
use crate::platform::{DmaRegion, PlatformError, WaitOutcome};
use alloc::vec;
use chimney_abi::Layer;
use core::cell::{Cell, RefCell};

/// DMA memory in a Vec; notifications go nowhere (no device: records are fed directly).
struct Mem {
    bytes: RefCell<Vec<u8>>,
    next: Cell<usize>,
}

impl Platform for Mem {
    fn alloc_dma(&self, len: usize, align: usize) -> Result<DmaRegion, PlatformError> {
        let at = self.next.get().next_multiple_of(align.max(1));
        if at + len > self.bytes.borrow().len() {
            return Err(PlatformError::OutOfMemory { wanted: len, align });
        }
        self.next.set(at + len);
        Ok(DmaRegion {
            addr: at as u64,
            len,
        })
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        let a = addr as usize;
        let m = self.bytes.borrow();
        let src = m.get(a..a + buf.len()).ok_or(PlatformError::BadAddress {
            addr,
            len: buf.len(),
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), PlatformError> {
        let a = addr as usize;
        let mut m = self.bytes.borrow_mut();
        let dst = m
            .get_mut(a..a + data.len())
            .ok_or(PlatformError::BadAddress {
                addr,
                len: data.len(),
            })?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn notify(&self, _queue: u16) -> Result<(), PlatformError> {
        Ok(())
    }
    fn wait(&self, _queue: u16, _timeout: Duration) -> Result<WaitOutcome, PlatformError> {
        Ok(WaitOutcome::TimedOut)
    }
}

/// The host: refuses every indication (as the scenario runner's NDIS model does by
/// default) and notes the length of each.
#[derive(Default)]
struct Host {
    indications: Vec<usize>,
}

type Mp = ChimneyMiniport<Mem, Host>;

impl NdisMiniportServices<Mp> for Host {
    fn set_optional_handlers_generic(&mut self, _: Generic<Mp>) -> NdisStatus {
        NdisStatus::SUCCESS
    }
    fn set_optional_handlers_tcp(&mut self, _: Tcp<Mp>) -> NdisStatus {
        NdisStatus::SUCCESS
    }
    fn set_miniport_attributes(&mut self, _: &MiniportAdapterOffloadAttributes) -> NdisStatus {
        NdisStatus::SUCCESS
    }
    fn get_offload_handlers(
        &mut self,
        _: u32,
    ) -> Result<TcpOffloadEventHandlers<Self>, NdisStatus> {
        Ok(handlers())
    }
    fn initiate_offload_complete(&mut self, _: BlockListRef) {}
    fn terminate_offload_complete(&mut self, _: BlockListRef) {}
    fn update_offload_complete(&mut self, _: BlockListRef) {}
    fn invalidate_offload_complete(&mut self, _: BlockListRef) {}
    fn query_offload_state_complete(&mut self, _: BlockListRef) {}
    fn offload_event_indicate(&mut self, _: Option<BlockListRef>, _: u32) {}
    fn indicate_status_ex(&mut self, _: &StatusIndication) {}
    fn miniport_handle(&self) -> NdisHandle {
        NdisHandle::default()
    }
}

fn handlers() -> TcpOffloadEventHandlers<Host> {
    TcpOffloadEventHandlers {
        header: Default::default(),
        event_handler: |_, _, _, _| {},
        receive_handler: |host, _, nbl, _, consumed| {
            host.indications.push(nbl.data_length());
            *consumed = 0;
            NdisStatus::OFFLOAD_DATA_NOT_ACCEPTED
        },
        send_complete: |_, _, _| {},
        receive_complete: |_, _, _| {},
        disconnect_complete: |_, _, _| {},
        forward_complete: |_, _, _| {},
    }
}

/// A miniport with one data pair and one live offloaded TCP connection (device handle `h`).
fn miniport(h: DeviceHandle) -> (Mp, u64) {
    let mem = Mem {
        bytes: RefCell::new(vec![0u8; 8 << 20]),
        next: Cell::new(64),
    };
    let cfg = MiniportConfig::default();
    let vq = |i| Virtqueue::new(&mem, i, 256, false).expect("virtqueue");
    let control = ControlChannel::new(&mem, vq(2), vq(3), cfg.control).expect("control");
    let data = DataChannel::new(&mem, vq(4), vq(5), DataConfig::default()).expect("data");
    let caps = TcpConnectionOffload {
        encapsulation: 0,
        support_ipv4: 0,
        support_ipv6: 0,
        support_ipv6_extension_headers: 0,
        support_sack: 0,
        congestion_algorithm: 0,
        tcp_connection_offload_capacity: 1,
        flags: 0,
    };
    let negotiated = NegotiateResult {
        version: ABI_VERSION,
        device_min_version: ABI_VERSION,
        device_max_version: ABI_VERSION,
        max_request_length: 1 << 20,
        min_rx_buffer: 4096,
        max_tree_blocks: 16,
        capabilities: caps,
        max_neighbors: 1,
        max_paths: 1,
        max_tcp: 1,
    };
    let mut mp = ChimneyMiniport {
        platform: mem,
        control,
        negotiated,
        attributes: Mp::attributes_from(&negotiated),
        handlers: handlers(),
        parameters: None,
        contexts: Contexts::default(),
        recorded: VecDeque::new(),
        pending: Vec::new(),
        io_done: VecDeque::new(),
        io: DataIo::default(),
        run_state: RunState::Running,
        violations: HostViolations::default(),
        answers: Vec::new(),
        reachability_answers_failed: 0,
        timeout: cfg.timeout,
        held_limit: cfg.held_receive_limit,
    };
    mp.io.channels.push(data);
    let ctx = mp.contexts.reserve(Layer::Tcp, NdisHandle::default());
    let cx = mp.contexts.get_mut(ctx).expect("reserved context");
    cx.device = Some(h);
    cx.state = ObjState::Live;
    (mp, ctx)
}

/// The ring request id of each PostReceive the miniport queued, in order.
fn posted_ids(mp: &mut Mp) -> Vec<u64> {
    mp.io
        .backlog
        .drain(..)
        .filter_map(|(_, r)| match r {
            DataRequest::PostReceive { request_id, .. } => Some(request_id),
            _ => None,
        })
        .collect()
}

fn complete(h: DeviceHandle, request_id: u64, data: &[u8]) -> DataRecord {
    DataRecord {
        kind: DataRxKind::ReceiveComplete,
        flags: chimney_abi::data_io::FLAG_PUSH,
        handle: Some(h),
        request_id,
        status: NdisStatus::SUCCESS,
        bytes: data.len() as u32,
        data: data.to_vec(),
    }
}

/// (NBL id, bytes) of every receive the miniport completed so far, in completion order.
fn completed(mp: &mut Mp) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for d in mp.io_done.drain(..) {
        let IoDone::Receive(nbls) = d else { continue };
        for n in nbls {
            let k = n.info.tcp_offload_bytes_transferred as usize;
            let nb = &n.net_buffers[0];
            let all: Vec<u8> = nb.mdls.iter().flat_map(|m| m.data.clone()).collect();
            out.push((n.id, all[..k].to_vec()));
        }
    }
    out
}

#[test]
fn data_the_device_puts_into_an_early_completed_posting_fills_the_next_posting_at_once() {
    let h = DeviceHandle(7);
    let (mut mp, ctx) = miniport(h);
    let mut host = Host::default();
    // The host posts A and B (both go to the device) while the device, which had no
    // posting, indicates 100 bytes; the host refuses them.
    let nbl = |id| NetBufferList {
        id,
        net_buffers: vec![NetBuffer::with_capacity(1000)],
        ..Default::default()
    };
    assert_eq!(
        mp.tcp_offload_receive(ctx, vec![nbl(0xA)]),
        NdisStatus::PENDING
    );
    assert_eq!(
        mp.tcp_offload_receive(ctx, vec![nbl(0xB)]),
        NdisStatus::PENDING
    );
    let ids = posted_ids(&mut mp);
    assert_eq!(
        ids.len(),
        2,
        "two PostReceive requests queued, seen {ids:?}"
    );
    let first: Vec<u8> = (0..100u8).collect();
    let indication = DataRecord {
        kind: DataRxKind::ReceiveIndicate,
        flags: chimney_abi::data_io::FLAG_PUSH,
        handle: Some(h),
        request_id: 1,
        status: NdisStatus::SUCCESS,
        bytes: 100,
        data: first.clone(),
    };
    mp.data_record(&mut host, 0, indication);
    // C-172: the refused data fills A now; A stays posted at the device.
    assert_eq!(completed(&mut mp), vec![(0xA, first.clone())]);
    // The device fills A (which it still holds) with the last 200 bytes the peer sent;
    // B stays empty at the device: nothing more will come for it.
    let last: Vec<u8> = (100..300u32).map(|i| i as u8).collect();
    mp.data_record(&mut host, 0, complete(h, ids[0], &last));
    assert_eq!(
        completed(&mut mp),
        vec![(0xB, last.clone())],
        "expected B completed with the 200 bytes the device put into A"
    );
    assert!(
        mp.io.leftovers.get(&ctx).is_none_or(|l| l.is_empty()),
        "no data left waiting, seen {:?}",
        mp.io.leftovers.get(&ctx).map(Vec::len)
    );
}

#[test]
fn data_in_an_early_completed_posting_with_nothing_posted_or_held_is_indicated_not_held() {
    let h = DeviceHandle(7);
    let (mut mp, ctx) = miniport(h);
    let mut host = Host::default();
    let nbl = |id| NetBufferList {
        id,
        net_buffers: vec![NetBuffer::with_capacity(1000)],
        ..Default::default()
    };
    assert_eq!(
        mp.tcp_offload_receive(ctx, vec![nbl(0xA)]),
        NdisStatus::PENDING
    );
    let ids = posted_ids(&mut mp);
    let first: Vec<u8> = (0..100u8).collect();
    mp.data_record(
        &mut host,
        0,
        DataRecord {
            kind: DataRxKind::ReceiveIndicate,
            flags: chimney_abi::data_io::FLAG_PUSH,
            handle: Some(h),
            request_id: 1,
            status: NdisStatus::SUCCESS,
            bytes: 100,
            data: first.clone(),
        },
    );
    assert_eq!(completed(&mut mp), vec![(0xA, first)]);
    assert_eq!(host.indications, vec![100], "the device's indication");
    // The device fills A, which it still holds; no posting is left and nothing is held:
    // this is new data the host must hear about (it was held for good before: a later
    // indicated receive saw nothing).
    let last: Vec<u8> = (100..300u32).map(|i| i as u8).collect();
    mp.data_record(&mut host, 0, complete(h, ids[0], &last));
    assert_eq!(
        host.indications,
        vec![100, 200],
        "expected the 200 bytes indicated to the host"
    );
    // Refused again: held until the next posting, which gets exactly those bytes (C-172).
    assert_eq!(
        mp.tcp_offload_receive(ctx, vec![nbl(0xC)]),
        NdisStatus::PENDING
    );
    assert_eq!(completed(&mut mp), vec![(0xC, last)]);
}

/// Ring request ids of the RECEIVE_RETURNs the miniport queued so far, in order (drains
/// the backlog).
fn returned_ids(mp: &mut Mp) -> Vec<u64> {
    mp.io
        .backlog
        .drain(..)
        .filter_map(|(_, r)| match r {
            DataRequest::ReceiveReturn { indication_id, .. } => Some(indication_id),
            _ => None,
        })
        .collect()
}

#[test]
fn refused_data_past_the_held_limit_keeps_indication_buffers_until_the_host_takes_it() {
    let h = DeviceHandle(7);
    let (mut mp, ctx) = miniport(h);
    mp.held_limit = 250;
    let mut host = Host::default();
    // The stream the device indicates: four pieces of 100 bytes, each refused (C-171).
    let stream: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
    for (k, piece) in stream.chunks(100).enumerate() {
        let id = 1 + k as u64;
        mp.data_record(
            &mut host,
            0,
            DataRecord {
                kind: DataRxKind::ReceiveIndicate,
                flags: chimney_abi::data_io::FLAG_PUSH,
                handle: Some(h),
                request_id: id,
                status: NdisStatus::SUCCESS,
                bytes: piece.len() as u32,
                data: piece.to_vec(),
            },
        );
    }
    assert_eq!(
        host.indications,
        vec![100],
        "one indication until the host posts"
    );
    assert_eq!(
        mp.receive_state(ctx).0,
        Some(400),
        "all 400 refused bytes held"
    );
    // 100 and 200 held: the buffers go back (the window reopens); 300 and 400 are past the
    // limit of 250: the device keeps those indications outstanding and its window closes.
    assert_eq!(returned_ids(&mut mp), vec![1, 2], "RECEIVE_RETURNs sent");
    mp.release_withheld();
    assert_eq!(
        returned_ids(&mut mp),
        Vec::<u64>::new(),
        "still past the limit"
    );
    // The host posts 200 bytes: the oldest held data fills it (C-172); 200 left is at the
    // limit, so the withheld returns go out, in arrival order.
    let nbl = |id, cap| NetBufferList {
        id,
        net_buffers: vec![NetBuffer::with_capacity(cap)],
        ..Default::default()
    };
    assert_eq!(
        mp.tcp_offload_receive(ctx, vec![nbl(0xA, 200)]),
        NdisStatus::PENDING
    );
    assert_eq!(completed(&mut mp), vec![(0xA, stream[..200].to_vec())]);
    mp.release_withheld();
    assert_eq!(
        returned_ids(&mut mp),
        vec![3, 4],
        "withheld returns released"
    );
    // The rest, byte-exact and once, into the next posting.
    assert_eq!(
        mp.tcp_offload_receive(ctx, vec![nbl(0xB, 1000)]),
        NdisStatus::PENDING
    );
    assert_eq!(completed(&mut mp), vec![(0xB, stream[200..].to_vec())]);
    assert_eq!(mp.receive_state(ctx).0, None, "nothing held");
}
