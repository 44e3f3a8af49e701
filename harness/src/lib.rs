//! chimney-harness: the host side of the testbed.
//!
//! - [`frontend`]: the VMM role (vhost-user frontend, memfd guest RAM, vrings, kick/call);
//! - [`vmm_platform`]: that VMM as the guest-driver's `Platform`;
//! - [`device_process`]: start `chimney-device` inside a test network namespace;
//! - [`testbed`]: namespace + TAP + device + VMM in one value, torn down on drop;
//! - [`control_session`]: the guest-driver's control channel on queues 2/3, NEGOTIATE and
//!   SET_PARAMETERS done;
//! - [`objects`]: seeded neighbor/path/TCP fixtures and the trees over them;
//! - [`frames`]: ARP / ICMP probes for the NIC path;
//! - [`scenario`]: the scenario runner (format, conformance checks, reports, coverage);
//! - [`guest`]: the guest agent that runs scenarios inside a QEMU guest on the
//!   guest-driver's Linux uio binding;
//! - [`qemu`]: the host side of a QEMU run (namespace, device, peer service, QEMU,
//!   results).

pub mod control_session;
pub mod device_process;
pub mod error;
pub mod foundation;
pub mod frames;
pub mod frontend;
pub mod guest;
pub mod host_stack;
pub mod ndis;
pub mod objects;
pub mod qemu;
pub mod scenario;
pub mod smoke;
mod sys;
pub mod testbed;
pub mod vmm_platform;

pub use error::{HarnessError, Result};
pub use frontend::{Vmm, VmmConfig};
pub use testbed::{TestBed, TestBedConfig};
pub use vmm_platform::{VmmPlatform, GUEST_RAM_BASE};
