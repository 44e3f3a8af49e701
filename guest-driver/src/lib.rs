#![no_std]
//! chimney-miniport: the NDIS-style chimney miniport, portable core.
//!
//! Layers (STYLE.md "Portable driver core"):
//! - [`platform`]: the operations table the core reaches the system through;
//! - [`virtqueue`]: the driver side of a split virtqueue;
//! - [`nic`]: queue pair 0, Ethernet frames with the virtio-net header;
//! - [`control`]: the request/completion layer of the control ring (queue pair 1);
//! - [`ndis`]: NDIS's shapes (block lists, NBL chains, handler tables, the NDIS services);
//! - [`miniport`]: the chimney miniport on top of all of it.
extern crate alloc;
#[cfg(feature = "linux-uio")]
extern crate std;

pub mod control;
pub mod data;
pub mod linux;
pub mod miniport;
pub mod ndis;
pub mod nic;
pub mod platform;
pub mod virtqueue;
#[cfg(target_os = "windows")]
pub mod windows;

pub use control::{ControlChannel, ControlConfig, ControlError};
pub use miniport::{ChimneyMiniport, MiniportConfig, MiniportError};
pub use nic::{NicError, NicQueues, VNET_HDR_LEN};
pub use platform::{DmaRegion, Platform, PlatformError, WaitOutcome};
pub use virtqueue::{Buffer, RingAddresses, UsedBuffer, Virtqueue, VirtqueueError};
