//! The system half of the Linux guest userspace binding: a virtio-net PCI function bound to
//! `uio_pci_generic`, driven from userspace (DESIGN.md: vfio no-IOMMU is not built into
//! Debian's cloud kernel).
//!
//! - BARs: `mmap` of `/sys/bus/pci/devices/<bdf>/resource<N>`;
//! - DMA memory: `pages` 2 MiB hugetlb mappings, each locked, populated and physically
//!   contiguous (a huge page is); bus addresses from `/proc/self/pagemap` (needs
//!   CAP_SYS_ADMIN, i.e. root), checked 4 KiB page by page. One allocation never spans
//!   two huge pages (they need not be adjacent), so the largest is 2 MiB;
//! - interrupts: INTx through `/dev/uioN` (a read returns the interrupt count; writing the
//!   command register through sysfs `config` re-enables INTx, as uio_pci_generic expects).
//!   The virtio ISR register is read first: it lowers the level-triggered line, and a set
//!   bit means the device signalled while INTx was masked (else that wake-up is lost);
//! - [`find_virtio_net`], [`bind_uio_pci_generic`], [`reserve_huge_pages`]: the sysfs steps
//!   that hand the function to uio_pci_generic;
//! - the virtio 1.x init sequence on the common configuration structure.
//!
//! Exercised for real inside the QEMU guest (issue about QEMU); the parsing pieces are
//! unit-tested without a VM (`tests/linux_pieces.rs`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::string::{String, ToString};
use std::sync::Mutex;
use std::time::Duration;
use std::vec::Vec;

use super::pagemap;
use super::pci::{parse_resource, PciError, VirtioPciLayout, VirtioRegion};
use crate::platform::{DmaRegion, Platform, PlatformError, WaitOutcome};

pub const HUGE_PAGE: usize = 2 << 20;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// virtio 1.x common configuration offsets (§4.1.4.3).
pub mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0C;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1A;
    pub const QUEUE_ENABLE: u64 = 0x1C;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1E;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// Device status bits (§2.1).
pub mod device_status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
}

#[derive(Debug, thiserror::Error)]
pub enum UioError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    Pagemap(#[from] pagemap::PagemapError),
    #[error("BAR{0} is not a memory BAR with a sysfs resource file")]
    NoBar(u8),
    #[error("{region} region {offset:#x}+{len} is outside BAR{bar} ({size} bytes)")]
    OutsideBar {
        region: &'static str,
        bar: u8,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("DMA memory is not physically contiguous at page {page}")]
    NotContiguous { page: usize },
    #[error("the device refused FEATURES_OK (features {0:#x})")]
    FeaturesRefused(u64),
    #[error("queue {0} does not exist on the device")]
    NoQueue(u16),
    #[error("no virtio-net PCI function in /sys/bus/pci/devices")]
    NoVirtioNet,
    #[error("{bdf} bound to uio_pci_generic but no /sys/bus/pci/devices/{bdf}/uio/uioN appeared")]
    NoUio { bdf: String },
    #[error("{wanted} huge pages requested, the kernel gave {got} (guest RAM too small?)")]
    HugePages { wanted: usize, got: usize },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UioError {
    let what = what.into();
    move |source| UioError::Io { what, source }
}

/// An mmap'ed BAR.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is device memory / locked memory owned by this value; accesses go
// through volatile reads/writes at bounds-checked offsets.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

impl Mapping {
    fn map(file: &File, len: usize, flags: libc::c_int) -> Result<Mapping, UioError> {
        // SAFETY: a fresh shared mapping of a file we opened; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(UioError::Io {
                what: "mmap".to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn check(&self, off: u64, n: usize) -> Option<usize> {
        let off = usize::try_from(off).ok()?;
        (off.checked_add(n)? <= self.len).then_some(off)
    }

    fn read<T: Copy>(&self, off: u64) -> Option<T> {
        let o = self.check(off, core::mem::size_of::<T>())?;
        // SAFETY: in bounds (checked); device registers are naturally aligned per spec.
        Some(unsafe { core::ptr::read_volatile(self.ptr.add(o).cast::<T>()) })
    }

    fn write<T: Copy>(&self, off: u64, v: T) -> Option<()> {
        let o = self.check(off, core::mem::size_of::<T>())?;
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile(self.ptr.add(o).cast::<T>(), v) };
        Some(())
    }
}

/// A virtio-net function under uio_pci_generic, as the miniport's [`Platform`].
pub struct UioPlatform {
    sysfs: PathBuf,
    layout: VirtioPciLayout,
    bars: Vec<Option<Mapping>>,
    /// Huge pages of DMA memory and their bus addresses.
    dma: Vec<(Mapping, u64)>,
    /// Next free byte: (huge page, offset).
    next_free: Mutex<(usize, usize)>,
    uio: File,
    notify_offsets: Mutex<Vec<Option<u64>>>,
}

impl core::fmt::Debug for UioPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UioPlatform")
            .field("sysfs", &self.sysfs)
            .field("layout", &self.layout)
            .field("dma_pages", &self.dma.len())
            .finish()
    }
}

impl UioPlatform {
    /// Open PCI function `bdf` (e.g. `0000:00:03.0`), already bound to uio_pci_generic as
    /// `/dev/uio<uio_index>`, with `dma_pages` huge pages of DMA memory (reserve them with
    /// [`reserve_huge_pages`] first).
    pub fn open(bdf: &str, uio_index: u32, dma_pages: usize) -> Result<Self, UioError> {
        let sysfs = PathBuf::from("/sys/bus/pci/devices").join(bdf);
        let mut config = Vec::new();
        File::open(sysfs.join("config"))
            .and_then(|mut f| f.read_to_end(&mut config))
            .map_err(io("read PCI config"))?;
        let layout = VirtioPciLayout::parse(&config)?;
        let resource =
            std::fs::read_to_string(sysfs.join("resource")).map_err(io("read resource"))?;
        let res = parse_resource(&resource)?;
        let mut bars = Vec::new();
        for (i, r) in res.iter().take(6).enumerate() {
            let needed = [layout.common, layout.notify, layout.isr]
                .iter()
                .chain(layout.device_cfg.iter())
                .any(|g| usize::from(g.bar) == i);
            bars.push(match (r, needed) {
                (Some(super::pci::Resource { size, .. }), true) => {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(sysfs.join(std::format!("resource{i}")))
                        .map_err(io(std::format!("open resource{i}")))?;
                    let len = usize::try_from(*size).map_err(|_| UioError::NoBar(i as u8))?;
                    Some(Mapping::map(&f, len, libc::MAP_SHARED)?)
                }
                _ => None,
            });
        }
        let me = |r: VirtioRegion, name| -> Result<(), UioError> {
            let size = bars
                .get(usize::from(r.bar))
                .and_then(|b| b.as_ref())
                .ok_or(UioError::NoBar(r.bar))?
                .len as u64;
            if u64::from(r.offset) + u64::from(r.length) > size {
                return Err(UioError::OutsideBar {
                    region: name,
                    bar: r.bar,
                    offset: u64::from(r.offset),
                    len: u64::from(r.length),
                    size,
                });
            }
            Ok(())
        };
        me(layout.common, "common")?;
        me(layout.notify, "notify")?;
        me(layout.isr, "isr")?;
        let mut dma = Vec::with_capacity(dma_pages);
        for _ in 0..dma_pages.max(1) {
            dma.push(Self::dma_memory()?);
        }
        let uio = OpenOptions::new()
            .read(true)
            .write(true)
            .open(std::format!("/dev/uio{uio_index}"))
            .map_err(io("open /dev/uioN"))?;
        let me = UioPlatform {
            sysfs,
            layout,
            bars,
            dma,
            next_free: Mutex::new((0, 0)),
            uio,
            notify_offsets: Mutex::new(Vec::new()),
        };
        // Bus mastering on before the device may touch memory (DMA of the rings).
        me.unmask_intx()
            .map_err(io("enable bus mastering (PCI command register)"))?;
        Ok(me)
    }

    /// One locked 2 MiB huge page and its bus address, checked contiguous page by page.
    fn dma_memory() -> Result<(Mapping, u64), UioError> {
        // SAFETY: anonymous mapping, checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                HUGE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_HUGETLB
                    | libc::MAP_LOCKED
                    | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(UioError::Io {
                what: "mmap 2 MiB hugetlb DMA memory (set /proc/sys/vm/nr_hugepages)".to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let m = Mapping {
            ptr: ptr.cast(),
            len: HUGE_PAGE,
        };
        let mut pm = File::open("/proc/self/pagemap").map_err(io("open pagemap"))?;
        let page = 4096u64;
        let base_v = m.ptr as u64;
        let mut base_p = 0;
        for i in 0..(HUGE_PAGE as u64 / page) {
            let v = base_v + i * page;
            let mut b = [0u8; pagemap::ENTRY_LEN];
            pm.seek(SeekFrom::Start(pagemap::entry_offset(v, page)?))
                .and_then(|_| pm.read_exact(&mut b))
                .map_err(io("read pagemap"))?;
            let p = pagemap::physical_address(v, pagemap::entry_from_bytes(b), page)?;
            if i == 0 {
                base_p = p;
            } else if p != base_p + i * page {
                return Err(UioError::NotContiguous { page: i as usize });
            }
        }
        Ok((m, base_p))
    }

    fn common(&self) -> &Mapping {
        // open() checked that the common BAR is mapped.
        self.bars[usize::from(self.layout.common.bar)]
            .as_ref()
            .expect("common BAR mapped in open()")
    }

    fn c_off(&self, reg: u64) -> u64 {
        u64::from(self.layout.common.offset) + reg
    }

    /// virtio 1.x init up to FEATURES_OK: reset, ACKNOWLEDGE, DRIVER, negotiate `wanted`
    /// ∩ offered. Returns the negotiated features.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, UioError> {
        use device_status::*;
        let c = self.common();
        let st = self.c_off(common::DEVICE_STATUS);
        let bad = || UioError::NoBar(self.layout.common.bar);
        c.write::<u8>(st, 0).ok_or_else(bad)?;
        while c.read::<u8>(st).ok_or_else(bad)? != 0 {
            std::thread::yield_now();
        }
        c.write::<u8>(st, ACKNOWLEDGE).ok_or_else(bad)?;
        c.write::<u8>(st, ACKNOWLEDGE | DRIVER).ok_or_else(bad)?;
        let mut offered = 0u64;
        for sel in 0..2u32 {
            c.write(self.c_off(common::DEVICE_FEATURE_SELECT), sel)
                .ok_or_else(bad)?;
            offered |= u64::from(
                c.read::<u32>(self.c_off(common::DEVICE_FEATURE))
                    .ok_or_else(bad)?,
            ) << (32 * sel);
        }
        let features = offered & wanted;
        for sel in 0..2u32 {
            c.write(self.c_off(common::DRIVER_FEATURE_SELECT), sel)
                .ok_or_else(bad)?;
            c.write(
                self.c_off(common::DRIVER_FEATURE),
                (features >> (32 * sel)) as u32,
            )
            .ok_or_else(bad)?;
        }
        c.write::<u8>(st, ACKNOWLEDGE | DRIVER | FEATURES_OK)
            .ok_or_else(bad)?;
        if c.read::<u8>(st).ok_or_else(bad)? & FEATURES_OK == 0 {
            return Err(UioError::FeaturesRefused(features));
        }
        Ok(features)
    }

    /// Program queue `index` with the ring addresses of a driver [`crate::Virtqueue`] and
    /// enable it; remembers its doorbell for `notify`.
    pub fn setup_queue(
        &self,
        index: u16,
        size: u16,
        rings: crate::RingAddresses,
    ) -> Result<(), UioError> {
        let c = self.common();
        let bad = || UioError::NoBar(self.layout.common.bar);
        if index
            >= c.read::<u16>(self.c_off(common::NUM_QUEUES))
                .ok_or_else(bad)?
        {
            return Err(UioError::NoQueue(index));
        }
        c.write(self.c_off(common::QUEUE_SELECT), index)
            .ok_or_else(bad)?;
        c.write(self.c_off(common::QUEUE_SIZE), size)
            .ok_or_else(bad)?;
        c.write(self.c_off(common::QUEUE_MSIX_VECTOR), 0xFFFFu16)
            .ok_or_else(bad)?;
        c.write(self.c_off(common::QUEUE_DESC), rings.desc_table)
            .ok_or_else(bad)?;
        c.write(self.c_off(common::QUEUE_DRIVER), rings.avail_ring)
            .ok_or_else(bad)?;
        c.write(self.c_off(common::QUEUE_DEVICE), rings.used_ring)
            .ok_or_else(bad)?;
        let off: u16 = c
            .read(self.c_off(common::QUEUE_NOTIFY_OFF))
            .ok_or_else(bad)?;
        c.write(self.c_off(common::QUEUE_ENABLE), 1u16)
            .ok_or_else(bad)?;
        let mut n = self
            .notify_offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if n.len() <= usize::from(index) {
            n.resize(usize::from(index) + 1, None);
        }
        n[usize::from(index)] = self.layout.notify_offset(off);
        Ok(())
    }

    /// How many virtqueues the device has (data queues and the control queue).
    pub fn num_queues(&self) -> Result<u16, UioError> {
        self.common()
            .read::<u16>(self.c_off(common::NUM_QUEUES))
            .ok_or(UioError::NoBar(self.layout.common.bar))
    }

    /// Set DRIVER_OK: the device may use the queues.
    pub fn driver_ok(&self) -> Result<(), UioError> {
        use device_status::*;
        let st = self.c_off(common::DEVICE_STATUS);
        self.common()
            .write::<u8>(st, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
            .ok_or(UioError::NoBar(self.layout.common.bar))
    }

    /// The huge page holding `addr..addr+len` and the offset in it.
    fn dma_at(&self, addr: u64, len: usize) -> Result<(&Mapping, usize), PlatformError> {
        let bad = PlatformError::BadAddress { addr, len };
        for (m, bus) in &self.dma {
            let Some(off) = addr.checked_sub(*bus) else {
                continue;
            };
            let Ok(off) = usize::try_from(off) else {
                continue;
            };
            if off < m.len {
                return (off.checked_add(len).ok_or(bad)? <= m.len)
                    .then_some((m, off))
                    .ok_or(bad);
            }
        }
        Err(bad)
    }

    /// Read the virtio ISR status (clears it and lowers INTx).
    fn read_isr(&self) -> Option<u8> {
        self.bars
            .get(usize::from(self.layout.isr.bar))?
            .as_ref()?
            .read::<u8>(u64::from(self.layout.isr.offset))
    }

    /// uio_pci_generic masks INTx after each interrupt: clear PCI_COMMAND bit 10
    /// (INTx disable) through sysfs config to take the next one. The same write keeps bus
    /// mastering (bit 2) and memory space (bit 1) on: uio_pci_generic does not enable bus
    /// mastering, and QEMU's virtio-pci clears DRIVER_OK (stopping a vhost-user backend)
    /// on every command-register write without it.
    fn unmask_intx(&self) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.sysfs.join("config"))?;
        let mut cmd = [0u8; 2];
        f.seek(SeekFrom::Start(4))?;
        f.read_exact(&mut cmd)?;
        let v = (u16::from_le_bytes(cmd) | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY) & !(1 << 10);
        f.seek(SeekFrom::Start(4))?;
        f.write_all(&v.to_le_bytes())
    }
}

impl Platform for UioPlatform {
    fn alloc_dma(&self, len: usize, align: usize) -> Result<DmaRegion, PlatformError> {
        let oom = PlatformError::OutOfMemory { wanted: len, align };
        if !align.is_power_of_two() || len > HUGE_PAGE || align > HUGE_PAGE {
            return Err(oom);
        }
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let at = super::dma::Cursor {
            page: next.0,
            offset: next.1,
        };
        let (piece, after) =
            super::dma::place(at, self.dma.len(), HUGE_PAGE, len, align).ok_or(oom)?;
        let (m, bus) = self.dma.get(piece.page).ok_or(oom)?;
        if after.offset > m.len {
            return Err(oom);
        }
        *next = (after.page, after.offset);
        // The mapping came zeroed from the kernel and is never handed out twice.
        Ok(DmaRegion {
            addr: bus + piece.offset as u64,
            len,
        })
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        let (m, off) = self.dma_at(addr, buf.len())?;
        // SAFETY: in bounds of the locked mapping (dma_at).
        unsafe { core::ptr::copy_nonoverlapping(m.ptr.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), PlatformError> {
        let (m, off) = self.dma_at(addr, data.len())?;
        // SAFETY: as in `read`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), m.ptr.add(off), data.len()) };
        Ok(())
    }

    fn read_u16(&self, addr: u64) -> Result<u16, PlatformError> {
        let (m, off) = self.dma_at(addr, 2)?;
        m.read::<u16>(off as u64)
            .ok_or(PlatformError::BadAddress { addr, len: 2 })
    }

    fn write_u16(&self, addr: u64, value: u16) -> Result<(), PlatformError> {
        let (m, off) = self.dma_at(addr, 2)?;
        m.write::<u16>(off as u64, value)
            .ok_or(PlatformError::BadAddress { addr, len: 2 })
    }

    fn notify(&self, queue: u16) -> Result<(), PlatformError> {
        let n = self
            .notify_offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let off = n
            .get(usize::from(queue))
            .copied()
            .flatten()
            .ok_or(PlatformError::Notify { queue })?;
        self.bars[usize::from(self.layout.notify.bar)]
            .as_ref()
            .and_then(|b| b.write::<u16>(off, queue))
            .ok_or(PlatformError::Notify { queue })
    }

    fn wait(&self, queue: u16, timeout: Duration) -> Result<WaitOutcome, PlatformError> {
        // The device signalled while INTx was masked: that is this wake-up.
        let pending = self.read_isr().unwrap_or(0) & 1 != 0;
        self.unmask_intx()
            .map_err(|_| PlatformError::Wait { queue })?;
        if pending {
            return Ok(WaitOutcome::Signalled);
        }
        let mut pfd = libc::pollfd {
            fd: self.uio.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        match r {
            0 => Ok(WaitOutcome::TimedOut),
            r if r > 0 => {
                let mut count = [0u8; 4];
                (&self.uio)
                    .read_exact(&mut count)
                    .map_err(|_| PlatformError::Wait { queue })?;
                Ok(WaitOutcome::Signalled)
            }
            _ => Err(PlatformError::Wait { queue }),
        }
    }
}

/// The first PCI function that is a virtio-net device (modern or transitional), as its
/// sysfs name (`0000:00:03.0`).
pub fn find_virtio_net() -> Result<String, UioError> {
    let dir = std::fs::read_dir("/sys/bus/pci/devices").map_err(io("list PCI devices"))?;
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for bdf in names {
        let base = PathBuf::from("/sys/bus/pci/devices").join(&bdf);
        let read = |f: &str| {
            std::fs::read_to_string(base.join(f))
                .ok()
                .and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        };
        if read("vendor") == Some(super::pci::VIRTIO_PCI_VENDOR)
            && matches!(
                read("device"),
                Some(
                    super::pci::VIRTIO_NET_MODERN_DEVICE
                        | super::pci::VIRTIO_NET_TRANSITIONAL_DEVICE
                )
            )
        {
            return Ok(bdf);
        }
    }
    Err(UioError::NoVirtioNet)
}

/// Hand PCI function `bdf` to uio_pci_generic (unbinding any driver it has) and return
/// the N of its `/dev/uioN`. The module must be loaded.
pub fn bind_uio_pci_generic(bdf: &str) -> Result<u32, UioError> {
    let base = PathBuf::from("/sys/bus/pci/devices").join(bdf);
    if base.join("driver").exists() {
        std::fs::write(base.join("driver/unbind"), bdf).map_err(io("unbind the PCI driver"))?;
    }
    // driver_override: only this function, whatever its id (new_id would also grab others).
    std::fs::write(base.join("driver_override"), "uio_pci_generic")
        .map_err(io("write driver_override"))?;
    std::fs::write("/sys/bus/pci/drivers/uio_pci_generic/bind", bdf)
        .map_err(io("bind to uio_pci_generic"))?;
    let uio = std::fs::read_dir(base.join("uio")).map_err(io("list the function's uio"))?;
    for e in uio.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("uio").and_then(|n| n.parse().ok()) {
            return Ok(n);
        }
    }
    Err(UioError::NoUio {
        bdf: bdf.to_string(),
    })
}

/// Ask the kernel for `n` 2 MiB huge pages (`/proc/sys/vm/nr_hugepages`) and check it got
/// them.
pub fn reserve_huge_pages(n: usize) -> Result<(), UioError> {
    let path = "/proc/sys/vm/nr_hugepages";
    let have: usize = std::fs::read_to_string(path)
        .map_err(io("read nr_hugepages"))?
        .trim()
        .parse()
        .unwrap_or(0);
    if have >= n {
        return Ok(());
    }
    std::fs::write(path, n.to_string()).map_err(io("write nr_hugepages"))?;
    let got: usize = std::fs::read_to_string(path)
        .map_err(io("read nr_hugepages"))?
        .trim()
        .parse()
        .unwrap_or(0);
    if got < n {
        return Err(UioError::HugePages { wanted: n, got });
    }
    Ok(())
}
