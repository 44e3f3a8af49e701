//! Queue pair 0: a plain NIC. Frames with the virtio-net header go between the guest's rings
//! and the TAP (DESIGN.md queue map). Everything read from guest memory is untrusted: a bad
//! chain is returned to the guest unused, counted and logged, and the queue keeps going
//! (DESIGN.md rule 3). No allocation per frame: two reusable buffers.

use crate::features::NegotiatedNet;
use chimney_wire::{PcapWriter, Tap, VNET_HDR_LEN};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemory};

/// Largest frame (header included) either direction: a 64 KiB super-frame plus headers.
pub const MAX_FRAME_WITH_HDR: usize = VNET_HDR_LEN + 65_550;

/// Counters of pair 0, shared with whoever wants to look (tests, logs). Monotonic.
#[derive(Debug, Default)]
pub struct NicStats {
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest tx chain unusable: descriptor outside memory, writable descriptor, too short
    /// for the header, longer than a frame may be.
    pub tx_bad_chain: AtomicU64,
    /// No TAP, or the TAP refused the frame.
    pub tx_dropped_wire: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// A frame from the TAP found no rx buffer posted for a while, or did not fit.
    pub rx_dropped_no_buffer: AtomicU64,
    pub rx_dropped_too_big: AtomicU64,
    /// Guest rx chain unusable (readable descriptor, outside memory).
    pub rx_bad_chain: AtomicU64,
    /// A used-ring update failed (used ring outside guest memory).
    pub used_ring_errors: AtomicU64,
}

/// A plain-number copy of [`NicStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NicStatsSnapshot {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_bad_chain: u64,
    pub tx_dropped_wire: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_dropped_no_buffer: u64,
    pub rx_dropped_too_big: u64,
    pub rx_bad_chain: u64,
    pub used_ring_errors: u64,
}

impl NicStats {
    pub fn snapshot(&self) -> NicStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NicStatsSnapshot {
            tx_frames: g(&self.tx_frames),
            tx_bytes: g(&self.tx_bytes),
            tx_bad_chain: g(&self.tx_bad_chain),
            tx_dropped_wire: g(&self.tx_dropped_wire),
            rx_frames: g(&self.rx_frames),
            rx_bytes: g(&self.rx_bytes),
            rx_dropped_no_buffer: g(&self.rx_dropped_no_buffer),
            rx_dropped_too_big: g(&self.rx_dropped_too_big),
            rx_bad_chain: g(&self.rx_bad_chain),
            used_ring_errors: g(&self.used_ring_errors),
        }
    }
}

/// Count an event; log the 1st, 2nd, 4th, 8th … occurrence so a flood cannot flood the log.
fn count(counter: &AtomicU64, what: &str, detail: &dyn std::fmt::Display) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(count = n, "{what}: {detail}");
    }
}

/// Why a guest chain was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor {index} at {addr:#x} len {len}: outside guest memory")]
    OutsideMemory { index: usize, addr: u64, len: u32 },
    #[error("tx chain has a device-writable descriptor (index {index})")]
    WritableInTx { index: usize },
    #[error("rx chain has a device-readable descriptor (index {index})")]
    ReadableInRx { index: usize },
    #[error("tx chain of {len} bytes is shorter than the {need}-byte virtio-net header")]
    TooShort { len: usize, need: usize },
    #[error("tx chain longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// Pair 0 state.
pub struct Nic {
    tap: Option<Arc<Tap>>,
    pcap: Option<Arc<PcapWriter>>,
    stats: Arc<NicStats>,
    net: NegotiatedNet,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    /// A frame read from the TAP (length in `rx_buf`) waiting for an rx buffer.
    rx_pending: Option<usize>,
    /// Heads and lengths of the rx chains used for the current frame (reused).
    rx_used: Vec<(u16, u32)>,
    /// The logical switch: frames of offloaded connections go to their engines.
    switch: Option<Arc<crate::data_plane::DataPlane>>,
}

enum Deliver {
    Done,
    NoBuffers,
    Dropped,
}

impl Nic {
    pub fn new(tap: Option<Arc<Tap>>, pcap: Option<Arc<PcapWriter>>, stats: Arc<NicStats>) -> Nic {
        Nic {
            tap,
            pcap,
            stats,
            net: NegotiatedNet::default(),
            tx_buf: vec![0; MAX_FRAME_WITH_HDR + 2],
            rx_buf: vec![0; MAX_FRAME_WITH_HDR + 2],
            rx_pending: None,
            rx_used: Vec::with_capacity(64),
            switch: None,
        }
    }

    /// Send frames of offloaded 4-tuples to the data plane instead of the guest.
    pub fn set_switch(&mut self, switch: Option<Arc<crate::data_plane::DataPlane>>) {
        self.switch = switch;
    }

    /// Apply acked features: header length, mergeable buffers, TAP offloads.
    pub fn set_negotiated(&mut self, net: NegotiatedNet) {
        self.net = net;
        if let Some(tap) = &self.tap {
            if let Err(e) = tap.set_offload(net.tap_offload) {
                tracing::error!(error = %e, "cannot set TAP offloads; guest may see partial checksums");
            }
        }
    }

    pub fn stats(&self) -> &Arc<NicStats> {
        &self.stats
    }

    /// Guest tx (queue 1): every available chain becomes one TAP write. Returns true when
    /// used entries were added.
    pub fn process_tx<M: GuestMemory>(&mut self, mem: &M, q: &mut Queue) -> bool {
        let mut used = false;
        loop {
            if let Err(e) = q.disable_notification(mem) {
                tracing::warn!(error = %e, "tx: disable_notification");
            }
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                self.tx_one(mem, chain);
                used = true;
                if let Err(e) = q.add_used(mem, head, 0) {
                    count(&self.stats.used_ring_errors, "tx add_used", &e);
                    return used;
                }
            }
            match q.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "tx: enable_notification");
                    break;
                }
            }
        }
        used
    }

    fn tx_one<M: GuestMemory>(&mut self, mem: &M, chain: DescriptorChain<&M>) {
        // Legacy 10-byte header: read 2 bytes further in and rebuild the 12-byte TAP header.
        let start = VNET_HDR_LEN - self.net.hdr_len;
        let len = match read_chain(mem, chain, &mut self.tx_buf[start..]) {
            Ok(n) => n,
            Err(e) => return count(&self.stats.tx_bad_chain, "tx chain dropped", &e),
        };
        if len < self.net.hdr_len {
            let e = ChainError::TooShort {
                len,
                need: self.net.hdr_len,
            };
            return count(&self.stats.tx_bad_chain, "tx chain dropped", &e);
        }
        if start > 0 {
            self.tx_buf.copy_within(start..start + 10, 0);
        }
        // num_buffers means nothing on tx.
        self.tx_buf[10] = 0;
        self.tx_buf[11] = 0;
        let total = start + len;
        let frame = &self.tx_buf[..total];
        if let Some(p) = &self.pcap {
            if let Err(e) = p.record(&frame[VNET_HDR_LEN..]) {
                tracing::warn!(error = %e, "pcap");
            }
        }
        match &self.tap {
            Some(tap) => match tap.write_raw(frame) {
                Ok(true) => {
                    self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .tx_bytes
                        .fetch_add((total - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                }
                Ok(false) => count(
                    &self.stats.tx_dropped_wire,
                    "tx: TAP queue full",
                    &"dropped",
                ),
                Err(e) => count(&self.stats.tx_dropped_wire, "tx: TAP write", &e),
            },
            None => count(&self.stats.tx_dropped_wire, "tx: no TAP", &"dropped"),
        }
    }

    /// Move frames from the TAP into guest rx buffers (queue 0) until the TAP is empty or
    /// the guest has no buffers (then one frame is kept for the next rx kick; the rest wait
    /// in the kernel's TAP queue, which drops when full). Returns true when used entries were
    /// added.
    pub fn process_rx<M: GuestMemory>(&mut self, mem: &M, q: &mut Queue) -> bool {
        let Some(tap) = self.tap.clone() else {
            return false;
        };
        let mut used = false;
        loop {
            let n = match self.rx_pending.take() {
                Some(n) => n,
                None => match tap.read_raw(&mut self.rx_buf[..MAX_FRAME_WITH_HDR]) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "rx: TAP read");
                        break;
                    }
                },
            };
            if n < VNET_HDR_LEN {
                continue; // the kernel always gives a header; ignore anything else
            }
            if let Some(sw) = &self.switch {
                if sw.switch_frame(&self.rx_buf[..n]) {
                    if let Some(p) = &self.pcap {
                        if let Err(e) = p.record(&self.rx_buf[VNET_HDR_LEN..n]) {
                            tracing::warn!(error = %e, "pcap");
                        }
                    }
                    continue;
                }
            }
            match self.deliver(mem, q, n) {
                Deliver::Done => used = true,
                Deliver::Dropped => used = true, // bad/too-big buffers went back used
                Deliver::NoBuffers => {
                    // Ask for a kick when buffers come; if some came meanwhile, go on.
                    match q.enable_notification(mem) {
                        Ok(true) => {
                            self.rx_pending = Some(n);
                            continue;
                        }
                        Ok(false) => {
                            self.rx_pending = Some(n);
                            // With a data plane, frames of offloaded connections behind this
                            // one must not wait for the guest's NIC buffers.
                            if self.switch.is_some() {
                                self.drain_to_switch(true);
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "rx: enable_notification");
                            count(&self.stats.rx_dropped_no_buffer, "rx dropped", &"no buffer");
                            break;
                        }
                    }
                }
            }
        }
        used
    }

    /// The guest's rx queue is not live (not set up or disabled) but a data plane exists:
    /// read the TAP anyway so frames of offloaded connections reach their engines; other
    /// frames are dropped and counted (a NIC without rx buffers drops too).
    ///
    /// With `keep_pending` (the rx queue is live but out of buffers) the frame waiting in
    /// `rx_buf` stays for the guest and the others are read into the spare buffer.
    pub fn drain_to_switch(&mut self, keep_pending: bool) {
        let (Some(tap), Some(sw)) = (self.tap.clone(), self.switch.clone()) else {
            return;
        };
        let why = if keep_pending {
            "no rx buffer"
        } else {
            "rx queue not live"
        };
        if !keep_pending {
            if let Some(n) = self.rx_pending.take() {
                if !sw.switch_frame(&self.rx_buf[..n]) {
                    count(&self.stats.rx_dropped_no_buffer, "rx dropped", &why);
                }
            }
        }
        // `tx_buf` is free here: the NIC thread does tx and rx one after the other.
        let buf = if self.rx_pending.is_some() {
            &mut self.tx_buf
        } else {
            &mut self.rx_buf
        };
        loop {
            let n = match tap.read_raw(&mut buf[..MAX_FRAME_WITH_HDR]) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "rx: TAP read");
                    break;
                }
            };
            if n < VNET_HDR_LEN {
                continue;
            }
            if sw.switch_frame(&buf[..n]) {
                if let Some(p) = &self.pcap {
                    if let Err(e) = p.record(&buf[VNET_HDR_LEN..n]) {
                        tracing::warn!(error = %e, "pcap");
                    }
                }
            } else {
                count(&self.stats.rx_dropped_no_buffer, "rx dropped", &why);
            }
        }
    }

    /// Write the frame in `rx_buf[..n]` (12-byte TAP header first) into one or more rx chains.
    fn deliver<M: GuestMemory>(&mut self, mem: &M, q: &mut Queue, n: usize) -> Deliver {
        // The guest's view of the frame: header of hdr_len bytes, then the Ethernet frame.
        let start = VNET_HDR_LEN - self.net.hdr_len;
        if start > 0 {
            // Legacy 10-byte header: drop num_buffers by moving the 10 bytes up.
            self.rx_buf.copy_within(0..10, start);
        }
        let total = n - start;
        self.rx_used.clear();
        let mut written = 0usize;
        let mut first: Option<DescriptorChain<&M>> = None;
        while written < total {
            if !self.net.mrg_rxbuf && !self.rx_used.is_empty() {
                break; // cannot happen: the single chain was checked for size
            }
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                for _ in 0..self.rx_used.len() {
                    q.go_to_previous_position();
                }
                if start > 0 {
                    self.rx_buf.copy_within(start..start + 10, 0);
                }
                return Deliver::NoBuffers;
            };
            let head = chain.head_index();
            if !self.net.mrg_rxbuf {
                match writable_capacity(&chain) {
                    Ok(cap) if cap < total => {
                        // Too big for the guest's buffer (a driver bug without MRG_RXBUF):
                        // drop the frame and return the buffer unused (length 0) rather than
                        // keep it, so a small buffer cannot block the ring for ever.
                        if let Err(e) = q.add_used(mem, head, 0) {
                            count(&self.stats.used_ring_errors, "rx add_used", &e);
                        }
                        let e = format!("{total}-byte frame, {cap}-byte buffer");
                        count(&self.stats.rx_dropped_too_big, "rx dropped", &e);
                        return Deliver::Dropped;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.fail_rx(mem, q, head, &e);
                        return Deliver::Dropped;
                    }
                }
            }
            if first.is_none() {
                first = Some(chain.clone());
            }
            let src = &self.rx_buf[start + written..start + total];
            match write_chain(mem, chain, src, 0) {
                Ok(0) => {
                    // A chain with no room: return it and drop the frame.
                    self.fail_rx(mem, q, head, &"rx chain without writable bytes");
                    return Deliver::Dropped;
                }
                Ok(w) => {
                    // w fits in u32: at most `total` bytes, which is < 2^17.
                    self.rx_used.push((head, w as u32));
                    written += w;
                }
                Err(e) => {
                    self.fail_rx(mem, q, head, &e);
                    return Deliver::Dropped;
                }
            }
        }
        // num_buffers (offset 10 of the 12-byte header) = number of chains used.
        if self.net.hdr_len == 12 {
            let nb = (self.rx_used.len() as u16).to_le_bytes();
            if let Some(chain) = first {
                if let Err(e) = write_chain(mem, chain, &nb, 10) {
                    let heads = std::mem::take(&mut self.rx_used);
                    for (h, _) in &heads {
                        if let Err(e) = q.add_used(mem, *h, 0) {
                            count(&self.stats.used_ring_errors, "rx add_used", &e);
                        }
                    }
                    self.rx_used = heads;
                    count(&self.stats.rx_bad_chain, "rx chain dropped", &e);
                    return Deliver::Dropped;
                }
            }
        }
        if let Some(p) = &self.pcap {
            if let Err(e) = p.record(&self.rx_buf[VNET_HDR_LEN..n]) {
                tracing::warn!(error = %e, "pcap");
            }
        }
        for (h, len) in &self.rx_used {
            if let Err(e) = q.add_used(mem, *h, *len) {
                count(&self.stats.used_ring_errors, "rx add_used", &e);
            }
        }
        self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.stats
            .rx_bytes
            .fetch_add((n - VNET_HDR_LEN) as u64, Ordering::Relaxed);
        Deliver::Done
    }

    /// A bad rx chain: return it and the chains already filled for this frame with length 0
    /// (the guest drops them as too short) and count it.
    fn fail_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        q: &mut Queue,
        head: u16,
        e: &dyn std::fmt::Display,
    ) {
        for (h, _) in self.rx_used.iter().chain(std::iter::once(&(head, 0))) {
            if let Err(e) = q.add_used(mem, *h, 0) {
                count(&self.stats.used_ring_errors, "rx add_used", &e);
            }
        }
        self.rx_used.clear();
        count(&self.stats.rx_bad_chain, "rx chain dropped", e);
    }
}

/// Copy a tx chain (device-readable descriptors only) into `buf`. Returns the byte count.
fn read_chain<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut off = 0usize;
    for (index, desc) in chain.enumerate() {
        if desc.is_write_only() {
            return Err(ChainError::WritableInTx { index });
        }
        let len = desc.len() as usize;
        let end = off
            .checked_add(len)
            .filter(|e| *e <= buf.len())
            .ok_or(ChainError::TooLong { limit: buf.len() })?;
        mem.read_slice(&mut buf[off..end], desc.addr())
            .map_err(|_| ChainError::OutsideMemory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        off = end;
    }
    Ok(off)
}

/// Total writable bytes of an rx chain; refuses device-readable descriptors.
fn writable_capacity<M: GuestMemory>(chain: &DescriptorChain<&M>) -> Result<usize, ChainError> {
    let mut cap = 0usize;
    for (index, desc) in chain.clone().enumerate() {
        if !desc.is_write_only() {
            return Err(ChainError::ReadableInRx { index });
        }
        cap = cap.saturating_add(desc.len() as usize);
    }
    Ok(cap)
}

/// Write `src` into the chain's writable descriptors starting `skip` bytes in. Returns bytes
/// written (less than `src.len()` when the chain is shorter).
fn write_chain<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    src: &[u8],
    mut skip: usize,
) -> Result<usize, ChainError> {
    let mut done = 0usize;
    for (index, desc) in chain.enumerate() {
        if done == src.len() {
            break;
        }
        if !desc.is_write_only() {
            return Err(ChainError::ReadableInRx { index });
        }
        let dlen = desc.len() as usize;
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let room = dlen - skip;
        let k = room.min(src.len() - done);
        let addr = desc
            .addr()
            .checked_add(skip as u64)
            .ok_or(ChainError::OutsideMemory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        mem.write_slice(&src[done..done + k], addr)
            .map_err(|_| ChainError::OutsideMemory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        skip = 0;
        done += k;
    }
    Ok(done)
}
