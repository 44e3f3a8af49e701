//! The operations table between the portable driver core and the system it runs on
//! (STYLE.md "Portable driver core": NetKVM's `VirtIOSystemOps`, as a Rust trait).
//!
//! Implementations: the harness's in-process VMM (memfd guest memory, eventfds), later a
//! Linux userspace virtio-pci binding (uio, pagemap) and the Windows NDIS binding.
//!
//! Concurrency contract: the core never locks. Every method takes `&self`, so one platform
//! can serve several queues; each [`crate::virtqueue::Virtqueue`] is `&mut` and therefore
//! used by one thread at a time. A binding that runs queues on several CPUs wraps each
//! queue in its own lock (NDIS: a spin lock per queue).

use core::time::Duration;

/// A block of DMA-able memory: `len` bytes the device reaches at bus address `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRegion {
    pub addr: u64,
    pub len: usize,
}

/// What a platform operation can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("out of DMA memory: wanted {wanted} bytes aligned to {align}")]
    OutOfMemory { wanted: usize, align: usize },
    #[error("address range {addr:#x}+{len} is outside DMA memory")]
    BadAddress { addr: u64, len: usize },
    #[error("notifying queue {queue} failed")]
    Notify { queue: u16 },
    #[error("waiting for queue {queue} failed")]
    Wait { queue: u16 },
}

/// Whether [`Platform::wait`] saw the device signal or ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    Signalled,
    TimedOut,
}

/// What the driver core needs from the system.
pub trait Platform {
    /// Allocate zeroed DMA-able memory of `len` bytes whose bus address is a multiple of
    /// `align` (a power of two). Memory lives as long as the platform.
    fn alloc_dma(&self, len: usize, align: usize) -> Result<DmaRegion, PlatformError>;

    /// Copy `buf.len()` bytes of DMA memory at bus address `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), PlatformError>;

    /// Copy `data` into DMA memory at bus address `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), PlatformError>;

    /// Read an aligned little-endian u16 as one access (ring indices the device updates
    /// concurrently). The default goes through `read`; bindings override it with a
    /// single-copy atomic load.
    fn read_u16(&self, addr: u64) -> Result<u16, PlatformError> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Write an aligned little-endian u16 as one access (see `read_u16`).
    fn write_u16(&self, addr: u64, value: u16) -> Result<(), PlatformError> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Tell the device that queue `queue` has new available buffers (virtio "notify").
    fn notify(&self, queue: u16) -> Result<(), PlatformError>;

    /// Block until the device signals queue `queue` (used-buffer notification) or
    /// `timeout` passes. Spurious wake-ups are allowed: callers re-check the used ring.
    fn wait(&self, queue: u16, timeout: Duration) -> Result<WaitOutcome, PlatformError>;
}

/// A shared platform is a platform (bindings hand the miniport an `Arc` of theirs).
impl<T: Platform + ?Sized> Platform for alloc::sync::Arc<T> {
    fn alloc_dma(&self, len: usize, align: usize) -> Result<DmaRegion, PlatformError> {
        (**self).alloc_dma(len, align)
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        (**self).read(addr, buf)
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), PlatformError> {
        (**self).write(addr, data)
    }
    fn read_u16(&self, addr: u64) -> Result<u16, PlatformError> {
        (**self).read_u16(addr)
    }
    fn write_u16(&self, addr: u64, value: u16) -> Result<(), PlatformError> {
        (**self).write_u16(addr, value)
    }
    fn notify(&self, queue: u16) -> Result<(), PlatformError> {
        (**self).notify(queue)
    }
    fn wait(&self, queue: u16, timeout: Duration) -> Result<WaitOutcome, PlatformError> {
        (**self).wait(queue, timeout)
    }
}
