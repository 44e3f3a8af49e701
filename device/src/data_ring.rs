//! One data queue pair (rx `2p` / tx `2p + 1`, p ≥ 2): data tx records in, data rx records
//! out (chimney-abi `data_io`, ring-abi.md §16). Like the control ring: guest memory only
//! through vm-memory's checked accessors, a bad chain or record gets an ERROR record and the
//! ring keeps going, records wait in an outbox (in order) until the driver posts rx buffers.

use crate::control_ring::{read_chain, write_scattered, RingActivity};
use crate::data_path::{now, DataPath};
use chimney_abi::data_io::{DataRecord, DataRequest, DataRxKind};
use chimney_abi::framing::fragment;
use chimney_abi::NdisStatus;
use std::collections::VecDeque;
use std::sync::Mutex;
use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

/// Bytes the device writes into one rx buffer at most.
const MAX_FRAGMENT: usize = 1 << 20;
/// Outbox size above which new tx records stay in the avail ring (back-pressure).
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// The I/O state of one data pair.
#[derive(Debug)]
pub struct DataRing {
    /// 0-based index among the data pairs (queue pair `FIRST_DATA_PAIR + index`).
    index: u16,
    outbox: VecDeque<Vec<u8>>,
    sent: usize,
    pending_bytes: usize,
    rx_sequence: u32,
    served: u64,
}

fn lock(d: &Mutex<DataPath>) -> std::sync::MutexGuard<'_, DataPath> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

impl DataRing {
    pub fn new(index: u16) -> Self {
        DataRing {
            index,
            outbox: VecDeque::new(),
            sent: 0,
            pending_bytes: 0,
            rx_sequence: 0,
            served: 0,
        }
    }

    /// Records waiting for rx buffers.
    pub fn pending_records(&self) -> usize {
        self.outbox.len()
    }

    /// Serve the pair: every available tx record goes to the data path, then the data
    /// path's records for this pair go into rx buffers. Call on a kick of either queue and
    /// whenever the data path may have produced records (frames, timers).
    pub fn process<M: GuestMemory>(
        &mut self,
        mem: &M,
        tx: &mut Queue,
        rx: &mut Queue,
        dp: &Mutex<DataPath>,
    ) -> RingActivity {
        let mut act = RingActivity::default();
        let mut idle_rounds = 0;
        loop {
            let before = self.served;
            self.serve_tx(mem, tx, dp, &mut act);
            self.pump(mem, rx, dp, &mut act);
            let mut again = false;
            if self.pending_bytes <= MAX_PENDING_BYTES {
                again |= tx.enable_notification(mem).unwrap_or(false);
            }
            if !self.outbox.is_empty() {
                again |= rx.enable_notification(mem).unwrap_or(false);
            }
            if self.served == before {
                idle_rounds += 1;
            }
            if !again || idle_rounds > 1 {
                return act;
            }
        }
    }

    fn serve_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        tx: &mut Queue,
        dp: &Mutex<DataPath>,
        act: &mut RingActivity,
    ) {
        let now = now();
        while self.pending_bytes <= MAX_PENDING_BYTES {
            let Some(chain) = tx.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match read_chain(mem, chain).map_err(|(_, e)| (e.reason, e.field)) {
                Ok(bytes) => match DataRequest::decode(&bytes) {
                    Ok(req) => lock(dp).data_request(now, req),
                    Err(e) => {
                        debug!(head, error = %e, "data request refused");
                        let rid = bytes
                            .get(16..24)
                            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                        self.push(&refused(rid, e.reason() as u32));
                    }
                },
                Err((reason, field)) => {
                    debug!(head, ?reason, field, "bad data chain");
                    self.push(&refused(0, reason as u32));
                }
            }
            if let Err(e) = tx.add_used(mem, head, 0) {
                warn!(head, error = %e, "data tx: add_used failed");
            }
            act.tx_used = true;
            self.served += 1;
        }
        lock(dp).flush(now);
    }

    /// Take records from the data path one at a time while rx buffers last: at most the
    /// record being written sits in the outbox, the rest stay in the data path (where a
    /// terminate can take receive data back, C-117).
    fn pump<M: GuestMemory>(
        &mut self,
        mem: &M,
        rx: &mut Queue,
        dp: &Mutex<DataPath>,
        act: &mut RingActivity,
    ) {
        loop {
            if self.outbox.is_empty() {
                let Some(r) = lock(dp).pop_record(self.index) else {
                    break;
                };
                self.push(&r);
            }
            self.deliver(mem, rx, act);
            if !self.outbox.is_empty() {
                break; // out of rx buffers
            }
        }
    }

    fn push(&mut self, r: &DataRecord) {
        let b = r.encode();
        self.pending_bytes += b.len();
        self.outbox.push_back(b);
    }

    fn deliver<M: GuestMemory>(&mut self, mem: &M, rx: &mut Queue, act: &mut RingActivity) {
        while let Some(front) = self.outbox.front() {
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                return;
            };
            let head = chain.head_index();
            let descs: Vec<(GuestAddress, usize)> = chain
                .writable()
                .map(|d| (d.addr(), d.len() as usize))
                .collect();
            let cap = descs
                .iter()
                .fold(0usize, |a, d| a.saturating_add(d.1))
                .min(MAX_FRAGMENT);
            let mut used = 0u32;
            if let Some((frag, n)) = fragment(front, self.rx_sequence, self.sent, cap) {
                if write_scattered(mem, &descs, &frag) {
                    used = frag.len() as u32;
                    self.sent += n;
                    if self.sent == front.len() {
                        self.pending_bytes -= front.len();
                        self.outbox.pop_front();
                        self.sent = 0;
                        self.rx_sequence = self.rx_sequence.wrapping_add(1);
                    }
                } else {
                    warn!(
                        head,
                        "data rx: buffer outside guest memory, returned unused"
                    );
                }
            }
            if let Err(e) = rx.add_used(mem, head, used) {
                warn!(head, error = %e, "data rx: add_used failed");
            }
            act.rx_used = true;
            self.served += 1;
        }
    }
}

fn refused(request_id: u64, reason: u32) -> DataRecord {
    DataRecord {
        kind: DataRxKind::Error,
        flags: 0,
        handle: None,
        request_id,
        status: NdisStatus::FAILURE,
        bytes: reason,
        data: Vec::new(),
    }
}
