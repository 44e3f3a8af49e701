//! The guest agent's scenario runner and the peer service, without a VM: the same
//! `Machine` + runner that run inside the QEMU guest, here over the harness's in-process
//! VMM (memfd guest RAM, real `chimney-device` process, real Linux peer in a private
//! namespace). When a QEMU test fails and this one passes, look at the uio binding or
//! the QEMU plumbing, not at the steps. Needs root.

use std::path::PathBuf;
use std::sync::Arc;

use chimney_harness::device_process::DeviceOptions;
use chimney_harness::guest::report::GuestOutcome;
use chimney_harness::guest::{engine_config, machine::Machine, run_all};
use chimney_harness::qemu::peer::PeerService;
use chimney_harness::{TestBed, TestBedConfig, VmmConfig};
use chimney_miniport::data::{DataChannel, DataConfig};
use chimney_miniport::{ControlChannel, ControlConfig, NicQueues};

fn scenario(name: &str) -> chimney_harness::scenario::Scenario {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../images/scenarios")
        .join(name);
    chimney_harness::scenario::load(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn machine(bed: &mut TestBed, seed: u64) -> Machine<chimney_harness::VmmPlatform> {
    let p: Arc<_> = bed.vmm.platform().clone();
    let mut q = Vec::new();
    for i in 0..6 {
        q.push(bed.vmm.create_queue(i, 256).expect("queue"));
    }
    let mut it = q.into_iter();
    let mut n = || it.next().expect("queue");
    let nic = NicQueues::new(&*p, n(), n(), 2048).expect("pair 0");
    let control = ControlChannel::new(&*p, n(), n(), ControlConfig::default()).expect("control");
    let data = DataChannel::new(&*p, n(), n(), DataConfig::default()).expect("data");
    Machine::new(p, nic, control, data, engine_config(seed)).expect("machine")
}

#[test]
fn agent_runner_moves_8mib_each_way_offloaded_and_sees_abort_on_peer_reset_in_process() {
    let seed: u64 = std::env::var("CHIMNEY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with CHIMNEY_SEED={seed})");
    let cfg = TestBedConfig {
        device: DeviceOptions {
            queue_pairs: 3,
            ..DeviceOptions::default()
        },
        vmm: VmmConfig {
            ram_bytes: 128 << 20,
            queue_pairs: 3,
            event_idx: true,
        },
        ..TestBedConfig::default()
    };
    let mut bed = TestBed::start(&cfg).expect("namespace + device + VMM");
    let peer = PeerService::start(&bed.ns).expect("peer service");
    let mut m = machine(&mut bed, seed);
    let scenarios = vec![
        scenario("smoke/qemu-offload-transfer-v4.toml"),
        scenario("smoke/qemu-peer-reset-abort.toml"),
    ];
    // A control-plane scenario: the agent must call it unsupported, never passed.
    let control = chimney_harness::scenario::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/control/query-by-class.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut all = scenarios.clone();
    all.push(control);
    let summary = run_all(&mut m, &all, seed, 0.0);
    let log = peer.log.lock().map(|l| l.join("\n")).unwrap_or_default();
    println!("{}\npeer service log:\n{log}", summary.tap());
    assert_eq!(summary.fatal, None, "fatal error");
    let (last, data) = summary.scenarios.split_last().expect("scenarios");
    assert_eq!(
        last.outcome,
        GuestOutcome::Unsupported,
        "control-plane scenario {}: expected unsupported, seen {:?}",
        last.name,
        last.outcome
    );
    let why = &last.steps[0].detail;
    assert!(
        why.contains("not supported by the guest agent"),
        "unsupported reason names the agent: `{why}`"
    );
    for s in data {
        assert_eq!(
            s.outcome,
            GuestOutcome::Passed,
            "scenario {}: expected passed, seen {:?}\n{}",
            s.name,
            s.outcome,
            summary.tap()
        );
    }
}
