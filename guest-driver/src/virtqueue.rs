//! The driver side of a virtio 1.x split virtqueue (virtio spec §2.7).
//!
//! Layout (all little-endian, in DMA memory from [`Platform::alloc_dma`]):
//! - descriptor table, 16-byte aligned: `size` × {addr u64, len u32, flags u16, next u16};
//! - available ring (driver → device), 2-byte aligned:
//!   flags u16, idx u16, ring[size] u16, used_event u16;
//! - used ring (device → driver), 4-byte aligned:
//!   flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16.
//!
//! The free list and the description of every outstanding chain live in driver-private
//! memory, never read back from DMA memory: the device can write the descriptor table
//! (it is in shared memory), so its contents are not trusted after publication. What the
//! device returns in the used ring is validated ([`VirtqueueError::UsedIdOutOfRange`],
//! [`VirtqueueError::UsedLenTooLarge`] …): errors, never panics.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use core::time::Duration;

use crate::platform::{Platform, PlatformError, WaitOutcome};

const DESC_SIZE: u64 = 16;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// Avail ring flag: "don't interrupt me" (used when EVENT_IDX is not negotiated).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: "don't notify me" (used when EVENT_IDX is not negotiated).
const USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue size the split ring allows (virtio spec §2.7: "Queue Size … 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// One guest buffer of a chain: bus address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
}

/// Bus addresses of the three ring parts, for the transport (vhost-user SET_VRING_ADDR,
/// virtio-pci queue_desc/queue_driver/queue_device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddresses {
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// A chain the device has finished with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedBuffer {
    /// The caller's token given to [`Virtqueue::add`].
    pub token: u64,
    /// Bytes the device wrote into the writable part (validated against its capacity).
    pub len: u32,
    /// Head descriptor index (for tracing).
    pub head: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VirtqueueError {
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u16),
    #[error("a chain needs at least one buffer")]
    EmptyChain,
    #[error("queue full: the chain needs {needed} descriptors, {free} are free")]
    Full { needed: usize, free: u16 },
    #[error("buffer {index} of the chain ({addr:#x}+{len}) wraps the bus address space")]
    BufferWraps { index: usize, addr: u64, len: u32 },
    #[error("used ring: device returned id {id}, queue size is {size}")]
    UsedIdOutOfRange { id: u32, size: u16 },
    #[error("used ring: device returned id {id}, which is not the head of an outstanding chain")]
    UsedIdNotInFlight { id: u32 },
    #[error("used ring: device wrote len {len} into chain {head} (token {token}), whose writable part holds {capacity} bytes")]
    UsedLenTooLarge {
        head: u16,
        token: u64,
        len: u32,
        capacity: u64,
    },
    #[error(
        "used ring: idx moved from {last} to {seen}, more than the {size} entries the queue holds"
    )]
    UsedIndexJump { last: u16, seen: u16, size: u16 },
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// Driver-private record of a chain the device owns.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    token: u64,
    descriptors: u16,
    writable_capacity: u64,
}

/// The driver side of one split virtqueue. Single-threaded: see [`crate::platform`].
#[derive(Debug)]
pub struct Virtqueue {
    index: u16,
    size: u16,
    event_idx: bool,
    rings: RingAddresses,
    /// Free list threaded through `next` (driver-private copy of the descriptors' links).
    free_head: u16,
    num_free: u16,
    next: Vec<u16>,
    in_flight: Vec<Option<InFlight>>,
    /// Next avail idx to publish (the shadow of avail.idx).
    avail_idx: u16,
    /// avail.idx at the last notification decision (for event-idx "old").
    avail_idx_at_last_kick: u16,
    /// Next used ring entry to consume.
    last_used: u16,
    callbacks_enabled: bool,
}

/// `vring_need_event` from the virtio spec §2.7.10: has `idx` moved past `event` since `old`?
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Virtqueue {
    /// Allocate and zero the rings of queue `index` with `size` entries. `event_idx` must
    /// match what was negotiated (VIRTIO_RING_F_EVENT_IDX).
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        index: u16,
        size: u16,
        event_idx: bool,
    ) -> Result<Self, VirtqueueError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(VirtqueueError::BadSize(size));
        }
        let n = usize::from(size);
        let desc = platform.alloc_dma(16 * n, 16)?;
        let avail = platform.alloc_dma(6 + 2 * n, 2)?;
        let used = platform.alloc_dma(6 + 8 * n, 4)?;
        // alloc_dma zeroes, but a binding might reuse memory: write the headers explicitly.
        platform.write(avail.addr, &[0u8; 4])?;
        platform.write(used.addr, &[0u8; 4])?;
        let next = (0..size).map(|i| i.wrapping_add(1)).collect();
        Ok(Self {
            index,
            size,
            event_idx,
            rings: RingAddresses {
                desc_table: desc.addr,
                avail_ring: avail.addr,
                used_ring: used.addr,
            },
            free_head: 0,
            num_free: size,
            next,
            in_flight: vec![None; n],
            avail_idx: 0,
            avail_idx_at_last_kick: 0,
            last_used: 0,
            callbacks_enabled: true,
        })
    }

    pub fn index(&self) -> u16 {
        self.index
    }
    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn addresses(&self) -> RingAddresses {
        self.rings
    }
    pub fn free_descriptors(&self) -> u16 {
        self.num_free
    }
    /// Chains handed to the device and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|c| c.is_some()).count()
    }

    fn avail_used_event_addr(&self) -> u64 {
        self.rings.avail_ring + 4 + 2 * u64::from(self.size)
    }
    fn used_avail_event_addr(&self) -> u64 {
        self.rings.used_ring + 4 + 8 * u64::from(self.size)
    }

    /// Hand a chain to the device: `readable` buffers first (device reads), then `writable`
    /// ones (device writes). Publishes it in the avail ring; call [`Self::kick`] afterwards
    /// (once per batch). Returns the head descriptor index.
    pub fn add<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        readable: &[Buffer],
        writable: &[Buffer],
        token: u64,
    ) -> Result<u16, VirtqueueError> {
        let head = self.add_unpublished(platform, readable, writable, token)?;
        self.publish(platform)?;
        Ok(head)
    }

    /// Like [`Self::add`], but the device does not see the chain until [`Self::publish`]:
    /// for batching, and for fault injection (tests rewrite the descriptors in between).
    pub fn add_unpublished<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        readable: &[Buffer],
        writable: &[Buffer],
        token: u64,
    ) -> Result<u16, VirtqueueError> {
        let total = readable.len() + writable.len();
        if total == 0 {
            return Err(VirtqueueError::EmptyChain);
        }
        if total > usize::from(self.num_free) {
            return Err(VirtqueueError::Full {
                needed: total,
                free: self.num_free,
            });
        }
        let mut writable_capacity = 0u64;
        for (i, b) in readable.iter().chain(writable).enumerate() {
            if b.addr.checked_add(u64::from(b.len)).is_none() {
                return Err(VirtqueueError::BufferWraps {
                    index: i,
                    addr: b.addr,
                    len: b.len,
                });
            }
        }
        let head = self.free_head;
        let mut idx = head;
        for (i, (b, write)) in readable
            .iter()
            .map(|b| (b, false))
            .chain(writable.iter().map(|b| (b, true)))
            .enumerate()
        {
            let is_last = i + 1 == total;
            let mut flags = 0;
            if write {
                flags |= DESC_F_WRITE;
                writable_capacity += u64::from(b.len);
            }
            if !is_last {
                flags |= DESC_F_NEXT;
            }
            let next = self.next[usize::from(idx)];
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&b.addr.to_le_bytes());
            d[8..12].copy_from_slice(&b.len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(if is_last { 0 } else { next }).to_le_bytes());
            platform.write(self.rings.desc_table + DESC_SIZE * u64::from(idx), &d)?;
            idx = next;
        }
        self.free_head = idx;
        // `total` <= num_free <= size <= 32768, so it fits a u16.
        self.num_free -= total as u16;
        self.in_flight[usize::from(head)] = Some(InFlight {
            token,
            descriptors: total as u16,
            writable_capacity,
        });

        let slot = self.avail_idx % self.size;
        platform.write_u16(self.rings.avail_ring + 4 + 2 * u64::from(slot), head)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(head)
    }

    /// Make every chain added so far visible to the device (avail.idx).
    pub fn publish<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<(), VirtqueueError> {
        // The descriptors and the ring entries must be visible before the new idx (§2.7.13).
        fence(Ordering::Release);
        platform.write_u16(self.rings.avail_ring + 2, self.avail_idx)?;
        Ok(())
    }

    /// Does the device want a notification for the chains published since the last call?
    /// Honours VRING_USED_F_NO_NOTIFY, or avail_event with EVENT_IDX (§2.7.10).
    pub fn kick_needed<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
    ) -> Result<bool, VirtqueueError> {
        // The idx write must be visible before we read the device's suppression state,
        // else both sides can miss each other (the device re-checks after enabling).
        fence(Ordering::SeqCst);
        let old = self.avail_idx_at_last_kick;
        let new = self.avail_idx;
        self.avail_idx_at_last_kick = new;
        if old == new {
            return Ok(false);
        }
        if self.event_idx {
            let event = platform.read_u16(self.used_avail_event_addr())?;
            Ok(need_event(event, new, old))
        } else {
            let flags = platform.read_u16(self.rings.used_ring)?;
            Ok(flags & USED_F_NO_NOTIFY == 0)
        }
    }

    /// Notify the device if it wants it. Returns whether a notification was sent.
    pub fn kick<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<bool, VirtqueueError> {
        let needed = self.kick_needed(platform)?;
        if needed {
            platform.notify(self.index)?;
        }
        Ok(needed)
    }

    /// Diagnostics: (avail.idx published, avail_event the device last wrote). With
    /// EVENT_IDX, a device that never moves avail_event gets only one notification.
    pub fn notification_state<P: Platform + ?Sized>(
        &self,
        platform: &P,
    ) -> Result<(u16, u16), VirtqueueError> {
        Ok((
            self.avail_idx,
            platform.read_u16(self.used_avail_event_addr())?,
        ))
    }

    /// Has the device returned chains we have not consumed yet?
    pub fn has_used<P: Platform + ?Sized>(&self, platform: &P) -> Result<bool, VirtqueueError> {
        Ok(platform.read_u16(self.rings.used_ring + 2)? != self.last_used)
    }

    /// Take the next used chain, if any. The descriptors go back to the free list before
    /// the length is validated, so a `UsedLenTooLarge` error still returns the token.
    pub fn pop_used<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
    ) -> Result<Option<UsedBuffer>, VirtqueueError> {
        let seen = platform.read_u16(self.rings.used_ring + 2)?;
        if seen == self.last_used {
            return Ok(None);
        }
        if seen.wrapping_sub(self.last_used) > self.size {
            return Err(VirtqueueError::UsedIndexJump {
                last: self.last_used,
                seen,
                size: self.size,
            });
        }
        // Read the entry only after seeing the idx that covers it.
        fence(Ordering::Acquire);
        let slot = self.last_used % self.size;
        let mut e = [0u8; 8];
        platform.read(self.rings.used_ring + 4 + 8 * u64::from(slot), &mut e)?;
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && self.callbacks_enabled {
            // Ask for an interrupt when the device moves past what we consumed.
            platform.write_u16(self.avail_used_event_addr(), self.last_used)?;
        }
        if id >= u32::from(self.size) {
            return Err(VirtqueueError::UsedIdOutOfRange {
                id,
                size: self.size,
            });
        }
        let head = id as u16;
        let Some(chain) = self.in_flight[usize::from(head)].take() else {
            return Err(VirtqueueError::UsedIdNotInFlight { id });
        };
        self.free_chain(head, chain.descriptors);
        if u64::from(len) > chain.writable_capacity {
            return Err(VirtqueueError::UsedLenTooLarge {
                head,
                token: chain.token,
                len,
                capacity: chain.writable_capacity,
            });
        }
        Ok(Some(UsedBuffer {
            token: chain.token,
            len,
            head,
        }))
    }

    /// Splice a returned chain back onto the free list. The links in `next` are the ones
    /// `add` used, so the chain's own order is already a valid free-list segment.
    fn free_chain(&mut self, head: u16, descriptors: u16) {
        let mut tail = head;
        for _ in 1..descriptors {
            tail = self.next[usize::from(tail)];
        }
        self.next[usize::from(tail)] = self.free_head;
        self.free_head = head;
        self.num_free += descriptors;
    }

    /// Ask the device not to signal used buffers (polling mode).
    pub fn disable_callbacks<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
    ) -> Result<(), VirtqueueError> {
        self.callbacks_enabled = false;
        if self.event_idx {
            // Put used_event half the index space away: the device would have to use 32768
            // chains (more than any queue holds) before it crosses it.
            platform.write_u16(
                self.avail_used_event_addr(),
                self.last_used.wrapping_add(0x8000),
            )?;
        } else {
            platform.write_u16(self.rings.avail_ring, AVAIL_F_NO_INTERRUPT)?;
        }
        Ok(())
    }

    /// Ask for a signal on the next used buffer. Returns `true` if used buffers arrived
    /// already (the caller must poll again instead of sleeping: the signal may have been
    /// suppressed before this call).
    pub fn enable_callbacks<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
    ) -> Result<bool, VirtqueueError> {
        self.callbacks_enabled = true;
        if self.event_idx {
            platform.write_u16(self.avail_used_event_addr(), self.last_used)?;
        } else {
            platform.write_u16(self.rings.avail_ring, 0)?;
        }
        // Our write must be visible before we re-read used.idx (pairs with the device's
        // fence between writing used.idx and reading used_event).
        fence(Ordering::SeqCst);
        self.has_used(platform)
    }

    /// Pop a used chain, sleeping on the platform until one arrives or `timeout` passes
    /// without a signal. `Ok(None)` means timed out.
    pub fn wait_used<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        timeout: Duration,
    ) -> Result<Option<UsedBuffer>, VirtqueueError> {
        loop {
            if let Some(u) = self.pop_used(platform)? {
                return Ok(Some(u));
            }
            if self.enable_callbacks(platform)? {
                continue;
            }
            if platform.wait(self.index, timeout)? == WaitOutcome::TimedOut
                && !self.has_used(platform)?
            {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn need_event_matches_spec_formula_across_wrap() {
        // event just passed
        assert!(need_event(5, 6, 5));
        assert!(!need_event(6, 6, 5));
        // across the u16 wrap
        assert!(need_event(65535, 1, 65534));
        assert!(!need_event(1, 1, 65534));
    }
}
