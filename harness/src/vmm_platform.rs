//! Guest RAM and doorbells of the in-process VMM, as the guest-driver's [`Platform`].
//!
//! Guest RAM is one memfd mapped shared (vm-memory), so the device process maps the same
//! pages after SET_MEM_TABLE. Guest-physical addresses start at [`GUEST_RAM_BASE`]; DMA
//! allocations are a bump allocator (the harness never frees rings or buffers while the
//! device may still use them). Each queue has a kick eventfd (driver → device) and a call
//! eventfd (device → driver), created non-blocking.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use chimney_miniport::{DmaRegion, Platform, PlatformError, WaitOutcome};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{HarnessError, Result};
use crate::sys;

/// Guest-physical address of the first byte of guest RAM. Not 0, so a zeroed descriptor
/// never points at valid memory by accident.
pub const GUEST_RAM_BASE: u64 = 0x1_0000;

pub struct VmmPlatform {
    mem: GuestMemoryMmap,
    next_free: Mutex<u64>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
}

impl std::fmt::Debug for VmmPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmPlatform")
            .field("ram_bytes", &self.mem.last_addr().0)
            .field("queues", &self.kicks.len())
            .finish()
    }
}

impl VmmPlatform {
    /// `ram_bytes` of memfd-backed guest RAM and doorbells for `queues` queues.
    pub fn new(ram_bytes: usize, queues: u16) -> Result<Self> {
        let file = sys::memfd("chimney-guest-ram", ram_bytes as u64)
            .map_err(|e| HarnessError::io("memfd_create guest RAM", e))?;
        let mem = GuestMemoryMmap::from_ranges_with_files(&[(
            GuestAddress(GUEST_RAM_BASE),
            ram_bytes,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| HarnessError::Memory(format!("mmap guest RAM: {e}")))?;
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for q in 0..queues {
            kicks.push(
                EventFd::new(EFD_NONBLOCK)
                    .map_err(|e| HarnessError::io(format!("kick eventfd {q}"), e))?,
            );
            calls.push(
                EventFd::new(EFD_NONBLOCK)
                    .map_err(|e| HarnessError::io(format!("call eventfd {q}"), e))?,
            );
        }
        Ok(Self {
            mem,
            next_free: Mutex::new(GUEST_RAM_BASE),
            kicks,
            calls,
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// One past the last guest-physical address of RAM.
    pub fn ram_end(&self) -> u64 {
        self.mem.last_addr().0 + 1
    }

    pub fn kick_fd(&self, queue: u16) -> Option<&EventFd> {
        self.kicks.get(usize::from(queue))
    }
    pub fn call_fd(&self, queue: u16) -> Option<&EventFd> {
        self.calls.get(usize::from(queue))
    }

    /// The VMM's virtual address of guest-physical `gpa` (vhost-user SET_VRING_ADDR speaks
    /// frontend virtual addresses; the backend maps them through the memory table).
    pub fn host_address(&self, gpa: u64) -> Result<u64> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| HarnessError::Memory(format!("gpa {gpa:#x}: {e}")))
    }

    /// The memory table regions for SET_MEM_TABLE.
    pub fn regions(&self) -> Result<Vec<vhost::VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|r| {
                vhost::VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(HarnessError::vhost("memory region info"))
            })
            .collect()
    }

    /// Allocate and fill a buffer (convenience for tests and the control layer).
    pub fn alloc_with(&self, data: &[u8], capacity: usize) -> Result<DmaRegion> {
        let r = self
            .alloc_dma(capacity.max(data.len()).max(1), 64)
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        self.write(r.addr, data)
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        Ok(r)
    }

    fn bad(addr: u64, len: usize) -> PlatformError {
        PlatformError::BadAddress { addr, len }
    }
}

impl Platform for VmmPlatform {
    fn alloc_dma(&self, len: usize, align: usize) -> std::result::Result<DmaRegion, PlatformError> {
        let oom = PlatformError::OutOfMemory { wanted: len, align };
        let mut next = self.next_free.lock().map_err(|_| oom)?;
        let align = align.max(1) as u64;
        let start = next.checked_next_multiple_of(align).ok_or(oom)?;
        let end = start.checked_add(len as u64).ok_or(oom)?;
        if end > self.ram_end() {
            return Err(oom);
        }
        *next = end;
        // Fresh memfd pages are zero and the bump allocator never reuses memory.
        Ok(DmaRegion { addr: start, len })
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), PlatformError> {
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| Self::bad(addr, buf.len()))
    }

    fn write(&self, addr: u64, data: &[u8]) -> std::result::Result<(), PlatformError> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| Self::bad(addr, data.len()))
    }

    fn read_u16(&self, addr: u64) -> std::result::Result<u16, PlatformError> {
        self.mem
            .load::<u16>(GuestAddress(addr), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| Self::bad(addr, 2))
    }

    fn write_u16(&self, addr: u64, value: u16) -> std::result::Result<(), PlatformError> {
        self.mem
            .store(value.to_le(), GuestAddress(addr), Ordering::Release)
            .map_err(|_| Self::bad(addr, 2))
    }

    fn notify(&self, queue: u16) -> std::result::Result<(), PlatformError> {
        let fd = self
            .kicks
            .get(usize::from(queue))
            .ok_or(PlatformError::Notify { queue })?;
        fd.write(1).map_err(|_| PlatformError::Notify { queue })
    }

    fn wait(
        &self,
        queue: u16,
        timeout: Duration,
    ) -> std::result::Result<WaitOutcome, PlatformError> {
        let fd = self
            .calls
            .get(usize::from(queue))
            .ok_or(PlatformError::Wait { queue })?;
        let ready = sys::poll_readable(fd.as_raw_fd(), timeout)
            .map_err(|_| PlatformError::Wait { queue })?;
        if !ready {
            return Ok(WaitOutcome::TimedOut);
        }
        // Drain the counter; EAGAIN means another waiter took it, which is fine.
        let _ = fd.read();
        Ok(WaitOutcome::Signalled)
    }
}
