//! The `chimney-device` binary as QEMU's launcher uses it: `--netns NS --tap tap0` attaches to
//! a persistent TAP inside a namespace, `--pcap` records pair-0 frames, SIGTERM flushes the
//! pcap and removes the socket.

mod common;

use chimney_wire::{Topology, TopologyConfig};
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_with_netns_tap_and_pcap_serves_qemu_order_and_records_frames() {
    let ns = Topology::with_persistent_tap(&TopologyConfig {
        ns_prefix: "chimney-dev-cli".into(),
        ..TopologyConfig::default()
    })
    .expect("netns with persistent TAP");
    let dir = std::env::temp_dir().join(format!("chimney-dev-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let socket = dir.join("dev.sock");
    let pcap = dir.join("dev.pcap");
    let log = std::fs::File::create(dir.join("dev.log")).expect("log file");
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_chimney-device"))
            .arg("--socket-path")
            .arg(&socket)
            .args([
                "--netns",
                ns.name(),
                "--tap",
                "tap0",
                "--log-level",
                "debug",
            ])
            .arg("--pcap")
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn chimney-device"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!(
                "chimney-device exited early ({st}): {}",
                std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut fe = Frontend::connect(&socket, 4);
    set_up(&mut fe);
    let mut rx = RxBuffers::new();
    rx.post(&mut fe, 8);
    let peer_mac = arp_peer(&mut fe, &mut rx);
    assert_ne!(peer_mac, [0u8; 6]);

    let pid = child.0.id().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let status = child.0.wait().expect("wait device");
    assert!(status.success(), "device exit status on SIGTERM: {status}");
    assert!(!socket.exists(), "socket file must be removed on SIGTERM");

    let data = std::fs::read(&pcap).expect("read pcap");
    let mut reader = pcap_file::pcap::PcapReader::new(&data[..]).expect("pcap header");
    let mut frames = Vec::new();
    while let Some(p) = reader.next_packet() {
        frames.push(p.expect("pcap packet").data.into_owned());
    }
    let request = arp_request(PEER_IP);
    assert!(
        frames.contains(&request),
        "pcap lacks our ARP request; {} frames",
        frames.len()
    );
    assert!(
        frames.iter().any(|f| is_arp_reply_from_peer(f)),
        "pcap lacks the kernel's ARP reply; {} frames",
        frames.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
