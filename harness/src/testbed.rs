//! One complete test machine: a private network namespace with a TAP whose kernel side is
//! the Linux peer (chimney-wire), `chimney-device` running inside it on that TAP, and the
//! in-process VMM connected to the device's socket. Dropping it tears everything down in
//! order: the vhost-user connection, the device process, the namespace.

use chimney_wire::{NetNs, Topology, TopologyConfig};

use crate::device_process::{DeviceOptions, DeviceProcess};
use crate::error::Result;
use crate::frontend::{Vmm, VmmConfig};

#[derive(Debug)]
pub struct TestBed {
    // Field order is drop order.
    pub vmm: Vmm,
    pub device: DeviceProcess,
    pub ns: NetNs,
}

#[derive(Debug, Clone, Default)]
pub struct TestBedConfig {
    pub topology: TopologyConfig,
    pub device: DeviceOptions,
    pub vmm: VmmConfig,
}

impl TestBed {
    pub fn start(cfg: &TestBedConfig) -> Result<TestBed> {
        let mut topo = cfg.topology.clone();
        if topo.ns_prefix == TopologyConfig::default().ns_prefix {
            topo.ns_prefix = "chimney-harness".to_string();
        }
        let ns = Topology::with_persistent_tap(&topo)?;
        let mut dev_opts = cfg.device.clone();
        dev_opts.tap = topo.tap_name.clone();
        dev_opts.queue_pairs = dev_opts.queue_pairs.max(cfg.vmm.queue_pairs);
        let device = DeviceProcess::start_in(&ns, &dev_opts)?;
        let vmm = Vmm::connect(device.socket_path(), &cfg.vmm)?;
        Ok(TestBed { vmm, device, ns })
    }

    /// The MAC address of the kernel side of the TAP (the Linux peer), from `ip link`.
    pub fn peer_mac(&self, tap: &str) -> Result<[u8; 6]> {
        let out = self
            .ns
            .command("cat")
            .arg(format!("/sys/class/net/{tap}/address"))
            .output()
            .map_err(|e| crate::HarnessError::io("read peer MAC", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_mac(text.trim()).ok_or_else(|| {
            crate::HarnessError::Device(format!("cannot parse peer MAC {text:?} of {tap}"))
        })
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
