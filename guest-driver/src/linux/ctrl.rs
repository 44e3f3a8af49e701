//! virtio-net control virtqueue commands (virtio 1.x §5.1.6.5). QEMU handles the control
//! queue itself and enables queue pairs beyond the first only after
//! `VIRTIO_NET_CTRL_MQ / VQ_PAIRS_SET(N)` (DESIGN.md), so the driver sends it for every pair
//! it uses. A command is a chain: a driver-written `{class, command}` header and data, then
//! one device-written ack byte.

use core::time::Duration;

use crate::platform::{Platform, PlatformError};
use crate::virtqueue::{Buffer, Virtqueue, VirtqueueError};

pub const VIRTIO_NET_CTRL_MQ: u8 = 4;
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN: u16 = 1;
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX: u16 = 0x8000;
pub const VIRTIO_NET_OK: u8 = 0;
pub const VIRTIO_NET_ERR: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    #[error("VQ_PAIRS_SET({0}) outside 1..=0x8000")]
    PairsOutOfRange(u16),
    #[error(transparent)]
    Queue(#[from] VirtqueueError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("the device answered VQ_PAIRS_SET with ack {0:#x} (VIRTIO_NET_OK is 0)")]
    Refused(u8),
    #[error("the device wrote {0} bytes of ack, expected 1")]
    AckLength(u32),
    #[error("no answer to VQ_PAIRS_SET (timed out)")]
    TimedOut,
}

/// The driver-written part of `VQ_PAIRS_SET(pairs)`: class, command, le16 pairs.
pub fn vq_pairs_set_command(pairs: u16) -> Result<[u8; 4], CtrlError> {
    if !(VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN..=VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX).contains(&pairs) {
        return Err(CtrlError::PairsOutOfRange(pairs));
    }
    let p = pairs.to_le_bytes();
    Ok([
        VIRTIO_NET_CTRL_MQ,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
        p[0],
        p[1],
    ])
}

/// Send `VQ_PAIRS_SET(pairs)` on the control virtqueue `vq` and wait for the ack.
pub fn vq_pairs_set<P: Platform + ?Sized>(
    platform: &P,
    vq: &mut Virtqueue,
    pairs: u16,
    timeout: Duration,
) -> Result<(), CtrlError> {
    let cmd = vq_pairs_set_command(pairs)?;
    let buf = platform.alloc_dma(8, 8)?;
    platform.write(buf.addr, &cmd)?;
    platform.write(buf.addr + 4, &[0xFF])?;
    vq.add(
        platform,
        &[Buffer {
            addr: buf.addr,
            len: 4,
        }],
        &[Buffer {
            addr: buf.addr + 4,
            len: 1,
        }],
        u64::from(pairs),
    )?;
    vq.kick(platform)?;
    loop {
        if let Some(u) = vq.pop_used(platform)? {
            if u.len != 1 {
                return Err(CtrlError::AckLength(u.len));
            }
            let mut ack = [0u8];
            platform.read(buf.addr + 4, &mut ack)?;
            return if ack[0] == VIRTIO_NET_OK {
                Ok(())
            } else {
                Err(CtrlError::Refused(ack[0]))
            };
        }
        if !vq.enable_callbacks(platform)?
            && platform.wait(vq.index(), timeout)? == crate::platform::WaitOutcome::TimedOut
            && !vq.has_used(platform)?
        {
            return Err(CtrlError::TimedOut);
        }
    }
}
