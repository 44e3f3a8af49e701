//! The virtio and vhost-user features the device offers (DESIGN.md, "Facts about QEMU's
//! vhost-user-net"), and what follows from the ones the driver acks.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// Virtio feature bits offered to the driver.
///
/// - VERSION_1, MQ, PROTOCOL_FEATURES: required by QEMU's vhost-user-net (DESIGN.md).
/// - MAC: the driver reads a fixed MAC from config space. Under QEMU the config space is
///   QEMU's own (the CONFIG protocol feature is not offered), so the MAC is QEMU's `mac=`.
/// - CSUM/HOST_TSO*: the guest may hand us partial checksums and TSO super-frames; the TAP
///   (IFF_VNET_HDR) takes them as they are (DESIGN.md rule 7).
/// - GUEST_CSUM/GUEST_TSO*: the TAP may hand us the same; `TUNSETOFFLOAD` is set from what
///   the driver acks, so a driver that acks none of them gets plain, checksummed frames.
/// - MRG_RXBUF: large frames spread over several rx buffers.
/// - EVENT_IDX, INDIRECT_DESC: handled by virtio-queue.
///
/// Not offered: CTRL_VQ (QEMU keeps the control virtqueue), STATUS, MTU, and everything needing
/// protocol features the crates cannot serve.
pub const OFFERED_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MQ)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// vhost-user protocol features offered: MQ and REPLY_ACK only. Never CONFIG, STATUS, RARP,
/// NET_MTU or INFLIGHT_SHMFD (DESIGN.md).
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

/// What the acked feature bits mean for pair 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedNet {
    /// Bytes of virtio-net header in front of each frame in guest buffers (12 or 10).
    pub hdr_len: usize,
    /// Frames may span several rx buffers (`num_buffers`).
    pub mrg_rxbuf: bool,
    /// What the TAP may hand us (`TUNSETOFFLOAD`), from GUEST_CSUM/GUEST_TSO*/GUEST_ECN.
    pub tap_offload: chimney_wire::Offload,
}

impl NegotiatedNet {
    pub fn from_acked(acked: u64) -> NegotiatedNet {
        let has = |b: u32| acked & bit(b) != 0;
        let mrg_rxbuf = has(VIRTIO_NET_F_MRG_RXBUF);
        // virtio 1.0 always uses the 12-byte header; legacy only with MRG_RXBUF.
        let hdr_len = if has(VIRTIO_F_VERSION_1) || mrg_rxbuf {
            12
        } else {
            10
        };
        let csum = has(VIRTIO_NET_F_GUEST_CSUM);
        NegotiatedNet {
            hdr_len,
            mrg_rxbuf,
            tap_offload: chimney_wire::Offload {
                csum,
                tso4: csum && has(VIRTIO_NET_F_GUEST_TSO4),
                tso6: csum && has(VIRTIO_NET_F_GUEST_TSO6),
                tso_ecn: csum && has(VIRTIO_NET_F_GUEST_ECN),
            },
        }
    }
}

impl Default for NegotiatedNet {
    fn default() -> Self {
        NegotiatedNet::from_acked(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_features_match_qemu_requirements() {
        // QEMU 10 measured offer had these; we must keep VERSION_1, MQ, PROTOCOL_FEATURES.
        assert_ne!(OFFERED_FEATURES & bit(VIRTIO_F_VERSION_1), 0);
        assert_ne!(OFFERED_FEATURES & bit(VIRTIO_NET_F_MQ), 0);
        assert_ne!(OFFERED_FEATURES & (1 << 30), 0, "PROTOCOL_FEATURES");
        let p = offered_protocol_features();
        assert!(!p.contains(VhostUserProtocolFeatures::CONFIG));
        assert!(!p.contains(VhostUserProtocolFeatures::STATUS));
        assert!(!p.contains(VhostUserProtocolFeatures::RARP));
        assert!(!p.contains(VhostUserProtocolFeatures::MTU));
        assert!(!p.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
        assert_eq!(
            OFFERED_FEATURES & (1 << 33),
            0,
            "IOMMU_PLATFORM must not be offered"
        );
    }

    #[test]
    fn header_length_follows_version_and_mrg_rxbuf() {
        assert_eq!(NegotiatedNet::from_acked(0).hdr_len, 10);
        assert_eq!(
            NegotiatedNet::from_acked(bit(VIRTIO_NET_F_MRG_RXBUF)).hdr_len,
            12
        );
        assert_eq!(
            NegotiatedNet::from_acked(bit(VIRTIO_F_VERSION_1)).hdr_len,
            12
        );
    }

    #[test]
    fn tap_offload_needs_guest_csum() {
        let n = NegotiatedNet::from_acked(bit(VIRTIO_NET_F_GUEST_TSO4));
        assert_eq!(n.tap_offload, chimney_wire::Offload::default());
        let n =
            NegotiatedNet::from_acked(bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_CSUM));
        assert!(n.tap_offload.csum && n.tap_offload.tso4 && !n.tap_offload.tso6);
    }
}
