//! The request/completion layer of the control ring (queue pair 1: rx 2 / tx 3),
//! docs/ring-abi.md. The state-manipulation interface of the miniport (DESIGN.md rule 1)
//! sits on top of this.
//!
//! - Requests: a chimney-abi [`Request`] is encoded into one of `request_slots` staging
//!   buffers and published as a chain of device-readable descriptors on control tx.
//! - Completions and events: the driver keeps `rx_buffers` device-writable buffers posted on
//!   control rx; each used buffer carries a fragment (chimney-abi `framing`), the
//!   [`Reassembler`] turns fragments into records, [`RxRecord::decode`] validates them.
//! - Correlation: by `request_id` (driver-chosen, never 0); an ERROR completion whose
//!   request header was unreadable carries request id 0 and is matched by `tx_head`, the
//!   head descriptor of the request's tx chain, which the device echoes in every completion.
//!
//! The layer keeps a request's tx slot until both its tx chain came back and its
//! completion arrived, so a tx head is never reused while a completion could still name it.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use chimney_abi::framing::FRAGMENT_HEADER_LEN;
use chimney_abi::queues::{CONTROL_RX, CONTROL_TX};
use chimney_abi::{Completion, DecodeError, Event, Reassembler, Request, RequestBody, RxRecord};

use crate::platform::{DmaRegion, Platform, PlatformError, WaitOutcome};
use crate::virtqueue::{Buffer, Virtqueue, VirtqueueError};

/// Sizes of the control layer's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlConfig {
    /// rx buffers kept posted (at most the rx queue size).
    pub rx_buffers: u16,
    /// Bytes per rx buffer (at least chimney-abi `MIN_RX_BUFFER`).
    pub rx_buffer_len: usize,
    /// Requests that may be outstanding at once.
    pub request_slots: usize,
    /// Largest request this driver sends (bytes per staging buffer).
    pub max_request_len: usize,
    /// Largest completion or event record the reassembler accepts. An UPLOAD_DATA event
    /// carries every unacknowledged send byte of a connection (as much as the peer's window
    /// allowed in flight plus what the device had queued), so this is far above one MiB.
    pub max_record_len: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            rx_buffers: 64,
            rx_buffer_len: 4096,
            request_slots: 4,
            max_request_len: 1 << 20,
            max_record_len: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control queue {queue}: {source}")]
    Queue { queue: u16, source: VirtqueueError },
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("request of {len} bytes exceeds the {max}-byte staging buffer")]
    RequestTooLong { len: usize, max: usize },
    #[error("all {0} request slots are outstanding")]
    NoFreeSlot(usize),
    #[error("control rx: bad record from the device: {0}")]
    BadRecord(DecodeError),
    #[error("control rx: device returned token {token}, which names no rx buffer")]
    UnknownRxToken { token: u64 },
    #[error("control tx: device returned token {token}, which names no request slot")]
    UnknownTxToken { token: u64 },
    #[error("no completion for request {request_id} (timed out)")]
    TimedOut { request_id: u64 },
    #[error("no event indication arrived (timed out)")]
    EventTimedOut,
    #[error("config: {0}")]
    Config(&'static str),
}

/// One staging buffer and what is in flight in it.
#[derive(Debug, Clone)]
struct Slot {
    buf: DmaRegion,
    state: SlotState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotState {
    Free,
    InFlight {
        request_id: u64,
        tx_head: u16,
        tx_returned: bool,
        completed: bool,
    },
}

/// Driver side of the control queue pair.
#[derive(Debug)]
pub struct ControlChannel {
    rx: Virtqueue,
    tx: Virtqueue,
    cfg: ControlConfig,
    rx_bufs: Vec<DmaRegion>,
    slots: Vec<Slot>,
    reassembler: Reassembler,
    next_request_id: u64,
    completions: VecDeque<Completion>,
    events: VecDeque<Event>,
    /// Completions no outstanding request claims (kept for inspection by tests).
    unmatched: Vec<Completion>,
}

impl ControlChannel {
    /// Take over queues `rx` (2) and `tx` (3), allocate buffers, post every rx buffer.
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        rx: Virtqueue,
        tx: Virtqueue,
        cfg: ControlConfig,
    ) -> Result<Self, ControlError> {
        if cfg.rx_buffer_len < chimney_abi::MIN_RX_BUFFER {
            return Err(ControlError::Config(
                "rx_buffer_len below the ABI's MIN_RX_BUFFER",
            ));
        }
        if u32::try_from(cfg.rx_buffer_len).is_err() {
            return Err(ControlError::Config("rx_buffer_len must be below 4 GiB"));
        }
        if cfg.rx_buffers == 0 || cfg.rx_buffers > rx.size() {
            return Err(ControlError::Config("rx_buffers must be 1..=rx queue size"));
        }
        if cfg.request_slots == 0 || cfg.max_request_len > u32::MAX as usize {
            return Err(ControlError::Config(
                "request_slots must be >= 1 and max_request_len < 4 GiB",
            ));
        }
        let mut rx_bufs = Vec::new();
        for _ in 0..cfg.rx_buffers {
            rx_bufs.push(platform.alloc_dma(cfg.rx_buffer_len, 64)?);
        }
        let mut slots = Vec::new();
        for _ in 0..cfg.request_slots {
            slots.push(Slot {
                buf: platform.alloc_dma(cfg.max_request_len, 64)?,
                state: SlotState::Free,
            });
        }
        let mut ch = ControlChannel {
            rx,
            tx,
            cfg,
            rx_bufs,
            slots,
            reassembler: Reassembler::new(cfg.max_record_len),
            next_request_id: 1,
            completions: VecDeque::new(),
            events: VecDeque::new(),
            unmatched: Vec::new(),
        };
        for i in 0..ch.rx_bufs.len() {
            ch.post_rx(platform, i)?;
        }
        ch.rx.kick(platform).map_err(rx_err)?;
        Ok(ch)
    }

    /// A request id that no other request of this channel uses (never 0).
    pub fn allocate_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        id
    }

    /// Encode and send a request; returns its request id.
    pub fn submit<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        body: RequestBody,
    ) -> Result<u64, ControlError> {
        let request_id = self.allocate_request_id();
        let bytes = Request { request_id, body }.encode();
        self.submit_bytes(platform, request_id, &bytes, &[])?;
        Ok(request_id)
    }

    /// Encode and send an INITIATE with its data trailer (docs/ring-abi.md §16.4).
    pub fn submit_with_data<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        body: RequestBody,
        data: &[chimney_abi::data_io::TcpData],
    ) -> Result<u64, ControlError> {
        let request_id = self.allocate_request_id();
        let bytes = Request { request_id, body }.encode_with_data(data);
        self.submit_bytes(platform, request_id, &bytes, &[])?;
        Ok(request_id)
    }

    /// Remove and return the queued events `keep` selects, in arrival order (the miniport
    /// takes a terminated connection's UPLOAD_DATA before completing the terminate).
    pub fn take_events_where(&mut self, mut keep: impl FnMut(&Event) -> bool) -> Vec<Event> {
        let mut out = Vec::new();
        let mut rest = VecDeque::new();
        while let Some(e) = self.events.pop_front() {
            if keep(&e) {
                out.push(e);
            } else {
                rest.push_back(e);
            }
        }
        self.events = rest;
        out
    }

    /// Send raw request bytes (tests send malformed ones) as one chain, split into several
    /// descriptors at the offsets in `splits` (ascending). `request_id` is what the caller
    /// expects the device to echo (the bytes are not inspected).
    pub fn submit_bytes<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        request_id: u64,
        bytes: &[u8],
        splits: &[usize],
    ) -> Result<u16, ControlError> {
        if bytes.len() > self.cfg.max_request_len {
            return Err(ControlError::RequestTooLong {
                len: bytes.len(),
                max: self.cfg.max_request_len,
            });
        }
        self.reclaim_tx(platform)?;
        let slot = self.free_slot()?;
        let base = self.slots[slot].buf.addr;
        platform.write(base, bytes)?;
        let mut chain = Vec::new();
        let mut start = 0usize;
        for &end in splits.iter().chain(core::iter::once(&bytes.len())) {
            let end = end.min(bytes.len());
            if end > start {
                chain.push(Buffer {
                    addr: base + start as u64,
                    len: (end - start) as u32,
                });
                start = end;
            }
        }
        if chain.is_empty() {
            // An empty request still needs a descriptor; a zero-length one says "nothing".
            chain.push(Buffer { addr: base, len: 0 });
        }
        self.submit_chain(platform, slot, request_id, &chain, &[])
    }

    /// Publish an arbitrary chain (descriptors may point anywhere: tests use this to send
    /// descriptors outside guest memory or device-writable parts). Uses a request slot for
    /// correlation; the slot's staging buffer is not used.
    pub fn submit_raw<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        request_id: u64,
        readable: &[Buffer],
        writable: &[Buffer],
    ) -> Result<u16, ControlError> {
        self.reclaim_tx(platform)?;
        let slot = self.free_slot()?;
        self.submit_chain(platform, slot, request_id, readable, writable)
    }

    /// Fault injection: add a chain of `readable` buffers, let `tamper` rewrite DMA memory
    /// (it gets the descriptor table's bus address and the head index) before the device
    /// can see the chain, then publish it. Tests use this to send chains a correct driver
    /// never builds (loops, bad `next` indices); the driver's own bookkeeping stays valid.
    pub fn submit_tampered<P, F>(
        &mut self,
        platform: &P,
        request_id: u64,
        readable: &[Buffer],
        tamper: F,
    ) -> Result<u16, ControlError>
    where
        P: Platform + ?Sized,
        F: FnOnce(&P, u64, u16) -> Result<(), PlatformError>,
    {
        self.reclaim_tx(platform)?;
        let slot = self.free_slot()?;
        let tx_head = self
            .tx
            .add_unpublished(platform, readable, &[], slot as u64)
            .map_err(tx_err)?;
        self.slots[slot].state = SlotState::InFlight {
            request_id,
            tx_head,
            tx_returned: false,
            completed: false,
        };
        let tampered = tamper(platform, self.tx.addresses().desc_table, tx_head);
        // Publish even if tampering failed: the chain is in the ring either way.
        self.tx.publish(platform).map_err(tx_err)?;
        self.tx.kick(platform).map_err(tx_err)?;
        tampered?;
        Ok(tx_head)
    }

    fn free_slot(&self) -> Result<usize, ControlError> {
        self.slots
            .iter()
            .position(|s| s.state == SlotState::Free)
            .ok_or(ControlError::NoFreeSlot(self.slots.len()))
    }

    fn submit_chain<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        slot: usize,
        request_id: u64,
        readable: &[Buffer],
        writable: &[Buffer],
    ) -> Result<u16, ControlError> {
        let tx_head = self
            .tx
            .add(platform, readable, writable, slot as u64)
            .map_err(tx_err)?;
        self.slots[slot].state = SlotState::InFlight {
            request_id,
            tx_head,
            tx_returned: false,
            completed: false,
        };
        self.tx.kick(platform).map_err(tx_err)?;
        Ok(tx_head)
    }

    fn post_rx<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        i: usize,
    ) -> Result<(), ControlError> {
        let b = self.rx_bufs[i];
        self.rx
            .add(
                platform,
                &[],
                &[Buffer {
                    addr: b.addr,
                    len: b.len as u32,
                }],
                i as u64,
            )
            .map_err(rx_err)?;
        Ok(())
    }

    fn reclaim_tx<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<(), ControlError> {
        while let Some(u) = self.tx.pop_used(platform).map_err(tx_err)? {
            let slot = usize::try_from(u.token)
                .ok()
                .filter(|s| *s < self.slots.len())
                .ok_or(ControlError::UnknownTxToken { token: u.token })?;
            if let SlotState::InFlight {
                tx_returned,
                completed,
                ..
            } = &mut self.slots[slot].state
            {
                *tx_returned = true;
                if *completed {
                    self.slots[slot].state = SlotState::Free;
                }
            }
        }
        Ok(())
    }

    /// Process everything the device returned: reclaim tx chains, reassemble and decode rx
    /// records, repost rx buffers. A bad record is reported as an error after its buffer
    /// was reposted; call `poll` again to continue.
    pub fn poll<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<(), ControlError> {
        self.reclaim_tx(platform)?;
        let mut result = Ok(());
        let mut reposted = false;
        loop {
            let u = match self.rx.pop_used(platform) {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(e @ VirtqueueError::UsedLenTooLarge { token, .. }) => {
                    // Bad length from the device: the buffer is ours again, repost it.
                    if let Some(i) = usize::try_from(token)
                        .ok()
                        .filter(|i| *i < self.rx_bufs.len())
                    {
                        self.post_rx(platform, i)?;
                        reposted = true;
                    }
                    if result.is_ok() {
                        result = Err(rx_err(e));
                    }
                    continue;
                }
                Err(e) => return Err(rx_err(e)),
            };
            let i = usize::try_from(u.token)
                .ok()
                .filter(|i| *i < self.rx_bufs.len())
                .ok_or(ControlError::UnknownRxToken { token: u.token })?;
            // u.len was checked against the buffer's size by pop_used.
            let mut data = alloc::vec![0u8; u.len as usize];
            platform.read(self.rx_bufs[i].addr, &mut data)?;
            self.post_rx(platform, i)?;
            reposted = true;
            let pushed = if data.is_empty() {
                Ok(None)
            } else if data.len() < FRAGMENT_HEADER_LEN {
                Err(DecodeError::Truncated {
                    field: chimney_abi::Field::new("fragment"),
                    need: FRAGMENT_HEADER_LEN,
                    have: data.len(),
                })
            } else {
                self.reassembler.push(&data)
            };
            match pushed.and_then(|r| r.map(|rec| RxRecord::decode(&rec)).transpose()) {
                Ok(Some(RxRecord::Completion(c))) => self.accept_completion(c),
                Ok(Some(RxRecord::Event(e))) => self.events.push_back(e),
                Ok(None) => {}
                Err(e) => {
                    if result.is_ok() {
                        result = Err(ControlError::BadRecord(e));
                    }
                }
            }
        }
        if reposted {
            self.rx.kick(platform).map_err(rx_err)?;
        }
        result
    }

    fn accept_completion(&mut self, c: Completion) {
        let header_valid = !matches!(
            &c.body,
            chimney_abi::CompletionBody::Error(e) if !e.header_valid
        );
        // Oldest in-flight, not yet completed slot this completion names.
        let slot = self.slots.iter().position(|s| match s.state {
            SlotState::InFlight {
                request_id,
                tx_head,
                completed: false,
                ..
            } => {
                if header_valid {
                    request_id == c.request_id && tx_head == c.tx_head
                } else {
                    tx_head == c.tx_head
                }
            }
            _ => false,
        });
        match slot {
            Some(s) => {
                if let SlotState::InFlight {
                    request_id,
                    tx_returned,
                    completed,
                    ..
                } = &mut self.slots[s].state
                {
                    *completed = true;
                    let mut c = c;
                    // Report the id the driver used, also when the device could not read it.
                    c.request_id = *request_id;
                    if *tx_returned {
                        self.slots[s].state = SlotState::Free;
                    }
                    self.completions.push_back(c);
                }
            }
            None => self.unmatched.push(c),
        }
    }

    /// Remove and return the completion of `request_id`, if it arrived.
    pub fn take_completion(&mut self, request_id: u64) -> Option<Completion> {
        let i = self
            .completions
            .iter()
            .position(|c| c.request_id == request_id)?;
        self.completions.remove(i)
    }

    /// Next event indication, in arrival order.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Completions that matched no outstanding request.
    pub fn unmatched(&self) -> &[Completion] {
        &self.unmatched
    }

    /// Requests sent and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    SlotState::InFlight {
                        completed: false,
                        ..
                    }
                )
            })
            .count()
    }

    /// Wait for the completion of `request_id`, polling between device signals. Each wait
    /// without any signal lasts at most `timeout`; a quiet `timeout` ends with `TimedOut`.
    pub fn wait_completion<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        request_id: u64,
        timeout: Duration,
    ) -> Result<Completion, ControlError> {
        loop {
            self.poll(platform)?;
            if let Some(c) = self.take_completion(request_id) {
                return Ok(c);
            }
            if self.rx.enable_callbacks(platform).map_err(rx_err)? {
                continue;
            }
            if platform.wait(CONTROL_RX, timeout)? == WaitOutcome::TimedOut
                && !self.rx.has_used(platform).map_err(rx_err)?
            {
                return Err(ControlError::TimedOut { request_id });
            }
        }
    }

    /// Wait for the next event indication (C-101 upload requests, …), polling between
    /// device signals; a quiet `timeout` ends with `EventTimedOut`.
    pub fn wait_event<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        timeout: Duration,
    ) -> Result<Event, ControlError> {
        loop {
            self.poll(platform)?;
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if self.rx.enable_callbacks(platform).map_err(rx_err)? {
                continue;
            }
            if platform.wait(CONTROL_RX, timeout)? == WaitOutcome::TimedOut
                && !self.rx.has_used(platform).map_err(rx_err)?
            {
                return Err(ControlError::EventTimedOut);
            }
        }
    }

    /// Completions that arrived and were not taken yet, plus queued events.
    pub fn has_queued(&self) -> bool {
        !self.completions.is_empty() || !self.events.is_empty()
    }

    /// Wait until the device returns something on control rx (or `timeout` passes with
    /// nothing): process it with `poll`. Returns whether anything is queued afterwards.
    pub fn wait_activity<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        timeout: Duration,
    ) -> Result<bool, ControlError> {
        self.poll(platform)?;
        if self.has_queued() {
            return Ok(true);
        }
        if !self.rx.enable_callbacks(platform).map_err(rx_err)? {
            platform.wait(CONTROL_RX, timeout)?;
        }
        self.poll(platform)?;
        Ok(self.has_queued())
    }

    /// Submit `body` and wait for its completion.
    pub fn call<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<Completion, ControlError> {
        let id = self.submit(platform, body)?;
        self.wait_completion(platform, id, timeout)
    }

    pub fn rx_queue(&self) -> &Virtqueue {
        &self.rx
    }
    pub fn tx_queue(&self) -> &Virtqueue {
        &self.tx
    }
}

fn rx_err(source: VirtqueueError) -> ControlError {
    ControlError::Queue {
        queue: CONTROL_RX,
        source,
    }
}
fn tx_err(source: VirtqueueError) -> ControlError {
    ControlError::Queue {
        queue: CONTROL_TX,
        source,
    }
}
