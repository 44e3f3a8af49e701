//! Baseline for item 1: the kernel's own TCP, one connection, between two namespaces over a
//! veth pair (192.0.2.1 ↔ 192.0.2.2), the sender writing 1 MiB chunks for the measurement
//! time and the receiver reading; bytes the receiver got / its time. Both ends are threads
//! of this process, each in its namespace, so both kernel stacks run on the same 2 cores as
//! the offloaded path does.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use chimney_wire::NetNs;

use crate::error::{BenchError, Result};

/// Bytes per second over the veth pair during `dur`.
pub fn kernel_over_veth(dur: Duration) -> Result<f64> {
    let a = NetNs::create("bench-va")?;
    let b = NetNs::create("bench-vb")?;
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
    ])?;
    a.ip(&["addr", "add", "192.0.2.1/24", "dev", "va"])?;
    b.ip(&["addr", "add", "192.0.2.2/24", "dev", "vb"])?;
    a.ip(&["link", "set", "va", "up"])?;
    b.ip(&["link", "set", "vb", "up"])?;
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = a.spawn("veth-sink", move || -> std::io::Result<(u64, Duration)> {
        let l = TcpListener::bind("192.0.2.1:5202")?;
        let _ = tx.send(());
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        let mut first: Option<Instant> = None;
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            n += k as u64;
        }
        Ok((n, first.map(|f| f.elapsed()).unwrap_or_default()))
    })?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| BenchError::Device("veth sink did not listen".into()))?;
    b.run(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect("192.0.2.1:5202")?;
        let chunk = vec![0x5a_u8; 1 << 20];
        let t = Instant::now();
        while t.elapsed() < dur {
            s.write_all(&chunk)?;
        }
        Ok(())
    })?
    .map_err(|e| BenchError::io("veth source", e))?;
    let (n, took) = sink
        .join()
        .map_err(|_| BenchError::Device("veth sink panicked".into()))?
        .map_err(|e| BenchError::io("veth sink", e))?;
    Ok(n as f64 / took.as_secs_f64().max(1e-9))
}

/// Small-operation baseline: over a veth pair, one connection, the sender write()s 64-byte
/// messages with TCP_NODELAY for `dur` and the receiver read()s into a 64-byte buffer.
/// Returns (writes per second, reads per second).
pub fn kernel_small_ops(dur: Duration, payload: usize) -> Result<(f64, f64)> {
    let a = NetNs::create("bench-sa")?;
    let b = NetNs::create("bench-sb")?;
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
    ])?;
    a.ip(&["addr", "add", "192.0.2.1/24", "dev", "va"])?;
    b.ip(&["addr", "add", "192.0.2.2/24", "dev", "vb"])?;
    a.ip(&["link", "set", "va", "up"])?;
    b.ip(&["link", "set", "vb", "up"])?;
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = a.spawn(
        "veth-small-sink",
        move || -> std::io::Result<(u64, Duration)> {
            let l = TcpListener::bind("192.0.2.1:5203")?;
            let _ = tx.send(());
            let (mut s, _) = l.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = vec![0u8; payload];
            let mut reads = 0u64;
            let t = Instant::now();
            loop {
                if s.read(&mut buf)? == 0 {
                    break;
                }
                reads += 1;
            }
            Ok((reads, t.elapsed()))
        },
    )?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| BenchError::Device("veth sink did not listen".into()))?;
    let (writes, took) = b
        .run(move || -> std::io::Result<(u64, Duration)> {
            let mut s = TcpStream::connect("192.0.2.1:5203")?;
            s.set_nodelay(true)?;
            let msg = vec![0x64_u8; payload];
            let t = Instant::now();
            let mut writes = 0u64;
            while t.elapsed() < dur {
                s.write_all(&msg)?;
                writes += 1;
            }
            Ok((writes, t.elapsed()))
        })?
        .map_err(|e| BenchError::io("veth small source", e))?;
    let (reads, rtook) = sink
        .join()
        .map_err(|_| BenchError::Device("veth sink panicked".into()))?
        .map_err(|e| BenchError::io("veth small sink", e))?;
    Ok((
        writes as f64 / took.as_secs_f64().max(1e-9),
        reads as f64 / rtook.as_secs_f64().max(1e-9),
    ))
}

/// The kernel's object size of one TCP socket (`TCP` slab in /proc/slabinfo): the floor of an
/// idle connection's memory in the kernel, as a baseline for the device's per-connection RSS.
pub fn kernel_tcp_sock_bytes() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/slabinfo")
        .map_err(|e| BenchError::io("/proc/slabinfo", e))?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some("TCP"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| BenchError::Parse("/proc/slabinfo: no TCP line".into()))
}
