//! chimney-wire: the real wire for tests and for the device.
//!
//! - [`NetNs`]: a private network namespace with a unique name, deleted on drop; run closures,
//!   threads and commands inside it (the Linux TCP peer lives there, DESIGN.md "Test topology").
//! - [`Tap`]: a TAP device opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte virtio-net
//!   header ([`VnetHeader`]) in front of every frame, optional `TUNSETOFFLOAD` so the kernel side
//!   takes and gives TSO/checksum-offload super-frames (DESIGN.md rule 7).
//! - [`Topology`]: the standard test topology: namespace + TAP + the peer addresses
//!   192.0.2.1/24 and 2001:db8::1/64 on the kernel side.
//! - [`PcapWriter`]: Ethernet pcap capture, flushed on drop.
//!
//! All `unsafe` lives in the private `sys` module.

mod error;
mod netns;
mod pcap;
pub mod socket;
mod sys;
mod tap;
mod topology;

pub use error::WireError;
pub use netns::NetNs;
pub use pcap::PcapWriter;
pub use tap::{Offload, Tap, VnetHeader, VNET_HDR_LEN};
pub use topology::{
    configure_peer, Topology, TopologyConfig, GUEST_IPV4, GUEST_IPV6, PEER_IPV4, PEER_IPV6,
    PREFIX_V4, PREFIX_V6,
};

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, WireError>;
