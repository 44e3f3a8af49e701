//! Linux guest userspace binding (virtio-pci over uio_pci_generic, DESIGN.md): the pieces
//! that need no VM are pure and always built ([`pci`]: config space, BARs, virtio
//! capabilities; [`pagemap`]: `/proc/self/pagemap` entries; [`ctrl`]: the virtio-net
//! control-virtqueue command `VQ_PAIRS_SET`; [`dma`]: placing DMA buffers in huge pages).
//! The parts that touch the system (sysfs, mmap, mlock, /dev/uioN) are in [`uio`], behind
//! the `linux-uio` feature (needs std).

pub mod ctrl;
pub mod dma;
pub mod pagemap;
pub mod pci;
#[cfg(feature = "linux-uio")]
pub mod uio;
