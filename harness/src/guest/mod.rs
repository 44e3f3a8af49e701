//! The guest agent (issue 7): runs inside a QEMU guest whose virtio-net function it owns
//! through the guest-driver's Linux userspace binding (`UioPlatform`: uio_pci_generic,
//! BARs through sysfs, locked huge pages whose bus addresses come from
//! `/proc/self/pagemap`). It brings the device up (virtio 1.x init, every queue of pairs
//! 0–2, `VQ_PAIRS_SET` on the control virtqueue so QEMU enables pairs beyond the first:
//! DESIGN.md, QEMU facts), runs scenario files with the harness's host stack against the
//! peer service on the host, and reports TAP lines plus a JSON summary on the console.
//!
//! - [`machine`]: the rings and the host stack over any platform;
//! - [`runner`]: scenario steps from inside the guest;
//! - [`report`]: the console protocol, shared with the host side (`crate::qemu`).

pub mod machine;
pub mod report;
pub mod runner;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chimney_miniport::data::{DataChannel, DataConfig};
use chimney_miniport::linux::ctrl::vq_pairs_set;
use chimney_miniport::linux::uio::{
    bind_uio_pci_generic, find_virtio_net, reserve_huge_pages, UioPlatform,
};
use chimney_miniport::{ControlChannel, ControlConfig, NicQueues, Virtqueue};
use chimney_netstack::EngineConfig;
use chimney_wire::{GUEST_IPV4, GUEST_IPV6};

use machine::Machine;
use report::{GuestOutcome, GuestScenario, GuestSummary, SUMMARY_PREFIX};
use runner::{PeerLink, DEVICE_GONE};

/// Queue pairs the agent uses: 0 NIC, 1 control ring, 2 data ring (DESIGN.md queue map).
pub const PAIRS: u16 = 3;
/// 2 MiB huge pages of DMA memory (rings, NIC buffers, control and data staging ≈ 10 MiB).
pub const DMA_PAGES: usize = 16;
const QUEUE_SIZE: u16 = 256;
const CTRL_QUEUE_SIZE: u16 = 64;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// What the agent is told on its command line.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Scenario files or directories.
    pub paths: Vec<PathBuf>,
    /// Only scenarios whose name matches this glob.
    pub filter: Option<String>,
    pub seed: u64,
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Hand the virtio-net function to uio_pci_generic and bring pairs 0–2 up: the machine
/// the steps run on.
pub fn bring_up(seed: u64) -> Result<Machine<UioPlatform>, String> {
    reserve_huge_pages(DMA_PAGES).map_err(|e| format!("huge pages: {e}"))?;
    let bdf = find_virtio_net().map_err(|e| e.to_string())?;
    let uio = bind_uio_pci_generic(&bdf).map_err(|e| format!("{bdf}: {e}"))?;
    let p = Arc::new(UioPlatform::open(&bdf, uio, DMA_PAGES).map_err(|e| format!("{bdf}: {e}"))?);
    let features = p
        .negotiate(
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ | VIRTIO_RING_F_EVENT_IDX,
        )
        .map_err(|e| format!("feature negotiation: {e}"))?;
    for (bit, name) in [
        (VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"),
        (
            VIRTIO_NET_F_MQ,
            "VIRTIO_NET_F_MQ (start QEMU with mq=on and queues>=3)",
        ),
        (VIRTIO_NET_F_CTRL_VQ, "VIRTIO_NET_F_CTRL_VQ"),
    ] {
        if features & bit == 0 {
            return Err(format!(
                "the device did not offer {name} (features {features:#x})"
            ));
        }
    }
    let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
    let nq = p.num_queues().map_err(|e| e.to_string())?;
    // 2 per pair + the control virtqueue, which QEMU serves itself.
    let pairs = nq.saturating_sub(1) / 2;
    if pairs < PAIRS {
        return Err(format!(
            "the device has {pairs} queue pair(s), the agent needs {PAIRS} (NIC, control, data): \
             start QEMU with -netdev vhost-user,queues={PAIRS} and the device with --queue-pairs {PAIRS}"
        ));
    }
    let mut queues = Vec::new();
    for q in 0..2 * PAIRS {
        let vq =
            Virtqueue::new(&*p, q, QUEUE_SIZE, event_idx).map_err(|e| format!("queue {q}: {e}"))?;
        p.setup_queue(q, QUEUE_SIZE, vq.addresses())
            .map_err(|e| format!("queue {q}: {e}"))?;
        queues.push(vq);
    }
    let ctrl_index = nq - 1;
    let mut ctrl = Virtqueue::new(&*p, ctrl_index, CTRL_QUEUE_SIZE, event_idx)
        .map_err(|e| format!("control virtqueue: {e}"))?;
    p.setup_queue(ctrl_index, CTRL_QUEUE_SIZE, ctrl.addresses())
        .map_err(|e| format!("control virtqueue: {e}"))?;
    p.driver_ok().map_err(|e| e.to_string())?;
    // QEMU enables pairs beyond the first only on VQ_PAIRS_SET (DESIGN.md).
    vq_pairs_set(&*p, &mut ctrl, PAIRS, Duration::from_secs(10))
        .map_err(|e| format!("VQ_PAIRS_SET({PAIRS}): {e}"))?;
    let mut it = queues.into_iter();
    let mut next = || it.next().ok_or_else(|| "queue missing".to_string());
    let (q0, q1, q2, q3, q4, q5) = (next()?, next()?, next()?, next()?, next()?, next()?);
    let nic = NicQueues::new(&*p, q0, q1, 2048).map_err(|e| format!("pair 0: {e}"))?;
    let control = ControlChannel::new(&*p, q2, q3, ControlConfig::default())
        .map_err(|e| format!("control ring: {e}"))?;
    let data = DataChannel::new(&*p, q4, q5, DataConfig::default())
        .map_err(|e| format!("data ring: {e}"))?;
    Machine::new(p, nic, control, data, engine_config(seed))
}

/// The host stack's configuration: the device's MAC (offloaded connections' frames carry
/// it, C-047) and the guest addresses of the test topology.
pub fn engine_config(seed: u64) -> EngineConfig {
    let mac = chimney_device::DeviceConfig::default().mac;
    let mut cfg = EngineConfig::new(mac, Some(GUEST_IPV4), Some(GUEST_IPV6));
    cfg.seed = seed;
    cfg
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Load the scenarios (errors are fatal: a run with a broken file must not pass).
fn load(opts: &AgentOptions) -> Result<Vec<crate::scenario::Scenario>, String> {
    let files = crate::scenario::format::discover(&opts.paths).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for f in files {
        out.push(crate::scenario::load(&f).map_err(|e| e.to_string())?);
    }
    if let Some(g) = &opts.filter {
        out.retain(|s| crate::scenario::format::glob_match(g, &s.name));
    }
    if out.is_empty() {
        return Err(format!(
            "no scenarios in {:?} (filter {:?})",
            opts.paths, opts.filter
        ));
    }
    Ok(out)
}

/// Run the scenarios on `m` and build the summary. A step that found the device gone
/// ends the run: the remaining scenarios are reported as not run.
pub fn run_all<P: chimney_miniport::Platform>(
    m: &mut Machine<P>,
    scenarios: &[crate::scenario::Scenario],
    seed: u64,
    ready_uptime_s: f64,
) -> GuestSummary {
    let mut summary = GuestSummary {
        agent: format!("chimney-harness {} guest-agent", env!("CARGO_PKG_VERSION")),
        ready_uptime_s,
        uptime_s: 0.0,
        scenarios: Vec::new(),
        fatal: None,
    };
    let mut peer = match PeerLink::connect(m) {
        Ok(p) => Some(p),
        Err(e) => {
            summary.fatal = Some(format!("cannot reach the peer service: {e}"));
            None
        }
    };
    for sc in scenarios {
        let scenario_seed = crate::scenario::runner::scenario_seed(seed, &sc.name);
        let Some(link) = peer.as_mut().filter(|_| summary.fatal.is_none()) else {
            summary.scenarios.push(GuestScenario {
                name: sc.name.clone(),
                outcome: GuestOutcome::NotRun,
                steps: Vec::new(),
                seconds: 0.0,
                seed: scenario_seed,
            });
            continue;
        };
        say(&format!(
            "CHIMNEY scenario {} start seed={scenario_seed}",
            sc.name
        ));
        let r = runner::run_scenario(m, link, sc, scenario_seed, |i, name| {
            say(&format!(
                "CHIMNEY step {} {} {name} start uptime={:.2}",
                sc.name,
                i + 1,
                uptime()
            ));
        });
        for st in &r.steps {
            if st.outcome == GuestOutcome::Failed && st.detail.contains(DEVICE_GONE) {
                summary.fatal = Some(format!(
                    "the device stopped answering in `{}` step {} `{}`: {}",
                    sc.name,
                    st.index + 1,
                    st.name,
                    st.detail
                ));
            }
        }
        say(&format!("CHIMNEY scenario {} {:?}", sc.name, r.outcome));
        summary.scenarios.push(r);
    }
    summary.uptime_s = uptime();
    summary
}

/// The agent's main: bring-up, scenarios, report. Returns the process exit status (0 only
/// if everything passed).
pub fn agent_main(opts: &AgentOptions) -> i32 {
    say(&format!(
        "CHIMNEY agent start uptime={:.2} seed={}",
        uptime(),
        opts.seed
    ));
    let fail = |fatal: String| {
        let s = GuestSummary {
            agent: format!("chimney-harness {} guest-agent", env!("CARGO_PKG_VERSION")),
            ready_uptime_s: 0.0,
            uptime_s: uptime(),
            scenarios: Vec::new(),
            fatal: Some(fatal),
        };
        say(&s.tap());
        say(&format!(
            "{SUMMARY_PREFIX}{}",
            serde_json::to_string(&s).unwrap_or_default()
        ));
        1
    };
    let scenarios = match load(opts) {
        Ok(s) => s,
        Err(e) => return fail(format!("scenarios: {e}")),
    };
    let mut m = match bring_up(opts.seed) {
        Ok(m) => m,
        Err(e) => return fail(format!("bring-up: {e}")),
    };
    let ready = uptime();
    say(&format!(
        "CHIMNEY agent ready uptime={ready:.2} pairs={PAIRS} scenarios={}",
        scenarios.len()
    ));
    let summary = run_all(&mut m, &scenarios, opts.seed, ready);
    say(&summary.tap());
    say(&format!(
        "{SUMMARY_PREFIX}{}",
        serde_json::to_string(&summary).unwrap_or_default()
    ));
    if summary.passed() {
        0
    } else {
        1
    }
}
