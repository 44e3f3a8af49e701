//! The VMM role: a vhost-user frontend (vhost crate, `vhost-user-frontend`) that connects to
//! the device's unix socket as QEMU does, hands it guest RAM (memfd, SET_MEM_TABLE) and sets
//! up vrings for the guest-driver's [`Virtqueue`]s.
//!
//! Message order: SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES,
//! GET_QUEUE_NUM, SET_FEATURES, SET_MEM_TABLE, then per queue SET_VRING_NUM / _BASE / _ADDR /
//! _KICK / _CALL and SET_VRING_ENABLE. Enabling comes after SET_FEATURES: vhost 0.18 refuses
//! SET_VRING_ENABLE before features are acked (DESIGN.md, QEMU facts).

use std::path::Path;
use std::sync::Arc;

use chimney_miniport::Virtqueue;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};

use crate::error::{HarnessError, Result};
use crate::vmm_platform::VmmPlatform;

/// virtio feature bits the harness knows (virtio 1.x spec, §6 and §5.1.3).
pub mod features {
    pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
    pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
    pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
}

/// How the VMM sets the device up.
#[derive(Debug, Clone)]
pub struct VmmConfig {
    /// Bytes of guest RAM (one memfd region).
    pub ram_bytes: usize,
    /// Queue pairs to use (pair 0 NIC, pair 1 control, 2.. data).
    pub queue_pairs: u16,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX when the device offers it.
    pub event_idx: bool,
}

impl Default for VmmConfig {
    fn default() -> Self {
        Self {
            ram_bytes: 64 << 20,
            queue_pairs: 2,
            event_idx: true,
        }
    }
}

/// A connected vhost-user frontend with its guest RAM.
pub struct Vmm {
    frontend: Frontend,
    platform: Arc<VmmPlatform>,
    acked_features: u64,
    queue_pairs: u16,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field("queue_pairs", &self.queue_pairs)
            .finish()
    }
}

impl Vmm {
    /// Connect to the device socket and negotiate up to and including SET_MEM_TABLE.
    pub fn connect(socket: &Path, cfg: &VmmConfig) -> Result<Vmm> {
        use features::*;
        let queues = cfg.queue_pairs.checked_mul(2).ok_or_else(|| {
            HarnessError::Device(format!("{} queue pairs is too many", cfg.queue_pairs))
        })?;
        let platform = Arc::new(VmmPlatform::new(cfg.ram_bytes, queues)?);
        let mut frontend =
            Frontend::connect(socket, u64::from(queues)).map_err(HarnessError::vhost("connect"))?;
        frontend
            .set_owner()
            .map_err(HarnessError::vhost("SET_OWNER"))?;
        let offered = frontend
            .get_features()
            .map_err(HarnessError::vhost("GET_FEATURES"))?;
        tracing::debug!(offered = format_args!("{offered:#x}"), "device features");
        for (bit, feature) in [
            (VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"),
            (
                VHOST_USER_F_PROTOCOL_FEATURES,
                "VHOST_USER_F_PROTOCOL_FEATURES",
            ),
        ] {
            if offered & bit == 0 {
                return Err(HarnessError::MissingFeature { feature });
            }
        }
        if cfg.queue_pairs > 1 && offered & VIRTIO_NET_F_MQ == 0 {
            return Err(HarnessError::MissingFeature {
                feature: "VIRTIO_NET_F_MQ",
            });
        }
        let protocol = frontend
            .get_protocol_features()
            .map_err(HarnessError::vhost("GET_PROTOCOL_FEATURES"))?;
        if !protocol.contains(VhostUserProtocolFeatures::MQ) {
            return Err(HarnessError::MissingFeature {
                feature: "VHOST_USER_PROTOCOL_F_MQ",
            });
        }
        // Only what the harness uses; REPLY_ACK makes every request synchronous, which
        // keeps errors attached to the message that caused them.
        let wanted =
            protocol & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
        frontend
            .set_protocol_features(wanted)
            .map_err(HarnessError::vhost("SET_PROTOCOL_FEATURES"))?;
        let queue_num = frontend
            .get_queue_num()
            .map_err(HarnessError::vhost("GET_QUEUE_NUM"))?;
        if queue_num < u64::from(queues) {
            return Err(HarnessError::TooFewQueues {
                offered: queue_num,
                wanted: u64::from(queues),
            });
        }
        let mut acked =
            offered & (VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | VIRTIO_NET_F_MQ);
        if cfg.event_idx {
            acked |= offered & VIRTIO_RING_F_EVENT_IDX;
        }
        frontend
            .set_features(acked)
            .map_err(HarnessError::vhost("SET_FEATURES"))?;
        frontend
            .set_mem_table(&platform.regions()?)
            .map_err(HarnessError::vhost("SET_MEM_TABLE"))?;
        Ok(Vmm {
            frontend,
            platform,
            acked_features: acked,
            queue_pairs: cfg.queue_pairs,
        })
    }

    /// The guest side of the machine: pass it to the guest-driver.
    pub fn platform(&self) -> &Arc<VmmPlatform> {
        &self.platform
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Was VIRTIO_RING_F_EVENT_IDX negotiated? (Create virtqueues with this.)
    pub fn event_idx(&self) -> bool {
        self.acked_features & features::VIRTIO_RING_F_EVENT_IDX != 0
    }

    pub fn queue_pairs(&self) -> u16 {
        self.queue_pairs
    }

    /// Create queue `index` with `size` entries in guest RAM and hand it to the device.
    pub fn create_queue(&mut self, index: u16, size: u16) -> Result<Virtqueue> {
        let vq =
            Virtqueue::new(&*self.platform, index, size, self.event_idx()).map_err(|source| {
                HarnessError::Virtqueue {
                    queue: index,
                    source,
                }
            })?;
        self.attach_queue(&vq)?;
        Ok(vq)
    }

    /// Tell the device where `vq` lives and enable it.
    pub fn attach_queue(&mut self, vq: &Virtqueue) -> Result<()> {
        let q = usize::from(vq.index());
        let kick = self
            .platform
            .kick_fd(vq.index())
            .ok_or(HarnessError::NoSuchQueue(vq.index()))?;
        let call = self
            .platform
            .call_fd(vq.index())
            .ok_or(HarnessError::NoSuchQueue(vq.index()))?;
        let a = vq.addresses();
        let cfg = VringConfigData {
            queue_max_size: vq.size(),
            queue_size: vq.size(),
            flags: 0,
            desc_table_addr: self.platform.host_address(a.desc_table)?,
            used_ring_addr: self.platform.host_address(a.used_ring)?,
            avail_ring_addr: self.platform.host_address(a.avail_ring)?,
            log_addr: None,
        };
        self.frontend
            .set_vring_num(q, vq.size())
            .map_err(HarnessError::vhost("SET_VRING_NUM"))?;
        self.frontend
            .set_vring_base(q, 0)
            .map_err(HarnessError::vhost("SET_VRING_BASE"))?;
        self.frontend
            .set_vring_addr(q, &cfg)
            .map_err(HarnessError::vhost("SET_VRING_ADDR"))?;
        self.frontend
            .set_vring_kick(q, kick)
            .map_err(HarnessError::vhost("SET_VRING_KICK"))?;
        self.frontend
            .set_vring_call(q, call)
            .map_err(HarnessError::vhost("SET_VRING_CALL"))?;
        self.frontend
            .set_vring_enable(q, true)
            .map_err(HarnessError::vhost("SET_VRING_ENABLE"))?;
        Ok(())
    }

    /// Raw access for tests that send messages out of the usual order.
    pub fn frontend_mut(&mut self) -> &mut Frontend {
        &mut self.frontend
    }
}
