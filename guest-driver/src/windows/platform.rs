//! DMA memory and doorbells on Windows: `NdisMAllocateSharedMemory` for rings and buffers
//! (one allocation at initialize, carved up like the other bindings), the notify BAR mapped
//! by the binding (`NdisMMapIoSpace`, done in MiniportInitializeEx) for doorbells. NDIS
//! drives the miniport from its DPC, so `wait` never blocks: it reports `TimedOut` and the
//! DPC polls again on the next interrupt.

use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;

use super::ffi::*;
use crate::platform::{DmaRegion, Platform, PlatformError, WaitOutcome};

pub struct WindowsPlatform {
    va: *mut u8,
    pa: u64,
    len: usize,
    next: AtomicUsize,
    /// Mapped notify BAR and each queue's doorbell offset in it.
    notify_base: *mut u8,
    notify_offsets: [Option<u64>; 16],
}

// SAFETY: shared memory and the mapped BAR belong to the adapter; accesses are bounds-checked.
unsafe impl Send for WindowsPlatform {}
unsafe impl Sync for WindowsPlatform {}

impl WindowsPlatform {
    /// Allocate `len` bytes of cached shared memory for the adapter.
    ///
    /// # Safety
    /// `miniport` is the adapter's NdisMiniportHandle, at PASSIVE_LEVEL in initialize;
    /// `notify_base` is the mapped notify BAR (or null before the queues are set up).
    pub unsafe fn new(miniport: NDIS_HANDLE, len: u32, notify_base: *mut u8) -> Option<Self> {
        let mut va: PVOID = core::ptr::null_mut();
        let mut pa: i64 = 0;
        NdisMAllocateSharedMemory(miniport, len, 1, &mut va, &mut pa);
        if va.is_null() {
            return None;
        }
        Some(WindowsPlatform {
            va: va.cast(),
            pa: pa as u64,
            len: len as usize,
            next: AtomicUsize::new(0),
            notify_base,
            notify_offsets: [None; 16],
        })
    }

    /// Record queue `q`'s doorbell offset (from its `queue_notify_off`, see linux::pci).
    pub fn set_notify_offset(&mut self, q: u16, offset: u64) {
        if let Some(slot) = self.notify_offsets.get_mut(usize::from(q)) {
            *slot = Some(offset);
        }
    }

    fn offset(&self, addr: u64, len: usize) -> Result<usize, PlatformError> {
        let bad = PlatformError::BadAddress { addr, len };
        let off = usize::try_from(addr.checked_sub(self.pa).ok_or(bad)?).map_err(|_| bad)?;
        (off.checked_add(len).ok_or(bad)? <= self.len)
            .then_some(off)
            .ok_or(bad)
    }
}

impl Platform for WindowsPlatform {
    fn alloc_dma(&self, len: usize, align: usize) -> Result<DmaRegion, PlatformError> {
        let oom = PlatformError::OutOfMemory { wanted: len, align };
        if !align.is_power_of_two() {
            return Err(oom);
        }
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = cur.checked_add(align - 1).ok_or(oom)? & !(align - 1);
            let end = start.checked_add(len).ok_or(oom)?;
            if end > self.len {
                return Err(oom);
            }
            match self
                .next
                .compare_exchange(cur, end, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(DmaRegion {
                        addr: self.pa + start as u64,
                        len,
                    })
                }
                Err(seen) => cur = seen,
            }
        }
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        let off = self.offset(addr, buf.len())?;
        // SAFETY: in bounds of the shared memory (offset()).
        unsafe { core::ptr::copy_nonoverlapping(self.va.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), PlatformError> {
        let off = self.offset(addr, data.len())?;
        // SAFETY: as in `read`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.va.add(off), data.len()) };
        Ok(())
    }

    fn notify(&self, queue: u16) -> Result<(), PlatformError> {
        let off = self
            .notify_offsets
            .get(usize::from(queue))
            .copied()
            .flatten()
            .ok_or(PlatformError::Notify { queue })?;
        if self.notify_base.is_null() {
            return Err(PlatformError::Notify { queue });
        }
        // SAFETY: the offset came from the device's notify capability inside the mapped BAR.
        unsafe {
            core::ptr::write_volatile(self.notify_base.add(off as usize).cast::<u16>(), queue)
        };
        Ok(())
    }

    fn wait(&self, _queue: u16, _timeout: Duration) -> Result<WaitOutcome, PlatformError> {
        Ok(WaitOutcome::TimedOut)
    }
}
