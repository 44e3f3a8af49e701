//! The `smoke` sequence: each step is a named check with a pass/fail line.

use std::fmt;
use std::time::Duration;

use chimney_miniport::NicQueues;
use chimney_wire::{GUEST_IPV4, PEER_IPV4};

use chimney_abi::OffloadParameters;
use chimney_miniport::ControlConfig;

use crate::control_session::ControlSession;
use crate::foundation;
use crate::frames::{self, GUEST_MAC};
use crate::objects::OffloadSet;
use crate::testbed::{TestBed, TestBedConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct SmokeOptions {
    /// The chimney-device executable (default: $CHIMNEY_DEVICE_BIN, a cargo build, or the
    /// one next to this binary).
    #[arg(long, value_name = "PATH")]
    pub device: Option<std::path::PathBuf>,
    /// Queue pairs to ask the device for.
    #[arg(long, default_value_t = 2)]
    pub queue_pairs: u16,
    /// Descriptors per queue.
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// TCP objects in the offloaded tree (split over the IPv4 and IPv6 paths).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=128_000))]
    pub tcp_objects: u32,
    /// Seed for the offloaded state (printed; pass it back to replay a run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX (diagnostic: isolates notification bugs).
    #[arg(long)]
    pub no_event_idx: bool,
}

/// One line of the summary.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub name: &'static str,
    pub outcome: Result<String, String>,
}

#[derive(Debug, Default, Clone)]
pub struct SmokeReport {
    pub steps: Vec<StepResult>,
}

impl SmokeReport {
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.outcome.is_ok())
    }
    fn record(&mut self, name: &'static str, outcome: Result<String, String>) -> bool {
        let ok = outcome.is_ok();
        self.steps.push(StepResult { name, outcome });
        ok
    }
}

impl fmt::Display for SmokeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            match &s.outcome {
                Ok(detail) => writeln!(f, "PASS {:<34} {detail}", s.name)?,
                Err(why) => writeln!(f, "FAIL {:<34} {why}", s.name)?,
            }
        }
        let failed = self.steps.iter().filter(|s| s.outcome.is_err()).count();
        writeln!(
            f,
            "{}: {} steps, {} failed",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.steps.len(),
            failed
        )
    }
}

const WAIT: Duration = Duration::from_secs(10);

pub fn run(opts: &SmokeOptions) -> SmokeReport {
    let mut report = SmokeReport::default();
    let mut cfg = TestBedConfig::default();
    cfg.vmm.queue_pairs = opts.queue_pairs;
    cfg.vmm.event_idx = !opts.no_event_idx;
    cfg.device.binary = opts.device.clone();
    let bed = TestBed::start(&cfg);
    let Some(mut bed) = bed
        .map_err(|e| e.to_string())
        .map(Some)
        .unwrap_or_else(|e| {
            report.record("start netns+device+vmm", Err(e));
            None
        })
    else {
        return report;
    };
    report.record(
        "start netns+device+vmm",
        Ok(format!(
            "netns {}, features {:#x}, event idx {}",
            bed.ns.name(),
            bed.vmm.acked_features(),
            bed.vmm.event_idx()
        )),
    );
    let nic = nic_arp(&mut bed, opts.queue_size);
    report.record("queue pair 0: ARP to peer", nic);

    let seed = opts.seed.unwrap_or_else(rand::random);
    report.record("seed", Ok(format!("{seed} (replay with --seed {seed})")));
    let peer_mac = bed.peer_mac("tap0").unwrap_or([0x02, 0, 0, 0, 0, 1]);
    let set = OffloadSet::foundation(seed, opts.tcp_objects as usize, peer_mac);
    let session = ControlSession::open(&mut bed.vmm, opts.queue_size, ControlConfig::default());
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            report.record("control ring setup", Err(e.to_string()));
            return report;
        }
    };
    let negotiated = session
        .negotiate()
        .map(|n| {
            format!(
                "version {}, device limits n/p/t {}/{}/{}",
                n.version, n.max_neighbors, n.max_paths, n.max_tcp
            )
        })
        .map_err(|e| e.to_string());
    if !report.record("negotiate", negotiated) {
        return report;
    }
    let params = session
        .set_parameters(OffloadParameters::default())
        .map(|_| "defaults (1000 ticks/s)".to_string())
        .map_err(|e| e.to_string());
    if !report.record("set parameters", params) {
        return report;
    }
    foundation::run_sequence(&mut session, &set, |name, r| {
        report.record(name, r);
    });
    foundation::run_bad_input(&mut session, &set, |name, r| {
        report.record(name, r);
    });
    report
}

fn nic_arp(bed: &mut TestBed, size: u16) -> Result<String, String> {
    let rx = bed.vmm.create_queue(0, size).map_err(|e| e.to_string())?;
    let tx = bed.vmm.create_queue(1, size).map_err(|e| e.to_string())?;
    let p = bed.vmm.platform().clone();
    let mut nic = NicQueues::new(&*p, rx, tx, 2048).map_err(|e| e.to_string())?;
    nic.send(&*p, &frames::arp_request(GUEST_MAC, GUEST_IPV4, PEER_IPV4))
        .map_err(|e| e.to_string())?;
    for _ in 0..64 {
        match nic.recv(&*p, WAIT).map_err(|e| e.to_string())? {
            Some(f) => {
                if let Some(r) = frames::parse_arp_reply(&f) {
                    if r.sender_ip == PEER_IPV4 && r.target_mac == GUEST_MAC {
                        return Ok(format!("{} is at {:02x?}", r.sender_ip, r.sender_mac));
                    }
                }
            }
            None => break,
        }
    }
    Err("no ARP reply from 192.0.2.1".to_string())
}
