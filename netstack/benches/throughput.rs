//! Bulk throughput of one connection, our engine → the Linux kernel through a TAP (TSO
//! super-frames via IFF_VNET_HDR + TUNSETOFFLOAD), and the kernel's own TCP over a veth pair
//! measured in the same run; prints both and their ratio. Needs root.
//!
//! `cargo bench -p chimney-netstack --bench throughput` (NETSTACK_BENCH_SECS, default 5).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant as StdInstant};

use chimney_netstack::impair::ImpairConfig;
use chimney_netstack::TxOffload;
use chimney_wire::{NetNs, Offload};
use support::*;

fn secs() -> u64 {
    std::env::var("NETSTACK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Our engine sends for `secs`; returns bytes per second received by the kernel.
fn engine_to_kernel(tso: bool) -> f64 {
    let mut cfg = test_engine_config(1);
    cfg.offload = TxOffload { tso, checksum: tso };
    cfg.tcp.send_buffer = 8 << 20;
    let mut rig = Rig::with_offload("bench", 1, ImpairConfig::default(), cfg, Offload::ALL);
    let port = 5201;
    let peer = kernel_accept(&rig, false, port, |mut s| {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        let mut first: Option<StdInstant> = None;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    first.get_or_insert_with(StdInstant::now);
                    n += k as u64;
                }
            }
        }
        (n, first.map(|f| f.elapsed()).unwrap_or_default())
    });
    let now = rig.now();
    let c = rig
        .engine
        .connect(now, SocketAddr::new(peer_ip(false), port), None)
        .expect("connect");
    let chunk = vec![0x5au8; 1 << 20];
    let dur = Duration::from_secs(secs());
    let mut start = None;
    let mut closed = false;
    rig.run_until(dur * 4 + Duration::from_secs(30), "bench", |r| {
        if r.engine.state(c) == Ok(chimney_netstack::TcpConnectionState::Established)
            && start.is_none()
        {
            start = Some(StdInstant::now());
        }
        if let Some(s) = start {
            if s.elapsed() < dur {
                while r.engine.send(c, &chunk).unwrap_or(0) > 0 {}
            } else if !closed {
                r.engine.close(c).expect("close");
                closed = true;
            }
        }
        peer.is_finished()
    });
    let (n, took) = peer.join().expect("peer");
    n as f64 / took.as_secs_f64()
}

/// The kernel's own TCP between two namespaces over a veth pair, for `secs`.
fn kernel_over_veth() -> f64 {
    let a = NetNs::create("bva").expect("ns a");
    let b = NetNs::create("bvb").expect("ns b");
    a.ip(&[
        "link",
        "add",
        "va",
        "type",
        "veth",
        "peer",
        "name",
        "vb",
        "netns",
        b.name(),
    ])
    .expect("veth");
    a.ip(&["addr", "add", "192.0.2.1/24", "dev", "va"])
        .expect("addr a");
    b.ip(&["addr", "add", "192.0.2.2/24", "dev", "vb"])
        .expect("addr b");
    a.ip(&["link", "set", "va", "up"]).expect("up a");
    b.ip(&["link", "set", "vb", "up"]).expect("up b");
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = a
        .spawn("sink", move || {
            let l = TcpListener::bind("192.0.2.1:5202").expect("bind");
            tx.send(()).ok();
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            let t = StdInstant::now();
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            (n, t.elapsed())
        })
        .expect("spawn sink");
    rx.recv().expect("listening");
    let dur = Duration::from_secs(secs());
    b.run(move || {
        let mut s = TcpStream::connect("192.0.2.1:5202").expect("connect");
        let chunk = vec![0x5au8; 1 << 20];
        let t = StdInstant::now();
        while t.elapsed() < dur {
            s.write_all(&chunk).expect("write");
        }
    })
    .expect("run source");
    let (n, took) = sink.join().expect("sink");
    n as f64 / took.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: only run for bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput: run with `cargo bench` (needs root)");
        return;
    }
    let gbit = |b: f64| b * 8.0 / 1e9;
    let ours_tso = engine_to_kernel(true);
    println!(
        "engine → kernel over TAP, TSO:    {:8.1} MB/s ({:.2} Gbit/s)",
        ours_tso / 1e6,
        gbit(ours_tso)
    );
    let ours = engine_to_kernel(false);
    println!(
        "engine → kernel over TAP, no TSO: {:8.1} MB/s ({:.2} Gbit/s)",
        ours / 1e6,
        gbit(ours)
    );
    let kernel = kernel_over_veth();
    println!(
        "kernel → kernel over veth:        {:8.1} MB/s ({:.2} Gbit/s)",
        kernel / 1e6,
        gbit(kernel)
    );
    println!("ratio engine(TSO)/kernel-veth: {:.3}", ours_tso / kernel);
    println!("ratio engine(no TSO)/kernel-veth: {:.3}", ours / kernel);
}
