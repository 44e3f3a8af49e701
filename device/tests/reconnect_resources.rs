//! A frontend that comes and goes (QEMU restarts) must not cost the device file descriptors or
//! threads: after several connect / set up / disconnect cycles the process is back where it
//! was after the first one. (Own test binary: counts are per process.)

mod common;

use chimney_device::{Device, DeviceConfig};
use chimney_wire::{Topology, TopologyConfig};
use common::*;
use std::time::{Duration, Instant};

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

fn one_session(path: &std::path::Path) {
    let mut fe = Frontend::connect(path, 4);
    let rest = set_up(&mut fe);
    let mut rx = RxBuffers::new();
    rx.post(&mut fe, 4);
    arp_peer(&mut fe, &mut rx);
    for s in &rest {
        fe.play(s);
    }
}

/// Wait (bounded, a hang guard) until the counts settle at `want`; returns what was seen.
fn settle(want: (usize, usize)) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = (count_dir("/proc/self/fd"), count_dir("/proc/self/task"));
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn repeated_frontend_connections_do_not_leak_fds_or_threads() {
    let topo = Topology::new(&TopologyConfig {
        ns_prefix: "chimney-dev-leak".into(),
        ..TopologyConfig::default()
    })
    .expect("topology");
    let device = Device::new(
        DeviceConfig::default(),
        Some(topo.tap.try_clone().unwrap()),
        None,
    )
    .unwrap()
    .spawn(&socket_path("leak"))
    .unwrap();
    one_session(device.socket_path());
    // After a session ends the device goes back to waiting in accept.
    std::thread::sleep(Duration::from_millis(200));
    let base = (count_dir("/proc/self/fd"), count_dir("/proc/self/task"));
    for _ in 0..5 {
        one_session(device.socket_path());
    }
    let after = settle(base);
    assert_eq!(
        after, base,
        "(fds, threads) after 5 more sessions, expected as after the first"
    );
}
