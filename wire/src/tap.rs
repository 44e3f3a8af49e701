//! TAP devices with a virtio-net header in front of every frame (`IFF_VNET_HDR`).

use crate::{sys, NetNs, Result, WireError};
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// Size of the virtio-net header we use on the TAP: `struct virtio_net_hdr_mrg_rxbuf`
/// (12 bytes), the header of virtio 1.0 devices, so guest frames pass through unchanged.
pub const VNET_HDR_LEN: usize = 12;

/// Largest frame (without header) the TAP may give us: a 64 KiB GSO super-frame plus headers.
pub const MAX_FRAME: usize = 65_550;

/// The 12-byte virtio-net header (little-endian, virtio 1.0 layout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHeader {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`.
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_ECN: u8 = 0x80;

    /// Parse the first 12 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<VnetHeader> {
        let b: &[u8; VNET_HDR_LEN] = buf
            .get(..VNET_HDR_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(WireError::ShortHeader {
                len: buf.len(),
                need: VNET_HDR_LEN,
            })?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }

    /// The 12 header bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// Which offloads the kernel side may use in frames it gives us (`TUNSETOFFLOAD`).
/// Frames we write may always carry GSO/NEEDS_CSUM headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    /// Partial checksums (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) — required for any TSO.
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub tso_ecn: bool,
}

impl Offload {
    /// Everything: checksum, TSO4, TSO6, ECN.
    pub const ALL: Offload = Offload {
        csum: true,
        tso4: true,
        tso6: true,
        tso_ecn: true,
    };

    fn bits(&self) -> libc::c_uint {
        let mut f = 0;
        if self.csum {
            f |= libc::TUN_F_CSUM;
            // The kernel refuses TSO without CSUM; only add TSO bits with it.
            if self.tso4 {
                f |= libc::TUN_F_TSO4;
            }
            if self.tso6 {
                f |= libc::TUN_F_TSO6;
            }
            if self.tso_ecn {
                f |= libc::TUN_F_TSO_ECN;
            }
        }
        f
    }
}

/// An open TAP queue: non-blocking, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, 12-byte header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Create (or attach to the existing persistent) TAP interface `name` in the calling
    /// thread's network namespace. `""` lets the kernel choose a name. The interface is not
    /// brought up here (see [`crate::configure_peer`]).
    pub fn open(name: &str) -> Result<Tap> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(WireError::InvalidName {
                what: "TAP interface name",
                name: name.to_string(),
                reason: "longer than 15 bytes",
            });
        }
        if name.contains(['\0', '/']) {
            return Err(WireError::InvalidName {
                what: "TAP interface name",
                name: name.to_string(),
                reason: "contains NUL or '/'",
            });
        }
        let (file, actual) =
            sys::open_tap(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)
                .map_err(|e| WireError::io(format!("TUNSETIFF {name:?}"), e))?;
        sys::set_vnet_hdr_size(file.as_fd(), VNET_HDR_LEN as libc::c_int)
            .map_err(|e| WireError::io(format!("TUNSETVNETHDRSZ on {actual}"), e))?;
        let tap = Tap { file, name: actual };
        tap.set_offload(Offload::default())?;
        Ok(tap)
    }

    /// Like [`Tap::open`], but the interface is created inside `ns` (opened from a thread that
    /// entered it). The fd works from any thread afterwards.
    pub fn open_in(ns: &NetNs, name: &str) -> Result<Tap> {
        ns.run(|| Tap::open(name))?
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Set which offloads the kernel may use in frames it gives us (`TUNSETOFFLOAD`). Match it
    /// to what the reader can take (e.g. the features a virtio guest acked).
    pub fn set_offload(&self, offload: Offload) -> Result<()> {
        sys::set_offload(self.file.as_fd(), offload.bits())
            .map_err(|e| WireError::io(format!("TUNSETOFFLOAD {offload:?} on {}", self.name), e))
    }

    /// Read one frame, header included, into `buf`. `Ok(None)` when nothing is queued.
    /// `buf` should hold `VNET_HDR_LEN + MAX_FRAME` bytes, else long frames are truncated
    /// by the kernel.
    pub fn read_raw(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        loop {
            match (&self.file).read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WireError::io(format!("read from {}", self.name), e)),
            }
        }
    }

    /// Read one frame: returns its header and the frame's length in `frame` (copied after the
    /// header). `Ok(None)` when nothing is queued.
    pub fn read_frame(
        &self,
        buf: &mut [u8],
    ) -> Result<Option<(VnetHeader, std::ops::Range<usize>)>> {
        match self.read_raw(buf)? {
            None => Ok(None),
            Some(n) => {
                let hdr = VnetHeader::parse(&buf[..n])?;
                Ok(Some((hdr, VNET_HDR_LEN..n)))
            }
        }
    }

    /// Wait up to `timeout` for a frame and read it (header included). `Ok(None)` on timeout.
    pub fn read_raw_timeout(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        if !sys::poll_readable(self.file.as_fd(), ms)
            .map_err(|e| WireError::io(format!("poll {}", self.name), e))?
        {
            return Ok(None);
        }
        self.read_raw(buf)
    }

    /// Write one frame that already starts with its 12-byte header.
    /// `Ok(false)` if the kernel queue is full (frame not sent).
    pub fn write_raw(&self, buf: &[u8]) -> Result<bool> {
        if buf.len() < VNET_HDR_LEN {
            return Err(WireError::ShortHeader {
                len: buf.len(),
                need: VNET_HDR_LEN,
            });
        }
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Write `hdr` + `frame` as one frame. `Ok(false)` if the kernel queue is full.
    pub fn write_frame(&self, hdr: &VnetHeader, frame: &[u8]) -> Result<bool> {
        let h = hdr.to_bytes();
        self.write_vectored(&[IoSlice::new(&h), IoSlice::new(frame)])
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> Result<bool> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > VNET_HDR_LEN + MAX_FRAME {
            return Err(WireError::FrameTooLarge {
                len: total,
                limit: VNET_HDR_LEN + MAX_FRAME,
            });
        }
        loop {
            match (&self.file).write_vectored(bufs) {
                // A TAP write takes the whole frame or fails.
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WireError::io(format!("write to {}", self.name), e)),
            }
        }
    }

    /// A second handle on the same TAP queue (dup of the fd).
    pub fn try_clone(&self) -> Result<Tap> {
        Ok(Tap {
            file: self
                .file
                .try_clone()
                .map_err(|e| WireError::io("dup TAP fd", e))?,
            name: self.name.clone(),
        })
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
