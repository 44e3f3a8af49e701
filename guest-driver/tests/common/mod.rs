//! A test platform: one vm-memory mmap region as "DMA memory" (shared with the device-side
//! `virtio_queue::Queue` the tests drive by hand), a bump allocator and notify counters.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chimney_miniport::{DmaRegion, Platform, PlatformError, WaitOutcome};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM_BASE: u64 = 0x10_0000;
pub const MEM_SIZE: usize = 4 << 20;

pub struct TestPlatform {
    pub mem: GuestMemoryMmap,
    next: Cell<u64>,
    pub notified: RefCell<Vec<u16>>,
}

impl TestPlatform {
    pub fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(MEM_BASE), MEM_SIZE)])
            .expect("anonymous mmap for test guest memory");
        Self {
            mem,
            next: Cell::new(MEM_BASE),
            notified: RefCell::new(Vec::new()),
        }
    }
    pub fn notifications(&self, queue: u16) -> usize {
        self.notified
            .borrow()
            .iter()
            .filter(|q| **q == queue)
            .count()
    }
}

impl Platform for TestPlatform {
    fn alloc_dma(&self, len: usize, align: usize) -> Result<DmaRegion, PlatformError> {
        let start = self.next.get().next_multiple_of(align as u64);
        let end = start + len as u64;
        if end > MEM_BASE + MEM_SIZE as u64 {
            return Err(PlatformError::OutOfMemory { wanted: len, align });
        }
        self.next.set(end);
        self.write(start, &vec![0u8; len])?;
        Ok(DmaRegion { addr: start, len })
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| PlatformError::BadAddress {
                addr,
                len: buf.len(),
            })
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), PlatformError> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| PlatformError::BadAddress {
                addr,
                len: data.len(),
            })
    }
    fn read_u16(&self, addr: u64) -> Result<u16, PlatformError> {
        self.mem
            .load::<u16>(GuestAddress(addr), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| PlatformError::BadAddress { addr, len: 2 })
    }
    fn write_u16(&self, addr: u64, value: u16) -> Result<(), PlatformError> {
        self.mem
            .store(value.to_le(), GuestAddress(addr), Ordering::Release)
            .map_err(|_| PlatformError::BadAddress { addr, len: 2 })
    }
    fn notify(&self, queue: u16) -> Result<(), PlatformError> {
        self.notified.borrow_mut().push(queue);
        Ok(())
    }
    fn wait(&self, _queue: u16, _timeout: Duration) -> Result<WaitOutcome, PlatformError> {
        // Single-threaded tests: the device side ran before; nothing more will come.
        Ok(WaitOutcome::TimedOut)
    }
}
