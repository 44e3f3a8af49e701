//! Queue pair 0: the plain NIC path (DESIGN.md queue map). Ethernet frames with the
//! 12-byte virtio-net header (virtio 1.x, `struct virtio_net_hdr_v1`) in front; the driver
//! sends with an all-zero header (no checksum or segmentation offload) and keeps every rx
//! buffer posted.

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use crate::platform::{DmaRegion, Platform, PlatformError};
use crate::virtqueue::{Buffer, Virtqueue, VirtqueueError};

/// Length of `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1 always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NicError {
    #[error("rx queue {queue}: {source}")]
    Rx { queue: u16, source: VirtqueueError },
    #[error("tx queue {queue}: {source}")]
    Tx { queue: u16, source: VirtqueueError },
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("frame of {len} bytes does not fit a {max}-byte buffer")]
    FrameTooLong { len: usize, max: usize },
    #[error("all {0} tx buffers are in flight")]
    TxFull(usize),
    #[error("device returned a {len}-byte rx buffer, shorter than the virtio-net header")]
    RxTooShort { len: u32 },
    #[error("device returned token {token}, which names no buffer of this queue")]
    UnknownToken { token: u64 },
    #[error("buffer length {0} must be between {min} and 4 GiB", min = MIN_BUFFER)]
    BadBufferLength(usize),
}

/// Smallest buffer: the header plus an Ethernet header.
pub const MIN_BUFFER: usize = VNET_HDR_LEN + 14;

/// The driver side of one NIC queue pair (rx = 2n, tx = 2n+1).
#[derive(Debug)]
pub struct NicQueues {
    rx: Virtqueue,
    tx: Virtqueue,
    buf_len: usize,
    rx_bufs: Vec<DmaRegion>,
    tx_bufs: Vec<DmaRegion>,
    tx_free: Vec<usize>,
}

impl NicQueues {
    /// Allocate one `buf_len`-byte buffer per rx and tx descriptor, post all rx buffers.
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        rx: Virtqueue,
        tx: Virtqueue,
        buf_len: usize,
    ) -> Result<Self, NicError> {
        if buf_len < MIN_BUFFER || u32::try_from(buf_len).is_err() {
            return Err(NicError::BadBufferLength(buf_len));
        }
        let mut rx_bufs = Vec::new();
        for _ in 0..rx.size() {
            rx_bufs.push(platform.alloc_dma(buf_len, 64)?);
        }
        let mut tx_bufs = Vec::new();
        for _ in 0..tx.size() {
            tx_bufs.push(platform.alloc_dma(buf_len, 64)?);
        }
        let mut nic = NicQueues {
            tx_free: (0..tx_bufs.len()).collect(),
            rx,
            tx,
            buf_len,
            rx_bufs,
            tx_bufs,
        };
        for i in 0..nic.rx_bufs.len() {
            nic.post_rx(platform, i)?;
        }
        let q = nic.rx.index();
        nic.rx
            .kick(platform)
            .map_err(|source| NicError::Rx { queue: q, source })?;
        Ok(nic)
    }

    fn post_rx<P: Platform + ?Sized>(&mut self, platform: &P, i: usize) -> Result<(), NicError> {
        let b = self.rx_bufs[i];
        let q = self.rx.index();
        self.rx
            .add(
                platform,
                &[],
                &[Buffer {
                    addr: b.addr,
                    len: b.len as u32,
                }],
                i as u64,
            )
            .map_err(|source| NicError::Rx { queue: q, source })?;
        Ok(())
    }

    fn reclaim_tx<P: Platform + ?Sized>(&mut self, platform: &P) -> Result<(), NicError> {
        let q = self.tx.index();
        while let Some(u) = self
            .tx
            .pop_used(platform)
            .map_err(|source| NicError::Tx { queue: q, source })?
        {
            let i = usize::try_from(u.token)
                .ok()
                .filter(|i| *i < self.tx_bufs.len())
                .ok_or(NicError::UnknownToken { token: u.token })?;
            self.tx_free.push(i);
        }
        Ok(())
    }

    /// Send one Ethernet frame (without header; the header is added here).
    pub fn send<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        frame: &[u8],
    ) -> Result<(), NicError> {
        let max = self.buf_len - VNET_HDR_LEN;
        if frame.len() > max {
            return Err(NicError::FrameTooLong {
                len: frame.len(),
                max,
            });
        }
        self.reclaim_tx(platform)?;
        let i = self
            .tx_free
            .pop()
            .ok_or(NicError::TxFull(self.tx_bufs.len()))?;
        let b = self.tx_bufs[i];
        platform.write(b.addr, &[0u8; VNET_HDR_LEN])?;
        platform.write(b.addr + VNET_HDR_LEN as u64, frame)?;
        let q = self.tx.index();
        let len = (VNET_HDR_LEN + frame.len()) as u32;
        self.tx
            .add(platform, &[Buffer { addr: b.addr, len }], &[], i as u64)
            .map_err(|source| NicError::Tx { queue: q, source })?;
        self.tx
            .kick(platform)
            .map_err(|source| NicError::Tx { queue: q, source })?;
        Ok(())
    }

    /// Receive one frame (header stripped), waiting up to `timeout`. `Ok(None)`: nothing came.
    pub fn recv<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, NicError> {
        let q = self.rx.index();
        let used = match self.rx.wait_used(platform, timeout) {
            Ok(u) => u,
            Err(source) => {
                // The chain came back (with a length it cannot have): post the buffer
                // again so the ring does not shrink, then report.
                if let VirtqueueError::UsedLenTooLarge { token, .. } = source {
                    if let Some(i) = usize::try_from(token)
                        .ok()
                        .filter(|i| *i < self.rx_bufs.len())
                    {
                        self.post_rx(platform, i)?;
                        self.rx
                            .kick(platform)
                            .map_err(|source| NicError::Rx { queue: q, source })?;
                    }
                }
                return Err(NicError::Rx { queue: q, source });
            }
        };
        let Some(u) = used else {
            return Ok(None);
        };
        let i = usize::try_from(u.token)
            .ok()
            .filter(|i| *i < self.rx_bufs.len())
            .ok_or(NicError::UnknownToken { token: u.token })?;
        let result = if (u.len as usize) < VNET_HDR_LEN {
            Err(NicError::RxTooShort { len: u.len })
        } else {
            let mut frame = vec![0u8; u.len as usize - VNET_HDR_LEN];
            platform.read(self.rx_bufs[i].addr + VNET_HDR_LEN as u64, &mut frame)?;
            Ok(Some(frame))
        };
        // The buffer goes back to the device whatever it held.
        self.post_rx(platform, i)?;
        self.rx
            .kick(platform)
            .map_err(|source| NicError::Rx { queue: q, source })?;
        result
    }
}
