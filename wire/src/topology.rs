//! The standard test topology (DESIGN.md "Test topology"): a private namespace, a TAP inside it,
//! and the Linux peer's addresses on the kernel side of the TAP.

use crate::{NetNs, Offload, Result, Tap};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The Linux peer (kernel side of the TAP).
pub const PEER_IPV4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The Linux peer's IPv6 address.
pub const PEER_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Suggested address for the userspace side (guest / host stack).
pub const GUEST_IPV4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Suggested IPv6 address for the userspace side.
pub const GUEST_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const PREFIX_V4: u8 = 24;
pub const PREFIX_V6: u8 = 64;

/// How to build a [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// Namespace name prefix; the pid and a counter are appended.
    pub ns_prefix: String,
    /// TAP interface name inside the namespace.
    pub tap_name: String,
    /// MTU of the kernel side of the TAP.
    pub mtu: u32,
    /// What the kernel may hand us (`TUNSETOFFLOAD`).
    pub offload: Offload,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            ns_prefix: "chimney".to_string(),
            tap_name: "tap0".to_string(),
            mtu: 1500,
            offload: Offload::default(),
        }
    }
}

/// A namespace with a TAP whose kernel side is the peer (192.0.2.1/24, 2001:db8::1/64).
/// Fields drop in order: the TAP closes first, then the namespace is deleted.
#[derive(Debug)]
pub struct Topology {
    /// The userspace side: frames written here arrive at the peer's kernel, and back.
    pub tap: Tap,
    /// The peer's namespace: open peer sockets with `ns.run(..)` / `ns.spawn(..)`.
    pub ns: NetNs,
}

impl Topology {
    /// Namespace + TAP (opened by this process) + peer addresses, interface up.
    pub fn new(cfg: &TopologyConfig) -> Result<Topology> {
        let ns = NetNs::create(&cfg.ns_prefix)?;
        let tap = Tap::open_in(&ns, &cfg.tap_name)?;
        tap.set_offload(cfg.offload)?;
        configure_peer(&ns, tap.name(), cfg.mtu)?;
        Ok(Topology { tap, ns })
    }

    /// Namespace + a *persistent* TAP (`ip tuntap add ... vnet_hdr`) with the peer addresses,
    /// for a device process that opens the TAP by name itself (`chimney-device --netns NAME
    /// --tap tap0`, or under `ip netns exec`). Carrier comes up when the device opens it.
    /// Returns the namespace; the TAP goes away with it.
    pub fn with_persistent_tap(cfg: &TopologyConfig) -> Result<NetNs> {
        let ns = NetNs::create(&cfg.ns_prefix)?;
        ns.ip(&[
            "tuntap",
            "add",
            "dev",
            &cfg.tap_name,
            "mode",
            "tap",
            "vnet_hdr",
        ])?;
        configure_peer(&ns, &cfg.tap_name, cfg.mtu)?;
        Ok(ns)
    }
}

/// Give the kernel side of `tap_name` inside `ns` the peer addresses and MTU and bring it up.
/// IPv6 uses `nodad` so the address is usable at once.
pub fn configure_peer(ns: &NetNs, tap_name: &str, mtu: u32) -> Result<()> {
    let mtu = mtu.to_string();
    ns.ip(&["link", "set", "dev", tap_name, "mtu", &mtu, "up"])?;
    let v4 = format!("{PEER_IPV4}/{PREFIX_V4}");
    ns.ip(&["addr", "add", &v4, "dev", tap_name])?;
    let v6 = format!("{PEER_IPV6}/{PREFIX_V6}");
    ns.ip(&["-6", "addr", "add", &v6, "dev", tap_name, "nodad"])?;
    Ok(())
}
